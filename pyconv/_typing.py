"""Type aliases of pyconv's public signatures, written once.

They say in types what DESIGN.md says in words (the accepted forms of
``stride``, ``padding``, ``layout``...), so that ``mypy --strict`` checks a
user's calls the way the functions check them at run time.  Nothing here
runs: the module only defines names (and ``numpy.typing`` is already loaded
by NumPy itself, so importing it costs nothing measurable).

Run-time checks stay the authority: they also refuse what a type cannot
express (a ``bool`` where an int is wanted, a pair of the wrong length, a
negative stride), and they accept the lower-case spellings of layouts and
padding strings that the ``Literal`` types leave out on purpose.
"""

from __future__ import annotations

from typing import Any, List, Literal, Optional, Protocol, Sequence, SupportsIndex, Tuple, TypedDict, Union

import numpy as np
import numpy.typing as npt

__all__ = [
    "Activation",
    "Algo",
    "ArrayInput",
    "Config",
    "ExplicitPadding",
    "FloatArray",
    "IndexArray",
    "IntOrPair",
    "Isa",
    "Layout",
    "Padding",
    "Plan",
    "Shape",
    "SupportsDLPack",
]


class SupportsDLPack(Protocol):
    """Any object exporting the DLPack protocol (PyTorch CPU tensors, JAX arrays...)."""

    def __dlpack__(self, *args: Any, **kwargs: Any) -> Any: ...


#: An array operand: anything ``numpy.asarray`` takes, or a DLPack exporter.
ArrayInput = Union[npt.ArrayLike, SupportsDLPack]

#: A result array: float32 or float64, by the dtype rule of DESIGN.md.
FloatArray = npt.NDArray[np.floating[Any]]

#: Max-pooling indices: flat positions ``h * W + w`` in each input plane.
IndexArray = npt.NDArray[np.int64]

#: ``stride``, ``dilation``, ``kernel_size``, ``output_padding``: one int for
#: both axes or an ``(h, w)`` pair (tuple, list or NumPy integers).
IntOrPair = Union[SupportsIndex, Sequence[SupportsIndex]]

#: Numeric padding: ``p``, ``(ph, pw)`` or ``((top, bottom), (left, right))``.
ExplicitPadding = Union[SupportsIndex, Sequence[SupportsIndex], Sequence[Sequence[SupportsIndex]]]

#: ``padding`` of conv2d and the pools: numeric, or TensorFlow's string forms.
Padding = Union[ExplicitPadding, Literal["same", "valid"]]

#: A full array shape in the layout's order (``ndarray.shape`` is one).
Shape = Sequence[SupportsIndex]

Layout = Literal["NCHW", "NHWC"]
Activation = Optional[Literal["relu", "relu6"]]
Algo = Literal["auto", "direct", "im2col", "depthwise", "pointwise"]
Isa = Literal["generic", "avx2", "avx512"]


class Plan(TypedDict):
    """What :func:`pyconv.plan` returns."""

    algo: str
    isa: Isa
    pads: Tuple[int, int, int, int]
    out_shape: Tuple[int, ...]
    flops: int
    workspace_bytes: int


class Config(TypedDict):
    """What :func:`pyconv.config` returns."""

    version: str
    compiler: str
    isa_compiled: List[Isa]
    isa_available: List[Isa]
    isa: Isa
    openmp: bool
    openmp_version: int
    threads: int
    default_threads: int
    cpu: str
    machine: str
    numpy: str
