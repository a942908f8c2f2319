"""``python -m saddle_torch.run``: a launcher under which the survivors of a failure keep running.

torchrun's agent stops and restarts every local worker when one of them fails. This launcher hosts
the job's key-value store itself (outside the workers, so no worker's death takes it down), starts
``--nproc`` workers with torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), and when one exits with an error or a signal it reports who died,
tells the others through the store (so they need not wait out the timeout) and lets them go on.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import torch.distributed as dist

from saddle_torch.elastic.membership import key
from saddle_torch.elastic.runtime import STORE_ENV


def _describe(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The launcher's command line."""
    p = argparse.ArgumentParser(
        prog="python -m saddle_torch.run",
        description="Start N workers of an elastic saddle_torch job on this machine; survivors of a "
        "failed worker carry on (saddle_torch.init(elastic=True)).",
    )
    p.add_argument("--nproc", type=int, required=True, help="number of worker processes")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address the store listens on and the workers connect to (default 127.0.0.1: this "
        "machine only; see docs/security.md before widening it)",
    )
    p.add_argument("--port", type=int, default=0, help="store port (default: a free one)")
    p.add_argument("script", help="the training script")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the script")
    args = p.parse_args(argv)
    if args.nproc < 1:
        p.error(f"--nproc must be at least 1, got {args.nproc}")
    return args


def _env(rank: int, nproc: int, host: str, port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(nproc),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR=host,
        MASTER_PORT=str(port),
        # env:// rendezvous (dist.init_process_group without a store) connects to this store
        # instead of starting one in rank 0, as under torchrun's agent.
        TORCHELASTIC_USE_AGENT_STORE="True",
        TORCHELASTIC_RESTART_COUNT="0",
    )
    env[STORE_ENV] = f"{host}:{port}"
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns 0 if at least one worker finished cleanly, else the first failure's code."""
    args = parse_args(argv)
    store = dist.TCPStore(
        args.host, args.port, is_master=True, wait_for_workers=False, timeout=timedelta(seconds=60)
    )
    port = store.port
    store.set(key("epoch"), "0")
    procs = {
        r: subprocess.Popen(
            [sys.executable, args.script, *args.args], env=_env(r, args.nproc, args.host, port)
        )
        for r in range(args.nproc)
    }

    def forward(signum: int, _frame: object) -> None:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    running, codes = dict(procs), {}
    print(f"saddle_torch.run: {args.nproc} workers, store at {args.host}:{port}", file=sys.stderr, flush=True)
    try:
        while running:
            for r, p in list(running.items()):
                code = p.poll()
                if code is None:
                    continue
                del running[r]
                codes[r] = code
                if code != 0:
                    what = f"rank {r} {_describe(code)}"
                    store.set(key("dead", r), what)
                    epoch = store.get(key("epoch")).decode()
                    store.compare_set(key(epoch, "broken"), "", f"launcher: {what}")
                    print(
                        f"saddle_torch.run: {what}; {len(running)} still running",
                        file=sys.stderr,
                        flush=True,
                    )
            time.sleep(0.05)
    except KeyboardInterrupt:
        forward(signal.SIGINT, None)
        for p in procs.values():
            p.wait()
        return 130
    failed = {r: c for r, c in codes.items() if c != 0}
    ok = sorted(r for r, c in codes.items() if c == 0)
    summary = f"saddle_torch.run: ranks {ok} finished"
    if failed:
        summary += "; " + ", ".join(f"rank {r} {_describe(c)}" for r, c in sorted(failed.items()))
    print(summary, file=sys.stderr, flush=True)
    if ok:
        return 0
    return next(iter(failed.values())) if failed else 0


__all__ = ["main", "parse_args"]
