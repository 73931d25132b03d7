"""Training-step rows of the bench (a conv layer's forward, input gradient
and weight gradient): pyconv (``pyconv.autograd.conv2d_vjp``), the NumPy
reference and torch autograd (NCHW and channels_last).

Same shapes (``pyconv._suite.STEP_SUITE``) and the same calls
(``pyconv._bench.build_runner``) as ``python -m pyconv bench``::

    pytest bench/test_step_bench.py --benchmark-only --benchmark-group-by=param:shape

onnxruntime has no training ops: it is skipped.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import run_row

from pyconv import _bench
from pyconv._suite import STEP_SUITE

SHAPES = [s.name for s in STEP_SUITE]


# Parametrised by name (not the shape object) so that `param:shape` groups read "shape=...".
@pytest.mark.parametrize("library", list(_bench.LIBRARIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_step(benchmark: Any, shape: str, library: str, threads: int) -> None:
    run_row(benchmark, shape, library, threads)
