"""``pyconv.torch``: autograd Functions and ``torch.nn`` drop-in modules.

* ``torch.autograd.gradcheck`` (float64) for each differentiable function.
* Forward and backward against ``torch.nn.functional`` and against each
  module's ``torch.nn`` twin loaded with the same ``state_dict``, in float32
  and float64.
* Drop-in: a model built from pyconv layers matches the same model built
  from torch.nn layers (outputs, parameter gradients, repr, parameter names,
  state_dict keys, default initialisation from torch's RNG).
* Zero-copy into and out of pyconv; non-contiguous and channels_last
  tensors; TypeError / ValueError for what pyconv does not run.
"""

from __future__ import annotations

import types
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
nn = torch.nn

import pyconv.torch as pt  # noqa: E402
from conftest import RTOL  # noqa: E402

# torch warns (once per process) about the extra copy its padding="same"
# needs for even kernels; that is torch's business, not the test's.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")

TORCH_DTYPES = (torch.float32, torch.float64)
NP_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


@pytest.fixture
def gen(request) -> torch.Generator:
    """A torch generator seeded from the test's id."""
    g = torch.Generator()
    g.manual_seed(sum(request.node.nodeid.encode()) * 2654435761 % 2**31)
    return g


def randn(gen, *shape: int, dtype=torch.float64, requires_grad: bool = False) -> torch.Tensor:
    t = torch.randn(*shape, generator=gen, dtype=dtype)
    return t.requires_grad_(requires_grad)


def distinct(gen, *shape: int) -> torch.Tensor:
    """float64 values at least 0.01 apart (stable max-pool winners)."""
    n = int(np.prod(shape))
    return (torch.randperm(n, generator=gen).double() * 0.01 - 0.005 * n).reshape(shape)


def assert_tclose(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """DESIGN.md's accuracy rule by dtype, against torch's answer."""
    assert isinstance(actual, torch.Tensor), (what, type(actual))
    assert actual.device.type == "cpu", what
    assert actual.dtype == expected.dtype, (what, actual.dtype, expected.dtype)
    assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
    exp = expected.detach().double().numpy()
    rtol = RTOL[NP_DTYPE[expected.dtype]]
    if expected.dtype == torch.float64:
        rtol = 1e-9  # torch sums in another order; still float64-exact to ~1e-15 per term
    scale = float(np.abs(exp).max()) if exp.size else 0.0
    np.testing.assert_allclose(actual.detach().double().numpy(), exp, rtol=rtol,
                               atol=rtol * max(1.0, scale), err_msg=what)


def leaves(*ts: Optional[torch.Tensor]) -> List[Optional[torch.Tensor]]:
    """Detached copies that require grad (None passes)."""
    return [None if t is None else t.detach().clone().requires_grad_(True) for t in ts]


def compare_fn(ours, theirs, inputs: Sequence[Optional[torch.Tensor]], gen) -> torch.Tensor:
    """ours(*inputs) == theirs(*inputs) forward and backward (random grad_y)."""
    a, b = leaves(*inputs), leaves(*inputs)
    ya, yb = ours(*a), theirs(*b)
    assert_tclose(ya, yb, "forward")
    g = torch.randn(yb.shape, generator=gen, dtype=yb.dtype)
    ya.backward(g)
    yb.backward(g)
    for i, (ta, tb) in enumerate(zip(a, b)):
        if ta is None:
            continue
        assert tb.grad is not None
        assert ta.grad is not None, f"input {i} got no gradient"
        assert_tclose(ta.grad, tb.grad, f"grad of input {i}")
    return ya


def pyconv_backed(y: torch.Tensor) -> bool:
    """y was computed by one of pyconv.torch's autograd Functions."""
    cls = getattr(y.grad_fn, "_forward_cls", None)
    return cls is not None and cls.__module__ == "pyconv.torch"


# ==========================================================================
# gradcheck (float64)

CONV_GRADCHECK = {
    "stride-pad-bias": ((2, 3, 6, 5), (4, 3, 3, 3), True, dict(stride=2, padding=1)),
    "same-dilation": ((1, 2, 6, 6), (3, 2, 3, 2), True, dict(padding="same", dilation=2)),
    "same-stride2": ((1, 2, 7, 6), (2, 2, 3, 3), False, dict(padding="same", stride=2)),
    "groups": ((2, 4, 5, 5), (6, 2, 2, 3), True, dict(groups=2, padding=(1, 0), dilation=(1, 2))),
    "no-bias-asym": ((1, 3, 6, 7), (2, 3, 3, 3), False, dict(stride=(1, 2), padding=((2, 0), (1, 1)))),
}


@pytest.mark.parametrize("case", sorted(CONV_GRADCHECK))
def test_gradcheck_conv2d(gen, case):
    xs, ws, bias, kwargs = CONV_GRADCHECK[case]
    x, w = randn(gen, *xs, requires_grad=True), randn(gen, *ws, requires_grad=True)
    b = randn(gen, ws[0], requires_grad=True) if bias else None
    inputs = (x, w) if b is None else (x, w, b)
    assert torch.autograd.gradcheck(lambda *a: pt.conv2d(*a, **kwargs), inputs)


def test_gradcheck_conv2d_relu(gen):
    kwargs = dict(padding=1, activation="relu")
    for _ in range(100):
        x, w, b = randn(gen, 2, 2, 5, 5), randn(gen, 3, 2, 3, 3), randn(gen, 3)
        pre = F.conv2d(x, w, b, padding=1)
        if pre.abs().min() > 1e-3:  # away from the kink
            break
    else:  # pragma: no cover
        raise AssertionError("no input away from relu's kink")
    assert (pre < 0).any() and (pre > 0).any()
    x, w, b = leaves(x, w, b)
    assert torch.autograd.gradcheck(lambda *a: pt.conv2d(*a, **kwargs), (x, w, b))


TRANSPOSE_GRADCHECK = {
    "stride-outpad-bias": ((2, 3, 3, 4), (3, 2, 3, 3), True, dict(stride=2, padding=1, output_padding=1)),
    "groups": ((1, 4, 3, 3), (4, 1, 3, 2), True, dict(groups=2, stride=(2, 3), output_padding=(1, 2))),
    "dilation-outpad": ((1, 2, 3, 3), (2, 3, 2, 2), False, dict(dilation=3, output_padding=2)),
}


@pytest.mark.parametrize("case", sorted(TRANSPOSE_GRADCHECK))
def test_gradcheck_conv_transpose2d(gen, case):
    xs, ws, bias, kwargs = TRANSPOSE_GRADCHECK[case]
    x, w = randn(gen, *xs, requires_grad=True), randn(gen, *ws, requires_grad=True)
    b = randn(gen, ws[1] * kwargs.get("groups", 1), requires_grad=True) if bias else None
    inputs = (x, w) if b is None else (x, w, b)
    assert torch.autograd.gradcheck(lambda *a: pt.conv_transpose2d(*a, **kwargs), inputs)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=2, stride=1, dilation=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
], ids=["k2", "overlap-pad", "dilation", "ceil"])
def test_gradcheck_max_pool2d(gen, kwargs):
    x = distinct(gen, 2, 2, 6, 7).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a: pt.max_pool2d(a, **kwargs), (x,))
    assert torch.autograd.gradcheck(lambda a: pt.max_pool2d(a, return_indices=True, **kwargs)[0], (x,))


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(3, 2), stride=1, padding=(1, 1), count_include_pad=False),
], ids=["k2", "ceil", "ceil-exclude-pad", "exclude-pad"])
def test_gradcheck_avg_pool2d(gen, kwargs):
    x = randn(gen, 2, 2, 6, 7, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: pt.avg_pool2d(a, **kwargs), (x,))


# ==========================================================================
# functions against torch.nn.functional

CONV_F_CASES = {
    "plain": ((2, 3, 8, 9), (4, 3, 3, 3), True, dict()),
    "stride-pad": ((2, 4, 9, 8), (6, 4, 3, 2), True, dict(stride=(2, 1), padding=(1, 2))),
    "dilation-groups": ((1, 6, 10, 10), (4, 3, 3, 3), False, dict(dilation=2, groups=2, padding=2)),
    "depthwise": ((2, 5, 7, 7), (10, 1, 3, 3), True, dict(groups=5, stride=2, padding=1)),
    "same": ((2, 3, 8, 7), (4, 3, 4, 3), True, dict(padding="same", dilation=(1, 2))),
    "pointwise": ((2, 8, 5, 6), (4, 8, 1, 1), False, dict()),
}


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", sorted(CONV_F_CASES))
def test_conv2d_matches_torch(gen, case, dtype):
    xs, ws, bias, kwargs = CONV_F_CASES[case]
    x, w = randn(gen, *xs, dtype=dtype), randn(gen, *ws, dtype=dtype)
    b = randn(gen, ws[0], dtype=dtype) if bias else None
    y = compare_fn(lambda x, w, b: pt.conv2d(x, w, b, **kwargs),
                   lambda x, w, b: F.conv2d(x, w, b, **kwargs), (x, w, b), gen)
    assert pyconv_backed(y)


@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=["f32", "f64"])
def test_conv2d_activation_matches_torch(gen, dtype, activation):
    act = {"relu": F.relu, "relu6": F.relu6}[activation]
    x, w, b = randn(gen, 2, 3, 8, 8, dtype=dtype) * 2, randn(gen, 4, 3, 3, 3, dtype=dtype), randn(gen, 4, dtype=dtype)
    pre = F.conv2d(x, w, b, padding=1)
    assert (pre < 0).any() and (pre > 6).any()  # both masks' sides are reached
    compare_fn(lambda x, w, b: pt.conv2d(x, w, b, padding=1, activation=activation),
               lambda x, w, b: act(F.conv2d(x, w, b, padding=1)), (x, w, b), gen)


def test_conv2d_same_stride2_matches_tensorflow_padding(gen):
    """torch has no "same" with stride > 1: pyconv pads TensorFlow's way,
    the odd pixel bottom/right."""
    x, w = randn(gen, 1, 2, 8, 7), randn(gen, 3, 2, 3, 3)
    # H: out 4, total pad (4-1)*2+3-8 = 1 -> (0, 1); W: out 4, total (4-1)*2+3-7 = 2 -> (1, 1)
    compare_fn(lambda x, w: pt.conv2d(x, w, stride=2, padding="same"),
               lambda x, w: F.conv2d(F.pad(x, (1, 1, 0, 1)), w, stride=2), (x, w), gen)


CONVT_F_CASES = {
    "plain": ((2, 3, 5, 4), (3, 4, 3, 3), True, dict()),
    "stride-outpad": ((2, 4, 4, 5), (4, 3, 3, 3), True, dict(stride=2, padding=1, output_padding=1)),
    "groups-asym": ((1, 4, 3, 4), (4, 2, 3, 2), False, dict(groups=2, stride=(2, 3), padding=(1, 0),
                                                          output_padding=(1, 2), dilation=(1, 2))),
    "outpad-ge-stride": ((2, 2, 4, 3), (2, 3, 2, 2), True, dict(dilation=3, output_padding=2)),
}


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", sorted(CONVT_F_CASES))
def test_conv_transpose2d_matches_torch(gen, case, dtype):
    xs, ws, bias, kwargs = CONVT_F_CASES[case]
    x, w = randn(gen, *xs, dtype=dtype), randn(gen, *ws, dtype=dtype)
    b = randn(gen, ws[1] * kwargs.get("groups", 1), dtype=dtype) if bias else None
    y = compare_fn(lambda x, w, b: pt.conv_transpose2d(x, w, b, **kwargs),
                   lambda x, w, b: F.conv_transpose2d(x, w, b, **kwargs), (x, w, b), gen)
    assert pyconv_backed(y)


MAXPOOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0), dilation=(1, 2)),
    dict(kernel_size=3, stride=2, ceil_mode=True),
    dict(kernel_size=3, stride=2, padding=1, dilation=2, ceil_mode=True),
]


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", range(len(MAXPOOL_CASES)))
def test_max_pool2d_matches_torch(gen, case, dtype):
    kwargs = MAXPOOL_CASES[case]
    x = randn(gen, 2, 3, 9, 10, dtype=dtype)
    y = compare_fn(lambda x: pt.max_pool2d(x, **kwargs), lambda x: F.max_pool2d(x, **kwargs), (x,), gen)
    assert pyconv_backed(y)
    y, idx = pt.max_pool2d(x, return_indices=True, **kwargs)
    ty, tidx = F.max_pool2d(x, return_indices=True, **kwargs)
    assert torch.equal(y, ty)  # max pooling is exact
    assert idx.dtype == torch.int64 and not idx.requires_grad
    assert torch.equal(idx, tidx)


def test_max_pool2d_indices_are_not_differentiable(gen):
    x = distinct(gen, 1, 2, 6, 6).requires_grad_(True)
    y, idx = pt.max_pool2d(x, 2, return_indices=True)
    assert y.requires_grad and not idx.requires_grad
    assert idx.grad_fn is None
    (y * 3).sum().backward()
    expected = torch.zeros(1, 2, 36, dtype=torch.float64)
    expected.scatter_(2, idx.reshape(1, 2, -1), 3.0)
    assert torch.equal(x.grad, expected.reshape(1, 2, 6, 6))


AVGPOOL_CASES = [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=3, stride=2, padding=1, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),
    dict(kernel_size=(2, 3), stride=2, padding=(1, 1), ceil_mode=True, count_include_pad=False),
]


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", range(len(AVGPOOL_CASES)))
def test_avg_pool2d_matches_torch(gen, case, dtype):
    kwargs = AVGPOOL_CASES[case]
    x = randn(gen, 2, 3, 9, 10, dtype=dtype)
    y = compare_fn(lambda x: pt.avg_pool2d(x, **kwargs), lambda x: F.avg_pool2d(x, **kwargs), (x,), gen)
    assert pyconv_backed(y)


@pytest.mark.parametrize("op", ["conv2d", "max_pool2d", "avg_pool2d"])
def test_nhwc_layout_matches_torch(gen, op):
    """layout="NHWC" takes (N,H,W,C) tensors (and HWIO weights)."""
    x = randn(gen, 2, 3, 7, 8)
    x_nhwc = x.permute(0, 2, 3, 1).contiguous()
    if op == "conv2d":
        w = randn(gen, 4, 3, 3, 3)
        b = randn(gen, 4)
        w_hwio = w.permute(2, 3, 1, 0).contiguous()

        def ours(x, w, b):
            return pt.conv2d(x, w, b, padding=1, layout="NHWC")

        def theirs(x, w, b):
            return F.conv2d(x.permute(0, 3, 1, 2), w.permute(3, 2, 0, 1), b, padding=1).permute(0, 2, 3, 1)

        compare_fn(ours, theirs, (x_nhwc, w_hwio, b), gen)
    else:
        def ours(x):
            return getattr(pt, op)(x, 3, 2, 1, layout="NHWC")

        def theirs(x):
            return getattr(F, op)(x.permute(0, 3, 1, 2), 3, 2, 1).permute(0, 2, 3, 1)

        compare_fn(ours, theirs, (x_nhwc,), gen)


# ==========================================================================
# modules against their torch.nn twins


def twin_check(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, gen, dtype,
               call_kwargs: Optional[Dict[str, Any]] = None) -> None:
    """Same state_dict, same forward, same input and parameter gradients."""
    assert isinstance(ours, type(theirs))  # a subclass of the torch.nn module
    ours.load_state_dict(theirs.state_dict())
    ours.to(dtype)
    theirs.to(dtype)
    call_kwargs = call_kwargs or {}
    xa, xb = leaves(x.to(dtype), x.to(dtype))
    ya, yb = ours(xa, **call_kwargs), theirs(xb, **call_kwargs)
    if isinstance(yb, tuple):  # MaxPool2d(return_indices=True)
        (ya, ia), (yb, ib) = ya, yb
        assert ia.dtype == torch.int64
        assert torch.equal(ia, ib)
    assert pyconv_backed(ya)
    assert_tclose(ya, yb, "forward")
    g = torch.randn(yb.shape, generator=gen, dtype=dtype)
    ya.backward(g)
    yb.backward(g)
    assert_tclose(xa.grad, xb.grad, "grad_x")
    for (name_a, pa), (name_b, pb) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert name_a == name_b
        assert pa.grad is not None, name_a
        assert_tclose(pa.grad, pb.grad, name_a)


CONV_MODULES = {
    "padding1": ((3, 6, 3), dict(padding=1)),
    "same-dilation": ((3, 4, (3, 4)), dict(padding="same", dilation=(2, 1))),
    "same-reflect": ((3, 4, 3), dict(padding="same", padding_mode="reflect")),
    "reflect-groups-stride": ((4, 6, 3), dict(stride=2, padding=2, padding_mode="reflect", groups=2)),
    "circular-no-bias": ((3, 4, (3, 2)), dict(padding=(1, 2), padding_mode="circular", bias=False)),
    "replicate": ((3, 2, 5), dict(padding=(2, 1), padding_mode="replicate", dilation=(1, 2))),
    "valid-no-bias": ((3, 5, 2), dict(stride=(1, 2), padding="valid", bias=False)),
}


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", sorted(CONV_MODULES))
def test_conv2d_module_matches_torch(gen, case, dtype):
    args, kwargs = CONV_MODULES[case]
    theirs = nn.Conv2d(*args, **kwargs)
    ours = pt.Conv2d(*args, **kwargs)
    twin_check(ours, theirs, randn(gen, 2, args[0], 9, 10), gen, dtype)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=["f32", "f64"])
def test_conv2d_module_unbatched_input(gen, dtype):
    theirs = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    twin_check(pt.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), theirs, randn(gen, 3, 7, 6), gen, dtype)


CONVT_MODULES = {
    "stride-outpad-groups": ((4, 6, 3), dict(stride=2, padding=1, output_padding=1, groups=2), None),
    "asym-no-bias": ((3, 2, (3, 2)), dict(stride=(2, 3), dilation=(1, 2), bias=False), None),
    "output_size-hw": ((3, 4, 3), dict(stride=2, padding=1), dict(output_size=[18, 20])),
    "output_size-full": ((3, 4, 3), dict(stride=3, padding=1), dict(output_size=[2, 4, 27, 29])),
}


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", sorted(CONVT_MODULES))
def test_conv_transpose2d_module_matches_torch(gen, case, dtype):
    args, kwargs, call_kwargs = CONVT_MODULES[case]
    theirs = nn.ConvTranspose2d(*args, **kwargs)
    ours = pt.ConvTranspose2d(*args, **kwargs)
    x = randn(gen, 2, args[0], 9, 10)
    twin_check(ours, theirs, x, gen, dtype, call_kwargs)
    if call_kwargs:  # output_size reached through output_padding > 0
        y = ours.to(dtype)(x.to(dtype), **call_kwargs)
        assert list(y.shape[-2:]) == list(call_kwargs["output_size"][-2:])
        assert y.shape[-2:] != ours(x.to(dtype)).shape[-2:]


MAXPOOL_MODULES = {
    "k2": ((2,), dict()),
    "indices": ((3,), dict(stride=2, padding=1, return_indices=True)),
    "ceil": ((3,), dict(stride=2, ceil_mode=True)),
    "ceil-indices-dilation": (((3, 2),), dict(stride=(2, 1), padding=1, dilation=2, ceil_mode=True,
                                              return_indices=True)),
}


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", sorted(MAXPOOL_MODULES))
def test_max_pool2d_module_matches_torch(gen, case, dtype):
    args, kwargs = MAXPOOL_MODULES[case]
    twin_check(pt.MaxPool2d(*args, **kwargs), nn.MaxPool2d(*args, **kwargs), randn(gen, 2, 3, 9, 10), gen, dtype)


AVGPOOL_MODULES = {
    "k2": ((2,), dict()),
    "exclude-pad": ((3,), dict(stride=2, padding=1, count_include_pad=False)),
    "ceil": ((3,), dict(stride=2, padding=1, ceil_mode=True)),
    "ceil-exclude-pad": (((2, 3),), dict(stride=2, padding=1, ceil_mode=True, count_include_pad=False)),
    "divisor": ((2,), dict(divisor_override=3)),
    "divisor-pad": ((3,), dict(stride=2, padding=1, divisor_override=5)),
    "divisor-pad-exclude": ((3,), dict(stride=2, padding=1, divisor_override=7, count_include_pad=False)),
}


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("case", sorted(AVGPOOL_MODULES))
def test_avg_pool2d_module_matches_torch(gen, case, dtype):
    args, kwargs = AVGPOOL_MODULES[case]
    twin_check(pt.AvgPool2d(*args, **kwargs), nn.AvgPool2d(*args, **kwargs), randn(gen, 2, 3, 9, 10), gen, dtype)


# ==========================================================================
# drop-in replacement

PYCONV_NN = types.SimpleNamespace(Conv2d=pt.Conv2d, ConvTranspose2d=pt.ConvTranspose2d,
                                  MaxPool2d=pt.MaxPool2d, AvgPool2d=pt.AvgPool2d)


def small_model(layers) -> nn.Sequential:
    return nn.Sequential(
        layers.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        layers.MaxPool2d(2),
        layers.Conv2d(8, 8, 3, padding="same", groups=2, padding_mode="reflect"),
        nn.ReLU(),
        layers.AvgPool2d(2, ceil_mode=True),
        layers.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 5),
    )


def test_drop_in_model_matches_torch(gen):
    torch.manual_seed(1)
    reference = small_model(nn)
    ours = small_model(PYCONV_NN)
    ours.load_state_dict(reference.state_dict())
    assert sum(isinstance(m, (pt.Conv2d, pt.ConvTranspose2d, pt.MaxPool2d, pt.AvgPool2d)) for m in ours) == 5
    x = torch.randn(4, 3, 12, 12, generator=gen)
    target = torch.randn(4, 5, generator=gen)
    outputs, grads = [], []
    for model in (reference, ours):
        model.zero_grad()
        y = model(x)
        loss = ((y - target) ** 2).mean()
        loss.backward()
        outputs.append(y)
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert_tclose(outputs[1], outputs[0], "output")
    assert grads[1].keys() == grads[0].keys()
    for name in grads[0]:
        assert grads[1][name] is not None, name
        assert_tclose(grads[1][name], grads[0][name], name)
    # and one SGD step keeps them together
    for model in (reference, ours):
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
    assert_tclose(ours(x), reference(x), "after a step")


def test_drop_in_model_interface_matches_torch():
    reference, ours = small_model(nn), small_model(PYCONV_NN)
    assert repr(ours) == repr(reference)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in reference.named_parameters()]
    assert list(ours.state_dict().keys()) == list(reference.state_dict().keys())
    for (_, a), (_, b) in zip(ours.named_parameters(), reference.named_parameters()):
        assert a.shape == b.shape and a.dtype == b.dtype
    for cls in (pt.Conv2d, pt.ConvTranspose2d, pt.MaxPool2d, pt.AvgPool2d):
        assert issubclass(cls, getattr(nn, cls.__name__))


@pytest.mark.parametrize("name,args,kwargs", [
    ("Conv2d", (3, 8, 3), dict()),
    ("Conv2d", (4, 6, (3, 2)), dict(groups=2, bias=False)),
    ("ConvTranspose2d", (4, 6, 3), dict(stride=2, groups=2)),
])
def test_default_initialisation_uses_torch_rng(name, args, kwargs):
    torch.manual_seed(0)
    theirs = getattr(nn, name)(*args, **kwargs)
    after_theirs = torch.rand(4)
    torch.manual_seed(0)
    ours = getattr(pt, name)(*args, **kwargs)
    after_ours = torch.rand(4)
    assert type(ours) is getattr(pt, name)
    sa, sb = ours.state_dict(), theirs.state_dict()
    assert sa.keys() == sb.keys()
    for k in sb:
        assert torch.equal(sa[k], sb[k]), k
    # the same amount of random numbers was drawn
    assert torch.equal(after_ours, after_theirs)
    # and a different seed gives different weights: the check above can fail
    torch.manual_seed(1)
    assert not torch.equal(getattr(pt, name)(*args, **kwargs).weight, theirs.weight)


# ==========================================================================
# zero copy


@pytest.fixture
def spy(monkeypatch):
    """Records the arrays pyconv.torch hands to pyconv.autograd and the
    outputs it gets back."""
    calls: List[Dict[str, Any]] = []

    def wrap(name):
        original = getattr(pt, name)

        def spying(*args, **kwargs):
            y, pullback = original(*args, **kwargs)
            calls.append(dict(name=name, args=args, y=y))
            return y, pullback

        monkeypatch.setattr(pt, name, spying)

    for name in ("conv2d_vjp", "conv_transpose2d_vjp", "max_pool2d_vjp", "avg_pool2d_vjp"):
        wrap(name)
    return calls


def _same_memory(a: np.ndarray, t: torch.Tensor) -> bool:
    """The array is a view of the tensor's memory: same address, shape, strides."""
    itemsize = t.element_size()
    return (a.__array_interface__["data"][0] == t.data_ptr() and a.shape == tuple(t.shape)
            and a.strides == tuple(s * itemsize for s in t.stride()))


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d"])
@pytest.mark.parametrize("view", ["contiguous", "transposed", "sliced"])
def test_tensors_cross_without_copies(gen, spy, op, view):
    base = torch.randn(2, 4, 10, 12, generator=gen)
    x = {"contiguous": base, "transposed": base.transpose(2, 3), "sliced": base[:, 1:, ::2, 3:]}[view]
    c = x.shape[1]
    if op == "conv2d":
        w = torch.randn(5, c, 3, 3, generator=gen)
        y = pt.conv2d(x, w, padding=1)
        expected = F.conv2d(x, w, padding=1)
    elif op == "conv_transpose2d":
        w = torch.randn(c, 2, 3, 3, generator=gen)
        y = pt.conv_transpose2d(x, w, stride=2)
        expected = F.conv_transpose2d(x, w, stride=2)
    else:
        y = getattr(pt, op)(x, 3, 2, 1)
        expected = getattr(F, op)(x, 3, 2, 1)
    assert_tclose(y, expected, "forward")
    (call,) = spy
    # the input went in as a view of the tensor (strides included) ...
    assert _same_memory(call["args"][0], x)
    if op.startswith("conv"):
        assert _same_memory(call["args"][1], w)
    # ... and the output came back as the very array pyconv wrote
    assert y.data_ptr() == call["y"].__array_interface__["data"][0]
    a = y.numpy()
    assert np.shares_memory(a, call["y"])
    a[(0,) * a.ndim] = 123.0
    assert y[(0,) * y.ndim].item() == 123.0


# ==========================================================================
# non-contiguous and channels_last tensors


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("form", ["channels_last", "transposed", "sliced", "expanded"])
def test_strided_inputs_conv2d(gen, form, dtype):
    w = randn(gen, 6, 4, 3, 3, dtype=dtype)
    b = randn(gen, 6, dtype=dtype)
    if form == "channels_last":
        x = randn(gen, 2, 4, 9, 8, dtype=dtype).to(memory_format=torch.channels_last)
        w = w.to(memory_format=torch.channels_last)
        assert not x.is_contiguous()
    elif form == "transposed":
        x = randn(gen, 2, 4, 8, 9, dtype=dtype).transpose(2, 3)
    elif form == "sliced":
        x = randn(gen, 3, 8, 18, 10, dtype=dtype)[1:, ::2, ::2, 1:]
    else:  # broadcast along the batch: stride 0
        x = randn(gen, 1, 4, 9, 8, dtype=dtype).expand(3, 4, 9, 8)
    assert not x.is_contiguous()
    # forward and backward on the strided tensors themselves
    xa, xb = x.detach().requires_grad_(True), x.detach().requires_grad_(True)
    wa, wb = leaves(w, w)
    ya = pt.conv2d(xa, wa, b, stride=(1, 2), padding=1)
    yb = F.conv2d(xb, wb, b, stride=(1, 2), padding=1)
    assert_tclose(ya, yb, "forward")
    g = torch.randn(yb.shape, generator=gen, dtype=dtype)
    ya.backward(g)
    yb.backward(g)
    assert_tclose(xa.grad, xb.grad, "grad_x")
    assert_tclose(wa.grad, wb.grad, "grad_w")
    # the input tensor was not written to
    assert torch.equal(xa.detach(), x)


@pytest.mark.parametrize("op", ["max_pool2d", "avg_pool2d", "conv_transpose2d"])
def test_channels_last_inputs_other_ops(gen, op):
    x = randn(gen, 2, 4, 9, 8, dtype=torch.float32).to(memory_format=torch.channels_last)
    if op == "conv_transpose2d":
        w = randn(gen, 4, 3, 3, 3, dtype=torch.float32)
        compare_fn(lambda x, w: pt.conv_transpose2d(x, w, stride=2, padding=1),
                   lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1), (x, w), gen)
    else:
        compare_fn(lambda x: getattr(pt, op)(x, 3, 2, 1, ceil_mode=True),
                   lambda x: getattr(F, op)(x, 3, 2, 1, ceil_mode=True), (x,), gen)


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d"])
def test_strided_grad_y(gen, op):
    """Backward receives whatever grad_y autograd makes: a broadcast one from
    .sum() (stride 0) or a transposed one."""
    x = randn(gen, 2, 3, 8, 7)
    w = randn(gen, 3, 3, 3, 3)
    fns = {
        "conv2d": (lambda x, w: pt.conv2d(x, w, padding=1), lambda x, w: F.conv2d(x, w, padding=1)),
        "conv_transpose2d": (lambda x, w: pt.conv_transpose2d(x, w, stride=2),
                             lambda x, w: F.conv_transpose2d(x, w, stride=2)),
        "max_pool2d": (lambda x, w: pt.max_pool2d(x, 2), lambda x, w: F.max_pool2d(x, 2)),
        "avg_pool2d": (lambda x, w: pt.avg_pool2d(x, 2), lambda x, w: F.avg_pool2d(x, 2)),
    }
    ours, theirs = fns[op]
    for reduce in (lambda y: y.sum(), lambda y: (y.transpose(2, 3) * torch.arange(y.shape[2]).double()).sum()):
        (xa, wa), (xb, wb) = leaves(x, w), leaves(x, w)
        reduce(ours(xa, wa)).backward()
        reduce(theirs(xb, wb)).backward()
        assert_tclose(xa.grad, xb.grad, "grad_x")
        if op.startswith("conv"):
            assert_tclose(wa.grad, wb.grad, "grad_w")


@pytest.mark.parametrize("what", ["input", "activated-output"])
def test_in_place_change_after_forward_is_detected(gen, what):
    """torch raises "modified by an inplace operation" when a tensor that
    backward needs changed after the forward; a drop-in must raise too (or,
    having kept its own copy, still return the right gradient)."""
    x0, w0 = randn(gen, 1, 2, 6, 6), randn(gen, 3, 2, 3, 3)
    x, w = x0.clone().requires_grad_(what == "activated-output"), w0.clone().requires_grad_(True)
    if what == "input":
        y = pt.conv2d(x, w)
        x.add_(1.0)  # x is needed for grad_w
        loss = y.sum()
        xr, wr = leaves(x0, w0)
        expected = [(w, wr)]
        F.conv2d(xr, wr).sum().backward()
    else:
        y = pt.conv2d(x, w, activation="relu")
        y.sub_(100.0)  # y is needed for relu's mask
        loss = y.sum()
        xr, wr = leaves(x0, w0)
        expected = [(x, xr), (w, wr)]
        (F.relu(F.conv2d(xr, wr)) - 100.0).sum().backward()
    try:
        loss.backward()
    except RuntimeError as e:
        assert "inplace" in str(e)
        return
    for got, want in expected:
        assert_tclose(got.grad, want.grad, "gradient after an in-place change")


# ==========================================================================
# errors

ALL_OPS = {
    "conv2d": lambda x, w: pt.conv2d(x, w),
    "conv_transpose2d": lambda x, w: pt.conv_transpose2d(x, w),
    "max_pool2d": lambda x, w: pt.max_pool2d(x, 2),
    "avg_pool2d": lambda x, w: pt.avg_pool2d(x, 2),
    "Conv2d": lambda x, w: pt.Conv2d(1, 1, 3).to(x.dtype)(x),
    "MaxPool2d": lambda x, w: pt.MaxPool2d(2)(x),
}


@pytest.mark.parametrize("op", sorted(ALL_OPS))
def test_non_cpu_tensor_raises_type_error(op):
    x = torch.empty(1, 1, 4, 4, device="meta")
    w = torch.empty(1, 1, 3, 3, device="meta")
    with pytest.raises(TypeError, match="CPU"):
        ALL_OPS[op](x, w)


@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_non_cpu_weight_raises_type_error(op):
    x = torch.zeros(1, 1, 4, 4)
    w = torch.empty(1, 1, 3, 3, device="meta")
    with pytest.raises(TypeError, match="CPU"):
        ALL_OPS[op](x, w)


@pytest.mark.parametrize("op,dtype", [
    (op, dtype) for op in sorted(ALL_OPS)
    for dtype in (torch.float16, torch.bfloat16, torch.int64, torch.int32)
    if op != "Conv2d" or dtype.is_floating_point  # nn.Conv2d's parameters cannot be integers
], ids=str)
def test_unsupported_dtype_raises_type_error(op, dtype):
    x = torch.ones(1, 1, 4, 4, dtype=dtype)
    w = torch.ones(1, 1, 3, 3, dtype=dtype)
    with pytest.raises(TypeError, match=str(dtype)):
        ALL_OPS[op](x, w)


@pytest.mark.parametrize("which", ["weight", "bias", "x"])
@pytest.mark.parametrize("op", ["conv2d", "conv_transpose2d"])
def test_mixed_float_dtypes_raise_type_error(op, which):
    ts = {"x": torch.zeros(1, 2, 5, 5), "weight": torch.zeros(2, 2, 3, 3), "bias": torch.zeros(2)}
    ts[which] = ts[which].double()
    fn = getattr(pt, op)
    with pytest.raises(TypeError, match="float32.*float64|float64.*float32"):
        fn(ts["x"], ts["weight"], ts["bias"])
    # the same call in one dtype works
    ts = {k: v.double() for k, v in ts.items()}
    assert fn(ts["x"], ts["weight"], ts["bias"]).dtype == torch.float64


def test_mixed_dtypes_module_raises_type_error():
    conv = pt.Conv2d(2, 3, 3)  # float32 parameters
    with pytest.raises(TypeError):
        conv(torch.zeros(1, 2, 5, 5, dtype=torch.float64))


def test_avg_pool2d_divisor_override_with_ceil_mode_raises():
    with pytest.raises(ValueError, match="divisor_override"):
        pt.AvgPool2d(3, divisor_override=3, ceil_mode=True)
    nn.AvgPool2d(3, divisor_override=3, ceil_mode=True)  # torch itself takes it
    pt.AvgPool2d(3, divisor_override=3)  # fine without ceil_mode


def test_non_tensor_argument_raises_type_error():
    with pytest.raises(TypeError):
        pt.conv2d(np.zeros((1, 1, 4, 4), np.float32), torch.zeros(1, 1, 3, 3))
