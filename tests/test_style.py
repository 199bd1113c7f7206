"""The design's rules for how code reads: ruff's lint and layout (pyproject.toml) and lines of
at most 100 characters in every .py file; no chained conditional expressions; every paper
script in the anatomy's order with a ``train()`` that defines no function (the loop reads
like the paper's algorithm box). No line budget: readable beats short (DESIGN.md)."""

import ast
import os
import subprocess
import sys

import pytest

from conftest import ROOT, SCRIPTS

MAX_LINE = 100
# The paper first (flags, model, loss, train, sampling), then the shared sections the
# training step calls (command line, distributed, mixed precision, EMA) and main.
ORDER = [
    "parse_args",
    "build_models",
    "train",
    "load_generator",
    "add_common_args",
    "setup_distributed",
    "autocast",
    "ema_update",
    "main",
]


def python_files():
    """Every .py file of the repository, outside hidden folders and run outputs."""
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("runs", "data")]
        yield from (os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))


def test_lines_at_most_100_characters():
    long = []
    for path in python_files():
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f.read().splitlines(), 1):
                if len(line) > MAX_LINE:
                    long.append(f"{os.path.relpath(path, ROOT)}:{i} ({len(line)})")
    assert not long, f"{len(long)} line(s) over {MAX_LINE} characters: {long[:20]}"


@pytest.mark.parametrize("command", [["check"], ["format", "--check"]], ids=["lint", "layout"])
def test_ruff(command):
    """`ruff check .` and `ruff format --check .`: the configuration is pyproject.toml's."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *command, "."], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, f"ruff {' '.join(command)}:\n{done.stdout}{done.stderr}"[:3000]


def test_no_chained_conditional_expressions():
    """`a if p else b if q else c` (or a conditional inside another's branch) reads as a
    puzzle: write the branches as statements."""
    chained = []
    for path in python_files():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for n in ast.walk(tree):
            if isinstance(n, ast.IfExp) and ast.IfExp in (type(n.body), type(n.orelse)):
                chained.append(f"{os.path.relpath(path, ROOT)}:{n.lineno}")
    assert not chained, f"chained conditional expressions at {chained}"


def script_tree(name):
    with open(os.path.join(ROOT, name + ".py"), encoding="utf-8") as f:
        text = f.read()
    return text, ast.parse(text)


@pytest.mark.parametrize("name", SCRIPTS)
def test_train_defines_no_function(name):
    _, tree = script_tree(name)
    train = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train")
    inner = [
        f"line {n.lineno}"
        for n in ast.walk(train)
        if n is not train and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    ]
    assert not inner, f"{name}.py: train() defines functions at {inner}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_anatomy_order(name):
    _, tree = script_tree(name)
    top = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    missing = [f for f in ORDER if f not in top]
    assert not missing, f"{name}.py lacks {missing}"
    where = [top.index(f) for f in ORDER]
    assert where == sorted(where), f"{name}.py: {ORDER} out of order: {top}"
    docstring = ast.get_docstring(tree, clean=False)
    assert docstring and docstring.count("\n") <= 45, f"{name}.py: docstring of about 40 lines"


def imports_of(path):
    """(module-level imports, imports anywhere) of a .py file, as dotted module names."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read())

    def names(nodes):
        out = set()
        for n in nodes:
            if isinstance(n, ast.Import):
                out |= {a.name for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.module and not n.level:
                out |= {n.module} | {f"{n.module}.{a.name}" for a in n.names}
        return out

    return names(tree.body), names(ast.walk(tree))


def test_the_house_of_imports():
    """Scripts use common/; nothing in common/ imports a paper script (the tools load one by
    name, common.scripts.load_script); common/'s modules import each other without a circle
    at module level (a lazy import inside a function is how one waits for another)."""
    folder = os.path.join(ROOT, "common")
    modules = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py"))
    graph = {}
    for mod in modules:
        top, anywhere = imports_of(os.path.join(folder, mod + ".py"))
        assert not anywhere & set(SCRIPTS), f"common/{mod}.py imports {anywhere & set(SCRIPTS)}"
        graph[mod] = {m.split(".")[1] for m in top if m.startswith("common.")} & set(modules)
    done, stack = set(), []

    def visit(mod):
        assert mod not in stack, f"import circle: {' -> '.join(stack + [mod])}"
        if mod not in done:
            stack.append(mod)
            for dep in sorted(graph[mod]):
                visit(dep)
            stack.pop()
            done.add(mod)

    for mod in modules:
        visit(mod)
    for name in SCRIPTS:  # a script imports common lazily: a copy alone imports with torch
        top, _ = imports_of(os.path.join(ROOT, name + ".py"))
        assert not {m for m in top if m.split(".")[0] == "common"}, f"{name}.py: common at the top"
