"""BEGAN-specific checks: L1 loss, k_t (clipped, no gradient, updated from one forward of one D),
M_global, the learning-rate halving when M stalls (and its exact resume), the M curve,
the architecture options and the bad input."""

import math
import os

import pytest
import torch
from PIL import Image

from conftest import load_script, tiny_args
from common.run import read_metrics

m = load_script("began")


def test_reconstruction_loss_is_l1_per_sample():
    v = torch.zeros(2, 1, 1, 2)
    r = torch.tensor([[[[1.0, -3.0]]], [[[0.5, 0.5]]]])
    # L2 would give 5 and 0.25
    assert torch.equal(m.reconstruction_loss(v, r), torch.tensor([2.0, 0.5]))


def test_k_is_clipped_to_0_1():
    one, zero = torch.tensor(1.0), torch.tensor(0.0)
    up = m.update_k(torch.tensor(0.9995), l_real=one, l_fake=zero, gamma=1.0, lambda_k=0.001)
    down = m.update_k(torch.tensor(0.0005), l_real=zero, l_fake=one, gamma=1.0, lambda_k=0.001)
    assert up.item() == 1.0 and down.item() == 0.0
    k = m.update_k(
        torch.tensor(0.5),
        l_real=torch.tensor(0.2),
        l_fake=torch.tensor(0.06),
        gamma=0.5,
        lambda_k=0.001,
    )
    assert k.item() == pytest.approx(0.5 + 0.001 * (0.1 - 0.06))


def test_k_is_a_constant():
    real_l = torch.tensor([0.2, 0.4], requires_grad=True)
    fake_l = torch.tensor([0.1, 0.3], requires_grad=True)
    k = torch.tensor(0.25, requires_grad=True)
    m.d_loss(real_l, fake_l, k).backward()
    assert k.grad is None
    assert torch.allclose(fake_l.grad, torch.tensor([-0.125, -0.125]))
    assert torch.allclose(real_l.grad, torch.tensor([0.5, 0.5]))
    assert not m.update_k(k, real_l.mean(), fake_l.mean()).requires_grad


def test_convergence_measure():
    for l_fake in (0.05, 0.15):  # |gamma L(x) - L(G(z))| = 0.05 from below and from above
        got = m.convergence_measure(torch.tensor(0.2), torch.tensor(l_fake), gamma=0.5)
        assert got.item() == pytest.approx(0.2 + 0.05)
    bf16 = torch.tensor(0.2, dtype=torch.bfloat16)
    assert m.convergence_measure(bf16, torch.tensor(0.1)).dtype == torch.float32


def test_stall_rule():
    assert not m.stalled(5.0, math.inf)  # the first window
    assert m.stalled(0.995, 1.0) and m.stalled(1.2, 1.0)  # less than 1% better, or worse
    assert not m.stalled(0.98, 1.0)


def run_log(out, steps, *extra):
    m.main(
        [
            *tiny_args(m),
            "--steps",
            str(steps),
            "--lr-decay-patience",
            "1",
            "--sample-every",
            "3",
            "--out",
            out,
            *extra,
        ]
    )
    return read_metrics(os.path.join(out, "metrics.jsonl"))


def test_training_k_m_and_lr_halving(in_tmp):
    """Every step is a window (patience 1): the lr halves exactly when M stalls; k stays in
    [0, 1]; the k update used G's own loss; resume continues k and the decay exactly."""
    log = run_log("full", 8, "--no-bn")  # the tiny nets without batch norm: k rises at the start
    a = m.parse_args(tiny_args(m))
    lr0, gamma, best, scale = a.lr_g, a.gamma, math.inf, 1.0
    for r in log:
        if m.stalled(r["M"], best):
            scale /= 2
        best = min(best, r["M"])
        assert r["lr_g"] == pytest.approx(lr0 * scale, rel=1e-6) and 0 <= r["k"] <= 1
        want = r["l_real"] + abs(gamma * r["l_real"] - r["l_fake"])
        assert r["M"] == pytest.approx(want, rel=1e-5)
    assert scale < 1, "no stall in 8 steps: the test no longer exercises the decay"
    assert log[0]["k"] > 0  # gamma L(x) > L(G(z)) at the start: k rises from k_0 = 0
    png = Image.open("full/convergence.png")  # drawn at the end of the run from metrics.jsonl
    assert png.size == (640, 360)
    assert (31, 119, 180) in {c for _, c in png.convert("RGB").getcolors(1 << 16)}  # the curve

    part = run_log("part", 5, "--no-bn")
    m.main(["--resume", "auto", "--out", "part", "--steps", "8"])

    def strip(rs):
        return [{k: v for k, v in r.items() if k not in ("img_per_s", "time")} for r in rs]

    assert strip(read_metrics("part/metrics.jsonl")) == strip(log) and part
    a, b = (
        torch.load(f"{d}/checkpoints/last.pt", weights_only=True)["equilibrium"]
        for d in ("full", "part")
    )
    assert set(a) == {"k", "m_sum", "m_best", "lr_scale"}
    assert torch.equal(a["k"], b["k"]) and torch.equal(a["m_sum"], b["m_sum"])
    assert (a["m_best"], a["lr_scale"]) == (b["m_best"], b["lr_scale"])
    assert a["lr_scale"] == scale and os.path.exists("part/convergence.png")


def test_k_uses_one_forward_of_one_d(in_tmp):
    """k_t's balance gamma L(x) - L(G(z)) takes both losses from one forward of one D, the one
    that D's loss L(x) - k_t L(G(z)) was computed with (before D's update), as carpedm20's
    trainer.py does; not L(G(z)) from the D after its update (G's loss)."""
    # fp32, every step logged (tiny_args: --log-every 1); a fast D and a high gain, so that D's
    # step moves L(G(z)) and k_t is well above 0
    flags = ["--no-bn", "--amp", "off", "--lr-d", "1e-2", "--lambda-k", "0.5"]
    log = run_log("run", 6, *flags)
    a = m.parse_args(tiny_args(m, *flags))
    k, moved = 0.0, False
    for r in log:
        # D's loss was made of this very L(x) and L(G(z)), with k_t before its update
        assert r["d_loss"] == pytest.approx(r["l_real"] - k * r["l_fake"], rel=1e-6, abs=1e-8)
        want = min(max(k + a.lambda_k * (a.gamma * r["l_real"] - r["l_fake"]), 0.0), 1.0)
        assert r["k"] == pytest.approx(want, rel=1e-6, abs=1e-8)
        # the two Ds differ: with G's loss (D after its step) the first assert would fail
        moved |= k * abs(r["l_fake"] - r["g_loss"]) > 1e-3 * abs(r["d_loss"])
        k = r["k"]
    assert moved, "k_t stayed at 0 or D did not move: the test no longer tells the two Ds apart"


@pytest.mark.parametrize("size", [8, 16, 64])
def test_architecture_options(size):
    args = m.parse_args([*m.SMOKE_ARGS, "--image-size", str(size), "--skip", "--bn"])
    G, D = m.build_models(args, channels=3, num_classes=0)
    x = G(m.latents(2, args.z_dim))
    assert x.shape == (2, 3, size, size) and D(x).shape == (2,)
    assert D.reconstruct(x).shape == x.shape
    assert D.encoder.net(x).shape[-2:] == (8, 8)  # the smallest feature map is 8x8 (Sec. 4.1)

    def generator(*flags):
        return m.build_models(
            m.parse_args([*m.SMOKE_ARGS, "--image-size", str(size), *flags]), 3, 0
        )[0]

    def has_bn(net):
        return any(isinstance(layer, torch.nn.BatchNorm2d) for layer in net.modules())

    plain, skip = generator("--no-bn"), generator("--skip", "--no-bn")
    assert has_bn(G) and not has_bn(plain)
    grown = sum(p.numel() for p in skip.parameters()) > sum(p.numel() for p in plain.parameters())
    assert grown == (size > 8)  # skip connections widen the first conv after each upsampling


DIGITS_RECIPE = {
    "image_size": 16,
    "batch_size": 32,
    "steps": 3200,
    "lr_g": 4e-4,
    "lr_d": 4e-4,
    "z_dim": 64,
    "gamma": 1.0,
    "lambda_k": 0.05,
    "nh": 32,
    "n_filters": 16,
    "bn": True,
    "beta1": 0.5,
    "beta2": 0.999,
    "lr_decay_patience": 1000,
    "ema_decay": 0.999,
    "ema_warmup": True,
    "skip": False,
}


def settings(args, keys):
    return {k: getattr(args, k) for k in keys}


def test_auto_cpu_digits_is_the_digits_recipe():
    """--config auto on a CPU resolves the embedded digits to the digits recipe, unchanged."""
    a = m.parse_args(["--assume", "cpu"])
    assert settings(a, DIGITS_RECIPE) == DIGITS_RECIPE and a.chosen == {}
    b = m.parse_args(["--device", "cpu"])  # this machine, told to use its CPU
    assert settings(b, DIGITS_RECIPE) == DIGITS_RECIPE


def test_auto_cpu_above_16_is_the_recipe_for_2000_steps():
    """Above 16x16 on a CPU (MNIST at 32x32): the digits recipe for 2000 steps."""
    a = m.parse_args(["--assume", "cpu", "--dataset", "mnist"])
    want = {**DIGITS_RECIPE, "image_size": 32, "steps": 2000}
    assert settings(a, want) == want
    b = m.parse_args(["--assume", "cpu", "--dataset", "cifar10", "--lr-g", "1e-4"])
    assert (b.lr_g, b.lr_d, b.steps) == (1e-4, 4e-4, 2000)  # a given flag wins


def test_auto_cuda_celeba_is_the_reference_run():
    """--config auto on CUDA, CelebA at 64x64: carpedm20/BEGAN-tensorflow's config.py (batch 16,
    conv_hidden_num 128, z_num 64, d_lr = g_lr = 8e-5, lr_update_step 100,000, max_step
    500,000, gamma 0.5, lambda_k 0.001), TensorFlow's Adam beta1 0.9, the paper's nets (no
    batch norm), no EMA; the global batch split over the processes."""
    want = {
        "image_size": 64,
        "batch_size": 16,
        "steps": 500_000,
        "lr_g": 8e-5,
        "lr_d": 8e-5,
        "z_dim": 64,
        "gamma": 0.5,
        "lambda_k": 0.001,
        "nh": 64,
        "n_filters": 128,
        "bn": False,
        "beta1": 0.9,
        "beta2": 0.999,
        "lr_decay_patience": 100_000,
        "ema_decay": 0.0,
        "skip": False,
    }
    a = m.parse_args(["--assume", "cuda:1", "--dataset", "celeba"])
    assert settings(a, want) == want
    b = m.parse_args(["--assume", "cuda:8", "--dataset", "celeba"])  # 8 x 2 images a step
    assert settings(b, want) == {**want, "batch_size": 2}
    c = m.parse_args(["--assume", "cuda:1", "--dataset", "celeba", "--batch-size", "32"])
    assert (c.batch_size, c.steps, c.lr_decay_patience) == (32, 250_000, 50_000)  # same images
    d = m.parse_args(["--assume", "cuda:32", "--dataset", "celeba"])  # at least 1 a process
    assert (d.batch_size, d.steps) == (1, 250_000)


def test_paper_defaults():
    """--config paper gives the paper's settings (flags given beside it win); the defaults
    (--config auto on a CPU) are the digits recipe."""
    a = m.parse_args(["--config", "paper"])
    got = (
        a.gamma,
        a.lambda_k,
        a.nh,
        a.n_filters,
        a.z_dim,
        a.lr_g,
        a.lr_d,
        a.batch_size,
        a.beta1,
        a.bn,
    )
    assert got == (0.5, 0.001, 64, 64, 64, 1e-4, 1e-4, 16, 0.9, False)
    b = m.parse_args(["--config", "paper", "--gamma", "0.7", "--bn"])
    assert (b.gamma, b.bn, b.lambda_k) == (0.7, True, 0.001)
    d = m.parse_args(["--assume", "cpu"])
    got = (d.gamma, d.lambda_k, d.nh, d.n_filters, d.bn, d.batch_size, d.lr_g, d.lr_d)
    assert got == (1.0, 0.05, 32, 16, True, 32, 4e-4, 4e-4)
    assert m.parse_args(["--no-bn"]).bn is False
    z = m.latents(1000, 64)
    assert z.min() >= -1 and z.max() <= 1 and z.mean().abs() < 0.05  # U[-1, 1] (Sec. 3.5)


def test_sampling_draws_uniform_latents(in_tmp):
    """--sample and --interpolate draw z ~ U[-1, 1], the latents G was trained on."""
    from common.run import sample

    m.main([*tiny_args(m), "--steps", "1", "--out", "run"])
    generate = m.load_generator("run/checkpoints/last.pt")
    assert generate.latent is m.latents and generate.num_classes == 0
    zs = []

    def recording(path, device="cpu", use_ema=True):  # load_generator, noting G's inputs
        g = m.load_generator(path, device, use_ema)
        g.model.register_forward_pre_hook(lambda module, inputs: zs.append(inputs[0]))
        return g

    flags = ["--checkpoint", "run", "--out", "s", "--device", "cpu", "--seed", "3"]
    args = m.parse_args(["--sample", "3", "--interpolate", "4", *flags])
    sample("began", args, recording)  # common.run's --sample command
    z = torch.cat(zs)
    keys = m.latents(4, z.shape[1], torch.Generator().manual_seed(3))
    assert z.shape == (12, 64)
    torch.testing.assert_close(z[0::4], keys[:-1])  # each walk starts at a uniform key
    torch.testing.assert_close(z[3::4], keys[1:])  # and ends at the next
    assert len(os.listdir("s")) == 2  # the grid and the GIF


@pytest.mark.parametrize("gamma", ["0", "-0.5", "1.5"])
def test_bad_gamma_one_line(gamma, in_tmp, capsys):
    with pytest.raises(SystemExit) as e:
        m.main([*tiny_args(m), "--steps", "1", "--gamma", gamma])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 1 and len(err) == 1 and "--gamma" in err[0], err
