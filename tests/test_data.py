"""common/data.py: the named datasets read from their files (fixtures written here: IDX,
CIFAR pickles, image folders, CelebA's layout), the errors that say how to fix a missing or
unreadable dataset, the resumable batch stream split across ranks, and augmentation."""

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from common import UserError
from common.data import Batches, FolderData, MemoryData, augment, load_dataset, read_idx


def write_idx(path, array, gz=False):
    array = np.asarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(
        ">" + "I" * array.ndim, *array.shape
    )
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(header + array.tobytes())


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_files(tmp_path, gz):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (30, 28, 28)), np.arange(30) % 10
    ext = ".gz" if gz else ""
    write_idx(str(raw / f"train-images-idx3-ubyte{ext}"), images, gz)
    write_idx(str(raw / f"train-labels-idx1-ubyte{ext}"), labels, gz)
    assert torch.equal(
        read_idx(str(raw / f"train-images-idx3-ubyte{ext}")),
        torch.from_numpy(images.astype(np.uint8)),
    )
    d = load_dataset("mnist", str(tmp_path), image_size=32)
    assert isinstance(d, MemoryData) and d.images.shape == (30, 1, 32, 32) and d.num_classes == 10
    d = load_dataset("mnist", str(tmp_path), image_size=28, channels=3)
    assert (
        torch.equal(d.images[:, 0], torch.from_numpy(images.astype(np.uint8))) and d.channels == 3
    )


def test_fashion_mnist_flat_folder(tmp_path):
    write_idx(str(tmp_path / "train-images-idx3-ubyte"), np.zeros((12, 28, 28)))
    write_idx(str(tmp_path / "train-labels-idx1-ubyte"), np.arange(12) % 3)
    d = load_dataset("fashion-mnist", str(tmp_path), image_size=16)
    assert d.images.shape == (12, 1, 16, 16) and d.num_classes == 3


def test_cifar10_from_pickles(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        with open(d / f"data_batch_{i}", "wb") as f:
            pickle.dump(
                {"data": rng.integers(0, 256, (4, 3072)).astype(np.uint8), "labels": [i % 10] * 4},
                f,
            )
    data = load_dataset("cifar10", str(tmp_path), image_size=32)
    assert data.images.shape == (20, 3, 32, 32) and data.channels == 3 and data.num_classes == 6


def test_missing_dataset_says_how_to_fix(tmp_path):
    with pytest.raises(UserError, match="--download"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(UserError, match="--download"):
        load_dataset("mnist", str(tmp_path))


def make_folder(root, corrupt=True):
    """Class sub-folders with a grayscale/RGBA/RGB mix of sizes and one corrupt file."""
    for c, mode in (("a", "L"), ("b", "RGBA"), ("c", "RGB")):
        os.makedirs(root / c)
        for i in range(3):
            Image.new(mode, (20 + i, 30), (i * 60,) * len(mode)).save(root / c / f"{i}.png")
    if corrupt:
        (root / "b" / "zz_corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")


def test_image_folder_with_classes_corrupt_file_and_mixed_modes(tmp_path, capsys):
    make_folder(tmp_path)
    d = FolderData(str(tmp_path), image_size=16, channels=3)
    assert d.classes == ["a", "b", "c"] and len(d) == 10
    shapes = {d[i][0].shape for i in range(len(d))}
    assert shapes == {(3, 16, 16)}
    assert "unreadable image" in capsys.readouterr().err
    x, y = d[6]  # the corrupt file is replaced by the next readable one
    assert x.dtype == torch.uint8 and 0 <= int(y) < 3
    gray = FolderData(str(tmp_path), image_size=8, channels=1)
    assert gray[0][0].shape == (1, 8, 8)


def test_flat_folder_is_unlabelled_and_rgba_on_white(tmp_path):
    Image.new("RGBA", (10, 10), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("RGB", (12, 10), (10, 20, 30)).save(tmp_path / "x.jpg")
    d = load_dataset("folder", str(tmp_path), image_size=8)
    assert d.num_classes == 0 and len(d) == 2
    assert (d[0][0] == 255).all()  # transparent pixels composite onto white


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        FolderData(str(tmp_path / "nope"), 16)
    with pytest.raises(UserError, match="no images"):
        FolderData(str(tmp_path), 16)


def test_batches_are_resumable_and_split_across_ranks():
    data = MemoryData(
        torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 2, 2).contiguous(),
        torch.arange(50) % 5,
        5,
    )
    a = Batches(data, 8, "cpu", seed=3)
    it = iter(a)
    seen = [next(it)[1] for _ in range(14)]  # crosses an epoch boundary (6 batches an epoch)
    b = Batches(data, 8, "cpu", seed=3)
    it_b = iter(b)
    for _ in range(9):
        next(it_b)
    c = Batches(data, 8, "cpu", seed=3)
    c.load_state_dict(b.state_dict())
    rest = [y for _, (_, y) in zip(range(5), iter(c))]
    assert all(torch.equal(u, v) for u, v in zip(seen[9:], rest))
    r0, r1 = (Batches(data, 5, "cpu", seed=1, rank=r, world=2) for r in (0, 1))
    x0, x1 = next(iter(r0))[0], next(iter(r1))[0]
    assert set(x0[:, 0, 0, 0].tolist()).isdisjoint(x1[:, 0, 0, 0].tolist())
    assert x0.min() >= -1 and x0.max() <= 1


def test_augment_flip_and_jitter():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8) * 2 - 1
    y = augment(x, g, flip=True)
    flipped = [(torch.equal(a, b.flip(-1)) and not torch.equal(a, b)) for a, b in zip(y, x)]
    assert 10 < sum(flipped) < 54
    z = augment(x, torch.Generator().manual_seed(0), color_jitter=0.3)
    assert z.shape == x.shape and z.min() >= -1 and z.max() <= 1 and not torch.allclose(z, x)
    assert torch.allclose(
        augment(x, g, color_jitter=1e-9), x, atol=1e-5
    )  # zero strength is identity


def test_celeba_layout_with_face_crop(tmp_path):
    d = tmp_path / "celeba" / "img_align_celeba"
    d.mkdir(parents=True)
    for i in range(3):
        arr = np.zeros((218, 178, 3), dtype=np.uint8)
        arr[55:163, 35:143] = 200  # the 108x108 centre: all that survives the crop
        Image.fromarray(arr).save(d / f"{i:06d}.jpg")
    data = load_dataset("celeba", str(tmp_path), image_size=16)
    x, _ = data[0]
    assert data.num_classes == 0 and x.shape == (3, 16, 16) and x.float().mean() > 190
