"""Write the embedded digits as MNIST files, to try a script one step off the test bench.

The 1,797 8x8 digits of scikit-learn, upscaled to 28x28 (bilinear) and repeated to MNIST's
60,000 training images, in the IDX layout that ``--dataset mnist`` reads
(``DIR/MNIST/raw/train-{images-idx3,labels-idx1}-ubyte``). A script's ``--config auto`` then
sees MNIST (60,000 images at 28x28, trained at 32x32), as a user with the real files would.

    python tools/digits_as_mnist.py /tmp/mnist
    python sagan.py --dataset mnist --data-path /tmp/mnist
"""

import argparse
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F


def write_idx(path, array):
    """An IDX file of unsigned bytes (the format of yann.lecun.com's MNIST files)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim))
        f.write(struct.pack(">" + "I" * array.ndim, *array.shape))
        f.write(array.tobytes())


def digits_as_mnist(out, count=60000):
    """Write ``count`` images (the digits repeated in order) and their labels under ``out``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.from_numpy(d.images).float()[:, None] / 16.0  # 0..16 -> 0..1
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False)
    images = (x[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    reps = -(-count // len(images))
    images, labels = np.tile(images, (reps, 1, 1))[:count], np.tile(d.target, reps)[:count]
    raw = os.path.join(out, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    write_idx(os.path.join(raw, "train-images-idx3-ubyte"), images)
    write_idx(os.path.join(raw, "train-labels-idx1-ubyte"), labels)
    return raw


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="folder to write (use it as --data-path)")
    p.add_argument("--count", type=int, default=60000, help="images to write (MNIST's 60,000)")
    args = p.parse_args(argv)
    if args.count < 1:
        p.error("--count must be at least 1")
    print(f"wrote {args.count} images to {digits_as_mnist(args.out, args.count)}")


if __name__ == "__main__":
    main()
