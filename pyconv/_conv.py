"""conv2d and its shape/plan helpers: normalise, choose a kernel, call C++."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Dict, Optional, SupportsIndex, Tuple, Union

import numpy as np
import numpy.typing as npt

from . import _core
from ._runtime import _empty
from ._prepack import PackedWeight
from ._typing import Activation, Algo, ArrayInput, FloatArray, IntOrPair, Layout, Padding, Plan, Shape
from ._normalize import (
    all_finite,
    kernel_array,
    ConvGeometry,
    _plain,
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

    Measured on the bench suite (AVX2 and AVX-512, 1 and 2 threads;
    README has the table).  Depthwise layers (groups == C_in) go to the depthwise kernel in
    NCHW always (it vectorises along rows, and takes narrow planes through
    its NHWC kernel: it won or tied against the direct kernel on every
    shape measured, 4x4 to 112x112), and in NHWC when there are at least two
    channels and a multiplier of at most _AUTO_DW_NHWC_MAX_MULTIPLIER (it
    vectorises across channels; a single-channel input with several filters
    is a dense layer for the direct kernel).  The direct kernel reads the
    input in place of an im2col copy and wins or ties on most NCHW layers and
    on thin or small NHWC layers.  The packed GEMM wins once its operands are
    wide: 1x1 layers with at least _AUTO_PW_CHANNELS input and output
    channels in NHWC (no lowering at all), 1x1 stride-1 layers in NCHW (each
    input plane is a row of the GEMM's B matrix: the packing is a plain
    copy) that are wide (at least _AUTO_PW_NCHW_CHANNELS channels each way:
    1.06-1.35x over direct on resnet50's and mobilenet's 1x1 layers), thin
    (at most _AUTO_PW_NCHW_THIN input channels: 1.1-1.7x) or not expanding
    (output channels at most twice the input's: 1.1-1.75x; expanding
    mid-width layers such as 24 -> 64 lose on AVX2), and large 3x3 layers in NHWC
    (reduction >= _AUTO_IM2COL_REDUCTION, output channels >=
    _AUTO_IM2COL_OUT) whose weights overflow the cache the direct kernel
    streams them from.
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
    if (geo.layout == "NCHW" and _serves_pointwise(geo) and geo.stride == (1, 1)
            and (min(icg, ocg) >= _AUTO_PW_NCHW_CHANNELS or icg <= _AUTO_PW_NCHW_THIN or ocg <= 2 * icg)):
        return "pointwise"
    return "direct"


_AUTO_DW_NHWC_MAX_MULTIPLIER = 4
_AUTO_PW_CHANNELS = 32
_AUTO_PW_NCHW_CHANNELS = 64
_AUTO_PW_NCHW_THIN = 8
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


def conv2d(x: ArrayInput, weight: Union[ArrayInput, PackedWeight], bias: Optional[ArrayInput] = None,
           stride: IntOrPair = 1, padding: Padding = 0, dilation: IntOrPair = 1, groups: SupportsIndex = 1, *,
           layout: Layout = "NCHW", activation: Activation = None, algo: Algo = "auto",
           out: Optional[npt.NDArray[Any]] = None) -> FloatArray:
    """2-D convolution (cross-correlation, as in every deep-learning library).

    In NCHW terms, with ``xpad`` the zero-padded input and ``g = o // (C_out
    / groups)`` the group of output channel ``o``::

        y[n, o, i, j] = act(bias[o] + sum over c < C_in/groups, p < KH, q < KW of
                            xpad[n, g*C_in/groups + c, i*sh + p*dh, j*sw + q*dw] * weight[o, c, p, q])

    Computed by C++ kernels (SIMD for the active ISA, OpenMP threads, the GIL
    released); the result is bitwise identical for any thread count and on
    repeated calls.

    Parameters
    ----------
    x : array_like
        Input, ``(N, C_in, H, W)`` for ``layout="NCHW"`` or ``(N, H, W,
        C_in)`` for ``"NHWC"``; a 3-D ``(C_in, H, W)`` / ``(H, W, C_in)``
        array is one unbatched image and gives a 3-D result.  Any array-like,
        including objects with ``__dlpack__`` (PyTorch CPU tensors, JAX
        arrays).  Non-contiguous input is copied once; C-contiguous input of
        the computation dtype is never copied.
    weight : array_like or PackedWeight
        ``(C_out, C_in/groups, KH, KW)`` (OIHW) for NCHW, ``(KH, KW,
        C_in/groups, C_out)`` (HWIO) for NHWC; or the result of
        :func:`pyconv.prepack` for a layer called many times.
    bias : array_like, optional
        ``(C_out,)``, added to every pixel of its output channel.  Default
        None (no bias).
    stride : int or (int, int), default 1
        Step of the window along (H, W); each >= 1.
    padding : int, (int, int), ((int, int), (int, int)), "valid" or "same", default 0
        Zeros around the input: ``p`` on all four sides; ``(ph, pw)`` on
        both sides of each axis; ``((top, bottom), (left, right))``
        explicitly; ``"valid"``: none; ``"same"``: TensorFlow SAME, output
        ``ceil(in / stride)`` with total padding ``max((out - 1)*stride +
        (k - 1)*dilation + 1 - in, 0)``, the odd pixel at the bottom/right.
    dilation : int or (int, int), default 1
        Spacing between kernel taps; each >= 1.
    groups : int, default 1
        Channels are split into ``groups`` groups convolved separately; it
        must divide C_in and C_out.  ``groups == C_in`` is a depthwise
        convolution.
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Layout of ``x`` and of the result; it also fixes the weight format.
    activation : {None, "relu", "relu6"}, default None
        Applied after the bias, fused into the kernel.
    algo : {"auto", "direct", "im2col", "pointwise", "depthwise"}, default "auto"
        ``"auto"`` is a fixed rule of the shapes and layout, never of the
        thread count (see :func:`plan`).  ``"direct"`` and ``"im2col"``
        serve every convolution; ``"pointwise"`` 1x1 kernels with
        ``groups=1`` and no padding; ``"depthwise"`` ``groups == C_in``.
        Every algorithm gives the same result within DESIGN.md's tolerance.
    out : ndarray, optional
        C-contiguous, writeable array of exactly the result's shape and
        dtype, not overlapping the inputs: written and returned.  It is left
        untouched when the call raises.

    Returns
    -------
    ndarray
        ``(N, C_out, H_out, W_out)`` (NCHW) or ``(N, H_out, W_out, C_out)``
        (NHWC), 3-D for a 3-D input, where ``H_out = (H + top + bottom -
        dilation*(KH - 1) - 1) // stride + 1`` and likewise ``W_out``.
        float64 if any of ``x``, ``weight``, ``bias`` is float64 or none of
        them is floating; float32 otherwise (float16 counts as float32).

    Raises
    ------
    TypeError
        A complex, object or string array; ``stride``, ``dilation``,
        ``padding`` or ``groups`` not made of ints (bools and floats
        included); ``layout``, ``activation`` or ``algo`` not a string;
        ``out`` not an ndarray.
    ValueError
        Inconsistent shapes (not 3-D/4-D input or 4-D weight, channels that
        do not match the weight, ``groups`` not dividing them, a bias that
        is not ``(C_out,)``, a dilated kernel larger than the padded input);
        ``stride``/``dilation``/``groups`` < 1 or negative padding; an
        unknown ``layout``, ``activation`` or ``algo``, or an ``algo`` that
        cannot serve this shape; a :class:`PackedWeight` made for another
        layout or ``groups``; ``out`` of the wrong shape or dtype,
        non-contiguous, read-only or overlapping an input; sizes that
        overflow 64-bit arithmetic.  The message names the function, the
        argument and the values seen.
    MemoryError
        The output or a workspace cannot be allocated.

    See Also
    --------
    conv_output_shape : The result's shape, without computing it.
    plan : What ``algo="auto"`` chooses for a shape.
    prepack : A weight prepared once for many calls.
    depthwise_conv2d, separable_conv2d : MobileNet-style layers.
    conv2d_grad_input, conv2d_grad_weight, conv2d_grad_bias : Its gradients.
    pyconv.autograd.conv2d_vjp : The forward and its pullback in one call.
    pyconv.reference.conv2d : The pure-NumPy oracle.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    >>> w = np.ones((1, 1, 2, 2), np.float32)
    >>> pyconv.conv2d(x, w)[0, 0]
    array([[10., 14., 18.],
           [26., 30., 34.],
           [42., 46., 50.]], dtype=float32)

    Bias and a fused activation:

    >>> pyconv.conv2d(x, w, np.array([-20.0], np.float32), activation="relu")[0, 0]
    array([[ 0.,  0.,  0.],
           [ 6., 10., 14.],
           [22., 26., 30.]], dtype=float32)

    Padding forms, stride and the TensorFlow layout (HWIO weights):

    >>> pyconv.conv2d(x, w, padding=((0, 1), (0, 0))).shape
    (1, 1, 4, 3)
    >>> xs = np.zeros((2, 32, 32, 3), np.float32)
    >>> ws = np.zeros((3, 3, 3, 8), np.float32)
    >>> pyconv.conv2d(xs, ws, stride=2, padding="same", layout="NHWC").shape
    (2, 16, 16, 8)

    A preallocated result, and the dtype rule (an integer input with a
    float32 weight computes in float32):

    >>> out = np.empty((1, 1, 3, 3), np.float32)
    >>> pyconv.conv2d(x.astype(np.int64), w, out=out) is out
    True
    """
    return _conv2d("conv2d", x, weight, bias, stride, padding, dilation, groups, layout, activation,
                   algo, out)


# Calls seen before: a key of the call's shapes, dtypes and arguments ->
# (geometry, kernel, layout code, activation code, whether the weight must
# be checked for non-finite values).  A layer called in a loop repeats its
# key, and skips the argument checks, the geometry and the algorithm choice
# (8 -> 5 us per call on a small layer).  Entries are made only by calls
# that succeeded with operands the kernels take as they are (ndarrays of
# the computation dtype, C-contiguous, aligned), and keys hold exact ints
# and strings only (_plain), so no call that would raise or convert finds
# one.  Bounded: cleared when full.
_SEEN: Dict[Tuple[Any, ...], Tuple[ConvGeometry, str, int, int, bool]] = {}
_SEEN_MAX = 1024


def _seen_key(x: Any, weight: Any, bias: Any, args: Tuple[Any, ...]) -> Optional[Tuple[Any, ...]]:
    """The _SEEN key of a call, or None where the call cannot have one."""
    if type(x) is not np.ndarray or (bias is not None and type(bias) is not np.ndarray) or not _plain(args):
        return None
    if type(weight) is PackedWeight:
        return (x.shape, x.dtype, weight.weight.shape, weight.weight.dtype, weight.groups, weight.layout,
                None if bias is None else (bias.shape, bias.dtype), args)
    if type(weight) is not np.ndarray:
        return None
    return (x.shape, x.dtype, weight.shape, weight.dtype, None, None,
            None if bias is None else (bias.shape, bias.dtype), args)


def _kernel_ready(a: Optional[np.ndarray]) -> bool:
    if a is None:
        return True
    flags = a.flags
    return flags.c_contiguous and flags.aligned


def _out_ready(out: Any, shape: Tuple[int, ...], dtype: np.dtype, inputs: Tuple[Any, ...]) -> bool:
    """Whether ``out=`` can take the result as it is: check_out's conditions
    (any failure goes the long way, which raises the error) and aligned."""
    if type(out) is not np.ndarray or out.shape != shape or out.dtype != dtype:
        return False
    flags = out.flags
    if not (flags.c_contiguous and flags.aligned and flags.writeable):
        return False
    return not any(a is not None and np.may_share_memory(out, a) for a in inputs)


def _conv2d(fn: str, x: Any, weight: Any, bias: Any, stride: Any, padding: Any, dilation: Any,
            groups: Any, layout: str, activation: Optional[str], algo: str,
            out: Optional[np.ndarray]) -> np.ndarray:
    """conv2d's body; ``fn`` names the public function in error messages."""
    key = None
    if not _VERBOSE:
        # A call like one seen before (the same shapes, dtypes and
        # arguments) skips the argument parsing; out= only if it is ready.
        key = _seen_key(x, weight, bias, (stride, padding, dilation, groups, layout, activation, algo))
        seen = None if key is None else _SEEN.get(key)
        if seen is not None:
            geo, kernel, lay_code, act_code, check_finite = seen
            packed_weight = weight if type(weight) is PackedWeight else None
            wa = weight if packed_weight is None else packed_weight.weight
            if (_kernel_ready(x) and _kernel_ready(wa) and _kernel_ready(bias)
                    and not (check_finite and not all_finite(wa))
                    and (out is None or _out_ready(out, geo.out_shape, x.dtype, (x, wa, bias)))):
                y = _empty(geo.out_shape, x.dtype) if out is None else out
                packed = None if packed_weight is None else packed_weight.packed(x.dtype, geo.c, kernel)
                _core.conv2d(x, wa, bias, y, geo.core_tuple(), lay_code, act_code, kernel, packed)
                return y
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
    kernel = chosen = _choose_algo(fn, algo, geo)
    if kernel == "depthwise" and any(geo.pads) and not all_finite(wa):
        # The depthwise kernel skips taps over the zero padding; a non-finite
        # tap there must still give 0 * inf = NaN, as every other path and the
        # reference do, so such weights (a diverged model) take the direct
        # kernel, which multiplies the padding.  Depthwise weights are small.
        kernel = "direct"
    dtype = result_dtype(xa, wa, ba)
    if out is not None:
        y = check_out(fn, out, geo.out_shape, dtype, [a for a in (xa, wa, ba) if a is not None])
    else:
        y = _empty(geo.out_shape, dtype)
    if geo.n == 0:
        return y
    xc = kernel_array(xa, dtype=dtype)
    wc = kernel_array(wa, dtype=dtype)
    bc = None if ba is None else kernel_array(ba, dtype=dtype)
    packed = None if packed_weight is None else packed_weight.packed(dtype, geo.c, kernel)
    start = time.perf_counter() if _VERBOSE else 0.0
    target = y
    if not y.flags.aligned:  # an unaligned out= view: compute aside, then copy
        y = _empty(geo.out_shape, dtype)
    _core.conv2d(xc, wc, bc, y, geo.core_tuple(), 0 if lay == "NCHW" else 1, act, kernel, packed)
    if y is not target:
        np.copyto(target, y)
        y = target
    elif (key is not None and xc is xa and wc is wa and bc is ba and xa.dtype == dtype
          and kernel == chosen and xa.dtype.isnative):
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        _SEEN[key] = (geo, kernel, 0 if lay == "NCHW" else 1, act, kernel == "depthwise" and any(geo.pads))
    if _VERBOSE:
        verbose_line(fn, geo, dtype, kernel, start)
    return y


def verbose_line(fn: str, geo: ConvGeometry, dtype: Any, algo: str, start: float) -> None:
    """PYCONV_VERBOSE's line for one kernel call that began at ``start``."""
    ms = (time.perf_counter() - start) * 1e3
    print(f"pyconv_verbose,{fn},{geo.problem_string()} g{geo.groups} "
          f"{'f32' if np.dtype(dtype) == np.float32 else 'f64'} {geo.layout},algo={algo},"
          f"isa={_core.get_isa()},threads={_core.get_num_threads()},{ms:.3f}ms",
          file=sys.stderr)


def _check_packed(fn: str, pw: PackedWeight, groups: Any, layout: str) -> None:
    """A PackedWeight is only valid for the groups and layout it was made for."""
    if pw.layout != layout:
        raise ValueError(f"{fn}: weight was prepacked for layout {pw.layout!r}, not {layout!r}")
    if not isinstance(groups, bool) and isinstance(groups, (int, np.integer)) and groups != pw.groups:
        raise ValueError(f"{fn}: weight was prepacked for groups={pw.groups}, not groups={groups}")


def conv_output_shape(input_shape: Shape, weight_shape: Shape, stride: IntOrPair = 1,
                      padding: Padding = 0, dilation: IntOrPair = 1, groups: SupportsIndex = 1, *,
                      layout: Layout = "NCHW") -> Tuple[int, ...]:
    """Shape of :func:`conv2d`'s result, in the layout's order, without computing it.

    Parameters
    ----------
    input_shape : sequence of int
        The input's full shape: ``(N, C_in, H, W)`` (NCHW) or ``(N, H, W,
        C_in)`` (NHWC), or 3-D for one unbatched image.
    weight_shape : sequence of int
        ``(C_out, C_in/groups, KH, KW)`` (NCHW) or ``(KH, KW, C_in/groups,
        C_out)`` (NHWC).
    stride, padding, dilation, groups, layout
        As in :func:`conv2d` (same forms and defaults).

    Returns
    -------
    tuple of int
        ``(N, C_out, H_out, W_out)`` or ``(N, H_out, W_out, C_out)``; 3-D
        for a 3-D ``input_shape``.

    Raises
    ------
    TypeError
        A shape or argument that is not made of ints.
    ValueError
        The shapes and arguments :func:`conv2d` would refuse, with the same
        messages.

    See Also
    --------
    conv2d, plan, transpose_output_shape, pool_output_shape

    Examples
    --------
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


def plan(x_shape: Shape, weight_shape: Shape, stride: IntOrPair = 1, padding: Padding = 0,
         dilation: IntOrPair = 1, groups: SupportsIndex = 1, *, layout: Layout = "NCHW",
         dtype: npt.DTypeLike = "float32") -> Plan:
    """What ``conv2d(..., algo="auto")`` would do for these shapes, without running it.

    The choice is a fixed rule of the shapes and layout (never of the thread
    count or the ISA), so it is the same on every machine; ``isa`` and
    ``workspace_bytes`` describe this process.

    Parameters
    ----------
    x_shape : sequence of int
        The input's full shape in the layout's order (3-D for one image).
    weight_shape : sequence of int
        The weight's shape in the layout's weight format (see :func:`conv2d`).
    stride, padding, dilation, groups, layout
        As in :func:`conv2d` (same forms and defaults).
    dtype : {"float32", "float64"} or numpy dtype, default "float32"
        The computation dtype (it sizes the workspace).

    Returns
    -------
    dict
        ``algo`` (the kernel ``"auto"`` picks: ``"direct"``, ``"im2col"``,
        ``"pointwise"`` or ``"depthwise"``), ``isa`` (the active instruction
        set), ``pads`` (top, bottom, left, right), ``out_shape``, ``flops``
        (2 x multiply-adds; bias and activation not counted) and
        ``workspace_bytes`` (scratch memory the kernel allocates per call).

    Raises
    ------
    TypeError
        As :func:`conv_output_shape`, or a ``dtype`` that is not a dtype.
    ValueError
        As :func:`conv_output_shape`, or a ``dtype`` other than float32 and
        float64.

    See Also
    --------
    conv2d, conv_output_shape

    Examples
    --------
    >>> import pyconv
    >>> p = pyconv.plan((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    >>> p["algo"], p["out_shape"], p["flops"]
    ('direct', (1, 64, 56, 56), 231211008)
    >>> pyconv.plan((1, 3, 224, 224), (64, 3, 7, 7), stride=2, padding="same")["pads"]
    (2, 3, 2, 3)
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
