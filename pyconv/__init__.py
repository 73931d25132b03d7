"""pyconv: fast, trustworthy CPU convolutions for NumPy.

C++ kernels (SIMD with runtime ISA dispatch, OpenMP) behind a NumPy-first
API; :mod:`pyconv.reference` holds pure-NumPy twins of every op,
:mod:`pyconv.autograd` their vector-Jacobian products and
:mod:`pyconv.torch` (with PyTorch installed) differentiable
``torch.autograd`` wrappers and ``torch.nn`` modules.

Layout ``"NCHW"`` (default, PyTorch) takes ``(C_out, C_in/groups, KH, KW)``
weights; ``"NHWC"`` (TensorFlow) takes ``(KH, KW, C_in/groups, C_out)``.  A
3-D input is one unbatched image.  Results are float64 if any array operand
is float64 or none is floating, else float32.  Bad values raise
``ValueError``, bad types ``TypeError``, with a message that names the
function, the argument and the value seen.

Examples
--------
>>> import numpy as np, pyconv
>>> x = np.ones((2, 3, 8, 8), np.float32)                  # (N, C, H, W)
>>> w = np.ones((4, 3, 3, 3), np.float32)                  # (C_out, C_in, KH, KW)
>>> y = pyconv.conv2d(x, w, stride=2, padding="same", activation="relu")
>>> y.shape, y.dtype
((2, 4, 4, 4), dtype('float32'))
>>> pyconv.max_pool2d(y, 2).shape
(2, 4, 2, 2)
>>> np.array_equal(y, pyconv.reference.conv2d(x, w, stride=2, padding="same", activation="relu"))
True
"""

__version__ = "0.1.0"

try:
    from . import _core  # noqa: F401  (the compiled kernels)
except ImportError as exc:  # pragma: no cover - only outside an installed package
    raise ImportError(
        "pyconv's compiled module is missing: this looks like an import from a "
        "source tree that was never built. `pip install .` builds it (and also "
        f"places it beside the sources, so the checkout imports too). ({exc})"
    ) from exc

from ._conv import conv2d, conv_output_shape, plan
from ._grad import (
    conv2d_grad_bias,
    conv2d_grad_input,
    conv2d_grad_weight,
    conv_transpose2d,
    transpose_output_shape,
)
from ._depthwise import depthwise_conv2d, separable_conv2d
from ._pool import (
    avg_pool2d,
    avg_pool2d_grad,
    global_avg_pool2d,
    global_max_pool2d,
    max_pool2d,
    max_pool2d_grad,
    pool_output_shape,
)
from ._prepack import PackedWeight, prepack
from ._runtime import (
    buffer_pool_info,
    config,
    get_num_threads,
    num_threads,
    peak_gflops,
    release_buffers,
    set_buffer_pool_limit,
    set_max_isa,
    set_num_threads,
    show_config,
)
from ._runtime import _apply_env_isa, _apply_env_pool
from . import reference
from . import _threadpool

_apply_env_isa()
_apply_env_pool()
del _apply_env_isa, _apply_env_pool
_threadpool.install()  # threadpoolctl sees and limits pyconv's pool

__all__ = [
    "PackedWeight",
    "__version__",
    "avg_pool2d",
    "avg_pool2d_grad",
    "buffer_pool_info",
    "config",
    "conv2d",
    "conv2d_grad_bias",
    "conv2d_grad_input",
    "conv2d_grad_weight",
    "conv_transpose2d",
    "conv_output_shape",
    "depthwise_conv2d",
    "get_num_threads",
    "global_avg_pool2d",
    "global_max_pool2d",
    "max_pool2d",
    "max_pool2d_grad",
    "num_threads",
    "peak_gflops",
    "plan",
    "pool_output_shape",
    "prepack",
    "reference",
    "release_buffers",
    "set_buffer_pool_limit",
    "set_max_isa",
    "separable_conv2d",
    "set_num_threads",
    "show_config",
    "transpose_output_shape",
]
