"""Hugging Face ``Trainer``: :class:`SaddleTrainer` trains one model per rank and gossips instead of DDP.

    from saddle_torch.hf import SaddleTrainer

    trainer = SaddleTrainer(model=model, args=TrainingArguments(...), train_dataset=my_rank_shard,
                            algorithm="q-saddle", rho=0.05, topology="ring")
    trainer.train()          # launched with torchrun; each rank passes its own (non-IID) dataset

Install with ``pip install saddle_torch[hf]``. A drop-in subclass of ``transformers.Trainer``:

- the Trainer's optimizer (AdamW from ``TrainingArguments``, or the one passed as ``optimizers=``) is
  wrapped in :func:`saddle_torch.DistributedOptimizer` (:class:`saddle_torch.Decentralized`); an
  optimizer that already is one is kept. Wrapping before the Trainer moves the model is fine: the flat
  buffers follow the move at the first step (:func:`saddle_torch.optim.build.follow_model`);
- accelerate places the model and applies mixed precision, but does **not** wrap it in
  ``DistributedDataParallel``: gradients are never all-reduced;
- SAM and cross-gradient algorithms evaluate the loss again inside ``optimizer.step()``: every
  micro-batch of the step (``gradient_accumulation_steps``) is kept and re-run, and
  ``max_grad_norm`` clipping applies to that final gradient too (:mod:`saddle_torch.optim.replay`);
- ``per_rank_data=True`` (default): ``train_dataset`` is this rank's own data and is not sharded
  across ranks again (``False``: the Trainer splits one dataset, IID); every rank must then take the
  same number of steps (equal shard sizes, or ``max_steps``), which the first epoch checks.

Evaluation runs on each rank's own model; metrics are not averaged across ranks.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

try:
    from accelerate.data_loader import BatchSamplerShard
    from transformers import Trainer
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("saddle_torch.hf needs transformers: pip install 'saddle_torch[hf]'") from exc

from saddle_torch.frameworks import Decentralized
from saddle_torch.optim import SaddleRuntime
from saddle_torch.optim.replay import MicroBatches


class SaddleTrainer(Trainer):
    """``transformers.Trainer`` made decentralized (see the module docstring).

    Args:
        *args: ``Trainer``'s positional arguments.
        per_rank_data: ``train_dataset`` is this rank's own shard (not split again).
        **kwargs: the decentralization options — the fields of :class:`saddle_torch.Decentralized`
            (``topology``, ``weights``, ``compression``, ``gossip_timeout``, ``algorithm`` (default
            ``"q-saddle"``: with the Trainer's AdamW, QG-Adam with SAM), ``rho``,
            ``optimizer_options``), or ``setup=Decentralized(...)`` — and ``Trainer``'s keyword
            arguments (``model``, ``args``, ``train_dataset``, ``optimizers``, ...).
    """

    def __init__(self, *args: Any, per_rank_data: bool = True, **kwargs: Any) -> None:
        self.saddle = Decentralized.take(kwargs)
        super().__init__(*args, **kwargs)
        self.gossip = self.saddle.init()
        self.per_rank_data = per_rank_data
        if self.optimizer is not None:
            self.optimizer = self.saddle.wrap(self.optimizer, self.model)

    # -- optimizer ---------------------------------------------------------------------------------
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, wrapped in :func:`DistributedOptimizer` (collective)."""
        super().create_optimizer(model)
        self.optimizer = self.saddle.wrap(self.optimizer, self.model)
        return self.optimizer

    def _runtime(self) -> SaddleRuntime:
        return Decentralized.runtime(self.optimizer)  # accelerate's AcceleratedOptimizer wraps it

    # -- model: placed by accelerate, never wrapped in DDP ----------------------------------------
    def _wrap_model(self, model: nn.Module, training: bool = True, dataloader: Any = None) -> nn.Module:
        """Let accelerate place the model (and add autocast) without wrapping it in DDP."""
        if training and not getattr(model, "_is_accelerate_prepared", False):
            model = self.accelerator.prepare_model(model, evaluation_mode=True)
        return super()._wrap_model(model, training, dataloader)

    # -- the step ------------------------------------------------------------------------------------
    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: Any = None
    ) -> torch.Tensor:
        """The Trainer's forward/backward; micro-batches are kept for the step's extra passes."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        rt = self._runtime()
        if rt.needs_closure:
            if rt.replay is None:
                rt.replay = MicroBatches(rt.optimizer.zero_grad, after=functools.partial(self._clip, model))
            rt.replay.add(functools.partial(super().training_step, model, inputs, num_items_in_batch), loss)
        return loss

    def _clip(self, model: nn.Module) -> None:
        if self.args.max_grad_norm is not None and self.args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)

    # -- data ------------------------------------------------------------------------------------------
    def get_train_dataloader(self) -> torch.utils.data.DataLoader:
        """With ``per_rank_data``, the rank's own dataset, not sharded across ranks again.

        Raises:
            ValueError: the ranks' loaders have different lengths and ``max_steps`` is not set (the
                ranks would take different numbers of gossip steps per epoch).
        """
        loader = super().get_train_dataloader()
        if not self.per_rank_data:
            return loader
        sampler = getattr(loader, "batch_sampler", None)
        if isinstance(sampler, BatchSamplerShard):  # accelerate's split of one dataset: undo it
            sampler.num_processes, sampler.process_index = 1, 0
        if self.gossip.size > 1 and self.args.max_steps <= 0:
            every = self.gossip.door.agree([len(loader)], what="comparing the ranks' batches per epoch")
            lengths = [t[0] for t in every]
            if len(set(lengths)) > 1:
                raise ValueError(
                    f"with per_rank_data the ranks' datasets give {lengths} batches per epoch: give "
                    "every rank the same number of samples, or set TrainingArguments(max_steps=...) so "
                    "that every rank takes the same number of steps"
                )
        return loader


__all__ = ["SaddleTrainer"]
