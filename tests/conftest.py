"""Shared fixtures and helpers of pyconv's test-suite.

* ``isa``: every test that takes it runs once per instruction set this
  machine can execute (``pyconv.config()["isa_available"]``), so a bug in the
  AVX2 path cannot hide behind AVX-512 and vice versa (Highway's rule).
* ``assert_close``: DESIGN.md's accuracy rule, against a float64 reference.
* ``rand`` / ``conv_inputs`` / ``reference64``: random operands and the
  oracle computed on float64 copies of them.
* ``subprocess_env``: an environment in which a child ``python`` imports the
  very same pyconv as this process.

Which pyconv is tested.  ``python -m pytest`` puts the working directory
first on ``sys.path``; run from the repository root that is the *source*
``pyconv/``, which has no compiled ``_core`` unless it was built in place.
When it has none, the repository root is dropped from ``sys.path`` so that
the installed package (the one the CI builds) is imported instead.  An
editable install keeps working: its import hook does not depend on
``sys.path``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
TESTS_DIR = Path(__file__).resolve().parent


def _prefer_installed_pyconv() -> None:
    source_pkg = ROOT / "pyconv"
    if not source_pkg.is_dir() or any(source_pkg.glob("_core*")):
        return
    sys.path[:] = [p for p in sys.path if Path(p or os.getcwd()).resolve() != ROOT]


_prefer_installed_pyconv()

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import pyconv  # noqa: E402
import pyconv.reference  # noqa: E402

try:  # hypothesis is a test extra; only the property tests need it
    from hypothesis import HealthCheck, settings

    # The ``isa`` fixture is function-scoped on purpose: one ISA per test,
    # shared by all of its examples.  Deadlines are off because timings on a
    # loaded 2-core CI machine are noise.  Examples that failed once are
    # replayed first from .hypothesis/ (git-ignored).
    # PYCONV_HYPOTHESIS_PROFILE=thorough explores far more (nightly runs).
    _common = dict(deadline=None,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    settings.register_profile("pyconv", max_examples=200, **_common)
    settings.register_profile("thorough", max_examples=2000, **_common)
    settings.load_profile(os.environ.get("PYCONV_HYPOTHESIS_PROFILE", "pyconv"))
except ImportError:  # pragma: no cover
    pass

CONFIG = pyconv.config()
ISAS = list(CONFIG["isa_available"])
# The ISA active at start-up: the best one, or PYCONV_ISA's cap if the suite
# itself runs under one.  Every test leaves it active again.
INITIAL_ISA = CONFIG["isa"]
ALL_ISA_NAMES = ("generic", "avx2", "avx512")
LAYOUTS = ("NCHW", "NHWC")
DTYPES = (np.float32, np.float64)

# DESIGN.md, "Accuracy": relative tolerance by computation dtype.
RTOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-10}


# --------------------------------------------------------------------------
# fixtures


def pytest_configure(config):
    # When a property fails, hypothesis imports libcst to suggest a patch, and
    # libcst (through mypy_extensions) raises a DeprecationWarning that
    # ``filterwarnings = error`` would turn into an INTERNALERROR hiding the
    # failing example.  Not pyconv's warning: ignore exactly that one.
    config.addinivalue_line(
        "filterwarnings", "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning"
    )


@pytest.fixture(autouse=True)
def _restore_runtime_state():
    """No test may leak an ISA cap or a thread count into the next one."""
    threads = pyconv.get_num_threads()
    yield
    pyconv.set_max_isa(INITIAL_ISA)
    pyconv.set_num_threads(threads)


@pytest.fixture(params=ISAS)
def isa(request) -> str:
    """Run the test with each available instruction set active in turn."""
    active = pyconv.set_max_isa(request.param)
    assert active == request.param
    assert pyconv.config()["isa"] == request.param
    yield request.param
    pyconv.set_max_isa(INITIAL_ISA)


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A generator seeded from the test's id: reproducible, different per test."""
    seed = sum(request.node.nodeid.encode()) * 2654435761 % 2**32
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------
# accuracy


def tolerances(dtype: Any, ref: np.ndarray) -> Tuple[float, float]:
    """(rtol, atol) of DESIGN.md for a result of ``dtype`` against ``ref``."""
    rtol = RTOL[np.dtype(dtype)]
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return rtol, rtol * max(1.0, scale)


def assert_close(actual: Any, ref: Any, dtype: Any) -> None:
    """``actual`` has dtype ``dtype`` and matches the float64 ``ref``.

    float32: rtol=1e-4, atol=1e-4*max(1, max|ref|); float64: 1e-10 likewise.
    """
    assert isinstance(actual, np.ndarray), type(actual)
    assert actual.dtype == np.dtype(dtype), (actual.dtype, np.dtype(dtype))
    ref = np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, (actual.shape, ref.shape)
    rtol, atol = tolerances(dtype, ref)
    np.testing.assert_allclose(actual.astype(np.float64), ref, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------
# operands


def rand(rng: np.random.Generator, shape: Sequence[int], dtype: Any = np.float32) -> np.ndarray:
    """Standard-normal values of ``dtype`` (C-contiguous)."""
    return rng.standard_normal(tuple(shape)).astype(dtype)


def weight_shape(layout: str, c_in: int, c_out: int, kh: int, kw: int, groups: int = 1) -> Tuple[int, ...]:
    """conv2d's weight shape: OIHW for NCHW, HWIO for NHWC."""
    if layout == "NCHW":
        return (c_out, c_in // groups, kh, kw)
    return (kh, kw, c_in // groups, c_out)


def input_shape(layout: str, n: Optional[int], c: int, h: int, w: int) -> Tuple[int, ...]:
    """conv2d's input shape; ``n=None`` is an unbatched 3-D image."""
    shape = (c, h, w) if layout == "NCHW" else (h, w, c)
    return shape if n is None else (n,) + shape


def conv_inputs(rng: np.random.Generator, *, n: Optional[int], c: int, h: int, w: int, oc: int,
                kh: int, kw: int, groups: int = 1, layout: str = "NCHW", dtype: Any = np.float32,
                bias: bool = False) -> Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """Random (x, weight, bias-or-None) for a conv2d problem."""
    x = rand(rng, input_shape(layout, n, c, h, w), dtype)
    wt = rand(rng, weight_shape(layout, c, oc, kh, kw, groups), dtype)
    b = rand(rng, (oc,), dtype) if bias else None
    return x, wt, b


def f64(a: Optional[np.ndarray]) -> Optional[np.ndarray]:
    return None if a is None else np.asarray(a, dtype=np.float64)


def reference64(x: Any, weight: Any, bias: Any = None, **kwargs: Any) -> np.ndarray:
    """The oracle, computed on float64 copies of the same operands."""
    return pyconv.reference.conv2d(f64(x), f64(weight), f64(bias), **kwargs)


def check_conv(x: Any, wt: Any, b: Any = None, *, dtype: Any, **kwargs: Any) -> np.ndarray:
    """The shared tester: conv2d(x, wt, b, **kwargs) has the predicted shape and dtype and
    matches the float64 reference within DESIGN.md's tolerance."""
    y = pyconv.conv2d(x, wt, b, **kwargs)
    kw = {k: v for k, v in kwargs.items() if k not in ("algo", "out", "activation")}
    expected_shape = pyconv.conv_output_shape(np.shape(x), np.shape(wt), **kw)
    assert y.shape == expected_shape
    assert y.flags.c_contiguous
    r = reference64(x, wt, b, **{k: v for k, v in kwargs.items() if k not in ("algo", "out")})
    assert_close(y, r, dtype)
    return y


# --------------------------------------------------------------------------
# subprocesses


def subprocess_env(**overrides: Optional[str]) -> Dict[str, str]:
    """os.environ for a child python that imports this process's pyconv.

    ``overrides`` set variables; a value of None removes the variable.
    Children should run with ``cwd`` outside the repository (e.g. tmp_path).
    """
    env = dict(os.environ)
    for key in ("PYCONV_ISA", "PYCONV_VERBOSE"):
        env.pop(key, None)
    pkg_parent = str(Path(pyconv.__file__).resolve().parent.parent)
    if Path(pkg_parent) == ROOT:  # built in place: the child must see the same tree
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pkg_parent, env.get("PYTHONPATH")]))
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env
