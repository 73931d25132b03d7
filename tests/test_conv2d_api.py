"""conv2d's API contract (DESIGN.md): dtype promotion, layouts and unbatched
input, non-contiguous and DLPack inputs, ``out=`` and ``algo=``; every
numerical check goes through the float64 reference, on every ISA."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

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
# dtype promotion


@pytest.mark.parametrize("xd, wd, bd, expected", [
    ("float32", "float32", None, "float32"),
    ("float32", "float32", "float32", "float32"),
    ("float64", "float32", None, "float64"),
    ("float32", "float64", None, "float64"),
    ("float32", "float32", "float64", "float64"),
    ("float64", "float64", "float64", "float64"),
    ("float16", "float16", None, "float32"),
    ("float16", "float32", "float16", "float32"),
    ("float16", "float64", None, "float64"),
    ("int32", "int64", None, "float64"),
    ("uint8", "int8", "int16", "float64"),
    ("bool", "int32", None, "float64"),
    ("bool", "bool", None, "float64"),
    ("int32", "float32", None, "float32"),
    ("int64", "float32", "int64", "float32"),
    ("float32", "int32", None, "float32"),
    ("int16", "int16", "float32", "float32"),
    ("int32", "float16", None, "float32"),
])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_dtype_promotion(isa, rng, xd, wd, bd, expected, layout):
    # small integers: exact in every dtype, so the reference is exact too
    x = rng.integers(-3, 4, size=input_shape(layout, 2, 3, 6, 5)).astype(xd)
    wt = rng.integers(-2, 3, size=weight_shape(layout, 3, 4, 3, 2)).astype(wd)
    b = None if bd is None else rng.integers(-5, 6, size=4).astype(bd)
    for fn in (pyconv.conv2d, ref.conv2d):
        y = fn(x, wt, b, padding=1, layout=layout)
        assert y.dtype == np.dtype(expected)
        assert_close(y, reference64(x, wt, b, padding=1, layout=layout), expected)


def test_python_lists_are_float64(isa):
    y = pyconv.conv2d([[[[1, 2], [3, 4]]]], [[[[1]]]], [0.5])
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, [[[[1.5, 2.5], [3.5, 4.5]]]])


def test_float16_values_are_used_exactly(isa):
    x = np.array([[[[0.1, 1000.0, -3.3]]]], np.float16)
    wt = np.array([[[[1.0]]]], np.float16)
    y = pyconv.conv2d(x, wt)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, x.astype(np.float32))


@pytest.mark.parametrize("which", ["x", "weight", "bias"])
@pytest.mark.parametrize("bad", [
    np.complex64, np.complex128, object, "U3", "S3", "datetime64[s]",
], ids=["complex64", "complex128", "object", "str", "bytes", "datetime"])
@pytest.mark.parametrize("fn", [pyconv.conv2d, ref.conv2d], ids=["pyconv", "reference"])
def test_bad_dtypes_raise_type_error(fn, which, bad):
    args = {"x": np.ones((1, 2, 4, 4)), "weight": np.ones((3, 2, 3, 3)), "bias": np.ones(3)}
    args[which] = np.zeros(args[which].shape, dtype=bad)
    with pytest.raises(TypeError, match=rf"conv2d: {which} "):
        fn(args["x"], args["weight"], args["bias"])


# ==========================================================================
# layouts, unbatched input, non-contiguous input, array-likes


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_unbatched_input_gives_unbatched_output(isa, rng, layout, dtype):
    x, wt, b = conv_inputs(rng, n=None, c=4, h=9, w=8, oc=6, kh=3, kw=3, groups=2, layout=layout,
                           dtype=dtype, bias=True)
    kwargs = dict(stride=2, padding="same", groups=2, layout=layout, activation="relu")
    y = check_conv(x, wt, b, dtype=dtype, **kwargs)
    assert y.shape == ((6, 5, 4) if layout == "NCHW" else (5, 4, 6))
    np.testing.assert_array_equal(y, pyconv.conv2d(x[None], wt, b, **kwargs)[0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_agree(isa, rng, dtype):
    """NHWC on transposed operands is NCHW's result transposed."""
    x, wt, b = conv_inputs(rng, n=2, c=6, h=11, w=10, oc=9, kh=3, kw=4, groups=3, dtype=dtype, bias=True)
    kwargs = dict(stride=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2), groups=3)
    y_nchw = pyconv.conv2d(x, wt, b, **kwargs)
    y_nhwc = pyconv.conv2d(x.transpose(0, 2, 3, 1), wt.transpose(2, 3, 1, 0), b, layout="NHWC", **kwargs)
    assert_close(y_nhwc, y_nchw.transpose(0, 2, 3, 1).astype(np.float64), dtype)
    assert_close(y_nchw, reference64(x, wt, b, **kwargs), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("view", ["transposed", "negative_strides", "sliced", "fortran"])
def test_non_contiguous_inputs(isa, rng, layout, dtype, view):
    x, wt, b = conv_inputs(rng, n=2, c=4, h=13, w=12, oc=5, kh=3, kw=2, layout=layout, dtype=dtype,
                           bias=True)
    if view == "transposed":  # the same values, stored in the other layout
        perm = (0, 3, 1, 2) if layout == "NCHW" else (0, 2, 3, 1)
        inv = np.argsort(perm)
        xv = np.ascontiguousarray(x.transpose(inv)).transpose(perm)
        wv = np.asfortranarray(wt)
    elif view == "negative_strides":
        xv = np.ascontiguousarray(x[::-1, ::-1, ::-1, ::-1])[::-1, ::-1, ::-1, ::-1]
        wv = np.ascontiguousarray(wt[::-1, :, ::-1])[::-1, :, ::-1]
    elif view == "sliced":
        big = rand(rng, tuple(2 * s + 1 for s in x.shape), dtype)
        big[1::2, 1::2, 1::2, 1::2] = x
        xv = big[1::2, 1::2, 1::2, 1::2]
        bigw = rand(rng, wt.shape[:-1] + (wt.shape[-1] * 3,), dtype)
        bigw[..., ::3] = wt
        wv = bigw[..., ::3]
    else:
        xv, wv = np.asfortranarray(x), np.asfortranarray(wt)
    bv = np.repeat(b, 2)[::2]
    assert not xv.flags.c_contiguous and not wv.flags.c_contiguous and not bv.flags.c_contiguous
    np.testing.assert_array_equal(xv, x)
    np.testing.assert_array_equal(wv, wt)
    kwargs = dict(stride=(1, 2), padding=(1, 0), layout=layout)
    y = pyconv.conv2d(xv, wv, bv, **kwargs)
    np.testing.assert_array_equal(y, pyconv.conv2d(x, wt, b, **kwargs))
    assert_close(y, reference64(x, wt, b, **kwargs), dtype)
    np.testing.assert_array_equal(ref.conv2d(xv, wv, bv, **kwargs), ref.conv2d(x, wt, b, **kwargs))


def _misaligned_copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` whose data pointer is not element-aligned."""
    buf = np.zeros(a.nbytes + 1, np.uint8)
    out = buf[1:].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def _read_only_copy(a: np.ndarray) -> np.ndarray:
    out = a.copy()
    out.flags.writeable = False
    return out


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("groups", [1, 8])
@pytest.mark.parametrize("kind", ["read_only", "broadcast", "misaligned"])
def test_unusual_input_buffers(isa, rng, kind, groups, dtype, layout):
    """Read-only, zero-stride and unaligned operands; no padding, so NHWC
    input may be read in place by the kernel."""
    x, wt, b = conv_inputs(rng, n=2, c=8, h=9, w=11, oc=8, kh=3, kw=3, groups=groups, layout=layout,
                           dtype=dtype, bias=True)
    if kind == "read_only":
        xv, wv, bv = _read_only_copy(x), _read_only_copy(wt), _read_only_copy(b)
    elif kind == "broadcast":  # both images the same, zero stride on N
        xv = np.broadcast_to(x[:1], x.shape)
        x = np.ascontiguousarray(xv)
        wv, bv = wt, np.broadcast_to(b[:1], b.shape)
        b = bv.copy()
    else:
        xv, wv, bv = _misaligned_copy(x), _misaligned_copy(wt), _misaligned_copy(b)
        assert not xv.flags.aligned
    kwargs = dict(groups=groups, layout=layout, activation="relu")
    y = pyconv.conv2d(xv, wv, bv, **kwargs)
    np.testing.assert_array_equal(y, pyconv.conv2d(x, wt, b, **kwargs))
    assert_close(y, reference64(x, wt, b, **kwargs), dtype)


def _peak_traced_bytes(fn) -> int:
    """Peak bytes allocated through Python/NumPy allocators while fn() runs
    (the C++ kernels' own workspace is not traced)."""
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        fn()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        if started:
            tracemalloc.stop()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_contiguous_input_is_not_copied(layout, dtype):
    """A C-contiguous input of the computation dtype is passed as is; a
    non-contiguous one is copied (which shows the measurement can see a copy)."""
    x = np.ones(input_shape(layout, 1, 32, 128, 128), dtype)  # 2 or 4 MiB
    wt = np.ones(weight_shape(layout, 32, 1, 1, 1), dtype)     # -> a small output
    out = np.empty(pyconv.conv_output_shape(x.shape, wt.shape, layout=layout), dtype)
    pyconv.conv2d(x, wt, layout=layout, out=out)  # warm-up
    copied = _peak_traced_bytes(lambda: pyconv.conv2d(x, wt, layout=layout, out=out))
    assert copied < x.nbytes // 4
    xf = np.asfortranarray(x)
    copied_f = _peak_traced_bytes(lambda: pyconv.conv2d(xf, wt, layout=layout, out=out))
    assert copied_f >= x.nbytes
    assert np.all(out == 32)


class DLPackOnly:
    """An array-like that only speaks DLPack (no __array__, no buffer)."""

    def __init__(self, array: np.ndarray):
        self._array = array

    def __dlpack__(self, *args, **kwargs):
        return self._array.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dlpack_object_input(isa, rng, layout):
    x, wt, b = conv_inputs(rng, n=2, c=3, h=7, w=7, oc=4, kh=3, kw=3, layout=layout, bias=True)
    y = pyconv.conv2d(DLPackOnly(x), DLPackOnly(wt), DLPackOnly(b), padding=1, layout=layout)
    np.testing.assert_array_equal(y, pyconv.conv2d(x, wt, b, padding=1, layout=layout))
    r = ref.conv2d(DLPackOnly(x), DLPackOnly(wt), DLPackOnly(b), padding=1, layout=layout)
    np.testing.assert_array_equal(r, ref.conv2d(x, wt, b, padding=1, layout=layout))


@pytest.mark.parametrize("dtype", DTYPES)
def test_torch_tensor_input(isa, rng, dtype):
    torch = pytest.importorskip("torch")
    x, wt, b = conv_inputs(rng, n=2, c=4, h=9, w=9, oc=6, kh=3, kw=3, groups=2, dtype=dtype, bias=True)
    kwargs = dict(stride=2, padding=1, groups=2)
    tx, tw, tb = torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(b)
    y = pyconv.conv2d(tx, tw, tb, **kwargs)
    assert isinstance(y, np.ndarray) and y.dtype == dtype
    np.testing.assert_array_equal(y, pyconv.conv2d(x, wt, b, **kwargs))
    # a non-contiguous tensor (NHWC storage viewed as NCHW)
    txv = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 3, 1))).permute(0, 3, 1, 2)
    assert not txv.is_contiguous()
    np.testing.assert_array_equal(pyconv.conv2d(txv, tw, tb, **kwargs), y)
    # torch's own answer
    expected = torch.nn.functional.conv2d(tx, tw, tb, **kwargs).numpy()
    assert_close(y, expected.astype(np.float64), dtype)


# ==========================================================================
# out=


def _out_problem(rng, dtype=np.float32):
    x, wt, b = conv_inputs(rng, n=2, c=4, h=8, w=8, oc=4, kh=3, kw=3, dtype=dtype, bias=True)
    return x, wt, b, dict(padding=1)  # output shape == input shape (2, 4, 8, 8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_out_is_written_and_returned(isa, rng, dtype, layout):
    x, wt, b = conv_inputs(rng, n=None, c=3, h=8, w=7, oc=5, kh=3, kw=3, dtype=dtype, layout=layout,
                           bias=True)
    kwargs = dict(stride=2, padding="same", layout=layout, activation="relu6")
    out = np.full(pyconv.conv_output_shape(x.shape, wt.shape, stride=2, padding="same", layout=layout),
                  np.nan, dtype)
    y = pyconv.conv2d(x, wt, b, out=out, **kwargs)
    assert y is out
    np.testing.assert_array_equal(out, pyconv.conv2d(x, wt, b, **kwargs))
    assert_close(out, reference64(x, wt, b, **kwargs), dtype)
    # a repeated call (the fast path of calls seen before) writes out= too
    again = np.full_like(out, np.nan)
    assert pyconv.conv2d(x, wt, b, out=again, **kwargs) is again
    np.testing.assert_array_equal(again, out)


def _read_only(shape, dtype):
    a = np.zeros(shape, dtype)
    a.flags.writeable = False
    return a


# The call is conv2d(x, wt, b, padding=1) with x (2, 4, 8, 8), wt (4, 4, 3, 3)
# and b (4,), all float32 and each at the start of a larger buffer ``bufs``;
# the result is float32 (2, 4, 8, 8).  id -> (make out from (x, bufs), error).
_SHAPE = (2, 4, 8, 8)
BAD_OUTS = {
    "list": (lambda x, bufs: np.zeros(_SHAPE, np.float32).tolist(), TypeError),
    "memoryview": (lambda x, bufs: memoryview(np.zeros(_SHAPE, np.float32)), TypeError),
    "wrong_shape": (lambda x, bufs: np.zeros((2, 4, 8, 9), np.float32), ValueError),
    "unbatched_shape": (lambda x, bufs: np.zeros((4, 8, 8), np.float32), ValueError),
    "transposed_shape": (lambda x, bufs: np.zeros((2, 8, 8, 4), np.float32), ValueError),
    "wrong_dtype": (lambda x, bufs: np.zeros(_SHAPE, np.float64), ValueError),
    "float16": (lambda x, bufs: np.zeros(_SHAPE, np.float16), ValueError),
    "non_contiguous": (lambda x, bufs: np.zeros((2, 4, 8, 16), np.float32)[..., ::2], ValueError),
    "fortran": (lambda x, bufs: np.asfortranarray(np.zeros(_SHAPE, np.float32)), ValueError),
    "read_only": (lambda x, bufs: _read_only(_SHAPE, np.float32), ValueError),
    "is_x": (lambda x, bufs: x, ValueError),
    "overlaps_x": (lambda x, bufs: bufs[0][100: 100 + x.size].reshape(_SHAPE), ValueError),
    "overlaps_weight": (lambda x, bufs: bufs[1][1: 1 + x.size].reshape(_SHAPE), ValueError),
    "overlaps_bias": (lambda x, bufs: bufs[2][2: 2 + x.size].reshape(_SHAPE), ValueError),
}


@pytest.mark.parametrize("case", list(BAD_OUTS))
def test_bad_out_raises_and_is_untouched(isa, rng, case):
    size = int(np.prod(_SHAPE))
    bufs = [rand(rng, (n + 2 * size,)) for n in (size, 4 * 4 * 9, 4)]
    x = bufs[0][:size].reshape(_SHAPE)
    wt = bufs[1][: 4 * 4 * 9].reshape(4, 4, 3, 3)
    b = bufs[2][:4]
    make, exc = BAD_OUTS[case]
    out = make(x, bufs)
    # the same call with a good out= first: the bad one is a repeated call
    # (the fast path of calls seen before), which must still refuse it
    pyconv.conv2d(x, wt, b, padding=1, out=np.zeros(_SHAPE, np.float32))
    snapshot = [buf.copy() for buf in bufs]
    out_before = np.array(out, copy=True)
    with pytest.raises(exc, match="conv2d: out"):
        pyconv.conv2d(x, wt, b, padding=1, out=out)
    np.testing.assert_array_equal(np.asarray(out), out_before)
    for before, after in zip(snapshot, bufs):
        np.testing.assert_array_equal(after, before)
    # the same out shape/dtype/kind but a fresh C-contiguous array works
    good = np.zeros(_SHAPE, np.float32)
    assert pyconv.conv2d(x, wt, b, padding=1, out=good) is good


def test_out_with_float64_result(isa, rng):
    x, wt, b, kw = _out_problem(rng)
    out64 = np.zeros(x.shape, np.float64)
    y = pyconv.conv2d(x.astype(np.float64), wt, b, out=out64, **kw)
    assert y is out64
    assert_close(out64, reference64(x, wt, b, **kw), np.float64)
    with pytest.raises(ValueError, match="dtype"):
        pyconv.conv2d(x, wt, b, out=np.zeros(x.shape, np.float64), **kw)


# ==========================================================================
# algo=


@pytest.mark.parametrize("algo", ["auto", "direct"])
@pytest.mark.parametrize("groups", [1, 4])
def test_algo_auto_and_direct(isa, rng, algo, groups):
    x, wt, b = conv_inputs(rng, n=1, c=4, h=9, w=9, oc=8, kh=3, kw=3, groups=groups, bias=True)
    y = check_conv(x, wt, b, dtype=np.float32, padding=1, groups=groups, algo=algo)
    # the same algorithm twice gives the same bits; "auto" is "direct" when plan says so
    np.testing.assert_array_equal(y, pyconv.conv2d(x, wt, b, padding=1, groups=groups, algo=algo))
    if pyconv.plan(x.shape, wt.shape, padding=1, groups=groups)["algo"] == "direct":
        other = "direct" if algo == "auto" else "auto"
        np.testing.assert_array_equal(y, pyconv.conv2d(x, wt, b, padding=1, groups=groups, algo=other))


# Shapes each specialised algorithm serves (by DESIGN.md) and shapes it must refuse.
SERVED = {
    "im2col": [dict(c=4, oc=6, k=3, stride=2, padding=1, groups=1),
               dict(c=4, oc=6, k=3, stride=1, padding="same", groups=2)],
    "pointwise": [dict(c=5, oc=7, k=1, stride=1, padding=0, groups=1),
                  dict(c=5, oc=7, k=1, stride=2, padding="valid", groups=1)],
    "depthwise": [dict(c=6, oc=6, k=3, stride=1, padding=1, groups=6),
                  dict(c=3, oc=9, k=5, stride=2, padding="same", groups=3),
                  # one input channel: groups=1 == C_in is depthwise too (multiplier 4)
                  dict(c=1, oc=4, k=3, stride=1, padding=0, groups=1)],
}
REFUSED = {
    "pointwise": [dict(c=5, oc=7, k=3, stride=1, padding=0, groups=1),
                  dict(c=4, oc=4, k=1, stride=1, padding=0, groups=2),
                  dict(c=5, oc=7, k=1, stride=1, padding=1, groups=1)],
    "depthwise": [dict(c=4, oc=4, k=3, stride=1, padding=1, groups=1),
                  dict(c=4, oc=4, k=3, stride=1, padding=1, groups=2),
                  dict(c=6, oc=12, k=1, stride=1, padding=0, groups=3)],
}


def _algo_case(rng, spec, layout):
    x, wt, b = conv_inputs(rng, n=2, c=spec["c"], h=9, w=8, oc=spec["oc"], kh=spec["k"], kw=spec["k"],
                           groups=spec["groups"], layout=layout, bias=True)
    kwargs = dict(stride=spec["stride"], padding=spec["padding"], groups=spec["groups"], layout=layout)
    return x, wt, b, kwargs


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algo, index", [(a, i) for a, specs in SERVED.items() for i in range(len(specs))])
def test_specialised_algo_serves(isa, rng, algo, index, layout):
    """Every algorithm of DESIGN.md is built: each serves its shapes correctly."""
    x, wt, b, kwargs = _algo_case(rng, SERVED[algo][index], layout)
    check_conv(x, wt, b, dtype=np.float32, algo=algo, activation="relu", **kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("algo, index", [(a, i) for a, specs in REFUSED.items() for i in range(len(specs))])
def test_specialised_algo_refuses_other_shapes(isa, rng, algo, index, layout):
    """A ValueError naming conv2d and the algorithm, with out= untouched."""
    x, wt, b, kwargs = _algo_case(rng, REFUSED[algo][index], layout)
    out = np.full(pyconv.conv_output_shape(x.shape, wt.shape, **kwargs), 7.0, np.float32)
    with pytest.raises(ValueError, match=f"conv2d: algo='{algo}'") as info:
        pyconv.conv2d(x, wt, b, algo=algo, out=out, **kwargs)
    assert algo in str(info.value)
    assert np.all(out == 7.0)


# algo="pointwise" refuses everything but a 1x1, groups=1, unpadded conv, and says why.
# (c, oc, kh, kw, stride, padding, dilation, groups)
POINTWISE_REFUSED = {
    "3x3": (5, 7, 3, 3, 1, 0, 1, 1),
    "1x3": (5, 7, 1, 3, 1, 0, 1, 1),
    "3x1": (5, 7, 3, 1, 2, 0, 1, 1),
    "2x2_same": (5, 7, 2, 2, 1, "same", 1, 1),
    "groups2": (4, 6, 1, 1, 1, 0, 1, 2),
    "depthwise_1x1": (4, 8, 1, 1, 1, 0, 1, 4),
    "pad1": (5, 7, 1, 1, 1, 1, 1, 1),
    "pad_w_only": (5, 7, 1, 1, 1, (0, 1), 1, 1),
    "pad_bottom_only": (5, 7, 1, 1, 1, ((0, 1), (0, 0)), 1, 1),
    "pad_left_only": (5, 7, 1, 1, 2, ((0, 0), (1, 0)), 1, 1),
    "3x3_groups_pad": (6, 6, 3, 3, 1, 1, 2, 3),
}
# Shapes pointwise must serve: any stride or dilation, "same"/"valid" that pad nothing.
POINTWISE_SERVED = {
    "plain": (5, 7, 1, 1, 1, 0, 1, 1),
    "stride2": (5, 7, 1, 1, 2, 0, 1, 1),
    "stride_1x3": (3, 33, 1, 1, (1, 3), "valid", 1, 1),
    "same_stride2": (6, 17, 1, 1, 2, "same", 1, 1),
    "dilation3": (5, 7, 1, 1, 1, ((0, 0), (0, 0)), 3, 1),
}


def _spec_case(rng, spec, layout, dtype=np.float32):
    c, oc, kh, kw, s, p, d, g = spec
    x, wt, b = conv_inputs(rng, n=2, c=c, h=9, w=8, oc=oc, kh=kh, kw=kw, groups=g, layout=layout,
                           dtype=dtype, bias=True)
    return x, wt, b, dict(stride=s, padding=p, dilation=d, groups=g, layout=layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(POINTWISE_REFUSED))
def test_pointwise_refuses_with_a_reason(isa, rng, name, layout):
    """ValueError naming conv2d and 'pointwise', out= untouched; im2col (which
    serves every valid shape) and direct compute the same problem."""
    x, wt, b, kwargs = _spec_case(rng, POINTWISE_REFUSED[name], layout)
    out = np.full(pyconv.conv_output_shape(x.shape, wt.shape, **kwargs), 7.0, np.float32)
    with pytest.raises(ValueError, match="pointwise") as info:
        pyconv.conv2d(x, wt, b, algo="pointwise", out=out, **kwargs)
    assert "conv2d" in str(info.value)
    assert np.all(out == 7.0)
    r = reference64(x, wt, b, **kwargs)
    for algo in ("im2col", "direct"):
        assert_close(pyconv.conv2d(x, wt, b, algo=algo, **kwargs), r, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("name", list(POINTWISE_SERVED))
def test_pointwise_serves_1x1(isa, rng, name, layout, dtype):
    x, wt, b, kwargs = _spec_case(rng, POINTWISE_SERVED[name], layout, dtype)
    for algo in ("pointwise", "im2col"):
        check_conv(x, wt, b, dtype=dtype, algo=algo, activation="relu", **kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spec", [s for specs in list(SERVED.values()) + list(REFUSED.values()) for s in specs],
                         ids=lambda s: "c{c}oc{oc}k{k}s{stride}p{padding}g{groups}".format(**s))
def test_im2col_serves_every_shape(isa, rng, spec, layout):
    """Every shape a specialised algorithm serves or refuses, im2col serves."""
    x, wt, b, kwargs = _algo_case(rng, spec, layout)
    check_conv(x, wt, b, dtype=np.float32, algo="im2col", activation="relu6", **kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("groups", [1, 2, 4])
def test_depthwise_algo_refuses_groups_other_than_c_in(isa, rng, groups, layout):
    """algo='depthwise' serves groups == C_in (any multiplier) and refuses
    every other grouping with a ValueError that names conv2d and 'depthwise';
    the algorithms that serve every shape compute those."""
    x, wt, b = conv_inputs(rng, n=2, c=8, h=9, w=40, oc=16, kh=3, kw=3, groups=groups, layout=layout,
                           bias=True)
    kwargs = dict(padding=1, groups=groups, layout=layout)
    with pytest.raises(ValueError, match="depthwise") as info:
        pyconv.conv2d(x, wt, b, algo="depthwise", **kwargs)
    msg = str(info.value)
    assert msg.startswith("conv2d:") and "algo" in msg and f"groups={groups}" in msg, msg
    r = reference64(x, wt, b, **kwargs)
    for algo in ("auto", "direct", "im2col"):
        assert_close(pyconv.conv2d(x, wt, b, algo=algo, **kwargs), r, np.float32)
    # the same layer made depthwise (groups == C_in = 8, multiplier 2) is served
    xd, wd, bd = conv_inputs(rng, n=2, c=8, h=9, w=40, oc=16, kh=3, kw=3, groups=8, layout=layout,
                             bias=True)
    check_conv(xd, wd, bd, dtype=np.float32, algo="depthwise", padding=1, groups=8, layout=layout)


@pytest.mark.parametrize("algo, exc", [
    ("winograd_f6x3", ValueError), ("", ValueError), ("Direct ", ValueError), (None, TypeError),
    (1, TypeError), (b"direct", TypeError), (["direct"], TypeError),
])
def test_bad_algo(algo, exc):
    x = np.ones((1, 2, 5, 5), np.float32)
    wt = np.ones((3, 2, 3, 3), np.float32)
    with pytest.raises(exc, match="conv2d: algo"):
        pyconv.conv2d(x, wt, algo=algo)


@pytest.mark.parametrize("bad", [
    dict(stride=True), dict(stride=(1, True)), dict(stride=1.0), dict(stride=(1.0, 1)),
    dict(padding=1.0), dict(padding=((0, False), (0, 0))), dict(dilation=np.float64(1.0)),
    dict(groups=True),
])
def test_memoised_geometry_never_answers_for_an_equal_looking_argument(bad):
    """A valid call with 1 / (1, 1) must not make True, 1.0 or (1, True) valid."""
    x = np.ones((1, 1, 5, 5), np.float32)
    w = np.ones((2, 1, 3, 3), np.float32)
    for _ in range(2):
        pyconv.conv2d(x, w, stride=(1, 1), padding=((0, 0), (0, 0)), dilation=1, groups=1)
        pyconv.conv2d(x, w, stride=1, padding=1, dilation=1, groups=1)
        with pytest.raises(TypeError):
            pyconv.conv2d(x, w, **bad)


@pytest.mark.parametrize("bad", [
    dict(stride=False), dict(stride=0.0), dict(stride=(2, False)), dict(kernel_size=2.0),
    dict(padding=None), dict(dilation=None),
])
def test_memoised_pool_geometry_never_answers_for_an_equal_looking_argument(bad):
    """Pool geometries are memoised with None (the default stride) in the
    key: a cached stride=None / 2 call must not make False, 0.0, a float
    kernel or a None padding valid."""
    x = np.ones((1, 1, 6, 6), np.float32)
    kwargs = dict(kernel_size=2, stride=None, padding=0, dilation=1)
    for _ in range(2):
        assert pyconv.max_pool2d(x, 2).shape == (1, 1, 3, 3)
        assert pyconv.max_pool2d(x, 2, 2).shape == (1, 1, 3, 3)
        with pytest.raises((TypeError, ValueError)):
            pyconv.max_pool2d(x, **{**kwargs, **bad})
    with pytest.raises(TypeError):
        pyconv.conv2d(x, np.ones((1, 1, 2, 2), np.float32), stride=None)


def test_repeated_calls_read_everything_that_can_change(isa, rng):
    """A repeated call (same shapes, dtypes and arguments) skips conv2d's
    checks through a memo of the earlier call (pyconv._conv._SEEN): the
    array contents, the memory layout, a weight turned non-finite and a
    prepacked weight's own groups are still read on every call."""
    x = rand(rng, (2, 4, 9, 9), np.float32)
    w = rand(rng, (4, 1, 3, 3), np.float32)
    b = rand(rng, (4,), np.float32)
    kwargs = dict(padding=1, groups=4)
    for _ in range(2):
        assert_close(pyconv.conv2d(x, w, b, **kwargs), reference64(x, w, b, **kwargs), np.float32)
    # new contents of every operand
    x[0, 1, 2, 3] += 5.0
    w[2, 0, 1, 1] -= 3.0
    b[3] = 7.0
    assert_close(pyconv.conv2d(x, w, b, **kwargs), reference64(x, w, b, **kwargs), np.float32)
    # the same shape, strided views and a misaligned buffer
    xv = rand(rng, (2, 4, 9, 18), np.float32)[:, :, :, ::2]
    assert_close(pyconv.conv2d(xv, w, b, **kwargs), reference64(xv, w, b, **kwargs), np.float32)
    raw = np.zeros(x.nbytes + 1, np.uint8)
    xm = raw[1:].view(np.float32).reshape(x.shape)
    xm[...] = x
    assert not xm.flags.aligned
    assert_close(pyconv.conv2d(xm, w, b, **kwargs), reference64(x, w, b, **kwargs), np.float32)
    # the depthwise weight turning non-finite: its taps over the padding
    # must make NaN as in the reference (the direct kernel takes it)
    w[1, 0, 0, 0] = np.inf
    with np.errstate(invalid="ignore"):
        r = reference64(x, w, b, **kwargs)
    y = pyconv.conv2d(x, w, b, **kwargs)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(r))
    assert np.isnan(r).any()
    # a prepacked weight: its groups still checked
    wd = rand(rng, (4, 2, 3, 3), np.float32)
    pw = pyconv.prepack(wd, groups=2)
    for _ in range(2):
        assert_close(pyconv.conv2d(x, pw, groups=2), reference64(x, wd, groups=2), np.float32)
    with pytest.raises(ValueError, match="prepacked for groups=2"):
        pyconv.conv2d(x, pw, groups=1)
    # another dtype of the same shapes
    y64 = pyconv.conv2d(x.astype(np.float64), w.astype(np.float64), **kwargs)
    assert y64.dtype == np.float64


def test_repeated_call_memo_is_bounded():
    from pyconv import _conv

    w = np.ones((1, 1, 1, 1), np.float32)
    for size in range(1, _conv._SEEN_MAX + 40):
        pyconv.conv2d(np.ones((1, 1, 1, size), np.float32), w)
        assert len(_conv._SEEN) <= _conv._SEEN_MAX
