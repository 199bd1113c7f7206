"""Checkpoint files and run directories: where a run writes, how a checkpoint is found,
written, read and checked, and the RNG states that make a resumed run exact.

A checkpoint is one ``torch.save`` dict of state_dicts and plain values that loads with
``torch.load(weights_only=True)``: no pickled objects. It is written durably (a
temporary file flushed to disk, then renamed into place), so a kill or a crash during a
save keeps the previous one whole.

This module imports nothing else of ``common`` but ``UserError``, so that ``common.run``
and ``common.evaluation`` can both use it without importing each other.
"""

import contextlib
import glob
import json
import os
import random
import shutil
import time

import numpy as np
import torch

from common import UserError


def new_run_dir(script, out=None, restart=False):
    """Create and return a fresh run directory; refuse a non-empty existing one, unless
    ``restart``: a run directory with no checkpoint yet (``--resume auto --out DIR`` of a run
    stopped before its first one), whose earlier samples are then cleared."""
    if out is None:
        out = os.path.join("runs", script, time.strftime("%Y%m%d-%H%M%S"))
        base, k = out, 1
        while os.path.exists(out):
            out, k = f"{base}-{k}", k + 1
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out!r} is a file, not a folder; choose another --out")
    if os.path.isdir(out) and os.listdir(out):
        if not (restart and os.path.exists(os.path.join(out, "args.json"))):
            raise UserError(
                f"run directory {out!r} already exists and is not empty; resume it "
                f"with --resume auto --out {out}, or choose another --out"
            )
        for old in glob.glob(os.path.join(out, "samples", "step_*.png")):
            os.remove(old)
        remove_stale(out)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the run directory {out!r}: {e.strerror or e}") from None
    return out


_SAMPLING = object()  # find_checkpoint called without out: --checkpoint


def find_checkpoint(script, resume, out=_SAMPLING):
    """Resolve ``--resume``/``--checkpoint``: a checkpoint file, a run directory, or ``auto``.

    ``auto`` takes ``<out>/checkpoints/last.pt`` when ``--out`` is given, else the most
    recent ``runs/<script>/*/checkpoints/last.pt``. A call with ``out`` (even None) resolves
    ``--resume``; one without it resolves ``--checkpoint``, and the error names that flag.
    """
    sampling = out is _SAMPLING
    out = None if sampling else out
    if resume == "auto":
        pattern = (
            os.path.join(out, "checkpoints", "last.pt")
            if out
            else os.path.join("runs", script, "*", "checkpoints", "last.pt")
        )
        found = sorted(glob.glob(pattern), key=os.path.getmtime)
        if not found and sampling:
            raise UserError(
                f"--checkpoint auto found no checkpoint ({pattern}); train a run "
                "first, or give --checkpoint a .pt file or a run directory"
            )
        if not found:
            raise UserError(
                f"--resume auto found no checkpoint ({pattern}); start a new run without --resume"
            )
        return found[-1]
    path = os.path.join(resume, "checkpoints", "last.pt") if os.path.isdir(resume) else resume
    if not os.path.isfile(path):
        raise UserError(
            f"checkpoint {resume!r} not found; give a .pt file, a run directory, or auto"
        )
    return path


def run_dir_of(checkpoint_path):
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.pt`` -> ``<run>``)."""
    d = os.path.dirname(os.path.abspath(checkpoint_path))
    return os.path.dirname(d) if os.path.basename(d) == "checkpoints" else d


def write_args(out, args):
    """``args.json``: every resolved flag of the run."""
    with open(os.path.join(out, "args.json"), "w") as f:
        json.dump(plain_args(args), f, indent=2, sort_keys=True)


def plain_args(args):
    """The flags as a plain dict (what a checkpoint stores), without parse bookkeeping."""
    return {k: v for k, v in vars(args).items() if k != "explicit"}


def save_checkpoint(path, state, links=()):
    """Write ``state`` to ``path`` so that it survives a kill or a crash at any moment: into a
    temporary file, flushed to disk, renamed into place, the folder flushed after; ``links``
    are more names for the same file (``step_N.pt``). A failed write (disk full, quota) ends
    in one line that names the last good checkpoint, and leaves no temporary file."""
    folder = os.path.dirname(path) or "."
    tmp = path + ".tmp"
    try:
        os.makedirs(folder, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        for link in links:
            if os.path.exists(link):
                os.remove(link)
            try:
                os.link(path, link)
            except OSError:  # a file system without hard links
                shutil.copyfile(path, link)
        fsync_dir(folder)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        good = (
            f"the last good checkpoint is {path}"
            if os.path.exists(path)
            else "no checkpoint had been written yet"
        )
        raise UserError(f"cannot write checkpoint {path}: {e.strerror or e}; {good}") from None


def fsync_dir(folder):
    """Flush a folder's entries (a rename into it) to disk, where the system allows it."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def remove_stale(out):
    """Temporary files a killed save left behind in ``out/checkpoints``."""
    for tmp in glob.glob(os.path.join(out, "checkpoints", "*.tmp")):
        with contextlib.suppress(OSError):
            os.remove(tmp)


def load_checkpoint(path, script, device="cpu"):
    """Load a checkpoint of ``script`` with weights_only=True; one clear error otherwise."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(
            f"cannot read checkpoint {path!r} ({type(e).__name__}); "
            "is it a checkpoint of this project?"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("script") != script:
        other = ckpt.get("script") if isinstance(ckpt, dict) else None
        raise UserError(
            f"{path!r} is a checkpoint of {other or 'something else'}, "
            f"not {script}.py; use {other or 'the matching'}.py with it"
        )
    return ckpt


def load_state(module, state, what, newer=()):
    """``module.load_state_dict(state)``; a mismatch is the user's flags, said in one line.
    ``newer``: flags the checkpoint does not record (added since it was written), which took
    today's defaults; the line names them, since one of them may have changed the model."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        since = ""
        if newer:
            names = ", ".join("--" + k.replace("_", "-") for k in newer)
            since = (
                f"; flags newer than the checkpoint took today's defaults ({names}): "
                "give the value the old run had"
            )
        raise UserError(
            f"the checkpoint's {what} does not fit the model built from these flags "
            f"({first}); keep the run's model flags{since}"
        ) from None


def last_good(out):
    """Where the last good checkpoint is, for the message that stops a diverged run."""
    path = os.path.join(out or ".", "checkpoints", "last.pt")
    return (
        f"the last good checkpoint is {path}"
        if os.path.exists(path)
        else "no checkpoint had been written yet"
    )


def rng_state():
    """This process's RNG states (python, numpy, torch, cuda) as weights_only-loadable values."""
    np_state = np.random.get_state()
    py = random.getstate()
    return {
        "python": list(py[1]) + [py[2]],
        "numpy": [
            torch.from_numpy(np_state[1].astype(np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(s):
    """Restore what ``rng_state`` returned."""
    random.setstate((3, tuple(s["python"][:-1]), s["python"][-1]))
    np.random.set_state(("MT19937", s["numpy"][0].numpy().astype(np.uint32), *s["numpy"][1:]))
    torch.set_rng_state(s["torch"])
    if s["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


def seed_everything(seed):
    """Seed python, numpy and torch (every device)."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def read_metrics(path):
    """The records of a ``metrics.jsonl``."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
