"""PyTorch Lightning: :class:`SaddleStrategy` trains one model per rank and gossips instead of all-reducing.

    import lightning as L
    from saddle_torch.lightning import SaddleStrategy

    trainer = L.Trainer(accelerator="cpu", devices=4, use_distributed_sampler=False,
                        strategy=SaddleStrategy(topology="ring", algorithm="q-saddle", rho=0.05))
    trainer.fit(module)   # configure_optimizers returns a plain torch optimizer (and LR schedulers)

Install with ``pip install saddle_torch[lightning]``. The strategy starts the process group as
Lightning's DDP strategy does, then :func:`saddle_torch.init` on it, broadcasts rank 0's weights so
every rank starts together, and does **not** wrap the model in ``DistributedDataParallel``: the
optimizer that ``configure_optimizers`` returns is wrapped in :func:`saddle_torch.DistributedOptimizer`
(unless it already is one), so each step is a decentralized, sharpness-aware step and gradients are
never all-reduced. Lightning's closure is the SAM closure; ``accumulate_grad_batches > 1`` is exact:
SAM's second pass re-runs every micro-batch of the step (:mod:`saddle_torch.optim.replay`).

``hook=GossipHookState(...)`` chooses the DDP port instead: the model is wrapped in DDP and
:func:`saddle_torch.hooks.gossip_hook` replaces its all-reduce, on CPU too (Lightning's own
``ddp_comm_hook=`` is only registered on CUDA).

Every rank trains on its own data: pass ``use_distributed_sampler=False`` and give each rank its own
(non-IID) dataset, or keep Lightning's ``DistributedSampler`` for an IID split of one dataset.
Metrics logged with ``sync_dist=True`` are averaged over the ranks' own models.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.optim import Optimizer

try:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
    from lightning.pytorch.strategies.strategy import Strategy
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "saddle_torch.lightning needs PyTorch Lightning: pip install 'saddle_torch[lightning]'"
    ) from exc

from saddle_torch.api.broadcast import broadcast_parameters
from saddle_torch.frameworks import Decentralized
from saddle_torch.gossip import GossipContext
from saddle_torch.hooks import GossipHookState, gossip_hook
from saddle_torch.optim.replay import MicroBatches


class SaddleStrategy(DDPStrategy):
    """Decentralized training for Lightning: gossip with graph neighbours, no all-reduce of gradients.

    Args:
        hook: use the DDP port instead: wrap the model in DDP and register
            :func:`saddle_torch.hooks.gossip_hook` with this state (on CPU and CUDA alike).
        **kwargs: the decentralization options — the fields of :class:`saddle_torch.Decentralized`
            (``topology``, ``weights``, ``compression``, ``gossip_timeout``, ``algorithm``, ``rho``,
            ``optimizer_options``), or ``setup=Decentralized(...)`` — and Lightning's ``DDPStrategy``
            options (``process_group_backend``, ``timeout``, ``start_method``, DDP options in hook
            mode, ...).

    Raises:
        ValueError: ``sync_batchnorm=True`` without ``hook`` (it all-reduces BatchNorm statistics in
            every forward), or a :func:`DistributedOptimizer` returned by ``configure_optimizers`` in
            hook mode (the model would gossip twice).
    """

    strategy_name = "saddle"

    def __init__(self, *, hook: GossipHookState | None = None, **kwargs: Any) -> None:
        if "ddp_comm_hook" in kwargs:
            raise ValueError("SaddleStrategy registers its own hook: pass hook=GossipHookState(...)")
        self.saddle = Decentralized.take(kwargs)
        super().__init__(**kwargs)
        self._hook = hook
        self._micro: MicroBatches | None = None
        self.gossip: GossipContext | None = None

    # -- process group and gossip context --------------------------------------------------------
    def setup_environment(self) -> None:
        """Start the process group (as ``DDPStrategy``), then saddle_torch's gossip context on it."""
        super().setup_environment()
        self.gossip = self.saddle.init()

    # -- model and optimizers --------------------------------------------------------------------
    def setup(self, trainer: pl.Trainer) -> None:
        """Move the model, start every rank from rank 0's weights, wrap the optimizers (no DDP)."""
        if self._hook is not None:
            super().setup(trainer)
            return
        if self._layer_sync is not None:
            raise ValueError(
                "sync_batchnorm=True all-reduces BatchNorm statistics in every forward pass, which "
                "decentralized training avoids; drop it (each rank keeps its own statistics) or use "
                "SaddleStrategy(hook=GossipHookState()) for the DDP port"
            )
        Strategy.setup(self, trainer)

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Hook mode: DDP. Otherwise the model stays as it is, after a broadcast of rank 0's weights."""
        if self._hook is not None:
            return super()._setup_model(model)
        broadcast_parameters(model.state_dict(), root_rank=0)
        return model

    def setup_optimizers(self, trainer: pl.Trainer) -> None:
        """Create the LightningModule's optimizers, then make each a :func:`DistributedOptimizer`."""
        super().setup_optimizers(trainer)
        wrapped = []
        for opt in self.optimizers:
            already = Decentralized.is_wrapped(opt)
            if self._hook is not None:
                if already:
                    raise ValueError(
                        "SaddleStrategy(hook=...) gossips inside DDP's backward; configure_optimizers must "
                        "return a plain optimizer, not a DistributedOptimizer (the model would gossip twice)"
                    )
                wrapped.append(opt)
            else:
                wrapped.append(self.saddle.wrap(opt, self.lightning_module))
        self.optimizers = wrapped

    def _register_ddp_hooks(self) -> None:
        """Hook mode: register the gossip hook whatever the device (Lightning's skips CPU)."""
        if self._hook is not None:
            self.model.register_comm_hook(self._hook, gossip_hook)

    # -- the step ----------------------------------------------------------------------------------
    @property
    def handles_gradient_accumulation(self) -> bool:
        """True while accumulating micro-batches of a decentralized step (each passes through here).

        The strategy then sees every micro-batch's closure and can re-run them all for SAM's second
        pass. On an epoch's last batch Lightning steps whatever the count, and so does this.
        """
        trainer = self._trainer()
        if self._hook is not None or trainer is None or trainer.accumulate_grad_batches <= 1:
            return False
        return not trainer.fit_loop.epoch_loop._num_ready_batches_reached()

    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: pl.LightningModule | torch.nn.Module | None = None,
        **kwargs: Any,
    ) -> Any:
        """One decentralized step; with gradient accumulation, the last micro-batch steps for all."""
        trainer = self._trainer()
        if self._hook is not None or trainer is None or trainer.accumulate_grad_batches <= 1:
            return super().optimizer_step(optimizer, closure, model, **kwargs)
        if self._micro is None:
            self._micro = MicroBatches(optimizer.zero_grad)
        if trainer.fit_loop._should_accumulate():
            loss = closure()  # the micro-batch's first pass, gradients add up
            self._micro.add(closure, loss)
            return loss
        combined = self._micro.closure(pending=closure)
        try:
            return super().optimizer_step(optimizer, combined, model, **kwargs)
        finally:
            self._micro.clear()

    def _trainer(self) -> pl.Trainer | None:
        module = self.lightning_module
        return None if module is None else module._trainer

    def teardown(self) -> None:
        """Unwrap the model as ``DDPStrategy`` does; the gossip context stays for later fit/test calls."""
        self._micro = None
        super().teardown()


__all__ = ["SaddleStrategy"]
