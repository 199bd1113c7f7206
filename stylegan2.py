"""StyleGAN2: Analyzing and Improving the Image Quality of StyleGAN. Karras, Laine, Aittala,
Hellsten, Lehtinen, Aila, CVPR 2020. arXiv:1912.04958.

The idea: StyleGAN's droplet artifacts come from AdaIN normalising each feature map by its
own statistics, so the generator sneaks signal strength past it with a blob (Sec. 2).
StyleGAN2 replaces AdaIN by weight modulation and demodulation: the style s scales the
input channels of each 3x3 convolution, w'_ijk = s_i w_ijk, and the output channels are
divided by their expected standard deviation, w''_ijk = w'_ijk / sqrt(sum_i,k w'_ijk^2 + eps)
(Eq. 1-3). Progressive growing is replaced by a skip generator (each resolution adds an
upsampled RGB image) and a residual discriminator (Sec. 4.1, Fig. 7). Regularisation is
lazy: R1 on reals every 16 discriminator steps and a path-length penalty every 4 generator
steps (Sec. 3.1), the latter pulling ||J_w^T y||_2 towards its running mean a so that a
fixed step in W changes the image by a fixed amount (Eq. 4). The rest is StyleGAN's:
an 8-layer mapping network z -> w with a 100x lower learning rate, a learned constant 4x4
input, per-layer noise with a learned strength, style mixing with probability 0.9,
minibatch standard deviation in D, equalized learning rate, the non-saturating logistic
loss, Adam (lr 0.002, betas (0, 0.99)), an EMA of G, and truncation of w when sampling.
This is config E with the skip/residual architectures, i.e. config F without its width.

Usage:
    python stylegan2.py                                   # digits, 32x32, 1500 steps: 31 min on a busy 2-core CPU (FD 74, 10/10 classes)
    python stylegan2.py --dataset celeba --data-path ~/data --image-size 64 --channel-base 16384 --channel-max 256
    python stylegan2.py --dataset folder --data-path ~/cats --image-size 64 --augment --flip
    torchrun --nproc_per_node=8 stylegan2.py --dataset folder --data-path ~/ffhq --image-size 256 \\
        --channel-base 32768 --channel-max 512 --amp fp16     # config F widths
    python stylegan2.py --resume auto                     # continue the latest run
    python stylegan2.py --sample 64 --checkpoint runs/stylegan2/<run> --truncation 0.7
    python stylegan2.py --sample 1 --mixing-grid 5 --checkpoint auto   # style-mixing grid (Fig. 10 style)
    python stylegan2.py --sample 8 --interpolate 10 --checkpoint auto

Based on dcgan.py; differs in: the networks (mapping, synthesis with modulated convolutions,
skip G, residual D with minibatch stddev), equalized learning rate, lazy R1 and path-length
regularisation as separate optimizer steps with the lazy-regularisation Adam correction,
style mixing, the EMA set by a half-life in images, truncation and style-mixing grids when
sampling, DiffAugment, reduced precision only in the highest-resolution blocks, no
``--conditional``, no channels-last (the FIR filters are depthwise convolutions).

Departures from the paper, and choices where it is silent (the official code decides):
* Width: channels at resolution r are min(--channel-base / r, --channel-max). Config F is
  ``--channel-base 32768 --channel-max 512`` (512 channels up to 64x64, then halving);
  the defaults here (1024, 64) are a CPU-sized model for the embedded digits, 1/8 of
  config F's width at 32x32 (64 channels at 4x4-16x16, 32 at 32x32). z and w keep the paper's 512 dimensions.
* Resampling uses the [1, 3, 3, 1] FIR filter through ``common.ops.upfirdn2d``, whose
  gradient is itself a blur, so R1 and path length (double backward) stay cheap; copied
  alone, the file falls back to a plain-autograd version of the same two ops (same values,
  slower second-order gradients). Upsampling convs are a stride-2 transposed conv followed
  by the blur, downsampling convs a blur followed by a stride-2 conv (official layout).
  Modulation is applied to the activations (x * s, conv, * demodulation coefficient),
  the official training path; it is Eq. 1-3 exactly.
* Lazy regularisation (Sec. 3.1): R1 (gamma 10, --r1-gamma) every 16 D steps and path
  length (weight 2, decay 0.01, on half the batch) every 4 G steps, each as its own
  optimizer step with the loss multiplied by its interval; Adam's lr and betas use
  c = k / (k + 1) (lr * c, beta ** c). The counters are the step number, so a resumed run
  regularises on the same steps; the path-length mean a is detached, kept in the
  checkpoint, and under torchrun averaged across ranks before it is updated.
* EMA (App. B: half-life of 10k images): ``--ema-kimg 10 --ema-rampup 0.05`` give the
  per-step decay 0.5 ** (global batch / min(10k, 0.05 * images seen)) (the official
  ramp-up); it is passed to the shared ``ema_update``, whose own ramp-up
  min(d, (1 + t) / (10 + t)) is looser than this one and never binds with a ramp-up.
  ``--ema-decay D`` overrides it with a constant per-step decay; ``--ema-decay 0`` turns
  EMA off. Buffers (w_avg, the constant noise maps) are copied into the EMA generator.
* w_avg (for truncation) is tracked in G's mapping network with beta 0.995 on the
  latents of D's step; truncation (--truncation psi) applies only when sampling, never in
  training or in ``load_generator``'s default (psi 1), so metrics see the full model.
* Mixed precision: as the official code (StyleGAN2-ADA), only the blocks at the highest
  --fp16-res resolutions (default 4, down to 8x8) run under autocast (bf16 or fp16); the
  mapping network, the lower blocks, minibatch stddev and D's epilogue run in fp32, and
  every conv's output is clamped to +-256 (--conv-clamp) when --amp is on. Under fp16 the
  gradient penalties follow PyTorch's AMP recipe (scale before autograd.grad, unscale
  after). Under torchrun gradients are averaged by an explicit all-reduce (no DDP
  wrapper), which works with the double backward of R1 and path length.
* ``--augment``: DiffAugment (Zhao et al. 2020, colour, translation 1/8, cutout 1/2) on
  every image D sees, reals and fakes; R1 differentiates through it to the real image.
  Not in the paper; for small datasets.
* Pitfalls avoided: EMA copies buffers (w_avg); lazy R1 multiplied by its interval and
  the c = k/(k+1) correction on lr and betas; R1 on reals only; path-length noise scaled
  by 1/sqrt(H W) and a detached running mean; one noise strength per layer, initialised
  to 0; no truncation when measuring.
"""
import argparse
import contextlib
import copy
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

try:  # the custom ops with cheap second-order gradients (DESIGN.md allows this import for stylegan2)
    from common.ops import bias_act, setup_filter, upfirdn2d
except ImportError:  # this file copied alone: plain-autograd versions of the same ops (same values)

    def setup_filter(f):
        f = torch.as_tensor(f, dtype=torch.float32)
        return f / f.sum()  # separable 1-D filter

    def upfirdn2d(x, f, up=1, down=1, padding=0, gain=1.0):
        """Zero insertion, pad (x0, x1, y0, y1), separable FIR filter, downsampling."""
        px0, px1, py0, py1 = (padding,) * 4 if isinstance(padding, int) else padding
        n, c, h, w = x.shape
        x = F.pad(x.reshape(n, c, h, 1, w, 1), [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
        x = F.pad(x, [px0, px1, py0, py1])
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


SCRIPT = "stylegan2"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--channel-base", "64", "--channel-max", "8", "--z-dim", "8", "--w-dim", "8", "--mapping-layers", "2"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="StyleGAN2 (Karras et al. 2020)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # App. B / official config F: minibatch 32, Adam lr 0.002 for both nets, 512-d z and w. The steps are
    # a CPU budget for the embedded digits (README); the paper trains for 25M+ images.
    add_common_args(p, batch_size=32, steps=1500, lr_g=0.002, lr_d=0.002, z_dim=512, image_size=32, ema_decay=None,
                    sources={"batch_size": "App. B, config F", "lr_g": "App. B", "lr_d": "App. B", "z_dim": "StyleGAN Sec. 2"})
    m = p.add_argument_group("StyleGAN2")
    m.add_argument("--w-dim", type=int, default=512, help="dimension of w (StyleGAN Sec. 2: 512)")
    m.add_argument("--mapping-layers", type=int, default=8, help="layers of the mapping network z -> w (StyleGAN Sec. 2: 8)")
    m.add_argument("--mapping-lr-mul", type=float, default=0.01, help="learning-rate multiplier of the mapping network (StyleGAN App. C: 0.01)")
    m.add_argument("--channel-base", type=int, default=1024, help="channels at resolution r: min(base / r, --channel-max); config F: 32768 (default: a CPU-sized model)")
    m.add_argument("--channel-max", type=int, default=64, help="cap on the channels per layer; config F: 512")
    m.add_argument("--style-mixing", type=float, default=0.9, help="probability of style-mixing regularisation (StyleGAN Sec. 3.1, 90%%)")
    m.add_argument("--r1-gamma", type=float, default=10.0, help="R1 weight gamma (Mescheder et al. 2018; StyleGAN2 App. B: 10 for FFHQ); 0 turns R1 off")
    m.add_argument("--r1-every", type=int, default=16, help="lazy R1: every k D steps (Sec. 3.1: 16)")
    m.add_argument("--pl-weight", type=float, default=2.0, help="path-length weight (Sec. 3.2 / official config F: 2); 0 turns it off")
    m.add_argument("--pl-every", type=int, default=4, help="lazy path-length regularisation: every k G steps (Sec. 3.1: 4)")
    m.add_argument("--pl-decay", type=float, default=0.01, help="decay of the path-length running mean a (Sec. 3.2 / official: 0.01)")
    m.add_argument("--pl-batch-shrink", type=int, default=2, help="path length on batch / k samples (official: 2)")
    m.add_argument("--mbstd-group", type=int, default=4, help="minibatch stddev group size (ProGAN Sec. 3, StyleGAN2: 4)")
    m.add_argument("--beta1", type=float, default=0.0, help="Adam beta1 (App. B: 0)")
    m.add_argument("--beta2", type=float, default=0.99, help="Adam beta2 (App. B: 0.99)")
    m.add_argument("--ema-kimg", type=float, default=10.0, help="EMA half-life in thousands of images (App. B: 10k); --ema-decay overrides")
    m.add_argument("--ema-rampup", type=float, default=0.05, help="EMA ramp-up: half-life at most this fraction of the images seen (official: 0.05); 0 turns it off")
    m.add_argument("--augment", action="store_true", help="DiffAugment (Zhao et al. 2020: colour, translation, cutout) on all of D's inputs; for small datasets")
    m.add_argument("--fp16-res", type=int, default=4, help="with --amp: how many of the highest resolutions run in reduced precision (official StyleGAN2-ADA: 4)")
    m.add_argument("--conv-clamp", type=float, default=256.0, help="with --amp: clamp every conv output to +-this (official StyleGAN2-ADA: 256)")
    m.add_argument("--truncation", type=float, default=1.0, help="--sample: truncation psi, w = w_avg + psi (w - w_avg) (StyleGAN Sec. 3.2; 1 = none)")
    m.add_argument("--mixing-grid", type=int, default=0, metavar="K", help="--sample: also write a K x K style-mixing grid (coarse styles from the top row)")
    m.add_argument("--mixing-cutoff", type=int, default=None, help="--mixing-grid: how many of the first (coarse) w's come from the top row (default: half)")
    return parse_with_resume(p, argv)


# ============================================================ shared: command line
def add_common_args(p, *, batch_size, steps, lr_g, lr_d, z_dim, image_size=32, ema_decay=0.999, sources=None):
    """Flags that mean the same in every script; the paper's values come in as arguments,
    and ``sources`` names where in the paper each one comes from."""
    cite = lambda k: f"; paper: {sources[k]}" if sources and k in sources else ""  # noqa: E731
    g = p.add_argument_group("common (the same in every script)")
    g.add_argument("--dataset", default="digits", choices=["digits", "mnist", "fashion-mnist", "cifar10", "celeba", "folder"], help="training data; digits ships inside scikit-learn")
    g.add_argument("--data-path", default=None, help="folder holding the dataset (or any folder of images for --dataset folder)")
    g.add_argument("--download", action="store_true", help="download mnist/fashion-mnist/cifar10/celeba into --data-path first")
    g.add_argument("--image-size", type=int, default=image_size, help="training resolution (a power of two)")
    g.add_argument("--channels", type=int, default=None, choices=[1, 3], help="image channels; None keeps the dataset's own")
    g.add_argument("--flip", action="store_true", help="augment with random horizontal flips")
    g.add_argument("--color-jitter", type=float, default=0.0, help="augment with colour jitter of this strength (0.1-0.3 is mild)")
    g.add_argument("--batch-size", type=int, default=batch_size, help=f"batch size per process{cite('batch_size')}")
    g.add_argument("--steps", type=int, default=steps, help="number of generator updates")
    g.add_argument("--lr-g", type=float, default=lr_g, help=f"generator learning rate{cite('lr_g')}")
    g.add_argument("--lr-d", type=float, default=lr_d, help=f"discriminator / critic learning rate{cite('lr_d')}")
    g.add_argument("--z-dim", type=int, default=z_dim, help=f"latent size{cite('z_dim')}")
    g.add_argument("--seed", type=int, default=0, help="random seed (rank r uses seed + r for its latents)")
    g.add_argument("--out", default=None, help="run directory (default runs/<script>/<time>)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    g.add_argument("--amp", default="off", choices=["off", "bf16", "fp16"], help="mixed precision (fp16 needs CUDA)")
    g.add_argument("--ema-decay", type=float, default=ema_decay, help="EMA of G's weights per G step, with ramp-up; 0 turns EMA off")
    g.add_argument("--log-every", type=int, default=25, help="steps between logged metrics (each log syncs with the device)")
    g.add_argument("--sample-every", type=int, default=100, help="steps between sample grids")
    g.add_argument("--ckpt-every", type=int, default=500, help="steps between checkpoints")
    g.add_argument("--eval-every", type=int, default=0, help="steps between evaluations of a checkpoint (FID, KID, precision/recall; digits: the digits classifier), logged as eval_* in metrics.jsonl; the best is kept as checkpoints/best.pt; 0: off")
    g.add_argument("--eval-samples", type=int, default=1000, help="generated images per --eval-every evaluation")
    g.add_argument("--tensorboard", action="store_true", help="also write the logged numbers and grids as TensorBoard events (<run>/tensorboard; needs the tensorboard package)")
    g.add_argument("--resume", default=None, help="continue from a checkpoint: a .pt file, a run directory, or auto (latest run)")
    g.add_argument("--compile", action="store_true", help="torch.compile the models")
    g.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1), help="data-loading processes for image folders")
    g.add_argument("--sample", type=int, default=0, metavar="N", help="generate N images from --checkpoint instead of training")
    g.add_argument("--checkpoint", default=None, help="checkpoint for --sample: a .pt file, a run directory, or auto")
    g.add_argument("--temperature", type=float, default=1.0, help="--sample: scale of the latent (lower is tamer)")
    g.add_argument("--interpolate", type=int, default=0, metavar="K", help="--sample: N latent walks of K steps (grid and GIF)")
    g.add_argument("--no-ema", action="store_true", help="--sample: use the raw generator instead of the EMA one")


class UserError(Exception):
    """A mistake the user can fix: main() prints it as one line and exits with status 1."""


def parse_with_resume(p, argv):
    """Parse argv; remember which flags were given, so a resumed run keeps the others."""
    args = p.parse_args(argv)
    if args.eval_every < 0 or args.eval_samples < 10:
        p.error("--eval-every must be at least 0 (0: off) and --eval-samples at least 10")
    saved = {a.dest: a.default for a in p._actions}
    for a in p._actions:
        a.default = argparse.SUPPRESS
    args.explicit = sorted(vars(p.parse_args(argv)))
    for a in p._actions:
        a.default = saved[a.dest]
    return args


# ============================================================ shared: distributed
def setup_distributed(device):
    """(rank, world size, torch.device) from torchrun's environment; starts the process group."""
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
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
    flat /= world
    i = 0
    for g in grads:
        g.copy_(flat[i : i + g.numel()].view_as(g))
        i += g.numel()


def broadcast_module(module, world):
    """Make every rank start from rank 0's parameters and buffers."""
    if world > 1:
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, 0)


def all_ranks_mean(t, world):
    if world > 1:
        dist.all_reduce(t)
        t /= world
    return t


# ============================================================ shared: mixed precision
def autocast(device, amp):
    """bf16 (CPU or CUDA) or fp16 (CUDA) autocast; a no-op for --amp off."""
    return torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16, enabled=amp != "off")


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
def ema_update(ema, model, decay, step):
    """ema <- d * ema + (1 - d) * model, with the ramp-up d = min(decay, (1 + t) / (10 + t)).

    The ramp-up keeps early averages from being dominated by the random initial weights;
    buffers are copied.
    """
    d = min(decay, (1 + step) / (10 + step))
    with torch.no_grad():
        for pe, pm in zip(ema.parameters(), model.parameters()):
            pe.lerp_(pm.detach(), 1 - d)
        for be, bm in zip(ema.buffers(), model.buffers()):
            be.copy_(bm)


@torch.no_grad()
def recalibrate_batchnorm(ema, batches):
    """Recompute batch-norm running statistics for the averaged weights.

    Running statistics copied from the raw generator belong to its weights, not the
    averaged ones; running the EMA generator in train mode on fresh latents with a
    cumulative average (momentum None) gives statistics that match.
    """
    bns = [m for m in ema.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    ema.train()
    for inputs in batches:  # tuples of the generator's inputs
        ema(*inputs)
    for m, mom in zip(bns, saved):
        m.momentum = mom
    ema.eval()


# ============================================================ shared: checkpoints
def rng_state():
    """This process's RNG states (python, numpy, torch, cuda) as weights_only-loadable values."""
    np_state = np.random.get_state()
    return {
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s):
    random.setstate((3, tuple(s["python"][:-1]), s["python"][-1]))
    np.random.set_state(("MT19937", s["numpy"][0].numpy().astype(np.uint32), *s["numpy"][1:]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def gather_rng_states(world):
    """Every rank's RNG state, in rank order (a collective: call on all ranks)."""
    if world == 1:
        return [rng_state()]
    states = [None] * world
    dist.all_gather_object(states, rng_state())
    return states


def save_checkpoint(path, state):
    """torch.save to a temporary file, then rename: a kill mid-save keeps the old file whole."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, script, device="cpu"):
    """Load a checkpoint of this script with weights_only=True; one clear error otherwise."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path!r} ({type(e).__name__}); is it a checkpoint of this project?") from None
    if not isinstance(ckpt, dict) or ckpt.get("script") != script:
        other = ckpt.get("script") if isinstance(ckpt, dict) else None
        raise UserError(f"{path!r} is a checkpoint of {other or 'something else'}, not {script}.py; use {other or 'the matching'}.py with it")
    return ckpt


def last_good(out):
    """Where the last good checkpoint is, for the message that stops a diverged run."""
    path = os.path.join(out or ".", "checkpoints", "last.pt")
    return f"the last good checkpoint is {path}" if os.path.exists(path) else "no checkpoint had been written yet"


def load_state(module, state, what):
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"the checkpoint's {what} does not fit the model built from these flags ({first}); keep the run's model flags") from None


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
    active autocast off; blocks at high resolution keep it (App. / official mixed precision)."""
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


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(dim=1, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    """z -> w: normalise z, 8 fully connected layers with leaky ReLU at 1/100 learning rate
    (StyleGAN Sec. 2, App. C). Tracks w_avg (beta 0.995) for truncation."""

    def __init__(self, z_dim, w_dim, num_layers=8, lr_mul=0.01, w_avg_beta=0.995):
        super().__init__()
        dims = [z_dim] + [w_dim] * num_layers
        self.fcs = nn.ModuleList(FullyConnected(a, b, act="lrelu", lr_mul=lr_mul) for a, b in zip(dims[:-1], dims[1:]))
        self.w_avg_beta = w_avg_beta
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z, psi=1.0, update_w_avg=False):
        with precision(False, z.device.type):
            x = normalize_2nd_moment(z.float())
            for fc in self.fcs:
                x = fc(x)
        if update_w_avg:
            with torch.no_grad():
                self.w_avg.copy_(x.detach().mean(0).lerp(self.w_avg, self.w_avg_beta))
        return self.w_avg.lerp(x, psi) if psi != 1 else x


def modulated_conv(x, weight, styles, demodulate=True, up=False, f=None):
    """Eq. 1-3 on the activations: scale input channels by s, convolve with the shared
    weight (equalized lr: 1/sqrt(fan_in)), divide each output channel by
    sqrt(sum_i,k (s_i w_ijk)^2 + 1e-8). up: a stride-2 transposed conv and the [1,3,3,1]
    blur (bilinear upsampling, Sec. 2 / App. B)."""
    cout, cin, kh, kw = weight.shape
    w = weight * (1 / math.sqrt(cin * kh * kw))
    if demodulate and x.dtype != torch.float32:  # official: pre-normalise to keep fp16 in range (demod cancels it)
        w = w / w.norm(float("inf"), dim=[1, 2, 3], keepdim=True)
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    x = x * styles.to(x.dtype)[:, :, None, None]
    if up:
        x = F.conv_transpose2d(x, w.transpose(0, 1).flip([2, 3]).to(x.dtype), stride=2)  # (2H + 1)^2
        x = upfirdn2d(x, f, padding=(1, 1, 1, 1), gain=4)  # blur, back to 2H
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
            x = x + torch.randn(x.shape[0], 1, self.res, self.res, device=x.device, dtype=x.dtype) * self.noise_strength.to(x.dtype)
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
        if self.first:
            self.const = nn.Parameter(torch.randn(cout, 4, 4))  # the learned constant input (StyleGAN Sec. 2)
        else:
            self.conv0 = SynthesisLayer(cin, cout, w_dim, res, up=True, clamp=clamp)
        self.conv1 = SynthesisLayer(cout, cout, w_dim, res, clamp=clamp)
        self.torgb = ToRGB(cout, channels, w_dim, clamp=clamp)
        self.register_buffer("filter", setup_filter([1, 3, 3, 1]), persistent=False)
        self.num_conv = 1 if self.first else 2

    def forward(self, x, img, ws, noise_mode):
        with precision(self.reduced, ws.device.type) as fp32:
            if fp32:
                x = x.float() if x is not None else None
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

    def __init__(self, z_dim=512, w_dim=512, image_size=32, channels=1, channel_base=1024, channel_max=64,
                 mapping_layers=8, mapping_lr_mul=0.01, fp16_res=0, conv_clamp=None):
        super().__init__()
        self.z_dim, self.w_dim = z_dim, w_dim
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers, mapping_lr_mul)
        lowest = fp16_resolution(image_size, fp16_res)
        res = [2**i for i in range(2, int(math.log2(image_size)) + 1)]
        self.blocks = nn.ModuleList(
            SynthesisBlock(0 if r == 4 else channels_at(r // 2, channel_base, channel_max), channels_at(r, channel_base, channel_max),
                           r, channels, w_dim, reduced=fp16_res > 0 and r >= lowest, clamp=conv_clamp)
            for r in res)
        self.num_ws = sum(b.num_conv for b in self.blocks) + 1  # the last tRGB takes one more

    def synthesis(self, ws, noise_mode="random"):
        x = img = None
        i = 0
        for block in self.blocks:  # a block's tRGB shares its w with the next block's first conv
            x, img = block(x, img, ws[:, i : i + block.num_conv + 1], noise_mode)
            i += block.num_conv
        return img

    def mix(self, z, ws, prob, psi=1.0):
        """Style mixing (StyleGAN Sec. 3.1): with probability prob, the w's from a random
        crossover point on come from a second latent (one crossover per batch, as official)."""
        if prob <= 0:
            return ws
        cutoff = torch.randint(1, self.num_ws, ()).item() if torch.rand(()).item() < prob else self.num_ws
        if cutoff == self.num_ws:
            return ws
        w2 = self.mapping(torch.randn_like(z), psi).unsqueeze(1).expand(-1, self.num_ws, -1)
        return torch.cat([ws[:, :cutoff], w2[:, cutoff:]], dim=1)

    def forward(self, z, psi=1.0, noise_mode="random", mixing=0.0, update_w_avg=False, return_ws=False):
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

    def __init__(self, image_size=32, channels=1, channel_base=1024, channel_max=64, mbstd_group=4, fp16_res=0, conv_clamp=None):
        super().__init__()
        lowest = fp16_resolution(image_size, fp16_res)
        res = [2**i for i in range(int(math.log2(image_size)), 2, -1)]
        self.blocks = nn.Sequential(*(
            DiscriminatorBlock(channels_at(r, channel_base, channel_max), channels_at(r // 2, channel_base, channel_max), channels,
                               first=r == image_size, reduced=fp16_res > 0 and r >= lowest, clamp=conv_clamp)
            for r in res))
        c4 = channels_at(4, channel_base, channel_max)
        self.mbstd_group = mbstd_group
        self.conv = Conv(c4 + 1, c4, 3, clamp=conv_clamp)
        self.fc = FullyConnected(c4 * 16, c4, act="lrelu")
        self.out = FullyConnected(c4, 1)

    def forward(self, img):
        x = self.blocks(img)
        with precision(False, img.device.type):  # the epilogue in fp32 (official)
            x = self.conv(minibatch_stddev(x.float(), self.mbstd_group))
            return self.out(self.fc(x.flatten(1))).view(-1)


# ============================================================ augmentation
def diff_augment(x, policy="color,translation,cutout"):
    """DiffAugment (Zhao et al. 2020): differentiable colour (brightness, saturation,
    contrast), translation by up to 1/8 of the size (zero fill) and a cutout of half the size."""
    b, _, h, w = x.shape
    dev = x.device
    if "color" in policy:
        x = x + (torch.rand(b, 1, 1, 1, device=dev, dtype=x.dtype) - 0.5)
        m = x.mean(1, keepdim=True)
        x = (x - m) * (torch.rand(b, 1, 1, 1, device=dev, dtype=x.dtype) * 2) + m
        m = x.mean([1, 2, 3], keepdim=True)
        x = (x - m) * (torch.rand(b, 1, 1, 1, device=dev, dtype=x.dtype) + 0.5) + m
    if "translation" in policy:
        sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
        ty = torch.randint(-sh, sh + 1, (b, 1, 1), device=dev)
        tx = torch.randint(-sw, sw + 1, (b, 1, 1), device=dev)
        gb, gy, gx = torch.meshgrid(torch.arange(b, device=dev), torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
        gy, gx = (gy + ty + 1).clamp(0, h + 1), (gx + tx + 1).clamp(0, w + 1)
        x = F.pad(x, [1, 1, 1, 1]).permute(0, 2, 3, 1)[gb, gy, gx].permute(0, 3, 1, 2)
    if "cutout" in policy:
        ch, cw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
        oy = torch.randint(0, h + (1 - ch % 2), (b, 1, 1), device=dev)
        ox = torch.randint(0, w + (1 - cw % 2), (b, 1, 1), device=dev)
        gb, gy, gx = torch.meshgrid(torch.arange(b, device=dev), torch.arange(ch, device=dev), torch.arange(cw, device=dev), indexing="ij")
        mask = torch.ones(b, h, w, device=dev, dtype=x.dtype)
        mask[gb, (gy + oy - ch // 2).clamp(0, h - 1), (gx + ox - cw // 2).clamp(0, w - 1)] = 0
        x = x * mask.unsqueeze(1)
    return x


# ============================================================ loss
def d_loss(real_logits, fake_logits):
    """The non-saturating logistic loss (Goodfellow et al. 2014; App. B): softplus(D(G(z))) + softplus(-D(x))."""
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
    batch_mean = all_ranks_mean(lengths.detach().mean().clone(), world)
    pl_mean = pl_mean.lerp(batch_mean, decay)
    return (lengths - pl_mean).square(), pl_mean


def ema_beta(step, batch, ema_kimg, ema_rampup):
    """App. B's EMA as a per-step decay: half-life ema_kimg thousand images, at most
    ema_rampup times the images seen so far (official ramp-up)."""
    nimg = ema_kimg * 1000
    if ema_rampup > 0:
        nimg = min(nimg, step * batch * ema_rampup)
    return 0.5 ** (batch / max(nimg, 1e-8))


def lazy_adam(params, lr, betas, every):
    """Sec. 3.1 (official): with a regulariser every k steps, Adam's lr and betas are corrected
    by c = k / (k + 1), as the regularisation steps count as extra minibatches."""
    c = every / (every + 1) if every else 1.0
    return torch.optim.Adam(params, lr=lr * c, betas=(betas[0] ** c, betas[1] ** c), eps=1e-8), c


# ============================================================ training
def build_models(args, channels, num_classes):
    amp = getattr(args, "amp", "off") != "off"
    fp16_res = args.fp16_res if amp else 0
    clamp = args.conv_clamp if amp and args.conv_clamp > 0 else None
    g = Generator(args.z_dim, args.w_dim, args.image_size, channels, args.channel_base, args.channel_max,
                  args.mapping_layers, args.mapping_lr_mul, fp16_res, clamp)
    d = Discriminator(args.image_size, channels, args.channel_base, args.channel_max, args.mbstd_group, fp16_res, clamp)
    return g, d


def check_args(args):
    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(f"--image-size {args.image_size} cannot be built: StyleGAN2 doubles from 4x4, so use a power of two >= 8 (32, 64, 128, ...)")
    for name in ("batch_size", "steps", "z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "log_every", "sample_every",
                 "ckpt_every", "r1_every", "pl_every", "pl_batch_shrink", "mbstd_group"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    g = min(args.mbstd_group, args.batch_size)
    if args.batch_size % g:
        raise UserError(f"--batch-size {args.batch_size} is not a multiple of the minibatch-stddev group {g}; use a multiple of --mbstd-group")
    if args.pl_weight > 0 and args.batch_size < args.pl_batch_shrink:
        raise UserError(f"--batch-size {args.batch_size} is smaller than --pl-batch-shrink {args.pl_batch_shrink}")
    for name in ("r1_gamma", "pl_weight", "ema_rampup", "fp16_res"):
        if not getattr(args, name) >= 0:
            raise UserError(f"--{name.replace('_', '-')} must be at least 0, not {getattr(args, name)}")
    if not 0 <= args.style_mixing <= 1 or not 0 <= args.pl_decay <= 1:
        raise UserError("--style-mixing and --pl-decay must be in [0, 1]")
    if not args.ema_kimg > 0:
        raise UserError(f"--ema-kimg must be positive (the paper's half-life is 10), not {args.ema_kimg}; --ema-decay 0 turns EMA off")
    if args.ema_decay is not None and not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1), not {args.ema_decay}")


def train(args):
    from tqdm import tqdm

    from common.data import Batches, download_dataset, load_dataset
    from common.images import progress_gif, save_grid
    from common.run import Metrics, find_checkpoint, new_run_dir, run_dir_of, write_args

    rank, world, device = setup_distributed(args.device)
    if args.amp == "fp16" and device.type != "cuda":
        raise UserError("--amp fp16 needs a CUDA device; on CPU use --amp bf16")
    ckpt = None
    if args.resume:
        path = find_checkpoint(SCRIPT, args.resume, args.out)
        ckpt = load_checkpoint(path, SCRIPT, "cpu")
        for k, v in ckpt["args"].items():  # the run's flags, except those given now
            if k not in args.explicit and k not in ("resume", "explicit"):
                setattr(args, k, v)
        args.out = run_dir_of(path)
    check_args(args)

    if args.download:
        if rank == 0:
            download_dataset(args.dataset, args.data_path)
        if world > 1:
            dist.barrier()
    data = load_dataset(args.dataset, args.data_path, args.image_size, args.channels)
    batches = Batches(data, args.batch_size, device, args.seed, rank, world, args.num_workers, args.flip, args.color_jitter)

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    G, D = build_models(args, data.channels, 0)
    G, D = G.to(device), D.to(device)
    broadcast_module(G, world)
    broadcast_module(D, world)
    ema = copy.deepcopy(G).eval().requires_grad_(False) if args.ema_decay != 0 else None
    pl_on, r1_on = args.pl_weight > 0, args.r1_gamma > 0
    opt_g, c_g = lazy_adam(G.parameters(), args.lr_g, (args.beta1, args.beta2), args.pl_every if pl_on else 0)
    opt_d, c_d = lazy_adam(D.parameters(), args.lr_d, (args.beta1, args.beta2), args.r1_every if r1_on else 0)
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    pl_mean = torch.zeros((), device=device)  # the path-length running mean a (Eq. 4)
    reg_last = torch.zeros(2, device=device)  # the last R1 and path-length penalties, for the log
    step = 0
    if ckpt is not None:
        load_state(G, ckpt["G"], "generator")
        load_state(D, ckpt["D"], "discriminator")
        if ema is not None and ckpt.get("ema") is not None:
            load_state(ema, ckpt["ema"], "EMA generator")
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        for opt, lr in ((opt_g, args.lr_g * c_g), (opt_d, args.lr_d * c_d)):  # a learning rate given now wins
            for group in opt.param_groups:
                group["lr"] = lr
        scaler_g.load_state_dict(ckpt["scaler_g"])
        scaler_d.load_state_dict(ckpt["scaler_d"])
        batches.load_state_dict(ckpt["batches"])
        pl_mean.copy_(ckpt["regularizers"]["pl_mean"])
        reg_last.copy_(ckpt["regularizers"]["last"])
        step = ckpt["step"]
        rngs = ckpt["rng"]
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        else:
            torch.manual_seed(args.seed + rank + 7919 * step)
            print(f"warning: resuming with {world} processes from a {len(rngs)}-process run; latents will differ", file=sys.stderr)
    else:
        torch.manual_seed(args.seed + rank)
        random.seed(args.seed + rank)
        np.random.seed(args.seed + rank)
    # torch.compile does not support the double backward that R1 and path length need.
    if args.compile and rank == 0:
        print("warning: --compile is ignored by stylegan2.py (R1 and path length need double backward)", file=sys.stderr)

    out = args.out
    if rank == 0:
        out = args.out if ckpt is not None else new_run_dir(SCRIPT, args.out)
        args.out = out
        write_args(out, args)
        metrics = Metrics(out, resume_step=step if ckpt is not None else None, tensorboard=args.tensorboard,
                          evaluate_dataset=args.dataset if args.eval_every else None)
        print(f"{SCRIPT}: {args.dataset} {args.image_size}x{args.image_size}x{data.channels}, {len(data)} images;"
              f" batch {args.batch_size} x {world} process(es) = {args.batch_size * world};"
              f" G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M, D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M params;"
              f" R1 gamma {args.r1_gamma} every {args.r1_every}, path length {args.pl_weight} every {args.pl_every};"
              f" {device}, amp {args.amp}; run dir {out}", flush=True)

    # Fixed latents and constant noise for the grids: sampling never moves the training RNG.
    grid_z = torch.randn(64, args.z_dim, generator=torch.Generator().manual_seed(1234)).to(device)
    aug = diff_augment if args.augment else (lambda x: x)  # noqa: E731
    global_batch = args.batch_size * world

    def save(step):
        states = gather_rng_states(world)
        if not all(torch.isfinite(p).all() for m in (G, D) for p in m.parameters()):
            pbar.close()
            raise UserError(f"the weights became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
        if rank == 0:
            state = {
                "script": SCRIPT, "step": step, "args": {k: v for k, v in vars(args).items() if k != "explicit"},
                "channels": data.channels, "num_classes": 0,
                "G": G.state_dict(), "D": D.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
                "batches": batches.state_dict(), "rng": states,
                "regularizers": {"pl_mean": pl_mean.cpu(), "last": reg_last.cpu()},
            }
            last = os.path.join(out, "checkpoints", "last.pt")
            save_checkpoint(last, state)
            numbered = os.path.join(out, "checkpoints", f"step_{step:06d}.pt")
            if os.path.exists(numbered):
                os.remove(numbered)
            os.link(last, numbered)

    def write_samples(step):
        gen = ema if ema is not None else G
        with torch.no_grad(), autocast(device, args.amp):
            x = gen(grid_z, noise_mode="const")
        metrics.image("samples", step, save_grid(x, os.path.join(out, "samples", f"step_{step:06d}.png"), nrow=8))
        progress_gif(os.path.join(out, "samples"), os.path.join(out, "progress.gif"))

    stream = iter(batches)
    one = torch.ones((), device=device)
    acc = torch.zeros(4, device=device)  # d_loss, g_loss, D(x), D(G(z)) summed since the last log
    n_acc, t_log = 0, time.perf_counter()
    pbar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc=SCRIPT)
    while step < args.steps:
        real, _ = next(stream)
        b = real.shape[0]

        # G main step: the non-saturating loss, with style mixing. D's weights need no grads here.
        D.requires_grad_(False)
        z = torch.randn(b, args.z_dim, device=device)
        with autocast(device, args.amp):
            loss_g = g_loss(D(aug(G(z, mixing=args.style_mixing))))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)

        # G regularisation (Sec. 3.1-3.2): path length every pl_every steps, times the interval.
        if pl_on and step % args.pl_every == 0:
            z = torch.randn(b // args.pl_batch_shrink, args.z_dim, device=device)
            with autocast(device, args.amp):
                img, ws = G(z, mixing=args.style_mixing, return_ws=True)
            lengths = path_lengths(img, ws, scaler_g.scale(one))
            penalty, new_mean = path_length_penalty(lengths, pl_mean, args.pl_decay, world)
            pl_mean.copy_(new_mean.detach())
            optimizer_step(penalty.mean() * args.pl_weight * args.pl_every, opt_g, scaler_g, G, world)
            reg_last[1] = penalty.detach().mean().nan_to_num(0.0, 0.0, 0.0) if args.amp == "fp16" else penalty.detach().mean()
        D.requires_grad_(True)

        # D main step: fakes from fresh latents (they also update w_avg), reals.
        z = torch.randn(b, args.z_dim, device=device)
        with torch.no_grad(), autocast(device, args.amp):
            fake = G(z, mixing=args.style_mixing, update_w_avg=True)
        with autocast(device, args.amp):
            fake_logits, real_logits = D(aug(fake)), D(aug(real))
            loss_d = d_loss(real_logits, fake_logits)
        optimizer_step(loss_d, opt_d, scaler_d, D, world)

        # D regularisation: lazy R1 on reals only, every r1_every steps, gamma / 2 times the interval.
        if r1_on and step % args.r1_every == 0:
            real_ = real.detach().requires_grad_(True)
            with autocast(device, args.amp):
                logits = D(aug(real_))
            r1 = r1_penalty(logits, real_, scaler_d.scale(one)).mean()
            optimizer_step(r1 * (args.r1_gamma / 2) * args.r1_every, opt_d, scaler_d, D, world)
            reg_last[0] = r1.detach().nan_to_num(0.0, 0.0, 0.0) if args.amp == "fp16" else r1.detach()
        if ema is not None:  # after the D step (official), so the copied w_avg is the latest
            decay = args.ema_decay if args.ema_decay is not None else ema_beta(step, global_batch, args.ema_kimg, args.ema_rampup)
            ema_update(ema, G, decay, step)
        step += 1

        with torch.no_grad():
            acc += torch.stack([loss_d.detach().float(), loss_g.detach().float(),
                                torch.sigmoid(real_logits.detach().float()).mean(), torch.sigmoid(fake_logits.detach().float()).mean()])
        n_acc += 1
        pbar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            vals = (all_ranks_mean(acc, world) / n_acc).tolist()  # the one host sync per interval
            regs = all_ranks_mean(reg_last.clone(), world).tolist()
            dt = time.perf_counter() - t_log
            if not all(map(math.isfinite, vals + regs)):
                pbar.close()
                raise UserError(f"losses became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
            rec = dict(step=step, d_loss=vals[0], g_loss=vals[1], d_real=vals[2], d_fake=vals[3], r1=regs[0], pl_penalty=regs[1],
                       pl_mean=pl_mean.item(), img_per_s=n_acc * global_batch / dt, time=time.time())
            if rank == 0:
                metrics.log(**rec)
                pbar.set_postfix(d=f"{vals[0]:.3f}", g=f"{vals[1]:.3f}", r1=f"{regs[0]:.3f}", pl=f"{rec['pl_mean']:.3f}", img_s=f"{rec['img_per_s']:.0f}")
            acc.zero_()
            n_acc, t_log = 0, time.perf_counter()
        if rank == 0 and (step % args.sample_every == 0 or step == args.steps):
            write_samples(step)
        if step % args.ckpt_every == 0 or step == args.steps:
            save(step)
        if args.eval_every and step % args.eval_every == 0:
            if step % args.ckpt_every and step != args.steps:
                save(step)  # evaluation scores (and may keep as best.pt) the checkpoint of this step
            if rank == 0:
                metrics.evaluate(step, os.path.join(out, "checkpoints", "last.pt"), args.eval_samples)
    pbar.close()
    if rank == 0:
        metrics.close()
        print(f"done: {step} steps; samples in {os.path.join(out, 'samples')}, checkpoint {os.path.join(out, 'checkpoints', 'last.pt')}", flush=True)
    if world > 1:
        dist.barrier()
    return {"out": out, "G": G, "D": D, "ema": ema}


# ============================================================ sampling
def slerp(a, b, t):
    """Spherical interpolation between latents (White 2016), better than linear in high dimension."""
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.acos((an * bn).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)


def load_generator(path, device="cpu", use_ema=True):
    """A function generate(n, seed=0, temperature=1.0, z=None, labels=None, psi=1.0) -> images
    in [-1, 1] from a checkpoint's EMA generator (or raw G), with the constant noise maps and
    no truncation unless psi < 1 (metrics must use psi 1). It carries .model, .z_dim,
    .num_classes (0: unconditional, labels are ignored) and .used_ema."""
    ckpt = load_checkpoint(path, SCRIPT, device)
    run = argparse.Namespace(**ckpt["args"])
    G, _ = build_models(run, ckpt["channels"], 0)
    G = G.to(device)
    used_ema = use_ema and ckpt["ema"] is not None
    load_state(G, ckpt["ema"] if used_ema else ckpt["G"], "generator")
    G.eval()

    @torch.no_grad()
    def generate(n=None, seed=0, temperature=1.0, z=None, labels=None, psi=1.0):
        if z is None:
            z = torch.randn(n, run.z_dim, generator=torch.Generator().manual_seed(seed)) * temperature
        return torch.cat([G(zc.to(device), psi=psi, noise_mode="const").float().cpu() for zc in z.split(256)])

    generate.model, generate.z_dim, generate.num_classes, generate.used_ema = G, run.z_dim, 0, used_ema
    return generate


@torch.no_grad()
def style_mixing_grid(G, z_cols, z_rows, cutoff, psi=1.0):
    """StyleGAN Fig. 3's layout: the top row and left column are plain images; cell (r, c)
    takes its first `cutoff` (coarse) w's from column c and the rest from row r."""
    wc = G.mapping(z_cols, psi).unsqueeze(1).repeat(1, G.num_ws, 1)
    wr = G.mapping(z_rows, psi).unsqueeze(1).repeat(1, G.num_ws, 1)
    cols, rows = G.synthesis(wc, "const"), G.synthesis(wr, "const")
    k = len(z_cols)
    cells = [torch.full_like(cols[:1], -1.0)] + list(cols.split(1))
    for r in range(len(z_rows)):
        ws = wr[r : r + 1].repeat(k, 1, 1)
        ws[:, :cutoff] = wc[:, :cutoff]
        cells += [rows[r : r + 1]] + list(G.synthesis(ws, "const").split(1))
    return torch.cat(cells).float().cpu()


def sample(args):
    from common.images import make_grid, save_gif, save_grid
    from common.run import find_checkpoint, run_dir_of

    if not args.checkpoint:
        raise UserError("--sample needs --checkpoint (a .pt file, a run directory, or auto)")
    if args.temperature <= 0 or args.interpolate < 0 or args.mixing_grid < 0:
        raise UserError("--temperature must be positive and --interpolate, --mixing-grid not negative")
    if not 0 <= args.truncation <= 1:
        raise UserError(f"--truncation psi must be in [0, 1] (1: none), not {args.truncation}")
    _, _, device = setup_distributed(args.device)
    path = find_checkpoint(SCRIPT, args.checkpoint)
    generate = load_generator(path, device, use_ema=not args.no_ema)
    which, psi = "EMA" if generate.used_ema else "raw", args.truncation
    out = args.out or os.path.join(run_dir_of(path), "samples")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    gen = torch.Generator().manual_seed(args.seed)
    n = args.sample
    if args.mixing_grid:
        G, k = generate.model, args.mixing_grid
        cutoff = args.mixing_cutoff if args.mixing_cutoff is not None else G.num_ws // 2
        if not 1 <= cutoff < G.num_ws:
            raise UserError(f"--mixing-cutoff must be in [1, {G.num_ws - 1}] (this generator has {G.num_ws} w's)")
        z = torch.randn(2 * k, generate.z_dim, generator=gen) * args.temperature
        x = style_mixing_grid(G, z[:k].to(device), z[k:].to(device), cutoff, psi)
        png = save_grid(x, os.path.join(out, f"mixing_{stamp}.png"), nrow=k + 1)
        print(f"wrote {png} (style mixing, {k}x{k}, first {cutoff} of {G.num_ws} w's from the top row, {which} generator, psi {psi})")
    if args.interpolate:  # n walks between random latents, k steps each: one row per walk
        k = args.interpolate
        keys = torch.randn(n + 1, generate.z_dim, generator=gen) * args.temperature
        z = slerp(keys[:-1, None], keys[1:, None], torch.linspace(0, 1, k).view(1, k, 1)).reshape(n * k, -1)
        x = generate(z=z, psi=psi)
        png = save_grid(x, os.path.join(out, f"interpolate_{stamp}.png"), nrow=k)
        frames = [make_grid(x[i::k], nrow=int(math.ceil(math.sqrt(n)))) for i in range(k)]
        gif = save_gif(frames + frames[::-1], os.path.join(out, f"interpolate_{stamp}.gif"), last_ms=120)
        print(f"wrote {png} and {gif} ({n} walks of {k} steps, {which} generator, psi {psi})")
        return png
    x = generate(n, seed=args.seed, temperature=args.temperature, psi=psi)
    png = save_grid(x, os.path.join(out, f"sample_{stamp}.png"))
    print(f"wrote {png} ({n} images, {which} generator, temperature {args.temperature}, truncation psi {psi})")
    return png


# ============================================================ main
def main(argv=None):
    import common

    args = parse_args(argv)
    try:
        return sample(args) if args.sample else train(args)
    except (UserError, common.UserError) as e:  # a user's mistake: one line, no traceback
        print(f"{SCRIPT}: error: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
