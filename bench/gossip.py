"""Time per gossip round: the C++ engine vs research-style Python gossip vs all_reduce, side by side.

Spawns ``--ranks`` processes on 127.0.0.1 (one intra-op thread each). For every tensor size, each
iteration runs the three methods back to back on the same data, so they see the same machine load;
the time of an iteration is the slowest rank's. Reports medians and ratios against the Python gossip.

    python bench/gossip.py [--ranks 4] [--sizes 1e6,1e7,2.5e7] [--iters 9] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "distributed"))
from harness import run_ranks  # noqa: E402

import saddle_torch as st  # noqa: E402


def python_gossip(x: torch.Tensor, rank: int, topo: st.topology.Topology) -> None:
    """Gossip the way research code writes it: irecv/isend per neighbour, then a weighted sum."""
    weights = topo.weights(rank)
    bufs = {j: torch.empty_like(x) for j in topo.in_neighbors(rank)}
    reqs = [dist.irecv(b, src=j) for j, b in bufs.items()]
    reqs += [dist.isend(x, dst=j) for j in topo.out_neighbors(rank)]
    for r in reqs:
        r.wait()
    x.mul_(weights[rank])
    for j, b in bufs.items():
        x.add_(b, alpha=weights[j])


def _timed(fn) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    elapsed = torch.tensor([time.perf_counter() - t0])
    dist.all_reduce(elapsed, op=dist.ReduceOp.MAX)
    return float(elapsed)


def _bench_rank(rank: int, world: int, sizes: list[int], iters: int, topo_name: str) -> dict:
    st.init(topology=topo_name, timeout=timedelta(seconds=300))
    topo = st.gossip.current().topology
    out = {}
    for n in sizes:
        x = torch.randn(n, generator=torch.Generator().manual_seed(rank))
        y = x.clone()
        methods = {
            "engine": lambda x=x, n=n: st.neighbor_average(x, inplace=True, name=f"bench{n}"),
            "python_gossip": lambda x=x: python_gossip(x, rank, topo),
            "all_reduce": lambda x=x: (dist.all_reduce(x), x.div_(world)),
            "memcpy": lambda x=x, y=y: y.copy_(x),
        }
        times: dict[str, list[float]] = {k: [] for k in methods}
        for it in range(iters + 2):
            if it == 2:
                st.gossip.current().engine.reset_stats()
            for name, fn in methods.items():
                t = _timed(fn)
                if it >= 2:  # two warm-up iterations
                    times[name].append(t)
        out[n] = {k: statistics.median(v) for k, v in times.items()}
        # Split of the engine's round: transfer (post → last message, on the worker) vs the rest (mixing).
        s = st.stats()
        out[n]["engine_transfer"] = s["transfer_seconds"] / max(s["rounds"], 1)
        if rank == 0:
            print(
                f"  {n:>11,d} elements: " + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in out[n].items()),
                flush=True,
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=4)
    parser.add_argument("--topology", default="ring")
    parser.add_argument("--sizes", default="1e6,1e7,2.5e7")
    parser.add_argument("--iters", type=int, default=9)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    print(
        f"gossip round, fp32, {args.ranks} ranks on {args.topology}, median of {args.iters} "
        f"(CPU: {os.cpu_count()} cores)",
        flush=True,
    )
    res = run_ranks(_bench_rank, args.ranks, sizes, args.iters, args.topology, timeout=3600)[0]
    print()
    print(
        "| elements | engine (ms) | engine transfer (ms) | Python isend/irecv (ms) | all_reduce (ms) "
        "| memcpy (ms) | engine / Python | engine / all_reduce |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, r in res.items():
        print(
            f"| {n:,} | {r['engine'] * 1e3:.1f} | {r['engine_transfer'] * 1e3:.1f} "
            f"| {r['python_gossip'] * 1e3:.1f} | {r['all_reduce'] * 1e3:.1f} "
            f"| {r['memcpy'] * 1e3:.1f} | {r['engine'] / r['python_gossip']:.2f} "
            f"| {r['engine'] / r['all_reduce']:.2f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({str(k): v for k, v in res.items()}, indent=2))


if __name__ == "__main__":
    main()
