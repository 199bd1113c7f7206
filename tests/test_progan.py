"""progan.py's own checks: the growing schedule and its exact resume (stage, alpha, images
seen, across a fade and a change of batch size), the fade-in of G, D and the real images,
equalized learning rate at runtime, PixelNorm (G only, fp32 under autocast), minibatch
stddev (D only, groups, fp32), WGAN-GP with the drift term, the paper's defaults and the
script's bad input."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_one_line_error, load_script, tiny_args
from common.run import read_metrics

m = load_script("progan")


def test_paper_defaults():
    a = m.parse_args(["--config", "paper"])
    assert (a.lr_g, a.lr_d, a.beta1, a.beta2, a.lambda_gp, a.eps_drift, a.ema_decay) == (
        1e-3,
        1e-3,
        0.0,
        0.99,
        10.0,
        0.001,
        0.999,
    )
    assert (
        a.fade_kimg,
        a.stable_kimg,
        a.z_dim,
        a.batch_size,
        a.mbstd_group,
        a.fmap_base,
        a.fmap_max,
    ) == (800, 800, 512, 16, 4, 8192, 512)
    assert a.steps == 0  # to the end of the growing schedule
    # Table 2: 512 maps up to 32x32, then halving to 16 at 1024x1024.
    assert [m.feature_maps(r) for r in range(2, 11)] == [512, 512, 512, 512, 256, 128, 64, 32, 16]
    assert a.ema_warmup is False and a.gp_target == 1.0  # G_smoothing 0.999 from step 0
    # --config auto (the default): the same method, CPU-sized, phases resolved from the data
    a = m.parse_args(["--image-size", "64", "--assume", "cpu"])
    assert (a.fmap_base, a.fmap_max, a.ema_decay, a.fade_kimg, a.lambda_gp) == (
        256,
        64,
        0.99,
        480 / 64,
        10.0,
    )


def stages_and_steps(a):
    """(stages, steps to the end of the growing schedule) of parsed args, one process."""
    n_stages, fade, stable, sizes = m.growth(a)
    return n_stages, m.schedule_steps(fade, stable, n_stages, lambda s: sizes[s])


def test_auto_cpu_digits_resolve_to_todays_run():
    """The default run on the embedded digits: 16 passes of the 1797 digits a phase, grown to
    16x16 in 8985 steps of 16, as before the CPU cap (480 / 16 = 30 kimg is above 28.752)."""
    a = m.parse_args(["--assume", "cpu"])
    assert (a.image_size, a.fade_kimg, a.stable_kimg, a.fmap_base, a.fmap_max, a.z_dim) == (
        16,
        28.752,
        28.752,
        64,
        64,
        512,
    )
    assert (a.batch_size, a.batch_sizes, a.lr_sizes, a.lr_g, a.lr_d, a.mbstd_group) == (
        16,
        "256:12,512:4,1024:4",
        "",
        1e-3,
        1e-3,
        4,
    )
    assert (a.steps, a.ema_decay, a.ema_warmup, a.gp_target, a.flip) == (0, 0.99, True, 1.0, False)
    assert a.chosen == {"fmap_base": 64, "fade_kimg": 28.752, "stable_kimg": 28.752}
    assert stages_and_steps(a) == (3, 8985)


def test_auto_cpu_mnist_grows_to_32_within_its_budget():
    """60,000 MNIST images: 16 passes would be 960k images a phase (350k steps, still at 4x4
    after 10 CPU-minutes); the CPU cap, 480 / 32 = 15 kimg a phase, grows to 32x32 in 6563
    steps of 16, fewer than the digits' 8985 at 16x16 (a step at 32x32 costs more)."""
    a = m.parse_args(["--dataset", "mnist", "--assume", "cpu"])
    assert (a.image_size, a.fade_kimg, a.stable_kimg, a.fmap_base, a.batch_size) == (
        32,
        15.0,
        15.0,
        128,
        16,
    )
    n_stages, steps = stages_and_steps(a)
    assert (n_stages, steps) == (4, 6563)
    # 32x32 has faded in after 6 phases (90k images, step 5625) and stabilises to the end.
    assert m.schedule(5624 * 16, 15_000, 15_000, n_stages)[:2] == (3, pytest.approx(14984 / 15000))
    assert m.schedule(5625 * 16, 15_000, 15_000, n_stages) == (3, 1.0, 6)


def cuda(*flags):
    return m.parse_args(["--assume", *flags])


def test_auto_cuda_celeba_128_on_8_gpus_is_the_official_preset():
    """config.py preset-v2-8gpus (global minibatch {4: 512, 8: 256, 16: 128, 32: 64, 64: 32},
    32 elsewhere, lrate 0.0015 at 128), celeba's mirror_augment, total_kimg 12000; train.py's
    600k-image phases and G_smoothing 0.999 without ramp-up; networks.py's 8192/512 maps."""
    a = cuda("cuda:8", "--dataset", "celeba", "--image-size", "128")
    assert (a.batch_sizes, a.batch_size, a.lr_sizes, a.lr_g, a.lr_d) == (
        "4:64,8:32,16:16,32:8,64:4,128:4",
        4,
        "128:0.0015",
        1e-3,
        1e-3,
    )
    assert (a.fade_kimg, a.stable_kimg, a.fmap_base, a.fmap_max, a.z_dim, a.mbstd_group) == (
        600,
        600,
        8192,
        512,
        512,
        4,
    )
    assert (a.ema_decay, a.ema_warmup, a.flip, a.gp_target) == (0.999, False, True, 1.0)
    # Steps: the growing (600k at 4x4, then 1.2M a resolution, 6.6M images) at each stage's
    # global batch, then the rest of the 12M images at 32.
    per = [64, 32, 16, 8, 4, 4]
    growing = m.schedule_steps(600_000, 600_000, 6, lambda s: per[s] * 8)
    assert a.steps == growing + 5_400_000 // 32
    assert m.learning_rates(a, 6) == [(1e-3, 1e-3)] * 5 + [(0.0015, 0.0015)]


def test_auto_cuda_presets_by_gpu_count_and_memory():
    a = cuda("cuda:1", "--dataset", "celeba")  # 64x64 on 1 GPU: preset-v2-1gpu
    assert (a.image_size, a.batch_sizes, a.lr_sizes) == (64, "4:128,8:128,16:128,32:64,64:32", "")
    a = cuda("cuda:1", "--dataset", "celeba", "--image-size", "1024")
    assert a.batch_sizes.endswith("256:8,512:4,1024:4") and a.lr_sizes == "1024:0.0015"
    a = cuda("cuda:4", "--dataset", "mnist")  # preset-v2-4gpus, no mirroring but for CelebA
    assert (a.image_size, a.batch_sizes, a.flip) == (32, "4:128,8:64,16:32,32:16", False)
    # max_minibatch_per_gpu (fp32, 16 GB): 16 at 256 on a 16 GB GPU, 8 on an 8 GB one.
    a = cuda("cuda:2:8", "--dataset", "celeba", "--image-size", "256")
    assert a.batch_sizes.endswith("128:8,256:4")
    assert cuda("cuda:2:16", "--dataset", "celeba", "--image-size", "256").batch_sizes.endswith(
        "256:4"
    )
    # 3 processes: the 2-GPU preset, the batch split and kept a multiple of the group of 4.
    a = cuda("cuda:3", "--dataset", "celeba")
    assert a.batch_sizes == "4:84,8:84,16:40,32:20,64:8"
    # Given flags win.
    assert cuda("cuda:8", "--dataset", "celeba", "--batch-sizes", "4:8").batch_sizes == "4:8"


def test_auto_cuda_cifar10_is_the_papers_run():
    """Sec. 6.5's CIFAR-10 run, the authors' Theano code (original-theano-version, config.py
    'cifar-10-32x32'): 400k-image phases, minibatch 16, 20M images, fmap_base 4096, fmap_max
    128, latent 128, the stddev over the whole minibatch, gradient-norm target 750."""
    a = cuda("cuda:1", "--dataset", "cifar10")
    assert (a.image_size, a.fade_kimg, a.stable_kimg, a.batch_size, a.steps) == (
        32,
        400,
        400,
        16,
        20_000_000 // 16,
    )
    assert (a.fmap_base, a.fmap_max, a.z_dim, a.mbstd_group, a.gp_target, a.lambda_gp) == (
        4096,
        128,
        128,
        0,
        750.0,
        10.0,
    )
    assert (a.lr_g, a.lr_d, a.ema_decay, a.ema_warmup, a.flip, a.lr_sizes) == (
        1e-3,
        1e-3,
        0.999,
        False,
        False,
        "",
    )
    a = cuda("cuda:8", "--dataset", "cifar10")  # the global 16 split over 8 processes
    assert (a.batch_size, a.steps) == (2, 20_000_000 // 16)


def test_schedule():
    fade, stable = 800_000, 800_000
    assert m.schedule(0, fade, stable, 4) == (0, 1.0, 0)
    assert m.schedule(799_999, fade, stable, 4) == (0, 1.0, 0)
    assert m.schedule(800_000, fade, stable, 4) == (1, 0.0, 1)  # 8x8 starts fading in
    assert m.schedule(1_200_000, fade, stable, 4) == (1, 0.5, 1)
    assert m.schedule(1_600_000, fade, stable, 4) == (1, 1.0, 2)  # and stabilises
    assert m.schedule(2_400_000, fade, stable, 4) == (2, 0.0, 3)
    assert m.schedule(4_800_000, fade, stable, 4) == (3, 1.0, 6)  # 32x32 stable ...
    assert m.schedule(99_000_000, fade, stable, 4) == (3, 1.0, 6)  # ... for good
    # The end of the schedule: 4x4 stable, then fade + stable for 8, 16, 32: 5.6M images.
    assert m.schedule_steps(fade, stable, 4, lambda s: 16) == 5_600_000 // 16
    # 12 images at 4x4, then 18 more to 30 at 8 a step.
    assert m.schedule_steps(10, 10, 2, lambda s: [4, 8][s]) == 3 + 3


def test_equalized_lr_scales_at_runtime():
    torch.manual_seed(0)
    conv = m.EqualizedConv2d(64, 32, 3)
    assert abs(conv.weight.std().item() - 1) < 0.02  # stored N(0, 1)
    assert conv.bias.abs().sum() == 0
    x = torch.randn(2, 64, 5, 5)
    c = math.sqrt(2) / math.sqrt(64 * 9)  # He's constant, applied in forward
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight * c, conv.bias, padding=1))
    with torch.no_grad():
        conv.weight.mul_(2)  # the scale follows the stored weight at every pass
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight * c, conv.bias, padding=1))
    lin = m.EqualizedLinear(10, 3, gain=1.0)
    torch.testing.assert_close(lin(torch.ones(1, 10)), (lin.weight.sum(1) / math.sqrt(10))[None])
    G, D = m.build_models(m.parse_args([*m.SMOKE_ARGS, "--image-size", "32"]), 1, 0)
    plain = (torch.nn.Conv2d, torch.nn.Linear)
    assert not any(isinstance(x, plain) for x in [*G.modules(), *D.modules()])


def test_pixel_norm_in_fp32_and_in_g_only():
    x = torch.randn(4, 8, 3, 3) * 5
    y = m.pixel_norm(x)
    torch.testing.assert_close(y.square().mean(1), torch.ones(4, 3, 3))
    xb = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = m.pixel_norm(xb)
    assert yb.dtype == torch.bfloat16
    # Computed in fp32.
    torch.testing.assert_close(yb, m.pixel_norm(xb.float()).bfloat16(), rtol=0, atol=0)
    calls = {"n": 0}
    orig = m.pixel_norm

    def counting(t, eps=1e-8):
        calls["n"] += 1
        return orig(t, eps)

    m.pixel_norm = counting
    try:
        G, D = m.build_models(m.parse_args([*m.SMOKE_ARGS, "--image-size", "32"]), 1, 0)
        D(torch.randn(4, 1, 32, 32))
        assert calls["n"] == 0  # PixelNorm is not in D
        G(torch.randn(4, 8))
        assert calls["n"] == 3 + 2 * 3  # latent, 4x4 dense and conv, two per block
    finally:
        m.pixel_norm = orig


def test_minibatch_stddev():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, 4)
    y = m.minibatch_stddev(x, 4)
    assert y.shape == (8, 4, 4, 4) and torch.equal(y[:, :3], x)
    for j in range(2):  # sample n is in group n % 2 (official layout)
        grp = x[j::2]
        expect = (grp.var(0, unbiased=False) + 1e-8).sqrt().mean()
        torch.testing.assert_close(y[j::2, 3], expect.expand(4, 4, 4))
    whole = m.minibatch_stddev(x, 0)  # the paper's text: over the whole minibatch
    torch.testing.assert_close(whole[0, 3, 0, 0], (x.var(0, unbiased=False) + 1e-8).sqrt().mean())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        yb = m.minibatch_stddev(x.bfloat16(), 4)
    expect = m.minibatch_stddev(x.bfloat16().float(), 4)[:, 3].bfloat16().float()
    torch.testing.assert_close(yb[:, 3].float(), expect, rtol=0, atol=0)
    with pytest.raises(ValueError):
        m.minibatch_stddev(torch.randn(6, 3, 4, 4), 4)
    assert m.minibatch_stddev(torch.randn(3, 2, 4, 4), 4).shape == (3, 3, 4, 4)  # min(group, batch)


def test_fade_in_of_g_d_and_reals():
    torch.manual_seed(0)
    G, D = m.build_models(m.parse_args([*m.SMOKE_ARGS, "--image-size", "32"]), 1, 0)
    z = torch.randn(4, 8)
    assert G(z).shape == (4, 1, 32, 32) and G(z, 1).shape == (4, 1, 8, 8)
    old = G(z, 0)
    # alpha 0: the old output.
    torch.testing.assert_close(G(z, 1, 0.0), F.interpolate(old, scale_factor=2.0, mode="nearest"))
    torch.testing.assert_close(G(z, 1, 0.25), 0.75 * G(z, 1, 0.0) + 0.25 * G(z, 1, 1.0))
    x = torch.randn(4, 1, 8, 8)
    # alpha 0: the old path on the downsampled input.
    torch.testing.assert_close(D(x, 1, 0.0), D(F.avg_pool2d(x, 2), 0))
    assert D(torch.randn(4, 1, 32, 32)).shape == (4,)
    # Real images: box-filtered to the stage, and blended during a fade exactly like G's output.
    real = torch.randn(4, 1, 32, 32)
    r8 = F.avg_pool2d(real, 4)
    torch.testing.assert_close(m.fade_reals(real, 8, 1.0), r8)
    low = F.interpolate(F.avg_pool2d(r8, 2), scale_factor=2.0, mode="nearest")
    torch.testing.assert_close(m.fade_reals(real, 8, 0.0), low)
    torch.testing.assert_close(m.fade_reals(real, 8, 0.3), 0.7 * low + 0.3 * r8)


def test_losses_drift_and_penalty():
    real, fake = torch.tensor([1.0, 3.0]), torch.tensor([0.5, -0.5])
    # Drift 0.001 E[D(x)^2].
    assert m.d_loss(real, fake).item() == pytest.approx(0.0 - 2.0 + 0.001 * 5.0)
    assert m.g_loss(fake).item() == 0.0
    w = torch.randn(1, 4, 4)

    def critic(x):
        return (x * (2 * w / w.norm())).flatten(1).sum(1)

    x_hat = m.interpolate(torch.randn(3, 1, 4, 4), torch.randn(3, 1, 4, 4))
    # (||g|| - 1)^2 with ||g|| = 2.
    assert m.gradient_penalty(critic(x_hat), x_hat).item() == pytest.approx(1.0)
    # gamma 750 (the authors' CIFAR-10 run): (||g|| - 750)^2 / 750^2, here ||g|| = 2.
    assert m.gradient_penalty(critic(x_hat), x_hat, target=750.0).item() == pytest.approx(
        (748 / 750) ** 2
    )
    x_hat = m.interpolate(torch.zeros(8, 1, 2, 2), torch.ones(8, 1, 2, 2))
    # One eps per sample.
    assert torch.equal(x_hat.flatten(1), x_hat.flatten(1)[:, :1].expand(8, 4))


def logged(run_dir):
    return [
        {k: v for k, v in r.items() if k not in ("img_per_s", "time")}
        for r in read_metrics(f"{run_dir}/metrics.jsonl")
    ]


def test_growing_run_resumes_exactly_across_a_batch_change(in_tmp, capsys):
    """Batch 16 at 4x4, 8 from 8x8 on; interrupted mid-fade, resumed: the same run."""
    common = [
        *tiny_args(m),
        "--image-size",
        "16",
        "--batch-sizes",
        "8:8,16:8",
        "--stable-kimg",
        "0.032",
        "--fade-kimg",
        "0.016",
        "--sample-every",
        "7",
        "--ckpt-every",
        "3",
    ]
    m.main([*common, "--out", "full"])  # --steps 0: to the end of the schedule
    full = logged("full")
    # 32 images at 4x4 (2 steps of 16), 8x8: fade 16 + stable 32 (6 steps of 8), 16x16: the
    # same (6 steps).
    assert [(r["resolution"], r["alpha"]) for r in full] == (
        [(4, 1.0)] * 2
        + [(8, 0.0), (8, 0.5)]
        + [(8, 1.0)] * 4
        + [(16, 0.0), (16, 0.5)]
        + [(16, 1.0)] * 4
    )
    assert full[-1]["kimg"] == pytest.approx(0.032 + 2 * 0.048) and len(full) == 14
    m.main([*common, "--steps", "3", "--out", "part"])  # stops mid-fade into 8x8
    ck = torch.load("part/checkpoints/last.pt", weights_only=True)
    sched, batches = ck["schedule"], ck["batches"]
    assert (sched["images"], sched["stage"], sched["alpha"], sched["phase"]) == (40, 1, 0.0, 1)
    assert batches == {"epoch": 1, "batch": 1, "batch_size": 8}  # switched at the next epoch
    assert ck["opt_g"]["state"]  # Adam's moments since the fade began (reset at step 2)
    m.main(["--resume", "auto", "--out", "part", "--steps", "0"])
    assert logged("part") == full
    a, b = (torch.load(f"{r}/checkpoints/last.pt", weights_only=True) for r in ("full", "part"))
    assert a["schedule"] == b["schedule"] and a["batches"] == b["batches"]
    for key in ("G", "D", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    for key in ("opt_g", "opt_d"):
        assert all(
            torch.equal(u, v)
            for k in a[key]["state"]
            for u, v in zip(a[key]["state"][k].values(), b[key]["state"][k].values())
        )
    generate = m.load_generator("full/checkpoints/last.pt")
    assert generate(5).shape == (5, 1, 16, 16) and generate.resolution == 16
    part2 = m.load_generator("part/checkpoints/step_000003.pt")
    x = part2(2)  # an 8x8 sample shown at 16x16: 2x2 blocks of equal pixels
    assert part2.resolution == 8 and part2.alpha == 0.0
    assert torch.equal(x, F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="nearest"))
    # A schedule given now that would take the run back to a lower resolution: one line.
    assert_one_line_error(
        m, ["--resume", "auto", "--out", "part", "--stable-kimg", "1"], "back from 16x16", capsys
    )


def test_batches_switch_batch_size_at_the_next_epoch():
    """Batches.set_batch_size, as the growing schedule uses it: the next batch is the first of
    the next epoch at the new size, and the size is part of the stream's state."""
    from common import UserError
    from common.data import Batches, MemoryData

    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1).expand(40, 1, 2, 2)
    data = MemoryData(images.contiguous())
    a = Batches(data, 8, "cpu", seed=3)
    it = iter(a)
    next(it), next(it)  # two of epoch 0's five batches
    a.set_batch_size(4)
    assert a.state_dict() == {"epoch": 1, "batch": 0, "batch_size": 4}
    b = Batches(data, 4, "cpu", seed=3)
    b.load_state_dict({"epoch": 1, "batch": 0})  # an older state without a size keeps 4
    x = next(iter(a))[0]
    assert x.shape[0] == 4 and torch.equal(x, next(iter(b))[0])
    c = Batches(data, 16, "cpu", seed=3)
    c.load_state_dict(a.state_dict())  # the size comes with the state
    assert (c.batch_size, c.batches_per_epoch, c.epoch, c.batch) == (4, 10, 1, 1)
    with pytest.raises(UserError):
        c.set_batch_size(41)


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--mbstd-group", "3"], "--mbstd-group 3"),
        (["--batch-sizes", "8:6"], "--batch-sizes"),
        (["--batch-sizes", "8-6"], "RES:BATCH"),
        (["--image-size", "24"], "power of two"),
        (["--lr-sizes", "8:0"], "RES:LR"),
        (["--lr-sizes", "8:x"], "--lr-sizes"),
        (["--fade-kimg", "-1"], "--fade-kimg"),
    ],
)
def test_bad_input(in_tmp, capsys, flags, words):
    assert_one_line_error(m, flags, words, capsys)


def test_resume_with_another_image_size(in_tmp, capsys):
    m.main([*tiny_args(m), "--steps", "1", "--image-size", "8", "--out", "r"])
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        m.main(["--resume", "auto", "--out", "r", "--image-size", "16", "--steps", "2"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert e.value.code == 1 and len(err) == 1 and "--image-size 16 differs" in err[0], err
    assert json.load(open("r/args.json"))["image_size"] == 8
