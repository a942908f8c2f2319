"""SAM / ASAM on flat buffers, and BatchNorm statistics kept out of the extra passes."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn

from saddle_torch import _ops
from saddle_torch.flat import BufferKey, FlatParameters


def perturbation_scale(flat: FlatParameters, rho: float, adaptive: bool) -> float:
    """ρ / (‖g‖ + 1e-12), the norm over all parameters together (ASAM: ‖|x|⊙g‖)."""
    sq = 0.0
    for key, g in flat.grad_buffers.items():
        sq += _ops.sam_norm_sq(g, flat.buffers[key] if adaptive else None)
    return rho / (math.sqrt(sq) + 1e-12)


def perturb(flat: FlatParameters, e: dict[BufferKey, torch.Tensor], rho: float, adaptive: bool) -> None:
    """X ← x + e with e = ρ g/‖g‖ (or ρ x²⊙g/‖|x|⊙g‖), fused; ``e`` receives the perturbation."""
    scale = perturbation_scale(flat, rho, adaptive)
    for key, x in flat.buffers.items():
        _ops.sam_perturb(x, flat.grad_buffers[key], e[key], scale, adaptive)


def restore(flat: FlatParameters, e: dict[BufferKey, torch.Tensor]) -> None:
    """X ← x − e."""
    for key, x in flat.buffers.items():
        _ops.sam_restore(x, e[key])


def _bn_modules(model: nn.Module | None) -> list[nn.modules.batchnorm._BatchNorm]:
    if model is None:
        return []
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


class BatchNormSnapshot:
    """Running statistics of every BatchNorm layer of a model, to put back after an extra pass."""

    def __init__(self, model: nn.Module | None, enabled: bool = True) -> None:
        mods = _bn_modules(model) if enabled else []
        self._saved = [
            (m, m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone())
            for m in mods
            if m.running_mean is not None
        ]

    def restore(self) -> None:
        """Put the statistics back as they were when the snapshot was taken."""
        with torch.no_grad():
            for m, mean, var, count in self._saved:
                m.running_mean.copy_(mean)
                m.running_var.copy_(var)
                m.num_batches_tracked.copy_(count)


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module | None, enabled: bool = True) -> Iterator[None]:
    """Within the block, BatchNorm running statistics (and batch counters) are left unchanged."""
    snapshot = BatchNormSnapshot(model, enabled)
    try:
        yield
    finally:
        snapshot.restore()
