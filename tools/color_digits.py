"""Write scikit-learn's digits as a folder of colour PNGs: a small colour dataset that
needs no download, for trying the quantized-data path (tools/quantize_celeba.py, then
bgan.py on the quantized folder) where CelebA is not at hand.

Each of the 1797 digits (8x8, upsampled bilinearly) is drawn in one of four stroke
colours on a dark or a light background, picked at random per image (--seed), so a
generator has to learn shapes and a colour that is the same over one digit. With --grey
they are written as they are (white strokes on black), so that a run on the quantized grey
digits can be scored by tools/digits_metric.py like a run on the digits themselves.

    python tools/color_digits.py runs/color_digits/img
    python tools/quantize_celeba.py --num-colors 8 --size 32 \\
        runs/color_digits/img runs/color_digits/q8
    python bgan.py --dataset folder --data-path runs/color_digits/q8 --steps 2000
"""

import argparse
import os

import numpy as np
from PIL import Image

STROKES = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 230], [240, 200, 30]], float)
BACKGROUNDS = np.array([[20, 20, 30], [235, 235, 225]], float)


def color_digits(size=32, seed=0, grey=False):
    """(1797, size, size, 3) uint8 images and their digit labels; ``grey``: white on black."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    out = np.empty((len(digits.images), size, size, 3), np.uint8)
    for i, im in enumerate(digits.images):
        a = (
            np.asarray(
                Image.fromarray((im / 16 * 255).astype(np.uint8)).resize(
                    (size, size), Image.BILINEAR
                ),
                float,
            )[..., None]
            / 255
        )
        stroke, background = (
            STROKES[rng.integers(len(STROKES))],
            BACKGROUNDS[rng.integers(len(BACKGROUNDS))],
        )
        if grey:
            stroke, background = np.full(3, 255.0), np.zeros(3)
        out[i] = (background * (1 - a) + stroke * a).clip(0, 255).astype(np.uint8)
    return out, digits.target


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("dst", help="output folder (created)")
    p.add_argument("--size", type=int, default=32, help="width and height of the images")
    p.add_argument("--seed", type=int, default=0, help="seed of the colour choices")
    p.add_argument(
        "--grey", action="store_true", help="white strokes on black: the digits as they are"
    )
    args = p.parse_args(argv)
    if args.size < 8:
        p.error("--size must be at least 8")
    images, _ = color_digits(args.size, args.seed, args.grey)
    os.makedirs(args.dst, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(os.path.join(args.dst, f"{i:04d}.png"))
    print(f"wrote {len(images)} images to {args.dst}")


if __name__ == "__main__":
    main()
