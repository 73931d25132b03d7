"""The packed-GEMM engine behind algo="im2col" and algo="pointwise", tested
as what it is: a matrix product, on every edge of its blocking.

A product A (M x K) @ B (K x N) is a 1x1 convolution:

* NHWC: C = im2col(x) (M = N*OH*OW pixels x K) @ weight (K x C_out):
  ``x = A.reshape(1, M, 1, K)``, ``w = B.reshape(1, 1, K, N)``, ``y.reshape(M, N)``;
* NCHW: C = weight (C_out x K) @ im2col(x[n]) (K x OH*OW):
  ``w = A.reshape(M, K, 1, 1)``, ``x = B.reshape(1, K, N, 1)``, ``y.reshape(M, N)``.

so both layouts, both GEMM algorithms, both dtypes, every ISA and 1 and 2
threads are checked against ``numpy.matmul`` in float64 (DESIGN.md's accuracy
rule).  The sizes are 1, small primes, huge K, and one below / at / above
every blocking constant (MR, NR, KC, MC, NC) of every ISA, in each role.

Also here: a canary check that no kernel writes outside its output, and
bitwise determinism of the GEMM algorithms across thread counts and calls.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import pytest

import pyconv
from conftest import DTYPES, LAYOUTS, assert_close, conv_inputs, reference64

GEMM_ALGOS = ("im2col", "pointwise")


# --------------------------------------------------------------------------
# blocking constants (elements) per ISA and dtype, from gemm_kernels.cpp:
#   NR = 2 vectors, KC = 16384 / (NR * sizeof), MC = (196608 / (KC * sizeof)) // MR * MR,
#   NC = (524288 / (KC * sizeof)) // NR * NR


def _blocking(mr: int, vec_bytes: int, itemsize: int) -> Dict[str, int]:
    nr = 2 * vec_bytes // itemsize
    kc = 16384 // (nr * itemsize)
    return dict(MR=mr, NR=nr, KC=kc, MC=(196608 // (kc * itemsize)) // mr * mr,
                NC=(524288 // (kc * itemsize)) // nr * nr)


BLOCKING = {
    (isa, np.dtype(dt).name): _blocking(mr, vec, np.dtype(dt).itemsize)
    for isa, mr, vec in (("generic", 4, 16), ("avx2", 6, 32), ("avx512", 12, 64))
    for dt in DTYPES
}


def test_blocking_table_is_the_documented_one():
    """The edge lists below come from this table; keep it honest."""
    expected = {
        ("avx2", "float32"): (6, 16, 256, 192, 512), ("avx2", "float64"): (6, 8, 256, 96, 256),
        ("avx512", "float32"): (12, 32, 128, 384, 1024), ("avx512", "float64"): (12, 16, 128, 192, 512),
        ("generic", "float32"): (4, 8, 512, 96, 256), ("generic", "float64"): (4, 4, 512, 48, 128),
    }
    got = {key: tuple(b[k] for k in ("MR", "NR", "KC", "MC", "NC")) for key, b in BLOCKING.items()}
    assert got == expected


def _edges(names) -> List[int]:
    sizes = {b[name] for b in BLOCKING.values() for name in names}
    return sorted({v + d for v in sizes for d in (-1, 0, 1)} - {0})


# The role of each constant: NCHW blocks M (C_out) by MR/MC and N (pixels) by
# NR/NC; NHWC blocks M (pixels) by MR/MC and N (C_out) by NR.  K is cut in KC
# blocks in both; 2*KC+-1 also crosses a second K-block boundary.
EDGES_M = _edges(("MR", "MC"))
EDGES_N = _edges(("NR", "NC"))
EDGES_K = sorted(set(_edges(("KC",))) | {2 * b["KC"] + d for b in BLOCKING.values() for d in (-1, 1)})

# The other two dimensions are small primes, one below and one above a register tile.
SMALL = dict(M=7, N=11, K=13)

GEMM_CASES: List[Tuple[int, int, int]] = []
GEMM_CASES += [(m, SMALL["N"], SMALL["K"]) for m in EDGES_M]
GEMM_CASES += [(SMALL["M"], n, SMALL["K"]) for n in EDGES_N]
GEMM_CASES += [(SMALL["M"], SMALL["N"], k) for k in EDGES_K]
GEMM_CASES += [
    # 1 in every role
    (1, 1, 1), (1, 1, 2), (1, 2, 1), (2, 1, 1), (1, 17, 1), (17, 1, 1), (1, 1, 257),
    # K = 1: a rank-1 update, no accumulation at all
    (5, 3, 1), (97, 131, 1), (193, 513, 1),
    # primes
    (2, 3, 5), (13, 29, 31), (37, 41, 43), (97, 101, 103), (101, 37, 521),
    # mixed edges: several dimensions at or across a block boundary at once
    (6, 16, 256), (12, 32, 128), (4, 8, 512), (7, 17, 257), (13, 33, 129), (5, 9, 513),
    (193, 257, 129), (97, 513, 257), (385, 65, 255), (95, 1025, 127), (383, 129, 511),
    (49, 255, 385), (191, 511, 769),
    # huge K (many K blocks, accumulation across them) with small M and N
    (1, 1, 20000), (5, 7, 5003), (13, 17, 16411), (6, 16, 12289), (4, 33, 9001),
]
GEMM_CASES = list(dict.fromkeys(GEMM_CASES))  # keep order, drop duplicates


def _gemm_id(case) -> str:
    return "M{}_N{}_K{}".format(*case)


def gemm_via_conv(a: np.ndarray, b: np.ndarray, layout: str, algo: str, *,
                  out: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                  activation: Optional[str] = None, spatial: str = "column") -> np.ndarray:
    """A @ B (+ bias per column of C for NHWC, per row for NCHW) through conv2d.

    ``spatial`` places the pixels of the GEMM in the image: "column" (H = P,
    W = 1: every pixel its own output row) or "row" (H = 1, W = P)."""
    m, k = a.shape
    n = b.shape[1]
    if layout == "NHWC":
        shape = (1, m, 1, k) if spatial == "column" else (1, 1, m, k)
        x, w = a.reshape(shape), b.reshape(1, 1, k, n)
    else:
        shape = (1, k, n, 1) if spatial == "column" else (1, k, 1, n)
        x, w = np.ascontiguousarray(b).reshape(shape), a.reshape(m, k, 1, 1)
    y = pyconv.conv2d(x, w, bias, layout=layout, algo=algo, activation=activation,
                      out=None if out is None else out.reshape(_out_shape(layout, m, n, spatial)))
    return y.reshape(m, n)


def _out_shape(layout: str, m: int, n: int, spatial: str = "column") -> Tuple[int, ...]:
    if layout == "NHWC":
        return (1, m, 1, n) if spatial == "column" else (1, 1, m, n)
    return (1, m, n, 1) if spatial == "column" else (1, m, 1, n)


def _operands(m: int, n: int, k: int, dtype: Any, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((m, k)).astype(dtype), rng.standard_normal((k, n)).astype(dtype))


def _matmul64(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", GEMM_CASES, ids=_gemm_id)
def test_gemm_matches_matmul(isa, case, layout):
    """Every (dtype, algo, threads) combination of one (M, N, K) on one ISA
    and layout; the failure message lists every combination that failed."""
    m, n, k = case
    failures = []
    for dtype in DTYPES:
        a, b = _operands(m, n, k, dtype, seed=m * 1_000_003 + n * 1009 + k)
        ref = _matmul64(a, b)
        for algo in GEMM_ALGOS:
            for threads in (1, 2):
                with pyconv.num_threads(threads):
                    c = gemm_via_conv(a, b, layout, algo)
                try:
                    assert_close(c, ref, dtype)
                except AssertionError as exc:
                    failures.append(f"{np.dtype(dtype).name} algo={algo} threads={threads}: "
                                    f"{str(exc).strip().splitlines()[-3:]}")
    assert not failures, f"{isa} {layout} M={m} N={n} K={k}:\n" + "\n".join(failures)


# Pixel placement, several images in one GEMM, and partial tiles with bias
# and activations: a smaller sweep over the same engine.
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", [(7, 17, 13), (13, 1, 257), (193, 97, 5), (37, 513, 129), (1, 385, 3)],
                         ids=_gemm_id)
def test_gemm_pixels_in_one_row(isa, case, layout, dtype):
    """The same product with all pixels on one output row (H = 1, W = P)."""
    m, n, k = case
    a, b = _operands(m, n, k, dtype, seed=sum(case))
    ref = _matmul64(a, b)
    for algo in GEMM_ALGOS:
        assert_close(gemm_via_conv(a, b, layout, algo, spatial="row"), ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("images, pixels, c_in, c_out", [
    (3, 65, 13, 7),     # NHWC: M = 195 rows cross MC=192 and image boundaries inside a block
    (2, 97, 257, 17),   # K > KC (avx2), 2 images
    (5, 1, 3, 33),      # one pixel per image
    (4, 49, 129, 50),   # every dimension off its tile
])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gemm_batched_images(isa, layout, dtype, images, pixels, c_in, c_out):
    """N images: NHWC makes them one GEMM of N*P rows, NCHW one GEMM per image."""
    rng = np.random.default_rng(images * 1000 + pixels)
    x = rng.standard_normal((images, pixels, c_in)).astype(dtype)  # (image, pixel, channel)
    w = rng.standard_normal((c_in, c_out)).astype(dtype)
    bias = rng.standard_normal(c_out).astype(dtype)
    ref = np.maximum(np.matmul(x.astype(np.float64), w.astype(np.float64)) + bias, 0)  # (image, pixel, oc)
    for algo in GEMM_ALGOS:
        for threads in (1, 2):
            with pyconv.num_threads(threads):
                if layout == "NHWC":
                    y = pyconv.conv2d(x.reshape(images, pixels, 1, c_in), w.reshape(1, 1, c_in, c_out), bias,
                                      layout="NHWC", algo=algo, activation="relu")
                    got = y.reshape(images, pixels, c_out)
                else:
                    xt = np.ascontiguousarray(x.transpose(0, 2, 1)).reshape(images, c_in, pixels, 1)
                    y = pyconv.conv2d(xt, np.ascontiguousarray(w.T).reshape(c_out, c_in, 1, 1), bias,
                                      algo=algo, activation="relu")
                    got = y.reshape(images, c_out, pixels).transpose(0, 2, 1)
            assert_close(np.ascontiguousarray(got), ref, dtype)


# ==========================================================================
# canary: nothing written outside the output


GUARD_VALUE = np.nan


def _guarded_out(shape: Tuple[int, ...], dtype: Any, guard: int) -> Tuple[np.ndarray, np.ndarray]:
    """A C-contiguous NaN-filled ``out`` of ``shape`` inside a NaN buffer with
    ``guard`` elements before and after it."""
    size = int(np.prod(shape))
    buf = np.full(size + 2 * guard, GUARD_VALUE, dtype=dtype)
    out = buf[guard:guard + size].reshape(shape)
    assert out.flags.c_contiguous and out.base is not None
    return buf, out


def _check_guards(buf: np.ndarray, guard: int, what: str) -> None:
    head, tail = buf[:guard], buf[buf.size - guard:]
    bad_head = np.flatnonzero(~np.isnan(head))
    bad_tail = np.flatnonzero(~np.isnan(tail))
    assert bad_head.size == 0 and bad_tail.size == 0, (
        f"{what}: kernel wrote outside its output: {bad_head.size} elements before it "
        f"(offsets {(bad_head - guard).tolist()[:8]}), {bad_tail.size} after it "
        f"(offsets past the end {bad_tail.tolist()[:8]})")


# (M, N, K) with partial tiles in M, N or both, K blocks with a remainder
CANARY_GEMMS = [(1, 1, 1), (7, 13, 5), (5, 17, 300), (193, 9, 257), (13, 1025, 3), (97, 33, 513),
                (11, 7, 1031), (385, 3, 129)]


@pytest.mark.parametrize("activation", [None, "relu6"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", CANARY_GEMMS, ids=_gemm_id)
def test_gemm_canary(isa, case, layout, dtype, activation):
    """out= is a view into a NaN buffer: the guards must stay NaN, and every
    element of out must be overwritten (no NaN read back from a first pass)."""
    m, n, k = case
    a, b = _operands(m, n, k, dtype, seed=7 * m + 5 * n + k)
    bias_len = n if layout == "NHWC" else m
    bias = np.random.default_rng(k).standard_normal(bias_len).astype(dtype) * 3
    lin = _matmul64(a, b) + (bias[None, :] if layout == "NHWC" else bias[:, None])
    ref = lin if activation is None else np.clip(lin, 0, 6)
    # a guard as long as the output itself catches a whole stray tile row (ldc apart)
    guard = m * n + 256
    for algo in GEMM_ALGOS:
        for threads in (1, 2):
            buf, out = _guarded_out((m, n), dtype, guard)
            with pyconv.num_threads(threads):
                got = gemm_via_conv(a, b, layout, algo, out=out, bias=bias, activation=activation)
            what = f"{isa} {layout} {np.dtype(dtype).name} algo={algo} threads={threads} M={m} N={n} K={k}"
            _check_guards(buf, guard, what)
            assert np.shares_memory(got, out), what
            assert not np.isnan(out).any(), f"{what}: {np.isnan(out).sum()} output elements left NaN"
            assert_close(out, ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algo", GEMM_ALGOS)
def test_gemm_misaligned_out(isa, algo, layout, dtype):
    """out= may be C-contiguous but not element-aligned (DESIGN asks only for
    shape, dtype, contiguity): full tiles store with unaligned vector stores,
    and the bytes around out stay untouched."""
    m, n, k = 13, 37, 300
    a, b = _operands(m, n, k, dtype, seed=11)
    bias = np.linspace(-2, 2, n if layout == "NHWC" else m).astype(dtype)
    lin = _matmul64(a, b) + (bias[None, :] if layout == "NHWC" else bias[:, None])
    nbytes = m * n * np.dtype(dtype).itemsize
    for offset in (1, 3, 4):
        raw = np.full(nbytes + 128, 0xA5, np.uint8)
        out = raw[64 + offset:64 + offset + nbytes].view(dtype).reshape(m, n)
        assert not out.flags.aligned or offset % np.dtype(dtype).itemsize == 0
        gemm_via_conv(a, b, layout, algo, out=out, bias=bias, activation="relu")
        assert_close(out, np.maximum(lin, 0), dtype)
        assert np.all(raw[:64 + offset] == 0xA5) and np.all(raw[64 + offset + nbytes:] == 0xA5)


# Real convolutions (padding, stride, dilation, groups) through out= views.
CANARY_CONVS = [
    # (n, c, h, w, oc, k, stride, padding, dilation, groups)
    (2, 3, 9, 7, 5, 3, 1, 1, 1, 1),
    (1, 8, 11, 13, 20, 3, 2, "same", 1, 2),
    (3, 6, 5, 17, 9, 2, (1, 2), ((0, 1), (2, 0)), (2, 1), 3),
    (1, 300, 4, 5, 7, 1, 1, 0, 1, 1),
    (2, 64, 6, 6, 13, 3, 1, 1, 1, 1),
    (1, 40, 7, 7, 70, 3, 1, 2, 2, 2),
    (3, 20, 7, 7, 19, 1, 1, 0, 1, 1),   # 1x1 on 7x7 images: the NCHW tail units (AVX-512)
    (4, 16, 5, 5, 10, 1, 1, 0, 1, 2),   # ... on 5x5, groups (AVX2)
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spec", CANARY_CONVS, ids=lambda s: "n{}c{}h{}w{}oc{}k{}".format(*s[:6]))
def test_conv_canary(isa, spec, layout, dtype):
    n, c, h, w, oc, k, s, p, d, g = spec
    rng = np.random.default_rng(n + c + h + w + oc)
    x, wt, b = conv_inputs(rng, n=n, c=c, h=h, w=w, oc=oc, kh=k, kw=k, groups=g, layout=layout,
                           dtype=dtype, bias=True)
    kwargs = dict(stride=s, padding=p, dilation=d, groups=g, layout=layout, activation="relu")
    ref = reference64(x, wt, b, **kwargs)
    algos = ["im2col"] + (["pointwise"] if k == 1 and g == 1 and p == 0 else [])
    snapshot = [a.copy() for a in (x, wt, b)]
    for algo in algos:
        for threads in (1, 2):
            guard = ref.size + 256
            buf, out = _guarded_out(ref.shape, dtype, guard)
            with pyconv.num_threads(threads):
                pyconv.conv2d(x, wt, b, algo=algo, out=out, **kwargs)
            what = f"{isa} {layout} {np.dtype(dtype).name} algo={algo} threads={threads} {spec}"
            _check_guards(buf, guard, what)
            assert not np.isnan(out).any(), what
            assert_close(out, ref, dtype)
    for before, after in zip(snapshot, (x, wt, b)):  # inputs are read-only to the kernel
        np.testing.assert_array_equal(after, before)


# NCHW 1x1 layers on small images whose last column panel is mostly empty
# (7x7 = 32 + 17 pixels on AVX-512, 5x5 = 16 + 9 on AVX2, 1x13 = 8 + 5 on
# the generic path) gather the remainders of all images into extra units:
# bitwise the same as one image at a time (no tails), for any thread count.
TAIL_SHAPES = [(8, 24, 7, 7, 40, 1), (5, 16, 5, 5, 20, 2), (6, 8, 1, 13, 9, 1), (3, 12, 7, 7, 33, 3)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", TAIL_SHAPES, ids=lambda s: "n{}c{}h{}w{}oc{}g{}".format(*s))
def test_pointwise_tail_units(isa, spec, dtype):
    n, c, h, w, oc, g = spec
    rng = np.random.default_rng(n * c + h * w)
    x, wt, b = conv_inputs(rng, n=n, c=c, h=h, w=w, oc=oc, kh=1, kw=1, groups=g, dtype=dtype, bias=True)
    kwargs = dict(groups=g, activation="relu6")
    for algo in ["im2col"] + (["pointwise"] if g == 1 else []):
        single = np.concatenate([pyconv.conv2d(x[i:i + 1], wt, b, algo=algo, **kwargs) for i in range(n)])
        assert_close(single, reference64(x, wt, b, **kwargs), dtype)
        for threads in (1, 2):
            with pyconv.num_threads(threads):
                np.testing.assert_array_equal(pyconv.conv2d(x, wt, b, algo=algo, **kwargs), single)


# NCHW 1x1 layers of at most 4 input channels take the thin-reduction kernel
# (pixels in the lanes, units of 4 vectors read in place): pixel counts
# around the unit (64 / 32 / 8 pixels per unit on AVX-512 f32, AVX-512 f64
# or AVX2 f32, ...), a short last unit and a short last vector, 1-5 input
# channels (5 goes to the GEMM), bias and both activations.
THIN_SHAPES = [(2, 1, 1, 1, 3), (3, 2, 5, 13, 17), (2, 3, 8, 8, 32), (1, 4, 9, 15, 40), (2, 3, 13, 10, 7),
               (1, 5, 7, 9, 11), (2, 4, 16, 16, 64), (1, 3, 1, 129, 2)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", THIN_SHAPES, ids=lambda s: "n{}c{}h{}w{}oc{}".format(*s))
def test_pointwise_thin_reduction(isa, spec, dtype):
    n, c, h, w, oc = spec
    rng = np.random.default_rng(n * c * oc + h * w)
    x, wt, b = conv_inputs(rng, n=n, c=c, h=h, w=w, oc=oc, kh=1, kw=1, dtype=dtype, bias=True)
    for activation in (None, "relu", "relu6"):
        kwargs = dict(activation=activation)
        y = pyconv.conv2d(x, wt, b, algo="pointwise", **kwargs)
        assert_close(y, reference64(x, wt, b, **kwargs), dtype)
        np.testing.assert_array_equal(pyconv.conv2d(x, wt, b, algo="im2col", **kwargs), y)
        np.testing.assert_array_equal(pyconv.conv2d(x, pyconv.prepack(wt), b, **kwargs), pyconv.conv2d(x, wt, b, **kwargs))
        with pyconv.num_threads(1):
            np.testing.assert_array_equal(pyconv.conv2d(x, wt, b, algo="pointwise", **kwargs), y)
    assert_close(pyconv.conv2d(x, wt), reference64(x, wt, None), dtype)


# ==========================================================================
# determinism of the GEMM algorithms

# (n, c, h, w, oc, k, stride, padding, dilation, groups).  Each costs at least
# a few MFLOP, so that 2 and 3 threads are really used; several split
# unevenly: few column blocks (NCHW) or row blocks (NHWC) for 3 threads, an
# odd number of images, groups.
DETERMINISM_GEMM_SHAPES = [
    (1, 64, 23, 23, 37, 3, 1, 1, 1, 1),        # K = 576: 2-5 K blocks; 529 pixels
    (2, 300, 17, 19, 70, 1, 1, 0, 1, 1),       # pointwise, K = 300
    (3, 520, 25, 25, 13, 1, 2, 0, 1, 1),       # pointwise stride 2, K > every KC, 3 images
    (1, 600, 4, 5, 200, 1, 1, 0, 1, 1),        # 20 pixels: 2 column blocks for 3 threads
    (5, 48, 15, 21, 30, 3, 2, "same", 1, 3),   # groups, stride, asymmetric padding
    (2, 7, 40, 41, 5, 5, 1, 2, 2, 1),          # M = 5 < MR, dilation
]


def _det_id(s) -> str:
    return "n{}c{}h{}w{}oc{}k{}s{}g{}".format(*s[:7], s[9])


def _flops(x_shape, w_shape, layout, **kwargs) -> int:
    return pyconv.plan(x_shape, w_shape, layout=layout, **kwargs)["flops"]


@functools.lru_cache(maxsize=None)
def _det_operands(spec, layout, dtype_name):
    n, c, h, w, oc, k, s, p, d, g = spec
    rng = np.random.default_rng(sum(repr(spec).encode()))
    x, wt, b = conv_inputs(rng, n=n, c=c, h=h, w=w, oc=oc, kh=k, kw=k, groups=g, layout=layout,
                           dtype=np.dtype(dtype_name), bias=True)
    return x, wt, b


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algo, spec", [(a, s) for s in DETERMINISM_GEMM_SHAPES for a in GEMM_ALGOS
                                         if a == "im2col" or (s[5] == 1 and s[9] == 1 and s[7] == 0)],
                         ids=lambda v: v if isinstance(v, str) else _det_id(v))
def test_gemm_bitwise_deterministic(isa, algo, spec, layout, dtype):
    n, c, h, w, oc, k, s, p, d, g = spec
    x, wt, b = _det_operands(spec, layout, np.dtype(dtype).name)
    kwargs = dict(stride=s, padding=p, dilation=d, groups=g, layout=layout, activation="relu")
    # the test is only meaningful if the problem is big enough to be split
    assert _flops(x.shape, wt.shape, layout, stride=s, padding=p, dilation=d, groups=g) >= 3 << 20  # pyconv wakes a thread per MFLOP
    results = {}
    for threads in (1, 2, 3, 1, 2):
        with pyconv.num_threads(threads):
            y = pyconv.conv2d(x, wt, b, algo=algo, **kwargs)
        if threads in results:
            assert np.array_equal(y, results[threads]), f"threads={threads}: repeated call differs"
        else:
            results[threads] = y
    for threads in (2, 3):
        diff = results[threads] != results[1]
        assert not diff.any(), (f"{isa} {layout} {algo} {spec}: threads={threads} differs from 1 thread in "
                                f"{int(diff.sum())} elements, first at {np.argwhere(diff)[0].tolist()}")
    # correct, too (a deterministic wrong answer is still wrong)
    assert_close(results[1], reference64(x, wt, b, **kwargs), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algo", GEMM_ALGOS)
def test_gemm_repeated_calls_ignore_stale_workspace(isa, rng, algo, layout):
    """The workspace is cached between calls: a call between two identical
    ones (other shape, other dtype, other ISA-independent contents) must not
    change the second one's bits."""
    big = conv_inputs(rng, n=2, c=300, h=9, w=10, oc=40, kh=1, kw=1, layout=layout, bias=True)
    small = conv_inputs(rng, n=1, c=5, h=3, w=4, oc=3, kh=1, kw=1, layout=layout, dtype=np.float64)
    other = conv_inputs(rng, n=1, c=70, h=20, w=20, oc=90, kh=1, kw=1, layout=layout)
    kwargs = dict(layout=layout, algo=algo)
    first = pyconv.conv2d(*big, **kwargs)
    pyconv.conv2d(*other, **kwargs)
    second = pyconv.conv2d(*big, **kwargs)
    pyconv.conv2d(*small, **kwargs)
    third = pyconv.conv2d(*big, **kwargs)
    assert np.array_equal(first, second) and np.array_equal(first, third)
    assert_close(first, reference64(*big, layout=layout), np.float32)


# ==========================================================================
# special values and concurrent callers


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gemm_nan_and_inf_propagate(isa, layout, dtype, activation):
    """NaN and Inf in the input reach exactly the outputs that read them, in
    full and in partial tiles, through bias and activation (NaN stays NaN, as
    np.maximum/np.minimum); zero padding never turns into NaN."""
    rng = np.random.default_rng(5)
    x, wt, b = conv_inputs(rng, n=2, c=37, h=11, w=19, oc=29, kh=3, kw=3, layout=layout, dtype=dtype,
                           bias=True)
    flat = x.reshape(-1)
    spots = rng.choice(flat.size, size=6, replace=False)
    flat[spots[:3]] = np.nan
    flat[spots[3:5]] = np.inf
    flat[spots[5]] = -np.inf
    kwargs = dict(padding=1, layout=layout, activation=activation)
    with np.errstate(invalid="ignore"):
        r = reference64(x, wt, b, **kwargs)
    assert np.isnan(r).any() and np.isfinite(r).any()
    for algo in ("im2col", "direct"):
        for threads in (1, 2):
            with pyconv.num_threads(threads):
                y = pyconv.conv2d(x, wt, b, algo=algo, **kwargs)
            what = f"{isa} {layout} {np.dtype(dtype).name} {algo} threads={threads}"
            np.testing.assert_array_equal(np.isnan(y), np.isnan(r), err_msg=what + ": NaN positions")
            np.testing.assert_array_equal(np.isposinf(y), np.isposinf(r), err_msg=what + ": +Inf positions")
            np.testing.assert_array_equal(np.isneginf(y), np.isneginf(r), err_msg=what + ": -Inf positions")
            finite = np.isfinite(r)
            rtol, atol = (1e-4, 1e-4) if dtype == np.float32 else (1e-10, 1e-10)
            np.testing.assert_allclose(y[finite], r[finite], rtol=rtol,
                                       atol=atol * max(1.0, np.abs(r[finite]).max()), err_msg=what)


def test_gemm_concurrent_calls_from_python_threads(rng):
    """The GEMM's cached workspace is per calling thread: four Python threads
    running im2col/pointwise problems of different sizes at once get the same
    bits as one thread alone."""
    problems = []
    for i in range(6):
        layout, dtype = LAYOUTS[i % 2], DTYPES[(i // 2) % 2]
        k = 1 if i % 3 == 0 else 3
        x, wt, b = conv_inputs(rng, n=1 + i % 2, c=40 + 50 * i, h=9 + i, w=11, oc=20 + 7 * i, kh=k, kw=k,
                               layout=layout, dtype=dtype, bias=True)
        kwargs = dict(layout=layout, algo="pointwise" if k == 1 else "im2col", padding=0 if k == 1 else 1)
        problems.append((x, wt, b, kwargs, pyconv.conv2d(x, wt, b, **kwargs)))
    barrier = threading.Barrier(4)

    def worker(t):
        barrier.wait()
        return sum(not np.array_equal(pyconv.conv2d(x, wt, b, **kw), expected)
                   for rep in range(12) for x, wt, b, kw, expected in [problems[(t + rep) % len(problems)]])

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(worker, range(4))) == [0, 0, 0, 0]
    for x, wt, b, kwargs, expected in problems:
        assert_close(expected, reference64(x, wt, b, **{k: v for k, v in kwargs.items() if k != "algo"}),
                     expected.dtype)
