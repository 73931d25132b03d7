"""The examples a newcomer runs: each is imported and run in a shortened form.

Examples live outside the package (examples/), so they are loaded from their
files; what is checked is what each one promises in its docstring.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"pyconv_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_lenet_digits_learns_in_a_few_epochs():
    """LeNet-5 on the digits: the loss falls and accuracy is far above chance
    (10%) after three epochs (the full run, 15 epochs, reaches ~98%)."""
    pytest.importorskip("sklearn")
    lenet = _load("train_lenet_digits")
    lines = []
    history = lenet.train(epochs=3, progress=False, log=lines.append)
    losses = [r["loss"] for r in history]
    assert losses[-1] < 0.5 * losses[0]
    assert history[-1]["test_acc"] > 0.8
    assert len(lines) == 3 and lines[0].startswith("epoch  1")


def test_lenet_gradients_match_finite_differences():
    """The example's hand-written dense backward and pyconv's conv/pool
    pullbacks together give the true gradient of the loss."""
    lenet = _load("train_lenet_digits")
    rng = np.random.default_rng(0)
    params = {k: v.astype(np.float64) for k, v in lenet.init_params(1).items()}
    x = rng.standard_normal((3, 1, 32, 32))
    labels = np.array([1, 4, 7])
    logits, pullback = lenet.forward(params, x)
    _, g_logits = lenet.softmax_cross_entropy(logits, labels)
    grads = pullback(g_logits.astype(np.float64))
    eps = 1e-6
    for name, index in (("c1.w", (2, 0, 1, 3)), ("c2.w", (5, 3, 4, 0)), ("c2.b", (7,)), ("f1.w", (10, 3))):
        saved = params[name][index]
        params[name][index] = saved + eps
        up, _ = lenet.softmax_cross_entropy(lenet.forward(params, x)[0], labels)
        params[name][index] = saved - eps
        down, _ = lenet.softmax_cross_entropy(lenet.forward(params, x)[0], labels)
        params[name][index] = saved
        numeric = (up - down) / (2 * eps)
        assert grads[name][index] == pytest.approx(numeric, rel=1e-4, abs=1e-7), name


def test_torch_embedding_matches_pure_torch():
    """Swapping torch.nn's conv/pool layers for pyconv.torch's leaves the loss
    curve unchanged to float32 rounding (same seed, same weights, same data)."""
    pytest.importorskip("torch")
    emb = _load("torch_embedding")
    ref = emb.run(False, steps=8)
    ours = emb.run(True, steps=8)
    assert np.all(np.isfinite(ours))
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-5)
    assert ref[-1] != ref[0]  # it trained
