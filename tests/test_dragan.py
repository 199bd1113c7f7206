"""DRAGAN's own checks: the gradient penalty (per-sample flattened norm, on logits, fp16
recipe, autograd.grad outside bf16 autocast), the two-sided perturbation of real data with
one alpha per sample, a D whose outputs do not mix samples, the paper's defaults and the
bad input."""

import json

import pytest
import torch

from conftest import assert_one_line_error, load_script, tiny_args

m = load_script("dragan")


def linear_d(w):
    """A D whose logit is <w, x>: its input gradient is w everywhere."""
    return lambda x, y=None: (x * w).flatten(1).sum(1)


def penalty(d, x, scale=1.0):
    """The penalty as train() computes it: D's logits at x_hat, then gradient_penalty."""
    x = x.detach().requires_grad_(True)
    return m.gradient_penalty(d(x), x, scale)


def test_penalty_zero_for_unit_gradient_and_positive_otherwise():
    x = torch.randn(8, 1, 4, 4)
    w = torch.randn(1, 1, 4, 4)
    w = w / w.norm()
    assert penalty(linear_d(w), x).item() == pytest.approx(0.0, abs=1e-10)
    assert penalty(linear_d(2 * w), x).item() == pytest.approx(1.0)  # (2 - 1)^2
    # On the logit: a sigmoid on top would scale the gradient down and make the penalty positive.
    assert penalty(lambda x, y=None: torch.sigmoid(linear_d(w)(x)), x).item() > 0.1


def test_penalty_norm_is_per_sample_over_all_pixels():
    """D(x) = 1/2 ||x||^2 has gradient x: the norms of two samples are 1 and 3, so the penalty
    is the mean of (1 - 1)^2 and (3 - 1)^2 = 2."""
    x = torch.zeros(2, 3, 4, 4)
    x[0, 0, 0, 0] = 1.0
    x[1] = 3.0 / 48**0.5  # norm 3, spread over all 48 values
    d = lambda x, y=None: 0.5 * x.pow(2).flatten(1).sum(1)  # noqa: E731
    assert penalty(d, x).item() == pytest.approx(2.0)


def test_penalty_trains_d_and_fp16_recipe_unscales():
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 1))
    d = lambda x, y=None: net(x).view(-1)  # noqa: E731
    x = torch.randn(4, 1, 4, 4)
    gp = penalty(d, x)
    # create_graph=True: the penalty reaches D's weights (not the last bias: it has no input
    # gradient).
    gp.backward()
    trained = (net[1].weight, net[1].bias, net[3].weight)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trained)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    one = torch.ones(())
    scaled = penalty(d, x, scaler.scale(one))  # train()'s way of passing fp16's loss scale
    assert scaled.item() == pytest.approx(gp.item(), rel=1e-5)  # scaled before grad, unscaled after
    off = m.make_scaler(torch.device("cpu"), "off").scale(one)
    assert penalty(d, x, off).item() == pytest.approx(gp.item(), rel=1e-6)


def test_penalty_under_bf16_autocast_is_fp32_and_close_to_fp32():
    """D's forward on x_hat under CPU bf16 autocast, autograd.grad and the norm outside it:
    the penalty is fp32, finite, close to the fp32 penalty, and trains D."""
    args = m.parse_args([*m.SMOKE_ARGS, "--image-size", "32"])
    torch.manual_seed(0)
    _, D = m.build_models(args, 1, 0)
    x = m.perturb(torch.rand(16, 1, 32, 32) * 2 - 1, 0.5).requires_grad_(True)
    ref = m.gradient_penalty(D(x), x)
    with m.autocast(torch.device("cpu"), "bf16"):
        logits = D(x)
    assert logits.dtype == torch.bfloat16
    gp = m.gradient_penalty(logits, x)
    assert gp.dtype == torch.float32 and torch.isfinite(gp)
    assert gp.item() == pytest.approx(ref.item(), rel=0.05)
    gp.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in D.parameters())
    assert D.out.weight.grad.abs().sum() > 0


def test_training_takes_the_penalty_gradient_outside_autocast(in_tmp, monkeypatch):
    """train() under --amp bf16 calls autograd.grad with autocast off (PyTorch's AMP recipe)."""
    grad, seen = torch.autograd.grad, []

    def spy(*a, **kw):
        seen.append(torch.is_autocast_enabled("cpu"))
        return grad(*a, **kw)

    monkeypatch.setattr(torch.autograd, "grad", spy)
    m.main([*tiny_args(m), "--steps", "2", "--amp", "bf16", "--out", "run"])
    assert seen == [False, False]
    rows = [json.loads(line) for line in open("run/metrics.jsonl")]
    assert all(r["gp"] > 0 and r["d_loss"] > r["gp"] for r in rows)


def test_perturbation_two_sided_per_sample_alpha_batch_std():
    torch.manual_seed(0)
    x = torch.cat([torch.zeros(256, 1, 16, 16), 0.8 * torch.randn(256, 1, 16, 16)])
    x_hat = m.perturb(x, 0.5)
    assert x_hat.shape == x.shape and x_hat.dtype == x.dtype
    assert torch.equal(x, torch.cat([torch.zeros(256, 1, 16, 16), x[256:]]))  # x is untouched
    d = (x_hat - x).flatten(1)
    assert abs((d > 0).float().mean().item() - 0.5) < 0.02  # two-sided, not the official U(0, 1)
    # Each sample's noise is delta * alpha with one alpha ~ U(0, 1): its std over the pixels,
    # in units of 0.5 * std(batch), spreads over (0, 1) with mean 1/2 (per-pixel alphas would
    # give every sample about sqrt(1/3)).
    r = d.std(1) / (0.5 * x.std())
    assert r.max() < 1.15 and r.min() < 0.05 and r.max() > 0.9
    assert abs(r.mean().item() - 0.5) < 0.05
    # One std for the whole batch: the all-zero samples are perturbed as much as the others.
    assert abs(r[:256].mean() - r[256:].mean()) < 0.1
    assert m.perturb(x, 0.0).equal(x)


def test_discriminator_has_no_batch_coupling():
    args = m.parse_args([*m.SMOKE_ARGS, "--image-size", "32"])
    _, D = m.build_models(args, channels=1, num_classes=0)
    batch_norm = torch.nn.modules.batchnorm._BatchNorm
    assert not any(isinstance(layer, batch_norm) for layer in D.modules())
    x = torch.randn(6, 1, 32, 32)
    torch.testing.assert_close(D(x)[:2], D(x[:2]))  # a sample's logit ignores the rest of its batch


def test_paper_defaults():
    a = m.parse_args([])
    got = (a.batch_size, a.lr_g, a.lr_d, a.beta1, a.beta2, a.z_dim, a.lambda_gp, a.perturb_std)
    assert got == (128, 1e-4, 1e-4, 0.5, 0.9, 100, 10.0, 0.5)


def test_training_logs_the_penalty(in_tmp):
    m.main([*tiny_args(m), "--steps", "2", "--conditional", "--out", "run"])
    rows = [json.loads(line) for line in open("run/metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2] and all(r["gp"] > 0 for r in rows)
    generate = m.load_generator("run/checkpoints/last.pt")  # the checkpoint knows the classes
    assert generate.num_classes == 10 and generate(3, labels=torch.tensor([0, 5, 9])).shape[0] == 3


@pytest.mark.parametrize("flags", [["--lambda-gp", "-1"], ["--perturb-std", "-0.5"]])
def test_bad_input(flags, in_tmp, capsys):
    assert_one_line_error(m, flags, flags[0], capsys)
