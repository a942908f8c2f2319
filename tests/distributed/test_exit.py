"""Every way a job ends leaves no thread joinable: 20 clean exits in 20 runs of the README loop.

Before the fix, ``dist.destroy_process_group()`` after ``st.init()`` aborted about one run in five with
"terminate called without an active exception": the engine's worker thread dropped the last
reference to a finished round while Python finalized, the tensor it released asked for the GIL, and
CPython ends such threads with pthread_exit, which unwinds through a noexcept destructor. Each run is a
real torchrun job of 2 ranks (scripts/exit_loop.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "scripts" / "exit_loop.py"
ABORTS = ("terminate called", "Fatal Python error", "exitcode: -6", "Aborted")


def _torchrun(mode: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run([*cmd, str(SCRIPT), mode], env=env, capture_output=True, text=True, timeout=timeout)


def _aborted(out: subprocess.CompletedProcess) -> list[str]:
    text = out.stdout + out.stderr
    return [a for a in ABORTS if a in text]


def test_twenty_clean_exits_after_destroy_process_group() -> None:
    failures = []
    for run in range(20):
        out = _torchrun("optimizer")
        if out.returncode != 0 or _aborted(out):
            failures.append((run, out.returncode, _aborted(out), out.stderr[-1500:]))
    assert not failures, failures


@pytest.mark.parametrize("mode", ["hook", "backend"])
def test_ddp_ports_exit_cleanly(mode: str) -> None:
    for _ in range(3):
        out = _torchrun(mode)
        assert out.returncode == 0 and not _aborted(out), out.stderr[-2000:]


@pytest.mark.parametrize(
    ("mode", "message"),
    [("raise", "an error of the user's script"), ("peer-dies", "PeerError")],
)
def test_failed_jobs_exit_with_their_exception_not_an_abort(mode: str, message: str) -> None:
    out = _torchrun(mode)
    assert out.returncode != 0
    assert message in out.stdout + out.stderr, out.stderr[-2000:]
    assert not _aborted(out), out.stderr[-2000:]
