"""Hugging Face ``Trainer`` with ``SaddleTrainer``, on real ranks over Gloo.

A tiny BERT built from a config classifies token sequences by topic (each class draws three quarters
of its tokens from its own block of the vocabulary). ``DistributedOptimizer(AdamW)`` is built *before* the
Trainer, which then moves the model (``model.to(device)`` copies every parameter): the flat buffers
must follow. Each rank holds its own quarter of the data; q-saddle + AdamW must end within 1 point
of the plain ``Trainer`` (DDP through accelerate, which splits the same data), without all-reduce.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import pytest
import torch
import torch.distributed as dist
from harness import run_ranks

pytest.importorskip("transformers")
pytest.importorskip("accelerate")

WORLD, CLASSES, VOCAB, LENGTH = 4, 4, 48, 12
# DDP's: 8 epochs of the union at 16 samples per rank and step. At 64 steps the averaged models of
# allreduce / dsgd / qgm / q-saddle were at 99.2 / 93.8 / 95.7 / 98.2% (DDP 99.6%): decentralized
# methods lag early; at 128 q-saddle reached 99.8%.
STEPS = 8 * 1024 // (16 * WORLD)


def _topics(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    tokens = torch.randint(4, VOCAB, (n, LENGTH), generator=g)
    block = (VOCAB - 4) // CLASSES
    own = 4 + labels[:, None] * block + torch.randint(0, block, (n, LENGTH), generator=g)
    pick = torch.rand(n, LENGTH, generator=g) < 0.75
    return torch.where(pick, own, tokens), labels


class _Dataset(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids, self.labels = ids, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.ids[i],
            "attention_mask": torch.ones(LENGTH, dtype=torch.long),
            "labels": self.labels[i],
        }


def _model():  # noqa: ANN202
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=LENGTH,
        num_labels=CLASSES,
    )
    return BertForSequenceClassification(config)


def _accuracy(model: torch.nn.Module, ids: torch.Tensor, labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(input_ids=ids).logits.argmax(1) == labels).float().mean())


def _train(rank: int, world: int) -> dict[str, float]:
    from transformers import Trainer, TrainingArguments

    import saddle_torch as st
    from saddle_torch.hf import SaddleTrainer

    warnings.filterwarnings("ignore")
    ids, labels = _topics(1024, seed=1)
    test_ids, test_labels = _topics(512, seed=2)
    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(
            output_dir=tmp,
            per_device_train_batch_size=16,
            learning_rate=2e-3,
            report_to=[],
            save_strategy="no",
            logging_strategy="no",
            use_cpu=True,
            disable_tqdm=True,
            seed=0,
            lr_scheduler_type="constant",
        )
        # Plain Trainer: DDP through accelerate, one dataset split across the ranks by the Trainer.
        model = _model()
        Trainer(
            model=model,
            args=TrainingArguments(num_train_epochs=8, **common),
            train_dataset=_Dataset(ids, labels),
        ).train()
        out["ddp_acc"] = _accuracy(model, test_ids, test_labels)

        # SaddleTrainer: each rank its own quarter of the same data, the optimizer wrapped before the
        # Trainer (which then moves the model).
        shard = _Dataset(ids[rank::world], labels[rank::world])
        st.init(topology="ring")
        model = _model()
        opt = st.DistributedOptimizer(
            torch.optim.AdamW(model.parameters(), lr=2e-3), model, algorithm="q-saddle"
        )
        trainer = SaddleTrainer(
            model=model,
            args=TrainingArguments(max_steps=STEPS, **common),
            train_dataset=shard,
            optimizers=(opt, None),
        )
        out["moved_by_trainer"] = float(len(opt.saddle.flat.moved()))
        trainer.train()
        out["ddp_wrapped"] = float(
            isinstance(trainer.model_wrapped, torch.nn.parallel.DistributedDataParallel)
        )
        out["bytes"] = st.stats()["bytes_sent"]
        out["steps"] = float(opt.saddle.step)
        out["rank_acc"] = _accuracy(model, test_ids, test_labels)
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        avg = flat.clone()
        dist.all_reduce(avg)
        avg /= world
        out["consensus"] = float((flat - avg).pow(2).sum())
        torch.nn.utils.vector_to_parameters(avg, model.parameters())
        out["avg_acc"] = _accuracy(model, test_ids, test_labels)
    return out


def test_saddle_trainer_moves_model_after_wrapping_and_trains_like_ddp() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = run_ranks(_train, WORLD, timeout=600)
    assert all(r["moved_by_trainer"] > 0 for r in out.values())  # the Trainer did move the model
    assert all(r["ddp_wrapped"] == 0.0 for r in out.values())
    assert all(r["bytes"] > 0 and r["steps"] == STEPS for r in out.values())
    assert min(r["consensus"] for r in out.values()) > 1e-8  # each rank its own model
    ddp_acc, acc = out[0]["ddp_acc"], out[0]["avg_acc"]
    assert ddp_acc > 0.9
    print({k: round(v, 4) for k, v in out[0].items()})
    assert acc >= ddp_acc - 0.01, (acc, ddp_acc)
