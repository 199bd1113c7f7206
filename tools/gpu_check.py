"""One command that checks the zoo on a CUDA machine: the code paths a CPU cannot run.

Every script trains a few hundred steps on the embedded digits at 64x64 (stylegan2 at
256x256) with its ``--config auto`` settings for that GPU, once per mode: ``bf16``,
``fp16`` (autocast + GradScaler), ``compile`` (bf16 and ``--compile``), and ``torchrun``
(bf16 under a 1-GPU ``torchrun``: the nccl backend). It prints one table: passed or the
run's one-line error, img/s (the median of the logged intervals after the first), peak GPU
memory, and seconds from the process's start to its first step (imports, data, model
build, compilation). ``--json`` writes the table with the GPU's name, torch and commit.

    python tools/gpu_check.py                          # all scripts, all modes, 200 steps
    python tools/gpu_check.py dcgan stylegan2 --modes fp16 compile --steps 100
    python tools/gpu_check.py --json gpu_check.json

On a machine without CUDA it says so in one line and exits 0 (``--device cpu`` runs the same
harness on the CPU, as the tests do).
"""

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from common.scripts import load_script, paper_scripts  # noqa: E402

MODES = {  # mode -> (--amp, more flags, under torchrun)
    "off": ("off", [], False),
    "bf16": ("bf16", [], False),
    "fp16": ("fp16", [], False),
    "compile": ("bf16", ["--compile"], False),
    "torchrun": ("bf16", [], True),
}
SIZE = {"stylegan2": 256}  # the rest at 64x64


def child(script, argv):
    """Train in this process; print the result as one JSON line (``CHECK {...}``)."""
    import torch

    start = time.time()
    module = load_script(script)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = module.main(argv)
    if int(os.environ.get("RANK", 0)) != 0:
        return
    with open(os.path.join(result["out"], "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    later = [r["img_per_s"] for r in rows[1:]] or [rows[-1]["img_per_s"]]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    first = rows[0]["time"] - start  # --log-every 1: the first row is the end of step 1
    print(
        "CHECK "
        + json.dumps(
            {"img_per_s": statistics.median(later), "peak_gib": peak, "first_step_s": first}
        ),
        flush=True,
    )


def run_one(name, mode, args, tmp):
    amp, more, torchrun = MODES[mode]
    out = os.path.join(tmp, f"{name}-{mode}")
    flags = [
        "--device",
        args.device,
        "--amp",
        amp,
        "--steps",
        str(args.steps),
        "--image-size",
        str(SIZE.get(name, 64)),
        "--log-every",
        "1",
        "--sample-every",
        str(10**9),
        "--ckpt-every",
        str(10**9),
        "--num-workers",
        "2",
        "--out",
        out,
        *more,
        *args.extra.split(),
    ]
    me = os.path.abspath(__file__)
    cmd = [sys.executable, me, "--child", name, *flags]
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=1",
            me,
            "--child",
            name,
            *flags,
        ]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp, timeout=args.timeout)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("CHECK ")), None)
    if r.returncode != 0 or line is None:
        lines = [ln for ln in r.stderr.splitlines() if ln.strip() and "it/s]" not in ln]
        return {
            "script": name,
            "mode": mode,
            "passed": False,
            "error": (lines or ["no output"])[-1][:200],
        }
    return {"script": name, "mode": mode, "passed": True, **json.loads(line[6:])}


def row(rec):
    if not rec["passed"]:
        return f"| {rec['script']} | {rec['mode']} | failed: {rec['error']} | | | |"
    peak = "" if rec["peak_gib"] is None else f"{rec['peak_gib']:.2f}"
    return (
        f"| {rec['script']} | {rec['mode']} | passed | {rec['img_per_s']:.0f} | {peak} | "
        f"{rec['first_step_s']:.0f} |"
    )


def main(argv=None):
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("scripts", nargs="*", help="scripts to check (default: all)")
    p.add_argument(
        "--modes", nargs="+", default=["bf16", "fp16", "compile", "torchrun"], choices=list(MODES)
    )
    p.add_argument("--steps", type=int, default=200, help="training steps per check")
    p.add_argument("--device", default="cuda", help="cuda (cpu runs the harness, for tests)")
    p.add_argument("--extra", default="", help="more flags for every script")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per check")
    p.add_argument("--json", default=None, help="write the table and the machine to this file")
    args = p.parse_args(argv)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine; nothing to check (run it on a GPU)")
        return 0
    names = args.scripts or paper_scripts()
    unknown = sorted(set(names) - set(paper_scripts()))
    if unknown:
        p.error(f"unknown script(s): {', '.join(unknown)}")
    cuda = args.device.startswith("cuda")
    gpu = torch.cuda.get_device_name() if cuda else "none (CPU)"
    commit = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    print(
        f"gpu_check: {gpu}, torch {torch.__version__}, commit {commit or '?'}, "
        f"{args.steps} steps per check",
        flush=True,
    )
    print(
        "| script | mode | result | img/s | peak GiB | s to first step |\n"
        "| --- | --- | --- | --- | --- | --- |",
        flush=True,
    )
    results, tmp = [], tempfile.mkdtemp(prefix="gpu_check_")
    try:
        for name in names:
            for mode in args.modes:
                rec = run_one(name, mode, args, tmp)
                results.append(rec)
                print(row(rec), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "gpu": gpu,
                    "torch": torch.__version__,
                    "commit": commit,
                    "date": datetime.date.today().isoformat(),
                    "steps": args.steps,
                    "results": results,
                },
                f,
                indent=2,
            )
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
