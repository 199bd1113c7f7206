# SPDX-License-Identifier: MIT
"""WGAN: Wasserstein GAN. Arjovsky, Chintala, Bottou, ICML 2017. arXiv:1701.07875.

The idea: train G to minimise the Earth-Mover (Wasserstein-1) distance between the data
and the model, which stays continuous and gives useful gradients where the original
GAN's Jensen-Shannon divergence saturates (Sec. 2-3). By Kantorovich-Rubinstein duality
W = sup over 1-Lipschitz f of E[f(x)] - E[f(G(z))] (Eq. 2), so a critic f_w (no sigmoid,
no log) is trained to maximise that difference (Eq. 3) while every one of its weights is
clipped to [-c, c] after every update, which keeps it K-Lipschitz for some K (Alg. 1).
The critic takes n_critic = 5 steps per generator step, so that its value estimates W
(up to K) and tracks sample quality (Sec. 4.2, Fig. 3). RMSProp with lr 5e-5, because
momentum methods such as Adam made training unstable (Sec. 4); batch 64, c = 0.01 (Alg. 1).

Usage:
    python wgan.py                                    # digits (embedded), 16x16 (auto)
    python wgan.py --config paper --dataset folder --data-path ~/lsun     # Alg. 1, 64x64
    python wgan.py --dataset folder --data-path ~/cats --image-size 64 --flip \\
                   --output dmol --z-dim 512          # the cat-faces reference's setting
    torchrun --nproc_per_node=8 wgan.py --dataset cifar10 --data-path ~/data --amp bf16
    python wgan.py --sample 8 --interpolate 10 --checkpoint auto

Based on dcgan.py; differs in: a critic (a score, not a logit), the Wasserstein losses,
RMSProp, n_critic critic steps per G step (each on a fresh real batch and z), clipping,
the Wasserstein estimate in the log, a fresh z for G's step, no ``--conditional``.

Departures from the paper, and choices where it is silent (more in docs/wgan.md):
* dcgan.py's networks (the paper uses DCGAN's, Sec. 4); the critic keeps batch norm and
  sees real and fake batches in separate calls, as the authors' DCGAN_D and main.py do.
* ``--n-critic-boost 100``: the authors' schedule, 100 critic steps for the first 25 G
  steps and every 500th. Not in Alg. 1; off by default, on under --config auto on CUDA,
  which is the authors' LSUN run (main.py: widths 64, batch 64, 25 epochs).
* Clipping follows the RMSProp update (Alg. 1; the authors' code clips before it) and
  covers biases and batch-norm parameters. RMSProp keeps PyTorch's alpha and eps.
* ``--output dmol`` (not in the paper): the cat-faces WGAN reference's head, a sampled
  discretized mixture of ``--mixtures`` logistics per pixel (``LogisticMixture``).
* EMA generator (not in the paper, see dcgan.py), batch norm recalibrated. The dmol head's
  pixel noise in grids, recalibration and ``--sample`` comes from a seeded private RNG
  (common.run.private_rng), so it never moves the training RNG.
"""

import argparse
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# ============================================================ flags
SCRIPT = "wgan"
# Flags that make a tiny model for the test harness; a short boost exercises the schedule.
SMOKE_ARGS = ["--g-width", "4", "--d-width", "4", "--n-critic-boost", "7"]
# --config paper: the LSUN bedrooms run at 64x64 (Alg. 1: RMSProp 5e-5, m = 64, c = 0.01,
# n_critic 5; the authors' main.py: nz 100 and 100 critic steps early and every 500th), no EMA.
PAPER = {
    "image_size": 64,
    "batch_size": 64,
    "lr_g": 5e-5,
    "lr_d": 5e-5,
    "z_dim": 100,
    "n_critic": 5,
    "clip": 0.01,
    "n_critic_boost": 100,
    "ema_decay": 0.0,
}


def auto_config(args):
    """on a CPU the defaults below (a run of minutes); on CUDA the authors' LSUN run: widths 64,
    a global batch of 64 split over the processes, their critic boost, and 25 epochs of real
    batches for the critic."""
    seen = args.auto
    if seen["device"] != "cuda":
        return {}
    # martinarjovsky/WassersteinGAN main.py: batchSize 64 (Alg. 1's m; the global batch stays
    # 64, each process takes its share), ngf = ndf = 64, Diters 100 for the first 25 G steps
    # and every 500th; lrD = lrG 5e-5, Diters 5 and clamp 0.01 are the defaults below.
    batch = max(1, 64 // seen["processes"])
    chosen = {"g_width": 64, "d_width": 64, "batch_size": batch, "n_critic_boost": 100}
    if seen["images"]:  # main.py: niter = 25 epochs, counted in the critic's real batches, so
        # n_critic batches per G step (the boost's extra critic steps, ~4% more, not counted)
        batch = args.batch_size if "batch_size" in args.explicit else batch  # the batch that runs
        kimg = 25 * seen["images"] / 1000
        chosen["steps"] = steps_for(kimg, batch * args.n_critic, seen["processes"])
    return chosen


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="WGAN (Arjovsky et al. 2017)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Alg. 1: alpha = 5e-5 (RMSProp, both nets), m = 64. The paper does not give z's size; the
    # authors' code uses nz = 100. The steps are a digits default; --config auto on CUDA trains
    # the authors' 25 epochs.
    add_common_args(
        p,
        batch_size=64,
        steps=1550,
        lr_g=5e-5,
        lr_d=5e-5,
        z_dim=100,
        sources={
            "batch_size": "Alg. 1, m",
            "lr_g": "Alg. 1, alpha (RMSProp)",
            "lr_d": "Alg. 1",
            "z_dim": "authors' code, nz; dmol reference 512",
        },
        configs={"auto": auto_config, "paper": PAPER},
    )
    m = p.add_argument_group("WGAN").add_argument
    m(
        "--g-width",
        type=in_range(int, "[1, inf)"),
        default=64,
        help="channels of G's last hidden layer (authors' ngf)",
    )
    m(
        "--d-width",
        type=in_range(int, "[1, inf)"),
        default=64,
        help="channels of the critic's first layer (authors' ndf)",
    )
    m(
        "--n-critic",
        type=in_range(int, "[1, inf)"),
        default=5,
        help="critic steps per G step (Alg. 1)",
    )
    m(
        "--clip",
        type=in_range(float, "(0, inf)"),
        default=0.01,
        help="critic weights clipped to [-c, c] (Alg. 1, c)",
    )
    m(
        "--n-critic-boost",
        type=in_range(int, "[0, inf)"),
        default=0,
        help="critic steps for the first 25 G steps and "
        "every 500th (authors' main.py: 100; not in Alg. 1); 0: off",
    )
    m(
        "--output",
        default="tanh",
        choices=["tanh", "dmol"],
        help="G's output: tanh (DCGAN) or a "
        "sampled discretized mixture of logistics (the cat-faces reference)",
    )
    m(
        "--mixtures",
        type=in_range(int, "[1, inf)"),
        default=10,
        help="dmol: components per pixel (cat-faces reference)",
    )
    return parse_with_resume(p, argv)


# ============================================================ model
def widths(image_size, base):
    """Channels per resolution from 4x4 up to image_size/2: base * 2^k, capped at 8 * base."""
    n = int(math.log2(image_size)) - 2  # number of 2x steps between 4x4 and image_size
    return [base * min(2 ** (n - 1 - i), 8) for i in range(n)]  # [4x4, 8x8, ..., image_size/2]


def init_weights(m):
    """DCGAN Sec. 4 (and the authors' weights_init): weights from N(0, 0.02); batch-norm gains
    from N(1, 0.02), biases 0. The first clipping step brings them all into [-c, c]."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0 if isinstance(m, nn.BatchNorm2d) else 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def quantize(x):
    """Round to the data's 256 grey levels in [-1, 1]; straight-through (identity) gradient."""
    q = ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    return x + (q - x).detach()


class LogisticMixture(nn.Module):
    """The cat-faces reference's head: per pixel a mixture of K logistics (PixelCNN++), from
    which the image is sampled differentiably (docs/wgan.md). Input channels: K component
    logits, then per component C means, C log-scales and, for RGB, PixelCNN++'s 3
    coefficients that make green depend on red, and blue on both. Log-scales are floored at
    -7, as in PixelCNN++."""

    LOG_SCALE_OFFSET = -4.0  # untrained log-scales start near -4: s ~ 0.02, about two grey levels

    def __init__(self, channels, mixtures):
        super().__init__()
        self.c, self.k = channels, mixtures
        self.params = mixtures * (1 + 2 * channels + (3 if channels == 3 else 0))

    def forward(self, p):
        p = p.float()  # sampling in fp32, also under autocast
        (n, _, h, w), c, k = p.shape, self.c, self.k
        logits, rest = p[:, :k], p[:, k:].reshape(n, -1, k, h, w)
        # The component: Gumbel-max forward, Gumbel-softmax (temperature 1) gradient backward.
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        soft = F.softmax(logits - torch.log(-torch.log(u)), 1)
        hard = torch.zeros_like(soft).scatter_(1, soft.argmax(1, keepdim=True), 1.0)
        pick = (hard + (soft - soft.detach()))[:, None]  # (n, 1, k, h, w), exactly one-hot forward
        mean = (rest[:, :c] * pick).sum(2)
        log_s = ((rest[:, c : 2 * c] * pick).sum(2) + self.LOG_SCALE_OFFSET).clamp(min=-7.0)
        u = torch.rand_like(mean).clamp(1e-5, 1 - 1e-5)
        x = mean + log_s.exp() * (torch.log(u) - torch.log1p(-u))  # reparameterised logistic
        if c != 3:
            return quantize(x)
        a, b, g = torch.tanh((rest[:, 2 * c :] * pick).sum(2)).unbind(1)
        r = quantize(x[:, 0])
        gr = quantize(x[:, 1] + a * r)
        return torch.stack([r, gr, quantize(x[:, 2] + b * r + g * gr)], 1)


class Generator(nn.Module):
    """dcgan.py's generator: z -> "project and reshape" to 4x4, then 2x transposed convs
    (kernel 4, stride 2) with BN + ReLU, and a tanh output or the logistic-mixture head."""

    def __init__(self, z_dim=100, image_size=32, channels=1, width=64, output="tanh", mixtures=10):
        super().__init__()
        w = widths(image_size, width)
        self.w0 = w[0]
        self.project = nn.Linear(z_dim, w[0] * 4 * 4, bias=False)
        layers = [nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        if output == "dmol":
            head = LogisticMixture(channels, mixtures)
            layers += [nn.ConvTranspose2d(w[-1], head.params, 4, 2, 1), head]
        else:  # no BN on G's output (DCGAN Sec. 3)
            layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.project(z).view(-1, self.w0, 4, 4))


class Critic(nn.Module):
    """dcgan.py's discriminator without the sigmoid: strided convs (kernel 4, stride 2) with BN
    + LeakyReLU(0.2) down to 4x4, then one linear output, a real-valued score f_w(x)."""

    def __init__(self, image_size=32, channels=1, width=64):
        super().__init__()
        w = widths(image_size, width)[::-1]  # [image_size/2, ..., 4x4]
        layers = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [
                nn.Conv2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.2, True),
            ]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(w[-1] * 4 * 4, 1)

    def forward(self, x):
        return self.out(self.net(x).flatten(1)).view(-1)


def build_models(args, channels, num_classes):
    g = Generator(args.z_dim, args.image_size, channels, args.g_width, args.output, args.mixtures)
    d = Critic(args.image_size, channels, args.d_width)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


# ============================================================ loss
def d_loss(real_scores, fake_scores):
    """Eq. 3, Alg. 1 line 5: the critic maximises E[f(x)] - E[f(G(z))]; as a loss, its negative."""
    return fake_scores.float().mean() - real_scores.float().mean()


def g_loss(fake_scores):
    """Alg. 1 line 10 (Theorem 3): G minimises -E[f(G(z))]; E[f(x)] does not depend on G."""
    return -fake_scores.float().mean()


@torch.no_grad()
def clip_weights(critic, c):
    """Alg. 1 line 7: w <- clip(w, -c, c) for every critic parameter, so that the critic's
    weights lie in a compact set and f_w is K-Lipschitz for some K (Sec. 3)."""
    for p in critic.parameters():
        p.clamp_(-c, c)


def critic_iters(step, n_critic, boost):
    """Critic steps before generator step ``step`` (counted from 0): ``boost`` for the first 25
    and every 500th, else n_critic (the authors' main.py: ``Diters = 100``); from the step,
    so a resumed run keeps the schedule."""
    return boost if boost and (step < 25 or step % 500 == 0) else n_critic


# ============================================================ training
def check_args(args):
    from common import UserError

    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(
            f"--image-size {args.image_size} cannot be built: DCGAN doubles from 4x4, "
            "so use a power of two >= 8 (32, 64, 128, ...)"
        )


def train(args):
    from common.run import Run, fixed_inputs

    rank, world, device = setup_distributed(args.device)
    run = Run(SCRIPT, args, rank, world, device, check_args)
    data = run.dataset()
    batches = run.batches(data)

    G, D, ema = run.models(build_models, data.channels, 0)
    opt_g = torch.optim.RMSprop(G.parameters(), lr=args.lr_g)  # Sec. 4: no momentum
    opt_d = torch.optim.RMSprop(D.parameters(), lr=args.lr_d)
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    grid = fixed_inputs(64, args.z_dim, 0, 1234, device)[:1]
    calibrate = [fixed_inputs(256, args.z_dim, 0, 4321 + i, device)[:1] for i in range(4)]
    run.start(
        {
            "G": G,
            "D": D,
            "ema": ema,
            "opt_g": opt_g,
            "opt_d": opt_d,
            "scaler_g": scaler_g,
            "scaler_d": scaler_d,
            "batches": batches,
        },
        grid,
        calibrate,
        info={"channels": data.channels, "num_classes": 0},
        note=f"n_critic {args.n_critic}, clip {args.clip}",
    )
    G_step, D_step = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)

    stream = iter(batches)
    while run.step < args.steps:
        # Critic: Alg. 1 lines 2-8, each step on a fresh real batch and fresh z, then clipped.
        n_c = critic_iters(run.step, args.n_critic, args.n_critic_boost)
        for _ in range(n_c):
            real, _ = next(stream)
            real = real.contiguous(memory_format=torch.channels_last)
            z = torch.randn(real.shape[0], args.z_dim, device=device)
            with torch.no_grad(), autocast(device, args.amp):
                fake = G_step(z)
            with autocast(device, args.amp):
                real_scores, fake_scores = D_step(real), D_step(fake)
                loss_d = d_loss(real_scores, fake_scores)
            optimizer_step(loss_d, opt_d, scaler_d, D, world)
            clip_weights(D, args.clip)

        # Generator: Alg. 1 lines 9-10, a fresh z. The critic's weights need no grads here.
        z = torch.randn(args.batch_size, args.z_dim, device=device)
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D_step(G_step(z)))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, run.step, args.ema_warmup)

        # The last critic step's values (the critic is then closest to optimal); the estimate
        # of W, E f(x) - E f(G(z)) (Sec. 4.2), is up to K. Images: those the critic consumed.
        d_real, d_fake = real_scores.detach().float().mean(), fake_scores.detach().float().mean()
        run.end_step(
            images=n_c * args.batch_size * world,
            d_loss=loss_d,
            g_loss=loss_g,
            wasserstein=d_real - d_fake,
            n_critic=d_real.new_tensor(n_c),
            d_real=d_real,
            d_fake=d_fake,
        )
    return run.finish()


# ============================================================ sampling
def load_generator(path, device="cpu", use_ema=True):
    """generate(n, seed=0, temperature=1.0, z=None) -> images in [-1, 1] from a checkpoint's
    EMA generator (or raw G), for --sample and the evaluation tools."""
    from common.run import Generate

    return Generate(SCRIPT, path, device, use_ema, build_models)


# ============================================================ shared: command line
# What --config auto knows of the named datasets without their files (--dry-run): training
# images, side in pixels (CelebA: the 108-pixel face crop of common/data.py), channels.
KNOWN_DATA = {
    "digits": (1797, 8, 1),
    "mnist": (60000, 28, 1),
    "fashion-mnist": (60000, 28, 1),
    "cifar10": (50000, 32, 3),
    "celeba": (202599, 108, 3),
}
DATASETS = ["digits", "mnist", "fashion-mnist", "cifar10", "celeba", "folder", "text"]
IMAGE_FILES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def in_range(kind, rule):
    """An argparse type: a number of ``kind`` (int or float) within ``rule``, an interval
    such as "[1, inf)" ("[" closed, "(" open), so that a value outside it ends in one line."""
    lo, hi = (float(s) for s in rule[1:-1].split(","))

    def number(text):
        value = kind(text)  # not a number: argparse says "invalid int value"
        above = lo <= value if rule[0] == "[" else lo < value
        below = value <= hi if rule[-1] == "]" else value < hi
        if not (above and below):  # nan is neither
            raise argparse.ArgumentTypeError(f"must be in {rule}, not {text}")
        return value

    number.__name__, number.rule = kind.__name__, rule
    return number


def add_common_args(
    p,
    *,
    batch_size,
    steps,
    lr_g,
    lr_d,
    z_dim,
    image_size=32,
    ema_decay=0.999,
    sources=None,
    configs=None,
):
    """The flags that mean the same in every script, with the paper's values and ``sources``.
    ``configs``: --config's settings, name -> {flag: value} or a rule args -> {flag: value}."""
    paper = {k: f"; paper: {v}" for k, v in (sources or {}).items()}
    p.configs = {"auto": {}, **(configs or {})}
    # a mistyped flag ends like every other mistake: one line and status 1, no usage dump
    p.error = lambda message: p.exit(1, f"{p.prog}: error: {message}\n")
    a = p.add_argument_group("common (the same in every script)").add_argument
    a(
        "--config",
        default="auto",
        choices=list(p.configs),
        help="values of the flags not given; "
        + "; ".join(f"{k}: {config_help(c)}" for k, c in p.configs.items()),
    )
    a(
        "--dry-run",
        action="store_true",
        help="print the resolved settings (and what --config auto saw) and exit",
    )
    a(
        "--assume",
        default=None,
        type=hardware_spec,
        metavar="DEVICE[:N[:GIB]]",
        help="--config "
        "auto as if on this hardware: cpu, cuda, cuda:8 (8 processes), cuda:8:40 (40 GiB each)",
    )
    a(
        "--dataset",
        default="digits",
        type=dataset_name,
        metavar="{" + ",".join(DATASETS) + "}",
        help="training data (digits: embedded; text: characters)",
    )
    a("--data-path", default=None, help="the dataset's folder, an image folder, or text files")
    a("--download", action="store_true", help="download the dataset into --data-path first")
    a(
        "--image-size",
        type=in_range(int, "[4, inf)"),
        default=image_size,
        help="training resolution (a power of two; "
        "--config auto: the data's own side, at least 16 and at most 32 on a CPU, 64 on CUDA)",
    )
    a("--channels", type=int, default=None, choices=[1, 3], help="image channels (the data's)")
    a("--flip", action="store_true", help="augment with random horizontal flips")
    a(
        "--color-jitter",
        type=in_range(float, "[0, 1]"),
        default=0.0,
        help="augment with colour jitter (0.1-0.3)",
    )
    a(
        "--batch-size",
        type=in_range(int, "[1, inf)"),
        default=batch_size,
        help="per rank" + paper.get("batch_size", ""),
    )
    fewest = "[0, inf)" if steps == 0 else "[1, inf)"  # 0: to the end of progan's schedule
    a("--steps", type=in_range(int, fewest), default=steps, help="number of generator updates")
    a(
        "--lr-g",
        type=in_range(float, "(0, inf)"),
        default=lr_g,
        help="G's learning rate" + paper.get("lr_g", ""),
    )
    a(
        "--lr-d",
        type=in_range(float, "(0, inf)"),
        default=lr_d,
        help="D's learning rate" + paper.get("lr_d", ""),
    )
    a(
        "--z-dim",
        type=in_range(int, "[1, inf)"),
        default=z_dim,
        help="latent size" + paper.get("z_dim", ""),
    )
    a(
        "--seed",
        type=in_range(int, "[0, 2147483647]"),
        default=0,
        help="random seed (rank r draws latents with seed + r)",
    )
    a("--out", default=None, help="run directory (default runs/<script>/<time>)")
    a("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    a(
        "--amp",
        default="auto",
        choices=["auto", "off", "bf16", "fp16"],
        help="mixed precision; auto: bf16 where the hardware has it natively, else off",
    )
    a(
        "--ema-decay",
        type=in_range(float, "[0, 1)"),
        default=ema_decay,
        help="EMA of G per G step; 0: no EMA",
    )
    a(
        "--ema-warmup",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="cap the EMA "
        "decay at (1 + t) / (10 + t) at step t; --no-ema-warmup: --ema-decay from step 0",
    )
    a(
        "--log-every",
        type=in_range(int, "[1, inf)"),
        default=25,
        help="steps between logs (each syncs the device)",
    )
    a(
        "--sample-every",
        type=in_range(int, "[1, inf)"),
        default=100,
        help="steps between sample grids",
    )
    a("--ckpt-every", type=in_range(int, "[1, inf)"), default=500, help="steps between checkpoints")
    a(
        "--eval-every",
        type=in_range(int, "[0, inf)"),
        default=0,
        help="steps between evaluations (best.pt); 0: off",
    )
    a(
        "--eval-samples",
        type=in_range(int, "[10, inf)"),
        default=1000,
        help="generated images per evaluation",
    )
    a("--tensorboard", action="store_true", help="also write TensorBoard events")
    a("--resume", default=None, help="continue a run: a .pt file, a run directory, or auto")
    a("--compile", action="store_true", help="torch.compile the models")
    a(
        "--tf32",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CUDA: TF32 matmuls "
        "and convolutions (fp32 with a 10-bit mantissa, on Ampere and newer); --no-tf32: full fp32",
    )
    a(
        "--num-workers",
        type=in_range(int, "[0, inf)"),
        default=min(4, os.cpu_count() or 1),
        help="loader processes",
    )
    a(
        "--sample",
        type=in_range(int, "[0, inf)"),
        default=0,
        metavar="N",
        help="generate N images from --checkpoint",
    )
    a("--checkpoint", default=None, help="--sample's checkpoint: .pt, run directory, or auto")
    a(
        "--temperature",
        type=in_range(float, "(0, inf)"),
        default=1.0,
        help="--sample: scale of the latent",
    )
    a(
        "--interpolate",
        type=in_range(int, "[0, inf)"),
        default=0,
        metavar="K",
        help="--sample: N walks of K steps",
    )
    a("--no-ema", action="store_true", help="--sample: the raw generator, not the EMA one")


def config_help(config):
    """--help's words for a config: a rule's docstring, or the flags it sets."""
    if callable(config):
        return " ".join(config.__doc__.split()).rstrip(".")
    flags = []
    for k, v in config.items():
        k = k.replace("_", "-")
        if isinstance(v, bool):
            flags.append(f"--{k}" if v else f"--no-{k}")
        else:
            flags.append(f"--{k} {v}")
    return " ".join(flags) or "the defaults below"


def dataset_name(text):
    """--dataset's value, or one line that names the nearest dataset."""
    import difflib

    if text in DATASETS:
        return text
    near = difflib.get_close_matches(text.lower(), DATASETS, n=1, cutoff=0.4)
    hint = f"; did you mean {near[0]}?" if near else ""
    raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(DATASETS)}{hint}")


def hardware_spec(text):
    """--assume's DEVICE[:N[:GIB]] -> (device, processes, GiB per GPU); 80 GiB unless given."""
    device, n, gib = (text.split(":") + ["", ""])[:3]
    try:
        spec = (device, int(n or 1), float(gib or (80 if device == "cuda" else 0)))
    except ValueError:
        spec = None
    if device not in ("cpu", "cuda") or spec is None or spec[1] < 1 or spec[2] < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: use cpu, cpu:N, cuda, cuda:N or cuda:N:GIB")
    return spec


def auto_inputs(args):
    """What --config auto's rule sees: the hardware (--assume, else this machine and torchrun's
    WORLD_SIZE) and the data (KNOWN_DATA, or the image files of a folder)."""
    if args.assume:
        device, processes, gib = args.assume
    else:
        cuda = args.device.startswith("cuda") or (
            args.device == "auto" and torch.cuda.is_available()
        )
        device, processes = ("cuda" if cuda else "cpu"), int(os.environ.get("WORLD_SIZE", 1))
        gib = 0.0
        if cuda and torch.cuda.is_available():
            gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    images, side, channels = KNOWN_DATA.get(args.dataset, (None, None, args.channels))
    if args.dataset == "folder" and args.data_path and os.path.isdir(args.data_path):
        images = sum(
            f.lower().endswith(IMAGE_FILES)
            for _, _, files in os.walk(args.data_path)
            for f in files
        )
    return {
        "device": device,
        "processes": processes,
        "gpu_gib": round(gib, 1),
        "dataset": args.dataset,
        "images": images,
        "side": side,
        "channels": channels,
    }


def steps_for(kimg, batch, processes):
    """Generator updates that show ``kimg`` thousand real images at this global batch."""
    return max(1, math.ceil(kimg * 1000 / (batch * processes)))


def parse_with_resume(p, argv):
    """Parse argv and remember which flags were given, so a resumed run keeps the others; the
    flags not given take --config's values. ``args.auto`` is what --config auto's rule saw (the
    hardware and the data), ``args.chosen`` what the config set; args.json records them."""
    args = p.parse_args(argv)
    for a in p._actions:  # parsed again without defaults: what remains was given
        a.default = argparse.SUPPRESS
    args.explicit = sorted(vars(p.parse_args(argv)))
    args.auto, config = None, p.configs[args.config]
    if args.config == "auto":
        args.auto = seen = auto_inputs(args)
        if "image_size" not in args.explicit:  # the data's own side, a power of two
            top = 64 if seen["device"] == "cuda" else 32
            side = seen["side"] or top  # a folder: the largest
            args.image_size = min(max(16, 1 << (side - 1).bit_length()), top)
    chosen = config(args) if callable(config) else config
    args.chosen = {k: v for k, v in chosen.items() if k not in args.explicit}
    for k, v in args.chosen.items():
        setattr(args, k, v)
    return args


def print_settings(args):
    """--dry-run: what --config auto saw, then every setting and where it came from."""
    if args.auto:
        print("auto saw: " + ", ".join(f"{k} {v}" for k, v in args.auto.items()))
    skip = ("explicit", "auto", "chosen", "dry_run")
    for k, v in sorted((k, v) for k, v in vars(args).items() if k not in skip):
        src = "default"
        if k in args.explicit:
            src = "given"
        elif k in args.chosen:
            src = f"--config {args.config}"
        print(f"  --{k.replace('_', '-'):<20} {v!s:<24} {src}")


# ============================================================ shared: distributed
def setup_distributed(device):
    """(rank, world size, torch.device) from torchrun's environment; starts the process group."""
    from common import UserError

    rank, world, local = (int(os.environ.get(k, 0)) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    world = max(world, 1)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError("--device cuda, but CUDA is not available; use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local if world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def average_gradients(module, world):
    """All-reduce-average gradients across ranks in one flat buffer (works with double backward)."""
    if world == 1:
        return
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    for g, f in zip(grads, flat.div_(world).split([g.numel() for g in grads])):
        g.copy_(f.view_as(g))


# ============================================================ shared: mixed precision
def autocast(device, amp):
    """bf16 (CPU or CUDA) or fp16 (CUDA) autocast; a no-op for --amp off."""
    dtype = torch.float16 if amp == "fp16" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp != "off")


def make_scaler(device, amp):
    """One GradScaler per optimizer; enabled for fp16 only (bf16 has fp32's range)."""
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")


def optimizer_step(loss, opt, scaler, module, world):
    """Backward (scaled under fp16), average gradients across ranks, step."""
    opt.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    average_gradients(module, world)
    scaler.step(opt)
    scaler.update()


# ============================================================ shared: EMA
def ema_update(ema, model, decay, step, warmup=True):
    """ema <- d * ema + (1 - d) * model; buffers copied. d = decay, or with ``warmup``
    (--ema-warmup) min(decay, (1 + t) / (10 + t)), so that early averages are not dominated
    by the random initial weights."""
    d = min(decay, (1 + step) / (10 + step)) if warmup else decay
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1 - d)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


# ============================================================ shared: main
def main(argv=None):
    args = parse_args(argv)
    if args.dry_run:
        return print_settings(args)
    try:
        from common.run import main as run_main
    except ModuleNotFoundError as e:  # a copy of this file alone: models and losses only
        if e.name != "common":
            raise
        sys.exit(f"{SCRIPT}: error: training and sampling need common/: copy it beside {SCRIPT}.py")
    return run_main(SCRIPT, args, train, load_generator, globals().get("sample"))


if __name__ == "__main__":
    main()
