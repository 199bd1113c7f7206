"""SAGAN-specific checks: the attention block (softmax over keys, gamma = 0, the paper's
equations against a loop), spectral norm on every layer with a persistent, checkpointed
u that depends on W only (so torchrun ranks agree), orthogonal init, the hinge loss,
the paper's defaults and attention placement, conditional BN and the projection D, a
grid with one row per class, --attention-map (for more images than one generated chunk),
and the unconditional fallback."""

import os

import pytest
import torch
import torch.nn as nn
from PIL import Image

from conftest import ROOT, load_script, run_torchrun, tiny_args

m = load_script("sagan")


def test_attention_matches_the_equations():
    torch.manual_seed(0)
    a = m.SelfAttention(16).eval()  # eval: spectral norm without a power-iteration step
    x = torch.randn(2, 16, 3, 4)
    assert a.gamma.item() == 0 and torch.equal(a(x), x)  # gamma starts at 0, residual kept (Eq. 3)
    with torch.no_grad():
        a.gamma.fill_(0.7)
    a.keep = slice(None)  # every query
    y = a(x)
    (beta,) = a.beta  # (B, queries j, keys i), one entry per forward
    # softmax over the keys
    assert beta.shape == (2, 12, 12) and torch.allclose(beta.sum(-1), torch.ones(2, 12))
    f, g, h = (conv(x).flatten(2) for conv in (a.f, a.g, a.h))
    ref = torch.empty_like(y)
    for b in range(2):
        for j in range(12):
            # s_ij = f(x_i)^T g(x_j), Eq. 1
            s = torch.stack([f[b, :, i] @ g[b, :, j] for i in range(12)])
            bj = torch.softmax(s, 0)
            assert torch.allclose(bj, beta[b, j], atol=1e-6)
            o = sum(bj[i] * h[b, :, i] for i in range(12))  # Eq. 2 before v
            ref[b, :, j // 4, j % 4] = 0.7 * (a.v.weight[:, :, 0, 0] @ o) + x[b, :, j // 4, j % 4]
    assert torch.allclose(y, ref, atol=1e-5)


def sn_layers(module):
    kinds = (nn.Conv2d, nn.Linear, nn.Embedding)
    return [mod for mod in module.modules() if isinstance(mod, kinds)]


@pytest.mark.parametrize("nc", [0, 10])
def test_spectral_norm_on_every_layer_and_orthogonal_init(nc):
    args = m.parse_args(["--g-width", "4", "--d-width", "4", "--image-size", "32"])
    G, D = m.build_models(args, 1, nc)
    cbn = {
        id(e)
        for net in (G, D)
        for mod in net.modules()
        if isinstance(mod, m.ConditionalBatchNorm) and mod.num_classes
        for e in (mod.gain, mod.bias)
    }
    # CBN gains and their shared embedding: no SN (authors' code; BigGAN's shared embedding)
    cbn.add(id(G.shared))
    layers = [layer for net in (G, D) for layer in sn_layers(net) if id(layer) not in cbn]
    assert len(layers) > 20 and (D.embed in layers) == bool(nc)
    for layer in layers:
        assert torch.nn.utils.parametrize.is_parametrized(layer, "weight"), layer
        w = layer.parametrizations.weight.original.flatten(1)
        rows, cols = w.shape
        gram = w @ w.T if rows <= cols else w.T @ w  # orthogonal init
        assert torch.allclose(gram, torch.eye(min(rows, cols)), atol=1e-4), layer
    assert all(isinstance(net.attention, m.SelfAttention) for net in (G, D))
    # After power iterations (training forwards), every weight has spectral norm 1.
    G.train()
    for _ in range(30):
        G(torch.randn(4, args.z_dim), torch.randint(max(nc, 1), (4,)) if nc else None)
    for layer in sn_layers(G):
        if torch.nn.utils.parametrize.is_parametrized(layer, "weight"):
            assert abs(torch.linalg.matrix_norm(layer.weight.flatten(1), 2).item() - 1) < 1e-2


def test_power_iteration_vector_is_persistent_and_depends_on_w_only():
    """u moves in training forwards only, is in the state_dict (so in checkpoints), and two
    copies with the same weights fed different batches (two torchrun ranks) keep equal u."""
    args = m.parse_args(["--g-width", "4", "--d-width", "4", "--image-size", "32"])
    torch.manual_seed(0)
    _, D1 = m.build_models(args, 1, 10)
    with torch.no_grad():  # away from the orthogonal init, where u is already a fixed point
        for p in D1.parameters():
            p.add_(0.1 * torch.randn_like(p))
    D2 = m.Discriminator(32, 1, 4, 10, 8)
    D2.load_state_dict(D1.state_dict())
    keys = [k for k in D1.state_dict() if k.endswith("._u")]
    assert len(keys) == len(m.spectral_norm_buffers(D1)) // 2 > 10
    u0 = [b.clone() for b in m.spectral_norm_buffers(D1)]
    D1.eval()(torch.randn(4, 1, 32, 32), torch.randint(10, (4,)))
    assert all(torch.equal(a, b) for a, b in zip(u0, m.spectral_norm_buffers(D1)))  # eval: u fixed
    D1.train()
    D1(torch.randn(4, 1, 32, 32), torch.randint(10, (4,)))
    D2(torch.rand(8, 1, 32, 32), torch.randint(10, (8,)))
    moved = [not torch.equal(a, b) for a, b in zip(u0, m.spectral_norm_buffers(D1))]
    assert sum(moved) > 0.8 * len(moved)  # one power iteration each (a 1-row W has a constant u)
    assert all(
        torch.equal(a, b) for a, b in zip(m.spectral_norm_buffers(D1), m.spectral_norm_buffers(D2))
    )


def test_one_power_iteration_per_step(in_tmp, monkeypatch):
    """D's u takes one power-iteration step per training step (on the real batch), as the
    authors' update_collection; G's takes one too (its one forward per step)."""
    sn_class = type(m.Discriminator(16, 1, 2, 0, 4).out.parametrizations.weight[0])
    calls = {}
    power_method = sn_class._power_method

    def counted(self, *a, **k):
        calls[id(self)] = calls.get(id(self), 0) + 1
        return power_method(self, *a, **k)

    monkeypatch.setattr(sn_class, "_power_method", counted)
    build = m.build_models

    def build_then_count(*a):  # building runs power iterations too (torch's registration)
        nets = build(*a)
        calls.clear()
        return nets

    monkeypatch.setattr(m, "build_models", build_then_count)
    res = m.main([*tiny_args(m), "--steps", "3", "--out", "run"])
    for net in ("D", "G"):
        layers = [mod for mod in res[net].modules() if hasattr(mod, "_u")]
        assert len(layers) > 10 and all(mod.training for mod in layers)  # switched back on
        assert [calls.get(id(mod)) for mod in layers] == [3] * len(layers), net


def test_auto_on_a_cpu_keeps_the_digits_defaults_and_shortens_at_32():
    args = m.parse_args(["--assume", "cpu"])
    assert args.chosen == {} and args.image_size == 16
    assert (
        args.g_width,
        args.d_width,
        args.batch_size,
        args.steps,
        args.lr_g,
        args.lr_d,
        args.shared_dim,
        args.ema_decay,
        args.attention_res,
    ) == (16, 32, 16, 1500, 1e-4, 4e-4, 128, 0.999, 4)
    for data in (["--dataset", "mnist"], ["--dataset", "cifar10"]):
        args = m.parse_args(["--assume", "cpu", *data])
        assert args.image_size == 32 and args.chosen == {"steps": 1300}
        assert (args.g_width, args.d_width, args.batch_size, args.lr_g, args.lr_d) == (
            16,
            32,
            16,
            1e-4,
            4e-4,
        )


@pytest.mark.parametrize(
    "assume, batch, steps",
    [
        ("cuda:1", 256, 1000000),
        ("cuda:4", 64, 1000000),
        ("cuda:8", 32, 1000000),
        ("cuda:1:16", 64, 4000000),
    ],
)  # 16 GiB: the authors' 64 per GPU, 256M images all the same
def test_auto_on_cuda_is_the_authors_imagenet_run(assume, batch, steps):
    """ImageNet-like folder at 128x128 (Sec. 5; model.py, train_imagenet.py, README)."""
    a = m.parse_args(["--dataset", "folder", "--image-size", "128", "--assume", assume])
    assert (a.g_width, a.d_width, a.z_dim, a.shared_dim, a.attention_res) == (64, 64, 128, 0, 32)
    assert (a.batch_size, a.steps) == (batch, steps)
    assert (a.lr_g, a.lr_d, a.beta1, a.ema_decay) == (1e-4, 4e-4, 0.0, 0.9999)


def test_auto_on_cuda_cifar10():
    """CIFAR-10: the authors' widths on the script's nets at 32x32 (G 512 at 4x4 to 64 at
    32x32, D 64 to 256), the paper's batch and schedule."""
    a = m.parse_args(["--dataset", "cifar10", "--assume", "cuda:1"])
    assert (a.image_size, a.g_width, a.d_width, a.batch_size, a.steps, a.attention_res) == (
        32,
        64,
        64,
        256,
        1000000,
        8,
    )
    assert (a.lr_g, a.lr_d, a.shared_dim) == (1e-4, 4e-4, 0)
    assert m.g_widths(32, 64) == [512, 256, 128, 64] and m.d_widths(32, 64) == [64, 128, 256]
    assert m.parse_args(["--dataset", "cifar10", "--assume", "cuda:8"]).batch_size == 32
    assert (
        m.parse_args(["--dataset", "cifar10", "--assume", "cuda:1", "--steps", "5"]).steps == 5
    )  # a given flag wins


def test_hinge_loss():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 0.5])
    assert m.d_loss(real, fake).item() == pytest.approx((0 + 0.5 + 2) / 3 + (0 + 1 + 1.5) / 3)
    assert m.g_loss(fake).item() == pytest.approx(-(-3 + 0 + 0.5) / 3)  # -D, not a hinge


def test_paper_defaults_and_placement():
    a = m.parse_args(["--image-size", "32"])
    assert (a.lr_g, a.lr_d, a.beta1, a.beta2, a.z_dim, a.unconditional, a.shared_dim) == (
        1e-4,
        4e-4,
        0.0,
        0.9,
        128,
        False,
        128,
    )
    assert a.attention_res == 8
    assert m.parse_args(["--image-size", "128"]).attention_res == 32  # Sec. 5.1: feat32 at 128
    assert m.parse_args(["--image-size", "8"]).attention_res == 4
    seen = []
    G, D = m.build_models(a, 1, 10)
    G.attention.register_forward_hook(lambda mod, i, o: seen.append(("G", *o.shape[2:])))
    D.attention.register_forward_hook(lambda mod, i, o: seen.append(("D", *o.shape[2:])))
    y = torch.arange(2)
    D(G(torch.randn(2, 128), y), y)
    assert seen == [("G", 8, 8), ("D", 8, 8)]
    bn = G.blocks[0].b1.bn
    assert isinstance(bn, nn.BatchNorm2d) and not bn.affine  # CBN carries the affine part
    with pytest.raises(SystemExit):
        m.main(["--image-size", "32", "--attention-res", "32", "--steps", "1"])


@pytest.mark.parametrize("shared_dim", [0, 128])
def test_labels_flow_through_cbn_and_projection(shared_dim):
    args = m.parse_args(["--g-width", "4", "--d-width", "4", "--shared-dim", str(shared_dim)])
    G, D = m.build_models(args, 1, 10)
    cbn = G.blocks[0].b1
    assert isinstance(cbn.gain, nn.Linear if shared_dim else nn.Embedding)
    assert (G.shared is not None) == bool(shared_dim)
    assert not cbn.gain.weight.any() and not cbn.bias.weight.any()  # gain 1, bias 0 at the start
    with torch.no_grad():
        for mod in G.modules():
            if isinstance(mod, m.ConditionalBatchNorm):
                mod.gain.weight.normal_()
    G.eval(), D.eval()
    z = torch.randn(1, args.z_dim).repeat(2, 1)
    y = torch.tensor([3, 7])
    x = G(z, y)
    assert not torch.allclose(x[0], x[1])
    xs = x[:1].repeat(2, 1, 1, 1)
    assert not torch.allclose(*D(xs, y))  # the projection term depends on the label


def test_conditional_run_grid_attention_map_and_errors(in_tmp, capsys):
    res = m.main([*tiny_args(m), "--image-size", "32", "--steps", "2", "--out", "run"])
    # conditional by default on digits
    assert res["G"].num_classes == 10 and res["D"].embed is not None
    grid = Image.open("run/samples/step_000002.png")
    # 32-pixel tiles, 2 padding: 10 rows of 8, one per class
    assert round(grid.size[1] / grid.size[0] * (8 * 34 + 2)) == 10 * 34 + 2
    sample = ["--checkpoint", "run", "--out", "s", "--device", "cpu"]
    png = m.main(["--sample", "20", "--attention-map", "--attention-query", "3", "30", *sample])
    im = Image.open(png)
    assert os.path.basename(png).startswith("attention_")
    assert im.size[0] / im.size[1] == pytest.approx((4 * 34 + 2) / (10 * 34 + 2), rel=0.01)
    generate = m.load_generator("run/checkpoints/last.pt")
    z = torch.randn(2, generate.z_dim)
    x, beta = m.attention_map(generate, z, torch.tensor([1, 2]), (31, 0), 32)
    assert beta.shape == (2, 64) and torch.allclose(beta.sum(1), torch.ones(2))
    # the map belongs to these very images
    assert torch.equal(x, generate(z=z, labels=torch.tensor([1, 2])))
    generate.model.attention.keep = slice(None)
    generate(z=z, labels=torch.tensor([1, 2]))
    # pixel (31, 0) -> feature (7, 0)
    assert torch.equal(generate.model.attention.beta[0][:, 7 * 8 + 0], beta)
    generate.model.attention.keep, generate.model.attention.beta = None, []
    # More images than generate's chunk of 256: the maps of every chunk, in order.
    zs, ys = torch.randn(300, generate.z_dim), torch.arange(300) % 10
    xs, betas = m.attention_map(generate, zs, ys, (12, 20), 32)
    assert xs.shape[0] == betas.shape[0] == 300 and torch.allclose(betas.sum(1), torch.ones(300))
    for part in (slice(0, 5), slice(250, 262), slice(290, 300)):  # each image's own map
        xp, bp = m.attention_map(generate, zs[part], ys[part], (12, 20), 32)
        torch.testing.assert_close(bp, betas[part])
        torch.testing.assert_close(xp, xs[part])
    assert generate.model.attention.keep is None and generate.model.attention.beta == []
    fig = m.attention_figure(x, beta, (31, 0))
    assert fig.shape == (4, 3, 32, 32)
    assert fig[1, :, 31, 0].tolist() == [1.0, -1.0, -1.0]  # the query marked red
    for flags, words in ((["--attention-query", "32", "0"], "outside"),):
        capsys.readouterr()
        with pytest.raises(SystemExit):
            m.main(["--sample", "4", "--attention-map", *flags, *sample])
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err
    m.main(
        [
            *tiny_args(m),
            "--steps",
            "1",
            "--attention-res",
            "0",
            "--unconditional",
            "--out",
            "noattn",
        ]
    )
    capsys.readouterr()
    with pytest.raises(SystemExit):
        m.main(
            [
                "--sample",
                "4",
                "--attention-map",
                "--checkpoint",
                "noattn",
                "--out",
                "s",
                "--device",
                "cpu",
            ]
        )
    assert "no attention layer" in capsys.readouterr().err
    assert torch.load("noattn/checkpoints/last.pt", weights_only=True)["num_classes"] == 0


def test_unlabelled_folder_falls_back_to_unconditional(in_tmp, capsys):
    os.makedirs("imgs")
    g = torch.Generator().manual_seed(0)
    for i in range(20):
        arr = (torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(f"imgs/{i}.png")
    m.main(
        [
            *tiny_args(m),
            "--steps",
            "1",
            "--dataset",
            "folder",
            "--data-path",
            "imgs",
            "--image-size",
            "16",
            "--out",
            "f",
        ]
    )
    err = capsys.readouterr().err
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "unconditional" in warnings[0]
    assert torch.load("f/checkpoints/last.pt", weights_only=True)["num_classes"] == 0


DRIVER = """
import os, sys, torch
sys.path.insert(0, {tests!r})
from conftest import load_script
m = load_script("sagan")
m.sync_spectral_norm = lambda module, world: None  # show that u agrees without the safety net
res = m.main(sys.argv[1:])
bufs = {{f"{{k}}.{{n}}": b.clone() for k in ("G", "D") for n, b in res[k].named_buffers()
        if n.endswith(("._u", "._v"))}}
torch.save(bufs, os.path.join("ddp", f"u_rank{{os.environ['RANK']}}.pt"))
"""


def test_torchrun_ranks_keep_equal_power_iteration_vectors(in_tmp):
    with open("driver.py", "w") as f:
        f.write(DRIVER.format(tests=os.path.join(ROOT, "tests")))
    run_torchrun("driver.py", *tiny_args(m), "--steps", "3", "--out", "ddp")
    u0, u1 = (torch.load(f"ddp/u_rank{i}.pt", weights_only=True) for i in (0, 1))
    assert u0.keys() == u1.keys() and len(u0) > 20
    assert all(torch.equal(u0[k], u1[k]) for k in u0)
