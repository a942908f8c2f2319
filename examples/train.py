r"""Decentralized training on a non-IID (Dirichlet or shard) split: every rank gossips with its neighbours.

    torchrun --standalone --nproc_per_node=4 examples/train.py --dataset digits --alpha 0.1 \
        --algorithm q-saddle --epochs 20
    torchrun --standalone --nproc_per_node=4 examples/train.py --dataset fashion-mnist --algorithm dsgd
    python examples/train.py --dataset digits            # a world of one

Rank 0 writes ``log.json``, ``log.csv``, ``plot.png`` and ``model.pt`` (the averaged model) to ``--out``,
and shows progress as a tqdm bar on a terminal, as one plain line per evaluation in a log (``--progress``).
A driver can call :func:`run` with a list of flags on every rank instead.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib.util
import json
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F  # noqa: N812 - the usual name
from torch.utils.data import BatchSampler, DataLoader, TensorDataset

import saddle_torch as st
from saddle_torch.data import DirichletPartition, Partition, PartitionSampler, ShardPartition, dataset_labels
from saddle_torch.gossip import current

QGM_ALGORITHMS = ("qgm", "q-saddle")  # momentum is the QGM β, the wrapped SGD runs without momentum
# Fixed seeds, not --seed: every seed and algorithm sees the same training subset, the same samples for
# the sharpness measures and the same power-iteration start.
SUBSET_SEED = 1_000_003
SHARPNESS_SEED = 2_000_003
VAL_SEED = 3_000_003  # the validation split (--val-size): the same for every run's seed
HESSIAN_SEED = 3_000_017


def sibling(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` by path, so it works under torchrun, python and importlib alike."""
    key = f"saddle_examples.{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


datasets = sibling("datasets")
models = sibling("models")


# --- command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The flags of :func:`run`."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--dataset", choices=datasets.DATASETS, default="digits")
    a("--data-dir", default=None, help="where the data set's files are (default depends on --dataset)")
    a("--download", action="store_true", help="cifar10: download into --data-dir when missing")
    a("--model", choices=models.MODELS, default="cnn")
    a("--width", type=int, default=32, help="cnn: channels of the first convolution; mlp: hidden units")
    a("--algorithm", choices=list(st.ALGORITHMS), default="q-saddle")
    a("--topology", default="ring", help="passed to saddle_torch.init (ring, torus, exponential, ...)")
    a("--partition", choices=("dirichlet", "shards"), default="dirichlet")
    a("--alpha", type=float, default=0.1, help="Dirichlet concentration (small: more skewed)")
    a("--shards-per-rank", type=int, default=2, help="--partition shards: shards per rank")
    a(
        "--train-subset",
        type=int,
        default=0,
        help="keep a fixed class-stratified subset of N training samples before partitioning (0: all); "
        "the same for every --seed",
    )
    a("--epochs", type=float, default=10, help="passes over the training set, summed over ranks")
    a("--max-steps", type=int, default=0, help="stop after this many steps (0: no limit)")
    a("--batch-size", type=int, default=32, help="per rank")
    a("--lr", type=float, default=0.05)
    a(
        "--schedule",
        choices=("constant", "cosine", "step"),
        default="cosine",
        help="learning-rate schedule (step: ×0.1 at 50%% and again at 75%% of the steps)",
    )
    a("--momentum", type=float, default=0.9, help="local Nesterov momentum; the QGM β for qgm/q-saddle")
    a("--weight-decay", type=float, default=5e-4)
    a("--rho", type=float, default=0.05, help="SAM radius (SAM algorithms)")
    a("--order", choices=("awc", "atc"), default="atc")
    a(
        "--cross-sam",
        choices=("on", "off"),
        default="on",
        help="n-saddle: the cross-gradients are sharpness-aware too (off: plain cross-gradients)",
    )
    a(
        "--compression",
        default="none",
        help="gossip codec with CHOCO: none, fp16, bf16, int8, qsgd:4, topk:0.12, sign",
    )
    a(
        "--gamma",
        type=float,
        default=0.0,
        help="gossip step γ (0: auto, 1 without compression, tuned with it)",
    )
    a(
        "--optimizer",
        choices=["sgd", "adam", "adamw"],
        default="sgd",
        help="the wrapped optimizer (--lr is its lr)",
    )
    a(
        "--qg-adam",
        choices=("normalized", "scaled"),
        default="normalized",
        help="qgm/q-saddle with adam/adamw: QG-Adam's moment feed (normalized: the QGM paper's; "
        "scaled: invariant to the loss scale)",
    )
    a(
        "--qg-adam-lr",
        choices=("adam", "qgm"),
        default="adam",
        help="qgm/q-saddle with adam/adamw: what --lr means (adam: AdamW's step size; qgm: the QGM code's, "
        "whose first steps are up to 10x larger)",
    )
    a("--seed", type=int, default=0, help="model init, partition and shuffling")
    a("--eval-every", type=int, default=0, help="evaluate every N steps (0: once per epoch)")
    a(
        "--eval-samples",
        type=int,
        default=0,
        help="score on the first N test samples (0: all); the averaged model's final score uses all of them",
    )
    a(
        "--val-size",
        type=int,
        default=0,
        help="hold out this many training samples (stratified, the same for every seed) and score the "
        "averaged model on them at every evaluation (val_acc_avg_model): choose hyper-parameters on "
        "these, not on the test set. With --train-subset they are drawn from the samples outside the "
        "subset (the training data stay the same); else they are removed from the training data",
    )
    a(
        "--train-eval-samples",
        type=int,
        default=0,
        help="training accuracy at every evaluation: score the first N samples of each rank's shard "
        "(0: all of it)",
    )
    a(
        "--sharpness-samples",
        type=int,
        default=0,
        help="final sharpness measures (SAM sharpness, top Hessian eigenvalue) of the averaged model on a "
        "fixed subset of this many training samples in total (0: skip; bench/study.py uses 2048)",
    )
    a("--sharpness-rho", type=float, default=0.05, help="radius ρ_s of the final SAM sharpness")
    a("--hessian-iters", type=int, default=20, help="power iterations for the top Hessian eigenvalue")
    a("--out", default=None, help="output directory (default runs/<time>-<dataset>-<algorithm>)")
    a("--checkpoint", action="store_true", help="write <out>/ckpt/<rank>.pt after every epoch")
    a("--resume", default=None, metavar="DIR", help="continue the run in DIR from its checkpoints")
    a("--threads", type=int, default=1, help="intra-op threads per rank")
    a(
        "--device",
        default="cpu",
        help="cpu, or cuda: each rank trains on cuda:<LOCAL_RANK mod GPUs>; gossip stays on Gloo, staged "
        "through host memory",
    )
    a(
        "--progress",
        choices=("auto", "bar", "lines", "none"),
        default="auto",
        help="rank 0's progress: a tqdm bar, one plain line per evaluation, or nothing (auto: the bar when "
        "stdout and stderr are terminals, lines otherwise)",
    )
    a("--no-progress", action="store_true", help="the same as --progress none")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags.

    Raises:
        SystemExit: invalid flags (argparse's usage message).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    checks = [
        (args.epochs > 0, "--epochs must be positive"),
        (args.max_steps >= 0, "--max-steps must be ≥ 0"),
        (args.batch_size >= 1, "--batch-size must be ≥ 1"),
        (args.lr > 0, "--lr must be positive"),
        (0 <= args.momentum < 1, "--momentum must be in [0, 1)"),
        (args.weight_decay >= 0, "--weight-decay must be ≥ 0"),
        (args.rho >= 0, "--rho must be ≥ 0"),
        (args.alpha > 0, "--alpha must be positive"),
        (args.shards_per_rank >= 1, "--shards-per-rank must be ≥ 1"),
        (args.eval_every >= 0 and args.eval_samples >= 0, "--eval-every/--eval-samples must be ≥ 0"),
        (args.threads >= 1, "--threads must be ≥ 1"),
        (0 <= args.gamma <= 1, "--gamma must be in [0, 1]"),
        (args.device in ("cpu", "cuda"), f"--device must be cpu or cuda, got {args.device!r}"),
        (args.train_subset >= 0, "--train-subset must be ≥ 0"),
        (args.val_size >= 0, "--val-size must be ≥ 0"),
        (args.train_eval_samples >= 0, "--train-eval-samples must be ≥ 0"),
        (args.sharpness_samples >= 0, "--sharpness-samples must be ≥ 0"),
        (args.sharpness_rho > 0, "--sharpness-rho must be positive"),
        (args.hessian_iters >= 1, "--hessian-iters must be ≥ 1"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    return args


# --- pieces ----------------------------------------------------------------------------------------
def rank_device(name: str) -> torch.device:
    """``cpu``, or this rank's GPU: ``cuda:<LOCAL_RANK mod device count>`` (made the current device).

    Raises:
        RuntimeError: ``cuda`` asked for where torch sees no CUDA device.
    """
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch sees no CUDA device (a CPU build of torch, or no GPU)")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


@functools.lru_cache(maxsize=2)
def load_data(name: str, data_dir: str | None, download: bool) -> Any:
    """``datasets.load``, once per process (the tensors are only read, never written).

    A driver that calls :func:`run` for several configurations in one job (``examples/demo.py``) then
    reads and decodes the files once per rank instead of once per run.
    """
    return datasets.load(name, data_dir, download)


def init_gossip(topology: str) -> None:
    """``saddle_torch.init`` on the first call; later calls in the same job switch the topology."""
    if st.is_initialized():
        st.set_topology(topology)
    else:
        st.init(topology=topology)


def make_partition(args: argparse.Namespace, labels: torch.Tensor, n: int) -> Partition:
    """The same non-IID split on every rank (it depends only on the labels, ``n`` and the seed)."""
    if args.partition == "shards":
        return ShardPartition(labels, n, args.shards_per_rank, seed=args.seed)
    return DirichletPartition(labels, n, args.alpha, seed=args.seed)


def make_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """SGD wrapped by ``DistributedOptimizer``; ``--momentum`` is QGM's β or SGD's Nesterov momentum."""
    qgm = args.algorithm in QGM_ALGORITHMS
    if args.optimizer == "sgd":
        momentum = 0.0 if qgm else args.momentum
        inner: torch.optim.Optimizer = torch.optim.SGD(
            model.parameters(),
            lr=args.lr,
            momentum=momentum,
            nesterov=momentum > 0,
            weight_decay=args.weight_decay,
        )
    else:  # QG-Adam under qgm/q-saddle, local Adam(W) otherwise
        cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
        inner = cls(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    compression = st.compression.resolve(args.compression)
    gamma = "auto" if args.gamma == 0 else args.gamma  # auto: 1 exact, tuned for a codec on this graph
    return st.DistributedOptimizer(
        inner,
        model,
        algorithm=args.algorithm,
        rho=args.rho,
        order=args.order,
        beta=args.momentum if qgm else 0.9,
        gamma=gamma,
        compression=compression if compression is not None else st.Compression.none,
        qg_adam=args.qg_adam,
        qg_adam_lr=args.qg_adam_lr,
        cross_sam=getattr(args, "cross_sam", "on") == "on",  # finetune.py has no --cross-sam
    )


def make_closure(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    calls: list[int] | None = None,
) -> Callable[[], torch.Tensor]:
    """The closure of one step: zero the gradients, cross-entropy on ``(x, y)``, backward, return the loss.

    ``calls[0]`` (when given) counts the gradient evaluations the optimizer asks for: one per step for
    dsgd and qgm, two for the SAM algorithms, more with cross-gradients.
    """

    def closure() -> torch.Tensor:
        if calls is not None:
            calls[0] += 1
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def progress_mode(args: argparse.Namespace) -> str:
    """``"bar"``, ``"lines"`` or ``"none"``: what ``--progress`` (and ``--no-progress``) ask for.

    ``auto`` draws tqdm's bar only when both stdout and stderr are terminals; in a log file or a CI
    console its carriage-return updates would be one line per step, so it prints a line per evaluation.
    """
    if args.no_progress or args.progress == "none":
        return "none"
    if args.progress != "auto":
        return args.progress
    return "bar" if sys.stdout.isatty() and sys.stderr.isatty() else "lines"


def run_label(args: argparse.Namespace) -> str:
    """The algorithm, with ``@codec`` when the gossip is compressed (``q-saddle@int8``)."""
    return args.algorithm if args.compression == "none" else f"{args.algorithm}@{args.compression}"


def progress_line(label: str, rec: dict[str, Any], total: int, seconds: float) -> str:
    """One plain progress line for an evaluation record (the non-terminal form of the bar)."""
    loss = "   -  " if rec["train_loss"] is None else f"{rec['train_loss']:6.3f}"
    return (
        f"{label} step {rec['step']:>{len(str(total))}}/{total} epoch {rec['epoch']:.2f} loss {loss} "
        f"acc {100 * rec['test_acc_avg_model']:5.1f}% (averaged model), "
        f"{100 * rec['test_acc_mean_rank']:5.1f}% (ranks, min {100 * rec['test_acc_min_rank']:5.1f}%) "
        f"consensus {rec['consensus_distance']:.2e} sent {rec['mib_sent_per_rank']:.1f} MiB/rank "
        f"{seconds:.0f} s"
    )


def learning_rate(args: argparse.Namespace, step: int, total: int) -> float:
    """The learning rate of ``step``.

    ``cosine`` decays to 0 over ``total`` steps; ``step`` multiplies ``--lr`` by 0.1 from step
    ``total/2`` on and by 0.01 from ``3·total/4`` on; ``constant`` keeps ``--lr``.
    """
    if args.schedule == "constant":
        return args.lr
    if args.schedule == "step":
        drops = int(2 * step >= total) + int(4 * step >= 3 * total)  # integer test: no rounding at 50%/75%
        return args.lr * 0.1**drops
    return 0.5 * args.lr * (1 + math.cos(math.pi * step / max(total, 1)))


def stratified_subset(labels: torch.Tensor, size: int, *, seed: int = SUBSET_SEED) -> torch.Tensor:
    """Sorted indices of ``size`` samples that keep every class's share of ``labels``.

    Class ``c`` gets ``floor(size · n_c / N)`` samples, plus one for the classes with the largest
    remainders (ties to the smaller class id) until the total is ``size``; within a class the samples
    are a random draw of a generator seeded with ``seed`` alone, so the subset does not depend on the
    run's seed.

    Raises:
        ValueError: ``size`` not in ``1..len(labels)``.
    """
    total = len(labels)
    if not 1 <= size <= total:
        raise ValueError(f"a subset of {size} samples of {total}: it must have 1..{total}")
    labels = torch.as_tensor(labels).long()
    classes, counts = torch.unique(labels, return_counts=True)
    exact = [size * int(c) / total for c in counts]
    quota = [int(math.floor(q)) for q in exact]
    by_remainder = sorted(range(len(quota)), key=lambda k: (-(exact[k] - quota[k]), k))
    for k in by_remainder[: size - sum(quota)]:
        quota[k] += 1
    g = torch.Generator().manual_seed(seed)
    picked = []
    for cls, count, q in zip(classes.tolist(), counts.tolist(), quota, strict=True):
        members = torch.nonzero(labels == cls).flatten()
        picked.append(members[torch.randperm(count, generator=g)[:q]])
    return torch.sort(torch.cat(picked)).values


def split_train(
    labels: torch.Tensor, *, train_subset: int = 0, val_size: int = 0
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Indices of the training samples and of the validation split (``None`` without ``val_size``).

    The training samples are :func:`stratified_subset` ``(labels, train_subset)`` (all of them for 0),
    whether or not there is a validation split. The validation split is a stratified draw (seed
    ``VAL_SEED``) of ``val_size`` samples from those outside the training samples: with a subset, the
    rest of the data set; without one, the training set, which then loses them.

    Raises:
        ValueError: the split asks for more samples than there are.
    """
    labels = torch.as_tensor(labels).long()
    everything = torch.arange(len(labels))
    train = stratified_subset(labels, train_subset) if train_subset else everything
    if not val_size:
        return train, None
    pool = everything[~torch.isin(everything, train)] if train_subset else everything
    if val_size > (len(pool) if train_subset else len(pool) - 1):
        raise ValueError(
            f"--val-size {val_size}: only {len(pool)} training samples are available for it"
            + (" outside --train-subset" if train_subset else " (and some must remain to train on)")
        )
    val = pool[stratified_subset(labels[pool], val_size, seed=VAL_SEED)]
    if not train_subset:
        train = everything[~torch.isin(everything, val)]
    return train, val


def subset(data: TensorDataset, indices: torch.Tensor | Sequence[int]) -> TensorDataset:
    """The samples ``indices`` of ``data`` as a new ``TensorDataset``."""
    index = torch.as_tensor(indices, dtype=torch.long)
    return TensorDataset(*(t[index] for t in data.tensors))


class BatchStream:
    """Endless batches of one rank's part: reshuffles every pass and remembers where it is.

    A rank with fewer samples than ``batch_size`` uses all of them in every batch.
    """

    def __init__(self, dataset: TensorDataset, sampler: PartitionSampler, batch_size: int) -> None:
        """Create the stream.

        Raises:
            ValueError: the rank owns no samples.
        """
        if len(sampler) == 0:
            raise ValueError("this rank's part of the training set is empty")
        self.sampler = sampler
        # A batch sampler over the partition's sampler: TensorDataset indexes a whole batch at once. Full
        # batches only (a pass's remainder comes back reshuffled in a later pass): a last batch of one or
        # two samples would give a very noisy step.
        drop_last = len(sampler) >= batch_size
        self.loader = DataLoader(
            dataset, sampler=BatchSampler(sampler, batch_size, drop_last=drop_last), batch_size=None
        )
        self.epoch, self.position = 0, 0
        self._it: Iterator[Any] | None = None

    def seek(self, epoch: int, position: int) -> None:
        """Continue at batch ``position`` of pass ``epoch`` (as saved in a checkpoint)."""
        self.epoch, self.position = epoch, 0
        self._start()
        for _ in range(position):
            next(self)

    def _start(self) -> None:
        self.sampler.set_epoch(self.epoch)
        self._it = iter(self.loader)

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._it is None:
            self._start()
        try:
            batch = next(self._it)
        except StopIteration:
            self.epoch, self.position = self.epoch + 1, 0
            self._start()
            batch = next(self._it)
        self.position += 1
        return batch


@torch.no_grad()
def test_counts(model: nn.Module, data: TensorDataset, batch_size: int = 512) -> torch.Tensor:
    """``[correct, summed loss, samples]`` of ``model`` on ``data`` (float64)."""
    was_training = model.training
    model.eval()
    correct = loss = 0.0
    x_all, y_all = data.tensors
    device = next(model.parameters()).device
    for i in range(0, len(y_all), batch_size):
        out = model(x_all[i : i + batch_size].to(device))
        y = y_all[i : i + batch_size].to(device)
        correct += float((out.argmax(1) == y).sum())
        loss += float(F.cross_entropy(out, y, reduction="sum"))
    model.train(was_training)
    return torch.tensor([correct, loss, float(len(y_all))], dtype=torch.float64)


@torch.no_grad()
def average_into(target: nn.Module, model: nn.Module) -> None:
    """Set ``target`` to the average over ranks of ``model`` (exact all-reduce; collective)."""
    group, n = current().group, st.size()
    own = model.state_dict()
    for name, t in target.state_dict().items():
        t.copy_(own[name])
        if t.is_floating_point():
            dist.all_reduce(t, group=group)
            t.div_(n)


def evaluate(
    model: nn.Module,
    avg_model: nn.Module,
    test: TensorDataset,
    bytes_base: float,
    rank_test: TensorDataset | None = None,
    *,
    rank_train: TensorDataset | None = None,
    val: TensorDataset | None = None,
) -> dict[str, Any]:
    """Test accuracy of the averaged model and of every rank's own model, consensus and traffic.

    Collective. The averaged model is scored on ``test``, a 1/n slice per rank (summed); every rank
    scores its own model on all of ``rank_test`` (default ``test``), which costs n times as much.

    With ``rank_train`` (this rank's training shard, or a part of it), also the training accuracy:
    ``train_acc_avg_model`` / ``train_loss_avg_model`` of the averaged model on the union of the ranks'
    shards (each rank scores its own, the sums are all-reduced) and ``train_acc_local_mean`` /
    ``train_acc_local_min`` of every rank's own model on its own shard.

    With ``val`` (the validation split), also ``val_acc_avg_model`` / ``val_loss_avg_model`` of the
    averaged model on it (a 1/n slice per rank, summed).
    """
    group, rank, n = current().group, st.rank(), st.size()
    rank_test = test if rank_test is None else rank_test
    average_into(avg_model, model)
    x, y = test.tensors
    part = test_counts(avg_model, TensorDataset(x[rank::n], y[rank::n]))
    dist.all_reduce(part, group=group)
    own = test_counts(model, rank_test)
    gathered = [torch.zeros_like(own) for _ in range(n)]
    dist.all_gather(gathered, own, group=group)
    sent = torch.tensor([st.stats()["bytes_sent"] - bytes_base], dtype=torch.float64)
    all_sent = [torch.zeros_like(sent) for _ in range(n)]
    dist.all_gather(all_sent, sent, group=group)
    rank_acc = [float(g[0] / g[2]) for g in gathered]
    train_metrics: dict[str, Any] = {}
    if rank_train is not None:
        train_metrics = train_counts(model, avg_model, rank_train)
    if val is not None:
        vx, vy = val.tensors
        val_part = test_counts(avg_model, TensorDataset(vx[rank::n], vy[rank::n]))
        dist.all_reduce(val_part, group=group)
        train_metrics["val_acc_avg_model"] = float(val_part[0] / val_part[2])
        train_metrics["val_loss_avg_model"] = float(val_part[1] / val_part[2])
    return {
        "test_acc_avg_model": float(part[0] / part[2]),
        "test_loss_avg_model": float(part[1] / part[2]),
        "test_acc_ranks": rank_acc,
        "test_acc_mean_rank": float(np.mean(rank_acc)),
        "test_acc_min_rank": float(np.min(rank_acc)),
        "test_loss_mean_rank": float(np.mean([float(g[1] / g[2]) for g in gathered])),
        "consensus_distance": st.consensus_distance(model),
        "bytes_sent_rank0": float(all_sent[0]),
        "mib_sent_per_rank": float(torch.cat(all_sent).mean()) / 2**20,
        **train_metrics,
    }


def train_counts(model: nn.Module, avg_model: nn.Module, shard: TensorDataset) -> dict[str, Any]:
    """Training accuracy of the averaged model (union of shards) and of each rank's model on its shard.

    Collective; ``avg_model`` must already hold the average (:func:`average_into`).
    """
    group, n = current().group, st.size()
    union = test_counts(avg_model, shard)
    dist.all_reduce(union, group=group)
    own = test_counts(model, shard)
    gathered = [torch.zeros_like(own) for _ in range(n)]
    dist.all_gather(gathered, own, group=group)
    local = [float(g[0] / g[2]) for g in gathered]
    return {
        "train_acc_avg_model": float(union[0] / union[2]),
        "train_loss_avg_model": float(union[1] / union[2]),
        "train_acc_local_mean": float(np.mean(local)),
        "train_acc_local_min": float(np.min(local)),
        "train_samples": int(union[2]),
    }


# --- sharpness of the averaged model -----------------------------------------------------------------
def sharpness_indices(train_size: int, samples: int, *, seed: int = SHARPNESS_SEED) -> torch.Tensor:
    """The fixed training samples of the sharpness measures: ``min(samples, train_size)`` indices.

    A draw of a generator seeded with ``seed`` alone, sorted: the same on every rank, seed and algorithm.
    """
    g = torch.Generator().manual_seed(seed)
    return torch.sort(torch.randperm(train_size, generator=g)[: min(samples, train_size)]).values


def _loss_and_grad(
    model: nn.Module, data: TensorDataset, batch_size: int = 512
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Summed cross-entropy of ``model`` on ``data`` and its gradient (float64 loss; no collective)."""
    params = [p for p in model.parameters() if p.requires_grad]
    grads = [torch.zeros_like(p) for p in params]
    total = torch.zeros(1, dtype=torch.float64)
    device = params[0].device
    x_all, y_all = data.tensors
    for i in range(0, len(y_all), batch_size):
        loss = F.cross_entropy(
            model(x_all[i : i + batch_size].to(device)), y_all[i : i + batch_size].to(device), reduction="sum"
        )
        for acc, g in zip(grads, torch.autograd.grad(loss, params), strict=True):
            acc.add_(g)
        total += float(loss.detach())
    return total, grads


def _all_reduce_mean(tensors: list[torch.Tensor], count: float) -> list[torch.Tensor]:
    """Sum over ranks, divided by ``count`` (in place; collective)."""
    group = current().group
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, group=group)
    flat.div_(count)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start : start + t.numel()].view_as(t))
        start += t.numel()
    return out


def union_loss(model: nn.Module, part: TensorDataset) -> float:
    """Mean cross-entropy of ``model`` on the union of the ranks' ``part`` (collective)."""
    group = current().group
    counts = test_counts(model, part)
    dist.all_reduce(counts, group=group)
    return float(counts[1] / counts[2])


def sharpness_sam(model: nn.Module, part: TensorDataset, rho: float) -> dict[str, float]:
    """SAM sharpness ``L(w + ρ g/‖g‖) − L(w)`` of ``model`` (the same on every rank; collective).

    ``L`` and ``g`` are the mean loss and its gradient on the union of the ranks' ``part``; the norm is
    taken over all parameters together. The model is left as it was (eval mode while measuring).

    Returns:
        ``sharpness_sam``, ``sharpness_loss`` (``L(w)``) and ``sharpness_grad_norm`` (``‖g‖``).
    """
    was_training = model.training
    model.eval()
    count = union_count(part)
    loss_sum, grads = _loss_and_grad(model, part)
    dist.all_reduce(loss_sum, group=current().group)
    grads = _all_reduce_mean(grads, count)
    loss = float(loss_sum) / count
    norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
    params = [p for p in model.parameters() if p.requires_grad]
    steps = [rho * g / (float(norm) + 1e-12) for g in grads]
    try:
        with torch.no_grad():
            for p, e in zip(params, steps, strict=True):
                p.add_(e)
        perturbed = union_loss(model, part)
    finally:
        with torch.no_grad():
            for p, e in zip(params, steps, strict=True):
                p.sub_(e)
        model.train(was_training)
    return {"sharpness_sam": perturbed - loss, "sharpness_loss": loss, "sharpness_grad_norm": float(norm)}


def hessian_top_eig(
    model: nn.Module, part: TensorDataset, iters: int, *, seed: int = HESSIAN_SEED, batch_size: int = 512
) -> dict[str, Any]:
    """Top Hessian eigenvalue of the union loss of ``model`` by power iteration (collective).

    The loss is the mean cross-entropy on the union of the ranks' ``part``; each iteration all-reduces
    the ranks' Hessian-vector products (double backward). The start vector is Gaussian from a generator
    seeded with ``seed`` alone. Power iteration converges to the eigenvalue of largest magnitude,
    which at a trained model is the top (positive) one.

    Returns:
        ``hessian_top_eig`` (the last Rayleigh quotient vᵀHv, ‖v‖ = 1) and ``hessian_eig_trace`` (every
        iteration's quotient, to judge convergence).
    """
    was_training = model.training
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    count = union_count(part)
    g = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=g, dtype=p.dtype).to(device) for p in params]
    norm = torch.sqrt(sum((t.double() ** 2).sum() for t in v))
    v = [t / float(norm) for t in v]
    x_all, y_all = part.tensors
    trace: list[float] = []
    try:
        for _ in range(iters):
            hv = [torch.zeros_like(p) for p in params]
            for i in range(0, len(y_all), batch_size):
                loss = F.cross_entropy(
                    model(x_all[i : i + batch_size].to(device)),
                    y_all[i : i + batch_size].to(device),
                    reduction="sum",
                )
                grads = torch.autograd.grad(loss, params, create_graph=True)
                dot = sum((gr * t).sum() for gr, t in zip(grads, v, strict=True))
                for acc, h in zip(hv, torch.autograd.grad(dot, params), strict=True):
                    acc.add_(h)
            hv = _all_reduce_mean(hv, count)
            trace.append(float(sum((h.double() * t.double()).sum() for h, t in zip(hv, v, strict=True))))
            norm = torch.sqrt(sum((h.double() ** 2).sum() for h in hv))
            if float(norm) == 0.0:
                break
            v = [h / float(norm) for h in hv]
    finally:
        model.train(was_training)
    return {"hessian_top_eig": trace[-1], "hessian_eig_trace": trace}


def sharpness(model: nn.Module, part: TensorDataset, args: argparse.Namespace) -> dict[str, Any]:
    """``sharpness_sam`` and ``hessian_top_eig`` of ``model`` with the flags' ρ_s and iterations."""
    started = time.perf_counter()
    out = {
        **sharpness_sam(model, part, args.sharpness_rho),
        **hessian_top_eig(model, part, args.hessian_iters),
    }
    out["sharpness_samples"] = union_count(part)
    out["sharpness_time_s"] = time.perf_counter() - started
    return out


def union_count(part: TensorDataset) -> int:
    """Samples in the union of the ranks' ``part`` (collective)."""
    count = torch.tensor([float(len(part.tensors[1]))], dtype=torch.float64)
    dist.all_reduce(count, group=current().group)
    return int(count)


# --- outputs ---------------------------------------------------------------------------------------
def write_csv(records: list[dict[str, Any]], path: Path) -> None:
    """One row per evaluation; the per-rank accuracies as columns ``acc_rank<k>``."""
    if not records:
        return
    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k != "test_acc_ranks"}
        row.update({f"acc_rank{k}": a for k, a in enumerate(r["test_acc_ranks"])})
        rows.append(row)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_runs(runs: dict[str, list[dict[str, Any]]], path: Path, title: str, x: str = "step") -> None:
    """Test accuracy (averaged model, mean per-rank) and consensus distance, one line per run.

    ``x``: ``"step"``, or ``"grad_evals"`` (gradient evaluations per rank: like for like between SAM
    algorithms, which take two per step, and those that take one).
    """
    xlabel = {"step": "step", "grad_evals": "gradient evaluations per rank"}[x]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_cons) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (label, records) in enumerate(runs.items()):
        color = f"C{i}"
        steps = [r.get(x, r["step"]) for r in records]
        ax_acc.plot(
            steps,
            [100 * r["test_acc_avg_model"] for r in records],
            color=color,
            label=f"{label}: averaged model",
        )
        ax_acc.plot(
            steps,
            [100 * r["test_acc_mean_rank"] for r in records],
            color=color,
            ls="--",
            label=f"{label}: mean of ranks",
        )
        pos = [
            (s, r["consensus_distance"])
            for s, r in zip(steps, records, strict=True)
            if r["consensus_distance"] > 0
        ]
        if pos:
            ax_cons.plot(*zip(*pos, strict=True), color=color, label=label)
    ax_acc.set(xlabel=xlabel, ylabel="test accuracy (%)", title="test accuracy")
    ax_acc.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    ax_cons.set(xlabel=xlabel, ylabel="(1/n) Σ‖x_i − x̄‖²", title="consensus distance", yscale="log")
    ax_cons.grid(alpha=0.3, which="both")
    if ax_cons.lines:
        ax_cons.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(log: dict[str, Any], out: Path, final: bool) -> None:
    """Rank 0: ``log.json`` and ``log.csv`` (every evaluation), ``plot.png`` at the end."""
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / "log.json.tmp"
    tmp.write_text(json.dumps(log, indent=1))
    tmp.replace(out / "log.json")
    write_csv(log["records"], out / "log.csv")
    if final:
        plot_runs({log["config"]["algorithm"]: log["records"]}, out / "plot.png", log["title"])


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out:
        return Path(args.out)
    if args.resume:
        return Path(args.resume)
    stamp = [time.strftime("%Y%m%d-%H%M%S")]
    dist.broadcast_object_list(stamp, src=0, group=current().group)  # one directory for all ranks
    return Path("runs") / f"{stamp[0]}-{args.dataset}-{args.algorithm}"


_RESUME_KEYS = (
    "dataset",
    "model",
    "algorithm",
    "partition",
    "alpha",
    "shards_per_rank",
    "seed",
    "batch_size",
    "width",
    "val_size",
)
_RESUME_ADDED = {"val_size": 0}  # keys newer than some checkpoints: their value when a checkpoint lacks them


# --- training --------------------------------------------------------------------------------------
def run(args: argparse.Namespace | Sequence[str] | None = None) -> dict[str, Any]:
    """Train on every rank (collective) and return the log (the same on every rank).

    Args:
        args: parsed flags, a list of flags, or ``None`` for ``sys.argv``.

    Returns:
        The log: ``config``, ``records`` (one per evaluation), ``final`` (the last record plus times and
        the output directory), ``partition`` and ``title``.

    Raises:
        ValueError: bad options, an unusable partition, or a checkpoint from another configuration.
        FileNotFoundError: data set files or checkpoints are missing.
    """
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    torch.set_num_threads(args.threads)
    init_gossip(args.topology)
    rank, n = st.rank(), st.size()
    wall_start = time.perf_counter()

    train, test, num_classes, input_shape = load_data(args.dataset, args.data_dir, args.download)
    full_test = test
    if args.eval_samples:
        test = TensorDataset(*(t[: args.eval_samples] for t in test.tensors))
    val = None
    if args.train_subset or args.val_size:
        train_indices, val_indices = split_train(
            dataset_labels(train), train_subset=args.train_subset, val_size=args.val_size
        )
        val = None if val_indices is None else subset(train, val_indices)
        train = subset(train, train_indices)
    partition = make_partition(args, dataset_labels(train), n)
    stream = BatchStream(train, partition.sampler(rank, seed=args.seed), args.batch_size)
    shard_indices = partition.indices(rank)
    if args.train_eval_samples:
        shard_indices = shard_indices[: args.train_eval_samples]
    rank_train = subset(train, shard_indices)
    steps_per_epoch = math.ceil(len(train) / (n * args.batch_size))
    total = max(1, round(args.epochs * steps_per_epoch))
    if args.max_steps:
        total = min(total, args.max_steps)
    eval_every = args.eval_every or steps_per_epoch

    torch.manual_seed(args.seed)
    random.seed(args.seed)
    np.random.seed(args.seed)
    device = rank_device(args.device)
    model = models.build(args.model, input_shape, num_classes, width=args.width).to(device)
    avg_model = models.build(args.model, input_shape, num_classes, width=args.width).to(device)
    st.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = make_optimizer(model, args)
    bytes_base = st.stats()["bytes_sent"]

    out = _out_dir(args)
    ckpt = out / "ckpt" / "{rank}.pt"
    records: list[dict[str, Any]] = []
    step, train_time = 0, 0.0
    if args.resume:
        extra = st.load_checkpoint(Path(args.resume) / "ckpt" / "{rank}.pt", model, opt)
        for key in _RESUME_KEYS:
            if extra["config"].get(key, _RESUME_ADDED.get(key)) != getattr(args, key):
                raise ValueError(
                    f"--resume {args.resume}: the checkpoint has "
                    f"{key}={extra['config'].get(key, _RESUME_ADDED.get(key))!r}, "
                    f"this run {key}={getattr(args, key)!r}"
                )
        step, train_time, records = extra["step"], extra["train_time"], extra["records"]
        bytes_base -= extra["bytes_sent"]
        stream.seek(extra["data_epoch"], extra["data_position"])

    gamma_used = opt.saddle.gamma  # "auto" as resolved when the optimizer was wrapped
    config = {
        **vars(args),
        "world_size": n,
        "out": str(out),
        "gamma_used": gamma_used,
        "train_size": len(train),
        "train_subset_seed": SUBSET_SEED if args.train_subset else None,
        "val_seed": VAL_SEED if args.val_size else None,
        "train_subset_class_counts": (
            torch.bincount(dataset_labels(train), minlength=num_classes).tolist()
            if args.train_subset
            else None
        ),
    }
    title = (
        f"{args.dataset} / {args.model}, {args.partition}"
        + (f" α={args.alpha:g}" if args.partition == "dirichlet" else f" {args.shards_per_rank}/rank")
        + f", {n} ranks on {current().topology.name}"
    )
    log: dict[str, Any] = {
        "title": title,
        "config": config,
        "partition": {
            "summary": partition.summary(),
            "sizes": partition.sizes(),
            "histogram": partition.histogram().tolist(),
        },
        "steps_per_epoch": steps_per_epoch,
        "total_steps": total,
        "records": records,
    }
    if rank == 0:
        print(partition.summary(), flush=True)

    from tqdm import tqdm

    label = run_label(args)
    progress = progress_mode(args) if rank == 0 else "none"
    bar = tqdm(total=total, initial=step, disable=progress != "bar", desc=label, dynamic_ncols=True)
    losses: list[float] = []

    def record(final: bool = False) -> None:
        # Every rank took the same steps since the last record, so all or none have losses.
        train_loss = None
        if losses:
            mean_loss = torch.tensor([float(np.mean(losses))], dtype=torch.float64)
            dist.all_reduce(mean_loss, group=current().group)
            train_loss = float(mean_loss) / n
        rec = {
            "step": step,
            "epoch": step / steps_per_epoch,
            "lr": learning_rate(args, min(step, total - 1), total),
            "train_loss": train_loss,
            **evaluate(
                model,
                avg_model,
                full_test if final else test,
                bytes_base,
                rank_test=test,
                rank_train=rank_train,
                val=val,
            ),
            "test_samples_avg_model": len((full_test if final else test).tensors[1]),
            "test_samples_ranks": len(test.tensors[1]),
            "train_time_s": train_time,
            "grad_evals": step * per_step,  # per rank, since step 0 (a resumed run counts its past too)
        }
        records.append(rec)
        losses.clear()
        bar.set_postfix(acc=f"{rec['test_acc_avg_model']:.3f}", refresh=False)
        if progress == "lines":
            print(progress_line(label, rec, total, time.perf_counter() - wall_start), flush=True)
        if rank == 0:
            write_outputs(log, out, final=False)

    calls, per_step = [0], 0  # gradient evaluations per step (the closure counts them)
    if step == 0:
        record()
    while step < total:
        t0 = time.perf_counter()
        x, y = next(stream)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        for group in opt.param_groups:
            group["lr"] = learning_rate(args, step, total)

        loss = opt.step(make_closure(model, opt, x, y, calls)).item()
        per_step = per_step or calls[0]  # measured on the first step this process takes
        if not math.isfinite(loss):
            raise FloatingPointError(f"rank {rank}: loss is {loss} at step {step}; lower --lr")
        losses.append(loss)
        step += 1
        train_time += time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", acc=f"{records[-1]['test_acc_avg_model']:.3f}", refresh=False)
        if step % eval_every == 0 or step == total:
            record(final=step == total)
        if args.checkpoint and (step % steps_per_epoch == 0 or step == total):
            st.save_checkpoint(
                ckpt,
                model,
                opt,
                step=step,
                train_time=train_time,
                records=records,
                config=config,
                bytes_sent=st.stats()["bytes_sent"] - bytes_base,
                data_epoch=stream.epoch,
                data_position=stream.position,
            )
    bar.close()

    sharp: dict[str, Any] = {}
    if args.sharpness_samples:
        average_into(avg_model, model)  # already so after the last record, but not on a finished --resume
        part = sharpness_indices(len(train), args.sharpness_samples)[rank::n]
        sharp = sharpness(avg_model, subset(train, part), args)
    wall = time.perf_counter() - wall_start
    log["final"] = {**records[-1], **sharp, "wall_time_s": wall, "out": str(out)}
    if rank == 0:
        write_outputs(log, out, final=True)
        torch.save(
            {
                "arch": args.model,
                "width": args.width,
                "dataset": args.dataset,
                "num_classes": num_classes,
                "input_shape": list(input_shape),
                "state_dict": avg_model.state_dict(),
            },
            out / "model.pt",
        )
        f = log["final"]
        print(
            f"{label} on {title}: {step} steps, "
            f"averaged-model acc {100 * f['test_acc_avg_model']:.2f}%, "
            f"per-rank acc {100 * f['test_acc_mean_rank']:.2f}% (min {100 * f['test_acc_min_rank']:.2f}%), "
            + (f"val acc {100 * f['val_acc_avg_model']:.2f}%, " if "val_acc_avg_model" in f else "")
            + f"train acc {100 * f['train_acc_avg_model']:.2f}% (averaged model), "
            f"{100 * f['train_acc_local_mean']:.2f}% (own, min {100 * f['train_acc_local_min']:.2f}%), "
            + (
                f"sharpness SAM {f['sharpness_sam']:.3g}, λ_max {f['hessian_top_eig']:.3g}, "
                if "sharpness_sam" in f
                else ""
            )
            + f"consensus {f['consensus_distance']:.3g}, {f['mib_sent_per_rank']:.1f} MiB sent per rank, "
            f"{wall:.1f} s -> {out}",
            flush=True,
        )
    return log


def main() -> None:
    run()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
