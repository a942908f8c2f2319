"""``allreduce``: exact averaging of gradients across all ranks (what DDP does), the reference point."""

from saddle_torch.optim.algorithm import Algorithm

ALGORITHM = Algorithm(
    "allreduce", sam=False, qgm=False, cross=False, gossip=False, summary="exact all-reduce (DDP)"
)
