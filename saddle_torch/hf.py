"""Hugging Face ``Trainer``: :class:`SaddleTrainer` trains one model per rank and gossips instead of DDP.

    from saddle_torch.hf import SaddleTrainer

    trainer = SaddleTrainer(model=model, args=TrainingArguments(...), train_dataset=my_rank_shard,
                            algorithm="q-saddle", rho=0.05, topology="ring")
    trainer.train()          # launched with torchrun; each rank passes its own (non-IID) dataset

Install with ``pip install saddle_torch[hf]``. A drop-in subclass of ``transformers.Trainer``:

- the Trainer's optimizer (AdamW from ``TrainingArguments``, or the one passed as ``optimizers=``) is
  wrapped in :func:`saddle_torch.DistributedOptimizer`; an optimizer that already is one is kept.
  Wrapping before the Trainer moves the model is fine: the flat buffers follow the move at the first
  step (:func:`saddle_torch.optim.wrapper.follow_model`);
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
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

try:
    from accelerate.data_loader import BatchSamplerShard
    from transformers import Trainer
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("saddle_torch.hf needs transformers: pip install 'saddle_torch[hf]'") from exc

import saddle_torch as st
from saddle_torch.optim.replay import MicroBatches
from saddle_torch.optim.wrapper import DistributedOptimizer, SaddleRuntime, _DistributedOptimizer


class SaddleTrainer(Trainer):
    """``transformers.Trainer`` made decentralized (see the module docstring).

    Args:
        *args: ``Trainer``'s positional arguments.
        topology: gossip graph (any value :func:`saddle_torch.init` accepts).
        weights: ``"uniform"`` or ``"metropolis"`` mixing weights.
        compression: default gossip codec (``None``: exact), e.g. ``"int8"``.
        gossip_timeout: how long a gossip round waits for a neighbour before :class:`PeerError`.
        algorithm: the :func:`DistributedOptimizer` algorithm (default ``"q-saddle"``: with the
            Trainer's AdamW, QG-Adam with SAM).
        rho: SAM radius.
        optimizer_options: further keyword options of :func:`DistributedOptimizer`.
        per_rank_data: ``train_dataset`` is this rank's own shard (not split again).
        **kwargs: ``Trainer``'s keyword arguments (``model``, ``args``, ``train_dataset``,
            ``optimizers``, ...).
    """

    def __init__(
        self,
        *args: Any,
        topology: Any = "ring",
        weights: str = "uniform",
        compression: Any = None,
        gossip_timeout: timedelta = timedelta(seconds=300),
        algorithm: str = "q-saddle",
        rho: float = 0.05,
        optimizer_options: dict[str, Any] | None = None,
        per_rank_data: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.gossip = st.init(
            topology=topology, timeout=gossip_timeout, weights=weights, compression=compression
        )
        self._saddle_options = {"algorithm": algorithm, "rho": rho, **(optimizer_options or {})}
        self.per_rank_data = per_rank_data
        if self.optimizer is not None:
            self.optimizer = self._decentralize(self.optimizer)

    # -- optimizer ---------------------------------------------------------------------------------
    def _decentralize(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        if isinstance(optimizer, _DistributedOptimizer):
            return optimizer
        return DistributedOptimizer(optimizer, self.model, **self._saddle_options)

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """The Trainer's optimizer, wrapped in :func:`DistributedOptimizer` (collective)."""
        super().create_optimizer(model)
        self.optimizer = self._decentralize(self.optimizer)
        return self.optimizer

    def _runtime(self) -> SaddleRuntime:
        opt = self.optimizer
        while not isinstance(opt, _DistributedOptimizer):  # accelerate's AcceleratedOptimizer wraps it
            opt = opt.optimizer
        return opt.saddle

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
        if rt.config.algorithm.needs_closure:
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
            mine = torch.tensor([len(loader)], dtype=torch.int64)
            every = [torch.empty_like(mine) for _ in range(self.gossip.size)]
            dist.all_gather(every, mine, group=self.gossip.group)
            lengths = [int(t) for t in every]
            if len(set(lengths)) > 1:
                raise ValueError(
                    f"with per_rank_data the ranks' datasets give {lengths} batches per epoch: give "
                    "every rank the same number of samples, or set TrainingArguments(max_steps=...) so "
                    "that every rank takes the same number of steps"
                )
        return loader


__all__ = ["SaddleTrainer"]
