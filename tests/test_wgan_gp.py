"""wgan_gp.py's own checks: the gradient penalty (value, flattened norm, two-sided,
create_graph, fp16 scaling), per-sample epsilon, no batch norm in the critic, the ResNet
of App. C, --lr-decay and the script's bad input."""
import json

import pytest
import torch

from conftest import assert_one_line_error, load_script, tiny_args

m = load_script("wgan_gp")


def strip(run_dir):
    """metrics.jsonl without the wall-clock fields."""
    return [{k: v for k, v in json.loads(line).items() if k not in ("img_per_s", "time")}
            for line in open(f"{run_dir}/metrics.jsonl")]


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
        64, 1e-4, 1e-4, 0.0, 0.9, 10.0, 5, 128)
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
    args = m.parse_args(["--arch", "resnet", "--g-width", "8", "--d-width", "8",
                         "--image-size", str(size)])
    G, D = m.build_models(args, channels=3, num_classes=0)
    x = G(torch.randn(2, args.z_dim))
    assert x.shape == (2, 3, size, size) and D(x).shape == (2,)
    if size == 32:  # Table 4: three up-blocks; the first block, one down-block and two plain blocks
        assert sum(isinstance(b, m.ResBlock) for b in G.net) == 3
        assert [b.resample for b in D.net] == ["down", "down", None, None] and D.net[0].first


def test_resnet_lr_decay_resume(in_tmp):
    common = [*tiny_args(m), "--arch", "resnet", "--lr-decay", "4", "--n-critic", "2",
              "--ckpt-every", "2", "--sample-every", "2"]
    m.main([*common, "--steps", "4", "--out", "full"])
    m.main([*common, "--steps", "2", "--out", "part"])
    m.main(["--resume", "auto", "--out", "part", "--steps", "4"])
    assert strip("full") == strip("part")
    ckpt = torch.load("full/checkpoints/last.pt", weights_only=True)
    # set before the last step
    assert ckpt["opt_g"]["param_groups"][0]["lr"] == pytest.approx(1e-4 * (1 - 3 / 4))
    assert all(torch.isfinite(torch.tensor(r["gp"])) for r in strip("full"))
    m.main(["--sample", "4", "--checkpoint", "full", "--out", "s", "--device", "cpu"])


@pytest.mark.parametrize("flags,words", [
    (["--n-critic", "0"], "--n-critic"),
    (["--lambda-gp", "-1"], "--lambda-gp"),
    (["--lr-decay", "-5"], "--lr-decay"),
])
def test_bad_input(in_tmp, capsys, flags, words):
    assert_one_line_error(m, flags, words, capsys)
