"""Decentralized optimizers: SADDLe (Q-SADDLe, N-SADDLe) and the baselines, as one wrapper."""

from saddle_torch.optim.algorithms import ALGORITHMS, Algorithm, register
from saddle_torch.optim.phases import Phase, SaddleRuntime, StepOptions, StepRun
from saddle_torch.optim.wrapper import DistributedOptimizer, is_wrapped, runtime_of

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "DistributedOptimizer",
    "Phase",
    "SaddleRuntime",
    "StepOptions",
    "StepRun",
    "is_wrapped",
    "register",
    "runtime_of",
]
