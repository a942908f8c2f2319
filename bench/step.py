"""Time per training step of a small CNN at N ranks: local SGD, SAM-DSGD, Q-SADDLe, DDP (+SAM, + hook).

Every method trains its own copy of the same model on the same batches; one iteration runs each
method once, back to back, so they share the machine's load. A step's time is the slowest rank's.
Reported: medians, and ratios against plain local SGD (no communication, one pass).

    python bench/step.py [--ranks 4] [--iters 20] [--batch 32] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "distributed"))
from harness import run_ranks  # noqa: E402

import saddle_torch as st  # noqa: E402


def small_cnn() -> nn.Module:
    """A Fashion-MNIST-sized CNN (about 0.4M parameters)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, 96),
        nn.ReLU(),
        nn.Linear(96, 10),
    )


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def ddp_sam_step(
    ddp: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, rho: float
) -> None:
    """SAM with DDP as SAM+DDP code does it (also used by bench/cluster.py).

    A local first pass (``no_sync``), the perturbation from this rank's gradient, then the all-reduced
    second pass at the perturbed point.
    """
    opt.zero_grad()
    with ddp.no_sync():
        _loss(ddp, x, y).backward()
    params = [p for p in ddp.parameters() if p.grad is not None]
    with torch.no_grad():
        norm = torch.norm(torch.stack([p.grad.norm() for p in params]))
        es = [rho * p.grad / (norm + 1e-12) for p in params]
        for p, e in zip(params, es, strict=True):
            p.add_(e)
    opt.zero_grad()
    _loss(ddp, x, y).backward()
    with torch.no_grad():
        for p, e in zip(params, es, strict=True):
            p.sub_(e)
    opt.step()


def _methods(rank: int, lr: float) -> dict[str, Callable[[torch.Tensor, torch.Tensor], None]]:
    methods: dict[str, Callable] = {}

    m_local = small_cnn()
    o_local = torch.optim.SGD(m_local.parameters(), lr=lr, momentum=0.9)

    def local_sgd(x, y):
        o_local.zero_grad()
        _loss(m_local, x, y).backward()
        o_local.step()

    methods["local SGD (1 pass, no comm)"] = local_sgd

    def wrapped(algorithm: str, order: str) -> Callable:
        m = small_cnn()
        momentum = 0.0 if algorithm in ("qgm", "q-saddle") else 0.9
        opt = st.DistributedOptimizer(
            torch.optim.SGD(m.parameters(), lr=lr, momentum=momentum), m, algorithm=algorithm, order=order
        )

        def run(x, y):
            def closure():
                opt.zero_grad()
                loss = _loss(m, x, y)
                loss.backward()
                return loss

            opt.step(closure)

        return run

    methods["sam-dsgd (awc)"] = wrapped("sam-dsgd", "awc")
    methods["q-saddle (atc)"] = wrapped("q-saddle", "atc")
    methods["q-saddle (awc)"] = wrapped("q-saddle", "awc")

    m_ddp = nn.parallel.DistributedDataParallel(small_cnn())
    o_ddp = torch.optim.SGD(m_ddp.parameters(), lr=lr, momentum=0.9)

    def ddp_sam(x, y):
        ddp_sam_step(m_ddp, o_ddp, x, y, rho=0.05)

    methods["DDP + SAM (all-reduce)"] = ddp_sam

    # A second group on the "saddle" backend: DDP models on it register the gossip hook by themselves.
    st.backend.configure(topology="ring")
    saddle_group = dist.new_group(backend="saddle")

    def ddp(hook: bool, group: dist.ProcessGroup | None = None, mix: str = "params+grads") -> Callable:
        m = nn.parallel.DistributedDataParallel(small_cnn(), process_group=group)
        if hook:
            m.register_comm_hook(st.hooks.GossipHookState(mix=mix), st.hooks.gossip_hook)
        o = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)

        def run(x, y):
            o.zero_grad()
            _loss(m, x, y).backward()
            o.step()

        return run

    methods["DDP (Gloo all-reduce, 1 pass)"] = ddp(hook=False)
    methods["DDP + saddle gossip_hook (1 pass)"] = ddp(hook=True)
    methods["DDP + gossip_hook(mix='params') (1 pass)"] = ddp(hook=True, mix="params")
    methods["DDP on the saddle backend (1 pass)"] = ddp(hook=False, group=saddle_group)
    return methods


def _bench_rank(rank: int, world: int, iters: int, batch: int) -> dict[str, float]:
    st.init(topology="ring", timeout=timedelta(seconds=300))
    methods = _methods(rank, lr=0.01)
    g = torch.Generator().manual_seed(rank)
    times: dict[str, list[float]] = {k: [] for k in methods}
    for it in range(iters + 3):
        x = torch.randn(batch, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (batch,), generator=g)
        for name, fn in methods.items():
            dist.barrier()
            t0 = time.perf_counter()
            fn(x, y)
            t = torch.tensor([time.perf_counter() - t0])
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            if it >= 3:
                times[name].append(float(t))
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    params = sum(p.numel() for p in small_cnn().parameters())
    print(
        f"training step, small CNN ({params:,} parameters), batch {args.batch}, {args.ranks} ranks, ring, "
        f"median of {args.iters} (CPU: {os.cpu_count()} cores, 1 thread per rank)",
        flush=True,
    )
    res = run_ranks(_bench_rank, args.ranks, args.iters, args.batch, timeout=3600)[0]
    base = res["local SGD (1 pass, no comm)"]
    print("\n| method | step (ms) | / local SGD | / (2 × local SGD) |\n|---|---:|---:|---:|")
    for name, t in res.items():
        print(f"| {name} | {t * 1e3:.1f} | {t / base:.2f} | {t / (2 * base):.2f} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
