"""A small elastic job for the membership tests (run under ``python -m saddle_torch.run``).

    elastic_job.py --out OUT [--steps N] [--kill RANK@STEP] [--kill-forming RANK@EPOCH]
                   [--checkpoint-every K] [--compression C] [--timeout S]

Each rank fits a linear model to its own synthetic regression data with q-saddle on a ring
(``init(elastic=True)``), sleeping 20 ms per step so that a test has time to act while it runs; rank
``RANK`` SIGKILLs itself at ``STEP`` (a real membership change); with ``--kill-forming`` rank ``RANK``
SIGKILLs itself ``SECONDS`` after it published its address for the group of membership epoch ``EPOCH``
(a second failure while the survivors of the first connect). Every rank writes ``OUT/pid<id>`` at
start, ``OUT/step<id>`` (its completed steps) after every step and, when it finishes,
``OUT/rank<id>.json``: its membership history, members, and the bytes of model and optimizer state it
sent to and received from joining processes. A rank that fails writes
``OUT/rank<id>.error`` (the exception's class and message) before the exception propagates.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from datetime import timedelta
from pathlib import Path

import torch
from torch import nn

import saddle_torch as st


def parse_args() -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--kill", default="-1@-1", metavar="RANK@STEP")
    p.add_argument("--kill-forming", default="-1@-1@0", metavar="RANK@EPOCH@SECONDS")
    p.add_argument("--checkpoint-every", type=int, default=0, help="save_checkpoint every K steps (0: never)")
    p.add_argument("--timeout", type=float, default=10.0, help="the group's timeout in seconds")
    p.add_argument("--compression", default=None, help="the gossip codec, e.g. int8 (default: exact)")
    return p.parse_args()


def train(args: argparse.Namespace, ctx: st.GossipContext) -> dict[str, object]:
    """The training loop; this rank's membership record."""
    me = ctx.elastic.original_rank
    kill_rank, kill_step = (int(v) for v in args.kill.split("@"))
    torch.manual_seed(0)
    model = nn.Linear(8, 1)
    st.broadcast_parameters(model.state_dict(), root_rank=0)
    opt = st.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05), model, algorithm="q-saddle")
    gen = torch.Generator().manual_seed(me)
    w_true = torch.randn(8, 1, generator=torch.Generator().manual_seed(100 + me))
    for step in range(opt.saddle.step, args.steps):
        if me == kill_rank and step == kill_step:
            os.kill(os.getpid(), signal.SIGKILL)
        xb = torch.randn(16, 8, generator=gen)

        def closure(xb: torch.Tensor = xb) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(xb), xb @ w_true)
            loss.backward()
            return loss

        opt.step(closure)
        (args.out / f"step{me}").write_text(str(step + 1))  # progress, for a test watching the job
        if args.checkpoint_every and (step + 1) % args.checkpoint_every == 0:
            st.save_checkpoint(args.out / "ckpt.pt", model, opt)
        time.sleep(0.02)
    elastic = ctx.elastic
    return {
        "members": elastic.members,
        "history": [
            {"epoch": a.epoch, "members": a.members, "departed": a.departed} for a in elastic.history
        ],
        "steps": opt.saddle.step,
        "store_lost": elastic.store_lost,
        "state_bytes_sent": elastic.state_bytes_sent,
        "state_bytes_received": elastic.state_bytes_received,
    }


def die_while_forming(rank: int, epoch: int, delay: float) -> None:
    """If this is ``rank``: SIGKILL it ``delay`` s after it published its address for epoch ``epoch``'s group.

    The address is in the store, so the others start connecting to a process that is gone: the ranks
    that dial it fail at once, those it was to dial wait for Gloo's connect timeout.
    """
    from saddle_torch.elastic import rendezvous

    if int(os.environ.get("RANK", "-1")) != rank:
        return
    marker = f"/{epoch}/pg/"

    class DyingStore(rendezvous.SignedStore):
        def set(self, key: str, value: bytes | str) -> None:  # noqa: D102
            super().set(key, value)
            if marker in key:
                threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()

    rendezvous.SignedStore = DyingStore


def main() -> None:
    """Train; write this rank's record, or its error."""
    args = parse_args()
    rank, epoch, delay = args.kill_forming.split("@")
    die_while_forming(int(rank), int(epoch), float(delay))
    args.out.mkdir(parents=True, exist_ok=True)
    ctx = st.init(
        topology="ring", timeout=timedelta(seconds=args.timeout), compression=args.compression, elastic=True
    )
    me = ctx.elastic.original_rank
    (args.out / f"pid{me}").write_text(str(os.getpid()))
    try:
        record = train(args, ctx)
    except Exception as exc:
        (args.out / f"rank{me}.error").write_text(f"{type(exc).__name__}: {exc}")
        raise
    (args.out / f"rank{me}.json").write_text(json.dumps(record))
    st.shutdown()


if __name__ == "__main__":
    main()
