# SPDX-License-Identifier: MIT
"""BEGAN: Boundary Equilibrium Generative Adversarial Networks. Berthelot, Schumm, Metz,
2017. arXiv:1703.10717.

The idea: the discriminator is an auto-encoder, and instead of matching the distributions
of images, BEGAN matches the distributions of their auto-encoder losses, through a lower
bound of the Wasserstein distance between them (Sec. 3.1). With L(v) = |v - D(v)| the
pixel-wise L1 reconstruction loss (Eq. 1), D minimises L(x) - k_t L(G(z)) and G minimises
L(G(z)) (Sec. 3.4). The weight k_t is a proportional controller (k_0 = 0, gain lambda_k)
that keeps the equilibrium E[L(G(z))] = gamma E[L(x)]: gamma (Sec. 3.3) trades diversity
(high) for quality (low). The same quantities give a convergence measure,
M_global = L(x) + |gamma L(x) - L(G(z))| (Sec. 3.4.1), which falls as the samples improve;
the learning rate halves when it stalls (Sec. 4.1). Both nets are plain 3x3-conv/ELU
stacks with nearest-neighbour upsampling (Sec. 3.5, Fig. 1); z ~ U[-1, 1].

Usage:
    python began.py                                   # digits (embedded), 16x16 (auto)
    python began.py --gamma 0.7 --skip                # sharper, less diverse; Sec. 3.5.1
    python began.py --config paper --dataset celeba --data-path ~/data     # 64x64, Sec. 4.1
    python began.py --resume auto                     # continue (k_t and lr decay included)
    python began.py --sample 8 --interpolate 10 --checkpoint auto

Based on dcgan.py; differs in the models, the losses and k_t, M (logged, and drawn in the
run's convergence.png at the end), the lr decay, uniform latents, the defaults, and it has
no --conditional. Tuning history and measurements: docs/began.md. --config auto on CUDA is
the paper's CelebA run with the settings of carpedm20/BEGAN-tensorflow's config.py.

Departures from the paper, and choices where it is silent:
* The defaults (auto on a CPU) are a digits recipe (with the paper's, G collapses to one
  image on the digits): batch norm (--bn), gamma 1.0, lambda_k 0.05, Adam 4e-4 with beta1
  0.5, smaller nets (n 16, N_h 32, batch 32); docs/began_recipe_search.md.
  ``--config paper`` sets the paper's (PAPER).
* Adam's betas are not in the paper: --config paper's beta1 0.9 is what reimplementations run.
* The lr decay has no rule in the paper: both rates halve when the mean of M over a window
  of --lr-decay-patience steps is not 1% below the best earlier window mean.
* D and G step in turn (G against the updated D, on D's fake batch); carpedm20's code takes
  both losses from one forward of D. k_t and M take L(x) and L(G(z)) from D's step (one D,
  as that code does), in fp32, averaged over ranks so that every rank keeps the same k_t.
* G has no tanh on its output, as in the reference code (carpedm20); weights are
  Glorot-uniform (PyTorch's default init leaves a fresh G almost independent of z).
* Not implemented: Sec. 3.5.1's vanishing residuals (--skip gives its skip connections).
* Batch norm (--bn) and the EMA generator are not in the paper.
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
SCRIPT = "began"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--n-filters", "4", "--nh", "8"]

# --config paper: CelebA at 64x64 (Sec. 4.1; batch and beta1 from the reference code), no EMA;
# the defaults (auto) are the digits recipe (docs/began.md says why).
PAPER = {
    "image_size": 64,
    "gamma": 0.5,
    "lambda_k": 0.001,
    "nh": 64,
    "n_filters": 64,
    "bn": False,
    "batch_size": 16,
    "lr_g": 1e-4,
    "lr_d": 1e-4,
    "beta1": 0.9,
    "ema_decay": 0.0,
}
# --config auto on a CPU above 16x16 (MNIST, CIFAR-10, ... at 32x32): the digits recipe for the
# steps of about 5 CPU-minutes. On MNIST-format files 3200 steps collapsed G to one digit (with
# k_t from two Ds); with k_t from one D, 1300 steps gave varied, blurry digits, better at the
# recipe's lr 4e-4 than at 2e-4, and 2000 steps better than 1300 (docs/results.md, off the
# bench; 2000 steps took a little over 5 minutes on a 2-core CPU with bf16).
CPU_32 = {"steps": 2000}


def auto_config(args):
    """CPU: the defaults below (the digits recipe), above 16x16 for 2000 steps (each about
    5 CPU-minutes); CUDA: the paper's CelebA run as carpedm20's code trains it
    (n 128, N_h 64, gamma 0.5, lambda_k 0.001, no batch norm, global batch 16, Adam 8e-5, 8M
    images, lr halved on a stall per 1.6M images, no EMA)."""
    seen = args.auto
    if seen["device"] == "cpu":
        return {} if args.image_size <= 16 else CPU_32
    # carpedm20/BEGAN-tensorflow, the reference code (the authors released none), config.py
    # unless said: batch_size 16, global (split over the processes); a batch given keeps the
    # schedule's images.
    batch = max(1, 16 // seen["processes"])
    if "batch_size" in args.explicit:
        batch = args.batch_size
    return {
        "gamma": 0.5,
        "lambda_k": 0.001,  # gamma, lambda_k (Sec. 3.4: lambda_k 0.001)
        "n_filters": 128,  # conv_hidden_num (Sec. 4.1: n 128 for its largest model)
        "nh": 64,
        "z_dim": 64,  # z_num, both N_h and N_z; Sec. 4.1: N_h = N_z = 64
        "bn": False,  # Sec. 3.5's nets, no batch norm
        "batch_size": batch,
        "lr_g": 8e-5,
        "lr_d": 8e-5,  # g_lr, d_lr; inside Sec. 4.1's [5e-5, 1e-4]
        "beta1": 0.9,  # trainer.py passes no beta1 to AdamOptimizer: TensorFlow's 0.9
        "steps": steps_for(8000, batch, seen["processes"]),  # max_step 500,000 at batch 16
        # lr_update_step 100,000 at batch 16; trainer.py's (commented-out) stall test over that
        # window is this script's rule, Sec. 4.1's "when the measure of convergence stalls".
        "lr_decay_patience": steps_for(1600, batch, seen["processes"]),
        "ema_decay": 0.0,  # neither the paper nor the code has an EMA
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="BEGAN (Berthelot et al. 2017)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Sec. 4.1: Adam with lr in [5e-5, 1e-4]; N_z = N_h = 64; batch 16 as in the reference
    # code (all in PAPER). The defaults are the digits recipe.
    add_common_args(
        p,
        batch_size=32,
        steps=3200,
        lr_g=4e-4,
        lr_d=4e-4,
        z_dim=64,
        sources={
            "batch_size": "16, reference code",
            "lr_g": "1e-4, Sec. 4.1",
            "lr_d": "1e-4, Sec. 4.1",
            "z_dim": "Sec. 4.1, N_z",
        },
        configs={"auto": auto_config, "paper": PAPER},
    )
    m = p.add_argument_group("BEGAN")
    m.add_argument(
        "--gamma",
        type=in_range(float, "(0, 1]"),
        default=1.0,
        help="diversity ratio E[L(G(z))] / "
        "E[L(x)] that k_t maintains (Sec. 3.3), in (0, 1]; paper 0.5",
    )
    m.add_argument(
        "--lambda-k",
        type=in_range(float, "[0, inf)"),
        default=0.05,
        help="proportional gain of k_t (Sec. 3.4); paper 0.001",
    )
    # n is spelled --n-filters: torchrun (torch 2.14) rejects a "--n" even after the script, as
    # an ambiguous prefix of its own --nnodes, --nproc-per-node, ...; N_h is --nh to match.
    m.add_argument(
        "--nh",
        type=in_range(int, "[1, inf)"),
        default=32,
        help="embedding size N_h of D's auto-encoder (Sec. 4.1: 64)",
    )
    m.add_argument(
        "--n-filters",
        type=in_range(int, "[1, inf)"),
        default=16,
        help="filters per conv, Fig. 1's n "
        "(the paper: 64 or 128); the encoder grows by n per scale",
    )
    m.add_argument(
        "--skip",
        action="store_true",
        help="skip connections from h0 after each upsampling (Sec. 3.5.1)",
    )
    m.add_argument(
        "--bn",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="batch norm before each hidden ELU (not in the paper; without it G "
        "collapses on the digits); --no-bn: the paper's nets",
    )
    m.add_argument(
        "--lr-decay-patience",
        type=in_range(int, "[0, inf)"),
        default=1000,
        help="halve both lrs when M, "
        "averaged over windows of this many steps, is not 1%% below the best earlier "
        "window (Sec. 4.1 gives no rule); 0: off",
    )
    m.add_argument(
        "--beta1",
        type=in_range(float, "[0, 1)"),
        default=0.5,
        help="Adam beta1 (not in the paper; the reference code runs 0.9)",
    )
    m.add_argument(
        "--beta2",
        type=in_range(float, "[0, 1)"),
        default=0.999,
        help="Adam beta2 (not in the paper; TensorFlow's default)",
    )
    return parse_with_resume(p, argv)


# ============================================================ model
def latents(n, z_dim, generator=None):
    """z ~ U[-1, 1]^Nz (Sec. 3.5)."""
    return torch.rand(n, z_dim, generator=generator) * 2 - 1


def n_scales(image_size):
    """Resolutions from 8x8 up to image_size: the smallest feature map stays 8x8 (Sec. 4.1)."""
    return int(math.log2(image_size)) - 2


def init_weights(m):
    """Glorot-uniform weights and zero biases, TensorFlow's default that the reference code
    (carpedm20) runs; the paper gives no initialisation. PyTorch's default shrinks the
    signal by about sqrt(3) per layer: through G's eight layers the samples of a fresh G
    then differ by under 1% across z, and training starts (and stays) mode-collapsed."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(m.weight)
        nn.init.zeros_(m.bias)


def conv_elu(cin, cout, bn, stride=1):
    """A 3x3 conv with an ELU at its output (Sec. 3.5); --bn puts batch norm before the ELU."""
    return (
        [nn.Conv2d(cin, cout, 3, stride, 1)]
        + ([nn.BatchNorm2d(cout)] if bn else [])
        + [nn.ELU(inplace=True)]
    )


class Decoder(nn.Module):
    """Fig. 1, left; G and D's decoder (the same architecture, not the same weights): a fully
    connected layer (no non-linearity) maps h (or z) to the 8x8xn tile h0; per scale two
    3x3 conv + ELU, nearest-neighbour 2x upsampling between scales; a 3x3 conv to the image
    (linear, as in the reference code). skip (Sec. 3.5.1): after each upsampling,
    concatenate h0 upsampled to the same size."""

    def __init__(self, h=64, image_size=32, channels=1, n=64, skip=False, bn=False):
        super().__init__()
        self.n, self.skip = n, skip
        self.fc = nn.Linear(h, 8 * 8 * n)
        self.blocks = nn.ModuleList(
            nn.Sequential(*conv_elu(2 * n if skip and i else n, n, bn), *conv_elu(n, n, bn))
            for i in range(n_scales(image_size))
        )
        self.out = nn.Conv2d(n, channels, 3, 1, 1)

    def forward(self, h):
        h0 = self.fc(h).view(-1, self.n, 8, 8)
        x = h0
        for i, block in enumerate(self.blocks):
            if i:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
                if self.skip:
                    x = torch.cat([x, F.interpolate(h0, size=x.shape[-2:], mode="nearest")], 1)
            x = block(x)
        return self.out(x)


class Encoder(nn.Module):
    """Fig. 1, right: a 3x3 conv to n filters, per scale two 3x3 conv + ELU, sub-sampling by
    a stride-2 3x3 conv that adds n filters (n, 2n, 3n, ...: linear growth), and at 8x8 a
    fully connected layer (no non-linearity) to the embedding h."""

    def __init__(self, h=64, image_size=32, channels=1, n=64, bn=False):
        super().__init__()
        k = n_scales(image_size)
        layers = conv_elu(channels, n, False)  # no batch norm on the input layer
        for i in range(k):
            c = n * (i + 1)
            layers += conv_elu(c, c, bn) + conv_elu(c, c, bn)
            if i < k - 1:
                layers += conv_elu(c, c + n, bn, stride=2)
        self.net = nn.Sequential(*layers)
        self.fc = nn.Linear(8 * 8 * n * k, h)

    def forward(self, x):
        return self.fc(self.net(x).flatten(1))


class Discriminator(nn.Module):
    """D, the auto-encoder of Sec. 3.5. forward(v) returns what both losses use, the
    reconstruction loss L(v) of each sample (Eq. 1); reconstruct(v) is the paper's D(v)."""

    def __init__(self, h=64, image_size=32, channels=1, n=64, skip=False, bn=False):
        super().__init__()
        self.encoder = Encoder(h, image_size, channels, n, bn)
        self.decoder = Decoder(h, image_size, channels, n, skip, bn)

    def reconstruct(self, v):
        return self.decoder(self.encoder(v))

    def forward(self, v):
        return reconstruction_loss(v, self.reconstruct(v))


def build_models(args, channels, num_classes=0):
    """G and D (unconditional: num_classes is accepted for the common signature and unused)."""
    g = Decoder(args.z_dim, args.image_size, channels, args.n_filters, args.skip, args.bn)
    d = Discriminator(args.nh, args.image_size, channels, args.n_filters, args.skip, args.bn)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


# ============================================================ loss
def reconstruction_loss(v, reconstruction):
    """Eq. 1 with eta = 1: L(v) = |v - D(v)|, the mean absolute error over pixels, per
    sample, in fp32."""
    return (v.float() - reconstruction.float()).abs().flatten(1).mean(1)


def d_loss(real_l, fake_l, k):
    """Sec. 3.4, the BEGAN objective for D: L_D = L(x) - k_t L(G(z_D)). k_t is a constant."""
    return real_l.mean() - (k.detach() if torch.is_tensor(k) else k) * fake_l.mean()


def g_loss(fake_l):
    """Sec. 3.4, the BEGAN objective for G: L_G = L(G(z_G))."""
    return fake_l.mean()


def update_k(k, l_real, l_fake, gamma=0.5, lambda_k=0.001):
    """Sec. 3.4: k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))), 0, 1), in fp32,
    without gradient."""
    with torch.no_grad():
        return (k + lambda_k * (gamma * l_real.float() - l_fake.float())).clamp(0.0, 1.0)


def convergence_measure(l_real, l_fake, gamma=0.5):
    """Sec. 3.4.1: M_global = L(x) + |gamma L(x) - L(G(z_G))|, in fp32."""
    l_real, l_fake = l_real.detach().float(), l_fake.detach().float()
    return l_real + (gamma * l_real - l_fake).abs()


def stalled(window_mean, best, tol=0.01):
    """The learning-rate decay's test: M has stalled when a window's mean is not at least
    ``tol`` (1%) below the lowest earlier window mean."""
    return window_mean > (1 - tol) * best


class Equilibrium:
    """BEGAN's equilibrium controller (Sec. 3.4) with the learning-rate decay on M (Sec. 4.1):
    the paper's state, which a resumed run restores (the run saves it like a model).

    ``k``: k_t (k_0 = 0, Sec. 3.4), a tensor on the device; ``m_sum``: M_global summed over
    the current decay window; ``m_best``: the lowest window mean so far; ``lr_scale``: the
    product of the halvings, which multiplies --lr-g and --lr-d."""

    def __init__(self, gamma, lambda_k, patience, device):
        self.gamma, self.lambda_k, self.patience = gamma, lambda_k, patience
        self.k = torch.zeros((), device=device)
        self.m_sum = torch.zeros((), device=device)
        self.m_best, self.lr_scale = math.inf, 1.0

    def update(self, l_real, l_fake, step):
        """k_{t+1} and M_global from this step's L(x) and L(G(z)); at the end of each window
        of ``patience`` steps, halve ``lr_scale`` if M has stalled. Returns M_global."""
        self.k = update_k(self.k, l_real, l_fake, self.gamma, self.lambda_k)
        m = convergence_measure(l_real, l_fake, self.gamma)
        self.m_sum += m
        if self.patience and (step + 1) % self.patience == 0:
            window = self.m_sum.item() / self.patience  # one host sync per window
            if stalled(window, self.m_best):
                self.lr_scale /= 2
            self.m_best = min(self.m_best, window)
            self.m_sum.zero_()
        return m

    def state_dict(self):
        return {"k": self.k, "m_sum": self.m_sum, "m_best": self.m_best, "lr_scale": self.lr_scale}

    def load_state_dict(self, state):
        self.k.copy_(state["k"])
        self.m_sum.copy_(state["m_sum"])
        self.m_best, self.lr_scale = float(state["m_best"]), float(state["lr_scale"])


def set_lr(args, opt_g, opt_d, scale):
    """Both learning rates: the base rate (--lr-g, --lr-d) times the decay's factor."""
    for opt, lr in ((opt_g, args.lr_g), (opt_d, args.lr_d)):
        for group in opt.param_groups:
            group["lr"] = lr * scale


# ============================================================ training
def check_args(args):
    from common import UserError

    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(
            f"--image-size {args.image_size} cannot be built: the nets double from "
            "8x8, so use a power of two >= 8 (32, 64, 128, ...)"
        )
    for name in ("lr_g", "lr_d"):  # Adam's first step, lr / (1 - beta1), must be a float32
        if not 0 < getattr(args, name) / (1 - args.beta1) < torch.finfo(torch.float32).max:
            raise UserError(
                f"--{name.replace('_', '-')} {getattr(args, name):g} must be positive "
                "and small enough that Adam's step lr / (1 - beta1) is finite in "
                "float32 (else inf/NaN weights)"
            )


def train(args):
    from common.run import Run, all_ranks_mean, fixed_inputs

    rank, world, device = setup_distributed(args.device)
    run = Run(SCRIPT, args, rank, world, device, check_args)
    data = run.dataset()
    batches = run.batches(data)

    G, D, ema = run.models(build_models, data.channels, 0)
    betas = (args.beta1, args.beta2)  # fused: one kernel for all tensors (CPU, CUDA)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=betas, fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas, fused=True)
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    eq = Equilibrium(args.gamma, args.lambda_k, args.lr_decay_patience, device)  # k_t, M
    grid = fixed_inputs(64, args.z_dim, 0, 1234, device, latent=latents)[:1]
    calibrate = [
        fixed_inputs(256, args.z_dim, 0, 4321 + i, device, latent=latents)[:1] for i in range(4)
    ]
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
            "equilibrium": eq,
        },
        grid,
        calibrate,
        info={"channels": data.channels, "num_classes": 0},
        note=f"gamma {args.gamma:g}, lambda_k {args.lambda_k:g}",
    )
    set_lr(args, opt_g, opt_d, eq.lr_scale)  # a rate given on resume is the new base
    G_step, D_step = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)

    stream = iter(batches)
    while run.step < args.steps:
        real, _ = next(stream)
        real = real.contiguous(memory_format=torch.channels_last)
        z = torch.rand(real.shape[0], args.z_dim, device=device) * 2 - 1  # U[-1, 1], as latents()

        # D step: reconstruct real images well and fakes badly, weighted by k_t (Sec. 3.4).
        with autocast(device, args.amp):
            fake = G_step(z)
            real_l, fake_l = D_step(real), D_step(fake.detach())
            loss_d = d_loss(real_l, fake_l, eq.k)
        optimizer_step(loss_d, opt_d, scaler_d, D, world)

        # G step: make fakes that D reconstructs well. D's weights need no grads.
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D_step(fake))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, run.step, args.ema_warmup)

        # k_t and M from L(x) and L(G(z)) of one D, the one before its update (the forward of
        # D's step, as in carpedm20's trainer.py), as fp32 constants, averaged over ranks so that
        # every rank keeps the same k_t.
        l_real, l_fake = all_ranks_mean(
            torch.stack([real_l.detach().float().mean(), fake_l.detach().float().mean()]), world
        )
        m = eq.update(l_real, l_fake, run.step)  # k_{t+1} and M_global (Sec. 3.4, 3.4.1)
        set_lr(args, opt_g, opt_d, eq.lr_scale)  # halved when M stalls (Sec. 4.1)

        run.end_step(
            d_loss=loss_d,
            g_loss=loss_g,
            l_real=l_real,
            l_fake=l_fake,
            M=m,
            k=eq.k,
            lr_g=args.lr_g * eq.lr_scale,
        )
    if rank == 0:
        draw_convergence(run.out, args.gamma)
    return run.finish(note=f", M curve {os.path.join(run.out, 'convergence.png')}")


def draw_convergence(out, gamma):
    """<run>/convergence.png: M_global against the step, from metrics.jsonl."""
    from common.images import save_curve
    from common.run import read_metrics

    logged = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "M" in r]
    save_curve(
        os.path.join(out, "convergence.png"),
        [r["step"] for r in logged],
        [r["M"] for r in logged],
        f"BEGAN convergence measure M_global (gamma {gamma:g})",
    )


# ============================================================ sampling
def load_generator(path, device="cpu", use_ema=True):
    """generate(n, seed=0, temperature=1.0, z=None) -> images in [-1, 1] from a checkpoint's
    EMA generator (or raw G), for --sample and the evaluation tools; z ~ U[-1, 1] scaled by
    the temperature. BEGAN is unconditional: num_classes is 0."""
    from common.run import Generate

    return Generate(SCRIPT, path, device, use_ema, build_models, latent=latents)


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
