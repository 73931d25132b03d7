"""Depthwise and depthwise-separable convolutions (MobileNet, Xception)."""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from . import _core
from ._runtime import _empty
from ._typing import Activation, ArrayInput, FloatArray, IntOrPair, Layout, Padding
from ._conv import _VERBOSE, _conv2d, verbose_line
from ._normalize import (
    all_finite,
    kernel_array,
    activation_code,
    as_array,
    conv_geometry,
    depthwise_groups,
    layout_name,
    separable_operands,
)

__all__ = ["depthwise_conv2d", "separable_conv2d"]


def depthwise_conv2d(x: ArrayInput, weight: ArrayInput, bias: Optional[ArrayInput] = None,
                     stride: IntOrPair = 1, padding: Padding = 0, dilation: IntOrPair = 1, *,
                     layout: Layout = "NCHW", activation: Activation = None) -> FloatArray:
    """Depthwise 2-D convolution: every input channel filtered on its own.

    :func:`conv2d` with ``groups = C_in``: output channel ``c*m + j`` (``j <
    m``, the channel multiplier) is input channel ``c`` correlated with
    filter ``c*m + j``.  The algorithm is chosen as ``algo="auto"`` does
    (the depthwise kernel, or the direct one where it is faster).

    Parameters
    ----------
    x : array_like
        ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W, C_in)`` (NHWC); 3-D for
        one unbatched image.
    weight : array_like
        ``(C_in*m, 1, KH, KW)`` for NCHW or ``(KH, KW, 1, C_in*m)`` for
        NHWC, with integer channel multiplier ``m >= 1``.
    bias : array_like, optional
        ``(C_in*m,)``.  Default None.
    stride, padding, dilation : optional
        As in :func:`conv2d` (int or pair; padding also a pair of pairs,
        ``"valid"`` or ``"same"``); defaults 1, 0, 1.
    layout : {"NCHW", "NHWC"}, default "NCHW"
    activation : {None, "relu", "relu6"}, default None
        Applied after the bias.

    Returns
    -------
    ndarray
        ``(N, C_in*m, H_out, W_out)`` (NCHW) or ``(N, H_out, W_out,
        C_in*m)`` (NHWC), 3-D for a 3-D input; :func:`conv2d`'s dtype rule.

    Raises
    ------
    TypeError
        As :func:`conv2d`.
    ValueError
        A weight that is not ``(C_in*m, 1, KH, KW)`` / ``(KH, KW, 1,
        C_in*m)`` (more than one input channel per filter, or a filter count
        that is not a multiple of C_in), and everything :func:`conv2d`
        refuses.

    See Also
    --------
    conv2d : The general form (``groups=C_in``, ``algo="depthwise"``).
    separable_conv2d : Depthwise followed by a 1x1 convolution.
    pyconv.reference.depthwise_conv2d : The pure-NumPy oracle.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.arange(8, dtype=np.float32).reshape(2, 2, 2)   # (C, H, W)
    >>> pyconv.depthwise_conv2d(x, np.ones((2, 1, 2, 2), np.float32)).ravel()
    array([ 6., 22.], dtype=float32)

    A channel multiplier of 2: filters 0, 1 read channel 0, filters 2, 3
    read channel 1.

    >>> w = np.array([1, -1, 10, 100], np.float32).reshape(4, 1, 1, 1)
    >>> pyconv.depthwise_conv2d(x, w)[:, 1, 1]
    array([  3.,  -3.,  70., 700.], dtype=float32)
    >>> pyconv.depthwise_conv2d(np.ones((1, 4, 8, 8), np.float32), np.ones((8, 1, 3, 3), np.float32),
    ...                         padding="same").shape
    (1, 8, 8, 8)
    """
    fn = "depthwise_conv2d"
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    wa = as_array(fn, "weight", weight)
    groups = depthwise_groups(fn, xa.shape, wa.shape, lay)
    return _conv2d(fn, xa, wa, bias, stride, padding, dilation, groups, lay, activation, "auto", None)


def separable_conv2d(x: ArrayInput, depthwise_weight: ArrayInput, pointwise_weight: ArrayInput,
                     bias: Optional[ArrayInput] = None, stride: IntOrPair = 1, padding: Padding = 0,
                     dilation: IntOrPair = 1, *, layout: Layout = "NCHW",
                     activation: Activation = None) -> FloatArray:
    """Depthwise convolution followed by a 1x1 (pointwise) convolution.

    As Keras' ``SeparableConv2D``: ``stride``, ``padding`` and ``dilation``
    belong to the depthwise step (no bias, no activation there); ``bias``
    and ``activation`` apply after the pointwise step.  Both steps run fused
    (the depthwise output is made band by band in cache and consumed there),
    in one computation dtype chosen over all four operands (a non-finite
    depthwise tap next to padding makes them run one after the other, so
    that it gives NaN as the reference does).

    Parameters
    ----------
    x : array_like
        ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W, C_in)`` (NHWC); 3-D for
        one unbatched image.
    depthwise_weight : array_like
        ``(C_mid, 1, KH, KW)`` (NCHW) or ``(KH, KW, 1, C_mid)`` (NHWC),
        ``C_mid = C_in*m``, as in :func:`depthwise_conv2d`.
    pointwise_weight : array_like
        ``(C_out, C_mid, 1, 1)`` (NCHW) or ``(1, 1, C_mid, C_out)`` (NHWC).
    bias : array_like, optional
        ``(C_out,)``, added after the pointwise step.  Default None.
    stride, padding, dilation : optional
        Of the depthwise step, as in :func:`conv2d`; defaults 1, 0, 1.
    layout : {"NCHW", "NHWC"}, default "NCHW"
    activation : {None, "relu", "relu6"}, default None
        Applied after the pointwise step and its bias.

    Returns
    -------
    ndarray
        ``(N, C_out, H_out, W_out)`` (NCHW) or ``(N, H_out, W_out, C_out)``
        (NHWC), 3-D for a 3-D input; :func:`conv2d`'s dtype rule over ``x``,
        both weights and ``bias``.

    Raises
    ------
    TypeError
        As :func:`conv2d`.
    ValueError
        A depthwise weight as :func:`depthwise_conv2d` refuses; a pointwise
        weight that is not 1x1 or does not read the C_mid channels; a bias
        that is not ``(C_out,)``; and everything :func:`conv2d` refuses.

    See Also
    --------
    depthwise_conv2d, conv2d
    pyconv.reference.separable_conv2d : The pure-NumPy oracle.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.arange(8, dtype=np.float32).reshape(2, 2, 2)   # (C, H, W)
    >>> dw = np.ones((2, 1, 2, 2), np.float32)                 # per-channel sums: 6, 22
    >>> pw = np.array([[1, 1], [1, -1]], np.float32).reshape(2, 2, 1, 1)
    >>> pyconv.separable_conv2d(x, dw, pw).ravel()
    array([ 28., -16.], dtype=float32)
    >>> pyconv.separable_conv2d(x, dw, pw, np.array([0, 20], np.float32), activation="relu").ravel()
    array([28.,  4.], dtype=float32)
    >>> y = pyconv.separable_conv2d(np.ones((1, 4, 8, 8), np.float32), np.ones((4, 1, 3, 3), np.float32),
    ...                             np.ones((16, 4, 1, 1), np.float32), padding=1)
    >>> y.shape
    (1, 16, 8, 8)
    """
    fn = "separable_conv2d"
    act = activation_code(fn, activation)
    lay, xa, dw, pw, ba, groups = separable_operands(fn, x, depthwise_weight, pointwise_weight, bias,
                                                     layout)
    dw_geo = conv_geometry(fn, xa.shape, dw.shape, stride, padding, dilation, groups, lay)
    pw_geo = conv_geometry(fn, dw_geo.out_shape, pw.shape, 1, 0, 1, 1, lay)
    if ba is not None and ba.shape != (pw_geo.oc,):
        raise ValueError(f"{fn}: bias must have shape ({pw_geo.oc},) to match pointwise_weight, got {ba.shape}")
    y = _empty(pw_geo.out_shape, xa.dtype)
    if dw_geo.n == 0:
        return y
    if any(dw_geo.pads) and not all_finite(dw):
        # A non-finite depthwise tap over the zero padding must give NaN
        # (0 * inf), which the fused kernel's border handling skips: compose
        # the two steps, the first on the direct kernel (see conv2d).
        mid = _conv2d(fn, xa, dw, None, stride, padding, dilation, groups, lay, None, "direct", None)
        return _conv2d(fn, mid, pw, ba, 1, 0, 1, 1, lay, activation, "auto", y)
    # One fused pass: the depthwise output is made band by band in cache and
    # consumed there by the 1x1 GEMM (csrc/separable).
    start = time.perf_counter() if _VERBOSE else 0.0
    _core.separable_conv2d(kernel_array(xa), kernel_array(dw), kernel_array(pw),
                           None if ba is None else kernel_array(ba), y, dw_geo.core_tuple(),
                           pw_geo.core_tuple(), 0 if lay == "NCHW" else 1, act)
    if _VERBOSE:
        verbose_line(fn, dw_geo, y.dtype, "separable(depthwise+pointwise)", start)
    return y
