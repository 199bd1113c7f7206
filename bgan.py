"""BGAN: Boundary-Seeking Generative Adversarial Networks. Hjelm, Jacob, Che, Trischler, Cho,
Bengio, ICLR 2018. arXiv:1702.08431.

The idea: a discriminator D trained with the GAN objective estimates the density ratio,
p(x) / q(x) ~ D(x) / (1 - D(x)) = w(x), so D's logit is log w(x) (Sec. 2, Theorem 1).
For discrete data, where G's samples cannot be back-propagated through, G outputs a
conditional distribution g(x | z) (here one Bernoulli per pixel for binary images, one
softmax over a palette per pixel for quantized images), draws M samples x^(m) per latent,
weights them by the normalized importance weights w~(x^(m)) = w(x^(m)) / sum_m' w(x^(m'))
(a softmax of D's logits over the M samples of one z), and maximises the weighted
log-likelihood sum_m w~(x^(m)) log g(x^(m) | z) (Sec. 2, the lower-variance policy
gradient: the gradient of KL(p~(x | z) || g(x | z)), a policy gradient with w~ as reward).
D trains on real images and all the drawn samples (Algorithm 1). For continuous data the
same fixed point, w(G(z)) = 1 (D's decision boundary), gives G the loss
1/2 (log D - log(1 - D))^2 (Sec. 2, continuous variables), here ``--mode continuous``.
Section numbers are those of arXiv v4 (the ICLR 2018 version).

Usage:
    python bgan.py                                    # binarized digits (embedded), 32x32, 1500 steps: about 3 min on 2 CPU cores
    python bgan.py --dataset mnist --data-path ~/data --download   # binarized MNIST
    python tools/quantize_celeba.py --num-colors 16 --size 64 ~/data/img_align_celeba ~/data/celeba16
    python bgan.py --dataset folder --data-path ~/data/celeba16 --image-size 64 --activation elu --bn-after-act
    python bgan.py --mode continuous                  # the boundary-seeking loss on real-valued digits
    torchrun --nproc_per_node=8 bgan.py --dataset folder --data-path ~/data/celeba16 --image-size 64 --amp bf16
    python bgan.py --resume auto                      # continue the latest run
    python bgan.py --sample 64 --checkpoint runs/bgan/<run>    # samples drawn from the EMA generator
    python bgan.py --sample 8 --interpolate 10 --checkpoint runs/bgan/<run>

Based on dcgan.py; differs in G's output (per-pixel logits of a Bernoulli or categorical
distribution, see "What G returns"), the Monte-Carlo samples and importance-weighted
generator loss of Algorithm 1, the discrete data (binarized, or a quantized folder with
its palette.json: tools/quantize_celeba.py, common/quantize.py), the architecture
options of the PyTorch reimplementation's lessons (--activation, --bn-after-act,
--spectral-norm, --d-noise), the defaults, and it has no --conditional.

What G returns. ``G.logits(z)`` is the distribution: (N, C, S, S) Bernoulli logits for
binary data (C = channels), or (N, K, S, S) logits over the K palette colours.
``G(z)`` (forward) is the distribution's mean in the space D reads: for binary data
E[2x - 1] = tanh(logit / 2), an image in [-1, 1] of the data's shape; for quantized data
the softmax (the expected one-hot); under --mode continuous, the tanh image itself. So
``D(G(z))`` is always defined (the test harness uses it), but the discrete training loop
never feeds D the mean: D only sees drawn samples. ``draw``/``log_likelihood``/``decode``
sample pixels, score them, and turn them into RGB through the palette; sample grids and
``load_generator`` show drawn samples, never means.

Departures from the paper, and choices where it is silent:
* Importance weights (Sec. 2, Algorithm 1): log w = D's logit (log D - log(1 - D)),
  normalised by a softmax over the M samples of each latent (never across the batch),
  detached (w~ is a constant in G's loss), from D before its update, as Algorithm 1 orders
  it. M = --n-mc-samples 20, the official code's value.
* Log-likelihood reduction, ``--log-lik sum|mean``: the default ``sum`` is the paper's
  log g(x | z), the sum over pixels (and the official Theano code's). ``mean`` divides by
  the number of pixels (and channels), as the PyTorch reimplementation does so that the
  gradient's scale does not depend on resolution; with Adam the two differ only through
  Adam's epsilon (Adam is invariant to a constant scale of the loss), so the paper's form
  is the default; ``mean`` matters for SGD-like optimizers or lr transfer across sizes.
* D's loss is the GAN loss of Algorithm 1 with logits and softplus; fakes are all N x M
  drawn samples, so D's batch of fakes is M times the real batch (each term is a mean).
  D reads binary samples as images in {-1, 1} and quantized ones as one-hot planes over the
  palette (K input channels), the real images alike.
* Architecture: the DCGAN networks of dcgan.py (the paper's image models follow DCGAN; the
  official code is DCGAN-like), ReLU in G and LeakyReLU(0.2) in D by default (as the
  official code). Lessons of the PyTorch reimplementation (shared/reference), off by
  default: --activation relu|lrelu|elu (both nets), --bn-after-act (conv -> act -> BN),
  --spectral-norm (every weight of D, Miyato et al. 2018).
* D input noise, --d-noise 1.5, ON by default (not in the paper; the reimplementation's
  remedy for D outpacing G): Gaussian noise of that std on D's inputs (images in {-1, 1} or
  one-hot planes), real and sampled alike, while training; the importance weights come
  from that same pass. --d-noise 0 is the paper's D.
* --baseline, ON by default (not in the paper; --no-baseline for the plain estimator):
  subtracts 1/M from the normalized weights, a control variate: E[grad log g] = 0 under g,
  so the expected gradient is unchanged and only its variance falls.
* Why these two, measured on the binarized digits (batch 32, M 20, 1500 steps, digits
  metric against binarized digits every 250 steps, whose own reference is FD 3.7): the
  plain estimator with std-1 noise peaked at FD ~870 around step 500 and fell apart after
  (coverage 1-2 of 10 from step 1000; without noise D reached D(x~) ~ 0 by step 300 and G
  collapsed to one checkered pattern); std 1.5 alone held FD ~520 to step 1500; --baseline
  alone reached 334 at 1000 and stayed under 400; both together improved steadily to 305 at
  1500 (the default). --spectral-norm on top of noise was worse (FD 1600-4000), as were D's
  lr 3e-5 (500-570) and widths 64/32 (~600). --eval-every keeps the best checkpoint; watch
  D(x~) and ess in the log on longer runs.
* Optimizer: Adam (beta1 0.5, as DCGAN); D's lr 1e-4 is the official code's (which uses
  RMSProp for both nets), G's is 1e-3. With equal rates D wins within a few hundred steps
  (D(x~) -> 0) and G's samples stay noise or collapse on the digits (measured before
  --baseline and noise 1.5 were the defaults: equal rates of 1e-4 or 2e-4 gave no digit
  shapes by step 800; 1e-3/1e-4 gave varied strokes by 300),
  the "D learns much faster than G" failure the PyTorch reimplementation warns about.
  Batch 32 latents x 20 samples, widths 32 (G) and 16 (D): the official code's batch 128
  would make each step 2560 D passes, too slow for the 2-core CPU this default is sized for.
* Binarized data: a pixel is 1 where its intensity is >= --binarize-threshold (0.5), after
  resizing to --image-size (the digits are 8x8, upsampled to 32x32 first).
* EMA generator (not in the paper): as in dcgan.py, with batch-norm statistics recomputed.

Pitfalls avoided (tests/test_bgan.py checks them): weights are a softmax over the M
samples of each z, not over the batch; no gradient flows through the weights; the
log-likelihood is that of the sampled discrete values; the squared-logit loss is used only
by --mode continuous.
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

SCRIPT = "bgan"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--g-width", "4", "--d-width", "4", "--n-mc-samples", "4"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="BGAN (Hjelm et al. 2018)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # M = 20, z of size 100 and D's lr 1e-4 are the official code's (DISC-MNIST); G's lr is 10x
    # higher (see the docstring); batch 32 (it uses 128) and the steps fit a few minutes on a
    # 2-core CPU for the binarized digits.
    add_common_args(p, batch_size=32, steps=1500, lr_g=1e-3, lr_d=1e-4, z_dim=100, image_size=32,
                    sources={"lr_g": "official code's 1e-4 x 10, see docstring", "lr_d": "official code", "z_dim": "official code"})
    m = p.add_argument_group("BGAN")
    m.add_argument("--mode", default="discrete", choices=["discrete", "continuous"], help="discrete: Algorithm 1 (Sec. 2); continuous: the boundary-seeking loss 1/2 (log D - log(1-D))^2 (Sec. 2)")
    m.add_argument("--data-mode", default="auto", choices=["auto", "binary", "quantized"], help="discrete data: binarized images, or a quantized folder (palette.json); auto picks quantized when --data-path holds palette.json")
    m.add_argument("--n-mc-samples", type=int, default=20, help="M, samples drawn per latent for the importance weights (Algorithm 1; official code: 20)")
    m.add_argument("--log-lik", default="sum", choices=["sum", "mean"], help="log g(x|z) summed over pixels (the paper's) or averaged (the PyTorch reimplementation's); equal under Adam up to its eps")
    m.add_argument("--baseline", action=argparse.BooleanOptionalAction, default=True, help="subtract 1/M from the normalized weights (a control variate: the same expected gradient, less variance; not in the paper, see the docstring); --no-baseline: the paper's estimator")
    m.add_argument("--binarize-threshold", type=float, default=0.5, help="binary data: a pixel is 1 where its intensity in [0, 1] is >= this")
    m.add_argument("--g-width", type=int, default=32, help="channels of G's last hidden layer; doubles per resolution step (as dcgan.py; 64 for CelebA)")
    m.add_argument("--d-width", type=int, default=16, help="channels of D's first layer; doubles per resolution step (D runs on M times the batch; 64 for CelebA)")
    m.add_argument("--activation", default="dcgan", choices=["dcgan", "relu", "lrelu", "elu"], help="hidden activations; dcgan: ReLU in G, LeakyReLU(0.2) in D (the official code); else this one in both nets")
    m.add_argument("--bn-after-act", action="store_true", help="conv -> activation -> batch norm instead of conv -> batch norm -> activation (a lesson of the PyTorch reimplementation)")
    m.add_argument("--spectral-norm", action="store_true", help="spectral normalization of every weight of D (Miyato et al. 2018; helps against D outpacing G)")
    m.add_argument("--d-noise", type=float, default=1.5, help="std of Gaussian noise added to D's inputs (real and generated) while training (not in the paper; see the docstring); 0: off")
    m.add_argument("--beta1", type=float, default=0.5, help="Adam beta1 (DCGAN's; the paper's architectures follow DCGAN)")
    m.add_argument("--beta2", type=float, default=0.999, help="Adam beta2 (Adam's default)")
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
def widths(image_size, base):
    """Channels per resolution from 4x4 up to image_size/2: base * 2^k, capped at 8 * base."""
    n = int(math.log2(image_size)) - 2  # number of 2x steps between 4x4 and image_size
    return [base * min(2 ** (n - 1 - i), 8) for i in range(n)]  # [4x4, 8x8, ..., image_size/2]


def init_weights(m):
    """DCGAN's initialisation (dcgan.py): weights from N(0, 0.02), batch-norm gains N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def activation(kind, net):
    """--activation: dcgan is ReLU in G and LeakyReLU(0.2) in D (the official code); else one kind in both."""
    kind = ("relu" if net == "G" else "lrelu") if kind == "dcgan" else kind
    return {"relu": lambda: nn.ReLU(True), "lrelu": lambda: nn.LeakyReLU(0.2, True), "elu": lambda: nn.ELU(inplace=True)}[kind]()


def norm_act(channels, act, bn_after_act, bn=True):
    """Batch norm and activation after a conv: BN -> act (DCGAN), or act -> BN (--bn-after-act)."""
    norm = [nn.BatchNorm2d(channels)] if bn else []
    return [act] + norm if bn_after_act else norm + [act]


class Generator(nn.Module):
    """dcgan.py's generator with one output plane per distribution parameter.

    ``logits(z)``: (N, out_channels, S, S), the Bernoulli logits of binary data (out_channels
    = image channels), the categorical logits over a K-colour palette (out_channels = K), or
    the pre-tanh image (continuous). ``forward(z)``: the mean in D's input space: tanh(l / 2)
    = E[2x - 1] (binary), softmax over K (quantized), tanh(l) (continuous)."""

    def __init__(self, z_dim=100, image_size=32, out_channels=1, width=64, kind="binary", act="dcgan", bn_after_act=False):
        super().__init__()
        w = widths(image_size, width)
        self.kind, self.w0 = kind, w[0]
        self.project = nn.Linear(z_dim, w[0] * 4 * 4, bias=False)
        layers = norm_act(w[0], activation(act, "G"), bn_after_act)
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), *norm_act(cout, activation(act, "G"), bn_after_act)]
        layers += [nn.ConvTranspose2d(w[-1], out_channels, 4, 2, 1)]  # no BN on G's output (DCGAN)
        self.net = nn.Sequential(*layers)

    def logits(self, z):
        return self.net(self.project(z).view(-1, self.w0, 4, 4))

    def forward(self, z, y=None):
        a = self.logits(z)
        if self.kind == "quantized":
            return torch.softmax(a.float(), 1).to(a.dtype)
        return torch.tanh(a * 0.5) if self.kind == "binary" else torch.tanh(a)


class Discriminator(nn.Module):
    """dcgan.py's discriminator (strided 4x4 convs to 4x4, a linear logit, no BN on the input
    layer), with the activation and BN order of --activation/--bn-after-act."""

    def __init__(self, image_size=32, in_channels=1, width=64, act="dcgan", bn_after_act=False):
        super().__init__()
        w = widths(image_size, width)[::-1]  # [image_size/2, ..., 4x4]
        layers = [nn.Conv2d(in_channels, w[0], 4, 2, 1), activation(act, "D")]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), *norm_act(cout, activation(act, "D"), bn_after_act)]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(w[-1] * 4 * 4, 1)  # a logit: log D - log(1 - D) = log w(x)

    def forward(self, x, y=None):
        return self.out(self.net(x).flatten(1)).view(-1)


# ============================================================ discrete pixels
def draw(logits, m, kind, generator=None):
    """M samples per latent from G's per-pixel distribution, without gradient.

    binary: (N, M, C, S, S) floats in {0, 1}, x ~ Bernoulli(sigmoid(l)); quantized:
    (N, M, S, S) int64 palette indices by inverse-CDF sampling (one uniform per pixel and
    sample, located in the cumulative softmax: K times fewer random numbers than the
    Gumbel-max trick). ``generator`` (a CPU torch.Generator) makes the draw reproducible
    without touching the global RNG (grids, sampling)."""
    with torch.no_grad():
        a = logits.detach().float()
        n, c, h, w = a.shape
        shape = (n, m, c, h, w) if kind == "binary" else (n, h, w, m)
        u = torch.rand(shape, generator=generator).to(a.device) if generator is not None else torch.rand(shape, device=a.device)
        if kind == "binary":
            return (u < torch.sigmoid(a)[:, None]).float()
        cdf = torch.softmax(a, 1).cumsum(1).permute(0, 2, 3, 1).contiguous()  # (N, S, S, K)
        idx = torch.searchsorted(cdf, u, right=True).clamp_max_(c - 1)  # cdf[k-1] <= u < cdf[k] -> k
        return idx.permute(0, 3, 1, 2)


def log_likelihood(logits, samples, kind, reduce="sum"):
    """log g(x^(m) | z) of the drawn samples, (N, M), in fp32, differentiable in the logits.

    A sum over pixels (and channels) is the log-probability of the whole image (the paper's);
    reduce="mean" divides it by the number of discrete variables."""
    a = logits.float()
    if kind == "binary":
        ll = -F.binary_cross_entropy_with_logits(a[:, None].expand_as(samples), samples, reduction="none")
    else:
        ll = torch.log_softmax(a, 1).gather(1, samples)  # (N, K, S, S) gathered at (N, M, S, S)
    ll = ll.flatten(2)
    return ll.mean(2) if reduce == "mean" else ll.sum(2)


def d_input(samples, kind, num_colors=0, dtype=torch.float32):
    """What D reads: binary {0, 1} -> {-1, 1} images; palette indices (B, S, S) -> one-hot (B, K, S, S)."""
    if kind == "binary":
        return (samples * 2 - 1).to(dtype)
    onehot = samples[..., None] == torch.arange(num_colors, device=samples.device)  # (B, S, S, K): channels-last planes
    return onehot.to(dtype).permute(0, 3, 1, 2)


def decode(samples, kind, palette=None):
    """Drawn samples as images in [-1, 1]: binary {0, 1} -> {-1, 1}; indices -> RGB through the palette
    (palette: (K, 3) floats in [-1, 1])."""
    if kind == "binary":
        return samples.float() * 2 - 1
    return palette.to(samples.device)[samples].permute(0, 3, 1, 2)


# ============================================================ loss
def d_loss(real_logits, fake_logits):
    """Algorithm 1, D's step: -log D(x) - log(1 - D(x^(m|n))) over the real batch and all N x M
    drawn samples, from logits (softplus = the BCE of the GAN objective without overflow)."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def importance_weights(fake_logits, m):
    """Normalized importance weights w~ (Sec. 2, Algorithm 1): log w(x) = D's logit = log D - log(1 - D);
    normalised over the M samples of each latent, softmax along dim 1 of (N, M); a constant (detached)."""
    return torch.softmax(fake_logits.detach().float().view(-1, m), dim=1)


def g_loss(fake_logits, log_lik=None, baseline=False):
    """G's loss.

    Discrete (log_lik (N, M) given, Algorithm 1): -1/N sum_n sum_m w~(x^(m|n)) log g(x^(m|n) | z_n),
    whose gradient is the importance-weighted policy gradient; fake_logits are D's logits of
    the N x M samples, in (n, m) order. Continuous (log_lik None): the boundary-seeking loss
    1/2 (log D(G(z)) - log(1 - D(G(z))))^2 = 1/2 logit^2, which is 0 on D's decision boundary.
    """
    if log_lik is None:
        return 0.5 * fake_logits.float().pow(2).mean()
    w = importance_weights(fake_logits, log_lik.shape[1])
    if baseline:  # subtract the uniform weight 1/M: the same expected gradient (E[grad log g] = 0), less variance
        w = w - 1.0 / log_lik.shape[1]
    return -(w * log_lik).sum(1).mean()


def effective_sample_size(fake_logits, m):
    """1 / sum_m w~^2 per latent, averaged: M when D rates the M samples alike, 1 when one sample takes all the weight."""
    w = importance_weights(fake_logits, m)
    return (1.0 / w.pow(2).sum(1)).mean()


# ============================================================ training
def data_kind(args, palette_folder=False):
    """continuous (--mode continuous), quantized (--data-mode quantized, or auto with a palette.json
    in --data-path), or binary."""
    if args.mode == "continuous":
        return "continuous"
    if args.data_mode == "quantized" or (args.data_mode == "auto" and palette_folder):
        return "quantized"
    return "binary"


def real_view(x, run_args):
    """The real images as G learns to produce them, for evaluation (common/evaluation.py calls
    this when a script defines it): binarized exactly as for training when G draws binary
    pixels, so that samples are compared with binarized digits and not with grey ones;
    unchanged for quantized folders (already on the palette) and --mode continuous.
    ``x``: images in [-1, 1]; ``run_args``: the checkpoint's args (a dict)."""
    from common.data import binarize
    from common.quantize import has_palette

    a = argparse.Namespace(**run_args)
    if data_kind(a, bool(a.data_path) and has_palette(a.data_path)) != "binary":
        return x
    return binarize(x, a.binarize_threshold) * 2 - 1


def build_models(args, channels, num_classes=0, num_colors=0):
    """G and D for image ``channels``; ``num_colors`` > 0 makes them categorical over a palette (G
    outputs K logits per pixel, D reads K one-hot planes). Unconditional: num_classes is accepted for
    the common signature and unused. --mode continuous gives a tanh G, as dcgan.py."""
    kind = "continuous" if args.mode == "continuous" else "quantized" if num_colors else "binary"
    planes = num_colors if kind == "quantized" else channels
    g = Generator(args.z_dim, args.image_size, planes, args.g_width, kind, args.activation, args.bn_after_act)
    d = Discriminator(args.image_size, planes, args.d_width, args.activation, args.bn_after_act)
    g.apply(init_weights)
    d.apply(init_weights)
    if args.spectral_norm:  # after the initialisation: the parametrization keeps the weight as its "original"
        for mod in list(d.modules()):
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.utils.parametrizations.spectral_norm(mod)
    return g, d


def check_args(args):
    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(f"--image-size {args.image_size} cannot be built: DCGAN doubles from 4x4, so use a power of two >= 8 (32, 64, 128, ...)")
    for name in ("batch_size", "steps", "g_width", "d_width", "z_dim", "log_every", "sample_every", "ckpt_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1), not {args.ema_decay}")
    if args.n_mc_samples < 2:
        raise UserError(f"--n-mc-samples must be at least 2, not {args.n_mc_samples}: the weights compare the M samples of one latent (with M = 1 every weight is 1 and D teaches G nothing)")
    if not 0 < args.binarize_threshold <= 1:
        raise UserError(f"--binarize-threshold must be in (0, 1], not {args.binarize_threshold}")
    if args.d_noise < 0:
        raise UserError(f"--d-noise is a standard deviation and cannot be negative ({args.d_noise})")
    if not (0 <= args.beta1 < 1 and 0 <= args.beta2 < 1):
        raise UserError(f"Adam's --beta1 and --beta2 must be in [0, 1), not {args.beta1} and {args.beta2}")


def load_data(args):
    """(data, kind, palette): the palette is a (K, 3) uint8 tensor for quantized data, else None."""
    from common.data import QuantizedFolderData, load_dataset
    from common.quantize import has_palette

    kind = data_kind(args, args.dataset == "folder" and has_palette(args.data_path))
    if kind != "quantized":
        return load_dataset(args.dataset, args.data_path, args.image_size, args.channels), kind, None
    if args.dataset != "folder" or not args.data_path:
        raise UserError("--data-mode quantized reads a folder written by tools/quantize_celeba.py: use --dataset folder --data-path DIR")
    if args.color_jitter:
        raise UserError("--color-jitter would move quantized pixels off the palette; use it with binary or continuous data only")
    data = QuantizedFolderData(args.data_path, args.image_size)
    return data, kind, torch.from_numpy(data.palette)


def train(args):
    from tqdm import tqdm

    from common.data import Batches, binarize, download_dataset, to_indices
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
    data, kind, palette = load_data(args)
    K = len(palette) if palette is not None else 0
    M = args.n_mc_samples
    palette_f = palette.float().div(127.5).sub(1).to(device) if palette is not None else None  # colours in [-1, 1]
    batches = Batches(data, args.batch_size, device, args.seed, rank, world, args.num_workers, args.flip, args.color_jitter)

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    G, D = build_models(args, data.channels, 0, K)
    G, D = (m.to(device, memory_format=torch.channels_last) for m in (G, D))
    broadcast_module(G, world)
    broadcast_module(D, world)
    ema = copy.deepcopy(G).eval().requires_grad_(False) if args.ema_decay > 0 else None
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=(args.beta1, args.beta2))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=(args.beta1, args.beta2))
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    step = 0
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
    G_logits, G_step, D_step = (torch.compile(G.logits), torch.compile(G), torch.compile(D)) if args.compile else (G.logits, G, D)

    out = args.out
    if rank == 0:
        out = args.out if ckpt is not None else new_run_dir(SCRIPT, args.out)
        args.out = out
        write_args(out, args)
        metrics = Metrics(out, resume_step=step if ckpt is not None else None, tensorboard=args.tensorboard,
                          evaluate_dataset=args.dataset if args.eval_every else None)
        what = {"binary": f"binarized at {args.binarize_threshold:g}", "quantized": f"quantized, {K} colours", "continuous": "continuous"}[kind]
        mc = f"; {M} samples per latent = {args.batch_size * M} D inputs per process and step" if kind != "continuous" else ""
        print(f"{SCRIPT}: {args.dataset} {args.image_size}x{args.image_size}x{data.channels} ({what}), {len(data)} images;"
              f" batch {args.batch_size} x {world} process(es) = {args.batch_size * world}{mc};"
              f" G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M, D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M params;"
              f" {device}, amp {args.amp}; run dir {out}", flush=True)

    # Fixed latents and pixel noise for the grids: private generators, so sampling never moves the training RNG.
    grid_z = torch.randn(64, args.z_dim, generator=torch.Generator().manual_seed(1234)).to(device)

    def calib_batches(n=4, size=256):
        """Latents for recalibrate_batchnorm: the same ones every time."""
        g = torch.Generator().manual_seed(4321)
        for _ in range(n):
            yield (torch.randn(size, args.z_dim, generator=g).to(device),)

    def generator_for_use():
        if ema is None:
            return G
        recalibrate_batchnorm(ema, calib_batches())
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
                "channels": data.channels, "num_classes": 0, "kind": kind, "palette": palette,
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
        gen.eval()
        with torch.no_grad(), autocast(device, args.amp):
            logits = gen.logits(grid_z)
        gen.train(was_training)
        if kind == "continuous":
            x = torch.tanh(logits.float())
        else:  # one drawn sample per latent, with the same pixel noise every time
            x = decode(draw(logits, 1, kind, generator=torch.Generator().manual_seed(99))[:, 0], kind, palette_f)
        metrics.image("samples", step, save_grid(x, os.path.join(out, "samples", f"step_{step:06d}.png"), nrow=8))
        progress_gif(os.path.join(out, "samples"), os.path.join(out, "progress.gif"))

    def d_view(x):
        """D's training input: channels-last, with --d-noise Gaussian noise."""
        x = x.contiguous(memory_format=torch.channels_last)
        if args.d_noise <= 0:
            return x
        noise = torch.randn(x.shape[0], *x.shape[2:], x.shape[1], device=x.device, dtype=x.dtype)  # drawn in x's
        return x.add(noise.permute(0, 3, 1, 2), alpha=args.d_noise)  # channels-last layout: randn_like is slower

    stream = iter(batches)
    n_log = 5 if kind != "continuous" else 4
    acc = torch.zeros(n_log, device=device)  # d_loss, g_loss, D(x), D(x~), (effective sample size) summed since the last log
    n_acc, t_log = 0, time.perf_counter()
    pbar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc=SCRIPT)
    while step < args.steps:
        real, _ = next(stream)
        b = real.shape[0]
        z = torch.randn(b, args.z_dim, device=device)
        if kind == "continuous":
            # D step as dcgan.py; G step: the boundary-seeking loss (Sec. 2), 1/2 logit^2 on G(z).
            with autocast(device, args.amp):
                fake = G_step(z)
                real_logits = D_step(d_view(real))
                fake_logits = D_step(d_view(fake.detach()))
                loss_d = d_loss(real_logits, fake_logits)
            optimizer_step(loss_d, opt_d, scaler_d, D, world)
            D.requires_grad_(False)
            with autocast(device, args.amp):
                loss_g = g_loss(D_step(d_view(fake)))
            optimizer_step(loss_g, opt_g, scaler_g, G, world)
            D.requires_grad_(True)
        else:
            # Algorithm 1: M samples x^(m|n) ~ g(x | z_n) per latent; D on the real batch and all N x M samples.
            real_in = d_input(binarize(real, args.binarize_threshold), kind) if kind == "binary" else d_input(to_indices(real), kind, K)
            with autocast(device, args.amp):
                logits = G_logits(z)
            samples = draw(logits, M, kind)  # (N, M, ...), no gradient
            fake_in = d_input(samples.flatten(0, 1), kind, K)
            with autocast(device, args.amp):
                real_logits = D_step(d_view(real_in))
                fake_logits = D_step(d_view(fake_in))  # (N * M,), (n, m) order: log w of each sample
                loss_d = d_loss(real_logits, fake_logits)
            optimizer_step(loss_d, opt_d, scaler_d, D, world)
            # G step: the weights come from D before its update (Algorithm 1), detached inside g_loss.
            loss_g = g_loss(fake_logits, log_likelihood(logits, samples, kind, args.log_lik), args.baseline)
            optimizer_step(loss_g, opt_g, scaler_g, G, world)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, step)
        step += 1

        with torch.no_grad():
            vals = [loss_d.detach().float(), loss_g.detach().float(),
                    torch.sigmoid(real_logits.detach().float()).mean(), torch.sigmoid(fake_logits.detach().float()).mean()]
            if kind != "continuous":
                vals.append(effective_sample_size(fake_logits, M))
            acc += torch.stack(vals)
        n_acc += 1
        pbar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            vals = (all_ranks_mean(acc, world) / n_acc).tolist()  # the one host sync per interval
            dt = time.perf_counter() - t_log
            if not all(map(math.isfinite, vals)):
                pbar.close()
                raise UserError(f"losses became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
            rec = dict(step=step, d_loss=vals[0], g_loss=vals[1], d_real=vals[2], d_fake=vals[3],
                       img_per_s=n_acc * args.batch_size * world / dt, time=time.time())
            if kind != "continuous":
                rec["ess"] = vals[4]
            if rank == 0:
                metrics.log(**rec)
                post = dict(d=f"{vals[0]:.3f}", g=f"{vals[1]:.3g}", Dx=f"{vals[2]:.2f}", DGz=f"{vals[3]:.2f}")
                if kind != "continuous":
                    post["ess"] = f"{vals[4]:.1f}"
                pbar.set_postfix(**post, s_step=f"{dt / n_acc:.2f}")
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
    """A function generate(n, seed=0, temperature=1.0, z=None, labels=None, shared_noise=False) ->
    images in [-1, 1] from a checkpoint's EMA generator (or raw G), for sampling and evaluation
    tools. Discrete models return drawn samples decoded through the palette (binary: {-1, 1}),
    reproducible from ``seed``; shared_noise uses one pixel-noise field for every image (smooth
    latent walks). It carries .model, .z_dim, .num_classes, .used_ema, .kind and .palette."""
    ckpt = load_checkpoint(path, SCRIPT, device)
    run = argparse.Namespace(**ckpt["args"])
    kind, palette = ckpt.get("kind", "binary"), ckpt.get("palette")
    G, _ = build_models(run, ckpt["channels"], 0, len(palette) if palette is not None else 0)
    G = G.to(device)
    used_ema = use_ema and ckpt["ema"] is not None
    load_state(G, ckpt["ema"] if used_ema else ckpt["G"], "generator")
    G.eval()
    palette_f = palette.float().div(127.5).sub(1) if palette is not None else None

    @torch.no_grad()
    def generate(n=None, seed=0, temperature=1.0, z=None, labels=None, shared_noise=False):
        if z is None:
            z = torch.randn(n, run.z_dim, generator=torch.Generator().manual_seed(seed)) * temperature
        pixels = torch.Generator().manual_seed(seed + 1)
        out = []
        for zc in z.split(256):
            logits = G.logits(zc.to(device)).float()
            if kind == "continuous":
                out.append(torch.tanh(logits).cpu())
                continue
            if shared_noise:  # the same uniforms for every image: a fresh pixel generator per image
                s = torch.cat([draw(row, 1, kind, generator=torch.Generator().manual_seed(seed + 1))[:, 0] for row in logits.split(1)])
            else:
                s = draw(logits, 1, kind, generator=pixels)[:, 0]
            out.append(decode(s, kind, palette_f.to(device) if palette_f is not None else None).float().cpu())
        return torch.cat(out)

    generate.model, generate.z_dim, generate.num_classes, generate.used_ema = G, run.z_dim, 0, used_ema
    generate.kind, generate.palette = kind, palette
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
        keys = torch.randn(n + 1, generate.z_dim, generator=gen) * args.temperature
        z = slerp(keys[:-1, None], keys[1:, None], torch.linspace(0, 1, k).view(1, k, 1)).reshape(n * k, -1)
        x = generate(z=z, seed=args.seed, shared_noise=True)
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
