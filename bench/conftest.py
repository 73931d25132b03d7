"""pytest-benchmark set-up for bench/: a thread-count option and machine info.

bench/ is not in pyproject's ``testpaths``; run it by name:
``pytest bench/ --benchmark-only --benchmark-group-by=param:shape``.
"""

from __future__ import annotations

from typing import Any, Dict

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
