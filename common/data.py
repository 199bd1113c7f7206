"""Datasets and a resumable batch stream shared by every script.

``load_dataset`` returns one of two kinds of data:

* ``MemoryData``: the whole dataset as one uint8 tensor (N, C, H, W), already at the
  training resolution. The embedded digits, MNIST, Fashion-MNIST and CIFAR-10 load this
  way; a batch is one index into that tensor, with no per-step PIL work.
* ``FolderData``: image files decoded by DataLoader workers (CelebA, any image folder).

``Batches`` turns either into an endless, resumable stream of float batches in [-1, 1]
on the training device: each epoch is a seeded permutation split across ranks like
``DistributedSampler``, its position is part of the checkpoint, and the flip and
colour-jitter augmentations are drawn from a generator seeded by (seed, rank, epoch,
batch), so a resumed run sees exactly the batches the uninterrupted run would have.
"""

import gzip
import os
import pickle
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F

from common import UserError
from common.kinds import Images

DATASETS = ("digits", "mnist", "fashion-mnist", "cifar10", "celeba", "folder")
IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".webp",
    ".gif",
    ".tif",
    ".tiff",
    ".ppm",
    ".pgm",
)
CELEBA_CROP = 108  # centre crop of the 178x218 aligned faces, as in DCGAN's CelebA experiments


class ImageData:
    """What every image dataset brings to a run (common/kinds.py): its kind of samples, a line
    for the run's banner, and its batches."""

    kind = Images()

    def describe(self):
        s = self.image_size
        return f"{self.name} {s}x{s}x{self.channels}, {len(self)} images"

    def stream(self, batch_size, device, rank, world, args):
        """This rank's endless, resumable ``Batches`` (the shared flags: seed, workers, flips,
        colour jitter)."""
        return Batches(
            self,
            batch_size,
            device,
            args.seed,
            rank,
            world,
            args.num_workers,
            args.flip,
            args.color_jitter,
        )


class MemoryData(ImageData):
    """A dataset held as one uint8 tensor (N, C, H, W) plus optional int64 labels."""

    def __init__(self, images, labels=None, num_classes=0, name=""):
        self.images, self.labels, self.num_classes, self.name = images, labels, num_classes, name
        self.channels, self.image_size = images.shape[1], images.shape[-1]

    def __len__(self):
        return self.images.shape[0]


class FolderData(ImageData, torch.utils.data.Dataset):
    """Image files under ``root``, decoded on demand to uint8 (C, size, size).

    Images directly in ``root`` (a flat folder such as a cat-faces download) are
    unlabelled; images in first-level sub-folders take the sub-folder as their class.
    An unreadable file is reported once and replaced by the next readable one, so one
    corrupt JPEG does not end a long run.
    """

    def __init__(self, root, image_size, channels=3, crop=None, name="folder"):
        if not os.path.isdir(root):
            raise UserError(
                f"data folder {root!r} does not exist; point --data-path at a folder of images"
            )
        files, labels, classes = [], [], []
        top = sorted(e for e in os.listdir(root) if not e.startswith("."))
        flat = [
            e
            for e in top
            if e.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(root, e))
        ]
        subdirs = [e for e in top if os.path.isdir(os.path.join(root, e))]
        if flat:  # images at the top level: one unlabelled set, sub-folders included
            for dirpath, dirnames, filenames in os.walk(root):
                dirnames.sort()
                files += [
                    os.path.join(dirpath, f)
                    for f in sorted(filenames)
                    if f.lower().endswith(IMAGE_EXTENSIONS)
                ]
        else:
            for d in subdirs:
                found = []
                for dirpath, dirnames, filenames in os.walk(os.path.join(root, d)):
                    dirnames.sort()
                    found += [
                        os.path.join(dirpath, f)
                        for f in sorted(filenames)
                        if f.lower().endswith(IMAGE_EXTENSIONS)
                    ]
                if found:
                    labels += [len(classes)] * len(found)
                    classes.append(d)
                    files += found
        if not files:
            raise UserError(
                f"no images ({', '.join(IMAGE_EXTENSIONS[:4])}, ...) found under {root!r}"
            )
        self.root, self.files, self.image_size, self.channels, self.crop, self.name = (
            root,
            files,
            image_size,
            channels,
            crop,
            name,
        )
        self.classes = classes if len(classes) > 1 else []
        self.num_classes = len(self.classes)
        self.labels = torch.tensor(labels) if self.num_classes else None
        self._warned = set()
        if not any(self._read(i) is not None for i in range(min(len(files), 16))):
            raise UserError(
                f"none of the first images under {root!r} can be read (e.g. {files[0]!r}); "
                "are they images?"
            )

    def __len__(self):
        return len(self.files)

    def _read(self, i):
        from PIL import Image

        try:
            with Image.open(self.files[i]) as img:
                img.load()
                if img.mode in ("RGBA", "LA", "P"):  # composite transparency on white
                    img = img.convert("RGBA")
                    bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
                    img = Image.alpha_composite(bg, img)
                img = img.convert("L" if self.channels == 1 else "RGB")
        except Exception as e:  # noqa: BLE001 - any decoding failure means "skip this file"
            if i not in self._warned:
                self._warned.add(i)
                print(
                    f"warning: skipping unreadable image {self.files[i]!r} ({type(e).__name__})",
                    file=sys.stderr,
                )
            return None
        w, h = img.size
        if self.crop and min(w, h) > self.crop:
            left, top = (w - self.crop) // 2, (h - self.crop) // 2
            img = img.crop((left, top, left + self.crop, top + self.crop))
            w = h = self.crop
        s = self.image_size / min(w, h)  # shorter side to image_size, then centre crop
        img = img.resize(
            (max(self.image_size, round(w * s)), max(self.image_size, round(h * s))), Image.BICUBIC
        )
        w, h = img.size
        left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
        img = img.crop((left, top, left + self.image_size, top + self.image_size))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
        return x[None] if x.ndim == 2 else x.permute(2, 0, 1)

    def __getitem__(self, i):
        for k in range(len(self.files)):
            x = self._read((i + k) % len(self.files))
            if x is not None:
                label = self.labels[(i + k) % len(self.files)] if self.labels is not None else -1
                return x, label
        raise UserError(f"no readable image under {self.root!r}")


# ----------------------------------------------------------------------------- readers
def read_idx(path):
    """Read an IDX file (MNIST format), plain or gzipped, into a uint8 tensor."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype != 0x08:
        raise UserError(f"{path!r} is not an IDX file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data[4 + 4 * ndim :]), dtype=torch.uint8).reshape(shape)


def _find(candidates, what, download_hint):
    for c in candidates:
        if os.path.exists(c):
            return c
    raise UserError(f"{what} not found (looked for {candidates[0]!r}); {download_hint}")


def load_mnist(root, fashion=False):
    """MNIST or Fashion-MNIST training set from torchvision's layout or a folder of IDX files."""
    sub = "FashionMNIST" if fashion else "MNIST"
    hint = (
        "pass --download, or put train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]"
        " there"
    )
    dirs = [os.path.join(root, sub, "raw"), os.path.join(root, "raw"), root]
    images = _find(
        [os.path.join(d, "train-images-idx3-ubyte" + e) for d in dirs for e in ("", ".gz")],
        f"{sub} images under {root!r}",
        hint,
    )
    labels = _find(
        [os.path.join(os.path.dirname(images), "train-labels-idx1-ubyte" + e) for e in ("", ".gz")],
        f"{sub} labels beside {images!r}",
        hint,
    )
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise UserError(f"{images!r} and {labels!r} do not hold matching images and labels")
    return x[:, None], y.long()


def load_cifar10(root):
    """CIFAR-10 training set from the python pickles (``cifar-10-batches-py``)."""
    hint = "pass --download, or extract cifar-10-python.tar.gz there"
    d = _find([os.path.join(root, "cifar-10-batches-py"), root], f"CIFAR-10 under {root!r}", hint)
    xs, ys = [], []
    for i in range(1, 6):
        path = _find(
            [os.path.join(d, f"data_batch_{i}")], f"CIFAR-10 batch data_batch_{i} in {d!r}", hint
        )
        with open(path, "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys += list(batch["labels"])
    return torch.from_numpy(np.concatenate(xs)), torch.tensor(ys)


def load_digits():
    """scikit-learn's 8x8 digits (1797 images, 10 classes), scaled to uint8 [0, 255]."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = torch.from_numpy(d.images).float().mul(255.0 / 16.0).round().to(torch.uint8)
    return x[:, None], torch.from_numpy(d.target).long()


def resize_uint8(x, size, chunk=4096):
    """Resize a uint8 (N, C, H, W) tensor to (size, size): bilinear, antialiased when shrinking."""
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    out = []
    for c in x.split(chunk):
        y = F.interpolate(
            c.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        out.append(y.round().clamp(0, 255).to(torch.uint8))
    return torch.cat(out)


def convert_channels(x, channels):
    """Convert a uint8 (N, C, H, W) tensor between grayscale and RGB."""
    if x.shape[1] == channels:
        return x
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        return (x.float() * w).sum(1, keepdim=True).round().to(torch.uint8)
    raise UserError(
        f"cannot convert {x.shape[1]}-channel images to {channels} channels (use 1 or 3)"
    )


def download_dataset(name, root):
    """Fetch a torchvision dataset into ``root`` (its own layout, checksums verified)."""
    import torchvision.datasets as tvd

    if name not in ("mnist", "fashion-mnist", "cifar10", "celeba"):
        raise UserError(f"--download does not apply to --dataset {name}")
    if not root:
        raise UserError(f"--download needs --data-path (the folder to download {name} into)")

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10}.get(name)
    try:
        if cls is not None:
            cls(root, train=True, download=True)
        else:
            tvd.CelebA(root, split="all", download=True)
    except Exception as e:  # noqa: BLE001 - network or archive errors all mean "download by hand"
        reason = " ".join(str(e).split())[:160]  # one line, however the downloader words it
        raise UserError(
            f"downloading {name} into {root!r} failed ({type(e).__name__}: {reason}); "
            "download it by hand into that folder"
        ) from None


def default_channels(name):
    return 1 if name in ("digits", "mnist", "fashion-mnist") else 3


def load_dataset(name, data_path=None, image_size=32, channels=None):
    """Load a training set by name: returns ``MemoryData`` or ``FolderData``."""
    if name == "text":
        raise UserError(
            "--dataset text is a corpus: bgan.py and wgan_gp.py model text; this "
            "script models images"
        )
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    channels = channels or default_channels(name)
    if channels not in (1, 3):
        raise UserError(f"--channels must be 1 or 3, not {channels}")
    if name != "digits" and not data_path:
        raise UserError(
            f"--dataset {name} needs --data-path (the folder that holds or will hold the files)"
        )
    if name == "folder":
        return FolderData(data_path, image_size, channels, name=name)
    if name == "celeba":
        root = next(
            (
                c
                for c in (
                    os.path.join(data_path, "celeba", "img_align_celeba"),
                    os.path.join(data_path, "img_align_celeba"),
                )
                if os.path.isdir(c)
            ),
            data_path,
        )
        return FolderData(root, image_size, channels, crop=CELEBA_CROP, name=name)
    if name == "digits":
        x, y = load_digits()
    elif name == "cifar10":
        x, y = load_cifar10(data_path)
    else:
        x, y = load_mnist(data_path, fashion=name == "fashion-mnist")
    x = resize_uint8(convert_channels(x, channels), image_size)
    return MemoryData(x, y, num_classes=int(y.max()) + 1, name=name)


# ----------------------------------------------------------------------------- discrete data
# Discrete variants for BGAN (bgan.py): binarized images (one Bernoulli variable per pixel and
# channel) and quantized images (one palette index per pixel). Both travel through ``Batches``
# like any other data, as floats in [-1, 1]; these helpers turn a batch back into the discrete
# values. Batches maps a uint8 v to v / 127.5 - 1, which ``to_indices`` inverts exactly.
def binarize(x, threshold=0.5):
    """A float batch in [-1, 1] to {0, 1} floats: 1 where the intensity (x + 1) / 2 >=
    ``threshold``.

    With the default 0.5 a uint8 pixel v becomes 1 exactly when v >= 128: binarized MNIST by
    a fixed threshold."""
    return ((x + 1) * 0.5 >= threshold).to(x.dtype)


def to_indices(x):
    """A batch (N, 1, H, W) of quantized images as read by ``Batches`` to int64 palette
    indices (N, H, W)."""
    return (x[:, 0].float() + 1).mul(127.5).round().long()


class QuantizedFolderData(FolderData):
    """A folder of palette-mode PNGs written by tools/quantize_celeba.py, with ``palette.json``.

    Each item is the image's palette indices as uint8 (1, size, size), so ``Batches`` carries
    class indices per pixel (read them back with ``to_indices``). ``palette`` is the (K, 3)
    uint8 palette; an image at another size is rescaled with nearest-neighbour sampling,
    which keeps the indices; a file that is not a palette-mode image, or whose indices
    exceed the palette, is skipped like an unreadable one.
    """

    def __init__(self, root, image_size, name="quantized"):
        from common.quantize import load_palette

        if not os.path.isdir(root):
            raise UserError(
                f"data folder {root!r} does not exist; point --data-path at a folder written by "
                "tools/quantize_celeba.py"
            )
        self.palette = load_palette(root)
        super().__init__(root, image_size, channels=1, name=name)
        self.channels = 1

    def _read(self, i):
        from PIL import Image

        try:
            with Image.open(self.files[i]) as img:
                img.load()
                if img.mode != "P":
                    raise ValueError(f"a {img.mode} image, not a palette-mode one")
                w, h = img.size
                if (w, h) != (self.image_size, self.image_size):
                    s = self.image_size / min(w, h)
                    img = img.resize(
                        (max(self.image_size, round(w * s)), max(self.image_size, round(h * s))),
                        Image.NEAREST,
                    )
                    w, h = img.size
                    left, top = (w - self.image_size) // 2, (h - self.image_size) // 2
                    img = img.crop((left, top, left + self.image_size, top + self.image_size))
                x = np.asarray(img, dtype=np.uint8).copy()
            if x.size and int(x.max()) >= len(self.palette):
                raise ValueError(
                    f"palette index {int(x.max())} beyond the {len(self.palette)} colours of "
                    "palette.json"
                )
        except Exception as e:  # noqa: BLE001 - any decoding failure means "skip this file"
            if i not in self._warned:
                self._warned.add(i)
                print(
                    f"warning: skipping unreadable image {self.files[i]!r} "
                    f"({type(e).__name__}: {e})",
                    file=sys.stderr,
                )
            return None
        return torch.from_numpy(x)[None]


# ----------------------------------------------------------------------------- augmentation
def augment(x, generator, flip=False, color_jitter=0.0):
    """Random horizontal flip and colour jitter of a float batch in [-1, 1], per sample.

    Jitter strength s scales brightness, contrast and saturation by factors in
    [1 - s, 1 + s] and rotates hue by up to s/2 turns (a rotation about the grey axis
    in YIQ space), like torchvision's ColorJitter(s, s, s, s / 2) but batched.
    """
    n = x.shape[0]
    if flip:
        m = (torch.rand(n, generator=generator) < 0.5).to(x.device).view(n, 1, 1, 1)
        x = torch.where(m, x.flip(-1), x)
    if color_jitter > 0:

        def u():  # a random factor per image in [1 - strength, 1 + strength]
            r = 1 + color_jitter * (2 * torch.rand(n, generator=generator) - 1)
            return r.to(x.device).view(n, 1, 1, 1)

        b, c, s = u(), u(), u()
        hue = (color_jitter * (torch.rand(n, generator=generator) - 0.5) * 2 * np.pi).to(x.device)
        x = (x + 1) / 2 * b
        gray = (
            x.mean(1, keepdim=True)
            if x.shape[1] == 1
            else (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        )
        x = (x - gray.mean((2, 3), keepdim=True)) * c + gray.mean((2, 3), keepdim=True)
        if x.shape[1] == 3:
            gray = (x * x.new_tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
            x = (x - gray) * s + gray
            yiq = x.new_tensor(
                [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]]
            )
            cos, sin = hue.cos(), hue.sin()
            rot = torch.zeros(n, 3, 3, device=x.device, dtype=x.dtype)
            rot[:, 0, 0], rot[:, 1, 1], rot[:, 2, 2], rot[:, 1, 2], rot[:, 2, 1] = (
                1,
                cos,
                cos,
                -sin,
                sin,
            )
            m = torch.linalg.inv(yiq) @ rot @ yiq
            x = torch.einsum("nij,njhw->nihw", m, x)
        x = x.clamp(0, 1) * 2 - 1
    return x


# ----------------------------------------------------------------------------- batch stream
def ignore_stop_signals(worker_id):
    """A loader worker leaves Ctrl-C and SIGTERM to the training process, which stops at the
    end of its step and then shuts the workers down (a worker killed by the signal would fail
    the run at its next batch)."""
    import signal

    for name in ("SIGINT", "SIGTERM", "SIGUSR1"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class Batches:
    """Endless, resumable stream of (images in [-1, 1] on ``device``, labels or None).

    Epoch e uses the permutation of ``torch.Generator().manual_seed(seed + e)``; rank r
    takes every ``world``-th index of it (padded like ``DistributedSampler``), and the
    last incomplete batch is dropped. ``state_dict`` records (epoch, batch, batch size) so a
    resumed run continues with the next batch of the same permutation. ``set_batch_size``
    switches to another batch size from the next epoch on (ProGAN's per-resolution sizes).
    """

    def __init__(
        self,
        data,
        batch_size,
        device,
        seed=0,
        rank=0,
        world=1,
        num_workers=0,
        flip=False,
        color_jitter=0.0,
    ):
        self.data, self.device, self.seed = data, torch.device(device), seed
        self.rank, self.world, self.num_workers = rank, world, num_workers
        self.flip, self.color_jitter = flip, color_jitter
        self.epoch, self.batch = 0, 0
        self._resize(batch_size)
        self.images = self.labels = None
        # On CUDA, keep the tensor on the device (or pinned): no per-step sync.
        if isinstance(data, MemoryData):
            self.images, self.labels = data.images, data.labels
            if self.device.type == "cuda":
                on_device = data.images.numel() < 2**31
                self.images = data.images.to(self.device) if on_device else data.images.pin_memory()
                if data.labels is not None and on_device:
                    self.labels = data.labels.to(self.device)

    def _resize(self, batch_size):
        per_rank = (len(self.data) + self.world - 1) // self.world
        if per_rank < batch_size:
            raise UserError(
                f"the dataset has {len(self.data)} images, fewer than one batch of "
                f"{batch_size} per process; lower --batch-size"
            )
        self.batch_size, self.batches_per_epoch = batch_size, per_rank // batch_size

    def set_batch_size(self, batch_size):
        """Batches of ``batch_size`` from the next epoch on; iterate anew after the switch."""
        self.load_state_dict({"epoch": self.epoch + 1, "batch": 0, "batch_size": batch_size})

    def state_dict(self):
        return {"epoch": self.epoch, "batch": self.batch, "batch_size": self.batch_size}

    def load_state_dict(self, state):
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self._resize(int(state.get("batch_size", self.batch_size)))  # older states: no size

    def _order(self, epoch):
        n = len(self.data)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
        total = ((n + self.world - 1) // self.world) * self.world
        perm = torch.cat([perm, perm[: total - n]])
        return perm[self.rank :: self.world]

    def _to_float(self, x, epoch, b):
        x = x.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        if self.flip or self.color_jitter:
            seed = ((self.seed * 1000003 + self.rank) * 1000003 + epoch) * 1000003 + b
            g = torch.Generator().manual_seed(seed)
            x = augment(x, g, self.flip, self.color_jitter)
        return x

    def __iter__(self):
        while True:
            order = self._order(self.epoch)
            bs = self.batch_size
            batches = [order[i * bs : (i + 1) * bs] for i in range(self.batches_per_epoch)]
            start, epoch = self.batch, self.epoch
            if self.images is not None:
                for b in range(start, len(batches)):
                    idx = batches[b].to(self.images.device)
                    y = (
                        self.labels[idx.to(self.labels.device)].to(self.device, non_blocking=True)
                        if self.labels is not None
                        else None
                    )
                    self.batch = b + 1
                    yield self._to_float(self.images[idx], epoch, b), y
            else:
                loader = torch.utils.data.DataLoader(
                    self.data,
                    batch_sampler=[bt.tolist() for bt in batches[start:]],
                    num_workers=self.num_workers,
                    pin_memory=self.device.type == "cuda",
                    persistent_workers=False,
                    worker_init_fn=ignore_stop_signals,
                )
                for b, (x, y) in enumerate(loader, start):
                    self.batch = b + 1
                    y = y.to(self.device) if self.data.num_classes else None
                    yield self._to_float(x, epoch, b), y
            self.epoch, self.batch = self.epoch + 1, 0
