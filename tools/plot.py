"""Curves of a run: every number in its metrics.jsonl against the step, as one PNG.

    python tools/plot.py runs/began/<run>                 # -> runs/began/<run>/curves.png
    python tools/plot.py runs/wgan/<run> --keys wasserstein g_loss --out w.png

One panel per logged quantity (losses, D(x), the Wasserstein estimate, BEGAN's k and M,
evaluation metrics, img/s), in the order they first appear; a light raw line and a
moving average when the curve is noisy. Needs matplotlib (``pip install matplotlib``).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common.images import plot_curves  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a run directory (or its metrics.jsonl)")
    p.add_argument("--keys", nargs="+", default=None, help="only these quantities (default: all)")
    p.add_argument("--out", default=None, help="PNG to write (default: <run>/curves.png)")
    args = p.parse_args(argv)
    try:
        path = os.path.join(args.run, "metrics.jsonl") if os.path.isdir(args.run) else args.run
        if not os.path.isfile(path):
            raise KeyError(f"no metrics.jsonl at {args.run!r}; give a run directory")
        out = plot_curves(args.run, args.out, args.keys)
    except ImportError:
        print("plot: error: matplotlib is not installed; pip install matplotlib", file=sys.stderr)
        sys.exit(1)
    except KeyError as e:
        print(f"plot: error: {e.args[0]}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
