"""Pure-NumPy implementations of pyconv's ops: the oracle of the test-suite.

Same names and signatures as :mod:`pyconv` (no ``algo``, no ``out``); the
same argument normalisation (shared code, so they cannot disagree about what
a call means); the same dtype rule, so float32 inputs compute in float32 and
everything else in float64.  Clarity over speed, but vectorised: one
matrix product per kernel tap over strided views, so real layer shapes take well
under a second.

The tests compare every pyconv kernel with these functions computed in
float64, by DESIGN.md's tolerance: ``rtol=1e-4, atol=1e-4*max(1, max|ref|)``
for float32 results.

Examples
--------
>>> import numpy as np, pyconv
>>> x = np.arange(16.0).reshape(1, 1, 4, 4)
>>> w = np.ones((1, 1, 2, 2))
>>> pyconv.reference.conv2d(x, w)[0, 0]
array([[10., 14., 18.],
       [26., 30., 34.],
       [42., 46., 50.]])
>>> np.array_equal(pyconv.reference.conv2d(x, w), pyconv.conv2d(x, w))
True
"""

from ._conv import conv2d, conv_output_shape, depthwise_conv2d, separable_conv2d
from ._grad import conv2d_grad_bias, conv2d_grad_input, conv2d_grad_weight, conv_transpose2d
from ._pool import (
    avg_pool2d,
    avg_pool2d_grad,
    global_avg_pool2d,
    global_max_pool2d,
    max_pool2d,
    max_pool2d_grad,
    pool_output_shape,
)

__all__ = [
    "avg_pool2d",
    "avg_pool2d_grad",
    "conv2d",
    "conv2d_grad_bias",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "conv_transpose2d",
    "conv_output_shape",
    "depthwise_conv2d",
    "global_avg_pool2d",
    "global_max_pool2d",
    "max_pool2d",
    "max_pool2d_grad",
    "pool_output_shape",
    "separable_conv2d",
]
