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


def save_curve(path, xs, ys, title=""):
    """Draw ys against xs as a line chart (PNG, 640x360) with PIL: a frame, the curve, the
    x and y ranges and a title. Non-finite points are skipped; returns the path."""
    from PIL import Image, ImageDraw

    w, h, left, right, top, bottom = 640, 360, 70, 20, 30, 30
    img = Image.new("RGB", (w, h), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 8), title, fill="black")
    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    pts = [(float(x), float(y)) for x, y in zip(xs, ys) if math.isfinite(x) and math.isfinite(y)]
    if pts:
        x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
        y0, y1 = min(p[1] for p in pts), max(p[1] for p in pts)
        x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
        xy = [(left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)) for x, y in pts]
        if len(xy) > 1:
            draw.line(xy, fill=(31, 119, 180), width=2)
        else:
            draw.ellipse([xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=(31, 119, 180))
        draw.text((4, top), f"{y1:.4g}", fill="black")
        draw.text((4, h - bottom - 12), f"{y0:.4g}", fill="black")
        draw.text((left, h - bottom + 6), f"{x0:g}", fill="black")
        draw.text((w - right - 60, h - bottom + 6), f"{x1:g}", fill="black")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)
    return path
