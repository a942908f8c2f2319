"""Minor page faults per step that the gossip path adds to local SAM (fresh memory touched per step).

Every rank of a ring (loopback, Gloo) runs, in the same process and one after another, the demo's
small CNN (81,162 parameters, batch 32) under:

- ``local-sam``: plain SAM by hand (two passes, ε = ρ g/‖g‖, SGD), no communication — the baseline,
  measured first and again last (the allocator's state drifts within a process: see below);
- each ``--rows`` configuration of ``DistributedOptimizer`` (``q-saddle`` exact, int8, ...).

Each configuration warms up, then counts the process's minor page faults (``getrusage``) over
``--steps`` steps; the table gives faults per step and the difference to ``local-sam``, the median
over the ranks. A fault is a page the allocator handed back to the kernel and touched again: reused
buffers cost none. ``--malloc`` names an allocator setting to compare (see ``docs/benchmarks.md``).

    python bench/faults.py [--ranks 4] [--steps 50] [--rows q-saddle,q-saddle:int8,qgm,dsgd]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rank(rank: int, world: int, port: int, args: argparse.Namespace, out: Path) -> None:
    import torch
    import torch.distributed as dist
    from torch import nn

    sys.path.insert(0, str(ROOT / "bench"))
    from cluster import build_model  # noqa: PLC0415 - the demo's CNN

    import saddle_torch as st

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=300))
    st.init(topology="ring", timeout=timedelta(seconds=300))
    g = torch.Generator().manual_seed(rank)
    batches = [
        (torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(4)
    ]
    result: dict[str, float] = {}

    def measure(step: object) -> float:
        for i in range(args.warmup):
            step(*batches[i % 4])  # type: ignore[operator]
        dist.barrier()
        f0 = _faults()
        for i in range(args.steps):
            step(*batches[i % 4])  # type: ignore[operator]
        per_step = (_faults() - f0) / args.steps
        dist.barrier()
        return per_step

    model = build_model("cnn", cnn_width=16)
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)

    def local_sam(x: torch.Tensor, y: torch.Tensor) -> None:
        sgd.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            grads = [p.grad for p in model.parameters()]
            scale = args.rho / (torch.linalg.vector_norm(torch.stack([gr.norm() for gr in grads])) + 1e-12)
            eps = [gr * scale for gr in grads]
            for p, e in zip(model.parameters(), eps, strict=True):
                p.add_(e)
        sgd.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p, e in zip(model.parameters(), eps, strict=True):
                p.sub_(e)
        sgd.step()

    result["local-sam (first)"] = measure(local_sam)
    for row in args.rows.split(","):
        algorithm, _, codec = row.partition(":")
        model = build_model("cnn", cnn_width=16)
        opt = st.DistributedOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.01),
            model,
            algorithm=algorithm,
            compression=codec or "none",
            rho=args.rho,
        )

        def step(x: torch.Tensor, y: torch.Tensor, opt: object = opt, model: nn.Module = model) -> None:
            def closure() -> torch.Tensor:
                opt.zero_grad()  # type: ignore[attr-defined]
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)  # type: ignore[attr-defined]

        result[row] = measure(step)
        if row == args.profile:  # every rank steps (gossip needs its neighbours), rank 0 reports
            _profile(step, batches, out / "profile.txt" if rank == 0 else None)
        del opt
    # Again at the end: glibc's malloc adapts its mmap threshold as blocks are freed, so a process's
    # first steps fault more than its later ones whatever they run; the baseline is this one.
    model = build_model("cnn", cnn_width=16)
    sgd = torch.optim.SGD(model.parameters(), lr=0.01)
    result["local-sam"] = measure(local_sam)
    (out / f"{rank}.json").write_text(json.dumps(result))
    st.shutdown()
    dist.destroy_process_group()


def _profile(step: object, batches: list, path: Path | None) -> None:
    """Which ops allocate in a step, written to ``path`` (``None``: step along, report nothing)."""
    import torch.profiler as tp

    with tp.profile(activities=[tp.ProfilerActivity.CPU], profile_memory=True) as prof:
        for i in range(5):
            step(*batches[i % 4])  # type: ignore[operator]
    if path is None:
        return
    table = prof.key_averages().table(sort_by="self_cpu_memory_usage", row_limit=25)
    path.write_text(table)
    print(table, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rho", type=float, default=0.05)
    parser.add_argument("--rows", default="q-saddle,q-saddle:int8,qgm,dsgd")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "faults")
    parser.add_argument("--port", type=int, default=29731)
    parser.add_argument("--profile", default="", help="a row whose allocating ops rank 0 lists")
    args = parser.parse_args()
    import torch.multiprocessing as mp

    args.out.mkdir(parents=True, exist_ok=True)
    mp.start_processes(
        _rank, args=(args.ranks, args.port, args, args.out), nprocs=args.ranks, start_method="spawn"
    )
    runs = [json.loads((args.out / f"{r}.json").read_text()) for r in range(args.ranks)]
    base = statistics.median(r["local-sam"] for r in runs)
    malloc = {
        k: v for k, v in os.environ.items() if k.startswith(("MALLOC_", "LD_PRELOAD", "GLIBC_TUNABLES"))
    }
    lines = [
        f"minor page faults per step, {args.ranks} ranks on a ring, small CNN, batch 32, "
        f"median over ranks of {args.steps} steps; allocator settings: {malloc or 'none'}",
        "",
        "| configuration | faults / step | − local SAM |",
        "|---|---:|---:|",
    ]
    for row in runs[0]:
        med = statistics.median(r[row] for r in runs)
        lines.append(f"| {row} | {med:,.0f} | {med - base:+,.0f} |")
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
