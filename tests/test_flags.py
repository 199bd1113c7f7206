"""Every numeric flag of every script has a valid range in common/flags.py, and a value just
outside it ends in one line that names the flag (exit 1, no traceback)."""

import argparse
import math

import pytest

from common.flags import interval, rule_for
from conftest import SCRIPTS, assert_one_line_error, load_script, tiny_args


def numeric_flags(module):
    """(option string, dest, type, nargs) of every int/float flag of a script's parser (flags
    with fixed choices excepted: argparse refuses what is not a choice)."""
    parsers, real = [], argparse.ArgumentParser.parse_args

    def spy(self, *a, **kw):
        parsers.append(self)
        return real(self, *a, **kw)

    argparse.ArgumentParser.parse_args = spy
    try:
        module.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = real
    return [
        (a.option_strings[-1], a.dest, a.type, a.nargs)
        for a in parsers[0]._actions
        if a.type in (int, float) and a.choices is None
    ]


def outside(rule, kind):
    """Values just outside ``rule`` for a flag of type ``kind``."""
    lo, hi, lo_in, hi_in = interval(rule)
    step = 1 if kind is int else 0.5
    bad = []
    if lo > -math.inf:
        bad.append(lo - step if lo_in else lo)
    if hi < math.inf:
        bad.append(hi + step if hi_in else hi)
    if kind is float:
        bad.append(math.nan)
    return [int(v) if kind is int else v for v in bad]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_numeric_flag_has_a_range(name):
    missing = [f[0] for f in numeric_flags(load_script(name)) if rule_for(name, f[1]) is None]
    assert not missing, f"{name}.py: add a range to common/flags.py RANGES for {missing}"


@pytest.mark.parametrize("name", SCRIPTS)
def test_out_of_range_values_end_in_one_line(name, in_tmp, capsys):
    m, checked = load_script(name), 0
    for opt, dest, kind, nargs in numeric_flags(m):
        for v in outside(rule_for(name, dest), kind):
            values = [str(v)] * (nargs if isinstance(nargs, int) else 1)
            assert_one_line_error(m, [opt, *values], opt, capsys)
            checked += 1
    assert checked >= 20


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_is_bf16_only_where_native(native, in_tmp, capsys, monkeypatch):
    """--amp auto (the default) runs bf16 where the hardware has it and fp32 elsewhere, and
    args.json records what ran; an explicit bf16 on an emulating CPU warns in one line."""
    import json

    import common.run

    monkeypatch.setattr(common.run, "native_bf16", lambda device: native)
    m = load_script("dcgan")
    m.main([*tiny_args(m), "--steps", "1", "--out", "auto"])
    assert json.load(open("auto/args.json"))["amp"] == ("bf16" if native else "off")
    capsys.readouterr()
    m.main([*tiny_args(m), "--steps", "1", "--amp", "bf16", "--out", "bf16"])
    warned = [line for line in capsys.readouterr().err.splitlines() if "emulated" in line]
    assert len(warned) == (0 if native else 1) and warned == [
        w for w in warned if w.startswith("warning:")
    ]


def test_native_bf16_detection_runs():
    import torch

    from common.run import native_bf16

    assert native_bf16(torch.device("cpu")) in (True, False)
