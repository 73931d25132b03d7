"""Framework-free differentiation: vector-Jacobian products of pyconv's ops.

Each ``*_vjp`` function runs the forward op and returns ``(y, pullback)``;
``pullback(grad_y)`` maps the gradient of a loss with respect to ``y`` to the
gradients with respect to the differentiable inputs:

- conv-type ops (:func:`conv2d_vjp`, :func:`conv_transpose2d_vjp`) return
  ``(grad_x, grad_w, grad_b)``, with ``grad_b = None`` when there is no bias;
- pooling ops return ``grad_x`` alone.

Gradients have the dtype of the primal they belong to when it is a float
array (float32 weights get float32 gradients), else the computation dtype.
A fused activation is differentiated with the mask PyTorch uses: relu
passes the gradient where ``y > 0``, relu6 where ``0 < y < 6``.

A pullback may be called any number of times; it keeps references to the
forward's inputs and output (not copies), so do not modify them in place
before calling it.

>>> import numpy as np
>>> from pyconv.autograd import conv2d_vjp
>>> x = np.ones((1, 1, 3, 3), np.float32)
>>> w = np.ones((1, 1, 2, 2), np.float32)
>>> y, pullback = conv2d_vjp(x, w, np.zeros(1, np.float32))
>>> gx, gw, gb = pullback(np.ones_like(y))
>>> gx[0, 0]
array([[1., 2., 1.],
       [2., 4., 2.],
       [1., 2., 1.]], dtype=float32)
>>> gb
array([4.], dtype=float32)
"""

from __future__ import annotations

from typing import Any, Callable, Optional, SupportsIndex, Tuple

import numpy as np

from ._conv import _conv2d
from ._grad import _conv_transpose2d, _grad_input, _grad_weight, conv2d_grad_bias
from ._normalize import (
    as_array,
    conv_geometry,
    grad_out_check,
    layout_name,
    pool_geometry,
    result_dtype,
)
from ._pool import _max_pool2d_grad_keys, _max_pool2d_keys, avg_pool2d, avg_pool2d_grad, max_pool2d_grad
from ._typing import (
    Activation,
    Algo,
    ArrayInput,
    ExplicitPadding,
    FloatArray,
    IntOrPair,
    Layout,
    Padding,
    Shape,
)

__all__ = ["avg_pool2d_vjp", "conv2d_vjp", "conv_transpose2d_vjp", "max_pool2d_vjp"]

#: ``pullback(grad_y) -> (grad_x, grad_w, grad_b)``; ``grad_b`` is None without a bias.
ConvPullback = Callable[[ArrayInput], Tuple[FloatArray, FloatArray, Optional[FloatArray]]]
#: ``pullback(grad_y) -> grad_x``.
PoolPullback = Callable[[ArrayInput], FloatArray]


def _like(grad: np.ndarray, primal: np.ndarray) -> np.ndarray:
    """grad in the primal's dtype when the primal is a float array."""
    if primal.dtype.kind == "f" and grad.dtype != primal.dtype:
        return grad.astype(primal.dtype)
    return grad


def _activation_mask(gy: np.ndarray, y: np.ndarray, activation: Optional[str]) -> np.ndarray:
    """grad_y through the fused activation (y is the activated output)."""
    if activation is None:
        return gy
    if activation == "relu":
        return np.where(y > 0, gy, 0).astype(gy.dtype, copy=False)
    return np.where((y > 0) & (y < 6), gy, 0).astype(gy.dtype, copy=False)


def conv2d_vjp(x: ArrayInput, weight: ArrayInput, bias: Optional[ArrayInput] = None, stride: IntOrPair = 1,
               padding: Padding = 0, dilation: IntOrPair = 1, groups: SupportsIndex = 1, *,
               layout: Layout = "NCHW", activation: Activation = None,
               algo: Algo = "auto") -> Tuple[FloatArray, ConvPullback]:
    """:func:`pyconv.conv2d` and its pullback ``grad_y -> (grad_x, grad_w, grad_b)``.

    The pullback runs :func:`pyconv.conv2d_grad_input`,
    :func:`pyconv.conv2d_grad_weight` and :func:`pyconv.conv2d_grad_bias`
    on ``grad_y`` masked by the activation's derivative (relu: where ``y >
    0``; relu6: where ``0 < y < 6``, as PyTorch).

    Parameters
    ----------
    x : array_like
        ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W, C_in)`` (NHWC), or 3-D.
    weight : array_like
        ``(C_out, C_in/groups, KH, KW)`` (NCHW) or ``(KH, KW, C_in/groups,
        C_out)`` (NHWC); an array (not a :class:`pyconv.PackedWeight`).
    bias : array_like, optional
        ``(C_out,)``.  Default None (then ``grad_b`` is None).
    stride, padding, dilation, groups, layout, activation, algo : optional
        As in :func:`pyconv.conv2d` (same forms and defaults; no ``out``).

    Returns
    -------
    y : ndarray
        ``conv2d(x, weight, bias, ...)``.
    pullback : callable
        ``pullback(grad_y)`` with ``grad_y`` of ``y``'s shape returns
        ``(grad_x, grad_w, grad_b)``, shaped like ``x``, ``weight`` and
        ``bias`` (``grad_b`` None without a bias).  Each gradient has its
        primal's dtype when that is a float array, else ``y``'s dtype.  It
        may be called any number of times.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.conv2d`; the pullback raises ValueError for a
        ``grad_y`` whose shape is not ``y``'s, TypeError for a non-numeric one.

    See Also
    --------
    pyconv.conv2d, conv_transpose2d_vjp

    Examples
    --------
    >>> import numpy as np
    >>> from pyconv.autograd import conv2d_vjp
    >>> x = np.arange(9.0, dtype=np.float32).reshape(1, 1, 3, 3)
    >>> w = np.ones((1, 1, 2, 2), np.float32)
    >>> y, pullback = conv2d_vjp(x, w, np.array([-20.0], np.float32), activation="relu")
    >>> y[0, 0]
    array([[0., 0.],
           [0., 4.]], dtype=float32)
    >>> gx, gw, gb = pullback(np.ones_like(y))     # only the positive output passes
    >>> gx[0, 0]
    array([[0., 0., 0.],
           [0., 1., 1.],
           [0., 1., 1.]], dtype=float32)
    >>> gw[0, 0], gb
    (array([[4., 5.],
           [7., 8.]], dtype=float32), array([1.], dtype=float32))
    """
    fn = "conv2d_vjp"
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    wa = as_array(fn, "weight", weight)
    ba = None if bias is None else as_array(fn, "bias", bias)
    y = _conv2d(fn, xa, wa, ba, stride, padding, dilation, groups, lay, activation, algo, None)
    geo = conv_geometry(fn, xa.shape, wa.shape, stride, padding, dilation, groups, lay)
    dtype = y.dtype

    def pullback(grad_y: Any) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        pb = "conv2d_vjp pullback"
        gy = as_array(pb, "grad_y", grad_y)
        grad_out_check(pb, gy.shape, geo, "grad_y")
        gy = _activation_mask(gy.astype(dtype, copy=False), y, activation)
        gx = _grad_input(pb, gy, wa.astype(dtype, copy=False), geo, dtype)
        gw = _grad_weight(xa, gy, geo, dtype)
        gb = None if ba is None else _like(conv2d_grad_bias(gy, layout=lay), ba)
        return _like(gx, xa), _like(gw, wa), gb

    return y, pullback


def conv_transpose2d_vjp(x: ArrayInput, weight: ArrayInput, bias: Optional[ArrayInput] = None,
                         stride: IntOrPair = 1, padding: ExplicitPadding = 0, output_padding: IntOrPair = 0,
                         dilation: IntOrPair = 1, groups: SupportsIndex = 1, *, layout: Layout = "NCHW",
                         output_size: Optional[Shape] = None) -> Tuple[FloatArray, ConvPullback]:
    """:func:`pyconv.conv_transpose2d` and its pullback ``grad_y -> (grad_x, grad_w, grad_b)``.

    The transposed convolution is the input gradient of a conv2d, so its own
    gradients are that conv2d (for x) and that conv2d's weight gradient with
    the roles of input and grad_out exchanged (for the weight).

    Parameters
    ----------
    x : array_like
        ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W, C_in)`` (NHWC), or 3-D.
    weight : array_like
        ``(C_in, C_out/groups, KH, KW)`` (NCHW) or ``(KH, KW, C_out/groups,
        C_in)`` (NHWC).
    bias : array_like, optional
        ``(C_out,)``.  Default None (then ``grad_b`` is None).
    stride, padding, output_padding, dilation, groups, layout, output_size : optional
        As in :func:`pyconv.conv_transpose2d` (same forms and defaults).

    Returns
    -------
    y : ndarray
        ``conv_transpose2d(x, weight, bias, ...)``.
    pullback : callable
        ``pullback(grad_y)`` with ``grad_y`` of ``y``'s shape returns
        ``(grad_x, grad_w, grad_b)``, shaped like ``x``, ``weight`` and
        ``bias``, in their dtypes as for :func:`conv2d_vjp`.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.conv_transpose2d`; the pullback raises ValueError
        for a ``grad_y`` whose shape is not ``y``'s.

    See Also
    --------
    pyconv.conv_transpose2d, conv2d_vjp

    Examples
    --------
    >>> import numpy as np
    >>> from pyconv.autograd import conv_transpose2d_vjp
    >>> x = np.ones((1, 1, 2, 2), np.float32)
    >>> y, pullback = conv_transpose2d_vjp(x, np.ones((1, 1, 2, 2), np.float32), stride=2)
    >>> y.shape
    (1, 1, 4, 4)
    >>> gx, gw, gb = pullback(np.ones_like(y))
    >>> gx[0, 0], gb
    (array([[4., 4.],
           [4., 4.]], dtype=float32), None)
    """
    y, lay, xd, wd, ba, geo, dtype = _conv_transpose2d("conv_transpose2d_vjp", x, weight, bias, stride, padding,
                                                       output_padding, dilation, groups, layout, output_size)
    xa = as_array("conv_transpose2d_vjp", "x", x)  # the primal, for the gradients' dtypes
    wa = as_array("conv_transpose2d_vjp", "weight", weight)
    bp = None if bias is None else as_array("conv_transpose2d_vjp", "bias", bias)
    nchw = lay == "NCHW"
    spatial = (xa.ndim - 2, xa.ndim - 1) if nchw else (xa.ndim - 3, xa.ndim - 2)
    x_hw = (xa.shape[spatial[0]], xa.shape[spatial[1]])

    def pullback(grad_y: Any) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
        pb = "conv_transpose2d_vjp pullback"
        gy = _check_grad_y(pb, grad_y, y).astype(dtype, copy=False)
        # The conv2d this transposes: its output can be larger than x (when
        # output_padding >= stride); x's gradient is the part x covers, and
        # the weight gradient sees x padded with zeros to that size.
        full = _conv2d(pb, gy, wd, None, geo.stride, _pairs(geo.pads),
                       geo.dilation, geo.groups, lay, None, "auto", None)
        gx = full
        xp = xd
        if (geo.oh, geo.ow) != x_hw:
            crop = [slice(None)] * full.ndim
            crop[spatial[0]], crop[spatial[1]] = slice(0, x_hw[0]), slice(0, x_hw[1])
            gx = np.ascontiguousarray(full[tuple(crop)])
            widths = [(0, 0)] * xp.ndim
            widths[spatial[0]] = (0, geo.oh - x_hw[0])
            widths[spatial[1]] = (0, geo.ow - x_hw[1])
            xp = np.pad(xp, widths)
        gw = _grad_weight(gy, xp, geo, dtype)
        gb = None if bp is None else _like(conv2d_grad_bias(gy, layout=lay), bp)
        return _like(gx, xa), _like(gw, wa), gb

    return y, pullback


def _pairs(pads: Tuple[int, int, int, int]) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    t, b, l, r = pads
    return ((t, b), (l, r))


def _check_grad_y(fn: str, grad_y: Any, y: np.ndarray) -> np.ndarray:
    gy = as_array(fn, "grad_y", grad_y)
    if gy.shape != y.shape:
        raise ValueError(f"{fn}: grad_y has shape {gy.shape} but the output has shape {y.shape}")
    return gy


def max_pool2d_vjp(x: ArrayInput, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: Padding = 0,
                   dilation: IntOrPair = 1, *, ceil_mode: bool = False,
                   layout: Layout = "NCHW") -> Tuple[FloatArray, PoolPullback]:
    """:func:`pyconv.max_pool2d` and its pullback ``grad_y -> grad_x``.

    The gradient goes to each window's winner (the first maximum, the
    first NaN), as the forward chose; overlapping windows add up.  The
    forward records each winner in one byte (windows up to 16x16), so the
    pullback reads neither ``x`` nor the window's cells again; its result
    is bitwise :func:`pyconv.max_pool2d_grad`'s.

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC), or 3-D.
    kernel_size : int or (int, int)
    stride, padding, dilation, ceil_mode, layout : optional
        As in :func:`pyconv.max_pool2d` (same forms and defaults; no
        ``return_indices``).

    Returns
    -------
    y : ndarray
        ``max_pool2d(x, ...)``.
    pullback : callable
        ``pullback(grad_y)`` with ``grad_y`` of ``y``'s shape returns
        ``grad_x``, shaped like ``x``, in ``x``'s dtype if that is a float.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.max_pool2d`; the pullback raises ValueError for a
        ``grad_y`` whose shape is not ``y``'s.

    See Also
    --------
    pyconv.max_pool2d, pyconv.max_pool2d_grad

    Examples
    --------
    >>> import numpy as np
    >>> from pyconv.autograd import max_pool2d_vjp
    >>> y, pullback = max_pool2d_vjp(np.array([[[1.0, 3.0], [3.0, 0.0]]]), 2)
    >>> y
    array([[[3.]]])
    >>> pullback(np.ones_like(y))
    array([[[0., 1.],
            [0., 0.]]])
    """
    fn = "max_pool2d_vjp"
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    geo = pool_geometry(fn, xa.shape, kernel_size, stride, padding, dilation, ceil_mode, lay)
    y, keys = _max_pool2d_keys(fn, xa, geo)
    primal = np.empty(0, xa.dtype)  # x's dtype, without holding x when the keys stand in for it
    kept = xa if keys is None else None

    def pullback(grad_y: Any) -> np.ndarray:
        gy = _check_grad_y("max_pool2d_vjp pullback", grad_y, y)
        if keys is None:
            gx = max_pool2d_grad(gy, kept, kernel_size, stride, padding, dilation, ceil_mode=ceil_mode,
                                 layout=lay)
        else:
            gx = _max_pool2d_grad_keys(gy, keys, geo, result_dtype(gy, primal))
        return _like(gx, primal)

    return y, pullback


def avg_pool2d_vjp(x: ArrayInput, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: Padding = 0,
                   *, ceil_mode: bool = False, count_include_pad: Optional[bool] = None,
                   layout: Layout = "NCHW") -> Tuple[FloatArray, PoolPullback]:
    """:func:`pyconv.avg_pool2d` and its pullback ``grad_y -> grad_x``.

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC), or 3-D.
    kernel_size : int or (int, int)
    stride, padding, ceil_mode, count_include_pad, layout : optional
        As in :func:`pyconv.avg_pool2d` (same forms and defaults).

    Returns
    -------
    y : ndarray
        ``avg_pool2d(x, ...)``.
    pullback : callable
        ``pullback(grad_y)`` with ``grad_y`` of ``y``'s shape returns
        ``grad_x`` (each output's gradient over its window, divided by the
        window's divisor), shaped like ``x``, in ``x``'s dtype if that is a
        float.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.avg_pool2d`; the pullback raises ValueError for a
        ``grad_y`` whose shape is not ``y``'s.

    See Also
    --------
    pyconv.avg_pool2d, pyconv.avg_pool2d_grad

    Examples
    --------
    >>> import numpy as np
    >>> from pyconv.autograd import avg_pool2d_vjp
    >>> y, pullback = avg_pool2d_vjp(np.arange(4.0).reshape(1, 2, 2), 2)
    >>> y
    array([[[1.5]]])
    >>> pullback(np.ones_like(y))
    array([[[0.25, 0.25],
            [0.25, 0.25]]])
    """
    xa = as_array("avg_pool2d_vjp", "x", x)
    y = avg_pool2d(xa, kernel_size, stride, padding, ceil_mode=ceil_mode,
                   count_include_pad=count_include_pad, layout=layout)

    def pullback(grad_y: Any) -> np.ndarray:
        gy = _check_grad_y("avg_pool2d_vjp pullback", grad_y, y)
        gx = avg_pool2d_grad(gy, xa.shape, kernel_size, stride, padding, ceil_mode=ceil_mode,
                             count_include_pad=count_include_pad, layout=layout)
        return _like(gx, xa)

    return y, pullback
