"""Shared test helpers: the repository root, the paper scripts, running a script in-process."""
import glob
import importlib.util
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("GAN_ZOO_CACHE", os.path.join(ROOT, ".pytest_cache", "gan_zoo"))

# Every top-level script is a paper script; the harness discovers them, never lists them.
SCRIPTS = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "*.py")))


def load_script(name):
    """Import a paper script as a fresh module."""
    spec = importlib.util.spec_from_file_location(f"zoo_{name}", os.path.join(ROOT, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_args(module, *extra):
    """Flags for a few fast CPU steps at tiny width: 16 images a batch, every step logged."""
    return [*module.SMOKE_ARGS, "--batch-size", "16", "--device", "cpu", "--log-every", "1", "--num-workers", "0", *extra]


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run inside an empty temporary directory (runs/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
