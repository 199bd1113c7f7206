"""stylegan2.py's own checks: the paper's defaults, the lazy-regularisation Adam correction,
demodulation, noise strengths initialised to 0, R1 and path length, the EMA half-life and
its buffers (w_avg), truncation and style mixing, mixed precision per resolution, sizes,
sampling grids (constant noise maps) and evaluation (random noise inputs), and the script's
bad input."""
import functools
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from common.images import save_grid
from conftest import assert_one_line_error, load_script, tiny_args

m = load_script("stylegan2")
SMALL = [*m.SMOKE_ARGS]


def test_paper_defaults():
    a = m.parse_args(["--image-size", "32", "--batch-size", "32"])  # auto's batch: 16
    assert (a.batch_size, a.lr_g, a.lr_d, a.beta1, a.beta2) == (32, 0.002, 0.002, 0.0, 0.99)
    assert m.parse_args([]).batch_size == 16  # --config auto; paper: config F's 32
    assert m.parse_args(["--config", "paper"]).batch_size == 32
    assert (a.z_dim, a.w_dim, a.mapping_layers, a.mapping_lr_mul) == (512, 512, 8, 0.01)
    assert (a.style_mixing, a.mbstd_group) == (0.9, 4)
    assert (a.r1_gamma, a.r1_every, a.pl_weight, a.pl_every) == (10.0, 16, 2.0, 4)
    assert (a.pl_decay, a.pl_batch_shrink) == (0.01, 2)
    assert (a.ema_kimg, a.ema_rampup, a.ema_decay, a.truncation) == (10.0, 0.05, None, 1.0)
    G, D = m.build_models(a, 1, 0)
    assert len(G.mapping.fcs) == 8
    assert G.mapping.fcs[0].wgain == pytest.approx(0.01 / math.sqrt(512))
    assert G.num_ws == 8  # 32x32: 4 blocks, 2 w's per resolution


def test_lazy_regularisation_adam_correction():
    p = [torch.nn.Parameter(torch.zeros(1))]
    opt, c = m.lazy_adam(p, 0.002, (0.0, 0.99), 16)
    assert c == pytest.approx(16 / 17)
    g = opt.param_groups[0]
    assert g["lr"] == pytest.approx(0.002 * 16 / 17) and g["betas"][0] == 0
    assert g["betas"][1] == pytest.approx(0.99 ** (16 / 17))
    opt, c = m.lazy_adam(p, 0.002, (0.0, 0.99), 0)  # no regulariser: no correction
    assert c == 1 and opt.param_groups[0]["lr"] == 0.002


def test_demodulation_is_scale_invariant_and_unit_variance():
    torch.manual_seed(0)
    x, w, s = torch.randn(4, 16, 8, 8), torch.randn(8, 16, 3, 3), torch.rand(4, 16) + 0.5
    y = m.modulated_conv(x, w, s)
    # Eq. 3 removes the style's scale
    torch.testing.assert_close(m.modulated_conv(x, w, 7 * s), y, rtol=1e-4, atol=1e-5)
    assert 0.8 < y[:, :, 1:-1, 1:-1].std().item() < 1.2  # unit variance stays (Sec. 2.2)
    plain = m.modulated_conv(x, w, s, demodulate=False)
    assert not torch.allclose(m.modulated_conv(x, w, 7 * s, demodulate=False), plain)


def test_noise_strength_per_layer_starts_at_zero():
    G, _ = m.build_models(m.parse_args([*SMALL, "--image-size", "32"]), 1, 0)
    strengths = [mod.noise_strength for mod in G.modules() if isinstance(mod, m.SynthesisLayer)]
    assert len(strengths) == 2 * 4 - 1
    assert all(s.numel() == 1 and s.item() == 0 for s in strengths)
    z = torch.randn(2, G.z_dim)
    torch.manual_seed(1)
    a = G(z, noise_mode="random")
    torch.testing.assert_close(a, G(z, noise_mode="none"))  # strength 0: noise has no effect yet


def test_r1_is_on_the_input_gradient():
    w = torch.randn(1, 4, 4, requires_grad=True)  # D(x) = <w, x>: grad_x D = w
    real = torch.randn(3, 1, 4, 4).requires_grad_(True)
    r1 = m.r1_penalty((real * w).sum([1, 2, 3]), real)
    torch.testing.assert_close(r1.detach(), w.detach().square().sum().expand(3))
    scaled = m.r1_penalty((real * w).sum([1, 2, 3]), real, torch.tensor(2.0**16))
    torch.testing.assert_close(scaled.detach(), r1.detach())
    assert r1.requires_grad  # create_graph: D's update differentiates through it


def test_path_length_noise_scale_and_detached_mean():
    """img = mean_j sum_k ws[:, k, j] (5 dims, 3 layers) on every pixel: J^T y = Y / 5 in
    every entry, Y = sum of the pixels' noise ~ N(0, 1) only if the noise is scaled by
    1/sqrt(H W); summed over the 5 dims and averaged over layers, E||J^T y||^2 = 1/5 at every
    resolution."""
    torch.manual_seed(0)
    lengths = []
    for hw in (8, 32):
        ws = torch.randn(2000, 3, 5, requires_grad=True)
        img = ws.sum(1).mean(1)[:, None, None, None].expand(2000, 1, hw, hw)
        lengths.append(m.path_lengths(img, ws).square().mean().item())
    assert lengths[0] == pytest.approx(lengths[1], rel=0.1)
    assert lengths[0] == pytest.approx(0.2, rel=0.1)
    lengths = torch.tensor([1.0, 3.0], requires_grad=True)
    pen, mean = m.path_length_penalty(lengths, torch.tensor(0.0), 0.01, 1)
    assert mean.item() == pytest.approx(0.02) and not mean.requires_grad
    torch.testing.assert_close(pen.detach(), torch.tensor([0.98**2, 2.98**2]))


def test_ema_half_life_and_buffers():
    # after ema_kimg * 1000 images at full decay the old weights weigh one half
    d = m.ema_beta(10**6, 32, 10, 0.05)
    assert d ** (10_000 / 32) == pytest.approx(0.5)
    assert m.ema_beta(0, 32, 10, 0.05) == 0  # ramp-up: the first step copies
    assert m.ema_beta(100, 32, 10, 0.05) == pytest.approx(0.5 ** (32 / (0.05 * 3200)))
    G, _ = m.build_models(m.parse_args(SMALL), 1, 0)
    import copy

    ema = copy.deepcopy(G)
    G.mapping.w_avg.add_(1.0)
    m.ema_update(ema, G, 0.99, 1000)
    assert torch.equal(ema.mapping.w_avg, G.mapping.w_avg)  # w_avg is copied, not averaged


def test_truncation_and_mixing():
    G, _ = m.build_models(m.parse_args(SMALL), 1, 0)
    G.mapping.w_avg.normal_()
    z = torch.randn(3, G.z_dim)
    with torch.no_grad():
        x = G(z, psi=0.0, noise_mode="const")  # psi 0: every sample is the mean w
        torch.testing.assert_close(x[0], x[1])
        w_avg = G.mapping.w_avg
        torch.testing.assert_close(G.mapping(z, 0.5), w_avg + 0.5 * (G.mapping(z) - w_avg))
        grid = m.style_mixing_grid(G, torch.randn(3, G.z_dim), torch.randn(2, G.z_dim), cutoff=4)
    assert grid.shape == ((3 + 1) * (2 + 1), 1, 16, 16)
    torch.manual_seed(0)
    _, ws = G(z, mixing=1.0, return_ws=True)
    assert not torch.equal(ws[:, 0], ws[:, -1])  # two latents, one crossover
    _, ws = G(z, mixing=0.0, return_ws=True)
    assert torch.equal(ws[:, 0], ws[:, -1])


@pytest.mark.parametrize("size", [8, 16, 64])
def test_sizes(size):
    args = m.parse_args([*SMALL, "--image-size", str(size)])
    G, D = m.build_models(args, channels=3, num_classes=0)
    x = G(torch.randn(4, args.z_dim))
    assert x.shape == (4, 3, size, size) and D(x).shape == (4,)
    assert G.num_ws == 2 * int(math.log2(size)) - 2


def test_reduced_precision_only_at_high_resolution():
    args = m.parse_args([*SMALL, "--image-size", "32", "--amp", "bf16", "--fp16-res", "2"])
    G, D = m.build_models(args, 1, 0)
    assert [b.reduced for b in G.blocks] == [False, False, True, True]  # 16x16 and 32x32
    assert [b.reduced for b in D.blocks] == [True, True, False]
    seen = {}
    for b in G.blocks:
        b.conv1.register_forward_hook(lambda mod, i, o, r=b.res: seen.__setitem__(r, o.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        x = G(torch.randn(4, args.z_dim))
        y = D(x)
    assert seen == {4: torch.float32, 8: torch.float32, 16: torch.bfloat16, 32: torch.bfloat16}
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    assert G.blocks[0].conv1.clamp == 256


def test_training_logs_regularisers_and_samples(in_tmp, capsys):
    flags = ["--r1-every", "2", "--pl-every", "2", "--augment", "--ckpt-every", "3"]
    res = m.main([*tiny_args(m), "--steps", "5", *flags, "--out", "run"])
    from common.run import read_metrics

    log = read_metrics("run/metrics.jsonl")
    assert all(r["r1"] > 0 and r["pl_penalty"] >= 0 and r["pl_mean"] > 0 for r in log)
    ckpt = torch.load("run/checkpoints/last.pt", weights_only=True)
    assert ckpt["regularizers"]["pl_mean"].item() == pytest.approx(log[-1]["pl_mean"])
    assert torch.equal(ckpt["ema"]["mapping.w_avg"], res["G"].mapping.w_avg)
    # the lazy-regularisation correction survives resume: the run keeps the lr Adam was built with
    m.main(["--resume", "run/checkpoints/step_000003.pt", "--steps", "6"])
    ckpt = torch.load("run/checkpoints/last.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["regularizers"]["pl_mean"].item() > 0
    assert ckpt["opt_d"]["param_groups"][0]["lr"] == pytest.approx(0.002 * 2 / 3)
    assert ckpt["opt_g"]["param_groups"][0]["lr"] == pytest.approx(0.002 * 2 / 3)

    sample = ["--checkpoint", "run", "--out", "s", "--device", "cpu"]
    png = m.main(["--sample", "4", "--mixing-grid", "3", "--truncation", "0.7", *sample])
    assert sorted(f.split("_")[0] for f in os.listdir("s")) == ["mixing", "sample"]
    assert "truncation psi 0.7" in capsys.readouterr().out
    generate = m.load_generator("run/checkpoints/last.pt")
    assert generate(3).shape == (3, 1, 16, 16)
    noise = [p for n, p in generate.model.named_parameters() if n.endswith("noise_strength")]
    assert any(p.item() != 0 for p in noise)  # trained: the noise inputs change the images
    # Evaluation's default: random noise inputs (the official metrics), reproducible from the
    # seed; the same latents with another seed draw other noise.
    torch.testing.assert_close(generate(3, seed=1), generate(3, seed=1), rtol=0, atol=0)
    z = torch.randn(3, generate.z_dim)
    assert not torch.equal(generate(z=z, seed=1), generate(z=z, seed=2))
    # The constant maps (--sample's grids): the seed no longer matters; psi 0 gives w_avg's image.
    const = functools.partial(generate, noise_mode="const")
    torch.testing.assert_close(const(z=z, seed=1), const(z=z, seed=2), rtol=0, atol=0)
    x = const(2, psi=0.0)
    torch.testing.assert_close(x[0], x[1])
    save_grid(const(4, psi=0.7), "const.png")  # the --sample grid drew the constant maps
    save_grid(generate(4, psi=0.7), "random.png")
    grid, (c, r) = np.asarray(Image.open(png)), (np.asarray(Image.open(f"{k}.png"))
                                                 for k in ("const", "random"))
    assert np.array_equal(grid, c) and not np.array_equal(grid, r)
    for flags, words in [(["--truncation", "1.5"], "--truncation"),
                         (["--mixing-grid", "2", "--mixing-cutoff", "99"], "--mixing-cutoff")]:
        capsys.readouterr()
        with pytest.raises(SystemExit):
            m.main(["--sample", "2", *flags, *sample])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


@pytest.mark.parametrize("flags,words", [
    (["--batch-size", "6"], "--batch-size"),
    (["--r1-every", "0"], "--r1-every"),
    (["--r1-gamma", "-1"], "--r1-gamma"),
    (["--ema-kimg", "0"], "--ema-kimg"),
    (["--image-size", "4"], "--image-size"),
    (["--ema-decay", "1"], "--ema-decay"),
    (["--pl-decay", "2"], "--pl-decay"),
])
def test_bad_input(in_tmp, capsys, flags, words):
    assert_one_line_error(m, flags, words, capsys)
