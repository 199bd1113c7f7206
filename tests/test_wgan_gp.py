"""wgan_gp.py's own checks: the gradient penalty (value, flattened norm, two-sided,
create_graph, fp16 scaling), per-sample epsilon, no batch norm in the critic, the ResNet
of App. C, --lr-decay, --dequantize, --config auto (the authors' code on CUDA, today's runs of
minutes on a CPU) and the script's bad input."""

import json

import pytest
import torch

from conftest import assert_one_line_error, load_script, tiny_args

m = load_script("wgan_gp")


def strip(run_dir):
    """metrics.jsonl without the wall-clock fields."""
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("img_per_s", "time")}
        for line in open(f"{run_dir}/metrics.jsonl")
    ]


class Linear(torch.nn.Module):
    """D(x) = <w, x>: its gradient is w everywhere, so the penalty is (||w|| - 1)^2."""

    def __init__(self, w):
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x):
        return (x * self.w).flatten(1).sum(1)


def penalty_of(critic, shape=(6, 3, 4, 4)):
    x_hat = m.interpolate(torch.randn(shape), torch.randn(shape))
    return m.gradient_penalty(critic(x_hat), x_hat)


def test_penalty_is_zero_for_unit_gradient_and_two_sided():
    w = torch.randn(3, 4, 4)
    assert penalty_of(Linear(w / w.norm())).item() < 1e-10  # the norm is over C, H, W flattened
    assert penalty_of(Linear(2 * w / w.norm())).item() == pytest.approx(1.0)  # (2 - 1)^2
    # below 1 is penalised too
    assert penalty_of(Linear(0.5 * w / w.norm())).item() == pytest.approx(0.25)
    # unit norm per channel: norm sqrt(3) overall
    per_channel = w / w.flatten(1).norm(dim=1).view(3, 1, 1)
    assert penalty_of(Linear(per_channel)).item() == pytest.approx((3**0.5 - 1) ** 2)


def test_penalty_differentiates_through_the_gradient():
    w = torch.randn(3, 4, 4)
    critic = Linear(2 * w / w.norm())
    penalty_of(critic).backward()  # needs create_graph=True
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||
    torch.testing.assert_close(critic.w.grad, 2 * (2 - 1) * w / w.norm())


def test_penalty_under_a_loss_scale():
    """The AMP recipe: scale the output before autograd.grad and divide the gradients back."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)  # as make_scaler gives under fp16
    D = m.Critic(8, 1, 4)
    x_hat = m.interpolate(torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8))
    plain = m.gradient_penalty(D(x_hat), x_hat)
    scaled = m.gradient_penalty(D(x_hat), x_hat, scaler.scale(torch.ones(())))
    torch.testing.assert_close(scaled, plain)


def test_one_epsilon_per_sample():
    torch.manual_seed(0)
    x_hat = m.interpolate(torch.zeros(8, 3, 4, 4), torch.ones(8, 3, 4, 4))  # x_hat = 1 - eps
    per_sample = x_hat.flatten(1)
    assert torch.equal(per_sample, per_sample[:, :1].expand_as(per_sample))  # one eps per sample
    assert per_sample[:, 0].unique().numel() == 8  # and a different one for each
    assert x_hat.is_leaf and x_hat.requires_grad


def test_paper_defaults_and_no_batch_norm_in_the_critic():
    a = m.parse_args([])
    assert (a.batch_size, a.lr_g, a.lr_d, a.beta1, a.beta2, a.lambda_gp, a.n_critic, a.z_dim) == (
        64,
        1e-4,
        1e-4,
        0.0,
        0.9,
        10.0,
        5,
        128,
    )
    assert (a.arch, a.g_width, a.d_width) == ("dcgan", 64, 64)
    r = m.parse_args(["--arch", "resnet"])
    assert (r.g_width, r.d_width) == (128, 128)  # Table 4
    for args in (m.parse_args(m.SMOKE_ARGS), m.parse_args([*m.SMOKE_ARGS, "--arch", "resnet"])):
        _, D = m.build_models(args, 1, 0)
        assert not any(isinstance(x, torch.nn.modules.batchnorm._BatchNorm) for x in D.modules())
    _, D = m.build_models(a, 1, 0)
    # layer norm
    assert any(isinstance(x, torch.nn.GroupNorm) and x.num_groups == 1 for x in D.modules())


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_resnet_shapes(size):
    args = m.parse_args(
        ["--arch", "resnet", "--g-width", "8", "--d-width", "8", "--image-size", str(size)]
    )
    G, D = m.build_models(args, channels=3, num_classes=0)
    x = G(torch.randn(2, args.z_dim))
    assert x.shape == (2, 3, size, size) and D(x).shape == (2,)
    if size == 32:  # Table 4: three up-blocks; the first block, one down-block and two plain blocks
        assert sum(isinstance(b, m.ResBlock) for b in G.net) == 3
        assert [b.resample for b in D.net] == ["down", "down", None, None] and D.net[0].first


def test_resnet_lr_decay_resume(in_tmp):
    common = [
        *tiny_args(m),
        "--arch",
        "resnet",
        "--lr-decay",
        "4",
        "--n-critic",
        "2",
        "--ckpt-every",
        "2",
        "--sample-every",
        "2",
    ]
    m.main([*common, "--steps", "4", "--out", "full"])
    m.main([*common, "--steps", "2", "--out", "part"])
    m.main(["--resume", "auto", "--out", "part", "--steps", "4"])
    assert strip("full") == strip("part")
    ckpt = torch.load("full/checkpoints/last.pt", weights_only=True)
    # set before the last step
    assert ckpt["opt_g"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * (1 - 3 / 4))
    assert all(torch.isfinite(torch.tensor(r["gp"])) for r in strip("full"))
    m.main(["--sample", "4", "--checkpoint", "full", "--out", "s", "--device", "cpu"])


# ---------------------------------------------------------------- --config auto
def resolved(*argv):
    return m.parse_args([*argv])


def settings(a, *names):
    return {k: getattr(a, k) for k in names}


@pytest.mark.parametrize("gpus", [1, 8])
def test_auto_cuda_cifar10_is_the_authors_resnet(gpus):
    """igul222/improved_wgan_training, gan_cifar_resnet.py: DIM_G = DIM_D = 128, BATCH_SIZE 64
    (the global critic batch), ITERS 100000, LR 2e-4 with DECAY, N_CRITIC 5, Adam (0, 0.9),
    the penalty's 10, real images + U[0, 1/128); z of 128."""
    a = resolved("--assume", f"cuda:{gpus}", "--dataset", "cifar10")
    assert settings(a, "arch", "g_width", "d_width", "image_size", "z_dim") == {
        "arch": "resnet",
        "g_width": 128,
        "d_width": 128,
        "image_size": 32,
        "z_dim": 128,
    }
    assert a.batch_size * gpus == 64 and a.steps == 100000 and a.lr_decay == 100000
    assert (a.lr_g, a.lr_d, a.beta1, a.beta2) == (2e-4, 2e-4, 0.0, 0.9)
    assert (a.n_critic, a.lambda_gp, a.dequantize) == (5, 10.0, True)
    G, D = m.build_models(a, 3, 0)  # Table 4 / the code: three up-blocks, four critic blocks
    assert sum(isinstance(b, m.ResBlock) for b in G.net) == 3 and len(D.net) == 4
    assert "batch_size" in a.chosen and "arch" in a.chosen  # args.json records what auto set


def test_auto_cuda_mnist_is_gan_mnist():
    """gan_mnist.py (MODE wgan-gp): DIM 64, BATCH_SIZE 50, ITERS 200000, CRITIC_ITERS 5,
    LAMBDA 10, Adam 1e-4, betas (0.5, 0.9), no decay."""
    a = resolved("--assume", "cuda:1", "--dataset", "mnist")
    assert settings(a, "arch", "g_width", "d_width", "batch_size", "steps", "lr_decay") == {
        "arch": "dcgan",
        "g_width": 64,
        "d_width": 64,
        "batch_size": 50,
        "steps": 200000,
        "lr_decay": 0,
    }
    assert (a.lr_g, a.lr_d, a.beta1, a.beta2, a.n_critic, a.lambda_gp) == (
        1e-4,
        1e-4,
        0.5,
        0.9,
        5,
        10.0,
    )
    assert a.image_size == 32 and not a.dequantize


def test_auto_cuda_64x64_is_gan_64x64():
    """gan_64x64.py (MODE wgan-gp): DIM 64, BATCH_SIZE 64 over the GPUs, ITERS 200000,
    CRITIC_ITERS 5, Adam 1e-4, betas (0, 0.9)."""
    a = resolved("--assume", "cuda:8", "--dataset", "celeba")
    assert settings(a, "arch", "g_width", "d_width", "image_size", "batch_size", "steps") == {
        "arch": "dcgan",
        "g_width": 64,
        "d_width": 64,
        "image_size": 64,
        "batch_size": 8,
        "steps": 200000,
    }
    assert (a.lr_g, a.beta1, a.beta2, a.n_critic, a.lr_decay) == (1e-4, 0.0, 0.9, 5, 0)


def test_auto_cuda_text_is_gan_language():
    """gan_language.py: BATCH_SIZE 64, ITERS 200000, SEQ_LEN 32, DIM 512, CRITIC_ITERS 10,
    LAMBDA 10, Adam 1e-4, betas (0.5, 0.9); language_helpers.py's max_vocab_size 2048."""
    a = resolved("--assume", "cuda:1", "--dataset", "text")
    assert settings(
        a,
        "batch_size",
        "steps",
        "seq_len",
        "g_width",
        "d_width",
        "n_critic",
        "lambda_gp",
        "lr_g",
        "lr_d",
        "beta1",
        "beta2",
        "vocab_size",
    ) == {
        "batch_size": 64,
        "steps": 200000,
        "seq_len": 32,
        "g_width": 512,
        "d_width": 512,
        "n_critic": 10,
        "lambda_gp": 10.0,
        "lr_g": 1e-4,
        "lr_d": 1e-4,
        "beta1": 0.5,
        "beta2": 0.9,
        "vocab_size": 2048,
    }
    assert not a.dequantize
    paper = resolved("--config", "paper", "--dataset", "text")
    assert (paper.vocab_size, paper.seq_len, paper.n_critic) == (2048, 32, 10)


# Today's CPU resolutions (before the rule had a CUDA branch): no default run changes.
TODAY = (
    "arch",
    "g_width",
    "d_width",
    "batch_size",
    "steps",
    "lr_g",
    "lr_d",
    "beta1",
    "beta2",
    "n_critic",
    "lambda_gp",
    "lr_decay",
    "z_dim",
    "image_size",
    "ema_decay",
    "seq_len",
    "vocab_size",
)
CPU_DIGITS = ("dcgan", 64, 64, 64, 930, 1e-4, 1e-4, 0.0, 0.9, 5, 10.0, 0, 128, 16, 0.999, 32, 96)
CPU_TEXT = ("dcgan", 64, 64, 32, 500, 1e-3, 1e-3, 0.5, 0.9, 5, 10.0, 0, 128, 32, 0.999, 32, 96)


def test_auto_cpu_digits_and_text_are_todays():
    digits = resolved("--assume", "cpu")
    assert settings(digits, *TODAY) == dict(zip(TODAY, CPU_DIGITS)) and digits.chosen == {}
    assert not digits.dequantize
    text = resolved("--assume", "cpu", "--dataset", "text")
    assert settings(text, *TODAY) == dict(zip(TODAY, CPU_TEXT))


def test_auto_cpu_other_images_stay_a_run_of_minutes():
    """At 32x32 a step at width 64 costs about 8x a 16x16 one; widths 32 and batch 32 bring it
    back near the digits' (multiply-adds scale with width^2 x area)."""
    a = resolved("--assume", "cpu", "--dataset", "cifar10")
    assert (a.image_size, a.g_width, a.d_width, a.batch_size, a.steps) == (32, 32, 32, 32, 930)
    assert a.arch == "dcgan" and not a.dequantize


def test_given_flags_win_over_the_authors_code():
    a = resolved("--assume", "cuda:1", "--dataset", "cifar10", "--arch", "dcgan")
    # the given --arch keeps its own widths and no dequantisation; the rest is still the code's
    assert (a.arch, a.g_width, a.dequantize, a.batch_size, a.lr_g) == ("dcgan", 64, False, 64, 2e-4)
    b = resolved(
        "--assume",
        "cuda:1",
        "--dataset",
        "cifar10",
        "--steps",
        "500",
        "--batch-size",
        "32",
        "--no-dequantize",
    )
    assert (b.steps, b.batch_size, b.dequantize, b.lr_decay) == (500, 32, False, 100000)


# ---------------------------------------------------------------- --dequantize
def test_dequantize_spreads_each_level_over_its_bin():
    """gan_cifar_resnet.py: level k -> 2 (k / 256 - 0.5) + U[0, 1/128), on our 2k / 255 - 1."""
    k = torch.arange(256.0).repeat(200)
    x = m.dequantize(k / 127.5 - 1)
    low = 2 * (k / 256 - 0.5)
    assert ((x >= low - 1e-6) & (x < low + 1 / 128 + 1e-6)).all()  # inside level k's bin
    assert x.min() >= -1 and x.max() < 1
    u = (x - low) * 128  # uniform on [0, 1)
    assert abs(u.mean().item() - 0.5) < 0.01 and abs(u.var().item() - 1 / 12) < 0.005


def test_dequantize_follows_the_arch_and_reaches_the_critic(in_tmp, monkeypatch):
    assert m.parse_args(["--arch", "resnet"]).dequantize and not m.parse_args([]).dequantize
    assert m.parse_args(["--config", "paper"]).dequantize
    calls = []
    real = m.dequantize
    monkeypatch.setattr(m, "dequantize", lambda x: calls.append(x.shape) or real(x))
    m.main([*tiny_args(m), "--arch", "resnet", "--n-critic", "2", "--steps", "1", "--out", "r"])
    assert len(calls) == 2 and calls[0] == (16, 1, 16, 16)  # every critic step's real batch


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--dataset", "text", "--dequantize"], "--dequantize"),
        (["--n-critic", "0"], "--n-critic"),
        (["--lambda-gp", "-1"], "--lambda-gp"),
        (["--lr-decay", "-5"], "--lr-decay"),
    ],
)
def test_bad_input(in_tmp, capsys, flags, words):
    assert_one_line_error(m, flags, words, capsys)
