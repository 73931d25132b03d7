"""``pyconv.autograd``: vector-Jacobian products of conv2d, conv_transpose2d,
max_pool2d and avg_pool2d, NumPy only.

* Numerical checks: each pullback against central finite differences (float64)
  of the scalar loss ``L = sum(y * r)`` with a random ``r``, through the
  forward op itself, over strides, paddings, dilations, groups, bias, both
  layouts and the fused activations (inputs drawn away from their kinks).
* Oracle checks: the pullbacks equal ``pyconv.reference``'s gradients on
  every available ISA, in float32 and float64.
* The contract of DESIGN.md ("vjp pullbacks"): ``(grad_x, grad_w, grad_b)``
  with ``grad_b = None`` without bias, a lone ``grad_x`` for pools, gradient
  dtypes following their primals, repeatable pullbacks, shape errors.
* A tiny end-to-end fit by SGD.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import numpy as np
import pytest

import pyconv
import pyconv.reference as ref
from conftest import DTYPES, LAYOUTS, assert_close, f64, input_shape, rand
from pyconv.autograd import avg_pool2d_vjp, conv2d_vjp, conv_transpose2d_vjp, max_pool2d_vjp

# ==========================================================================
# helpers

EPS = 1e-5  # finite-difference step (float64)
FD_RTOL = 1e-6


def numerical_grad(loss: Callable[[], float], a: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Central differences of ``loss()`` with respect to every element of the
    C-contiguous float64 array ``a`` (perturbed in place, then restored)."""
    assert a.dtype == np.float64 and a.flags.c_contiguous
    flat = a.reshape(-1)
    g = np.empty_like(flat)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        lp = loss()
        flat[i] = old - eps
        lm = loss()
        flat[i] = old
        g[i] = (lp - lm) / (2 * eps)
    return g.reshape(a.shape)


def assert_fd_close(analytic: np.ndarray, numeric: np.ndarray, name: str) -> None:
    assert analytic.shape == numeric.shape, (name, analytic.shape, numeric.shape)
    scale = max(1.0, float(np.max(np.abs(numeric))))
    np.testing.assert_allclose(analytic, numeric, rtol=FD_RTOL, atol=FD_RTOL * scale, err_msg=name)
    # the check must see a gradient, not two zero arrays
    assert np.any(numeric != 0), name


def conv_weight_shape(layout: str, c: int, oc: int, kh: int, kw: int, groups: int) -> Tuple[int, ...]:
    return (oc, c // groups, kh, kw) if layout == "NCHW" else (kh, kw, c // groups, oc)


def transpose_weight_shape(layout: str, c: int, oc: int, kh: int, kw: int, groups: int) -> Tuple[int, ...]:
    """conv_transpose2d's weight: (C_in, C_out/g, KH, KW) or (KH, KW, C_out/g, C_in)."""
    return (c, oc // groups, kh, kw) if layout == "NCHW" else (kh, kw, oc // groups, c)


def channel_axis(a: np.ndarray, layout: str) -> int:
    return a.ndim - 3 if layout == "NCHW" else a.ndim - 1


def bias_grad(gy: np.ndarray, layout: str) -> np.ndarray:
    ax = channel_axis(gy, layout)
    return gy.astype(np.float64).sum(axis=tuple(i for i in range(gy.ndim) if i != ax))


def kink_distance(pre: np.ndarray, activation: Optional[str]) -> float:
    """How close the pre-activation comes to a point where the activation
    is not differentiable."""
    if activation is None:
        return np.inf
    d = np.abs(pre)
    if activation == "relu6":
        d = np.minimum(d, np.abs(pre - 6.0))
    return float(d.min())


def distinct_values(rng: np.random.Generator, shape: Tuple[int, ...]) -> np.ndarray:
    """float64 values at least 0.01 apart: every max-pool window has one
    clear winner, stable under finite-difference steps."""
    n = int(np.prod(shape))
    return (rng.permutation(n).astype(np.float64) * 0.01 - 0.005 * n).reshape(shape)


# ==========================================================================
# conv2d_vjp: finite differences

# (n, c, h, w, oc, kh, kw, conv kwargs); n=None is an unbatched image.
CONV_CASES = {
    "plain": (2, 3, 6, 5, 4, 3, 3, dict()),
    "stride2-pad1": (2, 2, 7, 6, 3, 3, 2, dict(stride=2, padding=1)),
    "dilation-same": (1, 3, 7, 7, 2, 3, 3, dict(dilation=2, padding="same")),
    "groups-asym": (2, 4, 6, 7, 6, 2, 3, dict(groups=2, stride=(2, 1), padding=((1, 0), (2, 1)),
                                                 dilation=(1, 2))),
    "depthwise": (1, 3, 6, 6, 6, 3, 3, dict(groups=3, padding=1)),
    "unbatched": (None, 2, 5, 6, 3, 2, 2, dict(stride=(1, 2))),
}


def _conv_problem(rng: np.random.Generator, case: str, layout: str, bias: bool,
                  activation: Optional[str], margin: float = 1e-3):
    """float64 (x, w, b, kwargs) whose pre-activation keeps ``margin`` away
    from the activation's kinks (and, for the activations, has values on
    every side of them, so that the mask matters)."""
    n, c, h, w, oc, kh, kw, kw_ = CONV_CASES[case]
    kwargs = dict(kw_, layout=layout)
    for _ in range(200):
        x = 2.0 * rng.standard_normal(input_shape(layout, n, c, h, w))
        wt = rng.standard_normal(conv_weight_shape(layout, c, oc, kh, kw, kwargs.get("groups", 1)))
        b = rng.standard_normal(oc) if bias else None
        pre = ref.conv2d(x, wt, b, **kwargs)
        if kink_distance(pre, activation) < margin:
            continue
        if activation is not None and not ((pre < 0).any() and (pre > 0).any()):
            continue
        if activation == "relu6" and not ((pre > 6).any() and ((pre > 0) & (pre < 6)).any()):
            continue
        return x, wt, b, kwargs
    raise AssertionError("no problem away from the kinks was drawn")  # pragma: no cover


@pytest.mark.parametrize("activation", [None, "relu", "relu6"])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", sorted(CONV_CASES))
def test_conv2d_vjp_matches_finite_differences(rng, case, layout, bias, activation):
    x, wt, b, kwargs = _conv_problem(rng, case, layout, bias, activation)
    y, pullback = conv2d_vjp(x, wt, b, activation=activation, **kwargs)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, ref.conv2d(x, wt, b, activation=activation, **kwargs),
                               rtol=1e-10, atol=1e-10 * max(1.0, float(np.abs(y).max())))
    r = rng.standard_normal(y.shape)
    gx, gw, gb = pullback(r)

    def loss() -> float:
        return float(np.sum(pyconv.conv2d(x, wt, b, activation=activation, **kwargs) * r))

    assert_fd_close(gx, numerical_grad(loss, x), "grad_x")
    assert_fd_close(gw, numerical_grad(loss, wt), "grad_w")
    if bias:
        assert_fd_close(gb, numerical_grad(loss, b), "grad_b")
    else:
        assert gb is None


# ==========================================================================
# conv_transpose2d_vjp: finite differences

# (n, c_in, h, w, c_out, kh, kw, kwargs)
TRANSPOSE_CASES = {
    "plain": (2, 3, 4, 5, 2, 3, 3, dict()),
    "stride2-outpad1": (1, 2, 4, 4, 3, 3, 3, dict(stride=2, padding=1, output_padding=1)),
    "asym-outpad": (2, 2, 3, 4, 2, 3, 2, dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2),
                                               dilation=(1, 2))),
    # output_padding >= stride (allowed since < dilation): the conv2d this
    # transposes has a larger output than x
    "outpad-ge-stride": (1, 2, 4, 3, 2, 2, 2, dict(dilation=3, output_padding=2)),
    "groups": (2, 4, 3, 4, 6, 3, 3, dict(groups=2, stride=2, padding=1, output_padding=(0, 1))),
    "output_size": (None, 2, 3, 3, 2, 3, 3, dict(stride=2, output_size=(8, 7))),
}


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", sorted(TRANSPOSE_CASES))
def test_conv_transpose2d_vjp_matches_finite_differences(rng, case, layout, bias):
    n, c, h, w, oc, kh, kw, kw_ = TRANSPOSE_CASES[case]
    kwargs = dict(kw_, layout=layout)
    x = rng.standard_normal(input_shape(layout, n, c, h, w))
    wt = rng.standard_normal(transpose_weight_shape(layout, c, oc, kh, kw, kwargs.get("groups", 1)))
    b = rng.standard_normal(oc) if bias else None
    y, pullback = conv_transpose2d_vjp(x, wt, b, **kwargs)
    expected = ref.conv_transpose2d(x, wt, b, **kwargs)
    assert y.shape == expected.shape
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-10 * max(1.0, float(np.abs(y).max())))
    if "output_size" in kw_:
        hw = y.shape[-2:] if layout == "NCHW" else y.shape[-3:-1]
        assert hw == kw_["output_size"]
    r = rng.standard_normal(y.shape)
    gx, gw, gb = pullback(r)

    def loss() -> float:
        return float(np.sum(pyconv.conv_transpose2d(x, wt, b, **kwargs) * r))

    assert_fd_close(gx, numerical_grad(loss, x), "grad_x")
    assert_fd_close(gw, numerical_grad(loss, wt), "grad_w")
    if bias:
        assert_fd_close(gb, numerical_grad(loss, b), "grad_b")
    else:
        assert gb is None


# ==========================================================================
# pools: finite differences

MAX_CASES = {
    "k2s2": (2, 3, 6, 6, dict(kernel_size=2)),
    "overlap-pad": (1, 2, 7, 6, dict(kernel_size=3, stride=2, padding=1)),
    "dilation": (2, 2, 7, 7, dict(kernel_size=2, stride=1, dilation=2)),
    "ceil": (1, 3, 7, 8, dict(kernel_size=(3, 2), stride=(2, 3), padding=(1, 0), ceil_mode=True)),
    "same": (None, 2, 5, 7, dict(kernel_size=3, stride=2, padding="same")),
}

AVG_CASES = {
    "k2s2": (2, 3, 6, 6, dict(kernel_size=2)),
    "ceil-exclude-pad": (1, 2, 7, 6, dict(kernel_size=3, stride=2, padding=1, ceil_mode=True,
                                            count_include_pad=False)),
    "ceil-include-pad": (2, 2, 6, 7, dict(kernel_size=(3, 2), stride=2, padding=(1, 1), ceil_mode=True,
                                            count_include_pad=True)),
    "overlap-exclude-pad": (1, 3, 5, 6, dict(kernel_size=3, stride=1, padding=1, count_include_pad=False)),
    "same": (None, 2, 5, 7, dict(kernel_size=3, stride=2, padding="same")),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", sorted(MAX_CASES))
def test_max_pool2d_vjp_matches_finite_differences(rng, case, layout):
    n, c, h, w, kwargs = MAX_CASES[case]
    kwargs = dict(kwargs, layout=layout)
    x = distinct_values(rng, input_shape(layout, n, c, h, w))
    y, pullback = max_pool2d_vjp(x, **kwargs)
    np.testing.assert_array_equal(y, ref.max_pool2d(x, **kwargs))
    r = rng.standard_normal(y.shape)
    gx = pullback(r)
    numeric = numerical_grad(lambda: float(np.sum(pyconv.max_pool2d(x, **kwargs) * r)), x)
    assert_fd_close(gx, numeric, "grad_x")


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", sorted(AVG_CASES))
def test_avg_pool2d_vjp_matches_finite_differences(rng, case, layout):
    n, c, h, w, kwargs = AVG_CASES[case]
    kwargs = dict(kwargs, layout=layout)
    x = rng.standard_normal(input_shape(layout, n, c, h, w))
    y, pullback = avg_pool2d_vjp(x, **kwargs)
    np.testing.assert_allclose(y, ref.avg_pool2d(x, **kwargs), rtol=1e-12, atol=1e-12)
    r = rng.standard_normal(y.shape)
    gx = pullback(r)
    numeric = numerical_grad(lambda: float(np.sum(pyconv.avg_pool2d(x, **kwargs) * r)), x)
    assert_fd_close(gx, numeric, "grad_x")


def test_avg_pool2d_vjp_count_include_pad_changes_gradient(rng):
    """The divisor rule reaches the gradient: border cells get more with
    count_include_pad=False than with True."""
    x = rng.standard_normal((1, 1, 5, 5))
    _, pb_in = avg_pool2d_vjp(x, 3, 2, 1, count_include_pad=True)
    _, pb_ex = avg_pool2d_vjp(x, 3, 2, 1, count_include_pad=False)
    g = np.ones((1, 1, 3, 3))
    gi, ge = pb_in(g), pb_ex(g)
    assert gi[0, 0, 0, 0] == pytest.approx(1 / 9)
    assert ge[0, 0, 0, 0] == pytest.approx(1 / 4)
    # cell (1, 1) lies in four windows: the corner one (4 real cells), two
    # edge ones (6) and the centre one (9)
    assert gi[0, 0, 1, 1] == pytest.approx(4 / 9)
    assert ge[0, 0, 1, 1] == pytest.approx(1 / 4 + 2 / 6 + 1 / 9)
    assert gi[0, 0, 2, 2] == ge[0, 0, 2, 2] == pytest.approx(1 / 9)  # the centre window only


# ==========================================================================
# pullbacks against pyconv.reference's gradients, every ISA, both dtypes

# (n, c, h, w, oc, kh, kw, kwargs)
REF_CONV_CASES = [
    (2, 8, 9, 10, 16, 3, 3, dict(padding=1)),
    (1, 6, 11, 9, 4, 3, 2, dict(stride=2, padding=((1, 0), (0, 1)), dilation=(2, 1), groups=2)),
    (2, 8, 7, 7, 16, 3, 3, dict(groups=8, stride=2, padding="same")),
    (3, 16, 6, 5, 8, 1, 1, dict()),
    (None, 5, 8, 8, 7, 5, 5, dict(padding=2)),
]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", range(len(REF_CONV_CASES)))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_vjp_matches_reference_grads(isa, rng, dtype, layout, case, bias):
    n, c, h, w, oc, kh, kw, kw_ = REF_CONV_CASES[case]
    kwargs = dict(kw_, layout=layout)
    x = rand(rng, input_shape(layout, n, c, h, w), dtype)
    wt = rand(rng, conv_weight_shape(layout, c, oc, kh, kw, kwargs.get("groups", 1)), dtype)
    b = rand(rng, (oc,), dtype) if bias else None
    y, pullback = conv2d_vjp(x, wt, b, **kwargs)
    assert_close(y, ref.conv2d(f64(x), f64(wt), f64(b), **kwargs), dtype)
    gy = rand(rng, y.shape, dtype)
    gx, gw, gb = pullback(gy)
    assert_close(gx, ref.conv2d_grad_input(f64(gy), f64(wt), x.shape, **kwargs), dtype)
    assert_close(gw, ref.conv2d_grad_weight(f64(x), f64(gy), wt.shape, **kwargs), dtype)
    if bias:
        assert_close(gb, bias_grad(gy, layout), dtype)
    else:
        assert gb is None


@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_vjp_activation_matches_reference_grads(isa, rng, dtype, layout, activation):
    """The activation's mask (relu: y > 0, relu6: 0 < y < 6) applied to
    grad_y, then the reference gradients."""
    kwargs = dict(stride=1, padding=1, layout=layout)
    for _ in range(200):
        x = rand(rng, input_shape(layout, 2, 4, 6, 6), np.float64) * 1.5
        wt = rand(rng, conv_weight_shape(layout, 4, 5, 3, 3, 1), np.float64)
        b = rand(rng, (5,), np.float64)
        pre = ref.conv2d(x, wt, b, **kwargs)
        if kink_distance(pre, activation) > 1e-2 and (pre > 6).any() and (pre < 0).any():
            break
    else:  # pragma: no cover
        raise AssertionError("no problem away from the kinks was drawn")
    x, wt, b = x.astype(dtype), wt.astype(dtype), b.astype(dtype)
    pre = ref.conv2d(f64(x), f64(wt), f64(b), **kwargs)
    mask = (pre > 0) if activation == "relu" else ((pre > 0) & (pre < 6))
    assert mask.any() and not mask.all()
    y, pullback = conv2d_vjp(x, wt, b, activation=activation, **kwargs)
    assert_close(y, ref.conv2d(f64(x), f64(wt), f64(b), activation=activation, **kwargs), dtype)
    gy = rand(rng, y.shape, dtype)
    gx, gw, gb = pullback(gy)
    gm = np.where(mask, f64(gy), 0.0)
    assert_close(gx, ref.conv2d_grad_input(gm, f64(wt), x.shape, **kwargs), dtype)
    assert_close(gw, ref.conv2d_grad_weight(f64(x), gm, wt.shape, **kwargs), dtype)
    assert_close(gb, bias_grad(gm, layout), dtype)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose2d_vjp_matches_reference(isa, rng, dtype, layout):
    """The transposed convolution's input gradient is the conv2d it
    transposes; its weight gradient that conv2d's weight gradient with the
    roles of input and grad_out exchanged."""
    kwargs = dict(stride=2, padding=1, dilation=1, groups=2, layout=layout)
    x = rand(rng, input_shape(layout, 2, 6, 5, 4), dtype)
    wt = rand(rng, transpose_weight_shape(layout, 6, 4, 3, 3, 2), dtype)
    b = rand(rng, (4,), dtype)
    y, pullback = conv_transpose2d_vjp(x, wt, b, output_padding=1, **kwargs)
    assert_close(y, ref.conv_transpose2d(f64(x), f64(wt), f64(b), output_padding=1, **kwargs), dtype)
    gy = rand(rng, y.shape, dtype)
    gx, gw, gb = pullback(gy)
    assert_close(gx, ref.conv2d(f64(gy), f64(wt), **kwargs), dtype)
    assert_close(gw, ref.conv2d_grad_weight(f64(gy), f64(x), wt.shape, **kwargs), dtype)
    assert_close(gb, bias_grad(gy, layout), dtype)


REF_POOL_CASES = [
    (2, 5, 9, 8, dict(kernel_size=3, stride=2, padding=1)),
    (1, 17, 7, 10, dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 0), ceil_mode=True)),
    (None, 4, 6, 6, dict(kernel_size=2)),
    (2, 3, 8, 7, dict(kernel_size=3, stride=2, padding="same")),
]


@pytest.mark.parametrize("case", range(len(REF_POOL_CASES)))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_max_pool2d_vjp_matches_reference_grad(isa, rng, dtype, layout, case):
    n, c, h, w, kw_ = REF_POOL_CASES[case]
    kwargs = dict(kw_, layout=layout)
    x = rand(rng, input_shape(layout, n, c, h, w), dtype)
    kwargs.setdefault("dilation", 1 + case % 2)
    y, pullback = max_pool2d_vjp(x, **kwargs)
    np.testing.assert_array_equal(y, ref.max_pool2d(x, **kwargs))
    gy = rand(rng, y.shape, dtype)
    gx = pullback(gy)
    expected = ref.max_pool2d_grad(gy, x, **kwargs)
    assert gx.dtype == np.dtype(dtype) and gx.shape == x.shape
    # the same winners and the same additions: exact
    np.testing.assert_array_equal(gx, expected)
    assert_close(gx, ref.max_pool2d_grad(f64(gy), f64(x), **kwargs), dtype)


@pytest.mark.parametrize("count_include_pad", [None, True, False])
@pytest.mark.parametrize("case", range(len(REF_POOL_CASES)))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool2d_vjp_matches_reference_grad(isa, rng, dtype, layout, case, count_include_pad):
    n, c, h, w, kw_ = REF_POOL_CASES[case]
    kwargs = dict(kw_, layout=layout, count_include_pad=count_include_pad)
    x = rand(rng, input_shape(layout, n, c, h, w), dtype)
    y, pullback = avg_pool2d_vjp(x, **kwargs)
    assert_close(y, ref.avg_pool2d(f64(x), **kwargs), dtype)
    gy = rand(rng, y.shape, dtype)
    gx = pullback(gy)
    assert_close(gx, ref.avg_pool2d_grad(f64(gy), x.shape, **kwargs), dtype)


# ==========================================================================
# the contract


def _vjps(layout: str = "NCHW") -> Dict[str, Tuple[Callable[..., Any], Tuple[int, ...], Tuple[int, ...], dict]]:
    """name -> (vjp, x shape, weight shape or (), kwargs)."""
    return {
        "conv2d": (conv2d_vjp, (2, 4, 6, 6), (6, 2, 3, 3), dict(groups=2, padding=1)),
        "conv_transpose2d": (conv_transpose2d_vjp, (2, 4, 4, 5), (4, 3, 3, 3), dict(stride=2)),
        "max_pool2d": (max_pool2d_vjp, (2, 3, 6, 6), (), dict(kernel_size=3, stride=2, padding=1)),
        "avg_pool2d": (avg_pool2d_vjp, (2, 3, 6, 6), (), dict(kernel_size=3, stride=2, padding=1)),
    }


CONV_VJPS = ["conv2d", "conv_transpose2d"]
POOL_VJPS = ["max_pool2d", "avg_pool2d"]


@pytest.mark.parametrize("name", CONV_VJPS)
def test_conv_pullback_returns_three_with_none_bias_grad(rng, name):
    vjp, xs, ws, kwargs = _vjps()[name]
    x, wt = rand(rng, xs), rand(rng, ws)
    y, pullback = vjp(x, wt, **kwargs)
    out = pullback(np.ones_like(y))
    assert isinstance(out, tuple) and len(out) == 3
    gx, gw, gb = out
    assert gb is None
    assert isinstance(gx, np.ndarray) and gx.shape == x.shape
    assert isinstance(gw, np.ndarray) and gw.shape == wt.shape
    # with a bias, its gradient is the sum of grad_y per channel
    oc = y.shape[1]
    y2, pullback2 = vjp(x, wt, np.zeros(oc, np.float32), **kwargs)
    gy = rand(rng, y2.shape)
    gb2 = pullback2(gy)[2]
    assert isinstance(gb2, np.ndarray) and gb2.shape == (oc,)
    assert_close(gb2, bias_grad(gy, "NCHW"), np.float32)


@pytest.mark.parametrize("name", POOL_VJPS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_pool_pullback_returns_one_array(rng, name, dtype):
    vjp, xs, _, kwargs = _vjps()[name]
    x = rand(rng, xs, dtype)
    y, pullback = vjp(x, **kwargs)
    assert y.dtype == np.dtype(dtype)
    gx = pullback(rand(rng, y.shape, dtype))
    assert type(gx) is np.ndarray
    assert gx.shape == x.shape and gx.dtype == np.dtype(dtype)


@pytest.mark.parametrize("name", CONV_VJPS)
def test_conv_grad_dtypes_follow_primals(rng, name):
    """float32 x with float64 weight: computed in float64, grad_x float32,
    grad_w float64; the bias gradient follows the bias."""
    vjp, xs, ws, kwargs = _vjps()[name]
    x = rand(rng, xs, np.float32)
    wt = rand(rng, ws, np.float64)
    oc = vjp(x, wt, **kwargs)[0].shape[1]
    y, pullback = vjp(x, wt, rand(rng, (oc,), np.float32), **kwargs)
    assert y.dtype == np.float64
    gy = rand(rng, y.shape, np.float64)
    gx, gw, gb = pullback(gy)
    assert gx.dtype == np.float32
    assert gw.dtype == np.float64
    assert gb.dtype == np.float32
    # the values are the all-float64 ones, rounded
    _, pb64 = vjp(f64(x), wt, np.zeros(oc), **kwargs)
    gx64, gw64, _ = pb64(gy)
    np.testing.assert_array_equal(gx, gx64.astype(np.float32))
    np.testing.assert_allclose(gw, gw64, rtol=1e-12, atol=1e-12 * max(1.0, float(np.abs(gw64).max())))
    # float64 x with float32 weight: the other way round
    _, pullback2 = vjp(f64(x), wt.astype(np.float32), **kwargs)
    gx2, gw2, gb2 = pullback2(gy.astype(np.float32))
    assert (gx2.dtype, gw2.dtype, gb2) == (np.float64, np.float32, None)


@pytest.mark.parametrize("name", POOL_VJPS)
def test_pool_grad_dtypes_follow_primal(rng, name):
    vjp, xs, _, kwargs = _vjps()[name]
    x = rand(rng, xs, np.float32)
    y, pullback = vjp(x, **kwargs)
    assert pullback(rand(rng, y.shape, np.float64)).dtype == np.float32
    x64 = f64(x)
    y64, pullback64 = vjp(x64, **kwargs)
    assert pullback64(rand(rng, y64.shape, np.float32)).dtype == np.float64


@pytest.mark.parametrize("name", CONV_VJPS + POOL_VJPS)
def test_pullback_can_be_called_twice(rng, name):
    vjp, xs, ws, kwargs = _vjps()[name]
    args = (rand(rng, xs),) + ((rand(rng, ws),) if ws else ())
    x_before = [a.copy() for a in args]
    y, pullback = vjp(*args, **kwargs)
    gy = rand(rng, y.shape)
    gy_before = gy.copy()
    first = pullback(gy)
    first = first if isinstance(first, tuple) else (first,)
    kept = [None if g is None else g.copy() for g in first]
    second = pullback(gy)
    second = second if isinstance(second, tuple) else (second,)
    for a, b, k in zip(first, second, kept):
        if k is None:
            assert a is None and b is None
            continue
        np.testing.assert_array_equal(b, k)
        np.testing.assert_array_equal(a, k)  # the second call did not write into the first's arrays
        assert not np.shares_memory(a, b)
    # neither call changed the inputs nor grad_y
    np.testing.assert_array_equal(gy, gy_before)
    for a, before in zip(args, x_before):
        np.testing.assert_array_equal(a, before)
    # a different grad_y gives a different gradient (the pullback is not stale)
    third = pullback(2 * gy)
    third = third if isinstance(third, tuple) else (third,)
    np.testing.assert_allclose(third[0], 2 * kept[0], rtol=1e-5, atol=1e-5)


def _bad_grad_y(rng, name):
    vjp, xs, ws, kwargs = _vjps()[name]
    args = (rand(rng, xs),) + ((rand(rng, ws),) if ws else ())
    y, pullback = vjp(*args, **kwargs)
    bad = y.shape[:-1] + (y.shape[-1] + 1,)
    return pullback, rand(rng, bad), y


@pytest.mark.parametrize("name", CONV_VJPS + POOL_VJPS)
def test_pullback_rejects_wrong_shaped_grad_y(rng, name):
    pullback, bad, y = _bad_grad_y(rng, name)
    with pytest.raises(ValueError) as info:
        pullback(bad)
    assert str(bad.shape) in str(info.value) and str(y.shape) in str(info.value)
    with pytest.raises(ValueError):
        pullback(rand(rng, (y.size,)))  # flattened: right size, wrong shape


@pytest.mark.parametrize("name", ["conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d"])
def test_pullback_shape_error_names_grad_y(rng, name):
    """DESIGN.md: the message names the function and the argument; the
    pullback's argument is grad_y."""
    pullback, bad, _ = _bad_grad_y(rng, name)
    with pytest.raises(ValueError, match=r"\bgrad_y\b") as info:
        pullback(bad)
    assert f"{name}_vjp" in str(info.value)


# ==========================================================================
# end to end: learn a kernel by SGD


def test_sgd_learns_a_conv_layer(rng):
    """A 1-layer conv (2 -> 3 channels, 3x3, bias) fitted to a fixed target
    layer from random images by plain gradient descent on the mean squared
    error: the loss drops by more than 90% and the kernel is recovered."""
    true_w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    true_b = np.array([0.5, -1.0, 0.25], np.float32)
    w = np.zeros_like(true_w)
    b = np.zeros_like(true_b)
    lr = 0.5
    losses = []
    for _ in range(60):
        x = rng.standard_normal((8, 2, 10, 10)).astype(np.float32)
        target = pyconv.reference.conv2d(x, true_w, true_b, padding=1)
        y, pullback = conv2d_vjp(x, w, b, padding=1)
        diff = y - target
        losses.append(0.5 * float(np.mean(diff.astype(np.float64) ** 2)))
        _, gw, gb = pullback(diff / diff.size)
        assert gw.dtype == np.float32 and gb.dtype == np.float32
        w -= lr * gw
        b -= lr * gb
    assert losses[-1] < 0.1 * losses[0], losses
    np.testing.assert_allclose(w, true_w, atol=0.05)
    np.testing.assert_allclose(b, true_b, atol=0.05)
