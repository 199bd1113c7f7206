"""The harness every paper script passes: a few CPU steps at tiny width, exact resume,
sampling from the checkpoint, bf16 autocast, two processes under torchrun (gloo), the
file copied alone into an empty folder, and one-line errors for bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, SCRIPTS, assert_one_line_error, load_script, run_torchrun, tiny_args
from common.run import read_metrics

LOSS_KEYS = ("d_loss", "g_loss")


def losses(run_dir):
    return [
        {k: v for k, v in r.items() if k not in ("img_per_s", "time")}
        for r in read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    ]


@pytest.mark.parametrize("name", SCRIPTS)
def test_train_resume_sample(name, in_tmp):
    m = load_script(name)
    common = tiny_args(m, "--sample-every", "2", "--ckpt-every", "2")
    m.main([*common, "--steps", "4", "--out", "full"])
    for f in (
        "args.json",
        "metrics.jsonl",
        "progress.gif",
        "samples/step_000004.png",
        "checkpoints/last.pt",
        "checkpoints/step_000002.pt",
    ):
        assert os.path.exists(os.path.join("full", f)), f
    full = losses("full")
    assert [r["step"] for r in full] == [1, 2, 3, 4]
    assert all(all(map(lambda v: v == v, r.values())) for r in full)

    # Interrupted after 2 steps, resumed to 4: the same losses, bit for bit.
    m.main([*common, "--steps", "2", "--out", "part"])
    m.main(["--resume", "auto", "--out", "part", "--steps", "4"])
    assert losses("part") == full
    assert json.load(open("part/args.json"))["steps"] == 4
    a, b = (torch.load(f"{r}/checkpoints/last.pt", weights_only=True) for r in ("full", "part"))
    for key in a:  # every model, EMA included, ends with the same weights
        if isinstance(a[key], dict) and a[key] and all(torch.is_tensor(v) for v in a[key].values()):
            for k in a[key]:
                assert torch.equal(a[key][k], b[key][k]), (key, k)

    ckpt = torch.load("full/checkpoints/last.pt", weights_only=True)
    assert ckpt["script"] == name and ckpt["step"] == 4
    m.main(["--sample", "6", "--checkpoint", "full", "--out", "sampled", "--device", "cpu"])
    m.main(
        [
            "--sample",
            "2",
            "--interpolate",
            "3",
            "--temperature",
            "0.7",
            "--checkpoint",
            "full/checkpoints/last.pt",
            "--out",
            "sampled",
            "--device",
            "cpu",
        ]
    )
    made = sorted(os.listdir("sampled"))
    assert [f.split("_")[0] for f in made] == ["interpolate", "interpolate", "sample"], made


@pytest.mark.parametrize("name", SCRIPTS)
def test_eval_every_tensorboard_and_curves(name, in_tmp):
    """--eval-every logs eval_* numbers and keeps the best checkpoint;
    --tensorboard writes events."""
    import glob

    m = load_script(name)
    m.main(
        [
            *tiny_args(m),
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--eval-samples",
            "32",
            "--tensorboard",
            "--sample-every",
            "2",
            "--out",
            "ev",
        ]
    )
    evals = [r for r in read_metrics("ev/metrics.jsonl") if "eval_fid" in r]
    assert [r["step"] for r in evals] == [2, 4] and all(
        r["eval_fid"] == r["eval_fid"] and 0 <= r["eval_recall"] <= 1 for r in evals
    )
    best = json.load(open("ev/checkpoints/best.json"))
    assert best["eval_fid"] == min(r["eval_fid"] for r in evals)
    assert (
        torch.load("ev/checkpoints/best.pt", weights_only=True)["step"]
        == best["step"]
        == evals[-1]["eval_best_step"]
    )
    assert glob.glob("ev/tensorboard/events.out.tfevents.*")
    assert os.path.exists("ev/curves.png")


@pytest.mark.parametrize("name", SCRIPTS)
def test_bf16(name, in_tmp):
    m = load_script(name)
    m.main([*tiny_args(m), "--steps", "2", "--amp", "bf16", "--out", "bf16"])
    assert len(losses("bf16")) == 2


@pytest.mark.parametrize("name", SCRIPTS)
def test_torchrun_two_processes(name, in_tmp):
    """Two gloo ranks: every rank ends with the same parameters (gradients are averaged)."""
    m = load_script(name)
    driver = os.path.join(ROOT, "tests", "ddp_driver.py")
    r = run_torchrun(driver, name, *tiny_args(m), "--steps", "3", "--out", "ddp")
    p0, p1 = (torch.load(f"ddp/params_rank{i}.pt", weights_only=True) for i in (0, 1))
    assert p0.keys() == p1.keys() and p0
    for k in p0:
        torch.testing.assert_close(p0[k], p1[k], rtol=0, atol=1e-6, msg=k)
    assert len(losses("ddp")) == 3
    assert "batch 16 x 2 process(es) = 32" in r.stdout


@pytest.mark.parametrize("name", SCRIPTS)
def test_copy_alone(name, tmp_path):
    """The file imports with torch alone and its model and loss work, without common/; it
    answers --help, and training ends in one line that asks for common/."""
    shutil.copy(os.path.join(ROOT, name + ".py"), tmp_path)
    code = (
        f"import sys, torch; import {name} as m\n"
        "assert 'common' not in sys.modules\n"
        "args = m.parse_args(m.SMOKE_ARGS)\n"
        "G, D = m.build_models(args, channels=1, num_classes=0)\n"
        "x = G(torch.randn(3, args.z_dim))\n"
        "assert x.shape == (3, 1, args.image_size, args.image_size), x.shape\n"
        # bgan's g_loss also takes log g(x | z); its loss from D alone is the continuous one
        "g_loss = getattr(m, 'boundary_seeking_loss', m.g_loss)\n"
        "assert g_loss(D(x)).ndim == 0 and callable(m.d_loss)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = dict(cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    r = subprocess.run([sys.executable, "-c", code], **run)
    assert r.returncode == 0, r.stderr[-2000:]
    # --help answers; training says in one line that common/ is needed, and exits 1.
    r = subprocess.run([sys.executable, f"{name}.py", "--help"], **run)
    assert r.returncode == 0 and "--batch-size" in r.stdout and "--sample" in r.stdout, r.stderr
    r = subprocess.run([sys.executable, f"{name}.py", "--steps", "1"], **run)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "common/" in lines[0], r.stderr[-2000:]


def bad_inputs(tmp):
    """(flags, words the one error line must contain) for the mistakes of DESIGN.md."""
    os.makedirs(tmp / "empty")
    (tmp / "junk").mkdir()
    (tmp / "junk" / "a.jpg").write_bytes(b"not an image")
    torch.save({"script": "someother", "step": 1}, tmp / "other.pt")
    (tmp / "broken.pt").write_bytes(b"\x00garbage")
    return [
        (["--dataset", "folder", "--data-path", str(tmp / "missing")], "does not exist"),
        (["--dataset", "folder", "--data-path", str(tmp / "empty")], "no images"),
        (["--dataset", "folder", "--data-path", str(tmp / "junk")], "read"),
        (["--dataset", "mnist", "--data-path", str(tmp / "empty")], "--download"),
        (["--dataset", "cifar10"], "--data-path"),
        (["--image-size", "48"], "--image-size"),
        (["--batch-size", "4000"], "--batch-size"),
        (["--resume", str(tmp / "other.pt")], "someother"),
        (["--resume", str(tmp / "broken.pt")], "cannot read"),
        (["--resume", "auto"], "no checkpoint"),
        (["--sample", "4", "--checkpoint", str(tmp / "nothing.pt")], "not found"),
        (["--sample", "4"], "--checkpoint"),
        (["--lr-d", "1e38", "--lr-g", "1e38", "--steps", "8", "--ckpt-every", "1"], "NaN"),
    ]


@pytest.mark.parametrize("name", SCRIPTS)
def test_bad_input_one_line(name, in_tmp, capsys):
    m = load_script(name)
    for flags, words in bad_inputs(in_tmp):
        assert_one_line_error(m, flags, words, capsys, steps=2, ignore_progress=True)


def test_error_from_the_command_line(tmp_path):
    """End to end: a real process prints one line to stderr and exits 1."""
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "dcgan.py"), "--image-size", "48"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and "power of two" in r.stderr, (
        r.stderr
    )


def test_nan_keeps_last_good_checkpoint(in_tmp, capsys):
    m = load_script("dcgan")
    m.main([*tiny_args(m), "--steps", "2", "--out", "nan"])
    with pytest.raises(SystemExit):  # the resumed run diverges at once
        m.main(
            [
                "--resume",
                "auto",
                "--out",
                "nan",
                "--steps",
                "20",
                "--ckpt-every",
                "1",
                "--lr-d",
                "1e38",
                "--lr-g",
                "1e38",
            ]
        )
    assert os.path.join("nan", "checkpoints", "last.pt (try") in capsys.readouterr().err
    ckpt = torch.load("nan/checkpoints/last.pt", weights_only=True)
    assert ckpt["step"] == 2 and all(
        torch.isfinite(v).all() for v in ckpt["G"].values() if v.is_floating_point()
    )


def test_evaluation_does_not_change_the_trajectory(in_tmp):
    m = load_script("dcgan")
    m.main([*tiny_args(m), "--steps", "4", "--out", "plain"])
    m.main(
        [
            *tiny_args(m),
            "--steps",
            "4",
            "--eval-every",
            "1",
            "--eval-samples",
            "16",
            "--out",
            "evald",
        ]
    )
    assert [r for r in losses("evald") if "eval_fid" not in r] == losses("plain")


def test_existing_run_dir_is_not_overwritten(in_tmp, capsys):
    m = load_script("dcgan")
    m.main([*tiny_args(m), "--steps", "1", "--out", "run"])
    with pytest.raises(SystemExit):
        m.main([*tiny_args(m), "--steps", "1", "--out", "run"])
    assert "already exists" in capsys.readouterr().err


def test_conditional_dcgan(in_tmp):
    m = load_script("dcgan")
    res = m.main([*tiny_args(m), "--steps", "2", "--conditional", "--out", "cond"])
    assert res["G"].num_classes == 10
    m.main(["--sample", "20", "--checkpoint", "cond", "--out", "s", "--device", "cpu"])
    generate = m.load_generator("cond/checkpoints/last.pt")
    assert generate(5, labels=torch.tensor([0, 1, 2, 3, 9])).shape == (5, 1, 16, 16)


def test_folder_data_and_augmentation(in_tmp):
    """A flat folder of colour images (like a cat-faces download) at 16x16 with flip and jitter."""
    from PIL import Image

    os.makedirs("cats")
    g = torch.Generator().manual_seed(0)
    for i in range(20):
        arr = (torch.rand(24, 20, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(f"cats/{i}.jpg")
    m = load_script("dcgan")
    m.main(
        [
            *tiny_args(m),
            "--steps",
            "2",
            "--dataset",
            "folder",
            "--data-path",
            "cats",
            "--image-size",
            "16",
            "--flip",
            "--color-jitter",
            "0.2",
            "--out",
            "cats_run",
        ]
    )
    ckpt = torch.load("cats_run/checkpoints/last.pt", weights_only=True)
    assert ckpt["channels"] == 3 and ckpt["num_classes"] == 0


@pytest.mark.parametrize("size", [8, 64, 128])
def test_image_sizes(size):
    m = load_script("dcgan")
    args = m.parse_args([*m.SMOKE_ARGS, "--image-size", str(size)])
    G, D = m.build_models(args, channels=3, num_classes=0)
    x = G(torch.randn(2, args.z_dim))
    assert x.shape == (2, 3, size, size) and D(x).shape == (2,)


def test_paper_defaults():
    m = load_script("dcgan")
    a = m.parse_args([])
    assert (a.batch_size, a.lr_g, a.lr_d, a.beta1, a.z_dim) == (128, 2e-4, 2e-4, 0.5, 100)
    G, D = m.build_models(a, 1, 0)
    assert not isinstance(D.net[1], torch.nn.BatchNorm2d)  # no BN on D's input layer
    assert isinstance(G.net[-1], torch.nn.Tanh) and not isinstance(G.net[-2], torch.nn.BatchNorm2d)
    w = torch.cat(
        [p.flatten() for n, p in G.named_parameters() if n.endswith("weight") and p.ndim > 1]
    )
    assert abs(w.std().item() - 0.02) < 0.002
