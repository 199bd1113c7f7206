"""SAGAN: Self-Attention Generative Adversarial Networks. Zhang, Goodfellow, Metaxas, Odena,
ICML 2019. arXiv:1805.08318.

The idea: convolutions only see a local neighbourhood, so a convolutional GAN struggles
with structure that spans the image (a dog's legs, a digit's closing stroke). SAGAN adds a
self-attention block (Sec. 3, Eqs. 1-3) to G and D: every position j of a feature map
(a query) takes a softmax-weighted sum over all positions i (the keys) of a projection of
the features, beta_{j,i} = softmax_i(f(x_i)^T g(x_j)); the result is added back with a
learned scale gamma that starts at 0, so the network first relies on local cues and learns
to use the long-range ones. Training is stabilised (Sec. 4) by spectral normalisation
(Miyato et al. 2018) on every layer of both G and D, and by the two time-scale update
rule (TTUR, Heusel et al. 2017): lr 1e-4 for G, 4e-4 for D, one D step per G step, Adam
betas (0, 0.9). The loss is the hinge loss (Eq. 4); networks are residual (the SNGAN /
projection-discriminator ResNets), class-conditional through conditional batch norm in G
and a projection discriminator (Miyato & Koyama 2018) in D (Sec. 5), with orthogonal init.

Usage:
    python sagan.py                                   # class-conditional digits, 32x32, 2000 steps: ~4 CPU-minutes
    python sagan.py --unconditional                   # no labels
    python sagan.py --dataset cifar10 --data-path ~/data --g-width 64 --d-width 64
    python sagan.py --dataset folder --data-path ~/cats --image-size 64 --attention-res 32
    torchrun --nproc_per_node=8 sagan.py --dataset cifar10 --data-path ~/data --amp bf16
    python sagan.py --resume auto                     # continue the latest run
    python sagan.py --sample 40 --checkpoint runs/sagan/<run>   # one row per class
    python sagan.py --sample 10 --attention-map --attention-query 8 20 --checkpoint runs/sagan/<run>
    python sagan.py --sample 8 --interpolate 10 --checkpoint runs/sagan/<run>

Based on dcgan.py; differs in: residual G and D with spectral norm on every layer,
self-attention blocks, conditional batch norm in G and a projection D (conditional by
default, ``--unconditional`` to turn it off), the hinge loss, TTUR learning rates, Adam
(0, 0.9), orthogonal init, D's mean outputs (not probabilities) in the log, a sync of
the power-iteration vectors under torchrun, and ``--attention-map`` for sampling.

Departures from the paper, and choices where it is silent:
* Architecture: the paper gives none in detail; this follows the authors' code
  (brain-research/self-attention-gan), i.e. the SNGAN ResNets of Miyato et al. 2018 and
  Miyato & Koyama 2018 scaled by ``--image-size``. G: SN-linear z -> 4x4, one up-block per
  doubling (CBN, ReLU, nearest 2x up, 3x3 conv, CBN, ReLU, 3x3 conv; shortcut up + 1x1
  conv), then BN, ReLU, 3x3 conv, tanh. D: an "optimized" first down-block, down-blocks
  to 4x4, one more block at 4x4, ReLU, global sum pooling, SN-linear, plus the projection
  term <embed(y), h>. Widths as the authors' 128x128 nets (G: 16*ch at 4x4 halving per
  doubling, D: ch at the first block doubling per halving, both capped at 16*ch).
* Widths: ``--g-width``/``--d-width`` (the authors' ch) default to 8 and 16, not 64, so
  that the digits fit a few CPU minutes; 64 is the paper's 128x128 ImageNet model. With
  D as narrow as G (8), the digits metric's Frechet distance was 62 at 1500 steps
  (against 24) and G lost its variety within each class by 3000 steps (48 against 24).
* Attention placement: ``--attention-res`` is the side of the feature map that gets
  attention, in G and D alike. The default is image_size / 4: the paper's model puts it
  at the 32x32 feature maps of its 128x128 nets (Table 1 compares feat8 to feat64), which is
  8x8 for the 32x32 digits (at least 4x4). 0 turns attention off (the SN-GAN baseline).
* Attention block: f, g, h and v are spectrally normalised 1x1 convs with C/8 channels
  (Sec. 3, k = 8), without the 2x max-pooling of keys and values that the authors' code
  uses to save memory (at digit sizes there is nothing to save).
* Conditional batch norm: the authors' code looks up a gain (initialised to 1) and a bias
  (0) per class (``--shared-dim 0``). With Adam at lr 1e-4 such a table moves by at most
  1e-4 per step, and on the digits the classes had not separated (after 800 steps at
  batch 32 the digits classifier agreed with the requested class for 14% of samples,
  chance 10%; after 1250 steps at batch 16 the grid's rows were still mixed). The
  default is therefore BigGAN's form (Brock et al. 2019): one shared class embedding
  (128-d, N(0, 1)) mapped by a linear layer per CBN to gain 1 + dg and bias db, the maps
  initialised to 0 so that training starts from the same place; the classes separate
  within ~1500 steps. CBN tables, maps and the shared embedding are not spectrally
  normalised (the authors' code and BigGAN do not normalise CBN gains). The projection
  embedding in D is spectrally normalised (the authors' ``sn_embedding``). A dataset
  without labels falls back to unconditional with a one-line warning (an image folder
  without class sub-folders is a normal thing to train on).
* Batch 16, not 256 (Sec. 5), and 2000 steps, not 1M: the digits on 2 CPU cores. At
  lr 1e-4 progress is bounded per step rather than per image, so a small batch buys
  more steps within the budget.
* G's update reuses the fake batch of D's update (as dcgan.py) rather than drawing a
  second z: one generator forward per step.
* Spectral norm is torch's parametrization (torch.nn.utils.parametrizations.spectral_norm):
  one power iteration per forward in training mode with persistent u, v buffers, which
  are in every state_dict, so checkpoints carry them and a resume is bit-exact. Under
  torchrun each rank updates u from its own copy of W, never from its data; W is the same
  on every rank (gradients are all-reduced before each step), so u stays the same too.
  Kernels that are not bit-reproducible could still let it drift, so rank 0's u and v
  are broadcast at every log interval (``sync_spectral_norm``).
* EMA generator (not in the paper, see dcgan.py): its batch-norm statistics are
  recomputed before use, which also runs its power iterations on the averaged weights.
* Init: orthogonal for every conv, linear and the projection embedding (Saxe et al.
  2014), as BigGAN (Brock et al. 2019) does for its SAGAN-style baseline; the paper
  does not say which init it uses.
* Pitfalls avoided: spectral norm on every conv, linear and the projection embedding of
  G and D; the attention softmax over the keys i for each query j; gamma initialised to 0
  with the residual x kept; hinge loss for D only, G minimises -D(G(z)); betas (0, 0.9);
  a persistent power-iteration vector that is checkpointed.
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
from torch.nn.utils.parametrizations import spectral_norm

SCRIPT = "sagan"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--g-width", "2", "--d-width", "2"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="SAGAN (Zhang et al. 2019)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Sec. 5: lr 1e-4 for G and 4e-4 for D (TTUR); z of size 128 (the authors' code). Batch 16 and
    # the steps fit about six minutes on a 2-core CPU for the embedded digits (the paper: batch 256, 1M steps).
    add_common_args(p, batch_size=16, steps=2000, lr_g=1e-4, lr_d=4e-4, z_dim=128, image_size=32,
                    sources={"lr_g": "Sec. 5, TTUR", "lr_d": "Sec. 5, TTUR", "z_dim": "authors' code"})
    m = p.add_argument_group("SAGAN")
    m.add_argument("--g-width", type=int, default=8, help="G's channels at the image resolution (the authors' gf_dim); x16 at 4x4 for 128x128 (the paper's model: 64)")
    m.add_argument("--d-width", type=int, default=16, help="D's channels after its first block (the authors' df_dim); doubles per halving (the paper's model: 64)")
    m.add_argument("--attention-res", type=int, default=None, help="side of the feature maps that get self-attention in G and D; default image_size/4 (32x32 maps at 128x128, Table 1's feat32); 0: none")
    m.add_argument("--shared-dim", type=int, default=128, help="conditional G: CBN gains and biases as linear maps of one shared class embedding of this size (BigGAN's; the digits need it to condition within minutes); 0: per-class gains (the authors' code)")
    m.add_argument("--unconditional", action="store_true", help="ignore labels: plain batch norm in G, no projection in D")
    m.add_argument("--beta1", type=float, default=0.0, help="Adam beta1 (Sec. 5)")
    m.add_argument("--beta2", type=float, default=0.9, help="Adam beta2 (Sec. 5)")
    m.add_argument("--attention-map", action="store_true", help="--sample: save G's attention over key positions for one query position, beside each image")
    m.add_argument("--attention-query", type=int, nargs=2, default=None, metavar=("ROW", "COL"), help="--attention-map: the query position in output pixels (default: the centre)")
    args = parse_with_resume(p, argv)
    if args.attention_res is None:
        args.attention_res = max(4, args.image_size // 4)
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
def sn(layer):
    """Orthogonal init (Saxe et al. 2014; the paper does not name its init, BigGAN's SAGAN
    baseline uses this one), zero bias, then spectral norm (Miyato
    et al. 2018): W / sigma(W), sigma from one power iteration per training forward with a
    persistent u (a buffer, so it is in the state_dict and the checkpoint)."""
    nn.init.orthogonal_(layer.weight)
    if getattr(layer, "bias", None) is not None:
        nn.init.zeros_(layer.bias)
    return spectral_norm(layer)


def g_widths(image_size, ch):
    """G's channels at 4x4, 8x8, ..., image_size: ch * image_size / r, capped at 16 * ch."""
    n = int(math.log2(image_size)) - 2
    return [ch * min(2 ** (n - i), 16) for i in range(n + 1)]


def d_widths(image_size, ch):
    """D's channels after each down-block (image_size/2, ..., 4x4): ch doubling, capped at 16 * ch."""
    n = int(math.log2(image_size)) - 2
    return [ch * min(2**i, 16) for i in range(n)]


class ConditionalBatchNorm(nn.Module):
    """Batch norm with a class-dependent gain 1 + dg and bias db (Sec. 5; de Vries et al. 2017);
    plain affine batch norm when num_classes is 0. ``shared_dim`` 0: dg, db looked up per
    class (the authors' code); > 0: linear maps of G's shared class embedding (BigGAN,
    Brock et al. 2019, Sec. 3). Either way dg = db = 0 at the start, as the authors' ones/zeros."""

    def __init__(self, c, num_classes=0, shared_dim=0):
        super().__init__()
        self.num_classes = num_classes
        self.bn = nn.BatchNorm2d(c, affine=not num_classes)
        if num_classes:
            make = (lambda: nn.Linear(shared_dim, c, bias=False)) if shared_dim else (lambda: nn.Embedding(num_classes, c))  # noqa: E731
            self.gain, self.bias = make(), make()
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
    With ``keep`` set, the last (B, queries, keys) map is kept in ``.beta`` for --attention-map."""

    def __init__(self, c, k=8):
        super().__init__()
        cb = max(1, c // k)
        self.f, self.g, self.h = (sn(nn.Conv2d(c, cb, 1, bias=False)) for _ in range(3))
        self.v = sn(nn.Conv2d(cb, c, 1, bias=False))
        self.gamma = nn.Parameter(torch.zeros(()))
        self.keep, self.beta = False, None

    def forward(self, x):
        b, c, hh, ww = x.shape
        f, g, h = (m(x).flatten(2) for m in (self.f, self.g, self.h))  # (B, C/8, N)
        s = torch.bmm(g.transpose(1, 2), f)  # s[b, j, i] = g(x_j) . f(x_i): queries j, keys i
        beta = F.softmax(s.float(), dim=-1).to(h.dtype)  # normalised over the keys i (Eq. 1)
        if self.keep:
            self.beta = beta.detach()
        o = torch.bmm(h, beta.transpose(1, 2)).view(b, -1, hh, ww)  # o[:, :, j] = sum_i beta[j, i] h[:, i]
        return self.gamma * self.v(o) + x


class GBlock(nn.Module):
    """Up-block of G: CBN, ReLU, nearest 2x, 3x3 conv, CBN, ReLU, 3x3 conv; shortcut 2x + 1x1 conv."""

    def __init__(self, cin, cout, num_classes=0, shared_dim=0):
        super().__init__()
        self.b1, self.b2 = ConditionalBatchNorm(cin, num_classes, shared_dim), ConditionalBatchNorm(cout, num_classes, shared_dim)
        self.c1, self.c2 = sn(nn.Conv2d(cin, cout, 3, 1, 1)), sn(nn.Conv2d(cout, cout, 3, 1, 1))
        self.skip = sn(nn.Conv2d(cin, cout, 1))

    def forward(self, x, y=None):
        up = lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")  # noqa: E731
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

    def forward(self, x):
        pool = (lambda t: F.avg_pool2d(t, 2)) if self.down else (lambda t: t)  # noqa: E731
        h = pool(self.c2(F.relu(self.c1(x if self.first else F.relu(x)))))
        if self.skip is None:
            return h + x
        return h + (self.skip(pool(x)) if self.first else pool(self.skip(x)))


class Generator(nn.Module):
    """z -> SN-linear -> 4x4, up-blocks to image_size (self-attention after the block that
    makes ``attention_res``), BN, ReLU, 3x3 conv, tanh. Labels enter through CBN only
    (with ``shared_dim``, through one class embedding shared by every CBN)."""

    def __init__(self, z_dim=128, image_size=32, channels=1, width=16, num_classes=0, attention_res=8, shared_dim=0):
        super().__init__()
        w = g_widths(image_size, width)
        self.num_classes, self.w0, self.attention_res = num_classes, w[0], attention_res
        self.shared = nn.Embedding(num_classes, shared_dim) if num_classes and shared_dim else None  # N(0, 1) init, as BigGAN
        self.project = sn(nn.Linear(z_dim, w[0] * 4 * 4))
        self.blocks = nn.ModuleList(GBlock(cin, cout, num_classes, shared_dim) for cin, cout in zip(w[:-1], w[1:]))
        res = [4 * 2**i for i in range(len(w))]  # resolution after the projection and each block
        self.attention = SelfAttention(w[res.index(attention_res)]) if attention_res else None
        self.out = nn.Sequential(nn.BatchNorm2d(w[-1]), nn.ReLU(), sn(nn.Conv2d(w[-1], channels, 3, 1, 1)), nn.Tanh())

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
        blocks = [DBlock(channels, w[0], first=True)] + [DBlock(cin, cout) for cin, cout in zip(w[:-1], w[1:])]
        self.blocks = nn.ModuleList([*blocks, DBlock(w[-1], w[-1], down=False)])
        self.attention = SelfAttention(w[int(math.log2(image_size // attention_res)) - 1]) if attention_res else None
        self.out = sn(nn.Linear(w[-1], 1))
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


# ============================================================ loss
def d_loss(real_scores, fake_scores):
    """Eq. 4, D's hinge loss: E[max(0, 1 - D(x, y))] + E[max(0, 1 + D(G(z), y))]."""
    return F.relu(1 - real_scores.float()).mean() + F.relu(1 + fake_scores.float()).mean()


def g_loss(fake_scores):
    """Eq. 4, G's loss: -E[D(G(z), y)] (no hinge for G)."""
    return -fake_scores.float().mean()


# ============================================================ training
def build_models(args, channels, num_classes):
    g = Generator(args.z_dim, args.image_size, channels, args.g_width, num_classes, args.attention_res, args.shared_dim)
    d = Discriminator(args.image_size, channels, args.d_width, num_classes, args.attention_res)
    return g, d  # initialised in their layers (``sn``): orthogonal, then spectral norm


def spectral_norm_buffers(module):
    return [b for name, b in module.named_buffers() if name.endswith(("._u", "._v"))]


def sync_spectral_norm(module, world):
    """Broadcast rank 0's power-iteration vectors u, v in one flat buffer. They depend only on
    W, which all ranks share, so this is a no-op unless kernels are not bit-reproducible."""
    if world == 1:
        return
    bufs = spectral_norm_buffers(module)
    flat = torch.cat([b.reshape(-1) for b in bufs])
    dist.broadcast(flat, 0)
    i = 0
    for b in bufs:
        b.copy_(flat[i : i + b.numel()].view_as(b))
        i += b.numel()


def check_args(args):
    s = args.image_size
    if s < 8 or s & (s - 1):
        raise UserError(f"--image-size {s} cannot be built: SAGAN doubles from 4x4, so use a power of two >= 8 (32, 64, 128, ...)")
    for name in ("batch_size", "steps", "g_width", "d_width", "z_dim", "log_every", "sample_every", "ckpt_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.shared_dim < 0:
        raise UserError("--shared-dim must be at least 0 (0: per-class CBN gains)")
    a = args.attention_res
    if a and (a < 4 or a > s // 2 or a & (a - 1)):
        raise UserError(f"--attention-res {a} is not a feature map of a {s}x{s} model: use a power of two from 4 to {s // 2}, or 0 for none")
    if not 0 <= args.ema_decay < 1:
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
    if not args.unconditional and not data.num_classes:  # a folder without class sub-folders
        if rank == 0:
            print(f"warning: {args.dataset} at {args.data_path!r} has no labels; training unconditional (add --unconditional to silence this)", file=sys.stderr)
        args.unconditional = True
    num_classes = 0 if args.unconditional else data.num_classes
    batches = Batches(data, args.batch_size, device, args.seed, rank, world, args.num_workers, args.flip, args.color_jitter)

    torch.manual_seed(args.seed)  # the same initial weights (and power-iteration vectors) on every rank
    G, D = build_models(args, data.channels, num_classes)
    G, D = (m.to(device, memory_format=torch.channels_last) for m in (G, D))
    broadcast_module(G, world)
    broadcast_module(D, world)
    ema = copy.deepcopy(G).eval().requires_grad_(False) if args.ema_decay > 0 else None
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(args.beta1, args.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(args.beta1, args.beta2))
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    step = 0
    if ckpt is not None:
        load_state(G, ckpt["G"], "generator")  # the state_dicts hold the power-iteration u and v
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
        print(f"{SCRIPT}: {args.dataset} {args.image_size}x{args.image_size}x{data.channels}, {len(data)} images"
              f"{f', {num_classes} classes' if num_classes else ''}; batch {args.batch_size} x {world} process(es) = {args.batch_size * world};"
              f" G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M, D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M params;"
              f" attention at {args.attention_res or 'no'}x{args.attention_res or ''}; {device}, amp {args.amp}; run dir {out}", flush=True)

    # Fixed latents for the grids: a private generator, so sampling never moves the training RNG.
    n_grid = 8 * num_classes if num_classes else 64
    grid_z = torch.randn(n_grid, args.z_dim, generator=torch.Generator().manual_seed(1234)).to(device)
    grid_y = torch.arange(num_classes).repeat_interleave(8).to(device) if num_classes else None

    def calib_batches(n=4, size=256):
        """Latents (and labels) for recalibrate_batchnorm: the same ones every time."""
        g = torch.Generator().manual_seed(4321)
        for _ in range(n):
            z = torch.randn(size, args.z_dim, generator=g).to(device)
            yield (z, torch.randint(num_classes, (size,), generator=g).to(device)) if num_classes else (z,)

    def generator_for_use():
        if ema is None:
            return G
        recalibrate_batchnorm(ema, calib_batches())  # also runs 4 power iterations on the EMA weights
        return ema

    def save(step):
        states = gather_rng_states(world)
        if not all(torch.isfinite(p).all() for m in (G, D) for p in m.parameters()):
            pbar.close()
            raise UserError(f"the weights became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
        if rank == 0:
            if ema is not None:
                recalibrate_batchnorm(ema, calib_batches())
            state = {
                "script": SCRIPT, "step": step, "args": {k: v for k, v in vars(args).items() if k != "explicit"},
                "channels": data.channels, "num_classes": num_classes,
                "G": G.state_dict(), "D": D.state_dict(), "ema": ema.state_dict() if ema is not None else None,
                "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(),
                "scaler_g": scaler_g.state_dict(), "scaler_d": scaler_d.state_dict(),
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
        gen.eval()  # eval: batch-norm statistics, and no power iteration (u does not move)
        with torch.no_grad(), autocast(device, args.amp):
            x = gen(grid_z, grid_y) if num_classes else gen(grid_z)
        gen.train(was_training)
        metrics.image("samples", step, save_grid(x, os.path.join(out, "samples", f"step_{step:06d}.png"), nrow=8))  # one row per class
        progress_gif(os.path.join(out, "samples"), os.path.join(out, "progress.gif"))

    stream = iter(batches)
    acc = torch.zeros(4, device=device)  # d_loss, g_loss, D(x), D(G(z)) summed since the last log
    n_acc, t_log = 0, time.perf_counter()
    pbar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc=SCRIPT)
    while step < args.steps:
        real, y = next(stream)
        real = real.contiguous(memory_format=torch.channels_last)
        b = real.shape[0]
        z = torch.randn(b, args.z_dim, device=device)
        y_fake = torch.randint(num_classes, (b,), device=device) if num_classes else None
        y_real = y if num_classes else None

        # D step (Eq. 4): hinge loss, lr 4e-4 (TTUR), one D step per G step.
        with autocast(device, args.amp):
            fake = G_step(z, y_fake)
            real_scores = D_step(real, y_real)
            fake_scores = D_step(fake.detach(), y_fake)
            loss_d = d_loss(real_scores, fake_scores)
        optimizer_step(loss_d, opt_d, scaler_d, D, world)

        # G step (Eq. 4): minimise -D(G(z), y). D's weights need no grads here.
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D_step(fake, y_fake))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, step)
        step += 1

        with torch.no_grad():
            acc += torch.stack([loss_d.detach().float(), loss_g.detach().float(),
                                real_scores.detach().float().mean(), fake_scores.detach().float().mean()])
        n_acc += 1
        pbar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            vals = (all_ranks_mean(acc, world) / n_acc).tolist()  # the one host sync per interval
            sync_spectral_norm(G, world)
            sync_spectral_norm(D, world)
            dt = time.perf_counter() - t_log
            if not all(map(math.isfinite, vals)):
                pbar.close()
                raise UserError(f"losses became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
            rec = dict(step=step, d_loss=vals[0], g_loss=vals[1], d_real=vals[2], d_fake=vals[3],
                       attn_gamma_g=G.attention.gamma.item() if G.attention is not None else 0.0,
                       img_per_s=n_acc * args.batch_size * world / dt, time=time.time())
            if rank == 0:
                metrics.log(**rec)
                pbar.set_postfix(d=f"{vals[0]:.3f}", g=f"{vals[1]:.3f}", Dx=f"{vals[2]:.2f}", DGz=f"{vals[3]:.2f}", img_s=f"{rec['img_per_s']:.0f}")
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
    """A function generate(n, seed=0, temperature=1.0, z=None, labels=None) -> images in
    [-1, 1] from a checkpoint's EMA generator (or raw G), for sampling and evaluation tools.
    It carries .model, .z_dim, .num_classes and .used_ema."""
    ckpt = load_checkpoint(path, SCRIPT, device)
    run = argparse.Namespace(**ckpt["args"])
    nc = ckpt["num_classes"]
    G = Generator(run.z_dim, run.image_size, ckpt["channels"], run.g_width, nc, run.attention_res, run.shared_dim).to(device)
    used_ema = use_ema and ckpt["ema"] is not None
    load_state(G, ckpt["ema"] if used_ema else ckpt["G"], "generator")
    G.eval()

    @torch.no_grad()
    def generate(n=None, seed=0, temperature=1.0, z=None, labels=None):
        if z is None:
            z = torch.randn(n, run.z_dim, generator=torch.Generator().manual_seed(seed)) * temperature
        if nc and labels is None:
            labels = torch.arange(len(z)) % nc
        ys = labels.split(256) if nc else [None] * len(z)
        return torch.cat([G(zc.to(device), yc.to(device) if nc else None).float().cpu() for zc, yc in zip(z.split(256), ys)])

    generate.model, generate.z_dim, generate.num_classes, generate.used_ema = G, run.z_dim, nc, used_ema
    generate.image_size = run.image_size
    return generate


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
    heat = F.interpolate(heat, size=(s, s), mode="nearest")  # one key position covers (S/R)^2 pixels
    overlay = (1 - alpha) * gray + alpha * heat * torch.tensor([1.0, 1.0, 0.0]).view(1, 3, 1, 1)
    overlay[:, :, qr, qc] = torch.tensor([1.0, 0.0, 0.0])
    return torch.stack([marked, overlay], 1).flatten(0, 1).mul(2).sub(1)


def attention_map(generate, z, labels, query, image_size):
    """Images and the last attention layer's weights over keys for one query (output pixels)."""
    attn = generate.model.attention
    attn.keep = True
    try:
        x = generate(z=z, labels=labels)
        r = int(math.isqrt(attn.beta.shape[1]))
        j = (query[0] * r // image_size) * r + query[1] * r // image_size  # the query's feature position
        beta = attn.beta[:, j].float().cpu()
    finally:
        attn.keep, attn.beta = False, None
    return x, beta


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
    nc, which = generate.num_classes, "EMA" if generate.used_ema else "raw"
    out = args.out or os.path.join(run_dir_of(path), "samples")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    gen = torch.Generator().manual_seed(args.seed)
    n = args.sample
    if args.interpolate:  # n walks between random latents, k steps each: one row per walk
        k = args.interpolate
        keys = torch.randn(n + 1, generate.z_dim, generator=gen) * args.temperature
        z = slerp(keys[:-1, None], keys[1:, None], torch.linspace(0, 1, k).view(1, k, 1)).reshape(n * k, -1)
        y = torch.randint(nc, (n,), generator=gen).repeat_interleave(k) if nc else None
        x = generate(z=z, labels=y)
        png = save_grid(x, os.path.join(out, f"interpolate_{stamp}.png"), nrow=k)
        frames = [make_grid(x[i::k], nrow=int(math.ceil(math.sqrt(n)))) for i in range(k)]
        gif = save_gif(frames + frames[::-1], os.path.join(out, f"interpolate_{stamp}.gif"), last_ms=120)
        print(f"wrote {png} and {gif} ({n} walks of {k} steps, {which} generator)")
        return png
    y = (torch.arange(n) % nc).sort().values if nc else None  # one row per class
    nrow = int(math.ceil(n / nc)) if nc else int(math.ceil(math.sqrt(n)))
    if args.attention_map:
        s = generate.image_size
        if generate.model.attention is None:
            raise UserError("--attention-map: this model has no attention layer (it was trained with --attention-res 0)")
        query = args.attention_query or [s // 2, s // 2]
        if not all(0 <= q < s for q in query):
            raise UserError(f"--attention-query {query[0]} {query[1]} lies outside the {s}x{s} image; use ROW COL in 0..{s - 1}")
        z = torch.randn(n, generate.z_dim, generator=torch.Generator().manual_seed(args.seed)) * args.temperature  # as the plain grid
        x, beta = attention_map(generate, z, y, query, s)
        png = save_grid(attention_figure(x, beta, query), os.path.join(out, f"attention_{stamp}.png"), nrow=2 * nrow)
        r = generate.model.attention_res
        print(f"wrote {png} ({n} images, each beside G's {r}x{r} attention for the query pixel ({query[0]}, {query[1]}), {which} generator)")
        return png
    x = generate(n, seed=args.seed, temperature=args.temperature, labels=y)
    png = save_grid(x, os.path.join(out, f"sample_{stamp}.png"), nrow=nrow)
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
