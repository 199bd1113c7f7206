"""A download-free sample-quality metric for the embedded digits.

A small CNN is trained on scikit-learn's digits (32x32, deterministic, about 15
seconds on a 2-core CPU, cached; trained on 1400 of the 1797 digits it classifies the
other 397 with 99.0% accuracy). Its penultimate features give a Fréchet distance between
generated and real digits (like FID, with this classifier in place of Inception), and
its predictions give the class coverage (how many of the ten digits the samples hit)
and the mean confidence (how recognisable each sample is). Two numbers see a collapse within
each class (every sample of a digit nearly the same image, all ten covered, a low FD):
recall (Kynkäänniemi et al. 2019, k = 3: the fraction of real digits inside the samples'
feature manifold) and the within-class spread (per covered digit, the samples' feature
spread over the real digits'; about 1 for real digits, 0 for one image per digit). The
classifier and the metric live in common/evaluation.py; this is their command line.

    python tools/digits_metric.py runs/dcgan/<run>               # EMA generator
    python tools/digits_metric.py runs/dcgan/<run> --compare-ema # raw G vs EMA variants

Reference values (``--real``): half of the real digits against all of them score a Fréchet
distance near 0, recall near 0.95, within-class spread near 1, coverage 10 and confidence
near 1.
"""

import argparse
import json
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from common.evaluation import (  # noqa: E402
    classifier,
    classifier_path,
    digits_reference,
    features_and_probs,
    real_digits,
    score,
    sha256,
)
from common.scripts import load_script  # noqa: E402


def generator_variants(checkpoint, compare_ema):
    """(label, generate) pairs: the EMA generator, or raw G and the EMA variants."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    module = load_script(ckpt.get("script", "dcgan"))
    if not compare_ema:
        return [
            ("ema" if ckpt.get("ema") is not None else "raw", module.load_generator(checkpoint))
        ]
    out = [("raw G", module.load_generator(checkpoint, use_ema=False))]
    if ckpt.get("ema") is not None:
        copied = module.load_generator(checkpoint)
        bn = {k: v for k, v in ckpt["G"].items() if "running_" in k or "num_batches" in k}
        copied.model.load_state_dict({**copied.model.state_dict(), **bn})
        out += [
            ("EMA, G's batch-norm statistics copied", copied),
            ("EMA, statistics recalibrated (default)", module.load_generator(checkpoint)),
        ]
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="a checkpoint .pt or run directory (any script trained on digits)",
    )
    p.add_argument("--num-samples", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--compare-ema",
        action="store_true",
        help="score raw G, EMA with copied BN statistics, and recalibrated EMA",
    )
    p.add_argument(
        "--real", action="store_true", help="score half of the real digits (the reference point)"
    )
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.add_argument(
        "--record",
        default=None,
        metavar="TABLE",
        help="also write the first generator's scores into docs/results.json's TABLE "
        "(tools/results_table.py renders it), as the row --key",
    )
    p.add_argument("--key", default=None, help="--record: the row's name (default: the run)")
    p.add_argument("--note", default="", help="--record: how the run was trained")
    args = p.parse_args(argv)
    if args.record and not args.checkpoint:
        p.error("--record needs a checkpoint")
    net = classifier()
    x, _ = real_digits()
    reference = features_and_probs(net, x)[0]
    results = []
    if args.real:
        half = torch.randperm(len(x), generator=torch.Generator().manual_seed(args.seed))[
            : len(x) // 2
        ]
        results.append(("real digits (half)", score(x[half], net, reference)))
    if args.checkpoint:
        from common.run import find_checkpoint

        path = (
            find_checkpoint("", args.checkpoint)
            if os.path.isdir(args.checkpoint)
            else args.checkpoint
        )
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        module = load_script(ckpt.get("script", "dcgan"))
        # like with like: the reals at the run's size, binarized for bgan.py
        reference = features_and_probs(net, digits_reference(module, ckpt["args"]))[0]
        for label, generate in generator_variants(path, args.compare_ema):
            results.append(
                (label, score(generate(args.num_samples, seed=args.seed), net, reference))
            )
    if not results:
        p.error("give a checkpoint or --real")
    print(
        f"{'generator':42s} {'FD':>8s} {'recall':>7s} {'within-class spread':>20s} "
        f"{'coverage':>9s} {'confidence':>11s}"
    )
    for label, r in results:
        print(
            f"{label:42s} {r['fd']:8.2f} {r['recall']:7.3f} {r['within_class_spread']:20.3f} "
            f"{r['coverage']:6d}/10 {r['confidence']:11.3f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({label: r for label, r in results}, f, indent=2)
    if args.record:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from results_table import record_rows

        from common.checkpoints import run_dir_of

        run = ckpt["args"]
        # the generator the run samples with (the last of --compare-ema's variants)
        row = {k: v for k, v in results[-1][1].items() if k != "class_counts"}
        row.update(
            key=args.key or os.path.basename(os.path.normpath(run_dir_of(path))),
            script=ckpt.get("script"),
            dataset=run.get("dataset"),
            image_size=run.get("image_size"),
            steps=ckpt.get("step"),
            note=args.note,
            # the classifier is trained once per cache: numbers compare within one
            classifier=sha256(classifier_path())[:12],
        )
        given = argv if argv is not None else sys.argv[1:]
        cmd = "python tools/digits_metric.py " + " ".join(given)
        record_rows(args.record, [row], cmd)
    return results


if __name__ == "__main__":
    main()
