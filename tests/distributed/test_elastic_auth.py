"""Who may join: a running elastic job (real launcher, real workers over Gloo) under a store-level attack.

A process that reaches the launcher's store but lacks the job secret writes what it can: an untagged
join request and growth plan, a broken-epoch mark, a closing list that drops a live rank, and values
replayed from one key into another. A second launcher asks to join with the wrong secret. The job must
act on none of it: one membership change (the rank that really dies), nobody admitted, no model or
optimizer state sent to anyone, every forged value logged.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch.distributed as dist

from saddle_torch.elastic.board import key

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("scripts") / "elastic_job.py"


def _launcher(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("SADDLE_SECRET", None)
    return subprocess.Popen(
        [sys.executable, "-m", "saddle_torch.run", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _read_until(proc: subprocess.Popen, lines: list[str], marker: str, limit: float = 120) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + limit
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            return line
        if time.monotonic() > deadline:
            break
    proc.kill()
    pytest.fail(f"never saw {marker!r}:\n{''.join(lines)[-4000:]}")


def test_forged_replayed_values_and_a_wrong_secret_change_nothing(tmp_path: Path) -> None:
    secret, wrong = tmp_path / "job.secret", tmp_path / "wrong.secret"
    secret.write_text("the job's secret: 0123456789abcdef\n")
    wrong.write_text("somebody else's secret: 0123456789\n")
    out = tmp_path / "out"
    job_args = [str(SCRIPT), "--out", str(out), "--steps", "300", "--kill", "3@150"]
    job = _launcher(["--nproc", "4", "--secret-file", str(secret), *job_args])
    lines: list[str] = []
    address = _read_until(job, lines, "store at").rsplit(" ", 1)[-1].strip()
    host, _, port = address.rpartition(":")
    store = dist.TCPStore(host, int(port), is_master=False, wait_for_workers=False)

    # Before the workers have formed the job: what a process without the secret can write.
    store.append(key("join"), b"99\n")
    store.append(key("join"), b"99|" + b"00" * 32 + b"\n")
    store.append(key(0, "grow"), b"5:99\n")
    store.append(key(0, "broken"), b"attacker: stop everything\n")
    store.append(key(0, "final"), b"0:0;2:0;3:0;\n")  # closes epoch 0 without live rank 1
    store.append(key(1, "members"), store.get(key(0, "members")))  # replay: the launch members, 3 included
    intruder = _launcher(["--join", address, "--secret-file", str(wrong), "--nproc", "1", *job_args])
    intruder_log, _ = intruder.communicate(timeout=120)

    _read_until(job, lines, "membership epoch 1")  # rank 3 died: the one real change
    store.append(key(1, "broken"), store.get(key(0, "broken")))  # replay: epoch 0's failure into epoch 1
    store.set(key("dead", 1), store.get(key("dead", 3)))  # replay: rank 3's death notice for live rank 1
    try:
        rest, _ = job.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        job.kill()
        pytest.fail(f"the job hung:\n{''.join(lines)[-4000:]}")
    log = "".join(lines) + rest
    assert job.returncode == 0, log[-4000:]

    # The intruder launcher is refused before it starts a worker; nothing of the job reaches it.
    assert intruder.returncode != 0 and "secret is not the job's" in intruder_log, intruder_log
    assert "joining workers" not in intruder_log

    ranks = {int(p.stem[4:]): json.loads(p.read_text()) for p in out.glob("rank*.json")}
    assert sorted(ranks) == [0, 1, 2], log[-4000:]  # 99 never joined; 3 died; 1 was not dropped
    for r, record in ranks.items():
        assert record["members"] == [0, 1, 2], (r, log[-4000:])
        assert record["history"] == [{"epoch": 1, "members": [0, 1, 2], "departed": [3]}], (r, log[-4000:])
        assert record["state_bytes_sent"] == 0 and record["state_bytes_received"] == 0
    assert "FencedError" not in log and "joined" not in log
    for forged in ("join", "0/grow", "0/broken", "0/final", "1/broken"):
        message = f"ignored a value without a valid tag at saddle/elastic/{forged} "
        assert message in log, (forged, log[-4000:])
