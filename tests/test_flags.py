"""Every numeric flag of every script carries its valid range (an argparse type from the shared
command-line section, ``type=in_range(int, "[1, inf)")``), and a value just outside it ends in
one line that names the flag (exit 1, no traceback, no usage dump)."""

import argparse
import math

import pytest

from conftest import SCRIPTS, assert_one_line_error, load_script, tiny_args


def numeric_flags(module):
    """(option string, type, nargs) of every numeric flag of a script's parser (flags with
    fixed choices excepted: argparse refuses what is not a choice)."""
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
        (a.option_strings[-1], a.type, a.nargs)
        for a in parsers[0]._actions
        if a.choices is None and (a.type in (int, float) or hasattr(a.type, "rule"))
    ]


def outside(rule, kind):
    """Values just outside ``rule`` ("[a, b)", ...) for a flag of type ``kind``."""
    lo, hi = (float(s) for s in rule[1:-1].split(","))
    step = 1 if kind is int else 0.5
    bad = []
    if lo > -math.inf:
        bad.append(lo - step if rule[0] == "[" else lo)
    if hi < math.inf:
        bad.append(hi + step if rule[-1] == "]" else hi)
    if kind is float:
        bad += [math.nan, math.inf]
    return [int(v) if kind is int else v for v in bad]


def test_in_range_is_the_interval():
    m = load_script("dcgan")
    closed_open = m.in_range(int, "[1, 3)")
    assert [closed_open(v) for v in ("1", "2")] == [1, 2]
    for bad in ("0", "3"):
        with pytest.raises(argparse.ArgumentTypeError, match=r"must be in \[1, 3\), not"):
            closed_open(bad)
    with pytest.raises(ValueError):
        closed_open("1.5")  # argparse: "invalid int value"
    positive = m.in_range(float, "(0, inf)")
    assert positive("1e-4") == 1e-4 and positive.__name__ == "float"
    for bad in ("0", "-1", "nan", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            positive(bad)


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_numeric_flag_has_a_range(name):
    missing = [opt for opt, kind, _ in numeric_flags(load_script(name)) if kind in (int, float)]
    assert not missing, f"{name}.py: give {missing} a range, type=in_range(int, '[1, inf)')"


@pytest.mark.parametrize("name", SCRIPTS)
def test_out_of_range_values_end_in_one_line(name, in_tmp, capsys):
    m, checked = load_script(name), 0
    for opt, kind, nargs in numeric_flags(m):
        number = int if kind.__name__ == "int" else float
        for v in outside(kind.rule, number):
            values = [str(v)] * (nargs if isinstance(nargs, int) else 1)
            assert_one_line_error(m, [opt, *values], opt, capsys)
            checked += 1
    assert checked >= 20


def test_a_mistyped_flag_ends_in_one_line(in_tmp, capsys):
    m = load_script("sagan")
    assert_one_line_error(m, ["--lr-g", "fast"], ["--lr-g", "invalid float value"], capsys)
    assert_one_line_error(m, ["--no-such-flag"], "unrecognized arguments", capsys)


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
