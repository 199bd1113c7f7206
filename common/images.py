"""Image grids, progress GIFs and curves."""

import glob
import json
import math
import os

import numpy as np
import torch


def to_uint8(x):
    """A float batch in [-1, 1], (N, C, H, W), to a uint8 numpy array (N, H, W, C)."""
    x = x.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(x, nrow=None, padding=2, min_size=512):
    """Tile a batch in [-1, 1] into one uint8 image (H, W, 3) with torchvision's make_grid
    (white gaps), upscaled (nearest) for viewing: small images (digits at 32x32) are
    enlarged by an integer factor until the grid is at least ``min_size`` pixels wide."""
    from torchvision.utils import make_grid as tile

    x = torch.from_numpy(to_uint8(x)).permute(0, 3, 1, 2)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    nrow = nrow or max(1, int(math.ceil(math.sqrt(len(x)))))
    grid = tile(x, nrow=nrow, padding=padding, pad_value=255).permute(1, 2, 0).contiguous().numpy()
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

    ims = [
        Image.open(f).convert("RGB") if isinstance(f, str) else Image.fromarray(f) for f in frames
    ]
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
        xy = [
            (
                left + (x - x0) / (x1 - x0) * (w - left - right),
                h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom),
            )
            for x, y in pts
        ]
        if len(xy) > 1:
            draw.line(xy, fill=(31, 119, 180), width=2)
        else:
            draw.ellipse(
                [xy[0][0] - 2, xy[0][1] - 2, xy[0][0] + 2, xy[0][1] + 2], fill=(31, 119, 180)
            )
        draw.text((4, top), f"{y1:.4g}", fill="black")
        draw.text((4, h - bottom - 12), f"{y0:.4g}", fill="black")
        draw.text((left, h - bottom + 6), f"{x0:g}", fill="black")
        draw.text((w - right - 60, h - bottom + 6), f"{x1:g}", fill="black")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)
    return path


# ---------------------------------------------------------------------- curves (tools/plot.py)
CURVE_SKIP = {"step", "time"}


def read_series(path):
    """{key: ([steps], [values])} of the numeric fields of a metrics.jsonl, in first-seen order."""
    series = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill: skip it
                continue
            step = rec.get("step")
            for k, v in rec.items():
                if (
                    k in CURVE_SKIP
                    or isinstance(v, bool)
                    or not isinstance(v, (int, float))
                    or step is None
                ):
                    continue
                xs, ys = series.setdefault(k, ([], []))
                xs.append(step)
                ys.append(v)
    return series


def smooth(ys, window):
    out, acc, q = [], 0.0, []
    for y in ys:
        q.append(y)
        acc += y
        if len(q) > window:
            acc -= q.pop(0)
        out.append(acc / len(q))
    return out


def plot_curves(run_dir, out=None, keys=None):
    """Every number of a run's metrics.jsonl (or of the one in ``run_dir``) against the step,
    one panel each, as a PNG (default ``<run>/curves.png``); returns its path. Raises
    ImportError without matplotlib, KeyError for keys the file does not have."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = os.path.join(run_dir, "metrics.jsonl") if os.path.isdir(run_dir) else run_dir
    series = read_series(path)
    if keys:
        missing = [k for k in keys if k not in series]
        if missing:
            raise KeyError(f"not in {path}: {', '.join(missing)} (it has {', '.join(series)})")
        series = {k: series[k] for k in keys}
    if not series:
        raise KeyError(f"{path} has no numeric values to plot")
    n = len(series)
    cols = min(3, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, (k, (xs, ys)) in zip(axes.flat, series.items()):
        window = max(1, len(ys) // 50)
        if window > 1:
            ax.plot(xs, ys, color="tab:blue", alpha=0.25, linewidth=0.8)
            ax.plot(xs, smooth(ys, window), color="tab:blue", linewidth=1.4)
        else:
            ax.plot(
                xs,
                ys,
                color="tab:blue",
                linewidth=1.4,
                marker="o" if len(ys) < 20 else None,
                markersize=3,
            )
        ax.set_title(k, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(os.path.basename(os.path.normpath(os.path.dirname(path))), fontsize=11)
    fig.tight_layout()
    out = out or os.path.join(os.path.dirname(path), "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
