"""Elastic gossip training on scikit-learn's digits: kill a rank, watch the others carry on.

    python -m saddle_torch.run --nproc 8 examples/elastic.py                 # then kill -9 a worker
    python -m saddle_torch.run --nproc 8 examples/elastic.py --kill 3@100    # rank 3 kills itself
    python -m saddle_torch.run --nproc 8 --restarts 1 examples/elastic.py --kill 3@100   # ... and rejoins

Each rank trains an MLP on its own shard of the digits (1,437 training images split over the ranks at
launch; ``--data fashion-mnist``: 60,000 images, 10,000 test images) with q-saddle on a ring. ``--kill
R@S`` makes rank R SIGKILL itself at step S, ``--stop R@S`` SIGSTOP itself (something else must SIGCONT
it: it is then fenced and exits). Under ``--restarts`` a new process replaces a dead rank: it joins at a
step boundary, receives a neighbour's model and optimizer state, trains on the dead rank's shard from
the step the job is at. At the end the survivors average their models exactly and rank 0 prints the test
accuracy; ``--out DIR`` writes ``result.json`` (rank 0) and ``rank<R>.json`` (every survivor) for tests.
``--step-log DIR`` writes one line per step and process (``steps<ID>.tsv``: wall time, step, group size,
step seconds, whether the step was skipped to line up) for bench/chaos.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

import saddle_torch as st


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        choices=["digits", "fashion-mnist"],
        default="digits",
        help="digits (scikit-learn, 360 test images) or fashion-mnist (Debian's dataset-fashion-mnist, "
        "10,000 test images: resolves differences well below a point)",
    )
    p.add_argument("--data-dir", default=None, help="where the Fashion-MNIST idx files are")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument(
        "--optimizer",
        choices=["sgd", "adamw"],
        default="sgd",
        help="the optimizer DistributedOptimizer wraps (adamw: QG-Adam under qgm/q-saddle; try --lr 1e-3)",
    )
    p.add_argument(
        "--algorithm", default="q-saddle", help="DistributedOptimizer's algorithm (e.g. allreduce)"
    )
    p.add_argument(
        "--ddp-hook",
        action="store_true",
        help="the DDP port instead: DistributedDataParallel with saddle_torch.hooks.gossip_hook, plain SGD",
    )
    p.add_argument("--topology", default="ring")
    p.add_argument("--compression", default=None, help="e.g. int8")
    p.add_argument(
        "--timeout", type=float, default=10.0, help="seconds before a silent neighbour is given up"
    )
    p.add_argument("--seed", type=int, default=0, help="the train/test split and the initial model")
    p.add_argument("--sample-seed", type=int, default=None, help="the minibatch draws (default: --seed)")
    p.add_argument(
        "--kill",
        action="append",
        default=[],
        metavar="RANK@STEP",
        help="SIGKILL RANK at STEP (STEP 'start': before the optimizer is set up; 'wrap': after "
        "broadcast_parameters, while the others wrap the model; 'init': before saddle_torch.init(), "
        "while the job forms)",
    )
    p.add_argument(
        "--stop",
        action="append",
        default=[],
        metavar="RANK@STEP",
        help="SIGSTOP RANK at STEP (STEP 'init': before saddle_torch.init())",
    )
    p.add_argument("--step-seconds", type=float, default=0.0, help="sleep per step (a demo you can watch)")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument(
        "--step-log",
        type=Path,
        default=None,
        metavar="DIR",
        help="write DIR/steps<ID>.tsv, one line per step of this process (ID: its launch rank or fresh "
        "id): wall time (time.time()), step, group size after the step, seconds in the step, 1 if the "
        "step was skipped to line up after a membership change (flushed at once, for bench/chaos.py)",
    )
    return p.parse_args(argv)


START = -1  # RANK@start: before broadcast_parameters, while the others set up
INIT = -2  # RANK@init: before saddle_torch.init(), while the others form the job's group
WRAP = -3  # RANK@wrap: after broadcast_parameters, while the others build DDP or the optimizer


def _at(specs: list[str], rank: int) -> int | None:
    for spec in specs:
        r, s = spec.split("@")
        if int(r) == rank:
            return {"start": START, "init": INIT, "wrap": WRAP}.get(s) or int(s)
    return None


def load_digits(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Standardised digits, 80/20 train/test split (the same on every rank)."""
    from sklearn.datasets import load_digits as sk_digits

    x, y = sk_digits(return_X_y=True)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    xs, ys = torch.tensor(x, dtype=torch.float32), torch.tensor(y)
    return xs[order[:cut]], ys[order[:cut]], xs[order[cut:]], ys[order[cut:]]


def load_fashion_mnist(data_dir: str | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Fashion-MNIST's train and test sets, flattened to 784 features (examples/datasets.py)."""
    spec = importlib.util.spec_from_file_location(
        "_elastic_datasets", Path(__file__).with_name("datasets.py")
    )
    assert spec is not None and spec.loader is not None
    datasets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(datasets)
    train, test, _, _ = datasets.load_fashion_mnist(data_dir or datasets.DEFAULT_DIRS["fashion-mnist"])
    x, y = train.tensors
    x_test, y_test = test.tensors
    return x.flatten(1), y, x_test.flatten(1), y_test


def make_optimizer(name: str, params: Any, lr: float) -> torch.optim.Optimizer:
    """The local optimizer: plain SGD, or AdamW (QG-Adam under ``qgm``/``q-saddle``)."""
    return torch.optim.AdamW(params, lr=lr) if name == "adamw" else torch.optim.SGD(params, lr=lr)


def main(argv: list[str] | None = None) -> None:
    """Train, surviving failures; print and write the averaged model's test accuracy."""
    args = parse_args(argv)
    # Data before init: a joiner is admitted ready to train.
    x, y, x_test, y_test = (
        load_digits(args.seed) if args.data == "digits" else load_fashion_mnist(args.data_dir)
    )
    launch_rank = int(os.environ.get("RANK", "0"))
    if _at(args.kill, launch_rank) == INIT:
        os.kill(os.getpid(), signal.SIGKILL)
    if _at(args.stop, launch_rank) == INIT:
        if args.out is not None:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / f"pid{launch_rank}").write_text(str(os.getpid()))  # for whoever sends SIGCONT
        os.kill(os.getpid(), signal.SIGSTOP)
    ctx = st.init(
        topology=args.topology,
        timeout=timedelta(seconds=args.timeout),
        compression=args.compression,
        elastic=True,
    )
    me = ctx.elastic.original_rank  # a joining process has a fresh id (8, 9, ... for 8 ranks)
    world = int(os.environ["WORLD_SIZE"])  # ranks at launch
    # Fixed at launch; a restart takes over the dead rank's shard, a process added by --join shares one.
    shard = torch.arange(len(x))[ctx.elastic.data_rank % world :: world]
    kill_at, stop_at = _at(args.kill, me), _at(args.stop, me)
    if kill_at == START:
        os.kill(os.getpid(), signal.SIGKILL)
    torch.manual_seed(args.seed)
    model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 10))
    st.broadcast_parameters(model.state_dict(), root_rank=0)  # a joiner: nothing (its state comes next)
    if kill_at == WRAP:
        os.kill(os.getpid(), signal.SIGKILL)
    if args.ddp_hook:  # the DDP port: the hook survives a dead neighbour by itself (no joiners)
        # DDP + the gossip hook; a rank lost while DDP sets up is survived too (docs/port_ddp.md)
        net: nn.Module = st.hooks.distributed_data_parallel(model)
        opt = make_optimizer(args.optimizer, model.parameters(), args.lr)
        first = 0
    else:
        net = model
        opt = st.DistributedOptimizer(
            make_optimizer(args.optimizer, model.parameters(), args.lr), model, algorithm=args.algorithm
        )
        first = opt.saddle.step  # 0, or the step the job was at when this process joined
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"pid{me}").write_text(str(os.getpid()))  # for whoever sends SIGCONT
    if me == 0:
        print(
            f"elastic: {st.size()} ranks, pids in the launcher's process tree; rank {me} pid {os.getpid()}",
            flush=True,
        )
    sample_seed = args.seed if args.sample_seed is None else args.sample_seed
    gen = torch.Generator().manual_seed(sample_seed * 1000 + me)
    slowest, started, first_loss = 0.0, time.monotonic(), None
    step_log = None
    if args.step_log is not None:
        args.step_log.mkdir(parents=True, exist_ok=True)
        step_log = (args.step_log / f"steps{me}.tsv").open("a", buffering=1)  # a line per step, flushed
    for step in range(first, args.steps):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        if step == stop_at:
            os.kill(os.getpid(), signal.SIGSTOP)
        idx = shard[torch.randint(len(shard), (args.batch,), generator=gen)]

        def closure(idx: torch.Tensor = idx) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            return loss

        skipped = ctx.elastic.behind > 0  # this step only lines up with the others (no gossip)
        t0 = time.monotonic()
        if args.ddp_hook:
            loss = closure()
            opt.step()
        else:
            loss = opt.step(closure)
        took = time.monotonic() - t0
        first_loss = float(loss.detach()) if first_loss is None else first_loss
        slowest = max(slowest, took)
        if step_log is not None:
            step_log.write(f"{time.time():.3f}\t{step}\t{st.size()}\t{took:.4f}\t{int(skipped)}\n")
        if args.step_seconds:
            time.sleep(args.step_seconds)
        if st.rank() == 0 and (step + 1) % 50 == 0:
            print(f"step {step + 1}: loss {float(loss.detach()):.3f}, {st.size()} ranks", flush=True)
    with torch.no_grad():
        flat = torch.cat([p.reshape(-1) for p in model.parameters()])
        mean = flat.clone()
        dist.all_reduce(mean)
        mean /= st.size()
        distance = float((flat - mean).norm())
        torch.nn.utils.vector_to_parameters(mean, model.parameters())
        acc = float((model(x_test).argmax(1) == y_test).float().mean()) * 100
    history = [
        {"epoch": a.epoch, "members": a.members, "departed": a.departed, "steps": a.steps}
        for a in ctx.elastic.history
    ]
    mine = {
        "rank": me,
        "slowest_step_seconds": slowest,
        "seconds": time.monotonic() - started,
        "distance_to_mean": distance,
        "first_step": first,
        "first_loss": first_loss,
        "replaces": ctx.elastic.replaces,
        "history": history,
    }
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"rank{me}.json").write_text(json.dumps(mine))
    if st.rank() == 0:
        result = {"accuracy": acc, "members": ctx.elastic.members, "history": history}
        print(f"averaged model of {st.size()} ranks: test accuracy {acc:.2f}%", flush=True)
        if args.out is not None:
            (args.out / "result.json").write_text(json.dumps(result))
    if step_log is not None:
        step_log.close()
    st.shutdown()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1:])
