"""Train LeNet-5 on scikit-learn's bundled handwritten digits with pyconv.

The convolutions and the pooling (forward and backward) are pyconv's; the
fully connected layers, the softmax cross-entropy and SGD with momentum are
a few lines of NumPy.  No download: the 8x8 digits ship with scikit-learn
and are up-sampled to LeNet's 32x32 input.

    python examples/train_lenet_digits.py            # 15 epochs, ~98% test accuracy, ~15 s
    python examples/train_lenet_digits.py --epochs 3 --threads 1

Architecture (LeCun et al. 1998, with ReLU and max pooling as in most
modern re-implementations):

    conv 5x5, 1 -> 6     (32x32 -> 28x28), ReLU    pyconv.autograd.conv2d_vjp
    max pool 2x2         (28x28 -> 14x14)          pyconv.autograd.max_pool2d_vjp
    conv 5x5, 6 -> 16    (14x14 -> 10x10), ReLU
    max pool 2x2         (10x10 -> 5x5)
    dense 400 -> 120, ReLU; 120 -> 84, ReLU; 84 -> 10; softmax cross-entropy
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Callable, Dict, List, Tuple

import numpy as np

import pyconv
from pyconv.autograd import conv2d_vjp, max_pool2d_vjp

Params = Dict[str, np.ndarray]


def load_digits_32(seed: int = 0, test_fraction: float = 0.2) -> Tuple[np.ndarray, ...]:
    """(x_train, y_train, x_test, y_test): images (N, 1, 32, 32) float32
    (each 8x8 pixel repeated 4x4, standardised with the training set's mean
    and deviation), labels int64, a seeded split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - the test extra installs it
        sys.exit("this example needs scikit-learn: pip install scikit-learn")
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    x = x.repeat(4, axis=1).repeat(4, axis=2)[:, None]
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(len(y) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def init_params(seed: int = 0) -> Params:
    """PyTorch's default initialisation: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    rng = np.random.default_rng(seed)

    def uniform(shape: Tuple[int, ...], fan_in: int) -> np.ndarray:
        bound = 1.0 / np.sqrt(fan_in)
        return rng.uniform(-bound, bound, size=shape).astype(np.float32)

    return {
        "c1.w": uniform((6, 1, 5, 5), 25), "c1.b": uniform((6,), 25),
        "c2.w": uniform((16, 6, 5, 5), 150), "c2.b": uniform((16,), 150),
        "f1.w": uniform((400, 120), 400), "f1.b": uniform((120,), 400),
        "f2.w": uniform((120, 84), 120), "f2.b": uniform((84,), 120),
        "f3.w": uniform((84, 10), 84), "f3.b": uniform((10,), 84),
    }


def forward(p: Params, x: np.ndarray) -> Tuple[np.ndarray, Callable[[np.ndarray], Params]]:
    """Logits for a batch, and the pullback from d(loss)/d(logits) to the
    parameter gradients."""
    h1, back_c1 = conv2d_vjp(x, p["c1.w"], p["c1.b"], activation="relu")
    p1, back_p1 = max_pool2d_vjp(h1, 2)
    h2, back_c2 = conv2d_vjp(p1, p["c2.w"], p["c2.b"], activation="relu")
    p2, back_p2 = max_pool2d_vjp(h2, 2)
    flat = p2.reshape(len(x), -1)
    z1 = flat @ p["f1.w"] + p["f1.b"]
    a1 = np.maximum(z1, 0)
    z2 = a1 @ p["f2.w"] + p["f2.b"]
    a2 = np.maximum(z2, 0)
    logits = a2 @ p["f3.w"] + p["f3.b"]

    def pullback(g_logits: np.ndarray) -> Params:
        g: Params = {"f3.w": a2.T @ g_logits, "f3.b": g_logits.sum(0)}
        g_a2 = (g_logits @ p["f3.w"].T) * (z2 > 0)
        g["f2.w"], g["f2.b"] = a1.T @ g_a2, g_a2.sum(0)
        g_a1 = (g_a2 @ p["f2.w"].T) * (z1 > 0)
        g["f1.w"], g["f1.b"] = flat.T @ g_a1, g_a1.sum(0)
        g_p2 = (g_a1 @ p["f1.w"].T).reshape(p2.shape)
        g_p1, g["c2.w"], g["c2.b"] = back_c2(back_p2(g_p2))
        _, g["c1.w"], g["c1.b"] = back_c1(back_p1(g_p1))
        return g

    return logits, pullback


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> Tuple[float, np.ndarray]:
    """Mean loss and its gradient with respect to the logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_prob = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_prob[np.arange(len(labels)), labels].mean()
    grad = np.exp(log_prob)
    grad[np.arange(len(labels)), labels] -= 1
    return float(loss), (grad / len(labels)).astype(np.float32)


def accuracy(p: Params, x: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    hits = 0
    for i in range(0, len(x), batch):
        logits, _ = forward(p, x[i:i + batch])
        hits += int((logits.argmax(axis=1) == y[i:i + batch]).sum())
    return hits / len(x)


class Progress:
    """A one-line bar on stderr, redrawn in place; silent when stderr is not
    a terminal (logs and CI keep only the per-epoch lines)."""

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.total, self.label, self.enabled = total, label, enabled

    def update(self, done: int, loss: float) -> None:
        if not self.enabled:
            return
        width = 30
        fill = int(width * done / self.total)
        sys.stderr.write(f"\r{self.label} [{'#' * fill}{'.' * (width - fill)}] "
                         f"{done}/{self.total} loss {loss:.4f}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 79 + "\r")


def train(epochs: int = 15, batch_size: int = 32, lr: float = 0.02, momentum: float = 0.9,
          seed: int = 0, progress: bool = True, log: Callable[[str], None] = print) -> List[Dict[str, float]]:
    """Train LeNet-5; returns one record per epoch (loss, train/test accuracy, seconds).

    SGD with momentum, the learning rate following a half cosine from
    ``lr`` to zero over the epochs (the last epochs settle instead of
    bouncing around the minimum)."""
    x_train, y_train, x_test, y_test = load_digits_32(seed)
    params = init_params(seed)
    velocity = {k: np.zeros_like(v) for k, v in params.items()}
    rng = np.random.default_rng(seed + 1)
    history = []
    batches = (len(x_train) + batch_size - 1) // batch_size
    show = progress and sys.stderr.isatty()
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        order = rng.permutation(len(x_train))
        bar = Progress(batches, f"epoch {epoch:2d}/{epochs}", show)
        step = lr * 0.5 * (1 + np.cos(np.pi * (epoch - 1) / epochs))
        total = 0.0
        for b in range(batches):
            idx = order[b * batch_size:(b + 1) * batch_size]
            logits, pullback = forward(params, x_train[idx])
            loss, g_logits = softmax_cross_entropy(logits, y_train[idx])
            grads = pullback(g_logits)
            for k in params:
                velocity[k] = momentum * velocity[k] - step * grads[k]
                params[k] += velocity[k]
            total += loss * len(idx)
            bar.update(b + 1, loss)
        bar.close()
        record = {"epoch": epoch, "loss": total / len(x_train),
                  "train_acc": accuracy(params, x_train, y_train),
                  "test_acc": accuracy(params, x_test, y_test),
                  "seconds": time.perf_counter() - start}
        history.append(record)
        log(f"epoch {epoch:2d}  loss {record['loss']:.4f}  train {record['train_acc']:.2%}  "
            f"test {record['test_acc']:.2%}  ({record['seconds']:.1f} s)")
    return history


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="pyconv threads (default: all cores)")
    args = ap.parse_args(argv)
    if args.threads:
        pyconv.set_num_threads(args.threads)
    print(f"LeNet-5 on scikit-learn digits (32x32), pyconv {pyconv.__version__}, "
          f"isa {pyconv.config()['isa']}, {pyconv.get_num_threads()} threads")
    start = time.perf_counter()
    history = train(args.epochs, args.batch_size, args.lr, seed=args.seed)
    print(f"final test accuracy {history[-1]['test_acc']:.2%} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
