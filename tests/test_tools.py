"""tools/: evaluate (torch-fidelity with the digits classifier or a local Inception), compare,
bench, plot, color_digits and quantize_celeba's resume check, each on tiny runs so that
nothing is downloaded and the suite stays short; and check_shared, the shared-section
checker."""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, load_script, tiny_args

sys.path.insert(0, os.path.join(ROOT, "tools"))
TOOLS = os.path.join(ROOT, "tools")


def write_folder(path, x):
    """Images in [-1, 1] (N, 1, H, W) as PNG files, the way a user's sample folder looks."""
    from PIL import Image

    os.makedirs(path, exist_ok=True)
    for i, im in enumerate(x):
        Image.fromarray(im[0].add(1).mul(127.5).round().to(torch.uint8).numpy()).save(
            os.path.join(path, f"{i:04d}.png")
        )
    return str(path)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A dcgan checkpoint after 2 tiny steps."""
    d = tmp_path_factory.mktemp("run")
    m = load_script("dcgan")
    return m.main([*tiny_args(m), "--steps", "2", "--out", str(d / "dcgan")])["out"]


def test_evaluate_digits_sanity(tmp_path):
    """Through torch-fidelity with the digits classifier as the feature extractor: half of the
    real digits score near zero against all of them; 600 copies of ones score badly. The
    real-vs-real FID carries the finite-sample bias of 600 images (4.7 here, 5.5 on CI, whose
    CPU trains a slightly different classifier), so the bound is loose and the gap is the test."""
    from common import evaluation as ev

    x, y = ev.real_digits()
    half = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:600]]
    ones = x[y == 1][torch.arange(600) % int((y == 1).sum())]
    real = ev.evaluate(
        write_folder(tmp_path / "real", half),
        "digits",
        num_samples=600,
        metrics=("fid", "kid", "prc"),
    )
    one = ev.evaluate(
        write_folder(tmp_path / "ones", ones),
        "digits",
        num_samples=600,
        metrics=("fid", "kid", "prc"),
    )
    r, o = real["metrics"], one["metrics"]
    assert r["fid"] < 15 and r["coverage"] == 10 and r["precision"] > 0.9 and r["recall"] > 0.9, r
    assert (
        o["fid"] > 50 * r["fid"]
        and o["coverage"] == 1
        and o["recall"] < 0.5
        and o["kid"] > 10 * abs(r["kid"])
    ), o
    assert (
        real["protocol"]["generated"]["num_generated"] == 600
        and real["protocol"]["real"]["num_real"] == 1797
    )


def test_evaluate_checkpoint_writes_numbers_and_protocol(tiny_run):
    import evaluate as ev  # the command line; it writes the JSON

    from common.evaluation import evaluate

    res = ev.main([tiny_run, "--num-samples", "64", "--device", "cpu"])
    path = os.path.join(tiny_run, "eval_step000002_digits.json")
    saved = json.load(open(path))
    assert saved["metrics"] == res["metrics"] and set(res["metrics"]) >= {
        "fid",
        "kid",
        "is",
        "precision",
        "recall",
        "coverage",
    }
    proto = saved["protocol"]
    assert (
        proto["generated"]["generator"] == "EMA"
        and proto["generated"]["num_generated"] == 64
        and proto["generated"]["step"] == 2
    )
    assert (
        proto["real"]["num_real"] == 1797
        and len(proto["feature_extractor"]["weights_sha256"]) == 64
    )
    raw = evaluate(tiny_run, num_samples=64, metrics=("fid",), use_ema=False)
    assert raw["protocol"]["generated"]["generator"] == "raw"


def test_inception_path_with_local_weights(tiny_run, tmp_path, monkeypatch):
    """The standard FID extractor, with a locally made weights file: nothing is downloaded."""
    import torch_fidelity.feature_extractor_inceptionv3 as inc

    from common import evaluation as ev

    monkeypatch.setattr(inc.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
    monkeypatch.setattr(inc, "load_state_dict_from_url", lambda *a, **k: {})
    torch.manual_seed(0)
    weights = str(tmp_path / ev.INCEPTION_FILE)
    torch.save(
        inc.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict(), weights
    )
    monkeypatch.undo()

    def no_download(*a, **k):
        raise AssertionError("tried to download")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(inc, "load_state_dict_from_url", no_download)
    res = ev.evaluate(
        tiny_run,
        num_samples=12,
        num_real=12,
        metrics=("fid", "isc"),
        feature_extractor="inception",
        inception_weights=weights,
    )
    assert (
        res["protocol"]["feature_extractor"]["weights"] == weights
        and "299" in res["protocol"]["feature_extractor"]["resize"]
    )
    assert res["metrics"]["fid"] > 0 and res["metrics"]["is"] > 0


def test_evaluate_missing_weights_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    import evaluate as ev

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))

    def offline(*a, **k):
        raise OSError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(SystemExit) as e:
        ev.main([tiny_run, "--feature-extractor", "inception", "--num-samples", "8"])
    err = capsys.readouterr().err.strip()
    assert (
        e.value.code == 1
        and err.count("\n") == 0
        and "--inception-weights" in err
        and "weights-inception-2015-12-05" in err
    )


TINY = "--g-width 4 --d-width 4 --batch-size 16 --num-workers 0 --device cpu"


def run_compare(out, *flags, extra=TINY, **kw):
    """tools/compare.py on tiny models, writing to ``out``; the finished process."""
    cmd = [
        sys.executable,
        os.path.join(TOOLS, "compare.py"),
        *flags,
        "--num-samples",
        "40",
        "--extra",
        extra,
        "--out",
        str(out),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def test_compare_two_scripts(tmp_path):
    out = tmp_path / "cmp"
    run_compare(out, "dcgan", "lsgan", "--steps", "2", "--show", "4")
    table = (out / "results.md").read_text()
    assert "| dcgan | 2 |" in table and "| lsgan | 2 |" in table and "coverage" in table
    assert "| within-class spread |" in table
    assert "[grid](dcgan/samples/step_000002.png)" in table  # the grid of the last step
    results = json.load(open(out / "results.json"))
    assert [x["script"] for x in results] == ["dcgan", "lsgan"]
    assert all("fid" in x and "within_class_spread" in x for x in results)
    from PIL import Image

    w, h = Image.open(out / "samples.png").size
    assert w > 4 * 32 and h >= 2 * 32


def test_compare_defaults_with_a_config(tmp_path):
    """--defaults runs each script with its own flags (here cut short by --extra) and passes
    --config on; the table says which config ran."""
    out = tmp_path / "cmp"
    run_compare(
        out, "dcgan", "--defaults", "--config", "paper", "--show", "2", extra=TINY + " --steps 2"
    )
    ran = json.load(open(out / "dcgan" / "args.json"))
    assert ran["config"] == "paper" and ran["image_size"] == 64  # the paper's, not the tool's
    assert "--config paper" in (out / "results.md").read_text()


def ignore_sigint():
    """As a background job (`nohup ... &`) inherits it: SIGINT ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def test_compare_minutes_stops_at_the_deadline(tmp_path):
    """A --minutes budget ends each run at its deadline even when the tool runs as a background
    job (SIGINT inherited as ignored, as under `nohup ... &`), and the checkpoint of the step
    the run reached is scored (no periodic checkpoint falls inside the budget)."""
    import re
    import time

    out, t0 = tmp_path / "cmp", time.time()
    run_compare(
        out,
        "dcgan",
        "--minutes",
        "0.25",
        "--ckpt-every",
        "100000",
        "--show",
        "2",
        preexec_fn=ignore_sigint,
    )
    (res,) = json.load(open(out / "results.json"))
    stopped = re.search(r"stopped at step (\d+);", (out / "dcgan.log").read_text())
    # A 15 s budget; the 60 s grace is never reached.
    assert res["wall_s"] < 15 + 30 and stopped and res["step"] == int(stopped[1]) >= 1, res
    assert time.time() - t0 < 200


def test_bench_two_scripts(tmp_path):
    js = tmp_path / "bench.json"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(TOOLS, "bench.py"),
            "dcgan",
            "lsgan",
            "--steps",
            "1",
            "--batch-size",
            "8",
            "--amp",
            "off",
            "--extra",
            "--g-width 4 --d-width 4 --num-workers 0",
            "--json",
            str(js),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.load(open(js))
    assert [x["script"] for x in res] == ["dcgan", "lsgan"] and all(
        x["img_per_s"] > 0 and x["peak_rss_mb"] > 0 for x in res
    )


def test_plot(tiny_run, tmp_path):
    import plot

    out = plot.main([tiny_run, "--out", str(tmp_path / "c.png")])
    from PIL import Image

    assert Image.open(out).size[0] > 400
    with pytest.raises(SystemExit):
        plot.main([tiny_run, "--keys", "nothing_like_this"])


def test_color_digits(tmp_path):
    """tools/color_digits.py: every digit as an RGB PNG, strokes in the four colours,
    both backgrounds."""
    import color_digits
    import numpy as np
    from PIL import Image

    color_digits.main([str(tmp_path), "--size", "16"])
    files = sorted(os.listdir(tmp_path))
    assert len(files) == 1797 and files[0] == "0000.png"
    ims = np.stack([np.asarray(Image.open(tmp_path / f)) for f in files[:200]])
    assert ims.shape == (200, 16, 16, 3)
    backgrounds = {tuple(int(v) for v in b) for b in color_digits.BACKGROUNDS}
    corners = [
        tuple(int(v) for v in c) for c in ims[:, 0, 0]
    ]  # almost every digit leaves its corner blank
    assert set(corners) >= backgrounds and sum(c in backgrounds for c in corners) >= 180
    images, labels = color_digits.color_digits(16)
    assert np.array_equal(images[:200], ims) and labels.shape == (1797,)


def test_grey_digits_are_the_digits(tmp_path):
    """tools/color_digits.py --grey: white strokes on black, the embedded digits' own values
    (so tools/digits_metric.py can score a run on the quantized grey digits)."""
    import color_digits
    import numpy as np
    from PIL import Image

    from common.data import load_digits

    color_digits.main([str(tmp_path), "--size", "8", "--grey"])
    ims = np.stack([np.asarray(Image.open(tmp_path / f"{i:04d}.png")) for i in range(100)])
    assert (ims[..., 0] == ims[..., 1]).all() and (ims[..., 0] == ims[..., 2]).all()
    real = load_digits()[0][:100, 0].numpy().astype(float)
    assert np.abs(ims[..., 0] - real).max() <= 1


def test_quantize_celeba_records_size_and_crop_and_refuses_others(tmp_path, capsys):
    """tools/quantize_celeba.py: palette.json records --size and --crop; resuming into the
    folder with others ends in one line and status 1, before an image is written."""
    import numpy as np
    import quantize_celeba
    from PIL import Image

    src, dst = tmp_path / "src", str(tmp_path / "dst")
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(src / f"{i}.png")
    common = ["--num-colors", "4", "--workers", "1", "--fit-pixels", "500", str(src), dst]
    quantize_celeba.main(["--size", "8", "--crop", "16", *common])
    saved = json.load(open(os.path.join(dst, "palette.json")))
    assert (saved["size"], saved["crop"], saved["num_colors"]) == (8, 16, len(saved["colors"]))
    os.remove(os.path.join(dst, "0.png"))  # a partly done folder
    for flags in (["--size", "16", "--crop", "16"], ["--size", "8"], ["--crop", "12"]):
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            quantize_celeba.main([*flags, *common])
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert e.value.code == 1 and len(lines) == 1 and "Traceback" not in err, err
        assert "made with --size 8 --crop 16" in lines[0], lines
    assert not os.path.exists(os.path.join(dst, "0.png"))  # nothing of another size mixed in
    res = quantize_celeba.main(["--size", "8", "--crop", "16", *common])
    assert res["quantized"] == 1 and res["skipped_done"] == 3
    # An older palette.json without the settings: the size of an existing image decides.
    with open(os.path.join(dst, "palette.json"), "w") as f:
        json.dump({k: saved[k] for k in ("num_colors", "colors")}, f)
    capsys.readouterr()
    with pytest.raises(SystemExit):
        quantize_celeba.main(["--size", "16", *common])
    assert "made with --size 8, not --size 16" in capsys.readouterr().err
    assert quantize_celeba.main(["--size", "8", *common])["skipped_done"] == 4


def test_shared_sections_are_identical():
    r = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tools", "check_shared.py")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout


def test_shared_checker_finds_and_fixes_a_difference(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    import check_shared

    src = open(os.path.join(ROOT, "dcgan.py")).read()
    (tmp_path / "dcgan.py").write_text(src)
    (tmp_path / "other.py").write_text(src.replace("flat.div_(world)", "flat.div(world)"))
    problems = check_shared.check(str(tmp_path))
    assert len(problems) == 1 and "other.py" in problems[0] and "distributed" in problems[0]
    check_shared.check(str(tmp_path), fix=True)
    assert check_shared.check(str(tmp_path)) == [] and (tmp_path / "other.py").read_text() == src
    (tmp_path / "third.py").write_text("print('no sections')\n")
    assert any("missing shared section" in p for p in check_shared.check(str(tmp_path)))


def test_compare_text_scores_ngrams_beside_the_real_floor(tmp_path):
    """--dataset text: the n-gram JS and word share of each script beside real windows, the
    first --show sequences of each in samples.txt; --record keys the rows with --label."""
    import shutil

    from tools.results_table import RECORD

    out = tmp_path / "cmp"
    record = tmp_path / "results.json"
    shutil.copy(RECORD, record)
    text = TINY + " --seq-len 16"
    env = {**os.environ, "GAN_ZOO_RECORD": str(record)}
    flags = ["wgan_gp", "bgan", "--dataset", "text", "--steps", "2", "--show", "3"]
    run_compare(out, *flags, "--record", "t", "--label", "tiny", extra=text, env=env)
    table = (out / "results.md").read_text()
    assert "| js4 | words in the corpus |" in table and "| real windows | | | |" in table
    assert "| wgan_gp | 2 |" in table and "| bgan | 2 |" in table
    blocks = (out / "samples.txt").read_text(encoding="utf-8").strip().split("\n\n")
    assert [b.splitlines()[0] for b in blocks] == ["wgan_gp:", "bgan:", "real windows:"]
    assert all(len(b.splitlines()) == 4 for b in blocks)  # the name and 3 sequences of 16
    assert all(len(s) == 18 for b in blocks for s in b.splitlines()[1:])  # |...|
    rows = [r for r in json.load(open(record))["measurements"] if r["table"] == "t"]
    assert [r["key"] for r in rows] == ["wgan_gp (tiny)", "bgan (tiny)", "real windows (tiny)"]
    assert all(0 <= r["js4"] <= 1 and 0 <= r["words"] <= 1 for r in rows)


def test_code_stats_counts_what_it_says(tmp_path):
    """tools/code_stats.py: train() and its loop from the AST, diff's line count."""
    sys.path.insert(0, TOOLS)
    import code_stats

    text = "def train(args):\n    x = 0\n    while x < 3:\n        x += 1\n    return x\n"
    s = code_stats.stats(text)
    assert (s["lines"], s["train"], s["loop"], s["longest"]) == (5, 5, 2, ("train", 5))
    assert code_stats.diff_lines("a\nb\nc\n", "a\nB\nc\n") == 4  # 2c2, < b, ---, > B
    rows, d = code_stats.main([])
    assert set(rows) >= {"dcgan", "lsgan", "bgan"} and d > 0
