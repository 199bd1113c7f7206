"""LSGAN: Least Squares Generative Adversarial Networks. Mao, Li, Xie, Lau, Wang, Smolley,
ICCV 2017. arXiv:1611.04076.

The idea: the sigmoid cross-entropy loss of the regular GAN saturates for fakes that lie
on the correct side of the decision boundary but far from the real data, so G gets no
gradient to move them closer (Sec. 3.1, Fig. 1). LSGAN makes D a regressor onto an a-b-c
coding and uses least squares (Eq. 2):
    min_D 1/2 E_x[(D(x) - b)^2] + 1/2 E_z[(D(G(z)) - a)^2]
    min_G 1/2 E_z[(D(G(z)) - c)^2]
so a fake is penalised by its distance from the target, however far it is. With
b - c = 1 and b - a = 2 (a=-1, b=1, c=0, Eq. 8) G minimises the Pearson chi^2 divergence
between p_data + p_g and 2 p_g (Sec. 3.2.2); the 0-1 binary coding with c = b (a=0, b=1,
c=1, Eq. 9) asks G for samples D takes as real. The paper finds the two perform alike
and trains its experiments with the 0-1 coding (Sec. 3.2.3), as the authors' code
(vgg.py, loss_l2) does: that is the default, ``--coding binary``.

Usage:
    python lsgan.py                                   # digits (embedded), 32x32, ~5 min on 2 CPU cores
    python lsgan.py --coding pearson                  # a=-1, b=1, c=0 (Eq. 8)
    python lsgan.py --a -1 --b 1 --c 1                # any a-b-c coding (--a/--b/--c override --coding)
    python lsgan.py --arch paper --dataset folder --data-path ~/lsun_church --image-size 112
    torchrun --nproc_per_node=8 lsgan.py --dataset cifar10 --data-path ~/data --amp bf16
    python lsgan.py --resume auto                     # continue the latest run
    python lsgan.py --sample 64 --checkpoint runs/lsgan/<run>   # grid from the EMA generator
    python lsgan.py --sample 8 --interpolate 10 --checkpoint runs/lsgan/<run>

Based on dcgan.py; differs in the loss (``d_loss``/``g_loss``: squared errors of D's raw
output against a, b, c), the coding flags, ``--arch paper`` (the networks of Fig. 3), the
defaults (batch 64, z of size 1024) and the logged D(x), D(G(z)), which are D's raw
outputs (they approach b and a) rather than probabilities.

Departures from the paper, and choices where it is silent:
* Architecture: Fig. 3 (LSUN, 112x112) has a VGG-like G: z -> fc -> (s/16)^2 x 256, then
  3x3 transposed convs of 256 (stride 2), 256 (1), 256 (2), 256 (1), 128 (2), 64 (2) with
  batch norm + ReLU and a 3x3 stride-1 output with tanh; and a D of 5x5 stride-2 convs of
  64, 128, 256, 512 (batch norm after the first), LeakyReLU and an fc output. That is
  ``--arch paper`` (any image size that is a multiple of 16; ``--g-width``/``--d-width``
  64 give the paper's widths). It costs about 8x DCGAN's networks per image at 32x32, too
  much for the 5-minute digits budget, so the default is ``--arch dcgan``: dcgan.py's
  networks, the architecture family the paper builds on and compares against.
* Learning rate: Sec. 4.1 uses Adam with 0.001 for the LSUN scenes (also the authors'
  train_lsun.py default) and 0.0002 for the handwritten Chinese characters, beta1 0.5
  following DCGAN. The default is the scenes' 1e-3: on the digits it learns much faster
  than 2e-4 (digits-metric Frechet distance 82 against 471 after 1000 steps).
* Batch 64 and z of size 1024 come from Fig. 3 and the authors' code (train_lsun.py); z
  is N(0, I) rather than that code's U(-1, 1), as in every script here (``--temperature``
  and the slerp walks assume a Gaussian). The steps fit five minutes on a 2-core CPU; the
  paper trains far longer.
* ``--conditional`` is dcgan.py's cGAN (one-hot label on z and as planes on D's input).
  The paper's own conditional LSGAN (Sec. 3.3, 3740 Chinese characters) maps the label
  linearly to a short vector joined to several layers; the simpler form is kept here.
* EMA generator with recalibrated batch-norm statistics, as in dcgan.py (not in the paper).

Pitfalls avoided (shared/reference/pitfalls.md): D's output goes into the squared error
with no sigmoid (a sigmoid would bring back the saturation LSGAN removes); G's target c
follows the chosen coding (c=1 for binary, c=0 for pearson; tests/test_lsgan.py checks
both); the 1/2 of Eq. 2 is kept, so the gradients (and the meaning of the learning rate)
match the paper.
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

SCRIPT = "lsgan"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--g-width", "4", "--d-width", "4"]

# The two a-b-c codings of Sec. 3.2.3: (a, b, c) = (fake label, real label, G's target).
CODINGS = {"binary": (0.0, 1.0, 1.0), "pearson": (-1.0, 1.0, 0.0)}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="LSGAN (Mao et al. 2017)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Batch 64 and z of size 1024: Fig. 3 and the authors' train_lsun.py. Adam lr: Sec. 4.1 (1e-3 for
    # LSUN scenes, 2e-4 for handwritten characters). The steps fit five minutes on a 2-core CPU for
    # the embedded digits; the paper trains far longer.
    add_common_args(p, batch_size=64, steps=1900, lr_g=1e-3, lr_d=1e-3, z_dim=1024, image_size=32,
                    sources={"batch_size": "authors' code", "lr_g": "Sec. 4.1, scenes; characters 2e-4", "lr_d": "Sec. 4.1, scenes; characters 2e-4", "z_dim": "Fig. 3"})
    m = p.add_argument_group("LSGAN")
    m.add_argument("--coding", default="binary", choices=sorted(CODINGS), help="a-b-c coding (Sec. 3.2.3): binary is a=0, b=1, c=1 (Eq. 9, the paper's experiments); pearson is a=-1, b=1, c=0 (Eq. 8, Pearson chi^2)")
    m.add_argument("--a", type=float, default=None, help="override the coding's a, D's target for fakes (Eq. 2)")
    m.add_argument("--b", type=float, default=None, help="override the coding's b, D's target for real data (Eq. 2)")
    m.add_argument("--c", type=float, default=None, help="override the coding's c, G's target for its fakes (Eq. 2)")
    m.add_argument("--arch", default="dcgan", choices=["dcgan", "paper"], help="networks: dcgan.py's, or Fig. 3's VGG-like G and 5x5-conv D (about 8x the cost)")
    m.add_argument("--g-width", type=int, default=64, help="dcgan: channels of G's last hidden layer, doubling per resolution step; paper: 64 gives Fig. 3's widths")
    m.add_argument("--d-width", type=int, default=64, help="channels of D's first layer, doubling per resolution step (64 in Fig. 3)")
    m.add_argument("--beta1", type=float, default=0.5, help="Adam beta1 (Sec. 4.1, following DCGAN)")
    m.add_argument("--beta2", type=float, default=0.999, help="Adam beta2 (Adam's default; the paper keeps it)")
    m.add_argument("--conditional", action="store_true", help="class-conditional G and D (dcgan.py's cGAN); needs labelled data")
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
    """Sec. 4: all weights from N(0, 0.02); batch-norm gains from N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def one_hot(y, num_classes, dtype):
    """One-hot labels without F.one_hot's range check, which syncs with a CUDA device."""
    return (y[:, None] == torch.arange(num_classes, device=y.device)).to(dtype)


class Generator(nn.Module):
    """z (and a one-hot label) -> "project and reshape" to 4x4 (Fig. 1: a matrix multiply),
    then 2x transposed convs (kernel 4, stride 2) with BN + ReLU, and a tanh output."""

    def __init__(self, z_dim=100, image_size=32, channels=1, width=64, num_classes=0):
        super().__init__()
        w = widths(image_size, width)
        self.num_classes, self.w0 = num_classes, w[0]
        self.project = nn.Linear(z_dim + num_classes, w[0] * 4 * 4, bias=False)
        layers = [nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]  # no BN on G's output (Sec. 3)
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        if self.num_classes:
            z = torch.cat([z, one_hot(y, self.num_classes, z.dtype)], 1)
        return self.net(self.project(z).view(-1, self.w0, 4, 4))


class Discriminator(nn.Module):
    """Strided convs (kernel 4, stride 2) with BN + LeakyReLU(0.2) down to 4x4, then the
    last conv layer is flattened into one output (Fig. 1 caption). No BN on the input layer."""

    def __init__(self, image_size=32, channels=1, width=64, num_classes=0):
        super().__init__()
        w = widths(image_size, width)[::-1]  # [image_size/2, ..., 4x4]
        self.num_classes = num_classes
        layers = [nn.Conv2d(channels + num_classes, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(w[-1] * 4 * 4, 1)  # a real number, regressed onto a or b (Eq. 2)

    def forward(self, x, y=None):
        if self.num_classes:
            planes = one_hot(y, self.num_classes, x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, planes], 1)
        return self.out(self.net(x).flatten(1)).view(-1)


class PaperGenerator(nn.Module):
    """Fig. 3(a): z -> fc -> (s/16)^2 x 4w, then 3x3 transposed convs 4w/2, 4w/1, 4w/2, 4w/1,
    2w/2, w/2 (channels/stride) with BN + ReLU, and a 3x3 stride-1 output with tanh (w=64)."""

    def __init__(self, z_dim=1024, image_size=112, channels=3, width=64, num_classes=0):
        super().__init__()
        self.num_classes, self.s0, self.w0 = num_classes, image_size // 16, 4 * width
        self.project = nn.Linear(z_dim + num_classes, self.w0 * self.s0 ** 2, bias=False)
        layers, cin = [nn.BatchNorm2d(self.w0), nn.ReLU(True)], self.w0
        for cout, stride in ((4 * width, 2), (4 * width, 1), (4 * width, 2), (4 * width, 1), (2 * width, 2), (width, 2)):
            # kernel 3, padding 1, output_padding 1 at stride 2: exactly doubles, like TF's "SAME"
            layers += [nn.ConvTranspose2d(cin, cout, 3, stride, 1, stride - 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
            cin = cout
        layers += [nn.ConvTranspose2d(cin, channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z, y=None):
        if self.num_classes:
            z = torch.cat([z, one_hot(y, self.num_classes, z.dtype)], 1)
        return self.net(self.project(z).view(-1, self.w0, self.s0, self.s0))


class PaperDiscriminator(nn.Module):
    """Fig. 3(b): 5x5 stride-2 convs of w, 2w, 4w, 8w with LeakyReLU(0.2), BN after the first,
    then fc to one output: the least-squares loss takes it as it is."""

    def __init__(self, image_size=112, channels=3, width=64, num_classes=0):
        super().__init__()
        self.num_classes = num_classes
        layers = [nn.Conv2d(channels + num_classes, width, 5, 2, 2), nn.LeakyReLU(0.2, True)]
        for k in range(3):
            layers += [nn.Conv2d(width << k, width << (k + 1), 5, 2, 2, bias=False), nn.BatchNorm2d(width << (k + 1)), nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(8 * width * (image_size // 16) ** 2, 1)

    forward = Discriminator.forward  # label planes on the input (--conditional), convs, fc


# ============================================================ loss
def d_loss(real_out, fake_out, a=0.0, b=1.0):
    """Eq. 2, for D: 1/2 E[(D(x) - b)^2] + 1/2 E[(D(G(z)) - a)^2], on D's raw output (no sigmoid)."""
    return 0.5 * (real_out.float() - b).pow(2).mean() + 0.5 * (fake_out.float() - a).pow(2).mean()


def g_loss(fake_out, c=1.0):
    """Eq. 2, for G: 1/2 E[(D(G(z)) - c)^2]; c=1 in the binary coding (Eq. 9), 0 in pearson (Eq. 8)."""
    return 0.5 * (fake_out.float() - c).pow(2).mean()


def coding(args):
    """(a, b, c) of Eq. 2: the --coding scheme, with any of --a/--b/--c given overriding it."""
    return tuple(v if v is not None else d for v, d in zip((args.a, args.b, args.c), CODINGS[args.coding]))


# ============================================================ training
def make_generator(args, channels, num_classes):
    cls = PaperGenerator if args.arch == "paper" else Generator
    return cls(args.z_dim, args.image_size, channels, args.g_width, num_classes)


def build_models(args, channels, num_classes):
    g = make_generator(args, channels, num_classes)
    d = (PaperDiscriminator if args.arch == "paper" else Discriminator)(args.image_size, channels, args.d_width, num_classes)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


def check_args(args):
    if args.arch == "paper" and (args.image_size < 16 or args.image_size % 16):
        raise UserError(f"--image-size {args.image_size} cannot be built by --arch paper: Fig. 3's networks halve it four times, so use a multiple of 16 (32, 64, 112, ...)")
    if args.arch == "dcgan" and (args.image_size < 8 or args.image_size & (args.image_size - 1)):
        raise UserError(f"--image-size {args.image_size} cannot be built: DCGAN doubles from 4x4, so use a power of two >= 8 (32, 64, 128, ...)")
    for name in ("batch_size", "steps", "g_width", "d_width", "z_dim", "log_every", "sample_every", "ckpt_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1), not {args.ema_decay}")
    a, b, c = coding(args)
    if a == b or c == a:
        raise UserError(f"the coding a={a:g}, b={b:g}, c={c:g} cannot train: D needs a != b to tell real from fake, and G needs c != a; use --coding binary or pearson")


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
    if args.conditional and not data.num_classes:
        raise UserError(f"--conditional needs labelled data, and {args.dataset} at {args.data_path!r} has no classes (use class sub-folders)")
    num_classes = data.num_classes if args.conditional else 0
    batches = Batches(data, args.batch_size, device, args.seed, rank, world, args.num_workers, args.flip, args.color_jitter)

    torch.manual_seed(args.seed)  # the same initial weights on every rank
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
              f" {device}, amp {args.amp}; run dir {out}", flush=True)

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
        gen.eval()
        with torch.no_grad(), autocast(device, args.amp):
            x = gen(grid_z, grid_y) if num_classes else gen(grid_z)
        gen.train(was_training)
        metrics.image("samples", step, save_grid(x, os.path.join(out, "samples", f"step_{step:06d}.png"), nrow=8))
        progress_gif(os.path.join(out, "samples"), os.path.join(out, "progress.gif"))

    stream = iter(batches)
    a, b, c = coding(args)
    acc = torch.zeros(4, device=device)  # d_loss, g_loss, D(x), D(G(z)) summed since the last log
    n_acc, t_log = 0, time.perf_counter()
    pbar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc=SCRIPT)
    while step < args.steps:
        real, y = next(stream)
        real = real.contiguous(memory_format=torch.channels_last)
        n = real.shape[0]  # (b is the real label of Eq. 2)
        z = torch.randn(n, args.z_dim, device=device)
        y_fake = torch.randint(num_classes, (n,), device=device) if num_classes else None

        # D step: regress D(x) onto b and D(G(z)) onto a (Eq. 2).
        with autocast(device, args.amp):
            fake = G_step(z, y_fake)
            real_out = D_step(real, y)
            fake_out = D_step(fake.detach(), y_fake)
            loss_d = d_loss(real_out, fake_out, a, b)
        optimizer_step(loss_d, opt_d, scaler_d, D, world)

        # G step: pull D(G(z)) towards c (Eq. 2). D's weights need no grads here.
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D_step(fake, y_fake), c)
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, step)
        step += 1

        with torch.no_grad():
            acc += torch.stack([loss_d.detach().float(), loss_g.detach().float(),
                                real_out.detach().float().mean(), fake_out.detach().float().mean()])
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
    G = make_generator(run, ckpt["channels"], nc).to(device)
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
    x = generate(n, seed=args.seed, temperature=args.temperature, labels=y)
    png = save_grid(x, os.path.join(out, f"sample_{stamp}.png"), nrow=int(math.ceil(n / nc)) if nc else None)
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
