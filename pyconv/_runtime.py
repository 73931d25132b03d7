"""Process-wide runtime settings: threads, instruction set, build information."""

from __future__ import annotations

import contextlib
import operator
import os
import platform
import warnings
from typing import Any, Dict, Iterator, List

from . import _core

__all__ = [
    "config",
    "peak_gflops",
    "get_num_threads",
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


def set_num_threads(n: int) -> None:
    """Set the number of threads every pyconv kernel uses (process-wide).

    The default is ``OMP_NUM_THREADS`` if set, else every core this process
    may run on.  Results do not depend on it: kernels are bitwise
    deterministic for any thread count.
    """
    _core.set_num_threads(_thread_count("set_num_threads", n))


def get_num_threads() -> int:
    """The number of threads pyconv kernels use."""
    return int(_core.get_num_threads())


@contextlib.contextmanager
def num_threads(n: int) -> Iterator[int]:
    """Context manager: run the enclosed pyconv calls with ``n`` threads.

    >>> import pyconv
    >>> with pyconv.num_threads(1):
    ...     pyconv.get_num_threads()
    1
    """
    n = _thread_count("num_threads", n)
    previous = get_num_threads()
    _core.set_num_threads(n)
    try:
        yield n
    finally:
        _core.set_num_threads(previous)


def set_max_isa(isa: str) -> str:
    """Cap the instruction set used by the kernels; return the one now active.

    ``isa`` is ``"generic"``, ``"avx2"`` or ``"avx512"``; the active ISA is
    the best one that is compiled in, supported by this CPU and not above the
    cap.  Like ``PYCONV_ISA`` (read at import), but callable at run time, e.g.
    to compare or test every code path in one process.  Process-wide.
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


def config() -> Dict[str, Any]:
    """Build and runtime configuration as a dict.

    Keys: ``version``, ``compiler``, ``isa_compiled``, ``isa_available``
    (compiled and supported by this CPU), ``isa`` (active), ``openmp``,
    ``openmp_version``, ``threads``, ``default_threads``, ``cpu``,
    ``machine``, ``numpy``.
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
    """Print :func:`config` for humans."""
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


def peak_gflops(dtype: Any = "float32", threads: Any = None) -> float:
    """Measured FMA peak of this machine, in GFLOP/s, for the active ISA.

    Every thread runs a short loop of independent fused multiply-adds on the
    active ISA's vectors; the result is the denominator of the benchmark's
    "% of peak" column.  Measured once per (ISA, dtype, threads) and cached.

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
