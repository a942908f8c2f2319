"""Decentralized optimizers: SADDLe (Q-SADDLe, N-SADDLe) and the baselines, as one wrapper."""

from saddle_torch.optim.algorithms import ALGORITHMS, Algorithm
from saddle_torch.optim.wrapper import DistributedOptimizer

__all__ = ["ALGORITHMS", "Algorithm", "DistributedOptimizer"]
