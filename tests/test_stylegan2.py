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
    a = m.parse_args(["--image-size", "32", "--batch-size", "32", "--assume", "cpu"])
    assert (a.batch_size, a.lr_g, a.lr_d, a.beta1, a.beta2) == (32, 0.002, 0.002, 0.0, 0.99)
    assert m.parse_args(["--assume", "cpu"]).batch_size == 16  # auto; paper: config F's 32
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
    assert ckpt["path_length"]["pl_mean"].item() == pytest.approx(log[-1]["pl_mean"])
    assert torch.equal(ckpt["ema"]["mapping.w_avg"], res["G"].mapping.w_avg)
    # the lazy-regularisation correction survives resume: the run keeps the lr Adam was built with
    m.main(["--resume", "run/checkpoints/step_000003.pt", "--steps", "6"])
    ckpt = torch.load("run/checkpoints/last.pt", weights_only=True)
    assert ckpt["step"] == 6 and ckpt["path_length"]["pl_mean"].item() > 0
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
    grid, (c, r) = (
        np.asarray(Image.open(png)),
        (np.asarray(Image.open(f"{k}.png")) for k in ("const", "random")),
    )
    assert np.array_equal(grid, c) and not np.array_equal(grid, r)
    for flags, words in [
        (["--truncation", "1.5"], "--truncation"),
        (["--mixing-grid", "2", "--mixing-cutoff", "99"], "--mixing-cutoff"),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit):
            m.main(["--sample", "2", *flags, *sample])
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--batch-size", "6"], "--batch-size"),
        (["--r1-every", "0"], "--r1-every"),
        (["--r1-gamma", "-1"], "--r1-gamma"),
        (["--ema-kimg", "0"], "--ema-kimg"),
        (["--image-size", "4"], "--image-size"),
        (["--ema-decay", "1"], "--ema-decay"),
        (["--pl-decay", "2"], "--pl-decay"),
    ],
)
def test_bad_input(in_tmp, capsys, flags, words):
    assert_one_line_error(m, flags, words, capsys)


# ---------------------------------------------------------------- --config auto (issue 25)
def ada_auto(res, gpus):
    """StyleGAN2-ADA's --cfg auto, as written in NVlabs/stylegan2-ada-pytorch train.py."""
    mb = max(min(gpus * min(4096 // res, 32), 64), gpus)
    return {
        "mb": mb,
        "batch_gpu": mb // gpus,
        "mbstd": min(mb // gpus, 4),
        "channel_base": int((1 if res >= 512 else 0.5) * 32768),
        "channel_max": 512,
        "lrate": 0.002 if res >= 1024 else 0.0025,
        "gamma": 0.0002 * res**2 / mb,
        "ema": mb * 10 / 32,
        "ramp": 0.05,
        "map": 2,
        "kimg": 25000,
    }


def test_auto_on_a_cpu_is_todays_digits_run():
    """The digits on a CPU resolve to the values of the default run before issue 25."""
    today = {
        "image_size": 16,
        "channel_base": 1024,
        "channel_max": 64,
        "batch_size": 16,
        "steps": 2250,
        "lr_g": 0.002,
        "lr_d": 0.002,
        "r1_gamma": 10.0,
        "mbstd_group": 4,
        "ema_kimg": 10.0,
        "ema_rampup": 0.05,
        "ema_decay": None,
        "mapping_layers": 8,
        "pl_weight": 2.0,
        "style_mixing": 0.9,
        "z_dim": 512,
        "w_dim": 512,
    }
    a = m.parse_args(["--assume", "cpu"])
    assert {k: getattr(a, k) for k in today} == today
    assert a.chosen == m.CPU  # what auto set, recorded in args.json
    mnist = m.parse_args(["--assume", "cpu", "--dataset", "mnist"])  # 32x32: about as long
    assert (mnist.image_size, mnist.channel_base, mnist.batch_size) == (32, 1024, 16)
    assert mnist.steps == m.STEPS_32 < 2250


@pytest.mark.parametrize(
    "flags,res,gpus",
    [
        (["--assume", "cuda:8", "--dataset", "celeba"], 64, 8),
        (["--assume", "cuda:8", "--dataset", "folder", "--image-size", "256"], 256, 8),
        (["--assume", "cuda:1", "--dataset", "celeba"], 64, 1),
        (["--assume", "cuda:8", "--dataset", "folder", "--image-size", "1024"], 1024, 8),
    ],
)
def test_auto_on_gpus_is_stylegan2_ada_cfg_auto(flags, res, gpus):
    a, ada = m.parse_args(flags), ada_auto(res, gpus)
    assert a.image_size == res and a.auto["processes"] == gpus
    assert (a.channel_base, a.channel_max) == (ada["channel_base"], ada["channel_max"])
    assert (a.batch_size, a.mbstd_group) == (ada["batch_gpu"], ada["mbstd"])
    assert a.lr_g == a.lr_d == ada["lrate"]
    assert a.r1_gamma == pytest.approx(ada["gamma"])
    assert (a.ema_kimg, a.ema_rampup, a.mapping_layers) == (ada["ema"], ada["ramp"], ada["map"])
    assert a.steps * a.batch_size * gpus >= ada["kimg"] * 1000 > (a.steps - 1) * ada["mb"]
    assert (a.pl_weight, a.style_mixing, a.ema_decay) == (2.0, 0.9, None)  # the loss's defaults


def test_auto_celeba_and_256_numbers():
    """The issue's numbers: CelebA at 64x64 on 8 GPUs is batch 64 (8 per GPU), half width,
    gamma 0.0128, EMA 20 kimg; a 256x256 folder the same batch with gamma 0.2048."""
    a = m.parse_args(["--assume", "cuda:8", "--dataset", "celeba"])
    assert (a.batch_size, a.channel_base, a.r1_gamma, a.ema_kimg) == (8, 16384, 0.0128, 20)
    assert a.steps == 390625  # 25,000 kimg at batch 64
    b = m.parse_args(["--assume", "cuda:8", "--dataset", "folder", "--image-size", "256"])
    assert (b.batch_size, b.mbstd_group, b.r1_gamma, b.steps) == (8, 4, 0.2048, 390625)
    assert (
        m.parse_args(
            ["--dry-run", "--assume", "cuda:8", "--dataset", "celeba", "--batch-size", "4"]
        ).batch_size
        == 4
    )  # a given flag wins


@pytest.mark.parametrize("gpus", [2, 1])
def test_auto_cifar10_is_stylegan2_ada_cfg_cifar(gpus):
    """train.py cfg_specs['cifar']: ref_gpus 2, kimg 100000, mb 64, mbstd 32, fmaps 1, lrate
    0.0025, gamma 0.01, ema 500, ramp 0.05, map 2; pl_weight 0 and style_mixing_prob 0."""
    a = m.parse_args(["--assume", f"cuda:{gpus}", "--dataset", "cifar10"])
    assert a.image_size == 32 and a.batch_size * gpus == 64 and a.mbstd_group == 32
    assert (a.channel_base, a.channel_max, a.lr_g, a.lr_d) == (32768, 512, 0.0025, 0.0025)
    assert (a.r1_gamma, a.ema_kimg, a.ema_rampup, a.mapping_layers) == (0.01, 500, 0.05, 2)
    assert (a.pl_weight, a.style_mixing) == (0, 0)
    assert a.steps == 100_000 * 1000 // 64


def test_auto_batch_fits_the_gpu():
    """Less memory than the estimate of ADA's per-GPU batch needs: a smaller batch, whole
    mbstd groups, and gamma and the EMA follow the global batch as ADA's formulas do."""
    big = m.parse_args(["--assume", "cuda:8:80", "--dataset", "folder", "--image-size", "1024"])
    small = m.parse_args(["--assume", "cuda:8:12", "--dataset", "folder", "--image-size", "1024"])
    assert big.batch_size == 4 and 1 <= small.batch_size < 4
    assert small.batch_size % small.mbstd_group == 0
    assert small.r1_gamma == pytest.approx(0.0002 * 1024**2 / (8 * small.batch_size))
    assert small.ema_kimg == pytest.approx(8 * small.batch_size * 10 / 32)
    assert m.max_batch(64, 16384, 80) >= 32 and m.max_batch(1024, 32768, 12) < 4


def test_help_states_the_auto_rule():
    text = m.config_help(m.auto_config)
    assert "StyleGAN2-ADA" in text and "CPU" in text and not text.endswith(".")


# ---------------------------------------------------------------- issue 27, items 2 and 3
def test_config_paper_has_no_ema_rampup(in_tmp, monkeypatch):
    """Config F has no EMA ramp-up: --config paper's decay is exactly App. B's beta =
    0.5 ** (batch / 10k) from step 0, with no cap of the shared ema_update either."""
    a = m.parse_args(["--config", "paper"])
    assert (a.ema_rampup, a.ema_warmup, a.ema_decay, a.ema_kimg) == (0.0, False, None, 10.0)
    assert m.ema_beta(0, 32, 10.0, 0.0) == 0.5 ** (32 / 10_000)  # step 0: beta, not 0
    seen = []
    real_update = m.ema_update

    def spy(ema, model, decay, step, warmup=True):
        seen.append((step, decay, warmup))
        return real_update(ema, model, decay, step, warmup)

    monkeypatch.setattr(m, "ema_update", spy)
    small = [*tiny_args(m), "--image-size", "16", "--steps", "2"]
    m.main(["--config", "paper", *small, "--out", "paper"])
    beta = 0.5 ** (16 / 10_000)  # tiny_args' batch 16
    assert seen == [(0, beta, False), (1, beta, False)]
    seen.clear()
    m.main([*small, "--out", "auto"])  # auto: the ramp-up of StyleGAN2-ADA, no second cap
    assert seen[0] == (0, 0.0, False) and seen[1][1] == pytest.approx(0.5 ** (16 / 0.8))
    seen.clear()
    m.main([*small, "--ema-decay", "0.99", "--out", "const"])  # a constant decay: --ema-warmup
    assert [w for _, _, w in seen] == [True, True]
    # and with warmup off, the shared update applies the decay itself at step 0
    G, _ = m.build_models(m.parse_args(SMALL), 1, 0)
    ema = m.build_models(m.parse_args(SMALL), 1, 0)[0]
    before = [p.detach().clone() for p in ema.parameters()]
    real_update(ema, G, beta, 0, warmup=False)
    for pe, p0, pg in zip(ema.parameters(), before, G.parameters()):
        torch.testing.assert_close(pe, beta * p0 + (1 - beta) * pg)


def test_fp16_prenormalisation_keeps_the_equalized_lr_scale(monkeypatch):
    """StyleGAN2-ADA's modulated_conv2d under fp16: weight * (1 / sqrt(fan_in) / max|weight|),
    styles / max|styles|; the conv's output (before demodulation) is at that scale, not
    sqrt(fan_in) larger, and the demodulated output is the fp32 one."""
    torch.manual_seed(0)
    cin = 512
    x, w = torch.randn(2, cin, 4, 4), torch.randn(8, cin, 3, 3)
    s = torch.rand(2, cin) + 0.5
    outputs = []
    conv2d = m.F.conv2d

    def spy(*args, **kw):
        outputs.append(conv2d(*args, **kw))
        return outputs[-1]

    monkeypatch.setattr(m.F, "conv2d", spy)
    y16 = m.modulated_conv(x.half(), w, s)
    (pre,) = outputs
    monkeypatch.undo()
    gain = 1 / math.sqrt(cin * 9)
    w_ref = w * (gain / w.abs().amax(dim=[1, 2, 3], keepdim=True))
    s_ref = s / s.abs().amax(dim=1, keepdim=True)
    ref = conv2d(x * s_ref[:, :, None, None], w_ref, padding=1)
    assert pre.dtype == torch.float16
    torch.testing.assert_close(pre.float(), ref, rtol=2e-2, atol=2e-3)
    assert pre.float().abs().max() < 2  # about 0.2 rms; without the gain, about 68x more
    torch.testing.assert_close(y16.float(), m.modulated_conv(x, w, s), rtol=2e-2, atol=2e-2)
