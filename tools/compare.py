"""Train several scripts on the same data for the same budget, evaluate each the same
way, and write one table and one side-by-side image: a comparison without cherry-picking.

    python tools/compare.py --minutes 3                      # every script, digits, 3 min each
    python tools/compare.py --defaults                       # every script's default run
    python tools/compare.py --defaults --config paper dcgan  # ... or the paper's settings
    python tools/compare.py dcgan wgan_gp began --steps 500  # the same number of G steps
    python tools/compare.py --minutes 30 --dataset celeba --data-path ~/data --image-size 64 \\
        --extra "--amp bf16"
    python tools/compare.py --minutes 5 --dataset text wgan_gp bgan   # text: n-gram JS, words

Each script runs with its own defaults (``--config auto``, or the --config given), in a fresh
process, with the given data flags and budget; --defaults runs each to its own end. A
--minutes budget lets it run with a large --steps and sends it SIGTERM at the deadline: the
run ends at the end of its step with a checkpoint of that step, which is evaluated, so a
script that needs more critic steps per G step gets the same wall time, not the same number
of steps. Every script is then scored by tools/evaluate.py with the same protocol (digits:
the digits classifier; otherwise the FID Inception), and the first --show samples of its EMA
generator from one fixed seed go into one row of the image, in the order of the table:
nothing is picked by hand.

On ``--dataset text`` the scores are the character n-gram JS divergences and the share of
corpus words (common/text.py), with a row of real windows against the corpus (the floor a
sample of that size sets), and the first --show sequences of each go into samples.txt.

Output (--out, default runs/compare/<time>): results.md, results.json, samples.png (text:
samples.txt) and each script's run directory. ``--record TABLE`` also writes each script's
row into the docs' record, docs/results.json (with the commit, date, CPU model and this
command), as a row of TABLE (``defaults`` is the table that README.md and docs/results.md
show), keyed by the script's name (with ``--label L``: "script (L)", e.g. the budget or the
config); then ``python tools/results_table.py --write`` regenerates the pages' tables.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from common.scripts import load_script, paper_scripts  # noqa: E402

# the table's column headers, where they are not the metric's name
HEADERS = {
    "fid": "FID",
    "kid": "KID",
    "is": "IS",
    "within_class_spread": "within-class spread",
    "words": "words in the corpus",
}
REAL = "real windows"  # text: the row of real windows against the corpus


def train(name, out, flags, minutes, log):
    """Run one script; returns (wall seconds, return code). A --minutes run is stopped by
    SIGTERM at the deadline, and ends with a checkpoint of the step it reached."""
    cmd = [sys.executable, os.path.join(ROOT, name + ".py"), "--out", out, *flags]
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        try:
            rc = proc.wait(timeout=minutes * 60 if minutes else None)
        except subprocess.TimeoutExpired:
            # SIGTERM, not SIGINT: a job started in the background (nohup ... &) inherits SIGINT
            # ignored. The run finishes its step, writes its checkpoint and exits 128 + 15.
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                rc = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # a step longer than the grace: the last periodic
                os.killpg(proc.pid, signal.SIGKILL)  # checkpoint (written durably) is scored
                proc.wait()
                rc = 128 + signal.SIGTERM
            rc = 0 if rc == 128 + signal.SIGTERM else rc
    return time.time() - t0, rc


def mean_img_per_s(run):
    from common.run import read_metrics

    path = os.path.join(run, "metrics.jsonl")
    recs = [r for r in read_metrics(path) if "img_per_s" in r] if os.path.exists(path) else []
    recs = recs[1:] or recs  # the first interval includes start-up
    return sum(r["img_per_s"] for r in recs) / len(recs) if recs else float("nan")


def side_by_side(rows, path, show):
    """One row of ``show`` samples per (label, images in [-1, 1]), with the label on the left."""
    import numpy as np
    from PIL import Image, ImageDraw

    from common.images import make_grid

    grids = [
        make_grid(
            x[:show].expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:show], nrow=show, min_size=0
        )
        for _, x in rows
    ]
    k = max(1, 64 // max(1, rows[0][1].shape[-1]))  # upscale small images for viewing
    grids = [g.repeat(k, 0).repeat(k, 1) for g in grids]
    label_w, width = 110, max(g.shape[1] for g in grids)
    canvas = Image.new("RGB", (label_w + width, sum(g.shape[0] for g in grids)), "white")
    draw, y = ImageDraw.Draw(canvas), 0
    for (label, _), g in zip(rows, grids):
        canvas.paste(Image.fromarray(np.ascontiguousarray(g)), (label_w, y))
        draw.text((6, y + g.shape[0] // 2 - 6), label, fill="black")
        y += g.shape[0]
    canvas.save(path)
    return path


def last_grid(out, name):
    """A link to the grid the run drew at its last step (relative to ``out``), or ""."""
    folder = os.path.join(out, name, "samples")
    grids = (
        sorted(f for f in os.listdir(folder) if f.startswith("step_"))
        if os.path.isdir(folder)
        else []
    )
    return f"[grid]({name}/samples/{grids[-1]})" if grids else ""


def budget_words(args):
    if args.defaults:
        return "each script's default length"
    return f"{args.steps} generator steps each" if args.steps else f"{args.minutes:g} minutes each"


def write_text_samples(rows, path):
    """samples.txt: each script's name, then its sequences, one per line."""
    with open(path, "w", encoding="utf-8") as f:
        for label, lines in rows:
            f.write(f"{label}:\n" + "".join(f"|{s}|\n" for s in lines) + "\n")
    return path


def record(table, results, argv, cuda, label=None):
    """Each script's row into docs/results.json as a row of ``table``."""
    import shlex

    from tools.results_table import RECORD, record_rows

    argv = sys.argv[1:] if argv is None else argv
    rows = []
    for r in results:
        key = f"{r['script']} ({label})" if label else r["script"]
        row = {"key": key, **{k: v for k, v in r.items() if k != "protocol"}}
        if "protocol" in r:
            gen = r["protocol"]["generated"]
            row.update(
                dataset=gen["dataset"],
                image_size=gen.get("image_size"),
                num_samples=gen["num_generated"],
                features=r["protocol"]["feature_extractor"]["name"],
            )
        rows.append(row)
    gpu = None
    if cuda:
        import torch

        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    record_rows(table, rows, shlex.join(["python", "tools/compare.py", *argv]), gpu)
    print(
        f"recorded {len(rows)} rows of {table!r} in {os.path.relpath(RECORD, ROOT)}; "
        "python tools/results_table.py --write regenerates the tables"
    )


def main(argv=None):
    from common import evaluation
    from common.run import find_checkpoint

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "scripts",
        nargs="*",
        help=f"scripts to compare (default: all of {', '.join(paper_scripts())})",
    )
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--steps", type=int, help="the same number of generator updates for each")
    budget.add_argument("--minutes", type=float, help="the same wall time for each")
    budget.add_argument("--defaults", action="store_true", help="each script's own default run")
    p.add_argument("--config", default=None, help="every script's --config (default: auto)")
    p.add_argument("--dataset", default="digits")
    p.add_argument("--data-path", default=None)
    p.add_argument("--image-size", type=int, default=None, help="default: each script's")
    p.add_argument(
        "--extra", default="", help="more flags for every script, e.g. '--amp bf16 --device cuda'"
    )
    p.add_argument(
        "--ckpt-every",
        type=int,
        default=500,
        help="with --minutes: steps between periodic checkpoints (the deadline writes one too)",
    )
    p.add_argument(
        "--num-samples", type=int, default=2000, help="generated images per script for the metrics"
    )
    p.add_argument("--inception-weights", default=None, help="see tools/evaluate.py")
    p.add_argument(
        "--show", type=int, default=12, help="samples per script in the side-by-side image"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default runs/compare/<time>)")
    p.add_argument(
        "--record",
        metavar="TABLE",
        default=None,
        help="also write the rows into docs/results.json as TABLE (e.g. defaults)",
    )
    p.add_argument(
        "--label",
        default=None,
        help="--record's rows are keyed 'script (LABEL)' (e.g. '5 min', 'config paper')",
    )
    args = p.parse_args(argv)
    names = args.scripts or paper_scripts()
    unknown = sorted(set(names) - set(paper_scripts()))
    if unknown:
        p.error(f"unknown script(s): {', '.join(unknown)}")
    if (args.steps is not None and args.steps < 1) or (
        args.minutes is not None and args.minutes <= 0
    ):
        p.error("the budget must be positive")
    out = os.path.abspath(
        args.out or os.path.join(ROOT, "runs", "compare", time.strftime("%Y%m%d-%H%M%S"))
    )
    os.makedirs(out, exist_ok=True)
    data = ["--dataset", args.dataset, "--seed", str(args.seed)]
    if args.image_size:
        data += ["--image-size", str(args.image_size)]
    if args.data_path:
        data += ["--data-path", args.data_path]
    if args.config:
        data += ["--config", args.config]
    if args.steps:
        budget_flags = ["--steps", str(args.steps)]
    elif args.defaults:
        budget_flags = []
    else:
        budget_flags = [
            "--steps",
            str(10**7),
            "--ckpt-every",
            str(args.ckpt_every),
            "--sample-every",
            str(10 * args.ckpt_every),
        ]
    results, rows, real_row, real_samples = [], [], None, []
    for name in names:
        run = os.path.join(out, name)
        print(
            f"{name}: training ({budget_words(args)})",
            flush=True,
        )
        wall, rc = train(
            name,
            run,
            [*data, *budget_flags, *args.extra.split()],
            args.minutes,
            os.path.join(out, f"{name}.log"),
        )
        rec = {"script": name, "wall_s": round(wall, 1), "img_per_s": round(mean_img_per_s(run), 1)}
        try:
            if rc != 0:
                raise RuntimeError(f"exit status {rc}, see {name}.log")
            ckpt = find_checkpoint(name, run)
            res = evaluation.evaluate(
                ckpt,
                args.dataset,
                args.data_path,
                args.num_samples,
                0,
                evaluation.METRICS,
                "auto",
                args.inception_weights,
                seed=args.seed,
                device="cpu" if "cuda" not in args.extra else "auto",
            )
            rec.update(
                step=res["protocol"]["generated"]["step"],
                **res["metrics"],
                protocol=res["protocol"],
            )
            generate = load_script(name).load_generator(ckpt)
            x = generate(args.show, seed=args.seed)
            if args.dataset == "text":  # sequences, and the real windows' floor
                from common.text import to_text

                x = to_text(x, generate.kind.vocab)
                real_row = {"script": REAL, **res["protocol"]["real"]["real_vs_real"]}
                real_samples = res["samples"]["real"][: args.show]
            rows.append((name, x))
        except Exception as e:  # noqa: BLE001 - one failing script does not end the comparison
            rec["error"] = str(e).splitlines()[-1] if str(e) else type(e).__name__
            print(f"{name}: failed: {rec['error']}", file=sys.stderr)
        results.append(rec)
        print(
            f"{name}: "
            + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in rec.items()
                if k not in ("script", "protocol")
            ),
            flush=True,
        )
    cols = ["fid", "kid", "is", "precision", "recall"]
    if args.dataset == "digits":
        cols += ["within_class_spread", "coverage", "confidence"]
    if args.dataset == "text":
        cols = ["js1", "js2", "js3", "js4", "words"]
    budget = budget_words(args)
    fe = next(
        (r["protocol"]["feature_extractor"]["name"] for r in results if "protocol" in r), "n/a"
    )
    lines = [
        f"Each script with --config {args.config or 'auto'} on {args.dataset}"
        f"{f' at {args.image_size}x{args.image_size}' if args.image_size else ''}, {budget}"
        f"{f' ({args.extra})' if args.extra else ''}; {args.num_samples} samples of the EMA "
        f"generator against the whole {'corpus' if args.dataset == 'text' else 'training set'},"
        f" features: {fe}; device: "
        f"{'CUDA' if 'cuda' in args.extra else f'CPU, {os.cpu_count()} cores'}.",
        "",
        "| script | steps | wall time | img/s | "
        + " | ".join(HEADERS.get(c, c) for c in cols)
        + " | grid |",
        "| --- " * (5 + len(cols)) + "|",
    ]
    if real_row is not None:  # text: real windows against the corpus, no run
        results.append(real_row)
    for r in results:
        if r["script"] == REAL:
            vals = [f"{r[c]:.4g}" for c in cols]
            lines.append(f"| {REAL} | | | | " + " | ".join(vals) + " | |")
            continue
        if "error" in r:
            lines.append(f"| {r['script']} | failed: {r['error']} |" + " |" * (3 + len(cols)))
            continue
        vals = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in cols]
        lines.append(
            f"| {r['script']} | {r['step']} | {r['wall_s'] / 60:.1f} min | {r['img_per_s']:.0f} | "
            + " | ".join(vals)
            + f" | {last_grid(out, r['script'])} |"
        )
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    shown = ""
    if rows and args.dataset == "text":
        shown = write_text_samples(rows + [(REAL, real_samples)], os.path.join(out, "samples.txt"))
    elif rows:
        shown = side_by_side(rows, os.path.join(out, "samples.png"), args.show)
    if args.record:
        record(args.record, results, argv, "cuda" in args.extra, args.label)
    print("\n".join(lines))
    print(
        f"wrote {os.path.join(out, 'results.md')}, results.json"
        f"{f' and {os.path.basename(shown)}' if shown else ''}"
    )
    return results


if __name__ == "__main__":
    main()
