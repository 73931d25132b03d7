"""Pure-NumPy implementations of pyconv's ops: the oracle of the test-suite.

Same names and signatures as :mod:`pyconv` (no ``algo``, no ``out``); the
same argument normalisation (shared code, so they cannot disagree about what
a call means); the same dtype rule, so float32 inputs compute in float32 and
everything else in float64.  Clarity over speed, but vectorised: one
matrix product per kernel tap over strided views, so real layer shapes take well
under a second.
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
