"""Decentralized optimizers: SADDLe (Q-SADDLe, N-SADDLe) and the baselines, as one wrapper."""

from saddle_torch.optim.algorithm import Algorithm
from saddle_torch.optim.wrapper import ALGORITHMS, DistributedOptimizer

__all__ = ["ALGORITHMS", "Algorithm", "DistributedOptimizer"]
