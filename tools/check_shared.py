"""Keep the shared sections of the paper scripts identical.

Each script repeats a few sections on purpose (command-line flags, distributed setup,
mixed precision, EMA, main) so that it stands alone. A section starts at a banner line
``# ====...==== shared: NAME`` and runs to the next ``# ====`` banner or the file's end.
``dcgan.py`` is the canonical copy: every other top-level script must hold every
shared section, byte for byte.

    python tools/check_shared.py          # report the first differing line per section
    python tools/check_shared.py --fix    # rewrite the copies from dcgan.py
"""

import argparse
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from common.scripts import paper_scripts  # noqa: E402

CANONICAL = "dcgan.py"
BANNER = re.compile(r"^# =+ (.*)$")
SHARED = re.compile(r"^shared: (.+)$")


def sections(lines):
    """{name: (start, end)} line ranges (end exclusive) of the shared sections."""
    found, current = {}, None
    for i, line in enumerate(lines):
        m = BANNER.match(line.rstrip("\n"))
        if m:
            if current:
                found[current[0]] = (current[1], i)
                current = None
            s = SHARED.match(m.group(1).strip())
            if s:
                current = (s.group(1).strip(), i)
    if current:
        found[current[0]] = (current[1], len(lines))
    return found


def check(root=ROOT, fix=False):
    """Return a list of problems (empty when every copy matches); rewrite them with fix."""
    with open(os.path.join(root, CANONICAL)) as f:
        canon = f.readlines()
    canon_sections = sections(canon)
    if not canon_sections:
        return [f"{CANONICAL}: no shared sections found"]
    problems = []
    for name in (s + ".py" for s in paper_scripts(root)):
        if name == CANONICAL:
            continue
        path = os.path.join(root, name)
        with open(path) as f:
            lines = f.readlines()
        changed = False
        for sec, (cs, ce) in canon_sections.items():
            have = sections(lines)
            if sec not in have:
                problems.append(
                    f"{name}: missing shared section {sec!r} (copy it from {CANONICAL}:{cs + 1})"
                )
                continue
            s, e = have[sec]
            mine, theirs = lines[s:e], canon[cs:ce]
            if mine == theirs:
                continue
            k = next(
                (i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b),
                min(len(mine), len(theirs)),
            )
            got = mine[k].rstrip("\n") if k < len(mine) else "<end of section>"
            want = theirs[k].rstrip("\n") if k < len(theirs) else "<end of section>"
            problems.append(
                f"{name}:{s + k + 1}: shared section {sec!r} differs from "
                f"{CANONICAL}:{cs + k + 1}\n  have: {got}\n  want: {want}"
            )
            if fix:
                lines[s:e] = theirs
                changed = True
        if changed:
            with open(path, "w") as f:
                f.writelines(lines)
    return problems


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--fix", action="store_true", help=f"rewrite differing copies from {CANONICAL}")
    p.add_argument("--root", default=ROOT, help="repository root")
    args = p.parse_args(argv)
    problems = check(args.root, args.fix)
    for line in problems:
        print(line)
    if problems and not args.fix:
        print(
            f"{len(problems)} shared-section difference(s); "
            f"run python tools/check_shared.py --fix to copy {CANONICAL}'s version"
        )
        return 1
    if problems:
        print(f"rewrote {len(problems)} section(s) from {CANONICAL}")
    else:
        print(f"shared sections identical across {len(paper_scripts(args.root))} script(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
