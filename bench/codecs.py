"""Encode+decode throughput of every codec on 25M fp32 elements, beside memcpy and torch ops.

Each codec also runs written in PyTorch tensor ops, the way research code does it.

One process, ``--threads`` intra-op threads (default 1, as each rank gets in the tests). Every
repetition runs all variants back to back; reported: median time, GB/s of fp32 input, and ratios.

    python bench/codecs.py [--numel 25000000] [--reps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from saddle_torch import kernels
from saddle_torch.compression import Compression

BLOCK = 256


# --- the codecs in PyTorch tensor ops (no bit packing: they only count as a speed reference) ------
def torch_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.half().float()


def torch_bf16(x: torch.Tensor) -> torch.Tensor:
    return x.bfloat16().float()


def torch_qsgd(x: torch.Tensor, bits: int, gen: torch.Generator) -> torch.Tensor:
    s = 2 ** (bits - 1) - 1
    v = x.view(-1, BLOCK)
    scale = v.abs().amax(1, keepdim=True).clamp_min(1e-35)
    t = v.abs() / scale * s
    low = t.floor()
    level = (low + (torch.rand(t.shape, generator=gen) < (t - low))).to(torch.int8) * v.sign().to(torch.int8)
    return (level.float() * scale / s).view(-1)


def torch_topk(x: torch.Tensor, ratio: float) -> torch.Tensor:
    k = int(round(ratio * x.numel()))
    idx = x.abs().topk(k, sorted=False).indices
    return torch.zeros_like(x).scatter_(0, idx, x[idx])


def torch_randk(x: torch.Tensor, ratio: float, gen: torch.Generator) -> torch.Tensor:
    k = int(round(ratio * x.numel()))
    idx = torch.randperm(x.numel(), generator=gen)[:k]
    return torch.zeros_like(x).scatter_(0, idx, x[idx] * (x.numel() / k))


def torch_sign(x: torch.Tensor) -> torch.Tensor:
    v = x.view(-1, BLOCK)
    scale = v.abs().mean(1, keepdim=True)
    return (torch.where(v < 0, -scale, scale)).view(-1)


def _native(comp: Compression, x: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    # Message and output buffers are allocated once, as the engine's buffer pool reuses them.
    msg = torch.empty(comp.encoded_bytes(x.numel()), dtype=torch.uint8)
    out = torch.empty_like(x)

    def run(t: torch.Tensor) -> torch.Tensor:
        kernels.codec_encode_into(comp.native, t, 1, msg)
        kernels.codec_decode_into(comp.native, msg, 1, out)
        return out

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--numel", type=int, default=25_000_000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = args.numel - args.numel % BLOCK
    x = torch.randn(n, generator=torch.Generator().manual_seed(0))
    y = torch.empty_like(x)
    gen = torch.Generator().manual_seed(1)
    cases: dict[str, tuple[Compression, Callable[[torch.Tensor], torch.Tensor]]] = {
        "fp16": (Compression.fp16, torch_fp16),
        "bf16": (Compression.bf16, torch_bf16),
        "int8 = qsgd(8)": (Compression.int8, lambda t: torch_qsgd(t, 8, gen)),
        "qsgd(4)": (Compression.qsgd(4), lambda t: torch_qsgd(t, 4, gen)),
        "sign": (Compression.sign, torch_sign),
        "topk(1%)": (Compression.topk(0.01), lambda t: torch_topk(t, 0.01)),
        "topk(10%)": (Compression.topk(0.1), lambda t: torch_topk(t, 0.1)),
        "randk(1%)": (Compression.randk(0.01), lambda t: torch_randk(t, 0.01, gen)),
    }
    timings: dict[str, list[float]] = {"memcpy": []}
    for name in cases:
        timings[name] = []
        timings[name + " (torch ops)"] = []
    variants: list[tuple[str, Callable]] = [("memcpy", lambda t: y.copy_(t))]
    for case, (comp, ref) in cases.items():
        variants += [(case, _native(comp, x)), (case + " (torch ops)", ref)]
    for rep in range(args.reps + 1):
        for name, fn in variants:
            t0 = time.perf_counter()
            fn(x)
            if rep > 0:  # first repetition warms up
                timings[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in timings.items()}
    gb = 4 * n / 1e9
    print(
        f"encode+decode of {n:,} fp32 elements ({4 * n / 1e6:.0f} MB), {args.threads} thread(s), "
        f"median of {args.reps}\n"
    )
    print("| codec | saddle_torch (ms) | GB/s | / memcpy | torch ops (ms) | vs torch ops | size ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| memcpy | {med['memcpy'] * 1e3:.1f} | {gb / med['memcpy']:.1f} | 1.00 | | | |")
    for name, (comp, _) in cases.items():
        t, r = med[name], med[name + " (torch ops)"]
        print(
            f"| {name} | {t * 1e3:.1f} | {gb / t:.1f} | {med['memcpy'] / t:.2f} | {r * 1e3:.1f} "
            f"| {r / t:.1f}× | {comp.compression_ratio(n):.2f}× |"
        )


if __name__ == "__main__":
    main()
