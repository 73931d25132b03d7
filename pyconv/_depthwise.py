"""Depthwise and depthwise-separable convolutions (MobileNet, Xception)."""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _core
from ._conv import _conv2d
from ._normalize import (
    kernel_array,
    activation_code,
    as_array,
    conv_geometry,
    depthwise_groups,
    layout_name,
    separable_operands,
)

__all__ = ["depthwise_conv2d", "separable_conv2d"]


def depthwise_conv2d(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
                     dilation: Any = 1, *, layout: str = "NCHW",
                     activation: Optional[str] = None) -> np.ndarray:
    """Depthwise 2-D convolution: every input channel filtered on its own.

    ``groups = C_in``; the weight is ``(C_in*m, 1, KH, KW)`` for NCHW or
    ``(KH, KW, 1, C_in*m)`` for NHWC, with channel multiplier ``m``; output
    channel ``c*m + j`` reads input channel ``c``.  Other arguments as in
    :func:`pyconv.conv2d`; the algorithm is chosen as ``algo="auto"`` does
    (the depthwise kernel, or the direct one for narrow NCHW planes).

    >>> import numpy as np, pyconv
    >>> x = np.ones((1, 4, 8, 8), np.float32)
    >>> w = np.ones((8, 1, 3, 3), np.float32)          # multiplier 2
    >>> pyconv.depthwise_conv2d(x, w, padding="same").shape
    (1, 8, 8, 8)
    """
    fn = "depthwise_conv2d"
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    wa = as_array(fn, "weight", weight)
    groups = depthwise_groups(fn, xa.shape, wa.shape, lay)
    return _conv2d(fn, xa, wa, bias, stride, padding, dilation, groups, lay, activation, "auto", None)


def separable_conv2d(x: Any, depthwise_weight: Any, pointwise_weight: Any, bias: Any = None,
                     stride: Any = 1, padding: Any = 0, dilation: Any = 1, *,
                     layout: str = "NCHW", activation: Optional[str] = None) -> np.ndarray:
    """Depthwise convolution followed by a 1x1 (pointwise) convolution.

    ``depthwise_weight`` as in :func:`depthwise_conv2d` (``C_mid = C_in*m``
    channels out); ``pointwise_weight`` is ``(C_out, C_mid, 1, 1)`` for NCHW
    or ``(1, 1, C_mid, C_out)`` for NHWC.  ``stride``, ``padding`` and
    ``dilation`` belong to the depthwise step; ``bias`` (``(C_out,)``) and
    ``activation`` apply after the pointwise step, as in Keras'
    ``SeparableConv2D``.

    >>> import numpy as np, pyconv
    >>> x = np.ones((1, 4, 8, 8), np.float32)
    >>> y = pyconv.separable_conv2d(x, np.ones((4, 1, 3, 3), np.float32),
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
    y = np.empty(pw_geo.out_shape, dtype=xa.dtype)
    if dw_geo.n == 0:
        return y
    if any(dw_geo.pads) and not np.isfinite(dw).all():
        # A non-finite depthwise tap over the zero padding must give NaN
        # (0 * inf), which the fused kernel's border handling skips: compose
        # the two steps, the first on the direct kernel (see conv2d).
        mid = _conv2d(fn, xa, dw, None, stride, padding, dilation, groups, lay, None, "direct", None)
        return _conv2d(fn, mid, pw, ba, 1, 0, 1, 1, lay, activation, "auto", y)
    # One fused pass: the depthwise output is made band by band in cache and
    # consumed there by the 1x1 GEMM (csrc/separable).
    _core.separable_conv2d(kernel_array(xa), kernel_array(dw), kernel_array(pw),
                           None if ba is None else kernel_array(ba), y, dw_geo.core_tuple(),
                           pw_geo.core_tuple(), 0 if lay == "NCHW" else 1, act)
    return y
