"""common/quantize.py: palettes learnt from pixels, quantized PNGs and their round trip
(the data of bgan.py's quantized mode; tools/quantize_celeba.py writes it)."""

import numpy as np
import pytest
from PIL import Image

from common import UserError
from common.quantize import (
    dequantize,
    learn_palette,
    load_palette,
    load_png,
    quantize,
    sample_pixels,
    save_palette,
    save_png,
)


def test_palette_learning_and_png_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    centres = np.array([[250, 10, 10], [10, 200, 20], [20, 20, 240]])
    pixels = np.clip(
        centres[rng.integers(3, size=3000)] + rng.integers(-4, 5, (3000, 3)), 0, 255
    ).astype(np.uint8)
    pal = learn_palette(pixels, 3, seed=0)
    assert pal.shape == (3, 3) and pal.dtype == np.uint8
    assert all(np.abs(pal.astype(int) - c).sum(1).min() <= 6 for c in centres)
    assert (
        len(learn_palette(np.array([[1, 2, 3], [4, 5, 6]] * 50), 16)) == 2
    )  # fewer distinct colours than asked: no duplicates
    img = pixels[:64].reshape(8, 8, 3)
    idx = quantize(img, pal)
    d = ((img[:, :, None].astype(int) - pal[None, None].astype(int)) ** 2).sum(-1)
    assert np.array_equal(idx, d.argmin(-1))
    save_png(str(tmp_path / "a.png"), idx, pal)
    idx2, pal2 = load_png(str(tmp_path / "a.png"))
    assert np.array_equal(idx, idx2) and np.array_equal(pal, pal2[: len(pal)])
    assert Image.open(tmp_path / "a.png").mode == "P"
    assert np.array_equal(dequantize(idx2, pal), pal[idx])
    save_palette(str(tmp_path), pal)
    assert np.array_equal(load_palette(str(tmp_path)), pal)
    (tmp_path / "palette.json").write_text("{not json")
    with pytest.raises(UserError, match="not a palette"):
        load_palette(str(tmp_path))
    with pytest.raises(UserError):
        learn_palette(pixels, 300)
    assert sample_pixels([img], 10, seed=1).shape == (10, 3)
