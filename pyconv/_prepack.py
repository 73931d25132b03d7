"""Prepacked convolution weights for layers called many times."""

from __future__ import annotations

import threading
from typing import Any, Dict, Tuple

import numpy as np

from . import _core
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

    Attributes
    ----------
    weight : ndarray
        The read-only copy (original dtype and layout).
    groups : int
    layout : str
    """

    __slots__ = ("weight", "groups", "layout", "_packs", "_lock")

    def __init__(self, weight: np.ndarray, groups: int, layout: str) -> None:
        self.weight = weight
        self.groups = groups
        self.layout = layout
        self._packs: Dict[Tuple[str, str, str], np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def shape(self) -> Tuple[int, ...]:
        return tuple(self.weight.shape)

    @property
    def dtype(self) -> np.dtype:
        return self.weight.dtype

    def __repr__(self) -> str:
        return (f"PackedWeight(shape={self.shape}, dtype={self.dtype}, groups={self.groups}, "
                f"layout={self.layout!r}, packed_for={sorted(self._packs)})")

    def packed(self, dtype: np.dtype, c_in: int, kernel: str) -> np.ndarray:
        """The weight in ``kernel``'s layout for the active ISA and ``dtype``."""
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


def prepack(weight: Any, groups: int = 1, *, layout: str = "NCHW") -> PackedWeight:
    """Prepare ``weight`` for repeated :func:`pyconv.conv2d` calls.

    Parameters
    ----------
    weight : array_like
        ``(C_out, C_in/groups, KH, KW)`` for NCHW, ``(KH, KW, C_in/groups,
        C_out)`` for NHWC, as for ``conv2d``.
    groups : int
        Must equal the ``groups`` of the calls it is used in.
    layout : {"NCHW", "NHWC"}
        Must equal the ``layout`` of the calls it is used in.

    Returns
    -------
    PackedWeight
        A snapshot copy; see :class:`PackedWeight`.

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> w = np.ones((8, 3, 3, 3), np.float32)
    >>> pw = pyconv.prepack(w)
    >>> x = np.ones((1, 3, 8, 8), np.float32)
    >>> np.array_equal(pyconv.conv2d(x, pw, padding=1), pyconv.conv2d(x, w, padding=1))
    True
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
