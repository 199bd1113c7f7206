"""Time common/ops.py's custom-gradient ops against their plain references.

For each case the op runs three ways, each timed as the median of ``--repeat`` runs:

* forward: y = op(x)
* backward: y = op(x); y.backward(r)                     (one gradient, as in a plain step)
* double backward: g = grad(<op(x)^2, r>, x, create_graph=True); |g|^2 .backward()
  (what R1 and the path-length penalty do: differentiate through a gradient)

``ratio`` = reference time / custom time (above 1: the custom op is faster).

    python tools/bench_ops.py  # CPU, the shapes of a 32x32 StyleGAN2 at width 64
    python tools/bench_ops.py --device cuda --batch 32 --channels 256 --size 64
    python tools/bench_ops.py --json ops.json
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from common import ops  # noqa: E402


def timed(fn, repeat, device):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def modes(op, x, r):
    def forward():
        with torch.no_grad():
            op(x)

    def backward():
        xx = x.detach().requires_grad_(True)
        op(xx).backward(r)

    def double_backward():
        xx = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad((op(xx).square() * r).sum(), xx, create_graph=True)
        g.square().sum().backward()

    return {"forward": forward, "backward": backward, "double backward": double_backward}


def cases(n, c, s, device, dtype):
    f = ops.setup_filter([1, 3, 3, 1], device=device)
    x = torch.randn(n, c, s, s, device=device, dtype=dtype)
    xl = torch.randn(n, c, s // 2, s // 2, device=device, dtype=dtype)
    b = torch.randn(c, device=device, dtype=dtype)
    yield (
        "upsample2d (G's skip: 2x, [1,3,3,1])",
        lambda t: ops.upsample2d(t, f),
        lambda t: ops.upsample2d(t, f, impl=ops.upfirdn2d_ref),
        xl,
    )
    yield (
        "blur after 3x3 transposed conv (pad 1)",
        lambda t: ops.upfirdn2d(t, f, padding=1, gain=4),
        lambda t: ops.upfirdn2d_ref(t, f, padding=1, gain=4),
        x,
    )
    yield (
        "blur before 3x3 stride-2 conv (pad 2)",
        lambda t: ops.upfirdn2d(t, f, padding=2),
        lambda t: ops.upfirdn2d_ref(t, f, padding=2),
        x,
    )
    yield (
        "downsample2d (D's skip: /2)",
        lambda t: ops.downsample2d(t, f),
        lambda t: ops.downsample2d(t, f, impl=ops.upfirdn2d_ref),
        x,
    )
    yield (
        "bias_act lrelu, clamp 256",
        lambda t: ops.bias_act(t, b, act="lrelu", clamp=256),
        lambda t: ops.bias_act_ref(t, b, act="lrelu", clamp=256),
        x,
    )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch", type=int, default=32, help="StyleGAN2's minibatch (paper: 32)")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--size", type=int, default=32, help="resolution of the full-size tensors")
    p.add_argument(
        "--dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"]
    )
    p.add_argument("--repeat", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    results = []
    print(
        f"{args.device}, {args.dtype}, batch {args.batch}, {args.channels} channels, "
        f"{args.size}x{args.size}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'op':42s} {'mode':16s} {'custom ms':>10s} {'reference ms':>13s} {'ratio':>6s}")
    for name, custom, ref, x in cases(args.batch, args.channels, args.size, device, dtype):
        with torch.no_grad():
            r = torch.randn_like(custom(x))
            err = (custom(x).float() - ref(x).float()).abs().max().item()
        for mode in ("forward", "backward", "double backward"):
            tc = timed(modes(custom, x, r)[mode], args.repeat, device)
            tr = timed(modes(ref, x, r)[mode], args.repeat, device)
            results.append(
                {
                    "op": name,
                    "mode": mode,
                    "custom_ms": tc * 1e3,
                    "reference_ms": tr * 1e3,
                    "ratio": tr / tc,
                    "max_abs_diff": err,
                }
            )
            print(
                f"{name:42s} {mode:16s} {tc * 1e3:10.2f} {tr * 1e3:13.2f} {tr / tc:6.2f}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)
    return results


if __name__ == "__main__":
    main()
