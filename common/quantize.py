"""Colour palettes learned with K-Means, and palette-mode images, for quantized image data.

A palette is a uint8 array (K, 3) of RGB colours with K <= 256 (a palette-mode PNG holds
at most 256). ``learn_palette`` fits one with scikit-learn's MiniBatchKMeans on a random
subset of pixels (``sample_pixels``); ``quantize`` maps every pixel of an image to the
index of its nearest palette colour (Euclidean distance in RGB); ``save_png``/``load_png``
store those indices as a palette-mode ("P") PNG with the palette inside. A quantized
dataset folder (written by tools/quantize_celeba.py) keeps its palette in
``palette.json`` beside the images; ``load_palette``/``save_palette`` read and write it.

BGAN's discrete CelebA (Hjelm et al. 2017) was quantized with Pillow; K-Means on a
subset of the data, as the PyTorch reimplementation in shared/reference does, gives
colours that follow the data (skin tones rather than a uniform colour cube).
"""

import json
import os

import numpy as np

from common import UserError

PALETTE_FILE = "palette.json"
MAX_COLORS = 256


def sort_palette(palette):
    """Palette rows ordered by luminance (then R, G, B): dark to light, deterministic."""
    p = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    lum = p.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return p[np.lexsort((p[:, 2], p[:, 1], p[:, 0], lum))]


def sample_pixels(images, n, seed=0):
    """``n`` RGB pixels (n, 3) drawn uniformly, with replacement, from a list of
    (H, W, 3) uint8 arrays."""
    rng = np.random.default_rng(seed)
    flat = [np.asarray(im, dtype=np.uint8).reshape(-1, 3) for im in images]
    if not flat:
        raise UserError("no images to learn a palette from")
    which = rng.integers(len(flat), size=n)
    return (
        np.stack([flat[i][rng.integers(len(flat[i]))] for i in which])
        if n
        else np.zeros((0, 3), np.uint8)
    )


def learn_palette(pixels, num_colors, seed=0):
    """A palette of at most ``num_colors`` colours for RGB ``pixels`` (N, 3), by MiniBatchKMeans.

    The cluster centres are rounded to uint8 and sorted (``sort_palette``). When the pixels
    hold no more distinct colours than asked for, those colours are the palette (K-Means
    would return duplicates); centres that round to the same colour are merged, so the
    palette can be shorter than ``num_colors`` but never holds a colour twice.
    """
    if not 1 <= num_colors <= MAX_COLORS:
        raise UserError(
            f"--num-colors must be in [1, {MAX_COLORS}] (a palette-mode PNG holds at most "
            f"{MAX_COLORS} colours), not {num_colors}"
        )
    pixels = np.asarray(pixels, dtype=np.uint8).reshape(-1, 3)
    if len(pixels) == 0:
        raise UserError("no pixels to learn a palette from")
    unique = np.unique(pixels, axis=0)
    if len(unique) <= num_colors:
        return sort_palette(unique)
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(
        n_clusters=num_colors, random_state=seed, n_init=3, batch_size=max(2048, 8 * num_colors)
    )
    km.fit(pixels.astype(np.float32))
    centres = np.clip(np.rint(km.cluster_centers_), 0, 255).astype(np.uint8)
    return sort_palette(np.unique(centres, axis=0))


def quantize(image, palette, chunk=65536):
    """Index (H, W) uint8 of the nearest palette colour for each pixel of an
    (H, W, 3) uint8 image."""
    img = np.asarray(image, dtype=np.uint8)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"quantize expects an (H, W, 3) RGB array, not shape {img.shape}")
    pal = np.asarray(palette, dtype=np.int32).reshape(-1, 3)
    flat = img.reshape(-1, 3).astype(np.int32)
    out = np.empty(len(flat), dtype=np.uint8)
    for s in range(0, len(flat), chunk):  # (chunk, K) squared distances, exact in int32
        d = ((flat[s : s + chunk, None, :] - pal[None]) ** 2).sum(-1)
        out[s : s + chunk] = d.argmin(1)
    return out.reshape(img.shape[:2])


def dequantize(indices, palette):
    """RGB (H, W, 3) uint8 image from palette indices."""
    return np.asarray(palette, dtype=np.uint8).reshape(-1, 3)[np.asarray(indices)]


def save_png(path, indices, palette):
    """Write indices (H, W) as a palette-mode PNG carrying ``palette``;
    atomic (temp file + rename)."""
    from PIL import Image

    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    idx = np.asarray(indices, dtype=np.uint8)
    if len(pal) > MAX_COLORS or (idx.size and int(idx.max()) >= len(pal)):
        raise ValueError(
            f"indices up to {int(idx.max())} do not fit a palette of {len(pal)} colours"
        )
    img = Image.fromarray(idx)  # mode "L"; putpalette turns it into "P"
    img.putpalette(pal.reshape(-1).tolist(), rawmode="RGB")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    img.save(tmp, format="PNG", optimize=False)
    os.replace(tmp, path)
    return path


def load_png(path):
    """(indices (H, W) uint8, palette (K, 3) uint8) of a palette-mode PNG."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode != "P":
            raise ValueError(f"{path!r} is a {img.mode} image, not a palette-mode one")
        pal = np.asarray(img.getpalette("RGB"), dtype=np.uint8).reshape(-1, 3)
        idx = np.asarray(img, dtype=np.uint8).copy()
    return idx, pal


def save_palette(folder, palette, **settings):
    """Write ``folder/palette.json`` (atomically): {"num_colors": K, "colors": [[r, g, b], ...]},
    plus ``settings`` (tools/quantize_celeba.py's ``size`` and ``crop``, which a resumed run
    must match so that the folder never mixes image sizes)."""
    pal = np.asarray(palette, dtype=np.uint8).reshape(-1, 3)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, PALETTE_FILE)
    with open(path + ".tmp", "w") as f:
        json.dump({"num_colors": len(pal), "colors": pal.tolist(), **settings}, f)
    os.replace(path + ".tmp", path)
    return path


def palette_settings(folder):
    """The settings ``save_palette`` stored beside the colours ({} in an older palette.json).
    Call after ``load_palette``, which reports a missing or broken file."""
    with open(os.path.join(folder, PALETTE_FILE)) as f:
        saved = json.load(f)
    return {k: v for k, v in saved.items() if k not in ("num_colors", "colors")}


def has_palette(folder):
    return bool(folder) and os.path.isfile(os.path.join(folder, PALETTE_FILE))


def load_palette(folder):
    """The (K, 3) uint8 palette of a quantized folder; one clear error when it is
    missing or broken."""
    path = os.path.join(folder, PALETTE_FILE)
    if not os.path.isfile(path):
        raise UserError(
            f"no {PALETTE_FILE} in {folder!r}: make the folder with tools/quantize_celeba.py"
        )
    try:
        with open(path) as f:
            colors = json.load(f)["colors"]
        pal = np.asarray(colors, dtype=np.int64).reshape(-1, 3)
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(
            f"{path!r} is not a palette file ({type(e).__name__}); "
            "rewrite it with tools/quantize_celeba.py"
        ) from None
    if not 1 <= len(pal) <= MAX_COLORS or pal.min() < 0 or pal.max() > 255:
        raise UserError(f"{path!r} must hold 1 to {MAX_COLORS} RGB colours in [0, 255]")
    return pal.astype(np.uint8)
