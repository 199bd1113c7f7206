"""common/evaluation.py's measures of diversity within each class (recall, within-class
spread): they see the collapse that FD and coverage miss (every sample of a digit the same
image, all ten digits covered), in the digits metric, the protocol and --eval-every; and the
digits metric's own sanity (real digits against real digits)."""

import math
import os
import time

import torch

from conftest import load_script, tiny_args


def one_per_class(x, y, n):
    """``n`` samples of a generator that draws one fixed real digit per class: all ten
    digits covered, no variety within any."""
    fixed = torch.stack([x[(y == c).nonzero()[0, 0]] for c in range(10)])
    return fixed[torch.arange(n) % 10]


def test_recall_and_spread_see_a_collapse_within_each_class():
    """Half of the real digits score recall near 0.95 and a within-class spread near 1
    against all of them; one fixed digit per class covers all ten with full confidence but
    scores 0 on both (to within the ten real digits it copies)."""
    from common import evaluation as ev

    net = ev.classifier()
    x, y = ev.real_digits()
    reference = ev.features_and_probs(net, x)[0]
    half = x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:900]]
    t0 = time.perf_counter()
    real = ev.score(half, net, reference)
    seconds = time.perf_counter() - t0
    const = ev.score(one_per_class(x, y, 900), net, reference)
    assert real["recall"] > 0.85 and 0.85 < real["within_class_spread"] < 1.15, real
    assert real["coverage"] == 10 and const["coverage"] == 10 and const["confidence"] > 0.95
    assert const["recall"] < 0.02 and const["within_class_spread"] < 0.01, const
    # nearly the same image per class (sagan's collapse): still far below the real digits
    noisy = (one_per_class(x, y, 900) + 0.1 * torch.randn(900, 1, 32, 32)).clamp(-1, 1)
    near = ev.score(noisy, net, reference)
    assert near["coverage"] == 10 and near["recall"] < 0.1 and near["within_class_spread"] < 0.3
    print(
        f"real half: recall {real['recall']:.3f}, spread {real['within_class_spread']:.3f}; "
        f"one per class: {const['recall']:.4f}, {const['within_class_spread']:.3f}; "
        f"score() of 900 images: {seconds:.1f} s"
    )


def test_knn_recall_is_torch_fidelitys():
    from torch_fidelity.metric_prc import calculate_precision_recall_full

    from common.evaluation import knn_recall

    g = torch.Generator().manual_seed(0)
    fake, real = torch.randn(700, 8, generator=g) * 0.7, torch.randn(600, 8, generator=g)
    _, recall = calculate_precision_recall_full(fake.double(), real.double(), 3, 10000)
    assert abs(knn_recall(fake.numpy(), real.numpy()) - recall) < 1e-6  # theirs: float32
    assert knn_recall(real, real) == 1.0 and knn_recall(fake[:1].repeat(5, 1), real) == 0.0


def test_within_class_spread_is_a_ratio_over_the_covered_classes():
    from common.evaluation import within_class_spread

    g = torch.Generator().manual_seed(0)
    real = torch.randn(1000, 16, generator=g)
    real_classes = torch.arange(1000) % 10
    fake_classes = torch.arange(500) % 5  # five classes covered
    fake = 0.5 * real[:500] + 3.0  # half the spread, shifted: the shift does not count
    spread = within_class_spread(fake, fake_classes, real, real_classes)
    assert abs(spread - 0.5) < 0.05, spread
    # one stray sample of a sixth class (below a fifth of its fair share) is not a class
    stray = torch.cat([fake_classes[:-1], torch.tensor([7])])
    assert abs(within_class_spread(fake, stray, real, real_classes) - spread) < 0.01
    assert math.isnan(within_class_spread(fake[:1], fake_classes[:1], real, real_classes))


def test_protocol_and_eval_every_log_the_spread(tmp_path, monkeypatch):
    """evaluate() (tools/evaluate.py, compare.py, --eval-every) reports within_class_spread
    with the digits extractor, and a run with --eval-every logs it as eval_within_class_spread."""
    from PIL import Image

    from common import evaluation as ev
    from common.run import read_metrics

    x, y = ev.real_digits()
    folder = tmp_path / "one_per_class"
    os.makedirs(folder)
    for i, im in enumerate(one_per_class(x, y, 200)):
        Image.fromarray(ev.to_uint8(im[0]).numpy()).save(folder / f"{i:04d}.png")
    res = ev.evaluate(str(folder), "digits", num_samples=200, metrics=("prc",))
    m = res["metrics"]
    assert m["coverage"] == 10 and m["within_class_spread"] < 0.01 and m["recall"] < 0.02, m
    assert "within_class_spread" in res["protocol"]

    monkeypatch.chdir(tmp_path)
    dcgan = load_script("dcgan")
    dcgan.main(
        [
            *tiny_args(dcgan),
            "--steps",
            "2",
            "--eval-every",
            "2",
            "--eval-samples",
            "20",
            "--out",
            "ev",
        ]
    )
    evals = [r for r in read_metrics("ev/metrics.jsonl") if "eval_fid" in r]
    assert len(evals) == 1 and evals[0]["eval_within_class_spread"] >= 0, evals


def test_digits_metric_sanity():
    """Real digits score near zero; a generator stuck on one digit scores badly."""
    from common import evaluation as dm

    net = dm.classifier()
    x, y = dm.real_digits()
    ref = dm.features_and_probs(net, x)[0]
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    real = dm.score(x[perm[:900]], net, ref)
    ones = dm.score(x[y == 1][torch.arange(900) % int((y == 1).sum())], net, ref)
    noise = dm.score(torch.rand(900, 1, 32, 32) * 2 - 1, net, ref)
    assert real["fd"] < 10 and real["coverage"] == 10 and real["confidence"] > 0.95
    assert (
        ones["coverage"] <= 2
        and ones["class_counts"][1] > 0.8 * 900
        and ones["fd"] > 10 * real["fd"]
    )
    assert noise["fd"] > ones["fd"] or noise["coverage"] < 10


def test_digits_reference_is_at_the_runs_size():
    """A run at 16x16 is scored against real digits at 16x16: real against real is then
    near 0, where against the 32x32 reference the resizing alone costs an FD over 10."""
    from common import evaluation as dm

    from common.scripts import load_script

    net = dm.classifier()
    module = load_script("dcgan")
    x16 = dm.real_digits(16)[0]
    assert torch.equal(dm.digits_reference(module, {"image_size": 16}), x16)
    ref16 = dm.features_and_probs(net, dm.digits_reference(module, {"image_size": 16}))[0]
    ref32 = dm.features_and_probs(net, dm.real_digits(32)[0])[0]
    assert dm.score(x16, net, ref16)["fd"] < 1e-3 < 10 < dm.score(x16, net, ref32)["fd"]
