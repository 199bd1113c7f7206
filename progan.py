# SPDX-License-Identifier: MIT
"""ProGAN: Progressive Growing of GANs for Improved Quality, Stability, and Variation.
Karras, Aila, Laine, Lehtinen, ICLR 2018. arXiv:1710.10196.

The idea: start G and D at 4x4 and grow both, one resolution at a time, up to the image
size (Sec. 3, Fig. 1). Each new 2x block fades in (Fig. 2): G's output is (1 - alpha) *
upsample(toRGB(old)) + alpha * toRGB(new block), D's input path mirrors it, and so are the
real images D sees; alpha rises linearly over a fade phase, then a stabilising phase follows
(800k real images each, Sec. A.1). No batch norm: an equalized learning rate (Sec. 4.1),
pixelwise feature normalisation in G (Sec. 4.2) and a minibatch-stddev map in D (Sec. 3).
Loss: WGAN-GP (lambda 10) plus a drift term 0.001 E[D(x)^2]; n_critic 1, Adam lr 1e-3,
betas (0, 0.99), eps 1e-8; an EMA of G (decay 0.999) for evaluation (Sec. A.1).

Usage:
    python progan.py                  # digits grown 4x4 -> 16x16 in minutes on a CPU (auto)
    python progan.py --config paper --dataset celeba --data-path ~/data --image-size 128
    python progan.py --resume auto            # continue the latest run: stage, alpha, images seen
    python progan.py --sample 64 --checkpoint auto   # grid from the EMA generator

--steps 0 (the default) trains to the end of the growing schedule, which counts real images
shown to D on all processes; a positive --steps stops after that many G updates.
--config auto on CUDA takes the official code's presets by GPU count (config.py preset-v2-*,
train.py) and, for CIFAR-10, the paper's run (its Theano branch's config.py); docs/progan.md.

Based on dcgan.py, with wgan_gp.py's penalty. Departures (docs/progan.md has the details):
* Minibatch stddev over groups of 4 (official code); ``--mbstd-group 0`` is Sec. 3's whole batch.
* ``--batch-sizes 256:12,512:4,1024:4`` rounds Sec. A.1's 14, 6, 3 to multiples of the group.
* G's first layer (Table 2's "Conv 4x4" on the 1x1 latent) is dense with He gain sqrt(2)/4,
  on a pixel-normalised latent; D's last "Conv 4x4" is dense too (official code).
* Adam's moments are reset at every phase (official code); G's step reuses D's fake batch.
* ``--compile`` compiles G only; PixelNorm and minibatch stddev run in fp32 under --amp.
"""

import argparse
import functools
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# ============================================================ flags
SCRIPT = "progan"
# A tiny model for the test harness (tests/test_scripts.py): 4 steps of 16 reach a stable 8x8.
SMOKE_ARGS = [
    "--fmap-base",
    "16",
    "--fmap-max",
    "4",
    "--z-dim",
    "8",
    "--stable-kimg",
    "0.016",
    "--fade-kimg",
    "0.024",
]
# --config paper: Sec. A.1 and Table 2 (800k images per phase, 512 maps at most, EMA 0.999).
PAPER = {
    "fade_kimg": 800,
    "stable_kimg": 800,
    "fmap_base": 8192,
    "fmap_max": 512,
    "z_dim": 512,
    "batch_size": 16,
    "lr_g": 1e-3,
    "lr_d": 1e-3,
    "beta1": 0.0,
    "beta2": 0.99,
    "lambda_gp": 10.0,
    "eps_drift": 0.001,
    "mbstd_group": 4,
    "ema_decay": 0.999,
    "ema_warmup": False,
}  # the official code's G_smoothing has no ramp-up
PHASE_EPOCHS = 16  # --config auto on a CPU: passes over the data per phase ...
CPU_KIMG = 480  # ... and at most CPU_KIMG / image_size kimg: 30 at 16x16, 15 at 32x32


def auto_config(args):
    """on a CPU, phases of 16 passes over the data, at most 480 / image size kimg (a run of
    about 10 minutes), a CPU-sized net (--fmap-base 4 x the image size, --fmap-max 64) and an
    EMA decay of 0.99; on CUDA the authors' settings for the data and GPUs (docs/progan.md)."""
    seen = args.auto
    if seen["device"] == "cuda":
        return cuda_config(args, seen)
    config = {"fmap_base": 4 * args.image_size}
    if seen["images"]:  # a text corpus has none (refused in check_args)
        kimg = min(800, PHASE_EPOCHS * seen["images"] / 1000, CPU_KIMG / args.image_size)
        config.update(fade_kimg=kimg, stable_kimg=kimg)
    return config


# CUDA: the official TensorFlow code's presets for 1, 2, 4 and 8 GPUs (tkarras/
# progressive_growing_of_gans, config.py, preset-v2-*): global minibatch by resolution, the
# minibatch elsewhere (minibatch_base), G's and D's learning rate by resolution (G_lrate_dict =
# D_lrate_dict; 0.001 elsewhere, train.py TrainingSchedule's G_lrate_base).
PRESETS = {
    1: ({4: 128, 8: 128, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8, 512: 4}, 4, {1024: 0.0015}),
    2: ({4: 256, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16, 256: 8}, 8, {512: 0.0015, 1024: 0.002}),
    4: (
        {4: 512, 8: 256, 16: 128, 32: 64, 64: 32, 128: 16},
        16,
        {256: 0.0015, 512: 0.002, 1024: 0.003},
    ),
    8: (
        {4: 512, 8: 256, 16: 128, 32: 64, 64: 32},
        32,
        {128: 0.0015, 256: 0.002, 512: 0.003, 1024: 0.003},
    ),
}
# config.py '-fp32': max_minibatch_per_gpu, for the 16 GB GPUs of the code's README.
MAX_PER_GPU = {256: 16, 512: 8, 1024: 4}


def per_process_batch(batch, res, processes, gpu_gib):
    """The code's global ``batch`` at ``res`` split across processes (train.py TrainingSchedule),
    at most max_minibatch_per_gpu (scaled down on GPUs under 16 GB), above 4 a multiple of the
    minibatch-stddev group of 4."""
    per = max(1, batch // processes)
    if res in MAX_PER_GPU:
        memory = min(1.0, gpu_gib / 16) if gpu_gib else 1.0
        per = min(per, max(1, int(MAX_PER_GPU[res] * memory)))
    return per - per % 4 if per > 4 else per


def cuda_config(args, seen):
    """--config auto on CUDA: the paper's CIFAR-10 run at 32x32, else the official presets."""
    n = seen["processes"]
    common = {
        "fmap_base": 8192,
        "fmap_max": 512,
        "lr_g": 1e-3,
        "lr_d": 1e-3,
        "ema_decay": 0.999,
        "ema_warmup": False,
    }  # Table 2; Sec. A.1; G_smoothing, no ramp
    if seen["dataset"] == "cifar10" and args.image_size == 32:
        # Sec. 6.5's CIFAR-10 run: the authors' Theano code (original-theano-version branch,
        # config.py 'cifar-10-32x32'): 400k-image phases, minibatch 16, 20M images, narrower nets
        # (fmap_base 4096, fmap_max 128, latent 128), the stddev over the whole minibatch
        # (mbstat_avg 'all'), WGAN-GP's target 750 (iwass_target), no lr ramp-up, no mirroring.
        batch = max(1, 16 // n)
        return {
            **common,
            "fade_kimg": 400,
            "stable_kimg": 400,
            "batch_size": batch,
            "batch_sizes": "",
            "lr_sizes": "",
            "fmap_base": 4096,
            "fmap_max": 128,
            "z_dim": 128,
            "mbstd_group": 0,
            "gp_target": 750.0,
            "steps": steps_for(20000, batch, n),
        }
    # train.py TrainingSchedule: 600k images a phase; config.py: 12M images in all (total_kimg);
    # networks.py: latent nf(0) = 512, minibatch stddev in groups of 4.
    batches, base, lrates = PRESETS[max(k for k in PRESETS if k <= n)]
    sides = [4 << s for s in range(int(math.log2(args.image_size)) - 1)]
    per = [per_process_batch(batches.get(r, base), r, n, seen["gpu_gib"]) for r in sides]
    fade = stable = 600
    growing = stable + (len(sides) - 1) * (fade + stable)  # kimg to the end of the growing
    steps = schedule_steps(fade * 1000, stable * 1000, len(sides), lambda s: per[s] * n)
    steps += steps_for(12000 - growing, per[-1], n) if growing < 12000 else 0
    config = {
        **common,
        "fade_kimg": fade,
        "stable_kimg": stable,
        "batch_size": per[-1],
        "batch_sizes": ",".join(f"{r}:{b}" for r, b in zip(sides, per)),
        "lr_sizes": ",".join(f"{r}:{lr:g}" for r, lr in lrates.items() if r in sides),
        "z_dim": 512,
        "mbstd_group": 4,
        "gp_target": 1.0,
        "steps": steps,
    }
    if seen["dataset"] == "celeba":
        config["flip"] = True  # config.py's celeba line: mirror_augment = True
    return config


def positive_float(text):
    """argparse type: a number greater than 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not greater than 0")
    return value


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="ProGAN (Karras et al. 2018)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Sec. A.1 and Table 2; --steps 0: to the end of the growing schedule.
    add_common_args(
        p,
        batch_size=16,
        steps=0,
        lr_g=1e-3,
        lr_d=1e-3,
        z_dim=512,
        ema_decay=0.99,
        sources={
            "batch_size": "Sec. A.1, up to 128x128",
            "lr_g": "Sec. A.1",
            "lr_d": "Sec. A.1",
            "z_dim": "Table 2",
            "ema_decay": "0.999",
        },
        configs={"auto": auto_config, "paper": PAPER},
    )
    m = p.add_argument_group(
        "ProGAN",
        "--steps 0 (the default) trains to the end of the growing "
        "schedule; a positive --steps stops after that many G updates",
    )
    m.add_argument(
        "--fade-kimg",
        type=in_range(float, "[0, inf)"),
        default=None,
        help="kimg per fade-in (Sec. A.1: "
        "800); None: PHASE_EPOCHS passes over the data, at most 800",
    )
    m.add_argument(
        "--stable-kimg",
        type=in_range(float, "[0, inf)"),
        default=None,
        help="kimg to stabilise (Sec. A.1: "
        "800); None: PHASE_EPOCHS passes over the data, at most 800",
    )
    m.add_argument(
        "--batch-sizes",
        default="256:12,512:4,1024:4",
        help="RES:BATCH,... per process, else --batch-size (Sec. A.1's 14, 6, 3, "
        "rounded to multiples of 4)",
    )
    m.add_argument(
        "--lr-sizes",
        default="",
        help="RES:LR,... G's and D's learning rate at these "
        "resolutions, else --lr-g/--lr-d (official code's G_lrate_dict, D_lrate_dict)",
    )
    m.add_argument(
        "--mbstd-group",
        type=in_range(int, "[0, inf)"),
        default=4,
        help="minibatch stddev group (official code); 0: the whole minibatch (Sec. 3)",
    )
    m.add_argument(
        "--fmap-base",
        type=in_range(int, "[1, inf)"),
        default=128,
        help="feature maps at 2^r: "
        "min(fmap_base / 2^(r-1), fmap_max) (Table 2, official code: 8192)",
    )
    m.add_argument(
        "--fmap-max",
        type=in_range(int, "[1, inf)"),
        default=64,
        help="most feature maps (Table 2: 512)",
    )
    m.add_argument(
        "--lambda-gp",
        type=in_range(float, "[0, inf)"),
        default=10.0,
        help="WGAN-GP weight (Sec. A.1)",
    )
    m.add_argument(
        "--gp-target",
        type=positive_float,
        default=1.0,
        help="the penalty's gradient "
        "norm target gamma, lambda (||g|| - gamma)^2 / gamma^2 (WGAN-GP, Sec. A.1: 1; "
        "the authors' CIFAR-10 run: 750)",
    )
    m.add_argument(
        "--eps-drift",
        type=in_range(float, "[0, inf)"),
        default=0.001,
        help="drift term weight (Sec. A.1)",
    )
    m.add_argument(
        "--beta1", type=in_range(float, "[0, 1)"), default=0.0, help="Adam beta1 (Sec. A.1)"
    )
    m.add_argument(
        "--beta2", type=in_range(float, "[0, 1)"), default=0.99, help="Adam beta2 (Sec. A.1)"
    )
    return parse_with_resume(p, argv)


# ============================================================ model
def feature_maps(log2_res, fmap_base=8192, fmap_max=512):
    """Channels at resolution 2^r: min(fmap_base / 2^(r-1), fmap_max), the official nf(r - 1);
    Table 2's 512 up to 32x32, then 256, 128, 64, 32, 16 at 64 ... 1024 with the defaults."""
    return max(1, min(int(fmap_base / 2.0 ** (log2_res - 1)), fmap_max))


class EqualizedConv2d(nn.Module):
    """Sec. 4.1, equalized learning rate: N(0, 1) weights multiplied by He's constant
    gain / sqrt(fan_in) at every forward pass, not once at init; zero biases, 'same' padding."""

    def __init__(self, cin, cout, kernel, gain=math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale, self.pad = gain / math.sqrt(cin * kernel * kernel), kernel // 2

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.pad)


class EqualizedLinear(nn.Module):
    """Sec. 4.1 for a dense layer: N(0, 1) weights scaled by gain / sqrt(fan_in) at runtime."""

    def __init__(self, cin, cout, gain=math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin)

    def forward(self, x):
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x, eps=1e-8):
    """Sec. 4.2, Eq. 2: b = a / sqrt(mean_j(a_j^2) + eps) over the channels of each pixel.
    In fp32 whatever the autocast dtype (a mean of squares overflows/underflows in fp16)."""
    with torch.autocast(x.device.type, enabled=False):
        y = x.float()
        return (y * torch.rsqrt(y.square().mean(1, keepdim=True) + eps)).to(x.dtype)


def minibatch_stddev(x, group_size=4):
    """Sec. 3: the standard deviation of each feature at each pixel over a group of samples,
    averaged over features and pixels into one value, appended as an extra feature map. Groups
    of min(``group_size``, N), sample n in group n % (N / G) (official code); 0: the whole
    minibatch, as in the paper's text. In fp32 under autocast."""
    n, c, h, w = x.shape
    g = n if group_size <= 0 else min(group_size, n)
    if n % g:
        raise ValueError(f"minibatch stddev: batch {n} is not divisible by the group size {g}")
    with torch.autocast(x.device.type, enabled=False):
        y = x.float().reshape(g, n // g, c, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # [N/G, C, H, W]: per group
        y = y.mean((1, 2, 3)).view(n // g, 1, 1, 1).repeat(g, 1, h, w)  # one value a group
    return torch.cat([x, y.to(x.dtype)], 1)


lrelu = functools.partial(F.leaky_relu, negative_slope=0.2)  # Sec. A.1: all but the outputs


class GBlock(nn.Module):
    """Table 2, one resolution of G: nearest upsampling, then (conv 3x3, lReLU, PixelNorm) x 2."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.conv2 = EqualizedConv2d(cin, cout, 3), EqualizedConv2d(cout, cout, 3)

    def forward(self, x):
        x = pixel_norm(lrelu(self.conv1(F.interpolate(x, scale_factor=2.0, mode="nearest"))))
        return pixel_norm(lrelu(self.conv2(x)))


class DBlock(nn.Module):
    """Table 2, one resolution of D: (conv 3x3, lReLU) twice, then 2x2 average pooling."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.conv2 = EqualizedConv2d(cin, cin, 3), EqualizedConv2d(cin, cout, 3)

    def forward(self, x):
        return F.avg_pool2d(lrelu(self.conv2(lrelu(self.conv1(x)))), 2)


class Generator(nn.Module):
    """Table 2's generator, every resolution built at once; ``stage`` s (None: the last) uses
    blocks up to 4 * 2^s and, during a fade, mixes in the previous stage's toRGB output
    upsampled (Fig. 2). PixelNorm after every conv; toRGB is linear (gain 1, no tanh)."""

    def __init__(self, z_dim=512, image_size=32, channels=3, fmap_base=8192, fmap_max=512):
        super().__init__()
        n = int(math.log2(image_size)) - 1  # stages: 4x4, 8x8, ..., image_size
        ch = [feature_maps(r, fmap_base, fmap_max) for r in range(2, n + 2)]
        self.final_stage, self.c0 = n - 1, ch[0]
        # Table 2's "Conv 4x4" on the 1x1 latent, as a dense layer (official networks.py).
        self.dense = EqualizedLinear(z_dim, ch[0] * 16, gain=math.sqrt(2) / 4)
        self.conv = EqualizedConv2d(ch[0], ch[0], 3)
        self.blocks = nn.ModuleList(GBlock(ch[s - 1], ch[s]) for s in range(1, n))
        self.to_rgb = nn.ModuleList(EqualizedConv2d(c, channels, 1, gain=1.0) for c in ch)

    def forward(self, z, stage=None, alpha=1.0):
        stage = self.final_stage if stage is None else stage
        x = pixel_norm(z)  # the latent is normalised too (official normalize_latents)
        x = pixel_norm(lrelu(self.dense(x).view(-1, self.c0, 4, 4)))
        x = pixel_norm(lrelu(self.conv(x)))
        prev = x
        for s in range(1, stage + 1):
            prev, x = x, self.blocks[s - 1](x)
        out = self.to_rgb[stage](x)
        if stage > 0 and alpha < 1:  # Fig. 2 (b): (1 - alpha) upsampled old output + alpha new
            skip = F.interpolate(self.to_rgb[stage - 1](prev), scale_factor=2.0, mode="nearest")
            out = skip + alpha * (out - skip)
        return out


class Discriminator(nn.Module):
    """Table 2's discriminator, mirroring G: fromRGB (1x1 conv, lReLU), DBlocks down to 4x4,
    minibatch stddev, conv 3x3, the 4x4 "conv" as a dense layer, a linear output. During a
    fade the input also enters through the previous stage's fromRGB at half resolution and the
    two paths are mixed (Fig. 2 (b)). No normalisation. ``stage`` None: from the input's size."""

    def __init__(self, image_size=32, channels=3, fmap_base=8192, fmap_max=512, mbstd_group=4):
        super().__init__()
        n = int(math.log2(image_size)) - 1
        ch = [feature_maps(r, fmap_base, fmap_max) for r in range(2, n + 2)]
        self.mbstd_group = mbstd_group
        self.from_rgb = nn.ModuleList(EqualizedConv2d(channels, c, 1) for c in ch)
        # Block s takes 4 * 2^s down to 4 * 2^(s-1).
        self.blocks = nn.ModuleList(DBlock(ch[s], ch[s - 1]) for s in range(1, n))
        self.conv = EqualizedConv2d(ch[0] + 1, ch[0], 3)
        self.dense = EqualizedLinear(ch[0] * 16, feature_maps(1, fmap_base, fmap_max))
        self.out = EqualizedLinear(feature_maps(1, fmap_base, fmap_max), 1, gain=1.0)

    def forward(self, x, stage=None, alpha=1.0):
        stage = int(math.log2(x.shape[-1])) - 2 if stage is None else stage
        h = lrelu(self.from_rgb[stage](x))
        if stage > 0:
            h = self.blocks[stage - 1](h)
            if alpha < 1:
                skip = lrelu(self.from_rgb[stage - 1](F.avg_pool2d(x, 2)))
                h = skip + alpha * (h - skip)
            for s in range(stage - 1, 0, -1):
                h = self.blocks[s - 1](h)
        h = lrelu(self.conv(minibatch_stddev(h, self.mbstd_group)))
        return self.out(lrelu(self.dense(h.flatten(1)))).view(-1)


def build_models(args, channels, num_classes):
    g = Generator(args.z_dim, args.image_size, channels, args.fmap_base, args.fmap_max)
    d = Discriminator(args.image_size, channels, args.fmap_base, args.fmap_max, args.mbstd_group)
    return g, d  # equalized-lr layers initialise themselves: N(0, 1) weights, zero biases


# ============================================================ growing schedule
def schedule(images, fade, stable, n_stages):
    """(stage, alpha, phase) for the next step, after ``images`` real images shown to D (Sec.
    3, A.1; official TrainingSchedule): stage 0 (4x4) stabilises for ``stable`` images, every
    later stage fades in over ``fade`` (alpha 0 to 1) and stabilises for ``stable``; the last
    then stays. ``phase``: 0 for 4x4, 2s - 1 for stage s fading in, 2s for it stable."""
    if images < stable or n_stages == 1:
        return 0, 1.0, 0
    stage, within = divmod(images - stable, fade + stable)
    stage += 1
    if stage >= n_stages:
        return n_stages - 1, 1.0, 2 * (n_stages - 1)
    if within < fade:
        return stage, within / fade, 2 * stage - 1
    return stage, 1.0, 2 * stage


class Growth:
    """Where the growing stands (Sec. 3): the real images shown to D so far (all processes),
    the phase (fade-in or stabilising), and the last step's stage (4 << stage pixels) and
    fade-in alpha. The paper's state, which a resumed run restores (saved like a model)."""

    def __init__(self, images=0, phase=0, stage=0, alpha=1.0):
        self.images, self.phase, self.stage, self.alpha = images, phase, stage, alpha

    def state_dict(self):
        return {
            "images": self.images,
            "phase": self.phase,
            "stage": self.stage,
            "alpha": self.alpha,
        }

    def load_state_dict(self, state):
        self.images, self.phase = state["images"], state["phase"]
        self.stage, self.alpha = state["stage"], state["alpha"]


def schedule_steps(fade, stable, n_stages, batch_of_stage):
    """Steps to the end of the schedule (the final stage stabilised), with a batch of
    ``batch_of_stage(s)`` images (all processes) per step in stage s."""
    images = steps = 0
    for s in range(n_stages):
        end = stable + s * (fade + stable)
        if images < end:
            k = -(-(end - images) // batch_of_stage(s))
            steps, images = steps + k, images + k * batch_of_stage(s)
    return steps


def fade_reals(x, res, alpha):
    """Real images as D sees them at this stage (official process_reals): box-filtered down to
    ``res``, and during a fade blended with their half-resolution version upsampled (nearest),
    exactly as G's output is blended (Fig. 2), so that D cannot tell the two apart by blur."""
    if x.shape[-1] != res:
        x = F.avg_pool2d(x, x.shape[-1] // res)
    if alpha < 1:
        low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest")
        x = low + alpha * (x - low)
    return x


def grid_images(gen, z, sched, size):
    """``gen``'s images at the schedule's (stage, alpha), upscaled (nearest) to ``size``."""
    x = gen(z, sched.stage, sched.alpha)
    return x if x.shape[-1] == size else F.interpolate(x.float(), size=(size, size), mode="nearest")


def growth(args):
    """(stages, images per fade, per stabilising phase, per-process batch of each stage): Sec.
    A.1's smaller batches at high resolutions from --batch-sizes, --batch-size elsewhere."""
    from common import UserError

    n_stages = int(math.log2(args.image_size)) - 1
    given = by_resolution(args.batch_sizes, "--batch-sizes", "BATCH", int, "256:12,512:4")
    sizes = [given.get(4 << s, args.batch_size) for s in range(n_stages)]
    for r, bs in ((4 << s, bs) for s, bs in enumerate(sizes)):
        if bs % (min(args.mbstd_group, bs) or bs):  # a group of 0: the whole batch
            raise UserError(
                f"{'--batch-sizes' if r in given else '--batch-size'}: {bs} images "
                f"at {r}x{r} is not a multiple of --mbstd-group {args.mbstd_group}"
            )
    fade, stable = (round((k or 0) * 1000) for k in (args.fade_kimg, args.stable_kimg))
    return n_stages, fade, stable, sizes


def by_resolution(text, flag, name, kind, example):
    """{resolution: value} from RES:VALUE,... (--batch-sizes, --lr-sizes); one line otherwise."""
    from common import UserError

    given = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        res, _, value = item.partition(":")
        try:
            res, value = int(res), kind(value)
        except ValueError:
            res = value = 0
        if res < 4 or res & (res - 1) or not value > 0:
            raise UserError(
                f"{flag} {text!r}: {item!r} is not RES:{name} with a power-of-two "
                f"RES >= 4 and {name} > 0 (e.g. {example})"
            )
        given[res] = value
    return given


def learning_rates(args, n_stages):
    """(G's, D's) learning rate of each stage: --lr-sizes where it names the resolution, else
    --lr-g and --lr-d (the official TrainingSchedule's lrate dicts, one for both nets)."""
    given = by_resolution(args.lr_sizes, "--lr-sizes", "LR", float, "128:0.0015,256:0.002")
    return [(given.get(4 << s, args.lr_g), given.get(4 << s, args.lr_d)) for s in range(n_stages)]


# ============================================================ loss
def d_loss(real_scores, fake_scores, eps_drift=0.001):
    """WGAN-GP's critic loss without its penalty (Gulrajani et al. Eq. 3), E[D(G(z))] - E[D(x)],
    plus Sec. A.1's drift term eps_drift E[D(x)^2], which keeps D's output near zero."""
    r, f = real_scores.float(), fake_scores.float()
    return f.mean() - r.mean() + eps_drift * r.square().mean()


def g_loss(fake_scores):
    """WGAN's generator loss: -E[D(G(z))]."""
    return -fake_scores.float().mean()


def interpolate(real, fake):
    """WGAN-GP's x_hat = eps x + (1 - eps) x_tilde, eps ~ U[0, 1] per sample (a leaf)."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    return (eps * real + (1 - eps) * fake).detach().requires_grad_(True)


def gradient_penalty(hat_scores, x_hat, scale=1.0, target=1.0):
    """WGAN-GP's E[(||grad D(x_hat)||_2 - gamma)^2] / gamma^2 (lambda by the caller; gamma 1 as
    in the official wgan_target, 750 in the authors' CIFAR-10 run): norm over all non-batch
    dims, create_graph=True. ``scale``: fp16's loss scale (PyTorch's AMP recipe: scale before
    autograd.grad, divide the gradients by it)."""
    (grad,) = torch.autograd.grad(hat_scores.float().sum() * scale, x_hat, create_graph=True)
    norm = (grad.float() / scale).flatten(1).norm(2, dim=1)
    return (((norm - target) / target) ** 2).mean()


# ============================================================ training
def check_args(args):
    from common import UserError

    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(
            f"--image-size {args.image_size} cannot be grown: ProGAN doubles from "
            "4x4, so use a power of two >= 8 (32, 64, ..., 1024)"
        )
    if args.fade_kimg == 0 and args.stable_kimg == 0:
        raise UserError("--fade-kimg and --stable-kimg are both 0: the schedule has no length")
    learning_rates(args, growth(args)[0])


def total_steps(args, n_images, world, resumed):
    """The run's length (--steps 0: to the end of the growing schedule); a resumed run keeps
    growing to its own size, never back to a lower resolution; the data must fill a batch."""
    from common import UserError

    n_stages, fade, stable, sizes = growth(args)
    if resumed is not None:
        size, was = resumed["args"]["image_size"], resumed["schedule"]
        if args.image_size != size:
            raise UserError(
                f"--image-size {args.image_size} differs from the resumed run's "
                f"{size}: a run grows to one size; resume without --image-size"
            )
        if schedule(was["images"], fade, stable, n_stages)[0] < was["stage"]:
            r = 4 << was["stage"]
            raise UserError(
                f"the --fade-kimg/--stable-kimg given now would take the run back "
                f"from {r}x{r} to a lower resolution; keep the run's schedule"
            )
    if max(sizes) > (n_images + world - 1) // world:
        raise UserError(
            f"the dataset has {n_images} images, fewer than one batch of {max(sizes)}"
            " per process; lower --batch-size/--batch-sizes"
        )
    end = schedule_steps(fade, stable, n_stages, lambda s: sizes[s] * world)
    return args.steps or end  # --steps 0: to the end of the schedule


def train(args):
    from common.run import Run, fixed_inputs

    rank, world, device = setup_distributed(args.device)
    run = Run(SCRIPT, args, rank, world, device, check_args)
    data = run.dataset()
    for k in ("fade_kimg", "stable_kimg"):  # --config auto: phases in passes over the data
        if getattr(args, k) is None:
            setattr(args, k, min(800, PHASE_EPOCHS * len(data) / 1000))
    n_stages, fade_img, stable_img, sizes = growth(args)
    rates = learning_rates(args, n_stages)
    total = total_steps(args, len(data), world, run.resumed)
    batches = run.batches(data, sizes[0])  # one stream; its batch size follows the stage

    # Channels-last helps convolutions on CUDA but slows the penalty's double backward on CPU.
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    G, D, ema = run.models(build_models, data.channels, 0, memory_format=fmt)
    betas = (args.beta1, args.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=betas, eps=1e-8, fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas, eps=1e-8, fused=True)
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    sched = Growth()  # images shown, phase, (stage, alpha)
    grid = functools.partial(
        grid_images,
        z=fixed_inputs(64, args.z_dim, 0, 1234, device)[0],
        sched=sched,
        size=args.image_size,
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
            "schedule": sched,
        },
        grid,
        info={"channels": data.channels, "num_classes": 0},
        total=total,
        note=f"grown from 4x4 in batches of {sizes}, {args.stable_kimg:g} kimg stable + "
        f"{args.fade_kimg:g} kimg fade each: {total} steps",
    )
    G_step = torch.compile(G) if args.compile else G
    if args.compile and rank == 0:
        print(
            "note: --compile compiles G only: the critic's gradient penalty needs double "
            "backward, which compiled graphs lack",
            file=sys.stderr,
        )
    one = torch.ones((), device=device)

    stream = iter(batches)
    while run.step < total:
        stage, alpha, phase = schedule(sched.images, fade_img, stable_img, n_stages)
        res = 4 << stage
        if phase != sched.phase:  # a fade or a stabilising phase starts: fresh Adam moments
            opt_g.state.clear()  # (official reset_opt_for_new_lod)
            opt_d.state.clear()
            sched.phase = phase
            run.write(
                f"step {run.step}, {sched.images / 1000:g} kimg: {res}x{res}, "
                f"{'fading in' if alpha < 1 else 'stabilising'}"
            )
        opt_g.param_groups[0]["lr"], opt_d.param_groups[0]["lr"] = rates[stage]
        if sizes[stage] != batches.batch_size:  # from the next epoch on
            batches.set_batch_size(sizes[stage])
            stream = iter(batches)
        real, _ = next(stream)
        b = real.shape[0]
        real = fade_reals(real, res, alpha).contiguous(memory_format=fmt)  # reals fade in too
        z = torch.randn(b, args.z_dim, device=device)

        # D step (n_critic = 1): WGAN-GP plus the drift term (Sec. A.1).
        with autocast(device, args.amp):
            fake = G_step(z, stage, alpha)
        x_hat = interpolate(real, fake.detach())
        with autocast(device, args.amp):
            real_scores, fake_scores = D(real, stage, alpha), D(fake.detach(), stage, alpha)
            hat_scores = D(x_hat, stage, alpha)
        # scaler_d.scale(one) is fp16's loss scale as a tensor (no host sync), 1 otherwise.
        penalty = gradient_penalty(hat_scores, x_hat, scaler_d.scale(one), args.gp_target)
        loss_w = d_loss(real_scores, fake_scores, args.eps_drift)
        optimizer_step(loss_w + args.lambda_gp * penalty, opt_d, scaler_d, D, world)

        # G step on the same fake batch; D's weights need no grads here.
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D(fake, stage, alpha))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, run.step, args.ema_warmup)
        sched.images, sched.stage, sched.alpha = sched.images + b * world, stage, alpha

        # Under fp16 an overflowing loss scale makes gp inf in a step GradScaler skips: no NaN.
        gp = penalty.detach().float()
        gp = gp.nan_to_num(0.0, 0.0, 0.0) if args.amp == "fp16" else gp
        r, f = real_scores.detach().float(), fake_scores.detach().float()
        run.end_step(
            images=b * world,
            d_loss=loss_w.detach() + args.lambda_gp * gp,
            g_loss=loss_g,
            wasserstein=r.mean() - f.mean(),
            d_real=r.mean(),
            d_fake=f.mean(),
            gp=gp,
            drift=r.square().mean(),
            resolution=res,
            alpha=alpha,
            kimg=sched.images / 1000,
        )
    return run.finish(
        f", {sched.images / 1000:g} kimg, at {4 << sched.stage}x"
        f"{4 << sched.stage} (alpha {sched.alpha:.2f})"
    )


# ============================================================ sampling
class Grown(nn.Module):
    """G where its run had grown to: at the schedule's (stage, alpha), upscaled to ``size``."""

    def __init__(self, G, sched, size):
        super().__init__()
        self.G, self.sched, self.size = G, sched, size

    def forward(self, z):
        return grid_images(self.G, z, self.sched, self.size)


def load_generator(path, device="cpu", use_ema=True):
    """generate(n, seed=0, temperature=1.0, z=None) -> images in [-1, 1] from a checkpoint's
    EMA (or raw) G at the (stage, alpha) its run had reached, upscaled to its --image-size."""
    from common.run import Generate, load_checkpoint

    generate = Generate(SCRIPT, path, device, use_ema, build_models)
    s = Growth(**load_checkpoint(path, SCRIPT)["schedule"])
    generate.model = Grown(generate.model, s, generate.run.image_size)
    generate.resolution, generate.alpha = 4 << s.stage, s.alpha
    return generate


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
