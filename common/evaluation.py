"""Sample quality: the digits classifier and the evaluation protocol
(FID, KID, IS, precision/recall).

Two layers, shared by ``tools/digits_metric.py``, ``tools/evaluate.py``, ``tools/compare.py``
and the evaluation during training (``--eval-every``, ``common.run.Metrics``); the tools are
only their command lines.

The digits classifier: a download-free metric for the embedded digits. A small CNN is
trained on scikit-learn's digits (32x32, seeded, about 15 seconds on a 2-core CPU,
cached under ``$GAN_ZOO_CACHE`` or ``~/.cache/gan_zoo``; trained on 1400 of the 1797 digits
it classifies the other 397 with 99.0% accuracy). Seeded is not bit-identical across CPUs:
another machine's floating point trains slightly different weights, and real-vs-real FDs of
600 images were 4.7 on one CPU and 5.5 on another, so compare numbers made on one machine.
Its penultimate features give a Fréchet distance between generated and real digits (like
FID, with this classifier in place of Inception), and its predictions give the class
coverage (how many of the ten digits the samples hit) and the mean confidence (how
recognisable each sample is). Neither sees a collapse within each class (every sample of a
digit nearly the same image, ten digits covered, a low FD); two numbers do:
* recall (Kynkäänniemi et al. 2019, k = 3): the fraction of the real digits that lie inside
  the generated samples' manifold (the union of balls around each sample reaching its 3rd
  nearest generated neighbour), in the classifier's features;
* within-class spread: per digit the samples cover, the generated features' RMS distance to
  their class mean over the real digits' (classes as the classifier predicts them), averaged
  over the covered digits: about 1 for real digits, 0 for one image per digit (above 1:
  samples more scattered than real digits, e.g. unrecognisable ones; FD and confidence see
  those).

The evaluation protocol (``evaluate``): the metrics come from torch-fidelity (Obukhov et
al.), whose values match the reference implementations; this module only feeds it
generated and real images and records the protocol beside every number.

Feature extractors (``feature_extractor``):
* ``inception``: the standard FID Inception-v3 (the 2015-12-05 TensorFlow graph ported
  by torch-fidelity), pool features (2048) for FID, KID and precision/recall, unbiased
  logits for IS; images are resized to 299x299 inside the extractor with TensorFlow's
  bilinear resize, grey images repeated to three channels. Offline, pass a local copy
  of the weights (``inception_weights``, or put it in torch's hub cache).
* ``digits``: the digits classifier above, its 128 penultimate features for
  FID/KID/precision-recall and its logits for IS, plus class coverage and mean confidence.
  The numbers are on its own scale, comparable only with each other (a "Fréchet digits
  distance").
* ``auto`` (default): ``digits`` for the digits dataset, ``inception`` otherwise.

Generated images come from the checkpoint's EMA generator unless ``use_ema=False``; real
images are the whole training split the script reads (``num_real`` to subsample), at
the generator's resolution. Precision and recall (Kynkäänniemi et al. 2019, k = 3) use
the same extractor's features (the paper uses VGG-16; recorded in the protocol).

torch-fidelity is imported only when an evaluation runs; ``common.run`` imports this module
only when a run evaluates, so that neither costs a training run that does not.
"""

import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from common import UserError
from common.scripts import load_script

VERSION = 2  # bump when the classifier or its training changes (invalidates the cache)
METRICS = ("fid", "kid", "isc", "prc")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


# ---------------------------------------------------------------------- the digits classifier
class DigitsNet(nn.Module):
    """Three conv blocks (conv 3x3, batch norm, ReLU, max-pool) and a 128-unit feature layer."""

    def __init__(self):
        super().__init__()
        blocks = []
        for cin, cout in ((1, 32), (32, 64), (64, 128)):
            blocks += [
                nn.Conv2d(cin, cout, 3, padding=1),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
        self.features = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(128 * 4 * 4, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.features(x))


def cache_dir():
    """Where the classifier and torch-fidelity's real-feature cache live:
    $GAN_ZOO_CACHE or ~/.cache/gan_zoo."""
    return os.environ.get(
        "GAN_ZOO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "gan_zoo")
    )


def classifier_path():
    """The cached classifier's weights; the file name carries VERSION, so a change retrains it."""
    return os.path.join(cache_dir(), f"digits_classifier_v{VERSION}.pt")


def real_digits(image_size=32):
    """All 1797 embedded digits as (N, 1, S, S) floats in [-1, 1], and their labels."""
    from common.data import load_digits, resize_uint8

    x, y = load_digits()
    return resize_uint8(x, image_size).float().div(127.5).sub(1), y


def classifier(verbose=True):
    """The trained classifier (cached under $GAN_ZOO_CACHE or ~/.cache/gan_zoo), in eval mode.

    The first call trains it (15 epochs of Adam with a one-cycle schedule, seeded) and
    writes it atomically, so that concurrent first calls cannot leave a torn file; later
    calls load it.
    """
    path = classifier_path()
    net = DigitsNet()
    if os.path.exists(path):
        net.load_state_dict(torch.load(path, weights_only=True))
        return net.eval()
    if verbose:
        print(f"training the digits classifier once (cached in {path})", file=sys.stderr)
    x, y = real_digits()
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    epochs, batches = 15, (len(x) + 63) // 64
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * batches)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    os.makedirs(cache_dir(), exist_ok=True)
    tmp = path + f".tmp{os.getpid()}"
    torch.save(net.state_dict(), tmp)
    os.replace(tmp, path)
    return net.eval()


@torch.no_grad()
def features_and_probs(net, x):
    """Penultimate features (N, 128) and class probabilities (N, 10) of images in [-1, 1]."""
    if x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    if x.shape[-1] != 32:
        x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    feats, probs = [], []
    for c in x.float().split(500):
        f = net.features(c)
        feats.append(f.double())
        probs.append(F.softmax(net.head(f), 1))
    return torch.cat(feats).numpy(), torch.cat(probs)


def frechet_distance(f1, f2):
    """||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^1/2) between two sets of features.

    Tr((S1 S2)^1/2) is the sum of the square roots of the eigenvalues of S1 S2 (real and
    non-negative for covariance matrices), which stays stable when the covariances are
    singular, as they are for ReLU features that are sometimes all zero.
    """
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def score(images, net=None, reference=None):
    """{"fd", "recall", "within_class_spread", "coverage", "confidence", "class_counts"} of a
    batch of digit images in [-1, 1], against the real digits' features ``reference``.

    Coverage counts the classes that receive at least a fifth of their fair share of
    the samples' predictions (so a stray prediction does not count as a covered mode).
    """
    net = net or classifier()
    if reference is None:
        reference = features_and_probs(net, real_digits()[0])[0]
    f, p = features_and_probs(net, images)
    with torch.no_grad():  # the reference's classes, from its features
        real_classes = net.head(torch.from_numpy(reference).float()).argmax(1)
    return {
        "fd": frechet_distance(f, reference),
        "recall": knn_recall(f, reference),
        "within_class_spread": within_class_spread(f, p.argmax(1), reference, real_classes),
        **class_stats(p),
    }


def knn_recall(fake, real, k=3):
    """Recall of Kynkäänniemi et al. 2019: the fraction of ``real`` features (N, D) inside the
    manifold of ``fake`` (M, D), the union of the balls around each fake feature whose radius
    is the distance to its ``k``-th nearest other fake feature (torch-fidelity's definition)."""
    fake, real = torch.as_tensor(fake).double(), torch.as_tensor(real).double()
    # in chunks of 500 rows, so that 50,000 samples need no 20 GB distance matrix
    radii = torch.cat(
        [
            torch.cdist(f, fake).kthvalue(k + 1, dim=1).values  # +1: itself
            for f in fake.split(500)
        ]
    )
    inside = torch.cat([(torch.cdist(r, fake) <= radii).any(1) for r in real.split(500)])
    return float(inside.double().mean())


def within_class_spread(fake, fake_classes, real, real_classes):
    """Mean over the classes the samples cover (as ``class_stats`` counts them) of the
    generated features' RMS distance to their class mean over the real features' (same
    class): 0 when every sample of a class is the same image, about 1 for real digits;
    nan when no covered class has two samples and two real ones."""
    fake, real = torch.as_tensor(fake).double(), torch.as_tensor(real).double()
    counts = torch.bincount(fake_classes, minlength=10)
    ratios = []
    for c in range(len(counts)):
        a, b = fake[fake_classes == c], real[real_classes == c]
        if counts[c] < max(2, 0.2 * len(fake) / len(counts)) or len(b) < 2:
            continue
        ratios.append(rms_spread(a) / rms_spread(b))
    return float(torch.stack(ratios).mean()) if ratios else float("nan")


def rms_spread(x):
    """The RMS distance of the rows of ``x`` to their mean."""
    return (x - x.mean(0)).square().sum(1).mean().sqrt()


def class_stats(probs):
    """Coverage, confidence and class counts of the classifier's probabilities (N, 10)."""
    counts = torch.bincount(probs.argmax(1), minlength=10)
    return {
        "coverage": int((counts >= 0.2 * len(probs) / 10).sum()),
        "confidence": float(probs.max(1).values.mean()),
        "class_counts": counts.tolist(),
    }


def as_trained(x, module, run_args):
    """Real images ``x`` (in [-1, 1]) as the script ``module``'s generator is trained to produce
    them: ``module.real_view(x, run_args)`` where the script defines it (bgan.py binarizes the
    digits its binary G learns), else ``x``. Returns (images, a description or None)."""
    if not hasattr(module, "real_view"):
        return x, None
    return (
        module.real_view(x, run_args),
        f"{module.SCRIPT}.real_view: the real images as the script's generator is trained"
        " to produce them",
    )


def digits_reference(module, run_args):
    """The real digits a run on them is compared with: at the run's --image-size (the 8x8
    digits resized to 16 and then to the classifier's 32 are blurrier than resized to 32 at
    once: FD 30 between the two) and as the script's generator is trained to produce them."""
    return as_trained(real_digits(run_args.get("image_size", 32))[0], module, run_args)[0]


# ---------------------------------------------------------------------- the torch-fidelity protocol
def sha256(path):
    """Hex SHA-256 of a file: the protocol records which feature-extractor weights made a number."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class Images(torch.utils.data.Dataset):
    """uint8 (N, C, H, W) as the Dataset torch-fidelity reads, three channels for Inception."""

    def __init__(self, x, rgb):
        self.x, self.rgb = x, rgb

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        x = self.x[i]
        return x.expand(3, -1, -1) if self.rgb and x.shape[0] == 1 else x


def digits_extractor_class():
    """torch-fidelity's FeatureExtractorBase around the digits classifier (registered once by
    ``extractor``). A class built on call, so that torch-fidelity is imported only when an
    evaluation runs. It takes uint8 images, as torch-fidelity passes them."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    class DigitsFeatureExtractor(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = classifier(verbose=False)

        @staticmethod
        def get_provided_features_list():
            return ("128", "logits_unbiased")

        @staticmethod
        def get_default_feature_layer_for_metric(metric):
            return {"isc": "logits_unbiased"}.get(metric, "128")

        @staticmethod
        def can_be_compiled():
            return False

        @staticmethod
        def get_dummy_input_for_compile():
            return torch.zeros(1, 1, 32, 32, dtype=torch.uint8)

        def forward(self, x):
            x = x.float().div(127.5).sub(1)
            if x.shape[1] == 3:
                x = x.mean(1, keepdim=True)
            if x.shape[-1] != 32:
                x = torch.nn.functional.interpolate(
                    x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True
                )
            f = self.net.features(x)
            out = {"128": f.double(), "logits_unbiased": self.net.head(f)}
            return tuple(out[k] for k in self.features_list)

    return DigitsFeatureExtractor


def extractor(kind, weights):
    """(torch-fidelity name, its kwargs, the protocol's description of it) for ``kind``
    (``digits`` or ``inception``). The Inception weights are ``weights``, else torch's hub
    cache, else downloaded once; offline with none of these it raises one UserError line."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if kind == "digits":
        if "gan-zoo-digits" not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor("gan-zoo-digits", digits_extractor_class())
        classifier()  # trains and caches it once
        path = classifier_path()
        layers = {"fid": "128", "kid": "128", "prc": "128", "isc": "logits_unbiased"}
        # The name is part of the saved protocol (and of eval_step*_digits.json's file name):
        # keep it as it is.
        return (
            "gan-zoo-digits",
            {},
            {
                "name": "digits classifier (tools/digits_metric.py)",
                "layers": layers,
                "weights": path,
                "weights_sha256": sha256(path),
                "resize": "bilinear (antialiased) to 32x32, grey",
            },
        )
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    if weights is None:  # torch's hub cache, where torch-fidelity's own download lands
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)
        weights = cached if os.path.isfile(cached) else None
        if weights is None:
            try:
                torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, progress=False)
                weights = cached
            except Exception as e:  # noqa: BLE001 - offline, proxy, ...
                raise UserError(
                    "the FID Inception weights are not on disk and could not be downloaded "
                    f"({type(e).__name__}); "
                    f"download {URL_INCEPTION_V3} and pass --inception-weights PATH "
                    f"(or put it in {os.path.dirname(cached)})"
                ) from None
    elif not os.path.isfile(weights):
        raise UserError(
            f"--inception-weights {weights!r} not found; it is {INCEPTION_FILE} from "
            f"{URL_INCEPTION_V3}"
        )
    layers = {"fid": "2048", "kid": "2048", "prc": "2048", "isc": "logits_unbiased"}
    return (
        "inception-v3-compat",
        {"feature_extractor_weights_path": weights},
        {
            "name": "inception-v3-compat (torch-fidelity, FID Inception 2015-12-05)",
            "layers": layers,
            "weights": weights,
            "weights_sha256": sha256(weights),
            "resize": (
                "TensorFlow-compatible bilinear to 299x299 inside the extractor; "
                "grey repeated to RGB"
            ),
        },
    )


def generated_images(source, n, seed, use_ema, device, image_size):
    """``n`` uint8 images and a description: from a checkpoint's generator (loaded with the
    script named in the checkpoint, latents seeded from ``seed``) or from an image folder."""
    from common.checkpoints import find_checkpoint

    if os.path.isfile(source) or os.path.isdir(os.path.join(source, "checkpoints")):
        path = find_checkpoint("", source)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or "script" not in ckpt:
            raise UserError(f"{path!r} is not a checkpoint of this project")
        module = load_script(ckpt["script"])
        generate = module.load_generator(path, device, use_ema=use_ema)
        x = torch.cat(
            [to_uint8(generate(z=None, n=min(500, n - i), seed=seed + i)) for i in range(0, n, 500)]
        )
        run = ckpt["args"]
        info = {
            "checkpoint": path,
            "script": ckpt["script"],
            "step": ckpt["step"],
            "generator": "EMA" if generate.used_ema else "raw",
            "seed": seed,
            "dataset": run.get("dataset"),
            "data_path": run.get("data_path"),
            "image_size": x.shape[-1],
        }
        info["as_trained"] = (
            module,
            run,
        )  # for the real side (as_trained); not part of the protocol
        return x, info
    from common.data import FolderData

    data = FolderData(source, image_size or 32, channels=3)
    idx = range(min(n, len(data)))
    x = torch.stack([data[i][0] for i in idx])
    return x, {"folder": source, "image_size": x.shape[-1]}


def to_uint8(x):
    """Images in [-1, 1] to uint8 [0, 255], the input torch-fidelity expects."""
    return x.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def real_images(dataset, data_path, image_size, channels, n, seed):
    """uint8 training images (all, or ``n`` drawn with ``seed``) and a description,
    through common.data."""
    from common.data import load_dataset

    data = load_dataset(dataset, data_path, image_size, channels)
    idx = torch.arange(len(data))
    if n and n < len(data):
        idx = (
            torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n]
            .sort()
            .values
        )
    x = data.images[idx] if hasattr(data, "images") else torch.stack([data[int(i)][0] for i in idx])
    return x, {
        "dataset": dataset,
        "data_path": data_path,
        "split": "train (the split the training scripts read)",
        "num_real": len(x),
        "of": len(data),
        "resize": f"common.data's loader to {image_size}x{image_size}",
    }


def prepare(dataset):
    """Fail now, in one line, if scoring samples of ``dataset`` needs weights this machine
    lacks (the FID Inception offline), rather than at a run's first evaluation. The digits
    classifier trains itself; text needs no network."""
    if dataset not in ("digits", "text"):
        extractor("inception", None)


def evaluate(
    source,
    dataset=None,
    data_path=None,
    num_samples=50000,
    num_real=0,
    metrics=METRICS,
    feature_extractor="auto",
    inception_weights=None,
    use_ema=True,
    seed=0,
    device="cpu",
    image_size=None,
    batch_size=64,
):
    """Compute the metrics of ``source`` (a checkpoint, a run directory or a folder of images)
    against the real ``dataset``; returns {"metrics": {...}, "protocol": {...}}.

    ``dataset``/``data_path`` default to the checkpoint's own (digits for a folder); with the
    digits extractor the metrics also hold ``coverage``, ``confidence`` and
    ``within_class_spread`` (see the module docstring). The real side's
    features are cached under ``cache_dir()/fidelity``. Raises UserError for a user's mistake.
    """
    import warnings

    import torch_fidelity

    # torch-fidelity's loader on a 2-core machine
    warnings.filterwarnings("ignore", message="This DataLoader will create")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    text = text_checkpoint(source)
    if text is not None:
        return evaluate_text(text, num_samples, seed, use_ema, device)
    t0 = time.time()
    fake, gen_info = generated_images(source, num_samples, seed, use_ema, device, image_size)
    dataset = dataset or gen_info.get("dataset") or "digits"
    data_path = data_path if data_path is not None else gen_info.get("data_path")
    kind = feature_extractor
    if kind == "auto":
        kind = "digits" if dataset == "digits" else "inception"
    module_and_args = gen_info.pop("as_trained", None)
    real, real_info = real_images(dataset, data_path, fake.shape[-1], fake.shape[1], num_real, seed)
    if module_and_args is not None and dataset == gen_info.get("dataset"):  # compare like with like
        viewed, view = as_trained(real.float().div(127.5).sub(1), *module_and_args)
        if view is not None:
            real, real_info["view"] = to_uint8(viewed), view
    if real.shape[1] != fake.shape[1]:  # e.g. a folder of RGB samples against grey digits
        real, fake = (t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t for t in (real, fake))
    name, kwargs, ext_info = extractor(kind, inception_weights)
    n_min = min(len(fake), len(real))
    if "prc" in metrics and n_min <= 3:
        raise UserError(
            "precision/recall needs more than 3 images on each side; raise --num-samples"
        )
    kid_size = min(1000, n_min)
    rgb = kind == "inception"
    # The real side's features are cached on disk (torch-fidelity's cache), keyed by everything
    # that defines them.
    key = json.dumps(
        [real_info, ext_info["weights_sha256"], seed, list(real.shape)], sort_keys=True, default=str
    )
    cache = {
        "cache": True,
        "cache_root": os.path.join(cache_dir(), "fidelity"),
        "input2_cache_name": f"real-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}",
    }
    out = torch_fidelity.calculate_metrics(
        input1=Images(fake, rgb),
        input2=Images(real, rgb),
        cuda=device.type == "cuda",
        batch_size=batch_size,
        fid="fid" in metrics,
        kid="kid" in metrics,
        isc="isc" in metrics,
        prc="prc" in metrics,
        feature_extractor=name,
        feature_layer_fid=ext_info["layers"]["fid"],
        feature_layer_kid=ext_info["layers"]["kid"],
        feature_layer_isc=ext_info["layers"]["isc"],
        feature_layer_prc=ext_info["layers"]["prc"],
        kid_subset_size=kid_size,
        rng_seed=seed,
        verbose=False,
        **cache,
        **kwargs,
    )
    names = {
        "frechet_inception_distance": "fid",
        "kernel_inception_distance_mean": "kid",
        "kernel_inception_distance_std": "kid_std",
        "inception_score_mean": "is",
        "inception_score_std": "is_std",
        "precision": "precision",
        "recall": "recall",
        "f_score": "f_score",
    }
    result = {names.get(k, k): float(v) for k, v in out.items()}
    if kind == "digits":
        net = classifier(verbose=False)
        f, p = features_and_probs(net, fake.float().div(127.5).sub(1))
        stats = class_stats(p)
        result["coverage"], result["confidence"] = stats["coverage"], stats["confidence"]
        rf, rp = features_and_probs(net, real.float().div(127.5).sub(1))
        result["within_class_spread"] = within_class_spread(f, p.argmax(1), rf, rp.argmax(1))
    protocol = {
        "generated": {**gen_info, "num_generated": len(fake)},
        "real": real_info,
        "feature_extractor": ext_info,
        "kid": {"subset_size": kid_size, "subsets": 100},
        "isc": {"splits": 10},
        "prc": {"k": 3, "features": "the same extractor"},
        "torch_fidelity": torch_fidelity.__version__,
        "torch": torch.__version__,
        "seconds": round(time.time() - t0, 1),
    }
    if kind == "digits":
        protocol["within_class_spread"] = (
            "mean over covered classes of the generated over the real RMS distance to the "
            "class mean, in the same features; classes: the classifier's predictions"
        )
    return {"metrics": result, "protocol": protocol}


def text_checkpoint(source):
    """The checkpoint path when ``source`` is a run or checkpoint of ``--dataset text``."""
    from common.checkpoints import find_checkpoint

    if not (os.path.isfile(source) or os.path.isdir(os.path.join(source, "checkpoints"))):
        return None
    path = find_checkpoint("", source)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    is_text = isinstance(ckpt, dict) and ckpt.get("args", {}).get("dataset") == "text"
    return path if is_text else None


def evaluate_text(path, num_samples, seed, use_ema, device):
    """A text checkpoint's n-gram measure (common.text): ``num_samples`` generated sequences
    against the run's corpus, beside the same number of real windows (the floor that a
    finite sample sets: real text does not score 0)."""
    from common.text import TextData, text_metrics

    t0 = time.time()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    run = ckpt["args"]
    generate = load_script(ckpt["script"]).load_generator(path, device, use_ema=use_ema)
    ids = torch.cat(
        [
            generate(z=None, n=min(500, num_samples - i), seed=seed + i)
            for i in range(0, num_samples, 500)
        ]
    )
    data = TextData(run.get("data_path"), run["seq_len"], vocab=ckpt["vocab"])
    texts, real = data.decode(ids), data.windows(len(ids), seed)
    floor = text_metrics(real, data)
    protocol = {
        "generated": {
            "checkpoint": path,
            "script": ckpt["script"],
            "step": ckpt["step"],
            "generator": "EMA" if generate.used_ema else "raw",
            "seed": seed,
            "dataset": "text",
            "num_generated": len(texts),
            "seq_len": run["seq_len"],
        },
        "real": {
            "dataset": "text",
            "source": data.source,
            "characters": len(data.text),
            "vocabulary": data.channels,
            "real_vs_real": floor,
        },
        "feature_extractor": {"name": "character n-grams (Rajeswar et al. 2017)"},
        "torch": torch.__version__,
        "seconds": round(time.time() - t0, 1),
    }
    return {
        "metrics": text_metrics(texts, data),
        "protocol": protocol,
        "samples": {"generated": texts[:20], "real": real[:20]},
    }  # the first, unpicked
