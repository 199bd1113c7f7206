# SPDX-License-Identifier: MIT
"""SAGAN: Self-Attention Generative Adversarial Networks. Zhang, Goodfellow, Metaxas, Odena,
ICML 2019. arXiv:1805.08318.

The idea: convolutions see a local neighbourhood only, so a convolutional GAN struggles with
structure that spans the image (a dog's legs, a digit's closing stroke). SAGAN adds a
self-attention block (Sec. 3, Eqs. 1-3) to G and D: every position j (a query) takes a
softmax-weighted sum over all positions i (the keys), beta_{j,i} = softmax_i(f(x_i)^T g(x_j)),
added back with a learned scale gamma that starts at 0, so the nets first rely on local cues.
Training is stabilised (Sec. 4) by spectral normalisation (Miyato et al. 2018) on every layer
of G and D and by TTUR (Heusel et al. 2017): lr 1e-4 for G, 4e-4 for D, one D step per G
step, Adam betas (0, 0.9). The loss is the hinge loss (Eq. 4). The nets are residual and
class-conditional: conditional batch norm in G, a projection D (Miyato & Koyama 2018; Sec. 5).

Usage:
    python sagan.py                                   # class-conditional digits, 16x16 (auto)
    python sagan.py --config paper --dataset folder --data-path ~/imagenet   # Sec. 5
    python sagan.py --dataset folder --data-path ~/cats --image-size 64 --attention-res 32
    torchrun --nproc_per_node=8 sagan.py --dataset cifar10 --data-path ~/data --amp bf16
    python sagan.py --sample 40 --checkpoint auto   # one row per class
    python sagan.py --sample 10 --attention-map --attention-query 8 20 --checkpoint <run>

On CUDA --config auto is the authors' ImageNet run (brain-research/self-attention-gan).

Based on dcgan.py; differs in: residual G and D with spectral norm on every layer,
self-attention, conditional batch norm in G and a projection D (``--unconditional`` turns
them off), the hinge loss, TTUR, Adam (0, 0.9), orthogonal init, D's mean scores (not
probabilities) in the log, the power-iteration vectors synced under torchrun, and
``--attention-map`` for sampling.

Departures from the paper, and choices where it is silent (docs/sagan.md has the details):
* Architecture: the authors' code (the SNGAN ResNets) scaled by ``--image-size``. On a CPU
  widths 16/32, batch 16, 1500 steps at 16x16 and 1300 at 32x32 (the paper: 64, 256, 1M).
  G's update reuses D's fake batch.
* ``--attention-res`` (default image_size / 4, Table 1's feat32 at 128x128) places attention
  in G and D. f, g, h have C/8 channels each, as Sec. 3 writes; the authors' code
  (brain-research/self-attention-gan, non_local.py) gives the values h C/2 channels (its
  output 1x1 conv maps them back to C) and max-pools keys and values 2x2: not followed.
* Conditional batch norm: BigGAN's shared class embedding by default (``--shared-dim 0``:
  the authors' per-class tables, too slow to separate the classes at lr 1e-4). Data
  without labels falls back to unconditional with a one-line warning.
* Adam beta2 0.9 (Sec. 5), also in --config paper, which is the paper's setting: the
  authors' code (model.py) passes only beta1 = 0, so TF's default beta2 0.999 applies there.
* Orthogonal init (Saxe et al. 2014), as BigGAN's SAGAN baseline (Brock et al. 2019);
  the paper names none, and the authors' code (ops.py) uses Xavier (Glorot) in every layer.
* EMA generator (not in the paper): its batch-norm statistics are recomputed before use.
"""

import argparse
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import spectral_norm

# ============================================================ flags
SCRIPT = "sagan"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--g-width", "2", "--d-width", "2"]
# --config paper: ImageNet at 128x128 (Sec. 5: batch 256, TTUR lrs 1e-4 and 4e-4, betas (0, 0.9),
# 1M steps; the authors' code: z 128, widths 64, per-class gains), no EMA.
PAPER = {
    "image_size": 128,
    "batch_size": 256,
    "steps": 1000000,
    "lr_g": 1e-4,
    "lr_d": 4e-4,
    "beta1": 0.0,
    "beta2": 0.9,
    "z_dim": 128,
    "g_width": 64,
    "d_width": 64,
    "shared_dim": 0,
    "ema_decay": 0.0,
}
# --config auto on a CPU above 16x16 (MNIST, CIFAR-10, folders at 32x32): the digits' widths,
# 1300 steps (a 32x32 step costs about twice a 16x16 one; docs/sagan.md, "--config auto").
CPU_32 = {"steps": 1300}


def auto_config(args):
    """on a CPU the defaults below at 16x16 (the digits), 1300 steps above (a few CPU-minutes;
    on the digits more steps lost the variety within a class); on CUDA the authors' ImageNet
    run: widths 64, per-class CBN gains, global batch 256 (bounded by GPU memory), 256M images
    (1M steps at 256), EMA 0.9999."""
    seen = args.auto
    if seen["device"] == "cpu":
        return {} if args.image_size <= 16 else dict(CPU_32)
    size, processes, gib = args.image_size, seen["processes"], seen["gpu_gib"]
    # Global batch 256: 64 per GPU on 4 GPUs (README; train_imagenet.py batch_size 64,
    # num_towers 4); the paper, Sec. 5.
    batch = max(1, 256 // processes)
    if gib:  # 64 images of 128x128 per tower, taken to fit 16 GiB (the README names no GPU)
        batch = max(1, min(batch, int(64 * gib / 16 * (128 / size) ** 2)))
    return {
        "g_width": 64,
        "d_width": 64,  # model.py: gf_dim 64, df_dim 64
        "shared_dim": 0,  # per-class CBN gains and biases (generator.py, ops.py)
        "batch_size": batch,
        # 1M steps at batch 256 (README; the paper, Sec. 5): 256,000 kimg at any batch
        "steps": steps_for(256000, batch, processes),
        # lr 1e-4 (G), 4e-4 (D), not tied to the batch (model.py; Sec. 5): the defaults.
        "ema_decay": 0.9999,  # not in the paper: BigGAN's (Brock et al. 2019, App. B)
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="SAGAN (Zhang et al. 2019)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Sec. 5: lr 1e-4 for G and 4e-4 for D (TTUR); z of size 128 (the authors' code). Batch 16
    # and the steps are a digits default (the paper: batch 256, 1M steps; --config auto on CUDA):
    # at 3100 steps the samples of a class were nearly one image, at 1500 they vary
    # (docs/results.md, "sagan's widths on the digits").
    add_common_args(
        p,
        batch_size=16,
        steps=1500,
        lr_g=1e-4,
        lr_d=4e-4,
        z_dim=128,
        sources={"lr_g": "Sec. 5, TTUR", "lr_d": "Sec. 5, TTUR", "z_dim": "authors' code"},
        configs={"auto": auto_config, "paper": PAPER},
    )
    m = p.add_argument_group("SAGAN")
    m.add_argument(
        "--g-width",
        type=in_range(int, "[1, inf)"),
        default=16,
        help="G's channels at the image resolution "
        "(the authors' gf_dim), x16 at 4x4 for 128x128 (the paper's model: 64)",
    )
    m.add_argument(
        "--d-width",
        type=in_range(int, "[1, inf)"),
        default=32,
        help="D's channels after its first block "
        "(the authors' df_dim), doubling per halving (the paper's model: 64)",
    )
    m.add_argument(
        "--attention-res",
        type=in_range(int, "[0, inf)"),
        default=None,
        help="side of the feature maps that get self-attention in G and D; default "
        "image_size/4 (32x32 maps at 128x128, Table 1's feat32); 0: none",
    )
    m.add_argument(
        "--shared-dim",
        type=in_range(int, "[0, inf)"),
        default=128,
        help="conditional G: CBN gains and biases as linear maps of one shared class "
        "embedding of this size (BigGAN's); 0: per-class gains (the authors' code)",
    )
    m.add_argument(
        "--unconditional",
        action="store_true",
        help="ignore labels: plain batch norm in G, no projection in D",
    )
    m.add_argument(
        "--beta1", type=in_range(float, "[0, 1)"), default=0.0, help="Adam beta1 (Sec. 5)"
    )
    m.add_argument(
        "--beta2",
        type=in_range(float, "[0, 1)"),
        default=0.9,
        help="Adam beta2 (Sec. 5; the authors' code: TF's default 0.999)",
    )
    m.add_argument(
        "--attention-map",
        action="store_true",
        help="--sample: save G's attention "
        "over key positions for one query position, beside each image",
    )
    m.add_argument(
        "--attention-query",
        type=in_range(int, "[0, inf)"),
        nargs=2,
        default=None,
        metavar=("ROW", "COL"),
        help="--attention-map: the query position in output pixels (None: the centre)",
    )
    args = parse_with_resume(p, argv)
    if args.attention_res is None:
        args.attention_res = max(4, args.image_size // 4)
    return args


# ============================================================ model
def sn(layer):
    """Orthogonal init (Saxe et al. 2014; BigGAN's SAGAN baseline; the authors' code: Xavier),
    zero bias, then spectral norm (Miyato et al. 2018): W / sigma(W), sigma from one power
    iteration per training forward with a persistent u (a buffer: in the checkpoint); the
    training step turns D's off after its real batch (``power_iteration``): one per step."""
    nn.init.orthogonal_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return spectral_norm(layer)


def g_widths(image_size, ch):
    """G's channels at 4x4, 8x8, ..., image_size: ch * image_size / r, capped at 16 * ch."""
    n = int(math.log2(image_size)) - 2
    return [ch * min(2 ** (n - i), 16) for i in range(n + 1)]


def d_widths(image_size, ch):
    """D's channels after each down-block (image_size/2, ..., 4x4): ch doubling, capped at 16ch."""
    n = int(math.log2(image_size)) - 2
    return [ch * min(2**i, 16) for i in range(n)]


def up(x):
    """Nearest-neighbour 2x upsampling (the authors' G blocks)."""
    return F.interpolate(x, scale_factor=2.0, mode="nearest")


class ConditionalBatchNorm(nn.Module):
    """Batch norm with a class-dependent gain 1 + dg and bias db (Sec. 5; de Vries et al.
    2017); plain affine batch norm when num_classes is 0. ``shared_dim`` 0: dg, db looked up
    per class (the authors' code); > 0: linear maps of G's shared class embedding (BigGAN,
    Brock et al. 2019, Sec. 3). Either way dg = db = 0 at the start, as the authors' ones/zeros.
    Not spectrally normalised (neither the authors' code nor BigGAN normalises CBN gains)."""

    def __init__(self, c, num_classes=0, shared_dim=0):
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(c, affine=not num_classes)
        if num_classes:
            self.gain, self.bias = (
                nn.Linear(shared_dim, c, bias=False) if shared_dim else nn.Embedding(num_classes, c)
                for _ in range(2)
            )
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x, y=None):
        """y: labels (per-class gains) or the shared class embedding (B, shared_dim)."""
        h = self.bn(x)
        if self.num_classes:
            h = h * (1 + self.gain(y)[:, :, None, None]) + self.bias(y)[:, :, None, None]
        return h


class SelfAttention(nn.Module):
    """Sec. 3: queries g(x_j), keys f(x_i), values h(x_i), C/8 channels each (1x1 convs);
    Eq. 1: beta_{j,i} = softmax over the keys i of s_ij = f(x_i)^T g(x_j), for each query j;
    Eq. 2: o_j = v(sum_i beta_{j,i} h(x_i)); Eq. 3: y = gamma * o + x with gamma = 0 at init.
    ``keep``, a query index or slice (--attention-map): every forward appends beta[:, keep]
    to the list ``.beta``, so a generator that runs in chunks leaves one entry per chunk."""

    def __init__(self, c, k=8):
        super().__init__()
        cb = max(1, c // k)
        self.f, self.g, self.h = (sn(nn.Conv2d(c, cb, 1, bias=False)) for _ in range(3))
        self.v = sn(nn.Conv2d(cb, c, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))
        self.keep, self.beta = None, []

    def forward(self, x):
        b, c, hh, ww = x.shape
        f, g, h = (m(x).flatten(2) for m in (self.f, self.g, self.h))  # (B, C/8, N)
        s = torch.bmm(g.transpose(1, 2), f)  # s[b, j, i] = g(x_j) . f(x_i): queries j, keys i
        beta = F.softmax(s.float(), dim=-1).to(h.dtype)  # normalised over the keys i (Eq. 1)
        if self.keep is not None:
            self.beta.append(beta[:, self.keep].detach())
        o = torch.bmm(h, beta.transpose(1, 2)).view(b, -1, hh, ww)  # o_j = sum_i beta_ji h_i
        return self.gamma * self.v(o) + x


class GBlock(nn.Module):
    """Up-block of G: CBN, ReLU, 2x up, 3x3 conv, CBN, ReLU, 3x3 conv; shortcut 2x up + 1x1."""

    def __init__(self, cin, cout, num_classes=0, shared_dim=0):
        super().__init__()
        self.b1 = ConditionalBatchNorm(cin, num_classes, shared_dim)
        self.b2 = ConditionalBatchNorm(cout, num_classes, shared_dim)
        self.c1, self.c2 = sn(nn.Conv2d(cin, cout, 3, 1, 1)), sn(nn.Conv2d(cout, cout, 3, 1, 1))
        self.skip = sn(nn.Conv2d(cin, cout, 1))

    def forward(self, x, y=None):
        h = self.c1(up(F.relu(self.b1(x, y))))
        h = self.c2(F.relu(self.b2(h, y)))
        return h + self.skip(up(x))


class DBlock(nn.Module):
    """Block of D: (ReLU,) 3x3 conv, ReLU, 3x3 conv, (2x2 mean pool); shortcut 1x1 conv (+ pool)
    when the shape changes. ``first``: the "optimized" block on the image, without the
    leading ReLU and with the pool before the shortcut's conv (Miyato et al. 2018)."""

    def __init__(self, cin, cout, down=True, first=False):
        super().__init__()
        self.down, self.first = down, first
        self.c1, self.c2 = sn(nn.Conv2d(cin, cout, 3, 1, 1)), sn(nn.Conv2d(cout, cout, 3, 1, 1))
        self.skip = sn(nn.Conv2d(cin, cout, 1)) if cin != cout or down else None

    def pool(self, x):
        return F.avg_pool2d(x, 2) if self.down else x

    def forward(self, x):
        h = self.pool(self.c2(F.relu(self.c1(x if self.first else F.relu(x)))))
        if self.skip is None:
            return h + x
        return h + (self.skip(self.pool(x)) if self.first else self.pool(self.skip(x)))


class Generator(nn.Module):
    """z -> SN-linear -> 4x4, up-blocks to image_size (self-attention after the block that
    makes ``attention_res``), BN, ReLU, 3x3 conv, tanh. Labels enter through CBN only
    (with ``shared_dim``, through one class embedding shared by every CBN)."""

    def __init__(
        self,
        z_dim=128,
        image_size=32,
        channels=1,
        width=16,
        num_classes=0,
        attention_res=8,
        shared_dim=0,
    ):
        super().__init__()
        w = g_widths(image_size, width)
        self.num_classes, self.w0, self.attention_res = num_classes, w[0], attention_res
        self.shared = (
            nn.Embedding(num_classes, shared_dim)  # N(0, 1) init, as BigGAN
            if num_classes and shared_dim
            else None
        )
        self.project = sn(nn.Linear(z_dim, w[0] * 4 * 4))
        self.blocks = nn.ModuleList(
            GBlock(cin, cout, num_classes, shared_dim) for cin, cout in zip(w[:-1], w[1:])
        )
        res = [4 * 2**i for i in range(len(w))]  # resolution after the projection and each block
        self.attention = SelfAttention(w[res.index(attention_res)]) if attention_res else None
        self.out = nn.Sequential(
            nn.BatchNorm2d(w[-1]), nn.ReLU(), sn(nn.Conv2d(w[-1], channels, 3, 1, 1)), nn.Tanh()
        )

    def forward(self, z, y=None):
        if self.shared is not None:
            y = self.shared(y)
        h = self.project(z).view(-1, self.w0, 4, 4)
        for block in [None, *self.blocks]:
            if block is not None:
                h = block(h, y)
            if self.attention is not None and h.shape[-1] == self.attention_res:
                h = self.attention(h)
        return self.out(h)


class Discriminator(nn.Module):
    """Down-blocks from the image to 4x4 (self-attention after the one that makes
    ``attention_res``), one block at 4x4, ReLU, global sum pooling, SN-linear; conditional:
    plus the projection <embed(y), h> (Miyato & Koyama 2018, Eq. 3). Outputs a raw score."""

    def __init__(self, image_size=32, channels=1, width=16, num_classes=0, attention_res=8):
        super().__init__()
        w = d_widths(image_size, width)
        self.num_classes, self.attention_res = num_classes, attention_res
        blocks = [DBlock(channels, w[0], first=True)]
        blocks += [DBlock(cin, cout) for cin, cout in zip(w[:-1], w[1:])]
        self.blocks = nn.ModuleList([*blocks, DBlock(w[-1], w[-1], down=False)])
        self.attention = (
            SelfAttention(w[int(math.log2(image_size // attention_res)) - 1])
            if attention_res
            else None
        )
        self.out = sn(nn.Linear(w[-1], 1))
        # Spectrally normalised, as the authors' sn_embedding.
        self.embed = sn(nn.Embedding(num_classes, w[-1])) if num_classes else None

    def forward(self, x, y=None):
        h, attended = x, False
        for block in self.blocks:
            h = block(h)
            if self.attention is not None and not attended and h.shape[-1] == self.attention_res:
                h, attended = self.attention(h), True
        h = F.relu(h).sum((2, 3))
        out = self.out(h).view(-1)
        if self.num_classes:
            out = out + (self.embed(y) * h).sum(1)
        return out


def build_models(args, channels, num_classes):
    g = Generator(
        args.z_dim,
        args.image_size,
        channels,
        args.g_width,
        num_classes,
        args.attention_res,
        args.shared_dim,
    )
    d = Discriminator(args.image_size, channels, args.d_width, num_classes, args.attention_res)
    return g, d  # initialised in their layers (``sn``): orthogonal, then spectral norm


def power_iteration(module, on):
    """Turn the power-iteration step of every spectrally normalised layer of ``module`` on or
    off; off, sigma still comes from the current u, v, and W's gradient still flows through
    it (torch runs the step in a layer's training mode only; ``module`` itself keeps its mode)."""
    for mod in module.modules():
        if hasattr(mod, "_u"):  # torch's spectral-norm parametrization, which holds u and v
            mod.train(on)


def spectral_norm_buffers(module):
    """The power-iteration vectors u, v of every spectrally normalised layer."""
    return [b for name, b in module.named_buffers() if name.endswith(("._u", "._v"))]


def sync_spectral_norm(module, world):
    """Broadcast rank 0's power-iteration vectors u, v in one flat buffer. Each rank updates
    u from its own copy of W, never from its data, and W is the same on every rank, so this
    is a no-op unless kernels are not bit-reproducible."""
    if world == 1:
        return
    bufs = spectral_norm_buffers(module)
    flat = torch.cat([b.reshape(-1) for b in bufs])
    dist.broadcast(flat, 0)
    for b, f in zip(bufs, flat.split([b.numel() for b in bufs])):
        b.copy_(f.view_as(b))


# ============================================================ loss
def d_loss(real_scores, fake_scores):
    """Eq. 4, D's hinge loss: E[max(0, 1 - D(x, y))] + E[max(0, 1 + D(G(z), y))]."""
    return F.relu(1 - real_scores.float()).mean() + F.relu(1 + fake_scores.float()).mean()


def g_loss(fake_scores):
    """Eq. 4, G's loss: -E[D(G(z), y)] (no hinge for G)."""
    return -fake_scores.float().mean()


# ============================================================ training
def check_args(args):
    from common import UserError

    s, a = args.image_size, args.attention_res
    if s < 8 or s & (s - 1):
        raise UserError(
            f"--image-size {s} cannot be built: SAGAN doubles from 4x4, "
            "so use a power of two >= 8 (32, 64, 128, ...)"
        )
    if a and (a < 4 or a > s // 2 or a & (a - 1)):
        raise UserError(
            f"--attention-res {a} is not a feature map of a {s}x{s} model: "
            f"use a power of two from 4 to {s // 2}, or 0 for none"
        )


def train(args):
    from common.run import Run, fixed_inputs

    rank, world, device = setup_distributed(args.device)
    run = Run(SCRIPT, args, rank, world, device, check_args)
    data = run.dataset()
    if not args.unconditional and not data.num_classes:  # a folder without class sub-folders
        if rank == 0:
            print(
                f"warning: {args.dataset} at {args.data_path!r} has no labels; training "
                "unconditional (add --unconditional to silence this)",
                file=sys.stderr,
            )
        args.unconditional = True
    nc = 0 if args.unconditional else data.num_classes
    batches = run.batches(data)

    G, D, ema = run.models(build_models, data.channels, nc)
    betas = (args.beta1, args.beta2)  # fused: one kernel for all tensors (CPU, CUDA)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=betas, fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas, fused=True)
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    grid = fixed_inputs(8 * nc if nc else 64, args.z_dim, nc, 1234, device)  # a row per class
    # Recalibrating the EMA generator's batch norm also runs its power iterations.
    calibrate = [fixed_inputs(256, args.z_dim, nc, 4321 + i, device) for i in range(4)]
    r = args.attention_res
    note = (f"{nc} classes, " if nc else "") + (f"attention at {r}x{r}" if r else "no attention")
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
        note=note,
    )
    G_step, D_step = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)

    stream = iter(batches)
    while run.step < args.steps:
        real, y = next(stream)  # y is ignored by unconditional nets
        real = real.contiguous(memory_format=torch.channels_last)
        z = torch.randn(real.shape[0], args.z_dim, device=device)
        y_fake = torch.randint(nc, (real.shape[0],), device=device) if nc else None

        # D step (Eq. 4): hinge loss, lr 4e-4 (TTUR), one D step per G step. D's u takes one
        # power-iteration step per training step, on the real batch: the authors' code runs
        # D(x) with update_collection None and D(G(z)) with "NO_OPS" (model.py).
        with autocast(device, args.amp):
            fake = G_step(z, y_fake)
            real_scores = D_step(real, y)
            power_iteration(D, False)
            fake_scores = D_step(fake.detach(), y_fake)
            loss_d = d_loss(real_scores, fake_scores)
        optimizer_step(loss_d, opt_d, scaler_d, D, world)

        # G step (Eq. 4): minimise -D(G(z), y), lr 1e-4 (TTUR). D's weights need no grads.
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D_step(fake, y_fake))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        power_iteration(D, True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, run.step, args.ema_warmup)

        if (run.step + 1) % args.log_every == 0 or run.step + 1 == args.steps:
            sync_spectral_norm(G, world)  # rank 0's u, v at every log: a safety net
            sync_spectral_norm(D, world)
        run.end_step(
            d_loss=loss_d,
            g_loss=loss_g,
            d_real=real_scores.detach().float().mean(),
            d_fake=fake_scores.detach().float().mean(),
            attn_gamma_g=G.attention.gamma if G.attention is not None else 0.0,
        )
    return run.finish()


# ============================================================ sampling
def load_generator(path, device="cpu", use_ema=True):
    """generate(n, seed=0, temperature=1.0, z=None, labels=None) -> images in [-1, 1] from a
    checkpoint's EMA generator (or raw G), for --sample and the evaluation tools."""
    from common.run import Generate

    return Generate(SCRIPT, path, device, use_ema, build_models)


def attention_figure(x, beta, query, alpha=0.6):
    """For each image: the image with the query pixel marked (red), and the attention
    beta_{j,i} of that query j over all key positions i as a heat map (yellow) over the
    image. x: (N, C, S, S) in [-1, 1]; beta: (N, R*R) for the query; returns (2N, 3, S, S)."""
    n, _, s, _ = x.shape
    r = int(math.isqrt(beta.shape[1]))
    gray = x.float().mean(1, keepdim=True).add(1).div(2).expand(-1, 3, -1, -1)  # in [0, 1]
    marked = gray.clone()
    qr, qc = query
    marked[:, :, qr, qc] = torch.tensor([1.0, 0.0, 0.0])
    heat = beta.float().view(n, 1, r, r)
    heat = heat / heat.amax((2, 3), keepdim=True)
    heat = F.interpolate(heat, size=(s, s), mode="nearest")  # a key covers (S/R)^2 pixels
    overlay = (1 - alpha) * gray + alpha * heat * torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)
    overlay[:, :, qr, qc] = torch.tensor([1.0, 0.0, 0.0])
    return torch.stack([marked, overlay], 1).flatten(0, 1).mul(2).sub(1)


def attention_map(generate, z, labels, query, image_size):
    """Images and G's attention weights over the keys for one query (output pixels): the rows
    of every chunk that ``generate`` runs, in order, so any number of images is covered."""
    attn, r = generate.model.attention, generate.model.attention_res
    attn.keep = (query[0] * r // image_size) * r + query[1] * r // image_size  # query's feature
    attn.beta = []
    try:
        x = generate(z=z, labels=labels)
        beta = torch.cat(attn.beta).float().cpu()
    finally:
        attn.keep, attn.beta = None, []
    return x, beta


def sample(script, args, load_generator):
    """--sample N [--interpolate K], and --attention-map: each of the N images (the same as
    the plain grid's) beside G's attention over all positions for one query pixel."""
    from common import UserError
    from common.images import save_grid
    from common.run import Sampling

    s = Sampling(script, args, load_generator)
    if args.interpolate or not args.attention_map:
        return s.interpolation() if args.interpolate else s.grid()
    g, size, n = s.generate, s.generate.run.image_size, args.sample
    if g.model.attention is None:
        raise UserError(
            "--attention-map: this model has no attention layer "
            "(it was trained with --attention-res 0)"
        )
    query = args.attention_query or [size // 2, size // 2]
    if not all(0 <= q < size for q in query):
        raise UserError(
            f"--attention-query {query[0]} {query[1]} lies outside the {size}x{size} "
            f"image; use ROW COL in 0..{size - 1}"
        )
    nc = g.num_classes
    y = (torch.arange(n) % nc).sort().values if nc else None  # one row per class
    z = torch.randn(n, g.z_dim, generator=torch.Generator().manual_seed(args.seed))
    x, beta = attention_map(g, z * args.temperature, y, query, size)
    nrow = int(math.ceil(n / nc)) if nc else int(math.ceil(math.sqrt(n)))
    png = save_grid(attention_figure(x, beta, query), s.file("attention"), nrow=2 * nrow)
    r = g.model.attention_res
    print(
        f"wrote {png} ({n} images, each beside G's {r}x{r} attention for the query pixel "
        f"({query[0]}, {query[1]}), {s.which} generator)"
    )
    return png


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
