"""ProGAN: Progressive Growing of GANs for Improved Quality, Stability, and Variation.
Karras, Aila, Laine, Lehtinen, ICLR 2018. arXiv:1710.10196.

The idea: start G and D at 4x4 and grow both, one resolution at a time, up to the
image size (Sec. 3, Fig. 1). Each new 2x block is faded in smoothly (Fig. 2): G's output
is (1 - alpha) * upsample(toRGB(old)) + alpha * toRGB(new block), D's input path is the
mirror image, and the real images shown to D are blended the same way, with alpha
rising linearly from 0 to 1 over a fade phase, followed by a stabilising phase (800k
real images each, Sec. A.1). Three more ingredients keep training stable without batch
norm: an equalized learning rate (Sec. 4.1: weights drawn from N(0, 1) and multiplied by
He's constant sqrt(2 / fan_in) at every forward pass, so Adam's per-weight step is the
same relative size for every layer), pixelwise feature normalisation after every conv
of G (Sec. 4.2, Eq. 2), and a minibatch standard-deviation feature map near the end of D
for variation (Sec. 3). Loss: WGAN-GP (lambda 10) plus a drift penalty
eps_drift E[D(x)^2], eps_drift = 0.001 (Sec. A.1), n_critic 1, Adam lr 1e-3, betas
(0, 0.99), eps 1e-8, and an EMA of G's weights with decay 0.999 for evaluation.

Usage:
    python progan.py --fade-kimg 20 --stable-kimg 20 --fmap-base 128 --fmap-max 64 --ema-decay 0.99
                       # digits (embedded) grown 4x4 -> 32x32 on a CPU, ~20 min; see "Budget" below
    python progan.py --dataset celeba --data-path ~/data --image-size 128    # the paper's schedule
    torchrun --nproc_per_node=8 progan.py --dataset folder --data-path ~/faces --image-size 256 --amp bf16
    python progan.py --resume auto            # continue the latest run: stage, alpha, images seen
    python progan.py --sample 64 --checkpoint runs/progan/<run>   # grid from the EMA generator
    python progan.py --sample 8 --interpolate 10 --checkpoint runs/progan/<run>

Budget: the defaults are the paper's (800k images per fade and per stabilising phase,
512 feature maps), which for 32x32 means 5.6M real images through 512-channel nets:
days on a CPU. The digits command above is this script's CPU budget: 20k images per
phase (140k in all, 8750 steps at the paper's batch 16) and 64/32/16/8 feature maps at
4/8/16/32; it reached recognisable digits in 20 min on a shared 2-core CPU (one thread;
digits metric: Frechet distance 42, 10/10 classes). With phases that short the paper's
EMA decay of 0.999 (a time constant of 1000 steps, most of a phase) lags behind G and
scored worse than the raw G (87 against 62), hence ``--ema-decay 0.99`` there (42).

Length of a run: ``--steps`` counts generator updates as everywhere in the zoo. Its
default 0 means "to the end of the growing schedule": 4x4 stabilises for --stable-kimg,
every later resolution fades in over --fade-kimg and stabilises for --stable-kimg, and
the run ends when the final resolution has stabilised. A positive --steps ends the run
after that many updates instead, wherever the schedule is (past its end the final
resolution keeps training). The schedule follows the real images shown to D, counted
over all processes, so it does not depend on the batch size or the number of processes.

Based on dcgan.py, with wgan_gp.py's penalty code; differs in: the growing networks and
their schedule (stage, alpha and images seen are in the checkpoint), equalized-lr
layers, PixelNorm, minibatch stddev, the drift term, per-resolution batch sizes (a new
batch stream when the size changes), the optimizers' state reset at every phase change,
grids at the current resolution (upscaled, nearest, to --image-size for viewing), the
schedule in the log and metrics.jsonl (resolution, alpha, kimg), and no --arch/--n-critic.

Departures from the paper, and choices where it is silent (the official code,
tkarras/progressive_growing_of_gans, decides where it is):
* Minibatch stddev: Sec. 3 computes one stddev over the whole minibatch; the official
  code (minibatch_stddev_layer) over groups of 4, one value per group. ``--mbstd-group 4``
  is the official default; 0 takes the whole minibatch as the text says. Each batch
  must be divisible by the group (it is min(group, batch), as in the official code).
* Batch sizes (Sec. A.1: 16 at 4x4 to 128x128, then 14, 6, 3 at 256, 512, 1024): the
  default ``--batch-sizes 256:12,512:4,1024:4`` rounds those to multiples of the
  default group of 4 (3 up to 4); with ``--mbstd-group 0`` the paper's own
  ``256:14,512:6,1024:3`` works. When the batch size changes at a new resolution a new
  data stream starts at the next epoch.
* G's first layer is Table 2's "Conv 4x4" on the 1x1 latent written as a dense layer with
  He gain sqrt(2)/4 (official networks.py), and the latent is pixel-normalised first
  (official normalize_latents). D's last "Conv 4x4" (valid) is the equivalent dense layer.
* Adam's moments are reset whenever a fade or a stabilising phase starts (official
  reset_opt_for_new_lod); the paper does not say.
* G's update reuses D's fake batch (as dcgan.py does), where the official code draws
  fresh latents; WGAN-GP's penalty, its fp16 scaling recipe and the explicit gradient
  all-reduce under torchrun are wgan_gp.py's. ``--compile`` compiles G only (the
  penalty's double backward does not compile); alpha is a Python float, so a fade
  recompiles G until torch.compile's recompile limit makes it fall back to eager.
* PixelNorm and the minibatch stddev run in fp32 under --amp (autocast off inside).
* The EMA uses the zoo's ramp-up min(0.999, (1 + t) / (10 + t)); G has no batch norm,
  so no statistics need recalibrating.
* Departure for the CPU only: the digits command narrows the nets (--fmap-base,
  --fmap-max, the official code's names) and shortens the phases; the defaults are
  the paper's.

Pitfalls avoided (tests/test_progan.py checks them): real images are faded in too;
equalized lr is applied at every forward pass (weights stay N(0, 1)); PixelNorm in G
only and minibatch stddev in D only; drift term 0.001 E[D(x)^2]; n_critic 1; beta2 0.99;
a linear output (no tanh); grids and evaluation use the EMA generator.
"""
import argparse
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

SCRIPT = "progan"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py). Phases of
# 16 and 24 images: 4 steps of batch 16 stabilise 4x4, fade in 8x8 and reach its stable phase.
SMOKE_ARGS = ["--fmap-base", "16", "--fmap-max", "4", "--z-dim", "8", "--stable-kimg", "0.016", "--fade-kimg", "0.024"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="ProGAN (Karras et al. 2018)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Sec. A.1: Adam alpha = 0.001 for both nets, minibatch 16 up to 128x128; latent of 512 (Table 2).
    # --steps 0: to the end of the growing schedule (see the docstring).
    add_common_args(p, batch_size=16, steps=0, lr_g=1e-3, lr_d=1e-3, z_dim=512, image_size=32,
                    sources={"batch_size": "Sec. A.1, up to 128x128", "lr_g": "Sec. A.1", "lr_d": "Sec. A.1", "z_dim": "Table 2"})
    m = p.add_argument_group("ProGAN", "--steps 0 (the default) trains to the end of the growing schedule; a positive --steps stops after that many G updates")
    m.add_argument("--fade-kimg", type=float, default=800, help="thousands of real images over which each new resolution fades in (Sec. A.1: 800k)")
    m.add_argument("--stable-kimg", type=float, default=800, help="thousands of real images each resolution stabilises for (Sec. A.1: 800k)")
    m.add_argument("--batch-sizes", default="256:12,512:4,1024:4", help="per-resolution batch sizes per process, RES:BATCH,...; others use --batch-size (Sec. A.1's 14, 6, 3 rounded to multiples of --mbstd-group 4)")
    m.add_argument("--mbstd-group", type=int, default=4, help="minibatch stddev group size (official code: 4); 0 uses the whole minibatch (Sec. 3)")
    m.add_argument("--fmap-base", type=int, default=8192, help="feature maps at resolution 2^r: min(fmap_base / 2^(r-1), fmap_max) (Table 2, official code)")
    m.add_argument("--fmap-max", type=int, default=512, help="most feature maps in any layer (Table 2: 512)")
    m.add_argument("--lambda-gp", type=float, default=10.0, help="WGAN-GP penalty weight (Sec. A.1, Gulrajani et al.)")
    m.add_argument("--eps-drift", type=float, default=0.001, help="drift penalty eps_drift E[D(x)^2] (Sec. A.1)")
    m.add_argument("--beta1", type=float, default=0.0, help="Adam beta1 (Sec. A.1)")
    m.add_argument("--beta2", type=float, default=0.99, help="Adam beta2 (Sec. A.1)")
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
def feature_maps(log2_res, fmap_base=8192, fmap_max=512):
    """Channels at resolution 2^r: min(fmap_base / 2^(r-1), fmap_max), the official nf(r - 1);
    Table 2's 512 up to 32x32, then 256, 128, 64, 32, 16 at 64 ... 1024 with the defaults."""
    return max(1, min(int(fmap_base / 2.0 ** (log2_res - 1)), fmap_max))


class EqualizedConv2d(nn.Module):
    """Sec. 4.1, equalized learning rate: the weight is drawn from N(0, 1) and multiplied by
    He's constant c = gain / sqrt(fan_in) at every forward pass, not once at init; biases 0.
    'Same' padding (3x3) or none (1x1)."""

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
    averaged over features and pixels into one value, appended as an extra feature map.
    Groups of ``group_size`` (official code; min(group, batch)); 0 takes the whole minibatch
    as in the paper's text. Sample n belongs to group n % (N / G), as in the official code.
    In fp32 under autocast."""
    n, c, h, w = x.shape
    g = n if group_size <= 0 else min(group_size, n)
    if n % g:
        raise ValueError(f"minibatch stddev: batch {n} is not divisible by the group size {g}")
    with torch.autocast(x.device.type, enabled=False):
        y = x.float().reshape(g, n // g, c, h, w)
        y = (y - y.mean(0)).square().mean(0).add(1e-8).sqrt()  # [N/G, C, H, W]: stddev over each group
        y = y.mean((1, 2, 3)).view(n // g, 1, 1, 1).repeat(g, 1, h, w)  # one value per group, as a map
    return torch.cat([x, y.to(x.dtype)], 1)


def lrelu(x):
    return F.leaky_relu(x, 0.2)  # Sec. A.1: leaky ReLU with leakiness 0.2 everywhere but the outputs


class GBlock(nn.Module):
    """Table 2, one resolution of G: nearest upsampling, then (conv 3x3, lReLU, PixelNorm) twice."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.conv2 = EqualizedConv2d(cin, cout, 3), EqualizedConv2d(cout, cout, 3)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        x = pixel_norm(lrelu(self.conv1(x)))
        return pixel_norm(lrelu(self.conv2(x)))


class DBlock(nn.Module):
    """Table 2, one resolution of D: (conv 3x3, lReLU) twice, then 2x2 average pooling."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv1, self.conv2 = EqualizedConv2d(cin, cin, 3), EqualizedConv2d(cin, cout, 3)

    def forward(self, x):
        return F.avg_pool2d(lrelu(self.conv2(lrelu(self.conv1(x)))), 2)


class Generator(nn.Module):
    """Table 2's generator, every resolution built at once; ``stage`` s uses blocks up to
    4 * 2^s (stage None: the final one, i.e. --image-size) and, during a fade, mixes in the
    previous stage's toRGB output upsampled (Fig. 2). PixelNorm after every conv; the toRGB
    1x1 convs are linear (gain 1, no tanh)."""

    def __init__(self, z_dim=512, image_size=32, channels=3, fmap_base=8192, fmap_max=512):
        super().__init__()
        n = int(math.log2(image_size)) - 1  # stages: 4x4, 8x8, ..., image_size
        ch = [feature_maps(r, fmap_base, fmap_max) for r in range(2, n + 2)]
        self.final_stage, self.c0 = n - 1, ch[0]
        self.dense = EqualizedLinear(z_dim, ch[0] * 16, gain=math.sqrt(2) / 4)  # "Conv 4x4" on the 1x1 latent
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
    """Table 2's discriminator, mirroring G: fromRGB (1x1 conv, lReLU) at the input
    resolution, DBlocks down to 4x4, minibatch stddev, conv 3x3, the 4x4 "conv" as a dense
    layer, and a linear output. During a fade, the input also enters through the previous
    stage's fromRGB at half resolution and the two paths are mixed (Fig. 2 (b)). No
    normalisation in D (PixelNorm is G's only). ``stage`` None: from the input's size."""

    def __init__(self, image_size=32, channels=3, fmap_base=8192, fmap_max=512, mbstd_group=4):
        super().__init__()
        n = int(math.log2(image_size)) - 1
        ch = [feature_maps(r, fmap_base, fmap_max) for r in range(2, n + 2)]
        self.mbstd_group = mbstd_group
        self.from_rgb = nn.ModuleList(EqualizedConv2d(channels, c, 1) for c in ch)
        self.blocks = nn.ModuleList(DBlock(ch[s], ch[s - 1]) for s in range(1, n))  # 4*2^s -> 4*2^(s-1)
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


# ============================================================ growing schedule
def schedule(images, fade, stable, n_stages):
    """(stage, alpha, phase) for the next step, after ``images`` real images shown to D
    (Sec. 3, A.1; the official TrainingSchedule): stage 0 (4x4) stabilises for ``stable``
    images; every later stage fades in over ``fade`` (alpha from 0 to 1) and stabilises
    for ``stable``; the last stage then stays. ``phase`` numbers the phases (0: 4x4, 2s - 1:
    stage s fading in, 2s: stage s stable)."""
    if images < stable or n_stages == 1:
        return 0, 1.0, 0
    stage, within = divmod(images - stable, fade + stable)
    stage += 1
    if stage >= n_stages:
        return n_stages - 1, 1.0, 2 * (n_stages - 1)
    if within < fade:
        return stage, within / fade, 2 * stage - 1
    return stage, 1.0, 2 * stage


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


def upscale(x, size):
    """Nearest-neighbour upscaling of images at the current resolution to ``size``, for viewing."""
    return x if x.shape[-1] == size else F.interpolate(x.float(), size=(size, size), mode="nearest")


def parse_batch_sizes(spec):
    """'256:12,512:4' -> {256: 12, 512: 4}."""
    out = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        try:
            res, bs = (int(v) for v in item.split(":"))
        except ValueError:
            raise UserError(f"--batch-sizes {spec!r}: expected RES:BATCH pairs separated by commas, e.g. 256:12,512:4") from None
        if res < 4 or res & (res - 1) or bs < 1:
            raise UserError(f"--batch-sizes {spec!r}: {item!r} needs a power-of-two resolution >= 4 and a batch of at least 1")
        out[res] = bs
    return out


def batch_at(args, res):
    """Per-process batch size at resolution ``res`` (--batch-sizes, else --batch-size)."""
    return parse_batch_sizes(args.batch_sizes).get(res, args.batch_size)


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
    """WGAN-GP's x_hat = eps x + (1 - eps) x_tilde, one eps ~ U[0, 1] per sample, a leaf for the penalty."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    return (eps * real + (1 - eps) * fake).detach().requires_grad_(True)


def gradient_penalty(hat_scores, x_hat, scale=1.0):
    """WGAN-GP's E[(||grad D(x_hat)||_2 - 1)^2] (lambda by the caller; target 1 as in the official
    wgan_target): norm over all non-batch dims, create_graph=True. ``scale``: fp16's loss scale
    (PyTorch's AMP recipe: scale before autograd.grad, divide the gradients by it)."""
    (grad,) = torch.autograd.grad(hat_scores.float().sum() * scale, x_hat, create_graph=True)
    norm = (grad.float() / scale).flatten(1).norm(2, dim=1)
    return ((norm - 1) ** 2).mean()


# ============================================================ training
def build_models(args, channels, num_classes):
    g = Generator(args.z_dim, args.image_size, channels, args.fmap_base, args.fmap_max)
    d = Discriminator(args.image_size, channels, args.fmap_base, args.fmap_max, args.mbstd_group)
    return g, d  # equalized-lr layers initialise themselves: N(0, 1) weights, zero biases


def check_args(args):
    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(f"--image-size {args.image_size} cannot be grown: ProGAN doubles from 4x4, so use a power of two >= 8 (32, 64, ..., 1024)")
    for name in ("batch_size", "fmap_base", "fmap_max", "z_dim", "log_every", "sample_every", "ckpt_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.steps < 0:
        raise UserError("--steps must be at least 0 (0: to the end of the growing schedule)")
    if args.mbstd_group < 0:
        raise UserError(f"--mbstd-group must be at least 0 (0: the whole minibatch), not {args.mbstd_group}")
    if not (args.fade_kimg >= 0 and args.stable_kimg >= 0 and args.fade_kimg + args.stable_kimg > 0):
        raise UserError("--fade-kimg and --stable-kimg must not be negative, and not both 0")
    if not (args.lambda_gp >= 0 and args.eps_drift >= 0):
        raise UserError("--lambda-gp and --eps-drift must not be negative (the paper's are 10 and 0.001)")
    if not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1), not {args.ema_decay}")
    parse_batch_sizes(args.batch_sizes)
    for r in (4 << s for s in range(int(math.log2(args.image_size)) - 1)):
        bs = batch_at(args, r)
        g = bs if args.mbstd_group == 0 else min(args.mbstd_group, bs)
        if bs % g:
            flag = "--batch-sizes" if r in parse_batch_sizes(args.batch_sizes) else "--batch-size"
            raise UserError(f"{flag} gives {bs} images at {r}x{r}, which --mbstd-group {args.mbstd_group} cannot divide; "
                            f"use a multiple of {args.mbstd_group} or another --mbstd-group")


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
        if "image_size" in args.explicit and args.image_size != ckpt["args"]["image_size"]:
            raise UserError(f"--image-size {args.image_size} differs from the resumed run's {ckpt['args']['image_size']}: a run grows to one size;"
                            " resume without --image-size, or start a new run")
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
    n_stages = int(math.log2(args.image_size)) - 1
    fade_img, stable_img = round(args.fade_kimg * 1000), round(args.stable_kimg * 1000)
    bs_of = lambda s: batch_at(args, 4 << s)  # noqa: E731 - per process
    biggest = max(bs_of(s) for s in range(n_stages))
    if biggest > (len(data) + world - 1) // world:
        raise UserError(f"the dataset has {len(data)} images, fewer than one batch of {biggest} per process; lower --batch-size/--batch-sizes")
    total = args.steps or schedule_steps(fade_img, stable_img, n_stages, lambda s: bs_of(s) * world)

    def make_batches(bs):
        return Batches(data, bs, device, args.seed, rank, world, args.num_workers, args.flip, args.color_jitter)

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    G, D = build_models(args, data.channels, 0)
    # channels-last helps convolutions on CUDA; on CPU it slowed the penalty's double backward 2.5x.
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    G, D = (m.to(device, memory_format=fmt) for m in (G, D))
    broadcast_module(G, world)
    broadcast_module(D, world)
    ema = copy.deepcopy(G).eval().requires_grad_(False) if args.ema_decay > 0 else None
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(args.beta1, args.beta2), eps=1e-8)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(args.beta1, args.beta2), eps=1e-8)
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    step, images, last_phase = 0, 0, 0
    shown = (0, 1.0)  # (stage, alpha) of the last step, for grids and the checkpoint
    if ckpt is not None:
        load_state(G, ckpt["G"], "generator")
        load_state(D, ckpt["D"], "discriminator")
        if ema is not None and ckpt.get("ema") is not None:
            load_state(ema, ckpt["ema"], "EMA generator")
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        for opt, lr in ((opt_g, args.lr_g), (opt_d, args.lr_d)):  # a learning rate given now wins
            for group in opt.param_groups:
                group["lr"] = lr
        scaler_g.load_state_dict(ckpt["scaler_g"])
        scaler_d.load_state_dict(ckpt["scaler_d"])
        sched = ckpt["schedule"]  # images seen, the last phase, stage and alpha: the schedule resumes exactly
        images, last_phase, shown = sched["images"], sched["phase"], (sched["stage"], sched["alpha"])
        if schedule(images, fade_img, stable_img, n_stages)[0] < shown[0]:
            raise UserError(f"the --fade-kimg/--stable-kimg given now would take the run back from {4 << shown[0]}x{4 << shown[0]} to a lower resolution; keep the run's schedule")
        batches = make_batches(sched["batch_size"])  # the stream in use when saved; the loop switches if needed
        batches.load_state_dict(ckpt["batches"])
        step = ckpt["step"]
        rngs = ckpt["rng"]
        if len(rngs) == world:
            set_rng_state(rngs[rank])
        else:
            torch.manual_seed(args.seed + rank + 7919 * step)
            print(f"warning: resuming with {world} processes from a {len(rngs)}-process run; latents will differ", file=sys.stderr)
    else:
        batches = make_batches(bs_of(0))
        torch.manual_seed(args.seed + rank)
        random.seed(args.seed + rank)
        np.random.seed(args.seed + rank)
    # torch.compile does not support double backward, which the penalty needs: D stays eager.
    G_step = torch.compile(G) if args.compile else G

    out = args.out
    if rank == 0:
        out = args.out if ckpt is not None else new_run_dir(SCRIPT, args.out)
        args.out = out
        write_args(out, args)
        metrics = Metrics(out, resume_step=step if ckpt is not None else None, tensorboard=args.tensorboard,
                          evaluate_dataset=args.dataset if args.eval_every else None)
        per_res = ",".join(f"{4 << s}:{bs_of(s)}" for s in range(n_stages))
        print(f"{SCRIPT}: {args.dataset} grown 4x4 -> {args.image_size}x{args.image_size}x{data.channels}, {len(data)} images;"
              f" batch {args.batch_size} x {world} process(es) = {args.batch_size * world} (per resolution {per_res});"
              f" {args.stable_kimg:g} kimg stable + {args.fade_kimg:g} kimg fade per resolution, {total} steps; lambda {args.lambda_gp}, drift {args.eps_drift};"
              f" G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M, D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M params;"
              f" {device}, amp {args.amp}; run dir {out}", flush=True)

    # Fixed latents for the grids: a private generator, so sampling never moves the training RNG.
    grid_z = torch.randn(64, args.z_dim, generator=torch.Generator().manual_seed(1234)).to(device)

    def save(step):
        states = gather_rng_states(world)
        if not all(torch.isfinite(p).all() for m in (G, D) for p in m.parameters()):
            pbar.close()  # the error gets its own line (weights can overflow before any loss does)
            raise UserError(f"the weights became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
        if rank == 0:
            state = {
                "script": SCRIPT, "step": step, "args": {k: v for k, v in vars(args).items() if k != "explicit"},
                "channels": data.channels, "num_classes": 0,
                "G": G.state_dict(), "D": D.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
                "batches": batches.state_dict(), "rng": states,
                "schedule": {"images": images, "phase": last_phase, "stage": shown[0], "alpha": shown[1], "batch_size": batches.batch_size},
            }
            last = os.path.join(out, "checkpoints", "last.pt")
            save_checkpoint(last, state)
            numbered = os.path.join(out, "checkpoints", f"step_{step:06d}.pt")
            if os.path.exists(numbered):
                os.remove(numbered)
            os.link(last, numbered)

    def write_samples(step):
        gen = ema if ema is not None else G
        was_training = gen.training
        gen.eval()
        with torch.no_grad(), autocast(device, args.amp):
            x = gen(grid_z, *shown)
        gen.train(was_training)
        metrics.image("samples", step, save_grid(upscale(x, args.image_size), os.path.join(out, "samples", f"step_{step:06d}.png"), nrow=8))
        progress_gif(os.path.join(out, "samples"), os.path.join(out, "progress.gif"))

    stream = iter(batches)
    one = torch.ones((), device=device)
    acc = torch.zeros(6, device=device)  # E D(G(z)) - E D(x), g_loss, E D(x), E D(G(z)), penalty, drift summed since the last log
    n_acc, n_img, t_log = 0, 0, time.perf_counter()
    pbar = tqdm(total=total, initial=step, disable=rank != 0, dynamic_ncols=True, desc=SCRIPT)
    while step < total:
        stage, alpha, phase = schedule(images, fade_img, stable_img, n_stages)
        res = 4 << stage
        if phase != last_phase:  # a fade or a stabilising phase starts: fresh Adam moments (official reset_opt_for_new_lod)
            opt_g.state.clear()
            opt_d.state.clear()
            last_phase = phase
            if rank == 0:
                pbar.write(f"step {step}, {images / 1000:g} kimg: {res}x{res}, {'fading in' if alpha < 1 else 'stabilising'}")
        if bs_of(stage) != batches.batch_size:  # a new batch size: a new stream, from the next epoch on
            epoch = batches.epoch + 1
            batches = make_batches(bs_of(stage))
            batches.load_state_dict({"epoch": epoch, "batch": 0})
            stream = iter(batches)
        real, _ = next(stream)
        b = real.shape[0]
        real = fade_reals(real, res, alpha).contiguous(memory_format=fmt)  # real images fade in too
        z = torch.randn(b, args.z_dim, device=device)

        # D step (n_critic = 1): WGAN-GP plus the drift term (Sec. A.1).
        with autocast(device, args.amp):
            fake = G_step(z, stage, alpha)
        x_hat = interpolate(real, fake.detach())
        with autocast(device, args.amp):
            real_scores, fake_scores, hat_scores = D(real, stage, alpha), D(fake.detach(), stage, alpha), D(x_hat, stage, alpha)
        # scaler_d.scale(one) is fp16's loss scale as a tensor (no host sync), 1 otherwise.
        penalty = gradient_penalty(hat_scores, x_hat, scaler_d.scale(one))
        loss_w = d_loss(real_scores, fake_scores, args.eps_drift)
        optimizer_step(loss_w + args.lambda_gp * penalty, opt_d, scaler_d, D, world)

        # G step on the same fake batch; D's weights need no grads here.
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D(fake, stage, alpha))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, step)
        step, images, shown = step + 1, images + b * world, (stage, alpha)

        with torch.no_grad():
            gp = penalty.detach().float()
            if args.amp == "fp16":  # a loss scale that overflows makes gp inf in a step GradScaler skips: no divergence
                gp = gp.nan_to_num(0.0, 0.0, 0.0)
            r = real_scores.detach().float()
            acc += torch.stack([loss_w.detach().float(), loss_g.detach().float(), r.mean(), fake_scores.detach().float().mean(), gp, r.square().mean()])
        n_acc, n_img = n_acc + 1, n_img + b * world
        pbar.update(1)
        if step % args.log_every == 0 or step == total:
            vals = (all_ranks_mean(acc, world) / n_acc).tolist()  # the one host sync per interval
            dt = time.perf_counter() - t_log
            if not all(map(math.isfinite, vals)):
                pbar.close()
                raise UserError(f"losses became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
            # d_loss includes the penalty and the drift; img/s counts the real images D consumed (all processes).
            rec = dict(step=step, d_loss=vals[0] + args.lambda_gp * vals[4], g_loss=vals[1], wasserstein=vals[2] - vals[3], d_real=vals[2],
                       d_fake=vals[3], gp=vals[4], drift=vals[5], resolution=res, alpha=alpha, kimg=images / 1000,
                       img_per_s=n_img / dt, time=time.time())
            if rank == 0:
                metrics.log(**rec)
                pbar.set_postfix(res=res, alpha=f"{alpha:.2f}", W=f"{rec['wasserstein']:.3f}", gp=f"{vals[4]:.3f}", img_s=f"{rec['img_per_s']:.0f}")
            acc.zero_()
            n_acc, n_img, t_log = 0, 0, time.perf_counter()
        if rank == 0 and (step % args.sample_every == 0 or step == total):
            write_samples(step)
        if step % args.ckpt_every == 0 or step == total:
            save(step)
        if args.eval_every and step % args.eval_every == 0:
            if step % args.ckpt_every and step != total:
                save(step)  # evaluation scores (and may keep as best.pt) the checkpoint of this step
            if rank == 0:
                metrics.evaluate(step, os.path.join(out, "checkpoints", "last.pt"), args.eval_samples)
    pbar.close()
    if rank == 0:
        metrics.close()
        print(f"done: {step} steps, {images / 1000:g} kimg, at {4 << shown[0]}x{4 << shown[0]} (alpha {shown[1]:.2f});"
              f" samples in {os.path.join(out, 'samples')}, checkpoint {os.path.join(out, 'checkpoints', 'last.pt')}", flush=True)
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
    """A function generate(n, seed=0, temperature=1.0, z=None, labels=None) -> images in
    [-1, 1] from a checkpoint's EMA generator (or raw G), at the resolution and alpha the
    run had reached, upscaled (nearest) to its --image-size. It carries .model, .z_dim,
    .num_classes (0: unconditional, labels are ignored), .used_ema, .resolution, .alpha."""
    ckpt = load_checkpoint(path, SCRIPT, device)
    run = argparse.Namespace(**ckpt["args"])
    G = Generator(run.z_dim, run.image_size, ckpt["channels"], run.fmap_base, run.fmap_max).to(device)
    used_ema = use_ema and ckpt["ema"] is not None
    load_state(G, ckpt["ema"] if used_ema else ckpt["G"], "generator")
    G.eval()
    stage, alpha = ckpt["schedule"]["stage"], ckpt["schedule"]["alpha"]

    @torch.no_grad()
    def generate(n=None, seed=0, temperature=1.0, z=None, labels=None):
        if z is None:
            z = torch.randn(n, run.z_dim, generator=torch.Generator().manual_seed(seed)) * temperature
        return torch.cat([upscale(G(zc.to(device), stage, alpha).float(), run.image_size).cpu() for zc in z.split(256)])

    generate.model, generate.z_dim, generate.num_classes, generate.used_ema = G, run.z_dim, 0, used_ema
    generate.resolution, generate.alpha = 4 << stage, alpha
    return generate


def sample(args):
    from common.images import make_grid, save_gif, save_grid
    from common.run import find_checkpoint, run_dir_of

    if not args.checkpoint:
        raise UserError("--sample needs --checkpoint (a .pt file, a run directory, or auto)")
    if args.temperature <= 0 or args.interpolate < 0:
        raise UserError("--temperature must be positive and --interpolate not negative")
    _, _, device = setup_distributed(args.device)
    path = find_checkpoint(SCRIPT, args.checkpoint)
    generate = load_generator(path, device, use_ema=not args.no_ema)
    which = f"{'EMA' if generate.used_ema else 'raw'} generator at {generate.resolution}x{generate.resolution}"
    out = args.out or os.path.join(run_dir_of(path), "samples")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    gen = torch.Generator().manual_seed(args.seed)
    n = args.sample
    if args.interpolate:  # n walks between random latents, k steps each: one row per walk
        k = args.interpolate
        keys = torch.randn(n + 1, generate.z_dim, generator=gen) * args.temperature
        z = slerp(keys[:-1, None], keys[1:, None], torch.linspace(0, 1, k).view(1, k, 1)).reshape(n * k, -1)
        x = generate(z=z)
        png = save_grid(x, os.path.join(out, f"interpolate_{stamp}.png"), nrow=k)
        frames = [make_grid(x[i::k], nrow=int(math.ceil(math.sqrt(n)))) for i in range(k)]
        gif = save_gif(frames + frames[::-1], os.path.join(out, f"interpolate_{stamp}.gif"), last_ms=120)
        print(f"wrote {png} and {gif} ({n} walks of {k} steps, {which})")
        return png
    x = generate(n, seed=args.seed, temperature=args.temperature)
    png = save_grid(x, os.path.join(out, f"sample_{stamp}.png"))
    print(f"wrote {png} ({n} images, {which}, temperature {args.temperature})")
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
