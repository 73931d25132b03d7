"""pyconv.conv2d against pyconv.reference.conv2d, on every available ISA.

One shared tester (``check_conv``) serves the hypothesis properties, the real
layer shapes, the textbook cases and the padding rules.  The rest of the
API contract (dtypes, layouts, array-likes, ``out=``, ``algo=``) is in
test_conv2d_api.py.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import pyconv
import pyconv.reference as ref
from conftest import (
    DTYPES,
    LAYOUTS,
    assert_close,
    check_conv,
    conv_inputs,
    input_shape,
    rand,
    reference64,
    weight_shape,
)


# ==========================================================================
# hypothesis properties over the whole parameter space


def _pad_lower_bound(padding: Any, axis: int) -> int:
    """Padding (before + after) along ``axis`` that a padding spec guarantees."""
    if isinstance(padding, str):
        return 0
    if isinstance(padding, int):
        return 2 * padding
    if isinstance(padding[0], tuple):
        return sum(padding[axis])
    return 2 * padding[axis]


int_or_pair = lambda lo, hi: st.one_of(  # noqa: E731
    st.integers(lo, hi), st.tuples(st.integers(lo, hi), st.integers(lo, hi))
)

paddings = st.one_of(
    st.integers(0, 3),
    st.tuples(st.integers(0, 3), st.integers(0, 3)),
    st.tuples(st.tuples(st.integers(0, 3), st.integers(0, 3)),
              st.tuples(st.integers(0, 3), st.integers(0, 3))),
    st.sampled_from(["valid", "same", "SAME"]),
)


@st.composite
def channel_configs(draw):
    """(C_in, C_out, groups): dense, grouped, or depthwise with a multiplier."""
    kind = draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    if kind == "dense":
        # up to 20 output channels: tails of 4/8/16-lane vectors and 2-vector blocks
        return draw(st.integers(1, 5)), draw(st.integers(1, 20)), 1
    if kind == "grouped":
        g = draw(st.integers(2, 4))
        return g * draw(st.integers(1, 3)), g * draw(st.integers(1, 10)), g
    c = draw(st.integers(1, 20))
    return c, c * draw(st.integers(1, 3)), c


@st.composite
def conv_problems(draw):
    """A valid conv2d call (non-empty output) as (x, weight, bias, kwargs)."""
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(DTYPES))
    c, oc, groups = draw(channel_configs())
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    stride = draw(int_or_pair(1, 3))
    dilation = draw(int_or_pair(1, 3))
    padding = draw(paddings)
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    # the smallest sizes whose output is not empty, then a little more
    min_h = max(1, (kh - 1) * dh + 1 - _pad_lower_bound(padding, 0))
    min_w = max(1, (kw - 1) * dw + 1 - _pad_lower_bound(padding, 1))
    h = draw(st.integers(min_h, min_h + 8))
    w = draw(st.integers(min_w, min_w + 14))
    n = draw(st.one_of(st.none(), st.integers(1, 3)))  # None: unbatched 3-D input
    bias = draw(st.booleans())
    activation = draw(st.sampled_from([None, "relu", "relu6"]))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    x, wt, b = conv_inputs(rng, n=n, c=c, h=h, w=w, oc=oc, kh=kh, kw=kw, groups=groups,
                           layout=layout, dtype=dtype, bias=bias)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups,
                  layout=layout, activation=activation)
    return x, wt, b, kwargs


# (n, c, h, w, oc, k, stride, padding, dilation, groups): the direct
# kernel's 6x4 tiles (AVX-512: groups of >= 64 float32 or >= 32 float64
# output channels, rows of >= 32 pixels): a full and a partial block of 4
# vectors, two groups, rows of 32-41 pixels (tiles of 6 and narrower),
# stride, dilation, bias and activation.
WIDE_TILE_CASES = {
    "oc64_row32": (1, 5, 6, 32, 64, 3, 1, 1, 1, 1),
    "oc80_partial_block": (2, 7, 5, 35, 80, 3, 1, "same", 1, 1),
    "oc130_two_blocks": (1, 3, 4, 41, 130, 2, 1, 0, 1, 1),
    "groups2_oc64_each": (1, 6, 5, 33, 128, 3, 1, 1, 1, 2),
    "stride2_dilated": (1, 4, 9, 80, 72, 3, 2, 2, 2, 1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(WIDE_TILE_CASES), ids=list(WIDE_TILE_CASES))
def test_direct_wide_channel_tiles(isa, rng, case, layout, dtype):
    n, c, h, w, oc, k, stride, padding, dilation, groups = WIDE_TILE_CASES[case]
    x, wt, b = conv_inputs(rng, n=n, c=c, h=h, w=w, oc=oc, kh=k, kw=k, groups=groups, layout=layout,
                           dtype=dtype, bias=True)
    check_conv(x, wt, b, dtype=dtype, algo="direct", stride=stride, padding=padding, dilation=dilation,
               groups=groups, layout=layout, activation="relu")
    packed = pyconv.prepack(wt, groups=groups, layout=layout)
    np.testing.assert_array_equal(
        pyconv.conv2d(x, packed, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      layout=layout, activation="relu", algo="direct"),
        pyconv.conv2d(x, wt, b, stride=stride, padding=padding, dilation=dilation, groups=groups,
                      layout=layout, activation="relu", algo="direct"))


# (n, c, h, w, oc, k, padding, dilation): stride-1 layers with fewer output
# channels than a vector, which the direct kernel runs with pixels in
# the lanes over zero-padded NCHW planes ("frame" tiles; NHWC input is
# transposed into them) when the padded rows are
# wide enough (AVX-512 float32: all of them; narrower vectors: some): 1-11
# channels (two blocks above 8, balanced), a frame ending mid-vector, rows
# narrower than a vector, asymmetric padding, dilation, 1x1 (NCHW only: an
# NHWC 1x1 layer keeps its channel tiles, checked here all the same).
FRAME_CASES = {
    "lenet_gi_16to6_5x5": (3, 16, 10, 10, 6, 5, 4, 1),
    "head_64to3": (1, 64, 23, 29, 3, 3, 1, 1),
    "one_channel": (2, 5, 9, 33, 1, 3, "same", 1),
    "oc7_dilated": (2, 3, 17, 19, 7, 3, 2, 2),
    "oc9_two_blocks": (1, 4, 12, 40, 9, 3, ((1, 2), (0, 1)), 1),
    "oc11_two_blocks_5x5": (2, 3, 9, 70, 11, 5, 2, 1),
    "narrow_rows_1x1": (4, 6, 5, 3, 2, 1, 0, 1),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(FRAME_CASES), ids=list(FRAME_CASES))
def test_direct_pixel_lane_tiles(isa, rng, case, layout, dtype):
    """Against the reference (bias and activation fused), bitwise equal
    across thread counts and for prepacked weights, and bitwise equal to the
    channel-lane tiles (the same layer with zero filters appended, 16 output
    channels: same terms in the same order).  Inputs in the last column
    are inf: the frame lanes past each row must not carry them into a
    valid pixel."""
    n, c, h, w, oc, k, padding, dilation = FRAME_CASES[case]
    x, wt, b = conv_inputs(rng, n=n, c=c, h=h, w=w, oc=oc, kh=k, kw=k, layout=layout, dtype=dtype, bias=True)
    kwargs = dict(padding=padding, dilation=dilation, layout=layout, activation="relu", algo="direct")
    y = check_conv(x, wt, b, dtype=dtype, **kwargs)
    nchw = layout == "NCHW"
    zeros = np.zeros(((16 - oc,) + wt.shape[1:]) if nchw else (wt.shape[:3] + (16 - oc,)), dtype)
    wide = np.concatenate([wt, zeros], axis=0 if nchw else 3)
    yw = pyconv.conv2d(x, wide, np.concatenate([b, np.zeros(16 - oc, dtype)]), **kwargs)
    np.testing.assert_array_equal(yw[:, :oc] if nchw else yw[..., :oc], y)
    np.testing.assert_array_equal(pyconv.conv2d(x, pyconv.prepack(wt, layout=layout), b, **kwargs), y)
    pyconv.set_num_threads(1)
    np.testing.assert_array_equal(pyconv.conv2d(x, wt, b, **kwargs), y)
    xi = x.copy()
    if nchw:
        xi[..., -1] = np.inf
    else:
        xi[:, :, -1, :] = np.inf
    yi = pyconv.conv2d(xi, wt, b, **kwargs)
    with np.errstate(invalid="ignore"):  # inf - inf in the oracle too
        ri = reference64(xi, wt, b, **{k: v for k, v in kwargs.items() if k != "algo"})
    np.testing.assert_array_equal(np.isnan(yi), np.isnan(ri))
    np.testing.assert_array_equal(np.isinf(yi), np.isinf(ri))


# (c, oc, k): the direct kernel's OIHW weight packing, which transposes
# chunks of (input channel, tap) columns through a stack tile of 256
# columns: chunks of 28 input channels and a ragged last one (3x3), 10
# (5x5), one (16x16: exactly 256 taps), and kernels beyond the tile (17x17:
# element by element); partial blocks of output channels.
PACK_CASES = [(70, 40, 3), (23, 17, 5), (3, 20, 16), (2, 9, 17)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c, oc, k", PACK_CASES)
def test_direct_weight_packing_chunks(isa, rng, c, oc, k, dtype):
    x, wt, b = conv_inputs(rng, n=1, c=c, h=k + 2, w=k + 3, oc=oc, kh=k, kw=k, dtype=dtype, bias=True)
    check_conv(x, wt, b, dtype=dtype, algo="direct", padding=1)


@given(problem=conv_problems())
def test_conv2d_matches_reference(isa, problem):
    x, wt, b, kwargs = problem
    y = check_conv(x, wt, b, dtype=x.dtype, **kwargs)
    assert y.ndim == x.ndim
    if kwargs["activation"] is not None:
        assert y.min() >= 0
    if kwargs["activation"] == "relu6":
        assert y.max() <= 6


@pytest.mark.parametrize("algo", ["direct", "im2col"])
@given(problem=conv_problems())
def test_conv2d_algo_matches_reference(isa, algo, problem):
    """The same property for each algorithm that serves every shape (the
    property above only sees the one "auto" picks)."""
    x, wt, b, kwargs = problem
    y = check_conv(x, wt, b, dtype=x.dtype, algo=algo, **kwargs)
    assert y.ndim == x.ndim


@st.composite
def pointwise_problems(draw):
    """A 1x1, groups=1, unpadded conv2d: what algo="pointwise" serves.  Any
    stride (which subsamples the input); "same" with a 1x1 kernel pads nothing."""
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(DTYPES))
    c = draw(st.one_of(st.integers(1, 40), st.sampled_from([127, 128, 129, 255, 256, 257])))
    oc = draw(st.one_of(st.integers(1, 40), st.sampled_from([4, 6, 8, 12, 16, 32, 33, 47, 49])))
    stride = draw(int_or_pair(1, 3))
    dilation = draw(int_or_pair(1, 3))  # no effect on a 1x1 kernel
    padding = draw(st.sampled_from([0, (0, 0), ((0, 0), (0, 0)), "valid", "same"]))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 20))
    n = draw(st.one_of(st.none(), st.integers(1, 3)))
    bias = draw(st.booleans())
    activation = draw(st.sampled_from([None, "relu", "relu6"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x, wt, b = conv_inputs(rng, n=n, c=c, h=h, w=w, oc=oc, kh=1, kw=1, layout=layout, dtype=dtype,
                           bias=bias)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, layout=layout, activation=activation)
    return x, wt, b, kwargs


@pytest.mark.parametrize("algo", ["pointwise", "im2col"])
@given(problem=pointwise_problems())
def test_pointwise_matches_reference(isa, algo, problem):
    x, wt, b, kwargs = problem
    y = check_conv(x, wt, b, dtype=x.dtype, algo=algo, **kwargs)
    assert y.ndim == x.ndim
    if kwargs["activation"] == "relu6":
        assert y.min() >= 0 and y.max() <= 6


# Reductions (C_in/groups * KH * KW) near every ISA's KC (128, 256, 512) and
# beyond, output channels past MR/NR (and MC for the smallest), so the GEMM
# accumulates across K blocks and meets partial tiles in every dimension.
_K_TARGETS = [1, 127, 128, 129, 255, 256, 257, 383, 511, 512, 513, 600]


@st.composite
def wide_problems(draw):
    """A conv2d with many channels and a small image (the reference stays fast)."""
    layout = draw(st.sampled_from(LAYOUTS))
    dtype = draw(st.sampled_from(DTYPES))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    groups = draw(st.sampled_from([1, 1, 1, 2, 3]))
    taps = kh * kw
    target = draw(st.one_of(st.integers(1, 600), st.sampled_from(_K_TARGETS)))
    icg = max(1, target // taps) + draw(st.integers(0, 1))  # K = icg*taps lands on or next to target
    ocg = draw(st.one_of(st.integers(1, 70 // groups),
                         st.sampled_from([v // groups for v in (6, 7, 12, 13, 16, 17, 32, 33, 49, 70)
                                          if v >= groups])))
    stride = draw(int_or_pair(1, 2))
    dilation = draw(int_or_pair(1, 2))
    padding = draw(paddings)
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    min_h = max(1, (kh - 1) * dh + 1 - _pad_lower_bound(padding, 0))
    min_w = max(1, (kw - 1) * dw + 1 - _pad_lower_bound(padding, 1))
    h = draw(st.integers(min_h, min_h + 5))
    w = draw(st.integers(min_w, min_w + 6))
    n = draw(st.one_of(st.none(), st.integers(1, 2)))
    bias = draw(st.booleans())
    activation = draw(st.sampled_from([None, "relu", "relu6"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x, wt, b = conv_inputs(rng, n=n, c=icg * groups, h=h, w=w, oc=ocg * groups, kh=kh, kw=kw,
                           groups=groups, layout=layout, dtype=dtype, bias=bias)
    kwargs = dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout,
                  activation=activation)
    return x, wt, b, kwargs


@given(problem=wide_problems())
def test_wide_channels_gemm_matches_reference(isa, problem):
    """algo="im2col" (and "pointwise" where it serves) with K across KC blocks."""
    x, wt, b, kwargs = problem
    y = check_conv(x, wt, b, dtype=x.dtype, algo="im2col", **kwargs)
    assert y.ndim == x.ndim
    pads = pyconv.plan(x.shape, wt.shape, **{k: v for k, v in kwargs.items() if k != "activation"})["pads"]
    kh, kw = wt.shape[2:] if kwargs["layout"] == "NCHW" else wt.shape[:2]
    if kh == kw == 1 and kwargs["groups"] == 1 and not any(pads):
        check_conv(x, wt, b, dtype=x.dtype, algo="pointwise", **kwargs)


@given(problem=conv_problems())
def test_conv2d_reference_keeps_dtype_and_shape(problem):
    """The oracle in the operands' own dtype agrees with its float64 self."""
    x, wt, b, kwargs = problem
    r = ref.conv2d(x, wt, b, **kwargs)
    assert r.dtype == x.dtype
    assert r.shape == ref.conv_output_shape(
        x.shape, wt.shape, **{k: v for k, v in kwargs.items() if k != "activation"})
    assert_close(r, reference64(x, wt, b, **kwargs), x.dtype)


@given(layout=st.sampled_from(LAYOUTS), k=st.integers(2, 5), d=st.integers(1, 3),
       pads=st.tuples(st.integers(0, 2), st.integers(0, 2)), data=st.data())
def test_empty_output_raises(layout, k, d, pads, data):
    """A dilated kernel larger than the padded input is a ValueError everywhere."""
    ek = (k - 1) * d + 1
    assume(ek - sum(pads) > 1)
    h = data.draw(st.integers(1, ek - sum(pads) - 1))
    w = data.draw(st.integers(ek, ek + 3))
    x = np.ones(input_shape(layout, 1, 2, h, w), np.float32)
    wt = np.ones(weight_shape(layout, 2, 3, k, k), np.float32)
    padding = (pads, (0, 0))
    for fn in (pyconv.conv2d, ref.conv2d):
        with pytest.raises(ValueError, match="empty|larger"):
            fn(x, wt, padding=padding, dilation=d, layout=layout)
    for fn in (pyconv.conv_output_shape, ref.conv_output_shape):
        with pytest.raises(ValueError, match="empty|larger"):
            fn(x.shape, wt.shape, padding=padding, dilation=d, layout=layout)


# ==========================================================================
# real layer shapes (the benchmark suite), float32, every ISA

# name: (N, C_in, H, W, C_out, kernel, stride, padding, groups)
LAYER_SHAPES = {
    "lenet_c1": (32, 1, 32, 32, 6, 5, 1, 0, 1),
    "lenet_c2": (32, 6, 14, 14, 16, 5, 1, 0, 1),
    "vgg16_c1_2": (1, 64, 224, 224, 64, 3, 1, 1, 1),
    "vgg16_c3_1": (1, 128, 56, 56, 256, 3, 1, 1, 1),
    "vgg16_c5_1": (8, 512, 14, 14, 512, 3, 1, 1, 1),
    "resnet50_conv1": (1, 3, 224, 224, 64, 7, 2, 3, 1),
    "resnet50_res2_1x1": (1, 64, 56, 56, 256, 1, 1, 0, 1),
    "resnet50_res2_3x3": (1, 64, 56, 56, 64, 3, 1, 1, 1),
    "resnet50_res3_3x3s2": (1, 128, 56, 56, 128, 3, 2, 1, 1),
    "resnet50_res4_1x1": (8, 1024, 14, 14, 256, 1, 1, 0, 1),
    "resnet50_res5_3x3": (8, 512, 7, 7, 512, 3, 1, 1, 1),
    "mbv1_dw_112": (1, 32, 112, 112, 32, 3, 1, 1, 32),
    "mbv1_dw_56s2": (1, 128, 56, 56, 128, 3, 2, 1, 128),
    "mbv1_dw_7": (8, 1024, 7, 7, 1024, 3, 1, 1, 1024),
    "mbv1_pw_14": (8, 512, 14, 14, 512, 1, 1, 0, 1),
    "fcn_sep_dw_s2": (8, 3, 160, 160, 3, 3, 2, "same", 3),
    "fcn_sep_pw": (8, 3, 80, 80, 32, 1, 1, 0, 1),
}

# The float64 reference runs at ~1.5 GMAC/s.  The biggest layers are cropped:
# H and W are halved (which keeps their parity, so stride-2 and "same" edge
# behaviour is unchanged) until one image costs at most this many
# multiply-adds, about a third of a second of reference time.  Channels,
# kernel, stride, padding and groups are kept exactly; N is reduced to 1.
MAX_TEST_MACS = 5e8


def test_layer_shape_table_is_complete():
    assert len(LAYER_SHAPES) == 17
    for n, c, h, w, oc, k, s, p, g in LAYER_SHAPES.values():
        assert c % g == 0 and oc % g == 0


def _test_size(name: str):
    n, c, h, w, oc, k, s, p, g = LAYER_SHAPES[name]
    while -(-h // s) * -(-w // s) * oc * (c // g) * k * k > MAX_TEST_MACS and h > 2 * k:
        h, w = h // 2, w // 2
    return c, h, w, oc, k, s, p, g


@functools.lru_cache(maxsize=None)
def _layer_case(name: str):
    """Operands (NCHW, float32) and the float64 reference, computed once."""
    c, h, w, oc, k, s, p, g = _test_size(name)
    rng = np.random.default_rng(sum(name.encode()))
    x, wt, b = conv_inputs(rng, n=1, c=c, h=h, w=w, oc=oc, kh=k, kw=k, groups=g, bias=True)
    r = reference64(x, wt, b, stride=s, padding=p, groups=g)
    return x, wt, b, r


def _layer_algos(name: str):
    """"auto", "im2col" (serves every layer) and "pointwise" for 1x1 layers."""
    _, _, _, _, _, k, _, p, g = LAYER_SHAPES[name]
    return ["auto", "im2col"] + (["pointwise"] if k == 1 and g == 1 and p == 0 else [])


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name, algo", [(n, a) for n in LAYER_SHAPES for a in _layer_algos(n)])
def test_layer_shapes(isa, name, algo, layout):
    _, _, _, _, _, s, p, g = _test_size(name)
    x, wt, b, r = _layer_case(name)
    if layout == "NHWC":
        x, wt, r = x.transpose(0, 2, 3, 1).copy(), wt.transpose(2, 3, 1, 0).copy(), r.transpose(0, 2, 3, 1)
    y = pyconv.conv2d(x, wt, b, stride=s, padding=p, groups=g, layout=layout, algo=algo)
    assert_close(y, r, np.float32)


def test_layer_algos_cover_pointwise():
    assert sum("pointwise" in _layer_algos(n) for n in LAYER_SHAPES) >= 2


@pytest.mark.parametrize("name", list(LAYER_SHAPES))
def test_layer_output_shapes_at_full_size(name):
    """The real (uncropped, full batch) layer's output shape and flops."""
    n, c, h, w, oc, k, s, p, g = LAYER_SHAPES[name]
    if p == "same":
        oh, ow = -(-h // s), -(-w // s)
    else:
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
    assert pyconv.conv_output_shape((n, c, h, w), (oc, c // g, k, k), stride=s, padding=p,
                                    groups=g) == (n, oc, oh, ow)
    plan = pyconv.plan((n, h, w, c), (k, k, c // g, oc), stride=s, padding=p, groups=g, layout="NHWC")
    assert plan["out_shape"] == (n, oh, ow, oc)
    assert plan["flops"] == 2 * n * oc * oh * ow * (c // g) * k * k


def test_layer_shapes_with_real_batch(isa):
    """Two layers at their real batch size (N=8 and N=32): the batch loop too."""
    rng = np.random.default_rng(8)
    x, wt, b = conv_inputs(rng, n=8, c=3, h=40, w=40, oc=3, kh=3, kw=3, groups=3, bias=True)
    check_conv(x, wt, b, dtype=np.float32, stride=2, padding="same", groups=3)
    x, wt, b = conv_inputs(rng, n=32, c=6, h=14, w=14, oc=16, kh=5, kw=5, bias=True)
    check_conv(x, wt, b, dtype=np.float32)


# ==========================================================================
# textbook cases


@pytest.mark.parametrize("fn", [pyconv.conv2d, ref.conv2d], ids=["pyconv", "reference"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_vertical_edge_detector(isa, fn, layout, dtype):
    image = np.array([[10, 10, 10, 0, 0, 0]] * 6, dtype=dtype)
    edge = np.array([[1, 0, -1]] * 3, dtype=dtype)
    x = image[None, None] if layout == "NCHW" else image[None, :, :, None]
    wt = edge[None, None] if layout == "NCHW" else edge[:, :, None, None]
    y = fn(x, wt, layout=layout)
    assert y.dtype == dtype
    assert y.shape == (1, 1, 4, 4) if layout == "NCHW" else (1, 4, 4, 1)
    np.testing.assert_array_equal(y.reshape(4, 4), [[0, 30, 30, 0]] * 4)


@pytest.mark.parametrize("fn", [pyconv.conv2d, ref.conv2d], ids=["pyconv", "reference"])
@pytest.mark.parametrize("padding, size", [(1, 14), ("same", 16)])
@pytest.mark.parametrize("layout, batched", [("NHWC", False), ("NHWC", True), ("NCHW", False),
                                             ("NCHW", True)])
def test_cs231n_example(isa, rng, fn, padding, size, layout, batched):
    """32x32x3 input, 20 filters of 8x8, stride 2: 14x14x20 (pad 1), 16x16x20 (same)."""
    x = rand(rng, input_shape(layout, 2 if batched else None, 3, 32, 32))
    wt = rand(rng, weight_shape(layout, 3, 20, 8, 8))
    expected = (size, size, 20) if layout == "NHWC" else (20, size, size)
    if batched:
        expected = (2,) + expected
    for shape_fn in (pyconv.conv_output_shape, ref.conv_output_shape):
        assert shape_fn(x.shape, wt.shape, stride=2, padding=padding, layout=layout) == expected
    y = fn(x, wt, stride=2, padding=padding, layout=layout)
    assert y.shape == expected
    assert_close(y, reference64(x, wt, stride=2, padding=padding, layout=layout), np.float32)


def test_conv_output_shape_examples():
    assert pyconv.conv_output_shape((1, 3, 32, 32), (20, 3, 8, 8), stride=2, padding=1) == (1, 20, 14, 14)
    assert pyconv.conv_output_shape((32, 32, 3), (8, 8, 3, 20), stride=2, padding="same",
                                    layout="NHWC") == (16, 16, 20)
    assert pyconv.conv_output_shape((2, 4, 9, 7), (6, 2, 3, 2), stride=(2, 1), padding=((0, 1), (2, 0)),
                                    dilation=(1, 3), groups=2) == (2, 6, 4, 6)
    out = pyconv.conv_output_shape(np.array([1, 3, 5, 5]), [2, 3, 3, 3])
    assert out == (1, 2, 3, 3) and all(type(v) is int for v in out)


# ==========================================================================
# "same" padding (TensorFlow SAME)


def tf_same(size: int, k: int, stride: int, dilation: int):
    """TensorFlow's rule, written independently of pyconv: (before, after)."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (k - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


# (size, kernel, stride, dilation) -> (before, after), worked out by hand
SAME_CASES = [
    ((5, 3, 1, 1), (1, 1)),
    ((6, 4, 1, 1), (1, 2)),   # even kernel: odd pixel after
    ((6, 2, 1, 1), (0, 1)),
    ((6, 3, 2, 1), (0, 1)),   # stride 2 on even size
    ((5, 3, 2, 1), (1, 1)),
    ((8, 2, 2, 1), (0, 0)),   # no padding needed
    ((7, 1, 2, 1), (0, 0)),
    ((4, 5, 1, 1), (2, 2)),   # kernel larger than the input
    ((6, 3, 1, 2), (2, 2)),   # dilation
    ((7, 4, 3, 1), (1, 2)),
    ((160, 3, 2, 1), (0, 1)),  # fcn_sep_dw_s2
    ((224, 7, 2, 1), (2, 3)),
]


@pytest.mark.parametrize("args, expected", SAME_CASES)
def test_same_padding_rule(args, expected):
    assert tf_same(*args) == expected


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("hargs, wargs", [(a, b) for (a, _), (b, _) in zip(SAME_CASES, SAME_CASES[1:] + SAME_CASES[:1])])
def test_plan_same_pads(hargs, wargs, layout):
    (h, kh, sh, dh), (w, kw, sw, dw) = hargs, wargs
    xs = input_shape(layout, 1, 2, h, w)
    ws = weight_shape(layout, 2, 3, kh, kw)
    p = pyconv.plan(xs, ws, stride=(sh, sw), padding="same", dilation=(dh, dw), layout=layout)
    assert p["pads"] == tf_same(h, kh, sh, dh) + tf_same(w, kw, sw, dw)
    oh, ow = math.ceil(h / sh), math.ceil(w / sw)
    assert p["out_shape"] == ((1, 3, oh, ow) if layout == "NCHW" else (1, oh, ow, 3))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("h, w, kh, kw, stride, dilation", [
    (6, 6, 3, 3, 2, 1), (6, 7, 2, 4, 2, 1), (8, 8, 4, 4, 2, 1), (7, 9, 3, 2, (3, 2), 1),
    (9, 8, 3, 3, 1, 2), (5, 5, 5, 4, 1, 1), (10, 11, 2, 2, (2, 3), (2, 1)), (3, 2, 5, 5, 2, 1),
])
def test_same_equals_explicit_asymmetric_padding(isa, rng, layout, dtype, h, w, kh, kw, stride, dilation):
    x, wt, b = conv_inputs(rng, n=2, c=3, h=h, w=w, oc=5, kh=kh, kw=kw, layout=layout, dtype=dtype,
                           bias=True)
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    explicit = (tf_same(h, kh, sh, dh), tf_same(w, kw, sw, dw))
    kwargs = dict(stride=stride, dilation=dilation, layout=layout)
    y_same = check_conv(x, wt, b, dtype=dtype, padding="same", **kwargs)
    y_explicit = check_conv(x, wt, b, dtype=dtype, padding=explicit, **kwargs)
    np.testing.assert_array_equal(y_same, y_explicit)
    spatial = y_same.shape[2:] if layout == "NCHW" else y_same.shape[1:3]
    assert spatial == (math.ceil(h / sh), math.ceil(w / sw))


def test_same_odd_pixel_goes_bottom_right(isa):
    """A 2x2 all-ones kernel on a one-hot image: "same" pads only bottom/right."""
    x = np.zeros((1, 1, 4, 4), np.float64)
    x[0, 0, 0, 0] = 1.0
    y = pyconv.conv2d(x, np.ones((1, 1, 2, 2)), padding="same")
    expected = np.zeros((4, 4))
    expected[0, 0] = 1.0  # with top/left padding the 1 would reach y[1, 1] too
    np.testing.assert_array_equal(y[0, 0], expected)


@pytest.mark.parametrize("padding, pads", [
    (0, (0, 0, 0, 0)), (2, (2, 2, 2, 2)), ((1, 3), (1, 1, 3, 3)), ([1, 2], (1, 1, 2, 2)),
    (((0, 1), (2, 3)), (0, 1, 2, 3)), ([[3, 0], [0, 1]], (3, 0, 0, 1)), ("valid", (0, 0, 0, 0)),
    ("VALID", (0, 0, 0, 0)), (np.int64(1), (1, 1, 1, 1)),
])
def test_padding_forms(isa, rng, padding, pads):
    p = pyconv.plan((1, 2, 7, 6), (3, 2, 3, 2), padding=padding)
    assert p["pads"] == pads
    x, wt, _ = conv_inputs(rng, n=1, c=2, h=7, w=6, oc=3, kh=3, kw=2)
    y = check_conv(x, wt, dtype=np.float32, padding=padding)
    t, b_, l, r = pads
    xp = np.pad(x, ((0, 0), (0, 0), (t, b_), (l, r)))  # padding done by hand
    assert_close(y, reference64(xp, wt), np.float32)


# ==========================================================================
# bias and activations, spelled out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_bias_and_activations(isa, dtype, layout):
    """Values around 0 and 6 with a bias that moves them across both clamps."""
    x = np.array([-8.0, -1.0, 0.0, 0.5, 5.5, 6.0, 7.0, 20.0], dtype).reshape(1, 1, 2, 4)
    wt = np.array([1.0, -1.0, 2.0], dtype).reshape(3, 1, 1, 1)
    b = np.array([0.5, 0.0, -1.0], dtype)
    if layout == "NHWC":
        x, wt = x.transpose(0, 2, 3, 1).copy(), wt.transpose(2, 3, 1, 0).copy()
    lin = reference64(x, wt, b, layout=layout)
    for act, expected in ((None, lin), ("relu", np.maximum(lin, 0)), ("relu6", np.clip(lin, 0, 6)),
                          ("RELU6", np.clip(lin, 0, 6))):
        y = pyconv.conv2d(x, wt, b, layout=layout, activation=act)
        np.testing.assert_array_equal(y, expected.astype(dtype))
    assert (lin < 0).any() and (lin > 6).any()
