"""Time per training step of ResNet-20 (CIFAR-sized batches) on CUDA: q-saddle against DDP + SAM.

Three parts, each printed as a markdown table (medians of ``--iters`` steps, CUDA-synchronized, the
slowest rank's time):

1. ``--ranks`` processes sharing GPU 0, default group Gloo: local SGD, local SAM (two passes, no
   communication), q-saddle (saddle_torch gossip over Gloo, staged through host memory), q-saddle with
   int8 gossip, and DDP + SAM on Gloo with CUDA tensors.
2. One process, DDP + SAM on NCCL (world of one: NCCL's collective path, no traffic) next to local SAM.
3. ``--ranks`` processes sharing GPU 0 on NCCL: NCCL refuses two ranks on one device; the error is
   recorded, not hidden.

    python bench/gpu_step.py [--ranks 2] [--iters 30] [--batch 128] [--json out.json]

Needs a CUDA device; exits with a message otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "bench"))
from harness import run_ranks  # noqa: E402
from models import build  # noqa: E402
from step import ddp_sam_step  # noqa: E402

import saddle_torch as st  # noqa: E402

Step = Callable[[torch.Tensor, torch.Tensor], None]


def _resnet() -> nn.Module:
    torch.manual_seed(0)
    return build("resnet20", (3, 32, 32), 10).cuda()


def _loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y)


def _local(sam: bool) -> Step:
    m = _resnet()
    o = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)

    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        o.zero_grad()
        _loss(m, x, y).backward()
        if sam:
            with torch.no_grad():
                ps = [p for p in m.parameters() if p.grad is not None]
                norm = torch.norm(torch.stack([p.grad.norm() for p in ps]))
                es = [0.05 * p.grad / (norm + 1e-12) for p in ps]
                for p, e in zip(ps, es, strict=True):
                    p.add_(e)
            o.zero_grad()
            _loss(m, x, y).backward()
            with torch.no_grad():
                for p, e in zip(ps, es, strict=True):
                    p.sub_(e)
        o.step()

    return run


def _saddle(compression: str) -> Step:
    m = _resnet()
    opt = st.DistributedOptimizer(
        torch.optim.SGD(m.parameters(), lr=0.01), m, algorithm="q-saddle", compression=compression
    )

    def run(x: torch.Tensor, y: torch.Tensor) -> None:
        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = _loss(m, x, y)
            loss.backward()
            return loss

        opt.step(closure)

    return run


def _ddp_sam(group: dist.ProcessGroup | None = None) -> Step:
    ddp = nn.parallel.DistributedDataParallel(_resnet(), device_ids=[0], process_group=group)
    o = torch.optim.SGD(ddp.parameters(), lr=0.01, momentum=0.9)
    return lambda x, y: ddp_sam_step(ddp, o, x, y, rho=0.05)


def _time(methods: dict[str, Step], iters: int, batch: int, rank: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(rank)
    times: dict[str, list[float]] = {k: [] for k in methods}
    for it in range(iters + 3):
        x = torch.randn(batch, 3, 32, 32, generator=g).cuda()
        y = torch.randint(0, 10, (batch,), generator=g).cuda()
        for name, fn in methods.items():
            torch.cuda.synchronize()
            dist.barrier()
            t0 = time.perf_counter()
            fn(x, y)
            torch.cuda.synchronize()
            t = torch.tensor([time.perf_counter() - t0], device="cuda" if _nccl() else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            if it >= 3:
                times[name].append(float(t))
    return {k: statistics.median(v) for k, v in times.items()}


def _nccl() -> bool:
    return dist.get_backend() == "nccl"


def _shared_gpu(rank: int, world: int, iters: int, batch: int, names: tuple[str, ...]) -> dict[str, float]:
    torch.cuda.set_device(0)
    st.init(topology="ring", timeout=timedelta(seconds=300))
    makers: dict[str, Callable[[], Step]] = {
        "local SGD (1 pass, no comm)": lambda: _local(sam=False),
        "local SAM (2 passes, no comm)": lambda: _local(sam=True),
        "DDP + SAM, Gloo all-reduce (CUDA tensors)": _ddp_sam,
        "q-saddle, gossip over Gloo": lambda: _saddle("none"),
        "q-saddle, int8 gossip over Gloo": lambda: _saddle("int8"),
    }
    return _time({n: makers[n]() for n in names}, iters, batch, rank)


GROUPS = (
    (
        "local SGD (1 pass, no comm)",
        "local SAM (2 passes, no comm)",
        "DDP + SAM, Gloo all-reduce (CUDA tensors)",
    ),
    ("local SGD (1 pass, no comm)", "q-saddle, gossip over Gloo", "q-saddle, int8 gossip over Gloo"),
)


def _nccl_single(rank: int, world: int, iters: int, batch: int) -> dict[str, float]:
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", device_id=torch.device("cuda", 0))
    methods = {"local SAM (2 passes, no comm)": _local(sam=True), "DDP + SAM, NCCL (world of 1)": _ddp_sam()}
    out = _time(methods, iters, batch, rank)
    dist.destroy_process_group()
    return out


def _nccl_shared(rank: int, world: int) -> str:
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", timeout=timedelta(seconds=60))
    t = torch.ones(1, device="cuda")
    dist.all_reduce(t)
    torch.cuda.synchronize()
    return f"all_reduce worked: {float(t)}"


def _table(res: dict[str, float], base: str) -> str:
    lines = ["| method | step (ms) | / local SGD |", "|---|---:|---:|"]
    lines += [f"| {k} | {v * 1e3:.1f} | {v / res[base]:.2f} |" for k, v in res.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--groups", type=int, nargs="+", default=None, help="Gloo groups to run (0, 1)")
    parser.add_argument("--no-nccl", action="store_true", help="skip the NCCL parts")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu_step.py needs a CUDA device")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    params = sum(p.numel() for p in _resnet().parameters())
    print(
        f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}; ResNet-20 ({params:,} parameters), "
        f"batch {args.batch}, median of {args.iters}",
        flush=True,
    )
    out: dict[str, object] = {}
    # Groups run apart (each with its own local-SGD baseline) so that one crash loses one group only.
    for i, names in enumerate(GROUPS):
        if args.groups is not None and i not in args.groups:
            continue
        try:
            res = run_ranks(_shared_gpu, args.ranks, args.iters, args.batch, names, timeout=300)[0]
        except BaseException as e:  # noqa: BLE001 - reported with the table it would have filled
            out[f"shared{i}"] = f"{type(e).__name__}: {str(e)[-1500:]}"
            print(f"\ngroup {i} failed: {out[f'shared{i}']}", flush=True)
            continue
        out[f"shared{i}"] = res
        print(f"\n{args.ranks} ranks on one GPU, ring, Gloo:\n" + _table(res, names[0]), flush=True)
    if args.no_nccl:
        _save(args.json, out)
        return
    single = run_ranks(_nccl_single, 1, args.iters, args.batch, timeout=300)[0]
    out["nccl_single"] = single
    print(
        "\n1 rank, NCCL:\n"
        + _table(single, "local SAM (2 passes, no comm)").replace("local SGD", "local SAM")
    )
    try:
        out["nccl_shared"] = run_ranks(_nccl_shared, args.ranks, timeout=45)[0]
    except BaseException as e:  # noqa: BLE001 - recorded: NCCL refuses ranks that share a device
        out["nccl_shared"] = f"{type(e).__name__}: {str(e)[-600:]}"
    print(f"\n{args.ranks} ranks on one GPU, NCCL: {out['nccl_shared']}", flush=True)
    _save(args.json, out)


def _save(path: Path | None, out: dict[str, object]) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
