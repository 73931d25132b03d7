"""Reference pooling: one strided view per window tap, in row-major tap order.

Every output pixel's window is visited tap by tap over a padded copy of the
input with a boolean mask of the real (non-padded) cells, which states the
contract directly: padded cells never win a max and count in an average
only with ``count_include_pad``; among equal maxima the first tap wins, a
NaN beats any number and the first NaN stays.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Literal, Optional, Tuple, Union, overload

import numpy as np

from .._typing import ArrayInput, FloatArray, IndexArray, IntOrPair, Layout, Padding, Shape
from .._normalize import (
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


def _to_nchw(a: np.ndarray, geo: PoolGeometry) -> np.ndarray:
    """Batched NCHW view of an input-shaped or output-shaped array."""
    if not geo.batched:
        a = a[None]
    return a.transpose(0, 3, 1, 2) if geo.layout == "NHWC" else a


def _from_nchw(a: np.ndarray, geo: PoolGeometry) -> np.ndarray:
    if geo.layout == "NHWC":
        a = a.transpose(0, 2, 3, 1)
    a = np.ascontiguousarray(a)
    return a if geo.batched else a[0]


class _Taps:
    """The window taps of a pooling as strided views of a padded plane.

    ``size`` is the padded extent plus whatever a ceil_mode window runs past
    it; ``rows``/``cols`` say which padded positions are real input cells and
    which lie inside the padded input (for count_include_pad).
    """

    def __init__(self, geo: PoolGeometry) -> None:
        self.geo = geo
        (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
        t, b, l, r = geo.pads
        self.ph = max(geo.h + t + b, (geo.oh - 1) * sh + (kh - 1) * dh + 1)
        self.pw = max(geo.w + l + r, (geo.ow - 1) * sw + (kw - 1) * dw + 1)
        ih = np.arange(self.ph) - t
        iw = np.arange(self.pw) - l
        self.real = ((ih >= 0) & (ih < geo.h))[:, None] & ((iw >= 0) & (iw < geo.w))[None, :]
        self.in_padded = (ih < geo.h + b)[:, None] & (iw < geo.w + r)[None, :]
        self.flat = np.clip(ih, 0, None)[:, None] * geo.w + np.clip(iw, 0, None)[None, :]

    def pad(self, a: np.ndarray, fill: float) -> np.ndarray:
        t, _, l, _ = self.geo.pads
        out = np.full(a.shape[:2] + (self.ph, self.pw), fill, dtype=a.dtype)
        out[:, :, t:t + self.geo.h, l:l + self.geo.w] = a
        return out

    def views(self) -> Iterator[Tuple[slice, slice]]:
        """(rows, cols) slices of the padded planes, per tap in row-major order."""
        geo = self.geo
        (kh, kw), (sh, sw), (dh, dw) = geo.kernel, geo.stride, geo.dilation
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dh, i * dh + (geo.oh - 1) * sh + 1, sh)
                cols = slice(j * dw, j * dw + (geo.ow - 1) * sw + 1, sw)
                yield rows, cols


def _max_forward(xa: np.ndarray, geo: PoolGeometry) -> Tuple[np.ndarray, np.ndarray]:
    x = _to_nchw(xa, geo)
    taps = _Taps(geo)
    xp = taps.pad(x, 0.0)
    best = np.zeros(x.shape[:2] + (geo.oh, geo.ow), dtype=x.dtype)
    index = np.full(best.shape, -1, dtype=np.int64)
    have = np.zeros((geo.oh, geo.ow), dtype=bool)
    for rows, cols in taps.views():
        v = xp[:, :, rows, cols]
        real = taps.real[rows, cols]
        with np.errstate(invalid="ignore"):
            beats = ~np.isnan(best) & ~(v <= best)  # v > best, or v is the first NaN
        take = real & (~have | beats)
        best = np.where(take, v, best)
        index = np.where(take, taps.flat[rows, cols], index)
        have |= real
    return best, index


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
    """Reference max pooling; see :func:`pyconv.max_pool2d`.

    Every window is visited tap by tap in row-major order over a padded
    copy with a mask of the real cells: padded cells never win, the first
    maximum wins, and the first NaN beats any number.

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC), or 3-D.
    kernel_size : int or (int, int)
    stride : int, (int, int) or None, default None (= kernel_size)
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same", default 0
    dilation : int or (int, int), default 1
    ceil_mode : bool, default False
    return_indices : bool, default False
    layout : {"NCHW", "NHWC"}, default "NCHW"
        All as in :func:`pyconv.max_pool2d`.

    Returns
    -------
    y : ndarray
        :func:`pyconv.max_pool2d`'s shape and dtype.
    indices : ndarray of int64
        Flat ``h * W + w`` positions of the winners; only with
        ``return_indices=True``.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.max_pool2d`.

    See Also
    --------
    pyconv.max_pool2d

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.array([[0, 1, 0.5, 10], [2, 2.5, 1, -8], [4, 0, 5, 6], [15, 1, 2, 3]])
    >>> y, idx = pyconv.reference.max_pool2d(x[None], 2, return_indices=True)
    >>> y[0]
    array([[ 2.5, 10. ],
           [15. ,  6. ]])
    >>> idx[0]
    array([[ 5,  3],
           [12, 11]])
    """
    fn = "reference.max_pool2d"
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    geo = pool_geometry(fn, xa.shape, kernel_size, stride, padding, dilation, ceil_mode, lay)
    best, index = _max_forward(xa.astype(result_dtype(xa), copy=False), geo)
    y = _from_nchw(best, geo)
    return (y, _from_nchw(index, geo)) if return_indices else y


def _avg_divisor(taps: _Taps, count_include_pad: bool) -> np.ndarray:
    counted = taps.in_padded if count_include_pad else taps.real
    div = np.zeros((taps.geo.oh, taps.geo.ow))
    for rows, cols in taps.views():
        div += counted[rows, cols]
    return div


def avg_pool2d(x: ArrayInput, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None, padding: Padding = 0, *,
               ceil_mode: bool = False, count_include_pad: Optional[bool] = None,
               layout: Layout = "NCHW") -> FloatArray:
    """Reference average pooling; see :func:`pyconv.avg_pool2d`.

    The window sums of the real cells, divided by each window's count of
    counted cells (the real ones, plus those inside the padded input with
    ``count_include_pad``).

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC), or 3-D.
    kernel_size : int or (int, int)
    stride : int, (int, int) or None, default None (= kernel_size)
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same", default 0
    ceil_mode : bool, default False
    count_include_pad : bool or None, default None
    layout : {"NCHW", "NHWC"}, default "NCHW"
        All as in :func:`pyconv.avg_pool2d`.

    Returns
    -------
    ndarray
        :func:`pyconv.avg_pool2d`'s shape and dtype.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.avg_pool2d`.

    See Also
    --------
    pyconv.avg_pool2d

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.array([[0, 1, 0.5, 10], [2, 2.5, 1, -8], [4, 0, 5, 6], [15, 1, 2, 3]])
    >>> pyconv.reference.avg_pool2d(x[None], 2)[0]
    array([[1.375, 0.875],
           [5.   , 4.   ]])
    """
    fn = "reference.avg_pool2d"
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    geo = pool_geometry(fn, xa.shape, kernel_size, stride, padding, 1, ceil_mode, lay)
    cip = count_include_pad_flag(fn, count_include_pad, geo)
    x4 = _to_nchw(xa.astype(result_dtype(xa), copy=False), geo)
    taps = _Taps(geo)
    xp = taps.pad(x4, 0.0)
    total = np.zeros(x4.shape[:2] + (geo.oh, geo.ow), dtype=x4.dtype)
    for rows, cols in taps.views():
        total += np.where(taps.real[rows, cols], xp[:, :, rows, cols], 0)
    return _from_nchw(total / _avg_divisor(taps, cip).astype(x4.dtype), geo)


def pool_output_shape(input_shape: Shape, kernel_size: IntOrPair, stride: Optional[IntOrPair] = None,
                      padding: Padding = 0, dilation: IntOrPair = 1, *, ceil_mode: bool = False,
                      layout: Layout = "NCHW") -> Tuple[int, ...]:
    """Reference :func:`pyconv.pool_output_shape` (the same shared rule).

    Parameters
    ----------
    input_shape : sequence of int
        The input's full shape in the layout's order (3-D or 4-D).
    kernel_size, stride, padding, dilation, ceil_mode, layout : optional
        As in :func:`pyconv.max_pool2d`.

    Returns
    -------
    tuple of int

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.pool_output_shape`.

    See Also
    --------
    pyconv.pool_output_shape

    Examples
    --------
    >>> import pyconv
    >>> pyconv.reference.pool_output_shape((8, 64, 112, 112), 3, stride=2, padding=1)
    (8, 64, 56, 56)
    """
    fn = "reference.pool_output_shape"
    lay = layout_name(fn, layout)
    return pool_geometry(fn, input_shape, kernel_size, stride, padding, dilation, ceil_mode, lay).out_shape


def _global(fn: str, x: Any, layout: str, keepdims: Any, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    # The same argument checks as pyconv's (written out here: the reference
    # must not depend on the code it checks).
    lay = layout_name(fn, layout)
    if not isinstance(keepdims, (bool, np.bool_)):
        raise TypeError(f"{fn}: keepdims must be a bool, got {keepdims!r}")
    xa = as_array(fn, "x", x)
    if xa.ndim not in (3, 4):
        raise ValueError(f"{fn}: input must be 3-D or 4-D, got shape {xa.shape}")
    hw = xa.shape[-2:] if lay == "NCHW" else xa.shape[-3:-1]
    if min(hw) < 1:
        raise ValueError(f"{fn}: input must have at least one row and column, got shape {xa.shape}")
    xa = xa.astype(result_dtype(xa), copy=False)
    axes = (-2, -1) if lay == "NCHW" else (-3, -2)
    return reduce(xa, axis=axes, keepdims=bool(keepdims))


def global_avg_pool2d(x: ArrayInput, *, layout: Layout = "NCHW", keepdims: bool = False) -> FloatArray:
    """Reference :func:`pyconv.global_avg_pool2d` (``np.mean`` over each plane).

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC), or 3-D.
    layout : {"NCHW", "NHWC"}, default "NCHW"
    keepdims : bool, default False
        Keep the pooled axes with size 1.

    Returns
    -------
    ndarray
        :func:`pyconv.global_avg_pool2d`'s shape and dtype.

    Raises
    ------
    TypeError, ValueError
        A bad array, layout or rank, as :func:`pyconv.global_avg_pool2d`.

    See Also
    --------
    pyconv.global_avg_pool2d

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> pyconv.reference.global_avg_pool2d(np.arange(8.0).reshape(2, 2, 2))
    array([1.5, 5.5])
    """
    return _global("reference.global_avg_pool2d", x, layout, keepdims, np.mean)


def global_max_pool2d(x: ArrayInput, *, layout: Layout = "NCHW", keepdims: bool = False) -> FloatArray:
    """Reference :func:`pyconv.global_max_pool2d` (``np.max``, which propagates NaN).

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC), or 3-D.
    layout : {"NCHW", "NHWC"}, default "NCHW"
    keepdims : bool, default False
        Keep the pooled axes with size 1.

    Returns
    -------
    ndarray
        :func:`pyconv.global_max_pool2d`'s shape and dtype.

    Raises
    ------
    TypeError, ValueError
        A bad array, layout or rank, as :func:`pyconv.global_max_pool2d`.

    See Also
    --------
    pyconv.global_max_pool2d

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> pyconv.reference.global_max_pool2d(np.arange(8.0).reshape(2, 2, 2))
    array([3., 7.])
    """
    return _global("reference.global_max_pool2d", x, layout, keepdims, np.max)


def max_pool2d_grad(grad_out: ArrayInput, x: ArrayInput, kernel_size: IntOrPair,
                    stride: Optional[IntOrPair] = None, padding: Padding = 0, dilation: IntOrPair = 1, *,
                    ceil_mode: bool = False, layout: Layout = "NCHW") -> FloatArray:
    """Reference :func:`pyconv.max_pool2d_grad`: each output gradient added to
    its window's winner (``np.add.at`` at the forward's indices).

    Parameters
    ----------
    grad_out : array_like
        Of the pooling's output shape.
    x : array_like
        The forward input.
    kernel_size, stride, padding, dilation, ceil_mode, layout : optional
        The forward call's, as in :func:`pyconv.max_pool2d`.

    Returns
    -------
    ndarray
        ``x``'s shape; dtype by conv2d's rule over ``grad_out`` and ``x``.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.max_pool2d_grad`.

    See Also
    --------
    pyconv.max_pool2d_grad

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> pyconv.reference.max_pool2d_grad(np.ones((1, 1, 1)), np.array([[[1.0, 3.0], [3.0, 0.0]]]), 2)
    array([[[0., 1.],
            [0., 0.]]])
    """
    fn = "reference.max_pool2d_grad"
    lay = layout_name(fn, layout)
    ga = as_array(fn, "grad_out", grad_out)
    xa = as_array(fn, "x", x)
    geo = pool_geometry(fn, xa.shape, kernel_size, stride, padding, dilation, ceil_mode, lay)
    if ga.shape != geo.out_shape:
        raise ValueError(f"{fn}: grad_out has shape {ga.shape} but the pooling's output has shape {geo.out_shape}")
    dtype = result_dtype(ga, xa)
    _, index = _max_forward(xa.astype(dtype, copy=False), geo)
    g = _to_nchw(ga.astype(dtype, copy=False), geo)
    n, c = g.shape[:2]
    gx = np.zeros((n * c, geo.h * geo.w), dtype=dtype)
    planes = np.repeat(np.arange(n * c), geo.oh * geo.ow)
    np.add.at(gx, (planes, index.reshape(-1)), g.reshape(-1))
    return _from_nchw(gx.reshape(n, c, geo.h, geo.w), geo)


def avg_pool2d_grad(grad_out: ArrayInput, input_shape: Shape, kernel_size: IntOrPair,
                    stride: Optional[IntOrPair] = None, padding: Padding = 0, *, ceil_mode: bool = False,
                    count_include_pad: Optional[bool] = None, layout: Layout = "NCHW") -> FloatArray:
    """Reference :func:`pyconv.avg_pool2d_grad`: each output gradient, divided
    by its window's divisor, added to the window's input cells.

    Parameters
    ----------
    grad_out : array_like
        Of the pooling's output shape.
    input_shape : sequence of int
        The forward input's full shape in the layout's order.
    kernel_size, stride, padding, ceil_mode, count_include_pad, layout : optional
        The forward call's, as in :func:`pyconv.avg_pool2d`.

    Returns
    -------
    ndarray
        Shape ``input_shape``.

    Raises
    ------
    TypeError, ValueError
        As :func:`pyconv.avg_pool2d_grad`.

    See Also
    --------
    pyconv.avg_pool2d_grad

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> pyconv.reference.avg_pool2d_grad(np.ones((1, 1, 1)), (1, 2, 2), 2)
    array([[[0.25, 0.25],
            [0.25, 0.25]]])
    """
    fn = "reference.avg_pool2d_grad"
    lay = layout_name(fn, layout)
    ga = as_array(fn, "grad_out", grad_out)
    geo = pool_geometry(fn, input_shape, kernel_size, stride, padding, 1, ceil_mode, lay)
    cip = count_include_pad_flag(fn, count_include_pad, geo)
    if ga.shape != geo.out_shape:
        raise ValueError(f"{fn}: grad_out has shape {ga.shape} but the pooling's output has shape {geo.out_shape}")
    dtype = result_dtype(ga)
    g = _to_nchw(ga.astype(dtype, copy=False), geo)
    taps = _Taps(geo)
    share = g / _avg_divisor(taps, cip).astype(dtype)
    gp = np.zeros(g.shape[:2] + (taps.ph, taps.pw), dtype=dtype)
    for rows, cols in taps.views():
        gp[:, :, rows, cols] += share  # padded positions are cut off below
    t, _, l, _ = geo.pads
    return _from_nchw(gp[:, :, t:t + geo.h, l:l + geo.w], geo)
