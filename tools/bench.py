"""Training throughput (img/s) and peak memory of the paper scripts.

Each (script, precision) pair trains in a fresh process on the embedded digits for
``2 * --steps`` steps; the second half is timed (the first warms up allocators and
caches). The result is printed as a table and can be written as JSON, so that a
slowdown shows up between versions.

    python tools/bench.py                                  # every script, CPU, fp32 and bf16
    python tools/bench.py dcgan --batch-size 64 --amp off bf16 --json bench.json
    python tools/bench.py dcgan --device cuda --amp off bf16 fp16 --image-size 64

img/s counts real images consumed per second (batch size x processes x G steps / s).
Peak memory is the process's peak resident set (CPU) or torch's peak allocation (CUDA).
``--record TABLE`` also writes the rows into the docs' record, docs/results.json (with the
commit, date, CPU model and this command); ``python tools/results_table.py --write`` then
regenerates the pages' tables.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from common.scripts import load_script, paper_scripts  # noqa: E402


def child(script, argv):
    """Run one benchmark in this process and print its result as one JSON line."""
    import resource

    import torch

    module = load_script(script)
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    result = module.main(argv)
    with open(os.path.join(result["out"], "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if line.strip()]
    out = {
        "img_per_s": records[-1]["img_per_s"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_training_mb": base_rss,
        "peak_cuda_mb": torch.cuda.max_memory_allocated() / 2**20
        if torch.cuda.is_available()
        else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    print("BENCH " + json.dumps(out))


def main(argv=None):
    if argv is None and len(sys.argv) > 2 and sys.argv[1] == "--child":
        return child(sys.argv[2], sys.argv[3:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "scripts",
        nargs="*",
        help=f"scripts to measure (default: all of {', '.join(paper_scripts())})",
    )
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", nargs="+", default=["off", "bf16"], choices=["off", "bf16", "fp16"])
    p.add_argument(
        "--steps", type=int, default=20, help="timed steps (after as many warm-up steps)"
    )
    p.add_argument("--extra", default="", help="more flags for the scripts, e.g. '--g-width 32'")
    p.add_argument("--json", default=None, help="write the results to this file")
    p.add_argument(
        "--record",
        metavar="TABLE",
        default=None,
        help="also write the rows into docs/results.json as TABLE",
    )
    args = p.parse_args(argv)
    names = args.scripts or paper_scripts()
    unknown = sorted(set(names) - set(paper_scripts()))
    if unknown:
        p.error(f"unknown script(s): {', '.join(unknown)}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for amp in args.amp:
                out = os.path.join(tmp, f"{name}-{amp}")
                flags = [
                    "--image-size",
                    str(args.image_size),
                    "--batch-size",
                    str(args.batch_size),
                    "--device",
                    args.device,
                    "--amp",
                    amp,
                    "--steps",
                    str(2 * args.steps),
                    "--log-every",
                    str(args.steps),
                    "--sample-every",
                    str(10**9),
                    "--ckpt-every",
                    str(10**9),
                    "--out",
                    out,
                    *args.extra.split(),
                ]
                r = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "--child", name, *flags],
                    capture_output=True,
                    text=True,
                    cwd=tmp,
                )
                line = next((ln for ln in r.stdout.splitlines() if ln.startswith("BENCH ")), None)
                if r.returncode != 0 or line is None:
                    err = (r.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"{name} amp={amp}: failed: {err}", file=sys.stderr)
                    results.append({"script": name, "amp": amp, "error": err})
                    continue
                rec = {
                    "script": name,
                    "image_size": args.image_size,
                    "batch_size": args.batch_size,
                    "device": args.device,
                    "amp": amp,
                    "steps_timed": args.steps,
                    "extra": args.extra,
                    "cpu": platform.processor() or platform.machine(),
                    **json.loads(line[6:]),
                }
                results.append(rec)
                mem = (
                    f"{rec['peak_cuda_mb']:.0f} MiB CUDA"
                    if rec["peak_cuda_mb"] is not None
                    else (
                        f"{rec['peak_rss_mb']:.0f} MiB RSS "
                        f"({rec['rss_before_training_mb']:.0f} before training)"
                    )
                )
                print(
                    f"{name:10s} {args.image_size}px batch {args.batch_size:4d} {args.device:5s} "
                    f"amp {amp:4s}  {rec['img_per_s']:8.1f} img/s  peak {mem}",
                    flush=True,
                )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    if args.record:
        import shlex

        from tools.results_table import record_rows

        rows = [
            {
                "key": f"{r['script']} {r['amp']} {args.image_size}px",
                **{k: v for k, v in r.items() if k != "cpu"},
            }
            for r in results
        ]
        gpu = None
        if args.device.startswith("cuda"):
            import torch

            gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
        argv = sys.argv[1:] if argv is None else argv
        record_rows(args.record, rows, shlex.join(["python", "tools/bench.py", *argv]), gpu)
    return results


if __name__ == "__main__":
    main()
