r"""Where gossip wins: DDP (+ SAM, + compression hooks) against SADDLe gossip on an emulated cluster.

Every rank runs in its own network namespace, its link shaped with tc tbf
(:mod:`saddle_torch.testing.cluster`; needs root). One launch per link setting; in it every rank builds
every method's model and runs the methods back to back per iteration, as ``bench/step.py`` does, so
they share the machine's load. A step's time is the slowest rank's (all ranks' times are gathered on
the default Gloo group, outside the timed region, after a ``dist.barrier()``).

Bytes each rank sends per step: for DDP rows computed from the algorithm (Gloo's ring all-reduce
sends 2(n−1)/n × the reduced bytes per rank; fp16 halves them; PowerSGD all-reduces P and Q and the
tensors it leaves uncompressed), for gossip rows from the engine's counters (``bytes_sent``, payload
and headers). Every row also gets the bytes its interface really transmitted during the step (the
namespace's ``tx_bytes``: TCP/IP headers and ACKs included), as a check of both.

Time-to-accuracy (``--tta-budget``): the 5.8M-parameter MLP on a Dirichlet(α) split of
Fashion-MNIST at one link rate; each method trains alone for a wall-clock budget and the test accuracy
of the rank-averaged model (an exact all-reduce at evaluation time, the clock paused) is taken every
``--tta-eval-every`` seconds. The ranks agree on the clock through an all-reduce (MAX) started after
each step and read one step later.

    python bench/cluster.py --out runs/cluster                       # the defaults: ~35 min
    python bench/cluster.py --ranks 4 --rates 100mbit --models cnn --rows ddp-sam,qs-awc-ring \\
        --iters 2 --warmup 1 --tta-budget 0 --out /tmp/cluster_small

Writes ``results.json``, ``results.md`` and ``tta.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the checkout's saddle_torch, whatever is installed

import saddle_torch as st  # noqa: E402
from saddle_torch.testing import cluster as emu  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from step import ddp_sam_step  # noqa: E402 - the same DDP + SAM step as bench/step.py

FMNIST = "/usr/share/datasets/fashion-mnist"
TIMEOUT = timedelta(seconds=1800)
TOPOLOGIES = {"ring": "ring", "exp": "exponential", "ope": "one_peer_exponential"}
# int8 and topk: ~4× fewer bytes than fp32 (3.94×, 4.00×); q4 = qsgd:4, 7.76×; lr1/lr2: low-rank gossip
# (PowerGossip) of rank 1 and 2, per edge and parameter matrix.
CODECS = {"int8": "int8", "topk": "topk:0.125", "q4": "qsgd:4", "lr1": "lowrank:1", "lr2": "lowrank:2"}
DDP_ROWS = {
    "ddp-sam": "DDP + SAM (Gloo all-reduce)",
    "ddp-sam-fp16": "DDP + SAM + fp16_compress_hook",
    "ddp-sam-powersgd": "DDP + SAM + PowerSGD hook",
    "ddp": "DDP, 1 pass (Gloo all-reduce)",
    "ddp-gossip-hook": "DDP + gossip_hook, 1 pass",
    "ddp-saddle-backend": "DDP on the saddle backend, 1 pass",
}
GOSSIP_ROWS = [
    "qs-awc-ring",
    "qs-atc-ring",
    "qs-awc-exp",
    "qs-atc-exp",
    "qs-awc-ope",
    "qs-atc-ope",
    "qs-awc-ring-int8",
    "qs-awc-ring-topk",
    "qs-awc-ope-int8",
    "qs-awc-ope-q4",
    "qs-awc-ring-lr1",
    "qs-awc-ring-lr2",
    "qs-awc-ope-lr1",
    "qs-awc-ope-lr2",
]
ALL_ROWS = [*DDP_ROWS, *GOSSIP_ROWS]
TTA_ROWS = [
    "ddp-sam",
    "ddp-sam-fp16",
    "ddp-sam-powersgd",
    "ddp-gossip-hook",
    "qs-atc-ring",
    "qs-awc-ring",
    "qs-awc-ope",
    "qs-awc-ring-int8",
    "qs-awc-ring-topk",
    "qs-awc-ope-int8",
    "qs-awc-ope-q4",
]
BASELINE = "ddp-sam"
NOISY = ("The hostname of the client socket cannot be retrieved",)  # no reverse DNS in the namespaces


def _example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` by path."""
    key = f"saddle_examples.{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, ROOT / "examples" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


# --- rows -------------------------------------------------------------------------------------------
def parse_row(key: str) -> tuple[str, str, str | None]:
    """``qs-<awc|atc>-<ring|exp|ope>[-<int8|topk|q4|lr1|lr2>]`` as ``(order, topology, codec spec)``.

    Raises:
        ValueError: not a q-saddle row key.
    """
    parts = key.split("-")
    if parts[0] != "qs" or len(parts) not in (3, 4) or parts[1] not in ("awc", "atc"):
        raise ValueError(f"unknown row {key!r}")
    if parts[2] not in TOPOLOGIES or (len(parts) == 4 and parts[3] not in CODECS):
        raise ValueError(
            f"unknown row {key!r}: topology one of {list(TOPOLOGIES)}, codec one of {list(CODECS)}"
        )
    return parts[1], TOPOLOGIES[parts[2]], CODECS[parts[3]] if len(parts) == 4 else None


def row_label(key: str, powersgd_rank: int) -> str:
    """Human-readable name of a row."""
    if key == "ddp-sam-powersgd":
        return f"{DDP_ROWS[key]} (rank {powersgd_rank})"
    if key in DDP_ROWS:
        return DDP_ROWS[key]
    order, topo, codec = parse_row(key)
    return f"q-saddle {order}, {topo}" + (f", {codec}" if codec else "")


def check_rows(keys: list[str]) -> None:
    """Raise ``ValueError`` naming the first unknown row."""
    for key in keys:
        if key not in DDP_ROWS:
            parse_row(key)


# --- models -----------------------------------------------------------------------------------------
def build_model(name: str, *, cnn_width: int, seed: int = 0) -> nn.Module:
    """``mlp`` (784-2048-2048-10) or ``cnn`` (the study's SmallCNN), the same weights on every rank."""
    torch.manual_seed(seed)
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 2048),
            nn.ReLU(),
            nn.Linear(2048, 2048),
            nn.ReLU(),
            nn.Linear(2048, 10),
        )
    if name == "cnn":
        return _example("models").SmallCNN(1, 10, width=cnn_width)
    raise ValueError(f"unknown model {name!r}; choose mlp or cnn")


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def ring_allreduce_bytes(numel_bytes: float, n: int) -> float:
    """Bytes one rank sends in a ring all-reduce (reduce-scatter + all-gather) of ``numel_bytes``."""
    return 2 * (n - 1) / n * numel_bytes


def powersgd_elements(model: nn.Module, rank: int, min_compression_rate: float = 2) -> int:
    """Elements PowerSGD all-reduces per step: P and Q of the matrices it compresses, the rest as is.

    The same test as ``powerSGD_hook._should_compress`` on ``tensor.view(shape[0], -1)``.
    """
    total = 0
    for p in model.parameters():
        rows = p.shape[0]
        cols = p.numel() // rows
        r = min(rows, cols, rank)
        compressed = (rows + cols) * r
        total += compressed if compressed * min_compression_rate < rows * cols else p.numel()
    return total


def _noop() -> None:
    """Nothing to release."""


@dataclass
class Method:
    """One row: its step function, the rank's model, and where its byte count comes from."""

    key: str
    step: Callable[[torch.Tensor, torch.Tensor], None]
    model: nn.Module
    payload: Callable[[], float] | None = None  # cumulative gossip bytes sent (engine counters)
    computed_bytes: float | None = None  # bytes per step from the algorithm (DDP rows)
    keep: list[Any] = field(default_factory=list)  # objects that must live as long as the row
    close: Callable[[], None] = _noop  # releases the row's gossip context and group


class Rows:
    """Builds rows; every gossip row gets a fresh context on its own Gloo group, closed with the row.

    A context of its own makes the engine counters the row's alone, and closing it frees the engine's
    buffers when the row is dropped. The ``saddle`` group is made once (its context lives as long).
    """

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Rows:
        """Rows of a launch spec (the JSON the parent writes for its workers)."""
        return cls(
            spec["rows"],
            lr=spec["lr"],
            rho=spec["rho"],
            powersgd_rank=spec["powersgd_rank"],
            cnn_width=spec["cnn_width"],
            seed=spec.get("seed", 0),
        )

    def __init__(
        self, keys: list[str], *, lr: float, rho: float, powersgd_rank: int, cnn_width: int, seed: int = 0
    ) -> None:
        self.lr, self.rho, self.seed = lr, rho, seed
        self.powersgd_rank = powersgd_rank
        self.cnn_width = cnn_width
        self.n = dist.get_world_size()
        self.saddle_group = None
        if "ddp-saddle-backend" in keys:
            st.backend.configure(topology="ring")
            self.saddle_group = dist.new_group(backend="saddle", timeout=TIMEOUT)

    def _context(self, topology: str) -> tuple[st.GossipContext, Callable[[], None]]:
        group = dist.new_group(backend="gloo", timeout=TIMEOUT)
        ctx = st.GossipContext(group, st.topology.resolve(topology, self.n), TIMEOUT)

        def close() -> None:
            ctx.close()
            dist.destroy_process_group(group)

        return ctx, close

    def build(self, key: str, model_name: str) -> Method:
        """A fresh model and optimizer for row ``key`` (collective: every rank builds the same rows)."""
        model = build_model(model_name, cnn_width=self.cnn_width, seed=self.seed)
        if key in DDP_ROWS:
            return self._ddp(key, model)
        order, topology, codec = parse_row(key)
        ctx, close = self._context(topology)
        opt = st.DistributedOptimizer(
            torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.0),
            model,
            algorithm="q-saddle",
            order=order,
            rho=self.rho,
            compression=codec,
            ctx=ctx,
        )

        def step(x: torch.Tensor, y: torch.Tensor) -> None:
            def closure() -> torch.Tensor:
                opt.zero_grad()
                loss = _loss(model, x, y)
                loss.backward()
                return loss

            opt.step(closure)

        return Method(key, step, model, payload=lambda: ctx.stats()["bytes_sent"], keep=[opt], close=close)

    def _ddp(self, key: str, model: nn.Module) -> Method:
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        group = self.saddle_group if key == "ddp-saddle-backend" else None
        grad_bytes = 4.0 * sum(p.numel() for p in model.parameters())
        # PowerSGD's hook waits on all-reduces inside future callbacks, which run on Gloo's two worker
        # threads: with two buckets (the MLP's, by default) both threads block there and the job hangs
        # (seen at 8 ranks), and the buckets' collectives can be issued in a different order on each
        # rank. One bucket (an explicit cap applies to the first bucket too) keeps one ordered chain.
        cap = {"bucket_cap_mb": grad_bytes / 2**20 + 1} if key == "ddp-sam-powersgd" else {}
        ddp = nn.parallel.DistributedDataParallel(model, process_group=group, **cap)
        opt = torch.optim.SGD(ddp.parameters(), lr=self.lr, momentum=0.9)
        computed = ring_allreduce_bytes(grad_bytes, self.n)
        payload = None
        keep: list[Any] = [opt]
        close = _noop
        if key == "ddp-sam-fp16":
            ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)
            computed /= 2
        elif key == "ddp-sam-powersgd":
            state = powerSGD_hook.PowerSGDState(
                process_group=None, matrix_approximation_rank=self.powersgd_rank, start_powerSGD_iter=2
            )
            ddp.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
            computed = ring_allreduce_bytes(4.0 * powersgd_elements(model, self.powersgd_rank), self.n)
            keep.append(state)
        elif key == "ddp-gossip-hook":  # the default hook state, on a ring context of its own
            ctx, close = self._context("ring")
            ddp.register_comm_hook(st.hooks.GossipHookState(context=ctx), st.hooks.gossip_hook)
            payload, computed = (lambda: ctx.stats()["bytes_sent"]), None
        elif key == "ddp-saddle-backend":
            group_ = self.saddle_group
            payload, computed = (lambda: st.backend.gossip_stats(group_)["bytes_sent"]), None

        if key.startswith("ddp-sam"):

            def step(x: torch.Tensor, y: torch.Tensor) -> None:
                ddp_sam_step(ddp, opt, x, y, self.rho)

        else:

            def step(x: torch.Tensor, y: torch.Tensor) -> None:
                opt.zero_grad()
                _loss(ddp, x, y).backward()
                opt.step()

        return Method(
            key, step, model, payload=payload, computed_bytes=computed, keep=[ddp, *keep], close=close
        )


def _memory() -> str:
    """This rank's resident memory and the machine's available memory, for the progress lines."""
    rss = avail = 0
    with contextlib.suppress(OSError):
        rss = next(int(ln.split()[1]) for ln in open("/proc/self/status") if ln.startswith("VmRSS"))
        avail = next(int(ln.split()[1]) for ln in open("/proc/meminfo") if ln.startswith("MemAvailable"))
    return f"rank 0 RSS {rss / 2**20:.1f} GiB, machine available {avail / 2**20:.1f} GiB"


def _tx_bytes() -> int:
    """Bytes this rank's interface has transmitted (0 outside the emulated cluster)."""
    ifname = os.environ.get("GLOO_SOCKET_IFNAME", "")
    try:
        return int(Path(f"/sys/class/net/{ifname}/statistics/tx_bytes").read_text())
    except (OSError, ValueError):
        return 0


# --- worker: step times -----------------------------------------------------------------------------
def row_groups(rows: list[str], params: int, group_mb: float) -> list[list[str]]:
    """Split the rows into groups whose models fit ``group_mb`` per rank, the baseline in every group.

    A row of the MLP holds about 8 copies of the model per rank (parameters, gradients, DDP buckets or
    flat buffers, momentum, SAM's perturbation, gossip receive buffers): 14 MLP rows took 2.9 GiB per
    rank, too much for 8 ranks in 24 GiB. Groups run one after the other in the same launch; the
    baseline (DDP + SAM) runs in each, so every row is timed beside it.
    """
    per_row = 8 * 4 * params / 1e6
    size = max(2, int(group_mb // per_row))
    if len(rows) <= size:
        return [rows]
    rest = [r for r in rows if r != BASELINE]
    has_base = BASELINE in rows
    count = math.ceil(len(rest) / (size - has_base))
    chunks = [rest[i::count] for i in range(count)]  # interleaved: each group mixes DDP and gossip rows
    return [[BASELINE, *c] if has_base else c for c in chunks]


def worker_steps(spec: dict[str, Any]) -> None:
    """One launch: every model, every row, ``warmup + iters`` iterations; rank 0 writes the result."""
    st.init(topology="ring", timeout=TIMEOUT)
    rank = dist.get_rank()
    rows = Rows.from_spec(spec)
    out: dict[str, Any] = {}
    for model_name in spec["models"]:
        params = sum(p.numel() for p in build_model(model_name, cnn_width=spec["cnn_width"]).parameters())
        groups = row_groups(spec["rows"], params, spec["group_mb"])
        res: dict[str, Any] = {}
        for gi, keys in enumerate(groups):
            tag = f"{spec['setting']} {model_name}" + (
                f" group {gi + 1}/{len(groups)}" if len(groups) > 1 else ""
            )
            timed = _time_rows(rows, keys, model_name, spec, tag)
            base = timed.get(BASELINE, {}).get("median_s")
            for key, r in timed.items():
                r["group"] = gi
                r["baseline_in_group_s"] = base
                if key not in res:  # the baseline's own row: from the first group
                    res[key] = r
        out[model_name] = {"params": params, "groups": groups, "rows": {k: res[k] for k in spec["rows"]}}
        if rank == 0:
            _print_rows(spec["setting"], model_name, out[model_name]["rows"])
    if rank == 0:
        Path(spec["result"]).write_text(json.dumps(out, indent=1))
    st.shutdown()
    dist.destroy_process_group()


def _time_rows(
    rows: Rows, keys: list[str], model_name: str, spec: dict[str, Any], tag: str
) -> dict[str, Any]:
    """Build ``keys``, run them back to back for ``warmup + iters`` iterations, free them; the summaries."""
    rank, n = dist.get_rank(), dist.get_world_size()
    methods = {key: rows.build(key, model_name) for key in keys}
    g = torch.Generator().manual_seed(rank)
    # per row: per timed iteration, the n ranks' (seconds, payload bytes, wire bytes)
    samples: dict[str, list[list[list[float]]]] = {key: [] for key in methods}
    total = spec["warmup"] + spec["iters"]
    for it in range(total):
        t_it = time.perf_counter()
        x = torch.randn(spec["batch"], 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (spec["batch"],), generator=g)
        for key, m in methods.items():
            dist.barrier()
            tx0, b0 = _tx_bytes(), (m.payload() if m.payload else 0.0)
            t0 = time.perf_counter()
            m.step(x, y)
            dt = time.perf_counter() - t0
            tx1, b1 = _tx_bytes(), (m.payload() if m.payload else 0.0)
            mine = torch.tensor([dt, b1 - b0, tx1 - tx0], dtype=torch.float64)
            every = [torch.zeros_like(mine) for _ in range(n)]
            dist.all_gather(every, mine)
            if it >= spec["warmup"]:
                samples[key].append([t.tolist() for t in every])
        if rank == 0:
            kind = "warm-up" if it < spec["warmup"] else "timed"
            print(
                f"{tag}: iteration {it + 1}/{total} ({kind}) {time.perf_counter() - t_it:.1f} s; {_memory()}",
                flush=True,
            )
    summaries = {
        key: _summarise(key, m, samples[key], n, spec["powersgd_rank"]) for key, m in methods.items()
    }
    dist.barrier()
    for m in methods.values():
        m.close()
    del methods, m
    gc.collect()
    return summaries


def _summarise(
    key: str, m: Method, samples: list[list[list[float]]], n: int, powersgd_rank: int
) -> dict[str, Any]:
    steps = [max(r[0] for r in it) for it in samples]
    per_rank = [statistics.median(it[r][0] for it in samples) for r in range(n)]
    wire = statistics.mean(statistics.mean(it[r][2] for r in range(n)) for it in samples)
    if m.payload is not None:
        sent = statistics.mean(statistics.mean(it[r][1] for r in range(n)) for it in samples)
        source = "engine stats"
    else:
        sent, source = m.computed_bytes, "computed"
    return {
        "label": row_label(key, powersgd_rank),
        "median_s": statistics.median(steps),
        "steps_s": steps,
        "per_rank_median_s": per_rank,
        "bytes_per_step": sent,
        "bytes_source": source,
        "wire_tx_bytes_per_step": wire,
    }


def _ratio(r: dict[str, Any]) -> str:
    """Median step over the median step of DDP + SAM in the same group of rows."""
    base = r.get("baseline_in_group_s")
    return f"{r['median_s'] / base:.2f}" if base else "-"


def _print_rows(setting: str, model_name: str, rows: dict[str, Any]) -> None:
    for r in rows.values():
        ratio = _ratio(r)
        print(
            f"{setting} {model_name} | {r['label']} | {r['median_s']:.3f} s | ×{ratio} vs DDP+SAM | "
            f"{r['bytes_per_step'] / 1e6:.2f} MB/step ({r['bytes_source']}), "
            f"wire {r['wire_tx_bytes_per_step'] / 1e6:.2f} MB",
            flush=True,
        )


# --- worker: time to accuracy -----------------------------------------------------------------------
def worker_tta(spec: dict[str, Any]) -> None:
    """Train each row for a wall-clock budget on a Dirichlet split; record the averaged model's accuracy."""
    from saddle_torch.data import DirichletPartition

    st.init(topology="ring", timeout=TIMEOUT)
    rank, n = dist.get_rank(), dist.get_world_size()
    train, test, _, _ = _example("datasets").load_fashion_mnist(spec["data_dir"])
    train_x, train_y = train.tensors
    test_x, test_y = test.tensors
    seed = spec.get("seed", 0)  # the split, the sampling order and the starting model
    part = DirichletPartition(train_y, n=n, alpha=spec["alpha"], seed=seed, min_size=spec["batch"])
    sampler = part.sampler(rank, seed=seed)
    lo, hi = rank * len(test_y) // n, (rank + 1) * len(test_y) // n
    my_test = (test_x[lo:hi], test_y[lo:hi])
    rows = Rows.from_spec(spec)
    eval_model = build_model("mlp", cnn_width=spec["cnn_width"])
    book = dist.new_group(backend="gloo", timeout=TIMEOUT)  # the clock and the evaluation, apart from DDP's
    out: dict[str, Any] = {"partition_sizes": part.sizes(), "rows": {}}
    for key in spec["rows"]:
        m = rows.build(key, "mlp")
        curve, steps = _train_for(
            m, spec, sampler, (train_x, train_y), (my_test, len(test_y)), eval_model, book
        )
        counts = torch.tensor([steps], dtype=torch.float64)
        every = [torch.zeros_like(counts) for _ in range(n)]
        dist.all_gather(every, counts)
        out["rows"][key] = {
            "label": row_label(key, spec["powersgd_rank"]),
            "curve": curve,
            "steps_per_rank": [int(t.item()) for t in every],
        }
        if rank == 0:
            print(
                f"tta {key}: final accuracy {curve[-1][1]:.4f} at {curve[-1][0]:.1f} s, "
                f"{int(every[0].item())} steps on rank 0",
                flush=True,
            )
        dist.barrier()
        m.close()
        del m
        gc.collect()
    if rank == 0:
        Path(spec["result"]).write_text(json.dumps(out, indent=1))
    st.shutdown()
    dist.destroy_process_group()


def _batches(sampler: Any, batch: int) -> Any:
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        order = list(sampler)
        for i in range(0, len(order) - batch + 1, batch):
            yield torch.tensor(order[i : i + batch])
        epoch += 1


def _train_for(
    m: Method,
    spec: dict[str, Any],
    sampler: Any,
    train: tuple[torch.Tensor, torch.Tensor],
    test: tuple[tuple[torch.Tensor, torch.Tensor], int],
    eval_model: nn.Module,
    book: dist.ProcessGroup,
) -> tuple[list[list[float]], int]:
    """Train ``m`` for the wall-clock budget; returns ``[(seconds, accuracy)], steps``.

    After each step every rank starts an all-reduce (MAX) of its clock and step time and reads it one
    step later, so the ranks decide at the same step; the clock then is about the agreed clock plus one
    step. At an evaluation the exact clock is taken (a blocking all-reduce) and paused.
    """
    budget, every = spec["tta_budget"], spec["tta_eval_every"]
    train_x, train_y = train
    curve = [[0.0, _averaged_accuracy(m.model, eval_model, *test, book)]]
    next_eval = min(every, budget)
    paused = 0.0
    start = time.perf_counter()
    pending: tuple[Any, torch.Tensor] | None = None
    steps = 0
    for idx in _batches(sampler, spec["batch"]):
        t0 = time.perf_counter()
        m.step(train_x[idx], train_y[idx])
        steps += 1
        now = time.perf_counter()
        estimate, step_s = 0.0, 0.0
        if pending is not None:  # the previous step's all-reduce: the same values on every rank
            pending[0].wait()
            clock_then, step_s = pending[1].tolist()
            estimate = clock_then + step_s
        mine = torch.tensor([now - start - paused, now - t0], dtype=torch.float64)
        pending = (dist.all_reduce(mine, op=dist.ReduceOp.MAX, group=book, async_op=True), mine)
        if estimate < next_eval:
            continue
        pending[0].wait()
        pause = time.perf_counter()
        clock = torch.tensor([pause - start - paused], dtype=torch.float64)
        dist.all_reduce(clock, op=dist.ReduceOp.MAX, group=book)
        curve.append([float(clock.item()), _averaged_accuracy(m.model, eval_model, *test, book)])
        pending = None
        paused += time.perf_counter() - pause
        if curve[-1][0] >= budget - step_s / 2:  # the evaluation closest to the budget is the last
            return curve, steps
        while next_eval <= curve[-1][0] + step_s / 2:
            next_eval += every
        next_eval = min(next_eval, budget)
    raise AssertionError("unreachable")


def _averaged_accuracy(
    model: nn.Module,
    eval_model: nn.Module,
    my_test: tuple[torch.Tensor, torch.Tensor],
    test_size: int,
    group: dist.ProcessGroup,
) -> float:
    """Test accuracy of the exact average of the ranks' models (collective; each rank scores a slice)."""
    with torch.no_grad():
        flat = torch.nn.utils.parameters_to_vector([p.detach() for p in model.parameters()]).clone()
        dist.all_reduce(flat, group=group)
        flat /= dist.get_world_size()
        torch.nn.utils.vector_to_parameters(flat, eval_model.parameters())
        x, y = my_test
        correct = torch.zeros(1, dtype=torch.float64)
        for i in range(0, len(y), 1000):
            correct += (eval_model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum()
        dist.all_reduce(correct, group=group)
    return float(correct.item()) / test_size


# --- parent -----------------------------------------------------------------------------------------
@dataclass
class Setting:
    """One link setting: a rate for every rank, plus per-rank overrides (stragglers)."""

    text: str
    base: float | None
    overrides: dict[int, float | None]

    def rates(self, n: int) -> list[float | None]:
        """Every rank's rate in Mbit/s."""
        return [self.overrides.get(r, self.base) for r in range(n)]

    @property
    def label(self) -> str:
        """E.g. ``100mbit, rank 3 at 10mbit``."""
        parts = self.text.split("/")
        return parts[0] + "".join(f", rank {o.replace('=', ' at ')}" for o in parts[1:])

    @property
    def slug(self) -> str:
        """A file-name-safe name."""
        return self.text.replace("/", "_").replace("=", "-")


def parse_setting(text: str, n: int) -> Setting:
    """``100mbit`` or ``100mbit/3=10mbit`` (rank 3 at 10 Mbit/s; several ``/r=rate`` allowed).

    Raises:
        ValueError: a bad rate or a rank out of range.
    """
    base, *rest = text.split("/")
    overrides = {}
    for item in rest:
        rank, _, rate = item.partition("=")
        if not rank.isdigit() or not 0 <= int(rank) < n:
            raise ValueError(f"setting {text!r}: {item!r} is not <rank>=<rate> with a rank in [0, {n})")
        overrides[int(rank)] = emu.parse_rate(rate)
    return Setting(text, emu.parse_rate(base), overrides)


def _launch(
    args: argparse.Namespace, setting: Setting, mode: str, spec: dict[str, Any], suffix: str = ""
) -> dict[str, Any]:
    """Start the cluster of ``setting``, run the worker ``mode`` on every rank, return rank 0's result."""
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    name = f"{mode}_{setting.slug}{suffix}"
    spec = {**spec, "setting": setting.label, "result": str(raw / f"{name}.json")}
    spec_path = raw / f"{name}.spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    rates = setting.rates(args.ranks)

    def output(rank: int, line: str) -> None:
        if not any(s in line for s in NOISY):
            print(f"[rank {rank}] {line}", flush=True)

    t0 = time.monotonic()
    with emu.Cluster(args.ranks, rates_mbit=rates) as cluster:
        probes = {}
        slow = sorted(setting.overrides) or [0]
        for src in dict.fromkeys([0, *slow]):
            dst = (src + 1) % args.ranks
            probes[f"{src}->{dst}"] = cluster.measure_rate(src, dst, seconds=1.0)
        print(
            f"== {mode} | {setting.label} | {args.ranks} ranks | measured TCP goodput (Mbit/s): "
            + ", ".join(f"{k} {v:.1f}" for k, v in probes.items()),
            flush=True,
        )
        cluster.run(
            [sys.executable, str(Path(__file__).resolve()), "--worker", mode, "--spec", str(spec_path)],
            timeout=args.timeout,
            output=output,
        )
    result = json.loads(Path(spec["result"]).read_text())
    result["_meta"] = {"rates_mbit": rates, "goodput_mbit": probes, "launch_seconds": time.monotonic() - t0}
    print(f"== {mode} | {setting.label} | done in {time.monotonic() - t0:.0f} s", flush=True)
    return result


def _spec(args: argparse.Namespace, rows: list[str], models: list[str]) -> dict[str, Any]:
    return {
        "rows": rows,
        "models": models,
        "iters": args.iters,
        "warmup": args.warmup,
        "batch": args.batch,
        "lr": args.lr,
        "rho": args.rho,
        "powersgd_rank": args.powersgd_rank,
        "cnn_width": args.cnn_width,
        "group_mb": args.group_mb,
        "alpha": args.alpha,
        "data_dir": args.data_dir,
        "tta_budget": args.tta_budget,
        "tta_eval_every": args.tta_eval_every,
    }


def time_to(curve: list[list[float]], target: float) -> float | None:
    """Seconds at which ``curve`` first reaches ``target`` (linear between evaluations), or ``None``."""
    for (t0, a0), (t1, a1) in zip([[0.0, -1.0], *curve], curve, strict=False):
        if a1 >= target:
            return t1 if a0 < 0 or a1 == a0 else t0 + (target - a0) / (a1 - a0) * (t1 - t0)
    return None


def markdown(results: dict[str, Any], args: argparse.Namespace) -> str:
    """The tables of results.md."""
    n = args.ranks
    lines = [
        f"# Emulated cluster: {n} ranks, one network namespace each, tc tbf per link",
        "",
        f"Batch {args.batch} per rank, {args.iters} timed iterations after {args.warmup} warm-up; step = "
        "slowest rank; bytes per rank per step: DDP rows computed (ring all-reduce 2(n−1)/n × bytes), gossip "
        "rows from the engine's counters; wire = the interface's tx bytes (TCP/IP headers, ACKs included).",
    ]
    for setting, by_model in results["steps"].items():
        meta = by_model.get("_meta", {})
        goodput = ", ".join(f"{k} {v:.0f}" for k, v in meta.get("goodput_mbit", {}).items())
        for model_name, res in by_model.items():
            if model_name.startswith("_"):
                continue
            rows = res["rows"]
            lines += [
                "",
                f"## {setting}, {model_name} ({res['params']:,} parameters; goodput {goodput} Mbit/s)",
                "",
                "| row | median step (s) | / DDP+SAM | MB sent / rank / step | source | wire MB |",
                "|---|---:|---:|---:|---|---:|",
            ]
            for r in rows.values():
                ratio = _ratio(r)
                lines.append(
                    f"| {r['label']} | {r['median_s']:.3f} | {ratio} | {r['bytes_per_step'] / 1e6:.2f} | "
                    f"{r['bytes_source']} | {r['wire_tx_bytes_per_step'] / 1e6:.2f} |"
                )
            if "rank" in setting:
                lines += [
                    "",
                    f"Per-rank median step (s), {setting}, {model_name}:",
                    "",
                    "| row | " + " | ".join(f"r{i}" for i in range(n)) + " |",
                    "|---|" + "---:|" * n,
                ]
                for r in rows.values():
                    lines.append(
                        f"| {r['label']} | " + " | ".join(f"{t:.2f}" for t in r["per_rank_median_s"]) + " |"
                    )
    tta = results.get("tta")
    if tta:
        lines += tta_markdown(tta, args)
    return "\n".join(lines) + "\n"


def tta_summary(per_seed: dict[str, Any], target_row: str) -> dict[str, Any]:
    """Per row, over the seeds: steps, final accuracy and time to the target row's final accuracy.

    The target is the target row's final accuracy *at each seed*; ``ratio`` is a row's time to it over
    the target row's own time to it (median over seeds; ``None`` where a seed never reached it).
    """
    rows: dict[str, Any] = {}
    for seed, tta in per_seed.items():
        target = tta["rows"][target_row]["curve"][-1][1]
        own = time_to(tta["rows"][target_row]["curve"], target)
        for key, r in tta["rows"].items():
            reach = time_to(r["curve"], target)
            row = rows.setdefault(
                key, {"label": r["label"], "final": [], "time": [], "ratio": [], "steps": []}
            )
            row["final"].append(r["curve"][-1][1])
            row["time"].append(reach)
            row["ratio"].append(None if reach is None or not own else reach / own)
            row["steps"].append(r["steps_per_rank"][0])
            row.setdefault("targets", {})[seed] = target
    return rows


def _spread(values: list[float | None], fmt: str) -> str:
    """``median [min–max]`` of the values, or ``not reached (k/n)`` when some are ``None``."""
    got = sorted(v for v in values if v is not None)
    if len(got) < len(values):
        return f"not reached ({len(values) - len(got)}/{len(values)})"
    med = statistics.median(got)
    return format(med, fmt) if len(got) == 1 else f"{med:{fmt}} [{got[0]:{fmt}}–{got[-1]:{fmt}}]"


def tta_markdown(tta: dict[str, Any], args: argparse.Namespace) -> list[str]:
    """The time-to-accuracy table: medians and ranges over the seeds."""
    seeds = list(tta["seeds"])
    target_row = tta["target_row"]
    rows = tta_summary(tta["seeds"], target_row)
    label = rows[target_row]["label"]
    targets = ", ".join(f"{t:.4f}" for t in rows[target_row]["targets"].values())
    lines = [
        "",
        f"## Time to accuracy: MLP, {tta['setting']}, Dirichlet α = {args.alpha}, "
        f"{args.tta_budget:g} s per method, seeds {seeds}",
        "",
        f"Target: {label}'s final accuracy at each seed ({targets}). Accuracy of the exact average of "
        f"the ranks' models, every {args.tta_eval_every:g} s (clock paused); time to target interpolated "
        "between evaluations; median [min–max] over the seeds.",
        "",
        "| method | steps (rank 0) | final accuracy | time to target (s) | / target row's time |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in rows.values():
        lines.append(
            f"| {r['label']} | {_spread(r['steps'], '.0f')} | {_spread(r['final'], '.4f')} | "
            f"{_spread(r['time'], '.1f')} | {_spread(r['ratio'], '.2f')} |"
        )
    return lines


def plot(tta: dict[str, Any], path: Path) -> None:
    """Accuracy against wall seconds: one colour per method, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for s_i, per_seed in enumerate(tta["seeds"].values()):
        for k, r in enumerate(per_seed["rows"].values()):
            ts, accs = zip(*r["curve"], strict=True)
            ax.plot(
                ts,
                accs,
                marker="o",
                ms=2,
                lw=1,
                alpha=0.8,
                color=colours[k % len(colours)],
                label=r["label"] if s_i == 0 else None,
            )
    ax.set_xlabel("wall seconds (training only)")
    ax.set_ylabel("test accuracy, averaged model")
    ax.set_title(f"MLP 784-2048-2048-10, Fashion-MNIST, {tta['setting']}, seeds {list(tta['seeds'])}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=8)
    parser.add_argument(
        "--rates",
        default="1gbit,100mbit,100mbit/3=10mbit",
        help="link settings, comma-separated: a rate for all ranks, /<rank>=<rate> overrides one",
    )
    parser.add_argument("--models", default="mlp,cnn", help="models of the step-time part")
    parser.add_argument(
        "--straggler-models",
        default="cnn",
        help="models for settings with overrides (the MLP at a 10 Mbit/s straggler takes minutes per step)",
    )
    parser.add_argument("--rows", default=",".join(ALL_ROWS), help="rows of the step-time part")
    parser.add_argument("--iters", type=int, default=6, help="timed iterations")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed iterations first (PowerSGD starts at 2)"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--rho", type=float, default=0.05, help="SAM radius of the SAM rows")
    parser.add_argument("--powersgd-rank", type=int, default=2)
    parser.add_argument(
        "--group-mb",
        type=float,
        default=1200.0,
        help="memory per rank for one group of rows (about 8 × the model's fp32 bytes per row)",
    )
    parser.add_argument("--cnn-width", type=int, default=16, help="SmallCNN width (the study's: 16)")
    parser.add_argument(
        "--tta-budget", type=float, default=120.0, help="seconds per method; 0 skips the part"
    )
    parser.add_argument("--tta-rate", default="100mbit")
    parser.add_argument(
        "--seeds", default="0", help="seeds of the time-to-accuracy part (split, order, model)"
    )
    parser.add_argument(
        "--tta-target", default=BASELINE, help="row whose final accuracy is the target (default ddp-sam)"
    )
    parser.add_argument("--tta-rows", default=",".join(TTA_ROWS))
    parser.add_argument("--tta-eval-every", type=float, default=20.0)
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet α of the time-to-accuracy split")
    parser.add_argument("--data-dir", default=FMNIST)
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per launch")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "cluster")
    parser.add_argument("--worker", choices=("steps", "tta"), help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        torch.set_num_threads(1)
        spec = json.loads(args.spec.read_text())
        (worker_steps if args.worker == "steps" else worker_tta)(spec)
        return

    rows = [r for r in args.rows.split(",") if r]
    seeds = [int(x) for x in args.seeds.split(",") if x]
    tta_rows = [r for r in args.tta_rows.split(",") if r]
    check_rows(rows + tta_rows)
    if args.warmup < 2 and "ddp-sam-powersgd" in rows:
        parser.error(
            "--warmup must be ≥ 2 with ddp-sam-powersgd: PowerSGD all-reduces plainly until iteration 2"
        )
    models = [m for m in args.models.split(",") if m]
    settings = [parse_setting(s, args.ranks) for s in args.rates.split(",") if s]
    reason = emu.unavailable_reason()
    if reason is not None:
        sys.exit(f"bench/cluster.py needs the emulated cluster: {reason}")
    removed = emu.cleanup_stale()
    if removed:
        print(f"removed leftovers of dead runs: {removed}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    print(
        f"emulated cluster: {args.ranks} ranks on {os.cpu_count()} cores (1 thread each), settings "
        f"{[s.label for s in settings]}, models {models}, rows {rows}",
        flush=True,
    )
    results: dict[str, Any] = {"config": vars(args) | {"out": str(args.out)}, "steps": {}}
    for setting in settings:
        ms = [m for m in models if not setting.overrides or m in args.straggler_models.split(",")]
        if ms and rows:
            results["steps"][setting.label] = _launch(args, setting, "steps", _spec(args, rows, ms))
            _write(results, args)
    if args.tta_budget > 0 and tta_rows:
        setting = parse_setting(args.tta_rate, args.ranks)
        target_row = args.tta_target if args.tta_target in tta_rows else tta_rows[0]
        tta = {"setting": setting.label, "target_row": target_row, "seeds": {}}
        for seed in seeds:
            spec = _spec(args, tta_rows, ["mlp"]) | {"seed": seed}
            tta["seeds"][str(seed)] = _launch(args, setting, "tta", spec, suffix=f"_seed{seed}")
            results["tta"] = tta
            _write(results, args)
        plot(tta, args.out / "tta.png")
    _write(results, args)
    print(markdown(results, args))


def _write(results: dict[str, Any], args: argparse.Namespace) -> None:
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    with contextlib.suppress(KeyError):
        (args.out / "results.md").write_text(markdown(results, args))


if __name__ == "__main__":
    main()
