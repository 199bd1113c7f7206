"""FID, KID, Inception Score and precision/recall of a generator or a folder of images.

The metrics come from torch-fidelity (Obukhov et al.), whose values match the reference
implementations; this tool only feeds it generated and real images and records the
protocol beside every number. The protocol itself is ``evaluate`` in common/evaluation.py,
the same one that ``--eval-every`` and tools/compare.py use; this is its command line.

    python tools/evaluate.py runs/dcgan/<run> --dataset cifar10 --data-path ~/data
    python tools/evaluate.py runs/dcgan/<run>                     # digits: the digits classifier
    python tools/evaluate.py my_samples/ --dataset celeba --data-path ~/data --image-size 64
    python tools/evaluate.py CKPT --dataset mnist --data-path ~/data \\
        --inception-weights ~/weights-inception-2015-12-05-6726825d.pth

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
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from common import UserError  # noqa: E402
from common.evaluation import INCEPTION_FILE, METRICS, evaluate  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "source", help="a checkpoint (.pt), a run directory, or a folder of generated images"
    )
    p.add_argument(
        "--dataset",
        default=None,
        help="real data (default: the checkpoint's own dataset; digits for a folder)",
    )
    p.add_argument(
        "--data-path", default=None, help="where the real data is (default: the checkpoint's own)"
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="for a folder of images: the resolution to compare at (default 32)",
    )
    p.add_argument(
        "--num-samples",
        type=int,
        default=50000,
        help="generated images (50k is the standard protocol)",
    )
    p.add_argument(
        "--num-real", type=int, default=0, help="real images, drawn at random (0: the whole split)"
    )
    p.add_argument("--metrics", nargs="+", default=list(METRICS), choices=METRICS)
    p.add_argument("--feature-extractor", default="auto", choices=["auto", "inception", "digits"])
    p.add_argument(
        "--inception-weights", default=None, help=f"a local copy of {INCEPTION_FILE} (no download)"
    )
    p.add_argument(
        "--no-ema", action="store_true", help="use the raw generator instead of the EMA one"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--json",
        default=None,
        help="where to write the results (default: <run>/eval_step<N>.json, or print only "
        "for a folder)",
    )
    args = p.parse_args(argv)
    try:
        if args.num_samples < 2 or args.num_real < 0:
            raise UserError("--num-samples must be at least 2 and --num-real not negative")
        res = evaluate(
            args.source,
            args.dataset,
            args.data_path,
            args.num_samples,
            args.num_real,
            args.metrics,
            args.feature_extractor,
            args.inception_weights,
            not args.no_ema,
            args.seed,
            args.device,
            args.image_size,
            args.batch_size,
        )
    except UserError as e:
        print(f"evaluate: error: {e}", file=sys.stderr)
        sys.exit(1)
    m, proto = res["metrics"], res["protocol"]
    g, r, fe = proto["generated"], proto["real"], proto["feature_extractor"]
    if g.get("dataset") == "text":
        floor = r["real_vs_real"]
        print(
            f"{g['checkpoint']}: {g['num_generated']} generated sequences ({g['generator']}) "
            f"vs the corpus {r['source']} ({r['characters']} characters); JS divergences in "
            "bits, and beside them the same number of real windows"
        )
        for k, v in m.items():
            print(f"  {k:10s} {v:.5g}   (real {floor[k]:.5g})")
        for side in ("generated", "real"):  # the first ten of each, unpicked
            print(f"{side}:\n" + "\n".join(f"  |{t}|" for t in res["samples"][side]))
    else:
        print(
            f"{g.get('checkpoint', g.get('folder'))}: {g['num_generated']} generated "
            f"({g.get('generator', 'images')}) vs {r['num_real']} real "
            f"({r['dataset']}, {r['split'].split(' ')[0]}) at {g['image_size']}px; "
            f"features: {fe['name']}, sha256 {fe['weights_sha256'][:12]}"
        )
        for k, v in m.items():
            print(f"  {k:10s} {v:.5g}")
    path = args.json
    if path is None and "checkpoint" in g:
        from common.run import run_dir_of

        path = os.path.join(
            run_dir_of(g["checkpoint"]), f"eval_step{g['step']:06d}_{fe['name'].split(' ')[0]}.json"
        )
    if path:
        with open(path, "w") as f:
            json.dump(res, f, indent=2)
        print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
