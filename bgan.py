# SPDX-License-Identifier: MIT
"""BGAN: Boundary-Seeking Generative Adversarial Networks. Hjelm, Jacob, Che, Trischler, Cho,
Bengio, ICLR 2018. arXiv:1702.08431 (section numbers of v4, the ICLR version).

The idea: a discriminator trained with the GAN objective estimates the density ratio,
p(x) / q(x) ~ D(x) / (1 - D(x)) = w(x), so D's logit is log w(x) (Sec. 2, Theorem 1). For
discrete data, which cannot be back-propagated through, G outputs a distribution g(x | z)
(a Bernoulli per pixel for binary images, a softmax over a palette per pixel for quantized
ones, over the vocabulary per character for text), draws M samples per latent, and
maximises sum_m w~(x^(m)) log g(x^(m) | z), with w~ a softmax of D's logits over the M
samples of one z (Sec. 2, Algorithm 1: a policy gradient with w~ as reward). D trains on the
real data and all N x M samples. For continuous data the same fixed point, w(G(z)) = 1,
gives G the loss 1/2 (log D - log(1 - D))^2 (Sec. 2).

Usage:
    python bgan.py                                    # binarized digits (embedded), 16x16 (auto)
    python bgan.py --dataset mnist --data-path ~/data --download   # binarized MNIST
    torchrun --nproc_per_node=8 bgan.py --dataset folder --data-path ~/data/celeba16  # K colours
    python bgan.py --mode continuous                  # the boundary-seeking loss, grey digits
    python bgan.py --dataset text                     # characters (common/text.py)
    python bgan.py --sample 8 --interpolate 10 --checkpoint auto   # drawn samples

Based on dcgan.py; differs in G's output (``G.logits(z)``), Algorithm 1, the data, the flags.
--config paper: the authors' code (rdevon/BGAN main_discrete.py; text: old/BILLION-WORD/main.py)
and, where the paper's text differs, still the code; --config auto on CUDA: the same at scale.

Departures from the paper, and choices where it is silent (measurements: docs/bgan.md):
* w~ comes from D before its update (Algorithm 1's order), detached, normalised over the M
  samples of each latent, never across the batch; M = --n-mc-samples 20 (the authors').
* No batch norm in D in the discrete modes (nor in the authors'): with it each logit, a log
  importance weight, would depend on the batch's other samples (--d-batch-norm).
* --log-lik sum is the paper's log g(x | z); mean (the PyTorch reimplementation's) divides
  by the pixels (under Adam only its epsilon tells them apart).
* D reads binary samples in {-1, 1} (the authors': {0, 1}), quantized ones as one-hot planes.
* Not in the paper: --baseline (on), w~ - 1/M (a control variate: the same expected gradient,
  less variance), and --d-noise, Gaussian noise on D's inputs (real and drawn; the weights
  come from that same pass): 1.5 on images, 0 in --mode continuous and on text, where it
  hurt (docs/bgan.md). --d-noise 0 --no-baseline: the paper.
* Adam (beta1 0.5); lr 1e-4 for D and 1e-3 for G (the authors': 1e-4 both, which on a CPU's
  budget lets D win at once); batch 32, widths 32/16, z ~ N(0, I) of 100 (the authors': 64,
  64, U[0, 1) of 64) fit a small CPU.
* Off by default, the PyTorch reimplementation's --activation, --bn-after-act, --spectral-norm.
  EMA generator (not in the paper): as dcgan.py's. Binary: intensity >= --binarize-threshold.
* --dataset text: the authors' residual nets (BN in G only, Glorot init, kernel-5 convs along
  a 1 x 32 palette image); on a CPU (TEXT) widths 64, 5 blocks, 96 characters, batch 32, M 20,
  lr_g 1e-3, lr_d 2e-4, no D noise (authors': 256, 3, 192, 64, 20, 1e-3 both); samples: argmax.
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
SCRIPT = "bgan"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--g-width", "4", "--d-width", "4", "--n-mc-samples", "4"]
# --config paper on images: the authors' published discrete MNIST, rdevon/BGAN main_discrete.py
# (_default_args; its optimizer in lib/train.py, its loss in lib/loss.py binary_bgan).
PAPER = {
    "batch_size": 64,  # data_args batch_size
    "lr_g": 1e-4,
    "lr_d": 1e-4,
    "beta1": 0.5,  # one Adam learning rate, beta1 0.5
    "z_dim": 64,
    "z_prior": "uniform",  # dim_z 64; lib/train.py draws np.random.rand
    "n_mc_samples": 20,  # loss_args n_samples
    "g_width": 64,
    "d_width": 64,  # dim_h 64 (models/dcgan_28_pub.py: 64 and 2 x 64)
    # D without batch norm (model_args use_batch_norm=False; G keeps it): --d-batch-norm's
    # default in every discrete mode, under every config
    "d_noise": 0.0,
    "baseline": False,
    "log_lik": "sum",  # lib/loss.py: none, sum
    "steps": 93700,  # train_args epochs 100 x 937 full batches of MNIST's 60,000
    "ema_decay": 0.0,
}  # no EMA
# --config paper on text: rdevon/BGAN old/BILLION-WORD/main.py (_defaults, build_generator,
# build_discriminator, N_WORDS, L_GEN); its 100 epochs of its corpus have no step count here.
PAPER_TEXT = {
    "batch_size": 64,
    "lr_g": 1e-3,
    "lr_d": 1e-3,
    "beta1": 0.5,  # _defaults
    "z_dim": 100,
    "z_prior": "uniform",  # dim_noise 100, np.random.rand
    "n_mc_samples": 20,  # _defaults n_samples
    "g_width": 256,
    "d_width": 256,
    "text_blocks": 3,  # dim_h 256, n_steps 3
    "vocab_size": 192,
    "seq_len": 32,  # N_WORDS, L_GEN
    # D without batch norm (build_discriminator; G has it): --d-batch-norm's default
    "d_noise": 0.0,
    "baseline": False,
    "log_lik": "sum",
    "ema_decay": 0.0,
}
# --config auto on --dataset text on a CPU, about 5 CPU-minutes (measured: docs/results.md#text):
# no D noise (1.5 stalls it); D at a fifth of G's rate (with equal rates D won at once: w~ on a
# few of the M samples, and few words in 10 minutes; at a tenth or a twentieth D fell behind and
# G's samples shared a prefix); the authors' M 20; batch 32, widths 64 and five residual blocks,
# which run many times the authors' steps here.
TEXT = {
    "d_noise": 0.0,
    "lr_g": 1e-3,
    "lr_d": 2e-4,
    "batch_size": 32,
    "n_mc_samples": 20,
    "g_width": 64,
    "d_width": 64,
    "text_blocks": 5,
    "steps": 2500,
}
# --config auto on a CPU above 16x16 (MNIST-format files: 32x32): about 5 CPU-minutes. With
# batch norm in D the old default collapsed at step ~3300; without it 3000 steps held, and beat
# 1500 (docs/results.md, off the bench; docs/bgan_experiments.md#mnist-format-files-on-a-cpu).
CPU_32 = {"steps": 3000}


def auto_config(args):
    """CPU: the defaults below, with --dataset text TEXT's and above 16x16 CPU_32's (each about
    5 CPU-minutes); CUDA: the authors' main_discrete.py (text: BILLION-WORD main.py), global
    batch 64, 100 passes over the data."""
    if args.auto["device"] == "cuda":
        return authors_at_scale(args)
    if args.dataset == "text":
        return TEXT
    return CPU_32 if args.image_size > 16 else {}


def authors_at_scale(args):
    """--config auto on CUDA: the authors' settings (PAPER, PAPER_TEXT) with their global batch
    of 64 split over the processes and, for images, their 100 epochs (main_discrete.py
    train_args) as steps over the data at hand; EMA kept for the samples."""
    seen = args.auto
    config = dict(PAPER_TEXT if args.dataset == "text" else PAPER)
    config["batch_size"] = max(1, 64 // seen["processes"])
    del config["ema_decay"]
    if args.dataset != "text":
        images = seen["images"] or 60000
        config["steps"] = steps_for(100 * images / 1000, config["batch_size"], seen["processes"])
    return config


def paper_config(args):
    """the authors' main_discrete.py: batch 64, Adam 1e-4 for both, z 64 ~ U[0, 1), M 20,
    widths 64, D without batch norm, noise or baseline, 93,700 steps, no EMA; with --dataset
    text their BILLION-WORD main.py: lr 1e-3, z 100, widths 256, 3 blocks, 192 characters."""
    return PAPER_TEXT if args.dataset == "text" else PAPER


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="BGAN (Hjelm et al. 2018)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # The authors' code has batch 64 (main_discrete.py); 32 and the steps suit the digits on a
    # CPU. The authors' z: 64-d (main_discrete.py), 100-d (BILLION-WORD main.py).
    add_common_args(
        p,
        batch_size=32,
        steps=7000,
        lr_g=1e-3,
        lr_d=1e-4,
        z_dim=100,
        sources={
            "lr_g": "the authors' 1e-4 x 10, see docstring",
            "lr_d": "the authors' main_discrete.py",
            "batch_size": "64",
        },
        configs={"auto": auto_config, "paper": paper_config},
    )
    a = p.add_argument_group("BGAN").add_argument
    a(
        "--mode",
        default="discrete",
        choices=["discrete", "continuous"],
        help="discrete: Algorithm 1; continuous: G's loss 1/2 (log D - log(1 - D))^2 (Sec. 2)",
    )
    a(
        "--data-mode",
        default="auto",
        choices=["auto", "binary", "quantized"],
        help="binarized "
        "images or a quantized folder; auto: quantized when --data-path holds palette.json",
    )
    a(
        "--n-mc-samples",
        type=in_range(int, "[2, inf)"),
        default=20,
        help="M, samples per latent (the authors': 20)",
    )
    a(
        "--log-lik",
        default="sum",
        choices=["sum", "mean"],
        help="log g(x|z) summed over pixels "
        "(the paper's) or averaged (the PyTorch reimplementation's)",
    )
    a(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="subtract 1/M "
        "from the weights (not in the paper); --no-baseline: the paper's estimator",
    )
    a(
        "--binarize-threshold",
        type=in_range(float, "(0, 1]"),
        default=0.5,
        help="binary data: a pixel is 1 where its intensity in [0, 1] is >= this",
    )
    a(
        "--g-width",
        type=in_range(int, "[1, inf)"),
        default=32,
        help="channels of G's last hidden layer, doubled per "
        "resolution step (as dcgan.py; 64 for CelebA)",
    )
    a(
        "--d-width",
        type=in_range(int, "[1, inf)"),
        default=16,
        help="channels of D's first layer (D reads M times the batch; 64 for CelebA)",
    )
    a(
        "--activation",
        default="dcgan",
        choices=["dcgan", "relu", "lrelu", "elu"],
        help="dcgan: ReLU in G, LeakyReLU(0.2) in D (the authors'); else this one in both",
    )
    a(
        "--bn-after-act",
        action="store_true",
        help="conv -> activation -> BN, not conv -> BN -> activation (the PyTorch reimpl.'s)",
    )
    a("--spectral-norm", action="store_true", help="spectral norm on D (Miyato et al. 2018)")
    a(
        "--d-batch-norm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="batch norm "
        "in D's hidden layers; it couples the importance weights across the batch (each sample's "
        "logit then depends on the other N x M samples); None: off in the discrete modes (the "
        "authors'), on with --mode continuous (dcgan.py's D)",
    )
    a(
        "--z-prior",
        default="normal",
        choices=["normal", "uniform"],
        help="z ~ N(0, I), or "
        "U[0, 1) as the authors' code draws it (G maps N(0, I) through the normal CDF)",
    )
    a(
        "--d-noise",
        type=in_range(float, "[0, inf)"),
        default=None,
        help="std of Gaussian noise on D's inputs (not in "
        "the paper, docs/bgan.md); None: 1.5, or 0 with --mode continuous or text; 0: off",
    )
    a("--beta1", type=in_range(float, "[0, 1)"), default=0.5, help="Adam beta1 (DCGAN's)")
    a("--beta2", type=in_range(float, "[0, 1)"), default=0.999, help="Adam beta2 (Adam's default)")
    a(
        "--seq-len",
        type=in_range(int, "[2, inf)"),
        default=32,
        help="--dataset text: characters per sequence (the authors' BILLION-WORD code's)",
    )
    a(
        "--vocab-size",
        type=in_range(int, "[2, inf)"),
        default=96,
        help="--dataset text: the most frequent characters "
        "kept, the rest one unknown symbol (the authors' BILLION-WORD code: 192)",
    )
    a(
        "--text-blocks",
        type=in_range(int, "[1, inf)"),
        default=3,
        help="--dataset text: residual blocks in G and D (the authors' BILLION-WORD code)",
    )
    args = parse_with_resume(p, argv)
    if args.d_batch_norm is None:  # Algorithm 1 needs per-sample weights (docs/bgan.md)
        args.d_batch_norm = args.mode == "continuous"
    if args.d_noise is None:  # it helps Algorithm 1 and hurts the continuous loss (docs/bgan.md)
        args.d_noise = 0.0 if args.mode == "continuous" else 1.5
    return args


# ============================================================ model
def widths(image_size, base):
    """Channels per resolution from 4x4 up to image_size/2: base * 2^k, capped at 8 * base."""
    n = int(math.log2(image_size)) - 2  # number of 2x steps between 4x4 and image_size
    return [base * min(2 ** (n - 1 - i), 8) for i in range(n)]  # [4x4, 8x8, ..., image_size/2]


def init_weights(m):
    """DCGAN's (dcgan.py): weights from N(0, 0.02); batch-norm gains from N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0 if isinstance(m, nn.BatchNorm2d) else 0.0, 0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def activation(kind, net):
    """--activation: dcgan is ReLU in G and LeakyReLU(0.2) in D (the authors')."""
    if kind == "dcgan":
        kind = "relu" if net == "G" else "lrelu"
    make = {"relu": nn.ReLU, "lrelu": functools.partial(nn.LeakyReLU, 0.2), "elu": nn.ELU}[kind]
    return make(inplace=True)


def norm_act(channels, act, bn_after_act):
    """Batch norm and activation after a conv: BN -> act (DCGAN), or act -> BN (--bn-after-act)."""
    return [act, nn.BatchNorm2d(channels)] if bn_after_act else [nn.BatchNorm2d(channels), act]


def latent(z, prior):
    """G's latent: z itself (N(0, I)), or with prior "uniform" Phi(z), the normal CDF of each
    entry, which is U(0, 1) exactly: the authors' prior, while every sampler draws N(0, I)."""
    if prior == "normal":
        return z
    return torch.special.ndtr(z.float()).to(z.dtype)


class Generator(nn.Module):
    """dcgan.py's generator with one output plane per distribution parameter.

    ``logits(z)``: (N, out_channels, S, S), the Bernoulli logits of binary data (out_channels
    = image channels), the categorical logits over a K-colour palette (out_channels = K), or
    the pre-tanh image (continuous). ``forward(z)``: the mean in D's input space: tanh(l / 2)
    = E[2x - 1] (binary), softmax over K (quantized), tanh(l) (continuous)."""

    def __init__(
        self,
        z_dim=100,
        image_size=32,
        out_channels=1,
        width=64,
        kind="binary",
        act="dcgan",
        bn_after_act=False,
        prior="normal",
    ):
        super().__init__()
        w = widths(image_size, width)
        self.kind, self.w0, self.prior = kind, w[0], prior
        self.project = nn.Linear(z_dim, w[0] * 4 * 4, bias=False)
        layers = norm_act(w[0], activation(act, "G"), bn_after_act)
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                *norm_act(cout, activation(act, "G"), bn_after_act),
            ]
        layers += [nn.ConvTranspose2d(w[-1], out_channels, 4, 2, 1)]  # no BN on G's output
        self.net = nn.Sequential(*layers)

    def logits(self, z):
        return self.net(self.project(latent(z, self.prior)).view(-1, self.w0, 4, 4))

    def forward(self, z, y=None):
        a = self.logits(z)
        if self.kind == "quantized":
            return torch.softmax(a.float(), 1).to(a.dtype)
        return torch.tanh(a * 0.5) if self.kind == "binary" else torch.tanh(a)


class Discriminator(nn.Module):
    """dcgan.py's discriminator (strided 4x4 convs to 4x4, a linear logit), with the activation
    and BN order of --activation/--bn-after-act. ``batch_norm`` False (--no-d-batch-norm, the
    discrete modes' default): convs with biases and no BN, so that each sample's logit, its log
    importance weight, depends on that sample alone (the authors' use_batch_norm=False)."""

    def __init__(
        self,
        image_size=32,
        in_channels=1,
        width=64,
        act="dcgan",
        bn_after_act=False,
        batch_norm=True,
    ):
        super().__init__()
        w = widths(image_size, width)[::-1]  # [image_size/2, ..., 4x4]
        layers = [nn.Conv2d(in_channels, w[0], 4, 2, 1), activation(act, "D")]
        for cin, cout in zip(w[:-1], w[1:]):
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=not batch_norm))
            if batch_norm:
                layers += norm_act(cout, activation(act, "D"), bn_after_act)
            else:
                layers.append(activation(act, "D"))
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(w[-1] * 4 * 4, 1)  # a logit: log D - log(1 - D) = log w(x)

    def forward(self, x, y=None):
        return self.out(self.net(x).flatten(1)).view(-1)


def conv5(cin, cout, bias=False):
    """A kernel-5 convolution along a sequence held as a 1 x L image."""
    return nn.Conv2d(cin, cout, (1, 5), padding=(0, 2), bias=bias)


def glorot(m):
    """The authors' text init (Lasagne's default, GlorotUniform): Glorot-uniform weights, zero
    biases; batch norm keeps gain 1 and bias 0."""
    if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class TextBlock(nn.Module):
    """The authors' text residual block (BILLION-WORD main.py): x + BN(conv(ReLU(BN(conv(act(x))))))
    in G; in D, without batch norm: x + conv(ReLU(conv(act(x)))), convs with biases."""

    def __init__(self, width, act, batch_norm=True):
        super().__init__()
        if batch_norm:
            self.f = nn.Sequential(
                act,
                conv5(width, width),
                nn.BatchNorm2d(width),
                nn.ReLU(),
                conv5(width, width),
                nn.BatchNorm2d(width),
            )
        else:
            self.f = nn.Sequential(
                act, conv5(width, width, True), nn.ReLU(), conv5(width, width, True)
            )

    def forward(self, x):
        return x + self.f(x)


class TextGenerator(nn.Module):
    """--dataset text, the authors' BILLION-WORD G: z -> linear + BN to width x L, --text-blocks
    residual blocks, ReLU, conv + BN to per-position logits over the vocabulary. ``logits``:
    (N, V, 1, L), a palette image one pixel high; ``forward``: the softmax."""

    def __init__(self, z_dim, seq_len, vocab, width, blocks=3, prior="normal"):
        super().__init__()
        self.shape, self.prior = (width, 1, seq_len), prior
        self.project = nn.Sequential(
            nn.Linear(z_dim, width * seq_len, bias=False), nn.BatchNorm1d(width * seq_len)
        )
        self.net = nn.Sequential(
            *(TextBlock(width, nn.ReLU()) for _ in range(blocks)),
            nn.ReLU(),
            conv5(width, vocab),
            nn.BatchNorm2d(vocab),
        )

    def logits(self, z):
        return self.net(self.project(latent(z, self.prior)).view(-1, *self.shape))

    def forward(self, z, y=None):
        a = self.logits(z)
        return torch.softmax(a.float(), 1).to(a.dtype)


class TextDiscriminator(nn.Module):
    """--dataset text, the authors' D: a conv from the one-hot characters, --text-blocks residual
    blocks with LeakyReLU(0.2), LeakyReLU, a linear logit of the whole sequence; no batch norm
    unless ``batch_norm`` (--d-batch-norm, which couples the importance weights)."""

    def __init__(self, seq_len, vocab, width, blocks=3, batch_norm=False):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(vocab, width, (1, 5), padding=(0, 2)),
            *(TextBlock(width, nn.LeakyReLU(0.2), batch_norm) for _ in range(blocks)),
            nn.LeakyReLU(0.2),
        )
        self.out = nn.Linear(width * seq_len, 1)

    def forward(self, x, y=None):
        return self.out(self.net(x).flatten(1)).view(-1)


def build_models(args, channels, num_classes=0, num_colors=0):
    """G and D: ``num_colors`` > 0, categorical over a palette (K logits per pixel, K one-hot
    planes); continuous: a tanh G; text: over ``channels`` characters. num_classes: unused."""
    kind = "quantized" if num_colors else "binary"
    if args.mode == "continuous":
        kind = "continuous"
    planes = num_colors if kind == "quantized" else channels
    # checkpoints from before issue 26: D with batch norm, 5 text blocks, z ~ N(0, I)
    prior, d_bn = getattr(args, "z_prior", "normal"), getattr(args, "d_batch_norm", True)
    if args.dataset == "text":  # channels: the vocabulary
        blocks = getattr(args, "text_blocks", 5)
        g = TextGenerator(args.z_dim, args.seq_len, channels, args.g_width, blocks, prior)
        d = TextDiscriminator(args.seq_len, channels, args.d_width, blocks, d_bn)
        g.apply(glorot)
        d.apply(glorot)
    else:
        g = Generator(
            args.z_dim,
            args.image_size,
            planes,
            args.g_width,
            kind,
            args.activation,
            args.bn_after_act,
            prior,
        )
        d = Discriminator(
            args.image_size, planes, args.d_width, args.activation, args.bn_after_act, d_bn
        )
        g.apply(init_weights)
        d.apply(init_weights)
    if args.spectral_norm:  # after the init: the parametrization keeps it as the "original"
        for mod in list(d.modules()):
            if isinstance(mod, (nn.Conv2d, nn.Linear)):
                nn.utils.parametrizations.spectral_norm(mod)
    return g, d


# ============================================================ discrete data
# Algorithm 1 on three kinds of discrete data. Each says how a real batch becomes samples,
# how M samples are drawn from G's logits, their log g(x | z) and what D reads of them.
def uniform(shape, device, generator=None):
    """U[0, 1) numbers: from ``generator`` (a CPU torch.Generator: a reproducible draw that
    leaves the global RNG alone, for grids and sampling) or the device's RNG."""
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator).to(device)


class BinaryPixels:
    """Binarized images: one Bernoulli variable per pixel and channel (the paper's discrete
    MNIST; the authors' main_discrete.py), x ~ Bernoulli(sigmoid(l)). D reads {0, 1} as
    {-1, 1}."""

    def __init__(self, threshold):
        self.threshold = threshold

    def as_samples(self, real):
        """A real batch in [-1, 1] as one sample per image: pixels >= the threshold."""
        from common.data import binarize

        return binarize(real, self.threshold)

    def draw(self, logits, m, generator=None):
        """M samples per latent, (N, M, C, S, S) floats in {0, 1}, without gradient."""
        a = logits.detach().float()
        u = uniform((a.shape[0], m, *a.shape[1:]), a.device, generator)
        return (u < torch.sigmoid(a)[:, None]).float()

    def log_prob(self, logits, samples):
        """log g(x | z) of each pixel and channel of the samples, (N, M, C*S*S), in fp32."""
        a = logits.float()[:, None].expand_as(samples)
        return -F.binary_cross_entropy_with_logits(a, samples, reduction="none").flatten(2)

    def d_input(self, samples, dtype=torch.float32):
        return (samples * 2 - 1).to(dtype)

    def decode(self, samples):
        """Samples as images in {-1, 1}."""
        return samples.float() * 2 - 1


class PalettePixels:
    """Quantized images: one index into a palette of K colours per pixel (the paper's
    quantized CelebA), x ~ Categorical(softmax(l)). D reads one-hot planes."""

    def __init__(self, palette):
        self.colours = palette.float().div(127.5).sub(1)  # (K, 3) uint8 -> [-1, 1]
        self.k = len(palette)

    def as_samples(self, real):
        """A real batch (palette colours in [-1, 1]) as one sample per image: (N, S, S)
        palette indices."""
        from common.data import to_indices

        return to_indices(real)

    def draw(self, logits, m, generator=None):
        """M samples per latent, (N, M, S, S) int64 indices, without gradient, by inverse-CDF
        sampling: one uniform per pixel and sample, located in the cumulative softmax (K
        times fewer random numbers than the Gumbel-max trick)."""
        a = logits.detach().float()
        n, k, h, w = a.shape
        u = uniform((n, h, w, m), a.device, generator)
        cdf = torch.softmax(a, 1).cumsum(1).permute(0, 2, 3, 1).contiguous()  # (N, S, S, K)
        idx = torch.searchsorted(cdf, u, right=True).clamp_max_(k - 1)  # cdf[k-1] <= u < cdf[k]
        return idx.permute(0, 3, 1, 2)

    def log_prob(self, logits, samples):
        """log g(x | z) of each pixel of the samples, (N, M, S*S), in fp32."""
        return torch.log_softmax(logits.float(), 1).gather(1, samples).flatten(2)

    def d_input(self, samples, dtype=torch.float32):
        """(B, S, S) indices -> (B, K, S, S) one-hot planes."""
        onehot = samples[..., None] == torch.arange(self.k, device=samples.device)
        return onehot.to(dtype).permute(0, 3, 1, 2)  # channels-last planes

    def decode(self, samples):
        """Samples as images: each index's palette colour."""
        return self.colours.to(samples.device)[samples].permute(0, 3, 1, 2)


class Characters(PalettePixels):
    """Text: a sequence of L characters is a 1 x L image whose palette is the vocabulary
    (the authors' old/BILLION-WORD/main.py). Samples decode to indices."""

    def __init__(self, vocab_size):
        self.k = vocab_size

    def as_samples(self, real):
        """(N, L) character indices as one 1 x L sample per sequence."""
        return real[:, None]

    def decode(self, samples):
        """(N, 1, L) samples -> (N, L) character indices (common.kinds.Text writes them)."""
        return samples.flatten(1)


def log_likelihood(logits, samples, pixels, reduce="sum"):
    """log g(x^(m) | z) of the drawn samples, (N, M), in fp32, differentiable in the logits.

    A sum over the discrete variables is the log-probability of the whole sample (the
    paper's); reduce="mean" divides it by their number."""
    ll = pixels.log_prob(logits, samples)
    return ll.mean(2) if reduce == "mean" else ll.sum(2)


def d_view(x, std):
    """D's training input: channels-last, plus --d-noise Gaussian noise of ``std`` (drawn so)."""
    x = x.contiguous(memory_format=torch.channels_last)
    if std <= 0:
        return x
    noise = torch.randn(x.shape[0], *x.shape[2:], x.shape[1], device=x.device, dtype=x.dtype)
    return x.add(noise.permute(0, 3, 1, 2), alpha=std)


# ============================================================ loss
def d_loss(real_logits, fake_logits):
    """Algorithm 1, D's step: -log D(x) - log(1 - D(x^(m|n))) over the real batch and all
    N x M drawn samples, from logits (softplus: the GAN objective's BCE without overflow)."""
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def importance_weights(fake_logits, m):
    """Normalized importance weights w~ (Sec. 2, Algorithm 1): log w(x) = D's logit; a softmax
    over the M samples of each latent (dim 1 of (N, M)); a constant (detached)."""
    return torch.softmax(fake_logits.detach().float().view(-1, m), dim=1)


def g_loss(fake_logits, log_lik, baseline=False):
    """Algorithm 1, G's step: the weighted negative log-likelihood -1/N sum_n sum_m
    w~(x^(m|n)) log g(x^(m|n) | z_n), whose gradient is the importance-weighted policy
    gradient. ``log_lik``: (N, M); ``fake_logits``: D's on the N x M samples, (n, m) order."""
    w = importance_weights(fake_logits, log_lik.shape[1])
    if baseline:  # minus the uniform weight 1/M: E[grad log g] = 0, so only the variance falls
        w = w - 1.0 / log_lik.shape[1]
    return -(w * log_lik).sum(1).mean()


def boundary_seeking_loss(fake_logits):
    """Continuous data (Sec. 2): 1/2 (log D(G(z)) - log(1 - D(G(z))))^2 = 1/2 logit^2, which
    is 0 on D's decision boundary."""
    return 0.5 * fake_logits.float().pow(2).mean()


def effective_sample_size(fake_logits, m):
    """1 / sum_m w~^2 per latent, averaged: M when D rates the M samples alike, 1 at worst."""
    w = importance_weights(fake_logits, m)
    return (1.0 / w.pow(2).sum(1)).mean()


# ============================================================ training
def data_kind(args):
    """continuous, text, quantized (--data-mode, or auto and a folder with palette.json) or
    binary. Text is quantized data whose palette is the vocabulary."""
    from common.quantize import has_palette

    if args.mode == "continuous" or args.dataset == "text":
        return args.mode if args.mode == "continuous" else "text"
    auto = args.data_mode == "auto" and args.dataset == "folder" and has_palette(args.data_path)
    return "quantized" if args.data_mode == "quantized" or auto else "binary"


def real_view(x, run_args):
    """Real images ``x`` in [-1, 1] as G learns to produce them, for common/evaluation.py:
    binarized as in training when G draws binary pixels (so samples meet binarized digits, not
    grey ones), else unchanged. ``run_args``: the checkpoint's args (a dict)."""
    from common.data import binarize

    a = argparse.Namespace(**run_args)
    return x if data_kind(a) != "binary" else binarize(x, a.binarize_threshold) * 2 - 1


def check_args(args):
    from common import UserError

    if args.dataset == "text" and args.mode == "continuous":
        raise UserError("--dataset text is discrete (Algorithm 1): drop --mode continuous")
    if args.dataset != "text" and (args.image_size < 8 or args.image_size & (args.image_size - 1)):
        raise UserError(
            f"--image-size {args.image_size} cannot be built: DCGAN doubles from 4x4, "
            "so use a power of two >= 8 (32, 64, 128, ...)"
        )


def load_data(args, resumed):
    """The data for ``Run.dataset(load=...)`` where it is not the shared flags' images: the
    corpus (text) or a quantized folder; None for the others."""
    from common import UserError
    from common.data import QuantizedFolderData
    from common.text import load_text

    kind = data_kind(args)
    if kind == "text":
        return load_text(args, resumed)
    if args.dataset != "folder" or not args.data_path:
        raise UserError(
            "--data-mode quantized reads a folder written by "
            "tools/quantize_celeba.py: use --dataset folder --data-path DIR"
        )
    if args.download:
        raise UserError("--download does not apply to --dataset folder")
    if args.color_jitter:
        raise UserError("--color-jitter would move quantized pixels off the palette; drop it")
    return QuantizedFolderData(args.data_path, args.image_size)


def discrete_data(kind, args, palette, vocab_size):
    """Algorithm 1's view of the data (``BinaryPixels``, ``PalettePixels``, ``Characters``);
    None in --mode continuous."""
    if kind == "binary":
        return BinaryPixels(args.binarize_threshold)
    if kind == "quantized":
        return PalettePixels(palette)
    if kind == "text":
        return Characters(vocab_size)
    return None


def shown(logits, pixels, generator):
    """What a sample of G shows: one sample drawn per latent (pixel noise from
    ``generator``), decoded; a tanh image in --mode continuous (``pixels`` None); text: the
    likeliest characters, as the authors' code samples."""
    if pixels is None:
        return torch.tanh(logits.float())
    if isinstance(pixels, Characters):
        return logits.argmax(1).flatten(1)
    return pixels.decode(pixels.draw(logits, 1, generator)[:, 0])


def grid_images(gen, z, pixels):
    """The grid: a sample per latent, with the same pixel noise each time."""
    return shown(gen.logits(z), pixels, torch.Generator().manual_seed(99))


def train(args):
    from common.run import Run, fixed_inputs

    rank, world, device = setup_distributed(args.device)
    run = Run(SCRIPT, args, rank, world, device, check_args)
    kind = data_kind(args)  # binary, quantized, text or continuous
    data = run.dataset(load=load_data if kind in ("text", "quantized") else None)
    palette = torch.from_numpy(data.palette) if kind == "quantized" else None
    K, M = (len(palette) if palette is not None else data.channels), args.n_mc_samples
    pixels = discrete_data(kind, args, palette, data.channels)  # None: continuous
    batches = run.batches(data)

    G, D, ema = run.models(build_models, data.channels, 0, K)
    betas = (args.beta1, args.beta2)  # fused: one kernel for all tensors (CPU, CUDA)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=betas, fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas, fused=True)
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    grid = functools.partial(
        grid_images, z=fixed_inputs(64, args.z_dim, 0, 1234, device)[0], pixels=pixels
    )
    calibrate = [fixed_inputs(256, args.z_dim, 0, 4321 + i, device) for i in range(4)]
    what = {
        "binary": f"binarized at {args.binarize_threshold:g}; {M} samples per latent",
        "quantized": f"{K} colours; {M} samples per latent",
        "continuous": "continuous",
        "text": f"{K} characters; {M} samples per latent",
    }[kind]
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
        },
        grid,
        calibrate,
        note=what,
        info={"channels": data.channels, "num_classes": 0, "kind": kind, "palette": palette},
    )
    G_logits, G_step, D_step = (
        (torch.compile(G.logits), torch.compile(G), torch.compile(D))
        if args.compile
        else (G.logits, G, D)
    )
    nets = (G, D, G_step, D_step, opt_g, opt_d, scaler_g, scaler_d)  # continuous_step's

    stream = iter(batches)
    while run.step < args.steps:
        real, _ = next(stream)
        z = torch.randn(real.shape[0], args.z_dim, device=device)
        if pixels is None:  # Sec. 2's continuous BGAN: its own step, below
            values = continuous_step(nets, real, z, args, world)
        else:
            # Algorithm 1: M samples x^(m|n) ~ g(x | z_n) per latent, without gradient.
            real = pixels.d_input(pixels.as_samples(real))
            with autocast(device, args.amp):
                logits = G_logits(z)
            samples = pixels.draw(logits, M)
            fake = pixels.d_input(samples.flatten(0, 1))

            # D step: the GAN loss on the real batch and every sample (logit = log w).
            with autocast(device, args.amp):
                real_logits = D_step(d_view(real, args.d_noise))
                fake_logits = D_step(d_view(fake, args.d_noise))
                loss_d = d_loss(real_logits, fake_logits)
            optimizer_step(loss_d, opt_d, scaler_d, D, world)

            # G step: w~ from D before its update (Algorithm 1), detached inside g_loss.
            log_lik = log_likelihood(logits, samples, pixels, args.log_lik)
            loss_g = g_loss(fake_logits, log_lik, args.baseline)
            optimizer_step(loss_g, opt_g, scaler_g, G, world)
            values = {
                "d_loss": loss_d,
                "g_loss": loss_g,
                "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
                "d_fake": torch.sigmoid(fake_logits.detach().float()).mean(),
                "ess": effective_sample_size(fake_logits, M),
            }
        if ema is not None:
            ema_update(ema, G, args.ema_decay, run.step, args.ema_warmup)
        run.end_step(**values)
    return run.finish()


def continuous_step(nets, real, z, args, world):
    """One step of BGAN on continuous data (Sec. 2): G(z) is an image, as in dcgan.py; D's
    step is the GAN loss, G's the boundary-seeking loss. ``nets``: G, D, their compiled
    forms, optimizers and scalers. Returns the step's numbers for the log."""
    G, D, G_step, D_step, opt_g, opt_d, scaler_g, scaler_d = nets
    with autocast(real.device, args.amp):
        fake = G_step(z)
        real_logits = D_step(d_view(real, args.d_noise))
        fake_logits = D_step(d_view(fake.detach(), args.d_noise))
        loss_d = d_loss(real_logits, fake_logits)
    optimizer_step(loss_d, opt_d, scaler_d, D, world)

    D.requires_grad_(False)  # G step: D's weights need no grads
    with autocast(real.device, args.amp):
        loss_g = boundary_seeking_loss(D_step(d_view(fake, args.d_noise)))
    optimizer_step(loss_g, opt_g, scaler_g, G, world)
    D.requires_grad_(True)
    return {
        "d_loss": loss_d,
        "g_loss": loss_g,
        "d_real": torch.sigmoid(real_logits.detach().float()).mean(),
        "d_fake": torch.sigmoid(fake_logits.detach().float()).mean(),
    }


# ============================================================ sampling
class Generated:
    """generate(n, seed=0, temperature=1.0, z=None, labels=None, shared_noise=False): samples
    in [-1, 1] drawn from a checkpoint's EMA (or raw) G (binary: {-1, 1}, quantized: palette
    colours), reproducible from ``seed``; shared_noise: one pixel noise for all (walks)."""

    def __init__(self, path, device="cpu", use_ema=True):
        from common.checkpoints import load_checkpoint, load_state
        from common.kinds import kind_of

        ckpt = load_checkpoint(path, SCRIPT, device)
        self.run, self.device = argparse.Namespace(**ckpt["args"]), device
        palette = ckpt.get("palette")
        k = len(palette) if palette is not None else 0
        self.pixels = discrete_data(ckpt.get("kind", "binary"), self.run, palette, ckpt["channels"])
        self.kind = kind_of(ckpt)  # how the sampling command writes them: images or text
        self.z_dim, self.num_classes = self.run.z_dim, 0
        self.used_ema = use_ema and ckpt.get("ema") is not None
        self.model = build_models(self.run, ckpt["channels"], 0, k)[0].to(device).eval()
        load_state(self.model, ckpt["ema"] if self.used_ema else ckpt["G"], "generator")

    @torch.no_grad()
    def __call__(self, n=None, seed=0, temperature=1.0, z=None, labels=None, shared_noise=False):
        if z is None:
            z = torch.randn(n, self.z_dim, generator=torch.Generator().manual_seed(seed))
            z = z * temperature
        noise, out = torch.Generator().manual_seed(seed + 1), []
        for zc in z.split(256):
            a = self.model.logits(zc.to(self.device)).float()
            if shared_noise:  # a fresh pixel generator per image: the same uniforms for each
                rows = a.split(1)
                x = [shown(r, self.pixels, torch.Generator().manual_seed(seed + 1)) for r in rows]
                out.append(torch.cat(x).cpu())
            else:
                out.append(shown(a, self.pixels, noise).cpu())
        return torch.cat(out)


def load_generator(path, device="cpu", use_ema=True):
    return Generated(path, device, use_ema)


def sample(script, args, load_generator):
    """--sample N [--interpolate K]: walks draw every frame with the same pixel noise."""
    from common.run import Sampling

    s = Sampling(script, args, load_generator)
    return s.interpolation(shared_noise=True) if args.interpolate else s.grid()


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
