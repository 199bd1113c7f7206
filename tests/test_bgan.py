"""BGAN-specific checks: the importance weights (softmax over each latent's M samples, from D's
logit, detached), the log-likelihood of the drawn values, sampling, the continuous loss, what G
returns, the architecture flags, mean vs sum under Adam, the bad input; and the quantized path
end to end: common/quantize.py, tools/quantize_celeba.py (resumable) and training on its output."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import assert_one_line_error, load_script, tiny_args
from common.data import Batches, QuantizedFolderData, binarize, to_indices
from common.quantize import (
    load_palette,
    load_png,
)

m = load_script("bgan")
BINARY = m.BinaryPixels(threshold=0.5)  # Algorithm 1's view of binarized images


def colours(k):
    """Algorithm 1's view of images over a palette of k colours (which colours: no matter)."""
    return m.PalettePixels(torch.zeros(k, 3))


def load_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "quantize_celeba",
        os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
            "tools",
            "quantize_celeba.py",
        ),
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ----------------------------------------------------------------------------- the estimator
def test_weights_are_a_softmax_of_the_logit_within_each_latent():
    logits = torch.tensor(
        [0.0, 1.0, 2.0, -3.0, 5.0, 5.0]
    )  # N = 2 latents, M = 3 samples, (n, m) order
    w = m.importance_weights(logits, 3)
    d = torch.sigmoid(logits).view(2, 3)
    ratio = d / (1 - d)  # w(x) = D / (1 - D), normalised over the M samples of one z
    assert torch.allclose(w, ratio / ratio.sum(1, keepdim=True), atol=1e-6)
    assert torch.allclose(w.sum(1), torch.ones(2))
    shifted = logits.clone()
    shifted[3:] += (
        100  # D rating one latent's samples all higher changes nothing for that latent...
    )
    assert torch.allclose(m.importance_weights(shifted, 3), w, atol=1e-6)
    across = torch.softmax(logits, 0).view(2, 3)  # ...unlike a softmax across the batch
    assert not torch.allclose(across, w, atol=1e-3)


def test_no_gradient_through_the_weights():
    fake_logits = torch.randn(8, requires_grad=True)
    log_lik = torch.randn(2, 4, requires_grad=True)
    loss = m.g_loss(fake_logits, log_lik)
    loss.backward()
    assert fake_logits.grad is None or not fake_logits.grad.any()
    w = m.importance_weights(fake_logits, 4)
    assert torch.allclose(log_lik.grad, -w / 2)  # d/d log g = -w~ / N


def test_continuous_loss_is_half_the_squared_logit_and_discrete_is_not():
    logits = torch.tensor([2.0, -1.0, 0.0, 3.0])
    assert m.boundary_seeking_loss(logits).item() == pytest.approx(0.5 * (4 + 1 + 0 + 9) / 4)
    ll = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    discrete = m.g_loss(logits, ll)
    w = torch.softmax(logits.view(2, 2), 1)
    assert discrete.item() == pytest.approx(-(w * ll).sum(1).mean().item())
    assert m.g_loss(logits + 7, ll).item() == pytest.approx(
        discrete.item()
    )  # shift-invariant per latent; 0.5 logit^2 is not


def test_baseline_keeps_the_expected_gradient():
    """--baseline subtracts 1/M: the loss moves by (1/M) sum_m log g, whose gradient has zero
    mean."""
    logits = torch.randn(6)
    ll = torch.randn(2, 3)
    diff = m.g_loss(logits, ll, baseline=True) - m.g_loss(logits, ll)
    assert diff.item() == pytest.approx((ll.sum(1) / 3).mean().item(), abs=1e-6)


def test_log_likelihood_of_the_drawn_values():
    torch.manual_seed(0)
    a = torch.randn(2, 1, 4, 4)
    s = BINARY.draw(a, 5)
    assert s.shape == (2, 5, 1, 4, 4) and set(s.unique().tolist()) <= {0.0, 1.0}
    ref = torch.distributions.Bernoulli(logits=a[:, None]).log_prob(s).flatten(2).sum(2)
    assert torch.allclose(m.log_likelihood(a, s, BINARY), ref, atol=1e-5)
    assert torch.allclose(m.log_likelihood(a, s, BINARY, "mean"), ref / 16, atol=1e-6)
    k = torch.randn(2, 6, 4, 4, requires_grad=True)  # K = 6 colours
    idx = colours(6).draw(k, 3)
    assert idx.shape == (2, 3, 4, 4) and idx.dtype == torch.int64 and not idx.requires_grad
    ref = (
        torch.distributions.Categorical(logits=k.detach().permute(0, 2, 3, 1)[:, None])
        .log_prob(idx)
        .flatten(2)
        .sum(2)
    )
    ll = m.log_likelihood(k, idx, colours(6))
    assert torch.allclose(ll, ref, atol=1e-5)
    ll.sum().backward()
    assert k.grad is not None and k.grad.abs().sum() > 0  # the gradient reaches G's logits


def test_draw_matches_the_distribution():
    a = torch.tensor([2.0, 0.0, -1.0, 0.5]).view(1, 4, 1, 1).expand(1, 4, 20, 20)
    idx = colours(4).draw(a, 50, torch.Generator().manual_seed(0))  # 20000 draws
    freq = torch.bincount(idx.flatten(), minlength=4).float() / idx.numel()
    assert torch.allclose(freq, torch.softmax(a[0, :, 0, 0], 0), atol=0.01)
    b = torch.full((1, 1, 20, 20), 1.0)
    assert BINARY.draw(b, 50).mean().item() == pytest.approx(
        torch.sigmoid(torch.tensor(1.0)).item(), abs=0.01
    )
    g1, g2 = (colours(4).draw(a, 2, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(g1, g2)  # a private generator makes grids reproducible


def test_what_g_returns():
    args = m.parse_args(m.SMOKE_ARGS)
    G, D = m.build_models(args, channels=1, num_classes=0)
    z = torch.randn(3, args.z_dim)
    x, a = G(z), G.logits(z)
    assert torch.allclose(x, 2 * torch.sigmoid(a) - 1, atol=1e-6)  # binary: E[2x - 1]
    G, D = m.build_models(args, channels=3, num_classes=0, num_colors=7)
    p = G(z)
    assert p.shape == (3, 7, 16, 16) and torch.allclose(p.sum(1), torch.ones(3, 16, 16), atol=1e-5)
    assert (
        D(p).shape == (3,) and D.net[0].in_channels == 7
    )  # D reads one-hot planes over the palette
    onehot = colours(7).d_input(colours(7).draw(G.logits(z), 2).flatten(0, 1))
    assert onehot.shape == (6, 7, 16, 16) and torch.equal(onehot.sum(1), torch.ones(6, 16, 16))
    pal = torch.tensor([[0, 0, 0], [255, 127.5, 0]])  # uint8 values -> [-1, 1]
    img = m.PalettePixels(pal).decode(torch.tensor([[[0, 1]]]))
    assert img.shape == (1, 3, 1, 2) and img[0, :, 0, 1].tolist() == [1.0, 0.0, -1.0]
    cont = m.parse_args([*m.SMOKE_ARGS, "--mode", "continuous"])
    G, _ = m.build_models(cont, 1, 0)
    assert torch.allclose(G(z), torch.tanh(G.logits(z)))


def test_architecture_flags():
    args = m.parse_args([*m.SMOKE_ARGS, "--activation", "elu", "--bn-after-act", "--spectral-norm"])
    G, D = m.build_models(args, 1, 0)
    kinds = [type(x) for x in G.net]
    assert torch.nn.ELU in kinds and torch.nn.ReLU not in kinds
    i = kinds.index(torch.nn.ConvTranspose2d)
    assert (
        kinds[i + 1] is torch.nn.ELU and kinds[i + 2] is torch.nn.BatchNorm2d
    )  # conv -> act -> BN
    assert all(
        torch.nn.utils.parametrize.is_parametrized(x)
        for x in D.modules()
        if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))
    )
    plain, Dp = m.build_models(m.parse_args(m.SMOKE_ARGS), 1, 0)
    assert isinstance(plain.net[1], torch.nn.ReLU) and isinstance(
        Dp.net[1], torch.nn.LeakyReLU
    )  # dcgan: ReLU in G, LeakyReLU in D
    j = [type(x) for x in plain.net].index(torch.nn.ConvTranspose2d)
    assert isinstance(plain.net[j + 1], torch.nn.BatchNorm2d)


def test_paper_defaults():
    a = m.parse_args([])
    assert (a.n_mc_samples, a.mode, a.log_lik, a.lr_g, a.lr_d, a.z_dim) == (
        20,
        "discrete",
        "sum",
        1e-3,
        1e-4,
        100,
    )
    # D's input noise: on for Algorithm 1, off for the continuous loss (measured, docs/bgan.md)
    assert a.d_noise == 1.5 and m.parse_args(["--mode", "continuous"]).d_noise == 0.0
    assert m.parse_args(["--mode", "continuous", "--d-noise", "1.5"]).d_noise == 1.5
    assert m.parse_args(["--mode", "continuous"]).lr_g == 1e-3  # 10x D's in every mode


# ----------------------------------------------------------------------------- D and the weights
def drawn(kind, n, samples, colours, seed):
    """n x samples drawn samples as D reads them: binary 16x16 images, 16x16 palette images or
    text sequences of 16 (one-hot planes over ``colours``)."""
    torch.manual_seed(seed)
    shape = {
        "binary": (n, 1, 16, 16),
        "quantized": (n, colours, 16, 16),
        "text": (n, colours, 1, 16),
    }[kind]
    pixels = BINARY if kind == "binary" else m.PalettePixels(torch.zeros(colours, 3))
    return pixels.d_input(pixels.draw(torch.randn(shape), samples).flatten(0, 1))


@pytest.mark.parametrize("kind", ["binary", "quantized", "text"])
def test_d_logit_of_one_sample_ignores_the_rest_of_the_batch(kind):
    """Algorithm 1's log w(x) is D's logit of x alone: without batch norm in D (the default in
    every discrete mode) it stays put when the other N x M samples change, in train mode, and
    w~ sums to one over each latent's M samples; --d-batch-norm couples them."""
    text = ["--dataset", "text", "--seq-len", "16"] if kind == "text" else []
    colours = 5
    channels = colours if kind == "text" else 1
    nets = {}
    for bn in ([], ["--d-batch-norm"]):
        args = m.parse_args([*m.SMOKE_ARGS, *text, *bn])
        assert args.d_batch_norm == bool(bn)
        torch.manual_seed(0)
        nets[bool(bn)] = m.build_models(args, channels, 0, colours if kind == "quantized" else 0)[1]
    x = drawn(kind, 3, 4, colours, seed=1)  # N = 3 latents, M = 4 samples
    y = torch.cat([x[:1], drawn(kind, 3, 4, colours, seed=2)[1:]])  # the rest of the batch anew
    D = nets[False].train()
    assert not any(isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) for mod in D.modules())
    with torch.no_grad():
        assert torch.allclose(D(x)[0], D(y)[0], atol=1e-6)
        assert not torch.allclose(D(x)[1:], D(y)[1:], atol=1e-4)
        w = m.importance_weights(D(x), 4)
        assert w.shape == (3, 4) and torch.allclose(w.sum(1), torch.ones(3), atol=1e-6)
        coupled = nets[True].train()
        assert not torch.allclose(coupled(x)[0], coupled(y)[0], atol=1e-4)


def test_d_batch_norm_is_off_in_every_discrete_mode_under_both_configs(capsys):
    for config in ("auto", "paper"):
        for flags in (
            [],
            ["--dataset", "text"],
            ["--data-mode", "quantized"],
            ["--dataset", "mnist", "--assume", "cuda:8"],
        ):
            assert m.parse_args(["--config", config, *flags]).d_batch_norm is False, flags
    assert m.parse_args(["--mode", "continuous"]).d_batch_norm is True  # dcgan.py's D
    assert m.parse_args(["--mode", "continuous", "--no-d-batch-norm"]).d_batch_norm is False
    with pytest.raises(SystemExit):
        m.parse_args(["--help"])
    assert "couples the importance weights" in " ".join(capsys.readouterr().out.split())


def test_resuming_a_run_whose_d_had_batch_norm_names_the_flag(in_tmp, capsys):
    """A checkpoint from before --d-batch-norm existed (its D had batch norm, its args do not
    record the flag) does not fit today's default D: one line that names the newer flag,
    and giving it resumes the run."""
    m.main([*tiny_args(m), "--d-batch-norm", "--steps", "2", "--out", "old"])
    path = "old/checkpoints/last.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["args"]["d_batch_norm"]  # as bgan.py wrote it before issue 26
    torch.save(ckpt, path)
    line = assert_one_line_error(m, ["--resume", "old"], "--d-batch-norm", capsys, steps=3)
    assert "discriminator does not fit" in line and "newer than the checkpoint" in line
    m.main([*tiny_args(m), "--resume", "old", "--steps", "3", "--d-batch-norm"])
    assert torch.load(path, weights_only=True)["step"] == 3


def test_uniform_prior_is_the_normal_cdf_of_the_latent():
    """--z-prior uniform: G sees Phi(z), U(0, 1) as the authors' np.random.rand, while grids,
    sampling and walks keep drawing N(0, I)."""
    z = torch.randn(20000, 3, generator=torch.Generator().manual_seed(0))
    u = m.latent(z, "uniform")
    assert 0 <= u.min() and u.max() < 1 and torch.equal(m.latent(z, "normal"), z)
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.002
    args = m.parse_args([*m.SMOKE_ARGS, "--z-prior", "uniform"])
    G = m.build_models(args, 1)[0].eval()
    plain = m.build_models(m.parse_args(m.SMOKE_ARGS), 1)[0].eval()
    plain.load_state_dict(G.state_dict())
    z = torch.randn(4, args.z_dim)
    assert torch.allclose(G.logits(z), plain.logits(torch.special.ndtr(z)), atol=1e-6)


# ----------------------------------------------------------------------------- configs
def test_paper_is_the_authors_code():
    """--config paper: rdevon/BGAN main_discrete.py (images) and old/BILLION-WORD/main.py
    (text), value by value (bgan.py cites each)."""
    a = m.parse_args(["--config", "paper", "--dataset", "mnist"])
    assert (
        a.batch_size,
        a.lr_g,
        a.lr_d,
        a.beta1,
        a.z_dim,
        a.z_prior,
        a.n_mc_samples,
        a.g_width,
        a.d_width,
        a.d_batch_norm,
        a.d_noise,
        a.baseline,
        a.log_lik,
        a.steps,
        a.ema_decay,
    ) == (64, 1e-4, 1e-4, 0.5, 64, "uniform", 20, 64, 64, False, 0.0, False, "sum", 93700, 0.0)
    t = m.parse_args(["--config", "paper", "--dataset", "text"])
    assert (
        t.batch_size,
        t.lr_g,
        t.lr_d,
        t.beta1,
        t.z_dim,
        t.z_prior,
        t.n_mc_samples,
        t.g_width,
        t.d_width,
        t.text_blocks,
        t.vocab_size,
        t.seq_len,
        t.d_batch_norm,
        t.d_noise,
        t.baseline,
    ) == (64, 1e-3, 1e-3, 0.5, 100, "uniform", 20, 256, 256, 3, 192, 32, False, 0.0, False)
    G, D = m.build_models(t, 192)
    assert len([b for b in G.net if isinstance(b, m.TextBlock)]) == 3
    assert len([b for b in D.net if isinstance(b, m.TextBlock)]) == 3
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in G.modules())  # G keeps it
    conv = D.net[1].f[1]  # Glorot-uniform, as Lasagne's default
    bound = (6 / (256 * 5 + 256 * 5)) ** 0.5
    assert conv.bias is not None and 0.9 * bound < conv.weight.abs().max() <= bound


def test_auto_on_cuda_is_the_authors_at_scale():
    """Global batch 64 (main_discrete.py) split over the processes, 100 epochs of the data as
    steps, Adam 1e-4 for both, z 64 ~ U[0, 1), M 20, widths 64, the paper's estimator."""
    a = m.parse_args(["--assume", "cuda:1", "--dataset", "mnist"])
    assert (
        a.image_size,
        a.batch_size,
        a.steps,
        a.lr_g,
        a.lr_d,
        a.beta1,
        a.z_dim,
        a.z_prior,
        a.n_mc_samples,
        a.g_width,
        a.d_width,
        a.d_noise,
        a.baseline,
        a.d_batch_norm,
    ) == (32, 64, 93750, 1e-4, 1e-4, 0.5, 64, "uniform", 20, 64, 64, 0.0, False, False)
    c = m.parse_args(["--assume", "cuda:8", "--dataset", "celeba"])
    assert (c.image_size, c.batch_size, c.steps, c.lr_g) == (64, 8, 316561, 1e-4)  # 100 passes
    t = m.parse_args(["--assume", "cuda:8", "--dataset", "text"])
    assert (
        t.batch_size,
        t.g_width,
        t.text_blocks,
        t.lr_g,
        t.lr_d,
        t.vocab_size,
        t.n_mc_samples,
    ) == (8, 256, 3, 1e-3, 1e-3, 192, 20)


def test_auto_on_a_cpu_keeps_the_digits_run():
    a = m.parse_args(["--assume", "cpu"])
    assert a.chosen == {}
    assert (
        a.image_size,
        a.batch_size,
        a.steps,
        a.lr_g,
        a.lr_d,
        a.beta1,
        a.z_dim,
        a.z_prior,
        a.n_mc_samples,
        a.g_width,
        a.d_width,
        a.d_noise,
        a.baseline,
        a.log_lik,
        a.ema_decay,
    ) == (16, 32, 7000, 1e-3, 1e-4, 0.5, 100, "normal", 20, 32, 16, 1.5, True, "sum", 0.999)
    b = m.parse_args(["--assume", "cpu", "--dataset", "mnist"])  # 32x32: CPU_32
    assert (b.image_size, b.batch_size, b.steps, b.lr_g, b.d_batch_norm) == (
        32,
        32,
        3000,
        1e-3,
        False,
    )
    t = m.parse_args(["--assume", "cpu", "--dataset", "text"])
    assert t.chosen == m.TEXT and t.text_blocks == 5


def test_mean_and_sum_agree_under_adam():
    """Adam divides out a constant scale of the loss: one step with sum and with mean moves G
    alike, except for weights whose tiny gradients are comparable to Adam's eps."""
    steps = []
    for reduce in ("sum", "mean"):
        torch.manual_seed(0)
        args = m.parse_args(m.SMOKE_ARGS)
        G, _ = m.build_models(args, 1, 0)
        before = torch.cat([p.detach().flatten() for p in G.parameters()])
        opt = torch.optim.Adam(G.parameters(), lr=1e-3, betas=(0.5, 0.999))
        torch.manual_seed(1)
        a = G.logits(torch.randn(4, args.z_dim))
        s = BINARY.draw(a, 5)
        loss = m.g_loss(torch.randn(20), m.log_likelihood(a, s, BINARY, reduce))
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps.append(torch.cat([p.detach().flatten() for p in G.parameters()]) - before)
    assert torch.nn.functional.cosine_similarity(steps[0], steps[1], 0) > 0.999
    assert ((steps[0] - steps[1]).abs() > 1e-5).float().mean() < 0.05  # lr 1e-3: 1% of a step


def test_bad_input_one_line(in_tmp, capsys):
    for flags, words in (
        (["--n-mc-samples", "1"], "--n-mc-samples"),
        (["--data-mode", "quantized"], "quantize_celeba"),
        (
            ["--dataset", "folder", "--data-path", str(in_tmp), "--data-mode", "quantized"],
            "palette.json",
        ),
    ):
        assert_one_line_error(m, flags, words, capsys)


# ----------------------------------------------------------------------------- palettes


def colour_folder(root, n=12, size=40):
    """Crops of scikit-learn's two sample photos (shipped with it, no download)."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    for i in range(n):
        p = photos[i % 2]
        y, x = rng.integers(0, p.shape[0] - size), rng.integers(0, p.shape[1] - size)
        sub = "sub" if i % 3 == 0 else ""
        Image.fromarray(p[y : y + size, x : x + size]).save(os.path.join(root, sub, f"im{i}.jpg"))


def test_quantize_tool_resume_and_train(in_tmp, capsys):
    colour_folder("src")
    tool = load_tool()
    res = tool.main(
        [
            "--num-colors",
            "8",
            "--size",
            "16",
            "--workers",
            "1",
            "--fit-pixels",
            "5000",
            "src",
            "dst",
        ]
    )
    assert res["quantized"] == 12 and res["skipped_done"] == 0 and len(res["palette"]) <= 8
    pal = load_palette("dst")
    assert json.load(open("dst/palette.json"))["num_colors"] == len(pal)
    assert os.path.exists("dst/sub/im0.png") and os.path.exists("dst/im1.png")
    idx, pal_png = load_png("dst/im1.png")
    assert idx.shape == (16, 16) and np.array_equal(pal_png[: len(pal)], pal)

    os.remove(
        "dst/im1.png"
    )  # a partly done folder: only the missing image is redone, with the same palette
    mtime = os.path.getmtime("dst/im2.png")
    res = tool.main(["--num-colors", "8", "--size", "16", "--workers", "1", "src", "dst"])
    assert res["quantized"] == 1 and res["skipped_done"] == 11
    assert os.path.getmtime("dst/im2.png") == mtime and np.array_equal(load_palette("dst"), pal)
    assert np.array_equal(load_png("dst/im1.png")[0], idx)
    with pytest.raises(SystemExit):
        tool.main(
            ["--num-colors", "4", "src", "dst"]
        )  # a smaller palette than the folder's: refused
    assert "more than --num-colors" in capsys.readouterr().err

    data = QuantizedFolderData("dst", 16)
    assert len(data) == 12 and data[0][0].shape == (1, 16, 16) and data[0][0].dtype == torch.uint8
    b = Batches(data, 4, "cpu", num_workers=0, flip=True)
    x, _ = next(iter(b))
    ii = to_indices(x)
    assert (
        ii.shape == (4, 16, 16)
        and ii.max() < len(pal)
        and torch.equal((ii.float() / 127.5 - 1)[:, None], x)
    )

    r = m.main(
        [
            *tiny_args(m),
            "--dataset",
            "folder",
            "--data-path",
            "dst",
            "--image-size",
            "16",
            "--batch-size",
            "4",
            "--steps",
            "3",
            "--out",
            "q",
        ]
    )
    ckpt = torch.load("q/checkpoints/last.pt", weights_only=True)
    assert ckpt["kind"] == "quantized" and torch.equal(ckpt["palette"], torch.from_numpy(pal))
    assert r["G"].net[-1].out_channels == len(pal)
    generate = m.load_generator("q/checkpoints/last.pt")
    img = generate(5, seed=0)
    assert img.shape == (5, 3, 16, 16)
    colours = {
        tuple(c)
        for c in img.permute(0, 2, 3, 1).reshape(-1, 3).add(1).mul(127.5).round().int().tolist()
    }
    assert colours <= {tuple(c) for c in pal.tolist()}  # decoded through the palette
    assert torch.equal(generate(5, seed=0), img)
    m.main(["--sample", "4", "--checkpoint", "q", "--out", "s", "--device", "cpu"])
    assert any(f.startswith("sample_") for f in os.listdir("s"))


def test_binarize():
    v = torch.arange(256).float() / 127.5 - 1  # what Batches makes of uint8 0..255
    assert binarize(v)[:128].sum() == 0 and binarize(v)[128:].sum() == 128


def test_continuous_mode_trains_and_samples(in_tmp):
    m.main([*tiny_args(m), "--mode", "continuous", "--steps", "2", "--out", "c"])
    log = [json.loads(line) for line in open("c/metrics.jsonl")]
    assert len(log) == 2 and "ess" not in log[0]
    x = m.load_generator("c/checkpoints/last.pt")(4)
    assert (
        x.shape == (4, 1, 16, 16) and x.abs().max() <= 1 and len(x.unique()) > 2
    )  # a tanh image, not drawn pixels
    # resumed without --mode: the run's mode and its noise-free D come back from the checkpoint
    m.main(["--resume", "c", "--steps", "3"])
    ckpt = torch.load("c/checkpoints/last.pt", weights_only=True)
    assert ckpt["step"] == 3 and (ckpt["args"]["mode"], ckpt["args"]["d_noise"]) == (
        "continuous",
        0.0,
    )


def test_binary_samples_are_drawn_pixels(in_tmp):
    m.main([*tiny_args(m), "--steps", "1", "--out", "b"])
    generate = m.load_generator("b/checkpoints/last.pt")
    x = generate(4, seed=3)
    assert set(x.unique().tolist()) <= {-1.0, 1.0} and torch.equal(x, generate(4, seed=3))
    walk = generate(z=torch.randn(3, generate.z_dim), shared_noise=True)
    assert walk.shape == (3, 1, 16, 16)


def test_evaluation_compares_binary_samples_with_binarized_digits(in_tmp):
    """real_view: the metrics see the real digits binarized as for training (never grey digits
    against drawn pixels); unchanged under --mode continuous. evaluate() applies it and records
    it."""
    from common import evaluation

    x = torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    args = vars(m.parse_args(["--binarize-threshold", "0.25"]))
    assert torch.equal(m.real_view(x, args), binarize(x, 0.25) * 2 - 1)
    assert torch.equal(m.real_view(x, vars(m.parse_args(["--mode", "continuous"]))), x)
    m.main([*tiny_args(m), "--steps", "1", "--out", "b"])
    res = evaluation.evaluate("b", num_samples=40, num_real=100, metrics=("fid",))
    assert res["protocol"]["real"]["view"].startswith("bgan.real_view")
