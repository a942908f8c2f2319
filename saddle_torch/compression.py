"""Compressed gossip: codecs and CHOCO error feedback (Koloskova et al., 2019).

``compression=`` accepts a :class:`Compression` or its name (``"int8"``, ``"topk:0.1"``; ``"none"`` or
``Compression.none`` for exact gossip); ``None`` means the default given to :func:`saddle_torch.init`
(:func:`resolve`). Every rank keeps a public copy x̂ and s = Σ_{j∈N(i)∪{i}} w_ij x̂_j per gossip name;
a round sends q = C(x − x̂), then x̂ += q, s += Σ_j w_ij q_j and x += γ (s − x̂) (the state lives in
:mod:`saddle_torch.gossip.choco`). Messages carry a validated header; ``stats()`` counts their exact
bytes. "4×" means a message is at most a quarter of the fp32 bytes,
header and indices included: ``topk`` needs ratio < 1/8 for it, and ``int8`` reaches 3.94× (one fp32
scale per 256 elements).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from saddle_torch import _ops, kernels
from saddle_torch.errors import CompressionWarning
from saddle_torch.topology import Topology


@dataclass(frozen=True)
class Compression:
    """A codec and whether CHOCO error feedback is used.

    Build with the class attributes/methods: ``Compression.none``, ``.fp16``, ``.bf16``, ``.int8``,
    ``Compression.qsgd(bits)``, ``Compression.topk(ratio)``, ``Compression.randk(ratio)``,
    ``Compression.sign``, ``Compression.lowrank(rank, iterations)``. ``error_feedback=False`` gives
    naive compressed gossip x ← x + γ Σ_j w_ij (C(x_j) − C(x_i)) — for comparison; it does not reach
    consensus. ``lowrank`` is not a codec of a message but low-rank gossip (PowerGossip,
    :mod:`saddle_torch.gossip.lowrank`): each edge exchanges rank-``rank`` projections of the
    difference of its two ends' models, ``iterations`` power-iteration half steps per round.
    """

    codec: str = "none"
    bits: int = 8
    ratio: float = 0.01
    block_size: int = 256
    error_feedback: bool = True
    rank: int = 1
    iterations: int = 1

    def __post_init__(self) -> None:
        if self.codec == "lowrank":
            if not (isinstance(self.rank, int) and self.rank >= 1):
                raise ValueError(f"lowrank needs rank ≥ 1, got {self.rank!r}")
            if not (isinstance(self.iterations, int) and self.iterations >= 1):
                raise ValueError(f"lowrank needs iterations ≥ 1, got {self.iterations!r}")
            object.__setattr__(self, "_native", None)
            return
        # Building the native codec validates the parameters (ValueError with the reason).
        object.__setattr__(
            self, "_native", _ops.make_codec(self.codec, self.bits, self.ratio, self.block_size)
        )

    def __reduce__(self) -> tuple:
        # Pickled by its fields; the native codec is rebuilt on load.
        fields = (self.codec, self.bits, self.ratio, self.block_size, self.error_feedback)
        return (Compression, (*fields, self.rank, self.iterations))

    @property
    def native(self) -> object:
        """The C++ codec.

        Raises:
            ValueError: low-rank gossip, which has no message codec.
        """
        if self._native is None:  # type: ignore[attr-defined]
            raise ValueError("low-rank gossip has no message codec (its messages depend on each edge)")
        return self._native  # type: ignore[attr-defined]

    @property
    def is_none(self) -> bool:
        """No compression: exact gossip (no CHOCO state)."""
        return self.codec == "none"

    @property
    def is_lowrank(self) -> bool:
        """Low-rank gossip (PowerGossip): per-edge projections, no CHOCO state, no codec."""
        return self.codec == "lowrank"

    @property
    def uses_choco(self) -> bool:
        """A message codec with CHOCO state (every compression but exact and low-rank)."""
        return not (self.is_none or self.is_lowrank)

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

    @staticmethod
    def lowrank(rank: int = 1, iterations: int = 1) -> Compression:
        """Low-rank gossip (PowerGossip, Vogels et al. 2020): rank-``rank`` projections per edge."""
        return Compression("lowrank", rank=rank, iterations=iterations)

    def __repr__(self) -> str:
        if self.is_lowrank:
            more = "" if self.iterations == 1 else f", iterations={self.iterations}"
            return f"Compression(lowrank:{self.rank}{more})"
        ef = "" if self.error_feedback else ", error_feedback=False"
        return f"Compression({self.native!r}{ef})"


Compression.none = Compression("none")  # type: ignore[attr-defined]
Compression.fp16 = Compression("fp16")  # type: ignore[attr-defined]
Compression.bf16 = Compression("bf16")  # type: ignore[attr-defined]
Compression.int8 = Compression("qsgd", bits=8)  # type: ignore[attr-defined]
Compression.sign = Compression("sign")  # type: ignore[attr-defined]


def resolve(compression: Compression | str | None, *, default: Compression | None = None) -> Compression:
    """The :class:`Compression` an option stands for; never ``None`` (exact gossip is ``Compression.none``).

    ``compression=None`` means one thing everywhere in saddle_torch: *the default* — the codec given to
    :func:`saddle_torch.init` (exact gossip when that was ``None`` too). Here ``default`` is that
    codec. Strings name codecs: ``"none"``, ``"fp16"``, ``"bf16"``, ``"int8"``, ``"sign"``,
    ``"qsgd[:bits]"``, ``"topk:ratio"``, ``"randk:ratio"``.

    Raises:
        ValueError: an unknown codec name, a missing ratio, or a value that is not a Compression.
    """
    if compression is None:
        return default if default is not None else Compression.none  # type: ignore[attr-defined]
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
        elif name == "lowrank":  # lowrank[:rank[:iterations]]
            compression = Compression.lowrank(*(int(a) for a in arg[:2]))
        else:
            raise ValueError(
                f"unknown compression {compression!r}; e.g. int8, fp16, topk:0.1, qsgd:4, sign, lowrank:1"
            )
    if not isinstance(compression, Compression):
        raise ValueError(f"compression must be a saddle_torch.Compression, got {type(compression).__name__}")
    return compression


def check_gamma(gamma: float | str) -> float | str:
    """Validate a gossip step option: ``"auto"`` or a number in (0, 1]; returns it (as a float).

    The one validation of γ: every option that takes it (:func:`saddle_torch.DistributedOptimizer`,
    :func:`saddle_torch.neighbor_average`, the DDP hook, the ``saddle`` backend) calls this. ``"auto"``
    is resolved once per topology and codec when the gossip name registers (a set-up handshake),
    never inside a round: 1 for exact gossip, :func:`tune_gamma`'s choice for a codec.

    Raises:
        ValueError: anything else.
    """
    if gamma == "auto":
        return gamma
    if isinstance(gamma, str | bool) or not isinstance(gamma, int | float) or not 0 < gamma <= 1:
        raise ValueError(f"gamma must be 'auto' or in (0, 1], got {gamma!r}")
    return float(gamma)


def roundtrip(compression: Compression, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """C(x): encode then decode a float32 CPU tensor, as a receiver sees it."""
    flat = x.detach().to("cpu", torch.float32).contiguous().reshape(-1)
    msg = kernels.codec_encode(compression.native, flat, seed)
    return kernels.codec_decode(compression.native, msg, flat.numel(), seed).view_as(x)


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
    if not comp.uses_choco or topology.size == 1:
        return 1.0  # exact gossip; low-rank gossip takes exact gossip's γ (it has no codec noise)
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


__all__ = [
    "GAMMA_GRID",
    "Compression",
    "CompressionWarning",
    "check_gamma",
    "resolve",
    "roundtrip",
    "simulate_consensus",
    "tune_gamma",
]
