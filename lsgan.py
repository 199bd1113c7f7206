# SPDX-License-Identifier: MIT
"""LSGAN: Least Squares Generative Adversarial Networks. Mao, Li, Xie, Lau, Wang, Smolley,
ICCV 2017. arXiv:1611.04076.

The idea: the sigmoid cross-entropy loss of the regular GAN saturates for fakes on the
correct side of the decision boundary but far from the data, so G gets no gradient to move
them closer (Sec. 3.1, Fig. 1). LSGAN makes D a regressor onto an a-b-c coding (Eq. 2):
    min_D 1/2 E_x[(D(x) - b)^2] + 1/2 E_z[(D(G(z)) - a)^2]
    min_G 1/2 E_z[(D(G(z)) - c)^2]
so a fake is penalised by its distance from the target, however far it is. a=-1, b=1, c=0
(Eq. 8) makes G minimise the Pearson chi^2 divergence between p_data + p_g and 2 p_g (Sec.
3.2.2); the 0-1 coding a=0, b=1, c=1 (Eq. 9), which the paper's experiments and the
authors' code use (Sec. 3.2.3), is the default, ``--coding binary``.

Usage:
    python lsgan.py                                   # digits (embedded), 16x16 (auto)
    python lsgan.py --config paper --dataset folder --data-path ~/lsun   # Fig. 3, 112x112
    python lsgan.py --coding pearson                  # a=-1, b=1, c=0 (Eq. 8)
    python lsgan.py --a -1 --b 1 --c 1                # any coding (--a/--b/--c override it)
    python lsgan.py --arch paper --dataset folder --data-path ~/lsun_church --image-size 112
    torchrun --nproc_per_node=8 lsgan.py --dataset cifar10 --data-path ~/data --amp bf16
    python lsgan.py --resume auto                     # continue the latest run
    python lsgan.py --sample 64 --checkpoint auto   # grid from the EMA generator

Based on dcgan.py; differs in the loss (squared errors of D's raw output against a, b, c:
no sigmoid, which would bring the saturation back, and the 1/2 of Eq. 2 kept), the coding
flags, ``--arch paper`` and the defaults. The logged d_real and d_fake are D's raw outputs
(they approach b and a), not probabilities. It keeps dcgan.py's departures from DCGAN's paper:
z ~ N(0, I) and 4x4 kernels (dcgan.torch), no weight decay, batch-norm gains from N(1, 0.02)
(the authors' code, not DCGAN's Sec. 4).

Departures from the paper, and choices where it is silent:
* Networks: ``--arch paper`` is Fig. 3's (LSUN, 112x112): a VGG-like G of 3x3 transposed
  convs and a D of 5x5 stride-2 convs, for any multiple of 16 (widths 64: the paper's). It
  costs several times DCGAN's networks per image (docs/lsgan.md), so the default ``--arch
  dcgan`` is dcgan.py's networks, the family the paper builds on and compares against.
* Adam lr 1e-3 (Sec. 4.1's LSUN scenes; 2e-4 for its Chinese characters), beta1 0.5; batch
  64 and z of size 1024 (Fig. 3, the authors' code). z is N(0, I), not that code's U(-1, 1),
  as in every script here (``--temperature`` and the slerp walks assume a Gaussian).
* ``--config auto`` on CUDA: the authors' 64x64 runs of DCGAN's networks (their
  stability_comparison: widths 64, batch 64, lr 2e-4), 25 epochs; on a CPU: minutes.
* ``--conditional`` is dcgan.py's cGAN, not the paper's (Sec. 3.3: the label mapped
  linearly to a short vector joined to several layers).
* EMA generator with recalibrated batch-norm statistics, as in dcgan.py (not in the paper).
"""

import argparse
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

# ============================================================ flags
SCRIPT = "lsgan"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--g-width", "4", "--d-width", "4"]

# The two a-b-c codings of Sec. 3.2.3: (a, b, c) = (fake label, real label, G's target).
CODINGS = {"binary": (0.0, 1.0, 1.0), "pearson": (-1.0, 1.0, 0.0)}
# --config paper: the LSUN scenes at 112x112 (Sec. 4.1: Fig. 3's networks, Adam 1e-3 with beta1
# 0.5, the 0-1 coding of Eq. 9; Fig. 3: z of 1024; the authors' code: batch 64), no EMA.
PAPER = {
    "arch": "paper",
    "image_size": 112,
    "coding": "binary",
    "batch_size": 64,
    "lr_g": 1e-3,
    "lr_d": 1e-3,
    "beta1": 0.5,
    "z_dim": 1024,
    "ema_decay": 0.0,
}


def auto_config(args):
    """on a CPU the defaults below (a run of minutes); on CUDA the authors' 64x64 runs: widths
    64, a global batch of 64 split over the processes, Adam 2e-4 (--arch paper: 1e-3), 25
    epochs of the data."""
    seen = args.auto
    if seen["device"] != "cuda":
        return {}
    # xudonmao/LSGAN stability_comparison/BN_G_ls_adam: dcgan64.py (DCGAN's networks at 64x64,
    # gf_dim = df_dim = 64, as Fig. 3's widths) and train.py (batch_size 64, learning_rate 2e-4;
    # train_lsun.py: 1e-3 for Fig. 3's networks, Sec. 4.1). The global batch stays the authors'
    # 64: each process takes its share.
    lr = 1e-3 if args.arch == "paper" else 2e-4
    batch = max(1, 64 // seen["processes"])
    chosen = {"g_width": 64, "d_width": 64, "batch_size": batch, "lr_g": lr, "lr_d": lr}
    if seen["images"]:  # no epochs there (loops capped at 1M-5M steps): DCGAN's 25 (dcgan.py)
        batch = args.batch_size if "batch_size" in args.explicit else batch  # the batch that runs
        chosen["steps"] = steps_for(25 * seen["images"] / 1000, batch, seen["processes"])
    return chosen


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="LSGAN (Mao et al. 2017)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Batch 64 and z of size 1024: Fig. 3 and the authors' code. Adam lr: Sec. 4.1 (1e-3 for
    # the LSUN scenes). The steps are a digits default; --config auto on CUDA trains 25 epochs.
    add_common_args(
        p,
        batch_size=64,
        steps=3500,
        lr_g=1e-3,
        lr_d=1e-3,
        z_dim=1024,
        sources={
            "batch_size": "authors' code",
            "z_dim": "Fig. 3",
            "lr_g": "Sec. 4.1, scenes; characters 2e-4",
            "lr_d": "Sec. 4.1, scenes; characters 2e-4",
        },
        configs={"auto": auto_config, "paper": PAPER},
    )
    m = p.add_argument_group("LSGAN")
    m.add_argument(
        "--coding",
        default="binary",
        choices=sorted(CODINGS),
        help="a-b-c coding (Sec. 3.2.3): binary is a=0, b=1, c=1 (Eq. 9, the paper's "
        "experiments); pearson is a=-1, b=1, c=0 (Eq. 8, Pearson chi^2)",
    )
    m.add_argument(
        "--a",
        type=in_range(float, "(-inf, inf)"),
        default=None,
        help="override a, D's target for fakes (Eq. 2)",
    )
    m.add_argument(
        "--b",
        type=in_range(float, "(-inf, inf)"),
        default=None,
        help="override b, D's target for reals (Eq. 2)",
    )
    m.add_argument(
        "--c",
        type=in_range(float, "(-inf, inf)"),
        default=None,
        help="override c, G's target (Eq. 2)",
    )
    m.add_argument(
        "--arch",
        default="dcgan",
        choices=["dcgan", "paper"],
        help="dcgan.py's networks, or Fig. 3's VGG-like G and 5x5-conv D (costlier)",
    )
    m.add_argument(
        "--g-width",
        type=in_range(int, "[1, inf)"),
        default=64,
        help="dcgan: channels of G's last hidden "
        "layer, doubled per resolution step; paper: 64 gives Fig. 3's widths",
    )
    m.add_argument(
        "--d-width",
        type=in_range(int, "[1, inf)"),
        default=64,
        help="channels of D's first layer, doubled per resolution step (64 in Fig. 3)",
    )
    m.add_argument(
        "--beta1",
        type=in_range(float, "[0, 1)"),
        default=0.5,
        help="Adam beta1 (Sec. 4.1, as DCGAN)",
    )
    m.add_argument(
        "--beta2", type=in_range(float, "[0, 1)"), default=0.999, help="Adam beta2 (Adam's default)"
    )
    m.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional G and D (dcgan.py's cGAN); needs labelled data",
    )
    return parse_with_resume(p, argv)


# ============================================================ model
def widths(image_size, base):
    """Channels per resolution from 4x4 up to image_size/2: base * 2^k, capped at 8 * base."""
    n = int(math.log2(image_size)) - 2  # number of 2x steps between 4x4 and image_size
    return [base * min(2 ** (n - 1 - i), 8) for i in range(n)]  # [4x4, 8x8, ..., image_size/2]


def init_weights(m):
    """DCGAN's: weights from N(0, 0.02) (Sec. 4 there); BN gains N(1, 0.02), biases 0 (its code)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0 if isinstance(m, nn.BatchNorm2d) else 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def one_hot(y, num_classes, dtype):
    """One-hot labels without F.one_hot's range check, which syncs with a CUDA device."""
    return (y[:, None] == torch.arange(num_classes, device=y.device)).to(dtype)


class Generator(nn.Module):
    """dcgan.py's: z (and a one-hot label) -> "project and reshape" to 4x4, then 2x
    transposed convs (kernel 4, stride 2) with BN + ReLU, and a tanh output."""

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
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]  # no BN on the output
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        if self.num_classes:
            z = torch.cat([z, one_hot(y, self.num_classes, z.dtype)], 1)
        return self.net(self.project(z).view(-1, self.w0, 4, 4))


class Discriminator(nn.Module):
    """dcgan.py's: strided convs (kernel 4, stride 2) with BN + LeakyReLU(0.2) down to 4x4
    (no BN on the input layer), flattened into one output."""

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
        self.out = nn.Linear(w[-1] * 4 * 4, 1)  # a real number, regressed onto a or b (Eq. 2)

    def forward(self, x, y=None):
        if self.num_classes:
            planes = one_hot(y, self.num_classes, x.dtype)[:, :, None, None]
            x = torch.cat([x, planes.expand(-1, -1, *x.shape[2:])], 1)
        return self.out(self.net(x).flatten(1)).view(-1)


class PaperGenerator(nn.Module):
    """Fig. 3(a): z -> fc -> (s/16)^2 x 4w, then 3x3 transposed convs 4w/2, 4w/1, 4w/2, 4w/1,
    2w/2, w/2 (channels/stride) with BN + ReLU, and a 3x3 stride-1 output with tanh (w=64)."""

    def __init__(self, z_dim=1024, image_size=112, channels=3, width=64, num_classes=0):
        super().__init__()
        self.num_classes, self.s0, self.w0 = num_classes, image_size // 16, 4 * width
        self.project = nn.Linear(z_dim + num_classes, self.w0 * self.s0**2, bias=False)
        layers, cin = [nn.BatchNorm2d(self.w0), nn.ReLU(True)], self.w0
        for cout, stride in (
            (4 * width, 2),
            (4 * width, 1),
            (4 * width, 2),
            (4 * width, 1),
            (2 * width, 2),
            (width, 2),
        ):
            # kernel 3, padding 1, output_padding 1 at stride 2: exactly doubles, like TF's "SAME"
            layers += [
                nn.ConvTranspose2d(cin, cout, 3, stride, 1, stride - 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
            cin = cout
        layers += [nn.ConvTranspose2d(cin, channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        if self.num_classes:
            z = torch.cat([z, one_hot(y, self.num_classes, z.dtype)], 1)
        return self.net(self.project(z).view(-1, self.w0, self.s0, self.s0))


class PaperDiscriminator(nn.Module):
    """Fig. 3(b): 5x5 stride-2 convs of w, 2w, 4w, 8w with LeakyReLU(0.2), BN after the first,
    then fc to one output: the least-squares loss takes it as it is."""

    def __init__(self, image_size=112, channels=3, width=64, num_classes=0):
        super().__init__()
        self.num_classes = num_classes
        layers = [nn.Conv2d(channels + num_classes, width, 5, 2, 2), nn.LeakyReLU(0.2, True)]
        for k in range(3):
            layers += [
                nn.Conv2d(width << k, width << (k + 1), 5, 2, 2, bias=False),
                nn.BatchNorm2d(width << (k + 1)),
                nn.LeakyReLU(0.2, True),
            ]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(8 * width * (image_size // 16) ** 2, 1)

    forward = Discriminator.forward  # label planes on the input (--conditional), convs, fc


def build_models(args, channels, num_classes):
    paper = args.arch == "paper"
    g = (PaperGenerator if paper else Generator)(
        args.z_dim, args.image_size, channels, args.g_width, num_classes
    )
    d = (PaperDiscriminator if paper else Discriminator)(
        args.image_size, channels, args.d_width, num_classes
    )
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


# ============================================================ loss
def d_loss(real_out, fake_out, a=0.0, b=1.0):
    """Eq. 2, for D: 1/2 E[(D(x) - b)^2] + 1/2 E[(D(G(z)) - a)^2], on D's raw output."""
    return 0.5 * (real_out.float() - b).pow(2).mean() + 0.5 * (fake_out.float() - a).pow(2).mean()


def g_loss(fake_out, c=1.0):
    """Eq. 2, for G: 1/2 E[(D(G(z)) - c)^2]; c=1 in the binary coding (Eq. 9), 0 in pearson
    (Eq. 8)."""
    return 0.5 * (fake_out.float() - c).pow(2).mean()


def coding(args):
    """(a, b, c) of Eq. 2: the --coding scheme, with any of --a/--b/--c given overriding it."""
    given = (args.a, args.b, args.c)
    return tuple(d if v is None else v for v, d in zip(given, CODINGS[args.coding]))


# ============================================================ training
def check_args(args):
    from common import UserError

    if args.arch == "paper" and (args.image_size < 16 or args.image_size % 16):
        raise UserError(
            f"--image-size {args.image_size} cannot be built by --arch paper: Fig. 3's "
            "networks halve it four times, so use a multiple of 16 (32, 64, 112, ...)"
        )
    if args.arch == "dcgan" and (args.image_size < 8 or args.image_size & (args.image_size - 1)):
        raise UserError(
            f"--image-size {args.image_size} cannot be built: DCGAN doubles from 4x4, "
            "so use a power of two >= 8 (32, 64, 128, ...)"
        )
    a, b, c = coding(args)
    if a == b or c == a:
        raise UserError(
            f"the coding a={a:g}, b={b:g}, c={c:g} cannot train: D needs a != b to "
            "tell real from fake, and G needs c != a; use --coding binary or pearson"
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
    a, b, c = coding(args)
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
        note=f"a={a:g}, b={b:g}, c={c:g}, arch {args.arch}",
    )
    G_step, D_step = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)

    stream = iter(batches)
    while run.step < args.steps:
        real, y = next(stream)
        real = real.contiguous(memory_format=torch.channels_last)
        z = torch.randn(real.shape[0], args.z_dim, device=device)
        y_fake = torch.randint(nc, (real.shape[0],), device=device) if nc else None

        # D step: regress D(x) onto b and D(G(z)) onto a (Eq. 2).
        with autocast(device, args.amp):
            fake = G_step(z, y_fake)
            real_out, fake_out = D_step(real, y), D_step(fake.detach(), y_fake)
            loss_d = d_loss(real_out, fake_out, a, b)
        optimizer_step(loss_d, opt_d, scaler_d, D, world)

        # G step: pull D(G(z)) towards c (Eq. 2). D's weights need no grads.
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D_step(fake, y_fake), c)
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, run.step, args.ema_warmup)

        run.end_step(
            d_loss=loss_d,
            g_loss=loss_g,
            d_real=real_out.detach().float().mean(),
            d_fake=fake_out.detach().float().mean(),
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
