"""The emulated cluster (saddle_torch.testing.cluster): namespaces, shaped links, launcher, teardown.

Needs root, iproute2 and a kernel with netns/veth/bridge/tbf; skipped with the reason otherwise.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from saddle_torch.testing import cluster as cl

REASON = cl.unavailable_reason()
needs_cluster = pytest.mark.skipif(REASON is not None, reason=f"no emulated cluster here: {REASON}")
REPO = Path(__file__).resolve().parents[2]

GOSSIP = """
import torch, torch.distributed as dist, saddle_torch as st
torch.set_num_threads(1)
st.init(topology="ring")
x = torch.randn(5000, generator=torch.Generator().manual_seed(st.rank()))
mean = x.clone()
dist.all_reduce(mean)
mean /= st.size()
y = x
for _ in range(20):
    y = st.neighbor_average(y)
err = float((y - mean).abs().max())
print(f"gossip rank {st.rank()} of {st.size()} err {err:.3g} sent {st.stats()['bytes_sent']:.0f}", flush=True)
assert err < 1e-5, err
st.shutdown()
dist.destroy_process_group()
"""

# Rank 1 fails at once; rank 0 would sleep for a minute if nobody stopped it.
FAILING = """
import os, sys, time
rank = int(os.environ["RANK"])
print("started", flush=True)
if rank == 1:
    sys.exit(3)
time.sleep(60)
"""

SLEEPER = """
import os, sys, time
open(os.path.join(sys.argv[1], f"pid{os.environ['RANK']}"), "w").write(str(os.getpid()))
print("started", flush=True)
time.sleep(60)
"""


def _script(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _gone(prefix: str) -> None:
    """Nothing of the run is left: no namespace (``ip netns list``), no link (``ip link``)."""
    assert cl.leftovers(prefix) == []
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert prefix not in netns and prefix not in links


def test_parse_rate():
    assert cl.parse_rate("100mbit") == 100.0
    assert cl.parse_rate("1gbit") == 1000.0
    assert cl.parse_rate("500kbit") == 0.5
    assert cl.parse_rate("25") == 25.0
    assert cl.parse_rate("none") is None and cl.parse_rate(None) is None
    with pytest.raises(ValueError, match="not a rate"):
        cl.parse_rate("fast")
    with pytest.raises(ValueError, match="entries for 3 ranks"):
        cl.Cluster(3, rates_mbit=[100, 100])
    assert cl.tbf_burst_bytes(10) == 8192 and cl.tbf_burst_bytes(10_000) == 2_500_000


def test_refuses_clearly(monkeypatch):
    monkeypatch.setattr(cl.os, "geteuid", lambda: 1000)
    with pytest.raises(cl.ClusterUnavailable, match="needs root"):
        with cl.Cluster(2):
            pass
    monkeypatch.setattr(cl.os, "geteuid", lambda: 0)
    monkeypatch.setattr(cl.shutil, "which", lambda tool: None if tool == "tc" else "/usr/sbin/" + tool)
    with pytest.raises(cl.ClusterUnavailable, match="`tc` not found"):
        with cl.Cluster(2):
            pass


@needs_cluster
def test_gossip_smoke_and_teardown(tmp_path):
    lines: list[tuple[int, str]] = []
    with cl.Cluster(2, rates_mbit=1000) as c:
        prefix = c.prefix
        assert re.fullmatch(rf"stc{os.getpid()}[a-z]", prefix)
        assert len(cl.leftovers(prefix)) == 2 + 2 + 1  # namespaces, host veths, bridge
        codes = c.run(
            [sys.executable, _script(tmp_path, "gossip.py", GOSSIP)],
            timeout=120,
            output=lambda rank, line: lines.append((rank, line)),
        )
    assert codes == [0, 0]
    done = sorted(r for r, line in lines if line.startswith("gossip rank"))
    assert done == [0, 1], lines
    # 20 rounds of 5,000 fp32 elements to the one neighbour of a ring of 2, plus the engine's headers.
    sent = [float(line.rsplit(" ", 1)[1]) for _, line in lines if line.startswith("gossip rank")]
    assert all(20 * 20_000 <= s <= 20 * 21_000 for s in sent), sent
    _gone(prefix)


@needs_cluster
def test_failing_rank_stops_the_others_and_tears_down(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(cl.RankFailure, match="rank 1 exited with code 3") as info:
        with cl.Cluster(2) as c:
            prefix = c.prefix
            c.run(
                [sys.executable, _script(tmp_path, "fail.py", FAILING)], timeout=120, output=lambda r, s: None
            )
    assert info.value.rank == 1
    assert info.value.codes == [-signal.SIGTERM, 3]
    assert time.monotonic() - t0 < 20
    _gone(prefix)
    # check=False returns the codes instead of raising.
    with cl.Cluster(2) as c:
        codes = c.run(
            [sys.executable, _script(tmp_path, "fail.py", FAILING)], check=False, output=lambda r, s: None
        )
    assert codes == [-signal.SIGTERM, 3]


@needs_cluster
def test_timeout_kills_and_tears_down(tmp_path):
    with pytest.raises(cl.ClusterTimeout, match=r"ranks \[0, 1\] still ran after 2 s"):
        with cl.Cluster(2) as c:
            prefix = c.prefix
            c.run([sys.executable, _script(tmp_path, "sleep.py", SLEEPER), str(tmp_path)], timeout=2)
    for rank in (0, 1):
        assert not _alive(int((tmp_path / f"pid{rank}").read_text()))
    _gone(prefix)


@needs_cluster
def test_keyboard_interrupt_mid_run_tears_down(tmp_path):
    started = threading.Event()
    ranks: set[int] = set()

    def output(rank: int, line: str) -> None:
        if line == "started":  # printed after the rank wrote its pid file
            ranks.add(rank)
            if len(ranks) == 2:
                started.set()

    def interrupt() -> None:
        if started.wait(60):
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: KeyboardInterrupt in the main thread

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        with cl.Cluster(2, rates_mbit=[100, 10]) as c:
            prefix = c.prefix
            c.run(
                [sys.executable, _script(tmp_path, "sleep.py", SLEEPER), str(tmp_path)],
                timeout=90,
                output=output,
            )
    for rank in (0, 1):
        assert not _alive(int((tmp_path / f"pid{rank}").read_text()))
    _gone(prefix)


@needs_cluster
def test_sigterm_to_the_launcher_tears_down(tmp_path):
    cmd = [sys.executable, "-m", "saddle_torch.testing.cluster", "--n", "2", "--rate", "100mbit", "--"]
    cmd += [_script(tmp_path, "sleep.py", SLEEPER), str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: list[str] = []
    for line in proc.stdout:
        seen.append(line)
        if len([s for s in seen if s.rstrip().endswith("started")]) == 2:
            break
    prefix = re.search(r"cluster (stc\d+[a-z])", seen[0]).group(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM, seen
    for rank in (0, 1):
        assert not _alive(int((tmp_path / f"pid{rank}").read_text()))
    _gone(prefix)


@needs_cluster
def test_cleanup_stale_removes_a_killed_run():
    code = (
        "import time; from saddle_torch.testing.cluster import Cluster; c = Cluster(2, rates_mbit=10); "
        "c.__enter__(); print(c.prefix, flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    prefix = proc.stdout.readline().strip()
    proc.kill()  # SIGKILL: no teardown
    proc.wait()
    assert len(cl.leftovers(prefix)) == 5
    assert prefix in cl.cleanup_stale()
    _gone(prefix)


@needs_cluster
def test_shaped_rate_and_straggler():
    # Goodput over TCP with 1500-byte frames is 1448/1514 = 0.956 of the tbf rate.
    with cl.Cluster(3, rates_mbit=[50, 50, 10]) as c:
        forward = c.measure_rate(0, 1, seconds=1.0)
        back = c.measure_rate(1, 0, seconds=1.0)
        to_straggler = c.measure_rate(0, 2, seconds=1.0)
        from_straggler = c.measure_rate(2, 1, seconds=1.0)
    assert 0.7 * 50 <= forward <= 1.3 * 50, forward
    assert 0.7 * 50 <= back <= 1.3 * 50, back
    assert 0.7 * 10 <= to_straggler <= 1.3 * 10, to_straggler  # shaped where rank 2 receives
    assert 0.7 * 10 <= from_straggler <= 1.3 * 10, from_straggler  # and where it sends
