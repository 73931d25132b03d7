"""Interoperability: arrays from other libraries (DLPack), threadpoolctl."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import pyconv
from pyconv import reference
from pyconv._normalize import as_array


def _run_child(code: str) -> str:
    """Run ``code`` in a fresh interpreter (import order matters here)."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


# ---- threadpoolctl ---------------------------------------------------------

@pytest.mark.parametrize("first", ["pyconv", "threadpoolctl"])
def test_threadpoolctl_sees_and_limits_pyconv(first):
    pytest.importorskip("threadpoolctl")
    second = "threadpoolctl" if first == "pyconv" else "pyconv"
    out = _run_child(f"""
        import {first}, {second}
        import numpy as np
        from threadpoolctl import threadpool_info, threadpool_limits
        pyconv.set_num_threads(3)
        mine = [i for i in threadpool_info() if i["internal_api"] == "pyconv"]
        assert len(mine) == 1, threadpool_info()
        assert mine[0]["user_api"] == "openmp" and mine[0]["num_threads"] == 3, mine
        assert mine[0]["version"] == pyconv.__version__ and "_core" in mine[0]["filepath"], mine
        x = np.ones((1, 2, 5, 5), np.float32)
        w = np.ones((3, 2, 3, 3), np.float32)
        with threadpool_limits(limits=1, user_api="openmp"):
            assert pyconv.get_num_threads() == 1
            y = pyconv.conv2d(x, w)
        assert pyconv.get_num_threads() == 3  # restored on exit
        with threadpool_limits(limits=2):  # every API
            assert pyconv.get_num_threads() == 2
        with threadpool_limits(limits=1, user_api="blas"):  # not ours
            assert pyconv.get_num_threads() == 3
        assert float(y[0, 0, 2, 2]) == 18.0
        print("ok")
    """)
    assert out.strip() == "ok"


def test_threadpoolctl_is_not_imported_by_pyconv():
    out = _run_child("""
        import sys, pyconv
        print("threadpoolctl" in sys.modules)
    """)
    assert out.strip() == "False"


def test_foreign_core_module_is_not_taken_for_pyconv(tmp_path):
    """The controller matches files named ``_core*`` but requires pyconv's
    exported symbols: a library with the same prefix and no such symbols
    must not be listed."""
    pytest.importorskip("threadpoolctl")
    import threadpoolctl

    import pyconv._threadpool as tp

    tp._register(threadpoolctl)
    libc = threadpoolctl.ThreadpoolController()._get_libc()  # any loaded library without the symbols
    assert not hasattr(libc, "pyconv_get_num_threads")
    controllers = threadpoolctl.ThreadpoolController().lib_controllers
    ours = [c for c in controllers if c.internal_api == "pyconv"]
    assert len(ours) == 1 and ours[0].filepath.endswith(pyconv._core.__file__.rsplit("/", 1)[-1])


# ---- DLPack ----------------------------------------------------------------

def test_torch_tensors_are_read_without_copies():
    torch = pytest.importorskip("torch")
    t = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    view = as_array("conv2d", "x", t)
    assert np.shares_memory(view, t.numpy())
    w = torch.ones(4, 3, 3, 3, dtype=torch.float32)
    y = pyconv.conv2d(t, w, padding=1)
    np.testing.assert_allclose(y, reference.conv2d(t.numpy(), w.numpy(), padding=1), rtol=1e-6)
    g = pyconv.max_pool2d(t, 2)
    np.testing.assert_array_equal(g, torch.nn.functional.max_pool2d(t, 2).numpy())


def test_non_contiguous_torch_tensor():
    torch = pytest.importorskip("torch")
    t = torch.randn(2, 6, 6, 3, generator=torch.Generator().manual_seed(0)).permute(0, 3, 1, 2)  # NCHW view
    w = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(pyconv.conv2d(t, w), reference.conv2d(t.numpy(), w.numpy()),
                               rtol=1e-5, atol=1e-5)


def test_gpu_or_foreign_device_array_is_a_clear_error():
    class OnDevice:
        """A DLPack producer on a non-CPU device (like a CUDA tensor)."""

        def __dlpack__(self, *args, **kwargs):
            raise BufferError("only CPU arrays can be exported")

        def __dlpack_device__(self):
            return (2, 0)  # kDLCUDA

    with pytest.raises(TypeError, match="conv2d: x could not be read as a CPU array"):
        pyconv.conv2d(OnDevice(), np.ones((1, 1, 1, 1), np.float32))


def test_jax_arrays():
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.arange(1 * 2 * 5 * 5, dtype=jnp.float32).reshape(1, 2, 5, 5)
    w = jnp.ones((3, 2, 3, 3), dtype=jnp.float32)
    y = pyconv.conv2d(x, w, padding="same")
    np.testing.assert_allclose(y, reference.conv2d(np.asarray(x), np.asarray(w), padding="same"), rtol=1e-6)
    assert np.shares_memory(as_array("conv2d", "x", x), np.from_dlpack(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_arrays_through_pickle(dtype):
    """Arrays that came through pickle (as from a dask or multiprocessing
    worker) carry a dtype descriptor of their own, equal to float32/float64
    but not the same object: every entry point takes them, with the same
    results bit for bit."""
    import pickle

    import pyconv.autograd as ag

    rng = np.random.default_rng(5)

    def arr(*shape):
        a = rng.standard_normal(shape).astype(dtype)
        b = pickle.loads(pickle.dumps(a))
        assert b.dtype is not a.dtype or dtype is np.float64  # (float64 may come back canonical)
        return a, b

    x, xp = arr(2, 4, 10, 10)
    w, wp = arr(6, 4, 3, 3)
    dw, dwp = arr(4, 1, 3, 3)
    pw, pwp = arr(6, 4, 1, 1)
    g1, g1p = arr(2, 6, 10, 10)
    g2, g2p = arr(2, 6, 5, 5)
    gd, gdp = arr(2, 4, 5, 5)
    calls = [
        lambda x, w, dw, pw, g1, g2, gd: pyconv.conv2d(x, w, padding=1),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.conv2d(x, dw, stride=2, padding=1, groups=4),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.separable_conv2d(x, dw, pw, padding=1),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.conv2d_grad_input(g1, w, x.shape, padding=1),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.conv2d_grad_input(g2, w, x.shape, stride=2, padding=1),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.conv2d_grad_input(gd, dw, x.shape, 2, 1, groups=4),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.conv2d_grad_weight(x, g1, w.shape, padding=1),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.conv2d_grad_weight(x, gd, dw.shape, 2, 1, groups=4),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.conv_transpose2d(g2, w, stride=2, padding=1, output_padding=1),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.max_pool2d(x, 2, return_indices=True),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.max_pool2d_grad(gd, x, 2),
        lambda x, w, dw, pw, g1, g2, gd: ag.max_pool2d_vjp(x, 3, 2, 1)[1](gd),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.avg_pool2d_grad(gd, x.shape, 2),
        lambda x, w, dw, pw, g1, g2, gd: pyconv.global_avg_pool2d(x),
        lambda x, w, dw, pw, g1, g2, gd: ag.conv2d_vjp(x, w, None, padding=1)[1](g1),
    ]
    for i, call in enumerate(calls):
        expected = call(x, w, dw, pw, g1, g2, gd)
        got = call(xp, wp, dwp, pwp, g1p, g2p, gdp)
        for e, r in zip(expected if isinstance(expected, tuple) else (expected,),
                        got if isinstance(got, tuple) else (got,)):
            np.testing.assert_array_equal(r, e, err_msg=f"call {i}")
