"""The measurement record (docs/results.json) and the tables generated from it.

Every number the docs quote is a row of docs/results.json: which table it belongs to, what
it measured, and where it came from (commit, date, the CPU's `lscpu` model name or the GPU,
the command). The measuring tools write their rows themselves (`tools/compare.py --record
TABLE`, `tools/bench.py --record TABLE`, `tools/digits_metric.py RUN --record TABLE`); this
tool renders the tables into the pages between marker comments (`<!-- results:VIEW -->` ...
`<!-- /results:VIEW -->`):

    python tools/results_table.py            # print every generated table
    python tools/results_table.py --write    # rewrite the tables in README.md and docs/*.md
    python tools/results_table.py --check    # exit 1 if a page's table differs from the record
    python tools/results_table.py --drop text "bgan.py (1502 steps)"   # a superseded row

tests/test_docs.py runs the check. A row that a tool has not written (an older measurement)
says "unknown" where the page it came from did not state its commit or machine.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# GAN_ZOO_RECORD: another record file to write (the tests' copy)
RECORD = os.environ.get("GAN_ZOO_RECORD") or os.path.join(ROOT, "docs", "results.json")
PAGES = ["README.md", "docs/results.md"]
META = ("table", "key", "commit", "date", "cpu", "gpu", "command", "note")


def _g4(v):
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _minutes(v):
    return f"{v / 60:.1f} min"


def _int(v):
    return f"{v:.0f}" if isinstance(v, (int, float)) else str(v)


def _f3(v):
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def _share(v):
    return f"{v:.0%}" if isinstance(v, float) else str(v)


def _f1(v):
    return f"{v:.1f}" if isinstance(v, float) else str(v)


COMPARE = [
    ("script", "script", str),
    ("steps", "step", str),
    ("wall time", "wall_s", _minutes),
    ("img/s", "img_per_s", _int),
    ("FID", "fid", _g4),
    ("KID", "kid", _g4),
    ("IS", "is", _g4),
    ("precision", "precision", _g4),
    ("recall", "recall", _g4),
    ("coverage", "coverage", str),
    ("confidence", "confidence", _g4),
]
# the rows tools/digits_metric.py --record writes
DIGITS_METRIC = [
    ("run", "key", str),
    ("steps", "steps", str),
    ("FD", "fd", _f1),
    ("recall", "recall", _g4),
    ("within-class spread", "within_class_spread", _g4),
    ("classes", "={coverage}/10", None),
    ("classifier", "classifier", str),
    ("trained by", "note", str),
]
# view -> (table, columns (header, key, format); a key "=..." is a template of the row)
VIEWS = {
    "defaults": (
        "defaults",
        [
            *COMPARE,
            ("within-class spread", "within_class_spread", _g4),
            ("commit", "commit", str),
            ("CPU", "cpu", str),
            ("grid", "=[grid]({script}_digits.png)", None),
        ],
    ),
    "readme-defaults": (
        "defaults",
        [
            ("default run", "=`python {script}.py`", None),
            ("steps", "step", str),
            ("wall time", "wall_s", _minutes),
            ("FID", "fid", _f1),
            ("classes", "={coverage}/10", None),
            ("grid", "=[grid](docs/{script}_digits.png)", None),
        ],
    ),
    "minutes3": ("minutes3", COMPARE),
    "sweeps": (
        "sweeps",
        [
            ("script", "script", str),
            ("run", "run", str),
            ("FD on the way (steps)", "on_the_way", str),
            ("at the end", "end", str),
        ],
    ),
    "speed-dcgan": (
        "speed-dcgan",
        [
            ("CPU", "cpu", str),
            ("date", "date", str),
            ("commit", "commit", str),
            ("precision", "amp", str),
            ("img/s", "img_per_s", _int),
            ("peak RSS", "peak_rss_mb", lambda v: f"{v:.0f} MiB"),
        ],
    ),
    "speed-16": (
        "speed-16",
        [
            ("script", "script", str),
            ("image size", "image_size", str),
            ("img/s", "img_per_s", _int),
            ("date", "date", str),
            ("commit", "commit", str),
        ],
    ),
    "fused-adam": (
        "fused-adam",
        [
            ("script", "script", str),
            ("img/s before (4b561bd)", "before", _int),
            ("after (4d773a0)", "after", _int),
        ],
    ),
    "text": (
        "text",
        [
            ("", "key", str),
            ("steps", "step", str),
            ("js1", "js1", _f3),
            ("js2", "js2", _f3),
            ("js3", "js3", _f3),
            ("js4", "js4", _f3),
            ("words in the corpus", "words", _share),
        ],
    ),
    "off-bench": ("off-bench", DIGITS_METRIC),
    # issue 26: D with and without batch norm, discrete images
    "bgan-d-batch-norm": ("bgan-d-batch-norm", DIGITS_METRIC),
    "sagan-digits": (  # issue 25: sagan's digits default against wider nets
        "sagan-digits",
        [
            ("run", "key", str),
            *COMPARE[1:],
            ("within-class spread", "within_class_spread", _g4),
            ("commit", "commit", str),
            ("CPU", "cpu", str),
        ],
    ),
    "suite": (
        "suite",
        [
            ("date", "date", str),
            ("commit", "commit", str),
            ("tests", "tests", str),
            ("result", "result", str),
            ("wall time", "minutes", lambda v: f"{v} min"),
        ],
    ),
}


def load(path=RECORD):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rows_of(record, table):
    """The table's rows in record order, the last one written per key."""
    rows = {}
    for r in record["measurements"]:
        if r["table"] == table:
            rows.pop(r["key"], None)
            rows[r["key"]] = r
    return list(rows.values())


def render(view, record=None):
    record = record or load()
    table, cols = VIEWS[view]
    lines = ["| " + " | ".join(h for h, _, _ in cols) + " |", "| --- " * len(cols) + "|"]
    for r in rows_of(record, table):
        if "error" in r:
            lines.append(f"| {r['key']} | failed: {r['error']} |" + " |" * (len(cols) - 2))
            continue
        cells = [
            k[1:].format(**r) if k.startswith("=") else fmt(r.get(k, "")) for _, k, fmt in cols
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def marker_re(view):
    v = re.escape(view)
    return re.compile(rf"(<!-- results:{v} -->\n)(.*?)(<!-- /results:{v} -->)", re.S)


def update(text, record):
    """``text`` with every marked table regenerated; returns (new text, views found)."""
    found = []
    for view in VIEWS:
        pat = marker_re(view)
        if pat.search(text):
            found.append(view)
            table = render(view, record)
            text = pat.sub(lambda m, t=table: m.group(1) + t + "\n" + m.group(3), text)
    return text, found


def differences(root=ROOT, record=None):
    """Pages whose generated tables differ from the record: [(page, views)]."""
    record = record or load(os.path.join(root, "docs", "results.json"))
    out = []
    for page in PAGES:
        with open(os.path.join(root, page), encoding="utf-8") as f:
            text = f.read()
        new, found = update(text, record)
        if new != text:
            out.append((page, found))
    return out


def _git(*args):
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def cpu_model():
    """`lscpu`'s "Model name" (the name the docs give a machine by)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    names = [ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")]
    return names[0] if names else "unknown"


def provenance(command, gpu=None):
    """commit (with "+dirty" if the tree had changes), date, CPU, GPU, command."""
    commit = _git("rev-parse", "--short", "HEAD") or "unknown"
    if _git("status", "--porcelain", "--untracked-files=no"):
        commit += "+dirty"
    return {
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "cpu": cpu_model(),
        "gpu": gpu,
        "command": command,
    }


def record_rows(table, rows, command, gpu=None, path=None):
    """Append ``rows`` (dicts with a ``key``) to the record (default docs/results.json) as
    rows of ``table``; a row replaces an earlier one of the same table and key. Returns the
    rows written."""
    path = path or RECORD
    record = load(path) if os.path.exists(path) else {"measurements": []}
    meta = provenance(command, gpu)
    new = [{"table": table, **meta, **r} for r in rows]
    keys = {r["key"] for r in new}
    record["measurements"] = [
        r for r in record["measurements"] if r["table"] != table or r["key"] not in keys
    ] + new
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return new


def drop_row(table, key, path=None):
    """Remove the row ``key`` of ``table`` from the record (a measurement a newer one
    supersedes); returns whether there was one."""
    path = path or RECORD
    record = load(path)
    kept = [r for r in record["measurements"] if (r["table"], r["key"]) != (table, key)]
    if len(kept) == len(record["measurements"]):
        return False
    record["measurements"] = kept
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1, ensure_ascii=False)
        f.write("\n")
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_mutually_exclusive_group()
    g.add_argument("--write", action="store_true", help="rewrite the pages' tables")
    g.add_argument("--check", action="store_true", help="exit 1 if a page's table differs")
    g.add_argument(
        "--drop", nargs=2, metavar=("TABLE", "KEY"), help="remove a superseded row from the record"
    )
    args = p.parse_args(argv)
    if args.drop:
        if not drop_row(*args.drop):
            sys.exit(f"results_table: error: no row {args.drop[1]!r} in table {args.drop[0]!r}")
        print(f"dropped {args.drop[1]!r} from {args.drop[0]!r}; --write regenerates the pages")
        return
    record = load()
    if args.check or args.write:
        diff = differences(record=record)
        for page, views in diff:
            if args.write:
                with open(os.path.join(ROOT, page), encoding="utf-8") as f:
                    text, _ = update(f.read(), record)
                with open(os.path.join(ROOT, page), "w", encoding="utf-8") as f:
                    f.write(text)
            print(
                f"{page}: {'rewrote' if args.write else 'differs from the record in'} "
                f"{', '.join(views)}"
            )
        if args.check and diff:
            sys.exit(1)
        return
    for view in VIEWS:
        print(f"<!-- results:{view} -->\n{render(view, record)}\n<!-- /results:{view} -->\n")


if __name__ == "__main__":
    main()
