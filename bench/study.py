"""Learning-quality study: decentralized algorithms on non-IID Fashion-MNIST, with and without compression.

Runs ``examples/train.py`` under torchrun for every (α, configuration, seed), skips runs whose
``log.json`` is complete (the study resumes), then writes a table per α (test and training accuracy,
sharpness, traffic, time; mean ± std over seeds), a "claims" table (paired seed-by-seed differences
against each configuration's baseline) and a plot.

    python bench/study.py                        # the full study (about 80 minutes on 2 cores)
    python bench/study.py --seeds 0 --max-steps 150 --report docs/RESULTS.md   # a reduced budget
    python bench/study.py --alphas 0.01 --seeds 0 --configs q-saddle+rho=0.1,q-saddle+order=atc

A configuration is ``algorithm[@compression][+flag=value ...]``: ``q-saddle@int8`` compresses the gossip,
``+rho=0.1`` passes ``--rho 0.1`` to ``examples/train.py`` (any of its flags, ``_`` or ``-``).
Study-wide flags (``--schedule``, ``--train-subset``, ``--model``, ``--rho``, ...) go to every run; a
configuration's own ``+flag=value`` comes after them, so it wins.

    python bench/study.py --configs dsgd,q-saddle --seeds 0 --alphas 0.1 --schedule step \
        --train-subset 6000 --epochs 30 --out /tmp/pilot
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
# Study-wide train.py flags passed only when given (None: train.py's default).
OPTIONAL_FLAGS = (
    "schedule",
    "train_subset",
    "model",
    "rho",
    "momentum",
    "weight_decay",
    "topology",
    "train_eval_samples",
    "sharpness_samples",
    "sharpness_rho",
    "hessian_iters",
    "val_size",
)
# A configuration's baseline by algorithm: (baseline algorithm, threshold in points, claim).
BASELINES = {
    "q-saddle": ("qgm", 1.0, "q-saddle ≥ qgm + 1 point"),
    "n-saddle": ("ngm", 0.0, "n-saddle ≥ ngm"),
    "sam-dsgd": ("dsgd", None, "sam-dsgd vs dsgd (no threshold)"),
}
COMPRESSED_TOLERANCE = 1.0  # points: a compressed run may lose at most this much to its uncompressed twin


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
        "--eval-every", str(args.eval_every), "--width", str(args.width),
    ]  # fmt: skip
    if args.max_steps:
        cmd += ["--max-steps", str(args.max_steps)]
    cmd += study_flags(args) + extra_flags  # argparse keeps the last value: the configuration's own wins
    env = dict(os.environ, OMP_NUM_THREADS="1")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"run {run_dir} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    seconds = time.monotonic() - t0
    result = json.loads(log.read_text())
    result["study"] = {"seconds": seconds, "command": cmd[3:]}  # with torchrun's start; kept on resume
    tmp = run_dir / "log.json.tmp"
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(log)
    print(f"  done in {seconds:.0f} s", flush=True)
    return result


def study_flags(args: argparse.Namespace) -> list[str]:
    """The optional study-wide train.py flags that were given (``--schedule step ...``)."""
    flags: list[str] = []
    for name in OPTIONAL_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            flags += ["--" + name.replace("_", "-"), str(value)]
    return flags


def run_seconds(result: dict) -> float:
    """A run's wall time as the study measured it (torchrun included), else train.py's own."""
    return result.get("study", {}).get("seconds", result["final"]["wall_time_s"])


def _summary(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    """``mean ± std`` (sample std; 0 for one value) of ``values`` × ``scale``; ``-`` when there are none."""
    if not values:
        return "-"
    mean = statistics.mean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def _finals(runs: list[dict], key: str) -> list[float]:
    """``final[key]`` of the runs that have it (logs written before a metric existed lack it)."""
    return [r["final"][key] for r in runs if r["final"].get(key) is not None]


def _setup_line(
    args: argparse.Namespace, results: dict[tuple[float, str], list[dict]], seconds: float
) -> str:
    extra = " ".join(study_flags(args))
    return (
        f"Data: {args.dataset}, {args.ranks} ranks on {args.topology or 'ring'}, "
        f"Dirichlet α ∈ {{{', '.join(map(str, args.alphas))}}}, "
        f"{args.model or 'cnn'} width {args.width}, seeds {args.seeds}, batch {args.batch_size} per rank, "
        f"lr {args.lr} ({args.schedule or 'cosine'}), "
        + (f"{args.max_steps} steps per run" if args.max_steps else f"{args.epochs} epochs")
        + (f", flags `{extra}`" if extra else "")
        + f"; this invocation {seconds / 60:.0f} min, the runs' wall times (torchrun included) sum to "
        f"{sum(run_seconds(r) for runs in results.values() for r in runs) / 60:.0f} min."
    )


def _report(args: argparse.Namespace, results: dict[tuple[float, str], list[dict]], seconds: float) -> str:
    """The setup, one table per α (mean ± std over seeds) and the claims table, as markdown."""
    lines = [_setup_line(args, results, seconds)]
    for alpha in dict.fromkeys(a for a, _ in results):
        lines += [
            "",
            f"### α = {alpha}",
            "",
            "| configuration | seeds | test acc, averaged model (%) | train acc, averaged model (%) "
            "| train acc, own models mean (%) | sharpness_sam | hessian_top_eig | MiB sent per rank "
            "| wall time per run (s) |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for (a, config), runs in results.items():
            if a != alpha or not runs:
                continue
            lines.append(
                f"| {config} | {len(runs)} | {_summary(_finals(runs, 'test_acc_avg_model'))} "
                f"| {_summary(_finals(runs, 'train_acc_avg_model'))} "
                f"| {_summary(_finals(runs, 'train_acc_local_mean'))} "
                f"| {_summary(_finals(runs, 'sharpness_sam'), 1.0, 4)} "
                f"| {_summary(_finals(runs, 'hessian_top_eig'), 1.0, 2)} "
                f"| {statistics.mean(_finals(runs, 'mib_sent_per_rank')):.1f} "
                f"| {statistics.mean(run_seconds(r) for r in runs):.0f} |"
            )
    lines += ["", claims_table(claims(results))]
    chosen = validation_choice(results, default_rho=args.rho if args.rho is not None else DEFAULT_RHO)
    if chosen:
        lines += ["", validation_table(chosen)]
    return "\n".join(lines)


DEFAULT_RHO = 0.05  # examples/train.py's --rho


def rho_of(config: str, default_rho: float) -> tuple[str, float]:
    """``config`` without its ``+rho=`` extra, and that ρ (``default_rho`` when it has none)."""
    head, *extras = config.split("+")
    rho, kept = default_rho, []
    for extra in extras:
        key, _, value = extra.partition("=")
        if key == "rho":
            rho = float(value)
        else:
            kept.append(extra)
    return "+".join([head, *kept]), rho


def validation_choice(
    results: dict[tuple[float, str], list[dict]], *, default_rho: float = DEFAULT_RHO
) -> list[dict]:
    """ρ chosen on the validation split, then judged on the test set (runs with ``--val-size``).

    Configurations that differ only in ``+rho=`` form a family (``q-saddle``, ``q-saddle+rho=0.1``,
    ...). For each family and α with at least two ρ whose runs all have ``val_acc_avg_model``, the ρ
    with the best mean validation accuracy over seeds is chosen (ties: the smaller ρ); the family is
    also chosen once over every α together (the mean over α of those means), the value a default
    would take. Each choice is then compared with the family's baseline (:func:`baseline_of`) on the
    **test** set, paired by seed.

    Returns:
        One dict per (family, α) and per family over all α (``alpha`` = ``"all"``): ``family``,
        ``val`` (ρ → mean validation accuracy, points), ``chosen`` (ρ), ``test`` (test accuracy at the
        chosen ρ, points, seed order), ``baseline``, ``differences`` (points, paired seeds), ``claim``,
        ``met`` and ``seeds``; the rows over all α list one difference per (α, seed).
    """
    families: dict[tuple[float, str], dict[float, list[dict]]] = {}
    for (alpha, config), runs in results.items():
        if not runs or any(r["final"].get("val_acc_avg_model") is None for r in runs):
            continue
        family, rho = rho_of(config, default_rho)
        families.setdefault((alpha, family), {})[rho] = runs
    rows: list[dict] = []
    by_family: dict[str, dict[float, dict[float, float]]] = {}
    for (alpha, family), by_rho in families.items():
        if len(by_rho) < 2:
            continue
        val = {rho: 100 * statistics.mean(_finals(runs, "val_acc_avg_model")) for rho, runs in by_rho.items()}
        by_family.setdefault(family, {})[alpha] = val
        rows.append(_judged(results, alpha, family, val, by_rho))
    for family, per_alpha in by_family.items():
        if len(per_alpha) < 2:
            continue
        rhos = set.intersection(*(set(v) for v in per_alpha.values()))
        val = {rho: statistics.mean(v[rho] for v in per_alpha.values()) for rho in sorted(rhos)}
        parts = [_judged(results, alpha, family, val, families[(alpha, family)]) for alpha in per_alpha]
        rows.append(
            {
                **parts[0],
                "alpha": "all",
                "test": [t for p in parts for t in p["test"]],
                "differences": [d for p in parts for d in p["differences"]],
                "seeds": [f"{p['alpha']}/{s}" for p in parts for s in p["seeds"]],
                "met": None if parts[0]["met"] is None else sum(p["met"] for p in parts),
            }
        )
    return rows


def _judged(
    results: dict[tuple[float, str], list[dict]],
    alpha: float,
    family: str,
    val: dict[float, float],
    by_rho: dict[float, list[dict]],
) -> dict:
    """The ρ with the best ``val`` (ties: smaller), its test accuracies and the paired baseline gaps."""
    chosen = max(sorted(val), key=lambda rho: val[rho])
    runs = by_rho[chosen]
    found = baseline_of(family)
    base, threshold, claim = None, None, "no baseline"
    if found is not None:
        base = next((c for c in found[0] if results.get((alpha, c))), None)
        threshold, claim = found[1], found[2]
    mine = {r["config"]["seed"]: 100 * r["final"]["test_acc_avg_model"] for r in runs}
    theirs = (
        {}
        if base is None
        else {r["config"]["seed"]: 100 * r["final"]["test_acc_avg_model"] for r in results[(alpha, base)]}
    )
    seeds = sorted(set(mine) & set(theirs))
    diffs = [mine[s] - theirs[s] for s in seeds]
    return {
        "alpha": alpha,
        "family": family,
        "val": val,
        "chosen": chosen,
        "test": [mine[s] for s in sorted(mine)],
        "baseline": base,
        "claim": claim,
        "seeds": seeds,
        "differences": diffs,
        "threshold": threshold,
        "met": None if threshold is None else sum(d >= threshold - 1e-9 for d in diffs),
    }


def validation_table(rows: list[dict]) -> str:
    """:func:`validation_choice` as markdown."""
    lines = [
        "### ρ chosen on the validation split, judged on the test set",
        "",
        "| α | family | validation acc by ρ (%, mean over seeds) | chosen ρ | test acc at it (%) "
        "| − baseline, paired (points) | claim | seeds meeting it |",
        "|---|---|---|---:|---|---|---|---:|",
    ]
    for r in rows:
        val = ", ".join(
            (f"**{rho:g}: {acc:.2f}**" if rho == r["chosen"] else f"{rho:g}: {acc:.2f}")
            for rho, acc in sorted(r["val"].items())
        )
        diffs = ", ".join(f"{d:+.2f}" for d in r["differences"]) or "-"
        if r["differences"]:
            diffs += f" (mean {statistics.mean(r['differences']):+.2f}) vs {r['baseline']}"
        met = "-" if r["met"] is None else f"{r['met']}/{len(r['differences'])}"
        test = f"{statistics.mean(r['test']):.2f} ({', '.join(f'{t:.2f}' for t in r['test'])})"
        lines.append(
            f"| {r['alpha']} | {r['family']} | {val} | {r['chosen']:g} | {test} | {diffs} "
            f"| {r['claim']} | {met} |"
        )
    return "\n".join(lines)


def baseline_of(config: str) -> tuple[list[str], float | None, str] | None:
    """The configurations ``config`` is compared with (first one present wins), the threshold, the claim.

    ``x@codec[+extras]`` against ``x[+extras]``: the difference must be ≥ −1 point (within a point, or
    better). ``q-saddle[+extras]`` against ``qgm[+extras]`` then ``qgm`` (≥ +1 point), ``n-saddle``
    against ``ngm`` (≥ 0), ``sam-dsgd`` against ``dsgd`` (reported, no threshold). ``None``: no baseline.
    """
    head, *extras = config.split("+")
    algorithm, _, compression = head.partition("@")
    tail = "".join("+" + e for e in extras)
    if compression:
        return (
            [algorithm + tail],
            -COMPRESSED_TOLERANCE,
            f"{algorithm}@{compression} within 1 point of {algorithm}",
        )
    if algorithm not in BASELINES:
        return None
    base, threshold, claim = BASELINES[algorithm]
    return list(dict.fromkeys([base + tail, base])), threshold, claim


def claims(results: dict[tuple[float, str], list[dict]], key: str = "test_acc_avg_model") -> list[dict]:
    """Paired comparisons of every configuration with its baseline (:func:`baseline_of`) at each α.

    The seeds both have are paired; the differences are in points (percentage points of ``key``).

    Returns:
        One dict per comparison: ``alpha``, ``config``, ``baseline``, ``claim``, ``seeds``,
        ``differences`` (seed order), ``mean``, ``threshold`` (points, or ``None``), ``met`` (seeds whose
        difference meets the threshold, or ``None``) and ``holds`` (the mean meets it, or ``None``).
    """
    rows = []
    for (alpha, config), runs in results.items():
        found = baseline_of(config)
        if found is None or not runs:
            continue
        candidates, threshold, claim = found
        base = next((c for c in candidates if results.get((alpha, c))), None)
        if base is None:
            continue
        mine = {r["config"]["seed"]: r["final"][key] for r in runs}
        theirs = {r["config"]["seed"]: r["final"][key] for r in results[(alpha, base)]}
        seeds = sorted(set(mine) & set(theirs))
        if not seeds:
            continue
        diffs = [100 * (mine[s] - theirs[s]) for s in seeds]
        mean = statistics.mean(diffs)
        rows.append(
            {
                "alpha": alpha,
                "config": config,
                "baseline": base,
                "claim": claim,
                "seeds": seeds,
                "differences": diffs,
                "mean": mean,
                "threshold": threshold,
                "met": None if threshold is None else sum(d >= threshold - 1e-9 for d in diffs),
                "holds": None if threshold is None else mean >= threshold - 1e-9,
            }
        )
    return rows


def claims_table(rows: list[dict]) -> str:
    """The claims as markdown: one row per comparison, differences seed by seed."""
    lines = [
        "### claims (averaged-model test accuracy, paired by seed)",
        "",
        "| α | configuration − baseline | claim | seeds | differences (points) | mean (points) "
        "| threshold | seeds meeting it | mean meets it |",
        "|---:|---|---|---|---|---:|---:|---:|:---:|",
    ]
    for r in rows:
        threshold = "-" if r["threshold"] is None else f"≥ {r['threshold']:+.1f}"
        met = "-" if r["met"] is None else f"{r['met']}/{len(r['seeds'])}"
        holds = "-" if r["holds"] is None else ("yes" if r["holds"] else "no")
        lines.append(
            f"| {r['alpha']} | {r['config']} − {r['baseline']} | {r['claim']} | {r['seeds']} "
            f"| {', '.join(f'{d:+.2f}' for d in r['differences'])} | {r['mean']:+.2f} | {threshold} "
            f"| {met} | {holds} |"
        )
    if not rows:
        lines.append("| - | no configuration has its baseline in these runs | | | | | | | |")
    return "\n".join(lines)


RUN_COLUMNS = (
    "test_acc_avg_model",
    "val_acc_avg_model",
    "test_acc_mean_rank",
    "test_acc_min_rank",
    "train_acc_avg_model",
    "train_loss_avg_model",
    "train_acc_local_mean",
    "train_acc_local_min",
    "sharpness_sam",
    "hessian_top_eig",
    "mib_sent_per_rank",
    "consensus_distance",
    "train_time_s",
    "wall_time_s",
)


def _write_runs_csv(results: dict[tuple[float, str], list[dict]], path: Path) -> None:
    """One row per run: its configuration, seed, final figures and the study's wall time."""
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["alpha", "configuration", "seed", *RUN_COLUMNS, "study_seconds"])
        for (alpha, config), runs in results.items():
            for r in runs:
                values = [r["final"].get(k) for k in RUN_COLUMNS]
                writer.writerow([alpha, config, r["config"]["seed"], *values, round(run_seconds(r), 1)])


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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The study's flags (``argv`` default: the command line)."""
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
    parser.add_argument("--schedule", choices=("constant", "cosine", "step"), default=None)
    parser.add_argument("--train-subset", type=int, default=None, help="train.py --train-subset")
    parser.add_argument("--model", default=None, help="train.py --model (cnn, resnet20)")
    parser.add_argument("--rho", type=float, default=None, help="SAM radius of the SAM algorithms")
    parser.add_argument("--momentum", type=float, default=None)
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--topology", default=None, help="train.py --topology (default ring)")
    parser.add_argument("--train-eval-samples", type=int, default=None, help="train.py --train-eval-samples")
    parser.add_argument(
        "--sharpness-samples",
        type=int,
        default=2048,
        help="train.py --sharpness-samples: final sharpness on this many training samples (0: skip)",
    )
    parser.add_argument(
        "--val-size",
        type=int,
        default=None,
        help="train.py --val-size: a validation split; ρ is then chosen on it (validation_choice)",
    )
    parser.add_argument("--sharpness-rho", type=float, default=None, help="train.py --sharpness-rho")
    parser.add_argument("--hessian-iters", type=int, default=None, help="train.py --hessian-iters")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "study")
    parser.add_argument("--report", type=Path, default=None, help="write the table here (markdown)")
    return parser.parse_args(argv)


def main() -> None:
    """Run (or resume) every configuration, then write the tables, ``runs.csv`` and the plot."""
    args = parse_args()
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
    # With --report the files are named after it (main.md → main.csv, main.png) so that two studies
    # sharing --out (the main runs and the ρ sweep) do not overwrite each other's.
    base = args.report if args.report else args.out / "table.md"
    base.parent.mkdir(parents=True, exist_ok=True)
    csv, png = base.with_suffix(".csv"), base.with_suffix(".png")
    base.write_text(table + "\n")
    _write_runs_csv(results, csv)
    _plot(results, png)
    print(f"table: {base}; runs: {csv}; plot: {png}")


if __name__ == "__main__":
    main()
