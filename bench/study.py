"""Learning-quality study: decentralized algorithms on non-IID Fashion-MNIST, with and without compression.

Runs ``examples/train.py`` under torchrun for every (α, configuration, seed), skips runs whose
``log.json`` is complete (the study resumes), then writes the mean ± std table and a plot.

    python bench/study.py                        # the full study (about 80 minutes on 2 cores)
    python bench/study.py --seeds 0 --max-steps 150 --report docs/RESULTS.md   # a reduced budget
    python bench/study.py --alphas 0.01 --seeds 0 --configs q-saddle+rho=0.1,q-saddle+order=atc

A configuration is ``algorithm[@compression][+flag=value ...]``: ``q-saddle@int8`` compresses the gossip,
``+rho=0.1`` passes ``--rho 0.1`` to ``examples/train.py`` (any of its flags, ``_`` or ``-``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = "dsgd,qgm,q-saddle,ngm,n-saddle,q-saddle@int8,q-saddle@topk:0.12"


def _run_dir(out: Path, alpha: float, config: str, seed: int) -> Path:
    name = config.replace("@", "_").replace(":", "").replace("+", "_").replace("=", "")
    return out / f"alpha{alpha}" / name / f"seed{seed}"


def parse_config(config: str) -> tuple[str, str, list[str]]:
    """``algorithm[@compression][+flag=value ...]`` → (algorithm, compression, extra train.py flags).

    Raises:
        ValueError: an extra without ``=`` or an empty algorithm.
    """
    head, *extras = config.split("+")
    algorithm, _, compression = head.partition("@")
    if not algorithm:
        raise ValueError(f"configuration {config!r} names no algorithm")
    flags: list[str] = []
    for extra in extras:
        key, sep, value = extra.partition("=")
        if not sep or not key:
            raise ValueError(f"configuration {config!r}: {extra!r} is not flag=value")
        flags += ["--" + key.replace("_", "-"), value]
    return algorithm, compression or "none", flags


def _run(args: argparse.Namespace, alpha: float, config: str, seed: int) -> dict:
    run_dir = _run_dir(args.out, alpha, config, seed)
    log = run_dir / "log.json"
    if log.exists() and "final" in json.loads(log.read_text()):
        return json.loads(log.read_text())
    algorithm, compression, extra_flags = parse_config(config)
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.ranks}",
        str(ROOT / "examples" / "train.py"), "--dataset", args.dataset, "--algorithm", algorithm,
        "--alpha", str(alpha), "--seed", str(seed), "--epochs", str(args.epochs), "--lr", str(args.lr),
        "--batch-size", str(args.batch_size), "--out", str(run_dir), "--no-progress",
        "--compression", compression, "--eval-samples", str(args.eval_samples),
        "--eval-every", str(args.eval_every), "--width", str(args.width), *extra_flags,
    ]  # fmt: skip
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"run {run_dir} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    print(f"  done in {time.monotonic() - t0:.0f} s", flush=True)
    return json.loads(log.read_text())


def _summary(values: list[float]) -> str:
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def _report(args: argparse.Namespace, results: dict[tuple[float, str], list[dict]], seconds: float) -> str:
    lines = [
        f"Data: {args.dataset}, {args.ranks} ranks on a ring, "
        f"Dirichlet α ∈ {{{', '.join(map(str, args.alphas))}}}, "
        f"cnn width {args.width}, seeds {args.seeds}, batch {args.batch_size} per rank, "
        f"lr {args.lr} (cosine), "
        + (f"{args.max_steps} steps per run" if args.max_steps else f"{args.epochs} epochs")
        + f"; this invocation {seconds / 60:.0f} min, the runs' own wall times sum to "
        f"{sum(r['final']['wall_time_s'] for runs in results.values() for r in runs) / 60:.0f} min "
        "(plus about 10 s of torchrun start per run).",
        "",
        "| α | configuration | averaged-model test acc (%) | mean per-rank test acc (%) | MiB sent per rank "
        "| final consensus distance | wall time per run (s) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for (alpha, config), runs in results.items():
        finals = [r["final"] for r in runs]
        lines.append(
            f"| {alpha} | {config} | {_summary([f['test_acc_avg_model'] for f in finals])} "
            f"| {_summary([f['test_acc_mean_rank'] for f in finals])} "
            f"| {statistics.mean(f['mib_sent_per_rank'] for f in finals):.1f} "
            f"| {statistics.mean(f['consensus_distance'] for f in finals):.2g} "
            f"| {statistics.mean(f['wall_time_s'] for f in finals):.0f} |"
        )
    return "\n".join(lines)


def _write_runs_csv(results: dict[tuple[float, str], list[dict]], path: Path) -> None:
    """One row per run: its configuration, seed and final figures."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["alpha", "configuration", "seed", "test_acc_avg_model", "test_acc_mean_rank",
             "test_acc_min_rank", "mib_sent_per_rank", "consensus_distance", "train_time_s", "wall_time_s"]
        )  # fmt: skip
        for (alpha, config), runs in results.items():
            for r in runs:
                f_ = r["final"]
                writer.writerow(
                    [alpha, config, r["config"]["seed"], f_["test_acc_avg_model"], f_["test_acc_mean_rank"],
                     f_["test_acc_min_rank"], round(f_["mib_sent_per_rank"], 3), f_["consensus_distance"],
                     round(f_["train_time_s"], 1), round(f_["wall_time_s"], 1)]
                )  # fmt: skip


def _plot(results: dict[tuple[float, str], list[dict]], path: Path) -> None:
    """Averaged-model accuracy (top) and consensus distance (bottom) over steps, mean over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    alphas = sorted({a for a, _ in results}, reverse=True)
    fig, axes = plt.subplots(2, len(alphas), figsize=(6 * len(alphas), 7.5), squeeze=False)
    for col, alpha in enumerate(alphas):
        ax_acc, ax_cons = axes[0][col], axes[1][col]
        for (a, config), runs in results.items():
            if a != alpha or not runs:
                continue
            n = min(len(r["records"]) for r in runs)
            steps = [rec["step"] for rec in runs[0]["records"][:n]]

            def mean_of(key: str, k: int, runs: list[dict] = runs) -> float:
                return statistics.mean(r["records"][k][key] for r in runs)

            acc = [100 * mean_of("test_acc_avg_model", k) for k in range(n)]
            cons = [mean_of("consensus_distance", k) for k in range(n)]
            (line,) = ax_acc.plot(steps, acc, marker=".", label=config)
            ax_cons.plot(steps[1:], cons[1:], marker=".", color=line.get_color(), label=config)
        seeds = max(len(r) for (a, _), r in results.items() if a == alpha)
        ax_acc.set_title(f"α = {alpha} (mean of {seeds} seed{'s' if seeds > 1 else ''})")
        ax_acc.set(xlabel="step", ylabel="averaged-model test accuracy (%)")
        ax_cons.set(xlabel="step", ylabel="consensus distance (1/n) Σ‖x_i − x̄‖²", yscale="log")
        for ax in (ax_acc, ax_cons):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument("--alphas", type=lambda s: [float(a) for a in s.split(",")], default=[0.1, 0.01])
    parser.add_argument("--configs", default=DEFAULT_CONFIGS)
    parser.add_argument("--seeds", type=lambda s: [int(a) for a in s.split(",")], default=[0, 1])
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--width", type=int, default=16, help="cnn width (compute grows as width²)")
    parser.add_argument("--max-steps", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument(
        "--eval-samples",
        type=int,
        default=1000,
        help="test samples scored during training (the averaged model's final score uses all 10000)",
    )
    parser.add_argument(
        "--eval-every", type=int, default=50, help="steps between evaluations (the plot's points)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--report", type=Path, default=None, help="write the table here (markdown)")
    args = parser.parse_args()
    configs = args.configs.split(",")
    for config in configs:
        parse_config(config)  # fail before the first run, not in the middle of the study
    total = len(args.alphas) * len(configs) * len(args.seeds)
    results: dict[tuple[float, str], list[dict]] = {
        (alpha, config): [] for alpha in args.alphas for config in configs
    }
    t0, done = time.monotonic(), 0
    for seed in args.seeds:  # seeds outermost: a study cut short still has every configuration once
        for alpha in args.alphas:
            for config in configs:
                done += 1
                print(f"[{done}/{total}] α={alpha} {config} seed {seed}", flush=True)
                results[(alpha, config)].append(_run(args, alpha, config, seed))
    table = _report(args, results, time.monotonic() - t0)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    _write_runs_csv(results, args.out / "runs.csv")
    _plot(results, args.out / "accuracy.png")
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(table + "\n")
    print(f"table: {args.out / 'table.md'}; runs: {args.out / 'runs.csv'}; plot: {args.out / 'accuracy.png'}")


if __name__ == "__main__":
    main()
