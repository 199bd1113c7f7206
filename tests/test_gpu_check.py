"""tools/gpu_check.py: one line and status 0 without CUDA; its harness, run on the CPU."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "tools", "gpu_check.py")


def test_without_cuda_it_says_so_in_one_line():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run([sys.executable, TOOL], capture_output=True, text=True, env=env)
    assert r.returncode == 0 and r.stdout.strip().count("\n") == 0
    assert "no CUDA device" in r.stdout


def test_harness_reports_each_check(tmp_path):
    flags = [
        "dcgan",
        "--device",
        "cpu",
        "--modes",
        "fp16",
        "--steps",
        "3",
        "--extra",
        "--g-width 4 --d-width 4 --batch-size 8 --num-workers 0",
        "--json",
        str(tmp_path / "r.json"),
    ]
    r = subprocess.run([sys.executable, TOOL, *flags], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| dcgan |")]
    assert len(rows) == 1 and "| passed |" in rows[0], r.stdout
    import json

    got = json.load(open(tmp_path / "r.json"))
    assert [x["mode"] for x in got["results"]] == ["fp16"]
    assert all(x["img_per_s"] > 0 and x["first_step_s"] > 0 for x in got["results"])
