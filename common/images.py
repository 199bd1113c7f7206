"""Image grids and progress GIFs."""
import glob
import math
import os

import numpy as np
import torch


def to_uint8(x):
    """A float batch in [-1, 1], (N, C, H, W), to a uint8 numpy array (N, H, W, C)."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(x, nrow=None, padding=2, min_size=512):
    """Tile a batch in [-1, 1] into one uint8 image (H, W, 3), upscaled (nearest) for viewing.

    Small images (digits at 32x32) are enlarged by an integer factor until the grid is at
    least ``min_size`` pixels wide, so that a grid is readable without zooming.
    """
    imgs = to_uint8(x)
    if imgs.shape[-1] == 1:
        imgs = imgs.repeat(3, axis=-1)
    n, h, w, _ = imgs.shape
    nrow = nrow or max(1, int(math.ceil(math.sqrt(n))))
    ncol = int(math.ceil(n / nrow))
    grid = np.full((ncol * (h + padding) + padding, nrow * (w + padding) + padding, 3), 255, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[padding + r * (h + padding) : (r + 1) * (h + padding), padding + c * (w + padding) : (c + 1) * (w + padding)] = imgs[i]
    k = max(1, int(math.ceil(min_size / grid.shape[1])))
    return grid.repeat(k, axis=0).repeat(k, axis=1) if k > 1 else grid


def save_grid(x, path, nrow=None, min_size=512):
    """Write a batch in [-1, 1] as a PNG grid; returns the path."""
    from PIL import Image

    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(make_grid(x, nrow, min_size=min_size)).save(path)
    return path


def save_gif(frames, path, duration_ms=120, last_ms=1500):
    """Write a list of uint8 images (H, W, 3) or PNG paths as a looping GIF."""
    from PIL import Image

    ims = [Image.open(f).convert("RGB") if isinstance(f, str) else Image.fromarray(f) for f in frames]
    if not ims:
        return None
    size = ims[-1].size
    ims = [im.resize(size) if im.size != size else im for im in ims]
    durations = [duration_ms] * (len(ims) - 1) + [last_ms]
    tmp = path + ".tmp.gif"
    ims[0].save(tmp, save_all=True, append_images=ims[1:], duration=durations, loop=0)
    os.replace(tmp, path)
    return path


def progress_gif(sample_dir, path, max_frames=100):
    """GIF of the step-numbered grids in ``sample_dir`` (``step_000100.png``...), in order."""
    files = sorted(glob.glob(os.path.join(sample_dir, "step_*.png")))
    if len(files) > max_frames:  # keep the first and last, evenly thinned between
        keep = np.linspace(0, len(files) - 1, max_frames).round().astype(int)
        files = [files[i] for i in sorted(set(keep))]
    return save_gif(files, path)
