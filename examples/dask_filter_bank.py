"""Filter a chunked image stack with a bank of 5x5 filters: Dask + pyconv.

A synthetic, seeded stack of N grayscale images (N, H, W) float32 is a
``dask.array`` chunked along N *and* along H and W, as a stack too large for
one machine would be.  Eight 5x5 filters (two Gaussian blurs, Sobel x/y, a
Laplacian, three Gabor filters) are applied with ``pyconv.conv2d`` on each
chunk, giving (N, F, H, W), and reduced to per-image texture features, the
mean |response| of each filter, shape (N, F).  Two ways to split the work:

* **frames** -- chunks hold whole images (split along N only): every chunk is
  an independent ``conv2d(..., padding="same")``, ``map_blocks`` is enough.
* **tiles** -- chunks also split H and W: a tile's border pixels need their
  neighbours' pixels, so ``map_overlap`` first surrounds each tile with a
  halo of depth = kernel radius (2) taken from the adjacent tiles, and with
  zeros at the edge of the image (``boundary=0``, exactly the zero padding
  of ``padding="same"``); the chunk function then runs a ``"valid"``
  convolution, which consumes the halo and returns the tile's own pixels.

Both are checked against one single-process ``pyconv.conv2d(...,
padding="same")`` on the first few images (the full frames, so every chunk
border is compared), and both are timed against that single process.  On
one small machine the single process wins: the workers share its cores, and
dask adds per-task scheduling, halo transfers between workers (tiles mode
makes ~10 small tasks per tile) and fresh output buffers per task.  What
dask buys is a stack larger than one machine's memory, and more machines.

    python examples/dask_filter_bank.py                  # 64 images 512x512, LocalCluster
    python examples/dask_filter_bank.py --images 8 --size 256 --chunk 64 --workers 2

By default a ``dask.distributed.LocalCluster`` of worker *processes* (one
thread each) is started on the loopback interface, without a dashboard.  The
very same code runs on a real cluster: start a scheduler and workers by any
means (``dask-scheduler`` and ``dask-worker tcp://host:8786`` on each machine,
dask-jobqueue, dask-kubernetes, Coiled, ...) with pyconv installed on every
worker, then

    python examples/dask_filter_bank.py --scheduler-address tcp://host:8786

The client ships the chunk functions of this file to the workers by value,
so only pyconv (and NumPy, Dask) must be importable there, not this example.
Each worker's pyconv uses ``--pyconv-threads`` threads (default 1 per dask
thread, so that dask's parallelism and pyconv's OpenMP threads do not
oversubscribe the cores), set once per worker by a worker plugin.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import cloudpickle
import dask.array as da
from dask.array.overlap import ensure_minimum_chunksize
import numpy as np
from distributed import Client, LocalCluster, WorkerPlugin, wait

import pyconv

FILTER_NAMES = ("gauss_s1", "gauss_s2", "sobel_x", "sobel_y", "laplacian",
                "gabor_0", "gabor_45", "gabor_90")
KERNEL = 5  # every filter is 5x5; the 3x3 ones sit in the middle of zeros
RADIUS = KERNEL // 2  # halo depth: how far a 5x5 window reaches past a pixel
GABOR_WAVELENGTH = 4.0  # pixels; a 5x5 window holds about one period
GABOR_SIGMA = 1.5
GABOR_ASPECT = 0.5
SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)
LAPLACIAN = np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], dtype=np.float64)


# ---------------------------------------------------------------- filters

def _embed(kernel3: np.ndarray) -> np.ndarray:
    """A 3x3 kernel centred in a 5x5 one: same response, one weight shape."""
    out = np.zeros((KERNEL, KERNEL))
    out[1:4, 1:4] = kernel3
    return out


def _gaussian(sigma: float) -> np.ndarray:
    """Truncated 5x5 Gaussian, normalised to sum 1 (flat regions unchanged)."""
    t = np.arange(KERNEL) - RADIUS
    g = np.exp(-(t[:, None] ** 2 + t[None, :] ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _gabor(theta: float) -> np.ndarray:
    """Even (cosine) Gabor filter across direction ``theta``, made zero-mean
    so that flat regions give 0 and only oriented texture responds."""
    t = np.arange(KERNEL) - RADIUS
    yy, xx = np.meshgrid(t, t, indexing="ij")
    u = xx * np.cos(theta) + yy * np.sin(theta)
    v = -xx * np.sin(theta) + yy * np.cos(theta)
    g = (np.exp(-(u ** 2 + (GABOR_ASPECT * v) ** 2) / (2 * GABOR_SIGMA ** 2))
         * np.cos(2 * np.pi * u / GABOR_WAVELENGTH))
    return g - g.mean()


def filter_bank() -> np.ndarray:
    """The conv2d weight, shape (8, 1, 5, 5) float32, in the order of
    :data:`FILTER_NAMES` (conv2d is a cross-correlation: no flip)."""
    bank = [_gaussian(1.0), _gaussian(2.0), _embed(SOBEL_X), _embed(SOBEL_X.T),
            _embed(LAPLACIAN), _gabor(0.0), _gabor(np.pi / 4), _gabor(np.pi / 2)]
    return np.stack(bank)[:, None].astype(np.float32)


# ---------------------------------------------------------------- data

def synthetic_image(index: int, rows: np.ndarray, cols: np.ndarray, shape: Tuple[int, int],
                    seed: int = 0) -> np.ndarray:
    """Pixels ``(rows, cols)`` (broadcastable index grids) of image ``index``
    of the stack: two sinusoidal gratings (texture for the Gabor filters) and
    four flat discs (edges for Sobel and the Laplacian), float32.

    The parameters come from ``default_rng((seed, index))`` and the pixels
    are a function of their coordinates only, so any tile of an image can
    be generated on its own, whatever the chunking.
    """
    rng = np.random.default_rng((seed, index))
    h, w = shape
    img = np.zeros(np.broadcast_shapes(rows.shape, cols.shape))
    for _ in range(2):
        freq, angle, phase = rng.uniform(0.03, 0.2), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
        amplitude = rng.uniform(0.2, 0.5)
        img += amplitude * np.cos(2 * np.pi * freq * (cols * np.cos(angle) + rows * np.sin(angle)) + phase)
    for _ in range(4):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        radius, level = rng.uniform(0.05, 0.2) * min(h, w), rng.uniform(-1, 1)
        img += level * ((rows - cy) ** 2 + (cols - cx) ** 2 <= radius ** 2)
    return img.astype(np.float32)


def _synthetic_block(block_info: Optional[Dict[Any, Any]] = None, *, seed: int) -> np.ndarray:
    """map_blocks body of :func:`synthetic_stack`: the chunk at the location
    dask asks for, generated on the worker (nothing is shipped)."""
    info = block_info[None]
    (i0, i1), (r0, r1), (c0, c1) = info["array-location"]
    _, h, w = info["shape"]
    rows, cols = np.arange(r0, r1)[:, None], np.arange(c0, c1)[None, :]
    return np.stack([synthetic_image(i, rows, cols, (h, w), seed) for i in range(i0, i1)])


def synthetic_stack(images: int, size: int, chunks: Tuple[int, int, int], seed: int = 0) -> da.Array:
    """A lazy (images, size, size) float32 stack with chunks
    ``(images per chunk, tile rows, tile columns)``; see :func:`synthetic_image`."""
    shape = (images, size, size)
    norm = da.core.normalize_chunks(chunks, shape, dtype=np.float32)
    return da.map_blocks(_synthetic_block, seed=seed, chunks=norm, dtype=np.float32,
                         meta=np.empty((0, 0, 0), np.float32))


# ---------------------------------------------------------------- filtering

def filter_frames(block: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Chunk function of frames mode: whole images (n, H, W) ->
    responses (n, F, H, W), zero "same" padding as the single-process call."""
    return pyconv.conv2d(block[:, None], weight, padding="same")


def filter_tile(block: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Chunk function of tiles mode: a tile with its halo, (n, h+2r, w+2r)
    -> responses (n, F, h, w).  The halo holds the neighbours' pixels (or
    zeros at the image edge), so a "valid" convolution gives exactly the
    tile's pixels of the "same" convolution of the whole image."""
    return pyconv.conv2d(block[:, None], weight, padding="valid")


def _with_filter_axis(x: da.Array, filters: int) -> Tuple[Tuple[int, ...], ...]:
    """Output chunks: the input's, with the new filter axis (one chunk) at 1."""
    return (x.chunks[0], (filters,)) + x.chunks[1:]


def _check_weight(weight: np.ndarray) -> None:
    if weight.ndim != 4 or weight.shape[1] != 1 or weight.shape[2] % 2 == 0 or weight.shape[3] % 2 == 0:
        raise ValueError(f"weight must be (F, 1, KH, KW) with odd KH and KW, got {weight.shape}")


def filter_bank_frames(x: da.Array, weight: np.ndarray) -> da.Array:
    """(N, H, W) -> (N, F, H, W) with ``map_blocks``; chunks must hold whole
    images (a split H or W would need a halo: use :func:`filter_bank_tiles`)."""
    _check_weight(weight)
    if x.numblocks[1:] != (1, 1):
        raise ValueError(f"frames mode needs whole images per chunk, got chunks {x.chunksize}; "
                         "rechunk with x.rechunk({1: -1, 2: -1}) or use filter_bank_tiles")
    # new_axis=1 inserts the filter axis; chunks= must then give all four
    # axes, the new one as a single chunk of F (dask cannot infer its size).
    return x.map_blocks(filter_frames, weight=weight, new_axis=1,
                        chunks=_with_filter_axis(x, weight.shape[0]),
                        dtype=np.float32, meta=np.empty((0, 0, 0, 0), np.float32))


def filter_bank_tiles(x: da.Array, weight: np.ndarray) -> da.Array:
    """(N, H, W) -> (N, F, H, W) with ``map_overlap``, for any chunking.

    Halo depth is the kernel radius on H and W (none on N); ``boundary=0``
    pads the image edges with zeros, as ``padding="same"`` does for odd
    kernels.  ``trim=False`` because :func:`filter_tile` already returns the
    tile without its halo: dask's trimming would cut ``depth`` off the
    *output's* axes 1 and 2, which after the new filter axis are F and H.
    """
    _check_weight(weight)
    ry, rx = weight.shape[2] // 2, weight.shape[3] // 2
    # map_overlap needs every chunk at least as deep as the halo and would
    # rechunk on its own, after our output chunks were computed: do it first.
    x = x.rechunk({1: ensure_minimum_chunksize(max(ry, 1), x.chunks[1]),
                   2: ensure_minimum_chunksize(max(rx, 1), x.chunks[2])})
    return da.map_overlap(filter_tile, x, weight=weight, depth={0: 0, 1: ry, 2: rx},
                          boundary={0: "none", 1: 0, 2: 0}, trim=False, new_axis=1,
                          chunks=_with_filter_axis(x, weight.shape[0]),
                          dtype=np.float32, meta=np.empty((0, 0, 0, 0), np.float32))


def texture_features(responses: Any) -> Any:
    """Mean |response| of each filter on each image: (N, F, H, W) -> (N, F)
    float64 (NumPy or dask; float64 so that chunked sums agree closely)."""
    return abs(responses).mean(axis=(2, 3), dtype=np.float64)


# ---------------------------------------------------------------- cluster

class PyconvThreads(WorkerPlugin):
    """Set pyconv's (process-wide) thread count once on every worker,
    including workers that join later.  distributed's nanny already starts
    workers with OMP_NUM_THREADS=1, which pyconv honours; this makes the
    choice explicit, holds for workers started without a nanny, and lets a
    cluster with few dask threads per many cores give pyconv more."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def setup(self, worker: Any) -> None:
        pyconv.set_num_threads(self.threads)


def make_importable_on_workers(client: Client) -> None:
    """Let the workers find this file's functions, which need not be
    installed there.

    Run as a script they live in ``__main__`` and are pickled by value.
    Imported (by a test, a notebook) under its own name, ``dask_filter_bank``,
    dask's graph pickler refers to them as ``dask_filter_bank.filter_tile``
    etc., so the file is uploaded to every worker (``Client.upload_file``,
    which imports it there under that name), and cloudpickle is told to
    ship the module by value for what it serialises itself.
    """
    module = sys.modules.get(__name__)
    if __name__ == "__main__" or module is None:
        return
    stem = os.path.splitext(os.path.basename(__file__))[0]
    if __name__ != stem:
        raise RuntimeError(f"import this example as {stem!r} (not {__name__!r}) so that dask workers "
                           "can resolve its functions")
    cloudpickle.register_pickle_by_value(module)
    # load=False: the workers import it when they first unpickle a function
    # of it (their directory is on their sys.path).  Loading it at once would
    # also re-import it in a LocalCluster's scheduler, i.e. in this process,
    # from the scheduler's temporary directory.
    client.upload_file(__file__, load=False)


@contextlib.contextmanager
def _environ_restored() -> Iterator[None]:
    """Undo changes to ``os.environ`` made inside the block.

    distributed's Nanny exports its ``pre-spawn-environ`` (OMP_NUM_THREADS=1,
    MKL_NUM_THREADS=1, ...) into the *starting* process's environment before
    spawning a worker, and leaves it there; a caller of :func:`main` (a test
    session, a notebook) would otherwise give every later subprocess one
    OpenMP thread.
    """
    saved = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextlib.contextmanager
def connect(address: Optional[str], workers: int) -> Iterator[Client]:
    """A client of the cluster at ``address``, or of a new LocalCluster of
    ``workers`` single-threaded processes on 127.0.0.1 without a dashboard.
    Everything started here is closed on exit (an existing cluster is left
    running)."""
    with contextlib.ExitStack() as stack:
        if address:
            client = stack.enter_context(Client(address))
        else:
            stack.enter_context(_environ_restored())
            cluster = stack.enter_context(LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address=None))
            client = stack.enter_context(Client(cluster))
        yield client


def _default_pyconv_threads(client: Client, local: bool) -> int:
    """All cores shared among the dask threads of a LocalCluster; 1 per
    dask thread on a remote cluster (whose core counts the client cannot
    see; a worker started with ``--nthreads`` = cores then uses them all)."""
    if not local:
        return 1
    dask_threads = sum(client.nthreads().values())
    return max(1, (os.cpu_count() or 1) // max(dask_threads, 1))


# ---------------------------------------------------------------- single process

def single_process(stack: np.ndarray, weight: np.ndarray, batch: int,
                   keep: int) -> Tuple[np.ndarray, np.ndarray, float]:
    """The reference: the whole stack through ``pyconv.conv2d(...,
    padding="same")`` in this process (all its threads), ``batch`` images
    per call.  Returns (features (N, F), responses of the first ``keep``
    images, seconds)."""
    features, kept = [], []
    start = time.perf_counter()
    for i in range(0, len(stack), batch):
        y = pyconv.conv2d(stack[i:i + batch, None], weight, padding="same")
        features.append(texture_features(y))
        if i < keep:
            kept.append(y[:keep - i])
    seconds = time.perf_counter() - start
    return np.concatenate(features), np.concatenate(kept), seconds


def _timed_compute(arr: da.Array) -> Tuple[np.ndarray, float]:
    start = time.perf_counter()
    value = arr.compute()
    return value, time.perf_counter() - start


# ---------------------------------------------------------------- main

def _parse(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=64, help="images in the stack (default: 64)")
    ap.add_argument("--size", type=int, default=512, help="image side, pixels (default: 512)")
    ap.add_argument("--chunk", type=int, default=256,
                    help="tile side of the H/W chunks, pixels (default: 256)")
    ap.add_argument("--images-per-chunk", type=int, default=8,
                    help="images per chunk along N (default: 8)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                    help="LocalCluster worker processes (default: min(4, cores))")
    ap.add_argument("--scheduler-address", default=None,
                    help="use this running cluster (e.g. tcp://host:8786) instead of a LocalCluster")
    ap.add_argument("--pyconv-threads", type=int, default=None,
                    help="pyconv threads per worker (default: cores / dask threads locally, 1 remotely)")
    ap.add_argument("--verify-images", type=int, default=2,
                    help="images compared in full with the single-process result (default: 2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    for name in ("images", "size", "chunk", "images_per_chunk", "workers", "verify_images"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.pyconv_threads is not None and args.pyconv_threads < 1:
        ap.error("--pyconv-threads must be >= 1")
    if args.chunk < RADIUS:
        ap.error(f"--chunk must be at least the halo depth {RADIUS}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Run the example; returns what it printed, as numbers.

    Returns
    -------
    dict
        ``shape`` (N, F, H, W) of the responses, ``chunks`` (the input's chunk
        shape in tiles mode), ``workers`` and ``dask_threads`` of the cluster,
        ``pyconv_threads`` per worker, ``verified_images``, ``max_abs_ref``
        (largest |response| among them), ``max_abs_diff`` and
        ``features_max_abs_diff`` (each ``{"frames": ..., "tiles": ...}``,
        against the single process), ``seconds`` (``frames``, ``tiles``,
        ``single``) and ``features`` (N, F) from tiles mode.
    """
    args = _parse(argv)
    weight = filter_bank()
    chunks = (args.images_per_chunk, args.chunk, args.chunk)
    x = synthetic_stack(args.images, args.size, chunks, args.seed)
    keep = min(args.verify_images, args.images)
    # Read before any LocalCluster exists: pyconv takes its default from
    # OMP_NUM_THREADS on first use, and the Nanny sets that to 1 here too.
    local_threads = pyconv.get_num_threads()

    with connect(args.scheduler_address, args.workers) as client:
        n_workers = len(client.nthreads())
        dask_threads = sum(client.nthreads().values())
        make_importable_on_workers(client)
        threads = args.pyconv_threads or _default_pyconv_threads(client, args.scheduler_address is None)
        client.register_plugin(PyconvThreads(threads), name="pyconv-threads")
        # Generate the stack once, held by the workers, in both chunkings,
        # so that the timings below are of the filtering alone.
        tiles = x.persist()
        frames = tiles.rechunk({1: -1, 2: -1}).persist()
        wait([tiles, frames])
        y = {"frames": filter_bank_frames(frames, weight), "tiles": filter_bank_tiles(tiles, weight)}
        # The full responses of the first images, for the check; computing
        # them first also warms the workers up before the timed runs.
        check = {mode: responses[:keep].compute() for mode, responses in y.items()}
        features, seconds = {}, {}
        for mode, responses in y.items():
            features[mode], seconds[mode] = _timed_compute(texture_features(responses))
        stack = tiles.compute()

    with pyconv.num_threads(local_threads):
        ref_features, ref, seconds["single"] = single_process(stack, weight, args.images_per_chunk, keep)
    diff = {m: float(np.max(np.abs(check[m] - ref))) for m in y}
    feat_diff = {m: float(np.max(np.abs(features[m] - ref_features))) for m in y}
    max_ref = float(np.max(np.abs(ref)))

    where = args.scheduler_address or "LocalCluster on 127.0.0.1"
    print(f"pyconv {pyconv.__version__} (isa {pyconv.config()['isa']}); {where}: {n_workers} workers, "
          f"{dask_threads} dask threads, {threads} pyconv thread(s) each")
    print(f"stack {args.images}x{args.size}x{args.size} float32, {len(FILTER_NAMES)} filters "
          f"{KERNEL}x{KERNEL}; tiles {tiles.chunksize} ({tiles.npartitions} chunks), "
          f"frames {frames.chunksize} ({frames.npartitions} chunks)")
    print(f"single process ({local_threads} pyconv threads): {seconds['single']:.2f} s")
    for mode, how in (("frames", "map_blocks, no halo"), ("tiles", f"map_overlap, halo {RADIUS}")):
        print(f"dask {mode:6s} ({how}): {seconds[mode]:.2f} s; first {keep} image(s) in full: "
              f"max |dask - single| = {diff[mode]:.2e} (max |response| {max_ref:.2f}); "
              f"features: {feat_diff[mode]:.2e}")
    return {"shape": y["tiles"].shape, "chunks": tiles.chunksize, "workers": n_workers,
            "dask_threads": dask_threads, "pyconv_threads": threads, "local_threads": local_threads,
            "verified_images": keep,
            "max_abs_ref": max_ref, "max_abs_diff": diff, "features_max_abs_diff": feat_diff,
            "seconds": seconds, "features": features["tiles"]}


if __name__ == "__main__":
    main()
