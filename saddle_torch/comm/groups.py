"""Process groups: created, found and destroyed here (the collectives on them are in ``door.py``)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    """Whether torch.distributed has a default group."""
    return dist.is_initialized()


def group_rank(group: dist.ProcessGroup) -> int:
    """This process's rank in ``group``."""
    return dist.get_rank(group)


def group_size(group: dist.ProcessGroup) -> int:
    """The number of ranks of ``group``."""
    return dist.get_world_size(group)


def world() -> dist.ProcessGroup:
    """The default group."""
    return dist.group.WORLD


def default_backend_name() -> str | None:
    """The backend of the default group (``None`` when there is none)."""
    return dist.get_backend() if dist.is_initialized() else None


def gloo_backend(group: dist.ProcessGroup) -> Any:
    """The CPU (Gloo) backend object of ``group`` (raises ``RuntimeError``/``ValueError`` if it has none)."""
    return group._get_backend(torch.device("cpu"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_default_group(timeout: timedelta) -> dist.ProcessGroup:
    """The default group (created from torchrun's environment, or a world of one without it).

    Returns a group with a CPU backend: the default group itself, or a Gloo group over the same ranks
    when the default one has none (an NCCL-only job).
    """
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
            dist.init_process_group("gloo", rank=0, world_size=1, timeout=timeout)
        else:
            dist.init_process_group("gloo", timeout=timeout)
    group = dist.group.WORLD
    try:
        gloo_backend(group)
    except (RuntimeError, ValueError):
        group = dist.new_group(backend="gloo", timeout=timeout)
    return group


def gloo_group(group: dist.ProcessGroup | None, timeout: timedelta) -> dist.ProcessGroup:
    """``group`` when given, else the default group with a CPU backend (:func:`init_default_group`)."""
    return group if group is not None else init_default_group(timeout)


def form_epoch_group(store: dist.Store, prefix: str, rank: int, size: int, timeout: timedelta) -> None:
    """Make a new Gloo group over ``store`` (keys under ``prefix``) the default group.

    Collective among its ``size`` members; the previous default group, if any, is destroyed first.
    Raises ``RuntimeError`` (Gloo's or the store's) when a member does not come.
    """
    if dist.is_initialized():
        dist.destroy_process_group()  # also resets torch's counter of group names
    try:
        dist.init_process_group(
            "gloo", store=dist.PrefixStore(prefix, store), rank=rank, world_size=size, timeout=timeout
        )
    except BaseException:
        # A failed init_process_group has taken a group name from torch's counter (the default group is
        # "0", then "1", ...; only destroying a default group resets it) and the store keys of the next
        # group carry it: this process's next group would be "1" where a fresh process (a joiner) uses
        # "0", and the two never meet. Give the name back.
        _reset_group_names()
        raise


def _reset_group_names() -> None:
    """Put torch's counter of unnamed groups back to 0, as ``destroy_process_group`` of WORLD does."""
    world_state = getattr(dist.distributed_c10d, "_world", None)
    if world_state is not None and not dist.is_initialized():
        world_state.group_count = 0


def new_gloo_backend(store: dist.Store, rank: int, size: int, timeout: timedelta) -> Any:
    """A Gloo backend object over ``store`` (the inner group of the ``saddle`` backend)."""
    return dist.ProcessGroupGloo(store, rank, size, timeout)


def register_backend(name: str, create: Callable[..., Any]) -> None:
    """Register a torch.distributed backend (idempotent)."""
    if name not in dist.Backend.backend_list:
        dist.Backend.register_backend(name, create, devices=["cpu"])


__all__ = [
    "default_backend_name",
    "form_epoch_group",
    "gloo_backend",
    "gloo_group",
    "group_rank",
    "group_size",
    "init_default_group",
    "is_initialized",
    "new_gloo_backend",
    "register_backend",
    "world",
]
