# SPDX-License-Identifier: MIT
"""StyleGAN2: Analyzing and Improving the Image Quality of StyleGAN. Karras, Laine, Aittala,
Hellsten, Lehtinen, Aila, CVPR 2020. arXiv:1912.04958.

The idea: AdaIN normalises each feature map by its own statistics, so StyleGAN's generator
sneaks signal strength past it with droplet artifacts (Sec. 2). StyleGAN2 modulates the
weights instead: the style s scales each 3x3 conv's input channels, w'_ijk = s_i w_ijk, and
each output channel is divided by its expected standard deviation, w''_ijk = w'_ijk /
sqrt(sum_i,k w'_ijk^2 + eps) (Eq. 1-3). A skip generator and a residual discriminator
replace progressive growing (Sec. 4.1, Fig. 7). Lazy regularisation: R1 on reals every 16 D
steps and, every 4 G steps, a path-length penalty pulling ||J_w^T y||_2 towards its running
mean a, so that a fixed step in W moves the image by a fixed amount (Sec. 3.1-3.2, Eq. 4).
The rest is StyleGAN's: an 8-layer mapping z -> w at 1/100 learning rate, a learned constant
input, per-layer noise, style mixing (p 0.9), minibatch stddev in D, equalized learning
rate, the non-saturating logistic loss, Adam (0.002, betas (0, 0.99)), an EMA of G, and
truncation of w when sampling. Config E with skip/residual networks: config F but its width.

Usage:
    python stylegan2.py                                   # digits (embedded), 16x16 (auto)
    python stylegan2.py --config paper --dataset folder --data-path ~/ffhq   # config F
    python stylegan2.py --dataset folder --data-path ~/cats --image-size 64 --augment --flip
    torchrun --nproc_per_node=8 stylegan2.py --dataset folder --data-path ~/ffhq \\
        --image-size 256 --channel-base 32768 --channel-max 512 --amp fp16   # config F
    python stylegan2.py --resume auto                     # continue the latest run
    python stylegan2.py --sample 64 --checkpoint auto --truncation 0.7
    python stylegan2.py --sample 1 --mixing-grid 5 --checkpoint auto   # style-mixing grid

Based on dcgan.py; differs in the networks, the lazy regularisers, style mixing, the EMA's
half-life, sampling extras, DiffAugment, per-block precision, no --conditional/channels-last.

Departures from the paper, and choices where it is silent (more in docs/stylegan2.md):
* --config auto: on CUDA StyleGAN2-ADA's --cfg auto (train.py; cfg cifar for CIFAR-10); on a
  CPU a CPU-sized width, min(--channel-base / r, --channel-max), 1024/64 (config F: 32768/512).
* Resampling: the [1,3,3,1] FIR filter through common.ops, whose gradient is itself a blur
  (cheap double backward); a copy of this file alone falls back to plain autograd.
* Lazy regularisation, the EMA's half-life and w_avg follow the official code. The EMA's
  ramp-up (--ema-rampup 0.05) is StyleGAN2-ADA's (train.py, cfg auto and cifar); StyleGAN2's
  config F has none (--ema-rampup 0). Truncation only when sampling, never in training.
* Noise inputs: evaluation (load_generator's generate) draws them at random, as the official
  metrics do; sample grids, walks and the mixing grid use the constant maps, to compare.
* Mixed precision as StyleGAN2-ADA: only the top --fp16-res resolutions under autocast, conv
  outputs clamped to +-256. --augment: DiffAugment (Zhao et al. 2020), not in the paper.
"""

import argparse
import contextlib
import functools
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

try:  # custom ops with cheap second-order gradients: the one module-level use of common/
    from common.ops import bias_act, setup_filter, upfirdn2d
except ImportError:  # this file copied alone: plain-autograd versions of the same ops

    def setup_filter(f):  # a separable 1-D filter, normalised
        return torch.as_tensor(f, dtype=torch.float32) / sum(f)

    def upfirdn2d(x, f, up=1, down=1, padding=0, gain=1.0):
        """Zero insertion, pad (x0, x1, y0, y1), separable FIR filter, downsampling."""
        px0, px1, py0, py1 = (padding,) * 4 if isinstance(padding, int) else padding
        n, c, h, w = x.shape
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1])
        x = F.pad(x.reshape(n, c, h * up, w * up), [px0, px1, py0, py1])
        f = (f * gain**0.5).flip(0).to(x.dtype)
        x = F.conv2d(x, f.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, f.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
        return x[:, :, ::down, ::down]

    def bias_act(x, b=None, act="linear", gain=None, clamp=None):
        """act(x + b) * gain, clamped; lrelu has slope 0.2 and default gain sqrt(2)."""
        if b is not None:
            x = x + b.to(x.dtype).view(1, -1, *([1] * (x.ndim - 2)))
        if act == "lrelu":
            x = F.leaky_relu(x, 0.2) * (math.sqrt(2) if gain is None else gain)
        elif gain is not None and gain != 1:
            x = x * gain
        return x.clamp(-clamp, clamp) if clamp is not None else x


# ============================================================ flags
SCRIPT = "stylegan2"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = [
    "--channel-base",
    "64",
    "--channel-max",
    "8",
    "--z-dim",
    "8",
    "--w-dim",
    "8",
    "--mapping-layers",
    "2",
]
# --config paper: config F on FFHQ at 1024x1024 (App. B: batch 32, Adam 0.002 with betas (0, 0.99),
# R1 gamma 10 every 16 D steps, path length 2 every 4 G steps, EMA half-life 10 kimg without a
# ramp-up; channels min(32768 / res, 512); StyleGAN: z, w of 512, 8 mapping layers, mixing 0.9).
PAPER = {
    "image_size": 1024,
    "batch_size": 32,
    "lr_g": 0.002,
    "lr_d": 0.002,
    "z_dim": 512,
    "w_dim": 512,
    "mapping_layers": 8,
    "channel_base": 32768,
    "channel_max": 512,
    "r1_gamma": 10.0,
    "r1_every": 16,
    "pl_weight": 2.0,
    "pl_every": 4,
    "style_mixing": 0.9,
    "beta1": 0.0,
    "beta2": 0.99,
    "mbstd_group": 4,
    "ema_kimg": 10.0,
    "ema_rampup": 0.0,
    "ema_warmup": False,
}
# --config auto on a CPU: the defaults below, sized for the digits at 16x16 (docs/stylegan2.md).
CPU = {
    "channel_base": 1024,
    "channel_max": 64,
    "batch_size": 16,
    "steps": 2250,
    "lr_g": 0.002,
    "lr_d": 0.002,
    "r1_gamma": 10.0,
    "mbstd_group": 4,
    "ema_kimg": 10.0,
    "ema_rampup": 0.05,
    "mapping_layers": 8,
}
# On a CPU above 16x16: the 16x16 run's cost, 2250 x 68 / 127 (G + D's MFLOP per image).
STEPS_32 = 1200
# Memory of a training step (G, path length, D, R1) per image and per activation (r^2 x
# channels, summed over the resolutions): the slope of the peak between batch 2 and 8 at 64x64
# and half width, fp32 on a CPU (docs/stylegan2.md); --amp needs less. It bounds auto's batch.
BYTES_PER_UNIT = 83


def auto_config(args):
    """on a CPU the defaults below (a CPU-sized net, batch 16, 2250 steps at 16x16 and 1200
    above: about ten minutes); on CUDA StyleGAN2-ADA's --cfg auto for the resolution and the
    GPUs (its cifar config for CIFAR-10): widths, batch, lr, R1 gamma, EMA, 25,000 kimg."""
    seen = args.auto
    if seen["device"] == "cpu":
        steps = CPU["steps"] if args.image_size <= 16 else STEPS_32
        return {**CPU, "steps": steps}
    if seen["dataset"] == "cifar10" and args.image_size == 32:
        return ada_cifar(seen["processes"], seen["gpu_gib"])
    return ada_auto(args.image_size, seen["processes"], seen["gpu_gib"])


def max_batch(res, base, gib):
    """The largest batch per process whose training step fits in 3/4 of ``gib`` GiB (0: not
    known, no bound), by the estimate BYTES_PER_UNIT x the activations r^2 x channels(r)."""
    if gib <= 0:
        return 2**20
    resolutions = (2**i for i in range(2, res.bit_length()))  # 4 .. res
    units = sum(r * r * channels_at(r, base, 512) for r in resolutions)
    return max(1, int(0.75 * gib * 2**30 / (units * BYTES_PER_UNIT)))


def ada_auto(res, gpus, gib):
    """StyleGAN2-ADA's --cfg auto (NVlabs/stylegan2-ada-pytorch, train.py: cfg_specs['auto'] and
    the formulas under ``if cfg == 'auto'``), per process; the global batch sets gamma and EMA."""
    mb = max(min(gpus * min(4096 // res, 32), 64), gpus)  # "keep gpu memory consumption at bay"
    base = 32768 if res >= 512 else 16384  # fmaps 1 or 0.5 times 32768, channel_max 512
    batch = min(mb // gpus, max_batch(res, base, gib))  # batch_gpu = mb // gpus; our memory
    mbstd = min(batch, 4)  # mbstd = min(mb // gpus, 4)
    batch = batch // mbstd * mbstd  # whole groups (ADA's GPU counts are powers of two)
    mb = batch * gpus
    lr = 0.002 if res >= 1024 else 0.0025  # lrate
    return {
        "channel_base": base,
        "channel_max": 512,
        "batch_size": batch,
        "mbstd_group": mbstd,
        "lr_g": lr,
        "lr_d": lr,
        "r1_gamma": 0.0002 * res**2 / mb,  # gamma: "heuristic formula"
        "ema_kimg": mb * 10 / 32,
        "ema_rampup": 0.05,  # ema, ramp
        "mapping_layers": 2,  # map
        "steps": steps_for(25000, batch, gpus),
    }  # kimg 25000


def ada_cifar(gpus, gib):
    """StyleGAN2-ADA's cfg 'cifar' (train.py: cfg_specs['cifar'], CIFAR-10's "tuned
    configuration" for 1 or 2 GPUs), its global batch 64 split over the processes."""
    batch = min(max(64 // gpus, 1), max_batch(32, 32768, gib))  # mb 64
    mbstd = min(32, batch)  # mbstd 32
    batch = batch // mbstd * mbstd
    return {
        "channel_base": 32768,
        "channel_max": 512,  # fmaps 1
        "batch_size": batch,
        "mbstd_group": mbstd,
        "lr_g": 0.0025,
        "lr_d": 0.0025,  # lrate
        "r1_gamma": 0.01,
        "ema_kimg": 500.0,
        "ema_rampup": 0.05,  # gamma, ema, ramp
        "mapping_layers": 2,  # map
        "pl_weight": 0.0,
        "style_mixing": 0.0,  # train.py: if cfg == 'cifar'
        "steps": steps_for(100000, batch, gpus),
    }  # kimg 100000


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="StyleGAN2 (Karras et al. 2020)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # App. B / config F: Adam lr 0.002, 512-d z and w (its batch 32 is in PAPER). Batch 16 and the
    # steps are a digits default (docs/stylegan2.md). --ema-decay None: the half-life.
    add_common_args(
        p,
        batch_size=16,
        steps=2250,
        lr_g=0.002,
        lr_d=0.002,
        z_dim=512,
        ema_decay=None,
        sources={
            "batch_size": "32, App. B, config F",
            "lr_g": "App. B",
            "lr_d": "App. B",
            "z_dim": "StyleGAN Sec. 2",
        },
        configs={"auto": auto_config, "paper": PAPER},
    )
    # TF32 off, as the official training_loop.py sets it ("improves numerical accuracy").
    p.set_defaults(tf32=False)
    a = p.add_argument_group("StyleGAN2").add_argument
    a(
        "--w-dim",
        type=in_range(int, "[1, inf)"),
        default=512,
        help="dimension of w (StyleGAN Sec. 2)",
    )
    a(
        "--mapping-layers",
        type=in_range(int, "[1, inf)"),
        default=8,
        help="layers of z -> w (StyleGAN Sec. 2)",
    )
    a(
        "--mapping-lr-mul",
        type=in_range(float, "(0, inf)"),
        default=0.01,
        help="its lr multiplier (StyleGAN App. C)",
    )
    a(
        "--channel-base",
        type=in_range(int, "[1, inf)"),
        default=1024,
        help="width at r: min(base / r, --channel-max); "
        "config F: 32768 (the default is a CPU-sized model)",
    )
    a(
        "--channel-max",
        type=in_range(int, "[1, inf)"),
        default=64,
        help="channels per layer at most; config F: 512",
    )
    a(
        "--style-mixing",
        type=in_range(float, "[0, 1]"),
        default=0.9,
        help="mixing probability (StyleGAN Sec. 3.1)",
    )
    a(
        "--r1-gamma",
        type=in_range(float, "[0, inf)"),
        default=10.0,
        help="R1 weight gamma (App. B, FFHQ); 0: off",
    )
    a(
        "--r1-every",
        type=in_range(int, "[1, inf)"),
        default=16,
        help="lazy R1: every k D steps (Sec. 3.1)",
    )
    a(
        "--pl-weight",
        type=in_range(float, "[0, inf)"),
        default=2.0,
        help="path-length weight (config F); 0: off",
    )
    a(
        "--pl-every",
        type=in_range(int, "[1, inf)"),
        default=4,
        help="lazy path length: every k G steps (Sec. 3.1)",
    )
    a(
        "--pl-decay",
        type=in_range(float, "[0, 1]"),
        default=0.01,
        help="decay of its running mean a (official)",
    )
    a(
        "--pl-batch-shrink",
        type=in_range(int, "[1, inf)"),
        default=2,
        help="path length on batch / k (official)",
    )
    a(
        "--mbstd-group",
        type=in_range(int, "[1, inf)"),
        default=4,
        help="minibatch stddev group (ProGAN Sec. 3)",
    )
    a("--beta1", type=in_range(float, "[0, 1)"), default=0.0, help="Adam beta1 (App. B)")
    a("--beta2", type=in_range(float, "[0, 1)"), default=0.99, help="Adam beta2 (App. B)")
    a(
        "--ema-kimg",
        type=in_range(float, "(0, inf)"),
        default=10.0,
        help="EMA half-life in kimg (App. B); or --ema-decay",
    )
    a(
        "--ema-rampup",
        type=in_range(float, "[0, inf)"),
        default=0.05,
        help="half-life <= this x images seen "
        "(StyleGAN2-ADA's cfg auto/cifar; config F has no ramp-up: 0); the half-life's ramp-up, "
        "--ema-warmup is a constant --ema-decay's",
    )
    a("--augment", action="store_true", help="DiffAugment (Zhao et al. 2020) on D's inputs")
    a(
        "--fp16-res",
        type=in_range(int, "[0, inf)"),
        default=4,
        help="--amp in the k top resolutions (StyleGAN2-ADA)",
    )
    a(
        "--conv-clamp",
        type=in_range(float, "[0, inf)"),
        default=256.0,
        help="with --amp: clamp to +-this (StyleGAN2-ADA)",
    )
    a(
        "--truncation",
        type=in_range(float, "[0, 1]"),
        default=1.0,
        help="--sample: psi (StyleGAN Sec. 3.2); 1: none",
    )
    a(
        "--mixing-grid",
        type=in_range(int, "[0, inf)"),
        default=0,
        metavar="K",
        help="--sample: a K x K mixing grid too",
    )
    a(
        "--mixing-cutoff",
        type=in_range(int, "[1, inf)"),
        default=None,
        help="--mixing-grid: coarse w's (None: half)",
    )
    return parse_with_resume(p, argv)


# ============================================================ model
def channels_at(res, base, cmax):
    """Config F's widths: base / res, capped (32768 / res, at most 512)."""
    return max(1, min(base // res, cmax))


def fp16_resolution(image_size, fp16_res):
    """The lowest resolution whose block runs under autocast (official: at least 8x8)."""
    return max(2 ** (int(math.log2(image_size)) + 1 - fp16_res), 8)


@contextlib.contextmanager
def precision(reduced, device_type):
    """Inside a block that must stay fp32 (low resolution, mapping, D's epilogue), turn an
    active autocast off; blocks at high resolution keep it (official mixed precision)."""
    if reduced or not torch.is_autocast_enabled(device_type):
        yield False
    else:
        with torch.autocast(device_type, enabled=False):
            yield True


class FullyConnected(nn.Module):
    """Equalized learning rate (ProGAN Sec. 4.1): weights N(0, 1) / lr_mul, scaled by
    lr_mul / sqrt(fan_in) at every forward pass; the bias by lr_mul."""

    def __init__(self, cin, cout, act="linear", bias_init=0.0, lr_mul=1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full([cout], float(bias_init)))
        self.act, self.wgain, self.bgain = act, lr_mul / math.sqrt(cin), lr_mul

    def forward(self, x):
        w, b = self.weight.to(x.dtype) * self.wgain, self.bias.to(x.dtype) * self.bgain
        if self.act == "linear":
            return torch.addmm(b, x, w.t())
        return bias_act(x @ w.t(), b, act=self.act)


class MappingNetwork(nn.Module):
    """z -> w: normalise z, 8 fully connected layers with leaky ReLU at 1/100 learning rate
    (StyleGAN Sec. 2, App. C). Tracks w_avg (beta 0.995) for truncation."""

    def __init__(self, z_dim, w_dim, num_layers=8, lr_mul=0.01, w_avg_beta=0.995):
        super().__init__()
        dims = [z_dim] + [w_dim] * num_layers
        self.fcs = nn.ModuleList(
            FullyConnected(a, b, act="lrelu", lr_mul=lr_mul) for a, b in zip(dims[:-1], dims[1:])
        )
        self.w_avg_beta = w_avg_beta
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, psi=1.0, update_w_avg=False):
        with precision(False, z.device.type):
            x = z.float()
            x = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()  # normalise z
            for fc in self.fcs:
                x = fc(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        return self.w_avg.lerp(x, psi) if psi != 1 else x


def modulated_conv(x, weight, styles, demodulate=True, up=False, f=None):
    """Eq. 1-3 on the activations: scale the input channels by s, convolve with the shared
    weight (equalized lr), divide each output channel by sqrt(sum_i,k (s_i w_ijk)^2 + 1e-8).
    up: a stride-2 transposed conv, then the [1,3,3,1] blur (bilinear upsampling, App. B)."""
    cout, cin, kh, kw = weight.shape
    gain = 1 / math.sqrt(cin * kh * kw)  # equalized lr
    if demodulate and x.dtype != torch.float32:  # official: keeps fp16 in range; demod undoes it
        # StyleGAN2-ADA's modulated_conv2d: the weight's largest entry becomes the gain, not 1
        w = weight * (gain / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    else:
        w = weight * gain
    x = x * styles.to(x.dtype)[:, :, None, None]
    if up:  # (2H + 1)^2, blurred back to 2H
        x = F.conv_transpose2d(x, w.transpose(0, 1).flip([2, 3]).to(x.dtype), stride=2)
        x = upfirdn2d(x, f, padding=(1, 1, 1, 1), gain=4)
    else:
        x = F.conv2d(x, w.to(x.dtype), padding=kh // 2)
    if demodulate:  # Eq. 3: sigma_j = sqrt(sum_i,k (s_i w_ijk)^2)
        d = (styles.float().square() @ w.float().square().sum([2, 3]).t() + 1e-8).rsqrt()
        x = x * d.to(x.dtype)[:, :, None, None]
    return x


class SynthesisLayer(nn.Module):
    """A modulated 3x3 conv, per-pixel noise with one learned strength (initialised to 0),
    bias and leaky ReLU (Fig. 2c)."""

    def __init__(self, cin, cout, w_dim, res, up=False, clamp=None):
        super().__init__()
        self.affine = FullyConnected(w_dim, cin, bias_init=1.0)  # styles start at 1
        self.weight = nn.Parameter(torch.randn(cout, cin, 3, 3))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.noise_strength = nn.Parameter(torch.zeros([]))
        self.register_buffer("noise_const", torch.randn(res, res))
        self.register_buffer("filter", setup_filter([1, 3, 3, 1]), persistent=False)
        self.up, self.res, self.clamp = up, res, clamp

    def forward(self, x, w, noise_mode="random"):
        x = modulated_conv(x, self.weight, self.affine(w), up=self.up, f=self.filter)
        if noise_mode == "random":
            noise = torch.randn(x.shape[0], 1, self.res, self.res, device=x.device, dtype=x.dtype)
            x = x + noise * self.noise_strength.to(x.dtype)
        elif noise_mode == "const":
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)
        return bias_act(x, self.bias, act="lrelu", clamp=self.clamp)


class ToRGB(nn.Module):
    """A modulated 1x1 conv to RGB without demodulation (Fig. 7b's tRGB)."""

    def __init__(self, cin, channels, w_dim, clamp=None):
        super().__init__()
        self.affine = FullyConnected(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(channels, cin, 1, 1))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.clamp = clamp

    def forward(self, x, w):
        x = modulated_conv(x, self.weight, self.affine(w), demodulate=False)
        return bias_act(x, self.bias, clamp=self.clamp)


class SynthesisBlock(nn.Module):
    """One resolution of the skip generator (Fig. 7b): [upsampling conv,] conv, tRGB; the
    RGB image so far is upsampled with the [1,3,3,1] filter and the new tRGB added."""

    def __init__(self, cin, cout, res, channels, w_dim, reduced, clamp=None):
        super().__init__()
        self.first, self.res, self.reduced = cin == 0, res, reduced
        if self.first:  # the learned constant input (StyleGAN Sec. 2)
            self.const = nn.Parameter(torch.randn(cout, 4, 4))
        else:
            self.conv0 = SynthesisLayer(cin, cout, w_dim, res, up=True, clamp=clamp)
        self.conv1 = SynthesisLayer(cout, cout, w_dim, res, clamp=clamp)
        self.torgb = ToRGB(cout, channels, w_dim, clamp=clamp)
        self.register_buffer("filter", setup_filter([1, 3, 3, 1]), persistent=False)
        self.num_conv = 1 if self.first else 2

    def forward(self, x, img, ws, noise_mode):
        with precision(self.reduced, ws.device.type) as fp32:
            if fp32 and x is not None:
                x = x.float()
            if self.first:
                x = self.const.to(ws.dtype).unsqueeze(0).repeat(ws.shape[0], 1, 1, 1)
                x = self.conv1(x, ws[:, 0], noise_mode)
            else:
                x = self.conv0(x, ws[:, 0], noise_mode)
                x = self.conv1(x, ws[:, 1], noise_mode)
            y = self.torgb(x, ws[:, self.num_conv]).float()
        if img is not None:  # upsample2d: pads (2, 1), gain 4 keeps the mean
            img = upfirdn2d(img, self.filter, up=2, padding=(2, 1, 2, 1), gain=4)
        return x, y if img is None else img + y


class Generator(nn.Module):
    """Mapping network and skip synthesis network (config E/F). G(z) -> images [B, C, S, S]
    (linear output, about [-1, 1]); one w per layer input (num_ws)."""

    def __init__(
        self,
        z_dim=512,
        w_dim=512,
        image_size=32,
        channels=1,
        channel_base=1024,
        channel_max=64,
        mapping_layers=8,
        mapping_lr_mul=0.01,
        fp16_res=0,
        conv_clamp=None,
    ):
        super().__init__()
        self.z_dim, self.w_dim = z_dim, w_dim
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, mapping_lr_mul)
        lowest = fp16_resolution(image_size, fp16_res)
        width = functools.partial(channels_at, base=channel_base, cmax=channel_max)
        self.blocks = nn.ModuleList(
            SynthesisBlock(
                0 if r == 4 else width(r // 2),
                width(r),
                r,
                channels,
                w_dim,
                reduced=fp16_res > 0 and r >= lowest,
                clamp=conv_clamp,
            )
            for r in (2**i for i in range(2, int(math.log2(image_size)) + 1))
        )
        self.num_ws = sum(b.num_conv for b in self.blocks) + 1  # the last tRGB takes one more

    def synthesis(self, ws, noise_mode="random"):
        x, img, i = None, None, 0
        for block in self.blocks:  # a block's tRGB shares its w with the next block's first conv
            x, img = block(x, img, ws[:, i : i + block.num_conv + 1], noise_mode)
            i += block.num_conv
        return img

    def mix(self, z, ws, prob, psi=1.0):
        """Style mixing (StyleGAN Sec. 3.1): with probability prob, the w's from a random
        crossover point on come from a second latent (one crossover per batch, drawn on the
        device as official training/loss.py does, so that no step waits for the host)."""
        if prob <= 0:
            return ws
        cutoff = torch.randint(1, self.num_ws, (), device=ws.device)
        cutoff = torch.where(torch.rand((), device=ws.device) < prob, cutoff, self.num_ws)
        w2 = self.mapping(torch.randn_like(z), psi).unsqueeze(1).expand(-1, self.num_ws, -1)
        layer = torch.arange(self.num_ws, device=ws.device)[None, :, None]
        return torch.where(layer < cutoff, ws, w2)

    def forward(
        self, z, psi=1.0, noise_mode="random", mixing=0.0, update_w_avg=False, return_ws=False
    ):
        w = self.mapping(z, psi, update_w_avg)
        ws = self.mix(z, w.unsqueeze(1).repeat(1, self.num_ws, 1), mixing, psi)
        img = self.synthesis(ws, noise_mode)
        return (img, ws) if return_ws else img


class Conv(nn.Module):
    """Equalized-lr conv with bias, activation and gain; down: the [1,3,3,1] blur, then a
    stride-2 conv (official conv2d_resample)."""

    def __init__(self, cin, cout, k, act="lrelu", bias=True, down=False, gain=1.0, clamp=None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.register_buffer("filter", setup_filter([1, 3, 3, 1]), persistent=False)
        self.k, self.act, self.down, self.gain = k, act, down, gain
        self.clamp = clamp * gain if clamp is not None else None
        self.wgain = 1 / math.sqrt(cin * k * k)

    def forward(self, x):
        w = (self.weight * self.wgain).to(x.dtype)
        if self.down and self.k == 1:
            x = F.conv2d(upfirdn2d(x, self.filter, down=2, padding=1), w)
        elif self.down:
            x = F.conv2d(upfirdn2d(x, self.filter, padding=self.k // 2 + 1), w, stride=2)
        else:
            x = F.conv2d(x, w, padding=self.k // 2)
        gain = self.gain * (math.sqrt(2) if self.act == "lrelu" else 1)
        return bias_act(x, self.bias, act=self.act, gain=gain, clamp=self.clamp)


class DiscriminatorBlock(nn.Module):
    """Residual block (Fig. 7c): two 3x3 convs, the second downsampling, plus a 1x1
    downsampling skip; both branches scaled by sqrt(1/2). The first block reads RGB."""

    def __init__(self, cin, cout, channels, first, reduced, clamp=None):
        super().__init__()
        self.reduced = reduced
        self.fromrgb = Conv(channels, cin, 1, clamp=clamp) if first else None
        self.conv0 = Conv(cin, cin, 3, clamp=clamp)
        self.conv1 = Conv(cin, cout, 3, down=True, gain=math.sqrt(0.5), clamp=clamp)
        self.skip = Conv(cin, cout, 1, act="linear", bias=False, down=True, gain=math.sqrt(0.5))

    def forward(self, x):
        with precision(self.reduced, x.device.type) as fp32:
            if fp32:
                x = x.float()
            if self.fromrgb is not None:
                x = self.fromrgb(x)
            return self.skip(x) + self.conv1(self.conv0(x))


def minibatch_stddev(x, group=4, num_channels=1):
    """ProGAN Sec. 3 as StyleGAN2: the standard deviation of each feature over groups of
    `group` samples, averaged into one extra feature map. The batch must divide by the group."""
    n, c, h, w = x.shape
    g = min(group, n)
    y = x.float().reshape(g, -1, num_channels, c // num_channels, h, w)
    y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt().mean([2, 3, 4])
    y = y.reshape(-1, num_channels, 1, 1).repeat(g, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class Discriminator(nn.Module):
    """Residual discriminator (config E/F): blocks from the image size down to 4x4, then
    minibatch stddev, a 3x3 conv, a dense layer and a linear output (the logit)."""

    def __init__(
        self,
        image_size=32,
        channels=1,
        channel_base=1024,
        channel_max=64,
        mbstd_group=4,
        fp16_res=0,
        conv_clamp=None,
    ):
        super().__init__()
        lowest = fp16_resolution(image_size, fp16_res)
        width = functools.partial(channels_at, base=channel_base, cmax=channel_max)
        self.blocks = nn.Sequential(
            *(
                DiscriminatorBlock(
                    width(r),
                    width(r // 2),
                    channels,
                    first=r == image_size,
                    reduced=fp16_res > 0 and r >= lowest,
                    clamp=conv_clamp,
                )
                for r in (2**i for i in range(int(math.log2(image_size)), 2, -1))
            )
        )
        c4 = width(4)
        self.mbstd_group = mbstd_group
        self.conv = Conv(c4 + 1, c4, 3, clamp=conv_clamp)
        self.fc = FullyConnected(c4 * 16, c4, act="lrelu")
        self.out = FullyConnected(c4, 1)

    def forward(self, img):
        x = self.blocks(img)
        with precision(False, img.device.type):  # the epilogue in fp32 (official)
            x = self.conv(minibatch_stddev(x.float(), self.mbstd_group))
            return self.out(self.fc(x.flatten(1))).view(-1)


def build_models(args, channels, num_classes):
    amp = getattr(args, "amp", "off") != "off"
    fp16_res = args.fp16_res if amp else 0
    clamp = args.conv_clamp if amp and args.conv_clamp > 0 else None
    g = Generator(
        args.z_dim,
        args.w_dim,
        args.image_size,
        channels,
        args.channel_base,
        args.channel_max,
        args.mapping_layers,
        args.mapping_lr_mul,
        fp16_res,
        clamp,
    )
    d = Discriminator(
        args.image_size,
        channels,
        args.channel_base,
        args.channel_max,
        args.mbstd_group,
        fp16_res,
        clamp,
    )
    return g, d


# ============================================================ loss
def diff_augment(x, policy="color,translation,cutout"):
    """DiffAugment (Zhao et al. 2020): differentiable colour (brightness, saturation,
    contrast), translation by up to 1/8 of the size (zero fill) and a cutout of half the size."""
    b, _, h, w = x.shape
    dev = x.device
    r = functools.partial(torch.rand, b, 1, 1, 1, device=dev, dtype=x.dtype)
    ar = functools.partial(torch.arange, device=dev)
    if "color" in policy:
        x = x + (r() - 0.5)
        m = x.mean(1, keepdim=True)
        x = (x - m) * (r() * 2) + m
        m = x.mean([1, 2, 3], keepdim=True)
        x = (x - m) * (r() + 0.5) + m
    if "translation" in policy:
        sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        ty = torch.randint(-sh, sh + 1, (b, 1, 1), device=dev)
        tx = torch.randint(-sw, sw + 1, (b, 1, 1), device=dev)
        gb, gy, gx = torch.meshgrid(ar(b), ar(h), ar(w), indexing="ij")
        gy, gx = (gy + ty + 1).clamp(0, h + 1), (gx + tx + 1).clamp(0, w + 1)
        x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2)
    if "cutout" in policy:
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=dev)
        ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=dev)
        gb, gy, gx = torch.meshgrid(ar(b), ar(ch), ar(cw), indexing="ij")
        mask = torch.ones(b, h, w, device=dev, dtype=x.dtype)
        mask[gb, (gy + oy - ch // 2).clamp(0, h - 1), (gx + ox - cw // 2).clamp(0, w - 1)] = 0
        x = x * mask.unsqueeze(1)
    return x


def d_loss(real_logits, fake_logits):
    """D's logistic loss (Goodfellow et al. 2014; App. B): softplus(D(G(z))) + softplus(-D(x))."""
    return F.softplus(fake_logits.float()).mean() + F.softplus(-real_logits.float()).mean()


def g_loss(fake_logits):
    """G's non-saturating loss: softplus(-D(G(z))) = -log sigmoid(D(G(z)))."""
    return F.softplus(-fake_logits.float()).mean()


def r1_penalty(real_logits, real, scale=1.0):
    """R1 (Mescheder et al. 2018, Eq. 9): ||grad_x D(x)||^2 per real sample (gamma / 2 is
    applied by the caller). create_graph so D's update differentiates through it; ``scale``:
    fp16's loss scale (scale before autograd.grad, unscale after)."""
    (grad,) = torch.autograd.grad(real_logits.float().sum() * scale, real, create_graph=True)
    return (grad.float() / scale).square().sum([1, 2, 3])


def path_lengths(img, ws, scale=1.0):
    """Sec. 3.2, Eq. 4: ||J_w^T y||_2 with y ~ N(0, I) / sqrt(H W) (so the length does not
    depend on the resolution), the Jacobian over all layers' w, summed over w's dimensions
    and averaged over the layers (official). Per sample; create_graph for the update."""
    noise = torch.randn_like(img, dtype=torch.float32) / math.sqrt(img.shape[2] * img.shape[3])
    (grad,) = torch.autograd.grad((img.float() * noise).sum() * scale, ws, create_graph=True)
    return (grad.float() / scale).square().sum(2).mean(1).sqrt()


def path_length_penalty(lengths, pl_mean, decay, world):
    """(||J_w^T y|| - a)^2 with a the running mean of the lengths (decay 0.01), detached and
    averaged over ranks. Returns (penalty per sample, the new a)."""
    batch_mean = lengths.detach().mean()
    if world > 1:  # every rank's samples, so a stays the same on every rank
        dist.all_reduce(batch_mean)
        batch_mean /= world
    # Under fp16 an overflowing loss scale makes the lengths inf in a step that GradScaler
    # skips: a keeps its value then (torch.where: no host sync), as the weights do.
    pl_mean = torch.where(batch_mean.isfinite(), pl_mean.lerp(batch_mean, decay), pl_mean)
    return (lengths - pl_mean).square(), pl_mean


class PathLengthMean:
    """Eq. 4's a, the running mean of the path lengths: the paper's state, which a resumed
    run restores (the run saves it like a model)."""

    def __init__(self, decay, device):
        self.decay = decay
        self.a = torch.zeros((), device=device)

    def penalty(self, lengths, world):
        """(||J_w^T y|| - a)^2 per sample; a moves towards the lengths' mean."""
        penalty, self.a = path_length_penalty(lengths, self.a, self.decay, world)
        return penalty

    def state_dict(self):
        return {"pl_mean": self.a}

    def load_state_dict(self, state):
        self.a.copy_(state["pl_mean"])


class LastPenalties:
    """The last R1 and path-length penalties: lazy regularization (Sec. 3.1) computes them
    every few steps, the log shows the last ones at every step, a resumed run too."""

    def __init__(self, device):
        self.r1 = torch.zeros((), device=device)
        self.pl = torch.zeros((), device=device)

    def state_dict(self):
        return {"r1": self.r1, "pl": self.pl}

    def load_state_dict(self, state):
        self.r1.copy_(state["r1"])
        self.pl.copy_(state["pl"])


def logged(penalty, amp):
    """A penalty for the log; under fp16, inf from a step the scaler skips is no divergence."""
    return penalty.detach().nan_to_num(0.0, 0.0, 0.0) if amp == "fp16" else penalty.detach()


def ema_beta(step, batch, ema_kimg, ema_rampup):
    """App. B's EMA as a per-step decay: half-life ema_kimg thousand images, at most
    ema_rampup times the images seen so far (StyleGAN2-ADA's ramp-up; none in config F)."""
    nimg = ema_kimg * 1000
    if ema_rampup > 0:
        nimg = min(nimg, step * batch * ema_rampup)
    return 0.5 ** (batch / max(nimg, 1e-8))


def lazy_adam(params, lr, betas, every):
    """Sec. 3.1 (official): with a regulariser every k steps, Adam's lr and betas are corrected
    by c = k / (k + 1), as the regularisation steps count as extra minibatches."""
    c = every / (every + 1) if every else 1.0
    return torch.optim.Adam(
        params, lr=lr * c, betas=(betas[0] ** c, betas[1] ** c), eps=1e-8, fused=True
    ), c


# ============================================================ training
def check_args(args):
    from common import UserError

    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(
            f"--image-size {args.image_size} cannot be built: StyleGAN2 doubles "
            "from 4x4, so use a power of two >= 8 (32, 64, 128, ...)"
        )
    if args.batch_size % min(args.mbstd_group, args.batch_size):
        raise UserError(
            f"--batch-size {args.batch_size} is not a multiple of the minibatch-"
            f"stddev group (--mbstd-group {args.mbstd_group})"
        )
    if args.pl_weight > 0 and args.batch_size < args.pl_batch_shrink:
        raise UserError(f"--batch-size must be at least --pl-batch-shrink {args.pl_batch_shrink}")


def grid_images(z, G):
    """The sample grids: fixed latents and the constant noise maps, so that grids compare."""
    return G(z, noise_mode="const")


def train(args):
    from common.run import Run, fixed_inputs

    rank, world, device = setup_distributed(args.device)
    run = Run(SCRIPT, args, rank, world, device, check_args)
    data = run.dataset()
    batches = run.batches(data)

    G, D, ema = run.models(build_models, data.channels, 0, memory_format=torch.contiguous_format)
    pl_on, r1_on = args.pl_weight > 0, args.r1_gamma > 0
    betas = (args.beta1, args.beta2)
    opt_g, _ = lazy_adam(G.parameters(), args.lr_g, betas, args.pl_every if pl_on else 0)
    opt_d, _ = lazy_adam(D.parameters(), args.lr_d, betas, args.r1_every if r1_on else 0)
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    pl_mean = PathLengthMean(args.pl_decay, device)  # Eq. 4's a
    last = LastPenalties(device)  # for the log
    grid = functools.partial(grid_images, fixed_inputs(64, args.z_dim, 0, 1234, device)[0])
    if args.compile and rank == 0:
        print(
            "warning: --compile ignored: R1 and path length need double backward", file=sys.stderr
        )
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
            "path_length": pl_mean,
            "last_penalties": last,
        },
        grid,
        info={"channels": data.channels, "num_classes": 0},
        note=f"R1 gamma {args.r1_gamma} every {args.r1_every}, "
        f"path length {args.pl_weight} every {args.pl_every}",
    )

    stream, one = iter(batches), torch.ones((), device=device)
    aug = diff_augment if args.augment else nn.Identity()
    while run.step < args.steps:
        real, _ = next(stream)
        b = real.shape[0]

        # G step: the non-saturating loss on style-mixed fakes. D's weights need no grads.
        D.requires_grad_(False)
        z = torch.randn(b, args.z_dim, device=device)
        with autocast(device, args.amp):
            loss_g = g_loss(D(aug(G(z, mixing=args.style_mixing))))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)

        # Lazy path length (Sec. 3.1-3.2): every pl_every steps, times the interval.
        if pl_on and run.step % args.pl_every == 0:
            z = torch.randn(b // args.pl_batch_shrink, args.z_dim, device=device)
            with autocast(device, args.amp):
                img, ws = G(z, mixing=args.style_mixing, return_ws=True)
            lengths = path_lengths(img, ws, scaler_g.scale(one))
            penalty = pl_mean.penalty(lengths, world)
            loss_pl = penalty.mean() * args.pl_weight * args.pl_every
            optimizer_step(loss_pl, opt_g, scaler_g, G, world)
            last.pl.copy_(logged(penalty.mean(), args.amp))
        D.requires_grad_(True)

        # D step: fakes from fresh latents (they also update w_avg), reals.
        z = torch.randn(b, args.z_dim, device=device)
        with torch.no_grad(), autocast(device, args.amp):
            fake = G(z, mixing=args.style_mixing, update_w_avg=True)
        with autocast(device, args.amp):
            fake_logits, real_logits = D(aug(fake)), D(aug(real))
            loss_d = d_loss(real_logits, fake_logits)
        optimizer_step(loss_d, opt_d, scaler_d, D, world)

        # Lazy R1 on reals only: every r1_every steps, gamma / 2 times the interval.
        if r1_on and run.step % args.r1_every == 0:
            real_ = real.detach().requires_grad_(True)
            with autocast(device, args.amp):
                logits = D(aug(real_))
            r1 = r1_penalty(logits, real_, scaler_d.scale(one)).mean()
            optimizer_step(r1 * (args.r1_gamma / 2) * args.r1_every, opt_d, scaler_d, D, world)
            last.r1.copy_(logged(r1, args.amp))
        if ema is not None:  # after the D step (official), so the copied w_avg is the latest
            half_life = args.ema_decay is None  # App. B's, with its own ramp-up (--ema-rampup)
            decay = (
                ema_beta(run.step, args.batch_size * world, args.ema_kimg, args.ema_rampup)
                if half_life
                else args.ema_decay
            )
            ema_update(ema, G, decay, run.step, warmup=args.ema_warmup and not half_life)

        run.end_step(
            d_loss=loss_d,
            g_loss=loss_g,
            d_real=torch.sigmoid(real_logits.detach().float()).mean(),
            d_fake=torch.sigmoid(fake_logits.detach().float()).mean(),
            r1=last.r1,
            pl_penalty=last.pl,
            pl_mean=pl_mean.a,
        )
    return run.finish()


# ============================================================ sampling
def load_generator(path, device="cpu", use_ema=True):
    """generate(n, seed=0, temperature=1.0, z=None, psi=1.0, noise_mode="random") -> images in
    [-1, 1] from a checkpoint's EMA generator (or raw G), for --sample and the evaluation
    tools. By default as the official metrics (noise_mode 'random': fresh noise inputs, drawn
    reproducibly from ``seed``; psi 1, no truncation); --sample passes noise_mode='const'."""
    from common.run import Generate

    return Generate(SCRIPT, path, device, use_ema, build_models)


@torch.no_grad()
def style_mixing_grid(G, z_cols, z_rows, cutoff, psi=1.0):
    """StyleGAN Fig. 3's layout: the top row and left column are plain images; cell (r, c)
    takes its first `cutoff` (coarse) w's from column c and the rest from row r."""
    wc, wr = (G.mapping(z, psi).unsqueeze(1).repeat(1, G.num_ws, 1) for z in (z_cols, z_rows))
    cols, rows = G.synthesis(wc, "const"), G.synthesis(wr, "const")
    cells = [torch.full_like(cols[:1], -1.0)] + list(cols.split(1))
    for r in range(len(z_rows)):
        ws = wr[r : r + 1].repeat(len(z_cols), 1, 1)
        ws[:, :cutoff] = wc[:, :cutoff]
        cells += [rows[r : r + 1]] + list(G.synthesis(ws, "const").split(1))
    return torch.cat(cells).float().cpu()


def sample(script, args, load_generator):
    """--sample N [--interpolate K] with --truncation psi; first a --mixing-grid K if asked."""
    from common import UserError
    from common.images import save_grid
    from common.run import Sampling

    if args.mixing_grid < 0 or not 0 <= args.truncation <= 1:
        raise UserError("--mixing-grid must be at least 0 and --truncation psi in [0, 1] (1: none)")
    s = Sampling(script, args, load_generator)
    psi, note = args.truncation, f", truncation psi {args.truncation}"
    if args.mixing_grid:
        G, k = s.generate.model, args.mixing_grid
        cutoff = args.mixing_cutoff if args.mixing_cutoff is not None else G.num_ws // 2
        if not 1 <= cutoff < G.num_ws:
            raise UserError(f"--mixing-cutoff must be in [1, {G.num_ws - 1}] (of {G.num_ws} w's)")
        z = torch.randn(2 * k, G.z_dim, generator=torch.Generator().manual_seed(args.seed))
        z = (z * args.temperature).to(s.device)
        x = style_mixing_grid(G, z[:k], z[k:], cutoff, psi)
        png = save_grid(x, s.file("mixing"), nrow=k + 1)
        print(
            f"wrote {png} (style mixing, {k}x{k}, first {cutoff} of {G.num_ws} w's from the "
            f"top row, {s.which} generator{note})"
        )
    kw = {"psi": psi, "noise_mode": "const"}  # the constant noise maps, as the training grids
    return s.interpolation(note, **kw) if args.interpolate else s.grid(note=note, **kw)


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
