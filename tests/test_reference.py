"""The oracle's oracles: pyconv.reference.conv2d against a loop-by-loop
implementation written here, and against PyTorch when it is installed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import pyconv
import pyconv.reference as ref
from conftest import LAYOUTS, assert_close, conv_inputs, reference64

# ==========================================================================
# a naive convolution, straight from the definition


def naive_pads(h, w, kh, kw, stride, padding, dilation):
    """(top, bottom, left, right), written out independently of pyconv."""
    (sh, sw), (dh, dw) = stride, dilation
    if padding == "valid":
        return 0, 0, 0, 0
    if padding == "same":
        def axis(size, k, s, d):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            return total // 2, total - total // 2
        return axis(h, kh, sh, dh) + axis(w, kw, sw, dw)
    (t, b), (l, r) = padding
    return t, b, l, r


def naive_conv2d(x, w, bias=None, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=(1, 1), groups=1,
                 activation=None):
    """Batched NCHW x, OIHW w; every output element summed term by term."""
    n_, c, h, wd = x.shape
    oc, cg, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    t, b, l, r = naive_pads(h, wd, kh, kw, stride, padding, dilation)
    oh = (h + t + b - (kh - 1) * dh - 1) // sh + 1
    ow = (wd + l + r - (kw - 1) * dw - 1) // sw + 1
    og = oc // groups
    y = np.zeros((n_, oc, oh, ow))
    for n in range(n_):
        for o in range(oc):
            g = o // og
            for i in range(oh):
                for j in range(ow):
                    acc = 0.0 if bias is None else float(bias[o])
                    for ci in range(cg):
                        for p in range(kh):
                            for q in range(kw):
                                row = i * sh + p * dh - t
                                col = j * sw + q * dw - l
                                if 0 <= row < h and 0 <= col < wd:
                                    acc += float(x[n, g * cg + ci, row, col]) * float(w[o, ci, p, q])
                    if activation in ("relu", "relu6"):
                        acc = max(acc, 0.0)
                    if activation == "relu6":
                        acc = min(acc, 6.0)
                    y[n, o, i, j] = acc
    return y


def test_naive_conv2d_by_hand():
    """The naive oracle itself, on numbers worked out on paper."""
    x = np.arange(1, 10, dtype=float).reshape(1, 1, 3, 3)   # 1..9
    w = np.array([[1.0, 0.0], [0.0, -1.0]]).reshape(1, 1, 2, 2)
    # y[i, j] = x[i, j] - x[i+1, j+1] = -4 everywhere
    np.testing.assert_array_equal(naive_conv2d(x, w), np.full((1, 1, 2, 2), -4.0))
    # padding 1 on every side, stride 2: windows at (-1,-1), (-1,1), (1,-1), (1,1)
    y = naive_conv2d(x, w, stride=(2, 2), padding=((1, 1), (1, 1)))
    np.testing.assert_array_equal(y[0, 0], [[-1.0, -3.0], [-7.0, 5.0 - 9.0]])
    # dilation 2 on a 3x3: one window, x[0,0] - x[2,2]
    np.testing.assert_array_equal(naive_conv2d(x, w, dilation=(2, 2)), [[[[1.0 - 9.0]]]])
    # two groups: each output channel sees only its own input channel
    x2 = np.stack([np.ones((2, 2)), 10 * np.ones((2, 2))])[None]
    w2 = np.ones((2, 1, 1, 1))
    np.testing.assert_array_equal(naive_conv2d(x2, w2, groups=2, bias=np.array([0.5, -100.0]),
                                               activation="relu"), [[np.full((2, 2), 1.5), np.zeros((2, 2))]])


def _to_pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@st.composite
def tiny_problems(draw):
    groups = draw(st.integers(1, 3))
    c = groups * draw(st.integers(1, 2))
    oc = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = draw(st.one_of(st.integers(1, 3), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    dilation = draw(st.one_of(st.integers(1, 2), st.tuples(st.integers(1, 2), st.integers(1, 2))))
    padding = draw(st.one_of(
        st.sampled_from(["valid", "same"]),
        st.tuples(st.tuples(st.integers(0, 2), st.integers(0, 2)), st.tuples(st.integers(0, 2), st.integers(0, 2))),
    ))
    dh, dw = _to_pair(dilation)
    h = draw(st.integers((kh - 1) * dh + 1, 6))
    w = draw(st.integers((kw - 1) * dw + 1, 6))
    n = draw(st.integers(1, 2))
    layout = draw(st.sampled_from(LAYOUTS))
    bias = draw(st.booleans())
    activation = draw(st.sampled_from([None, "relu", "relu6"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x, wt, b = conv_inputs(rng, n=n, c=c, h=h, w=w, oc=oc, kh=kh, kw=kw, groups=groups, layout=layout,
                           dtype=np.float64, bias=bias)
    return x, wt, b, dict(stride=stride, padding=padding, dilation=dilation, groups=groups, layout=layout,
                          activation=activation)


def _naive(x, wt, b, stride, padding, dilation, groups, layout, activation):
    if layout == "NHWC":
        x, wt = x.transpose(0, 3, 1, 2), wt.transpose(3, 2, 0, 1)
    y = naive_conv2d(x, wt, b, _to_pair(stride), padding, _to_pair(dilation), groups, activation)
    return y if layout == "NCHW" else y.transpose(0, 2, 3, 1)


@given(problem=tiny_problems())
def test_reference_matches_naive_loops(problem):
    x, wt, b, kwargs = problem
    expected = _naive(x, wt, b, **kwargs)
    assert_close(ref.conv2d(x, wt, b, **kwargs), expected, np.float64)
    # and the float32 reference is a float32 rounding of the same thing
    assert_close(ref.conv2d(x.astype(np.float32), wt.astype(np.float32),
                            None if b is None else b.astype(np.float32), **kwargs),
                 _naive(x.astype(np.float32).astype(float), wt.astype(np.float32).astype(float),
                        None if b is None else b.astype(np.float32).astype(float), **kwargs), np.float32)


@given(problem=tiny_problems())
def test_pyconv_matches_naive_loops(problem):
    """pyconv directly against the loops, skipping the middleman."""
    x, wt, b, kwargs = problem
    assert_close(pyconv.conv2d(x, wt, b, **kwargs), _naive(x, wt, b, **kwargs), np.float64)


# ==========================================================================
# PyTorch as a second oracle


def torch_conv2d(x, wt, b=None, stride=1, padding=0, dilation=1, groups=1, layout="NCHW",
                 activation=None):
    """torch.nn.functional.conv2d in float64, with "same" and asymmetric pads
    applied explicitly (torch's own "same" refuses stride > 1)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.asarray(x, np.float64)
    wt = np.asarray(wt, np.float64)
    batched = x.ndim == 4
    if not batched:
        x = x[None]
    if layout == "NHWC":
        x, wt = x.transpose(0, 3, 1, 2), wt.transpose(3, 2, 0, 1)
    h, w = x.shape[2:]
    kh, kw = wt.shape[2:]
    if isinstance(padding, int):
        padding = ((padding, padding), (padding, padding))
    elif isinstance(padding, tuple) and isinstance(padding[0], int):
        padding = ((padding[0], padding[0]), (padding[1], padding[1]))
    t, bo, l, r = naive_pads(h, w, kh, kw, _to_pair(stride), padding, _to_pair(dilation))
    tx = F.pad(torch.from_numpy(np.ascontiguousarray(x)), (l, r, t, bo))
    tb = None if b is None else torch.from_numpy(np.asarray(b, np.float64))
    y = F.conv2d(tx, torch.from_numpy(np.ascontiguousarray(wt)), tb, stride=stride, dilation=dilation,
                 groups=groups)
    if activation == "relu":
        y = F.relu(y)
    elif activation == "relu6":
        y = F.relu6(y)
    y = y.numpy()
    if layout == "NHWC":
        y = y.transpose(0, 2, 3, 1)
    return y if batched else y[0]


# (n, c, h, w, oc, kh, kw, kwargs)
TORCH_CASES = [
    (2, 3, 11, 10, 5, 3, 3, dict(padding=1)),
    (1, 4, 9, 12, 6, 2, 4, dict(stride=2, padding="same")),
    (2, 6, 10, 10, 6, 3, 3, dict(stride=(2, 1), padding=((0, 2), (1, 0)), groups=3)),
    (1, 8, 12, 11, 8, 3, 3, dict(padding="same", dilation=2, groups=8)),
    (1, 4, 12, 11, 12, 5, 5, dict(stride=3, padding="same", dilation=(1, 2), groups=4)),
    (3, 5, 7, 9, 7, 1, 1, dict(stride=2)),
    (1, 3, 32, 32, 20, 8, 8, dict(stride=2, padding=1)),
    (None, 6, 8, 8, 4, 3, 3, dict(padding="valid", groups=2, layout="NHWC", activation="relu6")),
    (2, 4, 16, 15, 24, 3, 3, dict(padding=(2, 1), dilation=(2, 1), layout="NHWC", activation="relu")),
]


def _torch_case(rng, case, dtype):
    n, c, h, w, oc, kh, kw, kwargs = case
    x, wt, b = conv_inputs(rng, n=n, c=c, h=h, w=w, oc=oc, kh=kh, kw=kw, groups=kwargs.get("groups", 1),
                           layout=kwargs.get("layout", "NCHW"), dtype=dtype, bias=True)
    return x, wt, b, kwargs


@pytest.mark.parametrize("case", TORCH_CASES)
def test_reference_matches_torch(rng, case):
    x, wt, b, kwargs = _torch_case(rng, case, np.float64)
    assert_close(ref.conv2d(x, wt, b, **kwargs), torch_conv2d(x, wt, b, **kwargs), np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", TORCH_CASES[:6])
def test_pyconv_matches_torch(isa, rng, case, dtype):
    x, wt, b, kwargs = _torch_case(rng, case, dtype)
    expected = torch_conv2d(x, wt, b, **kwargs)  # float64 on the same (rounded) values
    assert_close(pyconv.conv2d(x, wt, b, **kwargs), expected, dtype)


def test_reference_is_fast_enough_for_layer_shapes(rng):
    """DESIGN.md: the reference checks real layer shapes well under a second
    (here a ResNet 3x3 layer at a quarter of its size, float32)."""
    import time

    x, wt, _ = conv_inputs(rng, n=1, c=64, h=28, w=28, oc=64, kh=3, kw=3)
    start = time.perf_counter()
    y = ref.conv2d(x, wt, padding=1)
    assert time.perf_counter() - start < 5.0  # generous: shared CI machines
    assert_close(y, reference64(x, wt, padding=1), np.float32)
