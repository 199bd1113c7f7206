"""Stopping never loses work: a signal ends a run at a step boundary with a checkpoint of
that step (one process and two under torchrun), the resumed run equals an uninterrupted
one bit for bit, checkpoints are durable and a failed save ends in one line, a requeued
`--resume auto --out DIR` starts a run that never reached a checkpoint."""

import errno
import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, assert_one_line_error, load_script, run_torchrun, tiny_args, torchrun
from test_scripts import losses

# Log every 3 steps, so that a stop mostly falls inside a log interval (whose partial sums
# the checkpoint must carry for the resumed log to equal the uninterrupted one).
FLAGS = ["--log-every", "3", "--sample-every", "100000", "--ckpt-every", "100000"]


def wait_for_step(proc, run, step, timeout=120):
    """Wait until the run has logged ``step`` (it is then mid-training)."""
    path, t0 = os.path.join(run, "metrics.jsonl"), time.time()
    while time.time() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()
        if os.path.exists(path) and sum(1 for _ in open(path)) >= step // 3:
            return
        time.sleep(0.05)
    raise AssertionError("the run did not start")


def stopped_step(err, run):
    """The step of the one 'stopped at step N; continue with --resume RUN' line."""
    lines = re.findall(r"stopped at step (\d+); continue with --resume (\S+)", err)
    assert len(lines) == 1 and lines[0][1] == run, err[-3000:]
    return int(lines[0][0])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_stops_at_a_step_and_resumes_exactly(sig, in_tmp):
    m = load_script("dcgan")
    cmd = [sys.executable, os.path.join(ROOT, "dcgan.py"), *tiny_args(m), *FLAGS]
    proc = subprocess.Popen(
        [*cmd, "--steps", "100000", "--out", "run"],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    wait_for_step(proc, "run", 3)
    proc.send_signal(sig)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 128 + sig, err[-3000:]
    n = stopped_step(err, "run")
    assert torch.load("run/checkpoints/last.pt", weights_only=True)["step"] == n
    assert os.path.exists(f"run/checkpoints/step_{n:06d}.pt")
    assert not glob.glob("run/checkpoints/*.tmp") and "Traceback" not in err

    total = n + 5
    m.main(["--resume", "run", "--steps", str(total)])
    m.main([*tiny_args(m), *FLAGS, "--steps", str(total), "--out", "ref"])
    assert losses("run") == losses("ref")
    a, b = (torch.load(f"{r}/checkpoints/last.pt", weights_only=True) for r in ("run", "ref"))
    assert all(torch.equal(a["G"][k], b["G"][k]) for k in a["G"])


def rank_pids(parent):
    """{rank: pid} of torchrun's worker processes (its children, read from Linux /proc)."""
    pids = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = open(stat).read().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent:  # the parent pid
                continue
            env = open(stat[: -len("stat")] + "environ", "rb").read().split(b"\0")
        except OSError:
            continue
        for kv in env:
            if kv.startswith(b"RANK="):
                pids[int(kv[5:])] = int(stat.split("/")[2])
    return pids


def dcgan_ddp(m, *flags):
    """(command, environment): a tiny dcgan.py under torchrun, two processes."""
    return torchrun(os.path.join(ROOT, "dcgan.py"), *tiny_args(m), *FLAGS, *flags)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks' pids in /proc")
def test_torchrun_ranks_stop_at_one_step(in_tmp):
    """SIGTERM to rank 1 alone: both ranks stop at the same step (they agree in the log's
    all-reduce), one checkpoint of it, and the resumed run equals an uninterrupted one."""
    m = load_script("dcgan")
    cmd, env = dcgan_ddp(m, "--steps", "100000", "--out", "ddp")
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_step(proc, "ddp", 3)
    ranks = rank_pids(proc.pid)
    assert sorted(ranks) == [0, 1], ranks
    os.kill(ranks[1], signal.SIGTERM)
    err = proc.communicate(timeout=180)[1]
    n = stopped_step(err, "ddp")  # printed once, by rank 0, after both ranks saved
    assert n % 3 == 0 and torch.load("ddp/checkpoints/last.pt", weights_only=True)["step"] == n
    assert len(torch.load("ddp/checkpoints/last.pt", weights_only=True)["rng"]) == 2

    total = n + 3
    dcgan = os.path.join(ROOT, "dcgan.py")
    run_torchrun(dcgan, *tiny_args(m), *FLAGS, "--resume", "ddp", "--steps", str(total))
    run_torchrun(dcgan, *tiny_args(m), *FLAGS, "--steps", str(total), "--out", "ref")
    assert losses("ddp") == losses("ref")


def test_failed_save_ends_in_one_line(in_tmp, capsys, monkeypatch):
    """A disk that fills up at the second checkpoint: one line naming the cause and the last
    good checkpoint, which is intact, and no temporary file."""
    import common.checkpoints as ck

    m, real_save, calls = load_script("dcgan"), torch.save, []

    def full_disk(obj, f):
        calls.append(1)
        if len(calls) > 1:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, f)

    monkeypatch.setattr(ck.torch, "save", full_disk)
    last = os.path.join("full", "checkpoints", "last.pt")
    line = assert_one_line_error(
        m,
        ["--ckpt-every", "2", "--out", "full"],
        "No space left",
        capsys,
        steps=4,
        ignore_progress=True,
    )
    assert f"the last good checkpoint is {last}" in line
    monkeypatch.setattr(ck.torch, "save", real_save)
    assert torch.load(last, weights_only=True)["step"] == 2
    assert not glob.glob("full/checkpoints/*.tmp")


def test_resume_auto_starts_a_run_that_has_no_checkpoint(in_tmp, capsys):
    m = load_script("dcgan")
    # Never started: the folder does not exist.
    m.main([*tiny_args(m), "--steps", "2", "--resume", "auto", "--out", "new"])
    assert "has no checkpoint yet; starting the run at step 0" in capsys.readouterr().err
    assert torch.load("new/checkpoints/last.pt", weights_only=True)["step"] == 2
    # Stopped before its first checkpoint: args.json, a log line and a grid of the first lap.
    os.makedirs("lap/samples")
    open("lap/args.json", "w").write("{}")
    open("lap/metrics.jsonl", "w").write('{"step": 7, "d_loss": 1.0}\n')
    open("lap/samples/step_000100.png", "wb").close()
    m.main([*tiny_args(m), "--steps", "2", "--resume", "auto", "--out", "lap"])
    assert [r["step"] for r in losses("lap")] == [1, 2]
    assert not os.path.exists("lap/samples/step_000100.png")
    # A folder that is not a run directory, and a named checkpoint that is missing: refused.
    os.makedirs("photos")
    open("photos/cat.jpg", "wb").close()
    assert_one_line_error(m, ["--resume", "auto", "--out", "photos"], "not a run directory", capsys)
    assert_one_line_error(m, ["--resume", "nope/last.pt"], "not found", capsys)


def test_resume_ignores_a_stale_temporary_file(in_tmp):
    m = load_script("dcgan")
    m.main([*tiny_args(m), "--steps", "2", "--out", "run"])
    open("run/checkpoints/last.pt.tmp", "wb").write(b"half a checkpoint, killed mid-save")
    m.main(["--resume", "run", "--steps", "3"])
    assert torch.load("run/checkpoints/last.pt", weights_only=True)["step"] == 3
    assert not os.path.exists("run/checkpoints/last.pt.tmp")


def test_out_naming_a_file_is_one_line(in_tmp, capsys):
    m = load_script("dcgan")
    open("taken", "w").close()
    assert_one_line_error(m, ["--out", "taken"], ["--out", "is a file"], capsys)


def test_second_ctrl_c_stops_at_once(in_tmp, capsys, monkeypatch):
    """The first signal only asks for a stop; a Ctrl-C more than a second later (not
    torchrun's forwarded copy of the first) interrupts at once, in one line and status 130."""
    from common.run import Run

    m = load_script("dcgan")
    m.main([*tiny_args(m), "--steps", "1", "--out", "run"])
    seen, before = [], signal.getsignal(signal.SIGINT)
    capsys.readouterr()

    def train(args):  # a run whose step never ends, interrupted twice
        run = Run("dcgan", args, 0, 1, torch.device("cpu"))
        run.out = "run"
        run.catch_signals()
        run.on_signal(signal.SIGUSR1, None)
        run.on_signal(signal.SIGINT, None)  # at once after the first: torchrun's copy
        seen.append(run.signum)
        run.t_signal -= 2
        run.on_signal(signal.SIGINT, None)

    monkeypatch.setattr(m, "train", train)
    with pytest.raises(SystemExit) as e:
        m.main([*tiny_args(m), "--steps", "1", "--out", "other"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 130 and seen == [signal.SIGUSR1], err
    assert err == "dcgan: interrupted; the last good checkpoint is run/checkpoints/last.pt"
    assert signal.getsignal(signal.SIGINT) == before and Run.active is None  # given back
