"""Pooling (max, average, global) and its gradients against ``pyconv.reference``,
PyTorch and hand-written oracles, on every available ISA.

The C++ kernels (csrc/pool/pool_kernels.cpp) have distinct paths that the
properties below are drawn to reach:

* NCHW: interior output pixels vectorised along the output row (full vectors
  and a masked tail), from a per-thread copy of the plane split into column
  phases when the column stride is > 1; border pixels one at a time with
  clipped windows;
* NCHW forward at stride 1 with output rows as wide as the input's: the
  plane as one flat run, border columns redone in scalar (FLAT_CASES);
* NHWC: vectorised across channels (lane tails when C is not a multiple of
  the vector width), one output pixel at a time;
* max pooling with and without indices (two template instantiations);
* global pools (window = whole plane, no padding): separate reduction loops;
* backward: NCHW reruns the forward for the winners, NHWC per channel block.

Max pooling is exact: values (bit patterns, NaN payloads and signed zeros
included) and indices must equal the reference's, and so must the max
gradient, whose additions happen in the same (output) order.  Averages are
compared within float tolerance.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from typing import Any, Optional, Tuple

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import pyconv
import pyconv.reference as ref
from pyconv.autograd import max_pool2d_vjp
from conftest import DTYPES, LAYOUTS, subprocess_env

# Fewer examples than the profile's default (each example runs on one ISA,
# and the file runs once per ISA); scaled so that the "thorough" profile
# still explores more.
_BASE_EXAMPLES = settings().max_examples
_props = settings(max_examples=max(10, _BASE_EXAMPLES // 4))

# Channel counts around the lane widths (4, 8, 16) of the NHWC path.
LANE_TAILS = [1, 3, 4, 5, 7, 8, 9, 15, 16, 17]

# Tolerances of the average pools (the reference is computed in float64).
AVG_TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


# ==========================================================================
# helpers


def _pair(v: Any) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def in_shape(layout: str, n: Optional[int], c: int, h: int, w: int) -> Tuple[int, ...]:
    shape = (c, h, w) if layout == "NCHW" else (h, w, c)
    return shape if n is None else (n,) + shape


def to_nchw4(a: np.ndarray, layout: str) -> np.ndarray:
    """Batched NCHW view of an input- or output-shaped array."""
    if a.ndim == 3:
        a = a[None]
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


def from_nchw4(a: np.ndarray, layout: str, batched: bool) -> np.ndarray:
    if layout == "NHWC":
        a = a.transpose(0, 2, 3, 1)
    a = np.ascontiguousarray(a)
    return a if batched else a[0]


def bits(a: np.ndarray) -> np.ndarray:
    """The bit patterns of a float array (to compare NaN payloads and -0.0)."""
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bitwise(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    if not np.array_equal(bits(actual), bits(expected)):
        bad = np.argwhere(bits(actual) != bits(expected))
        first = tuple(bad[0])
        raise AssertionError(f"{len(bad)} elements differ bitwise; first at {first}: "
                             f"{actual[first]!r} vs {expected[first]!r}")


def assert_avg_close(actual: np.ndarray, expected64: np.ndarray, dtype: Any) -> None:
    assert actual.dtype == np.dtype(dtype), (actual.dtype, dtype)
    assert actual.shape == expected64.shape, (actual.shape, expected64.shape)
    tol = AVG_TOL[np.dtype(dtype)]
    scale = float(np.max(np.abs(expected64))) if expected64.size else 0.0
    np.testing.assert_allclose(actual.astype(np.float64), expected64, rtol=tol, atol=tol * max(1.0, scale))


def explicit_pads(padding: Any, hw: Tuple[int, int], k: Tuple[int, int], stride: Tuple[int, int],
                  dilation: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) of any padding form, written from DESIGN.md."""
    if isinstance(padding, str):
        if padding.lower() == "valid":
            return (0, 0, 0, 0)
        out = []
        for size, kk, s, d in zip(hw, k, stride, dilation):
            o = -(-size // s)
            total = max((o - 1) * s + (kk - 1) * d + 1 - size, 0)
            out += [total // 2, total - total // 2]
        return tuple(out)
    if isinstance(padding, int):
        return (padding,) * 4
    if isinstance(padding[0], (tuple, list)):
        (t, b), (l, r) = padding
        return (t, b, l, r)
    return (padding[0], padding[0], padding[1], padding[1])


def naive_max_pool(x4: np.ndarray, k, s, d, pads, oh: int, ow: int):
    """Loop-by-loop max pooling of a batched NCHW float array: the first
    maximum in row-major window order wins, a NaN beats any number (the first
    NaN stays), padded cells never take part.  Returns (values, flat indices)."""
    (kh, kw), (sh, sw), (dh, dw) = k, s, d
    t, _, l, _ = pads
    n, c, h, w = x4.shape
    y = np.empty((n, c, oh, ow), x4.dtype)
    idx = np.empty((n, c, oh, ow), np.int64)
    for b in range(n):
        for ch in range(c):
            for i in range(oh):
                for j in range(ow):
                    best, where = None, -1
                    for a in range(kh):
                        for e in range(kw):
                            r, q = i * sh - t + a * dh, j * sw - l + e * dw
                            if not (0 <= r < h and 0 <= q < w):
                                continue
                            v = x4[b, ch, r, q]
                            if best is None or (not np.isnan(best) and (np.isnan(v) or v > best)):
                                best, where = v, r * w + q
                    assert where >= 0, "a window without input cells"
                    y[b, ch, i, j], idx[b, ch, i, j] = best, where
    return y, idx


def naive_avg_pool(x4: np.ndarray, k, s, pads, oh: int, ow: int, count_include_pad: bool):
    """Loop-by-loop average pooling (float64), PyTorch's divisor rule: with
    count_include_pad the window clipped to the padded input, else the number
    of real cells."""
    (kh, kw), (sh, sw) = k, s
    t, b_, l, r_ = pads
    n, c, h, w = x4.shape
    y = np.empty((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            r0, q0 = i * sh - t, j * sw - l
            rows = [r for r in range(r0, r0 + kh) if 0 <= r < h]
            cols = [q for q in range(q0, q0 + kw) if 0 <= q < w]
            if count_include_pad:
                div = (min(r0 + kh, h + b_) - r0) * (min(q0 + kw, w + r_) - q0)
            else:
                div = len(rows) * len(cols)
            y[:, :, i, j] = x4[:, :, rows][:, :, :, cols].astype(np.float64).sum(axis=(2, 3)) / div
    return y


def gather_winners(x: np.ndarray, idx: np.ndarray, layout: str) -> np.ndarray:
    """x's values at the flat (H*W) positions idx, in the output's layout."""
    x4, i4 = to_nchw4(x, layout), to_nchw4(idx, layout)
    n, c = x4.shape[:2]
    flat = x4.reshape(n, c, -1)
    got = np.take_along_axis(flat, i4.reshape(n, c, -1), axis=2).reshape(i4.shape)
    return from_nchw4(got, layout, x.ndim == 4)


# ==========================================================================
# hypothesis: every argument form against the reference


@st.composite
def int_or_pair(draw, lo: int, hi: int):
    a, b = draw(st.integers(lo, hi)), draw(st.integers(lo, hi))
    return a if a == b and draw(st.booleans()) else (a, b)


def _fill(rng: np.random.Generator, shape, kind: str, dtype) -> np.ndarray:
    if kind == "normal":
        x = rng.standard_normal(shape)
    elif kind == "ties":  # few distinct values: ties everywhere, both zeros
        x = rng.choice(np.array([-2.0, -1.0, -0.0, 0.0, 1.0, 2.0]), size=shape)
    else:  # "special": NaN and +/-inf sprinkled over ties
        x = rng.choice(np.array([-1.0, -0.0, 0.0, 1.0]), size=shape)
        u = rng.random(shape)
        x[u < 0.08] = np.nan
        x[(u >= 0.08) & (u < 0.16)] = np.inf
        x[(u >= 0.16) & (u < 0.30)] = -np.inf
    return np.asarray(x, dtype=dtype)


@st.composite
def pool_problems(draw, op: str, kinds=("normal", "ties")):
    """(x, kwargs, layout) of a max_pool2d ("max") or avg_pool2d ("avg") call."""
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.one_of(st.none(), st.integers(1, 3)))
    c = draw(st.one_of(st.sampled_from(LANE_TAILS), st.integers(1, 20)))
    h, w = draw(st.integers(1, 20)), draw(st.integers(1, 20))
    kernel = draw(int_or_pair(1, 5))
    kh, kw = _pair(kernel)
    stride = draw(st.one_of(st.none(), int_or_pair(1, 3)))
    kind = draw(st.sampled_from(["int", "pair", "pairs", "same", "valid"]))
    if kind == "int":
        padding = draw(st.integers(0, min(kh, kw) // 2))
    elif kind == "pair":
        padding = (draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2)))
    elif kind == "pairs":
        padding = ((draw(st.integers(0, kh // 2)), draw(st.integers(0, kh // 2))),
                   (draw(st.integers(0, kw // 2)), draw(st.integers(0, kw // 2))))
    else:
        padding = draw(st.sampled_from([kind, kind.upper()]))
    kwargs = dict(kernel_size=kernel, stride=stride, padding=padding, layout=layout)
    if op == "max":
        kwargs["dilation"] = draw(int_or_pair(1, 2))
    if not isinstance(padding, str):
        kwargs["ceil_mode"] = draw(st.booleans())
    if op == "avg":
        kwargs["count_include_pad"] = draw(st.sampled_from([None, True, False]))
    shape = in_shape(layout, n, c, h, w)
    shape_kwargs = {k: v for k, v in kwargs.items() if k != "count_include_pad"}
    try:
        pyconv.pool_output_shape(shape, **shape_kwargs)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = _fill(rng, shape, draw(st.sampled_from(kinds)), dtype)
    return x, kwargs


@_props
@given(problem=pool_problems("max", kinds=("normal", "ties", "special")))
def test_max_pool2d_matches_reference(isa, problem):
    x, kwargs = problem
    layout = kwargs["layout"]
    y, idx = pyconv.max_pool2d(x, return_indices=True, **kwargs)
    ry, ridx = ref.max_pool2d(x, return_indices=True, **kwargs)
    shape_kwargs = dict(kwargs)
    assert y.shape == pyconv.pool_output_shape(x.shape, **shape_kwargs)
    assert y.dtype == x.dtype and idx.dtype == np.int64
    assert y.flags.c_contiguous and idx.flags.c_contiguous
    assert_bitwise(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    # indices are flat positions of real cells that hold the value
    h, w = (x.shape[-2:] if layout == "NCHW" else x.shape[-3:-1])
    assert idx.min() >= 0 and idx.max() < h * w
    assert_bitwise(gather_winners(x, idx, layout), y)
    # the index-free kernel is a separate instantiation
    assert_bitwise(pyconv.max_pool2d(x, **kwargs), ry)


@_props
@given(problem=pool_problems("max", kinds=("normal", "ties", "special")), gdtype=st.sampled_from(DTYPES))
def test_max_pool2d_grad_matches_reference(isa, problem, gdtype):
    x, kwargs = problem
    y = pyconv.max_pool2d(x, **kwargs)
    g = np.random.default_rng(y.size).standard_normal(y.shape).astype(gdtype)
    gx = pyconv.max_pool2d_grad(g, x, **kwargs)
    rgx = ref.max_pool2d_grad(g, x, **kwargs)
    expected_dtype = np.result_type(x.dtype, g.dtype)
    assert gx.shape == x.shape and gx.dtype == expected_dtype
    assert_bitwise(gx, rgx)
    # every output's gradient lands somewhere: the total is conserved
    np.testing.assert_allclose(gx.sum(dtype=np.float64), g.sum(dtype=np.float64), rtol=1e-4, atol=1e-4 * g.size)
    if np.isfinite(x).all():
        # max pooling is locally linear: <y, g> == <x, grad_x>
        lhs = float(np.sum(y.astype(np.float64) * g))
        rhs = float(np.sum(x.astype(np.float64) * gx.astype(np.float64)))
        assert lhs == pytest.approx(rhs, rel=1e-4, abs=1e-4 * max(1.0, float(np.abs(g).sum())))


@_props
@given(problem=pool_problems("avg"))
def test_avg_pool2d_matches_reference(isa, problem):
    x, kwargs = problem
    y = pyconv.avg_pool2d(x, **kwargs)
    shape_kwargs = {k: v for k, v in kwargs.items() if k != "count_include_pad"}
    assert y.shape == pyconv.pool_output_shape(x.shape, **shape_kwargs)
    assert y.flags.c_contiguous
    r = ref.avg_pool2d(x.astype(np.float64), **kwargs)
    assert_avg_close(y, r, x.dtype)
    # values lie between the min and the max of the input (padding counts as 0)
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    assert y.min() >= lo - 1e-5 and y.max() <= hi + 1e-5


@_props
@given(problem=pool_problems("avg"))
def test_avg_pool2d_grad_matches_reference(isa, problem):
    x, kwargs = problem
    dtype = x.dtype
    y = pyconv.avg_pool2d(x, **kwargs)
    g = np.random.default_rng(y.size).standard_normal(y.shape).astype(dtype)
    gx = pyconv.avg_pool2d_grad(g, x.shape, **kwargs)
    assert gx.shape == x.shape and gx.dtype == dtype and gx.flags.c_contiguous
    r = ref.avg_pool2d_grad(g.astype(np.float64), x.shape, **kwargs)
    assert_avg_close(gx, r, dtype)
    # the adjoint identity <avg(x), g> == <x, avg_grad(g)>, independent of the reference
    lhs = float(np.sum(y.astype(np.float64) * g))
    rhs = float(np.sum(x.astype(np.float64) * gx.astype(np.float64)))
    tol = 1e-4 if dtype == np.float32 else 1e-10
    assert lhs == pytest.approx(rhs, rel=tol, abs=tol * max(1.0, float(np.abs(x).sum())))


# ==========================================================================
# NaN and infinities


NAN_CASES = [
    # kernel, stride, padding, dilation, ceil_mode
    (3, 1, 1, 1, False),
    (2, 2, 0, 1, True),
    (3, 2, 1, 1, True),
    ((3, 2), (1, 2), (1, 1), (2, 1), False),
    (5, 1, 2, 1, False),
    (2, 1, ((1, 0), (0, 1)), 2, False),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", NAN_CASES, ids=[f"case{i}" for i in range(len(NAN_CASES))])
def test_max_pool2d_nan_inf_against_loops(isa, rng, case, dtype, layout):
    """Against a loop-by-loop oracle (independent of pyconv.reference): NaN
    outputs exactly where a window holds a NaN, the first NaN's index, and the
    max gradient at that cell."""
    k, s, p, d, ceil = case
    n, c, h, w = 2, 9, 11, 13
    x4 = rng.choice(np.array([-1.0, 0.0, 1.0, 2.0]), size=(n, c, h, w))
    u = rng.random(x4.shape)
    x4[u < 0.07] = np.nan
    x4[(u >= 0.07) & (u < 0.15)] = np.inf
    x4[(u >= 0.15) & (u < 0.30)] = -np.inf
    x4 = x4.astype(dtype)
    x = from_nchw4(x4, layout, True)
    kwargs = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil, layout=layout)
    y, idx = pyconv.max_pool2d(x, return_indices=True, **kwargs)
    y4, i4 = to_nchw4(y, layout), to_nchw4(idx, layout)
    oh, ow = y4.shape[2:]
    pads = explicit_pads(p, (h, w), _pair(k), _pair(s), _pair(d))
    ny, ni = naive_max_pool(x4, _pair(k), _pair(s), _pair(d), pads, oh, ow)
    assert np.isnan(y4).any() and np.isinf(y4).any()  # the case exercises both
    np.testing.assert_array_equal(np.isnan(y4), np.isnan(ny))
    np.testing.assert_array_equal(y4, ny)  # NaN == NaN here
    np.testing.assert_array_equal(i4, ni)
    # a NaN output points at a NaN cell
    flat = x4.reshape(n, c, -1)
    picked = np.take_along_axis(flat, i4.reshape(n, c, -1), axis=2).reshape(i4.shape)
    assert np.isnan(picked[np.isnan(y4)]).all()
    # the gradient goes to exactly those cells
    g = np.arange(1, y.size + 1, dtype=dtype).reshape(y.shape)
    gx4 = to_nchw4(pyconv.max_pool2d_grad(g, x, **kwargs), layout)
    expected = np.zeros((n * c, h * w), dtype)
    np.add.at(expected, (np.repeat(np.arange(n * c), oh * ow), ni.reshape(-1)), to_nchw4(g, layout).reshape(-1))
    np.testing.assert_array_equal(gx4, expected.reshape(n, c, h, w))


# Stride 1 with output rows as wide as the input's (the NCHW forward's flat
# planes: border columns redone in scalar, pad rows above and below, 3- and
# 5-tap loops unrolled, others generic): (h, w), kernel, padding, dilation.
FLAT_CASES = [
    ((28, 28), 3, "same", 1),
    ((14, 14), 3, 1, 1),
    ((7, 7), 3, 1, 1),
    ((9, 9), 5, 2, 1),
    ((11, 13), (3, 5), "same", 1),
    ((6, 20), 2, ((1, 0), (0, 1)), 1),
    ((8, 12), 4, ((1, 2), (2, 1)), 1),
    ((10, 16), 3, ((0, 0), (1, 1)), 1),    # fewer output rows than input rows
    ((10, 16), (4, 3), ((2, 2), (1, 1)), 1),  # more: pad rows past both ends
    ((9, 17), 3, "same", 2),               # dilated, both axes
    ((33, 40), 7, 3, 1),
    ((1, 37), (1, 3), ((0, 0), (1, 1)), 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", ["normal", "ties", "nonfinite"])
@pytest.mark.parametrize("case", FLAT_CASES, ids=[f"flat{i}" for i in range(len(FLAT_CASES))])
def test_stride1_full_width_rows(isa, rng, case, fill, dtype):
    (h, w), k, p, d = case
    shape = (2, 3, h, w)
    if fill == "normal":
        x = rng.standard_normal(shape)
    else:
        x = rng.choice(np.array([-1.0, 0.0, 1.0, 2.0]), size=shape)
    if fill == "nonfinite":  # NaN in some planes only: the max's fallback per plane
        u = rng.random(shape)
        x[(u < 0.05) & (np.arange(3)[:, None, None] != 1)] = np.nan
        x[(u >= 0.05) & (u < 0.1)] = np.inf
        x[(u >= 0.1) & (u < 0.15)] = -np.inf
    x = x.astype(dtype)
    kwargs = dict(kernel_size=k, stride=1, padding=p, dilation=d)
    y = pyconv.max_pool2d(x, **kwargs)
    assert y.shape[3] == w
    np.testing.assert_array_equal(y, ref.max_pool2d(x, **kwargs))
    if d == 1:
        for cip in (True, False):
            ya = pyconv.avg_pool2d(x, k, 1, p, count_include_pad=cip)
            with np.errstate(invalid="ignore"):  # inf - inf
                r = ref.avg_pool2d(x.astype(np.float64), k, 1, p, count_include_pad=cip)
            assert_avg_close(ya, r, dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_all_minus_inf_picks_a_real_cell(isa, dtype, layout):
    """An all -inf input with padding: -inf out, and each index is the first
    real cell of its window (padding never wins, even against -inf)."""
    h, w, k, s, p = 7, 10, 3, 2, 1
    x = np.full(in_shape(layout, 2, 5, h, w), -np.inf, dtype)
    y, idx = pyconv.max_pool2d(x, k, s, p, ceil_mode=True, layout=layout, return_indices=True)
    assert np.all(y == -np.inf)
    i4 = to_nchw4(idx, layout)
    oh, ow = i4.shape[2:]
    expected = np.array([[max(i * s - p, 0) * w + max(j * s - p, 0) for j in range(ow)] for i in range(oh)])
    np.testing.assert_array_equal(i4, np.broadcast_to(expected, i4.shape))
    # the gradient of every window lands on a real cell
    gx = pyconv.max_pool2d_grad(np.ones_like(y), x, k, s, p, ceil_mode=True, layout=layout)
    assert gx.sum() == y.size


def winner_planes(rng, shape, fill, dtype):
    """NCHW planes whose max-pooling winners are hard: "ties" (small
    integers), "minus_inf" (stretches where a padded cell could win, one
    plane all -inf), "nan" (NaN winners), or "normal"."""
    x = rng.standard_normal(shape).astype(dtype)
    w = shape[-1]
    if fill == "ties":
        x = rng.integers(0, 3, shape).astype(dtype)
    elif fill == "minus_inf":
        x[:, :, ::3, : w // 2 + 1] = -np.inf
        x[0, 1] = -np.inf
    elif fill == "nan":
        x[:, :, 1::4, 2::5] = np.nan
    return x


# (kernel, padding, h, w): the NCHW max gradient at stride 2 with windows up
# to 3x3 is written row by row from column-phase buffers
# (plane_max_grad_s2): every kernel shape, pads 0/1 and "same" (asymmetric),
# odd and even sizes, a one-pixel plane, rows wider than two vectors.
S2_GRAD_CASES = [
    (3, 1, 112, 112), (3, 1, 13, 17), (3, 0, 9, 8), (2, 1, 10, 11), (2, 0, 6, 9), ((3, 2), (1, 0), 7, 7),
    ((1, 3), (0, 1), 9, 12), (1, 0, 9, 9), (3, "same", 40, 70), (3, "same", 41, 33), (3, 1, 1, 1),
    ((2, 3), 1, 5, 37),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", ["normal", "ties", "minus_inf", "nan"])
@pytest.mark.parametrize("case", S2_GRAD_CASES, ids=lambda c: "_".join(map(str, c)))
def test_max_pool2d_grad_stride2_rows(isa, rng, case, fill, dtype):
    """Bitwise equal to the reference's scatter in output order: gradients
    summed where windows share a winner (ties: small integers), -inf
    stretches where a padded column could win (the exact rule takes
    over), NaN winners."""
    k, padding, h, w = case
    x = winner_planes(rng, (2, 3, h, w), fill, dtype)
    kwargs = dict(kernel_size=k, stride=2, padding=padding)
    y = pyconv.max_pool2d(x, **kwargs)
    g = rng.standard_normal(y.shape).astype(dtype)
    assert_bitwise(pyconv.max_pool2d_grad(g, x, **kwargs), ref.max_pool2d_grad(g, x, **kwargs))


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_grad_stride2_large(isa, rng, dtype):
    """A gradient of 8 MiB with rows of whole cache lines, many planes per
    thread: still bitwise the reference."""
    c = 8 if dtype == np.float32 else 4
    x = rng.standard_normal((4, c, 256, 256)).astype(dtype)
    x[:, :, 5::7, 3::11] = np.nan
    y = pyconv.max_pool2d(x, 3, 2, 1)
    g = rng.standard_normal(y.shape).astype(dtype)
    assert_bitwise(pyconv.max_pool2d_grad(g, x, 3, 2, 1), ref.max_pool2d_grad(g, x, 3, 2, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_grad_stride2_streamed(isa, rng, dtype):
    """A gradient of 64 MiB: written around the caches (non-temporal stores
    on AVX-512), from x and from max_pool2d_vjp's winner keys; each image's
    planes are independent, so it must equal the gradients of its images
    computed one at a time (below the streaming size)."""
    c = 16 if dtype == np.float32 else 8
    x = rng.standard_normal((16, c, 256, 256)).astype(dtype)
    x[:, :, 5::7, 3::11] = np.nan
    y, pullback = max_pool2d_vjp(x, 3, 2, 1)
    g = rng.standard_normal(y.shape).astype(dtype)
    per_image = np.concatenate([pyconv.max_pool2d_grad(g[i:i + 1], x[i:i + 1], 3, 2, 1) for i in range(16)])
    assert_bitwise(pyconv.max_pool2d_grad(g, x, 3, 2, 1), per_image)
    assert_bitwise(pullback(g), per_image)


# (kernel, stride, padding, dilation, ceil_mode, h, w): max_pool2d_vjp's
# forward records each window's winner in one byte and its pullback reads
# those instead of x, on every kernel path: 2x2 tiling (whole vectors, odd
# sizes with a last row and column in no window, rows ending in a partial
# vector), the stride-2 windows up to 3x3 (pads 0/1, "same", ceil_mode),
# the separable rows (stride 1 and 2), the padded plane (stride 3,
# dilation), the largest window keys hold (16) and one beyond (the pullback
# recomputes from x).
KEY_CASES = [
    (2, 2, 0, 1, False, 8, 64), (2, 2, 0, 1, False, 9, 35), (2, 2, 0, 1, False, 5, 67), (2, 2, 0, 1, False, 3, 2),
    (3, 2, 1, 1, False, 112, 112), (3, 2, 0, 1, True, 13, 17), ((2, 3), 2, (1, 0), 1, False, 7, 7),
    (3, 2, "same", 1, False, 41, 33), (3, 1, 1, 1, False, 10, 10), (5, 2, 2, 1, False, 20, 21),
    (3, 3, 0, 2, False, 15, 14), ((2, 3), (1, 2), (1, 0), 1, True, 7, 9), ((3, 2), 2, 1, (1, 2), False, 33, 33),
    (16, 4, 0, 1, False, 17, 16), (17, 1, 0, 1, False, 18, 17), (1, 1, 0, 1, False, 4, 40),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", ["normal", "ties", "minus_inf", "nan"])
@pytest.mark.parametrize("case", KEY_CASES, ids=lambda c: "_".join(map(str, c)))
def test_max_pool2d_vjp_winner_keys(isa, rng, case, fill, dtype, layout):
    """The forward is max_pool2d's and the pullback bitwise the reference's
    scatter in output order (ties: the first maximum; -inf stretches where a
    padded cell could win; NaN winners)."""
    k, s, p, d, ceil_mode, h, w = case
    x = winner_planes(rng, (2, 3, h, w), fill, dtype)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    kwargs = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil_mode, layout=layout)
    y, pullback = max_pool2d_vjp(x, **kwargs)
    assert_bitwise(y, pyconv.max_pool2d(x, **kwargs))
    g = rng.standard_normal(y.shape).astype(dtype)
    assert_bitwise(pullback(g), ref.max_pool2d_grad(g, x, **kwargs))
    # a float64 gradient of a float32 pooling: computed in float64
    if dtype == np.float32:
        g64 = g.astype(np.float64) / 3
        assert_bitwise(pullback(g64), ref.max_pool2d_grad(g64, x, **kwargs).astype(np.float32))


def test_max_pool2d_vjp_keeps_keys_not_x(isa, rng):
    """The pullback holds the winners' keys, not x (one byte per output
    instead of x's cells); beyond 16x16 windows it keeps x."""
    import gc
    import weakref

    for k, held in ((3, False), (17, True)):
        x = rng.standard_normal((1, 2, 20, 20)).astype(np.float32)
        expected = pyconv.max_pool2d_grad(np.ones((1, 2) + pyconv.pool_output_shape(x.shape, k)[2:]), x, k)
        _, pullback = max_pool2d_vjp(x, k)
        alive = weakref.ref(x)
        del x
        gc.collect()
        assert (alive() is not None) == held
        np.testing.assert_array_equal(pullback(np.ones(expected.shape[:2] + pyconv.pool_output_shape(
            expected.shape, k)[2:])), expected.astype(np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("fill", ["normal", "ties", "nonfinite"])
@pytest.mark.parametrize("case", [(3, 1, "same"), (3, 2, 1), (2, 2, 0), ((2, 3), (1, 2), (1, 0))],
                         ids=lambda c: "_".join(map(str, c)))
def test_nhwc_channel_blocks(isa, rng, case, fill, dtype):
    """NHWC forward pools 4 channel vectors per pixel step, then one vector
    at a time: 70 channels are whole blocks and a partial rest on every ISA
    and dtype.  Values, indices, winner keys (through the vjp), the max
    gradient (2x2/2: written window by window, from keys or from x) and
    averages against the reference."""
    k, s, p = case
    x = rng.standard_normal((2, 9, 11, 70)).astype(dtype)  # (odd: 2x2 leaves a row and a column out)
    if fill == "ties":
        x = rng.integers(0, 3, x.shape).astype(dtype)
    elif fill == "nonfinite":
        x[:, ::3, 1::4, ::5] = np.nan
        x[:, 1::3, ::4, 2::5] = -np.inf
    kwargs = dict(kernel_size=k, stride=s, padding=p, layout="NHWC")
    y, idx = pyconv.max_pool2d(x, return_indices=True, **kwargs)
    y_ref, idx_ref = ref.max_pool2d(x, return_indices=True, **kwargs)
    assert_bitwise(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    yk, pullback = max_pool2d_vjp(x, **kwargs)
    assert_bitwise(yk, y_ref)
    g = rng.standard_normal(y.shape).astype(dtype)
    expected = ref.max_pool2d_grad(g, x, **kwargs)
    assert_bitwise(pullback(g), expected)
    assert_bitwise(pyconv.max_pool2d_grad(g, x, **kwargs), expected)
    for cip in (None, True, False):
        assert_avg_close(pyconv.avg_pool2d(x, count_include_pad=cip, **kwargs),
                         ref.avg_pool2d(x.astype(np.float64), count_include_pad=cip, **kwargs), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_max_pool2d_nan_wins_and_first_nan_stays(isa, layout):
    """Hand-made: a NaN beats +inf; of two NaNs (different payloads) the first
    in row-major window order is returned, bit for bit."""
    nan_a = np.array(0x7FC00001, np.uint32).view(np.float32)
    nan_b = np.array(0xFFC00002, np.uint32).view(np.float32)
    plane = np.array([[1.0, np.inf, 0.0, 0.0],
                      [0.0, 0.0, 3.0, 0.0],
                      [5.0, 0.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 4.0]], np.float32)
    plane[1, 1] = nan_a   # window (0, 0): inf at (0, 1), then NaN at (1, 1)
    plane[2, 3] = nan_b   # window (1, 1): NaN at (2, 3) ...
    plane[3, 2] = nan_a   # ... before the second NaN at (3, 2)
    x = np.stack([plane] * 3)  # (C, H, W)
    if layout == "NHWC":
        x = np.ascontiguousarray(x.transpose(1, 2, 0))
    y, idx = pyconv.max_pool2d(x, 2, return_indices=True, layout=layout)
    y4, i4 = to_nchw4(y, layout)[0, 0], to_nchw4(idx, layout)[0, 0]
    np.testing.assert_array_equal(i4, [[5, 6], [8, 11]])
    assert bits(y4[0, 0]) == bits(nan_a)
    assert y4[0, 1] == 3.0 and y4[1, 0] == 5.0
    assert bits(y4[1, 1]) == bits(nan_b)


# ==========================================================================
# PyTorch as a second oracle (random data without ties)

# shape (N, C, H, W), kernel, stride, padding, dilation, ceil_mode
TORCH_MAX = [
    ((2, 3, 9, 11), 3, 2, 1, 1, False),
    ((2, 3, 9, 11), 3, 2, 1, 1, True),
    ((2, 2, 8, 8), 2, None, 0, 1, True),
    ((1, 4, 10, 7), (2, 3), (2, 1), (1, 1), (2, 1), True),
    ((1, 3, 13, 13), 3, 3, 1, 2, True),
    ((2, 5, 17, 16), (3, 2), (3, 2), (1, 0), 1, True),
    ((1, 2, 5, 5), 4, 3, 2, 1, True),
    ((1, 9, 40, 37), 3, 2, 1, 1, False),
    ((1, 17, 12, 12), 5, 1, 2, 2, False),
    ((1, 2, 5, 6), 2, 7, 1, 1, True),  # stride beyond the input
]

# shape, kernel, stride, padding, ceil_mode, count_include_pad
TORCH_AVG = [
    ((2, 3, 9, 11), 3, 2, 1, False, True),
    ((2, 3, 9, 11), 3, 2, 1, True, True),
    ((2, 3, 9, 11), 3, 2, 1, True, False),
    ((2, 3, 9, 11), 3, 2, 1, False, False),
    ((1, 4, 10, 7), (2, 3), (2, 1), (1, 1), True, True),
    ((1, 5, 13, 13), 5, 3, 2, True, True),
    ((1, 5, 13, 13), 5, 3, 2, True, False),
    ((2, 2, 8, 8), 2, None, 0, True, True),
    ((1, 9, 40, 37), 3, 2, 1, False, True),
    ((1, 2, 5, 6), 4, 3, 2, True, True),
]


def _torch_setup():
    torch = pytest.importorskip("torch")
    return torch, torch.nn.functional


def _layout_in(x4: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(x4.transpose(0, 2, 3, 1)) if layout == "NHWC" else x4


def _layout_out(a: np.ndarray, layout: str) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if layout == "NHWC" else a


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", TORCH_MAX, ids=[f"max{i}" for i in range(len(TORCH_MAX))])
def test_max_pool2d_matches_torch(isa, rng, case, dtype, layout):
    torch, F = _torch_setup()
    shape, k, s, p, d, ceil = case
    x4 = rng.standard_normal(shape).astype(dtype)
    g4 = rng.standard_normal(pyconv.pool_output_shape(shape, k, s, p, d, ceil_mode=ceil)).astype(dtype)
    tx = torch.from_numpy(x4.copy()).requires_grad_(True)
    ty, ti = F.max_pool2d(tx, k, s if s is not None else k, p, d, ceil_mode=ceil, return_indices=True)
    ty.backward(torch.from_numpy(g4))
    kw = dict(kernel_size=k, stride=s, padding=p, dilation=d, ceil_mode=ceil, layout=layout)
    y, idx = pyconv.max_pool2d(_layout_in(x4, layout), return_indices=True, **kw)
    np.testing.assert_array_equal(_layout_out(y, layout), ty.detach().numpy())
    np.testing.assert_array_equal(_layout_out(idx, layout), ti.numpy())
    gx = pyconv.max_pool2d_grad(_layout_in(g4, layout), _layout_in(x4, layout), **kw)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(_layout_out(gx, layout), tx.grad.numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", TORCH_AVG, ids=[f"avg{i}" for i in range(len(TORCH_AVG))])
def test_avg_pool2d_matches_torch(isa, rng, case, dtype, layout):
    torch, F = _torch_setup()
    shape, k, s, p, ceil, cip = case
    x4 = rng.standard_normal(shape)
    g4 = rng.standard_normal(pyconv.pool_output_shape(shape, k, s, p, ceil_mode=ceil))
    # torch in float64 on the same (rounded) values: the oracle
    tx = torch.from_numpy(x4.astype(dtype).astype(np.float64)).requires_grad_(True)
    ty = F.avg_pool2d(tx, k, s if s is not None else k, p, ceil_mode=ceil, count_include_pad=cip)
    tg = torch.from_numpy(g4.astype(dtype).astype(np.float64))
    ty.backward(tg)
    kw = dict(kernel_size=k, stride=s, padding=p, ceil_mode=ceil, count_include_pad=cip, layout=layout)
    y = pyconv.avg_pool2d(_layout_in(x4.astype(dtype), layout), **kw)
    assert_avg_close(np.ascontiguousarray(_layout_out(y, layout)), ty.detach().numpy(), dtype)
    gx = pyconv.avg_pool2d_grad(_layout_in(g4.astype(dtype), layout), _layout_in(x4, layout).shape, **kw)
    assert_avg_close(np.ascontiguousarray(_layout_out(gx, layout)), tx.grad.numpy(), dtype)


def test_pool_accepts_torch_tensors(isa, rng):
    torch, F = _torch_setup()
    x = torch.from_numpy(rng.standard_normal((2, 3, 8, 9)).astype(np.float32))
    y = pyconv.max_pool2d(x, 3, 2, 1)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32
    np.testing.assert_array_equal(y, F.max_pool2d(x, 3, 2, 1).numpy())
    assert_avg_close(pyconv.avg_pool2d(x, 2), F.avg_pool2d(x.double(), 2).numpy(), np.float32)


def test_pool_output_shape_agrees_with_torch():
    """Every small geometry: pyconv's output shape is torch's, or both refuse
    (pyconv additionally refuses windows that hold padding only)."""
    torch, F = _torch_setup()
    checked = 0
    for size, k, s, d, ceil in itertools.product(range(1, 10), range(1, 5), range(1, 4), (1, 2), (False, True)):
        for p in range(k // 2 + 1):
            try:
                ours = pyconv.pool_output_shape((1, 1, size, size + 1), k, s, p, d, ceil_mode=ceil)
            except ValueError:
                ours = None
            try:
                theirs = tuple(F.max_pool2d(torch.zeros(1, 1, size, size + 1), k, s, p, d, ceil_mode=ceil).shape)
            except RuntimeError:
                theirs = None
            if ours is None:
                continue  # torch may still give a shape (its windows of padding hold -inf)
            assert ours == theirs, (size, k, s, p, d, ceil)
            checked += 1
    assert checked > 500


# ==========================================================================
# textbook cases


TEXTBOOK = np.array([[0, 1, 0.5, 10], [2, 2.5, 1, -8], [4, 0, 5, 6], [15, 1, 2, 3]])


@pytest.mark.parametrize("layout", LAYOUTS)
def test_textbook_2x2(isa, layout):
    x = TEXTBOOK[None] if layout == "NCHW" else TEXTBOOK[:, :, None]
    y, idx = pyconv.max_pool2d(x, 2, 2, layout=layout, return_indices=True)
    a = pyconv.avg_pool2d(x, 2, 2, layout=layout)
    sq = (lambda v: v[0]) if layout == "NCHW" else (lambda v: v[:, :, 0])
    np.testing.assert_array_equal(sq(y), [[2.5, 10], [15, 6]])
    np.testing.assert_array_equal(sq(idx), [[5, 3], [12, 11]])
    np.testing.assert_array_equal(sq(a), [[1.375, 0.875], [5, 4]])
    gx = pyconv.max_pool2d_grad(np.ones_like(y), x, 2, layout=layout)
    np.testing.assert_array_equal(sq(gx), [[0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 0, 1], [1, 0, 0, 0]])
    ga = pyconv.avg_pool2d_grad(np.ones_like(a), x.shape, 2, layout=layout)
    np.testing.assert_array_equal(ga, np.full(x.shape, 0.25))


@pytest.mark.parametrize("padding", ["same", "valid", "SAME"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_hwc_4x4x5(isa, rng, padding, dtype):
    x = rng.standard_normal((4, 4, 5)).astype(dtype)
    blocks = x.reshape(2, 2, 2, 2, 5)  # (oh, i, ow, j, c)
    y = pyconv.max_pool2d(x, 2, 2, padding=padding, layout="NHWC")
    assert y.shape == (2, 2, 5) and y.dtype == dtype
    np.testing.assert_array_equal(y, blocks.max(axis=(1, 3)))
    a = pyconv.avg_pool2d(x, 2, 2, padding=padding, layout="NHWC")
    assert a.shape == (2, 2, 5)
    assert_avg_close(a, blocks.astype(np.float64).mean(axis=(1, 3)), dtype)
    assert pyconv.pool_output_shape(x.shape, 2, 2, padding, layout="NHWC") == (2, 2, 5)


def test_same_padding_count_include_pad_default(isa):
    """'same' averages like TensorFlow (padding not counted) by default;
    numeric padding like PyTorch (counted)."""
    x = np.ones((1, 1, 5, 5))
    np.testing.assert_array_equal(pyconv.avg_pool2d(x, 3, 1, "same"), np.ones((1, 1, 5, 5)))
    y = pyconv.avg_pool2d(x, 3, 1, "same", count_include_pad=True)
    assert y[0, 0, 0, 0] == pytest.approx(4 / 9) and y[0, 0, 0, 2] == pytest.approx(6 / 9)
    assert y[0, 0, 2, 2] == 1.0
    np.testing.assert_array_equal(pyconv.avg_pool2d(x, 3, 1, 1), y)
    np.testing.assert_array_equal(pyconv.avg_pool2d(x, 3, 1, 1, count_include_pad=False), np.ones((1, 1, 5, 5)))
    # the gradients follow the same divisors
    gs = pyconv.avg_pool2d_grad(np.ones((1, 1, 5, 5)), x.shape, 3, 1, "same")
    assert gs[0, 0, 0, 0] == pytest.approx(1 / 4 + 2 / 6 + 1 / 9)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("cip", [True, False])
def test_avg_pool2d_against_loops(isa, rng, layout, cip):
    """Ceil-mode windows that run past the padded input, against a loop oracle."""
    x4 = rng.standard_normal((2, 3, 8, 9))
    for k, s, p in [(3, 2, 1), (4, 3, 2), (2, 3, 0), ((3, 2), (2, 3), (1, 1))]:
        kk, ss = _pair(k), _pair(s)
        y = pyconv.avg_pool2d(_layout_in(x4, layout), k, s, p, ceil_mode=True, count_include_pad=cip, layout=layout)
        y4 = _layout_out(y, layout)
        expected = naive_avg_pool(x4, kk, ss, explicit_pads(p, (8, 9), kk, ss, (1, 1)), *y4.shape[2:], cip)
        np.testing.assert_allclose(y4, expected, rtol=1e-12, atol=1e-12)


# ==========================================================================
# numerical gradients


GRAD_CASES = [
    # op, kwargs
    ("max", dict(kernel_size=3, stride=2, padding=1)),
    ("max", dict(kernel_size=2, stride=1, dilation=2)),
    ("max", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
    ("max", dict(kernel_size=(2, 3), stride=(1, 2), padding="same")),
    ("avg", dict(kernel_size=3, stride=2, padding=1)),
    ("avg", dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    ("avg", dict(kernel_size=2, stride=1, padding=((1, 0), (0, 1)), ceil_mode=True)),
    ("avg", dict(kernel_size=3, stride=2, padding="same")),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op, kwargs", GRAD_CASES, ids=[f"{op}{i}" for i, (op, _) in enumerate(GRAD_CASES)])
def test_grad_by_central_differences(isa, rng, op, kwargs, layout):
    x = rng.standard_normal(in_shape(layout, 1, 2, 5, 6))
    fwd = pyconv.max_pool2d if op == "max" else pyconv.avg_pool2d
    g = rng.standard_normal(fwd(x, layout=layout, **kwargs).shape)
    if op == "max":
        gx = pyconv.max_pool2d_grad(g, x, layout=layout, **kwargs)
    else:
        gx = pyconv.avg_pool2d_grad(g, x.shape, layout=layout, **kwargs)
    eps = 1e-6
    num = np.empty_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += eps
        xm[i] -= eps
        up, down = fwd(xp, layout=layout, **kwargs), fwd(xm, layout=layout, **kwargs)
        num[i] = (np.sum(up * g) - np.sum(down * g)) / (2 * eps)
    np.testing.assert_allclose(gx, num, rtol=1e-6, atol=1e-6)
    assert np.abs(gx).max() > 0.1


# ==========================================================================
# determinism


DET_CASES = [
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=2, stride=1, ceil_mode=True),
    dict(kernel_size=3, stride=1, padding="same"),
    dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 1), ceil_mode=True),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_bitwise_identical_for_any_thread_count(isa, rng, layout, dtype):
    x = rng.standard_normal(in_shape(layout, 4, 16, 33, 35)).astype(dtype)
    x[rng.random(x.shape) < 0.3] = 0.5  # ties, so the winner order matters
    results = {}
    for threads in (1, 2, 2):
        out = []
        with pyconv.num_threads(threads):
            for kw in DET_CASES:
                y, idx = pyconv.max_pool2d(x, return_indices=True, layout=layout, **kw)
                g = np.cos(np.arange(y.size, dtype=dtype)).reshape(y.shape)
                out += [y, idx, pyconv.max_pool2d_grad(g, x, layout=layout, **kw)]
                out += [pyconv.avg_pool2d(x, layout=layout, **kw),
                        pyconv.avg_pool2d_grad(g, x.shape, layout=layout, **kw)]
            out += [pyconv.global_avg_pool2d(x, layout=layout), pyconv.global_max_pool2d(x, layout=layout)]
        results.setdefault(threads, []).append(out)
    base = results[1][0]
    for other in (results[2][0], results[2][1]):
        for a, b in zip(base, other):
            if a.dtype.kind == "f":
                assert_bitwise(a, b)
            else:
                np.testing.assert_array_equal(a, b)


# ==========================================================================
# global pools


# Plane sizes on both sides of every branch of the NCHW kernel: blocks of up
# to 64 tiny planes (<= 16 values; 210 and 134 planes leave partial blocks),
# then per plane: whole vectors, pairs, one more, a masked tail.
# (NHWC reads the last axis as channels: 300 and 256 are whole units of 8
# vectors of channels and the one-vector rest, on every ISA and dtype.)
GLOBAL_SHAPES = [(2, 3, 7, 7), (1, 4, 1, 1), (2, 5, 64, 64), (3, 6, 5), (2, 17, 3, 11),
                 (3, 70, 4, 4), (2, 67, 2, 3), (2, 9, 6, 8), (2, 5, 9, 9), (1, 3, 17, 1), (2, 4, 5, 13),
                 (2, 3, 5, 300), (1, 2, 2, 256)]


def _global_expected_shape(shape, layout, keepdims):
    if len(shape) == 4:
        if layout == "NCHW":
            n, c = shape[:2]
            return (n, c, 1, 1) if keepdims else (n, c)
        n, c = shape[0], shape[3]
        return (n, 1, 1, c) if keepdims else (n, c)
    c = shape[0] if layout == "NCHW" else shape[2]
    if not keepdims:
        return (c,)
    return (c, 1, 1) if layout == "NCHW" else (1, 1, c)


@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GLOBAL_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_global_pools(isa, rng, shape, dtype, layout, keepdims):
    x = rng.standard_normal(shape).astype(dtype)
    axes = (-2, -1) if layout == "NCHW" else (-3, -2)
    expected_shape = _global_expected_shape(shape, layout, keepdims)
    ga = pyconv.global_avg_pool2d(x, layout=layout, keepdims=keepdims)
    gm = pyconv.global_max_pool2d(x, layout=layout, keepdims=keepdims)
    assert ga.shape == gm.shape == expected_shape
    assert ga.dtype == gm.dtype == dtype
    assert_avg_close(ga, x.astype(np.float64).mean(axis=axes, keepdims=keepdims), dtype)
    assert_bitwise(gm, x.max(axis=axes, keepdims=keepdims))
    assert_bitwise(gm, ref.global_max_pool2d(x, layout=layout, keepdims=keepdims))
    # the same as a windowed max pool over the whole plane with indices (a
    # different kernel path; stride 1: see test_whole_plane_window_with_indices)
    hw = x.shape[-2:] if layout == "NCHW" else x.shape[-3:-1]
    y, idx = pyconv.max_pool2d(x, hw, 1, layout=layout, return_indices=True)
    assert_bitwise(y.reshape(gm.shape), gm)
    assert_bitwise(gather_winners(x, idx, layout), y)


# A child process: max_pool2d(return_indices=True) and max_pool2d_grad with a
# window as large as the NCHW plane (no padding, column stride >= 3) on every
# ISA, one JSON line per call.  In a child because the bug it checks corrupts
# the heap ("free(): invalid next size").
_WHOLE_PLANE_SCRIPT = r'''
import json
import numpy as np
import pyconv
import pyconv.reference as ref
rng = np.random.default_rng(7)
for isa in pyconv.config()["isa_available"]:
    pyconv.set_max_isa(isa)
    for shape, k, s in [((2, 3, 7, 7), 7, None), ((1, 1, 3, 5), (3, 5), None), ((2, 3, 7, 7), 7, (1, 3)),
                        ((1, 2, 4, 4), 4, 4), ((3, 5, 6, 9), (6, 9), (2, 5))]:
        x = rng.standard_normal(shape)
        y, i = pyconv.max_pool2d(x, k, s, return_indices=True)
        ry, ri = ref.max_pool2d(x, k, s, return_indices=True)
        g = rng.standard_normal(y.shape)
        gx = pyconv.max_pool2d_grad(g, x, k, s)
        rgx = ref.max_pool2d_grad(g, x, k, s)
        ok = bool(np.array_equal(y, ry) and np.array_equal(i, ri) and np.array_equal(gx, rgx))
        print(json.dumps({"isa": isa, "shape": shape, "k": k, "s": s, "ok": ok}), flush=True)
print(json.dumps({"done": True}), flush=True)
'''


# Regression: a window covering the whole plane took the global-pool
# geometry, which sized no scratch for the indexed/gradient plane loops.
def test_whole_plane_window_with_indices(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _WHOLE_PLANE_SCRIPT], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120, check=False)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines and lines[-1].get("done"), f"child exited with {proc.returncode}: {proc.stderr[-2000:]}"
    assert proc.returncode == 0, proc.stderr[-2000:]
    bad = [r for r in lines[:-1] if not r["ok"]]
    assert not bad, bad


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hw", [(1, 1), (4, 4), (7, 7), (3, 11), (64, 64), (5, 13)])
def test_global_max_pool_nan_and_inf(isa, rng, layout, dtype, hw):
    n, c = 2, 11
    x4 = rng.standard_normal((n, c) + hw).astype(dtype)
    plane = x4.reshape(n, c, -1)
    size = plane.shape[2]
    nan_planes = [(0, 1), (0, 4), (1, 10), (1, 0)]
    for j, (b, ch) in enumerate(nan_planes):  # NaN at the start, the end and in between
        plane[b, ch, [0, size - 1, size // 2, (size * 2) // 3][j]] = np.nan
    plane[0, 2, size - 1] = np.inf
    plane[1, 3] = -np.inf
    x = _layout_in(x4, layout)
    gm = pyconv.global_max_pool2d(x, layout=layout)
    expected = plane.max(axis=2)  # numpy propagates NaN
    np.testing.assert_array_equal(gm, expected)
    assert np.isnan(gm).sum() == len(nan_planes)
    assert gm[0, 2] == np.inf and gm[1, 3] == -np.inf
    ga = pyconv.global_avg_pool2d(x, layout=layout)
    np.testing.assert_array_equal(np.isnan(ga), np.isnan(expected))


# ==========================================================================
# bad calls


X4 = np.ones((1, 2, 6, 6), np.float32)
G3 = np.ones((1, 2, 3, 3), np.float32)

BAD = [
    # (id, callable, exception, regex)
    ("kernel0", lambda: pyconv.max_pool2d(X4, 0), ValueError, r"max_pool2d: kernel_size must be >= 1"),
    ("kernel0_avg", lambda: pyconv.avg_pool2d(X4, (2, 0)), ValueError, r"avg_pool2d: kernel_size must be >= 1"),
    ("kernel_float", lambda: pyconv.max_pool2d(X4, 2.0), TypeError, r"max_pool2d: kernel_size"),
    ("kernel_triple", lambda: pyconv.max_pool2d(X4, (2, 2, 2)), ValueError, r"max_pool2d: kernel_size"),
    ("stride0", lambda: pyconv.max_pool2d(X4, 2, 0), ValueError, r"max_pool2d: stride must be >= 1"),
    ("stride0_avg", lambda: pyconv.avg_pool2d(X4, 2, (1, 0)), ValueError, r"avg_pool2d: stride must be >= 1"),
    ("dilation0", lambda: pyconv.max_pool2d(X4, 2, dilation=0), ValueError, r"max_pool2d: dilation must be >= 1"),
    ("pad_negative", lambda: pyconv.max_pool2d(X4, 2, padding=-1), ValueError, r"max_pool2d: padding must be >= 0"),
    ("pad_negative_avg", lambda: pyconv.avg_pool2d(X4, 3, padding=((0, 0), (-1, 0))), ValueError,
     r"avg_pool2d: padding must be >= 0"),
    ("pad_over_half", lambda: pyconv.max_pool2d(X4, 3, padding=2), ValueError,
     r"max_pool2d: top padding 2 is more than half the window 3"),
    ("pad_over_half_right", lambda: pyconv.avg_pool2d(X4, (3, 2), padding=((1, 1), (0, 2))), ValueError,
     r"avg_pool2d: right padding 2 is more than half the window 2"),
    ("pad_over_half_shape", lambda: pyconv.pool_output_shape((1, 1, 8, 8), 2, padding=(0, 2)), ValueError,
     r"pool_output_shape: left padding 2 is more than half"),
    ("pad_over_half_grad", lambda: pyconv.max_pool2d_grad(G3, X4, 4, padding=3), ValueError,
     r"max_pool2d_grad: .*padding 3 is more than half"),
    ("pad_string", lambda: pyconv.max_pool2d(X4, 2, padding="full"), ValueError, r"max_pool2d: padding must be"),
    ("ceil_same", lambda: pyconv.max_pool2d(X4, 2, padding="same", ceil_mode=True), ValueError,
     r"max_pool2d: ceil_mode=True needs numeric padding"),
    ("ceil_valid_avg", lambda: pyconv.avg_pool2d(X4, 2, padding="valid", ceil_mode=True), ValueError,
     r"avg_pool2d: ceil_mode=True needs numeric padding"),
    ("ceil_same_shape", lambda: pyconv.pool_output_shape(X4.shape, 2, padding="same", ceil_mode=True), ValueError,
     r"pool_output_shape: ceil_mode"),
    ("ndim2", lambda: pyconv.max_pool2d(np.ones((6, 6)), 2), ValueError, r"max_pool2d: input must be 4-D"),
    ("ndim5", lambda: pyconv.avg_pool2d(np.ones((1, 1, 1, 6, 6)), 2), ValueError, r"avg_pool2d: input must be 4-D"),
    ("ndim2_global", lambda: pyconv.global_avg_pool2d(np.ones((6, 6))), ValueError,
     r"global_avg_pool2d: input must be 4-D"),
    ("ndim5_global", lambda: pyconv.global_max_pool2d(np.ones((1, 1, 1, 6, 6))), ValueError,
     r"global_max_pool2d: input must be 4-D"),
    ("ndim2_shape", lambda: pyconv.pool_output_shape((6, 6), 2), ValueError, r"pool_output_shape: input must be"),
    ("layout_bad", lambda: pyconv.max_pool2d(X4, 2, layout="NCWH"), ValueError,
     r"max_pool2d: layout must be 'NCHW' or 'NHWC', got 'NCWH'"),
    ("layout_type", lambda: pyconv.avg_pool2d(X4, 2, layout=1), TypeError, r"avg_pool2d: layout"),
    ("layout_global", lambda: pyconv.global_avg_pool2d(X4, layout="HWC"), ValueError, r"global_avg_pool2d: layout"),
    ("layout_grad", lambda: pyconv.avg_pool2d_grad(G3, X4.shape, 2, layout="nchw_"), ValueError,
     r"avg_pool2d_grad: layout"),
    ("ceil_int", lambda: pyconv.max_pool2d(X4, 2, ceil_mode=1), TypeError, r"max_pool2d: ceil_mode must be a bool"),
    ("ceil_str_avg", lambda: pyconv.avg_pool2d(X4, 2, ceil_mode="yes"), TypeError,
     r"avg_pool2d: ceil_mode must be a bool"),
    ("return_indices_int", lambda: pyconv.max_pool2d(X4, 2, return_indices=1), TypeError,
     r"max_pool2d: return_indices must be a bool"),
    ("cip_int", lambda: pyconv.avg_pool2d(X4, 2, count_include_pad=0), TypeError,
     r"avg_pool2d: count_include_pad must be None or a bool"),
    ("cip_grad", lambda: pyconv.avg_pool2d_grad(G3, X4.shape, 2, count_include_pad="no"), TypeError,
     r"avg_pool2d_grad: count_include_pad"),
    ("keepdims_int", lambda: pyconv.global_max_pool2d(X4, keepdims=1), TypeError,
     r"global_max_pool2d: keepdims must be a bool"),
    ("complex", lambda: pyconv.max_pool2d(X4.astype(np.complex64), 2), TypeError, r"max_pool2d: x has complex"),
    ("complex_avg", lambda: pyconv.avg_pool2d(X4.astype(complex), 2), TypeError, r"avg_pool2d: x has complex"),
    ("complex_global", lambda: pyconv.global_avg_pool2d(X4.astype(complex)), TypeError,
     r"global_avg_pool2d: x has complex"),
    ("complex_grad", lambda: pyconv.max_pool2d_grad(G3.astype(complex), X4, 2), TypeError,
     r"max_pool2d_grad: grad_out has complex"),
    ("object", lambda: pyconv.max_pool2d(np.array([[[1, None]]], dtype=object), 1), TypeError,
     r"max_pool2d: x has object"),
    ("grad_shape_max", lambda: pyconv.max_pool2d_grad(np.ones((1, 2, 2, 2)), X4, 2), ValueError,
     r"max_pool2d_grad: grad_out has shape \(1, 2, 2, 2\) but the pooling's output has shape \(1, 2, 3, 3\)"),
    ("grad_shape_avg", lambda: pyconv.avg_pool2d_grad(np.ones((1, 2, 3, 4)), X4.shape, 2), ValueError,
     r"avg_pool2d_grad: grad_out has shape \(1, 2, 3, 4\)"),
    ("grad_ndim_avg", lambda: pyconv.avg_pool2d_grad(np.ones((2, 3, 3)), X4.shape, 2), ValueError,
     r"avg_pool2d_grad: grad_out has shape"),
    ("grad_layout_mismatch", lambda: pyconv.max_pool2d_grad(np.ones((1, 3, 3, 2)), X4, 2), ValueError,
     r"max_pool2d_grad: grad_out has shape"),
    ("dilated_padding_only", lambda: pyconv.max_pool2d(np.ones((1, 1, 2, 2)), 2, 1, 1, 3), ValueError,
     r"max_pool2d: the row window of output 0 covers padding only"),
    ("dilated_padding_only_w", lambda: pyconv.max_pool2d(np.ones((1, 1, 5, 1)), 2, 1, 1, 2), ValueError,
     r"max_pool2d: the column window of output 0 covers padding only"),
    ("dilated_padding_only_shape", lambda: pyconv.pool_output_shape((1, 1, 2, 2), 2, 1, 1, 3), ValueError,
     r"pool_output_shape: the row window .* covers padding only"),
    ("window_too_big", lambda: pyconv.max_pool2d(X4, 7), ValueError, r"max_pool2d: output would be empty"),
    ("window_too_big_avg", lambda: pyconv.avg_pool2d(X4, (2, 9), padding=(0, 1)), ValueError,
     r"avg_pool2d: output would be empty"),
    ("empty_plane", lambda: pyconv.max_pool2d(np.ones((1, 1, 0, 4)), 1), ValueError,
     r"max_pool2d: input must have at least one"),
    ("empty_plane_global", lambda: pyconv.global_avg_pool2d(np.ones((1, 0, 4, 4)), layout="NHWC"), ValueError,
     r"global_avg_pool2d: .*at least one"),
    ("x_none", lambda: pyconv.max_pool2d(None, 2), TypeError, r"max_pool2d: x must be an array"),
    ("grad_input_shape_str", lambda: pyconv.avg_pool2d_grad(G3, "abc", 2), TypeError,
     r"avg_pool2d_grad: input shape"),
]


@pytest.mark.parametrize("fn, exc, pattern", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_calls(fn, exc, pattern):
    with pytest.raises(exc, match=pattern):
        fn()


@pytest.mark.parametrize("name", ["max_pool2d", "avg_pool2d"])
def test_reference_refuses_the_same_calls(name):
    for args, kwargs in [((X4, 0), {}), ((X4, 3), dict(padding=2)), ((X4, 2), dict(padding="same", ceil_mode=True)),
                         ((X4, 2), dict(layout="HWCN"))]:
        with pytest.raises(ValueError, match=f"reference.{name}"):
            getattr(ref, name)(*args, **kwargs)
        with pytest.raises(ValueError, match=f"^{name}"):
            getattr(pyconv, name)(*args, **kwargs)


# ==========================================================================
# dtypes, views, empty batches


@pytest.mark.parametrize("in_dtype, out_dtype", [
    (np.float32, np.float32), (np.float64, np.float64), (np.float16, np.float32),
    (np.int32, np.float64), (np.int64, np.float64), (np.uint8, np.float64), (np.bool_, np.float64),
])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtype_rule(isa, rng, in_dtype, out_dtype, layout):
    x = (rng.integers(0, 2 if in_dtype is np.bool_ else 50, size=in_shape(layout, 2, 3, 7, 8))).astype(in_dtype)
    xf = x.astype(out_dtype)
    y, idx = pyconv.max_pool2d(x, 3, 2, 1, layout=layout, return_indices=True)
    assert y.dtype == out_dtype and idx.dtype == np.int64
    ry, ridx = pyconv.max_pool2d(xf, 3, 2, 1, layout=layout, return_indices=True)
    assert_bitwise(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    a = pyconv.avg_pool2d(x, 3, 2, 1, layout=layout)
    assert a.dtype == out_dtype
    assert_bitwise(a, pyconv.avg_pool2d(xf, 3, 2, 1, layout=layout))
    for fn in (pyconv.global_avg_pool2d, pyconv.global_max_pool2d):
        assert fn(x, layout=layout).dtype == out_dtype
    g = np.ones(y.shape, in_dtype)
    assert pyconv.max_pool2d_grad(g, x, 3, 2, 1, layout=layout).dtype == out_dtype
    assert pyconv.avg_pool2d_grad(g, x.shape, 3, 2, 1, layout=layout).dtype == out_dtype
    # the reference follows the same rule
    assert ref.max_pool2d(x, 3, 2, 1, layout=layout).dtype == out_dtype


def test_grad_dtype_mixes():
    x32 = np.ones((1, 4, 4), np.float32)
    g64 = np.ones((1, 2, 2), np.float64)
    assert pyconv.max_pool2d_grad(g64, x32, 2).dtype == np.float64
    assert pyconv.max_pool2d_grad(g64.astype(np.float32), x32, 2).dtype == np.float32
    assert pyconv.max_pool2d_grad(g64.astype(np.float32), x32.astype(np.int32), 2).dtype == np.float32
    assert pyconv.avg_pool2d_grad(g64.astype(np.float16), (1, 4, 4), 2).dtype == np.float32
    assert pyconv.avg_pool2d_grad(g64.astype(np.int8), (1, 4, 4), 2).dtype == np.float64


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_contiguous_inputs(isa, rng, layout, dtype):
    base = rng.standard_normal((3, 9, 14, 12)).astype(dtype)
    views = [
        base[:, :, ::2, 1:],                 # strided slice
        base.transpose(0, 1, 3, 2),          # transposed plane
        base[::2, ::-1],                     # negative stride
        base.transpose(0, 2, 3, 1)[:, 1:],   # an NCHW buffer seen as NHWC
    ]
    for v in views:
        assert not v.flags.c_contiguous
        c = np.ascontiguousarray(v)
        for kw in (dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2, ceil_mode=True, stride=(1, 2))):
            y, i = pyconv.max_pool2d(v, return_indices=True, layout=layout, **kw)
            cy, ci = pyconv.max_pool2d(c, return_indices=True, layout=layout, **kw)
            assert_bitwise(y, cy)
            np.testing.assert_array_equal(i, ci)
            assert_bitwise(pyconv.avg_pool2d(v, layout=layout, **kw), pyconv.avg_pool2d(c, layout=layout, **kw))
            g = rng.standard_normal(y.shape[::-1]).astype(dtype).T  # a non-contiguous grad_out
            assert_bitwise(pyconv.max_pool2d_grad(g, v, layout=layout, **kw),
                           pyconv.max_pool2d_grad(np.ascontiguousarray(g), c, layout=layout, **kw))
            assert_bitwise(pyconv.avg_pool2d_grad(g, v.shape, layout=layout, **kw),
                           pyconv.avg_pool2d_grad(np.ascontiguousarray(g), c.shape, layout=layout, **kw))
        assert_bitwise(pyconv.global_max_pool2d(v, layout=layout), pyconv.global_max_pool2d(c, layout=layout))
        assert_bitwise(pyconv.global_avg_pool2d(v, layout=layout), pyconv.global_avg_pool2d(c, layout=layout))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_input_is_not_modified(isa, rng, layout):
    x = rng.standard_normal(in_shape(layout, 2, 5, 9, 9))
    x[0, 0, 0, 0] = np.nan
    keep = x.copy()
    g = np.ones(pyconv.pool_output_shape(x.shape, 3, 2, 1, layout=layout))
    pyconv.max_pool2d(x, 3, 2, 1, layout=layout, return_indices=True)
    pyconv.avg_pool2d(x, 3, 2, 1, layout=layout)
    pyconv.max_pool2d_grad(g, x, 3, 2, 1, layout=layout)
    pyconv.global_max_pool2d(x, layout=layout)
    assert_bitwise(x, keep)
    assert (g == 1).all()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(isa, layout, dtype):
    x = np.ones(in_shape(layout, 0, 3, 8, 7), dtype)
    expected = in_shape(layout, 0, 3, 4, 4)
    y, idx = pyconv.max_pool2d(x, 3, 2, 1, layout=layout, return_indices=True)
    assert y.shape == idx.shape == expected and y.dtype == dtype and idx.dtype == np.int64
    a = pyconv.avg_pool2d(x, 3, 2, 1, layout=layout)
    assert a.shape == expected and a.dtype == dtype
    assert pyconv.pool_output_shape(x.shape, 3, 2, 1, layout=layout) == expected
    gx = pyconv.max_pool2d_grad(np.ones(expected, dtype), x, 3, 2, 1, layout=layout)
    assert gx.shape == x.shape and gx.dtype == dtype
    ga = pyconv.avg_pool2d_grad(np.ones(expected, dtype), x.shape, 3, 2, 1, layout=layout)
    assert ga.shape == x.shape and ga.dtype == dtype
    assert pyconv.global_avg_pool2d(x, layout=layout).shape == (0, 3)
    keep = pyconv.global_max_pool2d(x, layout=layout, keepdims=True)
    assert keep.shape == _global_expected_shape(x.shape, layout, True)
    with pytest.raises(ValueError, match="max_pool2d_grad: grad_out has shape"):
        pyconv.max_pool2d_grad(np.ones((1,) + expected[1:], dtype), x, 3, 2, 1, layout=layout)


def test_stride_defaults_to_kernel(isa, rng):
    x = rng.standard_normal((2, 3, 11, 10))
    for k in (2, 3, (2, 3)):
        assert_bitwise(pyconv.max_pool2d(x, k), pyconv.max_pool2d(x, k, k))
        assert_bitwise(pyconv.avg_pool2d(x, k, None, 1 if k != 2 else 0),
                       pyconv.avg_pool2d(x, k, k, 1 if k != 2 else 0))
    assert pyconv.pool_output_shape(x.shape, 3) == (2, 3, 3, 3)


# ==========================================================================
# wide rows (the NCHW vector tiles) and big strides, against the reference


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", [16, 17, 31, 33, 64, 65, 100])
@pytest.mark.parametrize("stride", [1, 2, 3, 9])
def test_wide_rows_match_reference(isa, rng, dtype, w, stride):
    x = rng.standard_normal((1, 2, 5, w)).astype(dtype)
    x[rng.random(x.shape) < 0.2] = 0.25
    for k, p in ((3, 1), (2, 0), (5, 2)):
        kw = dict(kernel_size=k, stride=(1, stride), padding=p)
        y, i = pyconv.max_pool2d(x, return_indices=True, **kw)
        ry, ri = ref.max_pool2d(x, return_indices=True, **kw)
        assert_bitwise(y, ry)
        np.testing.assert_array_equal(i, ri)
        g = rng.standard_normal(y.shape).astype(dtype)
        assert_bitwise(pyconv.max_pool2d_grad(g, x, **kw), ref.max_pool2d_grad(g, x, **kw))
        assert_avg_close(pyconv.avg_pool2d(x, **kw), ref.avg_pool2d(x.astype(np.float64), **kw), dtype)
        assert_avg_close(pyconv.avg_pool2d_grad(g, x.shape, **kw),
                         ref.avg_pool2d_grad(g.astype(np.float64), x.shape, **kw), dtype)


# ==========================================================================
# pool_output_shape


SHAPE_CASES = [
    # input shape, args, kwargs, expected
    ((8, 64, 112, 112), (3,), dict(stride=2, padding=1), (8, 64, 56, 56)),
    ((4, 4, 5), (2,), dict(padding="same", layout="NHWC"), (2, 2, 5)),
    ((1, 3, 7, 7), (2,), dict(), (1, 3, 3, 3)),
    ((1, 3, 7, 7), (2,), dict(ceil_mode=True), (1, 3, 4, 4)),
    ((1, 3, 6, 6), (3, 2), dict(padding=1, ceil_mode=True), (1, 3, 4, 4)),
    ((1, 3, 5, 5), (2, 2), dict(padding=1, ceil_mode=True), (1, 3, 3, 3)),  # a 4th window would start in padding
    ((1, 3, 5, 5), (4, 3), dict(padding=2, ceil_mode=True), (1, 3, 3, 3)),
    ((2, 10, 12, 3), ((3, 2),), dict(stride=(2, 3), padding="same", layout="NHWC"), (2, 5, 4, 3)),
    ((2, 10, 12, 3), ((3, 2),), dict(stride=(2, 3), padding="valid", layout="NHWC"), (2, 4, 4, 3)),
    ((1, 1, 9, 9), (3,), dict(stride=1, dilation=2), (1, 1, 5, 5)),
    ((1, 1, 9, 9), (3,), dict(stride=2, padding=((1, 0), (0, 1)), dilation=(2, 1)), (1, 1, 3, 4)),
    ((2, 5, 6), (2,), dict(stride=100), (2, 1, 1)),
    ((2, 5, 6), (2,), dict(stride=100, ceil_mode=True, padding=1), (2, 1, 1)),
]


@pytest.mark.parametrize("shape, args, kwargs, expected", SHAPE_CASES)
def test_pool_output_shape_matches_results(isa, rng, shape, args, kwargs, expected):
    assert pyconv.pool_output_shape(shape, *args, **kwargs) == expected
    assert ref.pool_output_shape(shape, *args, **kwargs) == expected
    assert pyconv.pool_output_shape(list(shape), *args, **kwargs) == expected
    if np.prod(shape) > 10**5:
        return
    x = rng.standard_normal(shape)
    y, idx = pyconv.max_pool2d(x, *args, return_indices=True, **kwargs)
    assert y.shape == idx.shape == expected
    ry, ridx = ref.max_pool2d(x, *args, return_indices=True, **kwargs)
    assert_bitwise(y, ry)
    np.testing.assert_array_equal(idx, ridx)
    akw = {k: v for k, v in kwargs.items() if k != "dilation"}
    if akw == kwargs:
        a = pyconv.avg_pool2d(x, *args, **kwargs)
        assert a.shape == expected
        assert_avg_close(a, ref.avg_pool2d(x, *args, **kwargs), np.float64)


# ==========================================================================
# wide NCHW planes: the values-only fast paths (2x2/2 with plain max
# instructions, the separable row-then-column pass at column stride 1-2)
# and their exact fallback on planes holding a NaN


WIDE_VALUE_CASES = [
    dict(kernel_size=2, stride=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=5, stride=(3, 2), padding=2),
    dict(kernel_size=3, stride=1, dilation=2),
    dict(kernel_size=3, stride=(2, 2), padding=1, dilation=(1, 2)),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", [32, 33, 34, 63, 64, 65, 112])
@pytest.mark.parametrize("kind", ["normal", "ties", "special", "one_nan"])
def test_wide_planes_values_match_reference(isa, rng, dtype, w, kind):
    h = 9
    x = _fill(rng, (2, 3, h, w), "normal" if kind == "one_nan" else kind, dtype)
    if kind == "one_nan":  # a NaN in one plane only, at its last cell: the other planes stay on the fast path
        x[1, 2, h - 1, w - 1] = np.nan
        x[0, 1, 0, 0] = np.inf
    for kw in WIDE_VALUE_CASES:
        assert_bitwise(pyconv.max_pool2d(x, **kw), ref.max_pool2d(x, **kw))
        if "dilation" in kw or kind not in ("normal", "ties"):  # average pooling has no dilation
            continue
        for cip in (None, True, False):
            expected = ref.avg_pool2d(x.astype(np.float64), count_include_pad=cip, **kw)
            assert_avg_close(pyconv.avg_pool2d(x, count_include_pad=cip, **kw), expected, dtype)
