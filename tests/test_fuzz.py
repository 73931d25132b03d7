"""A fuzzer over pyconv's whole public API, with pyconv.reference as the oracle.

Hypothesis draws random, often invalid, calls of every public op: shapes
(0-size dimensions, 2-D/5-D arrays, huge sizes in the shape-only functions),
dtypes (float16/32/64, integers, bool, complex, object, strings, big-endian),
memory forms (C, Fortran, strided slices, negative strides, zero strides,
read-only, misaligned, lists, DLPack-only objects), layouts, strides,
paddings, dilations, groups, kernel sizes, ``algo=`` names, ``out=`` arrays
(right, wrong shape/dtype, non-contiguous, read-only, overlapping an input,
not an ndarray), prepacked weights, and the active ISA and thread count.

Every call must do one of these, never crash, hang or return garbage:

* the reference raises ValueError/TypeError -> pyconv raises the same class
  (or the class of a pyconv-only problem: a bad ``algo``, ``out`` or
  prepacked weight), with a message naming the function;
* the reference returns -> pyconv returns a result of the same shape and
  dtype that matches the reference computed on float64 copies of the
  operands within DESIGN.md's tolerance (the same NaN/+inf/-inf positions;
  max-pool values and indices exactly), or raises MemoryError; with a
  pyconv-only problem it raises instead.

Always: the inputs are never modified; ``out=`` is returned itself when
valid and is left untouched (bytes around it included) when pyconv raises.

Runs (``PYCONV_FUZZ_EXAMPLES`` = examples per op family; five families,
plus a fifth of that per family in the subprocess test):

* CI, the default 1300 (6500 cases in process + 1300 in a child; about
  70 s on 2 cores)::

      python -m pytest tests/test_fuzz.py

* release check, the long run (100,000 cases + 20,000 in the child; about
  15-20 minutes on 2 cores)::

      PYCONV_FUZZ_EXAMPLES=20000 python -m pytest tests/test_fuzz.py -q

When the module ends it prints the number of cases executed per op and
outcome (``ok``: compared with the reference; ``error``: both raised;
see below) and notes on anything filtered.

A failing example is printed by hypothesis as ``Case(...)``; replay it from
the repository root with
``PYTHONPATH=.:tests python -c "from test_fuzz import *; run_case(Case(...))"``.
``python tests/test_fuzz.py --examples N`` runs the same fuzz loop as a
script (what ``test_fuzz_in_subprocess`` does, so a segfault fails a test
instead of killing pytest).

The three pyconv bugs this fuzzer found (an empty batch skipping the size
checks, dilated pooling geometry using memory in the input size, a huge
dilation of a one-tap pooling window) are fixed; the regression tests at the
end pin them.  Where
pyconv.reference, not pyconv, departs from DESIGN.md the oracle says so:
``precedence``, ``stricter`` and the float64 copies in ``reference_call``.
"""

from __future__ import annotations

import argparse
import collections
import faulthandler
import json
import math
import operator
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pyconv
import pyconv.reference as ref
from conftest import ISAS, subprocess_env

EXAMPLES = int(os.environ.get("PYCONV_FUZZ_EXAMPLES", "1300"))
LAYOUTS = ("NCHW", "NHWC")
ALGOS = ("auto", "direct", "im2col", "pointwise", "depthwise")
ERRORS = (ValueError, TypeError, MemoryError)
MAX_ELEMENTS = 20_000  # operands bigger than this are replaced by small ones

# executed cases: (family, op, outcome) -> count
COUNTS: collections.Counter = collections.Counter()
NOTES: collections.Counter = collections.Counter()  # why cases were inconclusive or filtered


class _Absent:
    """An argument that is not passed at all (the default applies)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()


# ---------------------------------------------------------------------------
# operands


class DL:
    """An array-like that only speaks DLPack."""

    def __init__(self, a: np.ndarray):
        self._a = a

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any:
        return self._a.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> Any:
        return self._a.__dlpack_device__()

    def __repr__(self) -> str:
        return f"DL({self._a.shape}, {self._a.dtype})"


class OutSub(np.ndarray):
    """A trivial ndarray subclass (a valid ``out``)."""


@dataclass(frozen=True)
class A:
    """An array operand: its values come from ``seed``; ``form`` is how it is
    laid out in memory (or which array-like carries it)."""

    shape: Tuple[int, ...]
    dtype: str = "float32"
    form: str = "C"
    seed: int = 0
    special: bool = False  # NaN / +inf / -inf at a few positions (floats only)

    def values(self) -> np.ndarray:
        rng = np.random.default_rng(self.seed)
        dt = np.dtype(self.dtype)
        shape = self.shape
        if dt.kind == "f":
            a = rng.standard_normal(shape)
            if self.special and a.size:
                k = min(a.size, 1 + self.seed % 3)
                pos = rng.choice(a.size, size=k, replace=False)
                a.reshape(-1)[pos] = rng.choice([np.nan, np.inf, -np.inf], size=k)
            return a.astype(dt)
        if dt.kind in "iu":
            return rng.integers(0 if dt.kind == "u" else -4, 5, size=shape).astype(dt)
        if dt.kind == "b":
            return rng.random(shape) < 0.5
        if dt.kind == "c":
            return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
        if dt.kind == "O":
            a = np.empty(shape, dtype=object)
            a[...] = rng.standard_normal(shape)
            return a
        return np.full(shape, "a", dtype=dt)

    def build(self) -> Any:
        base = np.array(self.values())  # an ndarray, also for shape ()
        form, shape, nd = self.form, self.shape, len(self.shape)
        if form == "F":
            return np.asfortranarray(base)
        if form == "slice" and nd:
            big = np.zeros(tuple(2 * s + 1 for s in shape), dtype=base.dtype)
            big[(slice(1, None, 2),) * nd] = base
            return big[(slice(1, None, 2),) * nd]
        if form == "neg" and nd:
            return np.flip(np.flip(base).copy())
        if form == "readonly":
            base.flags.writeable = False
            return base
        if form == "broadcast" and nd and shape[0] > 0:
            return np.broadcast_to(base[:1], shape)
        if form == "list":
            return base.tolist()
        if form == "dlpack":
            return DL(base)
        if form == "misaligned" and base.dtype.itemsize > 1 and base.dtype.kind not in "OUS":
            buf = np.zeros(base.nbytes + 1, np.uint8)
            view = buf[1:].view(base.dtype).reshape(shape)
            view[...] = base
            return view
        if form == "bigendian" and base.dtype.itemsize > 1 and base.dtype.kind in "fiuc":
            return base.astype(base.dtype.newbyteorder(">"))
        return base


def build(v: Any) -> Any:
    return v.build() if isinstance(v, A) else v


def np_view(v: Any) -> Optional[np.ndarray]:
    """The ndarray pyconv sees for an operand (None when it cannot be read)."""
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, pyconv.PackedWeight):
        return v.weight
    if isinstance(v, DL):  # as pyconv reads it: DLPack, else whatever asarray makes of it
        try:
            return np.from_dlpack(v)
        except (BufferError, RuntimeError, TypeError, ValueError):
            return np.asarray(v)
    if v is None:
        return None
    try:
        return np.asarray(v)
    except Exception:  # noqa: BLE001
        return None


def copy64(v: Any, dtype: np.dtype) -> Any:
    """A float64 copy of an operand as the computation sees it (cast to the
    computation dtype first, so integers round the way pyconv rounds them)."""
    a = np_view(v)
    if a is None or a.dtype.kind not in "fiub":
        return v
    return np.array(a, dtype=dtype).astype(np.float64)


def snapshot(a: Any) -> Optional[bytes]:
    a = np_view(a)
    if a is None or a.dtype.kind == "O":
        return None
    return a.tobytes()


# ---------------------------------------------------------------------------
# strategies: mixes of valid and invalid values, shrinking towards valid ones


class Lazy:
    """A value of ``pick`` computed only when chosen (a nested draw)."""

    def __init__(self, fn: Callable[[], Any]):
        self.fn = fn


_MODE = {"clean": False}  # set per example by the family strategies


def pick(draw: Callable, *options: Tuple[int, Any]) -> Any:
    """One of ``options`` ((weight, value, strategy or Lazy)), shrinking to the first.

    A negative weight marks an invalid (or unusual) choice: it has weight
    ``-w``, except in a "clean" example (``clean_mode``), where it is never
    drawn, so that a good share of the examples reach the kernels.
    """
    clean = _MODE["clean"]
    options = tuple((abs(w), v) for w, v in options if w > 0 or (w < 0 and not clean))
    i = draw(st.integers(0, sum(w for w, _ in options) - 1))
    for w, v in options:
        if i < w:
            if isinstance(v, Lazy):
                return v.fn()
            return draw(v) if isinstance(v, st.SearchStrategy) else v
        i -= w
    raise AssertionError("unreachable")


def clean_mode(draw: Callable) -> None:
    """Start an example: 40% of them draw valid-looking arguments only."""
    _MODE["clean"] = False
    _MODE["clean"] = draw(st.integers(0, 9)) < 4


HUGE = [2**62, 2**63, 2**64, 2**70, -(2**63)]
ODD_SPATIAL = [None, "2", b"1", "same", (), (1,), (1, 1, 1), ((1, 1), (1, 1)), (1, 1.5), (2, None),
               [1, "2"], {1: 2}, np.float32(2)]


def spatial(draw: Callable, lo: int, hi: int, *, absent: int = 0, lo_valid: int = 1) -> Any:
    """stride / dilation / kernel_size / output_padding."""
    small = st.integers(lo, hi)
    return pick(
        draw,
        (absent, ABSENT),
        (60, small),
        (20, st.tuples(small, small)),
        (3, st.lists(small, min_size=2, max_size=2)),
        (3, small.map(np.int64)),
        (2, st.tuples(small, small).map(np.array)),
        (-4, st.sampled_from([lo_valid - 1, -1, -3])),
        (-2, st.tuples(small, st.sampled_from([lo_valid - 1, -2]))),
        (-2, st.sampled_from([1.0, 2.5, float("nan")])),
        (-2, st.sampled_from([True, False, np.bool_(True)])),
        (-3, st.sampled_from(ODD_SPATIAL)),
        (-2, st.sampled_from(HUGE)),
        (-1, st.tuples(small, st.sampled_from(HUGE[:4]))),
    )


# Huge paddings: only values that overflow the size checks or cannot be
# allocated at all (2**28 on both axes: 2**58 elements) -- never sizes a
# machine could actually allocate and spend minutes filling.
CONV_HUGE_PAD = [2**28, ((2**28, 2**28), (2**28, 2**28)), 2**40, 2**62, 2**63, 2**64]
POOL_HUGE_PAD = [2**40, 2**62, 2**63]


def padding(draw: Callable, hi: int = 2, *, huge: Sequence[Any] = CONV_HUGE_PAD, absent: int = 0) -> Any:
    small = st.integers(0, hi)
    return pick(
        draw,
        (absent, ABSENT),
        (40, small),
        (15, st.tuples(small, small)),
        (10, st.tuples(st.tuples(small, small), st.tuples(small, small))),
        (12, st.sampled_from(["same", "valid", "SAME", "Valid"])),
        (3, st.tuples(small, small).map(list)),
        (2, st.tuples(st.tuples(small, small).map(list), st.tuples(small, small).map(list)).map(list)),
        (2, small.map(np.int64)),
        (-3, st.sampled_from(["full", "", "same ", "causal"])),
        (-3, st.sampled_from([-1, (0, -1), ((0, 0), (-1, 0))])),
        (-2, st.sampled_from([1.0, 0.5, (1, 1.0), np.float64(1)])),
        (-2, st.sampled_from([None, True, False, b"same", np.array([1, 1])])),
        (-3, st.sampled_from([(1, 1, 1), ((1, 1), 1), ((1, 1, 1), (1, 1)), ((1,), (1,)), (),
                              ((1, 1), (1, 1), (1, 1))])),
        (-2, st.sampled_from(huge)),
    )


def groups_arg(draw: Callable, g: int) -> Any:
    return pick(draw, (85, st.just(g)), (3, st.just(np.int64(g))), (-3, st.sampled_from([0, -1])),
                (-3, st.integers(1, 4)), (-3, st.sampled_from([1.0, True, None, "1", (1,)])),
                (-1, st.sampled_from([2**62, 2**64])))


def layout_arg(draw: Callable, lay: str) -> Any:
    other = "NHWC" if lay == "NCHW" else "NCHW"
    return pick(draw, (20, ABSENT if lay == "NCHW" else lay), (65, lay), (4, lay.lower()),
                (-3, st.sampled_from(["NCWH", "", "NCDHW", "HWCN"])),
                (-2, st.sampled_from([0, None, b"NCHW", ("NCHW",)])), (-2, other))


def activation_arg(draw: Callable) -> Any:
    return pick(draw, (50, ABSENT), (15, None), (12, "relu"), (12, "relu6"), (2, "ReLU"),
                (-3, st.sampled_from(["gelu", "", "sigmoid"])), (-2, st.sampled_from([1, True, b"relu"])))


def bool_arg(draw: Callable) -> Any:
    return pick(draw, (40, ABSENT), (25, False), (25, True), (3, np.bool_(True)),
                (-4, st.sampled_from([1, 0, None, "yes"])))


def dtype_name(draw: Callable) -> str:
    return pick(draw, (55, "float32"), (18, "float64"), (5, "float16"),
                (5, st.sampled_from(["int32", "int8", "uint8", "int64"])), (3, "bool"),
                (3, st.sampled_from([">f4", ">f8"])), (-3, st.sampled_from(["complex64", "complex128"])),
                (-2, "object"), (-1, "<U1"))


def memory_form(draw: Callable) -> str:
    return pick(draw, (55, "C"), (7, "F"), (7, "slice"), (6, "neg"), (5, "readonly"), (4, "broadcast"),
                (4, "list"), (4, "dlpack"), (4, "misaligned"), (4, "bigendian"))


def arr(draw: Callable, shape: Sequence[int], *, special: bool = True) -> A:
    shape = tuple(int(s) for s in shape)
    if math.prod(shape) > MAX_ELEMENTS or any(s < 0 for s in shape):
        shape = (1, 1, 2, 2)
    return A(shape, dtype_name(draw), memory_form(draw), draw(st.integers(0, 2**16)),
             special and draw(st.integers(0, 11)) == 0)


def mutate_shape(draw: Callable, shape: Tuple[int, ...]) -> Tuple[int, ...]:
    """Mostly ``shape``; sometimes one dimension more or less, a 0 or a +1."""
    how = pick(draw, (88, "same"), (-2, "drop"), (-2, "add"), (-2, "tail2"), (-3, "zero"), (-3, "plus"))
    if how == "same" or not shape:
        return shape
    if how == "drop":
        return shape[1:]
    if how == "add":
        return (1,) + shape
    if how == "tail2":
        return shape[-2:]
    i = draw(st.integers(0, len(shape) - 1))
    return shape[:i] + ((0 if how == "zero" else shape[i] + 1),) + shape[i + 1:]


def shape_arg(draw: Callable, shape: Tuple[int, ...]) -> Any:
    """A shape argument of a grad or shape function, in assorted spellings."""
    return pick(draw, (80, st.just(tuple(shape))), (5, st.just(list(shape))),
                (4, st.just(np.array(shape, dtype=np.int64))),
                (3, st.just(tuple(np.int64(s) for s in shape))),
                (-2, st.just(tuple(float(s) for s in shape))),
                (-2, st.just(tuple(shape[:-1]) + (-1,) if shape else (-1,))),
                (-2, st.sampled_from(["1,3,6,6", 6, None, (True, 1, 2, 2)])),
                (-2, st.just(tuple(shape) + (1,))))


def common(draw: Callable) -> Dict[str, Any]:
    return dict(isa=draw(st.sampled_from(ISAS)), threads=draw(st.integers(1, 3)))


def kw(**pairs: Any) -> Dict[str, Any]:
    return {k: v for k, v in pairs.items() if v is not ABSENT}


@dataclass
class Case:
    """One call: ``pyconv.<op>(*args, **kwargs)``; arrays are ``A`` specs.

    ``algo`` / ``out`` are conv2d's pyconv-only arguments (``out`` names the
    kind of output array made once the result's shape is known); ``prepack``
    is ``(groups, layout)`` when the weight is passed prepacked.
    """

    op: str
    args: Tuple[Any, ...]
    kwargs: Dict[str, Any] = field(default_factory=dict)
    algo: Any = ABSENT
    out: Optional[str] = None
    prepack: Optional[Tuple[Any, Any]] = None
    isa: str = "generic"
    threads: int = 1


def conv_dims(draw: Callable) -> Dict[str, Any]:
    lay = draw(st.sampled_from(LAYOUTS))
    kind = pick(draw, (50, "dense"), (25, "grouped"), (25, "depthwise"))
    if kind == "dense":
        g, c, oc = 1, draw(st.integers(1, 5)), draw(st.integers(1, 6))
    elif kind == "grouped":
        g = draw(st.integers(2, 3))
        c, oc = g * draw(st.integers(1, 2)), g * draw(st.integers(1, 3))
    else:
        c = draw(st.integers(1, 5))
        g, oc = c, c * draw(st.integers(1, 3))
    kh, kw_ = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h = max(1, kh + draw(st.integers(-1, 5)))
    w = max(1, kw_ + draw(st.integers(-1, 5)))
    n = pick(draw, (25, None), (5, 0), (70, st.integers(1, 3)))
    return dict(lay=lay, g=g, c=c, oc=oc, kh=kh, kw=kw_, h=h, w=w, n=n)


def x_shape(d: Dict[str, Any], c: Optional[int] = None) -> Tuple[int, ...]:
    c = d["c"] if c is None else c
    s = (c, d["h"], d["w"]) if d["lay"] == "NCHW" else (d["h"], d["w"], c)
    return s if d["n"] is None else (d["n"],) + s


def w_shape(lay: str, oc: int, cin: int, kh: int, kw_: int) -> Tuple[int, ...]:
    return (oc, cin, kh, kw_) if lay == "NCHW" else (kh, kw_, cin, oc)


def conv_params(draw: Callable, d: Dict[str, Any]) -> Dict[str, Any]:
    return dict(stride=spatial(draw, 1, 3, absent=20),
                padding=padding(draw, absent=15),
                dilation=pick(draw, (60, ABSENT), (15, 1), (25, Lazy(lambda: spatial(draw, 1, 3)))))


def bias_spec(draw: Callable, oc: int) -> Any:
    return pick(draw, (50, None), (38, st.just((oc,))), (-4, st.just((oc + 1,))), (-3, st.just((oc, 1))),
                (-2, st.just(())), (-3, st.just((0,))))


@st.composite
def conv_cases(draw: Callable) -> Case:
    clean_mode(draw)
    d = conv_dims(draw)
    algo = pick(draw, (40, ABSENT), (20, "auto"), (12, "direct"), (12, "im2col"), (6, "pointwise"),
                (6, "depthwise"), (-4, st.sampled_from(["winograd", "", "AUTO", "fft"])),
                (-2, st.sampled_from([None, 0, b"direct"])))
    prm = conv_params(draw, d)
    if algo == "pointwise" and draw(st.booleans()):  # give it shapes it serves
        d.update(g=1, kh=1, kw=1)
        d["c"] = max(d["c"], 1)
        prm["padding"] = draw(st.sampled_from([ABSENT, 0, "valid", "same", ((0, 0), (0, 0))]))
    lay = d["lay"]
    xs = mutate_shape(draw, x_shape(d))
    ws = mutate_shape(draw, w_shape(lay, d["oc"], d["c"] // d["g"], d["kh"], d["kw"]))
    b = bias_spec(draw, d["oc"])
    args = (arr(draw, xs), arr(draw, ws, special=False), None if b is None else arr(draw, b, special=False))
    groups = groups_arg(draw, d["g"])
    layout = layout_arg(draw, lay)
    kwargs = kw(groups=ABSENT if groups == 1 and draw(st.booleans()) else groups, layout=layout,
                activation=activation_arg(draw), **prm)
    prepack = None
    if draw(st.integers(0, 9)) < 2:
        prepack = (pick(draw, (85, st.just(groups)), (-15, Lazy(lambda: groups_arg(draw, d["g"])))),
                   pick(draw, (85, st.just(layout)), (-15, Lazy(lambda: layout_arg(draw, lay)))))
    out = pick(draw, (55, None), (15, "good"), (4, "misaligned"), (2, "subclass"),
               (-30, st.sampled_from(["shape", "flat", "dtype", "bigendian", "fortran", "noncontig",
                                    "readonly", "overlap_x", "overlap_w", "adjacent_x", "notarray",
                                    "broadcast"])))
    return Case("conv2d", args, kwargs, algo=algo, out=out, prepack=prepack, **common(draw))


@st.composite
def depthwise_cases(draw: Callable) -> Case:
    clean_mode(draw)
    d = conv_dims(draw)
    lay, c = d["lay"], d["c"]
    m = draw(st.integers(1, 3))
    per = pick(draw, (92, 1), (-8, 2))  # input channels per filter (1: depthwise)
    cm = pick(draw, (92, c * m), (-8, st.integers(1, 7)))
    xs = mutate_shape(draw, x_shape(d))
    dws = mutate_shape(draw, w_shape(lay, cm, per, d["kh"], d["kw"]))
    prm = conv_params(draw, d)
    layout = layout_arg(draw, lay)
    if draw(st.booleans()):
        b = bias_spec(draw, cm)
        args = (arr(draw, xs), arr(draw, dws, special=False), None if b is None else arr(draw, b, special=False))
        return Case("depthwise_conv2d", args, kw(layout=layout, activation=activation_arg(draw), **prm),
                    **common(draw))
    oc = draw(st.integers(1, 6))
    pk = pick(draw, (90, (1, 1)), (-5, (1, 2)), (-5, (3, 3)))
    pin = pick(draw, (92, cm), (-8, st.integers(1, 7)))
    pws = mutate_shape(draw, w_shape(lay, oc, pin, *pk))
    b = bias_spec(draw, oc)
    args = (arr(draw, xs), arr(draw, dws, special=False), arr(draw, pws, special=False),
            None if b is None else arr(draw, b, special=False))
    return Case("separable_conv2d", args, kw(layout=layout, activation=activation_arg(draw), **prm),
                **common(draw))


def _try(fn: Callable, *args: Any, **kwargs: Any) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    except Exception:  # noqa: BLE001 - only used to pick plausible shapes
        return None


def _small(shape: Any, fallback: Tuple[int, ...]) -> Tuple[int, ...]:
    if not isinstance(shape, tuple) or math.prod(shape) > MAX_ELEMENTS:
        return fallback
    return shape


@st.composite
def grad_cases(draw: Callable) -> Case:
    clean_mode(draw)
    op = pick(draw, (30, "conv2d_grad_input"), (30, "conv2d_grad_weight"), (10, "conv2d_grad_bias"),
              (30, "conv_transpose2d"))
    d = conv_dims(draw)
    lay = d["lay"]
    layout = layout_arg(draw, lay)
    if op == "conv2d_grad_bias":
        nd = pick(draw, (45, 4), (40, 3), (-5, 2), (-5, 5), (-5, 1))
        shape = tuple(draw(st.integers(0, 5) if draw(st.integers(0, 9)) == 0 else st.integers(1, 5))
                      for _ in range(nd))
        return Case(op, (arr(draw, shape),), kw(layout=layout), **common(draw))
    prm = conv_params(draw, d)
    groups = groups_arg(draw, d["g"])
    if op == "conv_transpose2d":
        # weight (C_in, C_out/groups, KH, KW) / (KH, KW, C_out/groups, C_in)
        og = d["oc"] // d["g"]
        xs = mutate_shape(draw, x_shape(d))
        ws = mutate_shape(draw, w_shape(lay, d["c"], og, d["kh"], d["kw"]))
        prm["padding"] = padding(draw, absent=20) if draw(st.integers(0, 4)) else prm["padding"]
        if isinstance(prm["padding"], str) and draw(st.integers(0, 3)):
            prm["padding"] = ABSENT
        b = bias_spec(draw, og * d["g"])
        op_pad = pick(draw, (55, ABSENT), (30, Lazy(lambda: spatial(draw, 0, 2, lo_valid=0))),
                      (15, st.integers(0, 3)))
        size = ABSENT
        if op_pad is ABSENT and draw(st.integers(0, 4)) == 0:
            base = _try(ref.conv_transpose2d, np.zeros(_small(xs, (1, 1, 1, 1)), np.float32),
                        np.zeros(_small(ws, (1, 1, 1, 1)), np.float32),
                        **kw(stride=prm["stride"], padding=prm["padding"], dilation=prm["dilation"],
                             groups=groups, layout=layout))
            hw = (1, 1) if base is None else ((base.shape[-2:]) if lay == "NCHW" else base.shape[-3:-1])
            size = pick(draw, (50, st.tuples(st.integers(hw[0], hw[0] + 2), st.integers(hw[1], hw[1] + 2))),
                        (10, st.just(list(hw))), (10, st.just(None if base is None else base.shape)),
                        (-10, st.tuples(st.integers(0, 20), st.integers(0, 20))),
                        (-10, st.sampled_from([(1,), (1, 2, 3), (1.0, 2), "12", 7, (-1, 3)])),
                        (-10, st.sampled_from([(hw[0] - 1, hw[1]), (2**63, 1)])))
        args = (arr(draw, xs), arr(draw, ws, special=False), None if b is None else arr(draw, b, special=False))
        return Case(op, args, kw(groups=groups, layout=layout, output_padding=op_pad, output_size=size, **prm),
                    **common(draw))
    xs = x_shape(d)
    ws = w_shape(lay, d["oc"], d["c"] // d["g"], d["kh"], d["kw"])
    ys = _try(ref.conv_output_shape, xs, ws, **kw(groups=groups, layout=layout, **prm))
    ys = mutate_shape(draw, _small(ys, x_shape(d)))
    if op == "conv2d_grad_input":
        args = (arr(draw, ys), arr(draw, mutate_shape(draw, ws), special=False), shape_arg(draw, xs))
    else:
        args = (arr(draw, mutate_shape(draw, xs)), arr(draw, ys), shape_arg(draw, ws))
    return Case(op, args, kw(groups=groups, layout=layout, **prm), **common(draw))


@st.composite
def pool_cases(draw: Callable) -> Case:
    clean_mode(draw)
    op = pick(draw, (30, "max_pool2d"), (25, "avg_pool2d"), (15, "max_pool2d_grad"), (15, "avg_pool2d_grad"),
              (8, "global_avg_pool2d"), (7, "global_max_pool2d"))
    lay = draw(st.sampled_from(LAYOUTS))
    n = pick(draw, (25, None), (5, 0), (70, st.integers(1, 3)))
    c, h, w = draw(st.integers(1, 4)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    d = dict(lay=lay, n=n, c=c, h=h, w=w)
    xs = x_shape(d)
    layout = layout_arg(draw, lay)
    if op.startswith("global"):
        xg = pick(draw, (85, st.just(xs)), (-15, Lazy(lambda: mutate_shape(draw, xs))))
        return Case(op, (arr(draw, xg),), kw(layout=layout, keepdims=bool_arg(draw)), **common(draw))
    ksize = spatial(draw, 1, 4)
    stride = pick(draw, (40, ABSENT), (10, None), (50, Lazy(lambda: spatial(draw, 1, 3))))
    pad = padding(draw, 2, huge=POOL_HUGE_PAD, absent=30)
    params = dict(kernel_size=ksize, stride=stride, padding=pad, ceil_mode=bool_arg(draw), layout=layout)
    if op in ("max_pool2d", "max_pool2d_grad"):
        params["dilation"] = pick(draw, (70, ABSENT), (30, Lazy(lambda: spatial(draw, 1, 3))))
    if op == "max_pool2d":
        params["return_indices"] = bool_arg(draw)
    if op in ("avg_pool2d", "avg_pool2d_grad"):
        params["count_include_pad"] = pick(draw, (45, ABSENT), (15, None), (15, True), (15, False),
                                           (5, np.bool_(False)), (-5, st.sampled_from([1, "no"])))
    if op in ("max_pool2d", "avg_pool2d"):
        return Case(op, (arr(draw, mutate_shape(draw, xs)),), kw(**params), **common(draw))
    shape_kw = {k: v for k, v in params.items() if k in ("stride", "padding", "dilation", "ceil_mode", "layout")}
    ys = _try(ref.pool_output_shape, xs, ksize, **kw(**shape_kw))
    ys = mutate_shape(draw, _small(ys, xs))
    if op == "max_pool2d_grad":
        args = (arr(draw, ys), arr(draw, mutate_shape(draw, xs)))
    else:
        args = (arr(draw, ys), shape_arg(draw, xs))
    return Case(op, args, kw(**params), **common(draw))


def dim(draw: Callable, small: Any = None, huge: int = 12) -> Any:
    return pick(draw, (70, small if small is not None else st.integers(0, 9)),
                (huge, st.sampled_from([2**20, 2**31, 2**32, 2**40, 2**62, 2**63, 2**64])),
                (-4, st.sampled_from([-1, -(2**63)])), (4, st.integers(1, 9).map(np.int64)),
                (2, st.just(np.uint64(2**63))), (-3, st.sampled_from([3.0, None, "3", True])))


def shape_container(draw: Callable, shape: Tuple[Any, ...]) -> Any:
    how = pick(draw, (80, "tuple"), (8, "list"), (6, "array"), (-3, "junk"), (-3, "mutate"))
    if how == "list":
        return list(shape)
    if how == "array":
        try:
            return np.array(shape)
        except (OverflowError, ValueError, TypeError):
            return tuple(shape)
    if how == "junk":
        return draw(st.sampled_from(["1,3,6,6", 6, None, b"abcd", {1: 1}]))
    if how == "mutate":
        return draw(st.sampled_from([shape[1:], shape + (1,), shape[:2]]))
    return tuple(shape)


@st.composite
def shape_cases(draw: Callable) -> Case:
    clean_mode(draw)
    op = pick(draw, (25, "conv_output_shape"), (35, "plan"), (20, "pool_output_shape"),
              (20, "transpose_output_shape"))
    lay = draw(st.sampled_from(LAYOUTS))
    layout = layout_arg(draw, lay)
    n, h, w = dim(draw, st.integers(0, 3)), dim(draw, st.integers(1, 12), 25), dim(draw, st.integers(1, 12), 25)
    if op == "pool_output_shape":
        c = dim(draw, st.integers(1, 4))
        xs = (n, c, h, w) if lay == "NCHW" else (n, h, w, c)
        if draw(st.integers(0, 4)) == 0:
            xs = xs[1:]
        params = kw(stride=pick(draw, (40, ABSENT), (10, None), (50, Lazy(lambda: spatial(draw, 1, 3)))),
                    padding=padding(draw, 2, huge=POOL_HUGE_PAD, absent=30),
                    dilation=pick(draw, (70, ABSENT), (30, Lazy(lambda: spatial(draw, 1, 3)))),
                    ceil_mode=bool_arg(draw), layout=layout)
        return Case(op, (shape_container(draw, xs), spatial(draw, 1, 4)), params, **common(draw))
    g = pick(draw, (60, 1), (30, st.integers(2, 3)), (10, st.sampled_from([2**31, 2**62])))
    cg, og = dim(draw, st.integers(1, 3)), dim(draw, st.integers(1, 3))
    c = g * cg if isinstance(cg, int) and not isinstance(cg, bool) else cg
    oc = g * og if isinstance(og, int) and not isinstance(og, bool) else og
    kh, kw_ = dim(draw, st.integers(1, 4), huge=2), dim(draw, st.integers(1, 4), huge=2)
    xs = (n, c, h, w) if lay == "NCHW" else (n, h, w, c)
    if draw(st.integers(0, 4)) == 0:
        xs = xs[1:]
    if op == "transpose_output_shape":
        ws = (c, og, kh, kw_) if lay == "NCHW" else (kh, kw_, og, c)
    else:
        ws = (oc, cg, kh, kw_) if lay == "NCHW" else (kh, kw_, cg, oc)
    params = kw(stride=spatial(draw, 1, 3, absent=20), padding=padding(draw, absent=15),
                dilation=pick(draw, (60, ABSENT), (40, Lazy(lambda: spatial(draw, 1, 3)))),
                groups=groups_arg(draw, g) if not isinstance(g, int) or g < 2**31 else g, layout=layout)
    if op == "plan":
        params.update(kw(dtype=pick(draw, (50, ABSENT), (15, "float32"), (15, "float64"), (5, np.float32),
                                    (3, None), (-7, st.sampled_from(["int8", np.complex64, "float16", "float33",
                                                                    5, "f8", object])))))
    if op == "transpose_output_shape":
        sizes = st.sampled_from([(5, 5), (1, 1), [7, 9], None, (3,)])
        params.update(kw(output_padding=pick(draw, (60, ABSENT), (40, Lazy(lambda: spatial(draw, 0, 2, lo_valid=0)))),
                         output_size=pick(draw, (80, ABSENT), (-20, sizes))))
        if isinstance(params.get("padding"), str) and draw(st.integers(0, 3)):
            params.pop("padding")
    return Case(op, (shape_container(draw, xs), shape_container(draw, ws)), params, **common(draw))


FAMILIES = {
    "conv": conv_cases(),
    "depthwise": depthwise_cases(),
    "grad": grad_cases(),
    "pool": pool_cases(),
    "shape": shape_cases(),
}
FAMILY_OF = {"conv2d": "conv", "depthwise_conv2d": "depthwise", "separable_conv2d": "depthwise",
             "conv2d_grad_input": "grad", "conv2d_grad_weight": "grad", "conv2d_grad_bias": "grad",
             "conv_transpose2d": "grad", "max_pool2d": "pool", "avg_pool2d": "pool", "max_pool2d_grad": "pool",
             "avg_pool2d_grad": "pool", "global_avg_pool2d": "pool", "global_max_pool2d": "pool",
             "conv_output_shape": "shape", "plan": "shape", "pool_output_shape": "shape",
             "transpose_output_shape": "shape"}


# ---------------------------------------------------------------------------
# the oracle


def kind_of(exc: BaseException) -> Optional[type]:
    for cls in (MemoryError, TypeError, ValueError):
        if isinstance(exc, cls):
            return cls
    return None


def describe(exc: Optional[BaseException]) -> str:
    return "returned" if exc is None else f"{type(exc).__name__}: {str(exc)[:400]}"


def assert_matches(actual: Any, expected: np.ndarray, dtype: np.dtype, what: str, exact: bool = False) -> None:
    """``actual`` has ``dtype`` and ``expected``'s shape, the same non-finite
    positions, and matches it within DESIGN.md's tolerance (or exactly)."""
    assert isinstance(actual, np.ndarray), f"{what}: returned {type(actual).__name__}"
    assert actual.dtype == dtype, f"{what}: dtype {actual.dtype}, reference {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, reference {expected.shape}"
    if dtype.kind != "f":
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        return
    a, e = actual.astype(np.float64), np.asarray(expected, dtype=np.float64)
    for name, pred in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        bad = pred(a) != pred(e)
        assert not bad.any(), (f"{what}: {name} positions differ at {np.argwhere(bad)[:5].tolist()}: "
                               f"pyconv {a[bad][:5]}, reference {e[bad][:5]}")
    fin = np.isfinite(e)
    if exact:
        np.testing.assert_array_equal(a[fin], e[fin], err_msg=what)
        return
    rtol = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}[np.dtype(dtype)]
    scale = float(np.max(np.abs(e[fin]))) if fin.any() else 0.0
    np.testing.assert_allclose(a[fin], e[fin], rtol=rtol, atol=rtol * max(1.0, scale), err_msg=what)


def _guarded(shape: Tuple[int, ...], dtype: np.dtype, offset: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(buffer, out): a NaN-filled C-contiguous ``out`` inside a buffer with
    64 guard bytes of a fixed pattern on either side."""
    nbytes = math.prod(shape) * dtype.itemsize
    total = nbytes + 128 + offset
    buf = np.frombuffer(bytes(range(256)) * (total // 256 + 1), np.uint8)[:total].copy()
    out = buf[64 + offset:64 + offset + nbytes].view(dtype).reshape(shape)
    if dtype.kind == "f":
        out[...] = np.nan
    return buf, out


def _shared(src: np.ndarray, shape: Tuple[int, ...], dtype: np.dtype, adjacent: bool) -> Tuple[np.ndarray, np.ndarray]:
    """(src', out): a copy of ``src`` and an ``out`` in one buffer, ``out``
    starting in the middle of ``src`` (or right after it)."""
    nb_src, nb_out = src.nbytes, math.prod(shape) * dtype.itemsize
    off = -(-nb_src // 8) * 8 if adjacent else (nb_src // 2) // 8 * 8
    buf = np.zeros(max(nb_src, off + nb_out), np.uint8)
    s = buf[:nb_src].view(src.dtype).reshape(src.shape)
    s[...] = src
    return s, buf[off:off + nb_out].view(dtype).reshape(shape)


def make_out(kind: str, result: Any, args: List[Any]) -> Tuple[Any, Optional[np.ndarray]]:
    """The ``out`` argument of ``kind`` for a result like ``result`` (None when
    the reference failed); returns (out, buffer whose bytes must survive)."""
    shape = result.shape if isinstance(result, np.ndarray) else (1, 2, 3, 3)
    dtype = result.dtype if isinstance(result, np.ndarray) else np.dtype(np.float32)
    if kind in ("overlap_x", "overlap_w", "adjacent_x"):
        i = 1 if kind == "overlap_w" else 0
        src = args[i]
        if (isinstance(src, np.ndarray) and src.nbytes and src.dtype.kind in "fiub"
                and math.prod(shape)):
            args[i], out = _shared(src, shape, dtype, kind == "adjacent_x")
            return out, None
        kind = "good"
    if kind == "good":
        buf, out = _guarded(shape, dtype)
        return out, buf
    if kind == "misaligned":
        buf, out = _guarded(shape, dtype, offset=1 if dtype.itemsize > 1 else 0)
        return out, buf
    if kind == "subclass":
        buf, out = _guarded(shape, dtype)
        return out.view(OutSub), buf
    if kind == "shape":
        return np.zeros(shape[:-1] + (shape[-1] + 1,) if shape else (1,), dtype), None
    if kind == "flat":
        return np.zeros((math.prod(shape),), dtype), None
    if kind == "dtype":
        return np.zeros(shape, np.float64 if dtype == np.float32 else np.float32), None
    if kind == "bigendian":
        return np.zeros(shape, dtype.newbyteorder(">")), None
    if kind == "fortran":
        return np.asfortranarray(np.zeros(shape, dtype)), None
    if kind == "noncontig":
        big = np.zeros(shape[:-1] + (2 * shape[-1],), dtype)
        return big[..., ::2], None
    if kind == "readonly":
        out = np.zeros(shape, dtype)
        out.flags.writeable = False
        return out, None
    if kind == "broadcast":
        return np.broadcast_to(np.zeros((), dtype), shape), None
    if kind == "notarray":
        return np.zeros(shape, dtype).tolist(), None
    raise AssertionError(kind)


def out_problem(out: Any, result: Any, inputs: Sequence[Optional[np.ndarray]]) -> Optional[type]:
    """DESIGN.md's out= rule: TypeError if not an ndarray; ValueError if the
    shape or dtype is wrong, or it is non-contiguous, read-only or overlaps
    an input; None for a valid out."""
    if not isinstance(out, np.ndarray):
        return TypeError
    if (result is None or out.shape != result.shape or out.dtype != result.dtype or not out.flags.c_contiguous
            or not out.flags.writeable or any(a is not None and np.may_share_memory(out, a) for a in inputs)):
        return ValueError
    return None


def _norm_layout(v: Any) -> Optional[str]:
    if v is ABSENT:
        return "NCHW"
    if isinstance(v, str) and v.upper() in LAYOUTS:
        return v.upper()
    return None


def _int_or_none(v: Any) -> Optional[int]:
    if isinstance(v, (bool, np.bool_)):
        return None
    try:
        return operator.index(v)
    except TypeError:
        return None


def algo_problem(case: Case, args: List[Any], result: Any) -> Optional[type]:
    """The error an ``algo`` must raise (None: it must serve this call)."""
    algo = case.algo
    if algo is ABSENT:
        return None
    if not isinstance(algo, str):
        return TypeError
    if algo not in ALGOS:
        return ValueError
    if result is None or algo in ("auto", "direct", "im2col"):
        return None
    lay = _norm_layout(case.kwargs.get("layout", ABSENT))
    x, w = np_view(args[0]), np_view(args[1])
    groups = _int_or_none(case.kwargs.get("groups", 1))
    kh, kw_ = (w.shape[2], w.shape[3]) if lay == "NCHW" else (w.shape[0], w.shape[1])
    c = x.shape[-3] if lay == "NCHW" else x.shape[-1]
    if algo == "depthwise":
        return None if groups == c else ValueError
    pad = case.kwargs.get("padding", 0)
    flat = np.asarray(pad, dtype=object).reshape(-1) if not isinstance(pad, str) else np.zeros(1)
    no_pad = isinstance(pad, str) or all(int(v) == 0 for v in flat)
    return None if (kh, kw_) == (1, 1) and groups == 1 and no_pad else ValueError


def prepack_must_fail(w: Any, groups: Any, layout: Any) -> bool:
    if _norm_layout(layout) is None:
        return True
    a = np_view(w)
    if a is None or a.dtype.kind in "cOSUVMm" or a.ndim != 4 or min(a.shape) < 1:
        return True
    g = _int_or_none(groups)
    if g is None or g < 1:
        return True
    oc = a.shape[0] if _norm_layout(layout) == "NCHW" else a.shape[3]
    return oc % g != 0


def packed_problem(case: Case, packed: Any) -> Optional[type]:
    """conv2d with a PackedWeight made for another layout or groups: ValueError."""
    lay = _norm_layout(case.kwargs.get("layout", ABSENT))
    if lay is not None and lay != packed.layout:
        return ValueError
    g = case.kwargs.get("groups", 1)
    if not isinstance(g, (bool, np.bool_)) and isinstance(g, (int, np.integer)) and g != packed.groups:
        return ValueError
    return None


class Expected:
    """What the reference did: ``exc`` (its error) or ``value`` (and ``value64``,
    the same call on float64 copies when the result is float32)."""

    def __init__(self, exc: Optional[BaseException] = None, value: Any = None, value64: Any = None,
                 checker: Optional[Callable[[Any], None]] = None, may_raise: Tuple[type, ...] = ()):
        self.exc, self.value, self.value64, self.checker = exc, value, value64, checker
        self.may_raise = may_raise  # errors that are fine too (where the oracle cannot tell)


def reference_call(case: Case, args: List[Any], kwargs: Dict[str, Any]) -> Expected:
    fn = getattr(ref, case.op)
    try:
        # NaN/inf arithmetic, and NumPy's "mean of empty slice" in the
        # reference's global pools, are not errors of the call
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            value = fn(*args, **kwargs)
    except ERRORS as exc:
        return Expected(exc=exc)
    first = value[0] if isinstance(value, tuple) else value
    value64 = value
    # The oracle is the reference on float64 copies (cast through the
    # computation dtype first).  Also for float64 results: the reference's
    # conv_transpose2d computes in float32 when only the bias is float64
    # (a reference divergence from DESIGN.md's dtype rule, which pyconv keeps).
    operands = [np_view(a) for a, spec in zip(args, case.args) if isinstance(spec, A)]
    if (isinstance(first, np.ndarray) and first.dtype.kind == "f"
            and any(o is not None and o.dtype != np.float64 for o in operands)):
        args64 = [copy64(a, first.dtype) if isinstance(spec, A) else a for a, spec in zip(args, case.args)]
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                value64 = fn(*args64, **kwargs)
        except ValueError:  # NumPy's "array is too big" for an empty float64 batch
            value64 = value
    return Expected(value=value, value64=value64)


def _shape_ints(v: Any) -> Optional[Tuple[int, ...]]:
    """A shape argument as ints, or None where pyconv must raise TypeError."""
    if isinstance(v, np.ndarray) and v.dtype.kind != "O":
        v = v.tolist()
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        return None
    out = []
    for e in v:
        i = _int_or_none(e)
        if i is None:
            return None
        out.append(i)
    return tuple(out)


def plan_expected(case: Case, args: List[Any], kwargs: Dict[str, Any]) -> Expected:
    """plan: conv_output_shape's answer, plus its own dtype rule and fields."""
    shape_kw = {k: v for k, v in kwargs.items() if k != "dtype"}
    try:
        out_shape = ref.conv_output_shape(*args, **shape_kw)
    except ERRORS as exc:
        return Expected(exc=exc)
    dtype = kwargs.get("dtype", "float32")
    try:
        dt = np.dtype(dtype)
    except TypeError as exc:
        return Expected(exc=exc)
    if dt not in (np.float32, np.float64):
        return Expected(exc=ValueError(f"dtype {dtype!r}"))
    lay = _norm_layout(kwargs.get("layout", ABSENT))
    xs, ws = _shape_ints(args[0]), _shape_ints(args[1])
    xs = xs if len(xs) == 4 else (1,) + xs
    n, c = (xs[0], xs[1]) if lay == "NCHW" else (xs[0], xs[3])
    oc, kh, kw_ = (ws[0], ws[2], ws[3]) if lay == "NCHW" else (ws[3], ws[0], ws[1])
    o4 = out_shape if len(out_shape) == 4 else (1,) + out_shape
    oh, ow = (o4[2], o4[3]) if lay == "NCHW" else (o4[1], o4[2])
    g = operator.index(kwargs.get("groups", 1))
    flops = 2 * n * oc * oh * ow * (c // g) * kh * kw_
    pad = kwargs.get("padding", 0)
    numeric = None
    if not isinstance(pad, str):
        p = np.asarray(pad, dtype=object)
        numeric = (tuple(int(v) for v in p.reshape(-1)) if p.shape == (2, 2) else
                   (int(p[0]),) * 2 + (int(p[1]),) * 2 if p.shape == (2,) else (int(p),) * 4)
    elif pad.lower() == "valid":
        numeric = (0, 0, 0, 0)

    def check(res: Any) -> None:
        assert isinstance(res, dict), type(res)
        assert set(res) == {"algo", "isa", "pads", "out_shape", "flops", "workspace_bytes"}, sorted(res)
        assert res["out_shape"] == out_shape and type(res["out_shape"]) is tuple, (res["out_shape"], out_shape)
        assert res["flops"] == flops, (res["flops"], flops)
        assert res["algo"] in ALGOS[1:], res["algo"]
        assert res["isa"] == pyconv.config()["isa"], res["isa"]
        pads = res["pads"]
        assert len(pads) == 4 and all(type(p) is int and p >= 0 for p in pads), pads
        if numeric is not None:
            assert pads == numeric, (pads, numeric)
        ws_bytes = res["workspace_bytes"]
        assert type(ws_bytes) is int and ws_bytes >= 0, ws_bytes

    return Expected(value=out_shape, checker=check)


def transpose_shape_expected(case: Case, args: List[Any], kwargs: Dict[str, Any]) -> Expected:
    """transpose_output_shape (no reference twin): conv_transpose2d's shape on
    zero arrays when the shapes are small; a loose check when they are huge."""
    xs, ws = _shape_ints(args[0]), _shape_ints(args[1])
    if xs is None or ws is None or min(xs + ws, default=0) < 0:
        def refuse(res: Any) -> None:  # non-int or negative sizes: ValueError or TypeError
            raise AssertionError(f"returned {res!r} for shapes {args[0]!r}, {args[1]!r}")

        return Expected(value=None, checker=refuse, may_raise=(ValueError, TypeError))
    if max(xs + ws, default=0) <= 4096 and math.prod(xs) <= MAX_ELEMENTS and math.prod(ws) <= MAX_ELEMENTS:
        try:
            y = ref.conv_transpose2d(np.zeros(xs, np.float32), np.zeros(ws, np.float32), **kwargs)
        except ERRORS as exc:
            return Expected(exc=exc)
        return Expected(value=y.shape)

    def check(res: Any) -> None:  # huge sizes: a plausible shape, or ValueError (too large)
        assert type(res) is tuple and len(res) == len(xs) and all(type(v) is int and v >= 0 for v in res), res
        assert min(res[1:] if len(res) == 4 else res) > 0, res

    return Expected(value=None, checker=check, may_raise=(ValueError, TypeError))


ORACLES: Dict[str, Callable[[Case, List[Any], Dict[str, Any]], Expected]] = {
    "plan": plan_expected,
    "transpose_output_shape": transpose_shape_expected,
}
EXACT = {"max_pool2d", "global_max_pool2d"}
REFERENCE_TWINS = set(FAMILY_OF) - set(ORACLES)


def precedence(case: Case, kwargs: Dict[str, Any]) -> List[type]:
    """Errors pyconv may raise instead of the reference's when a call has
    several problems and the two check them in a different order.

    Known divergence (pyconv.reference, not pyconv): reference.separable_conv2d
    checks ``activation`` only when it reaches the pointwise step, after the
    depthwise step's shape checks (and computation); pyconv.separable_conv2d,
    like every other conv op in both modules, checks it first.  So a bad
    activation in a call that also has a bad shape or stride gives TypeError
    from pyconv and ValueError from the reference (or the other way round).
    """
    if case.op == "separable_conv2d":
        act = kwargs.get("activation")
        if act is not None and not isinstance(act, str):
            return [TypeError]
        if isinstance(act, str) and act.lower() not in ("relu", "relu6"):
            return [ValueError]
    return []


def stricter(case: Case, args: List[Any], kwargs: Dict[str, Any]) -> List[type]:
    """Errors pyconv raises for checks pyconv.reference does not make.

    Known divergences (the reference is laxer; pyconv follows DESIGN.md's
    "TypeError for bad types" and its pooling rules):

    * ``max_pool2d(return_indices=...)`` and the global pools' ``keepdims``:
      pyconv wants a bool (TypeError otherwise); the reference takes any
      truthy value.
    * global pools of an input with no channel, row or column: pyconv raises
      ValueError (as every other pooling op, in both modules); the reference
      returns an empty array (C = 0), NaN (mean over H*W = 0) or NumPy's own
      ValueError (max over H*W = 0).
    """
    found: List[type] = []
    if case.op == "max_pool2d":
        flag = kwargs.get("return_indices", False)
        if not isinstance(flag, (bool, np.bool_)):
            found.append(TypeError)
    if case.op.startswith("global_"):
        flag = kwargs.get("keepdims", False)
        if not isinstance(flag, (bool, np.bool_)):
            found.append(TypeError)
        x, lay = np_view(args[0]), _norm_layout(kwargs.get("layout", ABSENT))
        if x is not None and lay is not None and x.ndim in (3, 4) and x.dtype.kind in "fiub":
            chw = x.shape[-3:] if lay == "NCHW" else (x.shape[-1],) + x.shape[-3:-1]
            if min(chw) < 1:
                found.append(ValueError)
    return found


def _fail(case: Case, msg: str) -> None:
    raise AssertionError(f"{case.op}: {msg}\n{case!r}")


def run_case(case: Case) -> str:
    """Run one case against the oracle; returns the outcome (for the counts)."""
    pyconv.set_max_isa(case.isa)
    pyconv.set_num_threads(case.threads)
    args = [build(a) for a in case.args]
    kwargs = {k: build(v) for k, v in case.kwargs.items()}
    oracle = ORACLES.get(case.op, reference_call)
    expected = oracle(case, args, kwargs)

    extra: List[type] = []  # errors pyconv must raise for its own arguments
    call_kwargs = dict(kwargs)
    if case.op == "conv2d":
        if case.prepack is not None:
            g, lay = case.prepack
            try:
                args[1] = pyconv.prepack(args[1], **kw(groups=g, layout=lay))
            except Exception as exc:  # noqa: BLE001
                if kind_of(exc) not in (ValueError, TypeError) or "prepack:" not in str(exc):
                    _fail(case, f"prepack raised {describe(exc)}")
                if not prepack_must_fail(args[1], g, lay):
                    _fail(case, f"prepack refused a valid weight: {describe(exc)}")
                return "prepack_error"
            if prepack_must_fail(np_view(args[1]), g, lay):
                _fail(case, "prepack accepted an invalid weight")
            p = packed_problem(case, args[1])
            if p is not None:
                extra.append(p)
        p = algo_problem(case, args, expected.value)
        if p is not None:
            extra.append(p)
        if case.algo is not ABSENT:
            call_kwargs["algo"] = case.algo
    extra += stricter(case, args, kwargs)
    out = guard = None
    if case.out is not None:
        out, guard = make_out(case.out, expected.value, args)
        call_kwargs["out"] = out
        p = out_problem(out, expected.value, [np_view(a) for a in args])
        if p is not None:
            extra.append(p)
    inputs = [a for a, spec in zip(args, case.args) if isinstance(spec, A)]  # the array operands
    before = [snapshot(a) for a in inputs]
    out_before = guard.tobytes() if guard is not None else (out.tobytes() if isinstance(out, np.ndarray) else None)

    try:
        with np.errstate(all="ignore"):
            result = getattr(pyconv, case.op)(*args, **call_kwargs)
        exc = None
    except Exception as e:  # noqa: BLE001 - any other class is what we are looking for
        result, exc = None, e

    # inputs are never modified, whatever happened
    for a, b in zip(inputs, before):
        if b is not None and snapshot(a) != b:
            _fail(case, f"an input was modified ({describe(exc)})")
    if exc is not None:
        cls = kind_of(exc)
        if cls is None:
            _fail(case, f"raised {describe(exc)}: only ValueError, TypeError or MemoryError are allowed")
        if cls in (ValueError, TypeError) and f"{case.op}:" not in str(exc):
            _fail(case, f"error message does not name the function: {describe(exc)}")
        if out_before is not None:
            now = guard.tobytes() if guard is not None else out.tobytes()
            if now != out_before:
                _fail(case, f"raised {describe(exc)} but wrote to out")
    if (expected.exc is not None and kind_of(expected.exc) is not MemoryError
            and "reference." not in str(expected.exc) and case.op in REFERENCE_TWINS):
        # Not one of the reference's own checks but NumPy failing inside it
        # (e.g. "array is too big" for an empty batch whose images would be
        # 2**58 elements, which the size checks allow because N = 0): the
        # oracle cannot tell; pyconv may return or raise (the class was
        # checked above).
        NOTES[f"{case.op}: reference failed inside NumPy: {str(expected.exc)[:70]}"] += 1
        return "inconclusive"
    if expected.exc is not None:
        want = kind_of(expected.exc)
        if want is MemoryError:  # the reference could not allocate; pyconv may manage
            return "memory_both" if kind_of(exc) is MemoryError else "memory_reference_only"
        if exc is None:
            _fail(case, f"reference raised {describe(expected.exc)} but pyconv returned")
        if kind_of(exc) is not want and kind_of(exc) not in extra + precedence(case, kwargs):
            _fail(case, f"reference raised {describe(expected.exc)}, pyconv {describe(exc)}")
        return "error"
    if extra:
        if exc is None:
            _fail(case, f"must raise one of {[e.__name__ for e in extra]} (algo/out/prepack), returned")
        if kind_of(exc) not in extra and kind_of(exc) is not MemoryError:
            _fail(case, f"must raise one of {[e.__name__ for e in extra]}, got {describe(exc)}")
        return "error"
    if exc is not None:
        if kind_of(exc) is MemoryError:  # allowed by DESIGN.md; noted, as the reference managed
            NOTES[f"{case.op}: MemoryError where the reference returned: {str(exc)[:60]}"] += 1
            return "memory_pyconv_only"
        if kind_of(exc) in expected.may_raise:
            return "error"
        _fail(case, f"reference returned, pyconv raised {describe(exc)}")
    check_result(case, result, expected, out, guard, out_before, inputs)
    return "ok"


def check_result(case: Case, result: Any, expected: Expected, out: Any, guard: Optional[np.ndarray],
                 out_before: Optional[bytes], inputs: List[Any]) -> None:
    if expected.checker is not None:
        expected.checker(result)
        if expected.value is None or not isinstance(result, tuple) or case.op == "plan":
            return
    if case.op.endswith("_shape"):
        assert type(result) is tuple and all(type(v) is int for v in result), result
        assert result == expected.value, (result, expected.value)
        return
    if isinstance(out, np.ndarray):
        if result is not out:
            _fail(case, "did not return out itself")
        after = guard.tobytes() if guard is not None else None
        if after is not None:
            n = len(after)
            if after[:64] != out_before[:64] or after[n - 64:] != out_before[n - 64:]:
                _fail(case, "wrote outside out")
    values = result if isinstance(expected.value, tuple) else (result,)
    refs = expected.value64 if isinstance(expected.value, tuple) else (expected.value64,)
    dtypes = expected.value if isinstance(expected.value, tuple) else (expected.value,)
    if isinstance(expected.value, tuple) and (not isinstance(result, tuple) or len(result) != len(refs)):
        _fail(case, f"returned {type(result).__name__}, reference a {len(refs)}-tuple")
    for i, (v, r, d) in enumerate(zip(values, refs, dtypes)):
        what = f"{case.op} result {i}"
        try:
            assert_matches(v, r, d.dtype, what, exact=case.op in EXACT or d.dtype.kind != "f")
        except AssertionError as e:
            _fail(case, str(e))
        if not v.flags.c_contiguous or not v.flags.writeable:
            _fail(case, f"{what} is not a writeable C-contiguous array")
        if v is not out:
            for a in inputs:
                a = np_view(a)
                if a is not None and np.shares_memory(v, a):
                    _fail(case, f"{what} shares memory with an input")


def run_and_count(case: Case) -> None:
    outcome = run_case(case)
    COUNTS[(FAMILY_OF[case.op], case.op, outcome)] += 1


# ---------------------------------------------------------------------------
# the tests

FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


def summary() -> str:
    total = sum(COUNTS.values())
    lines = [f"pyconv fuzz: {total} cases executed"]
    ops = sorted({(f, op) for f, op, _ in COUNTS})
    for fam, op in ops:
        per = {o: n for (f, p, o), n in COUNTS.items() if (f, p) == (fam, op)}
        lines.append(f"  {fam:9s} {op:24s} " + ", ".join(f"{o}={n}" for o, n in sorted(per.items())))
    lines += [f"  note: {n} x {why}" for why, n in NOTES.most_common()]
    return "\n".join(lines)


@pytest.fixture(scope="module", autouse=True)
def _fuzz_summary(request):
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None and COUNTS:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(summary())


@FUZZ
@given(case=FAMILIES["conv"])
def test_fuzz_conv2d(case):
    run_and_count(case)


@FUZZ
@given(case=FAMILIES["depthwise"])
def test_fuzz_depthwise_and_separable(case):
    run_and_count(case)


@FUZZ
@given(case=FAMILIES["grad"])
def test_fuzz_gradients_and_transpose(case):
    run_and_count(case)


@FUZZ
@given(case=FAMILIES["pool"])
def test_fuzz_pooling(case):
    run_and_count(case)


@FUZZ
@given(case=FAMILIES["shape"])
def test_fuzz_shape_functions(case):
    run_and_count(case)


@pytest.mark.parametrize("op", ["conv2d", "separable_conv2d", "conv_output_shape"])
def test_empty_batch_overflow_names_the_function(op):
    """Found by this fuzzer: an empty batch (N=0) skipped the int64 size
    checks, so a huge padding ended in NumPy's 'array is too big'."""
    x = np.ones((0, 1, 1, 1), np.float32)
    w = np.ones((1, 1, 1, 1), np.float32)
    call = {"conv2d": lambda: pyconv.conv2d(x, w, padding=2**40),
            "separable_conv2d": lambda: pyconv.separable_conv2d(x, w, w, padding=2**40),
            "conv_output_shape": lambda: pyconv.conv_output_shape(x.shape, w.shape, padding=2**40)}[op]
    try:
        result = call()
    except ValueError as exc:
        assert f"{op}:" in str(exc) and "too large" in str(exc), str(exc)
    else:
        raise AssertionError(f"{op} returned {result!r} for 2**82-element images")


def test_pool_shape_with_dilation_needs_no_memory():
    """Found by this fuzzer: with dilation > 1 the pooling geometry checked
    every middle window with (output size x kernel) arrays (MemoryError at
    H = 2**40; 10 s and 1.8 GB at H = 2**26).  Now a closed-form count."""
    h = 2**40
    assert pyconv.pool_output_shape((1, 1, h, 4), 2, stride=1, dilation=2) == (1, 1, h - 2, 2)
    # A middle window that falls between the input's cells is still found.
    with pytest.raises(ValueError, match="window of output 1 covers padding only"):
        pyconv.pool_output_shape((1, 1, 2**40, 3), (1, 2), stride=1, padding="same", dilation=(1, 4))


@pytest.mark.parametrize("op, shape, dilation", [
    ("max_pool2d", (1, 1, 1), 2**62),        # ValueError: pool: size overflows 64-bit arithmetic
    ("max_pool2d", (1, 1, 3), 2**63),        # OverflowError: Python int too large to convert to C long
    ("max_pool2d", (1, 1, 1), 2**64),        # TypeError: pool_forward(): incompatible function arguments
    ("max_pool2d_grad", (1, 3, 3), 2**61),   # ValueError: pool: size overflows 64-bit arithmetic
    ("pool_output_shape", (1, 1, 3), 2**63),  # OverflowError
], ids=["max_pool2d-2^62", "max_pool2d-2^63", "max_pool2d-2^64", "max_pool2d_grad-2^61",
        "pool_output_shape-2^63"])
def test_pool_huge_dilation(op, shape, dilation):
    """Found by this fuzzer: a one-tap window with a dilation >= 2**61 raised
    (C++ size overflow, OverflowError, the binding's TypeError)."""
    x = np.arange(math.prod(shape), dtype=np.float32).reshape(shape)
    try:
        if op == "max_pool2d":
            np.testing.assert_array_equal(pyconv.max_pool2d(x, 1, dilation=dilation), x)
        elif op == "max_pool2d_grad":
            np.testing.assert_array_equal(pyconv.max_pool2d_grad(x, x, 1, dilation=dilation), x)
        else:
            assert pyconv.pool_output_shape(shape, 1, dilation=dilation) == shape
    except ValueError as exc:  # acceptable too, if it names the function and the argument
        assert f"{op}:" in str(exc) and "dilation" in str(exc), str(exc)


def test_fuzz_in_subprocess(tmp_path):
    """A short fuzz loop over every family in a child process: a segfault,
    abort or hang fails this test (naming the case) instead of killing pytest."""
    n = max(10, EXAMPLES // 5)
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--examples", str(n)],
                          cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines or not lines[-1].get("done"):
        started = [r for r in lines if "case" in r]
        last = started[-1]["case"] if started else None
        pytest.fail(f"child exited with {proc.returncode} during {last}\nstderr:\n{proc.stderr[-6000:]}")
    assert lines[-1]["cases"] >= 5 * n


def _child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(description="pyconv's fuzz loop, as a script")
    parser.add_argument("--examples", type=int, default=EXAMPLES)
    opts = parser.parse_args(argv)
    faulthandler.enable()
    warnings.simplefilter("error")  # as pytest's filterwarnings = error
    for family, strategy in FAMILIES.items():
        @settings(max_examples=opts.examples, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(case=strategy)
        def loop(case):
            # announce first: if the call crashes, the parent sees which one
            print(json.dumps({"family": family, "case": repr(case)[:4000]}), flush=True)
            run_and_count(case)

        loop()
    print(json.dumps({"done": True, "cases": sum(COUNTS.values())}), flush=True)
    print(summary(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
