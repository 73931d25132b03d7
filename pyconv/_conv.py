"""conv2d and its shape/plan helpers: normalise, choose a kernel, call C++."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np

from . import _core
from ._prepack import PackedWeight
from ._normalize import (
    kernel_array,
    ConvGeometry,
    activation_code,
    as_array,
    check_out,
    conv_geometry,
    float_dtype,
    layout_name,
    result_dtype,
)

__all__ = ["conv2d", "conv_output_shape", "plan"]

# Every algorithm name of the API contract, with the C++ kernel serving it
# and the predicate saying which shapes it serves.  `None` marks an algorithm
# this build does not implement yet: asking for it raises instead of silently
# running something else.
def _serves_pointwise(geo: ConvGeometry) -> bool:
    return geo.kh == geo.kw == 1 and geo.groups == 1 and not any(geo.pads)


def _serves_all(geo: ConvGeometry) -> bool:
    return True


def _serves_depthwise(geo: ConvGeometry) -> bool:
    return geo.groups == geo.c


_ALGORITHMS: Dict[str, Optional[Tuple[str, Callable[[ConvGeometry], bool], str]]] = {
    "direct": ("direct", _serves_all, ""),
    "im2col": ("im2col", _serves_all, ""),
    "pointwise": ("pointwise", _serves_pointwise,
                  "serves 1x1 kernels with groups=1 and no padding only"),
    "depthwise": ("depthwise", _serves_depthwise, "serves groups == C_in (depthwise) only"),
}


def _auto_algo(geo: ConvGeometry) -> str:
    """algo="auto": a fixed rule of the shape and layout alone (never of the
    thread count or ISA, so default calls are reproducible).

    Measured on the bench suite (AVX2, 1 and 2 threads; README has the
    table).  Depthwise layers (groups == C_in) go to the depthwise kernel in
    NCHW always (it vectorises along rows, and takes narrow planes through
    its NHWC kernel: it won or tied against the direct kernel on every
    shape measured, 4x4 to 112x112), and in NHWC when there are at least two
    channels and a multiplier of at most _AUTO_DW_NHWC_MAX_MULTIPLIER (it
    vectorises across channels; a single-channel input with several filters
    is a dense layer for the direct kernel).  The direct kernel reads the input in place of an im2col copy and
    wins or ties on every NCHW layer and on thin or small NHWC layers.  The
    packed GEMM wins in NHWC once its operands are wide: 1x1 layers with at
    least _AUTO_PW_CHANNELS input and output channels (no lowering at all),
    and large 3x3 layers (reduction >= _AUTO_IM2COL_REDUCTION, output
    channels >= _AUTO_IM2COL_OUT) whose weights overflow the cache the
    direct kernel streams them from.
    """
    icg, ocg = geo.c // geo.groups, geo.oc // geo.groups
    reduction = icg * geo.kh * geo.kw
    if _serves_depthwise(geo):
        if geo.layout == "NCHW":
            return "depthwise"
        # NHWC vectorises across input channels: it needs several of them,
        # and a small multiplier (each multiplier slot is a pass of its own).
        if geo.layout == "NHWC" and geo.c > 1 and ocg <= _AUTO_DW_NHWC_MAX_MULTIPLIER:
            return "depthwise"
    if geo.layout == "NHWC" and icg > 1:
        if _serves_pointwise(geo) and min(icg, ocg) >= _AUTO_PW_CHANNELS:
            return "pointwise"
        if reduction >= _AUTO_IM2COL_REDUCTION and ocg >= _AUTO_IM2COL_OUT:
            return "im2col"
    return "direct"


_AUTO_DW_NHWC_MAX_MULTIPLIER = 4
_AUTO_PW_CHANNELS = 32
_AUTO_IM2COL_REDUCTION = 1024
_AUTO_IM2COL_OUT = 256

_VERBOSE = os.environ.get("PYCONV_VERBOSE", "") not in ("", "0")


def _choose_algo(fn: str, algo: Any, geo: ConvGeometry) -> str:
    """The C++ kernel name for ``algo`` ("auto" = :func:`_auto_algo`)."""
    if not isinstance(algo, str):
        raise TypeError(f"{fn}: algo must be a string, got {algo!r}")
    if algo == "auto":
        return _auto_algo(geo)
    if algo not in _ALGORITHMS:
        names = ", ".join(repr(a) for a in ("auto", *_ALGORITHMS))
        raise ValueError(f"{fn}: algo must be one of {names}, got {algo!r}")
    entry = _ALGORITHMS[algo]
    if entry is None:
        raise ValueError(
            f"{fn}: algo={algo!r} is not available yet in pyconv {_version()}; "
            "use algo='auto', 'direct' or 'im2col'"
        )
    kernel, serves, why = entry
    if not serves(geo):
        raise ValueError(
            f"{fn}: algo={algo!r} {why}; got kernel {geo.kh}x{geo.kw}, groups={geo.groups}, "
            f"pads={geo.pads}"
        )
    return kernel


def _version() -> str:
    from . import __version__

    return __version__


def conv2d(x: Any, weight: Any, bias: Any = None, stride: Any = 1, padding: Any = 0,
           dilation: Any = 1, groups: int = 1, *, layout: str = "NCHW",
           activation: Optional[str] = None, algo: str = "auto",
           out: Optional[np.ndarray] = None) -> np.ndarray:
    """2-D convolution (cross-correlation, as in every deep-learning library).

    Parameters
    ----------
    x : array_like
        Input, ``(N, C, H, W)`` for ``layout="NCHW"`` or ``(N, H, W, C)`` for
        ``"NHWC"``; a 3-D array is one unbatched image.  Any array-like,
        including objects with ``__dlpack__`` (PyTorch CPU tensors, JAX).
    weight : array_like or PackedWeight
        ``(C_out, C_in/groups, KH, KW)`` for NCHW, ``(KH, KW, C_in/groups,
        C_out)`` (HWIO) for NHWC; or the result of :func:`pyconv.prepack`
        for a layer called many times.
    bias : array_like, optional
        ``(C_out,)``.
    stride, dilation : int or (int, int)
        Each >= 1.
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same"
        ``(ph, pw)`` pads both sides; ``((top, bottom), (left, right))`` is
        explicit; ``"same"`` is TensorFlow SAME (output ``ceil(in /
        stride)``, the odd pixel at the bottom/right).
    groups : int
        Input and output channels are split into this many groups;
        ``groups == C_in`` is a depthwise convolution.
    layout : {"NCHW", "NHWC"}
        Layout of ``x`` and of the result.
    activation : {None, "relu", "relu6"}
        Applied after the bias, inside the kernel.
    algo : str
        ``"auto"`` (default) or a specific algorithm; see :func:`plan`.
    out : ndarray, optional
        C-contiguous array of the exact result shape and dtype, not
        overlapping the inputs; written and returned.

    Returns
    -------
    ndarray
        float64 if any of x, weight, bias is float64 or none is floating,
        else float32.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.zeros((1, 3, 32, 32), np.float32)
    >>> w = np.ones((8, 3, 3, 3), np.float32)
    >>> pyconv.conv2d(x, w, stride=2, padding="same").shape
    (1, 8, 16, 16)
    """
    return _conv2d("conv2d", x, weight, bias, stride, padding, dilation, groups, layout, activation,
                   algo, out)


def _conv2d(fn: str, x: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
            groups: Any, layout: str, activation: Optional[str], algo: str,
            out: Optional[np.ndarray]) -> np.ndarray:
    """conv2d's body; ``fn`` names the public function in error messages."""
    lay = layout_name(fn, layout)
    act = activation_code(fn, activation)
    xa = as_array(fn, "x", x)
    packed_weight = weight if isinstance(weight, PackedWeight) else None
    if packed_weight is not None:
        _check_packed(fn, packed_weight, groups, lay)
        wa = packed_weight.weight
    else:
        wa = as_array(fn, "weight", weight)
    ba = None if bias is None else as_array(fn, "bias", bias)
    geo = conv_geometry(fn, xa.shape, wa.shape, stride, padding, dilation, groups, lay)
    if ba is not None and ba.shape != (geo.oc,):
        raise ValueError(f"{fn}: bias must have shape ({geo.oc},) to match the weight, got {ba.shape}")
    kernel = _choose_algo(fn, algo, geo)
    if kernel == "depthwise" and any(geo.pads) and not np.isfinite(wa).all():
        # The depthwise kernel skips taps over the zero padding; a non-finite
        # tap there must still give 0 * inf = NaN, as every other path and the
        # reference do, so such weights (a diverged model) take the direct
        # kernel, which multiplies the padding.  Depthwise weights are small.
        kernel = "direct"
    dtype = result_dtype(xa, wa, ba)
    if out is not None:
        y = check_out(fn, out, geo.out_shape, dtype, [a for a in (xa, wa, ba) if a is not None])
    else:
        y = np.empty(geo.out_shape, dtype=dtype)
    if geo.n == 0:
        return y
    xc = kernel_array(xa, dtype=dtype)
    wc = kernel_array(wa, dtype=dtype)
    bc = None if ba is None else kernel_array(ba, dtype=dtype)
    packed = None if packed_weight is None else packed_weight.packed(dtype, geo.c, kernel)
    start = time.perf_counter() if _VERBOSE else 0.0
    target = y
    if not y.flags.aligned:  # an unaligned out= view: compute aside, then copy
        y = np.empty(geo.out_shape, dtype=dtype)
    _core.conv2d(xc, wc, bc, y, geo.core_tuple(), 0 if lay == "NCHW" else 1, act, kernel, packed)
    if y is not target:
        np.copyto(target, y)
        y = target
    if _VERBOSE:
        ms = (time.perf_counter() - start) * 1e3
        print(f"pyconv_verbose,{fn},{geo.problem_string()} g{geo.groups} "
              f"{'f32' if dtype == np.float32 else 'f64'} {lay},algo={kernel},"
              f"isa={_core.get_isa()},threads={_core.get_num_threads()},{ms:.3f}ms",
              file=sys.stderr)
    return y


def _check_packed(fn: str, pw: PackedWeight, groups: Any, layout: str) -> None:
    """A PackedWeight is only valid for the groups and layout it was made for."""
    if pw.layout != layout:
        raise ValueError(f"{fn}: weight was prepacked for layout {pw.layout!r}, not {layout!r}")
    if not isinstance(groups, bool) and isinstance(groups, (int, np.integer)) and groups != pw.groups:
        raise ValueError(f"{fn}: weight was prepacked for groups={pw.groups}, not groups={groups}")


def conv_output_shape(input_shape: Any, weight_shape: Any, stride: Any = 1, padding: Any = 0,
                      dilation: Any = 1, groups: int = 1, *, layout: str = "NCHW") -> Tuple[int, ...]:
    """Shape of ``conv2d``'s result, in the layout's order, without computing it.

    Raises the same errors as :func:`conv2d` for inconsistent shapes.

    >>> import pyconv
    >>> pyconv.conv_output_shape((1, 3, 32, 32), (20, 3, 8, 8), stride=2, padding=1)
    (1, 20, 14, 14)
    >>> pyconv.conv_output_shape((32, 32, 3), (8, 8, 3, 20), stride=2, padding="same", layout="NHWC")
    (16, 16, 20)
    """
    fn = "conv_output_shape"
    geo = conv_geometry(fn, input_shape, weight_shape, stride, padding, dilation, groups,
                        layout_name(fn, layout))
    return geo.out_shape


def plan(x_shape: Any, weight_shape: Any, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
         groups: int = 1, *, layout: str = "NCHW", dtype: Any = "float32") -> Dict[str, Any]:
    """What ``conv2d(..., algo="auto")`` would do for these shapes.

    Returns a dict with ``algo``, ``isa``, ``pads`` (top, bottom, left,
    right), ``out_shape``, ``flops`` (2 x multiply-adds) and
    ``workspace_bytes`` (scratch memory the kernel allocates per call).

    >>> import pyconv
    >>> p = pyconv.plan((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    >>> p["out_shape"], p["flops"]
    ((1, 64, 56, 56), 231211008)
    """
    fn = "plan"
    lay = layout_name(fn, layout)
    geo = conv_geometry(fn, x_shape, weight_shape, stride, padding, dilation, groups, lay)
    dt = float_dtype(fn, dtype)
    kernel = _choose_algo(fn, "auto", geo)
    ws = _core.workspace_bytes(geo.core_tuple(), 0 if lay == "NCHW" else 1, False, kernel,
                               dt.itemsize) if geo.n else 0
    return {
        "algo": kernel,
        "isa": _core.get_isa(),
        "pads": geo.pads,
        "out_shape": geo.out_shape,
        "flops": geo.flops,
        "workspace_bytes": int(ws),
    }
