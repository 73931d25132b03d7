"""Training-step rows of the bench (a conv layer's forward, input gradient
and weight gradient): pyconv (``pyconv.autograd.conv2d_vjp``), the NumPy
reference and torch autograd (NCHW and channels_last).

Same shapes (``pyconv._suite.STEP_SUITE``) and the same calls
(``pyconv._bench.build_runner``) as ``python -m pyconv bench``::

    pytest bench/test_step_bench.py --benchmark-only --benchmark-group-by=param:shape

onnxruntime has no training ops: it is skipped.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import numpy as np
import pytest

from pyconv import _bench
from pyconv._suite import STEP_SUITE, select

SHAPES = [s.name for s in STEP_SUITE]


@functools.lru_cache(maxsize=1)
def _pyconv_output(shape_name: str, threads: int) -> np.ndarray:
    runner = _bench.build_runner("pyconv", select([shape_name])[0], threads)
    return runner.to_nchw(runner.call())


@pytest.mark.parametrize("library", list(_bench.LIBRARIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_step(benchmark: Any, shape: str, library: str, threads: int) -> None:
    reason = _bench.missing_reason(library)
    if reason is not None:
        pytest.skip(reason)
    step = select([shape])[0]
    if not _bench.serves(library, step):
        pytest.skip(f"{_bench.LIBRARIES[library]} has no training operations")
    expected = _pyconv_output(shape, threads)
    runner = _bench.build_runner(library, step, threads)

    _bench.settle()
    start = time.perf_counter()
    got = runner.to_nchw(runner.call())  # also the warm-up call
    seconds = time.perf_counter() - start
    ok, diff = _bench.check_match(expected, got)
    assert ok, f"{library} disagrees with pyconv on {shape}: max |diff| {diff:.3g}"

    benchmark.extra_info.update(gflop=step.gflop, problem=step.describe(), threads=threads)
    _bench.settle()
    if seconds > _bench.SLOW_CALL_S:
        benchmark.pedantic(runner.call, rounds=_bench.SLOW_ROUNDS, iterations=1)
    else:
        benchmark(runner.call)
