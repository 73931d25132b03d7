"""Argument checking and normalisation, written once.

Every public op of :mod:`pyconv` and of :mod:`pyconv.reference` goes through
these functions, so the two can never disagree about what a call means, and
every error message has the same shape: ``"<function>: <argument> <problem>,
got <value>"``.
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from . import _core

__all__ = [
    "ConvGeometry",
    "depthwise_groups",
    "float_dtype",
    "grad_out_check",
    "kernel_array",
    "transpose_geometry",
    "transpose_operands",
    "pointwise_check",
    "separable_operands",
    "activation_code",
    "as_array",
    "check_out",
    "conv_geometry",
    "layout_name",
    "pair",
    "padding_spec",
    "result_dtype",
    "same_pads",
]

LAYOUTS = ("NCHW", "NHWC")
ACTIVATIONS = (None, "relu", "relu6")

# Largest element count / byte count we accept: far beyond any real memory,
# and small enough that index arithmetic in int64 (with lane padding) cannot
# overflow in the kernels.
MAX_BYTES = 2**62


def _int(fn: str, name: str, value: Any) -> int:
    """A Python int from an integer-like scalar (bools and floats refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}") from None


def pair(fn: str, name: str, value: Any, minimum: int = 1) -> Tuple[int, int]:
    """Normalise an int-or-pair argument (stride, dilation, kernel_size)."""
    if type(value) is int and value >= minimum:  # the common case
        return value, value
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, (tuple, list, np.ndarray)):
        items = list(value) if not isinstance(value, np.ndarray) else value.tolist()
        if len(items) != 2:
            raise ValueError(f"{fn}: {name} must be an int or a pair of ints, got {value!r}")
        a, b = (_int(fn, name, v) for v in items)
    else:
        a = b = _int(fn, name, value)
    if a < minimum or b < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value!r}")
    return a, b


PaddingSpec = Any  # "same" | "valid" | ((top, bottom), (left, right))


def padding_spec(fn: str, value: Any, allow_strings: bool = True) -> PaddingSpec:
    """Normalise ``padding`` to "same", "valid" or ((top, bottom), (left, right))."""
    if isinstance(value, str):
        if allow_strings and value.lower() in ("same", "valid"):
            return value.lower()
        allowed = "'same', 'valid', " if allow_strings else ""
        raise ValueError(
            f"{fn}: padding must be {allowed}an int, a pair or a pair of pairs, got {value!r}"
        )
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{fn}: padding must be an int, a pair or a pair of pairs, got {value!r}")
        if all(isinstance(v, (tuple, list)) for v in value):
            if any(len(v) != 2 for v in value):
                raise ValueError(f"{fn}: padding pairs must be (before, after), got {value!r}")
            (t, b), (l, r) = value
            pads = tuple(_int(fn, "padding", v) for v in (t, b, l, r))
        elif not any(isinstance(v, (tuple, list)) for v in value):
            ph, pw = (_int(fn, "padding", v) for v in value)
            pads = (ph, ph, pw, pw)
        else:
            raise ValueError(f"{fn}: padding must be an int, a pair or a pair of pairs, got {value!r}")
    else:
        p = _int(fn, "padding", value)
        pads = (p, p, p, p)
    if min(pads) < 0:
        raise ValueError(f"{fn}: padding must be >= 0, got {value!r}")
    t, b, l, r = pads
    return ((t, b), (l, r))


def same_pads(size: int, k: int, stride: int, dilation: int) -> Tuple[int, int]:
    """TensorFlow SAME along one axis: out = ceil(in / stride), odd pixel after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def resolve_pads(spec: PaddingSpec, hw: Tuple[int, int], k: Tuple[int, int],
                 stride: Tuple[int, int], dilation: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """Explicit (top, bottom, left, right) pads for a normalised padding spec."""
    if spec == "valid":
        return (0, 0, 0, 0)
    if spec == "same":
        t, b = same_pads(hw[0], k[0], stride[0], dilation[0])
        l, r = same_pads(hw[1], k[1], stride[1], dilation[1])
        return (t, b, l, r)
    (t, b), (l, r) = spec
    return (t, b, l, r)


def float_dtype(fn: str, value: Any) -> np.dtype:
    """A ``dtype=`` argument that must name float32 or float64."""
    try:
        dt = np.dtype(value)
    except TypeError:
        raise TypeError(f"{fn}: dtype must be 'float32' or 'float64', got {value!r}") from None
    if dt not in (np.float32, np.float64):
        raise ValueError(f"{fn}: dtype must be 'float32' or 'float64', got {value!r}")
    return dt


def layout_name(fn: str, value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{fn}: layout must be 'NCHW' or 'NHWC', got {value!r}")
    if value.upper() not in LAYOUTS:
        raise ValueError(f"{fn}: layout must be 'NCHW' or 'NHWC', got {value!r}")
    return value.upper()


def activation_code(fn: str, value: Any) -> int:
    """0 for None, 1 for "relu", 2 for "relu6" (the C++ enum)."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{fn}: activation must be None, 'relu' or 'relu6', got {value!r}")
    key = value.lower() if isinstance(value, str) else None
    if key not in ACTIVATIONS:
        raise ValueError(f"{fn}: activation must be None, 'relu' or 'relu6', got {value!r}")
    return ACTIVATIONS.index(key)


_BAD_KINDS = {
    "c": "complex",
    "O": "object",
    "S": "bytes",
    "U": "string",
    "V": "structured/void",
    "M": "datetime",
    "m": "timedelta",
}


def as_array(fn: str, name: str, value: Any) -> np.ndarray:
    """An ndarray view of ``value`` (DLPack first, then the buffer protocol)."""
    if isinstance(value, np.ndarray):
        arr = value
    elif value is None:
        raise TypeError(f"{fn}: {name} must be an array, got None")
    elif hasattr(value, "__dlpack__") and hasattr(np, "from_dlpack"):
        try:
            arr = np.from_dlpack(value)
        except (BufferError, RuntimeError, TypeError, ValueError) as exc:
            try:  # the array interface may still work (it may copy)
                arr = np.asarray(value)
            except Exception:
                arr = None
            if arr is None or arr.dtype.kind == "O":  # e.g. a GPU tensor
                raise TypeError(
                    f"{fn}: {name} could not be read as a CPU array through DLPack ({exc})"
                ) from None
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise TypeError(f"{fn}: {name} could not be converted to an array ({exc})") from None
    kind = arr.dtype.kind
    if kind in _BAD_KINDS:
        raise TypeError(
            f"{fn}: {name} has {_BAD_KINDS[kind]} dtype {arr.dtype}; "
            "pyconv computes in float32 or float64"
        )
    return arr


def result_dtype(*arrays: Optional[np.ndarray]) -> np.dtype:
    """The computation dtype of an op (see DESIGN.md, dtypes).

    float64 if any operand is float64 (or wider), or if no operand is
    floating; float32 otherwise (float16 counts as float32).
    """
    floats = [a.dtype for a in arrays if a is not None and a.dtype.kind == "f"]
    if not floats or any(d.itemsize >= 8 for d in floats):
        return np.dtype(np.float64)
    return np.dtype(np.float32)


_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def all_finite(a: np.ndarray) -> bool:
    """True if ``a`` holds no NaN or infinity: one C++ pass (sums of x * 0)
    for contiguous float32/float64 arrays, with no temporary (1.4 -> 0.3 us
    on a small weight), ``numpy.isfinite`` for anything else."""
    if a.dtype.kind in "biu":
        return True
    if a.dtype in _NATIVE_FLOATS and a.flags.c_contiguous and a.flags.aligned:
        return bool(_core.all_finite(a))
    return bool(np.isfinite(a).all())


def kernel_array(a: np.ndarray, dtype: Any = None) -> np.ndarray:
    """``a`` as the C++ kernels take it: C-contiguous, native byte order,
    element-aligned (an unaligned view, e.g. carved from a byte buffer, is
    copied once: the kernels' typed loads and stores require alignment)."""
    r = np.ascontiguousarray(a, dtype=dtype)
    if not r.flags.aligned or not r.dtype.isnative:
        r = np.array(r, dtype=r.dtype.newbyteorder("="), order="C", copy=True)
    return r


def check_out(fn: str, out: Any, shape: Tuple[int, ...], dtype: np.dtype,
              inputs: Sequence[np.ndarray]) -> np.ndarray:
    """Validate a caller-supplied output array; it is never touched on error."""
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{fn}: out must be a numpy.ndarray, got {type(out).__name__}")
    if out.shape != tuple(shape):
        raise ValueError(f"{fn}: out has shape {out.shape} but the result has shape {tuple(shape)}")
    if out.dtype != dtype:
        raise ValueError(f"{fn}: out has dtype {out.dtype} but the result has dtype {dtype}")
    if not out.flags.c_contiguous:
        raise ValueError(f"{fn}: out must be C-contiguous")
    if not out.flags.writeable:
        raise ValueError(f"{fn}: out is read-only")
    for arr in inputs:
        if arr is not None and np.may_share_memory(out, arr):
            raise ValueError(f"{fn}: out overlaps an input array")
    return out


def _memo_core(geo: Any) -> Tuple[int, ...]:
    """``geo._core_tuple()``, computed once per (frozen) geometry instance."""
    memo = geo.__dict__.get("_core")
    if memo is None:
        memo = geo._core_tuple()
        object.__setattr__(geo, "_core", memo)
    return memo


@dataclass(frozen=True)
class ConvGeometry:
    """A fully resolved convolution problem (sizes in NCHW terms)."""

    n: int
    c: int
    h: int
    w: int
    oc: int
    kh: int
    kw: int
    stride: Tuple[int, int]
    dilation: Tuple[int, int]
    pads: Tuple[int, int, int, int]  # top, bottom, left, right
    groups: int
    layout: str
    batched: bool
    oh: int
    ow: int

    @property
    def out_shape(self) -> Tuple[int, ...]:
        """Output shape in the layout's order (3-D for an unbatched input)."""
        if self.layout == "NCHW":
            shape = (self.n, self.oc, self.oh, self.ow)
        else:
            shape = (self.n, self.oh, self.ow, self.oc)
        return shape if self.batched else shape[1:]

    @property
    def flops(self) -> int:
        """Multiply-adds times two (bias and activation not counted)."""
        return 2 * self.n * self.oc * self.oh * self.ow * (self.c // self.groups) * self.kh * self.kw

    def core_tuple(self) -> Tuple[int, ...]:
        """The 18 integers the C++ ConvShape is built from (memoised on the
        instance: geometries are themselves memoised, and asked for this on
        every kernel call)."""
        return _memo_core(self)

    def _core_tuple(self) -> Tuple[int, ...]:
        t, b, l, r = self.pads
        # A stride or dilation beyond the padded size means the same as the
        # padded size (one output row; a 1-tap kernel), and clamping keeps
        # arbitrarily large Python ints out of the int64 interface.
        hp, wp = self.h + t + b, self.w + l + r
        (sh, sw), (dh, dw) = self.stride, self.dilation
        return (self.n, self.c, self.h, self.w, self.oc, self.oh, self.ow, self.kh, self.kw,
                min(sh, hp), min(sw, wp), min(dh, hp), min(dw, wp), t, b, l, r, self.groups)

    def problem_string(self) -> str:
        """oneDNN-style canonical problem description, e.g. for PYCONV_VERBOSE."""
        (sh, sw), (dh, dw) = self.stride, self.dilation
        t, b, l, r = self.pads
        ph = f"ph{t}" if t == b else f"ph{t}_{b}"
        pw = f"pw{l}" if l == r else f"pw{l}_{r}"
        dhs = f"dh{dh}" if dh != 1 else ""
        dws = f"dw{dw}" if dw != 1 else ""
        return (f"mb{self.n}_ic{self.c}oc{self.oc}_ih{self.h}oh{self.oh}kh{self.kh}sh{sh}{dhs}{ph}"
                f"_iw{self.w}ow{self.ow}kw{self.kw}sw{sw}{dws}{pw}")


def _shape(fn: str, name: str, value: Any) -> Tuple[int, ...]:
    if type(value) is tuple and all(type(v) is int for v in value):
        return value  # ndarray.shape: the common case, already exact
    if isinstance(value, np.ndarray) and value.dtype.kind != "O":
        value = value.tolist()
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{fn}: {name} must be a sequence of ints, got {value!r}")
    return tuple(_int(fn, name, v) for v in value)


def _plain(value: Any) -> bool:
    """Exactly ints, strings and None (nested in tuples): safe as a cache key.

    Not bools, floats or NumPy scalars, which compare equal to ints but must
    get their own (error) answers.  (None: the pools' default stride.)
    """
    t = type(value)
    if t is int or t is str or value is None:
        return True
    if t is not tuple:
        return False
    for v in value:  # (a loop, not all() over a generator: this runs on every call)
        tv = type(v)
        if tv is not int and tv is not str and v is not None and not (tv is tuple and _plain(v)):
            return False
    return True


@functools.lru_cache(maxsize=512)
def _conv_geometry_cached(*args: Any) -> ConvGeometry:
    return _conv_geometry(*args)


def conv_geometry(fn: str, x_shape: Any, w_shape: Any, stride: Any, padding: Any,
                  dilation: Any, groups: Any, layout: str) -> ConvGeometry:
    """Check a conv2d call's shapes and resolve stride/padding/dilation/groups.

    Layers are called again and again with the same arguments, so results
    for plain arguments are memoised (failures are not: they raise anew).
    """
    args = (fn, x_shape, w_shape, stride, padding, dilation, groups, layout)
    if _plain(args):
        return _conv_geometry_cached(*args)
    return _conv_geometry(*args)


def _conv_geometry(fn: str, x_shape: Any, w_shape: Any, stride: Any, padding: Any,
                   dilation: Any, groups: Any, layout: str) -> ConvGeometry:
    """conv_geometry's computation.

    ``layout`` must already be normalised by :func:`layout_name`.
    """
    xs = _shape(fn, "input shape", x_shape)
    ws = _shape(fn, "weight shape", w_shape)
    dims = "(N, C, H, W) or (C, H, W)" if layout == "NCHW" else "(N, H, W, C) or (H, W, C)"
    if len(xs) not in (3, 4):
        raise ValueError(f"{fn}: input must be 4-D {dims} for layout {layout!r}, got shape {xs}")
    wdims = "(C_out, C_in/groups, KH, KW)" if layout == "NCHW" else "(KH, KW, C_in/groups, C_out)"
    if len(ws) != 4:
        raise ValueError(f"{fn}: weight must be 4-D {wdims} for layout {layout!r}, got shape {ws}")
    batched = len(xs) == 4
    if not batched:
        xs = (1,) + xs
    if layout == "NCHW":
        n, c, h, w = xs
        oc, wc, kh, kw = ws
    else:
        n, h, w, c = xs
        kh, kw, wc, oc = ws
    if min(xs) < 0 or min(ws) < 0:
        raise ValueError(f"{fn}: shapes must not have negative sizes, got input {xs}, weight {ws}")
    g = _int(fn, "groups", groups)
    if g < 1:
        raise ValueError(f"{fn}: groups must be >= 1, got {groups!r}")
    if c < 1 or h < 1 or w < 1:
        raise ValueError(f"{fn}: input must have at least one channel, row and column, got shape {xs}")
    if oc < 1 or kh < 1 or kw < 1 or wc < 1:
        raise ValueError(f"{fn}: weight must not have empty dimensions, got shape {ws}")
    if c % g:
        raise ValueError(f"{fn}: groups={g} does not divide the {c} input channels")
    if wc * g != c:
        raise ValueError(
            f"{fn}: input has {c} channels but weight expects {wc * g} (groups={g})"
        )
    if oc % g:
        raise ValueError(f"{fn}: groups={g} does not divide the {oc} output channels of the weight")
    st = pair(fn, "stride", stride)
    dl = pair(fn, "dilation", dilation)
    spec = padding_spec(fn, padding)
    pads = resolve_pads(spec, (h, w), (kh, kw), st, dl)
    t, b, l, r = pads
    ekh, ekw = (kh - 1) * dl[0] + 1, (kw - 1) * dl[1] + 1
    hp, wp = h + t + b, w + l + r
    if ekh > hp or ekw > wp:
        raise ValueError(
            f"{fn}: output would be empty: the dilated kernel {ekh}x{ekw} is larger than "
            f"the padded input {hp}x{wp}"
        )
    oh, ow = (hp - ekh) // st[0] + 1, (wp - ekw) // st[1] + 1
    # Every buffer the kernels may create: input padded, output, weights.
    # An empty batch still allocates per-image buffers: check one image at least.
    nb = max(n, 1)
    for what, count in (("input", nb * c * hp * wp), ("output", nb * oc * oh * ow),
                        ("weight", oc * wc * kh * kw)):
        if count * 8 >= MAX_BYTES:
            raise ValueError(f"{fn}: the {what} is too large ({count} elements overflow 64-bit sizes)")
    return ConvGeometry(n=n, c=c, h=h, w=w, oc=oc, kh=kh, kw=kw, stride=st, dilation=dl, pads=pads,
                        groups=g, layout=layout, batched=batched, oh=oh, ow=ow)


def depthwise_groups(fn: str, x_shape: Tuple[int, ...], w_shape: Tuple[int, ...], layout: str,
                     name: str = "weight") -> int:
    """groups (= C_in) of a depthwise call, after checking the weight's form."""
    if len(x_shape) not in (3, 4):
        dims = "(N, C, H, W)" if layout == "NCHW" else "(N, H, W, C)"
        raise ValueError(f"{fn}: input must be 4-D {dims} or 3-D, got shape {tuple(x_shape)}")
    c = x_shape[-3] if layout == "NCHW" else x_shape[-1]
    form = "(C_in*m, 1, KH, KW)" if layout == "NCHW" else "(KH, KW, 1, C_in*m)"
    if len(w_shape) != 4:
        raise ValueError(f"{fn}: {name} must be 4-D {form} for layout {layout!r}, got shape {tuple(w_shape)}")
    per_group = w_shape[1] if layout == "NCHW" else w_shape[2]
    c_out = w_shape[0] if layout == "NCHW" else w_shape[3]
    if per_group != 1:
        raise ValueError(f"{fn}: {name} must have shape {form} (one input channel per filter), "
                         f"got shape {tuple(w_shape)}")
    if c < 1 or c_out % c:
        raise ValueError(f"{fn}: {name} has {c_out} filters, not a multiple of the {c} input "
                         f"channels (channel multiplier must be an integer)")
    return int(c)


def pointwise_check(fn: str, w_shape: Tuple[int, ...], c_mid: int, layout: str) -> None:
    """The 1x1 weight of a separable convolution must read the C_mid channels."""
    form = "(C_out, C_mid, 1, 1)" if layout == "NCHW" else "(1, 1, C_mid, C_out)"
    if len(w_shape) != 4:
        raise ValueError(f"{fn}: pointwise_weight must be 4-D {form}, got shape {tuple(w_shape)}")
    kh, kw, cin = ((w_shape[2], w_shape[3], w_shape[1]) if layout == "NCHW"
                   else (w_shape[0], w_shape[1], w_shape[2]))
    if (kh, kw) != (1, 1):
        raise ValueError(f"{fn}: pointwise_weight must be 1x1, got shape {tuple(w_shape)}")
    if cin != c_mid:
        raise ValueError(f"{fn}: pointwise_weight reads {cin} channels but the depthwise step "
                         f"makes {c_mid}")


def separable_operands(fn: str, x: Any, depthwise_weight: Any, pointwise_weight: Any, bias: Any,
                       layout: str) -> Tuple[Any, ...]:
    """Checked operands of a separable convolution, in its one computation dtype.

    Returns (layout, x, depthwise_weight, pointwise_weight, bias or None,
    groups), the arrays cast to the dtype conv2d's rule gives for all four
    operands together, so the intermediate is computed in it too.
    """
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    dw = as_array(fn, "depthwise_weight", depthwise_weight)
    pw = as_array(fn, "pointwise_weight", pointwise_weight)
    ba = None if bias is None else as_array(fn, "bias", bias)
    groups = depthwise_groups(fn, xa.shape, dw.shape, lay, name="depthwise_weight")
    pointwise_check(fn, pw.shape, dw.shape[0] if lay == "NCHW" else dw.shape[3], lay)
    dtype = result_dtype(xa, dw, pw, ba)
    cast = [None if a is None else a.astype(dtype, copy=False) for a in (xa, dw, pw, ba)]
    return (lay, *cast, groups)


# ---- gradients and the transposed convolution ---------------------------------


def grad_out_check(fn: str, shape: Tuple[int, ...], geo: ConvGeometry, name: str = "grad_out") -> None:
    """grad_out (``name``) must have exactly the forward convolution's output shape."""
    if tuple(shape) != geo.out_shape:
        raise ValueError(f"{fn}: {name} has shape {tuple(shape)} but the convolution's output has "
                         f"shape {geo.out_shape}")


def transpose_geometry(fn: str, x_shape: Any, w_shape: Any, stride: Any, padding: Any,
                       output_padding: Any, dilation: Any, groups: Any, layout: str,
                       output_size: Any) -> ConvGeometry:
    """The conv2d whose input gradient a conv_transpose2d call computes.

    conv_transpose2d(x, w) with weight (C_in, C_out/groups, KH, KW) is the
    gradient with respect to the input of a conv2d from C_out to C_in
    channels with the same weight array, stride, padding, dilation and
    groups, whose output has x's shape; its input (our output) is
    ``(H-1)*stride - pad_total + dilation*(K-1) + output_padding + 1`` high.
    The returned geometry is that conv2d's.  When output_padding >= stride
    (allowed while it is below the dilation) that conv2d's output is larger
    than x; the extra rows/columns are zeros of the gradient.
    """
    xs = _shape(fn, "input shape", x_shape)
    ws = _shape(fn, "weight shape", w_shape)
    dims = "(N, C, H, W) or (C, H, W)" if layout == "NCHW" else "(N, H, W, C) or (H, W, C)"
    if len(xs) not in (3, 4):
        raise ValueError(f"{fn}: input must be 4-D {dims} for layout {layout!r}, got shape {xs}")
    wdims = "(C_in, C_out/groups, KH, KW)" if layout == "NCHW" else "(KH, KW, C_out/groups, C_in)"
    if len(ws) != 4:
        raise ValueError(f"{fn}: weight must be 4-D {wdims} for layout {layout!r}, got shape {ws}")
    batched = len(xs) == 4
    b4 = xs if batched else (1,) + xs
    if layout == "NCHW":
        n, c, h, w = b4
        wc, og, kh, kw = ws
    else:
        n, h, w, c = b4
        kh, kw, og, wc = ws
    g = _int(fn, "groups", groups)
    if g < 1:
        raise ValueError(f"{fn}: groups must be >= 1, got {groups!r}")
    if min(b4) < 0 or min(ws) < 0:
        raise ValueError(f"{fn}: shapes must not have negative sizes, got input {xs}, weight {ws}")
    if c < 1 or h < 1 or w < 1:
        raise ValueError(f"{fn}: input must have at least one channel, row and column, got shape {xs}")
    if og < 1 or kh < 1 or kw < 1:
        raise ValueError(f"{fn}: weight must not have empty dimensions, got shape {ws}")
    if wc != c:
        raise ValueError(f"{fn}: input has {c} channels but weight expects {wc} {wdims}")
    if c % g:
        raise ValueError(f"{fn}: groups={g} does not divide the {c} input channels")
    st = pair(fn, "stride", stride)
    dl = pair(fn, "dilation", dilation)
    (t, bt), (l, r) = padding_spec(fn, padding, allow_strings=False)
    op = pair(fn, "output_padding", output_padding, minimum=0)
    base = tuple((size - 1) * s - p0 - p1 + d * (k - 1) + 1
                 for size, s, p0, p1, d, k in ((h, st[0], t, bt, dl[0], kh), (w, st[1], l, r, dl[1], kw)))
    limit = (max(st[0], dl[0]), max(st[1], dl[1]))
    if output_size is not None:
        if op != (0, 0):
            raise ValueError(f"{fn}: give output_size or output_padding, not both "
                             f"(got output_padding={output_padding!r})")
        size = _shape(fn, "output_size", output_size)
        if len(size) == len(xs):  # a full shape: take its spatial sizes
            size = size[-2:] if layout == "NCHW" else size[-3:-1]
        if len(size) != 2:
            raise ValueError(f"{fn}: output_size must be (H, W) or a full {len(xs)}-D shape, "
                             f"got {output_size!r}")
        for axis, want, lo, lim in zip("HW", size, base, limit):
            if not lo <= want < lo + lim:
                raise ValueError(f"{fn}: output_size {axis}={want} is unreachable: with this stride, "
                                 f"padding and dilation it must be in [{lo}, {lo + lim - 1}]")
        op = (size[0] - base[0], size[1] - base[1])
    for axis, o, lim in zip(("height", "width"), op, limit):
        if o >= lim:
            raise ValueError(f"{fn}: output_padding must be smaller than max(stride, dilation) = {lim} "
                             f"along the {axis}, got {output_padding!r}")
    oh, ow = base[0] + op[0], base[1] + op[1]
    if oh < 1 or ow < 1:
        raise ValueError(f"{fn}: output would be empty ({oh}x{ow}): the padding removes more than "
                         f"the transposed convolution produces")
    conv_in = (n, og * g, oh, ow) if layout == "NCHW" else (n, oh, ow, og * g)
    if not batched:
        conv_in = conv_in[1:]
    return conv_geometry(fn, conv_in, ws, st, ((t, bt), (l, r)), dl, g, layout)


def transpose_operands(fn: str, x: Any, weight: Any, bias: Any, stride: Any, padding: Any,
                       output_padding: Any, dilation: Any, groups: Any, layout: Any,
                       output_size: Any) -> Tuple[Any, ...]:
    """Checked operands of a conv_transpose2d call.

    Returns (layout, x, weight, bias or None, geometry, dtype): the arrays
    cast to the dtype conv2d's rule gives for all three, and the geometry of
    the conv2d whose input gradient the call is (:func:`transpose_geometry`).
    """
    lay = layout_name(fn, layout)
    xa = as_array(fn, "x", x)
    wa = as_array(fn, "weight", weight)
    ba = None if bias is None else as_array(fn, "bias", bias)
    geo = transpose_geometry(fn, xa.shape, wa.shape, stride, padding, output_padding, dilation, groups,
                             lay, output_size)
    if ba is not None and ba.shape != (geo.c,):
        raise ValueError(f"{fn}: bias must have shape ({geo.c},) to match the weight, got {ba.shape}")
    dtype = result_dtype(xa, wa, ba)
    cast = [None if a is None else a.astype(dtype, copy=False) for a in (xa, wa, ba)]
    return (lay, *cast, geo, dtype)


# ---- pooling -----------------------------------------------------------------


@dataclass(frozen=True)
class PoolGeometry:
    """A fully resolved pooling problem (sizes in NCHW terms)."""

    n: int
    c: int
    h: int
    w: int
    kernel: Tuple[int, int]
    stride: Tuple[int, int]
    dilation: Tuple[int, int]
    pads: Tuple[int, int, int, int]  # top, bottom, left, right
    layout: str
    batched: bool
    oh: int
    ow: int
    numeric_padding: bool  # padding given as numbers (not "same"/"valid")

    @property
    def in_shape(self) -> Tuple[int, ...]:
        shape = (self.n, self.c, self.h, self.w) if self.layout == "NCHW" else (self.n, self.h, self.w, self.c)
        return shape if self.batched else shape[1:]

    @property
    def out_shape(self) -> Tuple[int, ...]:
        if self.layout == "NCHW":
            shape = (self.n, self.c, self.oh, self.ow)
        else:
            shape = (self.n, self.oh, self.ow, self.c)
        return shape if self.batched else shape[1:]

    def core_tuple(self) -> Tuple[int, ...]:
        """The 16 integers the C++ PoolShape is built from (memoised, as
        ConvGeometry.core_tuple)."""
        return _memo_core(self)

    def _core_tuple(self) -> Tuple[int, ...]:
        t, b, l, r = self.pads
        hp, wp = self.h + t + b, self.w + l + r
        # A stride beyond the padded size means one window (as for conv2d).
        sh, sw = min(self.stride[0], hp), min(self.stride[1], wp)
        return (self.n, self.c, self.h, self.w, self.oh, self.ow, *self.kernel, sh, sw, *self.dilation,
                t, b, l, r)


def _pool_axis(fn: str, axis: str, size: int, k: int, s: int, d: int, before: int, after: int,
               ceil_mode: bool) -> int:
    """Output size along one axis (PyTorch's rule, asymmetric pads allowed)."""
    ek = (k - 1) * d + 1
    padded = size + before + after
    if ek > padded:
        raise ValueError(
            f"{fn}: output would be empty: the {axis} window {ek} is larger than the padded input {padded}"
        )
    if ceil_mode:
        out = -(-(padded - ek) // s) + 1
        # The last window must start inside the input or the leading padding.
        if (out - 1) * s >= size + before:
            out -= 1
    else:
        out = (padded - ek) // s + 1
    # Every window needs at least one input cell (padded cells never count).
    for o in (0, out - 1):
        start = o * s - before
        first = max(0, -(-(-start) // d)) if start < 0 else 0
        if not (first < k and 0 <= start + first * d < size):
            raise ValueError(
                f"{fn}: the {axis} window of output {o} covers padding only "
                f"(input {size}, window {k}, dilation {d}, stride {s}, pads {before}/{after})"
            )
    return out


def _floor_sum(n: int, m: int, a: int, b: int) -> int:
    """sum(floor((a*i + b) / m) for i in range(n)) in O(log) steps (n >= 0, m >= 1).

    Euclid-like reduction: whole multiples of m in a and b are summed in
    closed form, then the remaining lattice count is re-expressed with the
    roles of a and m swapped.
    """
    total = 0
    while n > 0:
        qa, a = divmod(a, m)
        qb, b = divmod(b, m)
        total += qa * (n * (n - 1) // 2) + qb * n
        top = a * n + b  # 0 <= a, b < m now
        if top < m:
            break
        n, b, m, a = top // m, top % m, a, m
    return total


def _check_middle_windows(fn: str, axis: str, size: int, out: int, k: int, s: int, d: int, before: int) -> None:
    """Windows strictly between the first and the last can only miss the input
    when the dilation skips over it.

    The first and the last windows are checked by :func:`_pool_axis`.  A
    middle window starting at p >= 0 hits the input at p (p is below the last
    window's start, which is inside the input).  One starting at p < 0 first
    reaches a cell >= 0 at ``p mod d`` (its last tap is past 0, as the first
    window's is), so it misses exactly when ``p mod d >= size``, which needs
    d > size.  Whether some p = o*s - before (o = 1, 2, ...) does that is
    counted in closed form: ``floor(p/d) - floor((p - size)/d)`` is 1 for a
    hit and 0 for a miss, and both sums are floor sums.  No memory, O(log)
    time, whatever the sizes.
    """
    if d <= size or out <= 2 or before <= 0:
        return
    windows = min(out - 2, -(-before // s) - 1)  # o = 1 .. windows start before the input

    def misses(count: int) -> int:  # misses among o = 1 .. count
        hits = _floor_sum(count, d, s, s - before) - _floor_sum(count, d, s, s - before - size)
        return count - hits

    if windows <= 0 or misses(windows) == 0:
        return
    lo, hi = 1, windows  # the first o with misses(o) > 0
    while lo < hi:
        mid = (lo + hi) // 2
        if misses(mid):
            hi = mid
        else:
            lo = mid + 1
    raise ValueError(f"{fn}: the {axis} window of output {lo} covers padding only")


@functools.lru_cache(maxsize=512)
def _pool_geometry_cached(*args: Any) -> PoolGeometry:
    return _pool_geometry(*args)


def pool_geometry(fn: str, x_shape: Any, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
                  ceil_mode: Any, layout: str) -> PoolGeometry:
    """Check a pooling call's arguments and resolve its windows (memoised
    for plain arguments, as :func:`conv_geometry`)."""
    args = (fn, x_shape, kernel_size, stride, padding, dilation, ceil_mode, layout)
    if _plain(args[:6] + args[7:]) and type(ceil_mode) is bool:
        return _pool_geometry_cached(*args)
    return _pool_geometry(*args)


def _pool_geometry(fn: str, x_shape: Any, kernel_size: Any, stride: Any, padding: Any, dilation: Any,
                   ceil_mode: Any, layout: str) -> PoolGeometry:
    xs = _shape(fn, "input shape", x_shape)
    dims = "(N, C, H, W) or (C, H, W)" if layout == "NCHW" else "(N, H, W, C) or (H, W, C)"
    if len(xs) not in (3, 4):
        raise ValueError(f"{fn}: input must be 4-D {dims} for layout {layout!r}, got shape {xs}")
    batched = len(xs) == 4
    if not batched:
        xs = (1,) + xs
    if min(xs) < 0:
        raise ValueError(f"{fn}: shapes must not have negative sizes, got input {xs}")
    n, c, h, w = xs if layout == "NCHW" else (xs[0], xs[3], xs[1], xs[2])
    if c < 1 or h < 1 or w < 1:
        raise ValueError(f"{fn}: input must have at least one channel, row and column, got shape {xs}")
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"{fn}: ceil_mode must be a bool, got {ceil_mode!r}")
    ceil_mode = bool(ceil_mode)
    k = pair(fn, "kernel_size", kernel_size)
    st = k if stride is None else pair(fn, "stride", stride)
    dl = pair(fn, "dilation", dilation)
    # A one-tap window ignores its dilation (and any size of it must work).
    dl = (1 if k[0] == 1 else dl[0], 1 if k[1] == 1 else dl[1])
    spec = padding_spec(fn, padding)
    numeric = not isinstance(spec, str)
    if not numeric and ceil_mode:
        raise ValueError(f"{fn}: ceil_mode=True needs numeric padding, got padding={padding!r}")
    pads = resolve_pads(spec, (h, w), k, st, dl)
    if numeric:
        for p, kk, axis in ((pads[0], k[0], "top"), (pads[1], k[0], "bottom"),
                            (pads[2], k[1], "left"), (pads[3], k[1], "right")):
            if p > kk // 2:
                raise ValueError(
                    f"{fn}: {axis} padding {p} is more than half the window {kk} "
                    f"(at most {kk // 2}, as PyTorch), got padding={padding!r}"
                )
    t, b, l, r = pads
    for what, count in (("input", max(n, 1) * c * (h + t + b) * (w + l + r)),):
        if count * 8 >= MAX_BYTES:
            raise ValueError(f"{fn}: the {what} is too large ({count} elements overflow 64-bit sizes)")
    if k[0] * k[1] * 8 >= MAX_BYTES:
        raise ValueError(f"{fn}: kernel_size {k} is too large")
    oh = _pool_axis(fn, "row", h, k[0], st[0], dl[0], t, b, ceil_mode)
    ow = _pool_axis(fn, "column", w, k[1], st[1], dl[1], l, r, ceil_mode)
    _check_middle_windows(fn, "row", h, oh, k[0], st[0], dl[0], t)
    _check_middle_windows(fn, "column", w, ow, k[1], st[1], dl[1], l)
    return PoolGeometry(n=n, c=c, h=h, w=w, kernel=k, stride=st, dilation=dl, pads=pads, layout=layout,
                        batched=batched, oh=oh, ow=ow, numeric_padding=numeric)


def count_include_pad_flag(fn: str, value: Any, geo: PoolGeometry) -> bool:
    """None means True for numeric padding (PyTorch), False for "same" (TensorFlow)."""
    if value is None:
        return geo.numeric_padding
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{fn}: count_include_pad must be None or a bool, got {value!r}")
    return bool(value)
