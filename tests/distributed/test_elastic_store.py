"""The store's host: node 0's launcher (which hosts the job's store) dies while the job trains.

The workers must never hang on the missing store. What they do (docs/errors.md, "The store's host"):
training goes on over Gloo with the current members, as long as none fails; the first failure after
the store died stops every rank it reaches with ``StoreLostError``, which names the store and the
rank's last checkpoint, within the gossip timeout.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("scripts") / "elastic_job.py"
TIMEOUT = 10.0  # elastic_job.py's gossip timeout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by init) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _wait(what: str, cond: object, limit: float, log: Path) -> None:
    deadline = time.monotonic() + limit
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {limit} s:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)


def _steps(out: Path, r: int) -> int:
    try:
        return int((out / f"step{r}").read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def test_training_goes_on_without_the_store_and_the_next_failure_stops_every_rank(tmp_path: Path) -> None:
    out, log = tmp_path / "out", tmp_path / "job.log"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["SADDLE_SECRET"] = "store-test-secret-0123456789"
    cmd = [sys.executable, "-m", "saddle_torch.run", "--nproc", "4", str(SCRIPT), "--out", str(out)]
    cmd += ["--steps", "100000", "--checkpoint-every", "20"]
    with log.open("w") as sink:  # a file, not a pipe: orphaned workers write to it after the launcher died
        launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    pids: dict[int, int] = {}
    try:
        _wait("4 ranks reached step 40", lambda: all(_steps(out, r) >= 40 for r in range(4)), 120, log)
        pids = {r: int((out / f"pid{r}").read_text()) for r in range(4)}
        launcher.send_signal(signal.SIGKILL)  # node 0's launcher, and the store with it
        launcher.wait()
        died_at = {r: _steps(out, r) for r in range(4)}
        # Training goes on with the same 4 members (gossip is peer to peer; the store is not on its path).
        _wait(
            "the workers trained 100 steps without the store",
            lambda: all(_steps(out, r) >= died_at[r] + 100 for r in range(4)),
            120,
            log,
        )
        assert all(_alive(p) for p in pids.values()), log.read_text()[-4000:]
        os.kill(pids[3], signal.SIGKILL)  # a failure that would need a membership change
        t0 = time.monotonic()
        _wait("every rank stopped", lambda: not any(_alive(pids[r]) for r in range(3)), 3 * TIMEOUT, log)
        stopped_in = time.monotonic() - t0
    finally:
        for pid in pids.values():
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            launcher.kill()
    text = log.read_text()
    assert "lost the job's store" in text, text[-4000:]
    assert "Training goes on with the 4 current members" in text
    for r in range(3):
        error = (out / f"rank{r}.error").read_text()
        assert error.startswith("StoreLostError: "), error
        assert "the job's store at 127.0.0.1:" in error and "(hosted by node 0's launcher) is gone" in error
        assert f"Its last checkpoint is {out / f'ckpt.pt.rank{r}'} (step " in error, error
    assert stopped_in < TIMEOUT + 5, stopped_in  # never a hang: well within the gossip timeout
