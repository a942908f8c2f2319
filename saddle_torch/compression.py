"""Compressed gossip: codecs and CHOCO error feedback (Koloskova et al., 2019).

``compression=`` accepts a :class:`Compression` (or ``None`` / ``Compression.none`` for exact gossip).
Every rank keeps a public copy x̂ and s = Σ_{j∈N(i)∪{i}} w_ij x̂_j per gossip name; a round sends
q = C(x − x̂), then x̂ += q, s += Σ_j w_ij q_j and x += γ (s − x̂). x̂ and s start at the tensor itself
when it is the same on every rank (a broadcast model; CRC-checked once), else at 0 as in the paper.
Messages carry a validated header;
``stats()`` counts their exact bytes. "4×" means a message is at most a quarter of the fp32 bytes,
header and indices included: ``topk`` needs ratio < 1/8 for it, and ``int8`` reaches 3.94× (one fp32
scale per 256 elements).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import torch

from saddle_torch import _ops
from saddle_torch.topology import Topology


@dataclass(frozen=True)
class Compression:
    """A codec and whether CHOCO error feedback is used.

    Build with the class attributes/methods: ``Compression.none``, ``.fp16``, ``.bf16``, ``.int8``,
    ``Compression.qsgd(bits)``, ``Compression.topk(ratio)``, ``Compression.randk(ratio)``,
    ``Compression.sign``. ``error_feedback=False`` gives naive compressed gossip
    x ← x + γ Σ_j w_ij (C(x_j) − C(x_i)) — for comparison; it does not reach consensus.
    """

    codec: str = "none"
    bits: int = 8
    ratio: float = 0.01
    block_size: int = 256
    error_feedback: bool = True

    def __post_init__(self) -> None:
        # Building the native codec validates the parameters (ValueError with the reason).
        object.__setattr__(
            self, "_native", _ops.make_codec(self.codec, self.bits, self.ratio, self.block_size)
        )

    def __reduce__(self) -> tuple:
        # Pickled by its fields; the native codec is rebuilt on load.
        return (Compression, (self.codec, self.bits, self.ratio, self.block_size, self.error_feedback))

    @property
    def native(self) -> object:
        """The C++ codec."""
        return self._native  # type: ignore[attr-defined]

    @property
    def is_none(self) -> bool:
        """No compression: exact gossip (no CHOCO state)."""
        return self.codec == "none"

    def encoded_bytes(self, numel: int) -> int:
        """Exact bytes of one message for ``numel`` elements (header included)."""
        return int(self.native.encoded_bytes(numel))

    def compression_ratio(self, numel: int) -> float:
        """fp32 bytes over message bytes for ``numel`` elements."""
        return 4 * numel / self.encoded_bytes(numel)

    def without_error_feedback(self) -> Compression:
        """The same codec in naive compressed gossip (no x̂, s)."""
        return replace(self, error_feedback=False)

    @staticmethod
    def qsgd(bits: int = 8, block_size: int = 256) -> Compression:
        """Stochastic b-bit quantization (unbiased), one fp32 scale per block."""
        return Compression("qsgd", bits=bits, block_size=block_size)

    @staticmethod
    def topk(ratio: float) -> Compression:
        """Keep the ⌈ratio·n⌉ entries of largest magnitude (values + u32 indices)."""
        return Compression("topk", ratio=ratio)

    @staticmethod
    def randk(ratio: float) -> Compression:
        """Keep ⌈ratio·n⌉ entries chosen by a seed both sides share (no indices on the wire)."""
        return Compression("randk", ratio=ratio)

    def __repr__(self) -> str:
        ef = "" if self.error_feedback else ", error_feedback=False"
        return f"Compression({self.native!r}{ef})"


Compression.none = Compression("none")  # type: ignore[attr-defined]
Compression.fp16 = Compression("fp16")  # type: ignore[attr-defined]
Compression.bf16 = Compression("bf16")  # type: ignore[attr-defined]
Compression.int8 = Compression("qsgd", bits=8)  # type: ignore[attr-defined]
Compression.sign = Compression("sign")  # type: ignore[attr-defined]


def resolve(compression: Compression | str | None) -> Compression | None:
    """``None`` for exact gossip, else a :class:`Compression` (strings: ``"int8"``, ``"topk:0.1"``...)."""
    if compression is None:
        return None
    if isinstance(compression, str):
        name, *arg = compression.split(":")
        if name in ("none", "fp16", "bf16", "int8", "sign"):
            compression = getattr(Compression, name)
        elif name == "qsgd":
            compression = Compression.qsgd(int(arg[0]) if arg else 8)
        elif name in ("topk", "randk"):
            if not arg:
                raise ValueError(f"{name} needs a ratio, e.g. '{name}:0.1'")
            compression = getattr(Compression, name)(float(arg[0]))
        else:
            raise ValueError(f"unknown compression {compression!r}; e.g. int8, fp16, topk:0.1, qsgd:4, sign")
    if not isinstance(compression, Compression):
        raise ValueError(f"compression must be a saddle_torch.Compression, got {type(compression).__name__}")
    return None if compression.is_none else compression


def roundtrip(compression: Compression, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """C(x): encode then decode a float32 CPU tensor, as a receiver sees it."""
    flat = x.detach().to("cpu", torch.float32).contiguous().reshape(-1)
    msg = _ops.codec_encode(compression.native, flat, seed)
    return _ops.codec_decode(compression.native, msg, flat.numel(), seed).view_as(x)


def _compress_rows(compression: Compression, v: torch.Tensor, seed: int) -> torch.Tensor:
    """C applied to each row of ``v`` (one row a rank), as each rank's message decodes.

    Block codecs (fp16/bf16, qsgd, sign) act on blocks that never straddle two rows when the row
    length is a multiple of the block size: one call covers every rank. topk/randk select per row.
    """
    n, dim = v.shape
    if compression.codec in ("topk", "randk") or dim % compression.block_size:
        return torch.stack([roundtrip(compression, v[i], seed=seed * n + i) for i in range(n)])
    return roundtrip(compression, v.reshape(-1), seed=seed).view(n, dim)


def simulate_consensus(
    topology: Topology,
    compression: Compression,
    gamma: float,
    rounds: int = 200,
    dim: int = 1024,
    seed: int = 0,
    checkpoints: tuple[int, ...] = (),
) -> float | list[float]:
    """Relative consensus error ‖X − X̄‖/‖X₀ − X̄‖ after ``rounds`` of compressed gossip on W.

    Simulates CHOCO (or naive compressed gossip without error feedback) on random vectors, one row
    per rank, with the real codec and the real mixing matrix; stops early at ``inf`` on divergence.

    Args:
        topology: the topology; a time-varying one runs one CHOCO state per phase, as the engine
            does (phase t mod period updates only its own x̂, s).
        compression: the codec, with or without error feedback.
        gamma: the consensus step γ.
        rounds: rounds to simulate.
        dim: elements per rank.
        seed: seeds the starting vectors and the codecs' randomness.
        checkpoints: also return the error after each of these round counts (a list, ``rounds`` last).
    """
    n = topology.size
    ws = [topology.mixing_matrix(k).to(torch.float32) for k in range(topology.period)]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g)
    mean = x.mean(0, keepdim=True)
    start = float((x - mean).norm())
    x_hats = [torch.zeros_like(x) for _ in ws]
    ss = [torch.zeros_like(x) for _ in ws]
    marks = sorted(set(checkpoints) | {rounds})
    errors: list[float] = []
    for t in range(1, rounds + 1):
        k = (t - 1) % len(ws)
        w, x_hat, s = ws[k], x_hats[k], ss[k]
        if compression.error_feedback:
            q = _compress_rows(compression, x - x_hat, seed=1000 * seed + t)
            x_hat += q
            s += w @ q
            x += gamma * (s - x_hat)
        else:
            c = _compress_rows(compression, x, seed=1000 * seed + t)
            x += gamma * (w @ c - c)
        if t in marks:
            err = float((x - mean).norm()) / start
            if not math.isfinite(err) or err > 1e6:
                errors += [math.inf] * (len(marks) - len(errors))
                break
            errors.append(err)
    return errors if checkpoints else errors[-1]


GAMMA_GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def tune_gamma(
    topology: Topology,
    compression: Compression | str,
    grid: tuple[float, ...] = GAMMA_GRID,
    horizon: int = 30,
    stability_rounds: int = 2000,
    starts: int = 3,
    dim: int = 1024,
) -> float:
    """The CHOCO consensus step γ that training needs, for a codec on a topology.

    Training lives in the contraction over the first tens of rounds: the models move every step, so
    what matters is how fast gossip pulls them together, not the error floor reached after thousands
    of exact-consensus rounds (a small γ lowers that floor while slowing contraction tenfold: the old
    floor-based choice cost int8 on a ring of 8 twelve points of accuracy). So, simulating CHOCO on the
    real W with the real codec from ``starts`` random starts:

    1. score each γ by its mean relative consensus error after ``horizon`` rounds, counting every
       error below 1e-3 as equal (a codec's noise floor is not a reason to give up contraction);
    2. take the best score, the largest γ among equals;
    3. keep it only if it does not diverge over ``stability_rounds`` rounds (the error then is
       below 1e-3 or below half its value at the horizon), else try the next best.

    Exact gossip (and a world of one) gets 1.0 without a simulation. Deterministic: every rank
    computes the same value.

    Returns:
        γ from ``grid``; the smallest grid value if every γ diverges.
    """
    comp = resolve(compression)
    if comp is None or topology.size == 1:
        return 1.0
    short: dict[float, float] = {}
    for gamma in grid:
        errs = [simulate_consensus(topology, comp, gamma, horizon, dim, seed) for seed in range(starts)]
        short[gamma] = max(sum(errs) / starts, 1e-3)
    for gamma in sorted(grid, key=lambda k: (short[k], -k)):
        if not math.isfinite(short[gamma]):
            break
        late = simulate_consensus(topology, comp, gamma, stability_rounds, dim, seed=starts)
        if math.isfinite(late) and (late < 1e-3 or late < 0.5 * short[gamma]):
            return gamma
    return min(grid)


class CompressionWarning(RuntimeWarning):
    """Compressed gossip is not converging (a γ too large for the codec and the graph)."""


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


__all__ = [
    "GAMMA_GRID",
    "Compression",
    "CompressionWarning",
    "ResidualMonitor",
    "resolve",
    "roundtrip",
    "simulate_consensus",
    "tune_gamma",
]
