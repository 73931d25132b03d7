"""examples/dask_filter_bank.py: a chunked image stack filtered on Dask equals
one single-process ``pyconv.conv2d(..., padding="same")``, in both modes.

The graph tests run on dask's synchronous scheduler (no cluster) with tiles
so small and uneven that most output pixels lie within a kernel radius of a
chunk border, and first show that a missing halo or a wrong boundary would
be caught.  Two tests run the example's ``main`` on real worker processes:
one with the LocalCluster it starts itself, one connected to a running
cluster through ``--scheduler-address``.
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Iterator

import numpy as np
import pytest

dask = pytest.importorskip("dask")
pytest.importorskip("distributed")

import dask.array as da  # noqa: E402
from dask.array.overlap import ensure_minimum_chunksize  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import pyconv  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# Dask and the single process run the same float32 arithmetic; at most a
# different algorithm (summation order over the 25 taps) separates them.
# A wrong halo or boundary is off by O(1).
RTOL = 1e-5
# 64 = 24 + 24 + 16 and 4 = 3 + 1: uneven tiles and an uneven batch split.
SMALL_RUN = ["--images", "4", "--size", "64", "--chunk", "24", "--images-per-chunk", "3",
             "--workers", "2", "--verify-images", "4"]


def _load(name: str) -> ModuleType:
    # Under its own name: the example uploads itself to the dask workers,
    # which import it as ``dask_filter_bank``.
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bank() -> ModuleType:
    return _load("dask_filter_bank")


@pytest.fixture
def synchronous() -> Iterator[None]:
    with dask.config.set(scheduler="synchronous"):
        yield


def _weight(bank: ModuleType) -> np.ndarray:
    """The example's bank plus two random 5x5 filters: asymmetric in every
    direction, so a halo shifted or mirrored by a pixel cannot go unseen."""
    extra = np.random.default_rng(7).standard_normal((2, 1, 5, 5)).astype(np.float32)
    return np.concatenate([bank.filter_bank(), extra])


def _stack() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((3, 23, 29)).astype(np.float32)


def _single(x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    return pyconv.conv2d(x[:, None], weight, padding="same")


def _assert_same(actual: np.ndarray, ref: np.ndarray) -> None:
    assert actual.shape == ref.shape and actual.dtype == np.float32
    scale = max(1.0, float(np.max(np.abs(ref))))
    np.testing.assert_allclose(actual, ref, rtol=RTOL, atol=RTOL * scale)


def _near_internal_border(chunks: tuple, radius: int) -> np.ndarray:
    """True for positions within ``radius`` of a boundary between chunks."""
    size = sum(chunks)
    mask = np.zeros(size, dtype=bool)
    for edge in np.cumsum(chunks)[:-1]:
        mask[max(edge - radius, 0):edge + radius] = True
    return mask


# ---------------------------------------------------------------- pieces

def test_filter_bank_shape_and_sums(bank):
    """(8, 1, 5, 5) float32; the blurs keep a flat image (sum 1), the
    derivative and Gabor filters ignore it (sum 0)."""
    w = bank.filter_bank()
    assert w.shape == (len(bank.FILTER_NAMES), 1, 5, 5) and w.dtype == np.float32
    sums = w.sum(axis=(1, 2, 3))
    np.testing.assert_allclose(sums[:2], 1, atol=1e-6)
    np.testing.assert_allclose(sums[2:], 0, atol=1e-6)


def test_synthetic_stack_does_not_depend_on_the_chunking(bank, synchronous):
    a = bank.synthetic_stack(3, 40, (2, 13, 17), seed=5).compute()
    b = bank.synthetic_stack(3, 40, (3, 40, 40), seed=5).compute()
    assert a.shape == (3, 40, 40) and a.dtype == np.float32 and a.std() > 0.1
    np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(a[0], a[1])  # every image has its own parameters


# ---------------------------------------------------------------- graphs, no cluster

def test_a_missing_halo_or_a_wrong_boundary_would_be_caught(bank, synchronous):
    """The comparison below has teeth: per-tile "same" convolutions (no
    halo) differ exactly near the internal tile borders, and a reflecting
    boundary exactly near the image's frame."""
    x_np, w = _stack(), _weight(bank)
    ref = _single(x_np, w)
    x = da.from_array(x_np, chunks=(2, 7, 9))
    out_chunks = (x.chunks[0], (w.shape[0],)) + x.chunks[1:]
    no_halo = x.map_blocks(bank.filter_frames, weight=w, new_axis=1, chunks=out_chunks,
                           dtype=np.float32).compute()
    wrong = np.abs(no_halo - ref).max(axis=(0, 1)) > 1e-3
    near = _near_internal_border(x.chunks[1], 2)[:, None] | _near_internal_border(x.chunks[2], 2)[None, :]
    assert wrong.any() and not (wrong & ~near).any()

    reflect = da.map_overlap(bank.filter_tile, x, weight=w, depth={0: 0, 1: 2, 2: 2},
                             boundary={0: "none", 1: "reflect", 2: "reflect"}, trim=False,
                             new_axis=1, chunks=out_chunks, dtype=np.float32).compute()
    wrong = np.abs(reflect - ref).max(axis=(0, 1)) > 1e-3
    frame = np.ones(wrong.shape, dtype=bool)
    frame[2:-2, 2:-2] = False
    assert wrong.any() and not (wrong & ~frame).any()


@pytest.mark.parametrize("chunks", [(2, 7, 9), (1, 2, 29), (3, 23, 3), (3, 23, 29)],
                         ids=["tiles", "rows-of-radius", "columns", "one-chunk"])
def test_tiles_mode_equals_single_process_everywhere(bank, synchronous, chunks):
    """Full output, every chunk border and the image frame included; chunks
    as thin as the halo depth; slices across chunk borders (which would
    expose wrongly declared output chunks)."""
    x_np, w = _stack(), _weight(bank)
    ref = _single(x_np, w)
    x = da.from_array(x_np, chunks=chunks)
    y = bank.filter_bank_tiles(x, w)
    assert y.shape == ref.shape and y.dtype == np.float32
    # Chunks thinner than the halo (23 = 11 x 2 + 1 against a depth of 2)
    # are merged with a neighbour first, as map_overlap requires.
    r = w.shape[2] // 2
    expected = tuple(ensure_minimum_chunksize(r, c) for c in x.chunks[1:])
    assert y.chunks == (x.chunks[0], (w.shape[0],)) + expected
    _assert_same(y.compute(), ref)
    _assert_same(y[1:, 3:7, 5:16, 8:21].compute(), ref[1:, 3:7, 5:16, 8:21])


def test_frames_mode_equals_single_process_and_refuses_split_frames(bank, synchronous):
    x_np, w = _stack(), _weight(bank)
    y = bank.filter_bank_frames(da.from_array(x_np, chunks=(2, -1, -1)), w)
    assert y.chunks == ((2, 1), (w.shape[0],), (23,), (29,))
    _assert_same(y.compute(), _single(x_np, w))
    with pytest.raises(ValueError, match="whole images"):
        bank.filter_bank_frames(da.from_array(x_np, chunks=(2, 7, -1)), w)
    with pytest.raises(ValueError, match="odd"):
        bank.filter_bank_tiles(da.from_array(x_np), np.ones((1, 1, 4, 4), np.float32))


# ---------------------------------------------------------------- real worker processes

def _check_run(result: dict) -> None:
    assert result["shape"] == (4, 8, 64, 64) and result["verified_images"] == 4
    assert result["workers"] == 2 and result["max_abs_ref"] > 1
    scale = max(1.0, result["max_abs_ref"])
    for mode in ("frames", "tiles"):
        assert result["max_abs_diff"][mode] <= RTOL * scale, mode
        assert result["features_max_abs_diff"][mode] <= 1e-6, mode
        assert result["seconds"][mode] > 0
    assert result["features"].shape == (4, 8) and np.all(result["features"] > 0)


def test_main_on_its_own_local_cluster(bank, capsys):
    environ = dict(os.environ)
    result = bank.main(SMALL_RUN)
    _check_run(result)
    assert result["chunks"] == (3, 24, 24) and result["pyconv_threads"] >= 1
    out = capsys.readouterr().out
    assert "LocalCluster on 127.0.0.1: 2 workers" in out and "map_overlap, halo 2" in out
    # The Nanny's OMP_NUM_THREADS=1 does not leak into this process, and
    # every worker process has been joined.
    assert dict(os.environ) == environ
    assert not multiprocessing.active_children()


@pytest.fixture
def running_cluster(bank) -> Iterator[LocalCluster]:
    """A cluster started outside the example, as a deployment would be."""
    with bank._environ_restored(), LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                                host="127.0.0.1", dashboard_address=None) as cluster:
        yield cluster
    assert not multiprocessing.active_children()


def test_main_connects_to_a_running_cluster(bank, running_cluster, capsys):
    """--scheduler-address: the example uses the workers it finds, sets
    their pyconv threads through its plugin (2 here, where distributed's
    default environment would give 1), and leaves the cluster running."""
    address = running_cluster.scheduler_address
    result = bank.main(SMALL_RUN + ["--scheduler-address", address, "--pyconv-threads", "2"])
    _check_run(result)
    assert result["pyconv_threads"] == 2
    assert address in capsys.readouterr().out
    with Client(running_cluster) as client:
        assert set(client.run(pyconv.get_num_threads).values()) == {2}
