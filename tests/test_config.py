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
        else:
            given, want = [flag, str(type(v)(v + 1))], type(v)(v + 1)
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
    assert m.parse_args([]).fade_kimg is None
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

