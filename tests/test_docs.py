"""The docs cannot drift: every command they show parses, every link resolves, and every
generated table equals what the record (docs/results.json) gives.

Commands: every `python X.py ...`, `torchrun ... X.py ...` and `python tools/X.py ...` in
README.md, CONTRIBUTING.md and docs/*.md, from code blocks and inline code. A script's
command is parsed by ``load_script(name).parse_args(argv)`` (stdout captured; parsing reads
no data and trains nothing); a tool's by the tool's own ``main(argv)`` with argparse
stopped right after it parsed (so no tool does work). Inline code with ``[`` is a usage
synopsis (optional parts in brackets), not a command, and is not parsed. ``<...>`` is a
shell redirection, not a placeholder a reader can paste, and fails.
"""

import argparse
import contextlib
import glob
import importlib.util
import io
import os
import re
import shlex
import unicodedata

import pytest
from conftest import ROOT, SCRIPTS, load_script

PAGES = sorted(
    ["README.md", "CONTRIBUTING.md"]
    + [os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))]
)
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
# a command starts at python/torchrun (after env settings, timeout, nice or a prompt)
START = re.compile(
    r"(?:^|[;&|(]\s*|\$\s+|^\s*(?:\w+=\S+\s+|timeout \S+\s+|nice\s+)*)"
    r"((?:python3?|torchrun)\s.*)$"
)


def read(page):
    with open(os.path.join(ROOT, page), encoding="utf-8") as f:
        return f.read()


def is_file_command(cmd):
    """A command that runs a .py file (not ``python -m pytest``, not ``python -c``)."""
    words = cmd.split()
    return ".py" in cmd and not (words[0].startswith("python") and words[1] in ("-m", "-c"))


def commands(page):
    """[(line number, command text)] of the page's python/torchrun commands."""
    text = read(page)
    found = []
    for m in FENCE.finditer(text):
        first = text.count("\n", 0, m.start(1)) + 1
        lines = m.group(1).split("\n")
        i = 0
        while i < len(lines):
            line, n = lines[i], first + i
            while line.rstrip().endswith("\\") and i + 1 < len(lines):
                i += 1
                line = line.rstrip()[:-1] + " " + lines[i]
            i += 1
            for part in re.split(r"\s*(?:&&|;)\s*", line.strip()):
                s = START.search(part.rstrip("& "))
                if s and is_file_command(s.group(1)):
                    found.append((n, s.group(1)))
    prose = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), text)
    for m in INLINE.finditer(prose):
        code = m.group(1).replace("\\|", "|")
        s = START.search(code)
        if s and is_file_command(s.group(1)) and "[" not in code:
            found.append((prose.count("\n", 0, m.start()) + 1, s.group(1)))
    return found


ALL = [(page, n, cmd) for page in PAGES for n, cmd in commands(page)]


class _Parsed(Exception):
    pass


def parse_tool(path, argv, monkeypatch):
    """Run the tool's main(argv) until its argparse has parsed argv, then stop."""
    original = argparse.ArgumentParser.parse_args

    def parse_and_stop(self, args=None, namespace=None):
        original(self, args, namespace)
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_and_stop)
    spec = importlib.util.spec_from_file_location("doc_tool_" + os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    with pytest.raises(_Parsed):
        mod.main(argv)


def test_the_pages_show_commands():
    assert len(ALL) > 50, len(ALL)


@pytest.mark.parametrize("page,line,cmd", ALL, ids=[f"{p}:{n}" for p, n, _ in ALL])
def test_command_parses(page, line, cmd, monkeypatch, capsys):
    where = f"{page}:{line}: {cmd}"
    words = shlex.split(cmd, comments=True)
    assert not any(c in w for w in words for c in "<>"), (
        f"{where}: a placeholder a shell cannot paste"
    )
    assert "..." not in words, f"{where}: ... is not a flag"
    if words[0] == "torchrun":  # torchrun's own options, then the script and its flags
        words = words[1:]
        while words and words[0].startswith("-") and not words[0].endswith(".py"):
            words = words[1:] if "=" in words[0] else words[2:]
    else:
        words = words[1:]
        while words and words[0].startswith("-") and not words[0].endswith(".py"):
            words = words[1:]  # python -u, -m (a module: not a file command)
    assert words and words[0].endswith(".py"), where
    target, argv = words[0], words[1:]
    if target.startswith("tools/"):
        path = os.path.join(ROOT, target)
        assert os.path.isfile(path), f"{where}: no such tool"
        parse_tool(path, argv, monkeypatch)
        return
    name = target[:-3]
    assert name in SCRIPTS, f"{where}: no script {target}"
    module = load_script(name)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            module.parse_args(argv)
        except SystemExit as e:
            assert e.code in (0, None), f"{where}: {capsys.readouterr().err.strip()}"


def anchor(heading):
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    text = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LNM")
    return text.replace(" ", "-")


def anchors(page):
    seen, out = {}, set()
    text = FENCE.sub("", read(page))
    for m in re.finditer(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        a = anchor(m.group(1))
        n = seen.get(a, 0)
        seen[a] = n + 1
        out.add(a if n == 0 else f"{a}-{n}")
    return out


def links(page):
    """[(line, target)] of the page's relative links (not in code)."""
    text = FENCE.sub(lambda m: "\n" * m.group(0).count("\n"), read(page))
    text = INLINE.sub(lambda m: " " * len(m.group(0)), text)
    out = []
    for m in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text):
        target = m.group(1)
        if not re.match(r"[a-z]+:", target):
            out.append((text.count("\n", 0, m.start()) + 1, target))
    return out


@pytest.mark.parametrize("page", PAGES)
def test_links_and_anchors_resolve(page):
    bad = []
    for line, target in links(page):
        path, _, frag = target.partition("#")
        dest = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(os.path.join(ROOT, dest)):
            bad.append(f"{page}:{line}: {target}: no file {dest}")
        elif frag and dest.endswith(".md") and frag not in anchors(dest):
            bad.append(f"{page}:{line}: {target}: no heading #{frag} in {dest}")
    assert not bad, "\n".join(bad)


def test_generated_tables_equal_the_record():
    import tools.results_table as rt

    assert rt.differences() == [], "run python tools/results_table.py --write"


def test_the_record_names_where_every_number_came_from():
    import tools.results_table as rt

    for r in rt.load()["measurements"]:
        for k in ("table", "key", "commit", "date", "cpu", "command"):
            assert r.get(k), (k, r)


def test_record_rows_replaces_a_row_and_states_its_provenance(tmp_path):
    import tools.results_table as rt

    path = str(tmp_path / "r.json")
    rt.record_rows("t", [{"key": "a", "x": 1.0}, {"key": "b", "x": 2.0}], "python x", path=path)
    rt.record_rows("t", [{"key": "a", "x": 3.0}], "python y", path=path)
    rows = rt.rows_of(rt.load(path), "t")
    assert [(r["key"], r["x"], r["command"]) for r in rows] == [
        ("b", 2.0, "python x"),
        ("a", 3.0, "python y"),
    ]
    assert rows[0]["commit"] and rows[0]["date"] and rows[0]["cpu"]


def test_drop_removes_one_superseded_row(tmp_path):
    import tools.results_table as rt

    path = str(tmp_path / "r.json")
    rt.record_rows("t", [{"key": "a", "x": 1.0}, {"key": "b", "x": 2.0}], "python x", path=path)
    rt.record_rows("u", [{"key": "a", "x": 3.0}], "python y", path=path)
    assert rt.drop_row("t", "a", path=path) and not rt.drop_row("t", "a", path=path)
    left = [(r["table"], r["key"]) for r in rt.load(path)["measurements"]]
    assert left == [("t", "b"), ("u", "a")]
