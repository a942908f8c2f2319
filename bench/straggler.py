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

``--seconds T`` trains on real data instead (Fashion-MNIST split by Dirichlet(``--alpha``), one split
per ``--seeds`` entry) for T seconds of wall time, the straggler present, and reports each rank's
steps and the test accuracy of the ranks' averaged model at the end (after ``opt.drain()``): what the
fast ranks' extra steps buy. Synchronous ranks agree when to stop through an all-reduce of their
clocks read one step late (they are in lock-step anyway); asynchronous ranks each stop on their own
clock.

    python bench/straggler.py [--ranks 8] [--steps 80] [--rate 100] [--slow 10] [--modes sync,async]
    python bench/straggler.py --seconds 120 --seeds 0,1,2 --topologies ring --modes sync,async
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
    rank, n = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    st.init(topology=args.topology, timeout=timedelta(seconds=600))  # the default Gloo group too
    model = build_model("cnn", cnn_width=16)  # seeded 0: the same model on every rank
    if args.seed:  # another seed, another common start
        torch.manual_seed(args.seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    staleness = None if args.mode == "sync" else float("inf")
    opt = st.DistributedOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.05),
        model,
        algorithm="q-saddle",
        order="awc",
        max_staleness=staleness,
    )
    data = _Data(args, rank, n) if args.seconds else None
    g = torch.Generator().manual_seed(rank)
    batches = [
        (torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)) for _ in range(4)
    ]
    clock = dist.new_group(backend="gloo")  # sync + --seconds: when to stop, agreed one step late
    dist.barrier()  # one common start; nothing synchronises the ranks after it
    ends: list[float] = []
    pending = None
    t0 = time.perf_counter()
    step = 0
    while True:
        if data is None:
            if step == args.steps:
                break
            x, y = batches[step % len(batches)]
        else:
            elapsed = time.perf_counter() - t0
            if args.mode == "async":
                if elapsed >= args.seconds:
                    break
            else:
                if pending is not None:
                    pending[0].wait()
                    if pending[1].item() >= args.seconds:
                        break
                mine = torch.tensor([elapsed], dtype=torch.float64)
                pending = (dist.all_reduce(mine, op=dist.ReduceOp.MAX, group=clock, async_op=True), mine)
            x, y = data.batch()

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        ends.append(time.perf_counter() - t0)
        step += 1
    if pending is not None:
        pending[0].wait()
    # Asynchronous gossip: deliver the messages still in flight, and (real data) end on the weighted
    # average push-sum kept (a no-op for synchronous rounds, whose plain average is the one evaluated).
    opt.drain(average=data is not None)
    result: dict = {"start": t0, "ends": ends}
    if data is not None:
        result["accuracy"] = data.averaged_accuracy(model)
    Path(args.out, f"{args.tag}-{rank}.json").write_text(json.dumps(result))
    st.shutdown()
    dist.destroy_process_group()


class _Data:
    """This rank's Dirichlet share of Fashion-MNIST, and the averaged model's test accuracy."""

    def __init__(self, args: argparse.Namespace, rank: int, n: int) -> None:
        sys.path.insert(0, str(ROOT / "bench"))
        import cluster  # noqa: PLC0415 - the data, batches and evaluation of bench/cluster.py

        from saddle_torch.data import DirichletPartition

        self._cluster = cluster
        train, test, _, _ = cluster._example("datasets").load_fashion_mnist(args.data_dir)
        self.x, self.y = train.tensors
        part = DirichletPartition(self.y, n=n, alpha=args.alpha, seed=args.seed, min_size=32)
        self._order = cluster._batches(part.sampler(rank, seed=args.seed), 32)
        test_x, test_y = test.tensors
        lo, hi = rank * len(test_y) // n, (rank + 1) * len(test_y) // n
        self.test = ((test_x[lo:hi], test_y[lo:hi]), len(test_y))

    def batch(self) -> tuple:
        """The next batch of this rank's share."""
        idx = next(self._order)
        return self.x[idx], self.y[idx]

    def averaged_accuracy(self, model: object) -> float:
        """Test accuracy of the exact average of the ranks' models (collective)."""
        import torch.distributed as dist

        eval_model = self._cluster.build_model("cnn", cnn_width=16)
        book = dist.new_group(backend="gloo")
        return self._cluster._averaged_accuracy(model, eval_model, *self.test, book)


def _summarise(out: Path, tag: str, n: int, straggler: int | None) -> dict:
    runs = [json.loads((out / f"{tag}-{r}.json").read_text()) for r in range(n)]
    mean_step = []
    for r in runs:  # over the second half of each rank's own steps
        ends, half = r["ends"], len(r["ends"]) // 2
        mean_step.append((ends[-1] - ends[half - 1]) / (len(ends) - half))
    # Rounds ahead of the straggler at the moment each rank ended a step (same clock: same machine).
    ahead = [0] * n
    if straggler is not None:
        s_ends = [runs[straggler]["start"] + t for t in runs[straggler]["ends"]]
        for r in range(n):
            for k, t in enumerate(runs[r]["ends"]):
                done_by_s = sum(1 for e in s_ends if e <= runs[r]["start"] + t)
                ahead[r] = max(ahead[r], k + 1 - done_by_s)
    summary = {"mean_step_s": mean_step, "max_rounds_ahead": ahead, "steps": [len(r["ends"]) for r in runs]}
    if "accuracy" in runs[0]:
        summary["accuracy"] = runs[0]["accuracy"]
    return summary


def _table(results: dict[str, dict], args: argparse.Namespace) -> str:
    n = args.ranks
    lines = ["| run | " + " | ".join(f"r{r}" for r in range(n)) + " |", "|---|" + "---:|" * n]
    for tag, r in results.items():
        lines.append(f"| {tag}, mean step (s) | " + " | ".join(f"{t:.3f}" for t in r["mean_step_s"]) + " |")
        if args.seconds:
            lines.append(f"| {tag}, steps | " + " | ".join(str(k) for k in r["steps"]) + " |")
        if "straggler" in tag:
            lines.append(
                f"| {tag}, most rounds ahead of rank {args.straggler} | "
                + " | ".join(str(a) for a in r["max_rounds_ahead"])
                + " |"
            )
    if args.seconds:
        lines += ["", "| run | averaged model's test accuracy |", "|---|---:|"]
        lines += [f"| {tag} | {r['accuracy']:.4f} |" for tag, r in results.items()]
    return "\n".join(lines)


def plot_steps(results: dict[str, dict], path: Path) -> None:
    """Each run's mean step per rank, as grouped bars (the straggler's effect on every rank)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tags = list(results)
    n = len(results[tags[0]]["mean_step_s"])
    width = 0.8 / len(tags)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for k, tag in enumerate(tags):
        xs = [r + (k - (len(tags) - 1) / 2) * width for r in range(n)]
        ax.bar(xs, results[tag]["mean_step_s"], width, label=tag)
    ax.set_xticks(range(n), [f"rank {r}" for r in range(n)])
    ax.set_ylabel("mean step, second half (s)")
    ax.set_title("free-running q-saddle, 8 ranks, the CNN; straggler: rank 3's link at 10 Mbit/s")
    ax.grid(axis="y", alpha=0.3)
    ax.set_ylim(0, 1.25 * max(max(r["mean_step_s"]) for r in results.values()))
    ax.legend(fontsize=7, ncol=min(4, len(tags)), loc="upper center")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--steps", type=int, default=80, help="steps per run (synthetic batches)")
    parser.add_argument("--seconds", type=float, default=0.0, help="> 0: train Fashion-MNIST this long")
    parser.add_argument("--seeds", default="0", help="data split and model seeds (with --seconds)")
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet α of the split")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--rate", type=float, default=100.0, help="Mbit/s of every link")
    parser.add_argument("--slow", type=float, default=10.0, help="Mbit/s of the straggler's link")
    parser.add_argument("--straggler", type=int, default=3)
    parser.add_argument("--topologies", default="ring,one_peer_exponential")
    parser.add_argument(
        "--modes", default="sync", help="sync (rounds) and/or async (push-sum), comma-separated"
    )
    parser.add_argument(
        "--links", default="uniform,straggler", help="uniform and/or straggler, comma-separated"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "straggler")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--topology", help=argparse.SUPPRESS)
    parser.add_argument("--tag", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="sync", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _rank_main(args)
        return

    from saddle_torch.testing.cluster import Cluster

    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    seeds = [int(x) for x in args.seeds.split(",")] if args.seconds else [0]
    links = {"uniform": None, "straggler": args.straggler}
    runs = [
        (topology, mode, label, links[label], seed)
        for seed in seeds
        for topology in args.topologies.split(",")
        for mode in args.modes.split(",")
        for label in args.links.split(",")
    ]
    what = f"{args.seconds:.0f} s of Fashion-MNIST" if args.seconds else f"{args.steps} steps"
    for topology, mode, label, slow, seed in runs:
        rates = [args.rate] * args.ranks
        if slow is not None:
            rates[slow] = args.slow
        tag = f"{topology}-{mode}-{label}" + (f"-seed{seed}" if args.seconds else "")
        print(f"== {tag}: {args.ranks} ranks, links {rates} Mbit/s, {what}, free-running", flush=True)
        argv = [sys.executable, __file__, "--worker", "--topology", topology, "--tag", tag]
        argv += ["--steps", str(args.steps), "--out", str(args.out), "--mode", mode]
        argv += ["--seconds", str(args.seconds), "--seed", str(seed), "--alpha", str(args.alpha)]
        argv += ["--data-dir", args.data_dir]
        with Cluster(args.ranks, rates_mbit=rates) as c:
            c.run(argv, timeout=1800)
        results[tag] = r = _summarise(args.out, tag, args.ranks, slow)
        steps = " ".join(f"{t:.3f}" for t in r["mean_step_s"])
        extra = f"; steps {r['steps']}; accuracy {r['accuracy']:.4f}" if "accuracy" in r else ""
        print(
            f"   mean step per rank (s): {steps}; rounds ahead of the straggler: {r['max_rounds_ahead']}"
            + extra,
            flush=True,
        )
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    plot_steps(results, args.out / "steps.png")
    table = _table(results, args)
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
