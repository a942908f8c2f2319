"""Transport: every ``torch.distributed`` call the library makes (collectives, groups) is made here."""

from saddle_torch.comm.door import Door, crc_of
from saddle_torch.comm.groups import (
    form_epoch_group,
    gloo_backend,
    gloo_group,
    group_rank,
    group_size,
    init_default_group,
    is_initialized,
    new_gloo_backend,
    register_backend,
    world,
)

__all__ = [
    "Door",
    "crc_of",
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
