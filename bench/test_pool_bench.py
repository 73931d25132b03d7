"""Pooling rows of the bench (forward, and the training step of max and
average pooling): pyconv, the NumPy reference and the peers.

Same shapes (``pyconv._suite.POOL_SUITE``) and the same calls
(``pyconv._bench.build_runner``) as ``python -m pyconv bench``::

    pytest bench/test_pool_bench.py --benchmark-only --benchmark-group-by=param:shape

onnxruntime has no training ops: it is skipped on the ``*_grad`` rows.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import run_row

from pyconv import _bench
from pyconv._suite import POOL_SUITE

SHAPES = [s.name for s in POOL_SUITE]


# Parametrised by name (not the shape object) so that `param:shape` groups read "shape=...".
@pytest.mark.parametrize("library", list(_bench.LIBRARIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_pool(benchmark: Any, shape: str, library: str, threads: int) -> None:
    run_row(benchmark, shape, library, threads)
