# SPDX-License-Identifier: MIT
"""WGAN-GP: Improved Training of Wasserstein GANs. Gulrajani, Ahmed, Arjovsky, Dumoulin,
Courville, NeurIPS 2017. arXiv:1704.00028.

The idea: WGAN (wgan.py) keeps its critic Lipschitz by clipping weights, which biases the
critic towards overly simple functions and makes gradients explode or vanish unless c is
tuned (Sec. 3). An optimal 1-Lipschitz critic has gradient norm 1 on the straight lines
between paired real and generated points (Prop. 1), so WGAN-GP drops the clipping and
penalises the critic's gradient norm for deviating from 1 at random points x_hat on such
lines (Eq. 3): L = E[D(x_tilde)] - E[D(x)] + lambda E[(||grad D(x_hat)||_2 - 1)^2], with
x_hat = eps x + (1 - eps) x_tilde, one eps ~ U[0, 1] per sample. The critic has no batch
norm, which couples the samples of a batch; layer norm instead (Sec. 4). Adam with lr
1e-4, betas (0, 0.9), lambda = 10 and n_critic = 5 (Alg. 1). ``--config auto`` on CUDA takes
each setting from the authors' code for the data (igul222/improved_wgan_training; auto_config).

Usage:
    python wgan_gp.py                                  # digits (embedded), 16x16 (auto)
    python wgan_gp.py --config paper --dataset cifar10 --data-path ~/data   # App. C's CIFAR-10 run
    torchrun --nproc_per_node=8 wgan_gp.py --dataset cifar10 --data-path ~/data --amp bf16
    python wgan_gp.py --sample 8 --interpolate 10 --checkpoint auto
    python wgan_gp.py --dataset text                   # characters (common/text.py)

Based on dcgan.py; differs in: the critic (no batch norm), the WGAN-GP losses, Adam, n_critic
critic steps per G step, each on a fresh real batch and z; ``--arch``, ``--lr-decay``; no cGAN.
It keeps dcgan.py's departures from DCGAN's paper: z ~ N(0, I) and 4x4 kernels (dcgan.torch),
no weight decay, batch-norm gains from N(1, 0.02) (the authors' code, not DCGAN's Sec. 4).

Departures from the paper, and choices where it is silent (more in docs/wgan_gp.md):
* ``--arch dcgan`` (default): dcgan.py's networks, with layer norm (``nn.GroupNorm(1, C)``,
  as the authors' gan_64x64.py) where the critic had batch norm.
* ``--arch resnet``: App. C's CIFAR-10 networks (Table 4), scaled by ``--image-size``,
  128 channels per block; G's batch is ``--batch-size``, not twice the critic's. Real images
  get the code's U[0, 1/128) dequantisation noise (``--dequantize``, on with this arch).
* fp16: PyTorch's AMP recipe for the penalty (the critic's output scaled before
  ``autograd.grad``, the gradients unscaled, the norm in fp32). The explicit gradient
  all-reduce lets the double backward work under torchrun; ``--compile`` compiles G only.
* EMA generator (not in the paper, see dcgan.py), batch norm recalibrated.
* ``--dataset text``: the paper's character-level model (modelling discrete data with a
  continuous generator; the authors' gan_language.py): G's softmax per position goes to the
  critic as it is, real sequences as one-hot, the penalty on interpolates of the two; five
  residual blocks (x + 0.3 f(x), kernel-5 convs) in both nets, Adam beta1 0.5; windows of 32
  characters at random positions of running text (theirs: each line's first 32, padded), so
  that any text trains, not only one sentence per line. Auto on a CPU (``TEXT``): batch 32,
  lr 1e-3, n_critic 5, widths 64, 96 characters (theirs, on CUDA and in paper: 64, 1e-4, 10,
  512, up to 2048). Samples show each position's likeliest character (their argmax).
"""

import argparse
import math
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

# ============================================================ flags
SCRIPT = "wgan_gp"
# Flags that make a tiny model, used by the test harness (tests/test_scripts.py).
SMOKE_ARGS = ["--g-width", "4", "--d-width", "4"]
# --config paper: App. C's CIFAR-10 ResNet run (the authors' gan_cifar_resnet.py: batch 64, Adam
# 2e-4 decayed linearly to 0 over 100k steps, betas (0, 0.9), widths 128, n_critic 5, real images
# dequantized), no EMA; with --dataset text, the language model (gan_language.py: batch 64, lr
# 1e-4, beta1 0.5, widths 512, n_critic 10, 200k steps; language_helpers.py's vocabulary cap).
PAPER = {
    "arch": "resnet",
    "g_width": 128,
    "d_width": 128,
    "batch_size": 64,
    "lr_g": 2e-4,
    "lr_d": 2e-4,
    "lr_decay": 100000,
    "steps": 100000,
    "z_dim": 128,
    "n_critic": 5,
    "beta1": 0.0,
    "beta2": 0.9,
    "lambda_gp": 10.0,
    "dequantize": True,
    "ema_decay": 0.0,
}
PAPER_TEXT = {
    "batch_size": 64,
    "lr_g": 1e-4,
    "lr_d": 1e-4,
    "beta1": 0.5,
    "beta2": 0.9,
    "g_width": 512,
    "d_width": 512,
    "n_critic": 10,
    "steps": 200000,
    "seq_len": 32,
    "lambda_gp": 10.0,
    "vocab_size": 2048,
    "ema_decay": 0.0,
}
# --config auto on --dataset text on a CPU: the language model's beta1 0.5, and a batch,
# learning rate, width and length for about 5 CPU-minutes (docs/wgan_gp.md#text).
TEXT = {
    "beta1": 0.5,
    "batch_size": 32,
    "lr_g": 1e-3,
    "lr_d": 1e-3,
    "g_width": 64,
    "d_width": 64,
    "steps": 500,
}
# --config auto on CUDA: the authors' code (github.com/igul222/improved_wgan_training) for the
# data at hand, variable by variable. Not flags: "kimg", its ITERS x BATCH_SIZE / 1000, so that
# --steps is ITERS at the code's global batch on any number of GPUs; "decay", its linear decay
# of the learning rates to 0 over the whole run (--lr-decay = --steps).
CIFAR_RESNET = {  # gan_cifar_resnet.py (App. C, Table 4) with CONDITIONAL = False (as committed
    # it trains Table 3's supervised AC-GAN; this script, the unsupervised model): 3-channel
    # images up to 32x32
    "arch": "resnet",  # Generator / Discriminator: ResidualBlock and OptimizedResBlockDisc1
    "g_width": 128,
    "d_width": 128,  # DIM_G, DIM_D
    "batch_size": 64,  # BATCH_SIZE (the critic's; G's is GEN_BS_MULTIPLE 2 x it: a departure)
    "kimg": 6400,  # ITERS 100000 x BATCH_SIZE 64
    "lr_g": 2e-4,
    "lr_d": 2e-4,  # LR
    "decay": True,  # DECAY: LR x max(0, 1 - iteration / ITERS)
    "beta1": 0.0,
    "beta2": 0.9,  # tf.train.AdamOptimizer(beta1=0., beta2=0.9)
    "n_critic": 5,  # N_CRITIC
    "lambda_gp": 10.0,  # gradient_penalty = 10 * ...
    "dequantize": True,  # all_real_data += tf.random_uniform(..., maxval=1./128)
}
MNIST = {  # gan_mnist.py (MODE "wgan-gp"): 1-channel images up to 32x32
    "arch": "dcgan",  # its DCGAN-shaped nets (5x5 kernels, no normalization at all; ours have
    #                   4x4 kernels, batch norm in G and layer norm in the critic)
    "g_width": 64,
    "d_width": 64,  # DIM
    "batch_size": 50,  # BATCH_SIZE
    "kimg": 10000,  # ITERS 200000 x BATCH_SIZE 50
    "lr_g": 1e-4,
    "lr_d": 1e-4,  # AdamOptimizer(learning_rate=1e-4, ...), constant
    "beta1": 0.5,
    "beta2": 0.9,  # AdamOptimizer(..., beta1=0.5, beta2=0.9)
    "n_critic": 5,  # CRITIC_ITERS
    "lambda_gp": 10.0,  # LAMBDA
}
IMAGES_64 = {  # gan_64x64.py (MODE "wgan-gp"): 64x64 and larger
    "arch": "dcgan",  # its DCGANGenerator / DCGANDiscriminator with layer norm (its default,
    #                   GoodGenerator, is a ResNet of 8*DIM..DIM channels not built here)
    "g_width": 64,
    "d_width": 64,  # DIM
    "batch_size": 64,  # BATCH_SIZE
    "kimg": 12800,  # ITERS 200000 x BATCH_SIZE 64
    "lr_g": 1e-4,
    "lr_d": 1e-4,  # AdamOptimizer(learning_rate=1e-4, ...), constant
    "beta1": 0.0,
    "beta2": 0.9,  # AdamOptimizer(..., beta1=0., beta2=0.9)
    "n_critic": 5,  # CRITIC_ITERS
    "lambda_gp": 10.0,  # LAMBDA
}
LANGUAGE = {  # gan_language.py: --dataset text
    "batch_size": 64,  # BATCH_SIZE
    "kimg": 12800,  # ITERS 200000 x BATCH_SIZE 64
    "seq_len": 32,  # SEQ_LEN
    "g_width": 512,
    "d_width": 512,  # DIM
    "lr_g": 1e-4,
    "lr_d": 1e-4,  # AdamOptimizer(learning_rate=1e-4, ...)
    "beta1": 0.5,
    "beta2": 0.9,  # AdamOptimizer(..., beta1=0.5, beta2=0.9)
    "n_critic": 10,  # CRITIC_ITERS
    "lambda_gp": 10.0,  # LAMBDA
    "vocab_size": 2048,  # language_helpers.load_dataset(max_vocab_size=2048)
}


def auto_config(args):
    """on a CPU, a run of minutes: the defaults below, with widths 64 x 16 / the image size
    and batch 32 above 16x16; text: batch 32, lr 1e-3, beta1 0.5, widths 64, 500 steps. On
    CUDA, the authors' code for the data (text: gan_language.py; 64x64 and up: gan_64x64.py;
    1 channel: gan_mnist.py; else gan_cifar_resnet.py), its global batch split over the GPUs."""
    seen = args.auto
    if seen["device"] == "cpu":
        if args.dataset == "text":
            return TEXT
        if args.image_size <= 16:  # the embedded digits' 16x16: the defaults, 5 CPU-minutes
            return {}
        # A step costs about what a 16x16 step at width 64 does (multiply-adds: width^2 x area).
        width = max(8, 64 * 16 // args.image_size)
        return {"g_width": width, "d_width": width, "batch_size": 32}
    if args.dataset == "text":
        code = LANGUAGE
    elif args.image_size >= 64:
        code = IMAGES_64
    elif seen["channels"] == 1:
        code = MNIST
    else:
        code = CIFAR_RESNET
    chosen = {k: v for k, v in code.items() if k not in ("kimg", "decay")}
    if "arch" in args.explicit and args.arch != code.get("arch", args.arch):
        for k in ("g_width", "d_width", "dequantize"):  # the given --arch's own defaults
            chosen.pop(k, None)
    chosen["batch_size"] = max(1, code["batch_size"] // seen["processes"])
    chosen["steps"] = steps_for(code["kimg"], chosen["batch_size"], seen["processes"])
    if code.get("decay"):
        chosen["lr_decay"] = chosen["steps"]
    return chosen


def paper_config(args):
    """App. C's CIFAR-10 ResNet run: --arch resnet, widths 128, batch 64, lr 2e-4 decayed to 0
    over 100k steps, betas (0, 0.9), dequantized real images, no EMA; with --dataset text,
    gan_language.py's: batch 64, lr 1e-4, beta1 0.5, widths 512, n_critic 10, 200k steps,
    vocabulary 2048."""
    return PAPER_TEXT if args.dataset == "text" else PAPER


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="WGAN-GP (Gulrajani et al. 2017)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    # Steps: a digits default; the paper trains for 100k-200k steps.
    add_common_args(
        p,
        batch_size=64,
        steps=930,
        lr_g=1e-4,
        lr_d=1e-4,
        z_dim=128,
        sources={
            "batch_size": "App. C",
            "lr_g": "Alg. 1, alpha",
            "lr_d": "Alg. 1",
            "z_dim": "Table 4",
        },
        configs={"auto": auto_config, "paper": paper_config},
    )
    m = p.add_argument_group("WGAN-GP").add_argument
    m("--arch", default="dcgan", choices=["dcgan", "resnet"], help="dcgan.py's or App. C's nets")
    m(
        "--g-width",
        type=in_range(int, "[1, inf)"),
        default=None,
        help="G's channels: dcgan, of the last hidden layer "
        "(default 64, the authors' gan_64x64.py); resnet, of every block (default 128, Table 4)",
    )
    m(
        "--d-width",
        type=in_range(int, "[1, inf)"),
        default=None,
        help="the critic's (dcgan: first layer), as --g-width",
    )
    m(
        "--n-critic",
        type=in_range(int, "[1, inf)"),
        default=5,
        help="critic steps per G step (Alg. 1)",
    )
    m(
        "--lambda-gp",
        type=in_range(float, "[0, inf)"),
        default=10.0,
        help="penalty weight lambda (Alg. 1, Eq. 3)",
    )
    m("--beta1", type=in_range(float, "[0, 1)"), default=0.0, help="Adam beta1 (Alg. 1; text: 0.5)")
    m("--beta2", type=in_range(float, "[0, 1)"), default=0.9, help="Adam beta2 (Alg. 1)")
    m(
        "--lr-decay",
        type=in_range(int, "[0, inf)"),
        default=0,
        metavar="N",
        help="decay both learning rates linearly "
        "to 0 over N G steps (App. C's ResNet run: 100000); 0: constant",
    )
    m(
        "--dequantize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="add U[0, "
        "1/128) to real images, spreading each 8-bit level over its bin (the authors' "
        "gan_cifar_resnet.py); default: on with --arch resnet",
    )
    m(
        "--seq-len",
        type=in_range(int, "[2, inf)"),
        default=32,
        help="--dataset text: characters per sequence (paper)",
    )
    m(
        "--vocab-size",
        type=in_range(int, "[2, inf)"),
        default=96,
        help="--dataset text: the most frequent characters "
        "kept, the rest one unknown symbol (language_helpers.py: 2048)",
    )
    args = parse_with_resume(p, argv)
    for k in ("g_width", "d_width"):  # the paper's width for the chosen architecture
        if getattr(args, k) is None:
            setattr(args, k, 128 if args.arch == "resnet" else 64)
    if args.dequantize is None:  # as the code whose networks --arch resnet builds
        args.dequantize = args.arch == "resnet" and args.dataset != "text"
    return args


# ============================================================ model
def widths(image_size, base):
    """Channels per resolution from 4x4 up to image_size/2: base * 2^k, capped at 8 * base."""
    n = int(math.log2(image_size)) - 2  # number of 2x steps between 4x4 and image_size
    return [base * min(2 ** (n - 1 - i), 8) for i in range(n)]  # [4x4, 8x8, ..., image_size/2]


def init_weights(m):
    """--arch dcgan, DCGAN Sec. 4: weights N(0, 0.02); its code: BN gains N(1, 0.02), biases 0."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)):
        nn.init.normal_(m.weight, 1.0 if isinstance(m, nn.BatchNorm2d) else 0.0, 0.02)
        if m.bias is not None:
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
            layers += [
                nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(True),
            ]
        layers += [nn.ConvTranspose2d(w[-1], channels, 4, 2, 1), nn.Tanh()]  # no BN (Sec. 3)
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(self.project(z).view(-1, self.w0, 4, 4))


class Critic(nn.Module):
    """--arch dcgan: dcgan.py's discriminator, no sigmoid, with layer norm for batch norm
    (Sec. 4): GroupNorm(1, C) normalises each sample over (C, H, W), gain and bias per channel."""

    def __init__(self, image_size=32, channels=1, width=64):
        super().__init__()
        w = widths(image_size, width)[::-1]  # [image_size/2, ..., 4x4]
        layers = [nn.Conv2d(channels, w[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for cin, cout in zip(w[:-1], w[1:]):
            layers += [
                nn.Conv2d(cin, cout, 4, 2, 1, bias=False),
                nn.GroupNorm(1, cout),
                nn.LeakyReLU(0.2, True),
            ]
        self.net = nn.Sequential(*layers)
        self.out = nn.Linear(w[-1] * 4 * 4, 1)

    def forward(self, x):
        return self.out(self.net(x).flatten(1)).view(-1)


def glorot(layer, gain=1.0):
    """--arch resnet: the authors' (tflib) Glorot-uniform init, gain sqrt(2) He-style; bias 0."""
    nn.init.xavier_uniform_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class ResBlock(nn.Module):
    """App. C: a pre-activation residual block, (norm, ReLU, 3x3 conv) twice, nearest-neighbour
    upsampling before ("up") or mean pooling after ("down"); a 1x1-conv shortcut when the shape
    changes. ``first``: the critic's first ("optimized") block, no activation on the image."""

    def __init__(self, cin, cout, resample=None, bn=False, first=False):
        super().__init__()
        mid = cin if resample == "down" and not first else cout
        self.resample, self.first = resample, first
        self.n1 = nn.BatchNorm2d(cin) if bn else nn.Identity()
        self.n2 = nn.BatchNorm2d(mid) if bn else nn.Identity()
        self.c1 = glorot(nn.Conv2d(cin, mid, 3, 1, 1), math.sqrt(2))
        self.c2 = glorot(nn.Conv2d(mid, cout, 3, 1, 1), math.sqrt(2))
        self.skip = glorot(nn.Conv2d(cin, cout, 1)) if cin != cout or resample else nn.Identity()

    def forward(self, x):
        h = x if self.first else F.relu(self.n1(x))
        if self.resample == "up":
            x, h = (F.interpolate(t, scale_factor=2.0, mode="nearest") for t in (x, h))
        h, x = self.c2(F.relu(self.n2(self.c1(h)))), self.skip(x)
        if self.resample == "down":
            x, h = F.avg_pool2d(x, 2), F.avg_pool2d(h, 2)
        return x + h


class ResNetGenerator(nn.Module):
    """--arch resnet, Table 4: linear z -> 4x4, up-blocks to the image size (three for 32x32),
    BN, ReLU, 3x3 conv, tanh. Batch norm in G only (App. C)."""

    def __init__(self, z_dim=128, image_size=32, channels=3, width=128):
        super().__init__()
        self.width = width
        self.project = glorot(nn.Linear(z_dim, width * 4 * 4))
        up = [ResBlock(width, width, "up", bn=True) for _ in range(int(math.log2(image_size)) - 2)]
        self.net = nn.Sequential(
            *up,
            nn.BatchNorm2d(width),
            nn.ReLU(),
            glorot(nn.Conv2d(width, channels, 3, 1, 1)),
            nn.Tanh(),
        )

    def forward(self, z):
        return self.net(self.project(z).view(-1, self.width, 4, 4))


class ResNetCritic(nn.Module):
    """--arch resnet, Table 4: the first block and down-blocks to 8x8 (4x4 for 8x8 images),
    two blocks without resampling, ReLU, mean over space, linear. No normalization (App. C)."""

    def __init__(self, image_size=32, channels=3, width=128):
        super().__init__()
        downs = [ResBlock(width, width, "down") for _ in range(int(math.log2(image_size)) - 4)]
        self.net = nn.Sequential(
            ResBlock(channels, width, "down", first=True),
            *downs,
            ResBlock(width, width),
            ResBlock(width, width),
        )
        self.out = glorot(nn.Linear(width, 1))

    def forward(self, x):
        return self.out(F.relu(self.net(x)).mean((2, 3))).view(-1)


class TextBlock(nn.Module):
    """The language model's residual block: x + 0.3 conv(ReLU(conv(ReLU(x)))), kernel-5 convs
    along the sequence, held as a 1 x L image (gan_language.py's ResBlock)."""

    def __init__(self, width):
        super().__init__()
        self.c1, self.c2 = (
            glorot(nn.Conv2d(width, width, (1, 5), padding=(0, 2)), math.sqrt(2)) for _ in range(2)
        )

    def forward(self, x):
        return x + 0.3 * self.c2(F.relu(self.c1(F.relu(x))))


class TextGenerator(nn.Module):
    """--dataset text: z -> linear to ``width`` channels x L positions, five residual blocks, a
    1x1 conv to the vocabulary and a softmax per position. The critic reads these distributions
    as they are (a continuous generator for discrete data): (N, V, 1, L), one-hot's shape."""

    def __init__(self, z_dim, seq_len, vocab, width):
        super().__init__()
        self.shape = (width, 1, seq_len)
        self.project = glorot(nn.Linear(z_dim, width * seq_len))
        self.net = nn.Sequential(
            *(TextBlock(width) for _ in range(5)), glorot(nn.Conv2d(width, vocab, 1), math.sqrt(2))
        )

    def forward(self, z):
        return torch.softmax(self.net(self.project(z).view(-1, *self.shape)).float(), 1)


class TextCritic(nn.Module):
    """--dataset text: a 1x1 conv from the characters' one-hot (or G's softmax) planes, five
    residual blocks, a linear score of the whole sequence."""

    def __init__(self, seq_len, vocab, width):
        super().__init__()
        self.net = nn.Sequential(
            glorot(nn.Conv2d(vocab, width, 1), math.sqrt(2)), *(TextBlock(width) for _ in range(5))
        )
        self.out = glorot(nn.Linear(width * seq_len, 1))

    def forward(self, x):
        return self.out(self.net(x).flatten(1)).view(-1)


def build_models(args, channels, num_classes):
    if args.dataset == "text":  # channels: the vocabulary
        return (
            TextGenerator(args.z_dim, args.seq_len, channels, args.g_width),
            TextCritic(args.seq_len, channels, args.d_width),
        )
    if args.arch == "resnet":  # initialised in their constructors, as the authors' code
        return (
            ResNetGenerator(args.z_dim, args.image_size, channels, args.g_width),
            ResNetCritic(args.image_size, channels, args.d_width),
        )
    g = Generator(args.z_dim, args.image_size, channels, args.g_width)
    d = Critic(args.image_size, channels, args.d_width)
    g.apply(init_weights)
    d.apply(init_weights)
    return g, d


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
def check_args(args):
    from common import UserError

    if args.dataset != "text" and (args.image_size < 8 or args.image_size & (args.image_size - 1)):
        raise UserError(
            f"--image-size {args.image_size} cannot be built: both architectures "
            "double from 4x4, so use a power of two >= 8 (32, 64, 128, ...)"
        )
    if args.dataset == "text" and args.dequantize:
        raise UserError("--dequantize is for 8-bit images; leave it out with --dataset text")


def dequantize(x):
    """gan_cifar_resnet.py's real images: an 8-bit level k as 2 (k / 256 - 0.5) + U[0, 1/128),
    spread uniformly over its bin, so that the critic cannot tell real images by their
    lattice. Our batches hold x = 2k / 255 - 1, hence the rescaling."""
    return x * (255 / 256) - 1 / 256 + torch.rand_like(x) / 128


def train(args):
    from common.run import Run, fixed_inputs
    from common.text import load_text, one_hot

    rank, world, device = setup_distributed(args.device)
    run = Run(SCRIPT, args, rank, world, device, check_args)
    text = args.dataset == "text"  # characters as one-hot planes (common.text.one_hot)
    data = run.dataset(load=load_text if text else None)
    batches = run.batches(data)

    G, D, ema = run.models(build_models, data.channels, 0)
    betas = (args.beta1, args.beta2)  # fused: one kernel for all tensors (CPU, CUDA)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr_g, betas=betas, fused=True)
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr_d, betas=betas, fused=True)
    scaler_g, scaler_d = make_scaler(device, args.amp), make_scaler(device, args.amp)
    grid = fixed_inputs(64, args.z_dim, 0, 1234, device)[:1]
    calibrate = [fixed_inputs(256, args.z_dim, 0, 4321 + i, device)[:1] for i in range(4)]
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
        info={"channels": data.channels, "num_classes": 0},
        note=f"n_critic {args.n_critic}, lambda {args.lambda_gp}",
    )
    G_step, D_step = (torch.compile(G), D) if args.compile else (G, D)
    if args.compile and rank == 0:
        print(
            "note: --compile compiles G only: the critic's gradient penalty needs double "
            "backward, which compiled graphs lack",
            file=sys.stderr,
        )

    one = torch.ones((), device=device)
    stream = iter(batches)
    while run.step < args.steps:
        if args.lr_decay:  # App. C: linearly to 0, recomputed from the step (exact resume)
            for opt, lr in ((opt_g, args.lr_g), (opt_d, args.lr_d)):
                for group in opt.param_groups:
                    group["lr"] = lr * max(0.0, 1 - run.step / args.lr_decay)

        # Critic: Alg. 1 lines 2-9, each step on a fresh real batch, fresh z and fresh eps.
        for _ in range(args.n_critic):
            real, _ = next(stream)
            if args.dequantize:
                real = dequantize(real)
            real = (one_hot(real, data.channels) if text else real).contiguous(
                memory_format=torch.channels_last
            )
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

        # Generator: Alg. 1 lines 10-11, a fresh z; no penalty. D's weights need no grads.
        z = torch.randn(args.batch_size, args.z_dim, device=device)
        D.requires_grad_(False)
        with autocast(device, args.amp):
            loss_g = g_loss(D_step(G_step(z)))
        optimizer_step(loss_g, opt_g, scaler_g, G, world)
        D.requires_grad_(True)
        if ema is not None:
            ema_update(ema, G, args.ema_decay, run.step, args.ema_warmup)

        # The last critic step's values. Under fp16 an overflowing loss scale makes the penalty
        # inf in a step that GradScaler skips: logged as 0, not as a divergence.
        gp = penalty.detach().float()
        gp = gp.nan_to_num(0.0, 0.0, 0.0) if args.amp == "fp16" else gp
        d_real, d_fake = real_scores.detach().float().mean(), fake_scores.detach().float().mean()
        run.end_step(
            images=args.n_critic * args.batch_size * world,
            d_loss=loss_w.detach().float() + args.lambda_gp * gp,
            g_loss=loss_g,
            wasserstein=d_real - d_fake,
            d_real=d_real,
            d_fake=d_fake,
            gp=gp,
        )
    return run.finish()


# ============================================================ sampling
def load_generator(path, device="cpu", use_ema=True):
    """generate(n, seed=0, temperature=1.0, z=None) -> images in [-1, 1] from a checkpoint's
    EMA generator (or raw G), for --sample and the evaluation tools."""
    from common.run import Generate

    return Generate(SCRIPT, path, device, use_ema, build_models)


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
