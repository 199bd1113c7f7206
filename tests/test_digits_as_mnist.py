"""tools/digits_as_mnist.py: the embedded digits as MNIST files that --dataset mnist reads."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from digits_as_mnist import digits_as_mnist  # noqa: E402

from common.data import load_dataset  # noqa: E402


def test_digits_written_as_mnist_load_with_their_labels(tmp_path):
    digits_as_mnist(str(tmp_path), count=2000)
    d = load_dataset("mnist", str(tmp_path), image_size=32)
    assert d.images.shape == (2000, 1, 32, 32) and d.num_classes == 10
    assert d.labels[:10].tolist() == list(range(10))  # sklearn's digits start 0, 1, ..., 9
    assert d.labels[1797] == d.labels[0]  # repeated past the 1,797 digits
    assert d.images.float().std() > 0
