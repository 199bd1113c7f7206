"""Checkpoint files and run directories: where a run writes, how a checkpoint is found,
written, read and checked, and the RNG states that make a resumed run exact.

A checkpoint is one ``torch.save`` dict of state_dicts and plain values that loads with
``torch.load(weights_only=True)``: no pickled objects. It is written atomically (a
temporary file renamed into place), so a kill during a save keeps the previous one whole.

This module imports nothing else of ``common`` but ``UserError``, so that ``common.run``
and ``common.evaluation`` can both use it without importing each other.
"""
import glob
import json
import os
import random
import time

import numpy as np
import torch

from common import UserError


def new_run_dir(script, out=None):
    """Create and return a fresh run directory; refuse a non-empty existing one."""
    if out is None:
        out = os.path.join("runs", script, time.strftime("%Y%m%d-%H%M%S"))
        base, k = out, 1
        while os.path.exists(out):
            out, k = f"{base}-{k}", k + 1
    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"run directory {out!r} already exists and is not empty; resume it with "
                        f"--resume auto --out {out}, or choose another --out")
    os.makedirs(out, exist_ok=True)
    return out


def find_checkpoint(script, resume, out=None):
    """Resolve ``--resume``/``--checkpoint``: a checkpoint file, a run directory, or ``auto``.

    ``auto`` takes ``<out>/checkpoints/last.pt`` when ``--out`` is given, else the most
    recent ``runs/<script>/*/checkpoints/last.pt``.
    """
    if resume == "auto":
        pattern = (os.path.join(out, "checkpoints", "last.pt") if out
                   else os.path.join("runs", script, "*", "checkpoints", "last.pt"))
        found = sorted(glob.glob(pattern), key=os.path.getmtime)
        if not found:
            raise UserError(f"--resume auto found no checkpoint ({pattern}); "
                            "start a new run without --resume")
        return found[-1]
    path = os.path.join(resume, "checkpoints", "last.pt") if os.path.isdir(resume) else resume
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {resume!r} not found; "
                        "give a .pt file, a run directory, or auto")
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


def save_checkpoint(path, state):
    """torch.save to a temporary file, then rename: a kill mid-save keeps the old file whole."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path, script, device="cpu"):
    """Load a checkpoint of ``script`` with weights_only=True; one clear error otherwise."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(f"cannot read checkpoint {path!r} ({type(e).__name__}); "
                        "is it a checkpoint of this project?") from None
    if not isinstance(ckpt, dict) or ckpt.get("script") != script:
        other = ckpt.get("script") if isinstance(ckpt, dict) else None
        raise UserError(f"{path!r} is a checkpoint of {other or 'something else'}, "
                        f"not {script}.py; use {other or 'the matching'}.py with it")
    return ckpt


def load_state(module, state, what):
    """``module.load_state_dict(state)``; a mismatch is the user's flags, said in one line."""
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1].strip()
        raise UserError(f"the checkpoint's {what} does not fit the model built from these flags "
                        f"({first}); keep the run's model flags") from None


def last_good(out):
    """Where the last good checkpoint is, for the message that stops a diverged run."""
    path = os.path.join(out or ".", "checkpoints", "last.pt")
    return (f"the last good checkpoint is {path}" if os.path.exists(path)
            else "no checkpoint had been written yet")


def rng_state():
    """This process's RNG states (python, numpy, torch, cuda) as weights_only-loadable values."""
    np_state = np.random.get_state()
    py = random.getstate()
    return {
        "python": list(py[1]) + [py[2]],
        "numpy": [torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
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
