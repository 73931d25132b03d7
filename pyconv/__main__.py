"""Command line: ``python -m pyconv info`` and ``python -m pyconv bench``.

``main()`` is also the ``pyconv`` console script.  The measuring is done by
:mod:`pyconv._bench`; this module chooses what to measure, shows progress and
prints the table, the JSON file and the optional plot.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import sys

import numpy as np
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from . import _bench
from ._bench import LIBRARIES, PEERS, BenchOptions, ShapeResult, geomean
from ._runtime import config, get_num_threads, peak_gflops, set_num_threads, show_config
from ._suite import (
    DEFAULT_SUITE,
    POOL_SUITE,
    QUICK_POOL_SUITE,
    QUICK_STEP_SUITE,
    QUICK_SUITE,
    STEP_SUITE,
    PoolShape,
    StepShape,
    select,
)

# --quick: the quick subset, three rounds of ~10 ms per library, one sample
# of anything slow; well under ten seconds in all, a third of it importing
# the peers and building their sessions.
QUICK: Dict[str, Any] = {"rounds": 3, "round_target_s": 0.01, "slow_rounds": 1}
FULL: Dict[str, Any] = {"rounds": 5, "round_target_s": 0.05, "slow_rounds": _bench.SLOW_ROUNDS}

MISMATCH_MARK = "!"
TEXT_COLUMNS = ("shape", "algo", "best")  # left-aligned; every other column is a number


# --------------------------------------------------------------------------
# Arguments


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyconv", description="pyconv: CPU convolutions for NumPy.")
    sub = parser.add_subparsers(dest="command", metavar="{info,bench}")
    sub.required = True
    sub.add_parser("info", help="print the build and runtime configuration")
    bench = sub.add_parser(
        "bench", help="benchmark conv2d against NumPy, PyTorch and onnxruntime",
        description="Time pyconv.conv2d on real layer shapes against the NumPy reference "
                    "and every installed peer (PyTorch NCHW and channels_last, onnxruntime). "
                    "Times are medians of interleaved runs, in ms per call.")
    bench.add_argument("--quick", action="store_true",
                       help="a few cheap shapes and fewer repeats (seconds in all)")
    bench.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="threads for pyconv and every peer (default: pyconv's current setting)")
    bench.add_argument("--layout", type=str.upper, choices=("NCHW", "NHWC"), default="NCHW",
                       help="layout of pyconv's input (default NCHW)")
    bench.add_argument("--shapes", type=lambda s: s.split(","), default=None, metavar="NAME,...",
                       help="only these shapes of the default suite (see --list)")
    bench.add_argument("--repeat", type=_positive_int, default=None, metavar="R",
                       help=f"timing rounds (default {FULL['rounds']}, {QUICK['rounds']} with --quick)")
    bench.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="computation dtype of every library (default float32)")
    bench.add_argument("--no-prepack", dest="prepack", action="store_false",
                       help="time pyconv with plain weight arrays (default: pyconv.prepack, as "
                            "onnxruntime packs its weights at session creation)")
    bench.add_argument("--no-numpy", dest="numpy", action="store_false",
                       help="skip the (slow) NumPy reference column")
    bench.add_argument("--json", metavar="FILE", default=None,
                       help="also write every number, the configuration, date and machine")
    bench.add_argument("--plot", metavar="FILE", default=None,
                       help="also draw the speed-ups over NumPy and the peers and the %% of peak per shape (needs matplotlib)")
    bench.add_argument("--list", action="store_true", help="list the shape suite and exit")
    # So that bench's own errors print bench's usage, not the top level's.
    bench.set_defaults(command_parser=bench)
    return parser


def _shapes(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Tuple[Any, ...]:
    if args.shapes is None:
        if args.quick:
            return QUICK_SUITE + QUICK_POOL_SUITE + QUICK_STEP_SUITE
        return DEFAULT_SUITE + POOL_SUITE + STEP_SUITE
    try:
        return select(args.shapes)
    except ValueError as exc:
        parser.error(f"--shapes: {exc}")
        raise  # unreachable: parser.error exits


def _options(args: argparse.Namespace) -> BenchOptions:
    preset = dict(QUICK if args.quick else FULL)
    if args.repeat is not None:
        preset["rounds"] = args.repeat
    threads = args.threads if args.threads is not None else get_num_threads()
    return BenchOptions(threads=threads, layout=args.layout, prepacked=args.prepack, dtype=args.dtype,
                        **preset)


# --------------------------------------------------------------------------
# Running


class Progress:
    """A one-line bar on stderr, only when a human is watching it."""

    WIDTH = 24

    def __init__(self, total: int) -> None:
        self.total = total
        self.enabled = sys.stderr.isatty()
        self._last = 0

    def show(self, index: int, name: str) -> None:
        if not self.enabled:
            return
        done = self.WIDTH * index // max(self.total, 1)
        line = f"[{'#' * done}{'.' * (self.WIDTH - done)}] {index + 1}/{self.total} {name}"
        sys.stderr.write("\r" + line.ljust(self._last))
        sys.stderr.flush()
        self._last = len(line)

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * self._last + "\r")
            sys.stderr.flush()


def _libraries(want_numpy: bool) -> Tuple[List[str], List[str]]:
    """(libraries to time besides pyconv, notes about the ones skipped)."""
    libs = ["numpy"] if want_numpy else []
    notes = []
    for peer in PEERS:
        reason = _bench.missing_reason(peer)
        if reason is None:
            libs.append(peer)
        elif reason not in notes:
            notes.append(reason)
    return libs, notes


def run_suite(shapes: Sequence[Any], libraries: Sequence[str],
              opts: BenchOptions) -> List[ShapeResult]:
    # Process-wide settings first, so the header and JSON report what ran.
    set_num_threads(opts.threads)
    # The machine's peak and bandwidth before any peer exists: a peer's
    # thread pool spinning after its calls would steal a core from the
    # probes (seen as a halved FMA peak).  Both are cached for the run.
    _bench.settle()
    peak_gflops(opts.dtype, opts.threads)
    _bench.copy_bandwidth_gbs(_bench.BANDWIDTH_CACHE_BYTES, opts.threads)
    _bench.copy_bandwidth_gbs(_bench.BANDWIDTH_DRAM_BYTES, opts.threads)
    progress = Progress(len(shapes))
    rows = []
    try:
        for i, shape in enumerate(shapes):
            progress.show(i, shape.name)
            rows.append(_bench.measure_shape(shape, libraries, opts))
    finally:
        progress.close()
    return rows


# --------------------------------------------------------------------------
# Table


def fmt_ms(ms: float) -> str:
    """Three significant digits (and no exponent for slow calls)."""
    return f"{ms:.0f}" if ms >= 100 else f"{ms:#.3g}"


def fmt_ratio(ratio: Optional[float]) -> str:
    return f"{ratio:.2f}x" if ratio is not None else "-"


def _ms_cell(row: ShapeResult, lib: str) -> str:
    res = row.results.get(lib)
    if res is not None and res.error is not None:
        return "err"
    ms = res.median_ms if res is not None else None
    if ms is None:
        return "-"
    return fmt_ms(ms) + (MISMATCH_MARK if res is not None and res.match is False else "")


Column = Tuple[str, Callable[[ShapeResult], str]]


def _ms_column(lib: str) -> Callable[[ShapeResult], str]:
    return lambda row: _ms_cell(row, lib)


def _columns(libraries: Sequence[str], pool: bool = False) -> List[Column]:
    """Table columns; pooling rows (``pool``) have no FLOPs and no algorithm."""
    cols: List[Column] = [("shape", lambda r: r.shape.name)]
    if not pool:
        cols.append(("GFLOP", lambda r: f"{r.shape.gflop:#.3g}"))
    cols.append(("pyconv", lambda r: _ms_cell(r, "pyconv")))
    if not pool:
        cols += [("GFLOP/s", lambda r: f"{r.gflops():.1f}" if r.gflops() else "-"),
                 ("%peak", lambda r: f"{r.percent_of_peak():.0f}%" if r.percent_of_peak() else "-")]
    cols += [
        ("GB/s", lambda r: f"{r.gbytes_per_s():.1f}" if r.gbytes_per_s() else "-"),
        ("%bw", lambda r: f"{r.percent_of_bandwidth():.0f}%" if r.percent_of_bandwidth() else "-"),
    ]
    if not pool:
        cols.append(("algo", lambda r: r.algo or "-"))
    if "numpy" in libraries:
        cols += [("NumPy", lambda r: _ms_cell(r, "numpy")),
                 ("vs NumPy", lambda r: fmt_ratio(r.speedup_over("numpy")))]
    peers = [p for p in PEERS if p in libraries]
    cols += [(LIBRARIES[peer], _ms_column(peer)) for peer in peers]
    if peers:
        cols += [("vs best", lambda r: fmt_ratio(r.speedup_over(r.best_peer()))),
                 ("best", lambda r: LIBRARIES.get(r.best_peer() or "", "-"))]
    return cols


def _geomean_cells(rows: Sequence[ShapeResult], headers: Sequence[str]) -> List[str]:
    """The bottom row: geometric means of throughput and of speed-ups."""
    means: Dict[str, Optional[float]] = {
        "GFLOP/s": geomean([r.gflops() for r in rows]),
        "%peak": geomean([r.percent_of_peak() for r in rows]),
        "%bw": geomean([r.percent_of_bandwidth() for r in rows]),
        "vs NumPy": geomean([r.speedup_over("numpy") for r in rows]),
        "vs best": geomean([r.speedup_over(r.best_peer()) for r in rows]),
    }
    cells = []
    for h in headers:
        value = means.get(h)
        if h == "shape":
            cells.append("geomean")
        elif value is None:
            cells.append("")
        else:
            cells.append(f"{value:.1f}" if h == "GFLOP/s" else
                         f"{value:.0f}%" if h in ("%peak", "%bw") else fmt_ratio(value))
    return cells


def format_tables(rows: Sequence[ShapeResult], libraries: Sequence[str]) -> str:
    """One table each for the convolution, pooling and training-step rows."""
    conv = [r for r in rows if not isinstance(r.shape, (PoolShape, StepShape))]
    pool = [r for r in rows if isinstance(r.shape, PoolShape)]
    step = [r for r in rows if isinstance(r.shape, StepShape)]
    tables = []
    if conv:
        tables.append(format_table(conv, libraries))
    if pool:
        tables.append("pooling (GB/s: input + output bytes; *_grad rows: forward + gradient, "
                      "vs torch autograd)\n" + format_table(pool, libraries, pool=True))
    if step:
        tables.append("training step: forward + input gradient + weight gradient (GFLOP counts all "
                      "three; torch = autograd, ORT has no training ops)\n" + format_table(step, libraries))
    return "\n\n".join(tables)


def format_table(rows: Sequence[ShapeResult], libraries: Sequence[str], pool: bool = False) -> str:
    columns = _columns(libraries, pool)
    headers = [h for h, _ in columns]
    body = [[cell(r) for _, cell in columns] for r in rows]
    body.append(_geomean_cells(rows, headers))
    widths = [max(len(line[i]) for line in [headers] + body) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if h in TEXT_COLUMNS else c.rjust(w)
                 for h, c, w in zip(headers, cells, widths)]
        return "  ".join(parts).rstrip()

    rule = "-" * len(line(headers))
    return "\n".join([line(headers), rule, *(line(b) for b in body[:-1]), rule, line(body[-1])])


def header_lines(opts: BenchOptions, versions: Dict[str, Optional[str]]) -> List[str]:
    cfg = config()
    peers = ", ".join(f"{m} {v}" for m, v in versions.items()
                      if m in ("torch", "onnxruntime") and v is not None) or "none"
    return [
        f"pyconv {cfg['version']} | ISA {cfg['isa']} | {opts.threads} thread(s) | "
        f"{opts.dtype} | input {opts.layout} | weights {'prepacked' if opts.prepacked else 'plain'} | "
        f"CPU {cfg['cpu']} ({os.cpu_count()} logical)",
        f"numpy {versions['numpy']} | peers: {peers} | measured {opts.dtype} FMA peak "
        f"{peak_gflops(opts.dtype, opts.threads):.0f} GFLOP/s, copy bandwidth "
        f"{_bench.copy_bandwidth_gbs(_bench.BANDWIDTH_CACHE_BYTES, opts.threads):.0f} GB/s (8 MiB) / "
        f"{_bench.copy_bandwidth_gbs(_bench.BANDWIDTH_DRAM_BYTES, opts.threads):.0f} GB/s (256 MiB) "
        f"on {opts.threads} thread(s)",
        "times: median ms per call; vs X = X's time / pyconv's; best = fastest peer whose "
        "output matches pyconv's",
        "torch = PyTorch NCHW, torch-CL = PyTorch channels_last, ORT = onnxruntime",
    ]


def _findings(rows: Sequence[ShapeResult]) -> Tuple[List[str], bool]:
    """(warning lines about mismatches and errors, whether pyconv disagrees with NumPy)."""
    lines = []
    pyconv_wrong = False
    for row in rows:
        for lib, res in row.results.items():
            if res.error is not None:
                lines.append(f"error: {LIBRARIES[lib]} on {row.shape.name}: {res.error}")
            elif res.match is False:
                pyconv_wrong |= lib == "numpy"
                lines.append(f"{MISMATCH_MARK} {LIBRARIES[lib]} and pyconv disagree on "
                             f"{row.shape.name}: max |diff| {res.max_abs_diff:.3g} "
                             f"(rtol {_bench.RTOL:g}, atol {_bench.ATOL_SCALE:g} x max|pyconv|)")
    return lines, pyconv_wrong


# --------------------------------------------------------------------------
# JSON and plot


def _machine() -> Dict[str, Any]:
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "logical_cpus": os.cpu_count(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
    }


def _json_number(value: Optional[float]) -> Optional[float]:
    """JSON has no infinity (a wrong-shaped peer output has an infinite difference)."""
    return value if value is not None and math.isfinite(value) else None


def _row_json(row: ShapeResult) -> Dict[str, Any]:
    s = row.shape
    if isinstance(s, PoolShape):
        shape = {"name": s.name, "op": s.op, "N": s.n, "C": s.c, "H": s.h, "W": s.w, "kernel": s.kernel,
                 "stride": s.stride, "padding": s.padding, "problem": s.describe()}
    else:
        shape = {"name": s.name, "N": s.n, "C_in": s.c_in, "H": s.h, "W": s.w, "C_out": s.c_out,
                 "kernel": s.kernel, "stride": s.stride, "padding": s.padding, "groups": s.groups,
                 "problem": s.describe()}
    return {
        "shape": shape,
        "gflop": s.gflop,
        "gflops": row.gflops(),
        "percent_of_peak": row.percent_of_peak(),
        "gbytes_per_s": row.gbytes_per_s(),
        "percent_of_bandwidth": row.percent_of_bandwidth(),
        "algo": row.algo,
        "speedup_vs_numpy": row.speedup_over("numpy"),
        "best_peer": row.best_peer(),
        "speedup_vs_best_peer": row.speedup_over(row.best_peer()),
        "results": {
            lib: {"median_ms": res.median_ms, "min_ms": res.min_ms,
                  "samples_ms": [t * 1e3 for t in res.samples_s],
                  "matches_pyconv": res.match, "max_abs_diff": _json_number(res.max_abs_diff),
                  "error": res.error}
            for lib, res in row.results.items()
        },
    }


def report_json(rows: Sequence[ShapeResult], opts: BenchOptions, libraries: Sequence[str],
                notes: Sequence[str], versions: Dict[str, Optional[str]]) -> Dict[str, Any]:
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": _machine(),
        "config": config(),
        "versions": versions,
        "options": {"threads": opts.threads, "layout": opts.layout, "prepacked": opts.prepacked,
                    "dtype": opts.dtype,
                    "rounds": opts.rounds,
                    "warmup": opts.warmup, "round_target_s": opts.round_target_s,
                    "slow_rounds": opts.slow_rounds, "settle_s": _bench.SETTLE_S,
                    "libraries": ["pyconv", *libraries]},
        "notes": list(notes),
        "rows": [_row_json(r) for r in rows],
        "geomean": {
            "gflops": geomean([r.gflops() for r in rows]),
            "speedup_vs_numpy": geomean([r.speedup_over("numpy") for r in rows]),
            "speedup_vs_best_peer": geomean([r.speedup_over(r.best_peer()) for r in rows]),
        },
    }


def _best_torch(r: ShapeResult) -> Optional[str]:
    """The faster of torch NCHW / channels_last on this row (when it matched)."""
    timed = [(r.ms(lib), lib) for lib in ("torch", "torch_cl")
             if lib in r.results and r.results[lib].ok and r.results[lib].match]
    return min(timed)[1] if timed else None


def write_plot(path: str, rows: Sequence[ShapeResult], libraries: Sequence[str], title: str) -> None:
    """Three panels, one bar group per shape: pyconv's speed-up over NumPy,
    its speed-up over PyTorch (the faster layout) and over the best peer
    (log scales, 1x marked), and its % of the machine's FMA peak (convolution
    rows) or of copy bandwidth (pooling rows)."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    names = [r.shape.name for r in rows]
    ys = list(range(len(rows)))

    def ratios(peer_of: Any) -> List[float]:
        out = []
        for r in rows:
            value = r.speedup_over(peer_of(r))
            out.append(value if value else float("nan"))
        return out

    panels: List[Tuple[str, List[Tuple[str, List[float]]], bool]] = []
    if "numpy" in libraries:
        panels.append(("speed-up over NumPy (pyconv.reference)", [("NumPy", ratios(lambda r: "numpy"))], True))
    peers = [("PyTorch (faster layout)", ratios(_best_torch)), ("best peer", ratios(lambda r: r.best_peer()))]
    if any(v == v for _, vs in peers for v in vs):  # any number at all (NaN != NaN)
        panels.append(("speed-up over the peers (> 1: pyconv faster)", peers, True))
    usage = [r.percent_of_peak() if not isinstance(r.shape, PoolShape) else r.percent_of_bandwidth()
             for r in rows]
    panels.append(("% of FMA peak (conv) / copy bandwidth (pool)",
                   [("pyconv", [u if u is not None else float("nan") for u in usage])], False))

    fig, axes = plt.subplots(1, len(panels), sharey=True,
                             figsize=(4.2 * len(panels) + 1.5, 0.28 * len(rows) + 1.6))
    axes = list(np.atleast_1d(axes))
    for ax, (label, series, log) in zip(axes, panels):
        height = 0.8 / len(series)
        for j, (name, values) in enumerate(series):
            ax.barh([y + j * height for y in ys], values, height=height, label=name)
        if log:
            ax.set_xscale("log")
            ax.axvline(1.0, color="black", linewidth=0.8)
            ratio = FuncFormatter(lambda v, _: f"{v:g}x")
            ax.xaxis.set_major_formatter(ratio)
            ax.xaxis.set_minor_formatter(NullFormatter())
        else:
            ax.set_xlim(0, 100)
        ax.set_xlabel(label, fontsize=8)
        ax.grid(axis="x", which="both", alpha=0.3)
        if len(series) > 1:
            ax.legend(loc="lower right", fontsize=7)
    axes[0].set_yticks([y + 0.4 - 0.4 / max(1, len(panels[0][1])) for y in ys])
    axes[0].set_yticklabels(names, fontsize=7)
    axes[0].invert_yaxis()
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------
# Commands


def _list_shapes() -> None:
    print(f"{'name':<22} {'N':>3} {'C_in':>5} {'H':>4} {'W':>4} {'C_out':>5} "
          f"{'k':>2} {'s':>2} {'pad':>5} {'groups':>6} {'GFLOP':>8}  quick")
    quick = {s.name for s in QUICK_SUITE}
    for s in DEFAULT_SUITE:
        print(f"{s.name:<22} {s.n:>3} {s.c_in:>5} {s.h:>4} {s.w:>4} {s.c_out:>5} {s.kernel:>2} "
              f"{s.stride:>2} {str(s.padding):>5} {s.groups:>6} {s.gflop:>8.4f}  "
              f"{'yes' if s.name in quick else ''}")
    print()
    print(f"{'name':<22} {'op':<11} {'N':>3} {'C':>5} {'H':>4} {'W':>4} {'k':>2} {'s':>2} {'pad':>5}  quick")
    quick_pool = {s.name for s in QUICK_POOL_SUITE}
    for p in POOL_SUITE:
        print(f"{p.name:<22} {p.op:<11} {p.n:>3} {p.c:>5} {p.h:>4} {p.w:>4} {p.kernel:>2} {p.stride:>2} "
              f"{str(p.padding):>5}  {'yes' if p.name in quick_pool else ''}")
    print()
    quick_step = {s.name for s in QUICK_STEP_SUITE}
    print("training steps (forward + input and weight gradients) of every layer above:")
    print("  " + ", ".join(s.name + (" (quick)" if s.name in quick_step else "") for s in STEP_SUITE))


def bench(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.list:
        _list_shapes()
        return 0
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        parser.error("--plot needs matplotlib: pip install 'pyconv[plot]'")
    shapes = _shapes(args, parser)
    opts = _options(args)
    libraries, notes = _libraries(args.numpy)
    versions = _bench.library_versions()

    rows = run_suite(shapes, libraries, opts)

    header = header_lines(opts, versions)
    print("\n".join(header))
    for note in notes:
        print(f"note: {note}")
    print()
    print(format_tables(rows, libraries))
    findings, pyconv_wrong = _findings(rows)
    if findings:
        print()
        print("\n".join(findings))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report_json(rows, opts, libraries, notes, versions), f, indent=2)
            f.write("\n")
    if args.plot:
        measured = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        write_plot(args.plot, rows, libraries, f"{header[0]} | {measured}")
    # pyconv disagreeing with its own oracle is a bug worth a failing exit
    # status (a peer disagreeing is only reported: it may be the peer).
    return 1 if pyconv_wrong else 0


def info() -> int:
    show_config()
    threads = get_num_threads()
    print(f"{'fma peak':<15}  float32 {peak_gflops('float32'):.0f} GFLOP/s, "
          f"float64 {peak_gflops('float64'):.0f} GFLOP/s ({threads} thread(s), measured)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "info":
        return info()
    return bench(args, args.command_parser)


if __name__ == "__main__":
    sys.exit(main())
