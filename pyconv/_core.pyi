"""Type stubs of pyconv's compiled module (csrc/bindings.cpp).

Private: the Python layer validates every argument before calling these
(contiguous, aligned, native-order float32/float64 buffers of the exact
sizes; shapes already resolved), and the bindings re-check what memory
safety depends on.  Integer codes, as in the C++ enums:

- ``layout``: 0 = NCHW, 1 = NHWC;
- ``activation``: 0 = none, 1 = relu, 2 = relu6;
- ``op`` (pooling): 0 = max, 1 = average;
- ``algo``: a kernel name, "direct", "im2col", "pointwise" or "depthwise";
- ``shape`` (convolutions): the 18 integers of ``ConvGeometry.core_tuple()``
  (n, c, h, w, oc, oh, ow, kh, kw, sh, sw, dh, dw, top, bottom, left, right,
  groups); (pooling) the 16 of ``PoolGeometry.core_tuple()``.
"""

from typing import Any, Dict, List, Literal, Optional, Sequence, TypedDict

import numpy as np
import numpy.typing as npt

_Array = npt.NDArray[Any]
_Isa = Literal["generic", "avx2", "avx512"]

class _BuildInfo(TypedDict):
    compiler: str
    openmp: bool
    openmp_version: int
    shape_fields: int

# ---- convolutions ------------------------------------------------------------

def conv2d(
    x: _Array,
    weight: _Array,
    bias: Optional[_Array],
    out: _Array,
    shape: Sequence[int],
    layout: int,
    activation: int,
    algo: str,
    packed: Optional[_Array] = None,
) -> None: ...
def separable_conv2d(
    x: _Array,
    depthwise_weight: _Array,
    pointwise_weight: _Array,
    bias: Optional[_Array],
    out: _Array,
    dw_shape: Sequence[int],
    pw_shape: Sequence[int],
    layout: int,
    activation: int,
) -> None: ...
def conv2d_grad_weight(x: _Array, grad_out: _Array, out: _Array, shape: Sequence[int], layout: int) -> None: ...
def conv2d_grad_input(
    weight: _Array,
    grad_out: _Array,
    out: _Array,
    shape: Sequence[int],
    layout: int,
    algo: str,
) -> None: ...
def interleave_phases(
    grad_x: _Array,
    phases: List[Optional[_Array]],
    n: int,
    c: int,
    h: int,
    w: int,
    sh: int,
    sw: int,
    layout: int,
) -> None: ...
def pack_weight(
    weight: _Array, c: int, oc: int, kh: int, kw: int, groups: int, layout: int, algo: str
) -> _Array: ...
def workspace_bytes(shape: Sequence[int], layout: int, has_bias: bool, algo: str, elem_bytes: int) -> int: ...

# ---- pooling -----------------------------------------------------------------

def pool_forward(
    x: _Array,
    out: _Array,
    indices: Optional[npt.NDArray[np.int64]],
    shape: Sequence[int],
    layout: int,
    op: int,
    count_include_pad: bool,
    keys: Optional[npt.NDArray[np.uint8]] = None,
) -> None: ...
def pool_backward(
    x: Optional[_Array],
    grad_out: _Array,
    grad_x: _Array,
    shape: Sequence[int],
    layout: int,
    op: int,
    count_include_pad: bool,
    keys: Optional[npt.NDArray[np.uint8]] = None,
) -> None: ...

# ---- runtime -----------------------------------------------------------------

def set_isa(cap: str) -> _Isa: ...
def get_isa() -> _Isa: ...
def best_isa() -> _Isa: ...
def isa_compiled() -> List[_Isa]: ...
def isa_available() -> List[_Isa]: ...
def set_num_threads(n: int) -> None: ...
def get_num_threads() -> int: ...
def default_num_threads() -> int: ...
def transpose_taps(weight: npt.NDArray[Any], out: npt.NDArray[Any], layout: int, groups: int,
                   rows: Sequence[int], cols: Sequence[int]) -> None: ...
def all_finite(a: _Array) -> bool: ...
def empty(shape: Sequence[int], dtype: np.dtype[Any]) -> npt.NDArray[Any]: ...
def pool_info() -> Dict[str, int]: ...
def pool_trim() -> int: ...
def pool_set_limit(bytes: int) -> None: ...
def copy_bandwidth(bytes: int, repeats: int, nthreads: int) -> float: ...
def peak_flops(elem_bytes: int, iters: int, nthreads: int) -> float: ...
def build_info() -> _BuildInfo: ...
