"""Run directories: ``args.json``, ``metrics.jsonl``, finding a run to resume.

A run directory (``--out``, default ``runs/<script>/<time>``) holds everything a run
writes: ``args.json``, ``metrics.jsonl``, ``samples/``, ``progress.gif`` and
``checkpoints/``. Nothing outside it is written, and an existing one is never
overwritten: a new run refuses a non-empty ``--out`` unless it resumes from it.
"""
import glob
import json
import os
import time

from common import UserError


def new_run_dir(script, out=None):
    """Create and return a fresh run directory; refuse a non-empty existing one."""
    if out is None:
        out = os.path.join("runs", script, time.strftime("%Y%m%d-%H%M%S"))
        base, k = out, 1
        while os.path.exists(out):
            out, k = f"{base}-{k}", k + 1
    if os.path.isdir(out) and os.listdir(out):
        raise UserError(f"run directory {out!r} already exists and is not empty; resume it with --resume auto --out {out}, or choose another --out")
    os.makedirs(out, exist_ok=True)
    return out


def find_checkpoint(script, resume, out=None):
    """Resolve ``--resume``: a checkpoint file, a run directory, or ``auto``.

    ``auto`` takes ``<out>/checkpoints/last.pt`` when ``--out`` is given, else the most
    recent ``runs/<script>/*/checkpoints/last.pt``.
    """
    if resume == "auto":
        pattern = os.path.join(out, "checkpoints", "last.pt") if out else os.path.join("runs", script, "*", "checkpoints", "last.pt")
        found = sorted(glob.glob(pattern), key=os.path.getmtime)
        if not found:
            raise UserError(f"--resume auto found no checkpoint ({pattern}); start a new run without --resume")
        return found[-1]
    path = os.path.join(resume, "checkpoints", "last.pt") if os.path.isdir(resume) else resume
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {resume!r} not found; give a .pt file, a run directory, or auto")
    return path


def run_dir_of(checkpoint_path):
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.pt`` -> ``<run>``)."""
    d = os.path.dirname(os.path.abspath(checkpoint_path))
    return os.path.dirname(d) if os.path.basename(d) == "checkpoints" else d


def write_args(out, args):
    with open(os.path.join(out, "args.json"), "w") as f:
        json.dump({k: v for k, v in vars(args).items() if k != "explicit"}, f, indent=2, sort_keys=True)


class Metrics:
    """Appends one JSON object per logged step to ``metrics.jsonl``.

    On resume, lines logged after the checkpoint's step (by a run killed between two
    checkpoints) are dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, out, resume_step=None):
        self.path = os.path.join(out, "metrics.jsonl")
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path) as f:
                keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(keep)
        self.file = open(self.path, "a")

    def log(self, **values):
        self.file.write(json.dumps(values) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
