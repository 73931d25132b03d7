"""The depthwise kernel (``algo="depthwise"``), ``depthwise_conv2d`` and
``separable_conv2d`` against ``pyconv.reference``, on every available ISA.

The kernel has two very different paths (DESIGN.md, "Algorithms"; see
csrc/depthwise/depthwise_kernels.cpp):

* NCHW: vectorised along output rows (tiles of 4 vectors, then single
  vectors with a masked tail) from a per-thread zero-padded copy of each
  input plane split into ``stride_w`` column phases;
* NHWC: vectorised across channels (lane tails when C is not a multiple of
  the vector width), output rows split into border pixels (taps clipped) and
  an interior (tiles of 6 or 8 pixels).

So the properties draw channel counts around the lane widths (4, 8, 16),
output widths around the row tiles (8, 16, 32, 64 pixels) and geometries that
move the border/interior split (padding larger than the kernel reach, a
kernel as wide as the padded input, strides that skip columns).  The error
cases live in the shared bad-call table (bad_calls.py).
"""

from __future__ import annotations

import functools
import subprocess
import sys
from typing import Any, Optional, Tuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyconv
import pyconv.reference as ref
from conftest import (
    DTYPES,
    LAYOUTS,
    assert_close,
    check_conv,
    conv_inputs,
    f64,
    input_shape,
    rand,
    reference64,
    subprocess_env,
    weight_shape,
)

# Channel counts at and around every lane width (f64/f32 x AVX2/AVX-512: 4, 8, 16).
LANE_TAILS = [1, 7, 8, 9, 15, 16, 17, 31, 33]
# Output widths below, at and around the NCHW row tiles (V * 4 pixels: 16 or 32
# for AVX2, 32 or 64 for AVX-512) and single-vector steps.
ROW_WIDTHS = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 24, 31, 32, 33, 40, 47, 48, 63, 64, 65, 100]

# Fewer examples for the heavier properties (scaled from the active profile,
# so PYCONV_HYPOTHESIS_PROFILE=thorough still explores more).
_BASE_EXAMPLES = settings().max_examples
_half = settings(max_examples=max(10, _BASE_EXAMPLES // 2))
_quarter = settings(max_examples=max(10, _BASE_EXAMPLES // 4))


def dw_weight_shape(layout: str, c: int, m: int, kh: int, kw: int) -> Tuple[int, ...]:
    """(C*m, 1, KH, KW) for NCHW, (KH, KW, 1, C*m) for NHWC."""
    return weight_shape(layout, c, c * m, kh, kw, groups=c)


def pw_weight_shape(layout: str, c_mid: int, c_out: int) -> Tuple[int, ...]:
    """(C_out, C_mid, 1, 1) for NCHW, (1, 1, C_mid, C_out) for NHWC."""
    return weight_shape(layout, c_mid, c_out, 1, 1)


def dw_inputs(rng, *, n: Optional[int], c: int, m: int, h: int, w: int, kh: int, kw: int,
              layout: str = "NCHW", dtype: Any = np.float32, bias: bool = True):
    x = rand(rng, input_shape(layout, n, c, h, w), dtype)
    wt = rand(rng, dw_weight_shape(layout, c, m, kh, kw), dtype)
    b = rand(rng, (c * m,), dtype) if bias else None
    return x, wt, b


def tf_same(size: int, k: int, stride: int, dilation: int) -> Tuple[int, int]:
    """TensorFlow SAME along one axis, written from DESIGN.md: (before, after)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def explicit_pads(padding: Any, hw: Tuple[int, int], k: Tuple[int, int], stride: Tuple[int, int],
                  dilation: Tuple[int, int]) -> Tuple[int, int, int, int]:
    """(top, bottom, left, right) of any padding form, independently of pyconv."""
    if isinstance(padding, str):
        if padding.lower() == "valid":
            return (0, 0, 0, 0)
        t, b = tf_same(hw[0], k[0], stride[0], dilation[0])
        l, r = tf_same(hw[1], k[1], stride[1], dilation[1])
        return (t, b, l, r)
    if isinstance(padding, int):
        return (padding,) * 4
    if isinstance(padding[0], tuple):
        (t, b), (l, r) = padding
        return (t, b, l, r)
    return (padding[0], padding[0], padding[1], padding[1])


def _pair(v: Any) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def _no_groups(kwargs: dict) -> dict:
    return {k: v for k, v in kwargs.items() if k != "groups"}


# ==========================================================================
# hypothesis: algo="depthwise" and depthwise_conv2d against the reference


@st.composite
def int_or_pair(draw, lo: int, hi: int):
    a, b = draw(st.integers(lo, hi)), draw(st.integers(lo, hi))
    return a if a == b and draw(st.booleans()) else (a, b)


@st.composite
def dw_geometry(draw, max_oh: int = 6):
    """Kernel, stride, dilation, padding (every form) and an input size whose
    output width is drawn first: widths around the row tiles, up to ~100."""
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = draw(int_or_pair(1, 3))
    dilation = draw(int_or_pair(1, 3))
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    kind = draw(st.sampled_from(["int", "pair", "pairs", "pairs_wide", "valid", "same"]))
    if kind == "int":
        padding = draw(st.integers(0, 3))
    elif kind == "pair":
        padding = (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    elif kind == "pairs":  # asymmetric
        padding = tuple((draw(st.integers(0, 3)), draw(st.integers(0, 3))) for _ in range(2))
    elif kind == "pairs_wide":  # padding beyond the kernel's reach: outputs that see only zeros
        padding = tuple((draw(st.integers(0, 7)), draw(st.integers(0, 7))) for _ in range(2))
    elif kind == "valid":
        padding = "valid"
    else:
        padding = draw(st.sampled_from(["same", "SAME"]))
    oh = draw(st.integers(1, max_oh))
    ow = draw(st.one_of(st.sampled_from(ROW_WIDTHS), st.integers(1, 100)))
    if isinstance(padding, str) and padding.lower() == "same":
        # out = ceil(in / stride): any of the stride sizes that give (oh, ow)
        h = (oh - 1) * sh + 1 + draw(st.integers(0, sh - 1))
        w = (ow - 1) * sw + 1 + draw(st.integers(0, sw - 1))
    else:
        t, b, l, r = explicit_pads(padding, (1, 1), (kh, kw), (sh, sw), (dh, dw))
        ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
        # the smallest input with that output size, plus up to stride-1 unused
        # pixels; at least one pixel (then the padding alone holds the kernel)
        h = max(1, (oh - 1) * sh + ekh - t - b + draw(st.integers(0, sh - 1)))
        w = max(1, (ow - 1) * sw + ekw - l - r + draw(st.integers(0, sw - 1)))
    return dict(kh=kh, kw=kw, h=h, w=w, stride=stride, dilation=dilation, padding=padding)


@st.composite
def depthwise_problems(draw, max_m: int = 3, max_oh: int = 6):
    """A depthwise conv2d call as (x, weight, bias, kwargs incl. groups=C_in)."""
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(DTYPES))
    c = draw(st.one_of(st.sampled_from(LANE_TAILS), st.integers(1, 40)))
    m = draw(st.integers(1, max_m))
    g = draw(dw_geometry(max_oh=max_oh))
    n = draw(st.one_of(st.none(), st.integers(1, 2)))  # None: unbatched 3-D input
    bias = draw(st.booleans())
    activation = draw(st.sampled_from([None, "relu", "relu6"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x, wt, b = dw_inputs(rng, n=n, c=c, m=m, h=g["h"], w=g["w"], kh=g["kh"], kw=g["kw"], layout=layout,
                         dtype=dtype, bias=bias)
    kwargs = dict(stride=g["stride"], padding=g["padding"], dilation=g["dilation"], groups=c,
                  layout=layout, activation=activation)
    return x, wt, b, kwargs


@given(problem=depthwise_problems())
def test_depthwise_algo_matches_reference(isa, problem):
    x, wt, b, kwargs = problem
    y = check_conv(x, wt, b, dtype=x.dtype, algo="depthwise", **kwargs)
    assert y.ndim == x.ndim
    if kwargs["activation"] is not None:
        assert y.min() >= 0
    if kwargs["activation"] == "relu6":
        assert y.max() <= 6


@_half
@given(problem=depthwise_problems())
def test_depthwise_conv2d_matches_reference(isa, problem):
    """The public function (algo="auto" inside) against reference.depthwise_conv2d;
    it is conv2d(groups=C_in) bit for bit, and the same result as the depthwise
    kernel within tolerance."""
    x, wt, b, kwargs = problem
    dkw = _no_groups(kwargs)
    y = pyconv.depthwise_conv2d(x, wt, b, **dkw)
    assert y.flags.c_contiguous
    r = ref.depthwise_conv2d(f64(x), f64(wt), f64(b), **dkw)
    assert_close(y, r, x.dtype)
    np.testing.assert_array_equal(y, pyconv.conv2d(x, wt, b, **kwargs))


# ==========================================================================
# targeted sweeps: lane tails x row widths, and the border/interior split


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_lane_tails_and_row_widths(isa, rng, layout, dtype):
    """Every channel count around the lanes with every width around the row
    tiles, at stride 1 and 2 (2 phases) and multiplier 1 and 2."""
    for c in LANE_TAILS:
        for ow in ROW_WIDTHS:
            for sw, m in ((1, 1), (2, 2)):
                w = (ow - 1) * sw + 1  # 3x3 kernel, padding 1
                x, wt, b = dw_inputs(rng, n=1, c=c, m=m, h=3, w=w, kh=3, kw=3, layout=layout, dtype=dtype)
                kwargs = dict(stride=(1, sw), padding=1, groups=c, layout=layout, activation="relu6")
                y = pyconv.conv2d(x, wt, b, algo="depthwise", **kwargs)
                assert y.shape[-1 if layout == "NCHW" else -2] == ow
                try:
                    assert_close(y, reference64(x, wt, b, **kwargs), dtype)
                except AssertionError as exc:
                    raise AssertionError(f"c={c} m={m} ow={ow} stride=(1, {sw}): {exc}") from None


# (c, m, h, w, kh, kw, stride, padding, dilation)
EDGE_CASES = {
    # padding far beyond the kernel's reach: rows and columns that see only zeros
    "pad_beyond_k1": (9, 1, 4, 5, 1, 1, 1, 3, 1),
    "pad_beyond_k3_asym": (17, 2, 5, 6, 3, 3, 1, ((5, 0), (0, 6)), 1),
    "pad_beyond_dilated": (8, 1, 6, 7, 3, 3, 2, ((7, 1), (7, 2)), 3),
    # the (dilated) kernel as wide as the padded input: one output column, all border
    "kernel_fills_padded_w": (7, 1, 6, 4, 3, 5, 1, (1, 1), 1),
    "kernel_fills_padded_w_dilated": (16, 3, 9, 5, 3, 3, 1, (0, 1), 3),
    "kernel_wider_than_input": (15, 1, 5, 2, 3, 5, 1, 2, 1),
    # wider than the input minus one, no interior at all, several outputs
    "no_interior": (9, 2, 5, 3, 3, 5, 1, ((0, 0), (3, 3)), 1),
    "no_interior_stride2": (33, 1, 8, 4, 3, 5, (1, 2), ((1, 1), (4, 4)), 1),
    # a one-pixel image
    "one_pixel": (31, 2, 1, 1, 3, 3, 1, 1, 1),
    "one_pixel_same_k4": (8, 1, 1, 1, 4, 4, 1, "same", 1),
    # strides that skip columns / exceed the padded size
    "stride3_k1": (17, 1, 10, 35, 1, 1, 3, 0, 1),
    "stride_beyond_input": (7, 2, 5, 5, 2, 2, 9, 0, 1),
    "stride_w3_k2_d3": (9, 1, 7, 70, 2, 2, (1, 3), ((0, 1), (2, 2)), 3),
    # even kernels with "same" and stride 2 on even sizes (odd pixel at the end)
    "same_k2_s2_even": (16, 1, 10, 64, 2, 2, 2, "same", 1),
    "same_k4_s2_even": (8, 2, 12, 34, 4, 4, 2, "same", 1),
    "same_k3x5_s3x2_d2": (15, 1, 11, 66, 3, 5, (3, 2), "same", 2),
    # wide rows: full tiles, a single vector and a masked tail
    "wide_rows_tail": (9, 1, 4, 101, 3, 3, 1, 1, 1),
    "wide_rows_s2": (7, 3, 4, 203, 3, 3, 2, 1, 1),
    "wide_rows_1x5": (16, 1, 3, 97, 1, 5, 1, (0, 2), 1),
    # large channel counts (several channel vectors in NHWC)
    "many_channels": (70, 1, 6, 9, 3, 3, 1, 1, 1),
    "many_channels_m3": (41, 3, 5, 8, 3, 2, (2, 1), ((0, 2), (1, 0)), (1, 2)),
    # narrow NCHW rows go through channel-blocked NHWC tiles: a full block
    # and a partial one, tall planes split into several bands of rows
    # (tiles overlap by the kernel's reach), a 5x5 over a 7x7 plane
    "narrow_tall_bands_m2": (70, 2, 300, 9, 3, 3, 1, 1, 1),
    "narrow_tall_s2_dilated": (33, 1, 200, 12, 3, 3, 2, "same", 2),
    "narrow_blocks_5x5": (130, 1, 7, 7, 5, 5, 1, 2, 1),
    "narrow_asym_pad_stride": (20, 3, 41, 6, 3, 2, (3, 1), ((2, 0), (1, 3)), (2, 1)),
    # stride 1 with the output as wide as the input: flat planes on AVX-512
    # (taps as shifts of the flattened plane, padding lanes masked): an odd
    # plane count (planes go in pairs), dilation with wide padding, more
    # output rows than input rows, planes of many vectors (chunks of 8)
    "flat_3x3_odd_planes": (7, 1, 7, 7, 3, 3, 1, 1, 1),
    "flat_5x5_dilated_m2": (9, 2, 12, 12, 5, 5, 1, "same", 2),
    "flat_taller_output": (5, 1, 6, 9, 3, 3, 1, ((3, 2), (1, 1)), 1),
    "flat_many_vectors": (5, 1, 30, 30, 3, 3, 1, 1, 1),
    "flat_1x7_rows_wrap": (6, 1, 5, 8, 1, 7, 1, (0, 3), 1),
    # column stride 2 on wide rows: channel-blocked tiles, several bands
    "blocked_s2_wide": (40, 1, 90, 70, 3, 3, 2, 1, 1),
    # 3x3 at stride 1, output as wide as wide input rows: read in place in
    # tiles of 4 rows x 2 vectors (a row's last tile overhanging into the
    # next row): rows not a multiple of 4, all-left / all-right column pads,
    # more and fewer output rows than input rows, a multiplier
    "wide3_m2_rows_tail": (5, 2, 13, 67, 3, 3, 1, 1, 1),
    "wide3_pad_left_only": (3, 1, 9, 40, 3, 3, 1, ((0, 2), (2, 0)), 1),
    "wide3_pad_right_only_taller": (4, 1, 6, 48, 3, 3, 1, ((2, 2), (0, 2)), 1),
    "wide3_shorter_output": (4, 1, 10, 33, 3, 3, 1, ((0, 0), (1, 1)), 1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_depthwise_edge_geometries(isa, rng, case, layout, dtype):
    c, m, h, w, kh, kw, stride, padding, dilation = EDGE_CASES[case]
    for n in (2, None):
        x, wt, b = dw_inputs(rng, n=n, c=c, m=m, h=h, w=w, kh=kh, kw=kw, layout=layout, dtype=dtype)
        kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=c, layout=layout)
        for activation in (None, "relu"):
            check_conv(x, wt, b, dtype=dtype, algo="depthwise", activation=activation, **kwargs)
        y = pyconv.depthwise_conv2d(x, wt, b, **_no_groups(kwargs))
        assert_close(y, reference64(x, wt, b, **kwargs), dtype)


def test_edge_cases_reach_the_borders():
    """The edge table really contains outputs that read only padding, one-column
    outputs and rows wider than 64 pixels (else it would check less than it says)."""
    only_padding = one_column = wide = 0
    for c, m, h, w, kh, kw, stride, padding, dilation in EDGE_CASES.values():
        shape = pyconv.conv_output_shape((1, c, h, w), (c * m, 1, kh, kw), stride=stride, padding=padding,
                                         dilation=dilation, groups=c)
        t, b, l, r = explicit_pads(padding, (h, w), (kh, kw), _pair(stride), _pair(dilation))
        only_padding += l >= (kw - 1) * _pair(dilation)[1] + 1 or t >= (kh - 1) * _pair(dilation)[0] + 1
        one_column += shape[3] == 1
        wide += shape[3] > 64
    assert only_padding >= 3 and one_column >= 3 and wide >= 2


def test_ones_kernel_counts_the_taps_inside_the_image(isa):
    """Integer-valued data gives exact sums: every output of a ones kernel over
    a ones image counts the taps that land inside the image."""
    for layout in LAYOUTS:
        c, m, h, w, k = 9, 2, 7, 37, 3
        x = np.ones(input_shape(layout, 1, c, h, w), np.float32)
        wt = np.ones(dw_weight_shape(layout, c, m, k, k), np.float32)
        y = pyconv.conv2d(x, wt, padding=1, groups=c, layout=layout, algo="depthwise")
        rows = np.minimum(np.arange(h) + 2, h) - np.maximum(np.arange(h) - 1, 0)
        cols = np.minimum(np.arange(w) + 2, w) - np.maximum(np.arange(w) - 1, 0)
        counts = np.outer(rows, cols).astype(np.float32)
        expected = np.broadcast_to(counts, (c * m, h, w))
        if layout == "NHWC":
            expected = expected.transpose(1, 2, 0)
        np.testing.assert_array_equal(y[0], expected)


def test_channel_multiplier_order(isa):
    """Output channel c*m + j reads input channel c (with filter c*m + j)."""
    c, m, h, w = 5, 3, 4, 40
    x = np.stack([np.full((h, w), 10.0 * (ci + 1)) for ci in range(c)]).astype(np.float32)[None]
    wt = np.zeros((c * m, 1, 1, 1), np.float32)
    wt[:, 0, 0, 0] = np.arange(c * m) + 1  # filter o scales by o + 1
    expected = np.array([10.0 * (o // m + 1) * (o + 1) for o in range(c * m)], np.float32)
    for layout in LAYOUTS:
        xl = x if layout == "NCHW" else x.transpose(0, 2, 3, 1).copy()
        wl = wt if layout == "NCHW" else wt.transpose(2, 3, 1, 0).copy()
        y = pyconv.conv2d(xl, wl, groups=c, layout=layout, algo="depthwise")
        per_channel = y[0, :, 0, 0] if layout == "NCHW" else y[0, 0, 0, :]
        np.testing.assert_array_equal(per_channel, expected)
        assert np.all(y == (expected[:, None, None] if layout == "NCHW" else expected))


# ==========================================================================
# special values


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_depthwise_nan_and_inf_propagate(isa, layout, dtype, activation):
    """NaN and +-Inf in the input reach exactly the outputs the reference gives
    them to (NaN stays NaN through relu/relu6, +Inf and -Inf meeting give NaN),
    at the image borders and in the interior, in full tiles and in tails;
    the zero padding never turns into NaN."""
    rng = np.random.default_rng(17)
    c, m, h, w = 17, 2, 9, 45
    x, wt, b = dw_inputs(np.random.default_rng(3), n=2, c=c, m=m, h=h, w=w, kh=3, kw=3, layout=layout,
                         dtype=dtype)
    xc = x if layout == "NCHW" else x.transpose(0, 3, 1, 2)  # a view: writes reach x
    xc[0, 0, 0, 0] = np.nan             # corner
    xc[0, 3, h - 1, w - 1] = np.inf     # other corner
    xc[0, 16, 4, 20] = np.inf           # interior, last channel (a lane tail)
    xc[0, 16, 4, 21] = -np.inf          # next to it: Inf - Inf = NaN
    xc[1, 5, 2, 0] = -np.inf            # left border
    xc[1, 8, 6, 33] = np.nan            # interior past the first tile
    rest = xc[1, 9:]                    # and a few random spots (a view, so writes reach x)
    spots = np.unravel_index(rng.choice(rest.size, 4, replace=False), rest.shape)
    rest[spots] = [np.nan, np.inf, -np.inf, np.nan]
    assert np.isnan(x).sum() == 4 and np.isposinf(x).sum() == 3 and np.isneginf(x).sum() == 3
    kwargs = dict(padding=1, groups=c, layout=layout, activation=activation)
    with np.errstate(invalid="ignore"):
        r = reference64(x, wt, b, **kwargs)
    assert np.isnan(r).any() and np.isfinite(r).any()
    for name, call in (("algo=depthwise", lambda: pyconv.conv2d(x, wt, b, algo="depthwise", **kwargs)),
                       ("depthwise_conv2d", lambda: pyconv.depthwise_conv2d(x, wt, b, **_no_groups(kwargs)))):
        for threads in (1, 2):
            with pyconv.num_threads(threads):
                y = call()
            what = f"{isa} {layout} {np.dtype(dtype).name} {name} threads={threads}"
            np.testing.assert_array_equal(np.isnan(y), np.isnan(r), err_msg=what + ": NaN positions")
            np.testing.assert_array_equal(np.isposinf(y), np.isposinf(r), err_msg=what + ": +Inf positions")
            np.testing.assert_array_equal(np.isneginf(y), np.isneginf(r), err_msg=what + ": -Inf positions")
            finite = np.isfinite(r)
            rtol = 1e-4 if dtype == np.float32 else 1e-10
            np.testing.assert_allclose(y[finite], r[finite], rtol=rtol,
                                       atol=rtol * max(1.0, np.abs(r[finite]).max()), err_msg=what)


# ==========================================================================
# separable_conv2d


def product_kernel(dw: np.ndarray, pw: np.ndarray, c: int, layout: str) -> np.ndarray:
    """The dense (groups=1) kernel of depthwise-then-pointwise, in float64:
    NCHW K[o, c, kh, kw] = sum_j P[o, c*m + j] * D[c*m + j, 0, kh, kw];
    NHWC K[kh, kw, c, o] = sum_j D[kh, kw, 0, c*m + j] * P[0, 0, c*m + j, o]."""
    dw, pw = f64(dw), f64(pw)
    if layout == "NCHW":
        c_mid, _, kh, kw = dw.shape
        d = dw[:, 0].reshape(c, c_mid // c, kh, kw)          # [c, j, kh, kw]
        p = pw[:, :, 0, 0].reshape(pw.shape[0], c, c_mid // c)  # [o, c, j]
        return np.einsum("ocj,cjhw->ochw", p, d)
    kh, kw, _, c_mid = dw.shape
    d = dw[:, :, 0, :].reshape(kh, kw, c, c_mid // c)        # [kh, kw, c, j]
    p = pw[0, 0].reshape(c, c_mid // c, pw.shape[3])         # [c, j, o]
    return np.einsum("hwcj,cjo->hwco", d, p)


@st.composite
def separable_problems(draw):
    x, dw, b_unused, kwargs = draw(depthwise_problems(max_m=2, max_oh=5))
    layout = kwargs["layout"]
    c = kwargs.pop("groups")
    c_mid = dw.shape[0] if layout == "NCHW" else dw.shape[3]
    c_out = draw(st.one_of(st.integers(1, 20), st.sampled_from([8, 16, 17, 33])))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pw = rand(rng, pw_weight_shape(layout, c_mid, c_out), x.dtype)
    b = rand(rng, (c_out,), x.dtype) if draw(st.booleans()) else None
    return x, dw, pw, b, c, kwargs


@_half
@given(problem=separable_problems())
def test_separable_conv2d_properties(isa, problem):
    x, dw, pw, b, c, kwargs = problem
    dtype = x.dtype
    y = pyconv.separable_conv2d(x, dw, pw, b, **kwargs)
    assert y.dtype == dtype and y.ndim == x.ndim and y.flags.c_contiguous
    # (a) the reference, on float64 copies
    assert_close(y, ref.separable_conv2d(f64(x), f64(dw), f64(pw), f64(b), **kwargs), dtype)
    # (b) pyconv's own depthwise_conv2d, then a 1x1 conv2d carrying bias and activation
    act = kwargs["activation"]
    geo = {k: v for k, v in kwargs.items() if k != "activation"}
    mid = pyconv.depthwise_conv2d(x, dw, **geo)
    composed = pyconv.conv2d(mid, pw, b, layout=kwargs["layout"], activation=act)
    assert composed.shape == y.shape
    assert_close(y, composed.astype(np.float64), dtype)
    # (c) a single dense convolution with the product kernel (float64 oracle)
    k = product_kernel(dw, pw, c, kwargs["layout"])
    assert_close(y, reference64(x, k, b, **kwargs), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("m", [1, 2])
@pytest.mark.parametrize("kwargs", [
    dict(padding=1),
    dict(stride=2, padding="same"),
    dict(stride=(1, 2), padding=((0, 2), (1, 0)), dilation=(2, 1)),
    dict(padding="valid", dilation=2, activation="relu"),
    dict(stride=3, padding=(2, 1), activation="relu6"),
], ids=["pad1", "s2_same", "asym", "valid_d2_relu", "s3_relu6"])
def test_separable_equals_dense_product_kernel(isa, rng, kwargs, m, layout, dtype):
    """separable_conv2d is one standard convolution with the product kernel
    (and with the kernels transposed for NHWC: the NHWC result is the NCHW one
    transposed)."""
    c, c_out = 9, 13
    x, dw, _ = dw_inputs(rng, n=2, c=c, m=m, h=14, w=41, kh=3, kw=3, dtype=dtype, bias=False)
    pw = rand(rng, pw_weight_shape("NCHW", c * m, c_out), dtype)
    b = rand(rng, (c_out,), dtype)
    y_nchw = pyconv.separable_conv2d(x, dw, pw, b, **kwargs)
    k = product_kernel(dw, pw, c, "NCHW")
    assert k.shape == (c_out, c, 3, 3)
    r = reference64(x, k, b, **kwargs)
    assert_close(y_nchw, r, dtype)
    if layout == "NHWC":
        xt, dwt, pwt = (np.ascontiguousarray(a.transpose(t))
                        for a, t in ((x, (0, 2, 3, 1)), (dw, (2, 3, 1, 0)), (pw, (2, 3, 1, 0))))
        y = pyconv.separable_conv2d(xt, dwt, pwt, b, layout="NHWC", **kwargs)
        kt = product_kernel(dwt, pwt, c, "NHWC")
        np.testing.assert_allclose(kt, k.transpose(2, 3, 1, 0), rtol=1e-12, atol=1e-12)
        assert_close(y, r.transpose(0, 2, 3, 1), dtype)
        assert_close(y, reference64(xt, kt, b, layout="NHWC", **kwargs), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_separable_fused_bands_threads_and_inputs(isa, rng, layout, dtype):
    """An intermediate bigger than one band (2 MiB per thread: 64 channels
    x 181 columns x 8 bytes is 93 KB a row, so 22 rows a band, 4 bands an
    image with 79 rows, the last one short) gives the reference's result,
    bitwise the same for 1 and 2 threads, and leaves the inputs untouched."""
    c, m, c_out = 32, 2, 24
    x, dw, _ = dw_inputs(rng, n=2, c=c, m=m, h=79, w=181, kh=3, kw=3, layout=layout, dtype=dtype)
    pw = rand(rng, pw_weight_shape(layout, c * m, c_out), dtype)
    b = rand(rng, (c_out,), dtype)
    kw = dict(padding=1, layout=layout, activation="relu6")
    before = [a.copy() for a in (x, dw, pw, b)]
    with pyconv.num_threads(1):
        y1 = pyconv.separable_conv2d(x, dw, pw, b, **kw)
    with pyconv.num_threads(2):
        y2 = pyconv.separable_conv2d(x, dw, pw, b, **kw)
    np.testing.assert_array_equal(y1, y2)
    for a, a0 in zip((x, dw, pw, b), before):
        np.testing.assert_array_equal(a, a0)
    assert_close(y1, ref.separable_conv2d(f64(x), f64(dw), f64(pw), f64(b), **kw), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [
    (32, 2, 158, 362, dict(stride=2, padding=1)),          # stride 2 in 4 bands (s2_strip), the last short
    (32, 2, 158, 362, dict(stride=2, padding="same")),     # left padding 0 (TF "same" on even sizes)
    (48, 1, 14, 14, dict(padding=1)),                      # a 14x14 plane: one band, Narrow3
    (40, 2, 7, 7, dict(padding=1, activation="relu")),     # 7x7 planes, 256-bit rows
    (64, 1, 1700, 10, dict(padding=((2, 0), (1, 1)))),     # narrow rows in several bands (Narrow3)
    (64, 1, 200, 100, dict(padding=((3, 0), (1, 1)))),     # stride 1 in 3 bands (rows3_strip), uneven padding
], ids=["s2_bands", "s2_same_bands", "narrow14", "narrow7", "narrow_bands", "rows3_bands"])
def test_separable_bands_on_register_window_kernels(isa, rng, case, dtype):
    """The fused path's depthwise bands on the forward's register-window
    kernels (AVX-512): rows of a band from the stride-1 strips, the
    stride-2 tiles and Narrow3 (narrow planes, in one band or several);
    against the reference,
    bitwise the same for 1 and 2 threads."""
    c, m, h, w, kwargs = case
    x, dw, _ = dw_inputs(rng, n=2, c=c, m=m, h=h, w=w, kh=3, kw=3, dtype=dtype)
    pw = rand(rng, pw_weight_shape("NCHW", c * m, 24), dtype)
    b = rand(rng, (24,), dtype)
    ys = []
    for threads in (1, 2):
        with pyconv.num_threads(threads):
            ys.append(pyconv.separable_conv2d(x, dw, pw, b, **kwargs))
    np.testing.assert_array_equal(ys[0], ys[1])
    assert_close(ys[0], ref.separable_conv2d(f64(x), f64(dw), f64(pw), f64(b), **kwargs), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_separable_unbatched_and_docstring_example(isa, rng, layout):
    x = np.ones(input_shape(layout, 1, 4, 8, 8), np.float32)
    dw = np.ones(dw_weight_shape(layout, 4, 1, 3, 3), np.float32)
    pw = np.ones(pw_weight_shape(layout, 4, 16), np.float32)
    y = pyconv.separable_conv2d(x, dw, pw, padding=1, layout=layout)
    assert y.shape == input_shape(layout, 1, 16, 8, 8)
    # interior pixels: 9 taps per channel, 4 channels summed
    assert (y[0, :, 3, 3] if layout == "NCHW" else y[0, 3, 3, :]).tolist() == [36.0] * 16
    xs, dws, _ = dw_inputs(rng, n=None, c=5, m=2, h=7, w=9, kh=3, kw=2, layout=layout)
    pws = rand(rng, pw_weight_shape(layout, 10, 3))
    bs = rand(rng, (3,))
    kw = dict(stride=2, padding="same", layout=layout, activation="relu")
    y3 = pyconv.separable_conv2d(xs, dws, pws, bs, **kw)
    assert y3.ndim == 3
    np.testing.assert_array_equal(y3, pyconv.separable_conv2d(xs[None], dws, pws, bs, **kw)[0])
    assert_close(y3, ref.separable_conv2d(f64(xs), f64(dws), f64(pws), f64(bs), **kw), np.float32)


def test_depthwise_docstring_example():
    x = np.ones((1, 4, 8, 8), np.float32)
    w = np.ones((8, 1, 3, 3), np.float32)
    y = pyconv.depthwise_conv2d(x, w, padding="same")
    assert y.shape == (1, 8, 8, 8)
    assert y[0, :, 1:-1, 1:-1].min() == y.max() == 9.0 and y[0, :, 0, 0].tolist() == [4.0] * 8


# DESIGN.md, dtypes: "float64 if any array operand (x, weight, bias) is float64
# or if none is floating; otherwise float32" -- for separable_conv2d the array
# operands are x, depthwise_weight, pointwise_weight and bias.
@pytest.mark.parametrize("xd, dwd, pwd, bd, expected", [
    ("float32", "float32", "float32", None, "float32"),
    ("float32", "float32", "float32", "float64", "float64"),
    ("float32", "float32", "float64", None, "float64"),
    ("float64", "float32", "float32", None, "float64"),
    ("int32", "int32", "float32", None, "float32"),
    ("int32", "float32", "int32", None, "float32"),
    ("int32", "int32", "int32", "float32", "float32"),
    ("int32", "int32", "int32", None, "float64"),
    ("float16", "float16", "float16", None, "float32"),
])
def test_separable_dtype_promotion(isa, rng, xd, dwd, pwd, bd, expected):
    """The result dtype follows DESIGN.md over all four operands, and a float64
    result is computed in float64 (float64 accuracy on float64 copies)."""
    x = rng.standard_normal((2, 6, 9, 40)) * 3
    dw = rng.standard_normal((12, 1, 3, 3)) * 3
    pw = rng.standard_normal((5, 12, 1, 1)) * 3
    b = rng.standard_normal(5) * 3
    x, dw, pw = x.astype(xd), dw.astype(dwd), pw.astype(pwd)
    b = None if bd is None else b.astype(bd)
    kw = dict(padding=1, stride=(1, 2))
    y = pyconv.separable_conv2d(x, dw, pw, b, **kw)
    assert y.dtype == np.dtype(expected), f"separable_conv2d({xd}, {dwd}, {pwd}, {bd}) gave {y.dtype}"
    r = ref.separable_conv2d(f64(x), f64(dw), f64(pw), f64(b), **kw)
    assert_close(y, r, expected)


# ==========================================================================
# determinism: thread counts, repeated calls, prepacked weights

# (N, C, H, W, multiplier, kernel, stride, padding, dilation): >= 1.8 MFLOP each
# (enough work for every thread: 24 to 8192 planes, 28 to 112 output rows)
DETERMINISM_SHAPES = {
    "n2_c64_56": (2, 64, 56, 56, 1, 3, 1, 1, 1),
    "mbv1_dw_112": (1, 32, 112, 112, 1, 3, 1, 1, 1),
    "mbv1_dw_56s2": (1, 128, 56, 56, 1, 3, 2, 1, 1),
    "mbv1_dw_7": (8, 1024, 7, 7, 1, 3, 1, 1, 1),
    "fcn_sep_dw_s2": (8, 3, 160, 160, 1, 3, 2, "same", 1),
    "m2_k5_s2_d2": (2, 24, 48, 50, 2, 5, 2, "same", 2),
    "m3_tail_k4": (3, 17, 30, 70, 3, 4, (1, 2), ((2, 1), (0, 3)), 1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(DETERMINISM_SHAPES))
def test_depthwise_bitwise_deterministic(isa, name, layout, dtype):
    n, c, h, w, m, k, s, p, d = DETERMINISM_SHAPES[name]
    rng = np.random.default_rng(sum(name.encode()))
    x, wt, b = dw_inputs(rng, n=n, c=c, m=m, h=h, w=w, kh=k, kw=k, layout=layout, dtype=dtype)
    kwargs = dict(stride=s, padding=p, dilation=d, groups=c, layout=layout, activation="relu6")
    geo = {k_: v for k_, v in kwargs.items() if k_ != "activation"}
    assert pyconv.plan(x.shape, wt.shape, **geo)["flops"] >= 1.8e6
    results = {}
    for threads in (1, 2, 3):
        with pyconv.num_threads(threads):
            results[threads] = pyconv.conv2d(x, wt, b, algo="depthwise", **kwargs)
            again = pyconv.conv2d(x, wt, b, algo="depthwise", **kwargs)
            assert np.array_equal(results[threads], again), f"threads={threads}: repeated call differs"
    assert np.array_equal(results[1], results[2]), "1 vs 2 threads"
    assert np.array_equal(results[1], results[3]), "1 vs 3 threads"
    # a prepacked weight: bitwise the plain weight's result, on repeated calls too
    packed = pyconv.prepack(wt, groups=c, layout=layout)
    for threads in (1, 2):
        with pyconv.num_threads(threads):
            for _ in range(2):
                yp = pyconv.conv2d(x, packed, b, algo="depthwise", **kwargs)
                assert np.array_equal(yp, results[1]), f"prepacked, threads={threads}"
    # depthwise_conv2d (auto) is deterministic too
    dkw = _no_groups(kwargs)
    with pyconv.num_threads(1):
        a1 = pyconv.depthwise_conv2d(x, wt, b, **dkw)
    with pyconv.num_threads(2):
        a2 = pyconv.depthwise_conv2d(x, wt, b, **dkw)
    assert np.array_equal(a1, a2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("c, m", [(16, 2), (1, 2), (8, 1), (5, 3)])
def test_prepacked_weight_shared_by_algorithms(isa, rng, c, m, layout, dtype):
    """One PackedWeight used with several algorithms, in any order, gives each
    algorithm's plain-weight result (the packed forms must not be mixed up)."""
    x, wt, b = dw_inputs(rng, n=2, c=c, m=m, h=10, w=40, kh=3, kw=3, layout=layout, dtype=dtype)
    kwargs = dict(padding=1, groups=c, layout=layout)
    algos = ("depthwise", "im2col", "direct", "auto")
    plain = {a: pyconv.conv2d(x, wt, b, algo=a, **kwargs) for a in algos}
    r = reference64(x, wt, b, **kwargs)
    for order in (algos, algos[::-1], ("im2col", "depthwise", "im2col", "depthwise")):
        packed = pyconv.prepack(wt, groups=c, layout=layout)
        for a in order:
            what = f"{layout} {np.dtype(dtype).name} c={c} m={m}: {' -> '.join(order)}, at {a}"
            try:
                y = pyconv.conv2d(x, packed, b, algo=a, **kwargs)
            except ValueError as exc:
                pytest.fail(f"{what}: {exc}")
            assert_close(y, r, dtype)
            assert np.array_equal(y, plain[a]), what


# ==========================================================================
# real layer shapes, full size and batch, float32

# name: (N, C_in, H, W, C_out, kernel, stride, padding, groups)
DW_LAYER_SHAPES = {
    "mbv1_dw_112": (1, 32, 112, 112, 32, 3, 1, 1, 32),
    "mbv1_dw_56s2": (1, 128, 56, 56, 128, 3, 2, 1, 128),
    "mbv1_dw_7": (8, 1024, 7, 7, 1024, 3, 1, 1, 1024),
    "fcn_sep_dw_s2": (8, 3, 160, 160, 3, 3, 2, "same", 3),
}


@functools.lru_cache(maxsize=None)
def _dw_layer_case(name: str):
    n, c, h, w, oc, k, s, p, g = DW_LAYER_SHAPES[name]
    rng = np.random.default_rng(sum(name.encode()) + 1)
    x, wt, b = dw_inputs(rng, n=n, c=c, m=oc // c, h=h, w=w, kh=k, kw=k)
    r = reference64(x, wt, b, stride=s, padding=p, groups=g)
    return x, wt, b, r


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algo", ["depthwise", "direct"])
@pytest.mark.parametrize("name", list(DW_LAYER_SHAPES))
def test_depthwise_layer_shapes(isa, name, algo, layout):
    n, c, h, w, oc, k, s, p, g = DW_LAYER_SHAPES[name]
    assert g == c and oc % c == 0
    x, wt, b, r = _dw_layer_case(name)
    if layout == "NHWC":
        x, wt, r = x.transpose(0, 2, 3, 1).copy(), wt.transpose(2, 3, 1, 0).copy(), r.transpose(0, 2, 3, 1)
    y = pyconv.conv2d(x, wt, b, stride=s, padding=p, groups=g, layout=layout, algo=algo)
    assert_close(y, r, np.float32)
    if algo == "depthwise":
        yd = pyconv.depthwise_conv2d(x, wt, b, stride=s, padding=p, layout=layout)
        assert_close(yd, r, np.float32)


# ==========================================================================
# plan()


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(DW_LAYER_SHAPES))
def test_plan_depthwise_shapes(isa, name, dtype):
    n, c, h, w, oc, k, s, p, g = DW_LAYER_SHAPES[name]
    xs, ws = (n, h, w, c), (k, k, 1, oc)
    p_nhwc = pyconv.plan(xs, ws, stride=s, padding=p, groups=g, layout="NHWC", dtype=dtype)
    assert p_nhwc["algo"] == "depthwise", p_nhwc
    assert isinstance(p_nhwc["workspace_bytes"], int) and p_nhwc["workspace_bytes"] > 0, p_nhwc
    assert p_nhwc["isa"] == isa
    for threads in (1, 2, 3):  # "auto" never depends on the thread count
        with pyconv.num_threads(threads):
            assert pyconv.plan(xs, ws, stride=s, padding=p, groups=g, layout="NHWC",
                               dtype=dtype)["algo"] == "depthwise"
    p_nchw = pyconv.plan((n, c, h, w), (oc, 1, k, k), stride=s, padding=p, groups=g, dtype=dtype)
    assert p_nchw["algo"] in ("depthwise", "direct"), p_nchw
    if p_nchw["out_shape"][3] >= 14:  # rows of 14 and more: the kernel vectorised along them
        assert p_nchw["algo"] == "depthwise", p_nchw
    if p_nchw["algo"] == "depthwise":
        assert p_nchw["workspace_bytes"] > 0, p_nchw


def test_plan_depthwise_multiplier_and_unbatched():
    p = pyconv.plan((20, 70, 7), (3, 3, 1, 21), padding="same", groups=7, layout="NHWC")
    assert p["algo"] == "depthwise" and p["workspace_bytes"] > 0
    assert p["out_shape"] == (20, 70, 21)
    assert p["flops"] == 2 * 21 * 20 * 70 * 9


_PLAN_VS_RUN_CHILD = """
import numpy as np, pyconv
cases = {cases!r}
for xs, ws, kw in cases:
    print("PLAN", pyconv.plan(xs, ws, **kw)["algo"], flush=True)
    pyconv.conv2d(np.ones(xs, np.float32), np.ones(ws, np.float32), **kw)
    kw.pop("groups")
    pyconv.depthwise_conv2d(np.ones(xs, np.float32), np.ones(ws, np.float32), **kw)
"""


def test_plan_matches_what_depthwise_calls_run(tmp_path):
    """plan()["algo"] is what conv2d(algo="auto") and depthwise_conv2d report
    running (PYCONV_VERBOSE=1), for NHWC and wide and narrow NCHW layers."""
    cases = [
        ((1, 16, 16, 24), (3, 3, 1, 48), dict(padding=1, groups=24, layout="NHWC")),
        ((1, 24, 12, 40), (48, 1, 3, 3), dict(padding=1, groups=24)),
        ((2, 64, 7, 7), (64, 1, 3, 3), dict(padding="same", groups=64)),
    ]
    code = _PLAN_VS_RUN_CHILD.format(cases=cases)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(PYCONV_VERBOSE="1"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    planned = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PLAN")]
    ran = [(line.split(",")[1], part.split("=", 1)[1]) for line in proc.stderr.splitlines()
           if line.startswith("pyconv_verbose") for part in line.split(",") if part.startswith("algo=")]
    assert len(planned) == len(cases), proc.stdout
    assert [fn for fn, _ in ran] == ["conv2d", "depthwise_conv2d"] * len(cases), proc.stderr
    assert [a for _, a in ran] == [a for a in planned for _ in (0, 1)], (planned, proc.stderr)
    assert planned[0] == planned[1] == "depthwise", planned


# ==========================================================================
# the reference twins


@_quarter
@given(problem=depthwise_problems(max_oh=4))
def test_reference_depthwise_is_grouped_conv2d(problem):
    """reference.depthwise_conv2d is reference.conv2d with groups=C_in, in the
    operands' own dtype and in float64."""
    x, wt, b, kwargs = problem
    dkw = _no_groups(kwargs)
    r = ref.depthwise_conv2d(x, wt, b, **dkw)
    assert r.dtype == x.dtype
    assert_close(r, ref.conv2d(f64(x), f64(wt), f64(b), **kwargs), x.dtype)
    assert_close(ref.depthwise_conv2d(f64(x), f64(wt), f64(b), **dkw),
                 ref.conv2d(f64(x), f64(wt), f64(b), **kwargs), np.float64)


def torch_depthwise(x, wt, b, *, stride, padding, dilation, groups, layout, activation):
    """torch.nn.functional.conv2d(groups=C_in) in float64, pads applied explicitly."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, wt = f64(x), f64(wt)
    batched = x.ndim == 4
    if not batched:
        x = x[None]
    if layout == "NHWC":
        x, wt = x.transpose(0, 3, 1, 2), wt.transpose(3, 2, 0, 1)
    kh, kw = wt.shape[2:]
    t, bo, l, r = explicit_pads(padding, x.shape[2:], (kh, kw), _pair(stride), _pair(dilation))
    tx = F.pad(torch.from_numpy(np.ascontiguousarray(x)), (l, r, t, bo))
    tb = None if b is None else torch.from_numpy(f64(b))
    y = F.conv2d(tx, torch.from_numpy(np.ascontiguousarray(wt)), tb, stride=_pair(stride),
                 dilation=_pair(dilation), groups=groups)
    if activation == "relu":
        y = F.relu(y)
    elif activation == "relu6":
        y = F.relu6(y)
    y = y.numpy()
    if layout == "NHWC":
        y = y.transpose(0, 2, 3, 1)
    return y if batched else y[0]


@_quarter
@given(problem=depthwise_problems(max_oh=4))
def test_reference_depthwise_matches_torch(problem):
    pytest.importorskip("torch")
    x, wt, b, kwargs = problem
    expected = torch_depthwise(x, wt, b, **kwargs)
    assert_close(ref.depthwise_conv2d(f64(x), f64(wt), f64(b), **_no_groups(kwargs)), expected, np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pyconv_depthwise_matches_torch(isa, rng, dtype):
    """The kernel against PyTorch directly, on a few fixed shapes."""
    pytest.importorskip("torch")
    cases = [
        (2, 24, 15, 40, 2, 3, 3, dict(stride=2, padding="same")),
        (1, 33, 9, 70, 1, 5, 3, dict(padding=((2, 0), (1, 1)), dilation=(1, 2))),
        (None, 9, 12, 33, 3, 2, 4, dict(stride=(1, 3), padding="valid")),
    ]
    for n, c, h, w, m, kh, kw, kwargs in cases:
        for layout in LAYOUTS:
            x, wt, b = dw_inputs(rng, n=n, c=c, m=m, h=h, w=w, kh=kh, kw=kw, layout=layout, dtype=dtype)
            full = dict(dict(stride=1, padding=0, dilation=1), **kwargs, groups=c, layout=layout,
                        activation="relu")
            expected = torch_depthwise(x, wt, b, **full)
            assert_close(pyconv.conv2d(x, wt, b, algo="depthwise", **full), expected, dtype)


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("w, kw, stride, padding", [
    (1, 2, 2, "same"),   # right pad only, stride past the input: found by hypothesis
    (1, 2, 3, "same"),
    (2, 3, 3, "same"),
    (1, 1, 2, ((0, 0), (0, 3))),
    (3, 2, 4, ((0, 0), (2, 1))),
    (1, 3, 1, 1),
])
def test_depthwise_narrow_rows_read_no_neighbouring_row(isa, rng, layout, w, kw, stride, padding):
    """Padding columns must read zeros, never the next row's first pixels."""
    x, wt, b = conv_inputs(rng, n=2, c=3, h=4, w=w, oc=6, kh=1, kw=kw, groups=3,
                           layout=layout, dtype=np.float32, bias=True)
    check_conv(x, wt, b, dtype=np.float32, algo="depthwise", stride=stride, padding=padding,
               groups=3, layout=layout)


# ==========================================================================
# planes read from registers (3x3, stride 1, column padding 1: on AVX-512,
# csrc/depthwise Narrow3 for rows narrower than a vector, rows3_strip for
# the others)


def _check_step(rng, x, wt, b, kwargs, activation, dtype, what, grad_input=False):
    """The forward, the weight gradient (and optionally the input gradient)
    of one depthwise layer against the reference, at one and two threads,
    bitwise equal between them."""
    results = []
    gy = None
    for threads in (1, 2):
        with pyconv.num_threads(threads):
            y = pyconv.conv2d(x, wt, b, algo="depthwise", activation=activation, **kwargs)
            gy = rand(rng, y.shape, dtype) if gy is None else gy
            gw = pyconv.conv2d_grad_weight(x, gy, wt.shape, **kwargs)
            gx = pyconv.conv2d_grad_input(gy, wt, x.shape, **kwargs) if grad_input else None
        results.append((y, gw, gx))
    (y, gw, gx), again = results
    try:
        assert_close(y, reference64(x, wt, b, activation=activation, **kwargs), dtype)
        assert_close(gw, ref.conv2d_grad_weight(f64(x), f64(gy), wt.shape, **kwargs), dtype)
        if grad_input:
            assert_close(gx, ref.conv2d_grad_input(f64(gy), f64(wt), x.shape, **kwargs), dtype)
    except AssertionError as exc:
        raise AssertionError(f"{what}: {exc}") from None
    for a, b2 in zip((y, gw, gx), again):
        if a is not None:
            np.testing.assert_array_equal(a, b2, err_msg=what)


def _check_non_finite(x, wt, gy, kwargs, dtype):
    """NaN/Inf positions of the weight gradient and the forward are the
    reference's, and the finite gradient entries match it."""
    with np.errstate(invalid="ignore"):
        r = ref.conv2d_grad_weight(f64(x), f64(gy), wt.shape, **kwargs)
        ry = reference64(x, wt, None, **kwargs)
    g = pyconv.conv2d_grad_weight(x, gy, wt.shape, **kwargs)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(r))
    np.testing.assert_array_equal(np.isinf(g), np.isinf(r))
    finite = np.isfinite(r)
    assert finite[0].sum() > 0 and finite[1].sum() > 0  # the channels' other taps stay finite
    assert_close(g[finite], r[finite], dtype)
    y = pyconv.conv2d(x, wt, algo="depthwise", **kwargs)
    for test in (np.isnan, np.isposinf, np.isneginf):
        np.testing.assert_array_equal(test(y), test(ry))


@pytest.mark.parametrize("dtype", DTYPES)
def test_register_window_planes_every_width(isa, rng, dtype):
    """Row widths 1..17 (Narrow3 takes 1..15 in float32, 1..7 in float64,
    256-bit rows up to 8 / 4) and
    around one to eight vectors (rows3_strip: a row of one vector, a masked
    last vector, strips of two vectors touching the row's ends or not, an
    odd last vector in a strip of its own; the gradient's row tiles of 6
    with a partial last one), top and bottom padding 0..4 (fewer, as many
    and more output rows than input rows, rows whose taps all fall in the
    padding), a multiplier, bias and relu6: the forward and the weight
    gradient."""
    for w in list(range(1, 18)) + [23, 24, 31, 32, 33, 47, 48, 49, 64, 65, 97, 112, 113, 128]:
        for h, pt, pb, m in ((1, 1, 1, 1), (3, 1, 0, 2), (7, 1, 1, 1), (9, 1, 2, 1), (4, 1, 1, 3),
                             (8, 0, 2, 1), (13, 2, 0, 1), (5, 3, 4, 1)):
            x, wt, b = dw_inputs(rng, n=2, c=5, m=m, h=h, w=w, kh=3, kw=3, dtype=dtype)
            _check_step(rng, x, wt, b, dict(padding=((pt, pb), (1, 1)), groups=5), "relu6", dtype,
                        f"w={w} h={h} pt={pt} pb={pb} m={m}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nhwc_rows_with_border_pixels_in_tiles(isa, rng, dtype):
    """NHWC 3x3 at stride 1: rows whose first and last pixels read one
    padding column join the load-reusing tiles (the padding columns
    skipped taps; csrc/depthwise padded_row_k3_nhwc) - widths 1..19 and a
    few wider (one tile, a tile and a remainder, several tiles), left and
    right padding 0 or 1 on either side (and 2, which takes the border
    pixels one by one), top and bottom padding 0..2, channels in blocks,
    whole vectors and a partial vector, a multiplier, bias and relu6: the
    forward and the weight gradient against the reference, 1 vs 2 threads
    bitwise."""
    for w in list(range(1, 20)) + [23, 31, 33]:
        for (pt, pb), (pl, pr), c, m in (((1, 1), (1, 1), 35, 1), ((0, 2), (1, 0), 19, 2), ((2, 0), (0, 1), 70, 1),
                                         ((1, 1), (2, 1), 17, 1)):
            if w + pl + pr < 3:
                continue  # (no output)
            x, wt, b = dw_inputs(rng, n=2, c=c, m=m, h=4, w=w, kh=3, kw=3, layout="NHWC", dtype=dtype)
            _check_step(rng, x, wt, b, dict(padding=((pt, pb), (pl, pr)), groups=c, layout="NHWC"), "relu6",
                        dtype, f"w={w} pads={(pt, pb), (pl, pr)} c={c} m={m}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_nhwc_few_channels_through_planes(isa, rng, dtype):
    """NHWC 3x3 layers with few channels (on AVX-512 computed from NCHW
    planes by the register-window strips, csrc/depthwise
    depthwise_nhwc_planes): stride 1 and 2, 1..8 channels (both sides of
    the thresholds), widths around a vector, padding forms incl. TF "same"
    on even sizes, a multiplier, one image split in row bands across the
    threads, images tall enough for several bands per thread, bias and
    relu6: forward, weight and input gradients against the reference, 1 vs
    2 threads bitwise, and a prepacked weight bitwise the plain one's."""
    cases = [  # n, c, m, h, w, stride, padding
        (2, 3, 1, 9, 16, 1, 1), (1, 3, 2, 11, 37, 1, 1), (3, 1, 1, 7, 20, 1, ((0, 2), (1, 1))),
        (1, 8, 1, 6, 17, 1, 1), (2, 4, 3, 5, 33, 1, ((2, 0), (1, 1))), (1, 9, 1, 5, 16, 1, 1),
        (2, 3, 1, 10, 40, 2, "same"), (1, 4, 2, 9, 35, 2, 1), (1, 2, 1, 8, 33, 2, ((0, 1), (0, 1))),
        (1, 5, 1, 9, 34, 2, 1), (1, 3, 1, 500, 64, 2, "same"), (1, 2, 1, 700, 48, 1, 1),
    ]
    for n, c, m, h, w, stride, padding in cases:
        x, wt, b = dw_inputs(rng, n=n, c=c, m=m, h=h, w=w, kh=3, kw=3, layout="NHWC", dtype=dtype)
        kwargs = dict(stride=stride, padding=padding, groups=c, layout="NHWC")
        what = f"n={n} c={c} m={m} h={h} w={w} stride={stride} padding={padding}"
        _check_step(rng, x, wt, b, kwargs, "relu6", dtype, what, grad_input=True)
        y = pyconv.conv2d(x, wt, b, activation="relu6", **kwargs)
        packed = pyconv.prepack(wt, groups=c, layout="NHWC")
        np.testing.assert_array_equal(pyconv.conv2d(x, packed, b, activation="relu6", **kwargs), y, err_msg=what)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nhwc_weight_gradient_in_place(isa, rng, dtype):
    """The NHWC 3x3 weight gradient computed in place, vectorised across
    channels (csrc/depthwise grad_weight_nhwc_direct: multiplier 1, stride
    1 or 2, at least a vector of channels): widths 1..17 (the sliding
    window's columns outside the image), padding forms incl. TF "same",
    whole channel vectors and a partial last one, one image and several
    (the sums carried across rows and images): against the reference, 1 vs
    2 threads bitwise; and an infinite grad_out pixel on the border makes
    NaN where the padding meets it, as in the reference."""
    for w in (1, 2, 3, 5, 8, 9, 16, 17):
        for stride, padding, c, n in ((1, 1, 21, 2), (2, "same", 32, 1), (2, 1, 19, 3), (1, ((0, 2), (2, 0)), 16, 1)):
            x, wt, b = dw_inputs(rng, n=n, c=c, m=1, h=6, w=w, kh=3, kw=3, layout="NHWC", dtype=dtype)
            if pyconv.conv_output_shape(x.shape, wt.shape, stride=stride, padding=padding, groups=c,
                                        layout="NHWC")[2] < 1:
                continue
            _check_step(rng, x, wt, b, dict(stride=stride, padding=padding, groups=c, layout="NHWC"), None, dtype,
                        f"w={w} stride={stride} padding={padding} c={c} n={n}")
    c = 20
    x, wt, _ = dw_inputs(rng, n=1, c=c, m=1, h=5, w=9, kh=3, kw=3, layout="NHWC", dtype=dtype, bias=False)
    kwargs = dict(padding=1, groups=c, layout="NHWC")
    gy = rand(rng, pyconv.conv_output_shape(x.shape, wt.shape, **kwargs), dtype)
    gy[0, 0, 4, 3] = np.inf    # top row: meets the padding row above
    gy[0, 2, 8, 17] = -np.inf  # last column: meets the padding column
    _check_non_finite(x, wt, gy, kwargs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_register_window_stride2_every_width(isa, rng, dtype):
    """3x3 at stride 2 (csrc/depthwise s2_strip on AVX-512: even and odd
    columns of two vectors per output vector): input widths around one to
    six output vectors (strips of two vectors inside the row and past its
    end, an odd last vector in a strip of its own), left padding 0 and 1
    with right padding 0..2 (TF "same" on even sizes is (0, 1)), top and
    bottom padding 0..2 (the weight gradient's row tiles of 4 with a
    partial last one), a multiplier, bias and relu: the forward, the
    weight gradient and the input gradient (a gather of even and odd
    columns)."""
    for w in (1, 2, 3, 5, 16, 17, 31, 32, 33, 34, 63, 64, 65, 66, 97, 161, 192):
        for (pt, pb), (pl, pr), h, m in (((1, 1), (1, 1), 9, 1), ((0, 1), (0, 1), 8, 1), ((0, 0), (1, 2), 5, 2),
                                         ((2, 1), (0, 0), 11, 1), ((1, 2), (1, 0), 1, 3)):
            if w + pl + pr < 3 or h + pt + pb < 3:
                continue  # (no output)
            x, wt, b = dw_inputs(rng, n=2, c=3, m=m, h=h, w=w, kh=3, kw=3, dtype=dtype)
            _check_step(rng, x, wt, b, dict(stride=2, padding=((pt, pb), (pl, pr)), groups=3), "relu", dtype,
                        f"w={w} h={h} pads={(pt, pb), (pl, pr)} m={m}", grad_input=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pl", [0, 1])
def test_register_window_stride2_non_finite(isa, dtype, pl):
    """Stride 2: an infinite input pixel in the last column, which only
    the lanes past the output row could read under some tap (no right
    padding), leaves the other taps' weight gradient finite as in the
    reference; the forward's NaN/Inf positions are the reference's."""
    rng = np.random.default_rng(9)
    c, h, w = 2, 9, 36
    x, wt, _ = dw_inputs(rng, n=1, c=c, m=1, h=h, w=w, kh=3, kw=3, dtype=dtype, bias=False)
    x[0, 0, 4, w - 1] = np.inf
    x[0, 1, h - 1, 17] = np.nan
    kwargs = dict(stride=2, padding=((1, 0), (pl, 0)), groups=c)
    oh, ow = pyconv.conv_output_shape(x.shape, wt.shape, **kwargs)[2:]
    _check_non_finite(x, wt, rand(rng, (1, c, oh, ow), dtype), kwargs, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w", [7, 12])
def test_narrow_rows_grad_out_non_finite(isa, dtype, w):
    """An infinite grad_out pixel reaches only its own channel's weight
    gradient: the next plane's first pixels, which a vector of the last
    row spans past the row, are never multiplied in (Narrow3 masks grad_out
    to the row)."""
    rng = np.random.default_rng(11)
    c, h = 3, 6
    x, wt, _ = dw_inputs(rng, n=2, c=c, m=1, h=h, w=w, kh=3, kw=3, dtype=dtype, bias=False)
    gy = rand(rng, (2, c, h, w), dtype)
    gy[0, 1, 0, 0] = np.inf
    gy[1, 2, 0, 1] = -np.inf
    kwargs = dict(padding=1, groups=c)
    with np.errstate(invalid="ignore"):
        r = ref.conv2d_grad_weight(f64(x), f64(gy), wt.shape, **kwargs)
    g = pyconv.conv2d_grad_weight(x, gy, wt.shape, **kwargs)
    np.testing.assert_array_equal(np.isnan(g), np.isnan(r))
    np.testing.assert_array_equal(np.isinf(g), np.isinf(r))
    assert np.isfinite(r[0]).all()
    assert_close(g[0], r[0], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flat_register_planes_non_finite(isa, dtype):
    """An infinite input pixel that only the lanes past the last output
    pixel would read under some tap (no bottom padding: the last input row
    is read by the kernel's last row only) leaves the weight gradient of
    the other taps finite, as in the reference; the forward puts NaN/Inf
    exactly where the reference does, the zero padding never NaN."""
    rng = np.random.default_rng(5)
    c, h, w = 3, 7, 7
    x, wt, _ = dw_inputs(rng, n=1, c=c, m=1, h=h, w=w, kh=3, kw=3, dtype=dtype, bias=False)
    x[0, 0, h - 1, 0] = np.inf
    x[0, 1, 0, w - 1] = -np.inf
    x[0, 2, 3, 3] = np.nan
    _check_non_finite(x, wt, rand(rng, (1, c, h - 1, w), dtype), dict(padding=((1, 0), (1, 1)), groups=c), dtype)
