"""common/kinds.py: a kind of samples (images, text) says how a generator's output is decoded,
written and scored, so that the run knows no kind of data by name; a checkpoint keeps what
its kind needs and ``kind_of`` rebuilds it."""

import ast
import os

import torch
from PIL import Image

from common.data import MemoryData
from common.kinds import Images, Text, kind_of
from common.text import TextData
from conftest import ROOT


def test_images_are_a_grid_scored_by_fid(tmp_path):
    kind = kind_of({"channels": 1})  # a checkpoint without a vocabulary
    assert isinstance(kind, Images) and kind.picture and kind.best_metric == "fid"
    x = torch.rand(6, 3, 8, 8) * 2 - 1
    assert kind.decode(x) is x and kind.state() == {}
    path = kind.write(x, str(tmp_path / "a" / "step_000001"), row=3)
    assert path.endswith("step_000001.png")
    grid = Image.open(path)
    assert grid.width > grid.height  # 3 per row, 2 rows


def test_text_is_lines_of_the_likeliest_characters_scored_by_js4(tmp_path):
    kind = kind_of({"vocab": "?ab"})
    assert isinstance(kind, Text) and not kind.picture and kind.best_metric == "js4"
    assert kind_of(kind.state()).vocab == "?ab"  # what the checkpoint keeps rebuilds it
    dist = torch.zeros(4, 3, 1, 2)  # (N, V, 1, L) per-position distributions
    dist[:, 1, 0, 0] = dist[:, 2, 0, 1] = 1.0  # "ab" each
    ids = kind.decode(dist)
    assert ids.tolist() == [[1, 2]] * 4 and torch.equal(kind.decode(ids), ids)  # indices stay
    path = kind.write(ids, str(tmp_path / "walks"), row=2)  # a blank line after every 2
    assert path.endswith("walks.txt")
    assert open(path, encoding="utf-8").read() == "ab\nab\n\nab\nab\n\n"
    assert open(kind.write(ids, str(tmp_path / "plain")), encoding="utf-8").read() == "ab\n" * 4


def test_datasets_bring_their_kind():
    images = MemoryData(torch.zeros(5, 1, 8, 8, dtype=torch.uint8), name="digits")
    assert isinstance(images.kind, Images) and images.describe() == "digits 8x8x1, 5 images"
    text = TextData(None, seq_len=8, vocab_size=20)
    assert isinstance(text.kind, Text) and text.kind.vocab == text.vocab


def test_the_run_knows_no_kind_of_data_by_name():
    """common/run.py's code asks the data and the kind; it names no kind (its docs may)."""
    with open(os.path.join(ROOT, "common", "run.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    docs = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    words = {"text", "vocab", "TextData", "TextBatches", "common.text", "QuantizedFolderData"}
    named = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and id(n) not in docs and n.value in words:
            named.add(repr(n.value))
        named |= {getattr(n, a) for a in ("id", "attr", "module") if getattr(n, a, None) in words}
    assert not named, f"common/run.py names a kind of data: {sorted(named)}"
