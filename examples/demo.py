"""``make demo``: what SADDLe is for: decentralized training on very non-IID data, compressed or not.

    python examples/demo.py                    # Fashion-MNIST, Dirichlet α = 0.01, 8 ranks, ring (4 min)
    python examples/demo.py --dataset digits   # scikit-learn digits, α = 0.01, 4 ranks (the quick variant)
    python examples/demo.py --configs dsgd q-saddle --seed 1 -- --topology exponential

The default trains the same small CNN four ways on Fashion-MNIST split over 8 ranks by a Dirichlet(0.01)
draw per class (most ranks hold one or two classes), each rank gossiping with its two ring neighbours:

- ``dsgd``: decentralized SGD with local Nesterov momentum (the baseline),
- ``qgm``: quasi-global momentum (the momentum follows the model's displacement after gossip),
- ``q-saddle``: QGM plus sharpness-aware minimization (SADDLe, arXiv 2405.13961),
- ``q-saddle@int8``: the same with int8-compressed gossip (CHOCO error feedback, about 4× fewer bytes).

The settings are ``bench/study.py``'s (CNN width 16, SGD lr 0.05 with a cosine schedule, ρ = 0.05) with
batch 16 per rank. **Like for like**: every run gets the same 400 gradient evaluations per rank, so
the SAM configurations (two per step) take 200 steps and dsgd and qgm 400 (``--steps N`` gives every
run N steps instead); the plot's x-axis is gradient evaluations and the table says how many each run
used. Ranks score 500 of their own training images at each evaluation (``--train-eval-samples``:
scoring whole shards cost more than the training). Measured on 2 cores (AMD EPYC), seed 0: the four
runs in 240 s; the averaged model reached 53.6% with dsgd, 72.3% with qgm, 72.9% with q-saddle and
72.3% with q-saddle@int8, which sent 3.9× fewer bytes than q-saddle and 7.9× fewer than qgm (seed 1,
217 s: 44.0 / 70.5 / 70.0 / 69.5%). At equal compute q-saddle matches qgm (±0.5 points) with half
the gossip rounds and bytes; at equal rounds it leads: qgm's averaged model at its step 200 scored
63.6 / 65.4%.

One ``torchrun --standalone`` job (offline, CPU, one thread per rank) trains the configurations
(``algorithm[@codec]``) one after another with ``examples/train.py``'s ``run``, each preceded by the
equivalent ``train.py`` command line. Then this prints a table (test accuracy of the averaged model on
all 10,000 test images, mean and minimum accuracy of the ranks' own models on the first 500, consensus
distance, MiB sent per rank, wall time) and writes ``<out>/plot.png``, ``<out>/summary.txt`` and
``<out>/summary.json``. Flags after ``--`` go to every ``train.py`` run unchanged.
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

# Per data set: the demo's defaults (every one can be overridden by its flag).
PRESETS: dict[str, dict[str, Any]] = {
    "fashion-mnist": {
        "nproc": 8,
        "alpha": 0.01,
        "configs": ["dsgd", "qgm", "q-saddle", "q-saddle@int8"],
        "epochs": 1.0,
        "steps": 0,
        "grad_evals": 400,
        "batch_size": 16,
        "model": "cnn",
        "width": 16,
        "lr": 0.05,
        "schedule": "cosine",
        "eval_every": 50,
        "eval_samples": 500,
        "train_eval_samples": 500,
    },
    "digits": {
        "nproc": 4,
        "alpha": 0.01,
        "configs": ["dsgd", "qgm", "q-saddle", "q-saddle@int8"],
        "epochs": 10.0,
        "steps": 0,
        "grad_evals": 0,
        "batch_size": 32,
        "model": "cnn",
        "width": 32,
        "lr": 0.05,
        "schedule": "constant",
        "eval_every": 0,
        "eval_samples": 0,
        "train_eval_samples": 0,
    },
}


def _train_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("saddle_examples.train", HERE / "train.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def split_config(config: str) -> tuple[str, str]:
    """``algorithm[@codec]`` → ``(algorithm, codec)``, the codec ``"none"`` when absent.

    Raises:
        ValueError: no algorithm before ``@``, or an empty codec after it.
    """
    algorithm, at, codec = config.partition("@")
    if not algorithm or (at and not codec):
        raise ValueError(f"configuration {config!r} is not algorithm[@codec] (e.g. q-saddle@int8)")
    return algorithm, codec or "none"


def run_dir(out: Path, config: str) -> Path:
    """Where one configuration's run writes (``q-saddle@int8`` → ``<out>/q-saddle_int8``)."""
    return out / config.replace("@", "_").replace(":", "")


def evaluations_per_step(algorithm: str) -> int:
    """Gradient evaluations one step of ``algorithm`` takes per rank: 2 with SAM, 1 without.

    Raises:
        ValueError: a cross-gradient algorithm (ngm, n-saddle: one more per neighbour); give --steps.
    """
    import saddle_torch as st
    from saddle_torch.optim.ngm import CrossGradients
    from saddle_torch.optim.sam import Sam

    phases = st.ALGORITHMS[algorithm].phases
    if CrossGradients in phases:
        raise ValueError(
            f"{algorithm} evaluates cross-gradients on its neighbours' models: an equal gradient "
            "budget depends on the topology; give --steps instead of --grad-evals"
        )
    return 2 if Sam in phases else 1


def steps_of(config: str, args: argparse.Namespace) -> int:
    """Steps of one configuration: ``--steps``, or ``--grad-evals`` divided by its evaluations per step."""
    if args.steps:
        return args.steps
    if args.grad_evals:
        return args.grad_evals // evaluations_per_step(split_config(config)[0])
    return 0  # all of --epochs


def train_flags(config: str, args: argparse.Namespace, extra: list[str]) -> list[str]:
    """The ``examples/train.py`` flags of one configuration (``extra`` last, so it overrides)."""
    algorithm, codec = split_config(config)
    flags = {
        "--dataset": args.dataset,
        "--alpha": args.alpha,
        "--algorithm": algorithm,
        "--compression": codec,
        "--epochs": args.epochs,
        "--max-steps": steps_of(config, args),
        "--batch-size": args.batch_size,
        "--lr": args.lr,
        "--model": args.model,
        "--width": args.width,
        "--seed": args.seed,
        "--schedule": args.schedule,
        "--eval-every": args.eval_every,
        "--eval-samples": args.eval_samples,
        "--train-eval-samples": args.train_eval_samples,
        "--out": run_dir(Path(args.out), config),
    }
    argv: list[str] = []
    for flag, value in flags.items():
        argv += [flag, f"{value:g}" if isinstance(value, float) else str(value)]
    return argv + extra


def launch(args: argparse.Namespace, extra: list[str]) -> dict[str, dict[str, Any]]:
    """Train every configuration in one ``torchrun`` job; returns ``{configuration: log.json}``.

    One job instead of one per configuration: the ranks import torch and decode the data set once
    (about 15 s per configuration for 8 ranks on 2 cores).

    Raises:
        subprocess.CalledProcessError: a training run failed.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jobs = out / "jobs.json"
    jobs.write_text(json.dumps({c: train_flags(c, args, extra) for c in args.configs}, indent=1))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"]
    cmd += [str(Path(__file__).resolve()), "--worker", str(jobs)]
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return {c: json.loads((run_dir(out, c) / "log.json").read_text()) for c in args.configs}


def worker(jobs: Path) -> None:
    """One rank of the demo's job: ``train.run`` for every configuration in ``jobs``, one after another."""
    import torch.distributed as dist

    import saddle_torch as st

    train = _train_module()
    nproc = os.environ.get("WORLD_SIZE", "1")
    for config, flags in json.loads(jobs.read_text()).items():
        if os.environ.get("RANK", "0") == "0":
            line = " ".join(
                ["torchrun --standalone", f"--nproc_per_node={nproc}", "examples/train.py", *flags]
            )
            print(f"\n=== {config}: {line}", flush=True)
        train.run(flags)
        # A fresh gossip context for the next one (round counters, CHOCO state, codec seeds), so that
        # every run is the one its printed train.py command line gives.
        st.shutdown()
    if dist.is_initialized():
        dist.destroy_process_group()


def table(logs: dict[str, dict[str, Any]]) -> str:
    """The final results of every run, one row per configuration."""
    width = max(13, *(len(c) for c in logs))
    head = (
        f"{'configuration':<{width}} {'steps':>5} {'grad evals':>10} {'avg-model acc':>13} "
        f"{'mean rank acc':>13} {'min rank acc':>12} {'consensus':>10} {'MiB/rank':>9} {'wall s':>7}"
    )
    lines = [head, "-" * len(head)]
    for config, log in logs.items():
        f, last = log["final"], log["records"][-1]
        lines.append(
            f"{config:<{width}} {last['step']:>5} {last.get('grad_evals', 0):>10} "
            f"{100 * f['test_acc_avg_model']:>12.2f}% "
            f"{100 * f['test_acc_mean_rank']:>12.2f}% "
            f"{100 * f['test_acc_min_rank']:>11.2f}% {f['consensus_distance']:>10.2e} "
            f"{f['mib_sent_per_rank']:>9.1f} {f['wall_time_s']:>7.1f}"
        )
    return "\n".join(lines)


def compression_notes(logs: dict[str, dict[str, Any]]) -> list[str]:
    """For every compressed configuration whose exact counterpart ran: bytes saved, accuracy cost."""
    notes = []
    for config, log in logs.items():
        algorithm, codec = split_config(config)
        exact = logs.get(algorithm)
        if codec == "none" or exact is None:
            continue
        f, e = log["final"], exact["final"]
        ratio = e["mib_sent_per_rank"] / max(f["mib_sent_per_rank"], 1e-12)
        delta = 100 * (f["test_acc_avg_model"] - e["test_acc_avg_model"])
        notes.append(
            f"{config} sent {ratio:.2f}× fewer bytes than {algorithm}, {delta:+.2f} points of accuracy"
        )
    return notes


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The demo's own flags, with the chosen data set's preset filling every flag not given.

    Raises:
        SystemExit: invalid flags.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", choices=tuple(PRESETS), default="fashion-mnist")
    parser.add_argument("--nproc", type=int, help="ranks (default: 8 for fashion-mnist, 4 for digits)")
    parser.add_argument(
        "--configs",
        "--algorithms",
        nargs="+",
        help="algorithm[@codec] for each run (default: dsgd qgm q-saddle q-saddle@int8)",
    )
    parser.add_argument("--alpha", type=float, help="Dirichlet concentration (default 0.01)")
    parser.add_argument("--epochs", type=float, help="passes over the training set, summed over ranks")
    parser.add_argument(
        "--grad-evals",
        type=int,
        help="gradient evaluations per rank for every run (like for like: a SAM step takes two, so "
        "dsgd and qgm take twice the steps of q-saddle); the lr schedule spans each run's steps",
    )
    parser.add_argument(
        "--steps",
        type=int,
        help="the same number of steps for every run instead of --grad-evals (0: all of --epochs)",
    )
    parser.add_argument("--model", choices=("mlp", "cnn"), help="the model (mlp: hidden width --width)")
    parser.add_argument("--batch-size", type=int, help="per rank")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--width", type=int, help="mlp: hidden units; cnn: channels (compute ∝ width²)")
    parser.add_argument("--schedule", choices=("constant", "cosine"), help="learning-rate schedule")
    parser.add_argument("--eval-every", type=int, help="steps between evaluations (0: once per epoch)")
    parser.add_argument("--eval-samples", type=int, help="test samples scored during training (0: all)")
    parser.add_argument(
        "--train-eval-samples",
        type=int,
        help="training samples per rank scored at each evaluation (0: the whole shard, which with the cnn "
        "cost more than the training itself)",
    )
    parser.add_argument("--seed", type=int, default=0, help="model init, data split and shuffling")
    parser.add_argument("--out", default="runs/demo")
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for config in args.configs:
        try:
            split_config(config)
            steps_of(config, args)
        except (ValueError, KeyError) as e:
            parser.error(str(e))
    return args


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["--worker"]:
        worker(Path(argv[1]))
        return
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parse_args(argv[: argv.index("--")] if "--" in argv else argv)

    start = time.perf_counter()
    logs = launch(args, extra)
    elapsed = time.perf_counter() - start
    first = next(iter(logs.values()))
    out = Path(args.out)
    _train_module().plot_runs(
        {c: log["records"] for c, log in logs.items()}, out / "plot.png", first["title"], x="grad_evals"
    )
    steps = f"{first['total_steps']} steps ({first['total_steps'] / first['steps_per_epoch']:.2g} epochs)"
    budget = f"{args.grad_evals} gradient evaluations per rank" if args.grad_evals and not args.steps else ""
    epochs = budget or steps
    heading = (
        f"{first['title']}, {epochs}, batch {args.batch_size} per rank, lr {args.lr:g} {args.schedule}, "
        f"seed {args.seed}"
    )
    text = "\n".join([heading, "", table(logs), "", *compression_notes(logs)]).rstrip()
    (out / "summary.txt").write_text(text + "\n")
    summary = {
        "title": first["title"],
        "settings": vars(args),
        "extra_flags": extra,
        "total_time_s": elapsed,
        "runs": {c: log["final"] for c, log in logs.items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{text}")
    print(f"\nplot: {out / 'plot.png'}; logs: {out}/<configuration>/log.json; total {elapsed:.0f} s")


if __name__ == "__main__":
    main()
