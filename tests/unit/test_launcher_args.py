"""The elastic launcher's command line (saddle_torch.elastic.launcher.parse_args): bad input is named."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch.distributed as dist

from saddle_torch.elastic.launcher import _env, parse_args


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nproc", "0", "x.py"], "--nproc must be at least 1"),
        (["--nproc", "2", "--restarts", "-1", "x.py"], "--restarts must be non-negative"),
        (["--nproc", "2", "--join", "nohost", "x.py"], "--join takes HOST:PORT"),
        (["--nproc", "2", "--nnodes", "0", "x.py"], "--nnodes must be at least 1"),
        (
            ["--nproc", "2", "--nnodes", "2", "--node-rank", "2", "--port", "9", "x.py"],
            "--node-rank must be in",
        ),
        (["--nproc", "2", "--nnodes", "2", "--node-rank", "1", "x.py"], "--nnodes > 1 needs --port"),
        (["--nproc", "2", "--nnodes", "2", "--port", "9", "--join", "h:1", "x.py"], "takes no --nnodes"),
        (["--nproc", "2", "--join", "h:1", "x.py"], "--join needs the job secret"),
        (["--nproc", "2", "--nnodes", "2", "--port", "9", "x.py"], "--nnodes > 1 needs the job secret"),
        (["--nproc", "2", "--secret-file", "/nonexistent/s", "x.py"], "cannot read the job secret file"),
    ],
)
def test_bad_command_lines_are_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SADDLE_SECRET", raising=False)
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err


def test_multi_node_arguments_and_the_script_arguments_stay_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SADDLE_SECRET", "s" * 16)
    args = parse_args(
        ["--nproc", "4", "--nnodes", "2", "--node-rank", "1", "--port", "29650", "t.py", "--lr", "1"]
    )
    assert (args.nnodes, args.node_rank, args.nproc, args.port) == (2, 1, 4, 29650)
    assert args.secret == b"s" * 16
    assert args.script == "t.py" and args.args == ["--lr", "1"]


def test_worker_environment_on_node_one_of_two() -> None:
    """Rank 5 of 2 x 4: the job's WORLD_SIZE, this machine's LOCAL_RANK/LOCAL_WORLD_SIZE, node 0's store."""
    env = _env(5, 8, 4, "10.0.0.1", 29650, b"s" * 16)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["LOCAL_WORLD_SIZE"]) == (
        "5",
        "8",
        "1",
        "4",
    )
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("10.0.0.1", "29650")
    assert env["SADDLE_SECRET"] == "s" * 16  # the workers tag and check membership values with it
    restarted = _env(9, 8, 4, "10.0.0.1", 29650, b"s" * 16, join=True, replaces=6)  # rank 6's local slot
    assert restarted["LOCAL_RANK"] == "2" and restarted["WORLD_SIZE"] == "8"


def _listening_on(port: int) -> list[str]:
    """Local addresses (hex, as /proc/net/tcp{,6} writes them) of the sockets listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.read().splitlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                address, hex_port = local.rsplit(":", 1)
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.append(address)
    return found


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs Linux /proc/net/tcp")
def test_the_store_listens_on_the_host_given_only() -> None:
    """--host 127.0.0.1 keeps the store off every other interface (TCPStore alone binds to all)."""
    from saddle_torch.elastic.launcher import _Job

    job = _Job(parse_args(["--nproc", "1", "x.py"]))
    try:
        assert _listening_on(job.port) == ["0100007F"]  # 127.0.0.1, and nothing on 0.0.0.0 or ::
        job.store.set("probe", "1")
        client = dist.TCPStore("127.0.0.1", job.port, is_master=False, wait_for_workers=False)
        assert client.get("probe") == b"1"
    finally:
        if job.secret_path is not None:  # generated: no --secret-file, no SADDLE_SECRET
            job.secret_path.unlink()
        del job


def test_a_short_secret_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weak = tmp_path / "weak.secret"
    weak.write_text("hunter2\n")
    with pytest.raises(SystemExit):
        parse_args(["--nproc", "2", "--secret-file", str(weak), "x.py"])
    assert "has 7 bytes; use at least 16" in capsys.readouterr().err
