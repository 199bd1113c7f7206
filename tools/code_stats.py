"""How the paper scripts read, in numbers: each script's lines, its ``train()`` and training
loop (the longest ``while`` in ``train()``), its longest function, and how far dcgan.py and
lsgan.py differ (``diff | wc -l``: the paper's differences and little else).

    python tools/code_stats.py               # the working tree
    python tools/code_stats.py --rev dd4cf6e # a commit (git show), e.g. before a change
"""

import argparse
import ast
import difflib
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from common.scripts import paper_scripts  # noqa: E402


def source(name, rev=None):
    if rev is None:
        with open(os.path.join(ROOT, name + ".py"), encoding="utf-8") as f:
            return f.read()
    done = subprocess.run(
        ["git", "show", f"{rev}:{name}.py"], cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode != 0:
        sys.exit(f"code_stats: error: git show {rev}:{name}.py: {done.stderr.strip()}")
    return done.stdout


def stats(text):
    """{lines, train, loop, longest: (name, lines)} of one script's source."""
    tree = ast.parse(text)
    functions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)]
    train = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    loops = [n for n in ast.walk(train) if isinstance(n, ast.While)]
    longest = max(functions, key=lambda n: n.end_lineno - n.lineno)

    def span(n):
        return n.end_lineno - n.lineno + 1

    return {
        "lines": len(text.splitlines()),
        "train": span(train),
        "loop": max(map(span, loops)) if loops else 0,
        "longest": (longest.name, span(longest)),
    }


def diff_lines(a, b):
    """The number of lines ``diff a b`` prints (``a``, ``b``: texts); where there is no
    ``diff``, the count from difflib's matching (within a line or two of it)."""
    import shutil
    import tempfile

    if shutil.which("diff"):
        with tempfile.TemporaryDirectory() as d:
            for name, text in (("a", a), ("b", b)):
                with open(os.path.join(d, name), "w", encoding="utf-8") as f:
                    f.write(text)
            done = subprocess.run(["diff", "a", "b"], cwd=d, capture_output=True, text=True)
        return len(done.stdout.splitlines())
    a, b, out = a.splitlines(), b.splitlines(), 0
    ops = difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes()
    for tag, i1, i2, j1, j2 in ops:
        if tag == "equal":
            continue
        out += 1 + (i2 - i1) + (j2 - j1) + (tag == "replace")  # header, <, >, ---
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rev", default=None, help="a git revision instead of the working tree")
    args = p.parse_args(argv)
    rows = {name: stats(source(name, args.rev)) for name in paper_scripts()}
    print("| script | lines | train() | training loop | longest function |")
    print("| --- | --- | --- | --- | --- |")
    for name, s in rows.items():
        fn, n = s["longest"]
        print(f"| {name} | {s['lines']} | {s['train']} | {s['loop']} | {fn} {n} |")
    d = diff_lines(source("dcgan", args.rev), source("lsgan", args.rev))
    print(f"\n`diff dcgan.py lsgan.py | wc -l`: {d}")
    return rows, d


if __name__ == "__main__":
    main()
