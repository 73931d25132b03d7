"""Backward passes of conv2d, and the transposed convolution.

The input gradient (and conv_transpose2d, which is the same operator) runs
on the forward kernels: for stride 1 it *is* a convolution of grad_out with
the flipped, group-transposed weight, and for stride s it splits into s*s
stride-1 convolutions, one per phase of the input grid (input rows i with
the same (i + pad) mod s meet the same subset of kernel taps).  Each phase
is a plain conv2d that ``algo="auto"`` sends to the direct, GEMM or
depthwise kernel like any forward layer, so the backward pass is as fast as
the forward one, with no scatter and no atomics (deterministic by
construction).  Two kinds of layer have a kernel of their own: strided or
multiplied depthwise layers in NCHW (csrc/depthwise), and layers with a few
input channels (a first layer on RGB or grayscale images, a single channel
with a multiplier of 16 or more included), whose phases would be
convolutions to those few channels: one GEMM to a band of columns, then a
col2im that adds them up in a fixed order (csrc/gemm/grad_input_kernels.cpp,
deterministic for any thread count too: 1.5-2.8x the depthwise kernel on
single-channel layers, 1.3-4.4x the phases on 2-4 channels).  The weight
gradient has its own GEMM kernel (csrc/gemm/grad_weight_kernels.cpp)
reducing over every pixel of every image in a fixed order; stride-1
layers with at most 16 output channels (LeNet) skip the GEMM's im2col
packing: pixels in the vector lanes over zero-padded planes, each dW
element a dot product of two runs (1.3-4x the GEMM there).
"""

from __future__ import annotations

import functools
import time
from typing import Any, List, NamedTuple, Optional, SupportsIndex, Tuple

import numpy as np

from . import _core
from ._runtime import _empty
from ._typing import ArrayInput, ExplicitPadding, FloatArray, IntOrPair, Layout, Padding, Shape
from ._conv import _VERBOSE, _choose_algo, _conv2d, verbose_line
from .reference._grad import _grad_input as _reference_grad_input
from ._normalize import (
    MAX_BYTES,
    all_finite,
    kernel_array,
    ConvGeometry,
    as_array,
    conv_geometry,
    grad_out_check,
    layout_name,
    result_dtype,
    transpose_geometry,
    transpose_operands,
)

__all__ = ["conv2d_grad_bias", "conv2d_grad_input", "conv2d_grad_weight", "conv_transpose2d"]


class _Phase(NamedTuple):
    """One phase of the input grid along one axis.

    Input positions ``start, start + s, ...`` (``count`` of them) receive
    ``grad_out[lo:hi]`` correlated with kernel ``taps`` (in correlation
    order) at dilation ``dilation``, after padding it by ``pads``.
    ``taps`` is empty when no tap reaches this phase (a zero gradient).
    """

    start: int
    count: int
    taps: Tuple[int, ...]
    lo: int
    hi: int
    pads: Tuple[int, int]
    dilation: int


@functools.lru_cache(maxsize=1024)
def _axis_phases(size: int, out_size: int, k: int, s: int, d: int, pad: int) -> Tuple[_Phase, ...]:
    """Split one axis of the input gradient into its stride phases.

    Input position i = a + s*u receives grad_out[o] * w[t] for every tap t
    with o*s + t*d - pad = i, i.e. (t*d - a - pad) divisible by s and
    o = u - (t*d - a - pad) / s.  The taps that qualify are evenly spaced,
    so in u this is a stride-1 correlation with the taps in decreasing order
    (the flipped kernel) at dilation d / gcd(d, s).
    """
    phases = []
    for a in range(min(s, size)):
        count = (size - a + s - 1) // s
        taps = tuple(t for t in range(k - 1, -1, -1) if (t * d - a - pad) % s == 0)
        if not taps:
            phases.append(_Phase(a, count, (), 0, 0, (0, 0), 1))
            continue
        offs = [(a + pad - t * d) // s for t in taps]  # grad_out row for u = 0, per tap
        step = offs[1] - offs[0] if len(offs) > 1 else 1
        first, last = offs[0], offs[-1] + count - 1  # grad_out rows the phase reads
        lo, hi = max(first, 0), min(last, out_size - 1)
        if lo > hi:  # every row it would read is outside grad_out
            phases.append(_Phase(a, count, (), 0, 0, (0, 0), 1))
            continue
        phases.append(_Phase(a, count, taps, lo, hi + 1, (lo - first, last - hi), step))
    return tuple(phases)  # (memoised: layers repeat their geometry every step)


def _phase_weight(w: np.ndarray, groups: int, layout: str, row_taps: Tuple[int, ...],
                  col_taps: Tuple[int, ...]) -> np.ndarray:
    """The weight of a phase of the transposed problem: input and output
    channels swapped within each group, and the kernel rows and columns
    ``row_taps`` x ``col_taps`` in that order (the phases pick taps in
    reverse).  One C-contiguous array made in C++: NumPy's copy of the
    strided, group-transposed view moved 1-2 GB/s (3.9 ms for a 512x512x3x3
    weight, on every input-gradient call)."""
    if layout == "NCHW":
        oc, cg = w.shape[0], w.shape[1]
        shape: Tuple[int, ...] = (groups * cg, oc // groups, len(row_taps), len(col_taps))
    else:
        cg, oc = w.shape[2], w.shape[3]
        shape = (len(row_taps), len(col_taps), oc // groups, groups * cg)
    out = _empty(shape, w.dtype)
    _core.transpose_taps(w, out, 0 if layout == "NCHW" else 1, groups, list(row_taps), list(col_taps))
    return out


_NO_PLAN = object()


def _single_phase(fn: str, geo: ConvGeometry, oh: int, ow: int) -> Optional[Tuple[Any, ...]]:
    """The input gradient of ``geo`` for ``oh`` x ``ow`` grad_out rows and
    columns as one stride-1 convolution, when it is one (stride 1, or a
    stride that leaves one phase): (row phase, column phase, its geometry,
    its kernel), else None.  Memoised on the (itself memoised) geometry, so
    a layer's repeated input gradients skip conv2d's checks, geometry and
    algorithm choice for their phase (15 -> 9 us per small call)."""
    plans = geo.__dict__.get("_phase_plans")
    if plans is None:
        plans = {}
        object.__setattr__(geo, "_phase_plans", plans)
    plan = plans.get((oh, ow), _NO_PLAN)
    if plan is _NO_PLAN:
        plan = None
        (sh, sw), (dh, dw) = geo.stride, geo.dilation
        t, _, l, _ = geo.pads
        rows = _axis_phases(geo.h, oh, geo.kh, sh, dh, t)
        cols = _axis_phases(geo.w, ow, geo.kw, sw, dw, l)
        if len(rows) == 1 and len(cols) == 1 and rows[0].taps and cols[0].taps:
            pr, pc = rows[0], cols[0]
            nchw = geo.layout == "NCHW"
            cg, og = geo.c // geo.groups, geo.oc // geo.groups
            ph, pw = pr.hi - pr.lo, pc.hi - pc.lo
            if nchw:
                src_shape: Tuple[int, ...] = (geo.n, geo.oc, ph, pw)
                w_shape: Tuple[int, ...] = (geo.groups * cg, og, len(pr.taps), len(pc.taps))
            else:
                src_shape = (geo.n, ph, pw, geo.oc)
                w_shape = (len(pr.taps), len(pc.taps), og, geo.groups * cg)
            pgeo = conv_geometry(fn, src_shape, w_shape, 1, (pr.pads, pc.pads), (pr.dilation, pc.dilation),
                                 geo.groups, geo.layout)
            x_shape = (geo.n, geo.c, geo.h, geo.w) if nchw else (geo.n, geo.h, geo.w, geo.c)
            if pgeo.out_shape == x_shape:
                plan = (pr, pc, pgeo, _choose_algo(fn, "auto", pgeo))
        plans[(oh, ow)] = plan
    return plan


def _serves_col2im(geo: ConvGeometry) -> bool:
    """GEMM + col2im for the input gradient (groups 1): layers with at
    most _COL2IM_MAX_IN input channels, where the phases' direct kernel would
    vectorise over those few channels, and enough output channels
    (_COL2IM_MIN_OUT) for the GEMM's reduction.  Measured (AVX2, AVX-512,
    generic): 1.3-4.4x on such layers, 224x224 7x7/2 to 16x16 3x3/1.  In
    NHWC a stride-1 layer with a small kernel and a short reduction keeps
    its phase (one direct convolution: 0.7-0.9x for col2im at 16 output
    channels, 3x3), so NHWC stride 1 also needs _COL2IM_NHWC_S1_OUT output
    channels or a kernel of at least 5x5, and never a 1x1 kernel (its
    columns are the gradient itself: 8x80x80x32 -> 3 took 1.1-1.6 ms that
    way, 0.4 as the phase's direct convolution)."""
    if geo.groups != 1 or geo.c > _COL2IM_MAX_IN or geo.oc < _COL2IM_MIN_OUT:
        return False
    if geo.layout == "NHWC" and geo.stride == (1, 1):
        return geo.kh * geo.kw > 1 and (geo.oc >= _COL2IM_NHWC_S1_OUT or geo.kh * geo.kw >= 25)
    return True


_COL2IM_MAX_IN = 4
_COL2IM_MIN_OUT = 16
_COL2IM_NHWC_S1_OUT = 32


def _native_grad_input(fn: str, algo: str, gy4: np.ndarray, w: np.ndarray, geo: ConvGeometry,
                       x_shape: Tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """The input gradient by one C++ kernel ("depthwise" or "col2im")."""
    dx = _empty(x_shape, dtype)
    start = time.perf_counter() if _VERBOSE else 0.0
    layout = 0 if geo.layout == "NCHW" else 1
    _core.conv2d_grad_input(kernel_array(w), kernel_array(gy4), dx, geo.core_tuple(), layout, algo)
    if _VERBOSE:
        verbose_line(fn, geo, dtype, f"{algo}_grad_input", start)
    return dx if geo.batched else dx[0]


def _grad_input(fn: str, gy: np.ndarray, w: np.ndarray, geo: ConvGeometry, dtype: np.dtype) -> np.ndarray:
    """Input gradient of ``geo`` for grad_out ``gy`` (which may have fewer
    rows/columns than geo's output: the missing ones are zeros)."""
    lay = geo.layout
    nchw = lay == "NCHW"
    x_shape = (geo.n, geo.c, geo.h, geo.w) if nchw else (geo.n, geo.h, geo.w, geo.c)
    gy4 = gy if geo.batched else gy[None]
    if geo.n == 0:
        out = _empty(x_shape, dtype)
        out.fill(0)
        return out if geo.batched else out[0]
    if not all_finite(w):
        # The phase convolutions pad grad_out with zeros: a non-finite weight
        # tap meeting that padding would make 0 * inf = NaN where the true
        # gradient has no such product.  Only then (a diverged model), the
        # exact sum of the valid products by the reference algorithm.
        return _reference_grad_input(fn, gy, w, geo).astype(dtype, copy=False)
    oh, ow = (gy4.shape[2], gy4.shape[3]) if nchw else (gy4.shape[1], gy4.shape[2])
    (sh, sw), (dh, dw) = geo.stride, geo.dilation
    if (oh, ow) == (geo.oh, geo.ow) and _serves_col2im(geo):
        return _native_grad_input(fn, "col2im", gy4, w, geo, x_shape, dtype)
    if nchw and geo.groups == geo.c and (oh, ow) == (geo.oh, geo.ow) and (sh > 1 or geo.oc > geo.c):
        # Depthwise, strided or with a multiplier: its own kernel, one pass
        # (the phases would be s*s small calls, or a grouped convolution).
        return _native_grad_input(fn, "depthwise", gy4, w, geo, x_shape, dtype)
    plan = None if _VERBOSE or w.dtype != dtype or gy4.dtype != dtype else _single_phase(fn, geo, oh, ow)
    if plan is not None:
        # One stride-1 convolution of grad_out (a view of it, copied only
        # when not contiguous) with the flipped, group-transposed weight,
        # straight to the kernel (the weight is finite: checked above).
        pr, pc, pgeo, kernel = plan
        src = gy4[:, :, pr.lo:pr.hi, pc.lo:pc.hi] if nchw else gy4[:, pr.lo:pr.hi, pc.lo:pc.hi, :]
        sub = _phase_weight(kernel_array(w), geo.groups, lay, pr.taps, pc.taps)
        dx = _empty(x_shape, dtype)
        _core.conv2d(kernel_array(src), sub, None, dx, pgeo.core_tuple(), 0 if nchw else 1, 0, kernel, None)
        return dx if geo.batched else dx[0]
    t, _, l, _ = geo.pads
    rows = _axis_phases(geo.h, oh, geo.kh, sh, dh, t)
    cols = _axis_phases(geo.w, ow, geo.kw, sw, dw, l)
    wk = kernel_array(w)
    single = len(rows) == 1 and len(cols) == 1
    phases: List[Optional[np.ndarray]] = []
    for pr in rows:
        for pc in cols:
            if not pr.taps or not pc.taps:
                phases.append(None)
                continue
            if nchw:
                src = gy4[:, :, pr.lo:pr.hi, pc.lo:pc.hi]
            else:
                src = gy4[:, pr.lo:pr.hi, pc.lo:pc.hi, :]
            sub = _phase_weight(wk, geo.groups, lay, pr.taps, pc.taps)
            # (A single phase's result is the gradient itself, of x's shape.)
            phases.append(_conv2d(fn, src, sub, None, 1, (pr.pads, pc.pads), (pr.dilation, pc.dilation),
                                  geo.groups, lay, None, "auto", None))
    if single and phases[0] is not None:
        dx = phases[0]
    else:
        # (a stride beyond the size has the same phases as one equal to it)
        dx = _empty(x_shape, dtype)
        _core.interleave_phases(dx, phases, geo.n, geo.c, geo.h, geo.w, min(sh, geo.h), min(sw, geo.w),
                                0 if nchw else 1)
    return dx if geo.batched else dx[0]


def conv2d_grad_input(grad_out: ArrayInput, weight: ArrayInput, input_shape: Shape, stride: IntOrPair = 1,
                      padding: Padding = 0, dilation: IntOrPair = 1, groups: SupportsIndex = 1, *,
                      layout: Layout = "NCHW") -> FloatArray:
    """Gradient of :func:`pyconv.conv2d` with respect to its input.

    The adjoint of the convolution: every ``grad_out`` pixel, times the
    weight, is added back onto the input window it was computed from.  It
    runs on the forward kernels (a stride-s problem splits into s*s stride-1
    convolutions, one per phase of the input grid), or for layers with at
    most 4 input channels and at least 16 output channels (first layers on
    images) as one GEMM and a col2im, and is bitwise identical for any
    thread count.

    Parameters
    ----------
    grad_out : array_like
        Gradient of the loss with respect to conv2d's output, of exactly
        that output's shape: ``(N, C_out, H_out, W_out)`` (NCHW) or ``(N,
        H_out, W_out, C_out)`` (NHWC), 3-D for an unbatched image.
    weight : array_like
        The forward weight: ``(C_out, C_in/groups, KH, KW)`` (NCHW) or
        ``(KH, KW, C_in/groups, C_out)`` (NHWC).
    input_shape : sequence of int
        The forward input's full shape in the layout's order, 3-D or 4-D (it
        fixes ``"same"`` padding and the rows a stride leaves unused).
    stride, padding, dilation, groups, layout : optional
        The forward call's, in the forms :func:`conv2d` accepts; defaults 1,
        0, 1, 1, "NCHW".

    Returns
    -------
    ndarray
        Shape ``input_shape``; dtype by conv2d's rule over ``grad_out`` and
        ``weight``.  Input pixels that no window reads get a zero gradient.

    Raises
    ------
    TypeError
        As :func:`conv2d`, or a non-integer ``input_shape``.
    ValueError
        What :func:`conv2d` would refuse for ``input_shape`` and ``weight``,
        or a ``grad_out`` whose shape is not the forward output's.

    See Also
    --------
    conv2d_grad_weight, conv2d_grad_bias
    conv_transpose2d : The same operator, with PyTorch's transposed-convolution arguments.
    pyconv.autograd.conv2d_vjp : All three gradients from one forward call.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> w = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    >>> gy = np.ones((1, 1, 2, 2), np.float32)
    >>> pyconv.conv2d_grad_input(gy, w, (1, 1, 3, 3))[0, 0]
    array([[0., 1., 1.],
           [2., 6., 4.],
           [2., 5., 3.]], dtype=float32)

    With stride 2 the last row and column of a 3x3 input are never read:

    >>> pyconv.conv2d_grad_input(np.ones((1, 1, 1)), w, (1, 3, 3), stride=2)[0]
    array([[0., 1., 0.],
           [2., 3., 0.],
           [0., 0., 0.]])
    """
    fn = "conv2d_grad_input"
    lay = layout_name(fn, layout)
    gy = as_array(fn, "grad_out", grad_out)
    wa = as_array(fn, "weight", weight)
    geo = conv_geometry(fn, input_shape, wa.shape, stride, padding, dilation, groups, lay)
    grad_out_check(fn, gy.shape, geo)
    dtype = result_dtype(gy, wa)
    return _grad_input(fn, gy.astype(dtype, copy=False), wa.astype(dtype, copy=False), geo, dtype)


def conv2d_grad_weight(x: ArrayInput, grad_out: ArrayInput, weight_shape: Shape, stride: IntOrPair = 1,
                       padding: Padding = 0, dilation: IntOrPair = 1, groups: SupportsIndex = 1, *,
                       layout: Layout = "NCHW") -> FloatArray:
    """Gradient of :func:`pyconv.conv2d` with respect to its weight.

    For each filter tap, the sum over images and output pixels of
    ``grad_out`` times the input pixel that tap read, reduced in a fixed
    order: bitwise identical for any thread count.

    Parameters
    ----------
    x : array_like
        The forward input: ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W, C_in)``
        (NHWC), 3-D for an unbatched image.
    grad_out : array_like
        Gradient of the loss with respect to conv2d's output, of exactly
        that output's shape.
    weight_shape : sequence of int
        The weight's full shape: ``(C_out, C_in/groups, KH, KW)`` (NCHW) or
        ``(KH, KW, C_in/groups, C_out)`` (NHWC).
    stride, padding, dilation, groups, layout : optional
        The forward call's, in the forms :func:`conv2d` accepts; defaults 1,
        0, 1, 1, "NCHW".

    Returns
    -------
    ndarray
        Shape ``weight_shape``; dtype by conv2d's rule over ``x`` and
        ``grad_out``.

    Raises
    ------
    TypeError
        As :func:`conv2d`, or a non-integer ``weight_shape``.
    ValueError
        What :func:`conv2d` would refuse for ``x`` and ``weight_shape``, or a
        ``grad_out`` whose shape is not the forward output's.

    See Also
    --------
    conv2d_grad_input, conv2d_grad_bias, pyconv.autograd.conv2d_vjp

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.arange(9, dtype=np.float32).reshape(1, 1, 3, 3)
    >>> pyconv.conv2d_grad_weight(x, np.ones((1, 1, 2, 2), np.float32), (1, 1, 2, 2))[0, 0]
    array([[ 8., 12.],
           [20., 24.]], dtype=float32)

    The same in NHWC, where the weight is ``(KH, KW, C_in, C_out)``:

    >>> gw = pyconv.conv2d_grad_weight(x.reshape(1, 3, 3, 1), np.ones((1, 2, 2, 1), np.float32),
    ...                                (2, 2, 1, 1), layout="NHWC")
    >>> gw[:, :, 0, 0]
    array([[ 8., 12.],
           [20., 24.]], dtype=float32)
    """
    fn = "conv2d_grad_weight"
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    gy = as_array(fn, "grad_out", grad_out)
    geo = conv_geometry(fn, xa.shape, weight_shape, stride, padding, dilation, groups, lay)
    grad_out_check(fn, gy.shape, geo)
    dtype = result_dtype(xa, gy)
    return _grad_weight(xa, gy, geo, dtype)


def _grad_weight(xa: np.ndarray, gy: np.ndarray, geo: ConvGeometry, dtype: np.dtype) -> np.ndarray:
    if geo.layout == "NCHW":
        w_shape = (geo.oc, geo.c // geo.groups, geo.kh, geo.kw)
    else:
        w_shape = (geo.kh, geo.kw, geo.c // geo.groups, geo.oc)
    dw = _empty(w_shape, dtype)
    if geo.n == 0:
        dw[...] = 0
        return dw
    xc = kernel_array(xa, dtype=dtype)
    gyc = kernel_array(gy, dtype=dtype)
    start = time.perf_counter() if _VERBOSE else 0.0
    _core.conv2d_grad_weight(xc, gyc, dw, geo.core_tuple(), 0 if geo.layout == "NCHW" else 1)
    if _VERBOSE:
        # (the label only: the C++ driver decides, by pixel_lane_grad_weight in
        # csrc/core/problem.hpp, which this mirrors)
        pixel_lanes = geo.groups == 1 and geo.stride == (1, 1) and geo.kh * geo.kw > 1 and geo.oc <= 16
        depthwise = geo.groups == geo.c and not pixel_lanes and (geo.layout == "NCHW" or geo.c > 1)
        kernel = "depthwise" if depthwise else "pixel_lanes" if pixel_lanes else "gemm"
        verbose_line("conv2d_grad_weight", geo, dtype, f"grad_weight({kernel})", start)
    return dw


def conv2d_grad_bias(grad_out: ArrayInput, *, layout: Layout = "NCHW") -> FloatArray:
    """Gradient of :func:`pyconv.conv2d` with respect to its bias.

    ``grad_out`` summed over images and pixels (NumPy's sum).

    Parameters
    ----------
    grad_out : array_like
        ``(N, C_out, H_out, W_out)`` (NCHW) or ``(N, H_out, W_out, C_out)``
        (NHWC), or 3-D for an unbatched image.
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Says which axis holds the channels.

    Returns
    -------
    ndarray
        ``(C_out,)``; float64 if ``grad_out`` is float64 or not floating,
        else float32.

    Raises
    ------
    TypeError
        A complex, object or string array, or a non-string ``layout``.
    ValueError
        ``grad_out`` not 3-D or 4-D, too large for 64-bit sizes, or an
        unknown ``layout``.

    See Also
    --------
    conv2d_grad_input, conv2d_grad_weight, pyconv.autograd.conv2d_vjp

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> pyconv.conv2d_grad_bias(np.ones((2, 3, 4, 4), np.float32))
    array([32., 32., 32.], dtype=float32)
    >>> pyconv.conv2d_grad_bias(np.ones((4, 4, 3)), layout="NHWC")
    array([16., 16., 16.])
    """
    fn = "conv2d_grad_bias"
    lay = layout_name(fn, layout)
    gy = as_array(fn, "grad_out", grad_out)
    if gy.ndim not in (3, 4):
        raise ValueError(f"{fn}: grad_out must be 4-D (batched) or 3-D, got shape {gy.shape}")
    if gy.size * 8 >= MAX_BYTES:
        raise ValueError(f"{fn}: grad_out is too large ({gy.size} elements overflow 64-bit sizes)")
    dtype = result_dtype(gy)
    channel_axis = gy.ndim - 3 if lay == "NCHW" else gy.ndim - 1
    axes = tuple(i for i in range(gy.ndim) if i != channel_axis)
    return gy.astype(dtype, copy=False).sum(axis=axes)


def conv_transpose2d(x: ArrayInput, weight: ArrayInput, bias: Optional[ArrayInput] = None,
                     stride: IntOrPair = 1, padding: ExplicitPadding = 0, output_padding: IntOrPair = 0,
                     dilation: IntOrPair = 1, groups: SupportsIndex = 1, *, layout: Layout = "NCHW",
                     output_size: Optional[Shape] = None) -> FloatArray:
    """Transposed convolution (a.k.a. fractionally strided convolution), PyTorch semantics.

    The gradient of :func:`conv2d` with respect to its input, seen as an op:
    each input pixel, times the weight, is added onto a ``KH x KW`` window of
    the output, the windows ``stride`` apart; ``padding`` is then cut from
    the borders.  Runs on the forward kernels, deterministically.

    Parameters
    ----------
    x : array_like
        ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W, C_in)`` (NHWC), or 3-D for
        one unbatched image.
    weight : array_like
        ``(C_in, C_out/groups, KH, KW)`` for NCHW, ``(KH, KW, C_out/groups,
        C_in)`` for NHWC (PyTorch's ``ConvTranspose2d.weight`` for NCHW).
    bias : array_like, optional
        ``(C_out,)``.  Default None.
    stride, dilation : int or (int, int), default 1
        Each >= 1.
    padding : int, (int, int) or ((top, bottom), (left, right)), default 0
        Rows/columns removed from the full output (no string forms).
    output_padding : int or (int, int), default 0
        Extra rows/columns at the bottom/right, each smaller than
        ``max(stride, dilation)`` along its axis.
    groups : int, default 1
        Must divide C_in.
    layout : {"NCHW", "NHWC"}, default "NCHW"
    output_size : (int, int) or full shape, optional
        The wanted ``(H_out, W_out)`` (or the full output shape); derives
        ``output_padding``, which must then be 0.

    Returns
    -------
    ndarray
        ``(N, C_out, H_out, W_out)`` (NCHW) or ``(N, H_out, W_out, C_out)``
        (NHWC), 3-D for a 3-D input, with ``H_out = (H - 1)*stride - top -
        bottom + dilation*(KH - 1) + output_padding + 1`` (likewise
        ``W_out``); :func:`conv2d`'s dtype rule.

    Raises
    ------
    TypeError
        As :func:`conv2d`.
    ValueError
        Channels that do not match the weight, ``groups`` not dividing C_in,
        a bias that is not ``(C_out,)``; a string ``padding``;
        ``output_padding`` not below ``max(stride, dilation)``; an
        ``output_size`` that is unreachable (the message gives the valid
        range) or given together with ``output_padding``; an empty output.

    See Also
    --------
    transpose_output_shape : The result's shape, without computing it.
    conv2d_grad_input : The same operator, with conv2d's arguments.
    pyconv.autograd.conv_transpose2d_vjp : The forward and its pullback.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.array([[[[1, 2], [3, 4]]]], np.float32)
    >>> w = np.ones((1, 1, 2, 2), np.float32)
    >>> pyconv.conv_transpose2d(x, w, stride=2)[0, 0]
    array([[1., 1., 2., 2.],
           [1., 1., 2., 2.],
           [3., 3., 4., 4.],
           [3., 3., 4., 4.]], dtype=float32)
    >>> pyconv.conv_transpose2d(x, w)[0, 0]
    array([[ 1.,  3.,  2.],
           [ 4., 10.,  6.],
           [ 3.,  7.,  4.]], dtype=float32)

    ``output_size`` picks between the sizes a stride makes ambiguous:

    >>> x = np.ones((1, 16, 7, 7), np.float32)
    >>> w = np.ones((16, 8, 3, 3), np.float32)
    >>> pyconv.conv_transpose2d(x, w, stride=2, padding=1).shape
    (1, 8, 13, 13)
    >>> pyconv.conv_transpose2d(x, w, stride=2, padding=1, output_size=(14, 14)).shape
    (1, 8, 14, 14)
    """
    return _conv_transpose2d("conv_transpose2d", x, weight, bias, stride, padding, output_padding, dilation,
                             groups, layout, output_size)[0]


def _conv_transpose2d(fn: str, x: Any, weight: Any, bias: Any, stride: Any, padding: Any, output_padding: Any,
                      dilation: Any, groups: Any, layout: Any, output_size: Any) -> Tuple[Any, ...]:
    """conv_transpose2d's body: (y, then transpose_operands' checked operands)."""
    lay, xa, wa, ba, geo, dtype = transpose_operands(fn, x, weight, bias, stride, padding, output_padding,
                                                     dilation, groups, layout, output_size)
    y = _grad_input(fn, xa, wa, geo, dtype)
    if ba is not None:
        y += ba.reshape((-1, 1, 1) if lay == "NCHW" else (-1,))
    return y, lay, xa, wa, ba, geo, dtype


def transpose_output_shape(input_shape: Shape, weight_shape: Shape, stride: IntOrPair = 1,
                           padding: ExplicitPadding = 0, output_padding: IntOrPair = 0,
                           dilation: IntOrPair = 1, groups: SupportsIndex = 1, *, layout: Layout = "NCHW",
                           output_size: Optional[Shape] = None) -> Tuple[int, ...]:
    """Shape of :func:`conv_transpose2d`'s result, without computing it.

    Parameters
    ----------
    input_shape : sequence of int
        ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W, C_in)`` (NHWC), or 3-D.
    weight_shape : sequence of int
        ``(C_in, C_out/groups, KH, KW)`` (NCHW) or ``(KH, KW, C_out/groups,
        C_in)`` (NHWC).
    stride, padding, output_padding, dilation, groups, layout, output_size : optional
        As in :func:`conv_transpose2d` (same forms and defaults).

    Returns
    -------
    tuple of int
        ``(N, C_out, H_out, W_out)`` or ``(N, H_out, W_out, C_out)``, 3-D for
        a 3-D ``input_shape``.

    Raises
    ------
    TypeError
        A shape or argument that is not made of ints.
    ValueError
        What :func:`conv_transpose2d` would refuse, with the same messages.

    See Also
    --------
    conv_transpose2d, conv_output_shape

    Examples
    --------
    >>> import pyconv
    >>> pyconv.transpose_output_shape((1, 16, 7, 7), (16, 8, 3, 3), stride=2, padding=1, output_padding=1)
    (1, 8, 14, 14)
    >>> pyconv.transpose_output_shape((7, 7, 16), (3, 3, 8, 16), stride=2, padding=1,
    ...                               output_size=(14, 14), layout="NHWC")
    (14, 14, 8)
    """
    fn = "transpose_output_shape"
    geo = transpose_geometry(fn, input_shape, weight_shape, stride, padding, output_padding, dilation,
                             groups, layout_name(fn, layout), output_size)
    shape = (geo.n, geo.c, geo.h, geo.w) if geo.layout == "NCHW" else (geo.n, geo.h, geo.w, geo.c)
    return shape if geo.batched else shape[1:]
