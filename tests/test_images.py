"""common/images.py: sample grids, the progress GIF and the curves a run draws."""

import os

import numpy as np
import torch
from PIL import Image

from common.images import make_grid, progress_gif, save_curve, save_grid


def test_grid_and_gif(tmp_path):
    x = torch.linspace(-1, 1, 10 * 3 * 8 * 8).view(10, 3, 8, 8)
    grid = make_grid(x, nrow=5, min_size=0)
    assert grid.shape == (2 * 10 + 2, 5 * 10 + 2, 3) and grid.dtype == np.uint8
    for s in (100, 200):
        save_grid(x[:4, :1] * s / 200, str(tmp_path / "samples" / f"step_{s:06d}.png"))
    gif = progress_gif(str(tmp_path / "samples"), str(tmp_path / "p.gif"))
    assert Image.open(gif).n_frames == 2


def test_save_curve(tmp_path):
    path = save_curve(
        str(tmp_path / "sub" / "c.png"), [1, 2, 3, 4], [0.5, 0.3, float("nan"), 0.2], "title"
    )
    img = Image.open(path).convert("RGB")
    assert img.size == (640, 360)
    assert (31, 119, 180) in {c for _, c in img.getcolors(1 << 16)}  # the curve is drawn
    save_curve(str(tmp_path / "one.png"), [5], [1.0])  # a single point, and no points at all
    save_curve(str(tmp_path / "none.png"), [], [])
    assert os.path.exists(tmp_path / "one.png") and os.path.exists(tmp_path / "none.png")
