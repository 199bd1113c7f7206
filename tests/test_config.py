"""--config auto|paper, the same flag in every script: `paper` sets each flag of the paper's
main experiment, `auto` (the default) the script's rule for the data at hand; flags given
always win; args.json records the config and every resolved value; a resumed run keeps them."""

import json
import os

import pytest

from conftest import SCRIPTS, load_script, tiny_args


def config_values(module, name, argv=()):
    """The flag -> value map that --config `name` applies, for this command line."""
    args = module.parse_args([*argv])
    config = parser_of(module).configs[name]
    return config(args) if callable(config) else config


def parser_of(module):
    """The script's ArgumentParser (parse_args builds one each call; catch it)."""
    import argparse

    seen = []
    real = argparse.ArgumentParser.parse_args

    def spy(self, *a, **k):
        seen.append(self)
        return real(self, *a, **k)

    argparse.ArgumentParser.parse_args = spy
    try:
        module.parse_args([])
    finally:
        argparse.ArgumentParser.parse_args = real
    return seen[0]


@pytest.mark.parametrize("name", SCRIPTS)
def test_paper_sets_every_value_and_given_flags_win(name):
    m = load_script(name)
    parser = parser_of(m)
    assert set(parser.configs) >= {"auto", "paper"}
    dests = {a.dest for a in parser._actions}
    for argv in ([], ["--dataset", "text"]) if hasattr(m, "PAPER_TEXT") else ([],):
        paper = config_values(m, "paper", argv)
        assert paper, name
        assert set(paper) <= dests, (name, set(paper) - dests)  # every key is a real flag
        args = m.parse_args(["--config", "paper", *argv])
        assert args.config == "paper"
        for k, v in paper.items():
            assert getattr(args, k) == v, (name, k)
        # a flag given beside it wins, whichever it is
        k = sorted(paper)[0]
        flag = "--" + k.replace("_", "-")
        v = paper[k]
        if isinstance(v, bool):
            given, want = ([flag] if not v else ["--no-" + k.replace("_", "-")]), not v
        elif isinstance(v, str):
            continue
        elif isinstance(v, int):
            given, want = [flag, str(v + 1)], v + 1
        else:  # another value within the flag's range ([0, 1) for beta1, ...)
            want = v / 2 if v else 0.5
            given = [flag, str(want)]
        assert getattr(m.parse_args(["--config", "paper", *given, *argv]), k) == want
    auto = config_values(m, "auto")
    args = m.parse_args([])
    assert args.config == "auto"
    for k, v in auto.items():
        assert getattr(args, k) == v, (name, k)


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_both_configs(name, capsys):
    m = load_script(name)
    with pytest.raises(SystemExit):
        m.parse_args(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--config {auto,paper" in out and "auto: " in out and "; paper: " in out


def test_args_json_records_config_and_resume_keeps_it(in_tmp):
    """A --config paper run writes the config and its values; a resume that gives only
    --resume (so --config auto by default) keeps the run's values."""
    m = load_script("dcgan")
    m.main([*tiny_args(m), "--config", "paper", "--steps", "2", "--out", "run"])
    got = json.load(open(os.path.join("run", "args.json")))
    assert got["config"] == "paper" and got["image_size"] == 64 and got["ema_decay"] == 0.0
    assert got["batch_size"] == 16  # given: wins over the paper's 128
    m.main([*tiny_args(m), "--steps", "3", "--resume", "run"])
    got = json.load(open(os.path.join("run", "args.json")))
    assert got["config"] == "paper" and got["image_size"] == 64 and got["ema_decay"] == 0.0


def test_progan_auto_phases_follow_the_data(in_tmp):
    """progan's auto phases are PHASE_EPOCHS passes over the data (at most the paper's 800
    kimg), resolved once the data is loaded and recorded in args.json."""
    m = load_script("progan")
    assert m.parse_args([]).fade_kimg == pytest.approx(m.PHASE_EPOCHS * 1797 / 1000)
    assert m.parse_args(["--config", "paper"]).fade_kimg == 800
    flags = [a for a in tiny_args(m) if a not in ("--stable-kimg", "0.016", "--fade-kimg", "0.024")]
    m.main([*flags, "--steps", "2", "--out", "run"])
    got = json.load(open(os.path.join("run", "args.json")))
    want = m.PHASE_EPOCHS * 1797 / 1000  # the embedded digits: 1797 images
    assert got["fade_kimg"] == pytest.approx(want) and got["stable_kimg"] == pytest.approx(want)


@pytest.mark.parametrize("name", SCRIPTS)
def test_auto_trains_at_the_datas_own_size(name):
    """--config auto picks --image-size from the data (the 8x8 digits at 16x16, MNIST and
    CIFAR-10 at 32x32); a given --image-size and --config paper keep theirs."""
    m = load_script(name)
    assert m.parse_args([]).image_size == 16
    assert m.parse_args(["--image-size", "64"]).image_size == 64
    assert m.parse_args(["--dataset", "mnist", "--data-path", "x"]).image_size == 32
    assert m.parse_args(["--dataset", "cifar10", "--data-path", "x"]).image_size == 32
    assert m.parse_args(["--dataset", "folder", "--data-path", "x"]).image_size == 32
    assert m.parse_args(["--dataset", "celeba", "--data-path", "x"]).image_size == 32
    paper = m.parse_args(["--config", "paper"]).image_size
    assert paper == config_values(m, "paper").get("image_size", 32) and paper != 16


def test_dry_run_resolves_for_absent_hardware_without_data(in_tmp, capsys):
    """--dry-run --assume prints what auto saw and every setting with its source, and exits
    without data files and without writing anything."""
    m = load_script("dcgan")
    flags = ["--dry-run", "--assume", "cuda:8", "--dataset", "celeba", "--data-path", "nowhere"]
    m.main([*flags, "--lr-d", "1e-4"])
    out = capsys.readouterr().out
    assert "auto saw: device cuda, processes 8, gpu_gib 80.0, dataset celeba, images 202599" in out
    lines = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines()[1:]}
    assert lines["--image-size"] == ["64", "default"]  # CelebA at 64x64 on CUDA
    assert lines["--lr-d"] == ["0.0001", "given"]
    assert os.listdir(".") == []


def test_assume_is_checked(capsys):
    m = load_script("dcgan")
    with pytest.raises(SystemExit) as e:
        m.parse_args(["--assume", "tpu:8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1  # one line, no usage dump
    assert "use cpu, cpu:N, cuda, cuda:N or cuda:N:GIB" in err[0]
    assert m.parse_args(["--assume", "cuda:4:24"]).auto["gpu_gib"] == 24.0
    assert m.parse_args(["--assume", "cpu:2"]).auto["processes"] == 2


def test_args_json_records_what_auto_saw_and_chose(in_tmp, capsys):
    """A run records the rule's inputs (hardware, data) and what the config set; on a CPU its
    first line says that auto is a run of minutes and how to see the full schedule."""
    m = load_script("ebgan")
    m.main([*tiny_args(m), "--steps", "1", "--out", "run"])
    out = capsys.readouterr().out
    assert out.startswith("ebgan: --config auto on a CPU is a run of minutes")
    assert "--dry-run --assume cuda" in out.splitlines()[0]
    got = json.load(open(os.path.join("run", "args.json")))
    assert got["auto"]["device"] == "cpu" and got["auto"]["images"] == 1797
    assert got["auto"]["side"] == 8 and got["chosen"]["margin"] == 6  # ebgan's margin rule
    assert got["device"] == "cpu" and got["channels"] == 1  # what ran, not "auto" and null
    m.main([*tiny_args(m), "--config", "paper", "--steps", "1", "--out", "run2"])
    got = json.load(open(os.path.join("run2", "args.json")))
    assert got["auto"] is None and got["chosen"]["margin"] == 10.0


def test_ema_warmup_off_is_exactly_the_decay_from_step_0():
    import torch

    m = load_script("dcgan")
    ema, model = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = ema.weight.detach().clone()
    m.ema_update(ema, model, 0.9, 0, warmup=False)
    assert torch.allclose(ema.weight, 0.9 * before + 0.1 * model.weight)
    ema.weight.data.copy_(before)
    m.ema_update(ema, model, 0.9, 0, warmup=True)  # capped at (1 + 0) / (10 + 0)
    assert torch.allclose(ema.weight, 0.1 * before + 0.9 * model.weight)
    assert m.parse_args(["--no-ema-warmup"]).ema_warmup is False


def test_auto_table_page_is_generated_from_the_rules():
    """docs/auto.md is what tools/auto_table.py makes of the scripts' rules today."""
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    r = subprocess.run(
        [sys.executable, os.path.join(root, "tools", "auto_table.py"), "--check"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr


def test_mistyped_dataset_names_the_nearest(capsys):
    m = load_script("sagan")
    with pytest.raises(SystemExit) as e:
        m.parse_args(["--dataset", "cifar"])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 1 and len(err) == 1 and err[0].endswith("did you mean cifar10?")
    assert m.parse_args(["--dataset", "fashion-mnist"]).dataset == "fashion-mnist"
