"""conv2d on the default shape suite: pyconv, the NumPy reference and the peers.

Same shapes (``pyconv._suite``) and the same calls (``pyconv._bench.build_runner``)
as ``python -m pyconv bench``.  Compare libraries side by side with::

    pytest bench/ --benchmark-only --benchmark-group-by=param:shape

Each benchmark first checks its library's output against pyconv's (a
benchmark of wrong results is worthless), then times it.  Libraries that are
not installed are skipped.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import run_row

from pyconv import _bench
from pyconv._suite import DEFAULT_SUITE

SHAPES = [s.name for s in DEFAULT_SUITE]


# Parametrised by name (not the shape object) so that `param:shape` groups read "shape=...".
@pytest.mark.parametrize("library", list(_bench.LIBRARIES))
@pytest.mark.parametrize("shape", SHAPES)
def test_conv2d(benchmark: Any, shape: str, library: str, threads: int) -> None:
    run_row(benchmark, shape, library, threads)
