"""Quantize CelebA (or any folder of images) to a K-colour palette, for BGAN's discrete mode.

    python tools/quantize_celeba.py --num-colors 16 --size 64 \\
        ~/data/celeba/img_align_celeba ~/data/celeba16
    # DCGAN's tighter face crop
    python tools/quantize_celeba.py --num-colors 16 --size 64 --crop 108 SRC DST
    python bgan.py --dataset folder --data-path ~/data/celeba16 --image-size 64

Every image under SRC (sub-folders included) is centre-cropped to a square (the shorter
side, or ``--crop`` pixels), resized to ``--size`` (Lanczos) and written under DST at the
same relative path as a palette-mode PNG of palette indices. The palette is learned first
with MiniBatchKMeans on ``--fit-pixels`` pixels drawn from ``--fit-images`` random images
(common/quantize.py) and written to DST/palette.json, which bgan.py's loader reads.

Resumable: an image whose PNG already exists in DST is skipped, and an existing
palette.json is reused (so a resumed run quantizes with the same colours); each PNG is
written to a temporary name and renamed, so a killed run leaves no half-written image.
palette.json records ``--size`` and ``--crop``: resuming with others is refused, as the
folder would mix two kinds of image.
BGAN's discrete CelebA (Hjelm et al. 2017) used Pillow's quantizer and 16 colours;
K-Means on a data subset is the choice of the PyTorch reimplementation (shared/reference).
"""

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from common import UserError  # noqa: E402
from common.data import IMAGE_EXTENSIONS  # noqa: E402
from common.quantize import (  # noqa: E402
    PALETTE_FILE,
    has_palette,
    learn_palette,
    load_palette,
    palette_settings,
    quantize,
    sample_pixels,
    save_palette,
    save_png,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description="Quantize a folder of images (CelebA) to a K-Means palette.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("src", help="folder of images (searched recursively)")
    p.add_argument(
        "dst", help="output folder: palette-mode PNGs at the same relative paths, and palette.json"
    )
    p.add_argument(
        "--num-colors",
        type=int,
        default=16,
        help="palette size K, at most 256 (the BGAN paper's CelebA: 16)",
    )
    p.add_argument("--size", type=int, default=64, help="output width and height")
    p.add_argument(
        "--crop",
        type=int,
        default=0,
        help="centre crop of this many pixels before resizing (0: the shorter side; 108 for "
        "DCGAN's CelebA face crop)",
    )
    p.add_argument(
        "--fit-images",
        type=int,
        default=2000,
        help="random images whose pixels the palette is learned from",
    )
    p.add_argument(
        "--fit-pixels",
        type=int,
        default=200_000,
        help="random pixels (from those images) that K-Means sees",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the image and pixel subsets and of K-Means"
    )
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="processes quantizing images",
    )
    return p.parse_args(argv)


def list_images(src):
    files = []
    for dirpath, dirnames, filenames in os.walk(src):
        dirnames.sort()
        files += [
            os.path.relpath(os.path.join(dirpath, f), src)
            for f in sorted(filenames)
            if f.lower().endswith(IMAGE_EXTENSIONS)
        ]
    return files


def load_rgb(path, size, crop=0):
    """An image file as (size, size, 3) uint8:
    transparency on white, centre square crop, Lanczos resize."""
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("RGBA", "LA", "P"):
            img = img.convert("RGBA")
            img = Image.alpha_composite(Image.new("RGBA", img.size, (255, 255, 255, 255)), img)
        img = img.convert("RGB")
    w, h = img.size
    c = min(crop, w, h) if crop else min(w, h)
    left, top = (w - c) // 2, (h - c) // 2
    img = img.crop((left, top, left + c, top + c)).resize((size, size), Image.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def out_path(dst, rel):
    return os.path.join(dst, os.path.splitext(rel)[0] + ".png")


_job = {}


def _init(src, dst, size, crop, palette):
    _job.update(src=src, dst=dst, size=size, crop=crop, palette=palette)


def _work(rel):
    """Quantize one image; returns (rel, None) or (rel, error text)."""
    try:
        rgb = load_rgb(os.path.join(_job["src"], rel), _job["size"], _job["crop"])
        save_png(out_path(_job["dst"], rel), quantize(rgb, _job["palette"]), _job["palette"])
        return rel, None
    except Exception as e:  # noqa: BLE001 - an unreadable image is reported and skipped
        return rel, f"{type(e).__name__}: {e}"


def fit_palette(args, files):
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(files), size=min(args.fit_images, len(files)), replace=False)
    images = []
    for i in sorted(pick):
        try:
            images.append(load_rgb(os.path.join(args.src, files[i]), args.size, args.crop))
        except Exception as e:  # noqa: BLE001
            print(
                f"warning: skipping unreadable image {files[i]!r} ({type(e).__name__})",
                file=sys.stderr,
            )
    if not images:
        raise UserError(
            f"none of the images picked under {args.src!r} can be read; are they images?"
        )
    return learn_palette(
        sample_pixels(images, args.fit_pixels, args.seed), args.num_colors, args.seed
    )


def check_resume(args, files):
    """Refuse to resume into DST with another --size or --crop than its images were made with
    (an older palette.json without them: the size of one existing image is checked)."""
    from PIL import Image

    saved = palette_settings(args.dst)
    if "size" not in saved:
        done = next(
            (out_path(args.dst, f) for f in files if os.path.exists(out_path(args.dst, f))), None
        )
        if done is None:
            return
        with Image.open(done) as img:
            saved = {"size": img.size[0]}
    given = {k: getattr(args, k) for k in saved if k in ("size", "crop")}
    if any(saved[k] != v for k, v in given.items()):
        made = " ".join(f"--{k} {saved[k]}" for k in given)
        now = " ".join(f"--{k} {v}" for k, v in given.items())
        raise UserError(
            f"{args.dst!r} holds images made with {made}, not {now}; resume with "
            f"{made} or write to another DST"
        )


def run(args):
    from tqdm import tqdm

    if not os.path.isdir(args.src):
        raise UserError(f"source folder {args.src!r} does not exist")
    if (
        args.size < 1
        or args.crop < 0
        or args.fit_images < 1
        or args.fit_pixels < 1
        or args.workers < 1
    ):
        raise UserError(
            "--size, --fit-images, --fit-pixels and --workers must be at least 1, "
            "--crop not negative"
        )
    if not 1 <= args.num_colors <= 256:
        raise UserError(
            "--num-colors must be in [1, 256] (a palette-mode PNG holds at most 256 colours), "
            f"not {args.num_colors}"
        )
    if os.path.abspath(args.src) == os.path.abspath(args.dst):
        raise UserError("DST must differ from SRC")
    files = list_images(args.src)
    if not files:
        raise UserError(
            f"no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) found under {args.src!r}"
        )
    if has_palette(args.dst):
        palette = load_palette(args.dst)
        if len(palette) > args.num_colors:
            raise UserError(
                f"{os.path.join(args.dst, PALETTE_FILE)} holds {len(palette)} colours, "
                f"more than --num-colors {args.num_colors}; use another DST"
            )
        check_resume(args, files)
        print(f"resuming: reusing the {len(palette)}-colour palette in {args.dst}", flush=True)
    else:
        palette = fit_palette(args, files)
        save_palette(args.dst, palette, size=args.size, crop=args.crop)
        print(
            f"learned a {len(palette)}-colour palette from {min(args.fit_images, len(files))} "
            f"images; wrote {os.path.join(args.dst, PALETTE_FILE)}",
            flush=True,
        )
    todo = [f for f in files if not os.path.exists(out_path(args.dst, f))]
    done, failed = len(files) - len(todo), []
    bar = tqdm(total=len(files), initial=done, desc="quantize", unit="img", dynamic_ncols=True)
    if args.workers > 1 and len(todo) > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(
            args.workers, _init, (args.src, args.dst, args.size, args.crop, palette)
        ) as pool:
            for rel, err in pool.imap_unordered(_work, todo, chunksize=16):
                bar.update(1)
                if err:
                    failed.append((rel, err))
    else:
        _init(args.src, args.dst, args.size, args.crop, palette)
        for rel in todo:
            rel, err = _work(rel)
            bar.update(1)
            if err:
                failed.append((rel, err))
    bar.close()
    for rel, err in failed[:10]:
        print(f"warning: skipped {rel!r} ({err})", file=sys.stderr)
    print(
        f"done: {len(todo) - len(failed)} images quantized, {done} already there, "
        f"{len(failed)} skipped; {args.dst}",
        flush=True,
    )
    return {
        "palette": palette,
        "quantized": len(todo) - len(failed),
        "skipped_done": done,
        "failed": len(failed),
    }


def main(argv=None):
    args = parse_args(argv)
    try:
        return run(args)
    except UserError as e:
        print(f"quantize_celeba: error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
