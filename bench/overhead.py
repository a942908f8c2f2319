"""Python overhead of one ``DistributedOptimizer.step`` (world of one, a model with many tiny tensors).

The model's compute is negligible, so step time minus the closure's own time is what the wrapper
adds per step: phase sequencing, buffer bookkeeping, kernel launches on the flat buffers.

    python bench/overhead.py --iters 2000
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

import saddle_torch as st


def _model(layers: int) -> nn.Module:
    mods: list[nn.Module] = []
    for _ in range(layers):
        mods += [nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Tanh()]
    return nn.Sequential(*mods, nn.Linear(8, 2))


def measure(algorithm: str, order: str, optimizer: str, iters: int, layers: int) -> tuple[float, float]:
    """Median µs per step and per closure call for one configuration."""
    model = _model(layers)
    params = model.parameters()
    inner = torch.optim.SGD(params, lr=0.01) if optimizer == "sgd" else torch.optim.AdamW(params, lr=1e-3)
    opt = st.DistributedOptimizer(inner, model, algorithm=algorithm, order=order)
    x, y = torch.randn(4, 8), torch.randint(0, 2, (4,))
    closure_times: list[float] = []

    def closure() -> torch.Tensor:
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        closure_times.append(time.perf_counter() - t0)
        return loss

    steps = []
    for i in range(iters):
        n0 = len(closure_times)
        t0 = time.perf_counter()
        opt.step(closure)
        dt = time.perf_counter() - t0
        if i >= iters // 10:
            steps.append(dt - sum(closure_times[n0:]))
    return statistics.median(steps) * 1e6, statistics.median(closure_times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--layers", type=int, default=10, help="Linear+BatchNorm blocks (3 tensors... each)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    st.init()
    print(f"{'algorithm':<10} {'order':<5} {'optimizer':<6} {'overhead µs/step':>17} {'closure µs':>11}")
    for algorithm, order, optimizer in [
        ("dsgd", "awc", "sgd"),
        ("q-saddle", "awc", "sgd"),
        ("q-saddle", "atc", "sgd"),
        ("q-saddle", "awc", "adamw"),
    ]:
        try:
            over, clo = measure(algorithm, order, optimizer, args.iters, args.layers)
        except ValueError as exc:
            print(f"{algorithm:<10} {order:<5} {optimizer:<6} refused: {exc}"[:100])
            continue
        print(f"{algorithm:<10} {order:<5} {optimizer:<6} {over:>17.1f} {clo:>11.1f}")
    st.shutdown()


if __name__ == "__main__":
    main()
