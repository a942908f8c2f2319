"""The 2-minute chaos run (issue 30, item 1): bench/chaos.py against one configuration, fixed seed.

8 ranks train Fashion-MNIST under two launchers on 127.0.0.1 (4 ranks each, ``--restarts``). The
harness injects, at seeded random times (mean gap 7 s, at least 4 s after the previous fault ended):
a SIGKILL of a launch rank while the job sets up, then faults dealt in a seeded random order from
setup (a worker killed, then its replacement while it imports torch), sigstop (stopped 12 s, past the
6 s timeout: the others drop it, it is fenced and restarted), joiner (a worker killed, then its
replacement while the members admit it) and launcher (node 1's launcher SIGKILLed: its 4 workers
train on as orphans). With seed 0 on this machine: 5 faults of all four kinds plus the launch kill.

The run must end without a hang (the harness's watchdog kills a job with no step for 3 x timeout +
30 s and fails it), every fault survived (the job finished, node 0's launcher exited 0, and every
process that exited with an error was one a fault hit, or a documented casualty), the world back at
8 ranks (every failed rank was replaced), and the averaged model within 1 point of the uninterrupted
run.

The accuracy bound: an uninterrupted run would add ~35 s, so its accuracy was measured once and is a
constant here. The job is synchronous: the same seed, steps and code give the same models whatever the
pace and the launcher layout (measured: 84.48% after 300 steps for one launcher unpaced and two
launchers paced at 0.04 s; 82.28% after 150 steps paced at 0 and 0.03 s). The uninterrupted job of
this test (``bench.chaos.reference`` with ``Options(steps=800, seed=0)``, i.e. ``python -m
saddle_torch.run --nproc 8 examples/elastic.py --data fashion-mnist --algorithm q-saddle --topology
ring --steps 800 --seed 0``) scored REFERENCE_ACCURACY; the chaos run scored 86.14%. A change to the
training numerics moves the reference: measure it again and update the constant.

Configuration: q-saddle on a ring without compression (examples/elastic.py's default). Not in this
test, because it fails today (``make chaos`` runs it): two kills within one timeout window can fence
live ranks (docs/errors.md, "Chaos"). The int8 livelock the harness found is fixed and has its own
test (test_elastic_regressions.py).

Wall time on 2 shared cores: about 20 s of set-up, 60 s of training with the faults' stalls, a few
seconds to finish (85-90 s; the 6 s timeout keeps the stalls short).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FMNIST = Path("/usr/share/datasets/fashion-mnist")
REFERENCE_ACCURACY = 85.97  # the uninterrupted run, measured (see above)
STEPS = 800


def test_chaos_two_minutes(tmp_path: Path) -> None:
    assert FMNIST.is_dir(), f"{FMNIST} is missing: apt-get install dataset-fashion-mnist (`make test` does)"
    cmd = [sys.executable, str(ROOT / "bench" / "chaos.py"), "--configs", "q-saddle-ring"]
    cmd += ["--steps", str(STEPS), "--step-seconds", "0.04", "--timeout", "6", "--stop-extra", "6"]
    cmd += ["--mtbf", "7", "--min-gap", "4", "--kinds", "setup,sigstop,joiner,launcher"]
    cmd += ["--launch-setup", "1", "--launch-window", "10", "--quiet-tail", "18", "--seed", "0"]
    cmd += ["--reference-accuracy", str(REFERENCE_ACCURACY), "--max-drop", "1.0", "--out", str(tmp_path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as e:  # the harness's own watchdog should have ended it long before
        pytest.fail(f"the chaos harness itself hung:\n{e.stdout!r:.4000}")
    log = proc.stdout + proc.stderr
    report_file = tmp_path / "report.json"
    assert report_file.exists(), log[-4000:]
    report = json.loads(report_file.read_text())
    (row,) = report["configs"]
    (episode,) = report["episodes"]
    assert row["hangs"] == 0, log[-4000:]
    assert episode["job_ok"], episode["job_why"] + "\n" + log[-4000:]
    kinds = {f["kind"] for f in episode["faults"]}
    assert len(episode["faults"]) >= 3 and len(kinds) >= 3, log[-4000:]
    not_survived = [f for f in episode["faults"] if not f["survived"]]
    assert not not_survived, (not_survived, log[-4000:])
    assert not episode["unexplained_exits"], (episode["unexplained_exits"], log[-4000:])
    # Under --restarts every failed rank was replaced: the job ends with 8 ranks again.
    assert len(episode["final_members"]) == 8, (episode["final_members"], log[-3000:])
    assert episode["accuracy"] >= REFERENCE_ACCURACY - 1.0, (episode["accuracy"], REFERENCE_ACCURACY)
    assert proc.returncode == 0, log[-4000:]
