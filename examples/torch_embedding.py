"""Embed pyconv in a PyTorch training loop: swap the layers, keep the loop.

A small CNN is trained twice from the same seed: once with ``torch.nn``'s
Conv2d / MaxPool2d / AvgPool2d, once with ``pyconv.torch``'s drop-ins (the
only change is the module the layers come from).  Both runs start from the
same weights (pyconv's modules subclass torch's, so ``torch.manual_seed``
initialises them identically) and see the same batches, so their loss
curves agree to float32 rounding.

    python examples/torch_embedding.py --steps 30
"""

from __future__ import annotations

import argparse
import sys
import time
from types import ModuleType
from typing import List

import torch

import pyconv.torch as pyconv_nn


def make_model(layers: ModuleType) -> torch.nn.Module:
    """The same architecture from either ``torch.nn`` or ``pyconv.torch``."""
    return torch.nn.Sequential(
        layers.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        layers.MaxPool2d(2),
        layers.Conv2d(8, 16, 3, padding=1, bias=False), torch.nn.ReLU(),
        layers.AvgPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, 4),
    )


def make_data(n: int, seed: int) -> tuple:
    """Synthetic 16x16 images whose label is the quadrant holding a bright blob."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 16, 16, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    for i in range(n):
        r, c = divmod(int(y[i]), 2)
        x[i, 0, 8 * r + 2:8 * r + 6, 8 * c + 2:8 * c + 6] += 0.5
    return x, y


def run(use_pyconv: bool, steps: int = 30, batch_size: int = 32, seed: int = 0) -> List[float]:
    """Train for ``steps`` SGD steps; returns the loss of each step."""
    torch.manual_seed(seed)
    model = make_model(pyconv_nn if use_pyconv else torch.nn)
    x, y = make_data(steps * batch_size, seed)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for step in range(steps):
        xb = x[step * batch_size:(step + 1) * batch_size]
        yb = y[step * batch_size:(step + 1) * batch_size]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    ref = run(False, args.steps, seed=args.seed)
    t1 = time.perf_counter()
    ours = run(True, args.steps, seed=args.seed)
    t2 = time.perf_counter()
    print(f"{'step':>4} {'torch.nn':>10} {'pyconv.torch':>13} {'|diff|':>9}")
    for i, (a, b) in enumerate(zip(ref, ours)):
        print(f"{i:4d} {a:10.5f} {b:13.5f} {abs(a - b):9.2e}")
    worst = max(abs(a - b) for a, b in zip(ref, ours))
    print(f"max |loss difference| {worst:.2e}; torch.nn {t1 - t0:.2f} s, pyconv.torch {t2 - t1:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
