"""Reference pooling: one strided view per window tap, in row-major tap order.

Every output pixel's window is visited tap by tap over a padded copy of the
input with a boolean mask of the real (non-padded) cells, which states the
contract directly: padded cells never win a max and count in an average
only with ``count_include_pad``; among equal maxima the first tap wins, a
NaN beats any number and the first NaN stays.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

import numpy as np

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

    def __init__(self, geo: PoolGeometry):
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

    def views(self):
        """(i, j, slices) per tap in row-major order; slices index padded planes."""
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


def max_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, dilation: Any = 1, *,
               ceil_mode: bool = False, return_indices: bool = False,
               layout: str = "NCHW") -> Union[np.ndarray, Tuple[np.ndarray, np.ndarray]]:
    """Reference max pooling; see :func:`pyconv.max_pool2d`."""
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


def avg_pool2d(x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, *, ceil_mode: bool = False,
               count_include_pad: Optional[bool] = None, layout: str = "NCHW") -> np.ndarray:
    """Reference average pooling; see :func:`pyconv.avg_pool2d`."""
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


def pool_output_shape(input_shape: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                      dilation: Any = 1, *, ceil_mode: bool = False, layout: str = "NCHW") -> Tuple[int, ...]:
    """Reference :func:`pyconv.pool_output_shape` (the same shared rule)."""
    fn = "reference.pool_output_shape"
    lay = layout_name(fn, layout)
    return pool_geometry(fn, input_shape, kernel_size, stride, padding, dilation, ceil_mode, lay).out_shape


def _global(fn: str, x: Any, layout: str, keepdims: bool, reduce) -> np.ndarray:
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    if xa.ndim not in (3, 4):
        raise ValueError(f"{fn}: input must be 3-D or 4-D, got shape {xa.shape}")
    xa = xa.astype(result_dtype(xa), copy=False)
    axes = (-2, -1) if lay == "NCHW" else (-3, -2)
    return reduce(xa, axis=axes, keepdims=bool(keepdims))


def global_avg_pool2d(x: Any, *, layout: str = "NCHW", keepdims: bool = False) -> np.ndarray:
    """Reference :func:`pyconv.global_avg_pool2d`."""
    return _global("reference.global_avg_pool2d", x, layout, keepdims, np.mean)


def global_max_pool2d(x: Any, *, layout: str = "NCHW", keepdims: bool = False) -> np.ndarray:
    """Reference :func:`pyconv.global_max_pool2d` (np.max propagates NaN)."""
    return _global("reference.global_max_pool2d", x, layout, keepdims, np.max)


def max_pool2d_grad(grad_out: Any, x: Any, kernel_size: Any, stride: Any = None, padding: Any = 0,
                    dilation: Any = 1, *, ceil_mode: bool = False, layout: str = "NCHW") -> np.ndarray:
    """Reference :func:`pyconv.max_pool2d_grad`: each output gradient added to
    its window's winner."""
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


def avg_pool2d_grad(grad_out: Any, input_shape: Any, kernel_size: Any, stride: Any = None, padding: Any = 0, *,
                    ceil_mode: bool = False, count_include_pad: Optional[bool] = None,
                    layout: str = "NCHW") -> np.ndarray:
    """Reference :func:`pyconv.avg_pool2d_grad`: each output gradient, divided
    by its window's divisor, added to the window's input cells."""
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
