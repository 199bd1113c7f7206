"""--config auto of dcgan.py and the scripts built on it (lsgan, ebgan, wgan, dragan): on a CPU
the embedded digits resolve to the values of before the rule (commit c16a346), a run of
minutes; on CUDA the authors' 64x64 settings, the global batch split over the processes and
the schedule in images seen. Parsing only, no training."""

import math

import pytest

from conftest import load_script

FAMILY = ["dcgan", "lsgan", "ebgan", "wgan", "dragan"]
CELEBA = 202599  # training images of CelebA, as --config auto knows them without files

# The digits on a CPU before --config auto had a rule (c16a346's defaults and ebgan's margin).
CPU_DIGITS = {
    "dcgan": {
        "image_size": 16,
        "batch_size": 128,
        "steps": 3000,
        "lr_g": 2e-4,
        "lr_d": 2e-4,
        "z_dim": 100,
        "g_width": 64,
        "d_width": 64,
        "ema_decay": 0.999,
        "beta1": 0.5,
        "beta2": 0.999,
    },
    "lsgan": {
        "image_size": 16,
        "batch_size": 64,
        "steps": 3500,
        "lr_g": 1e-3,
        "lr_d": 1e-3,
        "z_dim": 1024,
        "g_width": 64,
        "d_width": 64,
        "ema_decay": 0.999,
        "beta1": 0.5,
        "beta2": 0.999,
        "arch": "dcgan",
        "coding": "binary",
    },
    "ebgan": {
        "image_size": 16,
        "batch_size": 64,
        "steps": 3200,
        "lr_g": 1e-3,
        "lr_d": 1e-3,
        "z_dim": 100,
        "g_width": 64,
        "d_width": 64,
        "ema_decay": 0.999,
        "beta1": 0.5,
        "beta2": 0.999,
        "margin": 6,
        "pt_weight": 0.1,
    },
    "wgan": {
        "image_size": 16,
        "batch_size": 64,
        "steps": 1550,
        "lr_g": 5e-5,
        "lr_d": 5e-5,
        "z_dim": 100,
        "g_width": 64,
        "d_width": 64,
        "ema_decay": 0.999,
        "n_critic": 5,
        "clip": 0.01,
        "n_critic_boost": 0,
    },
    "dragan": {
        "image_size": 16,
        "batch_size": 128,
        "steps": 2000,
        "lr_g": 1e-4,
        "lr_d": 1e-4,
        "z_dim": 100,
        "g_width": 64,
        "d_width": 64,
        "ema_decay": 0.999,
        "beta1": 0.5,
        "beta2": 0.9,
        "lambda_gp": 10.0,
        "perturb_std": 0.5,
    },
}

# CUDA, CelebA at 64x64: the authors' settings, the global batch and the steps of their
# schedule (25 epochs of the data; wgan's counted in the critic's n_critic real batches per
# G step; dragan's 200,000 steps of 128 whatever the data).
CUDA_CELEBA = {
    "dcgan": (
        {"g_width": 128, "d_width": 128, "lr_g": 2e-4, "lr_d": 2e-4, "z_dim": 100},
        128,
        25 * CELEBA / 128,
    ),
    "lsgan": (
        {"g_width": 64, "d_width": 64, "lr_g": 2e-4, "lr_d": 2e-4, "z_dim": 1024, "arch": "dcgan"},
        64,
        25 * CELEBA / 64,
    ),
    "ebgan": (
        {"g_width": 64, "d_width": 64, "margin": 20.0, "lr_g": 1e-3, "pt_weight": 0.1},
        64,
        25 * CELEBA / 64,
    ),
    "wgan": (
        {
            "g_width": 64,
            "d_width": 64,
            "lr_g": 5e-5,
            "lr_d": 5e-5,
            "n_critic": 5,
            "clip": 0.01,
            "n_critic_boost": 100,
        },
        64,
        25 * CELEBA / (64 * 5),
    ),
    "dragan": (
        {"g_width": 64, "d_width": 64, "lr_g": 1e-4, "lr_d": 1e-4, "lambda_gp": 10.0},
        128,
        200_000,
    ),
}


def resolve(name, *argv):
    return load_script(name).parse_args(list(argv))


@pytest.mark.parametrize("name", FAMILY)
def test_cpu_digits_are_todays_run_of_minutes(name):
    args = resolve(name, "--assume", "cpu")
    for k, v in CPU_DIGITS[name].items():
        assert getattr(args, k) == v, (name, k)
    assert args.chosen == ({"margin": 6} if name == "ebgan" else {})
    # on this machine (no --assume) the same, where it has no GPU
    if args.auto["device"] == resolve(name).auto["device"]:
        assert vars(resolve(name)) == {**vars(args), "assume": None, "explicit": []}


@pytest.mark.parametrize("name", FAMILY)
def test_cpu_other_data_keeps_the_defaults(name):
    args = resolve(name, "--assume", "cpu", "--dataset", "mnist", "--data-path", "x")
    assert args.image_size == 32
    assert args.chosen == ({"margin": 11} if name == "ebgan" else {})


@pytest.mark.parametrize("name", FAMILY)
def test_cuda_celeba_64_is_the_authors_setting(name):
    want, batch, steps = CUDA_CELEBA[name]
    args = resolve(name, "--assume", "cuda:1", "--dataset", "celeba")
    assert args.image_size == 64 and args.auto["images"] == CELEBA
    for k, v in want.items():
        assert getattr(args, k) == v, (name, k)
    assert args.batch_size == batch
    assert args.steps == math.ceil(steps)
    assert args.chosen["steps"] == args.steps and args.chosen["batch_size"] == batch


@pytest.mark.parametrize("name", FAMILY)
def test_cuda_8_splits_the_global_batch(name):
    """8 processes share the authors' global batch; the schedule in images stays."""
    one = resolve(name, "--assume", "cuda:1", "--dataset", "celeba")
    eight = resolve(name, "--assume", "cuda:8", "--dataset", "celeba")
    assert eight.batch_size == one.batch_size // 8 and eight.auto["processes"] == 8
    assert eight.steps == one.steps
    assert eight.g_width == one.g_width and eight.lr_g == one.lr_g
    many = resolve(name, "--assume", "cuda:1024", "--dataset", "celeba")
    assert many.batch_size == 1  # at least one image a process


@pytest.mark.parametrize("name", FAMILY)
def test_given_flags_win_and_the_schedule_follows_the_batch(name):
    args = resolve(
        name,
        "--assume",
        "cuda:2",
        "--dataset",
        "cifar10",
        "--g-width",
        "32",
        "--batch-size",
        "16",
        "--lr-g",
        "3e-4",
    )
    assert (args.g_width, args.batch_size, args.lr_g) == (32, 16, 3e-4)
    assert not {"g_width", "batch_size", "lr_g"} & set(args.chosen)
    auto = resolve(name, "--assume", "cuda:2", "--dataset", "cifar10")
    per_step = {"wgan": 5}.get(name, 1)  # real batches per G step
    if name == "dragan":  # the authors' 25,600 kimg at the batch that runs
        assert args.steps == math.ceil(25_600_000 / (16 * 2))
    else:  # 25 epochs of the 50,000 images at the batch that runs
        assert args.steps == math.ceil(25 * 50_000 / (16 * 2 * per_step))
    assert auto.steps != args.steps
    assert resolve(name, "--assume", "cuda", "--dataset", "celeba", "--steps", "7").steps == 7


@pytest.mark.parametrize("name", FAMILY)
def test_cuda_unknown_data_size_keeps_the_default_steps(name):
    """A folder not there to count (a dry run elsewhere): no epochs to count, the defaults."""
    args = resolve(name, "--assume", "cuda", "--dataset", "folder", "--data-path", "nowhere")
    if name == "dragan":  # its schedule is in images, whatever the data
        assert args.steps == 200_000
    else:
        assert "steps" not in args.chosen and args.steps == CPU_DIGITS[name]["steps"]


def test_wgan_schedule_counts_the_critics_batches():
    args = resolve("wgan", "--assume", "cuda", "--dataset", "celeba", "--n-critic", "10")
    assert args.steps == math.ceil(25 * CELEBA / (64 * 10))


def test_lsgan_learning_rate_follows_the_networks():
    """DCGAN's networks at 64x64: the authors' 2e-4; Fig. 3's networks: Sec. 4.1's 1e-3."""
    args = resolve("lsgan", "--assume", "cuda", "--dataset", "celeba", "--arch", "paper")
    assert (args.lr_g, args.lr_d) == (1e-3, 1e-3)


def test_ebgan_margin_grows_with_the_side_as_the_appendix():
    def margin(size, device="cuda"):
        return resolve("ebgan", "--assume", device, "--image-size", str(size)).margin

    assert [margin(s) for s in (32, 64, 128, 256)] == [10.0, 20.0, 40.0, 80.0]
    assert [margin(s, "cpu") for s in (16, 32, 64)] == [6, 11, 23]  # CPU: 10 x size / 28
    assert resolve("ebgan", "--assume", "cuda", "--margin", "15").margin == 15.0
