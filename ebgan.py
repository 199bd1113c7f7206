# SPDX-License-Identifier: MIT
"""EBGAN: Energy-based Generative Adversarial Network. Zhao, Mathieu, LeCun, ICLR 2017.
arXiv:1609.03126.

The idea: see the discriminator as an energy function, low near the data manifold and high
elsewhere, and build it as an auto-encoder whose energy is the reconstruction error,
D(x) = ||Dec(Enc(x)) - x|| (Sec. 2.3). D lowers the energy of real images and raises that
of generated ones until they reach a margin m, L_D = D(x) + [m - D(G(z))]^+ (Eq. 1); G
lowers the energy of its samples, L_G = D(G(z)) (Eq. 2). EBGAN-PT adds to G's loss the
pulling-away term (Sec. 2.4, Eq. 7), the mean squared cosine similarity between the
encoder embeddings of different generated samples, which pushes them apart in D's
representation and works against mode collapse.

Usage:
    python ebgan.py                                   # digits (embedded), 16x16 (auto)
    python ebgan.py --config paper --dataset mnist --data-path ~/data    # Sec. 4.1
    python ebgan.py --pt-weight 0                     # plain EBGAN, without the PT term
    python ebgan.py --dataset celeba --data-path ~/data --image-size 64 --margin 20
    torchrun --nproc_per_node=8 ebgan.py --dataset cifar10 --data-path ~/data --amp bf16
    python ebgan.py --resume auto                     # continue the latest run
    python ebgan.py --sample 64 --checkpoint auto   # grid from the EMA generator

Based on dcgan.py; differs in D (an auto-encoder that returns each sample's energy and its
embedding), the losses (the margin hinge per sample, then averaged; the pulling-away term
in G's loss only, over pairs i != j), the defaults, and it has no ``--conditional``. It keeps
dcgan.py's departures from DCGAN's paper: z ~ N(0, I) and 4x4 kernels (dcgan.torch), no weight
decay, batch-norm gains from N(1, 0.02) (the authors' code, not DCGAN's Sec. 4).

Departures from the paper, and choices where it is silent:
* Energy: the Euclidean norm of each sample's reconstruction error over its C*H*W values in
  [-1, 1] (not squared, not averaged over pixels), in fp32, as Sec. 2.3 writes it; the
  paper's margins (its appendix, in --margin's help) grow like a norm with the image size.
* Architecture: the paper's MNIST models are fully connected; its convolutional EBGAN-PT
  (Sec. 4.3, appendix) is a DCGAN-like G and a conv auto-encoder. Here G is dcgan.py's; the
  encoder is dcgan.py's D body down to 4x4, whose flattened map is the embedding S, and the
  decoder mirrors dcgan.py's G body (transposed convs, BN, ReLU) and ends linear.
* Defaults: Adam lr 1e-3 (the MNIST grid search, Sec. 4.1), beta1 0.5 (Sec. 4.3 follows
  DCGAN), PT weight 0.1 (Sec. 4), z of size 100 and DCGAN's init; batch 64 is this
  script's choice. --config auto grows the margin with the side, as the paper's margins do
  (its appendix: 20, 40, 80 at 64, 128, 256): on CUDA 20 x size / 64, those values, with a
  global batch of 64 and DCGAN's 25 epochs; on a CPU MNIST's 10 x size / 28, rounded (6 at
  16x16, which beat 10 on the digits: docs/ebgan.md, Defaults). --config paper keeps 10;
  give --margin 20 at 64x64 for the appendix's value.
* G's update reuses the fake batch of D's update (as dcgan.py does), so the PT term and
  D(G(z)) in G's loss come from one forward pass through D.
* EMA generator with recalibrated batch-norm statistics, as in dcgan.py (not in the paper).
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
SCRIPT = "ebgan"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--g-width", "4", "--d-width", "4"]
# --config paper: the MNIST experiments (Sec. 4.1: Adam 1e-3, margin 10; Sec. 4: the pulling-away
# term at 0.1; DCGAN's z of 100 and beta1 0.5, Sec. 4.3), no EMA. The batch is not given there.
PAPER = {
    "lr_g": 1e-3,
    "lr_d": 1e-3,
    "margin": 10.0,
    "pt_weight": 0.1,
    "z_dim": 100,
    "beta1": 0.5,
    "ema_decay": 0.0,
}


def auto_config(args):
    """the margin grows with the image's side: on a CPU the defaults below with 10 (MNIST's,
    at 28x28) x the image size / 28, rounded (6 for the digits at 16x16); on CUDA 20 x the
    image size / 64 (the appendix's margins), a global batch of 64 split over the processes,
    25 epochs of the data."""
    seen = args.auto
    if seen["device"] != "cuda":
        return {"margin": round(10 * args.image_size / 28)}
    # The appendix's margins are 20 x side / 64: 20 at 64x64 (LSUN, CelebA), 40 and 80 at
    # 128x128 and 256x256 (ImageNet). Widths: dcgan.py's 64 (soumith/dcgan.torch main.lua, ngf
    # and ndf), as on a CPU. Batch and schedule are not the paper's: this script's batch 64
    # stays the global batch (each process takes its share), and as Sec. 4.3 follows DCGAN,
    # DCGAN's codes' 25 epochs (dcgan.py).
    batch = max(1, 64 // seen["processes"])
    chosen = {
        "margin": 20 * args.image_size / 64,
        "g_width": 64,
        "d_width": 64,
        "batch_size": batch,
    }
    if seen["images"]:
        batch = args.batch_size if "batch_size" in args.explicit else batch  # the batch that runs
        chosen["steps"] = steps_for(25 * seen["images"] / 1000, batch, seen["processes"])
    return chosen


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="EBGAN (Zhao et al. 2017)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Adam lr 1e-3 as in the paper's MNIST grid search (Sec. 4.1); z of size 100 as in DCGAN,
    # whose guidance the conv models follow (Sec. 4.3). Batch 64 is this script's choice. The
    # steps are a digits default; --config auto on CUDA trains 25 epochs.
    add_common_args(
        p,
        batch_size=64,
        steps=3200,
        lr_g=1e-3,
        lr_d=1e-3,
        z_dim=100,
        sources={"lr_g": "Sec. 4.1", "lr_d": "Sec. 4.1", "z_dim": "DCGAN, Sec. 4.3"},
        configs={"auto": auto_config, "paper": PAPER},
    )
    m = p.add_argument_group("EBGAN")
    m.add_argument(
        "--margin",
        type=in_range(float, "(0, inf)"),
        default=10.0,
        help="m of Eq. 1, in units of the "
        "energy ||Dec(Enc(x)) - x||; paper: 10 for MNIST; its appendix: 20 at 64x64 "
        "(LSUN, CelebA), 40 and 80 at 128x128 and 256x256 (ImageNet); --config "
        "auto: 10 x the image size / 28, on CUDA 20 x size / 64",
    )
    m.add_argument(
        "--pt-weight",
        type=in_range(float, "[0, inf)"),
        default=0.1,
        help="weight of the pulling-away "
        "term in G's loss (EBGAN-PT, Sec. 2.4; 0.1: Sec. 4); 0 is plain EBGAN",
    )
    m.add_argument(
        "--g-width",
        type=in_range(int, "[1, inf)"),
        default=64,
        help="channels of G's last hidden layer, doubled per resolution step (as dcgan.py)",
    )
    m.add_argument(
        "--d-width",
        type=in_range(int, "[1, inf)"),
        default=64,
        help="channels of the encoder's first layer, doubled per resolution step (as dcgan.py's D)",
    )
    m.add_argument(
        "--beta1",
        type=in_range(float, "[0, 1)"),
        default=0.5,
        help="Adam beta1 (DCGAN's; Sec. 4.3)",
    )
    m.add_argument(
        "--beta2", type=in_range(float, "[0, 1)"), default=0.999, help="Adam beta2 (Adam's default)"
    )
    return parse_with_resume(p, argv)


# ============================================================ model
def widths(image_size, base):
    """Channels per resolution from 4x4 up to image_size/2: base * 2^k, capped at 8 * base."""
    n = int(math.log2(image_size)) - 2  # number of 2x steps between 4x4 and image_size
    return [base * min(2 ** (n - 1 - i), 8) for i in range(n)]  # [4x4, 8x8, ..., image_size/2]


def init_weights(m):
    """DCGAN's initialisation (the paper follows DCGAN's guidance, Sec. 4.3): weights from
    N(0, 0.02) (DCGAN's Sec. 4), batch-norm gains from N(1, 0.02), biases 0 (DCGAN's code)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0 if isinstance(m, nn.BatchNorm2d) else 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """dcgan.py's generator: z -> "project and reshape" to 4x4, then 2x transposed convs
    (kernel 4, stride 2) with BN + ReLU, and a tanh output."""

    def __init__(self, z_dim=100, image_size=32, channels=1, width=64):
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
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.project(z).view(-1, self.w0, 4, 4))


class Discriminator(nn.Module):
    """The auto-encoder of Sec. 2.3. Encoder: strided convs (kernel 4, stride 2) with
    BN + LeakyReLU(0.2) down to 4x4 (no BN on the input layer); decoder: the mirror image,
    transposed convs with BN + ReLU, and a linear output. forward(x) returns the energy
    D(x) of each sample and the embedding S (the encoder's 4x4 output, flattened)."""

    def __init__(self, image_size=32, channels=1, width=64):
        super().__init__()
        w = widths(image_size, width)[::-1]  # [image_size/2, ..., 4x4]
        enc = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(w[:-1], w[1:]):
            enc += [
                nn.Conv2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.2, True),
            ]
        dec = []
        for cin, cout in zip(w[:0:-1], w[-2::-1]):
            dec += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        dec += [nn.ConvTranspose2d(w[0], channels, 4, 2, 1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x):
        s = self.encoder(x)
        return energy(x, self.decoder(s)), s.flatten(1)


def build_models(args, channels, num_classes=0):
    """G and D (unconditional: num_classes is accepted for the common signature and unused)."""
    g = Generator(args.z_dim, args.image_size, channels, args.g_width)
    d = Discriminator(args.image_size, channels, args.d_width)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


# ============================================================ loss
def energy(x, reconstruction):
    """Sec. 2.3: D(x) = ||Dec(Enc(x)) - x||, the L2 norm of each sample's reconstruction
    error, in fp32."""
    return torch.linalg.vector_norm((reconstruction.float() - x.float()).flatten(1), dim=1)


def pulling_away(s):
    """Sec. 2.4, Eq. 7: f_PT(S) = 1/(N(N-1)) sum_{i != j} (S_i^T S_j / (|S_i| |S_j|))^2, the
    mean squared cosine similarity over pairs of different samples; needs N >= 2."""
    n = s.shape[0]
    with torch.autocast(s.device.type, enabled=False):  # fp32: autocast would matmul in half
        s = F.normalize(s.float().flatten(1), dim=1)
        cos2 = (s @ s.t()).pow(2)
    same = torch.eye(n, dtype=torch.bool, device=s.device)
    return cos2.masked_fill(same, 0).sum() / (n * (n - 1))  # over pairs i != j


def d_loss(real_out, fake_out, margin=10.0):
    """Eq. 1: L_D = D(x) + [m - D(G(z))]^+, the hinge taken per sample, then averaged.
    real_out and fake_out are D's outputs, (energies, embeddings)."""
    return real_out[0].mean() + F.relu(margin - fake_out[0]).mean()


def g_loss(fake_out, pt_weight=0.1):
    """Eq. 2: L_G = D(G(z)); EBGAN-PT adds pt_weight * f_PT of the generated batch's
    embeddings (Sec. 2.4). The term is in G's loss only."""
    e, s = fake_out
    loss = e.mean()
    return loss + pt_weight * pulling_away(s) if pt_weight else loss


# ============================================================ training
def check_args(args):
    from common import UserError

    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(
            f"--image-size {args.image_size} cannot be built: the nets double from "
            "4x4, so use a power of two >= 8 (32, 64, 128, ...)"
        )
    for name in ("lr_g", "lr_d"):  # Adam's first step, lr / (1 - beta1), must fit in float32
        lr = getattr(args, name)
        if not 0 < lr / (1 - args.beta1) < torch.finfo(torch.float32).max:
            raise UserError(
                f"--{name.replace('_', '-')} {lr:g} must be positive and small enough "
                "that Adam's step lr / (1 - beta1) is finite in float32 (else inf/NaN "
                "weights)"
            )
    if args.pt_weight > 0 and args.batch_size < 2:
        raise UserError(
            "--batch-size 1 leaves the pulling-away term undefined (it averages over "
            "pairs of samples); use --batch-size 2 or more, or --pt-weight 0"
        )


def train(args):
    from common.run import Run, fixed_inputs

    rank, world, device = setup_distributed(args.device)
    run = Run(SCRIPT, args, rank, world, device, check_args)
    data = run.dataset()
    batches = run.batches(data)

    G, D, ema = run.models(build_models, data.channels, 0)
    betas = (args.beta1, args.beta2)  # fused: one kernel for all tensors (CPU, CUDA)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=betas, fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas, fused=True)
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    grid = fixed_inputs(64, args.z_dim, 0, 1234, device)[:1]  # G takes z alone
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
        note=f"margin {args.margin:g}, PT weight {args.pt_weight:g}",
    )
    G_step, D_step = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)

    stream = iter(batches)
    while run.step < args.steps:
        real, _ = next(stream)
        real = real.contiguous(memory_format=torch.channels_last)
        z = torch.randn(real.shape[0], args.z_dim, device=device)

        # D step: lower the energy of real images, raise that of fakes up to the margin (Eq. 1).
        with autocast(device, args.amp):
            fake = G_step(z)
            real_out, fake_out = D_step(real), D_step(fake.detach())
            loss_d = d_loss(real_out, fake_out, args.margin)
        optimizer_step(loss_d, opt_d, scaler_d, D, world)

        # G step: lower the energy of the fakes, plus the pulling-away term (Eq. 2, Sec. 2.4).
        D.requires_grad_(False)
        with autocast(device, args.amp):
            fake_out_g = D_step(fake)
            loss_g = g_loss(fake_out_g, args.pt_weight)
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, run.step, args.ema_warmup)

        # f_PT is logged even at --pt-weight 0; a batch of one has no pairs.
        pt = (
            pulling_away(fake_out_g[1].detach())
            if real.shape[0] > 1
            else torch.zeros((), device=device)
        )
        run.end_step(
            d_loss=loss_d,
            g_loss=loss_g,
            energy_real=real_out[0].detach().mean(),
            energy_fake=fake_out[0].detach().mean(),
            pt=pt,
        )
    return run.finish()


# ============================================================ sampling
def load_generator(path, device="cpu", use_ema=True):
    """generate(n, seed=0, temperature=1.0, z=None) -> images in [-1, 1] from a checkpoint's
    EMA generator (or raw G), for --sample and the evaluation tools (num_classes is 0)."""
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
