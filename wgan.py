"""WGAN: Wasserstein GAN. Arjovsky, Chintala, Bottou, ICML 2017. arXiv:1701.07875.

The idea: train G to minimise the Earth-Mover (Wasserstein-1) distance between the data
and the model, which stays continuous and gives useful gradients where the original
GAN's Jensen-Shannon divergence saturates (Sec. 2-3). By Kantorovich-Rubinstein duality
W = sup over 1-Lipschitz f of E[f(x)] - E[f(G(z))] (Eq. 2), so a critic f_w (no sigmoid,
no log) is trained to maximise that difference (Eq. 3) while every one of its weights is
clipped to [-c, c] after every update, which keeps it K-Lipschitz for some K (Alg. 1).
The critic takes n_critic = 5 steps per generator step, so that its value estimates W
(up to K) and tracks sample quality (Sec. 4.2, Fig. 3). RMSProp with lr 5e-5, because
momentum methods such as Adam made training unstable (Sec. 4); batch 64, c = 0.01 (Alg. 1).

Usage:
    python wgan.py                                    # digits (embedded), 32x32, ~5 min on 2 CPU cores
    python wgan.py --dataset celeba --data-path ~/data --image-size 64
    python wgan.py --dataset folder --data-path ~/cats --image-size 64 --flip --color-jitter 0.1 \\
                   --output dmol --z-dim 512          # the cat-faces reference's setting
    torchrun --nproc_per_node=8 wgan.py --dataset cifar10 --data-path ~/data --amp bf16
    python wgan.py --n-critic-boost 100 --steps 5000  # with the authors' critic schedule
    python wgan.py --resume auto                      # continue the latest run
    python wgan.py --sample 64 --checkpoint runs/wgan/<run>    # grid from the EMA generator
    python wgan.py --sample 8 --interpolate 10 --checkpoint runs/wgan/<run>

Based on dcgan.py; differs in: a critic instead of a discriminator (a score, not a
logit), the Wasserstein losses, RMSProp, n_critic critic steps per generator step (each
on a fresh real batch and fresh z), weight clipping after every critic step, the
optional 100-step critic schedule, the Wasserstein estimate in the log, the ``--output
dmol`` head, a fresh z for the generator step, and no ``--conditional``.

Departures from the paper, and choices where it is silent:
* Architecture: dcgan.py's generator and critic (the paper uses DCGAN's, Sec. 4). The
  critic keeps DCGAN's batch norm on every layer but the first, as the authors' critic
  does (models/dcgan.py, DCGAN_D), and like their main.py it sees the real and the fake
  batch in separate calls, so each is normalised with its own statistics.
* Critic schedule: ``--n-critic-boost 100`` gives the authors' main.py schedule, in which
  the critic takes 100 steps instead of n_critic for the first 25 generator steps and every
  500th one, so that it starts, and is regularly brought back, near its optimum. It is not
  in Algorithm 1 and is off by default: its 2,500 up-front critic steps take three quarters
  of the 5-minute digits budget (measured on 2 CPU cores: 210 steps with it gave blobs,
  Fréchet distance 474; 650 steps without it gave digits, 100). It is recomputed from the
  step counter, so resuming is exact.
* Clipping follows the RMSProp update, as in Alg. 1 (the authors' code clips before
  each critic update instead); biases and batch-norm gains and shifts are clipped too,
  as in both. RMSProp keeps PyTorch's defaults (alpha 0.99, eps 1e-8), as the authors'
  code does.
* ``--output dmol`` (not in the paper): the output head of the cat-faces WGAN reference
  (which trained it with ``--z-dim 512``): G gives, per pixel, the parameters of a
  discretized mixture of ``--mixtures`` logistics (PixelCNN++, Salimans et al. 2017) and
  the image is sampled from it. The sample is made differentiable for G's update by a
  straight-through Gumbel-softmax choice of the component (Jang et al. 2017: the forward
  pass takes the Gumbel-max choice, the backward pass the softmax's gradient), a
  reparameterised logistic value mu + s * log(u / (1 - u)), and a straight-through
  rounding to the 256 grey levels of the data, so the critic cannot tell real from fake by
  quantisation alone. The log-scales start near log(0.02), not at 0 (a logistic of scale 1
  would fill [-1, 1] with noise). ``--temperature`` still scales the latent when sampling.
* EMA generator (not in the paper, see dcgan.py): its batch-norm statistics are
  recomputed before use. The dmol head's pixel noise in grids, recalibration and
  ``--sample`` comes from a seeded private RNG, so it never moves the training RNG.
* Pitfalls avoided: every critic parameter is clipped after every critic step; RMSProp,
  not Adam or momentum; a fresh real batch and fresh z for every critic step; no sigmoid
  and no log anywhere in the critic or the losses.
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

SCRIPT = "wgan"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py); a short
# boosted critic keeps the schedule exercised without 100 critic steps per test step.
SMOKE_ARGS = ["--g-width", "4", "--d-width", "4", "--n-critic-boost", "7"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="WGAN (Arjovsky et al. 2017)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Alg. 1: alpha = 5e-5 (RMSProp, both nets), m = 64. The paper does not give z's size; the authors'
    # code uses nz = 100. The steps fit five minutes on a 2-core CPU for the embedded digits; the paper
    # trains far longer.
    add_common_args(p, batch_size=64, steps=600, lr_g=5e-5, lr_d=5e-5, z_dim=100, image_size=32,
                    sources={"batch_size": "Alg. 1, m = 64", "lr_g": "Alg. 1, alpha = 5e-5 with RMSProp", "lr_d": "Alg. 1",
                             "z_dim": "authors' code, nz = 100; the cat-faces reference used 512 with --output dmol"})
    m = p.add_argument_group("WGAN")
    m.add_argument("--g-width", type=int, default=64, help="channels of G's last hidden layer; doubles per resolution step (authors' ngf = 64)")
    m.add_argument("--d-width", type=int, default=64, help="channels of the critic's first layer; doubles per resolution step (authors' ndf = 64)")
    m.add_argument("--n-critic", type=int, default=5, help="critic steps per generator step (Alg. 1)")
    m.add_argument("--clip", type=float, default=0.01, help="clip every critic weight to [-c, c] after every critic step (Alg. 1, c)")
    m.add_argument("--n-critic-boost", type=int, default=0, help="critic steps for the first 25 generator steps and every 500th: 100 in the authors' main.py, not in Alg. 1; 0 (off) keeps n_critic throughout")
    m.add_argument("--output", default="tanh", choices=["tanh", "dmol"], help="G's output: tanh (DCGAN) or a sampled discretized mixture of logistics (the cat-faces reference, with --z-dim 512)")
    m.add_argument("--mixtures", type=int, default=10, help="--output dmol: logistic components per pixel (the cat-faces reference: 10)")
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
    """DCGAN Sec. 4 (and the authors' weights_init): weights from N(0, 0.02); batch-norm gains
    from N(1, 0.02), biases 0. The first clipping step brings them all into [-c, c]."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def quantize(x):
    """Round to the data's 256 grey levels in [-1, 1]; straight-through (identity) gradient."""
    q = ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1
    return x + (q - x).detach()


class LogisticMixture(nn.Module):
    """The cat-faces reference's output head: per pixel, a mixture of K logistics
    (PixelCNN++) from which the image is sampled, differentiably (see the docstring).

    Input channels: K component logits, then per component C means, C log-scales and, for
    RGB, PixelCNN++'s 3 coefficients that make green depend on red, and blue on both.
    """

    LOG_SCALE_OFFSET = -4.0  # untrained log-scales start near -4: s ~ 0.02, about two grey levels

    def __init__(self, channels, mixtures):
        super().__init__()
        self.c, self.k = channels, mixtures

    @staticmethod
    def num_params(channels, mixtures):
        return mixtures * (1 + 2 * channels + (3 if channels == 3 else 0))

    def forward(self, p):
        p = p.float()  # sampling in fp32, also under autocast
        n, _, h, w = p.shape
        c, k = self.c, self.k
        logits, rest = p[:, :k], p[:, k:].reshape(n, -1, k, h, w)
        # The component: Gumbel-max forward, Gumbel-softmax (temperature 1) gradient backward.
        soft = F.softmax(logits - torch.log(-torch.log(torch.rand_like(logits).clamp(1e-6, 1 - 1e-6))), 1)
        hard = torch.zeros_like(soft).scatter_(1, soft.argmax(1, keepdim=True), 1.0)
        pick = (hard + (soft - soft.detach()))[:, None]  # (n, 1, k, h, w), exactly one-hot forward
        mean = (rest[:, :c] * pick).sum(2)
        log_s = ((rest[:, c : 2 * c] * pick).sum(2) + self.LOG_SCALE_OFFSET).clamp(min=-7.0)  # PixelCNN++'s floor
        u = torch.rand_like(mean).clamp(1e-5, 1 - 1e-5)
        x = mean + log_s.exp() * (torch.log(u) - torch.log1p(-u))  # reparameterised logistic sample
        if c != 3:
            return quantize(x)
        a, b, g = torch.tanh((rest[:, 2 * c :] * pick).sum(2)).unbind(1)
        r = quantize(x[:, 0])
        gr = quantize(x[:, 1] + a * r)
        return torch.stack([r, gr, quantize(x[:, 2] + b * r + g * gr)], 1)


class Generator(nn.Module):
    """dcgan.py's generator: z -> "project and reshape" to 4x4, then 2x transposed convs
    (kernel 4, stride 2) with BN + ReLU, and a tanh output or the logistic-mixture head."""

    def __init__(self, z_dim=100, image_size=32, channels=1, width=64, output="tanh", mixtures=10):
        super().__init__()
        w = widths(image_size, width)
        self.w0 = w[0]
        self.project = nn.Linear(z_dim, w[0] * 4 * 4, bias=False)
        layers = [nn.BatchNorm2d(w[0]), nn.ReLU(True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        if output == "dmol":
            layers += [nn.ConvTranspose2d(w[-1], LogisticMixture.num_params(channels, mixtures), 4, 2, 1), LogisticMixture(channels, mixtures)]
        else:
            layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]  # no BN on G's output (DCGAN Sec. 3)
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.project(z).view(-1, self.w0, 4, 4))


class Critic(nn.Module):
    """dcgan.py's discriminator without the sigmoid: strided convs (kernel 4, stride 2) with BN
    + LeakyReLU(0.2) down to 4x4, then one linear output, a real-valued score f_w(x)."""

    def __init__(self, image_size=32, channels=1, width=64):
        super().__init__()
        w = widths(image_size, width)[::-1]  # [image_size/2, ..., 4x4]
        layers = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, True)]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(w[-1] * 4 * 4, 1)

    def forward(self, x):
        return self.out(self.net(x).flatten(1)).view(-1)


# ============================================================ loss
def d_loss(real_scores, fake_scores):
    """Eq. 3, Alg. 1 line 5: the critic maximises E[f(x)] - E[f(G(z))]; as a loss, its negative."""
    return fake_scores.float().mean() - real_scores.float().mean()


def g_loss(fake_scores):
    """Alg. 1 line 10 (Theorem 3): G minimises -E[f(G(z))]; E[f(x)] does not depend on G."""
    return -fake_scores.float().mean()


@torch.no_grad()
def clip_weights(critic, c):
    """Alg. 1 line 7: w <- clip(w, -c, c) for every critic parameter, so that the critic's
    weights lie in a compact set and f_w is K-Lipschitz for some K (Sec. 3)."""
    for p in critic.parameters():
        p.clamp_(-c, c)


def critic_iters(step, n_critic, boost):
    """Critic steps before generator step ``step`` (counted from 0): ``boost`` for the first 25
    and every 500th, else n_critic (the authors' main.py: ``Diters = 100``)."""
    return boost if boost and (step < 25 or step % 500 == 0) else n_critic


# ============================================================ training
def build_models(args, channels, num_classes):
    g = Generator(args.z_dim, args.image_size, channels, args.g_width, args.output, args.mixtures)
    d = Critic(args.image_size, channels, args.d_width)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


def check_args(args):
    if args.image_size < 8 or args.image_size & (args.image_size - 1):
        raise UserError(f"--image-size {args.image_size} cannot be built: DCGAN doubles from 4x4, so use a power of two >= 8 (32, 64, 128, ...)")
    for name in ("batch_size", "steps", "g_width", "d_width", "z_dim", "log_every", "sample_every", "ckpt_every", "n_critic", "mixtures"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1")
    if args.n_critic_boost < 0:
        raise UserError(f"--n-critic-boost must be at least 0 (0 turns the schedule off; the authors' is 100), not {args.n_critic_boost}")
    if not args.clip > 0:
        raise UserError(f"--clip must be positive (the paper's c is 0.01), not {args.clip}")
    if not 0 <= args.ema_decay < 1:
        raise UserError(f"--ema-decay must be in [0, 1), not {args.ema_decay}")


@contextlib.contextmanager
def private_rng(device, seed=1234):
    """Run with a seeded RNG and restore the training RNG afterwards: the dmol head draws
    pixel noise, and grids, recalibration and sampling must not move the training trajectory."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield


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
    opt_g = torch.optim.RMSprop(G.parameters(), lr=args.lr_g)  # Sec. 4: no momentum
    opt_d = torch.optim.RMSprop(D.parameters(), lr=args.lr_d)
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
    G_step, D_step = (torch.compile(G), torch.compile(D)) if args.compile else (G, D)

    out = args.out
    if rank == 0:
        out = args.out if ckpt is not None else new_run_dir(SCRIPT, args.out)
        args.out = out
        write_args(out, args)
        metrics = Metrics(out, resume_step=step if ckpt is not None else None, tensorboard=args.tensorboard,
                          evaluate_dataset=args.dataset if args.eval_every else None)
        print(f"{SCRIPT}: {args.dataset} {args.image_size}x{args.image_size}x{data.channels}, {len(data)} images;"
              f" batch {args.batch_size} x {world} process(es) = {args.batch_size * world}; n_critic {args.n_critic}, clip {args.clip};"
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
                with private_rng(device):
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
        with private_rng(device):
            gen = generator_for_use()
            was_training = gen.training
            gen.eval()
            with torch.no_grad(), autocast(device, args.amp):
                x = gen(grid_z)
            gen.train(was_training)
        metrics.image("samples", step, save_grid(x, os.path.join(out, "samples", f"step_{step:06d}.png"), nrow=8))
        progress_gif(os.path.join(out, "samples"), os.path.join(out, "progress.gif"))

    stream = iter(batches)
    acc = torch.zeros(4, device=device)  # critic loss, g_loss, E f(x), E f(G(z)) summed since the last log
    n_acc, n_critic_steps, t_log = 0, 0, time.perf_counter()
    pbar = tqdm(total=args.steps, initial=step, disable=rank != 0, dynamic_ncols=True, desc=SCRIPT)
    while step < args.steps:
        # Critic: Alg. 1 lines 2-8, each step on a fresh real batch and fresh z, then clipped.
        n_c = critic_iters(step, args.n_critic, args.n_critic_boost)
        for _ in range(n_c):
            real, _ = next(stream)
            real = real.contiguous(memory_format=torch.channels_last)
            z = torch.randn(real.shape[0], args.z_dim, device=device)
            with torch.no_grad(), autocast(device, args.amp):
                fake = G_step(z)
            with autocast(device, args.amp):
                real_scores, fake_scores = D_step(real), D_step(fake)
                loss_d = d_loss(real_scores, fake_scores)
            optimizer_step(loss_d, opt_d, scaler_d, D, world)
            clip_weights(D, args.clip)

        # Generator: Alg. 1 lines 9-10, a fresh z. The critic's weights need no grads here.
        z = torch.randn(args.batch_size, args.z_dim, device=device)
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D_step(G_step(z)))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, step)
        step += 1

        with torch.no_grad():  # the last critic step's values: the critic is then closest to optimal
            acc += torch.stack([loss_d.detach().float(), loss_g.detach().float(),
                                real_scores.detach().float().mean(), fake_scores.detach().float().mean()])
        n_acc += 1
        n_critic_steps += n_c
        pbar.update(1)
        if step % args.log_every == 0 or step == args.steps:
            vals = (all_ranks_mean(acc, world) / n_acc).tolist()  # the one host sync per interval
            dt = time.perf_counter() - t_log
            if not all(map(math.isfinite, vals)):
                pbar.close()
                raise UserError(f"losses became NaN/inf by step {step}; {last_good(out)} (try a lower --lr-d/--lr-g or --amp off)")
            # The Wasserstein estimate E f(x) - E f(G(z)) (Sec. 4.2), up to the critic's Lipschitz constant K.
            # img/s counts the real images the critic consumed.
            rec = dict(step=step, d_loss=vals[0], g_loss=vals[1], wasserstein=vals[2] - vals[3], d_real=vals[2], d_fake=vals[3],
                       n_critic=n_critic_steps / n_acc, img_per_s=n_critic_steps * args.batch_size * world / dt, time=time.time())
            if rank == 0:
                metrics.log(**rec)
                pbar.set_postfix(W=f"{rec['wasserstein']:.4f}", g=f"{vals[1]:.4f}", n_c=f"{rec['n_critic']:.0f}", img_s=f"{rec['img_per_s']:.0f}")
            acc.zero_()
            n_acc, n_critic_steps, t_log = 0, 0, time.perf_counter()
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
    It carries .model, .z_dim, .num_classes (0: WGAN is unconditional, labels are ignored)
    and .used_ema. The dmol head's pixel noise is drawn from ``seed`` as well."""
    ckpt = load_checkpoint(path, SCRIPT, device)
    run = argparse.Namespace(**ckpt["args"])
    G = Generator(run.z_dim, run.image_size, ckpt["channels"], run.g_width, run.output, run.mixtures).to(device)
    used_ema = use_ema and ckpt["ema"] is not None
    load_state(G, ckpt["ema"] if used_ema else ckpt["G"], "generator")
    G.eval()

    @torch.no_grad()
    def generate(n=None, seed=0, temperature=1.0, z=None, labels=None):
        if z is None:
            z = torch.randn(n, run.z_dim, generator=torch.Generator().manual_seed(seed)) * temperature
        with private_rng(torch.device(device), seed):
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
        x = generate(z=z, seed=args.seed)
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
