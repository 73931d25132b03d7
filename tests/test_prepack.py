"""pyconv.prepack: packed weights give bitwise the results of plain weights."""

from __future__ import annotations

import numpy as np
import pytest

import pyconv
from conftest import assert_close, conv_inputs, reference64

SHAPES = [
    # (n, c, h, w, oc, kh, kw, groups, kwargs)
    (2, 6, 13, 11, 8, 3, 3, 2, dict(padding=1, stride=2)),
    (1, 64, 12, 12, 70, 3, 3, 1, dict(padding="same")),
    (2, 300, 9, 9, 20, 1, 1, 1, {}),
    (1, 5, 7, 7, 33, 2, 3, 1, dict(dilation=2, padding=((1, 0), (2, 1)))),
]


@pytest.mark.parametrize("case", SHAPES)
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
@pytest.mark.parametrize("algo", ["auto", "direct", "im2col"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_prepacked_equals_plain(isa, rng, case, layout, algo, dtype):
    n, c, h, w, oc, kh, kw, groups, kwargs = case
    x, wt, b = conv_inputs(rng, n=n, c=c, h=h, w=w, oc=oc, kh=kh, kw=kw, groups=groups,
                           layout=layout, dtype=dtype, bias=True)
    pw = pyconv.prepack(wt, groups, layout=layout)
    kw_all = dict(kwargs, groups=groups, layout=layout, activation="relu")
    plain = pyconv.conv2d(x, wt, b, algo=algo, **kw_all)
    packed = pyconv.conv2d(x, pw, b, algo=algo, **kw_all)
    again = pyconv.conv2d(x, pw, b, algo=algo, **kw_all)
    assert np.array_equal(plain, packed)
    assert np.array_equal(packed, again)
    assert_close(packed, reference64(x, wt, b, **kw_all), dtype)


def test_pointwise_with_prepacked(isa, rng):
    x, wt, _ = conv_inputs(rng, n=2, c=40, h=9, w=9, oc=24, kh=1, kw=1, groups=1,
                           layout="NHWC", dtype=np.float32, bias=False)
    pw = pyconv.prepack(wt, layout="NHWC")
    y = pyconv.conv2d(x, pw, layout="NHWC", algo="pointwise", stride=2)
    assert np.array_equal(y, pyconv.conv2d(x, wt, layout="NHWC", algo="pointwise", stride=2))


def test_prepack_is_a_snapshot(rng):
    """Changing the original array never changes what the packed weight computes."""
    x, wt, _ = conv_inputs(rng, n=1, c=16, h=10, w=10, oc=16, kh=3, kw=3, groups=1,
                           layout="NCHW", dtype=np.float32, bias=False)
    pw = pyconv.prepack(wt)
    before = pyconv.conv2d(x, pw, padding=1, algo="im2col")
    wt *= 2.0
    after = pyconv.conv2d(x, pw, padding=1, algo="im2col")
    assert np.array_equal(before, after)
    assert not np.array_equal(after, pyconv.conv2d(x, wt, padding=1, algo="im2col"))
    assert not pw.weight.flags.writeable


def test_prepacked_dtype_promotion(rng):
    x, wt, _ = conv_inputs(rng, n=1, c=3, h=6, w=6, oc=4, kh=3, kw=3, groups=1,
                           layout="NCHW", dtype=np.float32, bias=False)
    pw = pyconv.prepack(wt)
    assert pyconv.conv2d(x, pw).dtype == np.float32
    assert pyconv.conv2d(x.astype(np.float64), pw).dtype == np.float64
    pw_int = pyconv.prepack(np.ones((4, 3, 3, 3), np.int32))
    assert pyconv.conv2d(x, pw_int).dtype == np.float32  # int weight: x decides
    assert pw_int.dtype == np.int32


def test_prepacked_shared_between_threads(rng):
    import concurrent.futures

    x, wt, _ = conv_inputs(rng, n=2, c=32, h=12, w=12, oc=40, kh=3, kw=3, groups=1,
                           layout="NCHW", dtype=np.float32, bias=False)
    pw = pyconv.prepack(wt)
    expected = pyconv.conv2d(x, wt, padding=1, algo="im2col")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: pyconv.conv2d(x, pw, padding=1, algo="im2col"), range(16)))
    assert all(np.array_equal(r, expected) for r in results)


@pytest.mark.parametrize("call, exc, match", [
    (lambda: pyconv.prepack(np.ones((4, 3, 3)), 1), ValueError, "4-D"),
    (lambda: pyconv.prepack(np.ones((4, 3, 3, 3)), 3), ValueError, "groups=3"),
    (lambda: pyconv.prepack(np.ones((4, 3, 3, 3)), 0), ValueError, "groups"),
    (lambda: pyconv.prepack(np.ones((4, 3, 3, 3)), 1.5), TypeError, "groups"),
    (lambda: pyconv.prepack(np.ones((4, 3, 3, 3)), layout="NCWH"), ValueError, "layout"),
    (lambda: pyconv.prepack(np.ones((4, 3, 3, 3), complex)), TypeError, "complex"),
    (lambda: pyconv.prepack(np.ones((0, 3, 3, 3))), ValueError, "empty"),
    (lambda: pyconv.conv2d(np.ones((1, 3, 5, 5)), pyconv.prepack(np.ones((4, 3, 3, 3))), layout="NHWC"),
     ValueError, "prepacked for layout"),
    (lambda: pyconv.conv2d(np.ones((1, 4, 5, 5)), pyconv.prepack(np.ones((4, 2, 3, 3)), 2), groups=1),
     ValueError, "prepacked for groups=2"),
])
def test_prepack_bad_calls(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
