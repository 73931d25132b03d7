from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .._normalize import (
    activation_code,
    as_array,
    conv_geometry,
    depthwise_groups,
    layout_name,
    result_dtype,
    separable_operands,
)

__all__ = ["conv2d", "conv_output_shape", "depthwise_conv2d", "separable_conv2d"]


def conv2d(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1, *, layout: str = "NCHW",
           activation: Optional[str] = None) -> np.ndarray:
    """Reference 2-D convolution; see :func:`pyconv.conv2d` for the semantics.

    y[n, o, i, j] = bias[o] + sum over c, p, q of
        xpad[n, g*Cg + c, i*sh + p*dh, j*sw + q*dw] * w[o, c, p, q],  g = o // (C_out/groups)
    """
    return _conv2d("reference.conv2d", x, weight, bias, stride, padding, dilation, groups, layout,
                   activation)


def _conv2d(fn: str, x: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
            groups: Any, layout: str, activation: Optional[str]) -> np.ndarray:
    """conv2d's body; ``fn`` names the public function in error messages."""
    lay = layout_name(fn, layout)
    act = activation_code(fn, activation)
    xa = as_array(fn, "x", x)
    wa = as_array(fn, "weight", weight)
    ba = None if bias is None else as_array(fn, "bias", bias)
    geo = conv_geometry(fn, xa.shape, wa.shape, stride, padding, dilation, groups, lay)
    if ba is not None and ba.shape != (geo.oc,):
        raise ValueError(f"{fn}: bias must have shape ({geo.oc},) to match the weight, got {ba.shape}")
    dtype = result_dtype(xa, wa, ba)

    # Canonical form: batched NCHW input, OIHW weight.
    xa = xa.astype(dtype, copy=False)
    if not geo.batched:
        xa = xa[None]
    if lay == "NHWC":
        xa = xa.transpose(0, 3, 1, 2)
        wa = wa.transpose(3, 2, 0, 1)
    wa = wa.astype(dtype, copy=False)

    t, b, l, r = geo.pads
    xp = np.pad(xa, ((0, 0), (0, 0), (t, b), (l, r)))
    (sh, sw), (dh, dw) = geo.stride, geo.dilation
    g, cg, og = geo.groups, geo.c // geo.groups, geo.oc // geo.groups
    xg = xp.reshape(geo.n, g, cg, xp.shape[2], xp.shape[3])
    wg = wa.reshape(g, og, cg, geo.kh, geo.kw)

    # One matrix product per kernel tap (p, q): the (Og, Cg) slice of the
    # weight times the input pixels that tap meets for every output pixel,
    # (Cg, OH*OW), batched over images and groups (matmul uses BLAS).
    y = np.zeros((geo.n, g, og, geo.oh * geo.ow), dtype=dtype)
    for p in range(geo.kh):
        for q in range(geo.kw):
            rows = slice(p * dh, p * dh + (geo.oh - 1) * sh + 1, sh)
            cols = slice(q * dw, q * dw + (geo.ow - 1) * sw + 1, sw)
            patch = xg[:, :, :, rows, cols].reshape(geo.n, g, cg, geo.oh * geo.ow)
            y += np.matmul(wg[:, :, :, p, q], patch)
    y = y.reshape(geo.n, geo.oc, geo.oh, geo.ow)

    if ba is not None:
        y += ba.astype(dtype, copy=False)[None, :, None, None]
    if act >= 1:
        y = np.maximum(y, 0)
    if act == 2:
        y = np.minimum(y, 6)
    if lay == "NHWC":
        y = y.transpose(0, 2, 3, 1)
    if not geo.batched:
        y = y[0]
    return np.ascontiguousarray(y)


def conv_output_shape(input_shape: Any, weight_shape: Any, stride: Any = 1, padding: Any = 0,
                      dilation: Any = 1, groups: int = 1, *, layout: str = "NCHW") -> Tuple[int, ...]:
    """Shape of :func:`conv2d`'s result (the formula, from the shared normalisation)."""
    fn = "reference.conv_output_shape"
    return conv_geometry(fn, input_shape, weight_shape, stride, padding, dilation, groups,
                         layout_name(fn, layout)).out_shape


def depthwise_conv2d(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                     dilation: Any = 1, *, layout: str = "NCHW",
                     activation: Optional[str] = None) -> np.ndarray:
    """Reference depthwise convolution: :func:`conv2d` with groups = C_in."""
    fn = "reference.depthwise_conv2d"
    lay = layout_name(fn, layout)
    xa, wa = as_array(fn, "x", x), as_array(fn, "weight", weight)
    groups = depthwise_groups(fn, xa.shape, wa.shape, lay)
    return _conv2d(fn, xa, wa, bias, stride, padding, dilation, groups, lay, activation)


def separable_conv2d(x: Any, depthwise_weight: Any, pointwise_weight: Any, bias: Any = None,
                     stride: Any = 1, padding: Any = 0, dilation: Any = 1, *,
                     layout: str = "NCHW", activation: Optional[str] = None) -> np.ndarray:
    """Reference separable convolution: depthwise, then 1x1 with bias and activation."""
    fn = "reference.separable_conv2d"
    lay, xa, dw, pw, ba, groups = separable_operands(fn, x, depthwise_weight, pointwise_weight, bias,
                                                     layout)
    mid = _conv2d(fn, xa, dw, None, stride, padding, dilation, groups, lay, None)
    return _conv2d(fn, mid, pw, ba, 1, 0, 1, 1, lay, activation)
