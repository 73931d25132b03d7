"""Reference gradients of conv2d and the transposed convolution.

Each is the exact adjoint of :func:`pyconv.reference.conv2d`'s tap-by-tap
formula: the forward adds ``w[:, :, p, q] @ patch(p, q)`` for every tap, so
the input gradient scatters ``w[:, :, p, q]^T @ grad_out`` back onto the same
strided views of a zero padded input, and the weight gradient contracts
``grad_out`` with the same views.
"""

from __future__ import annotations

from typing import Optional, SupportsIndex, Tuple

import numpy as np

from .._typing import ArrayInput, ExplicitPadding, FloatArray, IntOrPair, Layout, Padding, Shape
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


def conv2d_grad_input(grad_out: ArrayInput, weight: ArrayInput, input_shape: Shape, stride: IntOrPair = 1,
                      padding: Padding = 0, dilation: IntOrPair = 1, groups: SupportsIndex = 1, *,
                      layout: Layout = "NCHW") -> FloatArray:
    """Reference gradient of conv2d with respect to its input (shape ``input_shape``).

    The exact adjoint of :func:`pyconv.reference.conv2d`: for every tap,
    ``w[:, :, p, q]^T @ grad_out`` is added onto the strided view of a
    zero-padded input that the tap read, and the padding is cut off.

    Parameters
    ----------
    grad_out : array_like
        Of the forward output's shape.
    weight : array_like
        The forward weight, in the layout's weight format.
    input_shape : sequence of int
        The forward input's full shape in the layout's order.
    stride, padding, dilation, groups, layout : optional
        The forward call's, as in :func:`pyconv.conv2d`.

    Returns
    -------
    ndarray
        Shape ``input_shape``; dtype by conv2d's rule over ``grad_out`` and
        ``weight``.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.conv2d_grad_input`.

    See Also
    --------
    pyconv.conv2d_grad_input

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> w = np.arange(4.0).reshape(1, 1, 2, 2)
    >>> pyconv.reference.conv2d_grad_input(np.ones((1, 1, 2, 2)), w, (1, 1, 3, 3))[0, 0]
    array([[0., 1., 1.],
           [2., 6., 4.],
           [2., 5., 3.]])
    """
    fn = "reference.conv2d_grad_input"
    lay = layout_name(fn, layout)
    gy = as_array(fn, "grad_out", grad_out)
    wa = as_array(fn, "weight", weight)
    geo = conv_geometry(fn, input_shape, wa.shape, stride, padding, dilation, groups, lay)
    grad_out_check(fn, gy.shape, geo)
    return _grad_input(fn, gy, wa, geo)


def conv2d_grad_weight(x: ArrayInput, grad_out: ArrayInput, weight_shape: Shape, stride: IntOrPair = 1,
                       padding: Padding = 0, dilation: IntOrPair = 1, groups: SupportsIndex = 1, *,
                       layout: Layout = "NCHW") -> FloatArray:
    """Reference gradient of conv2d with respect to its weight (shape ``weight_shape``).

    For every tap ``(p, q)``, ``grad_out`` contracted with the strided view
    of the padded input that the tap read, summed over images.

    Parameters
    ----------
    x : array_like
        The forward input.
    grad_out : array_like
        Of the forward output's shape.
    weight_shape : sequence of int
        The weight's full shape in the layout's weight format.
    stride, padding, dilation, groups, layout : optional
        The forward call's, as in :func:`pyconv.conv2d`.

    Returns
    -------
    ndarray
        Shape ``weight_shape``; dtype by conv2d's rule over ``x`` and
        ``grad_out``.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.conv2d_grad_weight`.

    See Also
    --------
    pyconv.conv2d_grad_weight

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.arange(9.0).reshape(1, 1, 3, 3)
    >>> pyconv.reference.conv2d_grad_weight(x, np.ones((1, 1, 2, 2)), (1, 1, 2, 2))[0, 0]
    array([[ 8., 12.],
           [20., 24.]])
    """
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


def conv2d_grad_bias(grad_out: ArrayInput, *, layout: Layout = "NCHW") -> FloatArray:
    """Reference gradient of conv2d with respect to its bias: grad_out summed
    over images and pixels.

    Parameters
    ----------
    grad_out : array_like
        ``(N, C_out, H_out, W_out)`` (NCHW) or ``(N, H_out, W_out, C_out)``
        (NHWC), or 3-D.
    layout : {"NCHW", "NHWC"}, default "NCHW"

    Returns
    -------
    ndarray
        ``(C_out,)``.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.conv2d_grad_bias`.

    See Also
    --------
    pyconv.conv2d_grad_bias

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> pyconv.reference.conv2d_grad_bias(np.ones((2, 3, 4, 4)))
    array([32., 32., 32.])
    """
    fn = "reference.conv2d_grad_bias"
    lay = layout_name(fn, layout)
    gy = as_array(fn, "grad_out", grad_out)
    if gy.ndim not in (3, 4):
        raise ValueError(f"{fn}: grad_out must be 4-D or 3-D, got shape {gy.shape}")
    dtype = result_dtype(gy)
    axes = tuple(i for i in range(gy.ndim) if i != (gy.ndim - 3 if lay == "NCHW" else gy.ndim - 1))
    return gy.astype(dtype, copy=False).sum(axis=axes)


def conv_transpose2d(x: ArrayInput, weight: ArrayInput, bias: Optional[ArrayInput] = None,
                     stride: IntOrPair = 1, padding: ExplicitPadding = 0, output_padding: IntOrPair = 0,
                     dilation: IntOrPair = 1, groups: SupportsIndex = 1, *, layout: Layout = "NCHW",
                     output_size: Optional[Shape] = None) -> FloatArray:
    """Reference transposed convolution: the input gradient of the conv2d
    whose output has x's shape, plus the bias.

    Parameters
    ----------
    x : array_like
        ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W, C_in)`` (NHWC), or 3-D.
    weight : array_like
        ``(C_in, C_out/groups, KH, KW)`` (NCHW) or ``(KH, KW, C_out/groups,
        C_in)`` (NHWC).
    bias : array_like, optional
        ``(C_out,)``.  Default None.
    stride, padding, output_padding, dilation, groups, layout, output_size : optional
        As in :func:`pyconv.conv_transpose2d` (no string padding).

    Returns
    -------
    ndarray
        :func:`pyconv.conv_transpose2d`'s shape and dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.conv_transpose2d`.

    See Also
    --------
    pyconv.conv_transpose2d

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    >>> pyconv.reference.conv_transpose2d(x, np.ones((1, 1, 2, 2)), stride=2)[0, 0]
    array([[1., 1., 2., 2.],
           [1., 1., 2., 2.],
           [3., 3., 4., 4.],
           [3., 3., 4., 4.]])
    """
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
