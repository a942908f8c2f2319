r"""Fine-tune a trained model on a new non-IID split, every rank gossiping with its neighbours.

The three lines a user adds to an existing training script (launched with ``torchrun``)::

    st.init(topology="ring")                                   # 1. join the gossip group
    st.broadcast_parameters(model.state_dict(), root_rank=0)   # 2. same starting weights everywhere
    opt = st.DistributedOptimizer(opt, model, algorithm="q-saddle")  # 3. decentralized, SAM step

and ``opt.step(closure)`` in the loop. Here, for a model that ``examples/train.py`` saved::

    torchrun --standalone --nproc_per_node=4 examples/finetune.py \
        --checkpoint runs/demo/q-saddle/model.pt --alpha 0.01 --epochs 2

or a torchvision model from a local weights file (3-channel data sets; the classifier is replaced
when the class count differs)::

    torchrun --standalone --nproc_per_node=4 examples/finetune.py --weights resnet18.pth \
        --arch resnet18 --dataset cifar10 --data-dir data/cifar10
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

import saddle_torch as st


def _train_module() -> Any:
    key = "saddle_examples.train"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name("train.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]


train = _train_module()  # shares the partition, optimizer, data stream and evaluation with train.py


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse the flags (the shared ones mean what they mean in ``train.py``)."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="model.pt written by train.py (or a raw state_dict, with --arch)")
    src.add_argument("--weights", help="a torchvision weights file (with --arch, e.g. resnet18)")
    p.add_argument(
        "--arch", default=None, help="model of a raw state_dict (cnn, resnet20) or torchvision name"
    )
    p.add_argument("--dataset", default=None, help="default: the checkpoint's data set")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--download", action="store_true")
    p.add_argument("--algorithm", choices=list(st.ALGORITHMS), default="q-saddle")
    p.add_argument("--topology", default="ring")
    p.add_argument("--alpha", type=float, default=0.01, help="Dirichlet α of the new split")
    p.add_argument("--seed", type=int, default=1, help="seed of the new split and shuffling")
    p.add_argument("--epochs", type=float, default=2)
    p.add_argument("--max-steps", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--rho", type=float, default=0.05)
    p.add_argument("--order", choices=("awc", "atc"), default="atc")
    p.add_argument("--compression", default="none", help="gossip codec with CHOCO, as in train.py")
    p.add_argument("--gamma", type=float, default=0.0, help="gossip step γ (0: auto, tuned with compression)")
    p.add_argument(
        "--optimizer", choices=["sgd", "adam", "adamw"], default="sgd", help="the wrapped optimizer"
    )
    p.add_argument(
        "--qg-adam",
        choices=("normalized", "scaled"),
        default="normalized",
        help="qgm/q-saddle with adam/adamw: QG-Adam's moment feed, as in train.py",
    )
    p.add_argument(
        "--qg-adam-lr",
        choices=("adam", "qgm"),
        default="adam",
        help="qgm/q-saddle with adam/adamw: what --lr means, as in train.py",
    )
    p.add_argument("--eval-samples", type=int, default=0)
    p.add_argument("--out", default=None, help="write the fine-tuned averaged model to OUT/model.pt")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.weights and not args.arch:
        p.error("--weights needs --arch (a torchvision model name, e.g. resnet18)")
    args.partition, args.schedule = "dirichlet", "cosine"  # what train.make_partition/learning_rate read
    return args


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """Give the last ``nn.Linear`` ``num_classes`` outputs (a new, randomly initialised layer)."""
    last = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise ValueError("the model has no nn.Linear classifier to resize")
    parent = model.get_submodule(last.rpartition(".")[0]) if "." in last else model
    old = model.get_submodule(last)
    if old.out_features != num_classes:
        setattr(parent, last.rpartition(".")[2], nn.Linear(old.in_features, num_classes))


def load_model(args: argparse.Namespace) -> tuple[nn.Module, str]:
    """The pretrained model and the data set to fine-tune it on.

    Raises:
        ValueError: the file does not say which model it holds and ``--arch``/``--dataset`` are missing.
        ModuleNotFoundError: ``--weights`` without torchvision.
    """
    if args.weights:
        try:
            import torchvision
        except ModuleNotFoundError as e:
            raise ModuleNotFoundError("--weights loads a torchvision model: pip install torchvision") from e
        dataset = args.dataset or "cifar10"
        _, _, num_classes, shape = train.datasets.load(dataset, args.data_dir, args.download)
        if shape[0] != 3:
            raise ValueError(f"torchvision models take 3-channel images; {dataset} has {shape[0]}")
        model = torchvision.models.get_model(args.arch, weights=None)
        model.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
        _replace_head(model, num_classes)
        return model, dataset
    saved = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    meta = saved if "state_dict" in saved else {}  # train.py's model.pt; otherwise a raw state_dict
    state = meta.get("state_dict", saved)
    arch, dataset = args.arch or meta.get("arch"), args.dataset or meta.get("dataset")
    if not arch or not dataset:
        raise ValueError(f"{args.checkpoint} does not name its model and data set: pass --arch and --dataset")
    _, _, num_classes, shape = train.datasets.load(dataset, args.data_dir, args.download)
    model = train.models.build(
        arch,
        tuple(meta.get("input_shape", shape)),
        meta.get("num_classes", num_classes),
        width=meta.get("width", 32),
    )
    model.load_state_dict(state)
    _replace_head(model, num_classes)
    return model, dataset


def run(args: argparse.Namespace | Sequence[str] | None = None) -> dict[str, Any]:
    """Fine-tune on every rank (collective).

    Returns:
        The evaluation before and after (as in ``train.py``'s records), the steps taken and the data set;
        the same on every rank.
    """
    if not isinstance(args, argparse.Namespace):
        args = parse_args(args)
    torch.set_num_threads(args.threads)
    train.init_gossip(args.topology)
    rank, n = st.rank(), st.size()
    model, dataset = load_model(args)
    data, test, _, _ = train.datasets.load(dataset, args.data_dir, args.download)
    if args.eval_samples:
        test = torch.utils.data.TensorDataset(*(t[: args.eval_samples] for t in test.tensors))
    partition = train.make_partition(args, train.dataset_labels(data), n)
    stream = train.BatchStream(data, partition.sampler(rank, seed=args.seed), args.batch_size)
    total = max(1, round(args.epochs * math.ceil(len(data) / (n * args.batch_size))))
    total = min(total, args.max_steps) if args.max_steps else total

    st.broadcast_parameters(model.state_dict(), root_rank=0)
    avg_model = copy.deepcopy(model)  # holds the average of all ranks' models at evaluation
    opt = train.make_optimizer(model, args)
    base = st.stats()["bytes_sent"]
    before = train.evaluate(model, avg_model, test, base)
    for step in range(total):
        x, y = next(stream)
        for group in opt.param_groups:
            group["lr"] = train.learning_rate(args, step, total)

        opt.step(train.make_closure(model, opt, x, y))
    after = train.evaluate(model, avg_model, test, base)
    if rank == 0:
        print(partition.summary())
        print(
            f"fine-tuned {args.checkpoint or args.weights} on {dataset} (α={args.alpha:g}, {n} ranks, "
            f"{args.algorithm}, {total} steps): averaged-model acc {100 * before['test_acc_avg_model']:.2f}% "
            f"-> {100 * after['test_acc_avg_model']:.2f}%, per-rank {100 * after['test_acc_mean_rank']:.2f}%",
            flush=True,
        )
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            torch.save(avg_model.state_dict(), Path(args.out) / "model.pt")
    return {"before": before, "after": after, "steps": total, "dataset": dataset}


def main() -> None:
    run()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
