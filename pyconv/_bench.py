"""pyconv against NumPy and its peers: the engine of ``python -m pyconv bench``.

:func:`build_runner` makes a zero-argument callable for one (library, shape,
threads) triple; the CLI (``pyconv.__main__``) and the pytest-benchmark suites
in ``bench/`` both use it, so they time exactly the same calls.  Peers (PyTorch,
onnxruntime) are imported lazily, inside the functions that need them: pyconv
itself depends on NumPy only, and a missing peer is a note, never an error.

Timing methodology (:func:`measure_shape`):

* every library is warmed up first (its first call also gives the output that
  is checked against pyconv's: a benchmark of wrong results is worthless);
* then rounds: in each round every library runs a few calls in turn, so slow
  drifts of the machine (thermal, another process) hit all columns alike;
* the reported time is the median of all calls (robust to the odd preemption
  on a busy machine);
* no library's idle thread pool may steal cycles from the one being timed:
  onnxruntime is told not to spin, and before each library's turn we sleep
  briefly (:data:`SETTLE_S`) because OpenMP runtimes (pyconv's libgomp,
  PyTorch's own bundled one) keep their workers spinning for a while after a
  parallel region ends; NumPy's OpenBLAS spins for ~0.1 s, so the NumPy
  column is timed after the others, with a longer pause
  (:data:`BLAS_SETTLE_S`).
"""

from __future__ import annotations

import importlib.util
import math
import statistics
import time
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import __version__, _core, reference
from ._conv import conv2d
from ._prepack import prepack
from ._conv import plan as conv_plan
from ._runtime import peak_gflops, set_num_threads
from ._pool import avg_pool2d, avg_pool2d_grad, global_avg_pool2d, max_pool2d, max_pool2d_grad
from ._suite import ConvShape, PoolShape, StepShape, make_inputs, make_pool_inputs, make_step_inputs
from .autograd import conv2d_vjp, max_pool2d_vjp

__all__ = [
    "LIBRARIES",
    "PEERS",
    "BenchOptions",
    "LibResult",
    "Runner",
    "ShapeResult",
    "build_runner",
    "check_match",
    "geomean",
    "library_versions",
    "measure_shape",
    "missing_reason",
    "serves",
    "settle",
]

#: Library keys, in column order, with their column titles.
LIBRARIES: Dict[str, str] = {
    "pyconv": "pyconv",
    "numpy": "NumPy",  # pyconv.reference.conv2d in float32
    "torch": "torch",  # torch.nn.functional.conv2d, NCHW (contiguous)
    "torch_cl": "torch-CL",  # the same with channels_last input and weight
    "onnxruntime": "ORT",  # a one-node ONNX Conv model, CPUExecutionProvider
}

#: The libraries pyconv's "speed-up over the best peer" is taken against.
PEERS: Tuple[str, ...] = ("torch", "torch_cl", "onnxruntime")

# The Python modules each library needs beyond NumPy.
_MODULES: Dict[str, Tuple[str, ...]] = {
    "pyconv": (),
    "numpy": (),
    "torch": ("torch",),
    "torch_cl": ("torch",),
    "onnxruntime": ("onnx", "onnxruntime"),
}

# After a parallel region libgomp's workers spin GOMP_SPINCOUNT (300k) pause
# instructions before sleeping: measured as ~10 ms of CPU burnt after each
# call (pyconv and PyTorch alike) on a 2-core AMD EPYC, and a pause costs
# about twice as many cycles on recent Intel cores.  25 ms outlasts both; it
# adds ~0.1 s per shape, a price worth paying for uncontended timings.
SETTLE_S = 0.025

# NumPy's OpenBLAS threads spin far longer after a BLAS call (the reference
# convolutions are matmuls): 100-110 ms of CPU burnt after one, measured on
# the same machine.  So the NumPy column is timed on its own after the
# others, and the timed rounds start (and the next shape starts) only
# BLAS_SETTLE_S after NumPy last ran.
BLAS_SETTLE_S = 0.15

# A call slower than this is timed in at most SLOW_ROUNDS rounds, one call
# each: the NumPy reference takes seconds on the big layers, and three
# samples of a multi-second call already pin its median down.
SLOW_CALL_S = 0.25
SLOW_ROUNDS = 3

# Upper bound on back-to-back calls of one library in one round (tiny shapes
# would otherwise make thousands).
MAX_CALLS_PER_ROUND = 50

# Output check: float32 libraries sum in different orders (and a peer may
# pick Winograd or FFT), so allow 1e-3 relative to the output's scale.
RTOL = 1e-3
ATOL_SCALE = 1e-3

# The ONNX opset of the one-node model: Conv has been stable since opset 11;
# 17 is old enough for every onnxruntime this benchmark meets.
ONNX_OPSET = 17


@dataclass
class Runner:
    """A ready-to-time call and how to read its result as NCHW float32."""

    call: Callable[[], Any]
    to_nchw: Callable[[Any], np.ndarray]


def missing_reason(library: str) -> Optional[str]:
    """Why ``library`` cannot run here (a human sentence), or None if it can."""
    if library not in LIBRARIES:
        raise ValueError(f"unknown library {library!r}; expected one of {list(LIBRARIES)}")
    absent = [m for m in _MODULES[library] if importlib.util.find_spec(m) is None]
    if absent:
        return f"{LIBRARIES[library]} skipped: {' and '.join(absent)} not installed"
    return None


def library_versions() -> Dict[str, Optional[str]]:
    """Versions of pyconv, NumPy and every peer module (None if absent)."""
    versions: Dict[str, Optional[str]] = {"pyconv": __version__, "numpy": np.__version__}
    for module in ("torch", "onnx", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            versions[module] = None
        else:
            versions[module] = str(getattr(importlib.import_module(module), "__version__", "?"))
    return versions


def build_runner(library: str, shape: ConvShape, threads: int, layout: str = "NCHW",
                 seed: int = 0, prepacked: bool = True, dtype: Any = np.float32) -> Runner:
    """A zero-argument callable computing ``shape``'s conv2d with ``library``.

    Inputs are made here (seeded, float32, identical numbers for every
    library); thread counts are set to ``threads``.  ``layout`` is pyconv's
    input layout; the peers' layouts are fixed by the library key.
    """
    reason = missing_reason(library)
    if reason is not None:
        raise RuntimeError(reason)
    if isinstance(shape, PoolShape):
        return _pool_runner(library, shape, threads, layout, seed, dtype)
    if isinstance(shape, StepShape):
        return _step_runner(library, shape, threads, layout, seed, dtype)
    if library == "pyconv":
        return _pyconv_runner(shape, threads, layout, seed, prepacked, dtype)
    if library == "numpy":
        return _numpy_runner(shape, seed, dtype)
    if library in ("torch", "torch_cl"):
        return _torch_runner(shape, threads, library == "torch_cl", seed, dtype)
    return _onnxruntime_runner(shape, threads, seed, dtype)


def _pyconv_runner(shape: ConvShape, threads: int, layout: str, seed: int, prepacked: bool,
                   dtype: Any) -> Runner:
    set_num_threads(threads)
    x, w = make_inputs(shape, layout, seed, dtype)
    if prepacked:
        # A layer run many times holds its weight prepacked, as onnxruntime
        # holds its initializers packed from session creation on.
        w = prepack(w, shape.groups, layout=layout)

    def call() -> np.ndarray:
        return conv2d(x, w, None, shape.stride, shape.padding, 1, shape.groups,
                             layout=layout)

    if layout.upper() == "NHWC":
        return Runner(call, lambda y: np.ascontiguousarray(np.transpose(y, (0, 3, 1, 2))))
    return Runner(call, np.asarray)


def _numpy_runner(shape: ConvShape, seed: int, dtype: Any) -> Runner:
    # The reference is the best vectorised NumPy we have (one matmul per
    # kernel tap); it computes in its inputs' dtype, like the rest.
    x, w = make_inputs(shape, "NCHW", seed, dtype)
    return Runner(lambda: reference.conv2d(x, w, None, shape.stride, shape.padding, 1, shape.groups),
                  np.asarray)


def _torch_runner(shape: ConvShape, threads: int, channels_last: bool, seed: int, dtype: Any) -> Runner:
    import torch

    torch.set_num_threads(threads)
    x, w = make_inputs(shape, "NCHW", seed, dtype)
    xt, wt = torch.from_numpy(x), torch.from_numpy(w)
    if channels_last:
        xt = xt.to(memory_format=torch.channels_last)
        wt = wt.to(memory_format=torch.channels_last)
    conv = _torch_conv(shape, wt)

    def call() -> Any:
        with torch.inference_mode():
            return conv(xt)

    return Runner(call, lambda y: y.contiguous().numpy())


def _torch_conv(shape: ConvShape, wt: Any) -> Callable[[Any], Any]:
    """``shape``'s convolution with weight ``wt`` as a torch function of the input."""
    import torch.nn.functional as F

    top, bottom, left, right = shape.geometry().pads
    stride, groups = shape.stride, shape.groups
    if top == bottom and left == right:
        return lambda inp: F.conv2d(inp, wt, None, stride, (top, left), 1, groups)
    # PyTorch has no asymmetric padding (its "same" refuses stride > 1);
    # padding the input first is how TF-compatible layers do it (e.g.
    # timm's Conv2dSame), so that cost is rightly part of the call.
    return lambda inp: F.conv2d(F.pad(inp, (left, right, top, bottom)), wt, None, stride, 0, 1, groups)


def _onnx_conv_model(shape: ConvShape, weight: np.ndarray) -> bytes:
    # (float32 or float64, from the weight's dtype)
    """A one-node ONNX graph ``y = Conv(x, W)`` with the weight as an initializer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    geo = shape.geometry()
    elem = TensorProto.DOUBLE if weight.dtype == np.float64 else TensorProto.FLOAT
    top, bottom, left, right = geo.pads
    node = helper.make_node(
        "Conv", ["x", "w"], ["y"],
        kernel_shape=[shape.kernel, shape.kernel],
        strides=[shape.stride, shape.stride],
        pads=[top, left, bottom, right],  # ONNX order: all begins, then all ends
        dilations=[1, 1],
        group=shape.groups,
    )
    graph = helper.make_graph(
        [node], "pyconv_bench_conv",
        [helper.make_tensor_value_info("x", elem, list(shape.x_shape("NCHW")))],
        [helper.make_tensor_value_info("y", elem, list(geo.out_shape))],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    opset = [helper.make_opsetid("", ONNX_OPSET)]
    # The oldest IR version that carries this opset: a newer `onnx` stamps
    # its own IR version, which an older onnxruntime refuses to load.
    model = helper.make_model(graph, opset_imports=opset,
                              ir_version=helper.find_min_ir_version_for(opset))
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _onnxruntime_runner(shape: ConvShape, threads: int, seed: int, dtype: Any) -> Runner:

    x, w = make_inputs(shape, "NCHW", seed, dtype)
    session = _ort_session(_onnx_conv_model(shape, w), threads)
    feed = {"x": x}
    return Runner(lambda: session.run(["y"], feed)[0], np.asarray)


def _ort_session(model: bytes, threads: int) -> Any:
    """An onnxruntime CPU session of a serialized model on ``threads`` threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle onnxruntime workers would otherwise spin and slow the library
    # timed after it (see the module docstring).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


# ---- training-step rows ---------------------------------------------------------


def _step_runner(library: str, shape: StepShape, threads: int, layout: str, seed: int, dtype: Any) -> Runner:
    """Forward, then input and weight gradients; the result read back is both
    gradients, each scaled by its own largest magnitude (the weight gradient
    sums over every pixel and would otherwise set the tolerance for both)."""
    lay = layout if library == "pyconv" else "NCHW"
    x, w, g = make_step_inputs(shape, lay, seed, dtype)
    s, p, groups = shape.stride, shape.padding, shape.groups
    if library == "pyconv":
        set_num_threads(threads)

        def call() -> Any:
            _, pullback = conv2d_vjp(x, w, None, s, p, 1, groups, layout=lay)
            return pullback(g)[:2]
    elif library == "numpy":
        def call() -> Any:
            reference.conv2d(x, w, None, s, p, 1, groups)
            return (reference.conv2d_grad_input(g, w, x.shape, s, p, 1, groups),
                    reference.conv2d_grad_weight(x, g, w.shape, s, p, 1, groups))
    else:
        call = _torch_step(shape, x, w, g, threads, library == "torch_cl")

    def to_nchw(grads: Any) -> np.ndarray:
        gx, gw = (np.asarray(t.contiguous().numpy() if hasattr(t, "contiguous") else t) for t in grads)
        if lay == "NHWC":
            gx, gw = gx.transpose(0, 3, 1, 2), gw.transpose(3, 2, 0, 1)
        parts = [a.astype(np.float64).ravel() / max(float(np.max(np.abs(a))), 1e-30) for a in (gx, gw)]
        return np.concatenate(parts)

    return Runner(call, to_nchw)


def _torch_step(shape: StepShape, x: np.ndarray, w: np.ndarray, g: np.ndarray, threads: int,
                channels_last: bool) -> Callable[[], Any]:
    """torch autograd's step: leaves x and w, forward, backward(grad_out)."""
    import torch

    torch.set_num_threads(threads)
    xt, wt, gt = torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(g)
    if channels_last:
        xt, wt, gt = (t.to(memory_format=torch.channels_last) for t in (xt, wt, gt))
    xt, wt = xt.detach().requires_grad_(True), wt.detach().requires_grad_(True)
    conv = _torch_conv(shape, wt)

    def step() -> Any:
        xt.grad = wt.grad = None
        conv(xt).backward(gt)
        return xt.grad, wt.grad

    return step


# ---- pooling rows ---------------------------------------------------------------


def serves(library: str, shape: Any) -> bool:
    """Whether ``library`` has the operation of ``shape`` at all (onnxruntime
    has no training ops, so no pooling gradient and no training step)."""
    if library != "onnxruntime":
        return True
    return not (isinstance(shape, StepShape) or (isinstance(shape, PoolShape) and shape.backward))


def _pool_runner(library: str, shape: PoolShape, threads: int, layout: str, seed: int, dtype: Any) -> Runner:
    if library in ("pyconv", "numpy"):
        lay = layout if library == "pyconv" else "NCHW"
        if library == "pyconv":
            set_num_threads(threads)
        x, g = make_pool_inputs(shape, lay, seed, dtype)
        lib = reference if library == "numpy" else None
        call = _pool_call(shape, x, g, lay, lib)
        if lay.upper() == "NHWC" and shape.op != "global_avg":
            return Runner(call, lambda y: np.ascontiguousarray(np.transpose(y, (0, 3, 1, 2))))
        return Runner(call, np.asarray)
    if library in ("torch", "torch_cl"):
        return _torch_pool_runner(shape, threads, library == "torch_cl", seed, dtype)
    if not serves(library, shape):
        raise RuntimeError(f"{LIBRARIES[library]} has no {shape.op} operation")
    return _onnxruntime_pool_runner(shape, threads, seed, dtype)


def _pool_call(shape: PoolShape, x: np.ndarray, g: np.ndarray, layout: str, lib: Any) -> Callable[[], Any]:
    """pyconv's (lib None) or the reference's call for a pool row."""
    ops = lib if lib is not None else _PYCONV_POOL
    k, s, p = shape.kernel, shape.stride, shape.padding
    if shape.op == "max":
        return lambda: ops.max_pool2d(x, k, s, p, layout=layout)
    if shape.op == "avg":
        return lambda: ops.avg_pool2d(x, k, s, p, layout=layout)
    if shape.op == "global_avg":
        return lambda: ops.global_avg_pool2d(x, layout=layout)
    if shape.op == "max_grad" and lib is None:
        def vjp_step() -> Any:  # a trainer's call, as torch autograd's row is
            _, pullback = max_pool2d_vjp(x, k, s, p, layout=layout)
            return pullback(g)
        return vjp_step
    if shape.op == "max_grad":
        def max_step() -> Any:
            ops.max_pool2d(x, k, s, p, layout=layout)
            return ops.max_pool2d_grad(g, x, k, s, p, layout=layout)
        return max_step

    def avg_step() -> Any:
        ops.avg_pool2d(x, k, s, p, layout=layout)
        return ops.avg_pool2d_grad(g, x.shape, k, s, p, layout=layout)
    return avg_step


# pyconv's pooling ops under the reference module's names.
_PYCONV_POOL = types.SimpleNamespace(max_pool2d=max_pool2d, avg_pool2d=avg_pool2d,
                                     global_avg_pool2d=global_avg_pool2d, max_pool2d_grad=max_pool2d_grad,
                                     avg_pool2d_grad=avg_pool2d_grad)


def _torch_pool_runner(shape: PoolShape, threads: int, channels_last: bool, seed: int, dtype: Any) -> Runner:
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    x, g = make_pool_inputs(shape, "NCHW", seed, dtype)
    xt, gt = torch.from_numpy(x), torch.from_numpy(g)
    if channels_last:
        xt = xt.to(memory_format=torch.channels_last)
        gt = gt.to(memory_format=torch.channels_last)
    top, bottom, left, right = shape.geometry().pads
    k, s = shape.kernel, shape.stride
    same = isinstance(shape.padding, str)
    if top == bottom and left == right:
        def pad(inp: Any) -> Any:
            return inp
        sym = (top, left)
    else:  # PyTorch pools have symmetric padding only: pad explicitly (as for conv2d)
        def pad(inp: Any) -> Any:
            return F.pad(inp, (left, right, top, bottom), value=-math.inf if shape.op.startswith("max") else 0.0)
        sym = (0, 0)

    def forward(inp: Any) -> Any:
        if shape.op.startswith("max"):
            return F.max_pool2d(pad(inp), k, s, sym)
        if shape.op == "global_avg":
            return F.adaptive_avg_pool2d(inp, 1).reshape(inp.shape[0], inp.shape[1])
        # "same" average pooling excludes the padding from the divisor (TensorFlow).
        return F.avg_pool2d(pad(inp), k, s, sym, count_include_pad=not same)

    if shape.backward:
        leaf = xt.detach().requires_grad_(True)

        def step() -> Any:
            leaf.grad = None
            forward(leaf).backward(gt)
            return leaf.grad

        return Runner(step, lambda y: y.contiguous().numpy())

    def call() -> Any:
        with torch.inference_mode():
            return forward(xt)

    return Runner(call, lambda y: y.contiguous().numpy())


def _onnxruntime_pool_runner(shape: PoolShape, threads: int, seed: int, dtype: Any) -> Runner:
    import onnx
    from onnx import TensorProto, helper

    x, _ = make_pool_inputs(shape, "NCHW", seed, dtype)
    geo = shape.geometry()
    elem = TensorProto.DOUBLE if x.dtype == np.float64 else TensorProto.FLOAT
    top, bottom, left, right = geo.pads
    out = [shape.n, shape.c, geo.oh, geo.ow]
    if shape.op == "global_avg":
        node = helper.make_node("GlobalAveragePool", ["x"], ["y"])
    else:
        attrs = dict(kernel_shape=[shape.kernel] * 2, strides=[shape.stride] * 2,
                     pads=[top, left, bottom, right])
        if shape.op == "avg":
            attrs["count_include_pad"] = 0 if isinstance(shape.padding, str) else 1
        node = helper.make_node("MaxPool" if shape.op == "max" else "AveragePool", ["x"], ["y"], **attrs)
    graph = helper.make_graph([node], "pyconv_bench_pool",
                              [helper.make_tensor_value_info("x", elem, list(x.shape))],
                              [helper.make_tensor_value_info("y", elem, out)])
    opset = [helper.make_opsetid("", ONNX_OPSET)]
    model = helper.make_model(graph, opset_imports=opset, ir_version=helper.find_min_ir_version_for(opset))
    onnx.checker.check_model(model)
    session = _ort_session(model.SerializeToString(), threads)
    feed = {"x": x}
    if shape.op == "global_avg":
        return Runner(lambda: session.run(["y"], feed)[0], lambda y: np.asarray(y).reshape(y.shape[:2]))
    return Runner(lambda: session.run(["y"], feed)[0], np.asarray)


def settle() -> None:
    """Let the previous library's spinning thread pool fall asleep."""
    time.sleep(SETTLE_S)


def check_match(expected: np.ndarray, got: np.ndarray) -> Tuple[bool, float]:
    """(within float32 tolerance, max |difference|) of two NCHW results."""
    if expected.shape != got.shape:
        return False, math.inf
    diff = float(np.max(np.abs(expected.astype(np.float64) - got))) if got.size else 0.0
    atol = ATOL_SCALE * float(np.max(np.abs(expected))) if expected.size else 0.0
    return bool(np.allclose(got, expected, rtol=RTOL, atol=atol)), diff


@dataclass
class BenchOptions:
    """How hard to measure: see :func:`measure_shape`."""

    threads: int
    layout: str = "NCHW"
    prepacked: bool = True  # pyconv's weight through pyconv.prepack (see _pyconv_runner)
    dtype: str = "float32"
    rounds: int = 5
    warmup: int = 2
    round_target_s: float = 0.05
    slow_rounds: int = SLOW_ROUNDS


@dataclass
class LibResult:
    """One library on one shape: per-call seconds, or why there are none."""

    samples_s: List[float] = field(default_factory=list)
    match: Optional[bool] = None  # None for pyconv itself (the baseline)
    max_abs_diff: Optional[float] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.samples_s)

    @property
    def median_ms(self) -> Optional[float]:
        return statistics.median(self.samples_s) * 1e3 if self.ok else None

    @property
    def min_ms(self) -> Optional[float]:
        return min(self.samples_s) * 1e3 if self.ok else None


# Bandwidth probes: a working set that stays in this class of machine's
# large L3 (what a layer's tensors see when they were just produced) and one
# far beyond any cache (DRAM).  Measured once per thread count.
BANDWIDTH_CACHE_BYTES = 8 << 20
BANDWIDTH_DRAM_BYTES = 256 << 20
_bandwidth_cache: Dict[Tuple[int, int], float] = {}


def copy_bandwidth_gbs(nbytes: int, threads: int) -> float:
    """GB/s (read + written) of a parallel copy of ``nbytes``, best of a few."""
    key = (nbytes, threads)
    if key not in _bandwidth_cache:
        repeats = 20 if nbytes <= BANDWIDTH_CACHE_BYTES else 4
        _bandwidth_cache[key] = _core.copy_bandwidth(nbytes, repeats, threads) / 1e9
    return _bandwidth_cache[key]


@dataclass
class ShapeResult:
    shape: ConvShape
    results: Dict[str, LibResult]
    algo: str = ""  # what pyconv's algo="auto" ran
    peak_gflops: Optional[float] = None  # the machine's measured FMA peak in the bench's dtype

    bandwidth_gbs: Optional[float] = None  # the machine's cache-resident copy bandwidth

    def percent_of_peak(self) -> Optional[float]:
        rate = self.gflops()
        return 100.0 * rate / self.peak_gflops if rate and self.peak_gflops else None

    def gbytes_per_s(self) -> Optional[float]:
        """Compulsory traffic (input + output + weight bytes) over pyconv's time."""
        ms = self.ms("pyconv")
        return self.shape.min_bytes(self.itemsize) / (ms * 1e-3) / 1e9 if ms else None

    def percent_of_bandwidth(self) -> Optional[float]:
        rate = self.gbytes_per_s()
        return 100.0 * rate / self.bandwidth_gbs if rate and self.bandwidth_gbs else None

    itemsize: int = 4

    def ms(self, library: str) -> Optional[float]:
        res = self.results.get(library)
        return res.median_ms if res is not None else None

    def gflops(self) -> Optional[float]:
        ms = self.ms("pyconv")
        return self.shape.gflop / (ms * 1e-3) if ms and self.shape.gflop else None

    def speedup_over(self, library: Optional[str]) -> Optional[float]:
        """How many times faster pyconv is than ``library`` on this shape."""
        mine = self.ms("pyconv")
        theirs = self.ms(library) if library else None
        return theirs / mine if mine and theirs else None

    def best_peer(self) -> Optional[str]:
        """The fastest peer whose output matched pyconv's (a wrong answer is never best)."""
        timed = [(self.ms(p), p) for p in PEERS
                 if p in self.results and self.results[p].ok and self.results[p].match]
        return min(timed)[1] if timed else None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _warm_up(runner: Runner, opts: BenchOptions) -> Tuple[np.ndarray, float]:
    """Run the warm-up calls; return the first output (NCHW) and the last call's seconds."""
    settle()
    start = time.perf_counter()
    first = runner.call()
    seconds = time.perf_counter() - start
    # A call slower than SLOW_CALL_S has nothing left to warm (no JIT, no
    # lazy pools): its first call is warm-up enough.
    for _ in range(opts.warmup - 1 if seconds < SLOW_CALL_S else 0):
        start = time.perf_counter()
        runner.call()
        seconds = time.perf_counter() - start
    return runner.to_nchw(first), seconds


def _schedule(seconds: float, opts: BenchOptions) -> Tuple[int, int]:
    """(rounds, calls per round) for a library whose call takes ``seconds``."""
    if seconds > SLOW_CALL_S:
        return min(opts.rounds, opts.slow_rounds), 1
    calls = int(opts.round_target_s / max(seconds, 1e-9))
    return opts.rounds, max(1, min(MAX_CALLS_PER_ROUND, calls))


def _time_rounds(runners: Dict[str, Runner], plan: Dict[str, Tuple[int, int]]) -> Dict[str, List[float]]:
    """Interleaved timing: each round gives every library its turn of calls."""
    samples: Dict[str, List[float]] = {lib: [] for lib in runners}
    for round_index in range(max((r for r, _ in plan.values()), default=0)):
        for lib, runner in runners.items():
            rounds, calls = plan[lib]
            if round_index >= rounds:
                continue
            settle()
            for _ in range(calls):
                start = time.perf_counter()
                runner.call()
                samples[lib].append(time.perf_counter() - start)
    return samples


def measure_shape(shape: ConvShape, libraries: Sequence[str], opts: BenchOptions) -> ShapeResult:
    """Time ``libraries`` (pyconv first and always) on ``shape``, checking outputs.

    pyconv or NumPy failing is a bug and raises; a peer failing to build or
    run becomes an ``error`` entry, so one broken peer cannot hide the rest.
    """
    libs = ["pyconv"] + [lib for lib in libraries if lib != "pyconv" and serves(lib, shape)]
    results = {lib: LibResult() for lib in libs}
    runners: Dict[str, Runner] = {}
    plan: Dict[str, Tuple[int, int]] = {}
    expected: Optional[np.ndarray] = None
    for lib in libs:
        try:
            runner = build_runner(lib, shape, opts.threads, opts.layout if lib == "pyconv" else "NCHW",
                                  prepacked=opts.prepacked, dtype=opts.dtype)
            out, seconds = _warm_up(runner, opts)
        except Exception as exc:  # noqa: BLE001 - a peer's failure is reported, not fatal
            if lib not in PEERS:
                raise
            results[lib].error = _first_line(exc)
            continue
        if expected is None:
            expected = out
        else:
            results[lib].match, results[lib].max_abs_diff = check_match(expected, out)
        runners[lib] = runner
        plan[lib] = _schedule(seconds, opts)
    numpy_runner = runners.pop("numpy", None)
    if numpy_runner is not None:
        time.sleep(BLAS_SETTLE_S)  # (its warm-up call above)
    timed = _time_rounds(runners, plan)
    if numpy_runner is not None:
        timed.update(_time_rounds({"numpy": numpy_runner}, plan))
        time.sleep(BLAS_SETTLE_S)
    for lib, samples in timed.items():
        results[lib].samples_s = samples
    if isinstance(shape, PoolShape):
        chosen = "pool"
    else:
        chosen = conv_plan(shape.x_shape(opts.layout), shape.w_shape(opts.layout), shape.stride,
                           shape.padding, 1, shape.groups, layout=opts.layout, dtype=opts.dtype)["algo"]
    return ShapeResult(shape, results, algo=chosen, peak_gflops=peak_gflops(opts.dtype, opts.threads),
                       bandwidth_gbs=copy_bandwidth_gbs(BANDWIDTH_CACHE_BYTES, opts.threads),
                       itemsize=np.dtype(opts.dtype).itemsize)


def geomean(values: Sequence[Optional[float]]) -> Optional[float]:
    """Geometric mean of the positive values given (None if there are none)."""
    good = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in good) / len(good)) if good else None
