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
    """Appends one JSON object per logged step to ``metrics.jsonl``; optionally mirrors the
    numbers and sample grids to TensorBoard (``--tensorboard``), evaluates checkpoints during
    training (``--eval-every``) and draws the curves at the end of the run.

    On resume, lines logged after the checkpoint's step (by a run killed between two
    checkpoints) are dropped first, so the file reads as one uninterrupted run.
    """

    def __init__(self, out, resume_step=None, tensorboard=False, evaluate_dataset=None):
        self.out, self.path = out, os.path.join(out, "metrics.jsonl")
        if resume_step is not None and os.path.exists(self.path):
            with open(self.path) as f:
                keep = [line for line in f if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            with open(self.path, "w") as f:
                f.writelines(keep)
        self.writer = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
            self.writer = SummaryWriter(os.path.join(out, "tensorboard"), purge_step=resume_step + 1 if resume_step is not None else None)
        if evaluate_dataset not in (None, "digits"):  # fail now, not at the first evaluation
            from common.evaluation import extractor

            extractor("inception", None)
        self.file = open(self.path, "a")

    def log(self, **values):
        self.file.write(json.dumps(values) + "\n")
        self.file.flush()
        if self.writer is not None and "step" in values:
            for k, v in values.items():
                if k not in ("step", "time") and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self.writer.add_scalar(k, v, values["step"])

    def image(self, tag, step, png):
        """Mirror a written grid (a PNG path) to TensorBoard."""
        if self.writer is not None:
            import numpy as np
            from PIL import Image

            self.writer.add_image(tag, np.asarray(Image.open(png).convert("RGB")), step, dataformats="HWC")

    def evaluate(self, step, checkpoint, num_samples):
        """Score a checkpoint with common.evaluation's protocol (the one of tools/evaluate.py) on
        a small sample (digits: the digits classifier; other data: the FID Inception), log the
        numbers as ``eval_*`` and keep the best checkpoint (lowest FID) as ``checkpoints/best.pt``.
        The RNG states are restored afterwards, so evaluating never changes the training
        trajectory."""
        import random
        import shutil

        import numpy as np
        import torch

        from common import evaluation  # only a run that evaluates pays for importing it

        py, npy = random.getstate(), np.random.get_state()
        with torch.random.fork_rng(devices=[]):
            res = evaluation.evaluate(checkpoint, num_samples=num_samples, num_real=max(num_samples, 1000), metrics=("fid", "kid", "prc"),
                                      device="cpu" if not torch.cuda.is_available() else "auto")
        random.setstate(py)
        np.random.set_state(npy)
        m = {f"eval_{k}": v for k, v in res["metrics"].items() if k in ("fid", "kid", "precision", "recall", "coverage", "confidence")}
        best_file = os.path.join(self.out, "checkpoints", "best.json")
        best = json.load(open(best_file)) if os.path.exists(best_file) else None
        if best is None or m["eval_fid"] < best["eval_fid"]:
            best = {"step": step, **m, "feature_extractor": res["protocol"]["feature_extractor"]["name"], "num_samples": num_samples}
            tmp = os.path.join(self.out, "checkpoints", "best.pt.tmp")
            shutil.copyfile(checkpoint, tmp)
            os.replace(tmp, os.path.join(self.out, "checkpoints", "best.pt"))
            with open(best_file, "w") as f:
                json.dump(best, f, indent=2)
        self.log(step=step, **m, eval_best_step=best["step"])
        return m

    def close(self):
        self.file.close()
        if self.writer is not None:
            self.writer.close()
        try:
            from common.images import plot_curves

            plot_curves(self.path, os.path.join(self.out, "curves.png"))
        except (ImportError, KeyError):  # matplotlib is optional; a run may have logged nothing
            pass


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
