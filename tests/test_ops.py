"""common/ops.py against plain reference implementations: values, gradients, and
gradcheck/gradgradcheck in float64 (the second order is what R1 and path length use)."""

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from conftest import load_script
from common import ops

FILTERS = {
    "separable [1,3,3,1]": lambda: ops.setup_filter([1, 3, 3, 1]),
    "2-D [1,3,3,1]": lambda: ops.setup_filter([1, 3, 3, 1], separable=False),
    "random 3x4": lambda: torch.randn(3, 4, generator=torch.Generator().manual_seed(1)),
    "random 1-D 5": lambda: torch.randn(5, generator=torch.Generator().manual_seed(2)),
}
CONFIGS = [  # (up, down, padding)
    (1, 1, 0),
    (1, 1, (2, 1, 0, 3)),
    (2, 1, (2, 1, 2, 1)),
    (1, 2, 2),
    (2, 2, 1),
    ((2, 1), (1, 2), (-1, 2, 1, -1)),
    (3, 1, 1),
]


@pytest.mark.parametrize("fname", FILTERS)
@pytest.mark.parametrize("up,down,padding", CONFIGS)
@pytest.mark.parametrize("flip", [False, True])
def test_upfirdn2d_values_and_gradients(fname, up, down, padding, flip):
    f = FILTERS[fname]().double()
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64, requires_grad=True)
    y = ops.upfirdn2d(x, f, up, down, padding, flip, gain=2.0)
    r = ops.upfirdn2d_ref(x, f, up, down, padding, flip, gain=2.0)
    assert y.shape == r.shape == (2, 3, *ops.filter_output_size(9, 7, f, up, down, padding))
    torch.testing.assert_close(y, r)
    g = torch.randn_like(y)
    (gy,) = torch.autograd.grad(y, x, g)
    (gr,) = torch.autograd.grad(r, x, g)
    torch.testing.assert_close(gy, gr)


@pytest.mark.parametrize(
    "up,down,padding",
    [(1, 1, 1), (2, 1, (2, 1, 2, 1)), (1, 2, 2), ((2, 1), (1, 2), (-1, 2, 1, -1))],
)
def test_upfirdn2d_gradcheck_and_gradgradcheck(up, down, padding):
    x = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    for f in (ops.setup_filter([1, 3, 3, 1]).double(), torch.randn(3, 4, dtype=torch.float64)):
        fn = lambda t: ops.upfirdn2d(t, f, up, down, padding, gain=2.0)  # noqa: E731
        assert gradcheck(fn, (x,)) and gradgradcheck(fn, (x,))


def test_upfirdn2d_second_order_is_the_custom_op():
    """The gradient of the gradient goes through _UpFirDn2d again, not grouped-conv
    double backward."""
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    (g,) = torch.autograd.grad(ops.upsample2d(x, f).square().sum(), x, create_graph=True)
    names, stack, seen = set(), [g.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        names.add(type(fn).__name__)
        stack += [n for n, _ in fn.next_functions]
    assert any("UpFirDn2d" in n for n in names) and not any("Convolution" in n for n in names), (
        names
    )


def test_resample_helpers_and_gain():
    f = ops.setup_filter([1, 3, 3, 1])
    x = torch.ones(1, 1, 8, 8)
    up = ops.upsample2d(x, f)
    assert up.shape == (1, 1, 16, 16) and torch.allclose(
        up[..., 2:-2, 2:-2], torch.ones(())
    )  # gain up^2 keeps the mean
    assert ops.downsample2d(x, f).shape == (1, 1, 4, 4)
    assert torch.equal(ops.upfirdn2d(x, None), x)
    torch.testing.assert_close(ops.upsample2d(x, f), ops.upsample2d(x, f, impl=ops.upfirdn2d_ref))


@pytest.mark.parametrize("act", ["linear", "relu", "lrelu", "tanh", "sigmoid"])
@pytest.mark.parametrize("clamp", [None, 0.8])
def test_bias_act(act, clamp):
    x = torch.randn(3, 4, 2, 2, dtype=torch.float64)
    x = (x + 0.05 * x.sign()).requires_grad_(True)  # away from the kinks, for finite differences
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    y, r = ops.bias_act(x, b, act=act, clamp=clamp), ops.bias_act_ref(x, b, act=act, clamp=clamp)
    torch.testing.assert_close(y, r)
    g = torch.randn_like(y)
    for a, c in zip(torch.autograd.grad(y, (x, b), g), torch.autograd.grad(r, (x, b), g)):
        torch.testing.assert_close(a, c)
    fn = lambda t, bb: ops.bias_act(t, bb, act=act, clamp=clamp)  # noqa: E731
    assert gradcheck(fn, (x, b)) and gradgradcheck(fn, (x, b))


def test_bias_act_defaults():
    x = torch.tensor([-1.0, 2.0, 300.0])
    torch.testing.assert_close(
        ops.bias_act(x, act="lrelu"), torch.tensor([-0.2, 2.0, 300.0]) * 2**0.5
    )
    torch.testing.assert_close(
        ops.bias_act(x, act="lrelu", clamp=256), torch.tensor([-0.2 * 2**0.5, 2 * 2**0.5, 256.0])
    )
    torch.testing.assert_close(
        ops.bias_act(x.view(1, 3), torch.tensor([1.0, 1.0, 1.0]), act="relu", gain=1),
        torch.tensor([[0.0, 3.0, 301.0]]),
    )


def test_stylegan2_fallback_matches_common_ops():
    """stylegan2.py copied alone uses its own plain versions of the ops: the same values."""
    import types

    m = load_script("stylegan2")
    src = open(m.__file__).read()
    start, end = src.index("except ImportError:"), src.index('SCRIPT = "stylegan2"')
    fallback = types.ModuleType("fallback")
    exec(
        "import math, torch\nimport torch.nn.functional as F\nif True:\n    pass\n"
        + src[start:end].replace("except ImportError:", "if True:", 1),
        fallback.__dict__,
    )
    f = ops.setup_filter([1, 3, 3, 1])
    assert torch.equal(fallback.setup_filter([1, 3, 3, 1]), f)
    x = torch.randn(2, 3, 8, 8)
    for kw in (
        {"up": 2, "padding": (2, 1, 2, 1), "gain": 4},
        {"padding": 1, "gain": 4},
        {"padding": 2},
        {"down": 2, "padding": 1},
    ):
        torch.testing.assert_close(fallback.upfirdn2d(x, f, **kw), ops.upfirdn2d(x, f, **kw))
    b = torch.randn(3)
    torch.testing.assert_close(
        fallback.bias_act(x, b, act="lrelu", clamp=0.5), ops.bias_act(x, b, act="lrelu", clamp=0.5)
    )
    torch.testing.assert_close(fallback.bias_act(x, b, gain=0.7), ops.bias_act(x, b, gain=0.7))
