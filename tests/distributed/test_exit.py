"""Every way a job ends leaves no thread joinable: 20 clean exits in 20 runs of the README loop.

Before the fix, ``dist.destroy_process_group()`` after ``st.init()`` aborted about one run in five with
"terminate called without an active exception": the engine's worker thread dropped the last
reference to a finished round while Python finalized, the tensor it released asked for the GIL, and
CPython ends such threads with pthread_exit, which unwinds through a noexcept destructor. Each run is a
real job of 2 ranks in torchrun's environment (scripts/exit_loop.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from harness import free_port

SCRIPT = Path(__file__).resolve().parent / "scripts" / "exit_loop.py"
ABORTS = ("terminate called", "Fatal Python error", "exit code -6", "Aborted")


def _job(mode: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """One job of 2 ranks, started as torchrun starts them (its environment) without torchrun's agent.

    The agent is a third Python process importing torch: a third of each run's CPU, and nothing of
    what is tested here (how the ranks' own processes end). An abort shows as a rank's SIGABRT (−6).
    """
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            OMP_NUM_THREADS="1",
            RANK=str(rank),
            LOCAL_RANK=str(rank),
            WORLD_SIZE="2",
            LOCAL_WORLD_SIZE="2",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
            TORCHELASTIC_RUN_ID="exit-test",
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, str(SCRIPT), mode],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outs, codes = [], []
    for proc in procs:
        try:
            outs.append(proc.communicate(timeout=timeout))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        codes.append(proc.returncode)
    stdout = "".join(o for o, _ in outs)
    stderr = "".join(f"[rank {r}] exit code {c}\n{e}" for r, ((_, e), c) in enumerate(zip(outs, codes)))
    worst = next((c for c in codes if c != 0), 0)
    return subprocess.CompletedProcess(procs[0].args, worst, stdout, stderr)


def _aborted(out: subprocess.CompletedProcess) -> list[str]:
    text = out.stdout + out.stderr
    return [a for a in ABORTS if a in text]


def test_twenty_clean_exits_after_destroy_process_group() -> None:
    failures = []
    for run in range(20):
        out = _job("optimizer")
        if out.returncode != 0 or _aborted(out):
            failures.append((run, out.returncode, _aborted(out), out.stderr[-1500:]))
    assert not failures, failures


@pytest.mark.parametrize("mode", ["hook", "backend"])
def test_ddp_ports_exit_cleanly(mode: str) -> None:
    for _ in range(3):
        out = _job(mode)
        assert out.returncode == 0 and not _aborted(out), out.stderr[-2000:]


@pytest.mark.parametrize(
    ("mode", "message"),
    [("raise", "an error of the user's script"), ("peer-dies", "PeerError")],
)
def test_failed_jobs_exit_with_their_exception_not_an_abort(mode: str, message: str) -> None:
    out = _job(mode)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr, out.stderr[-2000:]
    assert not _aborted(out), out.stderr[-2000:]
