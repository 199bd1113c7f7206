"""Character-level text (common/text.py): the corpus and its vocabulary, resumable random
windows, the n-gram measure, and one line for text that cannot be used."""

import math
import os
import random

import pytest
import torch

from common import UserError
from conftest import ROOT, assert_one_line_error, load_script, run_torchrun, tiny_args
from test_scripts import losses
from common.text import (
    UNKNOWN,
    TextBatches,
    TextData,
    js_divergence,
    ngrams,
    text_metrics,
    word_share,
)


@pytest.fixture(scope="module")
def corpus():
    return TextData(seq_len=32, vocab_size=96)


def test_default_corpus_and_vocabulary(corpus):
    assert len(corpus.text) > 300_000 and "  " not in corpus.text and "\n" not in corpus.text
    assert corpus.channels == 96 and corpus.vocab[0] == UNKNOWN and corpus.vocab[1] == " "
    assert len(set(corpus.vocab)) == 96 and corpus.unknown_share < 0.01
    window = corpus.ids[1000:1032][None]
    assert corpus.decode(window) == [corpus.text[1000:1032]]  # frequent characters only there


def test_small_vocabulary_maps_the_rest_to_unknown(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("aaaa bbb cc d\n\n" * 10, encoding="utf-8")
    d = TextData(str(f), seq_len=4, vocab_size=3)
    assert d.vocab == UNKNOWN + "a " and set(d.decode(d.ids[None])[0]) == {"a", " ", UNKNOWN}
    # A resumed run passes its stored vocabulary: the same indices whatever the counts.
    assert torch.equal(TextData(str(f), 4, vocab=d.vocab).ids, d.ids)


def test_folder_of_txt_files(tmp_path):
    (tmp_path / "b.txt").write_text("second file " * 10)
    (tmp_path / "a.txt").write_text("first file " * 10)
    (tmp_path / "skip.md").write_text("not read")
    d = TextData(str(tmp_path), seq_len=8)
    assert d.text.startswith("first file") and "second file" in d.text and "not read" not in d.text


def test_batches_resume_the_same_windows(corpus):
    a = TextBatches(corpus, 8, torch.device("cpu"), seed=3, rank=1)
    it = iter(a)
    next(it)
    state = a.state_dict()
    want = [next(it)[0] for _ in range(2)]
    b = TextBatches(corpus, 8, torch.device("cpu"), seed=3, rank=1)
    b.load_state_dict(state)
    got = [x for x, _ in (next(iter(b)), next(iter(b)))]
    assert all(torch.equal(w, g) for w, g in zip(want, got))
    assert want[0].shape == (8, 32) and want[0].dtype == torch.int64
    other = next(iter(TextBatches(corpus, 8, torch.device("cpu"), seed=3, rank=0)))[0]
    assert not torch.equal(other, want[0])  # every rank draws its own windows


def test_metric_real_near_zero_shuffled_far(corpus):
    real = corpus.windows(1000, seed=1)
    rng = random.Random(0)
    shuffled = ["".join(rng.sample(s, len(s))) for s in real]
    r, s = text_metrics(real, corpus), text_metrics(shuffled, corpus)
    assert r["js1"] < 0.005 and r["js4"] < 0.25 and r["words"] == 1.0
    assert abs(s["js1"] - r["js1"]) < 1e-9  # the same characters ...
    assert s["js4"] > 3 * r["js4"] and s["js4"] > 0.6 and s["words"] < 0.2  # ... not the text


@pytest.fixture(scope="module")
def letters(tmp_path_factory):
    """26 letters with skewed frequencies, read with an 8-character vocabulary: 7 letters
    (' ' among the 7 most frequent symbols) and the unknown symbol for the other 20."""
    rng = random.Random(0)
    abc = "abcdefghijklmnopqrstuvwxyz"
    weights = [1 / (i + 1) for i in range(26)]
    words = ("".join(rng.choices(abc, weights, k=rng.randint(2, 8))) for _ in range(8000))
    f = tmp_path_factory.mktemp("letters") / "letters.txt"
    f.write_text(" ".join(words), encoding="utf-8")
    return TextData(str(f), seq_len=32, vocab_size=8)


def test_reference_is_counted_in_the_samples_alphabet(letters):
    """language_helpers.py (igul222/improved_wgan_training): NgramLanguageModel.js_with
    compares samples with n-grams of the same vocabulary-mapped lines the model trains on."""
    assert letters.unknown_share > 0.2  # a fifth of the text is outside the vocabulary
    real = letters.windows(1000, seed=0)
    assert set(letters.reference(1)) == set(letters.vocab) == set("".join(real))
    assert all(set(k) <= set(letters.vocab) for k in letters.reference(4))
    assert all(set(w) <= set(letters.vocab) for w in letters.words())
    r = text_metrics(real, letters)  # real windows against their own corpus
    assert r["js1"] < 0.005 and r["js4"] < 0.1 and r["words"] == 1.0  # raw text: js1 0.30


def test_js_divergence_bounds():
    p, q = ngrams(["abab"], 1), ngrams(["cdcd"], 1)
    assert js_divergence(p, p) == 0 and math.isclose(js_divergence(p, q), 1.0)
    assert math.isclose(
        js_divergence(ngrams(["aab"], 1), ngrams(["abb"], 1)),
        js_divergence(ngrams(["abb"], 1), ngrams(["aab"], 1)),
    )


def test_word_share_skips_cut_words():
    words = {"the", "cat"}
    assert word_share(["xthe cat dog sat"], words) == 0.5  # "xthe", "sat" touch the ends ...
    assert math.isnan(word_share(["thecat"], words))  # ... and only whole words count


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "too few"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 20, "not UTF-8"),
        ("a" * 100, "distinct"),
    ],
)
def test_unusable_text_is_one_line(tmp_path, content, words):
    f = tmp_path / "x.txt"
    f.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(UserError, match=words):
        TextData(str(f), seq_len=32)


def test_missing_path_is_one_line(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        TextData(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="no .txt files"):
        TextData(str(tmp_path))


# ---------------------------------------------------------------- the two text models
TEXT = ["bgan", "wgan_gp"]


def text_args(m, *extra):
    return [*tiny_args(m), "--dataset", "text", "--seq-len", "16", *extra]


@pytest.mark.parametrize("name", TEXT)
def test_text_train_resume_sample_evaluate(name, in_tmp):
    m = load_script(name)
    common = text_args(m, "--sample-every", "2", "--ckpt-every", "2")
    m.main([*common, "--steps", "4", "--eval-every", "4", "--eval-samples", "20", "--out", "full"])
    m.main([*common, "--steps", "2", "--out", "part"])
    m.main(["--resume", "auto", "--out", "part", "--steps", "4"])
    plain = [r for r in losses("full") if "eval_js4" not in r]
    assert plain == losses("part") and len(plain) == 4  # resumed exactly
    evals = [r for r in losses("full") if "eval_js4" in r]
    assert len(evals) == 1 and 0 <= evals[0]["eval_js4"] <= 1 and "eval_words" in evals[0]
    ckpt = torch.load("full/checkpoints/last.pt", weights_only=True)
    assert len(ckpt["vocab"]) == 96 and ckpt["args"]["dataset"] == "text"
    lines = open("full/samples/step_000004.txt", encoding="utf-8").read().splitlines()
    assert len(lines) == 64 and all(len(s) == 16 for s in lines)

    m.main(["--sample", "5", "--checkpoint", "full", "--out", "s", "--device", "cpu"])
    m.main(
        [
            "--sample",
            "2",
            "--interpolate",
            "3",
            "--checkpoint",
            "full",
            "--out",
            "s",
            "--device",
            "cpu",
        ]
    )
    sample, walk = sorted(os.listdir("s"), key=lambda f: not f.startswith("sample"))
    assert sample.endswith(".txt") and len(open(f"s/{sample}").read().splitlines()) == 5
    assert len([x for x in open(f"s/{walk}").read().splitlines() if x]) == 6
    gen = m.load_generator("full/checkpoints/last.pt")
    ids = gen(7, seed=1)
    assert ids.shape == (7, 16) and ids.dtype == torch.int64 and torch.equal(ids, gen(7, seed=1))


@pytest.mark.parametrize("name", TEXT)
def test_text_bf16(name, in_tmp):
    m = load_script(name)
    m.main([*text_args(m), "--steps", "2", "--amp", "bf16", "--out", "bf16"])
    assert len(losses("bf16")) == 2


def test_text_torchrun_two_processes(in_tmp):
    m = load_script("wgan_gp")
    driver = os.path.join(ROOT, "tests", "ddp_driver.py")
    run_torchrun(driver, "wgan_gp", *text_args(m), "--steps", "2", "--out", "ddp")
    p0, p1 = (torch.load(f"ddp/params_rank{i}.pt", weights_only=True) for i in (0, 1))
    assert all(torch.allclose(p0[k], p1[k], atol=1e-6) for k in p0)


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--dataset", "text", "--data-path", "missing.txt"], "does not exist"),
        (["--dataset", "text", "--vocab-size", "1"], "--vocab-size"),
        (["--dataset", "text", "--seq-len", "1"], "--seq-len"),
    ],
)
def test_text_bad_input_one_line(flags, words, in_tmp, capsys):
    for name in TEXT:
        assert_one_line_error(load_script(name), flags, words, capsys)


def test_images_only_scripts_refuse_text(in_tmp, capsys):
    assert_one_line_error(
        load_script("dcgan"), ["--dataset", "text"], "bgan.py and wgan_gp.py", capsys
    )
    assert_one_line_error(
        load_script("bgan"), ["--dataset", "text", "--mode", "continuous"], "discrete", capsys
    )
