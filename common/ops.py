"""Custom ops for the style-based generators, in pure PyTorch (CPU and CUDA, no compile step).

* ``upfirdn2d``: upsample by zero insertion, pad (negative pads crop), filter with a 2-D
  FIR filter (or a separable 1-D one), downsample by keeping every ``down``-th pixel. The
  resampling of StyleGAN2 (Karras et al. 2020, Sec. 2 and App. B: bilinear up/down-sampling
  as a [1, 3, 3, 1] filter) and ProGAN are built from it.
* ``bias_act``: bias + activation + gain + clamp in one call, as StyleGAN2's layers use it.

Both ops have cheap derivatives of every order, which R1 and the path-length penalty need
(they differentiate through gradients):

* the gradient of ``upfirdn2d`` is again an ``upfirdn2d`` (up and down swapped, the filter
  flipped, the pads recomputed), so ``_UpFirDn2d.backward`` calls the op itself and the
  second-order gradient is a third blur, with no grouped-convolution double backward
  and no zero-inserted intermediate kept for autograd. The forward runs the blur as a
  transposed convolution of stride ``up`` (no zeros are inserted) or a convolution of
  stride ``down`` (no discarded outputs are computed), one image plane at a time.
* ``bias_act`` is elementwise: torch's own ops (add, leaky_relu, mul, clamp) already
  have elementwise derivatives of every order, so it is a plain composition; what it adds
  is one call with the conventions of the authors' op (default gains, clamp after gain).

``upfirdn2d_ref`` and ``bias_act_ref`` are the plain reference implementations the tests
check the ops against (and ``tools/bench_ops.py`` times against): zero insertion, padding,
a grouped convolution and slicing, differentiated by autograd.
"""

import math

import torch
import torch.nn.functional as F

ACTIVATIONS = {  # name: (function(x, alpha), default alpha, default gain)
    "linear": (lambda x, a: x, 0.0, 1.0),
    "relu": (lambda x, a: F.relu(x), 0.0, math.sqrt(2)),
    "lrelu": (lambda x, a: F.leaky_relu(x, a), 0.2, math.sqrt(2)),
    "tanh": (lambda x, a: torch.tanh(x), 0.0, 1.0),
    "sigmoid": (lambda x, a: torch.sigmoid(x), 0.0, 1.0),
}


# ----------------------------------------------------------------------------- helpers
def setup_filter(f, device=None, normalize=True, separable=None):
    """A filter tensor (float32) from a list: [1, 3, 3, 1] -> normalised to sum 1.

    A 1-D filter is separable (applied along x, then y); ``separable=False`` turns it into
    the 2-D outer product.
    """
    f = torch.as_tensor([1.0] if f is None else f, dtype=torch.float32, device=device)
    if f.ndim == 1 and separable is False:
        f = f[:, None] * f[None, :]
    if normalize:
        f = f / f.sum()
    return f


def _parse(v):
    """int or (x, y) -> (x, y)."""
    return (v, v) if isinstance(v, int) else tuple(v)


def _pads(padding):
    """padding: int, (x, y) or (x0, x1, y0, y1) -> (x0, x1, y0, y1)."""
    if isinstance(padding, int):
        return (padding,) * 4
    if len(padding) == 2:
        return (padding[0], padding[0], padding[1], padding[1])
    return tuple(padding)


def _filter_size(f):
    return (f.shape[-1], f.shape[0] if f.ndim == 2 else f.shape[-1])  # (fw, fh)


def filter_output_size(in_h, in_w, f, up=1, down=1, padding=0):
    ux, uy = _parse(up)
    dx, dy = _parse(down)
    px0, px1, py0, py1 = _pads(padding)
    fw, fh = _filter_size(f)
    return (in_h * uy + py0 + py1 - fh) // dy + 1, (in_w * ux + px0 + px1 - fw) // dx + 1


# ----------------------------------------------------------------------------- upfirdn2d
def _upfirdn_pass(x, f2, ux, uy, dx, dy, px0, px1, py0, py1, flip):
    """One pass over x [N, C, H, W] with a 2-D filter f2 [fh, fw], as a depthwise convolution.

    Upsampling: zero insertion followed by correlation with the flipped filter is a
    transposed convolution of stride ``up`` with the filter itself, read at an offset of
    (filter size - 1 - pad0); the offsets become pads or crops. Downsampling: a
    convolution of stride ``down`` on the padded input.
    """
    c = x.shape[1]
    fh, fw = f2.shape
    if ux > 1 or uy > 1:
        w = f2.flip([0, 1]) if flip else f2
        x = F.conv_transpose2d(x, w[None, None].expand(c, 1, fh, fw), stride=(uy, ux), groups=c)
        x = F.pad(x, [px0 - fw + 1, px1 + ux - fw, py0 - fh + 1, py1 + uy - fh])
        return x[:, :, ::dy, ::dx] if dx > 1 or dy > 1 else x
    x = F.pad(x, [px0, px1, py0, py1])
    w = f2 if flip else f2.flip([0, 1])
    return F.conv2d(x, w[None, None].expand(c, 1, fh, fw), stride=(dy, dx), groups=c)


def _upfirdn2d_forward(x, f, up, down, padding, flip_filter, gain):
    ux, uy = up
    dx, dy = down
    px0, px1, py0, py1 = padding
    f = f.to(x.dtype)
    if f.ndim == 1:  # separable: along x, then along y, each with sqrt(gain)
        g = gain**0.5
        x = _upfirdn_pass(x, f[None, :] * g, ux, 1, dx, 1, px0, px1, 0, 0, flip_filter)
        return _upfirdn_pass(x, f[:, None] * g, 1, uy, 1, dy, 0, 0, py0, py1, flip_filter)
    return _upfirdn_pass(x, f * gain, ux, uy, dx, dy, px0, px1, py0, py1, flip_filter)


class _UpFirDn2d(torch.autograd.Function):
    """upfirdn2d with a gradient that is itself an upfirdn2d (this Function again), so
    gradients of every order are blurs. The filter is a constant (no gradient)."""

    @staticmethod
    def forward(ctx, x, f, up, down, padding, flip_filter, gain):
        y = _upfirdn2d_forward(x, f, up, down, padding, flip_filter, gain)
        ctx.save_for_backward(f)
        ctx.conf = (x.shape, y.shape, up, down, padding, flip_filter, gain)
        return y

    @staticmethod
    def backward(ctx, dy):
        (f,) = ctx.saved_tensors
        (_, _, ih, iw), (_, _, oh, ow), (ux, uy), (dx, dy_), (px0, px1, py0, py1), flip, gain = (
            ctx.conf
        )
        fw, fh = _filter_size(f)
        # The adjoint: upsample by `down`, filter with the flipped filter, downsample by `up`;
        # pads chosen so that the result has the input's shape (as the authors' upfirdn2d.py).
        pad = (
            fw - px0 - 1,
            iw * ux - ow * dx + px0 - ux + 1,
            fh - py0 - 1,
            ih * uy - oh * dy_ + py0 - uy + 1,
        )
        dx_in = _UpFirDn2d.apply(dy, f, (dx, dy_), (ux, uy), pad, not flip, gain)
        return dx_in, None, None, None, None, None, None


def upfirdn2d(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
    """Upsample (zero insertion), pad, FIR-filter and downsample a batch x [N, C, H, W].

    f: a 2-D filter [fh, fw] or a separable 1-D one [fw] (see ``setup_filter``); None is
    the identity. up, down: int or (x, y). padding: int, (x, y) or (x0, x1, y0, y1);
    negative values crop. gain: the filter is scaled by it (e.g. up**2 keeps the mean of an
    upsampled image). flip_filter: correlate instead of convolve.
    """
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    return _UpFirDn2d.apply(
        x, f, _parse(up), _parse(down), _pads(padding), bool(flip_filter), float(gain)
    )


def upfirdn2d_ref(x, f, up=1, down=1, padding=0, flip_filter=False, gain=1.0):
    """The plain reference: zero insertion, pad/crop, grouped convolution, slicing; autograd
    differentiates it (its second derivative goes through grouped-conv double backward)."""
    if f is None:
        f = torch.ones(1, 1, dtype=torch.float32, device=x.device)
    (ux, uy), (dx, dy), (px0, px1, py0, py1) = _parse(up), _parse(down), _pads(padding)
    n, c, h, w = x.shape
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, ux - 1, 0, 0, 0, uy - 1])
    x = x.reshape(n, c, h * uy, w * ux)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    f = (f * gain ** (f.ndim / 2)).to(x.dtype)
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    if f.ndim == 2:
        x = F.conv2d(x, f[None, None].repeat(c, 1, 1, 1), groups=c)
    else:
        x = F.conv2d(x, f[None, None, None].repeat(c, 1, 1, 1), groups=c)
        x = F.conv2d(x, f[None, None, :, None].repeat(c, 1, 1, 1), groups=c)
    return x[:, :, ::dy, ::dx]


def upsample2d(x, f, up=2, padding=0, flip_filter=False, gain=1.0, impl=upfirdn2d):
    """Upsample by ``up`` with the filter; the output is ``up`` times larger (plus padding)."""
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _pads(padding)
    pad = (
        px0 + (fw + up - 1) // 2,
        px1 + (fw - up) // 2,
        py0 + (fh + up - 1) // 2,
        py1 + (fh - up) // 2,
    )
    return impl(x, f, up=up, padding=pad, flip_filter=flip_filter, gain=gain * up * up)


def downsample2d(x, f, down=2, padding=0, flip_filter=False, gain=1.0, impl=upfirdn2d):
    """Filter and downsample by ``down``; the output is ``down`` times smaller (plus padding)."""
    fw, fh = _filter_size(f)
    px0, px1, py0, py1 = _pads(padding)
    pad = (
        px0 + (fw - down + 1) // 2,
        px1 + (fw - down) // 2,
        py0 + (fh - down + 1) // 2,
        py1 + (fh - down) // 2,
    )
    return impl(x, f, down=down, padding=pad, flip_filter=flip_filter, gain=gain)


# ----------------------------------------------------------------------------- bias_act
def bias_act(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """act(x + b) * gain, clamped to [-clamp, clamp] (clamp None: no clamp).

    b: a bias of size x.shape[dim] broadcast along ``dim``. act: linear, relu, lrelu, tanh,
    sigmoid. alpha: lrelu's negative slope (default 0.2). gain: default sqrt(2) for relu and
    lrelu (He et al. 2015), 1 otherwise.
    """
    fn, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = def_alpha if alpha is None else float(alpha)
    gain = def_gain if gain is None else float(gain)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]).to(x.dtype)
    y = fn(x, alpha)
    if gain != 1:
        y = y * gain
    return y.clamp(-clamp, clamp) if clamp is not None and clamp >= 0 else y


def bias_act_ref(x, b=None, dim=1, act="linear", alpha=None, gain=None, clamp=None):
    """The reference, written out with torch.where (no torch activation functions)."""
    _, def_alpha, def_gain = ACTIVATIONS[act]
    alpha = def_alpha if alpha is None else float(alpha)
    gain = def_gain if gain is None else float(gain)
    if b is not None:
        x = x + b.reshape([-1 if i == dim else 1 for i in range(x.ndim)]).to(x.dtype)
    if act in ("relu", "lrelu"):
        y = torch.where(x > 0, x, x * (0.0 if act == "relu" else alpha))
    else:
        y = {
            "linear": x,
            "tanh": (1 - torch.exp(-2 * x)) / (1 + torch.exp(-2 * x)),
            "sigmoid": 1 / (1 + torch.exp(-x)),
        }[act]
    y = y * gain
    if clamp is not None and clamp >= 0:
        y = torch.where(
            y > clamp,
            torch.full_like(y, clamp),
            torch.where(y < -clamp, torch.full_like(y, -clamp), y),
        )
    return y
