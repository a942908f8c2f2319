"""CHOCO state (Koloskova et al., 2019): the public copies of compressed gossip, and their health.

Every rank keeps, per gossip name, x̂ (its public copy) and s = Σ_{j∈N(i)∪{i}} w_ij x̂_j; a round sends
q = C(x − x̂), then x̂ += q, s += Σ_j w_ij q_j and x += γ (s − x̂) (in the engine). A time-varying topology
keeps one (x̂, s) per phase of its period (:meth:`ChocoState.key`).
"""

from __future__ import annotations

import math
import warnings

import torch

from saddle_torch import _ops
from saddle_torch.comm import Door, crc_of
from saddle_torch.compression import Compression
from saddle_torch.errors import CompressionWarning


class ResidualMonitor:
    """Watches CHOCO's residual r = ‖x − x̂‖/‖x‖ of one gossip name and warns once when it diverges.

    Healthy CHOCO keeps x̂ close to x: r stays small (or falls) as training goes on. Two signatures of
    a γ too large for the codec and the graph, both measured (docs/benchmarks.md):

    - r keeps growing: it rose at 7 of the last 8 checks and at least doubled over them (topk:0.12 at
      γ = 0.6 on a ring of 8 while training: r grows ×1.5 every 20 rounds from round 100 on);
    - r never contracts: it stays above 0.5 for ``patience`` rounds (static consensus, topk:0.1 at
      γ = 1 on a ring of 4: r stays 1.1–1.7).

    Checked every ``every`` rounds (two norms of the tensor), and at once on a non-finite model.
    """

    def __init__(
        self, name: str, gamma: float, compression: Compression, every: int = 10, patience: int = 100
    ) -> None:
        self.name, self.gamma, self.compression = name, gamma, compression
        self.every, self.patience = every, patience
        self.rounds = 0
        self.high = 0  # consecutive rounds (checked ones, times ``every``) with r > 0.5
        self.recent: list[float] = []  # r at the last 9 checks
        self.warned = False

    def observe(self, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """Account one completed round of ``x`` with public copy ``x_hat``."""
        self.rounds += 1
        if self.warned or self.rounds % self.every:
            return
        norm = float(x.norm())
        if not math.isfinite(norm):
            self._warn("the model is no longer finite")
            return
        r = float(torch.dist(x, x_hat)) / (norm + 1e-30)
        self.recent = [*self.recent[-8:], r]
        rises = sum(b > a for a, b in zip(self.recent, self.recent[1:], strict=False))
        if len(self.recent) == 9 and rises >= 7 and r >= 2 * self.recent[0] and r > 1e-3:
            self._warn(
                f"its CHOCO residual ‖x − x̂‖/‖x‖ grew from {self.recent[0]:.3g} to {r:.3g} over the last "
                f"{8 * self.every} rounds"
            )
            return
        self.high = self.high + self.every if r > 0.5 else 0
        if self.high >= self.patience:
            self._warn(
                f"its CHOCO residual ‖x − x̂‖/‖x‖ has stayed above 0.5 for {self.high} rounds (now {r:.2f})"
            )

    def _warn(self, what: str) -> None:
        self.warned = True
        warnings.warn(
            f"saddle_torch: compressed gossip of {self.name!r} is diverging: {what}, with gamma={self.gamma} "
            f"and compression={self.compression!r}. Training on it gives garbage: use gamma='auto' "
            f"(saddle_torch.compression.tune_gamma) or a smaller gamma for this codec and topology.",
            CompressionWarning,
            stacklevel=3,
        )


class ChocoState:
    """The (x̂, s) of every compressed gossip name, one per phase of the topology, and their monitors.

    Args:
        period: the topology's period (1 for a static graph).
    """

    def __init__(self, period: int) -> None:
        self.period = period
        self.store = _ops.ChocoStore()
        self._monitors: dict[str, ResidualMonitor] = {}

    def reset(self, period: int) -> None:
        """Forget every state (a new topology: s = Σ_j w_ij x̂_j belongs to the old W)."""
        self.period = period
        self.store.clear()
        self._monitors.clear()

    def key(self, name: str, step: int) -> str:
        """Key of the CHOCO state (x̂, s) that round ``step`` of ``name`` uses.

        A static topology has one state per name. A time-varying one (``one_peer_exponential``) has
        one per phase, ``name@phase<k>``: CHOCO needs x̂_i to be the same on every rank that holds a
        copy, and in phase k only the phase's neighbours receive i's message, so each phase keeps
        its own public copies (k = step mod period; memory: period × 2 copies of the tensor).
        Each phase's W is doubly stochastic, so each phase's update keeps the average.
        """
        return name if self.period == 1 else f"{name}@phase{step % self.period}"

    def keys(self, name: str) -> list[str]:
        """Every state key of ``name`` under the current topology (one per phase)."""
        return [self.key(name, k) for k in range(self.period)]

    def has(self, key: str) -> bool:
        """Whether ``key`` has state."""
        return bool(self.store.has(key))

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The live (x̂, s) of ``key`` (later rounds update them in place)."""
        return self.store.get(key)

    def set(self, key: str, x_hat: torch.Tensor, s: torch.Tensor) -> None:
        """Replace the state of ``key`` (restoring a checkpoint)."""
        self.store.set(key, x_hat, s)

    def names(self) -> list[str]:
        """Every key with state."""
        return list(self.store.names())

    def prime(self, key: str, tensor: torch.Tensor, door: Door) -> bool:
        """Start the public copies of ``key`` at ``tensor`` if every rank holds the same one.

        Collective (one all-gather of a CRC through ``door``). Every rank's stored x̂_j must equal
        neighbour j's own x̂_j. Zeros always satisfy that; the tensor itself does when it is equal on
        every rank (a model after ``broadcast_parameters``). Starting from x̂ = s = x₀ skips the rounds
        CHOCO would spend moving its public copies from 0 to the model: the first messages are
        C(x − x₀) instead of C(x). (s = Σ_j w_ij x̂_j = x₀: W's rows sum to 1.)

        Returns:
            whether the state was created; nothing changes when the ranks differ, when ``key``
            already has state, or for tensors other than float32.
        """
        if self.has(key) or tensor.dtype != torch.float32:
            return False
        data = tensor.detach().to("cpu").contiguous().view(-1)
        if not door.same_everywhere(
            [crc_of([data]), data.numel()],
            what=f"checking that every rank starts {key!r} from the same tensor",
        ):
            return False
        self.store.set(key, data, data)
        return True

    def state(
        self, name: str, step: int, flat: torch.Tensor, door: Door
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The (x̂, s) of round ``step`` of ``name``; created at its first round (collective then)."""
        key = self.key(name, step)
        if not self.has(key):  # first round of this phase since creation or set_topology
            self.prime(key, flat, door)
        return self.store.get_or_zeros(key, flat.numel())

    def monitor(self, name: str, gamma: float, compression: Compression) -> ResidualMonitor:
        """The residual monitor of ``name`` (created at its first compressed round)."""
        monitor = self._monitors.get(name)
        if monitor is None:
            monitor = self._monitors[name] = ResidualMonitor(name, gamma, compression)
        return monitor


__all__ = ["ChocoState", "ResidualMonitor"]
