"""Process-wide runtime settings: threads, instruction set, build information."""

from __future__ import annotations

import contextlib
import operator
import os
import platform
import warnings
from typing import Any, Dict, Iterator, List, Optional, SupportsIndex

import numpy as np
import numpy.typing as npt

from . import _core
from ._typing import Config, Isa

__all__ = [
    "buffer_pool_info",
    "config",
    "peak_gflops",
    "get_num_threads",
    "release_buffers",
    "set_buffer_pool_limit",
    "num_threads",
    "set_max_isa",
    "set_num_threads",
    "show_config",
]

ISAS = ("generic", "avx2", "avx512")
MAX_THREADS = 4096  # far beyond any machine; guards against a typo creating 10**9 threads


def _thread_count(fn: str, n: Any) -> int:
    if isinstance(n, bool):
        raise TypeError(f"{fn}: n must be an int, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{fn}: n must be an int, got {n!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise ValueError(f"{fn}: n must be >= 1 and <= {MAX_THREADS}, got {n}")
    return n


def set_num_threads(n: SupportsIndex) -> None:
    """Set the number of threads every pyconv kernel uses (process-wide).

    The default is ``OMP_NUM_THREADS`` if set, else every core this process
    may run on.  Results do not depend on it: kernels are bitwise
    deterministic for any thread count.  threadpoolctl's
    ``threadpool_limits(user_api="openmp")`` reaches this setting too.

    Parameters
    ----------
    n : int
        The thread count, 1 <= n <= 4096.

    Raises
    ------
    TypeError
        ``n`` is not an int (bools included).
    ValueError
        ``n`` < 1 or > 4096.

    See Also
    --------
    get_num_threads
    num_threads : The same for a ``with`` block only.

    Examples
    --------
    >>> import pyconv
    >>> previous = pyconv.get_num_threads()
    >>> pyconv.set_num_threads(1)
    >>> pyconv.get_num_threads()
    1
    >>> pyconv.set_num_threads(previous)
    """
    _core.set_num_threads(_thread_count("set_num_threads", n))


def get_num_threads() -> int:
    """The number of threads pyconv kernels use (``config()["threads"]``).

    Returns
    -------
    int
        The current process-wide setting, >= 1.

    See Also
    --------
    set_num_threads, num_threads, config

    Examples
    --------
    >>> import pyconv
    >>> pyconv.get_num_threads() >= 1
    True
    """
    return int(_core.get_num_threads())


@contextlib.contextmanager
def num_threads(n: SupportsIndex) -> Iterator[int]:
    """Context manager: run the enclosed pyconv calls with ``n`` threads.

    The previous setting is restored on exit, also when the block raises.
    The setting is process-wide, so other Python threads' pyconv calls see
    it too while the block runs.

    Parameters
    ----------
    n : int
        The thread count, 1 <= n <= 4096.

    Yields
    ------
    int
        ``n``.

    Raises
    ------
    TypeError
        ``n`` is not an int (bools included).
    ValueError
        ``n`` < 1 or > 4096.

    See Also
    --------
    set_num_threads, get_num_threads

    Examples
    --------
    >>> import pyconv
    >>> before = pyconv.get_num_threads()
    >>> with pyconv.num_threads(1) as n:
    ...     n, pyconv.get_num_threads()
    (1, 1)
    >>> pyconv.get_num_threads() == before
    True
    """
    n = _thread_count("num_threads", n)
    previous = get_num_threads()
    _core.set_num_threads(n)
    try:
        yield n
    finally:
        _core.set_num_threads(previous)


def set_max_isa(isa: Isa) -> str:
    """Cap the instruction set used by the kernels; return the one now active.

    The active ISA is the best one that is compiled in, supported by this
    CPU and not above the cap.  Like ``PYCONV_ISA`` (read at import), but
    callable at run time, e.g. to compare or test every code path in one
    process.  Process-wide.

    Parameters
    ----------
    isa : {"generic", "avx2", "avx512"}
        The cap (case-insensitive): ``"generic"`` is portable C++ without
        intrinsics, ``"avx2"`` AVX2+FMA, ``"avx512"`` AVX-512F.

    Returns
    -------
    str
        The active ISA after the call (``config()["isa"]``).

    Raises
    ------
    TypeError
        ``isa`` is not a string.
    ValueError
        ``isa`` is not one of the three names.

    See Also
    --------
    config : ``isa_available`` lists what this machine can run.

    Examples
    --------
    >>> import pyconv
    >>> active = pyconv.config()["isa"]
    >>> pyconv.set_max_isa("generic")
    'generic'
    >>> pyconv.set_max_isa(active) == active
    True
    """
    if not isinstance(isa, str):
        raise TypeError(f"set_max_isa: isa must be one of {ISAS}, got {isa!r}")
    if isa.lower() not in ISAS:
        raise ValueError(f"set_max_isa: isa must be one of {ISAS}, got {isa!r}")
    return str(_core.set_isa(isa.lower()))


def _apply_env_isa() -> None:
    """Honour PYCONV_ISA at import: a cap, with a warning when it cannot be met."""
    wanted = os.environ.get("PYCONV_ISA", "").strip().lower()
    if not wanted:
        return
    if wanted not in ISAS:
        warnings.warn(
            f"PYCONV_ISA={os.environ['PYCONV_ISA']!r} is not one of {ISAS}; ignored "
            f"(using {_core.get_isa()})",
            RuntimeWarning,
            stacklevel=3,
        )
        return
    got = _core.set_isa(wanted)
    if got != wanted:
        warnings.warn(
            f"PYCONV_ISA={wanted!r} is not available on this machine "
            f"(compiled and supported: {list(_core.isa_available())}); using {got!r}",
            RuntimeWarning,
            stacklevel=3,
        )


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def config() -> Config:
    """Build and runtime configuration, as a dict.

    Returns
    -------
    dict
        ``version`` (pyconv's), ``compiler``, ``isa_compiled`` (ISAs built
        into the module), ``isa_available`` (compiled and supported by this
        CPU), ``isa`` (the active one, after ``PYCONV_ISA`` or
        :func:`set_max_isa`), ``openmp`` (bool), ``openmp_version`` (the
        ``_OPENMP`` date, 0 without OpenMP), ``threads`` (the current
        setting), ``default_threads``, ``cpu``, ``machine`` and ``numpy``
        (NumPy's version).

    See Also
    --------
    show_config : The same, printed for humans (``python -m pyconv info``).

    Examples
    --------
    >>> import pyconv
    >>> cfg = pyconv.config()
    >>> cfg["isa"] in cfg["isa_available"]
    True
    >>> cfg["threads"] == pyconv.get_num_threads()
    True
    >>> sorted(cfg)  # doctest: +NORMALIZE_WHITESPACE
    ['compiler', 'cpu', 'default_threads', 'isa', 'isa_available', 'isa_compiled', 'machine',
     'numpy', 'openmp', 'openmp_version', 'threads', 'version']
    """
    import numpy as np

    from . import __version__

    info = _core.build_info()
    return {
        "version": __version__,
        "compiler": info["compiler"],
        "isa_compiled": list(_core.isa_compiled()),
        "isa_available": list(_core.isa_available()),
        "isa": _core.get_isa(),
        "openmp": bool(info["openmp"]),
        "openmp_version": int(info["openmp_version"]),
        "threads": get_num_threads(),
        "default_threads": int(_core.default_num_threads()),
        "cpu": _cpu_name(),
        "machine": platform.machine(),
        "numpy": np.__version__,
    }


def show_config() -> None:
    """Print :func:`config` for humans, one ``key  value`` line per entry.

    See Also
    --------
    config

    Examples
    --------
    >>> import pyconv
    >>> pyconv.show_config()  # doctest: +ELLIPSIS
    version          ...
    compiler         ...
    isa_compiled     ...generic...
    """
    cfg = config()
    width = max(len(k) for k in cfg)
    for key, value in cfg.items():
        if isinstance(value, list):
            value = ", ".join(value)
        print(f"{key:<{width}}  {value}")


def isa_available() -> List[str]:
    return list(_core.isa_available())


# FMA probe: rounds per attempt (~4 ms at 100 GFLOP/s per core for float32)
# and attempts (the best one counts: the probe measures what the core can
# do, and another process only ever makes it look slower).
_PEAK_ITERS = 1_000_000
_PEAK_ATTEMPTS = 10
_peak_cache: Dict[Any, float] = {}


def peak_gflops(dtype: npt.DTypeLike = "float32", threads: Optional[SupportsIndex] = None) -> float:
    """Measured FMA peak of this machine, in GFLOP/s, for the active ISA.

    Every thread runs a short loop of independent fused multiply-adds on the
    active ISA's vectors (best of several attempts); the result is the
    denominator of the benchmark's "% of peak" column.  Measured once per
    (ISA, dtype, threads) and cached.

    Parameters
    ----------
    dtype : {"float32", "float64"} or numpy dtype, default "float32"
    threads : int, optional
        Thread count of the probe, 1 <= threads <= 4096; default (None) the
        current :func:`get_num_threads`.

    Returns
    -------
    float
        GFLOP/s (2 flops per fused multiply-add).

    Raises
    ------
    TypeError
        ``dtype`` is not a dtype, or ``threads`` is not an int.
    ValueError
        ``dtype`` is not float32 or float64, or ``threads`` is out of range.

    See Also
    --------
    config : The active ISA (``isa``) the probe runs on.
    set_max_isa

    Examples
    --------
    >>> import pyconv
    >>> pyconv.peak_gflops("float32", threads=1) > 0
    True
    """
    from ._normalize import float_dtype

    dt = float_dtype("peak_gflops", dtype)
    nt = get_num_threads() if threads is None else _thread_count("peak_gflops", threads)
    key = (_core.get_isa(), dt.itemsize, nt)
    if key not in _peak_cache:
        _peak_cache[key] = max(_core.peak_flops(dt.itemsize, _PEAK_ITERS, nt)
                               for _ in range(_PEAK_ATTEMPTS)) / 1e9
    return _peak_cache[key]


# ---- result buffers ----------------------------------------------------------------


def _empty(shape: Any, dtype: npt.DTypeLike) -> Any:
    """``numpy.empty(shape, dtype)`` for a result pyconv allocates, on memory
    recycled from earlier results of the same size (see :func:`buffer_pool_info`)."""
    if type(shape) is not tuple:  # (geometry shapes are tuples of ints already)
        shape = tuple(int(d) for d in shape)
    return _core.empty(shape, np.dtype(dtype))


def buffer_pool_info() -> Dict[str, int]:
    """What the result-buffer pool holds.

    Arrays that pyconv allocates for its results (not an ``out=`` array a
    caller passes) take their memory from a pool: when such an array is
    freed, its memory (if at least 256 KiB) is kept for the next result of
    the same size instead of going back to the system, so a loop calling the
    same layers again and again writes into warm pages rather than paying a
    page fault per 4 KiB of every fresh result.  What is kept is bounded by a
    limit (default 256 MiB; ``PYCONV_BUFFER_POOL_MB`` at import, or
    :func:`set_buffer_pool_limit`).

    Returns
    -------
    dict
        ``kept_bytes`` (memory held for reuse now), ``limit_bytes``,
        ``hits`` and ``misses`` (pooled allocations served from kept memory
        or from the system, since import).

    Examples
    --------
    >>> import numpy as np, pyconv
    >>> sorted(pyconv.buffer_pool_info())
    ['hits', 'kept_bytes', 'limit_bytes', 'misses']
    """
    return {str(k): int(v) for k, v in _core.pool_info().items()}


def set_buffer_pool_limit(nbytes: SupportsIndex) -> None:
    """Set how many bytes of freed results the pool may keep (0 disables it).

    Memory kept beyond a lowered limit is released at once.

    Raises
    ------
    TypeError
        ``nbytes`` is not an integer.
    ValueError
        ``nbytes`` is negative.
    """
    try:
        n = operator.index(nbytes)
    except TypeError:
        raise TypeError(f"set_buffer_pool_limit: nbytes must be an integer, got {type(nbytes).__name__}") from None
    if n < 0:
        raise ValueError(f"set_buffer_pool_limit: nbytes must be >= 0, got {n}")
    _core.pool_set_limit(n)


def release_buffers() -> int:
    """Give every kept result buffer back to the system; returns the bytes released."""
    return int(_core.pool_trim())


def _apply_env_pool() -> None:
    """``PYCONV_BUFFER_POOL_MB``: the pool's limit in MiB (0 disables it)."""
    raw = os.environ.get("PYCONV_BUFFER_POOL_MB", "").strip()
    if not raw:
        return
    try:
        mb = float(raw)
        if not mb >= 0:
            raise ValueError
    except ValueError:
        warnings.warn(f"PYCONV_BUFFER_POOL_MB={raw!r} is not a size in MiB >= 0; ignored", RuntimeWarning,
                      stacklevel=3)
        return
    _core.pool_set_limit(int(mb * (1 << 20)))
