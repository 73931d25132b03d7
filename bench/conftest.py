"""pytest-benchmark set-up for bench/: a thread-count option and machine info.

bench/ is not in pyproject's ``testpaths``; run it by name:
``pytest bench/ --benchmark-only --benchmark-group-by=param:shape``.
"""

from __future__ import annotations

import functools
import time
from typing import Any, Dict

import numpy as np
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--bench-threads", type=int, default=None, metavar="N",
                     help="threads for pyconv and every peer (default: pyconv's current setting)")


@pytest.fixture(scope="session")
def threads(request: pytest.FixtureRequest) -> int:
    import pyconv

    n = request.config.getoption("--bench-threads")
    if n is not None and n < 1:
        raise pytest.UsageError(f"--bench-threads must be >= 1, got {n}")
    return int(n) if n is not None else pyconv.get_num_threads()


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: Dict[str, Any]) -> None:
    # Saved runs (--benchmark-autosave) then say which build, ISA and peers
    # produced them, so comparisons across commits are not blind.
    import pyconv
    from pyconv import _bench

    machine_info["pyconv"] = pyconv.config()
    machine_info["pyconv_bench_versions"] = _bench.library_versions()


@functools.lru_cache(maxsize=1)
def _pyconv_output(shape_name: str, threads: int) -> np.ndarray:
    """pyconv's result for a shape; cached because every library of a shape needs it."""
    from pyconv import _bench
    from pyconv._suite import select

    runner = _bench.build_runner("pyconv", select([shape_name])[0], threads)
    return runner.to_nchw(runner.call())


def run_row(benchmark: Any, shape_name: str, library: str, threads: int) -> None:
    """One cell of a bench table: ``library`` on the suite shape ``shape_name``.

    The same call as ``python -m pyconv bench`` (``_bench.build_runner``).
    Skips a library that is not installed or has no such operation; checks
    the library's output against pyconv's first (a benchmark of wrong results
    is worthless); then times it.
    """
    from pyconv import _bench
    from pyconv._suite import select

    reason = _bench.missing_reason(library)
    if reason is not None:
        pytest.skip(reason)
    shape = select([shape_name])[0]
    if not _bench.serves(library, shape):
        pytest.skip(f"{_bench.LIBRARIES[library]} has no such operation")
    expected = _pyconv_output(shape_name, threads)
    runner = _bench.build_runner(library, shape, threads)

    _bench.settle()
    start = time.perf_counter()
    got = runner.to_nchw(runner.call())  # also the warm-up call
    seconds = time.perf_counter() - start
    ok, diff = _bench.check_match(expected, got)
    assert ok, f"{library} disagrees with pyconv on {shape_name}: max |diff| {diff:.3g}"

    size = {"gflop": shape.gflop} if shape.gflop else {"bytes": shape.min_bytes()}
    benchmark.extra_info.update(size, problem=shape.describe(), threads=threads)
    _bench.settle()
    if seconds > _bench.SLOW_CALL_S:
        # The NumPy reference takes seconds on the big layers: a few rounds
        # pin its median down; pytest-benchmark's defaults would take minutes.
        benchmark.pedantic(runner.call, rounds=_bench.SLOW_ROUNDS, iterations=1)
    else:
        benchmark(runner.call)
