"""Finding and importing the paper scripts: the one place that knows what a paper script is.

Every top-level ``*.py`` file of the repository is a paper script; nothing lists them,
so a new paper is picked up by the tests, the shared-section checker, ``tools/bench.py``
and ``tools/compare.py`` as soon as its file exists. The tools and the tests load a
script by its path (the repository root is not a package), as a fresh module each time.

This is a module of its own rather than part of ``common/__init__.py``: the paper
scripts import ``common`` (for ``UserError``) and never need to discover each other;
only the tools and the tests do. Standard library only, so it imports in no time.
"""

import glob
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def paper_scripts(root=ROOT):
    """Sorted names (``dcgan``, without ``.py``) of the top-level ``*.py`` scripts in ``root``."""
    return sorted(
        os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(root, "*.py"))
    )


def load_script(name):
    """Import the paper script ``<root>/<name>.py`` as a fresh module, by path.

    Each call executes the file again and returns a new module named ``zoo_<name>``; it is
    not put in ``sys.modules``, so it never shadows (or is shadowed by) an ``import dcgan``
    and two loads share no state.
    """
    spec = importlib.util.spec_from_file_location(f"zoo_{name}", os.path.join(ROOT, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
