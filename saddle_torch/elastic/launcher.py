"""``python -m saddle_torch.run``: a launcher under which the survivors of a failure keep running.

torchrun's agent stops and restarts every local worker when one of them fails. This launcher hosts
the job's key-value store itself (outside the workers, so no worker's death takes it down), starts
``--nproc`` workers with torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``, ``MASTER_PORT``), and when one exits with an error or a signal it reports who died,
tells the others through the store (so they need not wait out the timeout) and lets them go on.

``--restarts K`` starts a new process in place of a failed one (at most K times in all): it joins
the running job at a step boundary, takes the dead rank's data shard and receives a neighbour's state.
``--join HOST:PORT`` starts ``--nproc`` processes that join a job whose launcher listens there (from
another machine, say).

Several machines: run one launcher per machine with the same ``--nnodes M --nproc N --host H --port P``
and its own ``--node-rank i``. Node 0 hosts the store at ``H:P`` (its own address); node ``i`` starts
ranks ``i*N .. i*N+N-1`` and reports their deaths (and restarts them, under ``--restarts``) itself.
Node 0's launcher keeps the store up until every member of the job, on any node, has left.

Every launcher and worker of a job holds the job secret (``--secret-file PATH`` or ``SADDLE_SECRET``;
a one-machine launch without either generates one and says where it wrote it): the membership values
in the store carry HMAC tags under it, and a process without it is never admitted (docs/security.md).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist

from saddle_torch._log import LOG_ENV
from saddle_torch.elastic.auth import SECRET_ENV, generate_secret, read_secret_file, secret_from_env
from saddle_torch.elastic.board import Board, create_job, open_job
from saddle_torch.elastic.membership import current_epoch, key, members_of
from saddle_torch.elastic.runtime import ID_ENV, JOIN_ENV, REPLACES_ENV, STORE_ENV
from saddle_torch.errors import AuthenticationError


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
    p.add_argument(
        "--port", type=int, default=0, help="store port (default: a free one; required with --nnodes)"
    )
    p.add_argument(
        "--nnodes",
        type=int,
        default=1,
        help="machines in the job, one launcher each with the same --nproc/--host/--port (default 1)",
    )
    p.add_argument(
        "--node-rank",
        type=int,
        default=0,
        help="this machine's index in [0, --nnodes); node 0 hosts the store at --host:--port",
    )
    p.add_argument(
        "--restarts",
        type=int,
        default=0,
        help="start a new process in place of a failed one, at most this many times in all; it joins "
        "the running job (default 0)",
    )
    p.add_argument(
        "--join",
        default=None,
        metavar="HOST:PORT",
        help="join the running job whose launcher's store listens at HOST:PORT instead of starting one",
    )
    p.add_argument(
        "--secret-file",
        default=None,
        metavar="PATH",
        help="the job secret (at least 16 bytes; default: $SADDLE_SECRET). Membership values carry HMAC "
        "tags under it and a process without it is never admitted. Required with --nnodes > 1 and --join; "
        "a one-machine launch without it generates one",
    )
    p.add_argument("script", help="the training script")
    p.add_argument("args", nargs=argparse.REMAINDER, help="arguments of the script")
    args = p.parse_args(argv)
    if args.nproc < 1:
        p.error(f"--nproc must be at least 1, got {args.nproc}")
    if args.restarts < 0:
        p.error(f"--restarts must be non-negative, got {args.restarts}")
    if args.nnodes < 1:
        p.error(f"--nnodes must be at least 1, got {args.nnodes}")
    if not 0 <= args.node_rank < args.nnodes:
        p.error(f"--node-rank must be in [0, {args.nnodes}) for --nnodes {args.nnodes}, got {args.node_rank}")
    if args.nnodes > 1 and args.port == 0:
        p.error("--nnodes > 1 needs --port: the other machines connect to node 0's store there")
    if args.nnodes > 1 and args.join is not None:
        p.error("--join adds processes to a running job: it takes no --nnodes/--node-rank")
    if args.join is not None:
        host, _, port = args.join.rpartition(":")
        if not host or not port.isdigit():
            p.error(f"--join takes HOST:PORT, got {args.join!r}")
    try:
        args.secret = read_secret_file(args.secret_file) if args.secret_file else secret_from_env()
    except ValueError as e:
        p.error(str(e))
    if args.secret is None and (args.nnodes > 1 or args.join is not None):
        what = "--join" if args.join is not None else "--nnodes > 1"
        p.error(
            f"{what} needs the job secret: --secret-file PATH (the same file on every machine) or "
            f"${SECRET_ENV}; without it nothing would tell the job's processes from anyone else's"
        )
    return args


def _env(
    rank: int,
    world: int,
    nproc: int,
    host: str,
    port: int,
    secret: bytes,
    join: bool = False,
    replaces: int | None = None,
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RANK=str(rank),
        LOCAL_RANK=str((rank if replaces is None else replaces) % nproc),
        WORLD_SIZE=str(world),
        LOCAL_WORLD_SIZE=str(nproc),
        MASTER_ADDR=host,
        MASTER_PORT=str(port),
        # env:// rendezvous (dist.init_process_group without a store) connects to this store
        # instead of starting one in rank 0, as under torchrun's agent.
        TORCHELASTIC_USE_AGENT_STORE="True",
        TORCHELASTIC_RESTART_COUNT="0",
    )
    env[STORE_ENV] = f"{host}:{port}"
    env[SECRET_ENV] = secret.decode()
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault(LOG_ENV, "INFO")  # the workers' membership and admission records, on their stderr
    env.pop(JOIN_ENV, None)
    env.pop(REPLACES_ENV, None)
    if join:
        env.update({JOIN_ENV: "1", ID_ENV: str(rank)})
        if replaces is not None:
            env[REPLACES_ENV] = str(replaces)
    return env


def _listen(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` only, for the store's server.

    ``TCPStore(host, port, is_master=True)`` alone listens on every interface whatever ``host`` is
    (measured with torch 2.13: ``*:PORT``); handed this socket, it serves on ``host`` only.
    """
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(1024)
    except OSError as e:
        raise SystemExit(f"saddle_torch.run: cannot listen on --host {host} --port {port}: {e}") from e
    return sock


def _generated_secret() -> tuple[bytes, Path]:
    """A fresh secret, written to a file only this user can read (for ``--join --secret-file``)."""
    secret = generate_secret()
    fd, path = tempfile.mkstemp(prefix="saddle-job-", suffix=".secret")  # mode 0600
    with os.fdopen(fd, "wb") as f:
        f.write(secret + b"\n")
    return secret, Path(path)


class _Job:
    """The workers this launcher started, by id, and the store they share."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.secret_path: Path | None = None  # a secret this launcher generated (removed at the end)
        if args.secret is None:
            args.secret, self.secret_path = _generated_secret()
        if args.join is None and args.node_rank == 0:
            self.host = args.host
            self.listener = _listen(args.host, args.port)
            self.port = self.listener.getsockname()[1]
            self.store = dist.TCPStore(
                args.host,
                self.port,
                is_master=True,
                wait_for_workers=False,
                timeout=timedelta(seconds=60),
                master_listen_fd=self.listener.fileno(),
            )
            self.launch_size = args.nproc * args.nnodes
            self.board = create_job(self.store, args.secret)
            self.board.post(key("epoch"), "0")
            self.board.post(key(0, "members"), ",".join(map(str, range(self.launch_size))))
            self.store.add(key("next_id"), self.launch_size)  # ids of later processes start here
        elif args.join is None:  # node i > 0 of a multi-machine launch: node 0 hosts the store
            self.host, self.port = args.host, args.port
            self.store = dist.TCPStore(
                args.host, args.port, is_master=False, wait_for_workers=False, timeout=timedelta(seconds=300)
            )
            self.launch_size = args.nproc * args.nnodes
            self.board = _open(self.store, args)
            members = len(_launch_members(self))
            if members != self.launch_size:
                raise SystemExit(
                    f"saddle_torch.run: node 0 launched {members} ranks, but --nnodes {args.nnodes} x "
                    f"--nproc {args.nproc} here makes {self.launch_size}: give every node the same values"
                )
        else:
            host, _, port = args.join.rpartition(":")
            self.host, self.port = host, int(port)
            self.store = dist.TCPStore(
                host, self.port, is_master=False, wait_for_workers=False, timeout=timedelta(seconds=60)
            )
            self.board = _open(self.store, args)
            self.launch_size = len(_launch_members(self))  # WORLD_SIZE: at launch
        self.procs: dict[int, subprocess.Popen] = {}
        self.joiners: set[int] = set()
        self.stopped: set[int] = set()  # joiners this launcher stopped itself (the job had ended)

    def start(self, rank: int, join: bool = False, replaces: int | None = None) -> None:
        a = self.args
        env = _env(rank, self.launch_size, a.nproc, self.host, self.port, a.secret, join, replaces)
        self.procs[rank] = subprocess.Popen([sys.executable, self.args.script, *self.args.args], env=env)
        if join:
            self.joiners.add(rank)

    def new_id(self) -> int:
        return self.store.add(key("next_id"), 1) - 1

    def members(self) -> set[int]:
        """Ids of the current epoch's members (as the workers recorded them)."""
        return set(members_of(self.board, current_epoch(self.board)) or [])


def _open(store: dist.TCPStore, args: argparse.Namespace) -> Board:
    """The job's board for a launcher that connects to node 0's store; exits if the secret differs."""
    try:
        return open_job(store, args.secret)
    except AuthenticationError as e:
        raise SystemExit(f"saddle_torch.run: {e}") from e


def _launch_members(job: _Job) -> list[int]:
    """The ranks node 0 launched (waits for node 0 to record them)."""
    job.store.wait([key(0, "members")])
    members = members_of(job.board, 0)
    if members is None:
        raise SystemExit("saddle_torch.run: the job's launch members in the store have no valid tag")
    return members


def main(argv: list[str] | None = None) -> int:
    """Run the job; returns 0 if at least one worker finished cleanly, else the first failure's code."""
    args = parse_args(argv)
    job = _Job(args)
    if args.join is None:
        for r in range(args.node_rank * args.nproc, (args.node_rank + 1) * args.nproc):
            job.start(r)
    else:
        for _ in range(args.nproc):
            job.start(job.new_id(), join=True)
    role = "joining workers" if args.join else "workers"
    if args.nnodes > 1:
        role += f" (ranks {min(job.procs)}..{max(job.procs)}, node {args.node_rank} of {args.nnodes})"
    print(
        f"saddle_torch.run: {args.nproc} {role}, store at {job.host}:{job.port}", file=sys.stderr, flush=True
    )
    if job.secret_path is not None:
        print(
            f"saddle_torch.run: generated the job secret in {job.secret_path} (readable by this user only; "
            f"a --join to this job needs --secret-file {job.secret_path})",
            file=sys.stderr,
            flush=True,
        )
    try:
        return _supervise(job)
    finally:
        if job.secret_path is not None:
            job.secret_path.unlink(missing_ok=True)


def _supervise(job: _Job) -> int:
    """Watch the workers until the job ends; the launcher's exit code."""
    args, board = job.args, job.board
    procs, restarts = job.procs, args.restarts

    def forward(signum: int, _frame: object) -> None:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    codes: dict[int, int] = {}
    running = dict(procs)
    orphaned_since: float | None = None
    try:
        while running:
            for r, p in list(running.items()):
                code = p.poll()
                if code is None:
                    continue
                del running[r]
                codes[r] = code
                if r in job.stopped:  # never admitted, stopped at the end of the job: not a failure
                    continue
                if code != 0:
                    what = f"rank {r} {_describe(code)}"
                    note = ""
                    try:
                        board.put(key("dead", r), what)
                        board.post(key(current_epoch(board), "broken"), f"launcher: {what}")
                    except dist.DistError:  # node 0's launcher (the store's host) is gone
                        note = f"; the store at {job.host}:{job.port} is gone: not reported, not restarted"
                        restarts = 0
                    if restarts > 0:
                        restarts -= 1
                        new = job.new_id()
                        job.start(new, join=True, replaces=r)
                        running[new] = procs[new]
                        note = f"; started process {new} to join in its place"
                    print(
                        f"saddle_torch.run: {what}; {len(running)} still running{note}",
                        file=sys.stderr,
                        flush=True,
                    )
            orphaned_since = _stop_orphans(job, running, orphaned_since)
            time.sleep(0.05)
    except KeyboardInterrupt:
        forward(signal.SIGINT, None)
        for p in procs.values():
            p.wait()
        return 130
    hosts_store = args.join is None and args.node_rank == 0
    if hosts_store and not _job_ended(job):  # members on other nodes or started by --join use our store
        print(
            "saddle_torch.run: waiting for the job's other members (other nodes, or started with --join)",
            file=sys.stderr,
        )
        while not _job_ended(job):
            time.sleep(0.2)
    failed = {r: c for r, c in codes.items() if c != 0 and r not in job.stopped}
    ok = sorted(r for r, c in codes.items() if c == 0)
    summary = f"saddle_torch.run: ranks {ok} finished"
    if failed:
        summary += "; " + ", ".join(f"rank {r} {_describe(c)}" for r, c in sorted(failed.items()))
    if job.stopped:
        summary += f"; process(es) {sorted(job.stopped)} stopped before they were admitted"
    print(summary, file=sys.stderr, flush=True)
    if ok:
        return 0
    return next(iter(failed.values())) if failed else 0


def _members(job: _Job) -> set[int] | None:
    try:
        return job.members()
    except Exception:  # noqa: BLE001 - the store is gone (--join to a job that has ended)
        return None


def _job_ended(job: _Job) -> bool:
    """Whether every member of the current epoch has left (finished or dead), or the store is gone."""
    members = _members(job)
    try:
        return members is None or all(
            job.board.has(key("finished", r)) or job.board.has(key("dead", r)) for r in members
        )
    except Exception:  # noqa: BLE001 - the store went away meanwhile
        return True


def _stop_orphans(job: _Job, running: dict[int, subprocess.Popen], since: float | None) -> float | None:
    """Stop joiners never admitted, 5 s after every member of the job has left."""
    members = _members(job) or set()
    waiting = {r for r in running if r in job.joiners and r not in members}
    if not running or waiting != set(running) or not _job_ended(job):
        return None
    now = time.monotonic()
    if since is None:
        return now
    if now - since > 5:
        for r, p in running.items():
            if p.poll() is None:
                print(
                    f"saddle_torch.run: stopping process {r}: the job it waits to join has ended",
                    file=sys.stderr,
                )
                job.stopped.add(r)
                p.terminate()
    return since


__all__ = ["main", "parse_args"]
