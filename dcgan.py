# SPDX-License-Identifier: MIT
"""DCGAN: Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks. Radford, Metz, Chintala, ICLR 2016. arXiv:1511.06434.

The idea: make the GAN of Goodfellow et al. (2014) train reliably with convolutions by
a handful of architectural rules (Sec. 3): strided convolutions instead of pooling in D,
fractionally-strided (transposed) convolutions in G, batch norm in both (but not on
G's output or D's input), no fully connected hidden layers, ReLU in G with tanh on the
output, LeakyReLU(0.2) in D. Trained with the non-saturating loss, Adam (lr 2e-4,
beta1 0.5), batch 128, weights from N(0, 0.02) (Sec. 4), z of size 100 (Fig. 1).

Usage:
    python dcgan.py                                   # digits (embedded), 16x16 (auto)
    python dcgan.py --config paper --dataset folder --data-path ~/lsun   # Sec. 4: 64x64
    python dcgan.py --dataset folder --data-path ~/cats --image-size 64 --flip
    python dcgan.py --conditional                     # class-conditional (cGAN) on digits
    torchrun --nproc_per_node=8 dcgan.py --dataset cifar10 --data-path ~/data --amp bf16
    python dcgan.py --resume auto                     # continue the latest run
    python dcgan.py --sample 64 --checkpoint auto   # grid from the EMA generator

Departures from the paper, and choices where it is silent:
* Widths: ``--g-width``/``--d-width`` (default 64) are the channels of G's last hidden
  layer and D's first, doubled per resolution step down to 4x4 (capped at 8x). Fig. 1's
  64x64 generator (1024 channels at 4x4) is ``--g-width 128``; 64 suits a CPU.
* ``--config auto`` on CUDA is the paper's 64x64 run: widths 128, a global batch of 128
  (Sec. 4; Newmu/dcgan_code), 25 epochs (both codes); on a CPU the defaults, minutes.
* From the authors' code: z ~ N(0, I) and 4x4 kernels (stride 2, padding 1: an exact 2x)
  as dcgan.torch (co-author Chintala's Torch port), where Fig. 1 and the Theano code
  (Newmu/dcgan_code) draw z ~ U(-1, 1) and use 5x5 kernels; every script here draws
  Gaussian latents (``--temperature``, slerp walks). The Theano code's 1e-5 L2 weight decay
  is not used. Batch-norm gains from N(1, 0.02), biases 0: both codes' init, not Sec. 4's.
* D outputs a logit, the loss uses softplus (BCE with logits: sigmoid + log without its
  overflow); G's update reuses D's fake batch (as dcgan.torch does).
* ``--conditional`` is the cGAN of Mirza & Osindero (2014), not in the paper: a one-hot
  label appended to z in G and as constant input planes in D.
* EMA generator (not in the paper): its batch-norm statistics are recomputed on fixed
  latents (``calibrate``) before it draws a grid or is saved; G's do not fit its weights.
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
SCRIPT = "dcgan"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--g-width", "4", "--d-width", "4"]
# --config paper: the LSUN bedrooms run at 64x64 (Sec. 4: batch 128, Adam 2e-4, beta1 0.5; Fig. 1:
# z 100 and 1024 channels at 4x4, the Theano code's 128 filters in D's first layer), no EMA.
PAPER = {
    "image_size": 64,
    "batch_size": 128,
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "z_dim": 100,
    "beta1": 0.5,
    "g_width": 128,
    "d_width": 128,
    "ema_decay": 0.0,
}


def auto_config(args):
    """on a CPU the defaults below (a run of minutes); on CUDA the paper's 64x64 run: widths
    128, a global batch of 128 split over the processes, 25 epochs of the data."""
    seen = args.auto
    if seen["device"] != "cuda":
        return {}
    # The global batch stays the paper's 128 (Sec. 4; Newmu/dcgan_code
    # faces/train_uncond_dcgan.py, nbatch): each process takes its share.
    batch = max(1, 128 // seen["processes"])
    # Fig. 1's 1024 channels at 4x4 are 8 x 128; faces/train_uncond_dcgan.py: ngf = ndf = 128.
    chosen = {"g_width": 128, "d_width": 128, "batch_size": batch}
    if seen["images"]:  # niter = 25 epochs: faces/train_uncond_dcgan.py, dcgan.torch main.lua
        batch = args.batch_size if "batch_size" in args.explicit else batch  # the batch that runs
        chosen["steps"] = steps_for(25 * seen["images"] / 1000, batch, seen["processes"])
    return chosen


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="DCGAN (Radford et al. 2016)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Sec. 4: mini-batch 128, Adam lr 2e-4 for both nets; z of size 100 (Fig. 1). The steps
    # are a digits default; --config auto on CUDA trains the authors' 25 epochs.
    add_common_args(
        p,
        batch_size=128,
        steps=3000,
        lr_g=2e-4,
        lr_d=2e-4,
        z_dim=100,
        sources={"batch_size": "Sec. 4", "lr_g": "Sec. 4", "lr_d": "Sec. 4", "z_dim": "Fig. 1"},
        configs={"auto": auto_config, "paper": PAPER},
    )
    m = p.add_argument_group("DCGAN")
    m.add_argument(
        "--g-width",
        type=in_range(int, "[1, inf)"),
        default=64,
        help="channels of G's last hidden layer, "
        "doubled per resolution step (Fig. 1 is 128 at 64x64)",
    )
    m.add_argument(
        "--d-width", type=in_range(int, "[1, inf)"), default=64, help="channels of D's first layer"
    )
    m.add_argument(
        "--beta1",
        type=in_range(float, "[0, 1)"),
        default=0.5,
        help="Adam beta1 (Sec. 4: 0.9 oscillated)",
    )
    m.add_argument(
        "--beta2", type=in_range(float, "[0, 1)"), default=0.999, help="Adam beta2 (Adam's default)"
    )
    m.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional G and D (cGAN, Mirza & Osindero 2014); needs labels",
    )
    return parse_with_resume(p, argv)


# ============================================================ model
def widths(image_size, base):
    """Channels per resolution from 4x4 up to image_size/2: base * 2^k, capped at 8 * base."""
    n = int(math.log2(image_size)) - 2  # number of 2x steps between 4x4 and image_size
    return [base * min(2 ** (n - 1 - i), 8) for i in range(n)]  # [4x4, 8x8, ..., image_size/2]


def init_weights(m):
    """Sec. 4: all weights from N(0, 0.02); batch-norm gains N(1, 0.02), biases 0 (the code's)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0 if isinstance(m, nn.BatchNorm2d) else 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def one_hot(y, num_classes, dtype):
    """One-hot labels without F.one_hot's range check, which syncs with a CUDA device."""
    return (y[:, None] == torch.arange(num_classes, device=y.device)).to(dtype)


class Generator(nn.Module):
    """z (and a one-hot label) -> "project and reshape" to 4x4 (Fig. 1: a matrix multiply),
    then 2x transposed convs (kernel 4, stride 2) with BN + ReLU, and a tanh output."""

    def __init__(self, z_dim=100, image_size=32, channels=1, width=64, num_classes=0):
        super().__init__()
        w = widths(image_size, width)
        self.num_classes, self.w0 = num_classes, w[0]
        self.project = nn.Linear(z_dim + num_classes, w[0] * 4 * 4, bias=False)
        layers = [nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]  # no BN (Sec. 3)
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        if self.num_classes:
            z = torch.cat([z, one_hot(y, self.num_classes, z.dtype)], 1)
        return self.net(self.project(z).view(-1, self.w0, 4, 4))


class Discriminator(nn.Module):
    """Strided convs (kernel 4, stride 2) with BN + LeakyReLU(0.2) down to 4x4, then the
    last conv layer is flattened into one output (Fig. 1 caption). No BN on the input layer."""

    def __init__(self, image_size=32, channels=1, width=64, num_classes=0):
        super().__init__()
        w = widths(image_size, width)[::-1]  # [image_size/2, ..., 4x4]
        self.num_classes = num_classes
        layers = [nn.Conv2d(channels + num_classes, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [
                nn.Conv2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.LeakyReLU(0.2, True),
            ]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(w[-1] * 4 * 4, 1)  # a logit; the sigmoid lives in the loss

    def forward(self, x, y=None):
        if self.num_classes:
            planes = one_hot(y, self.num_classes, x.dtype)[:, :, None, None]
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], 1)
        return self.out(self.net(x).flatten(1)).view(-1)


def build_models(args, channels, num_classes):
    g = Generator(args.z_dim, args.image_size, channels, args.g_width, num_classes)
    d = Discriminator(args.image_size, channels, args.d_width, num_classes)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


# ============================================================ loss
def d_loss(real_logits, fake_logits):
    """Goodfellow et al. 2014, Eq. 1, for D: -log D(x) - log(1 - D(G(z))), from logits."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def g_loss(fake_logits):
    """The non-saturating generator loss (Goodfellow et al. 2014, Sec. 3): -log D(G(z))."""
    return F.softplus(-fake_logits.float()).mean()


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
    data = run.dataset(labels=args.conditional)
    nc = data.num_classes if args.conditional else 0
    batches = run.batches(data)

    G, D, ema = run.models(build_models, data.channels, nc)
    betas = (args.beta1, args.beta2)  # fused: one kernel for all tensors (CPU, CUDA)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=betas, fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas, fused=True)
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    grid = fixed_inputs(8 * nc if nc else 64, args.z_dim, nc, 1234, device)  # a row per class
    calibrate = [fixed_inputs(256, args.z_dim, nc, 4321 + i, device) for i in range(4)]
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
        info={"channels": data.channels, "num_classes": nc},
    )
    G_step, D_step = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)

    stream = iter(batches)
    while run.step < args.steps:
        real, y = next(stream)
        real = real.contiguous(memory_format=torch.channels_last)
        z = torch.randn(real.shape[0], args.z_dim, device=device)
        y_fake = torch.randint(nc, (real.shape[0],), device=device) if nc else None

        # D step: maximise log D(x) + log(1 - D(G(z))) (Goodfellow et al. 2014, Alg. 1).
        with autocast(device, args.amp):
            fake = G_step(z, y_fake)
            real_logits, fake_logits = D_step(real, y), D_step(fake.detach(), y_fake)
            loss_d = d_loss(real_logits, fake_logits)
        optimizer_step(loss_d, opt_d, scaler_d, D, world)

        # G step: maximise log D(G(z)), the non-saturating form. D's weights need no grads.
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D_step(fake, y_fake))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, run.step, args.ema_warmup)

        run.end_step(
            d_loss=loss_d,
            g_loss=loss_g,
            d_real=torch.sigmoid(real_logits.detach().float()).mean(),
            d_fake=torch.sigmoid(fake_logits.detach().float()).mean(),
        )
    return run.finish()


# ============================================================ sampling
def load_generator(path, device="cpu", use_ema=True):
    """generate(n, seed=0, temperature=1.0, z=None, labels=None) -> images in [-1, 1] from a
    checkpoint's EMA generator (or raw G), for --sample and the evaluation tools."""
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
