"""common/run.py's Run: the collapse watch (one warning line when D has won outright for a
sustained stretch, naming the last checkpoint before it)."""

import os

import torch
import torch.nn as nn

from conftest import load_script, tiny_args


def records(d_fake, every=10, d_real=0.99):
    """Log records of a run logging every ``every`` steps, the i-th with ``d_fake[i]``."""
    return [{"step": every * (i + 1), "d_real": d_real, "d_fake": f} for i, f in enumerate(d_fake)]


def feed(watch, recs, out, every=10):
    """The warnings a CollapseWatch returns for ``recs`` (a log interval of ``every`` steps)."""
    said = [watch.update(r, r["step"] - every, out) for r in recs]
    return [(r["step"], w) for r, w in zip(recs, said) if w]


def test_collapse_watch_warns_once_after_a_sustained_stretch(tmp_path):
    from common.run import CollapseWatch

    os.makedirs(tmp_path / "checkpoints")
    for step in (50, 100, 150, 200):
        (tmp_path / "checkpoints" / f"step_{step:06d}.pt").touch()
    # healthy until step 120, then D(G(z)) ~ 1e-6 (bgan.py at ten times the authors' lr_g)
    said = feed(CollapseWatch(), records([0.3] * 12 + [1e-6] * 30), str(tmp_path))
    assert len(said) == 1, said
    step, line = said[0]
    assert step == 220 and line.startswith("warning: D has won outright since step 120")
    ckpt = os.path.join(str(tmp_path), "checkpoints", "step_000100.pt")
    assert f"the last checkpoint before it is {ckpt}" in line and f"--resume {ckpt}" in line
    assert "\n" not in line


def test_collapse_watch_ignores_dips_critics_and_runs_without_d_fake(tmp_path):
    from common.run import CollapseWatch

    out = str(tmp_path)
    # a dip of 50 steps, then D(G(z)) recovers: no collapse
    assert feed(CollapseWatch(), records(([0.3] * 5 + [1e-6] * 5) * 6), out) == []
    # a long stretch but fewer than three logs (--log-every 100): not yet
    assert feed(CollapseWatch(), records([0.3, 1e-6, 1e-6], every=100), out, every=100) == []
    # a critic's scores (WGAN, hinge): once outside [0, 1], never a probability in this run
    critic = records([-0.5] + [1e-6] * 40)
    assert feed(CollapseWatch(), critic, out) == []
    assert feed(CollapseWatch(), records([1e-6] * 40, d_real=3.0), out) == []
    # no d_fake logged (began, ebgan): nothing to watch
    assert feed(CollapseWatch(), [{"step": 10 * i, "d_loss": 0.1} for i in range(40)], out) == []
    # collapsed before the first checkpoint
    said = feed(CollapseWatch(), records([1e-6] * 20), out)
    assert len(said) == 1 and said[0][1].endswith("no checkpoint was written before it")


def test_run_writes_the_collapse_line_once(tmp_path, capsys):
    """A Run fed d_fake values through end_step (no training): the line comes from _log's
    numbers, above the progress bar, once, and names the checkpoint before the collapse."""
    from common.run import Run

    m = load_script("dcgan")
    out = str(tmp_path / "run")
    args = m.parse_args(
        [
            *tiny_args(m),
            "--steps",
            "400",
            "--out",
            out,
            "--log-every",
            "10",
            "--ckpt-every",
            "50",
            "--sample-every",
            "1000000",
        ]
    )
    run = Run("dcgan", args, 0, 1, torch.device("cpu"))
    run.start({"G": nn.Linear(2, 2), "D": nn.Linear(2, 2)}, grid=lambda g: torch.zeros(4, 1, 8, 8))
    capsys.readouterr()
    try:
        while run.step < 300:
            fake = 0.3 if run.step < 120 else 1e-6
            run.end_step(d_real=torch.tensor(0.99), d_fake=torch.tensor(fake))
    finally:
        run.pbar.close()
        run.release_signals()
        run.metrics.close(curves=False)
    said = [line for line in capsys.readouterr().out.splitlines() if "won outright" in line]
    ckpt = os.path.join(out, "checkpoints", "step_000100.pt")
    assert len(said) == 1 and "since step 120" in said[0] and ckpt in said[0], said
    assert os.path.isfile(ckpt)
