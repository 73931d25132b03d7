"""Max, average and global pooling, and their gradients."""

from __future__ import annotations

import sys
import time
from typing import Any, Literal, Optional, Tuple, Union, overload

import numpy as np

from . import _core
from ._runtime import _empty
from ._conv import _VERBOSE
from ._typing import ArrayInput, FloatArray, IndexArray, IntOrPair, Layout, Padding, Shape
from ._normalize import (
    kernel_array,
    PoolGeometry,
    as_array,
    count_include_pad_flag,
    layout_name,
    pool_geometry,
    result_dtype,
)

__all__ = [
    "avg_pool2d",
    "avg_pool2d_grad",
    "global_avg_pool2d",
    "global_max_pool2d",
    "max_pool2d",
    "max_pool2d_grad",
    "pool_output_shape",
]

_MAX, _AVG = 0, 1


def _run_forward(fn: str, xa: np.ndarray, geo: PoolGeometry, op: int, count_include_pad: bool,
                 want_indices: bool) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    dtype = result_dtype(xa)
    y = _empty(geo.out_shape, dtype)
    idx = _empty(geo.out_shape, np.int64) if want_indices else None
    if geo.n == 0:
        return y, idx
    xc = kernel_array(xa, dtype=dtype)
    start = time.perf_counter() if _VERBOSE else 0.0
    _core.pool_forward(xc, y, idx, geo.core_tuple(), 0 if geo.layout == "NCHW" else 1, op, count_include_pad)
    if _VERBOSE:
        _verbose(fn, geo, dtype, start)
    return y, idx


def _verbose(fn: str, geo: PoolGeometry, dtype: np.dtype, start: float) -> None:
    ms = (time.perf_counter() - start) * 1e3
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
    t, b, l, r = geo.pads
    print(f"pyconv_verbose,{fn},mb{geo.n}_c{geo.c}_ih{geo.h}oh{geo.oh}kh{kh}sh{sh}dh{dh}ph{t}_{b}"
          f"_iw{geo.w}ow{geo.ow}kw{kw}sw{sw}dw{dw}pw{l}_{r} {'f32' if dtype == np.float32 else 'f64'} "
          f"{geo.layout},isa={_core.get_isa()},threads={_core.get_num_threads()},{ms:.3f}ms",
          file=sys.stderr)


def pool_output_shape(input_shape: Shape, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None,
                      padding: Padding = 0, dilation: IntOrPair = 1, *, ceil_mode: bool = False,
                      layout: Layout = "NCHW") -> Tuple[int, ...]:
    """Shape of :func:`max_pool2d` / :func:`avg_pool2d`'s result, without computing it.

    Parameters
    ----------
    input_shape : sequence of int
        The input's full shape: ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)``
        (NHWC), or 3-D for one unbatched image.
    kernel_size, stride, padding, dilation, ceil_mode, layout : optional
        As in :func:`max_pool2d` (``avg_pool2d`` has ``dilation=1``).

    Returns
    -------
    tuple of int
        ``(N, C, H_out, W_out)`` or ``(N, H_out, W_out, C)``, 3-D for a 3-D
        ``input_shape``.  Without ``ceil_mode``, ``H_out = (H + top + bottom
        - dilation*(KH - 1) - 1) // stride + 1``.

    Raises
    ------
    TypeError
        A shape or argument that is not made of ints; a non-bool ``ceil_mode``.
    ValueError
        What :func:`max_pool2d` would refuse, with the same messages.

    See Also
    --------
    max_pool2d, avg_pool2d, conv_output_shape

    Examples
    --------
    >>> import pyconv
    >>> pyconv.pool_output_shape((8, 64, 112, 112), 3, stride=2, padding=1)
    (8, 64, 56, 56)
    >>> pyconv.pool_output_shape((1, 1, 5, 5), 2, ceil_mode=True)
    (1, 1, 3, 3)
    >>> pyconv.pool_output_shape((4, 4, 5), 2, padding="same", layout="NHWC")
    (2, 2, 5)
    """
    fn = "pool_output_shape"
    lay = layout_name(fn, layout)
    return pool_geometry(fn, input_shape, kernel_size, stride, padding, dilation, ceil_mode, lay).out_shape


@overload
def max_pool2d(x: ArrayInput, kernel_size: IntOrPair, stride: Optional[IntOrPair] = ..., padding: Padding = ...,
               dilation: IntOrPair = ..., *, ceil_mode: bool = ..., return_indices: Literal[False] = ...,
               layout: Layout = ...) -> FloatArray: ...
@overload
def max_pool2d(x: ArrayInput, kernel_size: IntOrPair, stride: Optional[IntOrPair] = ..., padding: Padding = ...,
               dilation: IntOrPair = ..., *, ceil_mode: bool = ..., return_indices: Literal[True],
               layout: Layout = ...) -> Tuple[FloatArray, IndexArray]: ...
@overload
def max_pool2d(x: ArrayInput, kernel_size: IntOrPair, stride: Optional[IntOrPair] = ..., padding: Padding = ...,
               dilation: IntOrPair = ..., *, ceil_mode: bool = ..., return_indices: bool,
               layout: Layout = ...) -> Union[FloatArray, Tuple[FloatArray, IndexArray]]: ...
def max_pool2d(x: ArrayInput, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: Padding = 0,
               dilation: IntOrPair = 1, *, ceil_mode: bool = False, return_indices: bool = False,
               layout: Layout = "NCHW") -> Union[FloatArray, Tuple[FloatArray, IndexArray]]:
    """2-D max pooling.

    Each output is the maximum of its window of the input.  Padded cells
    never win (the padding is not zeros but "no value"); the first maximum
    in row-major window order wins; a NaN beats any number (the first NaN
    wins), so NaNs propagate.

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC); 3-D for one
        unbatched image.
    kernel_size : int or (int, int)
        Window size (KH, KW); each >= 1.
    stride : int, (int, int) or None, default None
        Window step; None means ``kernel_size``.
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same", default 0
        Forms as in :func:`conv2d`.  Numeric padding is at most half the
        window per side (``KH // 2`` top and bottom, ``KW // 2`` left and
        right), as PyTorch; ``"same"`` is TensorFlow's SAME (``out =
        ceil(in / stride)``).
    dilation : int or (int, int), default 1
        Spacing between window taps; each >= 1.
    ceil_mode : bool, default False
        Round the output size up, by PyTorch's rule: the last window must
        start inside the input or the leading padding.  Numeric padding
        only.
    return_indices : bool, default False
        Also return, per output, the flat position ``h * W + w`` of the
        winner in its input plane, as ``torch.nn.MaxPool2d``.
    layout : {"NCHW", "NHWC"}, default "NCHW"

    Returns
    -------
    y : ndarray
        ``(N, C, H_out, W_out)`` (NCHW) or ``(N, H_out, W_out, C)`` (NHWC),
        3-D for a 3-D input (see :func:`pool_output_shape`); float64 if
        ``x`` is float64 or not floating, else float32.
    indices : ndarray of int64
        Same shape as ``y``; only with ``return_indices=True``.

    Raises
    ------
    TypeError
        A complex, object or string array; ``kernel_size``, ``stride``,
        ``padding`` or ``dilation`` not made of ints; a non-bool
        ``ceil_mode`` or ``return_indices``; a non-string ``layout``.
    ValueError
        Input not 3-D or 4-D or empty; ``kernel_size``, ``stride`` or
        ``dilation`` < 1; numeric padding negative or over half the window;
        ``ceil_mode=True`` with a string padding; a window larger than the
        padded input or covering padding only; an unknown ``layout``; sizes
        that overflow 64-bit arithmetic.

    See Also
    --------
    avg_pool2d, global_max_pool2d, pool_output_shape
    max_pool2d_grad : Its gradient.
    pyconv.autograd.max_pool2d_vjp : The forward and its pullback.
    pyconv.reference.max_pool2d : The pure-NumPy oracle.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.array([[0, 1, 0.5, 10], [2, 2.5, 1, -8], [4, 0, 5, 6], [15, 1, 2, 3]])
    >>> pyconv.max_pool2d(x[None], 2)[0]
    array([[ 2.5, 10. ],
           [15. ,  6. ]])
    >>> y, idx = pyconv.max_pool2d(x[None], 2, return_indices=True)
    >>> idx[0]
    array([[ 5,  3],
           [12, 11]])

    Overlapping windows, and ``ceil_mode``:

    >>> pyconv.max_pool2d(x[None], 3, stride=2, ceil_mode=True)[0]
    array([[ 5., 10.],
           [15.,  6.]])
    """
    fn = "max_pool2d"
    lay = layout_name(fn, layout)
    if not isinstance(return_indices, (bool, np.bool_)):
        raise TypeError(f"{fn}: return_indices must be a bool, got {return_indices!r}")
    xa = as_array(fn, "x", x)
    geo = pool_geometry(fn, xa.shape, kernel_size, stride, padding, dilation, ceil_mode, lay)
    y, idx = _run_forward(fn, xa, geo, _MAX, False, bool(return_indices))
    return (y, idx) if return_indices else y


# Windows up to this size a side record their winners as one-byte keys
# (row tap * 16 + column tap) for max_pool2d_vjp's pullback.
_MAX_KEY_WINDOW = 16


def _max_pool2d_keys(fn: str, xa: np.ndarray, geo: PoolGeometry) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """max_pool2d's output and its winners' keys (None where the window is
    too large for them): the pullback then reads one byte per output instead
    of recomputing the winners from x (ResNet's 3x3/2 pooling moves ~40%
    fewer bytes over forward and backward)."""
    if max(geo.kernel) > _MAX_KEY_WINDOW or geo.n == 0:
        y, _ = _run_forward(fn, xa, geo, _MAX, False, False)
        return y, None
    dtype = result_dtype(xa)
    y = _empty(geo.out_shape, dtype)
    keys = _empty(geo.out_shape, np.uint8)
    start = time.perf_counter() if _VERBOSE else 0.0
    _core.pool_forward(kernel_array(xa, dtype=dtype), y, None, geo.core_tuple(), 0 if geo.layout == "NCHW" else 1,
                       _MAX, False, keys)
    if _VERBOSE:
        _verbose(fn, geo, dtype, start)
    return y, keys


def _max_pool2d_grad_keys(ga: np.ndarray, keys: np.ndarray, geo: PoolGeometry, dtype: np.dtype) -> np.ndarray:
    """max_pool2d_grad from the forward's winner keys (bitwise the same)."""
    gx = _empty(geo.in_shape, dtype)
    start = time.perf_counter() if _VERBOSE else 0.0
    _core.pool_backward(None, kernel_array(ga, dtype=dtype), gx, geo.core_tuple(),
                        0 if geo.layout == "NCHW" else 1, _MAX, False, keys)
    if _VERBOSE:
        _verbose("max_pool2d_grad", geo, dtype, start)
    return gx


def avg_pool2d(x: ArrayInput, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: Padding = 0, *,
               ceil_mode: bool = False, count_include_pad: Optional[bool] = None,
               layout: Layout = "NCHW") -> FloatArray:
    """2-D average pooling.

    Each output is the sum of its window's input cells divided by the
    window's divisor: its full size when padded cells count
    (``count_include_pad``), else the number of real input cells in it.

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC); 3-D for one
        unbatched image.
    kernel_size : int or (int, int)
        Window size; each >= 1.
    stride : int, (int, int) or None, default None
        Window step; None means ``kernel_size``.
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same", default 0
        As in :func:`max_pool2d` (numeric padding at most half the window).
    ceil_mode : bool, default False
        As in :func:`max_pool2d`.  A window that runs past the padded input
        divides by its size clipped to the padded input, as PyTorch.
    count_include_pad : bool or None, default None
        Whether padded cells count in the divisor.  None means True for
        numeric padding (PyTorch) and False for ``"same"``/``"valid"``
        (TensorFlow).
    layout : {"NCHW", "NHWC"}, default "NCHW"

    Returns
    -------
    ndarray
        Shape as :func:`max_pool2d`'s (no dilation); float64 if ``x`` is
        float64 or not floating, else float32.

    Raises
    ------
    TypeError
        As :func:`max_pool2d`, or a ``count_include_pad`` that is neither
        None nor a bool.
    ValueError
        As :func:`max_pool2d`.

    See Also
    --------
    max_pool2d, global_avg_pool2d, pool_output_shape
    avg_pool2d_grad : Its gradient.
    pyconv.autograd.avg_pool2d_vjp : The forward and its pullback.
    pyconv.reference.avg_pool2d : The pure-NumPy oracle.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.array([[0, 1, 0.5, 10], [2, 2.5, 1, -8], [4, 0, 5, 6], [15, 1, 2, 3]])
    >>> pyconv.avg_pool2d(x[None], 2)[0]
    array([[1.375, 0.875],
           [5.   , 4.   ]])

    Numeric padding counts in the divisor (PyTorch), "same" does not
    (TensorFlow):

    >>> ones = np.ones((1, 3, 3))
    >>> pyconv.avg_pool2d(ones, 2, padding=1)[0]
    array([[0.25, 0.5 ],
           [0.5 , 1.  ]])
    >>> pyconv.avg_pool2d(ones, 2, padding="same")[0]
    array([[1., 1.],
           [1., 1.]])
    """
    fn = "avg_pool2d"
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    geo = pool_geometry(fn, xa.shape, kernel_size, stride, padding, 1, ceil_mode, lay)
    cip = count_include_pad_flag(fn, count_include_pad, geo)
    return _run_forward(fn, xa, geo, _AVG, cip, False)[0]


def _global(fn: str, x: Any, layout: str, keepdims: Any, op: int) -> np.ndarray:
    lay = layout_name(fn, layout)
    if not isinstance(keepdims, (bool, np.bool_)):
        raise TypeError(f"{fn}: keepdims must be a bool, got {keepdims!r}")
    xa = as_array(fn, "x", x)
    if xa.ndim not in (3, 4):
        dims = "(N, C, H, W) or (C, H, W)" if lay == "NCHW" else "(N, H, W, C) or (H, W, C)"
        raise ValueError(f"{fn}: input must be 4-D {dims} for layout {lay!r}, got shape {xa.shape}")
    hw = xa.shape[-2:] if lay == "NCHW" else xa.shape[-3:-1]
    if min(hw, default=0) < 1:
        raise ValueError(f"{fn}: input must have at least one row and column, got shape {xa.shape}")
    geo = pool_geometry(fn, xa.shape, tuple(hw), None, 0, 1, False, lay)
    y = _run_forward(fn, xa, geo, op, False, False)[0]
    if keepdims:
        return y
    # (N, C, 1, 1) / (N, 1, 1, C) -> (N, C); 3-D -> (C,)
    return y.reshape(y.shape[:-2] if lay == "NCHW" else y.shape[:-3] + y.shape[-1:])


def global_avg_pool2d(x: ArrayInput, *, layout: Layout = "NCHW", keepdims: bool = False) -> FloatArray:
    """Mean over each image plane: ``(N, C, H, W) -> (N, C)``.

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC); 3-D for one
        unbatched image.
    layout : {"NCHW", "NHWC"}, default "NCHW"
    keepdims : bool, default False
        Keep the pooled axes with size 1.

    Returns
    -------
    ndarray
        ``(N, C)``; with ``keepdims`` ``(N, C, 1, 1)`` (NCHW) or ``(N, 1, 1,
        C)`` (NHWC).  A 3-D input gives ``(C,)`` / ``(C, 1, 1)`` / ``(1, 1,
        C)``.  float64 if ``x`` is float64 or not floating, else float32.

    Raises
    ------
    TypeError
        A complex, object or string array; a non-bool ``keepdims``; a
        non-string ``layout``.
    ValueError
        Input not 3-D or 4-D, or without rows or columns; an unknown
        ``layout``.

    See Also
    --------
    global_max_pool2d, avg_pool2d

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> pyconv.global_avg_pool2d(np.arange(8.0).reshape(2, 2, 2))
    array([1.5, 5.5])
    >>> pyconv.global_avg_pool2d(np.ones((2, 3, 4, 4), np.float32), keepdims=True).shape
    (2, 3, 1, 1)
    """
    return _global("global_avg_pool2d", x, layout, keepdims, _AVG)


def global_max_pool2d(x: ArrayInput, *, layout: Layout = "NCHW", keepdims: bool = False) -> FloatArray:
    """Maximum over each image plane: ``(N, C, H, W) -> (N, C)``; NaN propagates.

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC); 3-D for one
        unbatched image.
    layout : {"NCHW", "NHWC"}, default "NCHW"
    keepdims : bool, default False
        Keep the pooled axes with size 1.

    Returns
    -------
    ndarray
        Shapes and dtype as :func:`global_avg_pool2d`.

    Raises
    ------
    TypeError, ValueError
        As :func:`global_avg_pool2d`.

    See Also
    --------
    global_avg_pool2d, max_pool2d

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> pyconv.global_max_pool2d(np.arange(32.0).reshape(2, 4, 4), layout="NHWC", keepdims=True)
    array([[[28., 29., 30., 31.]]])
    >>> pyconv.global_max_pool2d(np.array([[[1.0, np.nan], [3.0, 2.0]]]))
    array([nan])
    """
    return _global("global_max_pool2d", x, layout, keepdims, _MAX)


def _grad_operand(fn: str, geo: PoolGeometry, grad_out: np.ndarray) -> None:
    if grad_out.shape != geo.out_shape:
        raise ValueError(
            f"{fn}: grad_out has shape {grad_out.shape} but the pooling's output has shape {geo.out_shape}"
        )


def max_pool2d_grad(grad_out: ArrayInput, x: ArrayInput, kernel_size: IntOrPair,
                    stride: Optional[IntOrPair] = None, padding: Padding = 0, dilation: IntOrPair = 1, *,
                    ceil_mode: bool = False, layout: Layout = "NCHW") -> FloatArray:
    """Gradient of :func:`max_pool2d` with respect to ``x``.

    Each output's gradient goes to exactly the cell that won its window in
    the forward pass (the first maximum; the first NaN); gradients of
    overlapping windows add up.  Deterministic for any thread count.

    Parameters
    ----------
    grad_out : array_like
        Gradient of the loss with respect to the pooling's output, of
        exactly that output's shape.
    x : array_like
        The forward input (it decides the winners).
    kernel_size, stride, padding, dilation, ceil_mode, layout : optional
        The forward call's, as in :func:`max_pool2d`.

    Returns
    -------
    ndarray
        ``x``'s shape; dtype by conv2d's rule over ``grad_out`` and ``x``.

    Raises
    ------
    TypeError
        As :func:`max_pool2d`.
    ValueError
        As :func:`max_pool2d`, or a ``grad_out`` whose shape is not the
        pooling's output shape.

    See Also
    --------
    max_pool2d, avg_pool2d_grad, pyconv.autograd.max_pool2d_vjp

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.array([[[1.0, 3.0], [3.0, 0.0]]])    # a tie: the first 3 wins
    >>> pyconv.max_pool2d_grad(np.ones((1, 1, 1)), x, 2)
    array([[[0., 1.],
            [0., 0.]]])

    Overlapping windows add up:

    >>> pyconv.max_pool2d_grad(np.ones((1, 3, 3)), np.zeros((1, 4, 4)), 2, stride=1)[0]
    array([[1., 1., 1., 0.],
           [1., 1., 1., 0.],
           [1., 1., 1., 0.],
           [0., 0., 0., 0.]])
    """
    fn = "max_pool2d_grad"
    lay = layout_name(fn, layout)
    ga = as_array(fn, "grad_out", grad_out)
    xa = as_array(fn, "x", x)
    geo = pool_geometry(fn, xa.shape, kernel_size, stride, padding, dilation, ceil_mode, lay)
    _grad_operand(fn, geo, ga)
    dtype = result_dtype(ga, xa)
    gx = _empty(geo.in_shape, dtype)
    if geo.n == 0:
        return gx
    _core.pool_backward(kernel_array(xa, dtype=dtype), kernel_array(ga, dtype=dtype), gx,
                        geo.core_tuple(), 0 if lay == "NCHW" else 1, _MAX, False)
    return gx


def avg_pool2d_grad(grad_out: ArrayInput, input_shape: Shape, kernel_size: IntOrPair,
                    stride: Optional[IntOrPair] = None, padding: Padding = 0, *, ceil_mode: bool = False,
                    count_include_pad: Optional[bool] = None, layout: Layout = "NCHW") -> FloatArray:
    """Gradient of :func:`avg_pool2d` with respect to its input.

    Each output's gradient, divided by the forward's divisor for its window,
    is added to every input cell of the window.  Deterministic for any
    thread count.

    Parameters
    ----------
    grad_out : array_like
        Gradient of the loss with respect to the pooling's output, of
        exactly that output's shape.
    input_shape : sequence of int
        The forward input's full shape in the layout's order (3-D or 4-D).
    kernel_size, stride, padding, ceil_mode, count_include_pad, layout : optional
        The forward call's, as in :func:`avg_pool2d`.

    Returns
    -------
    ndarray
        Shape ``input_shape``; float64 if ``grad_out`` is float64 or not
        floating, else float32.

    Raises
    ------
    TypeError
        As :func:`avg_pool2d`, or a non-integer ``input_shape``.
    ValueError
        As :func:`avg_pool2d`, or a ``grad_out`` whose shape is not the
        pooling's output shape.

    See Also
    --------
    avg_pool2d, max_pool2d_grad, pyconv.autograd.avg_pool2d_vjp

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> pyconv.avg_pool2d_grad(np.ones((1, 1, 1)), (1, 2, 2), 2)
    array([[[0.25, 0.25],
            [0.25, 0.25]]])
    >>> pyconv.avg_pool2d_grad(np.ones((1, 2, 2)), (1, 3, 3), 2, stride=1)[0]
    array([[0.25, 0.5 , 0.25],
           [0.5 , 1.  , 0.5 ],
           [0.25, 0.5 , 0.25]])
    """
    fn = "avg_pool2d_grad"
    lay = layout_name(fn, layout)
    ga = as_array(fn, "grad_out", grad_out)
    geo = pool_geometry(fn, input_shape, kernel_size, stride, padding, 1, ceil_mode, lay)
    cip = count_include_pad_flag(fn, count_include_pad, geo)
    _grad_operand(fn, geo, ga)
    dtype = result_dtype(ga)
    gx = _empty(geo.in_shape, dtype)
    if geo.n == 0:
        return gx
    _core.pool_backward(None, kernel_array(ga, dtype=dtype), gx, geo.core_tuple(),
                        0 if lay == "NCHW" else 1, _AVG, cip)
    return gx
