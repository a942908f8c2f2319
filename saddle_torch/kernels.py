"""saddle_torch's tensor operations: the operator library ``torch.ops.saddle``, called from here only.

The library (csrc/torch/ops_library.cpp) is registered when the extension loads. Each op is dispatched
by device like any PyTorch op: fused kernels for CPU tensors, ATen arithmetic (optimizer ops) or host
staging (codecs) for every other device, device kernels where a build registers them. The wrappers
below restore the project's error classes (the dispatcher reports everything but ``ValueError`` as
``RuntimeError``) and pass 64-bit seeds as the schema's signed ``int``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from saddle_torch import _ops, errors  # _ops loads the extension, which registers torch.ops.saddle

_LIB = torch.ops.saddle
_ = _ops.make_codec  # the extension is loaded
_CORRUPT = "saddle_torch.CorruptMessageError: "  # csrc/torch/ops_library.h
_INTERNAL = "saddle_torch.InternalError: "


def _call(op: Callable[..., Any], *args: Any) -> Any:
    """``op(*args)``, with the project's error classes restored (the dispatcher reports RuntimeError)."""
    try:
        return op(*args)
    except RuntimeError as exc:
        text = str(exc).split("\nException raised from", 1)[0]
        for prefix, cls in ((_CORRUPT, errors.CorruptMessageError), (_INTERNAL, errors.InternalError)):
            if text.startswith(prefix):
                raise cls(text[len(prefix) :]) from None
        raise


def _seed(seed: int) -> int:
    """A 64-bit seed as the schema's signed ``int`` (the kernels read the same 64 bits back)."""
    seed &= (1 << 64) - 1
    return seed - (1 << 64) if seed >= 1 << 63 else seed


def _spec(codec: Any) -> tuple[str, int, float, int]:
    return codec.name, codec.bits, codec.ratio, codec.block_size


def sam_norm_sq(g: torch.Tensor, x: torch.Tensor | None = None) -> float:
    """Σ g² (SAM), or Σ (|x|·g)² when ``x`` is given (ASAM)."""
    return _call(_LIB.sam_norm_sq, g, x)


def sam_perturb(x: torch.Tensor, g: torch.Tensor, e: torch.Tensor, scale: float, adaptive: bool) -> None:
    """``e = scale·g`` (``scale·x²·g`` when adaptive); ``x += e``."""
    _call(_LIB.sam_perturb, x, g, e, scale, adaptive)


def sam_restore(x: torch.Tensor, e: torch.Tensor) -> None:
    """``x -= e``."""
    _call(_LIB.sam_restore, x, e)


def qgm_direction(
    g: torch.Tensor, m_hat: torch.Tensor, x: torch.Tensor, beta: float, weight_decay: float, nesterov: bool
) -> None:
    """``g`` ← the QGM direction of ``g + λx`` with buffer ``m̂``."""
    _call(_LIB.qgm_direction, g, m_hat, x, beta, weight_decay, nesterov)


def qgm_buffer_update(
    m_hat: torch.Tensor, x_prev: torch.Tensor, x: torch.Tensor, mu: float, lr: float
) -> None:
    """``m̂ ← μ·m̂ + (1−μ)·(x_prev − x)/lr``."""
    _call(_LIB.qgm_buffer_update, m_hat, x_prev, x, mu, lr)


def weighted_sum_(out: torch.Tensor, a: float, ys: list[torch.Tensor], b: list[float]) -> None:
    """``out ← a·out + Σ_j b[j]·ys[j]`` in one blocked pass."""
    _call(_LIB.weighted_sum_, out, a, ys, b)


# Codecs (a codec object is saddle_torch._ops.make_codec's: Compression.native).


def codec_encode(codec: Any, x: torch.Tensor, seed: int) -> torch.Tensor:
    """The message (uint8, on the host) that encodes the float32 vector ``x``."""
    return _call(_LIB.codec_encode, x, *_spec(codec), _seed(seed))


def codec_decode(codec: Any, msg: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """The ``n`` float32 values ``msg`` encodes (raises CorruptMessageError)."""
    return _call(_LIB.codec_decode, msg, *_spec(codec), n, _seed(seed))


def codec_decode_add(codec: Any, msg: torch.Tensor, seed: int, alpha: float, acc: torch.Tensor) -> None:
    """``acc += alpha·C(x)`` from ``msg``; raises CorruptMessageError before touching ``acc``."""
    _call(_LIB.codec_decode_add, msg, *_spec(codec), _seed(seed), alpha, acc)


def codec_encode_into(codec: Any, x: torch.Tensor, seed: int, msg: torch.Tensor) -> None:
    """:func:`codec_encode` into a caller-owned buffer of ``codec.encoded_bytes(x.numel())`` bytes."""
    _call(_LIB.codec_encode_into, x, *_spec(codec), _seed(seed), msg)


def codec_decode_into(codec: Any, msg: torch.Tensor, seed: int, out: torch.Tensor) -> None:
    """:func:`codec_decode` into ``out`` (its size is the vector's)."""
    _call(_LIB.codec_decode_into, msg, *_spec(codec), _seed(seed), out)


__all__ = [
    "codec_decode",
    "codec_decode_add",
    "codec_decode_into",
    "codec_encode",
    "codec_encode_into",
    "qgm_buffer_update",
    "qgm_direction",
    "sam_norm_sq",
    "sam_perturb",
    "sam_restore",
    "weighted_sum_",
]
