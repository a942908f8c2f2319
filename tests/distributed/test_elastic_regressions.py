"""Defects the chaos harness (bench/chaos.py) found in elastic training, each reproduced by a real job.

Each test runs ``python -m saddle_torch.run`` with real workers over Gloo (tests/distributed/scripts/
elastic_job.py) in the situation that exposed the defect, and fails the way the defect did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).with_name("scripts") / "elastic_job.py"


def test_a_restarted_process_joins_a_compressed_job(tmp_path: Path) -> None:
    """int8 gossip, rank 2 killed, its restart admitted: the grown ring must train on.

    The defect: ``gamma="auto"`` is resolved by a broadcast the first time a (topology, codec) pair is
    met, decided from each rank's own table. Back at ring(4), the members had it cached and the joiner
    had not: only the joiner entered the broadcast, every round of the grown group timed out, and the
    job changed membership to "same members" forever (the launcher had to kill it).
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "saddle_torch.run", "--nproc", "4", "--restarts", "1", str(SCRIPT)]
    cmd += ["--out", str(tmp_path), "--steps", "250", "--kill", "2@60", "--compression", "int8"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "same members" not in log, log[-4000:]
    ranks = {int(p.stem[4:]): json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    assert sorted(ranks) == [0, 1, 3, 4], log[-4000:]
    for r, record in ranks.items():
        assert record["members"] == [0, 1, 3, 4], (r, log[-4000:])
        assert record["steps"] == 250
    assert [h["departed"] for h in ranks[0]["history"]] == [[2], []]
    assert ranks[4]["state_bytes_received"] > 0 and ranks[0]["state_bytes_sent"] > 0


def test_a_joiner_stopped_at_the_end_of_the_job_is_not_restarted(tmp_path: Path) -> None:
    """A rank dies just before the end: its restart is never admitted and the launcher stops it.

    The defect: the launcher took its own SIGTERM of that process for a failure and restarted it, then
    stopped the new one, and so on until ``--restarts`` ran out (a restart storm at every job's end).
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "saddle_torch.run", "--nproc", "4", "--restarts", "5", str(SCRIPT)]
    cmd += ["--out", str(tmp_path), "--steps", "120", "--kill", "3@115"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert log.count("started process") == 1 and "stopping process 4:" in log, log[-4000:]
    assert "process(es) [4] stopped before they were admitted" in log
    assert "rank 4 was killed" not in log


def _group_after_a_failed_one(rank: int, world: int) -> float:
    import os as _os
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from saddle_torch.comm.groups import form_epoch_group

    port = int(_os.environ["MASTER_PORT"])
    store = dist.TCPStore("127.0.0.1", port, world, rank == 0, timeout=timedelta(seconds=60))
    if rank == 0:  # a member whose last group failed to form (a peer died meanwhile)
        try:
            form_epoch_group(store, "epoch1/", 0, 3, timedelta(seconds=2))  # rank 2 never comes
        except RuntimeError:
            pass
        else:
            raise AssertionError("the group of 3 formed without its third member")
    # rank 1 is a fresh process (a joiner): both form the next epoch's group together
    form_epoch_group(store, "epoch2/", rank, world, timedelta(seconds=20))
    t = torch.ones(1)
    dist.all_reduce(t)
    dist.destroy_process_group()
    return float(t)


def test_a_group_forms_after_a_failed_one_with_a_fresh_process() -> None:
    """After a failed group formation a member must still meet a joiner in the next group.

    The defect: a failed ``init_process_group`` advanced torch's counter of group names, so the member's
    next group put its Gloo addresses under group "1" while the fresh joiner looked under "0"; the
    joiner timed out, the launcher restarted it, and so on (a hang of the chaos run).
    """
    from harness import run_ranks

    out = run_ranks(_group_after_a_failed_one, 2, timeout=120)
    assert out == {0: 2.0, 1: 2.0}


def test_a_second_death_while_the_survivors_connect_fences_nobody(tmp_path: Path) -> None:
    """Rank 3 dies; rank 1 dies right after publishing its address for the survivors' new group.

    The defect: the ranks that dialled rank 1 failed at once and started the next membership change,
    while those waiting for rank 1 to dial them sat in Gloo's connect for 5 timeouts (no abort reaches
    it). They were not marked busy, so the others closed the list after one window without them and
    the live ranks 2 and 5 were fenced (2 of 6 ranks went on). Now every rank forming a group is marked
    busy and the list waits for busy ranks for up to 5 more windows. When rank 1 dies just after the
    group formed, the ranks that are not its neighbours wait in the new group's first collective;
    that ran under the lock the watcher takes, so nobody marked them busy (fenced, 1 run in 5 on a
    loaded machine): it runs outside the lock now.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "saddle_torch.run", "--nproc", "6", str(SCRIPT), "--out", str(tmp_path)]
    cmd += ["--steps", "80", "--kill", "3@40", "--kill-forming", "1@1@0", "--timeout", "3"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "FencedError" not in log and not list(tmp_path.glob("*.error")), log[-4000:]
    ranks = {int(p.stem[4:]): json.loads(p.read_text()) for p in tmp_path.glob("rank*.json")}
    assert sorted(ranks) == [0, 2, 4, 5], log[-4000:]
    for r, record in ranks.items():
        assert record["members"] == [0, 2, 4, 5] and record["steps"] == 80, (r, log[-4000:])
        # epoch 1 (without 3) never formed; epoch 2 is the first group after it, without 1 too
        assert [(h["epoch"], h["departed"]) for h in record["history"]] == [(2, [1])], (r, log[-4000:])
