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
stacks with nearest-neighbour upsampling (Sec. 3.5, Fig. 1).

Usage:
    python began.py                                   # digits (embedded), 32x32, 2000 steps: about 11 min on 2 CPU cores
    python began.py --gamma 0.7 --skip                # less diversity, sharper; skip connections (Sec. 3.5.1)
    python began.py --paper --dataset celeba --data-path ~/data --image-size 64   # the paper's settings (see PAPER)
    torchrun --nproc_per_node=8 began.py --paper --dataset celeba --data-path ~/data --image-size 128 --n-filters 128 --amp bf16
    python began.py --resume auto                     # continue the latest run (k, lr decay included)
    python began.py --sample 64 --checkpoint runs/began/<run>   # grid from the EMA generator
    python began.py --sample 8 --interpolate 10 --checkpoint runs/began/<run>

Based on dcgan.py; differs in the models (Fig. 1's auto-encoder as D, its decoder as G),
the losses and k_t, the convergence measure (computed every step, logged as M in
metrics.jsonl as the mean over each log interval, and drawn in convergence.png in the run
directory whenever a grid is written), the learning-rate decay, uniform latents, the
defaults, and it has no --conditional.

Departures from the paper, and choices where it is silent:
* The defaults are a digits recipe, not the paper's settings; ``--paper`` restores those
  (PAPER: gamma 0.5, lambda_k 0.001, N_h 64, n 64, no batch norm, batch 16, Adam lr 1e-4
  with beta1 0.9, for every flag not given beside it). The paper gives no Adam betas and
  its authors released no code; 0.9 is what the reference implementations run
  (carpedm20's BEGAN-tensorflow declares beta1 0.5 but never passes it to Adam; artcg's
  uses TensorFlow's defaults), and so is batch 16. lr 1e-4 is the top of Sec. 4.1's range.
* Why the defaults (measured on the embedded digits, 32x32, digits metric of 500 samples
  every 500 steps, grids opened; the README's BEGAN section has the table). With the
  paper's settings G collapses to one image whatever the steps: the auto-encoder learns
  the 1797 sparse 8x8 digits so well that L(x) falls below L(G(z)) / gamma within 150
  steps, so k_t sits at 0, D never pushes back, and G's outputs, whose dependence on z is
  small at the start, all follow the same gradient to one fixed point of the
  auto-encoder. Four changes together fix that: batch norm (--bn, as artcg and most MNIST
  reimplementations; it normalises G's features over the batch, which keeps their small
  z-dependent part from fading, so the samples stay apart); gamma 1.0 (the most diverse
  end of its range, so k_t switches on while L(G(z)) < L(x)); lambda_k 0.05 (k_t reaches
  its working value in hundreds of steps, not tens of thousands: FD 327 at step 1500,
  against 508 with 0.01); Adam 2e-4 with beta1 0.5 (DCGAN's; with lambda_k 0.01, 1e-4 and
  0.9 gave FD 737 at step 1500 against 508). Smaller nets (n 16, N_h 32, batch 64; n 16
  has 1/16 of n 64's convolution FLOPs) make it fit a CPU budget; a 32-d code also cannot
  store an 8x8 digit losslessly, which keeps L(x) from vanishing. Leaving one change out
  (lambda_k 0.01 runs): without batch norm, one near-black shape at step 500 (FD 1626);
  with gamma 0.75, one shape at step 750. The digits metric plateaus near FD 250-300
  after 2000 steps (blurry but readable digits, 8-9 of the 10 classes), which is where
  the default stops.
* Learning-rate decay (Sec. 4.1: "decaying by a factor of 2 when the measure of
  convergence stalls", with no rule given): M is averaged over windows of
  --lr-decay-patience steps; when a window's mean is not at least 1% below the lowest
  earlier window mean, both learning rates halve (no floor; the default window of 1000
  steps is this script's choice). The window sum, that lowest mean and
  the accumulated factor are in the checkpoint, so a resumed run decays exactly as the
  uninterrupted one; a --lr-g/--lr-d given on resume replaces the base rate, and the
  factor still applies.
* z_G = z_D: G's update reuses D's fake batch (as dcgan.py and carpedm20's code do), and
  k_t's update and M use the very L(G(z_G)) that G minimised, with L(x) from D's step.
  k_t and M are computed in fp32 from detached values (k is a constant in the losses),
  averaged over ranks under torchrun so that every rank keeps the same k_t.
* Architecture (Fig. 1): the smallest feature map is 8x8 at every resolution (Sec. 4.1),
  so --image-size is any power of two >= 8. The encoder starts with a 3x3 conv to n
  filters, then per scale two 3x3 convs, sub-sampling by a stride-2 3x3 conv that adds n
  filters (n, 2n, 3n, ...), and a fully connected layer to h (N_h, --nh); the decoder and G map h (z)
  by a fully connected layer to an 8x8xn tile h0, then per scale two 3x3 convs and
  nearest-neighbour upsampling, and a last 3x3 conv to the image, linear (no tanh, as in
  carpedm20's code). Every conv but the output one has an ELU. --skip adds the skip
  connections of Sec. 3.5.1 (h0, upsampled, concatenated after each upsampling); the
  vanishing residuals of the same section are not implemented. --bn (on by default, not
  in the paper; --no-bn is the paper's) adds batch norm before the hidden ELUs, in G and
  in D's auto-encoder, as artcg's reimplementation does; the EMA generator's batch-norm
  statistics are recomputed before it is used, as in dcgan.py. Weights are
  Glorot-uniform, biases 0, as in the reference code (the paper gives no initialisation;
  with PyTorch's default a fresh G barely depends on z and stays collapsed).
* EMA generator (not in the paper): as in dcgan.py.

Pitfalls avoided (tests/test_began.py checks them): G's loss and k's update use the same
G(z_G) batch; k is clipped to [0, 1] and receives no gradient; the loss is L1; the
learning rate halves when M stalls, and resume restores k_t and the decay state.
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

SCRIPT = "began"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--n-filters", "4", "--nh", "8"]


# The paper's settings (Sec. 4.1 and the reference code), which --paper restores; the defaults
# below are the digits recipe (measured; see the docstring's "Why the defaults").
PAPER = {"gamma": 0.5, "lambda_k": 0.001, "nh": 64, "n_filters": 64, "bn": False,
         "batch_size": 16, "lr_g": 1e-4, "lr_d": 1e-4, "beta1": 0.9}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="BEGAN (Berthelot et al. 2017)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Sec. 4.1: Adam with lr in [5e-5, 1e-4]; Nz = Nh = 64; batch 16 as in the reference code
    # (all in PAPER). The defaults are the digits recipe: 2000 steps, about 11 minutes on a 2-core CPU.
    add_common_args(p, batch_size=64, steps=2000, lr_g=2e-4, lr_d=2e-4, z_dim=64, image_size=32,
                    sources={"batch_size": "16, reference code (carpedm20, artcg); see --paper", "lr_g": "1e-4, Sec. 4.1; see --paper",
                             "lr_d": "1e-4, Sec. 4.1; see --paper", "z_dim": "Sec. 4.1, N_z"})
    m = p.add_argument_group("BEGAN")
    m.add_argument("--paper", action="store_true", help="the paper's settings for the flags not given: " + ", ".join(
        f"--{k.replace('_', '-')} {v}" if not isinstance(v, bool) else ("--bn" if v else "--no-bn") for k, v in PAPER.items()))
    m.add_argument("--gamma", type=float, default=1.0, help="diversity ratio E[L(G(z))] / E[L(x)] that k_t maintains (Sec. 3.3), in (0, 1]; paper 0.5")
    m.add_argument("--lambda-k", type=float, default=0.05, help="proportional gain of k_t (Sec. 3.4); paper 0.001")
    # N_h and n are spelled --nh and --n-filters: torchrun's own parser reads "--h" as --help and "--n" as ambiguous.
    m.add_argument("--nh", type=int, default=32, help="embedding size N_h of D's auto-encoder (Sec. 4.1: 64)")
    m.add_argument("--n-filters", type=int, default=16, help="filters per conv, Fig. 1's n (the paper uses 64 or 128); the encoder grows by n per scale")
    m.add_argument("--skip", action="store_true", help="skip connections from h0 after each upsampling (Sec. 3.5.1)")
    m.add_argument("--bn", action=argparse.BooleanOptionalAction, default=True,
                   help="batch norm before each hidden ELU (not in the paper; some reimplementations add it; without it G collapses on the digits); --no-bn: the paper's nets")
    m.add_argument("--lr-decay-patience", type=int, default=1000, help="halve both lrs when M, averaged over windows of this many steps, is not 1%% below the best earlier window (Sec. 4.1); 0: off")
    m.add_argument("--beta1", type=float, default=0.5, help="Adam beta1 (not in the paper; the reference code runs TensorFlow's 0.9)")
    m.add_argument("--beta2", type=float, default=0.999, help="Adam beta2 (not in the paper; TensorFlow's default)")
    args = parse_with_resume(p, argv)
    if args.paper:  # the paper's values, except for flags given on the command line
        for k, v in PAPER.items():
            if k not in args.explicit:
                setattr(args, k, v)
    return args


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
    return [nn.Conv2d(cin, cout, 3, stride, 1)] + ([nn.BatchNorm2d(cout)] if bn else []) + [nn.ELU(inplace=True)]


class Decoder(nn.Module):
    """Fig. 1, left; G and D's decoder (the same architecture, not the same weights): a fully
    connected layer (no non-linearity) maps h (or z) to the 8x8xn tile h0; per scale two
    3x3 conv + ELU, nearest-neighbour 2x upsampling between scales; a 3x3 conv to the image.
    skip (Sec. 3.5.1): after each upsampling, concatenate h0 upsampled to the same size."""

    def __init__(self, h=64, image_size=32, channels=1, n=64, skip=False, bn=False):
        super().__init__()
        self.n, self.skip = n, skip
        self.fc = nn.Linear(h, 8 * 8 * n)
        self.blocks = nn.ModuleList(
            nn.Sequential(*conv_elu(2 * n if skip and i else n, n, bn), *conv_elu(n, n, bn)) for i in range(n_scales(image_size)))
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


# ============================================================ loss
def reconstruction_loss(v, reconstruction):
    """Eq. 1 with eta = 1: L(v) = |v - D(v)|, the mean absolute error over pixels, per sample, in fp32."""
    return (v.float() - reconstruction.float()).abs().flatten(1).mean(1)


def d_loss(real_l, fake_l, k):
    """Sec. 3.4, the BEGAN objective for D: L_D = L(x) - k_t L(G(z_D)). k_t is a constant."""
    return real_l.mean() - (k.detach() if torch.is_tensor(k) else k) * fake_l.mean()


def g_loss(fake_l):
    """Sec. 3.4, the BEGAN objective for G: L_G = L(G(z_G))."""
    return fake_l.mean()


def update_k(k, l_real, l_fake, gamma=0.5, lambda_k=0.001):
    """Sec. 3.4: k_{t+1} = clip(k_t + lambda_k (gamma L(x) - L(G(z_G))), 0, 1), in fp32, no gradient."""
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


# ============================================================ training
def build_models(args, channels, num_classes=0):
    """G and D (unconditional: num_classes is accepted for the common signature and unused)."""
    g = Decoder(args.z_dim, args.image_size, channels, args.n_filters, args.skip, args.bn)
    d = Discriminator(args.nh, args.image_size, channels, args.n_filters, args.skip, args.bn)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


def check_args(args):
    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(f"--image-size {args.image_size} cannot be built: the nets double from 8x8, so use a power of two >= 8 (32, 64, 128, ...)")
    for name in ("batch_size", "steps", "n_filters", "nh", "z_dim", "log_every", "sample_every", "ckpt_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1), not {args.ema_decay}")
    if not 0 < args.gamma <= 1:
        raise UserError(f"--gamma must be in (0, 1], not {args.gamma}: it is the ratio E[L(G(z))] / E[L(x)] that k_t maintains (the paper uses 0.3 to 0.7)")
    if not (0 <= args.beta1 < 1 and 0 <= args.beta2 < 1):
        raise UserError(f"Adam's --beta1 and --beta2 must be in [0, 1), not {args.beta1} and {args.beta2}")
    for name in ("lr_g", "lr_d"):  # Adam's first step is lr / (1 - beta1): beyond float32 it fails before any NaN check
        if not 0 < getattr(args, name) / (1 - args.beta1) < torch.finfo(torch.float32).max:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name):g} must be positive and small enough that Adam's step lr / (1 - beta1) is finite in float32 (else inf/NaN weights)")
    if args.lambda_k < 0 or args.lr_decay_patience < 0:
        raise UserError("--lambda-k and --lr-decay-patience must not be negative")


def train(args):
    from tqdm import tqdm

    from common.data import Batches, download_dataset, load_dataset
    from common.images import progress_gif, save_curve, save_grid
    from common.run import Metrics, find_checkpoint, new_run_dir, read_metrics, run_dir_of, write_args

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
    G, D = (m.to(device, memory_format=torch.channels_last) for m in (G, D))
    broadcast_module(G, world)
    broadcast_module(D, world)
    ema = copy.deepcopy(G).eval().requires_grad_(False) if args.ema_decay > 0 else None
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(args.beta1, args.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(args.beta1, args.beta2))
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    step = 0
    k = torch.zeros((), device=device)  # k_0 = 0 (Sec. 3.4)
    m_sum = torch.zeros((), device=device)  # M summed over the current lr-decay window
    m_best, lr_scale = math.inf, 1.0  # lowest window mean of M so far; product of the halvings
    if ckpt is not None:
        load_state(G, ckpt["G"], "generator")
        load_state(D, ckpt["D"], "discriminator")
        if ema is not None and ckpt.get("ema") is not None:
            load_state(ema, ckpt["ema"], "EMA generator")
        opt_g.load_state_dict(ckpt["opt_g"])
        opt_d.load_state_dict(ckpt["opt_d"])
        eq = ckpt["equilibrium"]
        k, m_sum = eq["k"].to(device), eq["m_sum"].to(device)
        m_best, lr_scale = float(eq["m_best"]), float(eq["lr_scale"])
        for opt, lr in ((opt_g, args.lr_g), (opt_d, args.lr_d)):  # a learning rate given now is the new base
            for group in opt.param_groups:
                group["lr"] = lr * lr_scale
        scaler_g.load_state_dict(ckpt["scaler_g"])
        scaler_d.load_state_dict(ckpt["scaler_d"])
        batches.load_state_dict(ckpt["batches"])
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
    G_step, D_step = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)

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
              f" gamma {args.gamma:g}, lambda_k {args.lambda_k:g}; {device}, amp {args.amp}; run dir {out}", flush=True)

    # Fixed latents for the grids: a private generator, so sampling never moves the training RNG.
    grid_z = latents(64, args.z_dim, torch.Generator().manual_seed(1234)).to(device)

    def calib_batches(n=4, size=256):
        """Latents for recalibrate_batchnorm (under --bn): the same ones every time."""
        g = torch.Generator().manual_seed(4321)
        for _ in range(n):
            yield (latents(size, args.z_dim, g).to(device),)

    def generator_for_use():
        if ema is None:
            return G
        recalibrate_batchnorm(ema, calib_batches())
        return ema

    def save(step):
        states = gather_rng_states(world)
        if not all(torch.isfinite(p).all() for m in (G, D) for p in m.parameters()):
            raise UserError(f"the weights became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
        if rank == 0:
            if ema is not None:
                recalibrate_batchnorm(ema, calib_batches())
            state = {
                "script": SCRIPT, "step": step, "args": {k: v for k, v in vars(args).items() if k != "explicit"},
                "channels": data.channels, "num_classes": 0,
                "G": G.state_dict(), "D": D.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
                "equilibrium": {"k": k.cpu(), "m_sum": m_sum.cpu(), "m_best": torch.tensor(m_best, dtype=torch.float64),
                                "lr_scale": torch.tensor(lr_scale, dtype=torch.float64)},
                "batches": batches.state_dict(), "rng": states,
            }
            last = os.path.join(out, "checkpoints", "last.pt")
            save_checkpoint(last, state)
            numbered = os.path.join(out, "checkpoints", f"step_{step:06d}.pt")
            if os.path.exists(numbered):
                os.remove(numbered)
            os.link(last, numbered)

    def write_samples(step):
        gen = generator_for_use()
        was_training = gen.training
        gen.eval()
        with torch.no_grad(), autocast(device, args.amp):
            x = gen(grid_z)
        gen.train(was_training)
        metrics.image("samples", step, save_grid(x, os.path.join(out, "samples", f"step_{step:06d}.png"), nrow=8))
        progress_gif(os.path.join(out, "samples"), os.path.join(out, "progress.gif"))
        logged = [r for r in read_metrics(os.path.join(out, "metrics.jsonl")) if "M" in r]  # not the eval_* lines
        save_curve(os.path.join(out, "convergence.png"), [r["step"] for r in logged], [r["M"] for r in logged],
                   f"BEGAN convergence measure M_global (gamma {args.gamma:g})")

    stream = iter(batches)
    acc = torch.zeros(5, device=device)  # d_loss, g_loss, L(x), L(G(z)), M summed since the last log
    n_acc, t_log = 0, time.perf_counter()
    pbar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc=SCRIPT)
    while step < args.steps:
        real, _ = next(stream)
        real = real.contiguous(memory_format=torch.channels_last)
        b = real.shape[0]
        z = torch.rand(b, args.z_dim, device=device) * 2 - 1  # U[-1, 1] (Sec. 3.5), as latents()

        # D step: reconstruct real images well and fakes badly, weighted by k_t (Sec. 3.4).
        with autocast(device, args.amp):
            fake = G_step(z)
            real_l = D_step(real)
            fake_l = D_step(fake.detach())
            loss_d = d_loss(real_l, fake_l, k)
        optimizer_step(loss_d, opt_d, scaler_d, D, world)

        # G step: make fakes that D reconstructs well. D's weights need no grads here.
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D_step(fake))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, step)
        step += 1

        # k_t and M from L(x) and the L(G(z_G)) that G just minimised, as fp32 constants,
        # averaged over ranks so that every rank keeps the same k_t.
        l_real, l_fake = all_ranks_mean(torch.stack([real_l.detach().float().mean(), loss_g.detach().float()]), world)
        k = update_k(k, l_real, l_fake, args.gamma, args.lambda_k)
        m = convergence_measure(l_real, l_fake, args.gamma)
        m_sum += m
        if args.lr_decay_patience and step % args.lr_decay_patience == 0:
            window = m_sum.item() / args.lr_decay_patience  # the one host sync per window
            if stalled(window, m_best):  # Sec. 4.1: halve the learning rate when M stalls
                lr_scale /= 2
                for opt, lr in ((opt_g, args.lr_g), (opt_d, args.lr_d)):
                    for group in opt.param_groups:
                        group["lr"] = lr * lr_scale
            m_best = min(m_best, window)
            m_sum.zero_()

        with torch.no_grad():
            acc += torch.stack([loss_d.detach().float(), loss_g.detach().float(), l_real, l_fake, m])
        n_acc += 1
        pbar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            vals = (all_ranks_mean(acc, world) / n_acc).tolist()  # the one host sync per interval
            k_now = k.item()
            dt = time.perf_counter() - t_log
            if not all(map(math.isfinite, vals + [k_now])):
                pbar.close()
                raise UserError(f"losses became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
            rec = dict(step=step, d_loss=vals[0], g_loss=vals[1], l_real=vals[2], l_fake=vals[3], M=vals[4], k=k_now,
                       lr_g=args.lr_g * lr_scale, img_per_s=n_acc * args.batch_size * world / dt, time=time.time())
            if rank == 0:
                metrics.log(**rec)
                pbar.set_postfix(M=f"{vals[4]:.4f}", k=f"{k_now:.4f}", Lx=f"{vals[2]:.4f}", LGz=f"{vals[3]:.4f}", img_s=f"{rec['img_per_s']:.0f}")
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
        print(f"done: {step} steps; samples in {os.path.join(out, 'samples')}, M curve {os.path.join(out, 'convergence.png')},"
              f" checkpoint {os.path.join(out, 'checkpoints', 'last.pt')}", flush=True)
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
    [-1, 1] from a checkpoint's EMA generator (or raw G), for sampling and evaluation tools.
    Latents are U[-1, 1] scaled by the temperature. It carries .model, .z_dim,
    .num_classes (0: BEGAN is unconditional, labels are ignored) and .used_ema."""
    ckpt = load_checkpoint(path, SCRIPT, device)
    run = argparse.Namespace(**ckpt["args"])
    G = Decoder(run.z_dim, run.image_size, ckpt["channels"], run.n_filters, run.skip, run.bn).to(device)
    used_ema = use_ema and ckpt["ema"] is not None
    load_state(G, ckpt["ema"] if used_ema else ckpt["G"], "generator")
    G.eval()

    @torch.no_grad()
    def generate(n=None, seed=0, temperature=1.0, z=None, labels=None):
        if z is None:
            z = latents(n, run.z_dim, torch.Generator().manual_seed(seed)) * temperature
        return torch.cat([G(zc.to(device)).float().cpu() for zc in z.split(256)])

    generate.model, generate.z_dim, generate.num_classes, generate.used_ema = G, run.z_dim, 0, used_ema
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
    which = "EMA" if generate.used_ema else "raw"
    out = args.out or os.path.join(run_dir_of(path), "samples")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    gen = torch.Generator().manual_seed(args.seed)
    n = args.sample
    if args.interpolate:  # n walks between random latents, k steps each: one row per walk
        k = args.interpolate
        keys = latents(n + 1, generate.z_dim, gen) * args.temperature
        z = slerp(keys[:-1, None], keys[1:, None], torch.linspace(0, 1, k).view(1, k, 1)).reshape(n * k, -1)
        x = generate(z=z)
        png = save_grid(x, os.path.join(out, f"interpolate_{stamp}.png"), nrow=k)
        frames = [make_grid(x[i::k], nrow=int(math.ceil(math.sqrt(n)))) for i in range(k)]
        gif = save_gif(frames + frames[::-1], os.path.join(out, f"interpolate_{stamp}.gif"), last_ms=120)
        print(f"wrote {png} and {gif} ({n} walks of {k} steps, {which} generator)")
        return png
    x = generate(n, seed=args.seed, temperature=args.temperature)
    png = save_grid(x, os.path.join(out, f"sample_{stamp}.png"))
    print(f"wrote {png} ({n} images, {which} generator, temperature {args.temperature})")
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
