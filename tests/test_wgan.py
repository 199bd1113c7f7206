"""wgan.py's own checks: clipping, the critic schedule, fresh batches, the losses, the
logistic-mixture output head and the script's bad input."""

import json
import os

import pytest
import torch

from conftest import assert_one_line_error, load_script, tiny_args

m = load_script("wgan")


def strip(run_dir):
    """metrics.jsonl without the wall-clock fields."""
    return [
        {k: v for k, v in json.loads(line).items() if k not in ("img_per_s", "time")}
        for line in open(f"{run_dir}/metrics.jsonl")
    ]


def test_paper_defaults():
    a = m.parse_args([])
    assert (a.batch_size, a.lr_g, a.lr_d, a.n_critic, a.clip, a.n_critic_boost, a.z_dim) == (
        64,
        5e-5,
        5e-5,
        5,
        0.01,
        0,
        100,
    )
    assert a.output == "tanh"
    G, D = m.build_models(a, 1, 0)
    # the authors' DCGAN critic has batch norm
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in D.modules())
    assert not any(isinstance(x, (torch.nn.Sigmoid, torch.nn.Tanh)) for x in D.modules())


def test_losses_have_no_sigmoid_or_log():
    real, fake = torch.tensor([3.0, 5.0]), torch.tensor([1.0, -1.0])
    assert m.d_loss(real, fake).item() == -4.0  # -(E f(x) - E f(G(z)))
    assert m.g_loss(fake).item() == 0.0 and m.g_loss(torch.tensor([2.0])).item() == -2.0


def test_critic_schedule():
    boosted = [s for s in range(1501) if m.critic_iters(s, 5, 100) == 100]
    assert boosted == list(range(25)) + [500, 1000, 1500]
    assert {m.critic_iters(s, 5, 100) for s in range(1501)} == {5, 100}
    assert {m.critic_iters(s, 3, 0) for s in range(1001)} == {3}  # --n-critic-boost 0 turns it off


def test_clipping_fresh_batches_and_log(in_tmp):
    """After training, every critic parameter (BN gains and biases too) lies in [-c, c]; each
    critic step took its own real batch; the log carries the Wasserstein estimate."""
    res = m.main(
        [*tiny_args(m), "--steps", "2", "--n-critic-boost", "3", "--clip", "0.005", "--out", "run"]
    )
    params = list(res["D"].parameters())
    assert all(p.abs().max().item() <= 0.005 for p in params)
    assert any(p.abs().max().item() == pytest.approx(0.005) for p in params)  # clipping was active
    ckpt = torch.load("run/checkpoints/last.pt", weights_only=True)
    # 3 critic steps per G step, one batch each
    assert (ckpt["batches"]["epoch"], ckpt["batches"]["batch"]) == (0, 2 * 3)
    recs = [json.loads(line) for line in open("run/metrics.jsonl")]
    assert [r["n_critic"] for r in recs] == [3, 3]
    assert all(r["wasserstein"] == pytest.approx(r["d_real"] - r["d_fake"]) for r in recs)


def test_clip_every_parameter():
    D = m.Critic(16, 3, 4)
    with torch.no_grad():
        for p in D.parameters():
            p.normal_(0, 1)
    m.clip_weights(D, 0.01)
    assert all(p.abs().max().item() <= 0.01 for p in D.parameters())


@pytest.mark.parametrize("channels", [1, 3])
def test_dmol_head_samples_on_the_data_grid_and_is_differentiable(channels):
    torch.manual_seed(0)
    G = m.Generator(z_dim=8, image_size=8, channels=channels, width=4, output="dmol", mixtures=3)
    G.apply(m.init_weights)
    x = G(torch.randn(5, 8))
    assert x.shape == (5, channels, 8, 8) and x.min() >= -1 and x.max() <= 1
    levels = (x.detach() + 1) * 127.5
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # 256 grey levels, like the data
    x.mean().backward()
    head = G.net[-2]  # the transposed conv that outputs the mixture parameters
    k = 3
    grad = head.bias.grad
    assert grad[:k].abs().sum() > 0  # component logits (Gumbel-softmax, straight-through)
    assert grad[k : k + channels * k].abs().sum() > 0  # means
    # log-scales (reparameterised)
    assert grad[k + channels * k : k + 2 * channels * k].abs().sum() > 0


def test_dmol_train_resume_sample(in_tmp):
    """The head's pixel noise moves neither the resume nor the training RNG: resumes are exact."""
    common = [
        *tiny_args(m),
        "--output",
        "dmol",
        "--mixtures",
        "3",
        "--n-critic-boost",
        "0",
        "--n-critic",
        "2",
        "--ckpt-every",
        "2",
        "--sample-every",
        "1",
    ]
    m.main([*common, "--steps", "4", "--out", "full"])
    m.main([*common, "--steps", "2", "--out", "part"])
    m.main(["--resume", "auto", "--out", "part", "--steps", "4"])
    assert strip("full") == strip("part")
    a, b = (torch.load(f"{r}/checkpoints/last.pt", weights_only=True) for r in ("full", "part"))
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])
    generate = m.load_generator("full/checkpoints/last.pt")
    assert torch.equal(generate(4, seed=1), generate(4, seed=1))
    assert not torch.equal(generate(4, seed=1), generate(4, seed=2))
    m.main(
        [
            "--sample",
            "4",
            "--checkpoint",
            "full",
            "--out",
            "s",
            "--device",
            "cpu",
            "--temperature",
            "0.5",
        ]
    )
    m.main(
        [
            "--sample",
            "2",
            "--interpolate",
            "3",
            "--checkpoint",
            "full",
            "--out",
            "s",
            "--device",
            "cpu",
            "--seed",
            "3",
        ]
    )
    assert sorted(f.split("_")[0] for f in os.listdir("s")) == ["interpolate"] * 2 + ["sample"]


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--n-critic", "0"], "--n-critic"),
        (["--clip", "0"], "--clip"),
        (["--clip", "-0.01"], "--clip"),
        (["--n-critic-boost", "-1"], "--n-critic-boost"),
        (["--output", "dmol", "--mixtures", "0"], "--mixtures"),
    ],
)
def test_bad_input(in_tmp, capsys, flags, words):
    assert_one_line_error(m, flags, words, capsys)
