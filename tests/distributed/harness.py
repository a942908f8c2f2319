"""Spawns real ranks on 127.0.0.1 that talk over Gloo, and collects what each returns."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue
import socket
import traceback
from collections.abc import Callable
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(fn: Callable[..., Any], rank: int, world: int, port: int, out: Any, args: tuple) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    import torch

    torch.set_num_threads(1)
    try:
        result = fn(rank, world, *args)
        # Plain bytes: tensors sent through the queue itself would be shared by file descriptor, which
        # fails once this process has exited.
        out.put((rank, "ok", pickle.dumps(result)))
    except BaseException:  # noqa: BLE001 - every failure is reported to the parent
        out.put((rank, "error", traceback.format_exc()))


_CONTEXT: Any = None


def _context() -> Any:
    """Ranks forked from a server that has imported torch, torch._dynamo and saddle_torch once.

    A spawned rank imports torch (1.5 s of CPU) and, at its first optimizer, torch._dynamo (another
    1.3 s: ``Optimizer.__init__`` is wrapped by ``torch._disable_dynamo``): more CPU than most tests'
    training. The fork server pays both once per session; every rank is a fresh fork of it (no state
    of an earlier test's ranks), single-threaded when forked, and sets its own environment as before.
    """
    global _CONTEXT
    if _CONTEXT is None:
        _CONTEXT = mp.get_context("forkserver")
        _CONTEXT.set_forkserver_preload(["torch", "torch._dynamo", "saddle_torch", "harness"])
    return _CONTEXT


class RankFailure(AssertionError):
    """One or more ranks raised; carries every rank's traceback."""


def run_ranks(
    fn: Callable[..., Any],
    world: int,
    *args: Any,
    timeout: float = 180.0,
    allow_missing: set[int] | None = None,
    wait_for_exit: bool = False,
) -> dict[int, Any]:
    """Run ``fn(rank, world, *args)`` in ``world`` spawned processes; return ``{rank: result}``.

    Ranks in ``allow_missing`` may die without reporting (fault-injection tests); with
    ``wait_for_exit`` the call also waits until those have exited (not for stopped ones). Raises
    ``RankFailure`` if any rank raised, and ``TimeoutError`` if ranks are still running after
    ``timeout`` seconds (they are killed).
    """
    ctx = _context()
    out = ctx.Queue()
    port = free_port()
    procs = [
        ctx.Process(target=_entry, args=(fn, r, world, port, out, args), daemon=True) for r in range(world)
    ]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    errors: dict[int, str] = {}
    expected = set(range(world)) - (allow_missing or set())
    import time

    deadline = time.monotonic() + timeout

    def settled() -> bool:
        # Every expected rank reported; every other rank reported or exited.
        done = set(results) | set(errors)
        exited = all(r in done or procs[r].exitcode is not None for r in range(world))
        return expected <= done and (exited or not wait_for_exit)

    try:
        while not settled():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                missing = sorted(expected - set(results) - set(errors))
                raise TimeoutError(f"ranks {missing} did not finish within {timeout} s")
            try:
                rank, status, value = out.get(timeout=min(remaining, 1.0))
            except queue.Empty:
                dead = [
                    r for r in expected - set(results) - set(errors) if procs[r].exitcode not in (None, 0)
                ]
                for r in dead:
                    errors[r] = f"process exited with code {procs[r].exitcode} without reporting"
                continue
            if status == "ok":
                results[rank] = pickle.loads(value)
            else:
                errors[rank] = value
    finally:
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise RankFailure("\n".join(f"--- rank {r} ---\n{tb}" for r, tb in sorted(errors.items())))
    return results


def resume_train(model: Any, opt: Any, *, path: str, rank: int, start: int, stop: int, mode: str) -> None:
    """Steps ``start``..``stop`` of a checkpoint test on 8×6 random batches seeded by rank and step.

    Loads ``path`` first when ``start > 0``; with ``mode == "save-and-die"`` saves it after the last
    step, waits for every rank and exits the process at once (a kill after the save).
    """
    import torch
    import torch.distributed as dist

    import saddle_torch as st

    if start > 0:
        st.load_checkpoint(path, model, opt)
    for step in range(start, stop):
        g = torch.Generator().manual_seed(10 * rank + step)
        x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    if mode == "save-and-die":
        st.save_checkpoint(path, model, opt)
        dist.barrier()
        os._exit(0)
