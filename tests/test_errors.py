"""Bad calls raise ValueError/TypeError naming the function and the argument,
never crash, never allocate absurd sizes, and never wrap around."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import pyconv
import pyconv.reference as ref
from bad_calls import CASES, check, implementations
from conftest import TESTS_DIR, reference64, subprocess_env

TABLE = [(case, impl, fn) for case in CASES for impl, fn in implementations(case)]


@pytest.mark.parametrize("case, impl, fn", TABLE, ids=[f"{c.id}-{impl}" for c, impl, _ in TABLE])
def test_bad_call(case, impl, fn):
    ok, detail = check(case, fn)
    assert ok, detail


def test_table_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


def test_bad_call_table_in_a_subprocess(tmp_path):
    """The whole table in one child process: a segfault or abort in any call
    fails this test (with the call named) instead of killing pytest."""
    proc = subprocess.run([sys.executable, str(TESTS_DIR / "bad_calls.py")], cwd=tmp_path,
                          env=subprocess_env(), capture_output=True, text=True, timeout=300)
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    started = [r for r in lines if r.get("start")]
    finished = [r for r in lines if "ok" in r]
    if proc.returncode != 0 or not lines or not lines[-1].get("done"):
        last = started[-1] if started else None
        pytest.fail(f"child exited with {proc.returncode} during {last}\nstderr:\n{proc.stderr[-4000:]}")
    assert len(finished) == len(TABLE)
    failures = [r for r in finished if not r["ok"]]
    assert not failures, "\n".join(f"{r['case']}-{r['impl']}: {r['detail']}" for r in failures)


# --------------------------------------------------------------------------
# values at the edge of int64 that are not sizes: a correct result or a
# ValueError naming the argument, never a TypeError from the binding layer


@pytest.mark.parametrize("kwargs", [
    dict(stride=2**62), dict(stride=2**63), dict(stride=2**64), dict(stride=(1, 2**70)),
    dict(dilation=2**63), dict(dilation=(2**64, 1)),
], ids=["stride_2^62", "stride_2^63", "stride_2^64", "stride_w_2^70", "dilation_2^63", "dilation_h_2^64"])
@pytest.mark.parametrize("fn", ["conv2d", "plan"])
def test_huge_stride_and_dilation(fn, kwargs):
    x = np.arange(3 * 5 * 6, dtype=np.float32).reshape(1, 3, 5, 6)
    wt = np.ones((2, 3, 1, 1), np.float32)  # 1x1: any dilation fits
    expected = ref.conv2d(x, wt, **kwargs)  # the oracle has no integer width limit
    try:
        if fn == "conv2d":
            y = pyconv.conv2d(x, wt, **kwargs)
        else:
            y = pyconv.plan(x.shape, wt.shape, **kwargs)
    except ValueError as exc:
        name = next(iter(kwargs))
        assert f"{fn}:" in str(exc) and name in str(exc), str(exc)
        return
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{fn}{kwargs}: expected a result or ValueError, got {type(exc).__name__}: "
                    f"{str(exc)[:300]}")
    if fn == "conv2d":
        np.testing.assert_array_equal(y, expected)
    else:
        assert y["out_shape"] == expected.shape


def test_errors_leave_runtime_usable(isa, rng):
    """After a burst of bad calls, good calls still give correct results."""
    for case in CASES:
        for _, fn in implementations(case):
            check(case, fn)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    wt = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    y = pyconv.conv2d(x, wt, padding=1)
    np.testing.assert_allclose(y, reference64(x, wt, padding=1), rtol=1e-4, atol=1e-4 * 10)


@pytest.mark.parametrize("n", [0, -1])
def test_zero_batch_is_not_an_error_but_negative_is(n):
    """N=0 is a valid, empty batch (as NumPy and PyTorch allow); a negative
    size in a shape function is a ValueError."""
    if n == 0:
        y = pyconv.conv2d(np.ones((0, 3, 6, 6), np.float32), np.ones((2, 3, 3, 3), np.float32))
        assert y.shape == (0, 2, 4, 4) and y.dtype == np.float32
        r = ref.conv2d(np.ones((0, 3, 6, 6), np.float32), np.ones((2, 3, 3, 3), np.float32))
        assert r.shape == (0, 2, 4, 4)
    else:
        with pytest.raises(ValueError, match="conv_output_shape:"):
            pyconv.conv_output_shape((n, 3, 6, 6), (2, 3, 3, 3))
