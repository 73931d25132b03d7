"""Every example in pyconv's docstrings runs, and prints what it says.

One test per module.  The examples are part of the API documentation, so a
change of behaviour that makes one wrong fails here.  They print only exact
values (small integers, binary fractions, shapes), never float32 sums whose
last digit may differ between the AVX2 and AVX-512 paths or thread counts.
Each module must hold at least one example, so a collector that finds
nothing (a renamed module, docstrings lost to ``-OO``) cannot pass.
"""

from __future__ import annotations

import doctest
import importlib
import io

import pytest

import pyconv

MODULES = [
    "pyconv",
    "pyconv._conv",
    "pyconv._depthwise",
    "pyconv._grad",
    "pyconv._pool",
    "pyconv._prepack",
    "pyconv._runtime",
    "pyconv.autograd",
    "pyconv.reference",
    "pyconv.reference._conv",
    "pyconv.reference._grad",
    "pyconv.reference._pool",
    "pyconv.torch",
]

OPTIONFLAGS = doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    if name == "pyconv.torch":
        pytest.importorskip("torch")
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests = sorted(finder.find(module, name), key=lambda t: t.name)
    examples = sum(len(t.examples) for t in tests)
    assert examples > 0, f"{name}: no docstring examples found"

    report = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS, verbose=False)
    threads, isa = pyconv.get_num_threads(), pyconv.config()["isa"]
    try:
        for test in tests:
            runner.run(test, out=report.write, clear_globs=True)
    finally:
        # Examples that change process-wide settings restore them; this
        # keeps a failing one from leaking into the rest of the suite.
        pyconv.set_num_threads(threads)
        pyconv.set_max_isa(isa)
    failed, attempted = runner.failures, runner.tries
    assert attempted == examples
    if failed:
        pytest.fail(f"{failed} of {attempted} docstring examples of {name} failed:\n{report.getvalue()}",
                    pytrace=False)
