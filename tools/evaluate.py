"""FID, KID, Inception Score and precision/recall of a generator or a folder of images.

The metrics come from torch-fidelity (Obukhov et al.), whose values match the reference
implementations; this tool only feeds it generated and real images and records the
protocol beside every number.

    python tools/evaluate.py runs/dcgan/<run> --dataset cifar10 --data-path ~/data
    python tools/evaluate.py runs/dcgan/<run>                     # digits: the digits classifier
    python tools/evaluate.py my_samples/ --dataset celeba --data-path ~/data --image-size 64
    python tools/evaluate.py CKPT --dataset mnist --data-path ~/data --inception-weights ~/weights-inception-2015-12-05-6726825d.pth

Feature extractors (``--feature-extractor``):
* ``inception``: the standard FID Inception-v3 (the 2015-12-05 TensorFlow graph ported
  by torch-fidelity), pool features (2048) for FID, KID and precision/recall, unbiased
  logits for IS; images are resized to 299x299 inside the extractor with TensorFlow's
  bilinear resize, grey images repeated to three channels. Offline, pass a local copy
  of the weights with ``--inception-weights`` (or put it in torch's hub cache).
* ``digits``: the download-free digits classifier of tools/digits_metric.py, its
  128 penultimate features for FID/KID/precision-recall and its logits for IS, plus
  class coverage and mean confidence. The numbers are on its own scale, comparable only
  with each other (a "Fréchet digits distance").
* ``auto`` (default): ``digits`` for ``--dataset digits``, ``inception`` otherwise.

Generated images come from the checkpoint's EMA generator unless ``--no-ema``; real
images are the whole training split the script reads (``--num-real`` to subsample), at
the generator's resolution. Precision and recall (Kynkäänniemi et al. 2019, k = 3) use
the same extractor's features (the paper uses VGG-16; recorded in the protocol).
"""
import argparse
import hashlib
import json
import os
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import UserError  # noqa: E402
from digits_metric import cache_dir  # noqa: E402

METRICS = ("fid", "kid", "isc", "prc")
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"


def sha256(path):
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
    """torch-fidelity's FeatureExtractorBase around the digits classifier (registered once)."""
    from torch_fidelity.feature_extractor_base import FeatureExtractorBase

    import digits_metric

    class DigitsFeatureExtractor(FeatureExtractorBase):
        def __init__(self, name, features_list, **kwargs):
            super().__init__(name, features_list)
            self.net = digits_metric.classifier(verbose=False)

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
                x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
            f = self.net.features(x)
            out = {"128": f.double(), "logits_unbiased": self.net.head(f)}
            return tuple(out[k] for k in self.features_list)

    return DigitsFeatureExtractor


def extractor(kind, weights):
    """(torch-fidelity name, its kwargs, the protocol's description of it)."""
    import torch_fidelity
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    if kind == "digits":
        import digits_metric

        if "gan-zoo-digits" not in FEATURE_EXTRACTORS_REGISTRY:
            torch_fidelity.register_feature_extractor("gan-zoo-digits", digits_extractor_class())
        digits_metric.classifier()  # trains and caches it once
        path = os.path.join(digits_metric.cache_dir(), f"digits_classifier_v{digits_metric.VERSION}.pt")
        layers = {"fid": "128", "kid": "128", "prc": "128", "isc": "logits_unbiased"}
        return "gan-zoo-digits", {}, {"name": "digits classifier (tools/digits_metric.py)", "layers": layers, "weights": path,
                                      "weights_sha256": sha256(path), "resize": "bilinear (antialiased) to 32x32, grey"}
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    if weights is None:  # torch's hub cache, where torch-fidelity's own download lands
        cached = os.path.join(torch.hub.get_dir(), "checkpoints", INCEPTION_FILE)
        weights = cached if os.path.isfile(cached) else None
        if weights is None:
            try:
                torch.hub.load_state_dict_from_url(URL_INCEPTION_V3, progress=False)
                weights = cached
            except Exception as e:  # noqa: BLE001 - offline, proxy, ...
                raise UserError(f"the FID Inception weights are not on disk and could not be downloaded ({type(e).__name__}); "
                                f"download {URL_INCEPTION_V3} and pass --inception-weights PATH (or put it in {os.path.dirname(cached)})") from None
    elif not os.path.isfile(weights):
        raise UserError(f"--inception-weights {weights!r} not found; it is {INCEPTION_FILE} from {URL_INCEPTION_V3}")
    layers = {"fid": "2048", "kid": "2048", "prc": "2048", "isc": "logits_unbiased"}
    return "inception-v3-compat", {"feature_extractor_weights_path": weights}, {
        "name": "inception-v3-compat (torch-fidelity, FID Inception 2015-12-05)", "layers": layers, "weights": weights,
        "weights_sha256": sha256(weights), "resize": "TensorFlow-compatible bilinear to 299x299 inside the extractor; grey repeated to RGB"}


def generated_images(source, n, seed, use_ema, device, image_size):
    """uint8 images and a description: from a checkpoint's generator or an image folder."""
    from common.run import find_checkpoint

    if os.path.isfile(source) or os.path.isdir(os.path.join(source, "checkpoints")):
        import digits_metric

        path = find_checkpoint("", source)
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(ckpt, dict) or "script" not in ckpt:
            raise UserError(f"{path!r} is not a checkpoint of this project")
        module = digits_metric.load_script(ckpt["script"])
        generate = module.load_generator(path, device, use_ema=use_ema)
        x = torch.cat([to_uint8(generate(z=None, n=min(500, n - i), seed=seed + i)) for i in range(0, n, 500)])
        run = ckpt["args"]
        return x, {"checkpoint": path, "script": ckpt["script"], "step": ckpt["step"], "generator": "EMA" if generate.used_ema else "raw",
                   "seed": seed, "dataset": run.get("dataset"), "data_path": run.get("data_path"), "image_size": x.shape[-1]}
    from common.data import FolderData

    data = FolderData(source, image_size or 32, channels=3)
    idx = range(min(n, len(data)))
    x = torch.stack([data[i][0] for i in idx])
    return x, {"folder": source, "image_size": x.shape[-1]}


def to_uint8(x):
    return x.float().add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)


def real_images(dataset, data_path, image_size, channels, n, seed):
    from common.data import load_dataset

    data = load_dataset(dataset, data_path, image_size, channels)
    idx = torch.arange(len(data))
    if n and n < len(data):
        idx = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    x = data.images[idx] if hasattr(data, "images") else torch.stack([data[int(i)][0] for i in idx])
    return x, {"dataset": dataset, "data_path": data_path, "split": "train (the split the training scripts read)",
               "num_real": len(x), "of": len(data), "resize": f"common.data's loader to {image_size}x{image_size}"}


def evaluate(source, dataset=None, data_path=None, num_samples=50000, num_real=0, metrics=METRICS, feature_extractor="auto",
             inception_weights=None, use_ema=True, seed=0, device="cpu", image_size=None, batch_size=64):
    """Compute the metrics; returns {"metrics": {...}, "protocol": {...}}."""
    import warnings

    import torch_fidelity

    warnings.filterwarnings("ignore", message="This DataLoader will create")  # torch-fidelity's loader on a 2-core machine
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    t0 = time.time()
    fake, gen_info = generated_images(source, num_samples, seed, use_ema, device, image_size)
    dataset = dataset or gen_info.get("dataset") or "digits"
    data_path = data_path if data_path is not None else gen_info.get("data_path")
    kind = ("digits" if dataset == "digits" else "inception") if feature_extractor == "auto" else feature_extractor
    real, real_info = real_images(dataset, data_path, fake.shape[-1], fake.shape[1], num_real, seed)
    if real.shape[1] != fake.shape[1]:  # e.g. a folder of RGB samples against grey digits
        real, fake = (t.expand(-1, 3, -1, -1) if t.shape[1] == 1 else t for t in (real, fake))
    name, kwargs, ext_info = extractor(kind, inception_weights)
    n_min = min(len(fake), len(real))
    if "prc" in metrics and n_min <= 3:
        raise UserError("precision/recall needs more than 3 images on each side; raise --num-samples")
    kid_size = min(1000, n_min)
    rgb = kind == "inception"
    # The real side's features are cached on disk (torch-fidelity's cache), keyed by everything that defines them.
    key = json.dumps([real_info, ext_info["weights_sha256"], seed, list(real.shape)], sort_keys=True, default=str)
    cache = {"cache": True, "cache_root": os.path.join(cache_dir(), "fidelity"),
             "input2_cache_name": f"real-{kind}-{hashlib.sha256(key.encode()).hexdigest()[:20]}"}
    out = torch_fidelity.calculate_metrics(
        input1=Images(fake, rgb), input2=Images(real, rgb), cuda=device.type == "cuda", batch_size=batch_size,
        fid="fid" in metrics, kid="kid" in metrics, isc="isc" in metrics, prc="prc" in metrics,
        feature_extractor=name, feature_layer_fid=ext_info["layers"]["fid"], feature_layer_kid=ext_info["layers"]["kid"],
        feature_layer_isc=ext_info["layers"]["isc"], feature_layer_prc=ext_info["layers"]["prc"],
        kid_subset_size=kid_size, rng_seed=seed, verbose=False, **cache, **kwargs)
    names = {"frechet_inception_distance": "fid", "kernel_inception_distance_mean": "kid", "kernel_inception_distance_std": "kid_std",
             "inception_score_mean": "is", "inception_score_std": "is_std", "precision": "precision", "recall": "recall", "f_score": "f_score"}
    result = {names.get(k, k): float(v) for k, v in out.items()}
    if kind == "digits":
        import digits_metric

        _, p = digits_metric.features_and_probs(digits_metric.classifier(verbose=False), fake.float().div(127.5).sub(1))
        counts = torch.bincount(p.argmax(1), minlength=10)
        result["coverage"] = int((counts >= 0.2 * len(fake) / 10).sum())
        result["confidence"] = float(p.max(1).values.mean())
    protocol = {"generated": {**gen_info, "num_generated": len(fake)}, "real": real_info, "feature_extractor": ext_info,
                "kid": {"subset_size": kid_size, "subsets": 100}, "isc": {"splits": 10}, "prc": {"k": 3, "features": "the same extractor"},
                "torch_fidelity": torch_fidelity.__version__, "torch": torch.__version__, "seconds": round(time.time() - t0, 1)}
    return {"metrics": result, "protocol": protocol}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a checkpoint (.pt), a run directory, or a folder of generated images")
    p.add_argument("--dataset", default=None, help="real data (default: the checkpoint's own dataset; digits for a folder)")
    p.add_argument("--data-path", default=None, help="where the real data is (default: the checkpoint's own)")
    p.add_argument("--image-size", type=int, default=None, help="for a folder of images: the resolution to compare at (default 32)")
    p.add_argument("--num-samples", type=int, default=50000, help="generated images (50k is the standard protocol)")
    p.add_argument("--num-real", type=int, default=0, help="real images, drawn at random (0: the whole split)")
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    p.add_argument("--feature-extractor", default="auto", choices=["auto", "inception", "digits"])
    p.add_argument("--inception-weights", default=None, help=f"a local copy of {INCEPTION_FILE} (no download)")
    p.add_argument("--no-ema", action="store_true", help="use the raw generator instead of the EMA one")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", default=None, help="where to write the results (default: <run>/eval_step<N>.json, or print only for a folder)")
    args = p.parse_args(argv)
    try:
        if args.num_samples < 2 or args.num_real < 0:
            raise UserError("--num-samples must be at least 2 and --num-real not negative")
        res = evaluate(args.source, args.dataset, args.data_path, args.num_samples, args.num_real, args.metrics, args.feature_extractor,
                       args.inception_weights, not args.no_ema, args.seed, args.device, args.image_size, args.batch_size)
    except UserError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        sys.exit(1)
    m, proto = res["metrics"], res["protocol"]
    g, r, fe = proto["generated"], proto["real"], proto["feature_extractor"]
    print(f"{g.get('checkpoint', g.get('folder'))}: {g['num_generated']} generated ({g.get('generator', 'images')}) vs {r['num_real']} real "
          f"({r['dataset']}, {r['split'].split(' ')[0]}) at {g['image_size']}px; features: {fe['name']}, sha256 {fe['weights_sha256'][:12]}")
    for k, v in m.items():
        print(f"  {k:10s} {v:.5g}")
    path = args.json
    if path is None and "checkpoint" in g:
        from common.run import run_dir_of

        path = os.path.join(run_dir_of(g["checkpoint"]), f"eval_step{g['step']:06d}_{fe['name'].split(' ')[0]}.json")
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
