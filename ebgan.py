"""EBGAN: Energy-based Generative Adversarial Network. Zhao, Mathieu, LeCun, ICLR 2017.
arXiv:1609.03126.

The idea: see the discriminator as an energy function, low near the data manifold and high
elsewhere, and build it as an auto-encoder whose energy is the reconstruction error,
D(x) = ||Dec(Enc(x)) - x|| (Sec. 2.3). D lowers the energy of real images and raises that
of generated ones until they reach a margin m, L_D = D(x) + [m - D(G(z))]^+ (Eq. 1); G
lowers the energy of its samples, L_G = D(G(z)) (Eq. 2). EBGAN-PT adds to G's loss the
pulling-away term (Sec. 2.4, Eq. 7), the mean squared cosine similarity between the
encoder embeddings of different generated samples, which pushes them apart in D's
representation and works against mode collapse.

Usage:
    python ebgan.py                                   # digits (embedded), 32x32, ~5 min on 2 CPU cores
    python ebgan.py --pt-weight 0                     # plain EBGAN, without the pulling-away term
    python ebgan.py --dataset celeba --data-path ~/data --image-size 64 --margin 20
    torchrun --nproc_per_node=8 ebgan.py --dataset cifar10 --data-path ~/data --amp bf16
    python ebgan.py --resume auto                     # continue the latest run
    python ebgan.py --sample 64 --checkpoint runs/ebgan/<run>   # grid from the EMA generator
    python ebgan.py --sample 8 --interpolate 10 --checkpoint runs/ebgan/<run>

Based on dcgan.py; differs in the discriminator (an auto-encoder that returns each
sample's energy and its embedding), the losses (the margin hinge and the pulling-away
term), the defaults, and it has no ``--conditional``.

Departures from the paper, and choices where it is silent:
* Energy: D(x) = ||Dec(Enc(x)) - x||, the Euclidean norm of each sample's reconstruction
  error over its C*H*W values in [-1, 1] (not squared, not averaged over pixels), in fp32,
  as Sec. 2.3 writes it. The paper's margins grow like a norm: 40 at 128x128 and 80 at
  256x256 on ImageNet, twice the margin for four times the pixels (a squared error would
  need four times, a per-pixel mean the same margin). On this scale the pulling-away
  term (at most 1) with its weight 0.1 is a real force on G; with a squared sum, energies
  of tens to hundreds left it negligible and G collapsed within 200 steps on the digits.
* Architecture: the paper's MNIST models are fully connected (its grid search, Sec. 4.1);
  its convolutional EBGAN-PT (LSUN/CelebA, Sec. 4.3 and the appendix) is a DCGAN-like
  generator and an auto-encoder with strided convolutions in the encoder and transposed
  convolutions in the decoder. Here G is dcgan.py's generator; the encoder is dcgan.py's
  discriminator body (strided 4x4 convs, BN, LeakyReLU(0.2), no BN on the input layer)
  down to 4x4, and that 4x4 map, flattened, is the embedding S; the decoder mirrors
  dcgan.py's generator body (transposed convs, BN, ReLU) and ends linear.
* Defaults (see --help): Adam lr 1e-3 (the learning rate of the paper's MNIST grid
  search), beta1 0.5 (Sec. 4.3 trains the conv models with DCGAN's guidance), margin 10
  (MNIST, the nearest of the paper's datasets to the embedded digits), PT weight 0.1
  (Sec. 4), z of size 100 and DCGAN's N(0, 0.02) initialisation; batch 64 is this
  script's choice, not a value taken from the paper. The 32x32 digits are not MNIST's
  28x28 in [0, 1], so m = 10 is the paper's value, not a tuned one; use --margin 20 for
  64x64 faces, as the paper does.
* G's update reuses the fake batch of D's update (as dcgan.py does), so the PT term and
  D(G(z)) in G's loss come from one forward pass through D.
* EMA generator (not in the paper): as in dcgan.py, with G's batch-norm statistics
  recomputed for the averaged weights.

Pitfalls avoided (tests/test_ebgan.py checks them): the pulling-away term uses the encoder
embedding of the generated batch, squares the cosine, leaves out i = j and goes in G's
loss only; the margin hinge is taken per sample, then averaged (not on the batch mean);
a batch of one, where the term is undefined, and a margin <= 0 are refused.
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

SCRIPT = "ebgan"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--g-width", "4", "--d-width", "4"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="EBGAN (Zhao et al. 2017)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Adam lr 1e-3 as in the paper's MNIST grid search (Sec. 4.1); z of size 100 as in DCGAN, whose
    # guidance the conv models follow (Sec. 4.3). The steps fit five minutes on a 2-core CPU for the
    # embedded digits; the paper trains far longer.
    add_common_args(p, batch_size=64, steps=1200, lr_g=1e-3, lr_d=1e-3, z_dim=100, image_size=32,
                    sources={"lr_g": "Sec. 4.1", "lr_d": "Sec. 4.1", "z_dim": "DCGAN, Sec. 4.3"})
    m = p.add_argument_group("EBGAN")
    m.add_argument("--margin", type=float, default=10.0, help="m of Eq. 1, in units of the energy ||Dec(Enc(x)) - x|| (paper: 10 MNIST, 20 CelebA, 80 LSUN)")
    m.add_argument("--pt-weight", type=float, default=0.1, help="weight of the pulling-away term in G's loss (EBGAN-PT, Sec. 2.4); 0 is plain EBGAN")
    m.add_argument("--g-width", type=int, default=64, help="channels of G's last hidden layer; doubles per resolution step (as dcgan.py)")
    m.add_argument("--d-width", type=int, default=64, help="channels of the encoder's first layer; doubles per resolution step")
    m.add_argument("--beta1", type=float, default=0.5, help="Adam beta1 (DCGAN's value; Sec. 4.3 follows DCGAN's guidance)")
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
    """DCGAN's initialisation (the paper follows DCGAN's guidance, Sec. 4.3): weights from
    N(0, 0.02), batch-norm gains from N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """dcgan.py's generator: z -> "project and reshape" to 4x4, then 2x transposed convs
    (kernel 4, stride 2) with BN + ReLU, and a tanh output."""

    def __init__(self, z_dim=100, image_size=32, channels=1, width=64):
        super().__init__()
        w = widths(image_size, width)
        self.w0 = w[0]
        self.project = nn.Linear(z_dim, w[0] * 4 * 4, bias=False)
        layers = [nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.project(z).view(-1, self.w0, 4, 4))


class Discriminator(nn.Module):
    """The auto-encoder of Sec. 2.3. Encoder: strided convs (kernel 4, stride 2) with
    BN + LeakyReLU(0.2) down to 4x4 (no BN on the input layer); decoder: the mirror image,
    transposed convs with BN + ReLU, and a linear output. forward(x) returns the energy
    D(x) of each sample and the embedding S (the encoder's 4x4 output, flattened)."""

    def __init__(self, image_size=32, channels=1, width=64):
        super().__init__()
        w = widths(image_size, width)[::-1]  # [image_size/2, ..., 4x4]
        enc = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(w[:-1], w[1:]):
            enc += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
        dec = []
        for cin, cout in zip(w[:0:-1], w[-2::-1]):
            dec += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        dec += [nn.ConvTranspose2d(w[0], channels, 4, 2, 1)]
        self.encoder, self.decoder = nn.Sequential(*enc), nn.Sequential(*dec)

    def forward(self, x):
        s = self.encoder(x)
        return energy(x, self.decoder(s)), s.flatten(1)


# ============================================================ loss
def energy(x, reconstruction):
    """Sec. 2.3: D(x) = ||Dec(Enc(x)) - x||, the L2 norm of each sample's reconstruction error, in fp32."""
    return torch.linalg.vector_norm((reconstruction.float() - x.float()).flatten(1), dim=1)


def pulling_away(s):
    """Sec. 2.4, Eq. 7: f_PT(S) = 1/(N(N-1)) sum_{i != j} (S_i^T S_j / (|S_i| |S_j|))^2, the
    mean squared cosine similarity over pairs of different samples; needs N >= 2."""
    n = s.shape[0]
    with torch.autocast(s.device.type, enabled=False):  # fp32 under --amp: autocast would run the matmul in half
        s = F.normalize(s.float().flatten(1), dim=1)
        cos2 = (s @ s.t()).pow(2)
    return cos2.masked_fill(torch.eye(n, dtype=torch.bool, device=s.device), 0).sum() / (n * (n - 1))


def d_loss(real_out, fake_out, margin=10.0):
    """Eq. 1: L_D = D(x) + [m - D(G(z))]^+, the hinge taken per sample, then averaged.
    real_out and fake_out are D's outputs, (energies, embeddings)."""
    return real_out[0].mean() + F.relu(margin - fake_out[0]).mean()


def g_loss(fake_out, pt_weight=0.1):
    """Eq. 2: L_G = D(G(z)); EBGAN-PT adds pt_weight * f_PT of the generated batch's
    embeddings (Sec. 2.4). The term is in G's loss only."""
    e, s = fake_out
    loss = e.mean()
    return loss + pt_weight * pulling_away(s) if pt_weight else loss


# ============================================================ training
def build_models(args, channels, num_classes=0):
    """G and D (unconditional: num_classes is accepted for the common signature and unused)."""
    g = Generator(args.z_dim, args.image_size, channels, args.g_width)
    d = Discriminator(args.image_size, channels, args.d_width)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


def check_args(args):
    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(f"--image-size {args.image_size} cannot be built: the nets double from 4x4, so use a power of two >= 8 (32, 64, 128, ...)")
    for name in ("batch_size", "steps", "g_width", "d_width", "z_dim", "log_every", "sample_every", "ckpt_every"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1), not {args.ema_decay}")
    if not (0 <= args.beta1 < 1 and 0 <= args.beta2 < 1):
        raise UserError(f"Adam's --beta1 and --beta2 must be in [0, 1), not {args.beta1} and {args.beta2}")
    for name in ("lr_g", "lr_d"):  # Adam's first step is lr / (1 - beta1): beyond float32 it fails before any NaN check
        if not 0 < getattr(args, name) / (1 - args.beta1) < torch.finfo(torch.float32).max:
            raise UserError(f"--{name.replace('_', '-')} {getattr(args, name):g} must be positive and small enough that Adam's step lr / (1 - beta1) is finite in float32 (else inf/NaN weights)")
    if not args.margin > 0:
        raise UserError(f"--margin must be positive, not {args.margin}: with m <= 0 the hinge [m - D(G(z))]^+ is always 0 and D never pushes fakes up (the paper uses 10 to 80)")
    if args.pt_weight < 0:
        raise UserError(f"--pt-weight must be >= 0, not {args.pt_weight}")
    if args.pt_weight > 0 and args.batch_size < 2:
        raise UserError("--batch-size 1 leaves the pulling-away term undefined (it averages over pairs of samples); use --batch-size 2 or more, or --pt-weight 0")


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
        print(f"{SCRIPT}: {args.dataset} {args.image_size}x{args.image_size}x{data.channels}, {len(data)} images;"
              f" batch {args.batch_size} x {world} process(es) = {args.batch_size * world};"
              f" G {sum(p.numel() for p in G.parameters()) / 1e6:.2f}M, D {sum(p.numel() for p in D.parameters()) / 1e6:.2f}M params;"
              f" margin {args.margin:g}, PT weight {args.pt_weight:g}; {device}, amp {args.amp}; run dir {out}", flush=True)

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
    acc = torch.zeros(5, device=device)  # d_loss, g_loss, D(x), D(G(z)), f_PT summed since the last log
    n_acc, t_log = 0, time.perf_counter()
    pbar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc=SCRIPT)
    while step < args.steps:
        real, _ = next(stream)
        real = real.contiguous(memory_format=torch.channels_last)
        b = real.shape[0]
        z = torch.randn(b, args.z_dim, device=device)

        # D step: lower the energy of real images, raise that of fakes up to the margin (Eq. 1).
        with autocast(device, args.amp):
            fake = G_step(z)
            real_out = D_step(real)
            fake_out = D_step(fake.detach())
            loss_d = d_loss(real_out, fake_out, args.margin)
        optimizer_step(loss_d, opt_d, scaler_d, D, world)

        # G step: lower the energy of the fakes, plus the pulling-away term (Eq. 2, Sec. 2.4).
        D.requires_grad_(False)
        with autocast(device, args.amp):
            fake_out_g = D_step(fake)
            loss_g = g_loss(fake_out_g, args.pt_weight)
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, step)
        step += 1

        with torch.no_grad():
            pt = pulling_away(fake_out_g[1].detach()) if b > 1 else torch.zeros((), device=device)  # logged even at --pt-weight 0
            acc += torch.stack([loss_d.detach().float(), loss_g.detach().float(), real_out[0].detach().mean(), fake_out[0].detach().mean(), pt])
        n_acc += 1
        pbar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            vals = (all_ranks_mean(acc, world) / n_acc).tolist()  # the one host sync per interval
            dt = time.perf_counter() - t_log
            if not all(map(math.isfinite, vals)):
                pbar.close()
                raise UserError(f"losses became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
            rec = dict(step=step, d_loss=vals[0], g_loss=vals[1], energy_real=vals[2], energy_fake=vals[3], pt=vals[4],
                       img_per_s=n_acc * args.batch_size * world / dt, time=time.time())
            if rank == 0:
                metrics.log(**rec)
                pbar.set_postfix(d=f"{vals[0]:.2f}", g=f"{vals[1]:.2f}", Dx=f"{vals[2]:.1f}", DGz=f"{vals[3]:.1f}", pt=f"{vals[4]:.2f}", img_s=f"{rec['img_per_s']:.0f}")
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
    It carries .model, .z_dim, .num_classes (0: EBGAN is unconditional, labels are ignored)
    and .used_ema."""
    ckpt = load_checkpoint(path, SCRIPT, device)
    run = argparse.Namespace(**ckpt["args"])
    G = Generator(run.z_dim, run.image_size, ckpt["channels"], run.g_width).to(device)
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
