"""A small, realistic pyconv user script, checked by ``mypy --strict``.

tests/test_typing.py type-checks it (and also runs it): it exercises the
public API the way a user's code does, so a wrong or missing annotation in
pyconv shows up as a mypy error here rather than in someone's CI.  Keep it
free of ``Any``-typed escape hatches: every value below has the type pyconv
declares for it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import numpy.typing as npt

import pyconv
import pyconv.reference
from pyconv.autograd import avg_pool2d_vjp, conv2d_vjp, max_pool2d_vjp

Array = npt.NDArray[np.floating[Any]]


def conv_block(x: Array, w: pyconv.PackedWeight, b: Array) -> Array:
    """conv (prepacked weight, fused bias + relu) then 2x2 max pooling."""
    y = pyconv.conv2d(x, w, b, stride=1, padding="same", activation="relu", algo="auto")
    pooled: Array = pyconv.max_pool2d(y, kernel_size=2, stride=2)
    return pooled


def main() -> Dict[str, object]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    b1 = np.zeros(8, np.float32)

    # Shapes, plans and configuration, before computing anything.
    out_shape: Tuple[int, ...] = pyconv.conv_output_shape(x.shape, w1.shape, padding=1)
    p = pyconv.plan(x.shape, w1.shape, stride=(1, 1), padding=((1, 1), (1, 1)), dtype=np.float32)
    algo: str = p["algo"]
    flops: int = p["flops"]
    pads: Tuple[int, int, int, int] = p["pads"]
    cfg = pyconv.config()
    isas: List[str] = list(cfg["isa_available"])
    threads: int = cfg["threads"]

    # Forward: every padding form, both layouts, out=, prepack.
    y = pyconv.conv2d(x, w1, b1, stride=2, padding=1)
    y = pyconv.conv2d(x, w1, padding=(1, 1), dilation=(1, 1), groups=1)
    out = np.empty(out_shape, dtype=np.float32)
    y = pyconv.conv2d(x, w1, b1, padding=((1, 1), (1, 1)), activation="relu6", out=out)
    assert y is out
    y = pyconv.conv2d(x.transpose(0, 2, 3, 1), w1.transpose(2, 3, 1, 0), layout="NHWC", padding="valid")
    packed = pyconv.prepack(w1, groups=1, layout="NCHW")
    h = conv_block(x, packed, b1)
    dw = pyconv.depthwise_conv2d(h, np.ones((16, 1, 3, 3), np.float32), padding="same")
    sep = pyconv.separable_conv2d(h, np.ones((8, 1, 3, 3), np.float32), np.ones((4, 8, 1, 1), np.float32),
                                  padding=1, activation="relu")
    up = pyconv.conv_transpose2d(h, np.ones((8, 4, 2, 2), np.float32), stride=2, output_size=(16, 16))

    # Pools.
    m, idx = pyconv.max_pool2d(x, 3, stride=2, padding=1, return_indices=True)
    first: int = int(idx.reshape(-1)[0])
    a = pyconv.avg_pool2d(x, (2, 2), ceil_mode=True, count_include_pad=False)
    g = pyconv.global_avg_pool2d(x)
    gm = pyconv.global_max_pool2d(x, keepdims=True)
    pool_shape: Tuple[int, ...] = pyconv.pool_output_shape(x.shape, 3, stride=2, padding=1)

    # Gradients, explicit and through vector-Jacobian products.
    gy = np.ones(out_shape, np.float32)
    gx = pyconv.conv2d_grad_input(gy, w1, x.shape, padding=1)
    gw = pyconv.conv2d_grad_weight(x, gy, w1.shape, padding=1)
    gb = pyconv.conv2d_grad_bias(gy)
    gmx = pyconv.max_pool2d_grad(np.ones(m.shape), x, 3, stride=2, padding=1)
    gav = pyconv.avg_pool2d_grad(np.ones(a.shape), x.shape, 2, ceil_mode=True, count_include_pad=False)

    yv, pullback = conv2d_vjp(x, w1, b1, padding=1, activation="relu")
    grad_x, grad_w, grad_b = pullback(np.ones_like(yv))
    bias_grad: Optional[Array] = grad_b
    pool_pullback: Callable[[Any], Array]
    pm, pool_pullback = max_pool2d_vjp(x, 2)
    pa, avg_pullback = avg_pool2d_vjp(x, 2, padding="same")
    pool_grads = [pool_pullback(np.ones_like(pm)), avg_pullback(np.ones_like(pa))]

    # Threads: a context manager, and the process-wide setting.
    previous = pyconv.get_num_threads()
    with pyconv.num_threads(1) as n:
        single = pyconv.conv2d(x, w1, padding=1)
        assert n == 1
    pyconv.set_num_threads(previous)
    assert np.array_equal(single, pyconv.conv2d(x, w1, padding=1))

    # The reference agrees.
    ref = pyconv.reference.conv2d(x, w1, b1, padding=1)
    np.testing.assert_allclose(pyconv.conv2d(x, w1, b1, padding=1), ref, rtol=1e-4, atol=1e-3)
    gflops: float = pyconv.peak_gflops(np.float32, threads=1)

    return {
        "algo": algo, "flops": flops, "pads": pads, "isas": isas, "threads": threads,
        "shapes": [t.shape for t in (y, h, dw, sep, up, m, a, g, gm, gx, gw, gb, gmx, gav, grad_x, grad_w)],
        "first_index": first, "pool_shape": pool_shape, "bias_grad": bias_grad is not None,
        "pool_grads": len(pool_grads), "gflops": gflops, "version": pyconv.__version__,
    }


if __name__ == "__main__":
    for key, value in main().items():
        print(f"{key}: {value}")
