"""Max, average and global pooling, and their gradients."""

from __future__ import annotations

import sys
import time
from typing import Any, Optional, Tuple, Union

import numpy as np

from . import _core
from ._conv import _VERBOSE
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
    y = np.empty(geo.out_shape, dtype=dtype)
    idx = np.empty(geo.out_shape, dtype=np.int64) if want_indices else None
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


def pool_output_shape(input_shape: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                      dilation: Any = 1, *, ceil_mode: bool = False, layout: str = "NCHW") -> Tuple[int, ...]:
    """Shape of :func:`max_pool2d` / :func:`avg_pool2d`'s result, without computing it.

    Arguments as in :func:`max_pool2d`; ``input_shape`` is the full shape in
    the layout's order (3-D for one unbatched image).

    >>> import pyconv
    >>> pyconv.pool_output_shape((8, 64, 112, 112), 3, stride=2, padding=1)
    (8, 64, 56, 56)
    >>> pyconv.pool_output_shape((4, 4, 5), 2, padding="same", layout="NHWC")
    (2, 2, 5)
    """
    fn = "pool_output_shape"
    lay = layout_name(fn, layout)
    return pool_geometry(fn, input_shape, kernel_size, stride, padding, dilation, ceil_mode, lay).out_shape


def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1, *,
               ceil_mode: bool = False, return_indices: bool = False,
               layout: str = "NCHW") -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """2-D max pooling.

    Parameters
    ----------
    x : array_like
        ``(N, C, H, W)`` (NCHW) or ``(N, H, W, C)`` (NHWC); 3-D for one image.
    kernel_size : int or pair
        Window size.
    stride : int, pair or None
        Window step; ``None`` (default) means ``kernel_size``.
    padding : int, pair, pair of pairs, "same" or "valid"
        Numeric padding is at most half the window per side, as in
        PyTorch; "same" is TensorFlow's SAME (``out = ceil(in / stride)``).
        Padded cells never win.
    dilation : int or pair
        Spacing between window taps.
    ceil_mode : bool
        Round the output size up (PyTorch's rule: the last window must start
        inside the input or the leading padding).  Numeric padding only.
    return_indices : bool
        Also return, per output, the flat position ``h * W + w`` of the
        winner in its input plane (int64), as ``torch.nn.MaxPool2d``.
    layout : {"NCHW", "NHWC"}

    Returns
    -------
    y : ndarray
        float64 if ``x`` is float64 or not floating, else float32.
    indices : ndarray of int64
        Only with ``return_indices=True``.

    Notes
    -----
    The first maximum in row-major window order wins; a NaN beats any number
    (the first NaN wins), so NaNs propagate.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.array([[0, 1, 0.5, 10], [2, 2.5, 1, -8], [4, 0, 5, 6], [15, 1, 2, 3]])
    >>> pyconv.max_pool2d(x[None], 2)[0]
    array([[ 2.5, 10. ],
           [15. ,  6. ]])
    """
    fn = "max_pool2d"
    lay = layout_name(fn, layout)
    if not isinstance(return_indices, (bool, np.bool_)):
        raise TypeError(f"{fn}: return_indices must be a bool, got {return_indices!r}")
    xa = as_array(fn, "x", x)
    geo = pool_geometry(fn, xa.shape, kernel_size, stride, padding, dilation, ceil_mode, lay)
    y, idx = _run_forward(fn, xa, geo, _MAX, False, bool(return_indices))
    return (y, idx) if return_indices else y


def avg_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, *, ceil_mode: bool = False,
               count_include_pad: Optional[bool] = None, layout: str = "NCHW") -> np.ndarray:
    """2-D average pooling.

    Arguments as in :func:`max_pool2d` (no dilation), and

    count_include_pad : bool or None
        Whether padded cells count in the divisor.  ``None`` (default) means
        True for numeric padding (PyTorch) and False for "same"
        (TensorFlow).  A ``ceil_mode`` window that runs past the padded input
        divides by its size clipped to the padded input, as PyTorch.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.array([[0, 1, 0.5, 10], [2, 2.5, 1, -8], [4, 0, 5, 6], [15, 1, 2, 3]])
    >>> pyconv.avg_pool2d(x[None], 2)[0]
    array([[1.375, 0.875],
           [5.   , 4.   ]])
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


def global_avg_pool2d(x: Any, *, layout: str = "NCHW", keepdims: bool = False) -> np.ndarray:
    """Mean over each image plane: ``(N, C, H, W) -> (N, C)``.

    With ``keepdims=True`` the result is ``(N, C, 1, 1)`` (NCHW) or
    ``(N, 1, 1, C)`` (NHWC); a 3-D input gives ``(C,)`` / ``(C, 1, 1)`` /
    ``(1, 1, C)``.

    >>> import numpy as np, pyconv
    >>> pyconv.global_avg_pool2d(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 3)
    """
    return _global("global_avg_pool2d", x, layout, keepdims, _AVG)


def global_max_pool2d(x: Any, *, layout: str = "NCHW", keepdims: bool = False) -> np.ndarray:
    """Maximum over each image plane (NaN propagates); shapes as
    :func:`global_avg_pool2d`.

    >>> import numpy as np, pyconv
    >>> pyconv.global_max_pool2d(np.arange(32.0).reshape(2, 4, 4), layout="NHWC", keepdims=True)
    array([[[28., 29., 30., 31.]]])
    """
    return _global("global_max_pool2d", x, layout, keepdims, _MAX)


def _grad_operand(fn: str, geo: PoolGeometry, grad_out: np.ndarray) -> None:
    if grad_out.shape != geo.out_shape:
        raise ValueError(
            f"{fn}: grad_out has shape {grad_out.shape} but the pooling's output has shape {geo.out_shape}"
        )


def max_pool2d_grad(grad_out: Any, x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                    dilation: Any = 1, *, ceil_mode: bool = False, layout: str = "NCHW") -> np.ndarray:
    """Gradient of :func:`max_pool2d` with respect to ``x``.

    Each output's gradient goes to exactly the cell that won its window in
    the forward pass (the same tie and NaN rules); gradients of overlapping
    windows add up.  Deterministic for any thread count.

    >>> import numpy as np, pyconv
    >>> x = np.array([[[1.0, 3.0], [2.0, 0.0]]])
    >>> pyconv.max_pool2d_grad(np.ones((1, 1, 1)), x, 2)
    array([[[0., 1.],
            [0., 0.]]])
    """
    fn = "max_pool2d_grad"
    lay = layout_name(fn, layout)
    ga = as_array(fn, "grad_out", grad_out)
    xa = as_array(fn, "x", x)
    geo = pool_geometry(fn, xa.shape, kernel_size, stride, padding, dilation, ceil_mode, lay)
    _grad_operand(fn, geo, ga)
    dtype = result_dtype(ga, xa)
    gx = np.empty(geo.in_shape, dtype=dtype)
    if geo.n == 0:
        return gx
    _core.pool_backward(kernel_array(xa, dtype=dtype), kernel_array(ga, dtype=dtype), gx,
                        geo.core_tuple(), 0 if lay == "NCHW" else 1, _MAX, False)
    return gx


def avg_pool2d_grad(grad_out: Any, input_shape: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, *,
                    ceil_mode: bool = False, count_include_pad: Optional[bool] = None,
                    layout: str = "NCHW") -> np.ndarray:
    """Gradient of :func:`avg_pool2d` with respect to its input.

    ``input_shape`` is the forward input's full shape in the layout's order.
    Each output's gradient is spread over the input cells of its window,
    divided by the forward's divisor.  Deterministic for any thread count.

    >>> import numpy as np, pyconv
    >>> pyconv.avg_pool2d_grad(np.ones((1, 1, 1)), (1, 2, 2), 2)
    array([[[0.25, 0.25],
            [0.25, 0.25]]])
    """
    fn = "avg_pool2d_grad"
    lay = layout_name(fn, layout)
    ga = as_array(fn, "grad_out", grad_out)
    geo = pool_geometry(fn, input_shape, kernel_size, stride, padding, 1, ceil_mode, lay)
    cip = count_include_pad_flag(fn, count_include_pad, geo)
    _grad_operand(fn, geo, ga)
    dtype = result_dtype(ga)
    gx = np.empty(geo.in_shape, dtype=dtype)
    if geo.n == 0:
        return gx
    _core.pool_backward(None, kernel_array(ga, dtype=dtype), gx, geo.core_tuple(),
                        0 if lay == "NCHW" else 1, _AVG, cip)
    return gx
