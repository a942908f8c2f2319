"""How far one slow link spreads when nothing resynchronises the ranks: free-running q-saddle.

``bench/cluster.py`` times each row with a barrier before every step, so a straggler there can only
slow its direct neighbours. A real training loop has no barrier: in synchronous gossip, rank i's
round k needs its in-neighbours' round k, so rank i can run at most dist(i, s) rounds ahead of a
straggler s, and in the long run every rank runs at the straggler's pace. This benchmark measures that
on the emulated cluster: 8 ranks, the study's small CNN, ``q-saddle`` (awc) on a ring and on
``one_peer_exponential``, with every link at ``--rate`` and then with rank ``--straggler`` at
``--slow``, ``--steps`` steps with no barrier; it reports each rank's mean step time over the second
half, and how many rounds ahead of the straggler each rank got at most.

``--modes sync,async`` adds asynchronous push-sum gossip (``max_staleness``, never waiting: the
slow rank's messages are mixed in when they arrive) beside the synchronous rounds.

    python bench/straggler.py [--ranks 8] [--steps 80] [--rate 100] [--slow 10] [--modes sync,async]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rank_main(args: argparse.Namespace) -> None:
    """One rank: free-running steps, per-step end times written to ``<out>/<tag>-<rank>.json``."""
    import torch
    import torch.distributed as dist
    from torch import nn

    sys.path.insert(0, str(ROOT / "bench"))
    from cluster import build_model  # noqa: PLC0415 - the same models as bench/cluster.py

    import saddle_torch as st

    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    st.init(topology=args.topology, timeout=timedelta(seconds=600))  # the default Gloo group too
    model = build_model("cnn", cnn_width=16)
    staleness = None if args.mode == "sync" else float("inf")
    opt = st.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        model,
        algorithm="q-saddle",
        order="awc",
        max_staleness=staleness,
    )
    g = torch.Generator().manual_seed(rank)
    batches = [
        (torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(4)
    ]
    dist.barrier()  # one common start; nothing synchronises the ranks after it
    ends = []
    t0 = time.perf_counter()
    for step in range(args.steps):
        x, y = batches[step % len(batches)]

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        ends.append(time.perf_counter() - t0)
    opt.drain()  # asynchronous gossip: the messages still in flight (a no-op for synchronous rounds)
    Path(args.out, f"{args.tag}-{rank}.json").write_text(json.dumps({"start": t0, "ends": ends}))
    st.shutdown()
    dist.destroy_process_group()


def _summarise(out: Path, tag: str, n: int, steps: int, straggler: int | None) -> dict:
    runs = [json.loads((out / f"{tag}-{r}.json").read_text()) for r in range(n)]
    half = steps // 2
    mean_step = [(r["ends"][-1] - r["ends"][half - 1]) / (steps - half) for r in runs]
    # Rounds ahead of the straggler at the moment each rank ended a step (same clock: same machine).
    ahead = [0] * n
    if straggler is not None:
        s_ends = [runs[straggler]["start"] + t for t in runs[straggler]["ends"]]
        for r in range(n):
            for k, t in enumerate(runs[r]["ends"]):
                done_by_s = sum(1 for e in s_ends if e <= runs[r]["start"] + t)
                ahead[r] = max(ahead[r], k + 1 - done_by_s)
    return {"mean_step_s": mean_step, "max_rounds_ahead": ahead}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=80)
    parser.add_argument("--rate", type=float, default=100.0, help="Mbit/s of every link")
    parser.add_argument("--slow", type=float, default=10.0, help="Mbit/s of the straggler's link")
    parser.add_argument("--straggler", type=int, default=3)
    parser.add_argument("--topologies", default="ring,one_peer_exponential")
    parser.add_argument(
        "--modes", default="sync", help="sync (rounds) and/or async (push-sum), comma-separated"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "straggler")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--topology", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="sync", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _rank_main(args)
        return

    from saddle_torch.testing.cluster import Cluster

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    runs = [
        (topology, mode, label, slow)
        for topology in args.topologies.split(",")
        for mode in args.modes.split(",")
        for label, slow in (("uniform", None), ("straggler", args.straggler))
    ]
    for topology, mode, label, slow in runs:
        rates = [args.rate] * args.ranks
        if slow is not None:
            rates[slow] = args.slow
        tag = f"{topology}-{mode}-{label}"
        print(
            f"== {tag}: {args.ranks} ranks, links {rates} Mbit/s, {args.steps} free-running steps",
            flush=True,
        )
        argv = [sys.executable, __file__, "--worker", "--topology", topology, "--tag", tag]
        argv += ["--steps", str(args.steps), "--out", str(args.out), "--mode", mode]
        with Cluster(args.ranks, rates_mbit=rates) as c:
            c.run(argv, timeout=1800)
        results[tag] = _summarise(args.out, tag, args.ranks, args.steps, slow)
        steps = " ".join(f"{t:.3f}" for t in results[tag]["mean_step_s"])
        print(
            f"   mean step per rank (s): {steps}; rounds ahead of the straggler: "
            f"{results[tag]['max_rounds_ahead']}",
            flush=True,
        )
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [
        "| run | " + " | ".join(f"r{r}" for r in range(args.ranks)) + " |",
        "|---|" + "---:|" * args.ranks,
    ]
    for tag, r in results.items():
        lines.append(f"| {tag}, mean step (s) | " + " | ".join(f"{t:.3f}" for t in r["mean_step_s"]) + " |")
        if tag.endswith("straggler"):
            lines.append(
                f"| {tag}, most rounds ahead of rank {args.straggler} | "
                + " | ".join(str(a) for a in r["max_rounds_ahead"])
                + " |"
            )
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
