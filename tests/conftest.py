"""Shared test helpers: the repository root, the paper scripts, running a script in-process,
and the one check that a user's mistake ends in one clear line."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("GAN_ZOO_CACHE", os.path.join(ROOT, ".pytest_cache", "gan_zoo"))

# load_script is imported from here by the tests
from common.scripts import load_script, paper_scripts  # noqa: E402,F401

# Every top-level script is a paper script; the harness discovers them, never lists them.
SCRIPTS = paper_scripts()


def tiny_args(module, *extra):
    """Flags for a few fast CPU steps at tiny width: 16 images a batch, every step logged."""
    return [
        *module.SMOKE_ARGS,
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--log-every",
        "1",
        "--num-workers",
        "0",
        *extra,
    ]


def assert_one_line_error(module, flags, words, capsys, steps=1, ignore_progress=False):
    """Run ``module.main`` on tiny arguments, ``--steps steps`` and ``flags``, and check the
    DESIGN's rule for bad input: exit status 1, no traceback, and exactly one non-empty line
    on stderr that contains ``words`` (a string, or several that must all appear).

    ``ignore_progress`` leaves out the lines a run may print before it fails (tqdm's
    ``it/s`` bars and ``warning:`` lines), for bad input that is found only mid-run (NaN
    losses). Returns the error line.
    """
    capsys.readouterr()  # only what this call prints
    with pytest.raises(SystemExit) as e:
        module.main([*tiny_args(module), "--steps", str(steps), *flags])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    if ignore_progress:
        lines = [
            line
            for line in lines
            if not line.startswith("warning:") and "it/s" not in line and "s/it" not in line
        ]
    assert e.value.code == 1, (flags, err)
    assert len(lines) == 1 and "Traceback" not in err, (flags, err)
    for w in [words] if isinstance(words, str) else words:
        assert w in lines[0], (flags, w, err)
    return lines[0]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run inside an empty temporary directory (runs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def torchrun(program, *args):
    """The command and environment that run ``program`` (a path) under torchrun as two CPU
    processes (gloo), one thread each."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        program,
        *args,
    ]
    return cmd, {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT}


def run_torchrun(program, *args):
    """Run ``program`` under torchrun (two processes) to its end; the finished process."""
    cmd, env = torchrun(program, *args)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return r
