"""SAM / ASAM on flat buffers (the gradient phase of SADDLe); BatchNorm kept out of extra passes."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from typing_extensions import override

from saddle_torch import kernels
from saddle_torch.flat import BufferKey, FlatParameters
from saddle_torch.optim.phases import Closure, Phase, SaddleRuntime, StepOptions, StepRun, evaluate


def perturbation_scale(flat: FlatParameters, rho: float, adaptive: bool) -> float:
    """ρ / (‖g‖ + 1e-12), the norm over all parameters together (ASAM: ‖|x|⊙g‖)."""
    sq = 0.0
    for key, g in flat.grad_buffers.items():
        sq += kernels.sam_norm_sq(g, flat.buffers[key] if adaptive else None)
    return rho / (math.sqrt(sq) + 1e-12)


def perturb(flat: FlatParameters, e: dict[BufferKey, torch.Tensor], rho: float, adaptive: bool) -> None:
    """X ← x + e with e = ρ g/‖g‖ (or ρ x²⊙g/‖|x|⊙g‖), fused; ``e`` receives the perturbation."""
    scale = perturbation_scale(flat, rho, adaptive)
    for key, x in flat.buffers.items():
        kernels.sam_perturb(x, flat.grad_buffers[key], e[key], scale, adaptive)


def restore(flat: FlatParameters, e: dict[BufferKey, torch.Tensor]) -> None:
    """X ← x − e."""
    for key, x in flat.buffers.items():
        kernels.sam_restore(x, e[key])


def batchnorm_layers(model: nn.Module | None) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` that track running statistics (found once, at wrap time)."""
    if model is None:
        return []
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        and m.track_running_stats
        and m.running_mean is not None
    ]


class BatchNormSnapshot:
    """Running statistics of some BatchNorm layers, to put back after an extra pass."""

    def __init__(self, layers: list[nn.modules.batchnorm._BatchNorm]) -> None:
        self._saved = [
            (m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in layers
        ]

    def restore(self) -> None:
        """Put the statistics back as they were when the snapshot was taken."""
        with torch.no_grad():
            for m, mean, var, count in self._saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


@contextlib.contextmanager
def frozen_batchnorm(layers: list[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Within the block, the layers' running statistics (and batch counters) are left unchanged."""
    snapshot = BatchNormSnapshot(layers)
    try:
        yield
    finally:
        snapshot.restore()


class Sam(Phase):
    """Replace the gradient by ∇F(x + e) on the same batch; x is unchanged afterwards.

    ``e`` stays allocated between steps (one buffer per flat buffer). With ``first_step()`` /
    ``second_step()`` the wrapper calls :meth:`perturb` and :meth:`restore` itself. Options: ``rho``
    (≥ 0), ``adaptive`` (ASAM).
    """

    needs_closure = True

    @classmethod
    @override
    def check(cls, options: StepOptions, optimizer: torch.optim.Optimizer) -> None:
        if not options.rho >= 0:
            raise ValueError(f"rho must be ≥ 0, got {options.rho}")

    def __init__(self, rt: SaddleRuntime) -> None:
        self.e = {key: torch.zeros_like(x) for key, x in rt.flat.buffers.items()}

    def perturb(self, rt: SaddleRuntime) -> None:
        """X ← x + e (after the first backward)."""
        perturb(rt.flat, self.e, rt.options.rho, rt.options.adaptive)

    def restore(self, rt: SaddleRuntime) -> None:
        """X ← x − e (after the second backward)."""
        restore(rt.flat, self.e)

    @override
    def first_half(self, rt: SaddleRuntime) -> None:
        self.perturb(rt)
        rt.bn = BatchNormSnapshot(rt.bn_frozen)  # the caller's second pass must not move the statistics

    @override
    def second_half(self, rt: SaddleRuntime) -> None:
        if rt.bn is not None:
            rt.bn.restore()
            rt.bn = None
        self.restore(rt)

    @override
    def gradient(self, rt: SaddleRuntime, run: StepRun, closure: Closure | None) -> None:
        assert closure is not None  # the wrapper refuses SAM without a closure
        self.perturb(rt)
        with frozen_batchnorm(rt.bn_frozen):
            evaluate(rt, closure)
        self.restore(rt)


__all__ = [
    "BatchNormSnapshot",
    "Sam",
    "batchnorm_layers",
    "frozen_batchnorm",
    "perturb",
    "perturbation_scale",
    "restore",
]
