"""One checkpoint file per rank, holding everything needed to resume bit-for-bit."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from saddle_torch.gossip import current

_FORMAT = 1


def rank_path(path: str | os.PathLike, rank: int) -> Path:
    """This rank's file: ``{rank}`` in ``path`` is replaced, otherwise ``.rank<r>`` is appended."""
    text = os.fspath(path)
    return Path(text.format(rank=rank) if "{rank}" in text else f"{text}.rank{rank}")


def save_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer, **extra: Any
) -> Path:
    """Write this rank's model, optimizer (algorithm buffers included), RNG states and ``extra``.

    The file is written to a temporary name and renamed, so a crash never leaves half a checkpoint.

    Returns:
        The path written.
    """
    ctx = current()
    target = rank_path(path, ctx.rank)
    target.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "format": _FORMAT,
        "rank": ctx.rank,
        "world_size": ctx.size,
        "topology": ctx.topology.name,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "rng": {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        },
        "extra": extra,
    }
    tmp = target.with_name(target.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, target)
    if ctx.elastic is not None:  # named if the job's store dies (StoreLostError)
        ctx.elastic.last_checkpoint = (target, getattr(getattr(optimizer, "saddle", None), "step", None))
    return target


def load_checkpoint(
    path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote for this rank; returns its ``extra`` values.

    Raises:
        FileNotFoundError: no checkpoint for this rank.
        ValueError: the checkpoint belongs to another rank, world size or topology.
    """
    ctx = current()
    source = rank_path(path, ctx.rank)
    state = torch.load(source, map_location="cpu", weights_only=False)
    if state.get("format") != _FORMAT:
        raise ValueError(f"{source}: unknown checkpoint format {state.get('format')}")
    if (state["rank"], state["world_size"]) != (ctx.rank, ctx.size):
        raise ValueError(
            f"{source} was written by rank {state['rank']} of {state['world_size']}, "
            f"this is rank {ctx.rank} of {ctx.size}"
        )
    if state["topology"] != ctx.topology.name:
        raise ValueError(
            f"{source} was written on topology {state['topology']}, this job runs {ctx.topology.name}"
        )
    with torch.no_grad():
        # Copy into the existing tensors: parameters stay views of the optimizer's flat buffers.
        for name, t in model.state_dict().items():
            t.copy_(state["model"][name])
    optimizer.load_state_dict(state["optimizer"])
    rng = state["rng"]
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    return state["extra"]
