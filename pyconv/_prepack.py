"""Prepacked convolution weights for layers called many times."""

from __future__ import annotations

import threading
from typing import Any, Dict, SupportsIndex, Tuple

import numpy as np
import numpy.typing as npt

from . import _core
from ._typing import ArrayInput, Layout
from ._normalize import kernel_array, _int as int_arg
from ._normalize import as_array, layout_name

__all__ = ["PackedWeight", "prepack"]


_FAMILY = {"im2col": "gemm", "pointwise": "gemm"}


class PackedWeight:
    """A convolution weight prepared once for many :func:`pyconv.conv2d` calls.

    Pass it to ``conv2d`` in place of the weight array: the kernels then skip
    reordering the weight into their own layout on every call (for a large
    layer that reorder reads and writes megabytes).  The packed forms are
    made on first use, for each algorithm family (direct, GEMM), ISA and
    dtype, and kept.

    A ``PackedWeight`` is a snapshot: it owns a read-only copy of the weight
    taken when it was made, so changing the original array afterwards never
    changes (or corrupts) its results.  After updating weights (a training
    step), call :func:`prepack` again.  Safe to share between threads.

    Made by :func:`prepack`, which checks the weight; the constructor takes
    that checked copy as it is.

    Parameters
    ----------
    weight : ndarray
        The read-only, C-contiguous copy.
    groups : int
        The ``groups`` of the calls it serves.
    layout : {"NCHW", "NHWC"}
        The ``layout`` of the calls it serves.

    Attributes
    ----------
    weight : ndarray
        The read-only copy (original dtype and layout).
    groups : int
        ``conv2d`` calls must pass the same ``groups``.
    layout : str
        ``conv2d`` calls must pass the same ``layout``.
    shape : tuple of int
        ``weight.shape``.
    dtype : numpy.dtype
        ``weight.dtype`` (it takes part in conv2d's dtype rule).

    See Also
    --------
    prepack, conv2d

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> pw = pyconv.prepack(np.ones((8, 3, 3, 3), np.float32))
    >>> pw
    PackedWeight(shape=(8, 3, 3, 3), dtype=float32, groups=1, layout='NCHW', packed_for=[])
    >>> pw.weight.flags.writeable
    False
    """

    __slots__ = ("weight", "groups", "layout", "_packs", "_lock")

    weight: npt.NDArray[Any]
    groups: int
    layout: str

    def __init__(self, weight: npt.NDArray[Any], groups: int, layout: str) -> None:
        self.weight = weight
        self.groups = groups
        self.layout = layout
        self._packs: Dict[Tuple[str, str, str], npt.NDArray[Any]] = {}
        self._lock = threading.Lock()

    @property
    def shape(self) -> Tuple[int, ...]:
        """The weight's shape, in the layout's weight format."""
        return tuple(self.weight.shape)

    @property
    def dtype(self) -> np.dtype[Any]:
        """The weight's dtype."""
        return self.weight.dtype

    def __repr__(self) -> str:
        return (f"PackedWeight(shape={self.shape}, dtype={self.dtype}, groups={self.groups}, "
                f"layout={self.layout!r}, packed_for={sorted(self._packs)})")

    def packed(self, dtype: npt.DTypeLike, c_in: int, kernel: str) -> npt.NDArray[Any]:
        """The weight in ``kernel``'s layout for the active ISA and ``dtype``.

        Used by :func:`pyconv.conv2d`; made on first use and cached (one
        pack per algorithm family, ISA and dtype), read-only.

        Parameters
        ----------
        dtype : numpy dtype
            The computation dtype, float32 or float64.
        c_in : int
            The input channels of the convolution.
        kernel : str
            The kernel it is packed for: "direct", "im2col", "pointwise" or
            "depthwise" (im2col and pointwise share the GEMM's panels).

        Returns
        -------
        ndarray
            A read-only 1-D array in the kernel's private order.
        """
        family = _FAMILY.get(kernel, kernel)  # im2col and pointwise share the GEMM's panels
        key = (_core.get_isa(), np.dtype(dtype).str, family)
        pack = self._packs.get(key)
        if pack is None:
            with self._lock:
                pack = self._packs.get(key)
                if pack is None:
                    w = kernel_array(self.weight, dtype=dtype)
                    if self.layout == "NCHW":
                        oc, _, kh, kw = w.shape
                    else:
                        kh, kw, _, oc = w.shape
                    pack = _core.pack_weight(w, c_in, oc, kh, kw, self.groups,
                                             0 if self.layout == "NCHW" else 1, kernel)
                    pack.flags.writeable = False
                    self._packs[key] = pack
        return pack


def prepack(weight: ArrayInput, groups: SupportsIndex = 1, *, layout: Layout = "NCHW") -> PackedWeight:
    """Prepare ``weight`` for repeated :func:`pyconv.conv2d` calls.

    Copies the weight (keeping its dtype) into a read-only snapshot; the
    kernel-specific packed forms are made on the first ``conv2d`` call that
    needs each and kept.  The results are bitwise identical to passing the
    array itself.

    Parameters
    ----------
    weight : array_like
        ``(C_out, C_in/groups, KH, KW)`` for NCHW, ``(KH, KW, C_in/groups,
        C_out)`` for NHWC, as for ``conv2d``.
    groups : int, default 1
        Must divide C_out, and equal the ``groups`` of the calls it is used
        in.
    layout : {"NCHW", "NHWC"}, default "NCHW"
        Must equal the ``layout`` of the calls it is used in.

    Returns
    -------
    PackedWeight
        A snapshot copy; see :class:`PackedWeight`.

    Raises
    ------
    TypeError
        A complex, object or string array; a non-int ``groups``; a
        non-string ``layout``.
    ValueError
        A weight that is not 4-D or has an empty dimension; ``groups`` < 1
        or not dividing C_out; an unknown ``layout``.  (``conv2d`` raises
        ValueError if the call's ``groups`` or ``layout`` differ.)

    See Also
    --------
    PackedWeight, conv2d

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> w = np.ones((8, 3, 3, 3), np.float32)
    >>> pw = pyconv.prepack(w)
    >>> x = np.ones((1, 3, 8, 8), np.float32)
    >>> np.array_equal(pyconv.conv2d(x, pw, padding=1), pyconv.conv2d(x, w, padding=1))
    True
    >>> pyconv.prepack(np.ones((3, 3, 1, 4)), groups=2, layout="NHWC").shape
    (3, 3, 1, 4)
    """
    fn = "prepack"
    lay = layout_name(fn, layout)
    w = as_array(fn, "weight", weight)
    if w.ndim != 4:
        raise ValueError(f"{fn}: weight must be 4-D, got shape {w.shape}")
    g = int_arg(fn, "groups", groups)
    if g < 1:
        raise ValueError(f"{fn}: groups must be >= 1, got {groups!r}")
    oc = w.shape[0] if lay == "NCHW" else w.shape[3]
    if min(w.shape) < 1:
        raise ValueError(f"{fn}: weight must not have empty dimensions, got shape {w.shape}")
    if oc % g:
        raise ValueError(f"{fn}: groups={g} does not divide the {oc} output channels of the weight")
    # The copy keeps the weight's dtype: it takes part in conv2d's dtype rule.
    copy = np.array(w, copy=True, order="C")
    copy.flags.writeable = False
    return PackedWeight(copy, g, lay)
