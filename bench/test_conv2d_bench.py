"""conv2d on the default shape suite: pyconv, the NumPy reference and the peers.

Same shapes (``pyconv._suite``) and the same calls (``pyconv._bench.build_runner``)
as ``python -m pyconv bench``.  Compare libraries side by side with::

    pytest bench/ --benchmark-only --benchmark-group-by=param:shape

Each benchmark first checks its library's output against pyconv's (a
benchmark of wrong results is worthless), then times it.  Libraries that are
not installed are skipped.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import pytest

from pyconv import _bench
from pyconv._suite import DEFAULT_SUITE, select

SHAPES = [s.name for s in DEFAULT_SUITE]


@functools.lru_cache(maxsize=1)
def _pyconv_output(shape_name: str, threads: int) -> np.ndarray:
    """pyconv's result for a shape; cached because every library of a shape needs it."""
    runner = _bench.build_runner("pyconv", select([shape_name])[0], threads)
    return runner.to_nchw(runner.call())


# Parametrised by name (not ConvShape) so that `param:shape` groups read "shape=lenet_c1".
@pytest.mark.parametrize("library", list(_bench.LIBRARIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_conv2d(benchmark: Any, shape: str, library: str, threads: int) -> None:
    reason = _bench.missing_reason(library)
    if reason is not None:
        pytest.skip(reason)
    conv = select([shape])[0]
    expected = _pyconv_output(shape, threads)
    runner = _bench.build_runner(library, conv, threads)

    _bench.settle()
    start = time.perf_counter()
    got = runner.to_nchw(runner.call())  # also the warm-up call
    seconds = time.perf_counter() - start
    ok, diff = _bench.check_match(expected, got)
    assert ok, f"{library} disagrees with pyconv on {shape}: max |diff| {diff:.3g}"

    benchmark.extra_info.update(gflop=conv.gflop, problem=conv.describe(), threads=threads)
    _bench.settle()
    if seconds > _bench.SLOW_CALL_S:
        # The NumPy reference takes seconds on the big layers: a few rounds
        # pin its median down; pytest-benchmark's defaults would take minutes.
        benchmark.pedantic(runner.call, rounds=_bench.SLOW_ROUNDS, iterations=1)
    else:
        benchmark(runner.call)
