"""Process-wide runtime: threads, determinism, ISA selection, config, plan,
PYCONV_VERBOSE and the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import pyconv
from conftest import (
    ALL_ISA_NAMES,
    DTYPES,
    ISAS,
    LAYOUTS,
    assert_close,
    conv_inputs,
    input_shape,
    reference64,
    subprocess_env,
    weight_shape,
)


def run_python(code: str, tmp_path, **env):
    """Run ``code`` in a child python that imports this process's pyconv."""
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env(**env),
                          capture_output=True, text=True, timeout=120)


# ==========================================================================
# threads


def test_set_and_get_num_threads():
    for n in (1, 2, 3, 1):
        assert pyconv.set_num_threads(n) is None
        assert pyconv.get_num_threads() == n
        assert pyconv.config()["threads"] == n
        assert type(pyconv.get_num_threads()) is int
    pyconv.set_num_threads(np.int64(2))
    assert pyconv.get_num_threads() == 2


def test_default_threads_is_positive():
    cfg = pyconv.config()
    assert isinstance(cfg["threads"], int) and cfg["threads"] >= 1


def test_num_threads_context_manager_restores():
    pyconv.set_num_threads(2)
    with pyconv.num_threads(1) as n:
        assert n == 1
        assert pyconv.get_num_threads() == 1
        assert pyconv.config()["threads"] == 1
        with pyconv.num_threads(3):
            assert pyconv.get_num_threads() == 3
        assert pyconv.get_num_threads() == 1
    assert pyconv.get_num_threads() == 2


def test_num_threads_restores_after_an_exception():
    pyconv.set_num_threads(2)
    with pytest.raises(KeyError):
        with pyconv.num_threads(1):
            raise KeyError("boom")
    assert pyconv.get_num_threads() == 2


@pytest.mark.parametrize("fn", ["set_num_threads", "num_threads"])
@pytest.mark.parametrize("n, exc", [(0, ValueError), (-1, ValueError), (-(2**70), ValueError),
                                    (1.0, TypeError), (2.5, TypeError), ("2", TypeError),
                                    (None, TypeError), (True, TypeError), ([2], TypeError)])
def test_bad_thread_counts(fn, n, exc):
    pyconv.set_num_threads(2)
    with pytest.raises(exc, match=fn):
        if fn == "set_num_threads":
            pyconv.set_num_threads(n)
        else:
            with pyconv.num_threads(n):
                pass  # pragma: no cover
    assert pyconv.get_num_threads() == 2


@pytest.mark.parametrize("n", [2**31, 2**40])
def test_huge_thread_count_is_a_value_error(n):
    """An int too large to be a thread count is a bad value (ValueError, or
    accepted as is), not a TypeError from the binding layer."""
    pyconv.set_num_threads(2)
    try:
        pyconv.set_num_threads(n)
    except ValueError as exc:
        assert "set_num_threads" in str(exc)
        assert pyconv.get_num_threads() == 2
    else:
        assert pyconv.get_num_threads() == n


# (c, h, w, oc, k, stride, padding, dilation, groups): dense with two vector
# blocks and tails, grouped, depthwise (multiplier 1 and 2), 1x1, wide rows.
DETERMINISM_SHAPES = [
    (8, 13, 17, 24, 3, 1, 1, 1, 1),
    (6, 12, 11, 9, 5, 2, "same", 1, 3),
    (20, 15, 14, 20, 3, 2, 1, 1, 20),
    (5, 10, 9, 10, 3, 1, "same", 2, 5),
    (16, 9, 33, 40, 1, 1, 0, 1, 1),
]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", DETERMINISM_SHAPES, ids=lambda s: "c{}h{}w{}oc{}k{}s{}p{}d{}g{}".format(*s))
def test_bitwise_deterministic_across_thread_counts(isa, rng, shape, dtype, layout):
    c, h, w, oc, k, s, p, d, g = shape
    x, wt, b = conv_inputs(rng, n=3, c=c, h=h, w=w, oc=oc, kh=k, kw=k, groups=g, layout=layout,
                           dtype=dtype, bias=True)
    kwargs = dict(stride=s, padding=p, dilation=d, groups=g, layout=layout, activation="relu")
    with pyconv.num_threads(1):
        y1 = pyconv.conv2d(x, wt, b, **kwargs)
        y1_again = pyconv.conv2d(x, wt, b, **kwargs)
    with pyconv.num_threads(2):
        y2 = pyconv.conv2d(x, wt, b, **kwargs)
    with pyconv.num_threads(3):
        y3 = pyconv.conv2d(x, wt, b, **kwargs)
    assert np.array_equal(y1, y1_again)
    assert np.array_equal(y1, y2)
    assert np.array_equal(y1, y3)
    assert_close(y1, reference64(x, wt, b, **kwargs), dtype)


def test_auto_choice_does_not_depend_on_threads():
    shapes = [((8, 64, 56, 56), (64, 64, 3, 3)), ((8, 512, 14, 14), (512, 1, 3, 3), 512),
              ((1, 64, 56, 56), (256, 64, 1, 1))]
    for xs, ws, *g in shapes:
        plans = []
        for n in (1, 2, 4):
            with pyconv.num_threads(n):
                plans.append(pyconv.plan(xs, ws, padding="same", groups=g[0] if g else 1))
        # The workspace holds one packing buffer per thread, so only it may differ.
        for p in plans:
            p.pop("workspace_bytes")
        assert plans[0] == plans[1] == plans[2]


def test_concurrent_calls_from_python_threads(rng):
    """Kernels release the GIL and share no state between calls."""
    problems = []
    for i in range(6):
        layout = LAYOUTS[i % 2]
        g = (1, 2, 4)[i % 3]
        x, wt, b = conv_inputs(rng, n=2, c=4, h=20 + i, w=19, oc=8, kh=3, kw=3, groups=g, layout=layout,
                               dtype=DTYPES[i % 2], bias=True)
        kwargs = dict(padding=1, stride=1 + i % 2, groups=g, layout=layout)
        problems.append((x, wt, b, kwargs, pyconv.conv2d(x, wt, b, **kwargs)))
    barrier = threading.Barrier(4)

    def worker(k):
        barrier.wait()
        bad = 0
        for rep in range(25):
            x, wt, b, kwargs, expected = problems[(k + rep) % len(problems)]
            if not np.array_equal(pyconv.conv2d(x, wt, b, **kwargs), expected):
                bad += 1
        return bad

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(worker, range(4))) == [0, 0, 0, 0]
    for x, wt, b, kwargs, expected in problems:
        assert_close(expected, reference64(x, wt, b, **kwargs), expected.dtype)


# ==========================================================================
# instruction sets


def _best_at_or_below(cap: str) -> str:
    """The ISA expected for a cap: the best available one not above it."""
    rank = ALL_ISA_NAMES.index(cap)
    return [i for i in ISAS if ALL_ISA_NAMES.index(i) <= rank][-1]


def test_isa_available_is_consistent():
    cfg = pyconv.config()
    assert cfg["isa_available"][0] == "generic"
    assert set(cfg["isa_available"]) <= set(ALL_ISA_NAMES)
    assert cfg["isa_available"] == sorted(cfg["isa_available"], key=ALL_ISA_NAMES.index)
    assert cfg["isa"] in cfg["isa_available"]
    if "isa_compiled" in cfg:
        assert set(cfg["isa_available"]) <= set(cfg["isa_compiled"])


@pytest.mark.parametrize("cap", ALL_ISA_NAMES)
def test_set_max_isa(cap):
    expected = _best_at_or_below(cap)
    assert pyconv.set_max_isa(cap) == expected
    assert pyconv.config()["isa"] == expected
    assert pyconv.plan((1, 3, 8, 8), (4, 3, 3, 3))["isa"] == expected
    assert pyconv.set_max_isa("avx512") == ISAS[-1]


@pytest.mark.parametrize("bad, exc", [("sse2", ValueError), ("", ValueError), ("avx", ValueError),
                                      (None, TypeError), (2, TypeError)])
def test_set_max_isa_bad(bad, exc):
    before = pyconv.config()["isa"]
    with pytest.raises(exc, match="set_max_isa"):
        pyconv.set_max_isa(bad)
    assert pyconv.config()["isa"] == before


def test_isas_agree_with_each_other(rng):
    """Every available ISA gives the same answer within tolerance on one
    awkward problem (tails in every dimension)."""
    x, wt, b = conv_inputs(rng, n=2, c=6, h=13, w=23, oc=34, kh=3, kw=2, groups=2, bias=True)
    kwargs = dict(stride=(1, 2), padding="same", dilation=(2, 1), groups=2, activation="relu6")
    r = reference64(x, wt, b, **kwargs)
    for isa in ISAS:
        pyconv.set_max_isa(isa)
        assert_close(pyconv.conv2d(x, wt, b, **kwargs), r, np.float32)


_CHILD_ISA = """
import json, warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import pyconv
print(json.dumps({"isa": pyconv.config()["isa"],
                  "warnings": [[w.category.__name__, str(w.message)] for w in caught]}))
"""


@pytest.mark.parametrize("value", ["generic", "avx2", "avx512", "bogus", ""])
def test_pyconv_isa_environment(tmp_path, value):
    proc = run_python(_CHILD_ISA, tmp_path, PYCONV_ISA=value)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    isa_warnings = [w for w in result["warnings"] if "PYCONV_ISA" in w[1]]
    if value in ALL_ISA_NAMES:
        assert result["isa"] == _best_at_or_below(value)
        if value in ISAS:
            assert isa_warnings == []
        else:  # e.g. avx512 on a machine without it: warn, use the best available
            assert len(isa_warnings) == 1 and isa_warnings[0][0] == "RuntimeWarning"
    elif value == "":
        assert result["isa"] == ISAS[-1] and isa_warnings == []
    else:  # unknown: warn and ignore
        assert result["isa"] == ISAS[-1]
        assert len(isa_warnings) == 1 and isa_warnings[0][0] == "RuntimeWarning"
        assert value in isa_warnings[0][1]


def test_pyconv_isa_generic_computes_correctly(tmp_path):
    code = (
        "import numpy as np, pyconv\n"
        "rng = np.random.default_rng(1)\n"
        "x = rng.standard_normal((2, 5, 9, 9)).astype(np.float32)\n"
        "w = rng.standard_normal((7, 5, 3, 3)).astype(np.float32)\n"
        "y = pyconv.conv2d(x, w, padding=1)\n"
        "r = pyconv.reference.conv2d(x.astype(float), w.astype(float), padding=1)\n"
        "print(pyconv.config()['isa'], float(np.abs(y - r).max() / max(1, np.abs(r).max())))\n"
    )
    proc = run_python(code, tmp_path, PYCONV_ISA="generic")
    assert proc.returncode == 0, proc.stderr
    isa, err = proc.stdout.split()
    assert isa == "generic" and float(err) < 1e-4


# ==========================================================================
# config, show_config, command line


def test_config_keys_and_types():
    cfg = pyconv.config()
    for key in ("version", "compiler", "isa_available", "isa", "openmp", "threads"):
        assert key in cfg
    assert cfg["version"] == pyconv.__version__
    assert isinstance(cfg["compiler"], str) and cfg["compiler"]
    assert isinstance(cfg["isa_available"], list)
    assert isinstance(cfg["openmp"], bool)
    assert cfg["threads"] == pyconv.get_num_threads()
    json.dumps(cfg)  # plain data: serialisable for bug reports
    assert pyconv.config() is not pyconv.config()  # a fresh dict, safe to modify


def test_show_config_prints(capsys):
    assert pyconv.show_config() is None
    out = capsys.readouterr().out
    cfg = pyconv.config()
    assert "isa" in out and cfg["isa"] in out and cfg["version"] in out and cfg["compiler"] in out


def test_cli_info(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pyconv", "info"], cwd=tmp_path, env=subprocess_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "isa" in proc.stdout
    assert pyconv.config()["isa"] in proc.stdout
    assert pyconv.__version__ in proc.stdout


# ==========================================================================
# plan


PLAN_CASES = [
    # x shape, weight shape, kwargs
    ((1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
    ((2, 3, 32, 32), (20, 3, 8, 8), dict(stride=2, padding=1)),
    ((8, 512, 14, 14), (512, 1, 3, 3), dict(padding="same", groups=512)),
    ((4, 6, 10, 9), (9, 2, 2, 3), dict(stride=(2, 1), padding=((0, 1), (2, 0)), dilation=(1, 2), groups=3)),
    ((3, 11, 10), (5, 3, 3, 3), dict(padding="same", stride=2)),
    ((1, 56, 56, 64), (1, 1, 64, 256), dict(layout="NHWC")),
    ((10, 10, 6), (3, 3, 3, 4), dict(groups=2, layout="NHWC", padding="valid", dtype="float64")),
    ((1, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3, dtype=np.float32)),
]


@pytest.mark.parametrize("xs, ws, kwargs", PLAN_CASES)
def test_plan(isa, xs, ws, kwargs):
    p = pyconv.plan(xs, ws, **kwargs)
    assert set(p) >= {"algo", "isa", "pads", "out_shape", "flops", "workspace_bytes"}
    shape_kwargs = {k: v for k, v in kwargs.items() if k != "dtype"}
    assert p["out_shape"] == pyconv.conv_output_shape(xs, ws, **shape_kwargs)
    assert p["isa"] == isa
    assert p["algo"] in ("direct", "im2col", "pointwise", "depthwise") or isinstance(p["algo"], str)
    assert isinstance(p["workspace_bytes"], int) and p["workspace_bytes"] >= 0
    assert len(p["pads"]) == 4 and all(isinstance(v, int) and v >= 0 for v in p["pads"])
    # flops = 2 * N * C_out * OH * OW * C_in/groups * KH * KW, from the shapes alone
    layout = kwargs.get("layout", "NCHW")
    groups = kwargs.get("groups", 1)
    full = xs if len(xs) == 4 else (1,) + tuple(xs)
    n, c = (full[0], full[1]) if layout == "NCHW" else (full[0], full[3])
    if layout == "NCHW":
        oc, _, kh, kw = ws
    else:
        kh, kw, _, oc = ws
    out = p["out_shape"] if len(p["out_shape"]) == 4 else (1,) + p["out_shape"]
    oh, ow = (out[2], out[3]) if layout == "NCHW" else (out[1], out[2])
    assert p["flops"] == 2 * n * oc * oh * ow * (c // groups) * kh * kw
    assert isinstance(p["flops"], int)


def test_plan_docstring_example():
    p = pyconv.plan((1, 64, 56, 56), (64, 64, 3, 3), padding=1)
    assert p["out_shape"] == (1, 64, 56, 56)
    assert p["flops"] == 231211008
    assert p["pads"] == (1, 1, 1, 1)


def test_plan_matches_what_conv2d_runs(tmp_path):
    """plan()["algo"] is the algorithm conv2d(algo="auto") reports running."""
    xs, ws = (1, 3, 8, 8), (8, 3, 3, 3)
    code = (
        "import numpy as np, pyconv\n"
        f"print(pyconv.plan({xs}, {ws}, padding=1)['algo'], flush=True)\n"
        f"pyconv.conv2d(np.ones({xs}, np.float32), np.ones({ws}, np.float32), padding=1)\n"
    )
    proc = run_python(code, tmp_path, PYCONV_VERBOSE="1")
    assert proc.returncode == 0, proc.stderr
    algo = proc.stdout.split()[0]
    assert f"algo={algo}" in proc.stderr


# Shapes for the algo/workspace checks: (x shape, weight shape, kwargs).  The
# real layers' sizes, in both layouts, plus small and grouped ones.
GEMM_PLAN_CASES = [
    ((1, 64, 56, 56), (64, 64, 3, 3), dict(padding=1)),
    ((1, 128, 56, 56), (256, 128, 3, 3), dict(padding=1)),
    ((1, 56, 56, 64), (1, 1, 64, 256), dict(layout="NHWC")),
    ((8, 1024, 14, 14), (256, 1024, 1, 1), dict()),
    ((8, 14, 14, 1024), (1, 1, 1024, 256), dict(layout="NHWC", dtype="float64")),
    ((1, 64, 56, 56), (256, 64, 1, 1), dict(stride=2)),
    ((2, 32, 20, 20), (64, 8, 3, 3), dict(groups=4, padding="same")),
    ((1, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3)),
    ((8, 512, 14, 14), (512, 1, 3, 3), dict(padding="same", groups=512)),
    ((1, 3, 8, 8), (8, 3, 3, 3), dict(padding=1)),
    ((2, 600, 5, 5), (70, 600, 1, 1), dict(padding=1)),  # 1x1 but padded: not pointwise
    ((8, 14, 14, 512), (3, 3, 1, 512), dict(padding="same", groups=512, layout="NHWC")),
    ((1, 32, 112, 112), (64, 1, 3, 3), dict(padding=1, groups=32)),
]
KNOWN_ALGOS = {"direct", "im2col", "pointwise", "depthwise"}


def _is_pointwise_shape(ws, kwargs, pads) -> bool:
    kh, kw = ws[2:] if kwargs.get("layout", "NCHW") == "NCHW" else ws[:2]
    return kh == kw == 1 and kwargs.get("groups", 1) == 1 and not any(pads)


@pytest.mark.parametrize("xs, ws, kwargs", GEMM_PLAN_CASES)
def test_plan_algo_and_workspace(isa, xs, ws, kwargs):
    p = pyconv.plan(xs, ws, **kwargs)
    assert p["algo"] in KNOWN_ALGOS, p
    if p["algo"] == "pointwise":
        assert _is_pointwise_shape(ws, kwargs, p["pads"]), p
    if p["algo"] == "depthwise":
        groups = kwargs.get("groups", 1)
        assert groups == (xs[1] if kwargs.get("layout", "NCHW") == "NCHW" else xs[3]), p
    if p["algo"] in ("im2col", "pointwise", "depthwise"):
        # packed weights and per-thread packing/padding buffers: never free
        assert p["workspace_bytes"] > 0, p
    # "auto" is a function of the shape: not of the thread count, the ISA,
    # the dtype or the call
    for threads in (1, 2, 3):
        with pyconv.num_threads(threads):
            assert pyconv.plan(xs, ws, **kwargs)["algo"] == p["algo"]
    other = dict(kwargs, dtype="float64" if kwargs.get("dtype", "float32") == "float32" else "float32")
    assert pyconv.plan(xs, ws, **other)["algo"] == p["algo"]
    for other_isa in ISAS:
        pyconv.set_max_isa(other_isa)
        assert pyconv.plan(xs, ws, **kwargs)["algo"] == p["algo"], other_isa
    pyconv.set_max_isa(isa)


def test_plan_chooses_the_gemm_for_big_layers():
    """The GEMM algorithms are reachable from "auto" (else the workspace check
    above checks nothing): a 128->256 3x3 layer and a 1024->256 1x1 layer."""
    algos = {pyconv.plan(xs, ws, **kw)["algo"] for xs, ws, kw in GEMM_PLAN_CASES}
    assert algos & {"im2col", "pointwise"}, algos


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gemm_workspace_grows_with_the_weight(dtype):
    """The GEMM's workspace holds the packed weight: at least its size."""
    for xs, ws, kwargs in GEMM_PLAN_CASES:
        kwargs = dict(kwargs, dtype=dtype)
        p = pyconv.plan(xs, ws, **kwargs)
        if p["algo"] in ("im2col", "pointwise"):
            assert p["workspace_bytes"] >= math.prod(ws) * np.dtype(dtype).itemsize, (xs, ws, p)


_PLAN_VS_RUN_CHILD = """
import numpy as np, pyconv
cases = {cases!r}
for xs, ws, kw in cases:
    kw = dict(kw)
    kw.pop("dtype", None)
    print("PLAN", pyconv.plan(xs, ws, **kw)["algo"], flush=True)
    pyconv.conv2d(np.ones(xs, np.float32), np.ones(ws, np.float32), **kw)
"""


def test_plan_matches_what_conv2d_runs_for_gemm_shapes(tmp_path):
    """For GEMM-sized layers too, plan()["algo"] is what conv2d(algo="auto") runs."""
    cases = [c for c in GEMM_PLAN_CASES if math.prod(c[0]) * math.prod(c[1][:2]) < 5e7][:6]
    proc = run_python(_PLAN_VS_RUN_CHILD.format(cases=cases), tmp_path, PYCONV_VERBOSE="1")
    assert proc.returncode == 0, proc.stderr
    planned = [line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PLAN")]
    ran = [part.split("=", 1)[1] for line in proc.stderr.splitlines() if "conv2d" in line
           for part in line.split(",") if part.startswith("algo=")]
    assert len(planned) == len(cases) and ran == planned, (planned, proc.stderr)
    assert set(planned) & {"im2col", "pointwise"}, planned


# ==========================================================================
# PYCONV_VERBOSE


_VERBOSE_CHILD = """
import numpy as np, pyconv
pyconv.conv2d(np.ones((1, 3, 8, 8), np.float32), np.ones((8, 3, 3, 3), np.float32), padding=1,
              algo="direct")
pyconv.conv2d(np.ones((2, 7, 9, 4)), np.ones((3, 2, 4, 6)), stride=2, padding="same", layout="NHWC")
print(pyconv.config()["isa"])
"""


def test_verbose_prints_problem_string(tmp_path):
    proc = run_python(_VERBOSE_CHILD, tmp_path, PYCONV_VERBOSE="1")
    assert proc.returncode == 0, proc.stderr
    isa = proc.stdout.split()[-1]
    lines = [line for line in proc.stderr.splitlines() if "conv2d" in line]
    assert len(lines) == 2, proc.stderr
    first, second = lines
    assert "mb1_ic3oc8_ih8oh8kh3sh1ph1_iw8ow8kw3sw1pw1" in first
    assert "algo=direct" in first
    assert isa in first
    assert "f32" in first and "NCHW" in first
    # "same" on 7x9 with a 3x2 kernel, stride 2: pads (1,1) rows, (0,1) columns
    assert "mb2_ic4oc6_ih7oh4kh3sh2ph1_iw9ow5kw2sw2pw0_1" in second
    assert "f64" in second and "NHWC" in second


def test_not_verbose_by_default(tmp_path):
    proc = run_python(_VERBOSE_CHILD, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "conv2d" not in proc.stderr
    assert proc.stdout.split()[-1] in ISAS


def test_shape_helpers_agree_with_input_helpers():
    """The suite's own shape helpers follow DESIGN.md's conventions."""
    assert input_shape("NCHW", 2, 3, 4, 5) == (2, 3, 4, 5)
    assert input_shape("NHWC", None, 3, 4, 5) == (4, 5, 3)
    assert weight_shape("NCHW", 6, 8, 3, 2, groups=2) == (8, 3, 3, 2)
    assert weight_shape("NHWC", 6, 8, 3, 2, groups=3) == (3, 2, 2, 8)
    assert math.prod(weight_shape("NHWC", 6, 8, 3, 2)) == 6 * 8 * 6


_VERBOSE_EVERY_OP = """
import numpy as np, pyconv
x = np.ones((1, 4, 8, 8), np.float32)
pyconv.separable_conv2d(x, np.ones((4, 1, 3, 3), np.float32), np.ones((8, 4, 1, 1), np.float32), padding=1)
pyconv.conv2d_grad_weight(x, np.ones((1, 8, 6, 6), np.float32), (8, 4, 3, 3))
pyconv.conv2d_grad_input(np.ones((1, 4, 4, 4), np.float32), np.ones((4, 1, 3, 3), np.float32), (1, 4, 8, 8),
                         stride=2, padding=1, groups=4)
pyconv.max_pool2d(x, 2)
"""


def test_verbose_prints_every_kernel_call(tmp_path):
    """Not only conv2d: the fused separable kernel, the weight gradient, the
    depthwise input gradient and pooling print their line too."""
    proc = run_python(_VERBOSE_EVERY_OP, tmp_path, PYCONV_VERBOSE="1")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("pyconv_verbose,")]
    ops = [line.split(",")[1] for line in lines]
    assert ops == ["separable_conv2d", "conv2d_grad_weight", "conv2d_grad_input", "max_pool2d"], proc.stderr
    assert "algo=separable" in lines[0] and "algo=grad_weight" in lines[1]
    assert "algo=depthwise_grad_input" in lines[2]
    assert all(line.endswith("ms") for line in lines)


# ==========================================================================
# result buffers: recycled memory for the arrays pyconv allocates


@pytest.fixture
def pool_limit():
    """Restore the pool's limit after a test that changes it."""
    before = pyconv.buffer_pool_info()["limit_bytes"]
    yield
    pyconv.set_buffer_pool_limit(before)


def test_pooled_results_are_plain_writeable_arrays(rng):
    x = rng.standard_normal((4, 64, 32, 32)).astype(np.float32)  # results >= 256 KiB are pooled
    y = pyconv.max_pool2d(x, 2)
    assert y.flags.c_contiguous and y.flags.writeable and y.flags.aligned
    assert y.dtype == np.float32 and y.shape == (4, 64, 16, 16)
    assert y.ctypes.data % 64 == 0
    y[...] = 1.0  # ours to write
    assert np.all(y == 1.0)


def test_freed_results_are_reused_and_views_keep_theirs(rng, pool_limit):
    pyconv.set_buffer_pool_limit(64 << 20)
    x = rng.standard_normal((2, 32, 64, 64)).astype(np.float32)
    w = rng.standard_normal((32, 1, 3, 3)).astype(np.float32)
    kw = dict(padding=1, groups=32)
    first = pyconv.conv2d(x, w, **kw)
    expected = first.copy()
    view = first[1]  # keeps the block alive after `first` is gone
    address = first.ctypes.data
    del first
    hits = pyconv.buffer_pool_info()["hits"]
    second = pyconv.conv2d(x + 1, w, **kw)  # same size: must not get the viewed block
    assert second.ctypes.data != address
    np.testing.assert_array_equal(view, expected[1])
    del view
    third = pyconv.conv2d(x, w, **kw)  # now the block is free: reused
    assert pyconv.buffer_pool_info()["hits"] > hits
    np.testing.assert_array_equal(third, expected)
    del second, third


def test_pool_limit_and_release(rng, pool_limit):
    x = rng.standard_normal((2, 16, 128, 128)).astype(np.float32)
    pyconv.set_buffer_pool_limit(64 << 20)
    pyconv.avg_pool2d(x, 2)  # the result dies at once
    assert pyconv.buffer_pool_info()["kept_bytes"] >= 2 * 16 * 64 * 64 * 4
    released = pyconv.release_buffers()
    assert released >= 2 * 16 * 64 * 64 * 4
    assert pyconv.buffer_pool_info()["kept_bytes"] == 0
    pyconv.set_buffer_pool_limit(0)  # disabled: nothing is kept
    pyconv.avg_pool2d(x, 2)  # the result dies at once
    info = pyconv.buffer_pool_info()
    assert info["kept_bytes"] == 0 and info["limit_bytes"] == 0
    pyconv.set_buffer_pool_limit(1 << 30)
    pyconv.avg_pool2d(x, 2)  # the result dies at once
    kept = pyconv.buffer_pool_info()["kept_bytes"]
    assert kept > 0
    pyconv.set_buffer_pool_limit(kept - 1)  # lowered below what is kept: released at once
    assert pyconv.buffer_pool_info()["kept_bytes"] == 0


@pytest.mark.parametrize("value, exc", [(-1, ValueError), (1.5, TypeError), ("1", TypeError), (None, TypeError)])
def test_bad_pool_limits(value, exc, pool_limit):
    with pytest.raises(exc, match="set_buffer_pool_limit"):
        pyconv.set_buffer_pool_limit(value)


@pytest.mark.parametrize("value, limit", [("0", 0), ("16", 16 << 20), ("0.5", 1 << 19), ("lots", 256 << 20),
                                          ("-3", 256 << 20)])
def test_pool_limit_from_the_environment(value, limit):
    code = "import pyconv; print(pyconv.buffer_pool_info()['limit_bytes'])"
    env = {**__import__("os").environ, "PYCONV_BUFFER_POOL_MB": value}
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert int(out.stdout.strip()) == limit
    if limit == 256 << 20:
        assert "PYCONV_BUFFER_POOL_MB" in out.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("n", [1, 15, 16, 17, 4095, 4096, 4097, 9000])
def test_all_finite_finds_every_nan_and_inf(dtype, n):
    """The non-finite weight check (the depthwise kernel and the input
    gradient's phases skip the zero padding, so a weight with NaN or inf must
    take an exact path): every position of a chunk and vector, each kind of
    value, contiguous or strided, extreme finite values accepted."""
    from pyconv._normalize import all_finite

    finfo = np.finfo(dtype)
    a = np.full(n, finfo.max, dtype)
    a[::2] = -finfo.max
    a[1::3] = finfo.tiny
    assert all_finite(a) and all_finite(a[::-1]) and all_finite(a.reshape(1, n, 1))
    positions = sorted({0, n // 2, n - 1, min(n - 1, 16), min(n - 1, 4095), min(n - 1, 4096)})
    for i in positions:
        for bad in (np.nan, np.inf, -np.inf):
            b = a.copy()
            b[i] = bad
            assert not all_finite(b), (i, bad)
            assert not all_finite(b[::-1]), (i, bad)
    assert all_finite(np.arange(6).reshape(2, 3)) and all_finite(np.zeros(0, dtype))
