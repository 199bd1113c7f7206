"""A download-free sample-quality metric for the embedded digits.

A small CNN is trained on scikit-learn's digits (32x32, deterministic, about 15
seconds on a 2-core CPU, cached; trained on 1400 of the 1797 digits it classifies the
other 397 with 99.0% accuracy). Its penultimate features give a Fréchet distance between
generated and real digits (like FID, with this classifier in place of Inception), and
its predictions give the class coverage (how many of the ten digits the samples hit)
and the mean confidence (how recognisable each sample is).

    python tools/digits_metric.py runs/dcgan/<run>               # EMA generator
    python tools/digits_metric.py runs/dcgan/<run> --compare-ema # raw G vs EMA variants

Reference values (``--real``): real digits against real digits score a Fréchet
distance near 0, coverage 10 and confidence near 1.
"""
import argparse
import importlib.util
import json
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

VERSION = 2  # bump when the classifier or its training changes (invalidates the cache)


class DigitsNet(nn.Module):
    """Three conv blocks (conv 3x3, batch norm, ReLU, max-pool) and a 128-unit feature layer."""

    def __init__(self):
        super().__init__()
        blocks = []
        for cin, cout in ((1, 32), (32, 64), (64, 128)):
            blocks += [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(128 * 4 * 4, 128), nn.ReLU())
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.features(x))


def cache_dir():
    return os.environ.get("GAN_ZOO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "gan_zoo"))


def real_digits(image_size=32):
    from common.data import load_digits, resize_uint8

    x, y = load_digits()
    return resize_uint8(x, image_size).float().div(127.5).sub(1), y


def classifier(verbose=True):
    """The trained classifier (cached under $GAN_ZOO_CACHE or ~/.cache/gan_zoo)."""
    path = os.path.join(cache_dir(), f"digits_classifier_v{VERSION}.pt")
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
    """{"fd", "coverage", "confidence", "class_counts"} of a batch of digit images in [-1, 1].

    Coverage counts the classes that receive at least a fifth of their fair share of
    the samples' predictions (so a stray prediction does not count as a covered mode).
    """
    net = net or classifier()
    if reference is None:
        reference = features_and_probs(net, real_digits()[0])[0]
    f, p = features_and_probs(net, images)
    counts = torch.bincount(p.argmax(1), minlength=10)
    fair = len(images) / 10
    return {
        "fd": frechet_distance(f, reference),
        "coverage": int((counts >= 0.2 * fair).sum()),
        "confidence": float(p.max(1).values.mean()),
        "class_counts": counts.tolist(),
    }


def load_script(name):
    """Import a top-level paper script as a module, by name (``dcgan``)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def generator_variants(checkpoint, compare_ema):
    """(label, generate) pairs: the EMA generator, or raw G and the EMA variants."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module = load_script(ckpt.get("script", "dcgan"))
    if not compare_ema:
        return [("ema" if ckpt.get("ema") is not None else "raw", module.load_generator(checkpoint))]
    out = [("raw G", module.load_generator(checkpoint, use_ema=False))]
    if ckpt.get("ema") is not None:
        copied = module.load_generator(checkpoint)
        bn = {k: v for k, v in ckpt["G"].items() if "running_" in k or "num_batches" in k}
        copied.model.load_state_dict({**copied.model.state_dict(), **bn})
        out += [("EMA, G's batch-norm statistics copied", copied), ("EMA, statistics recalibrated (default)", module.load_generator(checkpoint))]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", nargs="?", help="a checkpoint .pt or run directory (any script trained on digits)")
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compare-ema", action="store_true", help="score raw G, EMA with copied BN statistics, and recalibrated EMA")
    p.add_argument("--real", action="store_true", help="score half of the real digits (the reference point)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)
    net = classifier()
    x, _ = real_digits()
    reference = features_and_probs(net, x)[0]
    results = []
    if args.real:
        half = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[: len(x) // 2]
        results.append(("real digits (half)", score(x[half], net, reference)))
    if args.checkpoint:
        from common.run import find_checkpoint

        path = find_checkpoint("", args.checkpoint) if os.path.isdir(args.checkpoint) else args.checkpoint
        for label, generate in generator_variants(path, args.compare_ema):
            results.append((label, score(generate(args.num_samples, seed=args.seed), net, reference)))
    if not results:
        p.error("give a checkpoint or --real")
    print(f"{'generator':42s} {'FD':>8s} {'coverage':>9s} {'confidence':>11s}")
    for label, r in results:
        print(f"{label:42s} {r['fd']:8.2f} {r['coverage']:6d}/10 {r['confidence']:11.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({label: r for label, r in results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
