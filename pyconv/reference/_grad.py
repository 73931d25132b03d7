"""Reference gradients of conv2d and the transposed convolution.

Each is the exact adjoint of :func:`pyconv.reference.conv2d`'s tap-by-tap
formula: the forward adds ``w[:, :, p, q] @ patch(p, q)`` for every tap, so
the input gradient scatters ``w[:, :, p, q]^T @ grad_out`` back onto the same
strided views of a zero padded input, and the weight gradient contracts
``grad_out`` with the same views.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

from .._normalize import (
    ConvGeometry,
    as_array,
    conv_geometry,
    grad_out_check,
    layout_name,
    result_dtype,
    transpose_operands,
)

__all__ = ["conv2d_grad_bias", "conv2d_grad_input", "conv2d_grad_weight", "conv_transpose2d"]


def _canonical_grad_out(geo: ConvGeometry, gy: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """grad_out as (N, groups, OCg, OH*OW) in ``dtype``."""
    gy = gy.astype(dtype, copy=False)
    if not geo.batched:
        gy = gy[None]
    if geo.layout == "NHWC":
        gy = gy.transpose(0, 3, 1, 2)
    g = geo.groups
    return gy.reshape(geo.n, g, geo.oc // g, geo.oh * geo.ow)


def _tap_slices(geo: ConvGeometry, p: int, q: int) -> Tuple[slice, slice]:
    """Rows and columns of the padded input that tap (p, q) meets."""
    (sh, sw), (dh, dw) = geo.stride, geo.dilation
    rows = slice(p * dh, p * dh + (geo.oh - 1) * sh + 1, sh)
    cols = slice(q * dw, q * dw + (geo.ow - 1) * sw + 1, sw)
    return rows, cols


def _grad_input(fn: str, gy: np.ndarray, wa: np.ndarray, geo: ConvGeometry) -> np.ndarray:
    dtype = result_dtype(gy, wa)
    g, cg, og = geo.groups, geo.c // geo.groups, geo.oc // geo.groups
    gyc = _canonical_grad_out(geo, gy, dtype)
    w = wa.astype(dtype, copy=False)
    if geo.layout == "NHWC":
        w = w.transpose(3, 2, 0, 1)
    wg = w.reshape(g, og, cg, geo.kh, geo.kw)
    t, b, l, r = geo.pads
    dxp = np.zeros((geo.n, g, cg, geo.h + t + b, geo.w + l + r), dtype=dtype)
    for p in range(geo.kh):
        for q in range(geo.kw):
            rows, cols = _tap_slices(geo, p, q)
            # (g, Cg, Og) @ (N, g, Og, P) -> (N, g, Cg, P)
            contrib = np.matmul(wg[:, :, :, p, q].transpose(0, 2, 1), gyc)
            dxp[:, :, :, rows, cols] += contrib.reshape(geo.n, g, cg, geo.oh, geo.ow)
    dx = dxp[:, :, :, t:t + geo.h, l:l + geo.w].reshape(geo.n, geo.c, geo.h, geo.w)
    if geo.layout == "NHWC":
        dx = dx.transpose(0, 2, 3, 1)
    if not geo.batched:
        dx = dx[0]
    return np.ascontiguousarray(dx)


def conv2d_grad_input(grad_out: Any, weight: Any, input_shape: Any, stride: Any = 1, padding: Any = 0,
                      dilation: Any = 1, groups: int = 1, *, layout: str = "NCHW") -> np.ndarray:
    """Reference gradient of conv2d with respect to its input (shape ``input_shape``)."""
    fn = "reference.conv2d_grad_input"
    lay = layout_name(fn, layout)
    gy = as_array(fn, "grad_out", grad_out)
    wa = as_array(fn, "weight", weight)
    geo = conv_geometry(fn, input_shape, wa.shape, stride, padding, dilation, groups, lay)
    grad_out_check(fn, gy.shape, geo)
    return _grad_input(fn, gy, wa, geo)


def conv2d_grad_weight(x: Any, grad_out: Any, weight_shape: Any, stride: Any = 1, padding: Any = 0,
                       dilation: Any = 1, groups: int = 1, *, layout: str = "NCHW") -> np.ndarray:
    """Reference gradient of conv2d with respect to its weight (shape ``weight_shape``)."""
    fn = "reference.conv2d_grad_weight"
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    gy = as_array(fn, "grad_out", grad_out)
    geo = conv_geometry(fn, xa.shape, weight_shape, stride, padding, dilation, groups, lay)
    grad_out_check(fn, gy.shape, geo)
    dtype = result_dtype(xa, gy)
    g, cg, og = geo.groups, geo.c // geo.groups, geo.oc // geo.groups
    gyc = _canonical_grad_out(geo, gy, dtype)
    xc = xa.astype(dtype, copy=False)
    if not geo.batched:
        xc = xc[None]
    if lay == "NHWC":
        xc = xc.transpose(0, 3, 1, 2)
    t, b, l, r = geo.pads
    xp = np.pad(xc, ((0, 0), (0, 0), (t, b), (l, r)))
    xg = xp.reshape(geo.n, g, cg, xp.shape[2], xp.shape[3])
    dw = np.zeros((g, og, cg, geo.kh, geo.kw), dtype=dtype)
    for p in range(geo.kh):
        for q in range(geo.kw):
            rows, cols = _tap_slices(geo, p, q)
            patch = xg[:, :, :, rows, cols].reshape(geo.n, g, cg, geo.oh * geo.ow)
            # sum over images of (Og, P) @ (P, Cg)
            dw[:, :, :, p, q] = np.matmul(gyc, patch.transpose(0, 1, 3, 2)).sum(axis=0)
    dw = dw.reshape(geo.oc, cg, geo.kh, geo.kw)
    if lay == "NHWC":
        dw = dw.transpose(2, 3, 1, 0)
    return np.ascontiguousarray(dw)


def conv2d_grad_bias(grad_out: Any, *, layout: str = "NCHW") -> np.ndarray:
    """Reference gradient of conv2d with respect to its bias: grad_out summed
    over images and pixels."""
    fn = "reference.conv2d_grad_bias"
    lay = layout_name(fn, layout)
    gy = as_array(fn, "grad_out", grad_out)
    if gy.ndim not in (3, 4):
        raise ValueError(f"{fn}: grad_out must be 4-D or 3-D, got shape {gy.shape}")
    dtype = result_dtype(gy)
    axes = tuple(i for i in range(gy.ndim) if i != (gy.ndim - 3 if lay == "NCHW" else gy.ndim - 1))
    return gy.astype(dtype, copy=False).sum(axis=axes)


def conv_transpose2d(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                     output_padding: Any = 0, dilation: Any = 1, groups: int = 1, *,
                     layout: str = "NCHW", output_size: Any = None) -> np.ndarray:
    """Reference transposed convolution: the input gradient of the conv2d
    whose output has x's shape, plus the bias."""
    fn = "reference.conv_transpose2d"
    lay, xa, wa, ba, geo, dtype = transpose_operands(fn, x, weight, bias, stride, padding, output_padding,
                                                     dilation, groups, layout, output_size)
    # x is the conv2d's output; when output_padding >= stride that output is
    # larger than x, and the rows/columns x lacks contribute nothing.
    extra_h = geo.oh - (xa.shape[-2] if lay == "NCHW" else xa.shape[-3])
    extra_w = geo.ow - (xa.shape[-1] if lay == "NCHW" else xa.shape[-2])
    if extra_h or extra_w:
        widths = [(0, 0)] * xa.ndim
        hw = (xa.ndim - 2, xa.ndim - 1) if lay == "NCHW" else (xa.ndim - 3, xa.ndim - 2)
        widths[hw[0]], widths[hw[1]] = (0, extra_h), (0, extra_w)
        xa = np.pad(xa, widths)
    y = _grad_input(fn, xa, wa, geo)
    if ba is not None:
        y += ba.reshape((-1, 1, 1) if lay == "NCHW" else (-1,))
    return y
