from __future__ import annotations

from typing import Any, Optional, SupportsIndex, Tuple

import numpy as np

from .._typing import Activation, ArrayInput, FloatArray, IntOrPair, Layout, Padding, Shape
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


def conv2d(x: ArrayInput, weight: ArrayInput, bias: Optional[ArrayInput] = None, stride: IntOrPair = 1,
           padding: Padding = 0, dilation: IntOrPair = 1, groups: SupportsIndex = 1, *,
           layout: Layout = "NCHW", activation: Activation = None) -> FloatArray:
    """Reference 2-D convolution; see :func:`pyconv.conv2d` for the semantics.

    In NCHW terms, with ``xpad`` the zero-padded input, ``Cg = C_in/groups``
    and ``g = o // (C_out/groups)`` the group of output channel ``o``::

        y[n, o, i, j] = act(bias[o] + sum over c, p, q of
                            xpad[n, g*Cg + c, i*sh + p*dh, j*sw + q*dw] * w[o, c, p, q])

    computed as one batched matrix product per kernel tap ``(p, q)``.

    Parameters
    ----------
    x : array_like
        ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W, C_in)`` (NHWC); 3-D for
        one unbatched image.
    weight : array_like
        ``(C_out, C_in/groups, KH, KW)`` (NCHW) or ``(KH, KW, C_in/groups,
        C_out)`` (NHWC).  (No :class:`pyconv.PackedWeight`.)
    bias : array_like, optional
        ``(C_out,)``.  Default None.
    stride : int or (int, int), default 1
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same", default 0
    dilation : int or (int, int), default 1
    groups : int, default 1
    layout : {"NCHW", "NHWC"}, default "NCHW"
    activation : {None, "relu", "relu6"}, default None
        All as in :func:`pyconv.conv2d` (there is no ``algo`` and no ``out``).

    Returns
    -------
    ndarray
        C-contiguous, :func:`pyconv.conv2d`'s shape and dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.conv2d` (the same shared argument checks), with
        ``reference.conv2d`` in the message.

    See Also
    --------
    pyconv.conv2d : The fast implementation.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.arange(16.0).reshape(1, 1, 4, 4)
    >>> pyconv.reference.conv2d(x, np.ones((1, 1, 2, 2)), stride=2)
    array([[[[10., 18.],
             [42., 50.]]]])
    >>> pyconv.reference.conv2d(x.astype(np.float32), np.ones((1, 1, 2, 2), np.float32)).dtype
    dtype('float32')
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


def conv_output_shape(input_shape: Shape, weight_shape: Shape, stride: IntOrPair = 1, padding: Padding = 0,
                      dilation: IntOrPair = 1, groups: SupportsIndex = 1, *,
                      layout: Layout = "NCHW") -> Tuple[int, ...]:
    """Shape of :func:`conv2d`'s result (the formula, from the shared normalisation).

    Parameters
    ----------
    input_shape, weight_shape : sequence of int
        Full shapes in the layout's order, as :func:`pyconv.conv_output_shape`.
    stride, padding, dilation, groups, layout : optional
        As in :func:`pyconv.conv2d`.

    Returns
    -------
    tuple of int

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.conv_output_shape`.

    See Also
    --------
    pyconv.conv_output_shape

    Examples
    --------
    >>> import pyconv
    >>> pyconv.reference.conv_output_shape((1, 3, 32, 32), (20, 3, 8, 8), stride=2, padding=1)
    (1, 20, 14, 14)
    """
    fn = "reference.conv_output_shape"
    return conv_geometry(fn, input_shape, weight_shape, stride, padding, dilation, groups,
                         layout_name(fn, layout)).out_shape


def depthwise_conv2d(x: ArrayInput, weight: ArrayInput, bias: Optional[ArrayInput] = None, stride: IntOrPair = 1,
                     padding: Padding = 0, dilation: IntOrPair = 1, *, layout: Layout = "NCHW",
                     activation: Activation = None) -> FloatArray:
    """Reference depthwise convolution: :func:`conv2d` with ``groups = C_in``.

    Parameters
    ----------
    x : array_like
        ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W, C_in)`` (NHWC), or 3-D.
    weight : array_like
        ``(C_in*m, 1, KH, KW)`` (NCHW) or ``(KH, KW, 1, C_in*m)`` (NHWC).
    bias : array_like, optional
        ``(C_in*m,)``.  Default None.
    stride, padding, dilation, layout, activation : optional
        As in :func:`pyconv.depthwise_conv2d`.

    Returns
    -------
    ndarray
        :func:`pyconv.depthwise_conv2d`'s shape and dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.depthwise_conv2d`.

    See Also
    --------
    pyconv.depthwise_conv2d

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.arange(8.0).reshape(2, 2, 2)
    >>> pyconv.reference.depthwise_conv2d(x, np.ones((2, 1, 2, 2))).ravel()
    array([ 6., 22.])
    """
    fn = "reference.depthwise_conv2d"
    lay = layout_name(fn, layout)
    xa, wa = as_array(fn, "x", x), as_array(fn, "weight", weight)
    groups = depthwise_groups(fn, xa.shape, wa.shape, lay)
    return _conv2d(fn, xa, wa, bias, stride, padding, dilation, groups, lay, activation)


def separable_conv2d(x: ArrayInput, depthwise_weight: ArrayInput, pointwise_weight: ArrayInput,
                     bias: Optional[ArrayInput] = None, stride: IntOrPair = 1, padding: Padding = 0,
                     dilation: IntOrPair = 1, *, layout: Layout = "NCHW",
                     activation: Activation = None) -> FloatArray:
    """Reference separable convolution: depthwise, then 1x1 with bias and activation.

    Parameters
    ----------
    x : array_like
        ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W, C_in)`` (NHWC), or 3-D.
    depthwise_weight : array_like
        ``(C_mid, 1, KH, KW)`` (NCHW) or ``(KH, KW, 1, C_mid)`` (NHWC),
        ``C_mid = C_in*m``.
    pointwise_weight : array_like
        ``(C_out, C_mid, 1, 1)`` (NCHW) or ``(1, 1, C_mid, C_out)`` (NHWC).
    bias : array_like, optional
        ``(C_out,)``, after the pointwise step.  Default None.
    stride, padding, dilation, layout, activation : optional
        As in :func:`pyconv.separable_conv2d`.

    Returns
    -------
    ndarray
        :func:`pyconv.separable_conv2d`'s shape and dtype (the intermediate
        is computed in that dtype too).

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.separable_conv2d`.

    See Also
    --------
    pyconv.separable_conv2d

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.arange(8.0).reshape(2, 2, 2)
    >>> pw = np.array([[1.0, 1.0], [1.0, -1.0]]).reshape(2, 2, 1, 1)
    >>> pyconv.reference.separable_conv2d(x, np.ones((2, 1, 2, 2)), pw).ravel()
    array([ 28., -16.])
    """
    fn = "reference.separable_conv2d"
    lay, xa, dw, pw, ba, groups = separable_operands(fn, x, depthwise_weight, pointwise_weight, bias,
                                                     layout)
    mid = _conv2d(fn, xa, dw, None, stride, padding, dilation, groups, lay, None)
    return _conv2d(fn, mid, pw, ba, 1, 0, 1, 1, lay, activation)
