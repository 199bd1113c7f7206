"""No host sync per training step: the loop hands tensors to the run, which syncs once per
--log-every interval. Counted by patching the tensor methods that wait for the device
(.item(), .tolist(), .cpu(), .numpy(), bool/float/int of a tensor): a run makes none of
them between two steps when no log, grid or checkpoint falls there."""

import pytest
import torch

from conftest import SCRIPTS, load_script, tiny_args

SYNCS = ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__")


def syncs_per_step(module, steps):
    """Host syncs between the starts of consecutive ``run.end_step`` calls (steps 2..n-1)."""
    from common.run import Run

    calls, marks = {"n": 0}, []
    real = {name: getattr(torch.Tensor, name) for name in SYNCS}
    real_end_step = Run.end_step

    def end_step(self, *a, **k):
        marks.append(calls["n"])
        return real_end_step(self, *a, **k)

    for name in SYNCS:

        def counted(self, *a, _real=real[name], **k):
            calls["n"] += 1
            return _real(self, *a, **k)

        setattr(torch.Tensor, name, counted)
    Run.end_step = end_step
    try:
        module.main(
            [
                *tiny_args(module),
                "--steps",
                str(steps),
                "--log-every",
                "1000",
                "--sample-every",
                "1000",
                "--ckpt-every",
                "1000",
                "--out",
                "run",
            ]
        )
    finally:
        for name in SYNCS:
            setattr(torch.Tensor, name, real[name])
        Run.end_step = real_end_step
    return [b - a for a, b in zip(marks[1:], marks[2:])]


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_host_sync_per_step(name, in_tmp):
    got = syncs_per_step(load_script(name), 5)
    assert got and not any(got), f"{name}: host syncs per step {got}"
