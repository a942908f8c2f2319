"""``make demo``: DSGD against Q-SADDLe on non-IID digits (Dirichlet α = 0.1), 4 ranks gossiping on a ring.

    python examples/demo.py [--nproc 4] [--epochs 20] [--algorithms dsgd q-saddle] [--out runs/demo]

Each algorithm is one ``torchrun --standalone`` launch of ``examples/train.py`` (offline, CPU, one thread
per rank) at a constant learning rate; then this prints a table of the final test accuracies, consensus
distances and traffic, and writes ``runs/demo/plot.png``.
Flags after ``--`` go to ``train.py`` unchanged (e.g. ``-- --topology exponential``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent


def _train_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("saddle_examples.train", HERE / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def launch(algorithm: str, args: argparse.Namespace, extra: list[str]) -> dict[str, Any]:
    """Run ``train.py`` under torchrun for one algorithm; returns its ``log.json``.

    Raises:
        subprocess.CalledProcessError: the training run failed.
    """
    out = Path(args.out) / algorithm
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={args.nproc}",
        str(HERE / "train.py"),
        "--dataset",
        "digits",
        "--alpha",
        str(args.alpha),
        "--algorithm",
        algorithm,
        "--epochs",
        str(args.epochs),
        "--batch-size",
        str(args.batch_size),
        "--seed",
        str(args.seed),
        "--schedule",
        args.schedule,
        "--out",
        str(out),
        *extra,
    ]
    print(f"\n=== {algorithm}: {' '.join(cmd[2:])}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, env=env)
    return json.loads((out / "log.json").read_text())


def table(logs: dict[str, dict[str, Any]]) -> str:
    """The final results of every run, one row per algorithm."""
    head = (
        f"{'algorithm':<10} {'avg-model acc':>13} {'mean rank acc':>13} {'min rank acc':>12} "
        f"{'consensus':>10} {'MiB/rank':>9} {'wall s':>7}"
    )
    lines = [head, "-" * len(head)]
    for algorithm, log in logs.items():
        f = log["final"]
        lines.append(
            f"{algorithm:<10} {100 * f['test_acc_avg_model']:>12.2f}% "
            f"{100 * f['test_acc_mean_rank']:>12.2f}% "
            f"{100 * f['test_acc_min_rank']:>11.2f}% {f['consensus_distance']:>10.2e} "
            f"{f['mib_sent_per_rank']:>9.1f} {f['wall_time_s']:>7.1f}"
        )
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--algorithms", nargs="+", default=["dsgd", "q-saddle"])
    parser.add_argument("--alpha", type=float, default=0.1)
    parser.add_argument("--epochs", type=float, default=20)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--schedule",
        choices=("constant", "cosine"),
        default="constant",
        help="learning-rate schedule (constant: the ranks' models still differ at the end, cosine drives "
        "the consensus distance to ~0)",
    )
    parser.add_argument("--out", default="runs/demo")
    args = parser.parse_args(own)

    start = time.perf_counter()
    logs = {a: launch(a, args, extra) for a in args.algorithms}
    first = next(iter(logs.values()))
    out = Path(args.out)
    _train_module().plot_runs(
        {a: log["records"] for a, log in logs.items()}, out / "plot.png", first["title"]
    )
    (out / "summary.txt").write_text(table(logs) + "\n")
    print(
        f"\n{first['title']}, {args.epochs:g} epochs, batch {args.batch_size} per rank, {args.schedule} lr\n"
    )
    print(table(logs))
    elapsed = time.perf_counter() - start
    print(f"\nplot: {out / 'plot.png'}; logs: {out}/<algorithm>/log.json; total {elapsed:.0f} s")


if __name__ == "__main__":
    main()
