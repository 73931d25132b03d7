"""Backward passes of conv2d (input, weight and bias gradients) and the
transposed convolution, against ``pyconv.reference``, PyTorch and identities
that need no oracle at all, on every available ISA.

What is under test (pyconv/_grad.py):

* ``conv2d_grad_input`` splits the input grid into stride phases, each a
  stride-1 forward convolution of (a slice of) grad_out with some taps of the
  group-transposed weight; phases no tap reaches are zeros.  So the
  properties draw strides and dilations 1-3 (phases with and without taps,
  dilation/stride with a common factor), padding far beyond the kernel's
  reach, strides larger than the input, and every padding form.
* ``conv2d_grad_weight`` has its own GEMM kernel
  (csrc/gemm/grad_weight_kernels.cpp): im2col of ~4 MiB chunks of pixels
  taken over all images together, dW split into thread tiles, separate NCHW
  and NHWC operand layouts.  A dedicated test makes the im2col span several
  chunks whose boundaries fall inside images and inside output rows.
* ``conv_transpose2d`` is the input gradient of the conv2d whose output has
  x's shape (output_padding, possibly >= stride when dilation > stride, and
  output_size on top), checked against PyTorch as well as the reference.

The reference itself is checked against PyTorch's autograd, so that the
oracle of every other comparison is independently right, and the adjoint
identity <conv2d(x, w), gy> == <x, grad_input(gy)> == <w, grad_weight(gy)>
ties the three functions together without any oracle.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Tuple

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import pyconv
import pyconv.reference as ref
from conftest import DTYPES, LAYOUTS, assert_close, f64, input_shape, rand, weight_shape

# Fewer examples than the profile's default (each example runs on one ISA,
# and every property runs once per ISA); scaled from the active profile so
# that PYCONV_HYPOTHESIS_PROFILE=thorough still explores more.
_BASE_EXAMPLES = settings().max_examples
_full = settings(max_examples=max(10, _BASE_EXAMPLES))
_half = settings(max_examples=max(10, _BASE_EXAMPLES // 2))
_quarter = settings(max_examples=max(10, _BASE_EXAMPLES // 4))


# ==========================================================================
# helpers


def _pair(v: Any) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


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
    if isinstance(padding[0], (tuple, list)):
        (t, b), (l, r) = padding
        return (t, b, l, r)
    return (padding[0], padding[0], padding[1], padding[1])


def act_to_layout(a: np.ndarray, layout: str) -> np.ndarray:
    """An NCHW (or CHW) activation in ``layout`` (C-contiguous)."""
    if layout == "NHWC":
        a = a.transpose((0, 2, 3, 1) if a.ndim == 4 else (1, 2, 0))
    return np.ascontiguousarray(a)


def act_to_nchw(a: np.ndarray, layout: str) -> np.ndarray:
    if layout == "NHWC":
        a = a.transpose((0, 3, 1, 2) if a.ndim == 4 else (2, 0, 1))
    return np.ascontiguousarray(a)


def w_to_layout(w: np.ndarray, layout: str) -> np.ndarray:
    """A weight with the channel axes first (OIHW for conv2d, (C_in, C_out/g,
    KH, KW) for conv_transpose2d) in ``layout``'s format (channel axes last,
    reversed): the same permutation for both ops."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0) if layout == "NHWC" else w)


def w_to_nchw(w: np.ndarray, layout: str) -> np.ndarray:
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1) if layout == "NHWC" else w)


def dot64(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sum(np.asarray(a, np.float64) * np.asarray(b, np.float64)))


def bits(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    return a.view({4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_bitwise(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if not np.array_equal(bits(actual), bits(expected)):
        bad = np.argwhere(bits(actual) != bits(expected))
        first = tuple(bad[0])
        raise AssertionError(f"{what}: {len(bad)} elements differ bitwise; first at {first}: "
                             f"{actual[first]!r} vs {expected[first]!r}")


def unread_pixels(x_shape: Tuple[int, ...], w_shape: Tuple[int, ...], layout: str, stride: Any = 1,
                  padding: Any = 0, dilation: Any = 1, **_: Any) -> np.ndarray:
    """Boolean mask of x's shape: True where no window of the convolution
    reads the pixel (rows or columns a stride skips, or past the last window)."""
    if layout == "NCHW":
        (h, w), (kh, kw) = x_shape[-2:], w_shape[2:]
    else:
        (h, w), (kh, kw) = x_shape[-3:-1], w_shape[:2]
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    t, b, l, r = explicit_pads(padding, (h, w), (kh, kw), (sh, sw), (dh, dw))
    oh = (h + t + b - (kh - 1) * dh - 1) // sh + 1
    ow = (w + l + r - (kw - 1) * dw - 1) // sw + 1
    rows = np.ones(h, bool)
    cols = np.ones(w, bool)
    for o in range(min(oh, h + t + 1)):  # windows past the padded input read nothing new
        for a in range(kh):
            if 0 <= o * sh - t + a * dh < h:
                rows[o * sh - t + a * dh] = False
    for o in range(min(ow, w + l + 1)):
        for e in range(kw):
            if 0 <= o * sw - l + e * dw < w:
                cols[o * sw - l + e * dw] = False
    plane = rows[:, None] | cols[None, :]
    if layout == "NCHW":
        return np.broadcast_to(plane, x_shape)
    return np.broadcast_to(plane[:, :, None], x_shape)


def check_grads(x: np.ndarray, w: np.ndarray, gy: np.ndarray, dtype: Any, **kwargs: Any):
    """grad_input and grad_weight of one conv2d problem against the reference
    computed on float64 copies; shapes, dtype and contiguity too."""
    gx = pyconv.conv2d_grad_input(gy, w, x.shape, **kwargs)
    assert gx.shape == x.shape and gx.flags.c_contiguous
    assert_close(gx, ref.conv2d_grad_input(f64(gy), f64(w), x.shape, **kwargs), dtype)
    gw = pyconv.conv2d_grad_weight(x, gy, w.shape, **kwargs)
    assert gw.shape == w.shape and gw.flags.c_contiguous
    assert_close(gw, ref.conv2d_grad_weight(f64(x), f64(gy), w.shape, **kwargs), dtype)
    return gx, gw


def torch_or_skip():
    torch = pytest.importorskip("torch")
    return torch


# ==========================================================================
# hypothesis: conv2d_grad_input / conv2d_grad_weight against the reference


@st.composite
def int_or_pair(draw, lo: int, hi: int):
    a, b = draw(st.integers(lo, hi)), draw(st.integers(lo, hi))
    return a if a == b and draw(st.booleans()) else (a, b)


@st.composite
def paddings(draw, hi: int = 6, strings: bool = True):
    kinds = ["int", "pair", "pairs"] + (["same", "valid"] if strings else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "int":
        return draw(st.integers(0, hi))
    if kind == "pair":
        return (draw(st.integers(0, hi)), draw(st.integers(0, hi)))
    if kind == "pairs":  # asymmetric, up to far beyond the kernel's reach
        return tuple((draw(st.integers(0, hi)), draw(st.integers(0, hi))) for _ in range(2))
    return draw(st.sampled_from([kind, kind.upper()]))


@st.composite
def grad_problems(draw, dtypes=DTYPES, poison=True):
    """(x, weight, grad_out, kwargs, dtype) of a valid conv2d problem.

    Grouped (1-3 groups of 1-5 channels each way) or depthwise (groups == C,
    multiplier 1-3); kernels 1-5, strides and dilations 1-3 (int or pair),
    every padding form, sizes 1-12, batch 1-3 or an unbatched 3-D image.
    With ``poison``, the pixels no window reads may hold inf or NaN."""
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(dtypes))
    n = draw(st.one_of(st.none(), st.integers(1, 3)))
    if draw(st.booleans()):
        groups = draw(st.integers(1, 3))
        c, oc = groups * draw(st.integers(1, 5)), groups * draw(st.integers(1, 5))
    else:  # depthwise
        c = groups = draw(st.integers(1, 5))
        oc = c * draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    kwargs = dict(stride=draw(int_or_pair(1, 3)), padding=draw(paddings()),
                  dilation=draw(int_or_pair(1, 3)), groups=groups, layout=layout)
    xs = input_shape(layout, n, c, h, w)
    ws = weight_shape(layout, c, oc, kh, kw, groups)
    try:
        ys = pyconv.conv_output_shape(xs, ws, **kwargs)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rand(rng, xs, dtype)
    if poison and draw(st.booleans()):
        x = poison_unread(x, ws, kwargs, draw(st.sampled_from([np.inf, -np.inf, np.nan])))
    return x, rand(rng, ws, dtype), rand(rng, ys, dtype), kwargs, dtype


def poison_unread(x: np.ndarray, w_shape, kwargs, value: float) -> np.ndarray:
    """x with ``value`` (inf or NaN) in every pixel no window reads: the weight
    gradient does not depend on them, and must stay finite (a kernel that
    multiplies them by a zero, or reads a stale copy, makes NaN)."""
    x = x.copy()
    x[unread_pixels(x.shape, w_shape, **kwargs)] = value
    return x


@_full
@given(problem=grad_problems())
def test_grads_match_reference(isa, problem):
    x, w, gy, kwargs, dtype = problem
    _, gw = check_grads(x, w, gy, dtype, **kwargs)
    assert np.isfinite(gw).all()


@st.composite
def depthwise_grad_problems(draw):
    """Depthwise problems (groups == C, multiplier 1-3) for the depthwise
    weight-gradient kernel: output rows vectorised with a masked tail (widths
    up to ~40 around the 4/8/16 lanes), taps four at a time (1-25 taps: every
    remainder), the NHWC layout through its NCHW transposition, and unread
    pixels (stride, or past the last window) holding inf or NaN."""
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.one_of(st.none(), st.integers(1, 3)))
    c, m = draw(st.integers(1, 9)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    kwargs = dict(stride=draw(int_or_pair(1, 3)), padding=draw(paddings(hi=4)),
                  dilation=draw(int_or_pair(1, 3)), groups=c, layout=layout)
    xs = input_shape(layout, n, c, h, w)
    ws = weight_shape(layout, c, c * m, kh, kw, c)
    try:
        ys = pyconv.conv_output_shape(xs, ws, **kwargs)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rand(rng, xs, dtype)
    if draw(st.booleans()):
        x = poison_unread(x, ws, kwargs, draw(st.sampled_from([np.inf, np.nan])))
    return x, rand(rng, ws, dtype), rand(rng, ys, dtype), kwargs, dtype


@_half
@given(problem=depthwise_grad_problems())
def test_depthwise_grads_match_reference(isa, problem):
    x, w, gy, kwargs, dtype = problem
    _, gw = check_grads(x, w, gy, dtype, **kwargs)
    assert np.isfinite(gw).all()


@st.composite
def col2im_grad_problems(draw):
    """Layers with few input channels (1-4) and at least 16 output channels:
    NCHW input gradients go through one GEMM and a col2im
    (csrc/gemm/grad_input_kernels.cpp).  Kernels up to 7 (a first layer's
    7x7), strides and dilations 1-3, every padding form, images up to 40
    rows (several bands of output rows per image when the kernel is big)."""
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(DTYPES))
    n = draw(st.one_of(st.none(), st.integers(1, 2)))
    c, oc = draw(st.integers(1, 4)), draw(st.integers(16, 24))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    kwargs = dict(stride=draw(int_or_pair(1, 3)), padding=draw(paddings(hi=4)),
                  dilation=draw(int_or_pair(1, 3)), layout=layout)
    xs = input_shape(layout, n, c, h, w)
    ws = weight_shape(layout, c, oc, kh, kw, 1)
    try:
        ys = pyconv.conv_output_shape(xs, ws, **kwargs)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rand(rng, xs, dtype), rand(rng, ws, dtype), rand(rng, ys, dtype), kwargs, dtype


@_half
@given(problem=col2im_grad_problems())
def test_col2im_grad_input_matches_reference(isa, problem):
    x, w, gy, kwargs, dtype = problem
    gx = pyconv.conv2d_grad_input(gy, w, x.shape, **kwargs)
    assert gx.shape == x.shape and gx.dtype == dtype and gx.flags.c_contiguous
    assert_close(gx, ref.conv2d_grad_input(f64(gy), f64(w), x.shape, **kwargs), dtype)


# (n, c, h, w, oc, k, stride, padding, dilation): layers served by the
# GEMM + col2im input gradient in both layouts, with several bands of output rows per image
# (bands meet at rows both add into), bands as short as the kernel's reach
# allows (dilation 3), strides 1-3 and a ragged last band.
COL2IM_CASES = {
    "resnet_conv1": (1, 3, 224, 224, 64, 7, 2, 3, 1),
    "rgb_3x3_s1_two_images": (2, 3, 70, 66, 32, 3, 1, 1, 1),
    "gray_5x5_s3": (2, 1, 97, 61, 16, 5, 3, 2, 1),
    "rgba_7x7_dilated": (1, 4, 90, 45, 20, 7, 1, 9, 3),
    "rgb_4x4_s2_valid": (3, 3, 63, 80, 32, 4, 2, 0, 1),
}


def _col2im_problem(rng, case, layout, dtype):
    n, c, h, w, oc, k, stride, padding, dilation = COL2IM_CASES[case]
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, layout=layout)
    x_shape = input_shape(layout, n, c, h, w)
    wt = rand(rng, weight_shape(layout, c, oc, k, k, 1), dtype)
    gy = rand(rng, pyconv.conv_output_shape(x_shape, wt.shape, **kwargs), dtype)
    return x_shape, wt, gy, kwargs


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(COL2IM_CASES), ids=list(COL2IM_CASES))
def test_col2im_grad_input_bands(isa, rng, monkeypatch, case, layout, dtype):
    """Against the reference, through the col2im kernel (checked, not
    assumed: a spy on the native call), and bitwise identical for 1 and 2
    threads (bands in a fixed partition, even bands before odd ones)."""
    from pyconv import _grad

    x_shape, wt, gy, kwargs = _col2im_problem(rng, case, layout, dtype)
    algos = []
    native = _grad._core.conv2d_grad_input

    def spy(*args):
        algos.append(args[-1])
        return native(*args)

    monkeypatch.setattr(_grad._core, "conv2d_grad_input", spy)
    pyconv.set_num_threads(1)
    one = pyconv.conv2d_grad_input(gy, wt, x_shape, **kwargs)
    assert algos == ["col2im"]
    assert_close(one, ref.conv2d_grad_input(f64(gy), f64(wt), x_shape, **kwargs), dtype)
    pyconv.set_num_threads(2)
    assert_bitwise(pyconv.conv2d_grad_input(gy, wt, x_shape, **kwargs), one, f"{case} with 2 threads")


# (n, c, h, w, oc, k, padding, dilation): stride-1 layers with at most 16
# output channels, whose weight gradient runs with pixels in the lanes
# over padded planes (csrc/gemm/grad_weight_kernels.cpp, "frame"): LeNet's
# second layer, a single output channel, edge tiles of both kinds (oc not a
# multiple of the row block, reduction not a multiple of the column block),
# padding on every side, dilation, a frame ending mid-vector.
FRAME_GW_CASES = {
    "lenet_c2": (4, 6, 14, 14, 16, 5, 0, 1),
    "one_output": (3, 5, 11, 9, 1, 3, 1, 1),
    "oc7_same_dilated": (2, 3, 13, 21, 7, 3, "same", 2),
    "oc10_asymmetric": (2, 2, 9, 30, 10, 4, ((2, 1), (0, 3)), 1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(FRAME_GW_CASES), ids=list(FRAME_GW_CASES))
def test_grad_weight_pixel_lanes(isa, rng, case, layout, dtype):
    """Against the reference, bitwise identical for 1 and 2 threads, and
    with inf in x's last column and row: the lanes past each output row and
    past the last one read real input there, which must be masked, not
    multiplied by a zero of grad_out (NaN exactly where the reference has
    it)."""
    n, c, h, w, oc, k, padding, dilation = FRAME_GW_CASES[case]
    kwargs = dict(padding=padding, dilation=dilation, layout=layout)
    x = rand(rng, input_shape(layout, n, c, h, w), dtype)
    wt_shape = weight_shape(layout, c, oc, k, k, 1)
    gy = rand(rng, pyconv.conv_output_shape(x.shape, wt_shape, **kwargs), dtype)
    pyconv.set_num_threads(1)
    one = pyconv.conv2d_grad_weight(x, gy, wt_shape, **kwargs)
    assert_close(one, ref.conv2d_grad_weight(f64(x), f64(gy), wt_shape, **kwargs), dtype)
    pyconv.set_num_threads(2)
    assert_bitwise(pyconv.conv2d_grad_weight(x, gy, wt_shape, **kwargs), one, f"{case} with 2 threads")
    xi = act_to_nchw(x, layout).copy()
    xi[..., -1] = np.inf
    xi[..., -1, :] = -np.inf
    xi = act_to_layout(xi, layout)
    gi = pyconv.conv2d_grad_weight(xi, gy, wt_shape, **kwargs)
    with np.errstate(invalid="ignore"):
        ri = ref.conv2d_grad_weight(f64(xi), f64(gy), wt_shape, **kwargs)
    np.testing.assert_array_equal(np.isnan(gi), np.isnan(ri))
    np.testing.assert_array_equal(np.isinf(gi), np.isinf(ri))


# Depthwise 3x3 at stride 1 with the output as wide as wide input rows (the
# in-place tiles of 4 or 2 rows x 2 vectors): (n, c, multiplier, h, w, padding).
WIDE_DW_GW_CASES = {
    "m2_rows_tail": (2, 3, 2, 13, 67, 1),
    "pad_left_only": (1, 2, 1, 9, 40, ((0, 2), (2, 0))),
    "pad_right_only_taller": (2, 2, 1, 6, 48, ((2, 2), (0, 2))),
    "mobilenet_row": (1, 2, 1, 30, 112, 1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(WIDE_DW_GW_CASES), ids=list(WIDE_DW_GW_CASES))
def test_depthwise_wide_rows_grad_weight(isa, rng, case, dtype):
    """Against the reference, bitwise identical for 1 and 2 threads, and the
    reference's NaN/inf pattern with inf in x's border columns and last row
    (a tile's lanes past a row end read the next row: masked, never times a
    zero) and inf in grad_out (times the zero padding: NaN, as the padding
    gives)."""
    n, c, m, h, w, padding = WIDE_DW_GW_CASES[case]
    kwargs = dict(padding=padding, groups=c)
    x = rand(rng, (n, c, h, w), dtype)
    wt_shape = (c * m, 1, 3, 3)
    gy = rand(rng, pyconv.conv_output_shape(x.shape, wt_shape, **kwargs), dtype)
    assert gy.shape[-1] == w
    pyconv.set_num_threads(1)
    one = pyconv.conv2d_grad_weight(x, gy, wt_shape, **kwargs)
    assert_close(one, ref.conv2d_grad_weight(f64(x), f64(gy), wt_shape, **kwargs), dtype)
    pyconv.set_num_threads(2)
    assert_bitwise(pyconv.conv2d_grad_weight(x, gy, wt_shape, **kwargs), one, f"{case} with 2 threads")
    # One border at a time, so that the taps that never read it stay finite.
    variants = []
    for where in ((Ellipsis, 0), (Ellipsis, -1), (Ellipsis, -1, slice(None))):
        xi = x.copy()
        xi[where] = np.inf
        variants.append((xi, gy))
    gi = gy.copy()
    gi[0, 0, 0, 0] = np.inf
    gi[-1, -1, -1, -1] = -np.inf
    variants.append((x, gi))
    mixed = 0  # variants where some taps stay finite and some do not
    for xs, gs in variants:
        got = pyconv.conv2d_grad_weight(xs, gs, wt_shape, **kwargs)
        with np.errstate(invalid="ignore"):
            expected = ref.conv2d_grad_weight(f64(xs), f64(gs), wt_shape, **kwargs)
        mixed += bool(np.isfinite(expected).any() and not np.isfinite(expected).all())
        np.testing.assert_array_equal(np.isnan(got), np.isnan(expected))
        np.testing.assert_array_equal(np.isinf(got), np.isinf(expected))
    assert mixed >= 1


# (n, c, h, w, oc, kh, kw, stride, padding, dilation, groups): geometries the
# property may draw only rarely, each one of _axis_phases' branches.
EDGE_CASES = {
    # padding beyond the (dilated) kernel extent: outputs that read zeros only
    "pad_beyond_k1": (2, 3, 3, 4, 2, 1, 1, 1, 4, 1, 1),
    "pad_beyond_k2": (1, 2, 3, 3, 3, 2, 2, 2, 5, 1, 1),
    "pad_beyond_dilated_asym": (2, 4, 4, 5, 4, 3, 3, 2, ((7, 0), (1, 6)), 2, 2),
    # stride larger than the input (and than the padded input)
    "stride_beyond_input": (2, 3, 2, 3, 4, 1, 1, 5, 0, 1, 1),
    "stride_beyond_padded": (1, 2, 3, 2, 2, 2, 2, (7, 9), 1, 1, 1),
    "stride_huge": (2, 2, 4, 5, 3, 3, 3, 2**40, 1, 1, 1),
    # stride 3 with a 1x1 kernel: two of three rows and columns read by nothing
    "stride3_k1_unread": (2, 3, 7, 8, 2, 1, 1, 3, 0, 1, 1),
    # dilation larger than the stride / sharing a factor with it
    "dilation_gt_stride": (2, 2, 9, 9, 3, 3, 3, 2, 1, 3, 1),
    "dilation_stride_common_factor": (1, 3, 11, 12, 2, 3, 2, 2, 2, (4, 2), 1),
    # the dilated kernel exactly as large as the padded input: one output row
    "kernel_fills_input": (2, 2, 7, 6, 3, 2, 3, 1, ((0, 0), (1, 1)), (6, 2), 1),
    # "same" with stride > 1 (odd pixel at the end), depthwise multiplier 2
    "same_s3_depthwise": (2, 4, 7, 8, 8, 3, 4, 3, "same", 1, 4),
    "same_s2_d2": (1, 3, 10, 7, 5, 3, 3, 2, "SAME", 2, 1),
    # a one-pixel image
    "one_pixel": (3, 2, 1, 1, 3, 3, 3, 2, 1, 1, 1),
    # 1x1 at stride 1 without padding (the weight gradient's panels straight
    # from the planes): pixel blocks straddling images, groups, widening
    "pointwise_blocks_straddle_images": (3, 8, 13, 11, 24, 1, 1, 1, 0, 1, 1),
    "pointwise_groups": (2, 12, 20, 20, 20, 1, 1, 1, 0, 1, 4),
    "pointwise_widening": (2, 8, 17, 19, 64, 1, 1, 1, 0, 1, 1),
    # depthwise stride 1 with the output as wide as the input: flat planes on
    # AVX-512 (taps as masked shifts of the flattened plane): multiplier 2,
    # a 5x5 kernel (25 taps: passes of 12), dilation, more output rows than
    # input rows, planes of several vectors
    "flat_depthwise_m2": (3, 5, 7, 7, 10, 3, 3, 1, 1, 1, 5),
    "flat_depthwise_5x5_dilated": (2, 3, 9, 9, 3, 5, 5, 1, "same", 2, 3),
    "flat_depthwise_taller_output": (2, 4, 5, 6, 4, 3, 3, 1, ((3, 2), (1, 1)), 1, 4),
    "flat_depthwise_big_planes": (2, 3, 20, 20, 3, 3, 3, 1, 1, 1, 3),
    # depthwise through channel-blocked tiles (stride 2, or rows <= 32 and
    # at least one vector of channels): a full and a partial block with a
    # multiplier, tall planes in several bands, 25 taps (passes of 12)
    "blocked_depthwise_s2_m2": (2, 20, 13, 14, 40, 3, 3, 2, 1, 1, 20),
    "blocked_depthwise_tall_bands": (1, 33, 300, 12, 33, 3, 3, (1, 2), 1, 1, 33),
    "blocked_depthwise_5x5_dilated": (2, 17, 20, 20, 17, 5, 5, 2, "same", 2, 17),
}


@pytest.mark.parametrize("batched", [True, False], ids=["4d", "3d"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(EDGE_CASES), ids=list(EDGE_CASES))
def test_grads_edge_geometries(isa, rng, case, layout, dtype, batched):
    n, c, h, w, oc, kh, kw, stride, padding, dilation, groups = EDGE_CASES[case]
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)
    x = rand(rng, input_shape(layout, n if batched else None, c, h, w), dtype)
    wt = rand(rng, weight_shape(layout, c, oc, kh, kw, groups), dtype)
    gy = rand(rng, pyconv.conv_output_shape(x.shape, wt.shape, **kwargs), dtype)
    gx, _ = check_grads(x, wt, gy, dtype, **kwargs)
    # Independently of the reference: input pixels no window reads get exactly 0.
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    t, _, l, _ = explicit_pads(padding, (h, w), (kh, kw), (sh, sw), (dh, dw))
    gy4 = act_to_nchw(gy, layout)
    oh, ow = gy4.shape[-2:]
    read_rows = {o * sh - t + a * dh for o in range(oh) for a in range(kh)}
    read_cols = {o * sw - l + e * dw for o in range(ow) for e in range(kw)}
    gx4 = act_to_nchw(gx, layout)
    unread_r = [i for i in range(h) if i not in read_rows]
    unread_c = [j for j in range(w) if j not in read_cols]
    if unread_r:
        assert not gx4[..., unread_r, :].any()
    if unread_c:
        assert not gx4[..., unread_c].any()
    if case == "stride3_k1_unread":
        assert unread_r and unread_c  # the case does exercise empty phases
    # The weight gradient does not read those pixels either: NaN there changes nothing.
    mask = unread_pixels(x.shape, wt.shape, **kwargs)
    if mask.any():
        poisoned = poison_unread(x, wt.shape, kwargs, np.nan)
        gw = pyconv.conv2d_grad_weight(poisoned, gy, wt.shape, **kwargs)
        assert_close(gw, ref.conv2d_grad_weight(f64(x), f64(gy), wt.shape, **kwargs), dtype)


# ==========================================================================
# real layer shapes

# (n, c, h, w, oc, k, stride, padding, groups)
LAYERS = {
    "resnet_3x3_s2": (2, 32, 28, 28, 64, 3, 2, 1, 1),
    "resnet_1x1_s2_downsample": (2, 32, 28, 28, 64, 1, 2, 0, 1),
    "mobilenet_dw_3x3_s2": (2, 32, 28, 28, 32, 3, 2, 1, 32),
    "lenet_5x5": (4, 6, 14, 14, 16, 5, 1, 0, 1),
    "stem_7x7_s2": (1, 3, 32, 32, 16, 7, 2, 3, 1),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("layer", list(LAYERS), ids=list(LAYERS))
def test_grads_real_layers(isa, rng, layer, layout):
    n, c, h, w, oc, k, s, p, g = LAYERS[layer]
    kwargs = dict(stride=s, padding=p, groups=g, layout=layout)
    x = rand(rng, input_shape(layout, n, c, h, w))
    wt = rand(rng, weight_shape(layout, c, oc, k, k, g))
    gy = rand(rng, pyconv.conv_output_shape(x.shape, wt.shape, **kwargs))
    check_grads(x, wt, gy, np.float32, **kwargs)
    np.testing.assert_allclose(pyconv.conv2d_grad_bias(gy, layout=layout),
                               gy.astype(np.float64).sum(axis=(0, 2, 3) if layout == "NCHW" else (0, 1, 2)),
                               rtol=1e-4, atol=1e-3)


# ==========================================================================
# the weight-gradient kernel's pixel chunks

# N=5 images of 64 channels, 30x30, 3x3 padding 1: im2col is 5*900 pixels x
# 576 values = 10.4 MB in float32 (20.7 MB in float64), i.e. three or more
# ~4 MiB chunks.  A chunk is a multiple of the GEMM's KC (256 or 512 pixels),
# e.g. 1536 pixels for float32 NCHW: boundaries at pixels 1536 and 3072, in
# the middle of image 1 (row 21, column 6) and image 3 (row 12, column 12).
# An image is 900 = 4 * 225 pixels and a row 30 = 2 * 15, so no boundary at a
# multiple (< 15) of 256 pixels falls on the start of an image or of a row.
CHUNK_SHAPE = dict(n=5, c=64, h=30, w=30, oc=64, k=3)


def _chunk_problem(rng, layout, dtype, groups=1, stride=1):
    s = CHUNK_SHAPE
    kwargs = dict(stride=stride, padding=1, groups=groups, layout=layout)
    x = rand(rng, input_shape(layout, s["n"], s["c"], s["h"], s["w"]), dtype)
    wt = rand(rng, weight_shape(layout, s["c"], s["oc"], s["k"], s["k"], groups), dtype)
    gy = rand(rng, pyconv.conv_output_shape(x.shape, wt.shape, **kwargs), dtype)
    return x, wt, gy, kwargs


@pytest.mark.parametrize("groups", [1, 4])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_grad_weight_spans_several_chunks(isa, rng, layout, dtype, groups):
    x, wt, gy, kwargs = _chunk_problem(rng, layout, dtype, groups)
    pixels = x.shape[0] * 30 * 30
    assert pixels * (64 // groups) * groups * 9 * 4 > 8 * 2**20  # more than two 4 MiB chunks
    gw = pyconv.conv2d_grad_weight(x, gy, wt.shape, **kwargs)
    assert_close(gw, ref.conv2d_grad_weight(f64(x), f64(gy), wt.shape, **kwargs), dtype)
    # Each image's contribution is linear: the batch's gradient is the sum of
    # single-image gradients (each one or two chunks, no chunk spans images).
    per_image = sum(pyconv.conv2d_grad_weight(x[i:i + 1], gy[i:i + 1], wt.shape, **kwargs).astype(np.float64)
                    for i in range(x.shape[0]))
    assert_close(gw, per_image, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_grad_weight_several_row_blocks(isa, rng, layout, dtype):
    """dW rows beyond one GEMM row block (768 with AVX-512 float32; fewer
    on other paths): NCHW rows are 800 output channels, NHWC rows 96 * 3 * 3
    = 864 (input channel, tap) pairs; both split into blocks of a few
    hundred with edge panels, the same for 1 and 2 threads."""
    c, oc = (20, 800) if layout == "NCHW" else (96, 24)
    x = rand(rng, input_shape(layout, 2, c, 6, 7), dtype)
    wt = rand(rng, weight_shape(layout, c, oc, 3, 3, 1), dtype)
    kwargs = dict(padding=1, layout=layout)
    gy = rand(rng, pyconv.conv_output_shape(x.shape, wt.shape, **kwargs), dtype)
    pyconv.set_num_threads(1)
    one = pyconv.conv2d_grad_weight(x, gy, wt.shape, **kwargs)
    assert_close(one, ref.conv2d_grad_weight(f64(x), f64(gy), wt.shape, **kwargs), dtype)
    pyconv.set_num_threads(2)
    assert_bitwise(pyconv.conv2d_grad_weight(x, gy, wt.shape, **kwargs), one, "2 threads")


# ==========================================================================
# determinism


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_grads_bitwise_identical_for_any_thread_count(isa, rng, layout, dtype):
    """DESIGN.md: results are bitwise identical for any thread count and on
    repeated calls.  The chunk shape splits dW into several thread tiles and
    the input gradient (stride 2: four phases) into several forward calls; the
    depthwise layer splits its channels between the threads."""
    problems = {
        "gemm_s1": _chunk_problem(rng, layout, dtype, stride=1),
        "gemm_s2": _chunk_problem(rng, layout, dtype, stride=2),
    }
    kwargs = dict(stride=2, padding=1, groups=32, layout=layout)
    x = rand(rng, input_shape(layout, 4, 32, 28, 27), dtype)
    wt = rand(rng, weight_shape(layout, 32, 64, 3, 3, groups=32), dtype)
    problems["depthwise_s2"] = (x, wt, rand(rng, pyconv.conv_output_shape(x.shape, wt.shape, **kwargs), dtype), kwargs)
    # 1x1 widening the channels: more dW rows than columns in NCHW (the
    # threads split the rows), pixel blocks straddling images
    kwargs = dict(layout=layout)
    x = rand(rng, input_shape(layout, 3, 40, 13, 11), dtype)
    wt = rand(rng, weight_shape(layout, 40, 160, 1, 1, groups=1), dtype)
    problems["pointwise_widening"] = (x, wt, rand(rng, pyconv.conv_output_shape(x.shape, wt.shape, **kwargs), dtype),
                                      kwargs)

    def run():
        got = {}
        for name, (x, wt, gy, kwargs) in problems.items():
            got[name + "_grad_weight"] = pyconv.conv2d_grad_weight(x, gy, wt.shape, **kwargs)
            if name != "gemm_s1":
                got[name + "_grad_input"] = pyconv.conv2d_grad_input(gy, wt, x.shape, **kwargs)
        return got

    pyconv.set_num_threads(1)
    first = run()
    for threads in (2, 1, 2):
        pyconv.set_num_threads(threads)
        for name, a in run().items():
            assert_bitwise(a, first[name], f"{name} with {threads} threads")
    for name in ("depthwise_s2", "pointwise_widening"):
        x, wt, gy, kwargs = problems[name]
        assert_close(first[name + "_grad_weight"], ref.conv2d_grad_weight(f64(x), f64(gy), wt.shape, **kwargs), dtype)


# ==========================================================================
# conv2d_grad_bias


@pytest.mark.parametrize("dtype", DTYPES + (np.int32,))
@pytest.mark.parametrize("batched", [True, False], ids=["4d", "3d"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_grad_bias_sums_non_channel_axes(rng, layout, batched, dtype):
    c = 7
    shape = input_shape(layout, 3 if batched else None, c, 5, 6)
    gy = (rng.standard_normal(shape) * 10).astype(dtype)
    gb = pyconv.conv2d_grad_bias(gy, layout=layout)
    channel_axis = (gy.ndim - 3) if layout == "NCHW" else gy.ndim - 1
    expected = np.moveaxis(gy.astype(np.float64), channel_axis, 0).reshape(c, -1).sum(axis=1)
    out_dtype = np.float32 if dtype == np.float32 else np.float64
    assert gb.shape == (c,)
    assert_close(gb, expected, out_dtype)
    assert_close(ref.conv2d_grad_bias(gy, layout=layout), expected, out_dtype)
    # channels are not mixed: a grad_out non-zero in one channel only
    one = np.zeros(shape, dtype)
    np.moveaxis(one, channel_axis, 0)[2] = 1
    np.testing.assert_array_equal(pyconv.conv2d_grad_bias(one, layout=layout),
                                  np.eye(c)[2] * (one.size // c))


# ==========================================================================
# the adjoint identity (no oracle)


@_quarter
@given(problem=grad_problems(dtypes=(np.float64,), poison=False), with_bias=st.booleans())
def test_adjoint_identity(isa, problem, with_bias):
    """<conv2d(x, w), gy> == <x, grad_input(gy)> == <w, grad_weight(x, gy)>
    in float64, and <b, grad_bias(gy)> for the bias term: the three gradients
    are the adjoints of pyconv's own forward pass."""
    x, w, gy, kwargs, _ = problem
    y = pyconv.conv2d(x, w, **kwargs)
    gx = pyconv.conv2d_grad_input(gy, w, x.shape, **kwargs)
    gw = pyconv.conv2d_grad_weight(x, gy, w.shape, **kwargs)
    lhs, via_x, via_w = dot64(y, gy), dot64(x, gx), dot64(w, gw)
    scale = max(1.0, float(np.sum(np.abs(y) * np.abs(gy))), float(np.sum(np.abs(x) * np.abs(gx))),
                float(np.sum(np.abs(w) * np.abs(gw))))
    assert via_x == pytest.approx(lhs, rel=1e-10, abs=1e-10 * scale)
    assert via_w == pytest.approx(lhs, rel=1e-10, abs=1e-10 * scale)
    if with_bias:
        oc = w.shape[0] if kwargs["layout"] == "NCHW" else w.shape[3]
        b = np.random.default_rng(oc).standard_normal(oc)
        yb = pyconv.conv2d(x, w, b, **kwargs)
        gb = pyconv.conv2d_grad_bias(gy, layout=kwargs["layout"])
        assert dot64(yb - y, gy) == pytest.approx(dot64(b, gb), rel=1e-10, abs=1e-10 * scale)


# ==========================================================================
# the reference against PyTorch's autograd


# (n, c, h, w, oc, kh, kw, stride, padding, dilation, groups)
TORCH_CASES = {
    "plain_3x3": (2, 3, 7, 8, 4, 3, 3, 1, 1, 1, 1),
    "grouped_strided_dilated": (2, 4, 9, 7, 6, 3, 2, (2, 1), (1, 0), (1, 2), 2),
    "depthwise_m2_asym_pad": (1, 3, 6, 6, 6, 2, 3, 3, ((2, 0), (1, 3)), 1, 3),
    "same_dilated": (2, 2, 5, 5, 3, 5, 5, 1, "same", 2, 1),
    "same_stride2": (1, 3, 8, 7, 2, 3, 4, 2, "same", 1, 1),
    "pointwise_s2": (1, 4, 8, 8, 8, 1, 1, 2, 0, 1, 1),
    "stride_beyond_input": (3, 2, 4, 4, 2, 3, 3, 5, 2, 1, 1),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(TORCH_CASES), ids=list(TORCH_CASES))
def test_reference_grads_match_torch_autograd(rng, case, layout):
    """The oracle of this file against torch.nn.functional.conv2d's backward
    in float64 (asymmetric and "same" padding through an explicit F.pad)."""
    torch = torch_or_skip()
    F = torch.nn.functional
    n, c, h, w, oc, kh, kw, stride, padding, dilation, groups = TORCH_CASES[case]
    x4 = rng.standard_normal((n, c, h, w))
    w4 = rng.standard_normal((oc, c // groups, kh, kw))
    t, b, l, r = explicit_pads(padding, (h, w), (kh, kw), _pair(stride), _pair(dilation))
    tx = torch.tensor(x4, requires_grad=True)
    tw = torch.tensor(w4, requires_grad=True)
    ty = F.conv2d(F.pad(tx, (l, r, t, b)), tw, stride=stride, dilation=dilation, groups=groups)
    gy4 = rng.standard_normal(tuple(ty.shape))
    ty.backward(torch.tensor(gy4))
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)
    x, wt, gy = act_to_layout(x4, layout), w_to_layout(w4, layout), act_to_layout(gy4, layout)
    assert ref.conv2d(x, wt, **kwargs).shape == gy.shape
    assert_close(act_to_nchw(ref.conv2d(x, wt, **kwargs), layout), ty.detach().numpy(), np.float64)
    gx = ref.conv2d_grad_input(gy, wt, x.shape, **kwargs)
    gw = ref.conv2d_grad_weight(x, gy, wt.shape, **kwargs)
    assert_close(act_to_nchw(gx, layout), tx.grad.numpy(), np.float64)
    assert_close(w_to_nchw(gw, layout), tw.grad.numpy(), np.float64)
    assert_close(ref.conv2d_grad_bias(gy, layout=layout), gy4.sum(axis=(0, 2, 3)), np.float64)


# ==========================================================================
# conv_transpose2d


@st.composite
def transpose_problems(draw, dtypes=DTYPES):
    """(x, weight, bias, kwargs, dtype) of a valid conv_transpose2d call, x
    and weight in NCHW form (converted to the layout by the test)."""
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(dtypes))
    n = draw(st.one_of(st.none(), st.integers(1, 2)))
    groups = draw(st.integers(1, 3))
    cin, cout = groups * draw(st.integers(1, 4)), groups * draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    stride, dilation = draw(int_or_pair(1, 3)), draw(int_or_pair(1, 3))
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    oph = draw(st.integers(0, max(sh, dh) - 1))
    opw = draw(st.integers(0, max(sw, dw) - 1))
    output_padding = oph if oph == opw and draw(st.booleans()) else (oph, opw)
    kwargs = dict(stride=stride, padding=draw(paddings(hi=4, strings=False)), output_padding=output_padding,
                  dilation=dilation, groups=groups, layout=layout)
    x_shape = input_shape(layout, n, cin, h, w)
    w_shape = w_to_layout(np.empty((cin, cout // groups, kh, kw)), layout).shape
    try:
        pyconv.transpose_output_shape(x_shape, w_shape, **kwargs)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x4 = rand(rng, (n or 1, cin, h, w), dtype)
    w4 = rand(rng, (cin, cout // groups, kh, kw), dtype)
    b = rand(rng, (cout,), dtype) if draw(st.booleans()) else None
    return (x4 if n else x4[0]), w4, b, kwargs, dtype


def _torch_transpose(torch, x4: np.ndarray, w4: np.ndarray, b: Optional[np.ndarray], stride, padding,
                     output_padding, dilation, groups) -> np.ndarray:
    """torch's conv_transpose2d in float64 on a batched NCHW input; asymmetric
    padding as a crop of the unpadded result (padding removes rows/columns
    from the full output; output_padding adds them at the bottom/right)."""
    F = torch.nn.functional
    T = lambda a: None if a is None else torch.tensor(np.asarray(a, np.float64))  # noqa: E731
    t, bt, l, r = explicit_pads(padding, (1, 1), (1, 1), (1, 1), (1, 1))
    if t == bt and l == r:
        y = F.conv_transpose2d(T(x4), T(w4), T(b), stride=stride, padding=(t, l), output_padding=output_padding,
                               groups=groups, dilation=dilation)
        return y.numpy()
    y = F.conv_transpose2d(T(x4), T(w4), T(b), stride=stride, padding=0, output_padding=output_padding,
                           groups=groups, dilation=dilation).numpy()
    return y[:, :, t:y.shape[2] - bt, l:y.shape[3] - r]


@_half
@given(problem=transpose_problems())
def test_conv_transpose2d_matches_reference(isa, problem):
    x4, w4, b, kwargs, dtype = problem
    layout = kwargs["layout"]
    x, wt = act_to_layout(x4, layout), w_to_layout(w4, layout)
    y = pyconv.conv_transpose2d(x, wt, b, **kwargs)
    assert y.shape == pyconv.transpose_output_shape(x.shape, wt.shape, **kwargs)
    assert y.ndim == x.ndim and y.flags.c_contiguous
    assert_close(y, ref.conv_transpose2d(f64(x), f64(wt), f64(b), **kwargs), dtype)


@_half
@given(problem=transpose_problems())
def test_conv_transpose2d_matches_torch(isa, problem):
    """Against torch.nn.functional.conv_transpose2d in float64 (NHWC compared
    by transposing), and the predicted shape against torch's."""
    torch = torch_or_skip()
    x4, w4, b, kwargs, dtype = problem
    layout = kwargs["layout"]
    x, wt = act_to_layout(x4, layout), w_to_layout(w4, layout)
    y = pyconv.conv_transpose2d(x, wt, b, **kwargs)
    batched = x4.ndim == 4
    expected = _torch_transpose(torch, x4 if batched else x4[None], w4, b, kwargs["stride"], kwargs["padding"],
                                kwargs["output_padding"], kwargs["dilation"], kwargs["groups"])
    if not batched:
        expected = expected[0]
    assert_close(act_to_nchw(y, layout), expected, dtype)
    assert pyconv.transpose_output_shape(x.shape, wt.shape, **kwargs) == act_to_layout(expected, layout).shape


# (c_in, c_out, h, w, k, stride, padding, dilation, groups)
OUTPUT_SIZE_CASES = {
    "s2_k3_p1": (3, 4, 5, 6, 3, 2, 1, 1, 1),
    "s3_k2_grouped": (4, 6, 4, 3, 2, 3, 0, 1, 2),
    "s_pair_d_pair": (2, 3, 4, 5, 3, (2, 3), (1, 0), (1, 2), 1),
    "d3_gt_s1": (2, 2, 5, 4, 3, 1, 2, 3, 1),
    "d3_gt_s2": (3, 3, 4, 4, 2, 2, 1, (3, 1), 3),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(OUTPUT_SIZE_CASES), ids=list(OUTPUT_SIZE_CASES))
def test_conv_transpose2d_output_size(isa, rng, case, layout):
    """Every reachable output_size gives torch's result: torch's module
    derives output_padding < stride from output_size as we do; the sizes only
    dilation > stride makes reachable are compared with the functional form
    and the output_padding they stand for.  Sizes outside the range raise a
    ValueError that states the range."""
    torch = torch_or_skip()
    cin, cout, h, w, k, stride, padding, dilation, groups = OUTPUT_SIZE_CASES[case]
    (sh, sw), (dh, dw), (ph, pw) = _pair(stride), _pair(dilation), _pair(padding)
    x4 = rng.standard_normal((2, cin, h, w))
    w4 = rng.standard_normal((cin, cout // groups, k, k))
    b = rng.standard_normal(cout)
    mod = torch.nn.ConvTranspose2d(cin, cout, k, stride=stride, padding=padding, dilation=dilation,
                                   groups=groups, bias=True).double()
    with torch.no_grad():
        mod.weight.copy_(torch.tensor(w4))
        mod.bias.copy_(torch.tensor(b))
    base_h = (h - 1) * sh - 2 * ph + dh * (k - 1) + 1
    base_w = (w - 1) * sw - 2 * pw + dw * (k - 1) + 1
    lim_h, lim_w = max(sh, dh), max(sw, dw)
    x, wt = act_to_layout(x4, layout), w_to_layout(w4, layout)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout)
    tried_dilation_only = False
    for oh in range(base_h, base_h + lim_h):
        for ow in range(base_w, base_w + lim_w):
            y = pyconv.conv_transpose2d(x, wt, b, output_size=(oh, ow), **kwargs)
            assert y.shape == pyconv.transpose_output_shape(x.shape, wt.shape, output_size=(oh, ow), **kwargs)
            assert act_to_nchw(y, layout).shape == (2, cout, oh, ow)
            # the same through output_padding, and a full shape as output_size
            y_op = pyconv.conv_transpose2d(x, wt, b, output_padding=(oh - base_h, ow - base_w), **kwargs)
            np.testing.assert_array_equal(y, y_op)
            np.testing.assert_array_equal(
                y, pyconv.conv_transpose2d(x, wt, b, output_size=y.shape, **kwargs))
            if oh - base_h < sh and ow - base_w < sw:
                expected = mod(torch.tensor(x4), output_size=[oh, ow]).detach().numpy()
            else:  # beyond torch's module range (< stride), within max(stride, dilation)
                tried_dilation_only = True
                expected = _torch_transpose(torch, x4, w4, b, stride, padding, (oh - base_h, ow - base_w),
                                            dilation, groups)
            assert_close(act_to_nchw(y, layout), expected, np.float64)
    assert tried_dilation_only == (dh > sh or dw > sw)
    for oh, ow in ((base_h - 1, base_w), (base_h + lim_h, base_w), (base_h, base_w + lim_w)):
        with pytest.raises(ValueError, match=r"conv_transpose2d: output_size") as info:
            pyconv.conv_transpose2d(x, wt, b, output_size=(oh, ow), **kwargs)
        lo, hi = (base_h, base_h + lim_h - 1) if oh != base_h else (base_w, base_w + lim_w - 1)
        assert f"[{lo}, {hi}]" in str(info.value), str(info.value)
        with pytest.raises(ValueError, match=r"transpose_output_shape: output_size"):
            pyconv.transpose_output_shape(x.shape, wt.shape, output_size=(oh, ow), **kwargs)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_transpose2d_unbatched(isa, rng, layout, dtype):
    """A 3-D input is one image: the same values as the batch of one."""
    x4 = rand(rng, (1, 6, 5, 4), dtype)
    w4 = rand(rng, (6, 2, 3, 3), dtype)
    b = rand(rng, (4,), dtype)
    kwargs = dict(stride=2, padding=1, output_padding=1, groups=2, layout=layout)
    x, wt = act_to_layout(x4[0], layout), w_to_layout(w4, layout)
    y = pyconv.conv_transpose2d(x, wt, b, **kwargs)
    assert y.shape == pyconv.transpose_output_shape(x.shape, wt.shape, **kwargs)
    assert act_to_nchw(y, layout).shape == (4, 10, 8)
    y4 = pyconv.conv_transpose2d(act_to_layout(x4, layout), wt, b, **kwargs)
    np.testing.assert_array_equal(y, y4[0])
    assert_close(y, ref.conv_transpose2d(f64(x), f64(wt), f64(b), **kwargs), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_conv_transpose2d_is_grad_input(isa, rng, layout):
    """conv_transpose2d(gy, w) is conv2d_grad_input(gy, w) of the conv2d that
    maps the transposed output's shape back to gy's (output_padding < stride)."""
    x = rand(rng, input_shape(layout, 2, 6, 9, 10))
    wt = rand(rng, weight_shape(layout, 6, 4, 3, 3, groups=2))
    kwargs = dict(stride=2, padding=1, groups=2, layout=layout)
    gy = rand(rng, pyconv.conv_output_shape(x.shape, wt.shape, **kwargs))
    gx = pyconv.conv2d_grad_input(gy, wt, x.shape, **kwargs)
    # conv2d's weight (C_out, C_in/g, KH, KW) is conv_transpose2d's (C_in', C_out'/g, KH, KW)
    op = (0, 1)  # 9 rows and 10 columns from 5x5: one column of output_padding
    y = pyconv.conv_transpose2d(gy, wt, output_padding=op, **kwargs)
    np.testing.assert_allclose(y, gx, rtol=1e-5, atol=1e-5)


# ==========================================================================
# non-contiguous operands


@pytest.mark.parametrize("layout", LAYOUTS)
def test_non_contiguous_operands(isa, rng, layout):
    """Strided views are accepted and give the contiguous operands' results."""
    kwargs = dict(stride=2, padding=1, layout=layout)
    xs, ws = input_shape(layout, 2, 3, 9, 8), weight_shape(layout, 3, 5, 3, 3)
    x = rand(rng, xs + (2,))[..., 0]  # every other element
    wt = rand(rng, ws[::-1]).T  # Fortran order
    gy = rand(rng, pyconv.conv_output_shape(xs, ws, **kwargs) + (3,))[..., 1]
    assert not (x.flags.c_contiguous or wt.flags.c_contiguous or gy.flags.c_contiguous)
    check_grads(x, wt, gy, np.float32, **kwargs)
    np.testing.assert_array_equal(pyconv.conv2d_grad_input(gy, wt, xs, **kwargs),
                                  pyconv.conv2d_grad_input(gy.copy(), wt.copy(), xs, **kwargs))
    np.testing.assert_array_equal(pyconv.conv2d_grad_weight(x, gy, ws, **kwargs),
                                  pyconv.conv2d_grad_weight(x.copy(), gy.copy(), ws, **kwargs))
    tw = rand(rng, ws[::-1]).T  # conv_transpose2d's weight, (C_in=5 ...) read as conv2d's
    y = pyconv.conv_transpose2d(gy, tw, **kwargs)
    assert_close(y, ref.conv_transpose2d(f64(gy), f64(tw), **kwargs), np.float32)


# ==========================================================================
# dtype rule


DTYPE_CASES = [
    # (operand dtypes, result dtype)
    ((np.float32, np.float32), np.float32),
    ((np.float32, np.float64), np.float64),
    ((np.float64, np.float32), np.float64),
    ((np.float16, np.float32), np.float32),
    ((np.int32, np.int64), np.float64),
    ((np.int64, np.float32), np.float32),
    ((np.bool_, np.int8), np.float64),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtypes, expected", DTYPE_CASES,
                         ids=[f"{a.__name__}-{b.__name__}" for (a, b), _ in DTYPE_CASES])
def test_dtype_rule(rng, dtypes, expected, layout):
    """conv2d's dtype rule over the array operands of each function."""
    da, db = dtypes
    kwargs = dict(stride=2, padding=1, layout=layout)
    xs, ws = input_shape(layout, 2, 3, 6, 7), weight_shape(layout, 3, 4, 3, 3)
    ys = pyconv.conv_output_shape(xs, ws, **kwargs)

    def operand(shape, dt):
        values = rng.integers(-3, 4, size=shape) if np.dtype(dt).kind in "iub" else rng.standard_normal(shape)
        return values.astype(dt)

    # grad_input(grad_out: da, weight: db)
    gy, wt = operand(ys, da), operand(ws, db)
    gx = pyconv.conv2d_grad_input(gy, wt, xs, **kwargs)
    assert gx.dtype == expected
    assert_close(gx, ref.conv2d_grad_input(f64(gy), f64(wt), xs, **kwargs), expected)
    assert ref.conv2d_grad_input(gy, wt, xs, **kwargs).dtype == expected
    # grad_weight(x: da, grad_out: db)
    x, gy = operand(xs, da), operand(ys, db)
    gw = pyconv.conv2d_grad_weight(x, gy, ws, **kwargs)
    assert gw.dtype == expected
    assert_close(gw, ref.conv2d_grad_weight(f64(x), f64(gy), ws, **kwargs), expected)
    # conv_transpose2d(x: da, weight: db, bias: db)
    tx, tw, tb = operand(ys, da), operand(ws, db), operand((3,), db)
    y = pyconv.conv_transpose2d(tx, tw, tb, output_padding=1, **kwargs)
    assert y.dtype == expected
    assert_close(y, ref.conv_transpose2d(f64(tx), f64(tw), f64(tb), output_padding=1, **kwargs), expected)


def test_dtype_rule_bias_promotes_conv_transpose2d(rng):
    """A float64 bias alone makes the transposed convolution float64."""
    x, w = rand(rng, (1, 2, 3, 3)), rand(rng, (2, 3, 2, 2))
    b = rng.standard_normal(3)
    y = pyconv.conv_transpose2d(x, w, b, stride=2)
    assert y.dtype == np.float64
    assert_close(y, ref.conv_transpose2d(f64(x), f64(w), b, stride=2), np.float64)
    assert pyconv.conv_transpose2d(x, w, b.astype(np.float32), stride=2).dtype == np.float32
    assert pyconv.conv2d_grad_bias(np.ones((2, 3, 1, 1), np.float16)).dtype == np.float32


# ==========================================================================
# bad input

_X = np.zeros((2, 3, 6, 6), np.float32)
_W = np.zeros((4, 3, 3, 3), np.float32)
_GY = np.zeros((2, 4, 4, 4), np.float32)  # conv2d(_X, _W)'s output shape
_TW = np.zeros((3, 2, 3, 3), np.float32)  # conv_transpose2d: C_in=3 -> C_out=2

# (id, call, exception type, fragments the message must contain)
BAD_CALLS = [
    ("grad_input_grad_out_shape", lambda: pyconv.conv2d_grad_input(_GY[:, :, :3], _W, _X.shape),
     ValueError, ["conv2d_grad_input", "grad_out", r"\(2, 4, 3, 4\)"]),
    ("grad_input_grad_out_channels", lambda: pyconv.conv2d_grad_input(_GY[:, :3], _W, _X.shape),
     ValueError, ["conv2d_grad_input", "grad_out"]),
    ("grad_weight_grad_out_shape", lambda: pyconv.conv2d_grad_weight(_X, _GY[:1], _W.shape),
     ValueError, ["conv2d_grad_weight", "grad_out"]),
    ("grad_input_input_shape_channels", lambda: pyconv.conv2d_grad_input(_GY, _W, (2, 5, 6, 6)),
     ValueError, ["conv2d_grad_input", "input", "5 channels"]),
    ("grad_input_input_shape_ndim", lambda: pyconv.conv2d_grad_input(_GY, _W, (3, 6)),
     ValueError, ["conv2d_grad_input", "input"]),
    ("grad_input_input_shape_negative", lambda: pyconv.conv2d_grad_input(_GY, _W, (2, 3, -6, 6)),
     ValueError, ["conv2d_grad_input"]),
    ("grad_input_input_shape_str", lambda: pyconv.conv2d_grad_input(_GY, _W, "2x3x6x6"),
     TypeError, ["conv2d_grad_input", "input shape"]),
    ("grad_weight_weight_shape_ndim", lambda: pyconv.conv2d_grad_weight(_X, _GY, (4, 3, 3)),
     ValueError, ["conv2d_grad_weight", "weight"]),
    ("grad_weight_weight_shape_channels", lambda: pyconv.conv2d_grad_weight(_X, _GY, (4, 2, 3, 3)),
     ValueError, ["conv2d_grad_weight", "weight", "channels"]),
    ("grad_input_weight_ndim", lambda: pyconv.conv2d_grad_input(_GY, _W[0], _X.shape),
     ValueError, ["conv2d_grad_input", "weight"]),
    ("grad_weight_x_ndim", lambda: pyconv.conv2d_grad_weight(_X[0, 0], _GY, _W.shape),
     ValueError, ["conv2d_grad_weight", "input"]),
    ("grad_input_stride_float", lambda: pyconv.conv2d_grad_input(_GY, _W, _X.shape, stride=1.5),
     TypeError, ["conv2d_grad_input", "stride"]),
    ("grad_weight_stride_bool", lambda: pyconv.conv2d_grad_weight(_X, _GY, _W.shape, stride=True),
     TypeError, ["conv2d_grad_weight", "stride"]),
    ("grad_input_stride_negative", lambda: pyconv.conv2d_grad_input(_GY, _W, _X.shape, stride=-1),
     ValueError, ["conv2d_grad_input", "stride"]),
    ("grad_weight_stride_zero", lambda: pyconv.conv2d_grad_weight(_X, _GY, _W.shape, stride=(1, 0)),
     ValueError, ["conv2d_grad_weight", "stride"]),
    ("grad_weight_dilation_str", lambda: pyconv.conv2d_grad_weight(_X, _GY, _W.shape, dilation="2"),
     TypeError, ["conv2d_grad_weight", "dilation"]),
    ("grad_input_groups_mismatch", lambda: pyconv.conv2d_grad_input(_GY, _W, _X.shape, groups=2),
     ValueError, ["conv2d_grad_input", "groups"]),
    ("grad_input_layout", lambda: pyconv.conv2d_grad_input(_GY, _W, _X.shape, layout="NWHC"),
     ValueError, ["conv2d_grad_input", "layout"]),
    ("grad_input_complex", lambda: pyconv.conv2d_grad_input(_GY.astype(np.complex64), _W, _X.shape),
     TypeError, ["conv2d_grad_input", "grad_out", "complex"]),
    ("grad_weight_complex", lambda: pyconv.conv2d_grad_weight(_X.astype(np.complex128), _GY, _W.shape),
     TypeError, ["conv2d_grad_weight", r"\bx\b", "complex"]),
    ("grad_weight_none", lambda: pyconv.conv2d_grad_weight(_X, None, _W.shape),
     TypeError, ["conv2d_grad_weight", "grad_out"]),
    ("grad_bias_ndim", lambda: pyconv.conv2d_grad_bias(_GY[0, 0]),
     ValueError, ["conv2d_grad_bias", "grad_out"]),
    ("grad_bias_complex", lambda: pyconv.conv2d_grad_bias(_GY.astype(np.complex64)),
     TypeError, ["conv2d_grad_bias", "grad_out", "complex"]),
    ("transpose_padding_same", lambda: pyconv.conv_transpose2d(_X, _TW, padding="same"),
     ValueError, ["conv_transpose2d", "padding"]),
    ("transpose_padding_valid", lambda: pyconv.conv_transpose2d(_X, _TW, padding="valid"),
     ValueError, ["conv_transpose2d", "padding"]),
    ("transpose_output_padding_eq_stride", lambda: pyconv.conv_transpose2d(_X, _TW, stride=2, output_padding=2),
     ValueError, ["conv_transpose2d", "output_padding", "max\\(stride, dilation\\) = 2"]),
    ("transpose_output_padding_eq_dilation",
     lambda: pyconv.conv_transpose2d(_X, _TW, stride=(1, 2), dilation=(3, 1), output_padding=(3, 0)),
     ValueError, ["conv_transpose2d", "output_padding", r"max\(stride, dilation\) = 3", "height"]),
    ("transpose_output_padding_stride1", lambda: pyconv.conv_transpose2d(_X, _TW, output_padding=(0, 1)),
     ValueError, ["conv_transpose2d", "output_padding"]),
    ("transpose_output_padding_negative", lambda: pyconv.conv_transpose2d(_X, _TW, stride=2, output_padding=-1),
     ValueError, ["conv_transpose2d", "output_padding"]),
    ("transpose_output_size_unreachable", lambda: pyconv.conv_transpose2d(_X, _TW, stride=2, output_size=(14, 11)),
     ValueError, ["conv_transpose2d", "output_size", r"\[13, 14\]"]),
    ("transpose_output_size_too_small", lambda: pyconv.conv_transpose2d(_X, _TW, stride=2, output_size=(12, 13)),
     ValueError, ["conv_transpose2d", "output_size", r"\[13, 14\]"]),
    ("transpose_output_size_ndim", lambda: pyconv.conv_transpose2d(_X, _TW, stride=2, output_size=(13,)),
     ValueError, ["conv_transpose2d", "output_size"]),
    ("transpose_both_output_padding_and_size",
     lambda: pyconv.conv_transpose2d(_X, _TW, stride=2, output_padding=1, output_size=(14, 14)),
     ValueError, ["conv_transpose2d", "output_size", "output_padding"]),
    ("transpose_bias_shape", lambda: pyconv.conv_transpose2d(_X, _TW, np.zeros(3, np.float32)),
     ValueError, ["conv_transpose2d", "bias", r"\(2,\)"]),
    ("transpose_bias_ndim", lambda: pyconv.conv_transpose2d(_X, _TW, np.zeros((2, 1), np.float32)),
     ValueError, ["conv_transpose2d", "bias"]),
    ("transpose_complex_weight", lambda: pyconv.conv_transpose2d(_X, _TW.astype(np.complex64)),
     TypeError, ["conv_transpose2d", "weight", "complex"]),
    ("transpose_complex_bias", lambda: pyconv.conv_transpose2d(_X, _TW, np.zeros(2, np.complex64)),
     TypeError, ["conv_transpose2d", "bias", "complex"]),
    ("transpose_x_ndim", lambda: pyconv.conv_transpose2d(_X[0, 0], _TW),
     ValueError, ["conv_transpose2d", "input"]),
    ("transpose_x_5d", lambda: pyconv.conv_transpose2d(_X[None], _TW),
     ValueError, ["conv_transpose2d", "input"]),
    ("transpose_weight_channels", lambda: pyconv.conv_transpose2d(_X, _W),
     ValueError, ["conv_transpose2d", "weight", "channels"]),
    ("transpose_groups", lambda: pyconv.conv_transpose2d(_X, _TW, groups=2),
     ValueError, ["conv_transpose2d", "groups"]),
    ("transpose_stride_float", lambda: pyconv.conv_transpose2d(_X, _TW, stride=2.0),
     TypeError, ["conv_transpose2d", "stride"]),
    ("transpose_empty_output", lambda: pyconv.conv_transpose2d(_X[:, :, :1, :1], _TW, padding=2),
     ValueError, ["conv_transpose2d"]),
    ("transpose_output_shape_padding_str",
     lambda: pyconv.transpose_output_shape(_X.shape, _TW.shape, padding="same"),
     ValueError, ["transpose_output_shape", "padding"]),
    ("transpose_output_shape_output_padding",
     lambda: pyconv.transpose_output_shape(_X.shape, _TW.shape, stride=2, output_padding=(0, 2)),
     ValueError, ["transpose_output_shape", "output_padding"]),
]


@pytest.mark.parametrize("call, exc, fragments", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_bad_input(call, exc, fragments):
    with pytest.raises(exc) as info:
        call()
    assert type(info.value) is exc, repr(info.value)  # not a subclass from the binding layer
    msg = str(info.value)
    for fragment in fragments:
        assert re.search(fragment, msg), f"{fragment!r} not in {msg!r}"


REF_BAD_CALLS = [
    ("grad_input_grad_out_shape", lambda: ref.conv2d_grad_input(_GY[:, :, :3], _W, _X.shape),
     ValueError, "conv2d_grad_input"),
    ("grad_weight_weight_shape_ndim", lambda: ref.conv2d_grad_weight(_X, _GY, (4, 3, 3)),
     ValueError, "conv2d_grad_weight"),
    ("grad_input_complex", lambda: ref.conv2d_grad_input(_GY.astype(np.complex64), _W, _X.shape),
     TypeError, "conv2d_grad_input"),
    ("grad_bias_ndim", lambda: ref.conv2d_grad_bias(_GY[0, 0]), ValueError, "conv2d_grad_bias"),
    ("transpose_padding_same", lambda: ref.conv_transpose2d(_X, _TW, padding="same"),
     ValueError, "conv_transpose2d"),
    ("transpose_output_size_unreachable", lambda: ref.conv_transpose2d(_X, _TW, stride=2, output_size=(14, 11)),
     ValueError, "conv_transpose2d"),
    ("transpose_both_output_padding_and_size",
     lambda: ref.conv_transpose2d(_X, _TW, stride=2, output_padding=1, output_size=(14, 14)),
     ValueError, "conv_transpose2d"),
    ("transpose_bias_shape", lambda: ref.conv_transpose2d(_X, _TW, np.zeros(3, np.float32)),
     ValueError, "conv_transpose2d"),
]


@pytest.mark.parametrize("case, call, exc, fn", REF_BAD_CALLS, ids=[c[0] for c in REF_BAD_CALLS])
def test_reference_rejects_the_same_calls(case, call, exc, fn):
    """The reference twins refuse the same calls with the same error type,
    naming reference.<function>."""
    pyconv_call, pyconv_exc = next((c[1], c[2]) for c in BAD_CALLS if c[0] == case)
    assert pyconv_exc is exc
    with pytest.raises(exc) as expected:
        pyconv_call()
    with pytest.raises(exc) as info:
        call()
    assert str(info.value).startswith(f"reference.{fn}: "), str(info.value)
    assert str(expected.value).startswith(f"{fn}: "), str(expected.value)


# ---------------------------------------------------------------------------
# kernel-specific paths added with the training work


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_small_weight_gradient_splits_its_reduction_deterministically(layout, rng):
    """A weight gradient too small to share by tiles (LeNet's first layer:
    6x25 values) has its pixel reduction cut into a fixed number of parts;
    the parts depend on the shape only, so 1 and 2 threads agree bitwise, and
    the parts' sum matches the reference."""
    xs = (64, 1, 32, 32) if layout == "NCHW" else (64, 32, 32, 1)
    ws = (6, 1, 5, 5) if layout == "NCHW" else (5, 5, 1, 6)
    x = rng.standard_normal(xs).astype(np.float32)
    gy = rng.standard_normal(pyconv.conv_output_shape(xs, ws, layout=layout)).astype(np.float32)
    results = []
    for threads in (1, 2, 1, 2):
        with pyconv.num_threads(threads):
            results.append(pyconv.conv2d_grad_weight(x, gy, ws, layout=layout))
    for r in results[1:]:
        assert np.array_equal(r, results[0])
    ref = pyconv.reference.conv2d_grad_weight(x.astype(np.float64), gy.astype(np.float64), ws, layout=layout)
    assert_close(results[0], ref, np.float32)


@pytest.mark.parametrize("stride,multiplier", [(1, 2), (2, 1), (2, 2), (3, 1)])
def test_depthwise_input_gradient_non_finite_weight(isa, rng, stride, multiplier):
    """The depthwise input-gradient kernel (NCHW, stride > 1 or multiplier >
    1) adds whole vectors of taps: lanes past an output row must not add
    0 * w, which is NaN for an infinite w.  Non-finite weights give exactly
    the reference's inf/NaN pattern.  (Stride 1 with multiplier 1 runs as a
    forward convolution over zero-padded grad_out, where a non-finite tap
    meeting the padding gives NaN as in the forward pass; README notes it.)"""
    c, h, w = 3, 11, 13
    wt = rng.standard_normal((c * multiplier, 1, 3, 3))
    wt[0, 0, 1, 1] = np.inf
    wt[-1, 0, 0, 2] = np.nan
    xs = (2, c, h, w)
    gy = rng.standard_normal(pyconv.conv_output_shape(xs, wt.shape, stride, 1, 1, c))
    got = pyconv.conv2d_grad_input(gy, wt, xs, stride, 1, 1, c)
    ref = pyconv.reference.conv2d_grad_input(gy, wt, xs, stride, 1, 1, c)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(got), np.isinf(ref))
    finite = np.isfinite(ref)
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-10, atol=1e-10 * max(1, np.abs(ref[finite]).max()))


# ==========================================================================
# the transposed problem's weight, made in C++ for the input-gradient phases


def _phase_weight_numpy(w, groups, layout, row_taps, col_taps):
    if layout == "NCHW":
        oc, cg, kh, kw = w.shape
        og = oc // groups
        wt = w.reshape(groups, og, cg, kh, kw).transpose(0, 2, 1, 3, 4).reshape(groups * cg, og, kh, kw)
        return wt[:, :, list(row_taps)][:, :, :, list(col_taps)]
    kh, kw, cg, oc = w.shape
    og = oc // groups
    wt = w.reshape(kh, kw, cg, groups, og).transpose(0, 1, 4, 3, 2).reshape(kh, kw, og, groups * cg)
    return wt[list(row_taps)][:, list(col_taps)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("oc, cg, kh, kw, groups, row_taps, col_taps", [
    (8, 5, 3, 3, 1, (2, 1, 0), (2, 1, 0)),        # stride 1: every tap, flipped
    (6, 4, 3, 3, 2, (2, 0), (1,)),                # a stride-2 phase, grouped
    (3, 7, 1, 1, 1, (0,), (0,)),                  # 1x1: one tap, stores overlap 15 kernels ahead
    (1, 3, 1, 1, 1, (0,), (0,)),                  # one kernel per row: only the masked store
    (70, 150, 1, 1, 1, (0,), (0,)),               # 1x1 NCHW: a matrix transpose, blocks of 64 channels
    (6, 130, 1, 1, 2, (0,), (0,)),                # ... per group, a partial last block
    (17, 2, 4, 4, 1, (3, 1), (2, 0)),             # 16 taps loaded, 4 kept
    (4, 3, 5, 5, 1, (4, 3, 2, 1, 0), (4, 2, 0)),  # 25 taps: more than a vector
    (10, 3, 7, 7, 5, (6, 4, 2, 0), (5, 3, 1)),
])
def test_phase_weight_matches_numpy(isa, rng, layout, dtype, oc, cg, kh, kw, groups, row_taps, col_taps):
    from pyconv._grad import _phase_weight

    w = rand(rng, weight_shape(layout, cg * groups, oc, kh, kw, groups), dtype)
    got = _phase_weight(w, groups, layout, row_taps, col_taps)
    expected = _phase_weight_numpy(w, groups, layout, row_taps, col_taps)
    assert got.flags.c_contiguous and got.dtype == w.dtype
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c, oc, n, h, w", [
    (1, 5, 1, 3, 3), (2, 8, 3, 7, 9), (3, 32, 2, 20, 20), (4, 13, 2, 5, 33), (3, 17, 1, 1, 1),
])
def test_thin_pointwise_weight_gradient(isa, rng, dtype, c, oc, n, h, w):
    """1x1 NCHW layers with at most 4 input channels: dot products of whole
    planes (pixels in the lanes, a masked tail), against the reference, and
    bitwise the same for 1 and 2 threads."""
    x = rand(rng, (n, c, h, w), dtype)
    gy = rand(rng, (n, oc, h, w), dtype)
    gw = pyconv.conv2d_grad_weight(x, gy, (oc, c, 1, 1))
    assert_close(gw, ref.conv2d_grad_weight(f64(x), f64(gy), (oc, c, 1, 1)), dtype)
    with pyconv.num_threads(1):
        one = pyconv.conv2d_grad_weight(x, gy, (oc, c, 1, 1))
    np.testing.assert_array_equal(gw, one)
    # unbatched input: the same sums
    gw3 = pyconv.conv2d_grad_weight(x[0], gy[0], (oc, c, 1, 1))
    assert_close(gw3, ref.conv2d_grad_weight(f64(x[:1]), f64(gy[:1]), (oc, c, 1, 1)), dtype)
