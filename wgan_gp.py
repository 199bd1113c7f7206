"""WGAN-GP: Improved Training of Wasserstein GANs. Gulrajani, Ahmed, Arjovsky, Dumoulin,
Courville, NeurIPS 2017. arXiv:1704.00028.

The idea: WGAN (wgan.py) keeps its critic Lipschitz by clipping weights, which biases the
critic towards overly simple functions and makes gradients explode or vanish unless c is
tuned (Sec. 3). An optimal 1-Lipschitz critic has gradient norm 1 on the straight lines
between paired real and generated points (Prop. 1), so WGAN-GP drops the clipping and
penalises the critic's gradient norm for deviating from 1 at random points x_hat on such
lines (Eq. 3): L = E[D(x_tilde)] - E[D(x)] + lambda E[(||grad D(x_hat)||_2 - 1)^2], with
x_hat = eps x + (1 - eps) x_tilde, one eps ~ U[0, 1] per sample. Batch norm would make
the critic's output for one sample depend on the others, so the critic has none; the
paper recommends layer normalization instead (Sec. 4). Adam with lr 1e-4, betas (0, 0.9),
lambda = 10 and n_critic = 5 (Alg. 1).

Usage:
    python wgan_gp.py                                  # digits (embedded), 32x32, ~5 min on 2 CPU cores
    python wgan_gp.py --arch resnet --dataset cifar10 --data-path ~/data --lr-g 2e-4 --lr-d 2e-4 --lr-decay 100000
    python wgan_gp.py --dataset celeba --data-path ~/data --image-size 64
    torchrun --nproc_per_node=8 wgan_gp.py --dataset cifar10 --data-path ~/data --arch resnet --amp bf16
    python wgan_gp.py --resume auto                    # continue the latest run
    python wgan_gp.py --sample 64 --checkpoint runs/wgan_gp/<run>    # grid from the EMA generator
    python wgan_gp.py --sample 8 --interpolate 10 --checkpoint runs/wgan_gp/<run>

Based on dcgan.py; differs in: a critic without batch norm (layer norm in the DCGAN
critic, none in the ResNet one), the WGAN-GP losses and gradient penalty, Adam (0, 0.9),
n_critic critic steps per generator step (each on a fresh real batch and fresh z), the
Wasserstein estimate and the penalty in the log, ``--arch resnet`` (App. C),
``--lr-decay``, a fresh z for the generator step, and no ``--conditional``.

Departures from the paper, and choices where it is silent:
* ``--arch dcgan`` (default, for the 5-minute digits budget): dcgan.py's generator and
  critic, with each batch norm of the critic replaced by layer norm over (C, H, W) with a
  per-channel gain and bias, i.e. ``nn.GroupNorm(1, C)`` -- what the authors' gan_64x64.py
  does for its WGAN-GP DCGAN critic (``Layernorm(name, [1, 2, 3])``).
* ``--arch resnet``: App. C's CIFAR-10 networks (Table 4), scaled by ``--image-size``:
  pre-activation residual blocks of two 3x3 convs; in G, nearest-neighbour upsampling
  before the first conv of each block (as the authors' gan_cifar_resnet.py does), batch
  norm and ReLU, 4x4 up to the image size; in the critic, mean pooling after the second
  conv, an "optimized" first block without pre-activation, down-sampling to 8x8 and then
  two blocks at 8x8, ReLU, global mean pooling and a linear output, and no normalization
  ("batch normalization in the generator but not the critic"). Glorot-uniform init with
  gain sqrt(2) on the residual convs, as the authors' He-style init. 128 channels in
  every block by default (Table 4). App. C trains it with lr 2e-4 decaying linearly to 0
  over 100k steps (``--lr-g 2e-4 --lr-d 2e-4 --lr-decay 100000``) and G's batch twice the
  critic's (not done here: G's batch is ``--batch-size``).
* z has 128 dimensions (Table 4 and the authors' code); batch 64 (App. C).
* Mixed precision: under fp16 the penalty follows PyTorch's AMP recipe: the critic's
  output is multiplied by the loss scale before ``autograd.grad``, the gradients are
  divided by it, and the penalty is computed from those fp32 gradients (outside
  autocast, as backward passes should be; the norm runs in fp32 either way). Under DDP the
  double backward works because gradients are averaged by an explicit all-reduce after
  backward, not by a DDP wrapper. ``--compile`` compiles G only: torch.compile does not
  support the critic's double backward.
* EMA generator (not in the paper, see dcgan.py): its batch-norm statistics are recomputed
  before use.
* Pitfalls avoided: one eps per sample (shape [B, 1, 1, 1]), not per pixel; the gradient
  norm over all non-batch dimensions flattened; ``create_graph=True``; no batch norm in
  the critic; the two-sided penalty (||g|| - 1)^2; the penalty in the critic's loss only;
  n_critic counted in critic steps per generator step.
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

SCRIPT = "wgan_gp"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--g-width", "4", "--d-width", "4"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="WGAN-GP (Gulrajani et al. 2017)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Alg. 1: Adam alpha = 1e-4 for both nets; batch 64 (App. C); z of size 128 (Table 4). The steps fit
    # five minutes on a 2-core CPU for the embedded digits; the paper trains for 100k-200k steps.
    add_common_args(p, batch_size=64, steps=300, lr_g=1e-4, lr_d=1e-4, z_dim=128, image_size=32,
                    sources={"batch_size": "App. C", "lr_g": "Alg. 1, alpha = 1e-4", "lr_d": "Alg. 1", "z_dim": "Table 4"})
    m = p.add_argument_group("WGAN-GP")
    m.add_argument("--arch", default="dcgan", choices=["dcgan", "resnet"], help="dcgan.py's networks with layer norm in the critic, or App. C's ResNet")
    m.add_argument("--g-width", type=int, default=None, help="dcgan: channels of G's last hidden layer, doubling per resolution step (default 64, the authors' gan_64x64.py); resnet: channels of every block (default 128, Table 4)")
    m.add_argument("--d-width", type=int, default=None, help="dcgan: channels of the critic's first layer, doubling per resolution step (default 64); resnet: channels of every block (default 128, Table 4)")
    m.add_argument("--n-critic", type=int, default=5, help="critic steps per generator step (Alg. 1)")
    m.add_argument("--lambda-gp", type=float, default=10.0, help="gradient penalty weight lambda (Alg. 1, Eq. 3); 0 gives an unconstrained critic")
    m.add_argument("--beta1", type=float, default=0.0, help="Adam beta1 (Alg. 1)")
    m.add_argument("--beta2", type=float, default=0.9, help="Adam beta2 (Alg. 1)")
    m.add_argument("--lr-decay", type=int, default=0, metavar="N", help="decay both learning rates linearly to 0 over N generator steps (App. C's ResNet run: 100000); 0 keeps them constant")
    args = parse_with_resume(p, argv)
    for k in ("g_width", "d_width"):  # the paper's width for the chosen architecture
        if getattr(args, k) is None:
            setattr(args, k, 128 if args.arch == "resnet" else 64)
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
def widths(image_size, base):
    """Channels per resolution from 4x4 up to image_size/2: base * 2^k, capped at 8 * base."""
    n = int(math.log2(image_size)) - 2  # number of 2x steps between 4x4 and image_size
    return [base * min(2 ** (n - 1 - i), 8) for i in range(n)]  # [4x4, 8x8, ..., image_size/2]


def init_weights(m):
    """DCGAN Sec. 4, for --arch dcgan: weights from N(0, 0.02); batch-norm gains from N(1, 0.02),
    biases 0 (layer-norm gains stay 1)."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """--arch dcgan: dcgan.py's generator. z -> "project and reshape" to 4x4, then 2x
    transposed convs (kernel 4, stride 2) with BN + ReLU, and a tanh output."""

    def __init__(self, z_dim=128, image_size=32, channels=1, width=64):
        super().__init__()
        w = widths(image_size, width)
        self.w0 = w[0]
        self.project = nn.Linear(z_dim, w[0] * 4 * 4, bias=False)
        layers = [nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]  # no BN on G's output (DCGAN Sec. 3)
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.project(z).view(-1, self.w0, 4, 4))


class Critic(nn.Module):
    """--arch dcgan: dcgan.py's discriminator with layer norm where it had batch norm (Sec. 4):
    GroupNorm(1, C) normalises each sample over (C, H, W), with a gain and bias per channel,
    so that no sample's score depends on the rest of the batch. One linear output, no sigmoid."""

    def __init__(self, image_size=32, channels=1, width=64):
        super().__init__()
        w = widths(image_size, width)[::-1]  # [image_size/2, ..., 4x4]
        layers = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.GroupNorm(1, cout), nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(w[-1] * 4 * 4, 1)

    def forward(self, x):
        return self.out(self.net(x).flatten(1)).view(-1)


def glorot(layer, gain=1.0):
    """--arch resnet: the authors' init (tflib), Glorot-uniform with gain sqrt(2) for He-style layers; zero bias."""
    nn.init.xavier_uniform_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ResBlock(nn.Module):
    """App. C: a pre-activation residual block, (norm, ReLU, 3x3 conv) twice. "up": nearest-
    neighbour upsampling before the first conv; "down": mean pooling after the second. The
    shortcut is the identity, or a 1x1 conv with the same resampling when the shape changes.
    ``first``: the critic's first ("optimized") block, with no activation on the image."""

    def __init__(self, cin, cout, resample=None, bn=False, first=False):
        super().__init__()
        mid = cin if resample == "down" and not first else cout
        self.resample, self.first = resample, first
        self.n1 = nn.BatchNorm2d(cin) if bn else nn.Identity()
        self.n2 = nn.BatchNorm2d(mid) if bn else nn.Identity()
        self.c1 = glorot(nn.Conv2d(cin, mid, 3, 1, 1), math.sqrt(2))
        self.c2 = glorot(nn.Conv2d(mid, cout, 3, 1, 1), math.sqrt(2))
        self.skip = nn.Identity() if cin == cout and resample is None else glorot(nn.Conv2d(cin, cout, 1))

    def forward(self, x):
        up = (lambda t: F.interpolate(t, scale_factor=2.0, mode="nearest")) if self.resample == "up" else (lambda t: t)  # noqa: E731
        down = (lambda t: F.avg_pool2d(t, 2)) if self.resample == "down" else (lambda t: t)  # noqa: E731
        h = x if self.first else F.relu(self.n1(x))
        h = self.c2(F.relu(self.n2(self.c1(up(h)))))
        return down(self.skip(up(x))) + down(h)


class ResNetGenerator(nn.Module):
    """--arch resnet, Table 4: linear z -> 4x4, up-blocks to the image size (three for 32x32),
    BN, ReLU, 3x3 conv, tanh. Batch norm in G only (App. C)."""

    def __init__(self, z_dim=128, image_size=32, channels=3, width=128):
        super().__init__()
        self.width = width
        self.project = glorot(nn.Linear(z_dim, width * 4 * 4))
        blocks = [ResBlock(width, width, "up", bn=True) for _ in range(int(math.log2(image_size)) - 2)]
        self.net = nn.Sequential(*blocks, nn.BatchNorm2d(width), nn.ReLU(), glorot(nn.Conv2d(width, channels, 3, 1, 1)), nn.Tanh())

    def forward(self, z):
        return self.net(self.project(z).view(-1, self.width, 4, 4))


class ResNetCritic(nn.Module):
    """--arch resnet, Table 4: the first block and down-blocks to 8x8 (4x4 for 8x8 images),
    two blocks without resampling, ReLU, mean over space, linear. No normalization (App. C)."""

    def __init__(self, image_size=32, channels=3, width=128):
        super().__init__()
        downs = [ResBlock(width, width, "down") for _ in range(max(int(math.log2(image_size)) - 4, 0))]
        self.net = nn.Sequential(ResBlock(channels, width, "down", first=True), *downs, ResBlock(width, width), ResBlock(width, width))
        self.out = glorot(nn.Linear(width, 1))

    def forward(self, x):
        return self.out(F.relu(self.net(x)).mean((2, 3))).view(-1)


# ============================================================ loss
def d_loss(real_scores, fake_scores):
    """Eq. 3 without its penalty: E[D(x_tilde)] - E[D(x)], the critic's Wasserstein loss."""
    return fake_scores.float().mean() - real_scores.float().mean()


def g_loss(fake_scores):
    """Alg. 1 line 11: G minimises -E[D(G(z))]."""
    return -fake_scores.float().mean()


def interpolate(real, fake):
    """Alg. 1 lines 4-6: x_hat = eps x + (1 - eps) x_tilde with one eps ~ U[0, 1] per sample
    (shape [B, 1, 1, 1], not per pixel), a leaf that requires grad for the penalty."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    return (eps * real + (1 - eps) * fake).detach().requires_grad_(True)


def gradient_penalty(hat_scores, x_hat, scale=1.0):
    """Eq. 3's penalty E[(||grad_x_hat D(x_hat)||_2 - 1)^2] (lambda applied by the caller): the
    norm over all non-batch dims flattened, two-sided, and create_graph=True so the critic's
    update differentiates through the gradient. ``scale``: fp16's loss scale (AMP recipe:
    scale the output before autograd.grad, divide the gradients by it)."""
    (grad,) = torch.autograd.grad(hat_scores.float().sum() * scale, x_hat, create_graph=True)
    norm = (grad.float() / scale).flatten(1).norm(2, dim=1)
    return ((norm - 1) ** 2).mean()


# ============================================================ training
def build_models(args, channels, num_classes):
    if args.arch == "resnet":  # initialised in their constructors, as the authors' code
        return (ResNetGenerator(args.z_dim, args.image_size, channels, args.g_width),
                ResNetCritic(args.image_size, channels, args.d_width))
    g = Generator(args.z_dim, args.image_size, channels, args.g_width)
    d = Critic(args.image_size, channels, args.d_width)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


def check_args(args):
    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(f"--image-size {args.image_size} cannot be built: both architectures double from 4x4, so use a power of two >= 8 (32, 64, 128, ...)")
    for name in ("batch_size", "steps", "g_width", "d_width", "z_dim", "log_every", "sample_every", "ckpt_every", "n_critic"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr_decay < 0:
        raise UserError(f"--lr-decay must be at least 0 (steps to decay over; 0 turns decay off), not {args.lr_decay}")
    if not args.lambda_gp >= 0:
        raise UserError(f"--lambda-gp must be at least 0 (the paper's lambda is 10), not {args.lambda_gp}")
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
    if ckpt is not None:
        load_state(G, ckpt["G"], "generator")
        load_state(D, ckpt["D"], "critic")
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
    # torch.compile does not support double backward, which the penalty needs: the critic stays eager.
    G_step, D_step = (torch.compile(G), D) if args.compile else (G, D)

    out = args.out
    if rank == 0:
        out = args.out if ckpt is not None else new_run_dir(SCRIPT, args.out)
        args.out = out
        write_args(out, args)
        metrics = Metrics(out, resume_step=step if ckpt is not None else None, tensorboard=args.tensorboard,
                          evaluate_dataset=args.dataset if args.eval_every else None)
        print(f"{SCRIPT}: {args.dataset} {args.image_size}x{args.image_size}x{data.channels}, {len(data)} images;"
              f" batch {args.batch_size} x {world} process(es) = {args.batch_size * world}; n_critic {args.n_critic}, lambda {args.lambda_gp};"
              f" G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M, critic {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M params;"
              f" {device}, amp {args.amp}; run dir {out}", flush=True)

    # Fixed latents for the grids: a private generator, so sampling never moves the training RNG.
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
            pbar.close()  # the error gets its own line (weights can overflow before any loss does)
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

    stream = iter(batches)
    one = torch.ones((), device=device)
    acc = torch.zeros(5, device=device)  # E D(G(z)) - E D(x), g_loss, E D(x), E D(G(z)), penalty summed since the last log
    n_acc, t_log = 0, time.perf_counter()
    pbar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc=SCRIPT)
    while step < args.steps:
        if args.lr_decay:  # App. C: linearly to 0, recomputed from the step (exact resume)
            for opt, lr in ((opt_g, args.lr_g), (opt_d, args.lr_d)):
                for group in opt.param_groups:
                    group["lr"] = lr * max(0.0, 1 - step / args.lr_decay)

        # Critic: Alg. 1 lines 2-9, each step on a fresh real batch, fresh z and fresh eps.
        for _ in range(args.n_critic):
            real, _ = next(stream)
            real = real.contiguous(memory_format=torch.channels_last)
            z = torch.randn(real.shape[0], args.z_dim, device=device)
            with torch.no_grad(), autocast(device, args.amp):
                fake = G_step(z)
            x_hat = interpolate(real, fake)
            with autocast(device, args.amp):
                real_scores, fake_scores, hat_scores = D_step(real), D_step(fake), D_step(x_hat)
            # scaler_d.scale(one) is fp16's loss scale as a tensor (no host sync), 1 otherwise.
            penalty = gradient_penalty(hat_scores, x_hat, scaler_d.scale(one))
            loss_w = d_loss(real_scores, fake_scores)
            optimizer_step(loss_w + args.lambda_gp * penalty, opt_d, scaler_d, D, world)

        # Generator: Alg. 1 lines 10-11, a fresh z; no penalty. The critic's weights need no grads here.
        z = torch.randn(args.batch_size, args.z_dim, device=device)
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D_step(G_step(z)))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, step)
        step += 1

        with torch.no_grad():  # the last critic step's values
            gp = penalty.detach().float()
            if args.amp == "fp16":  # a loss scale that overflows makes gp inf in a step GradScaler skips: no divergence
                gp = gp.nan_to_num(0.0, 0.0, 0.0)
            acc += torch.stack([loss_w.detach().float(), loss_g.detach().float(), real_scores.detach().float().mean(),
                                fake_scores.detach().float().mean(), gp])
        n_acc += 1
        pbar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            vals = (all_ranks_mean(acc, world) / n_acc).tolist()  # the one host sync per interval
            dt = time.perf_counter() - t_log
            if not all(map(math.isfinite, vals)):
                pbar.close()
                raise UserError(f"losses became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
            # The Wasserstein estimate E D(x) - E D(G(z)): the negative critic loss without the penalty.
            # img/s counts the real images the critic consumed.
            rec = dict(step=step, d_loss=vals[0] + args.lambda_gp * vals[4], g_loss=vals[1], wasserstein=vals[2] - vals[3], d_real=vals[2], d_fake=vals[3],
                       gp=vals[4], img_per_s=n_acc * args.n_critic * args.batch_size * world / dt, time=time.time())
            if rank == 0:
                metrics.log(**rec)
                pbar.set_postfix(W=f"{rec['wasserstein']:.3f}", gp=f"{vals[4]:.3f}", g=f"{vals[1]:.3f}", img_s=f"{rec['img_per_s']:.0f}")
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
    It carries .model, .z_dim, .num_classes (0: WGAN-GP is unconditional, labels are ignored)
    and .used_ema."""
    ckpt = load_checkpoint(path, SCRIPT, device)
    run = argparse.Namespace(**ckpt["args"])
    G = (ResNetGenerator if run.arch == "resnet" else Generator)(run.z_dim, run.image_size, ckpt["channels"], run.g_width).to(device)
    used_ema = use_ema and ckpt["ema"] is not None
    load_state(G, ckpt["ema"] if used_ema else ckpt["G"], "generator")
    G.eval()

    @torch.no_grad()
    def generate(n=None, seed=0, temperature=1.0, z=None, labels=None):
        if z is None:
            z = torch.randn(n, run.z_dim, generator=torch.Generator().manual_seed(seed)) * temperature
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
        keys = torch.randn(n + 1, generate.z_dim, generator=gen) * args.temperature
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
