"""Chaos harness for elastic training (issue 30, item 1): random faults against 8 ranks, survival checked.

    python bench/chaos.py                                   # short: every configuration, ~4 minutes each
    python bench/chaos.py --configs allreduce --steps 1500  # one configuration
    make chaos                                              # the long run (>= 30 min, >= 40 faults)

Each configuration runs as one or more *episodes*: a job of 8 ranks training Fashion-MNIST
(``examples/elastic.py --data fashion-mnist``) under two launchers on 127.0.0.1 (``python -m
saddle_torch.run --nnodes 2 --node-rank 0|1 --nproc 4 --restarts K``: node 1's launcher can be killed;
``--nnodes 1``: one launcher of 8). Steps are paced (``--step-seconds``) so that a job lasts long enough
for restarted processes to start and be admitted. While it trains, faults are injected; each episode
ends when its ``--steps`` steps are done and the launchers have exited.

Configurations (``--configs NAME[@EPISODESxSTEPS],...``): ``q-saddle-int8-ope-adamw`` (q-saddle, int8
gossip, one_peer_exponential, AdamW lr 1e-3: 86.6% after 1,000 uninterrupted steps against 85.2% at
3e-4 and 84.8% at 3e-3), ``n-saddle-int8-ring``, ``allreduce``, ``ddp-hook`` (DistributedDataParallel
with the gossip hook, SGD: admits no joiners, so it runs with ``--restarts 0``) and, not in the
default set, ``q-saddle-ring`` (the example's defaults, no codec: a control).

Fault kinds (``--kinds``):

- ``sigkill``: SIGKILL a training worker.
- ``sigstop``: SIGSTOP a training worker for the gossip timeout + ``--stop-extra`` seconds, then SIGCONT
  it (the others drop it meanwhile: it is fenced and exits with ``FencedError``, and is restarted).
- ``setup``: SIGKILL a process while it sets up. At launch (each episode, with probability
  ``--launch-setup``): a launch rank, a uniform 0.5..``--launch-window`` s after all 8 started, if the
  job has not trained yet. Later: a worker is SIGKILLed, and the process its launcher starts in its
  place is SIGKILLed a uniform 0.2..``--setup-delay`` s after it appears (it imports torch, loads its
  data: before ``init()`` asks to join; the phase it was in is recorded).
- ``joiner``: SIGKILL a worker, then the process started in its place while it is being admitted: a
  uniform 0..``--admit-delay`` s after it opens the new group's connections (its socket count rises
  above its store connection's), or after it was admitted if that came first (the phase is recorded).
- ``double``: SIGKILL two workers within one timeout window, the second a log-uniform 0.05 s..timeout
  after the first.
- ``launcher``: SIGKILL node 1's launcher (``--nnodes 2``; once per episode, at a random one of its
  expected fault slots). Its workers become orphans: nobody reports their deaths or restarts them, so
  later faults pick their targets among node 0's workers; the report says what the orphans did.

Kinds are dealt from a shuffled deck (each allowed kind once per deck), so every kind comes up about
equally often. Times: the first fault a gap after the first training step, each next one a gap after
the previous fault's last action, ``gap = min_gap + Exp(mtbf - min_gap)`` (a Poisson process with
mean gap ``--mtbf``, never closer than ``--min-gap`` except the deliberate second kill of ``double``).
No fault starts when the job is estimated to end within ``--quiet-tail`` seconds (a replacement must
have time to start and be admitted). Targets are training workers (a step within the last 5 s) whose
launcher lives; a job whose launcher cannot restart (the DDP hook admits no joiners: ``--restarts 0``)
keeps at least ``--min-world`` ranks.

Logged (``<out>/<config>/ep<i>/``): ``node<n>.log`` (every line of the launchers and their workers,
time-stamped), ``events.jsonl`` (every fault injected, every membership change, exit and admission,
as they happen), ``steps/steps<ID>.tsv`` (per process and step: wall time, step, group size, seconds,
skipped). Progress lines go to stdout.

Measured, per configuration (``report.md`` and ``report.json`` in ``--out``):

- faults injected / survived, by kind. A fault is *survived* when the job went on and finished (node 0's
  launcher exited 0, the final members' averaged model was evaluated, no hang) and every process that
  exited with an error after stalling between this fault and the next (its last step, or its start
  if it never stepped, lies there) was one the fault hit (a SIGKILLed process; a
  SIGSTOPped one fenced with exit code 1), a joiner the launcher stopped because the job had ended, or
  a *collateral* exit docs/errors.md documents (a joiner whose donor was killed while it received its
  state exits with ``PeerError`` and is restarted: counted, listed, not a failure).
- hangs: no new step within ``--stall`` seconds (``--startup`` before the first step), or the launchers
  not gone ``--stall`` seconds after the last step: the watchdog kills every process and fails the run.
- steps lost: rank-steps not trained, sum over the job's steps of (8 - group size) plus the steps
  survivors skipped to line up after a membership change; and the wall time lost against the job's
  median step.
- the slowest step after each fault (any process, any step that ended between the fault and the next
  one) and how long until the group was back at 8.
- the final accuracy of the averaged model against an uninterrupted run of the same configuration,
  steps and seed (one launcher, unpaced: the synchronous job computes the same models at any pace and
  launcher layout; kept in ``<out>/<config>/reference-*.json``, reused with ``--reuse-reference``).

The run exits non-zero on a hang, a fault not survived, an accuracy more than ``--max-drop`` points
below the uninterrupted run, or fewer faults than ``--require-faults`` / ``--require-each`` per kind.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "elastic.py"
FMNIST = Path("/usr/share/datasets/fashion-mnist")
WORLD = 8
KINDS = ("sigkill", "sigstop", "setup", "joiner", "double", "launcher")
StepRow = tuple[float, int, int, float, int]  # a step log line: wall time, step, group size, seconds, skipped


@dataclass(frozen=True)
class Config:
    """One training configuration of examples/elastic.py."""

    name: str
    flags: tuple[str, ...]
    joiners: bool = True  # a DistributedOptimizer job admits restarted processes; the DDP hook admits none


CONFIGS: dict[str, Config] = {
    c.name: c
    for c in (
        Config(
            "q-saddle-int8-ope-adamw",
            ("--algorithm", "q-saddle", "--compression", "int8", "--topology", "one_peer_exponential")
            + ("--optimizer", "adamw", "--lr", "0.001"),
        ),
        Config(
            "n-saddle-int8-ring", ("--algorithm", "n-saddle", "--compression", "int8", "--topology", "ring")
        ),
        Config("allreduce", ("--algorithm", "allreduce")),
        Config("ddp-hook", ("--ddp-hook",), joiners=False),
        Config("q-saddle-ring", ("--algorithm", "q-saddle", "--topology", "ring")),  # a control: no codec
    )
}
DEFAULT_CONFIGS = ("q-saddle-int8-ope-adamw", "n-saddle-int8-ring", "allreduce", "ddp-hook")


# --- processes -------------------------------------------------------------------------------------------
def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of ``pid``, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2])


def _worker_id(pid: int) -> int | None:
    """The elastic id (``RANK``) of an examples/elastic.py process, None for anything else (or not yet)."""
    try:
        if b"elastic.py" not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return None
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _group_members(pgids: set[int]) -> Iterator[tuple[int, int, str, int]]:
    """(pid, pgrp, state, ppid) of every process in the process groups ``pgids``."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None and st[2] in pgids:
                yield int(entry.name), st[2], st[0], st[1]


def _sockets(pid: int) -> int:
    """Open sockets of ``pid`` (0 if it is gone)."""
    n = 0
    with contextlib.suppress(OSError):
        for fd in os.scandir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                n += os.readlink(fd.path).startswith("socket:")
    return n


def _become_subreaper() -> None:
    """Orphaned workers (their launcher was killed) become our children: we learn their exit codes."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_HELP: str | None = None


def _launcher_takes_secret_file() -> bool:
    """Whether this saddle_torch's launcher has ``--secret-file`` (needed by two launchers of one job)."""
    global _HELP  # noqa: PLW0603 - asked once per run
    if _HELP is None:
        _HELP = subprocess.run(
            [sys.executable, "-m", "saddle_torch.run", "--help"],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    return "--secret-file" in _HELP


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def _signal_code(name: str) -> int:
    try:
        return -int(signal.Signals[name])
    except KeyError:
        return -int(name.removeprefix("signal ")) if name.startswith("signal ") else -1


# --- launcher and worker output ---------------------------------------------------------------------------
EXIT_RE = re.compile(
    r"saddle_torch\.run: rank (\d+) (?:was killed by (\S+?)|exited with code (-?\d+)); \d+ still running"
    r"(?:; started process (\d+) to join in its place)?"
)
MEMBERSHIP_RE = re.compile(r"membership epoch (\d+) at step (\d+): (.*); (\d+) ranks continue on (\S+)")
LAUNCH_MISSING_RE = re.compile(r"rank\(s\) (\[[\d, ]*\]) did not join the job at launch.*; (\d+) ranks start")
ASK_RE = re.compile(r"process (\d+) asks to join the job")
JOINED_RE = re.compile(r"process (\d+) joined as rank (\d+) of (\d+) at step (\d+)")
STOPPING_RE = re.compile(r"saddle_torch\.run: stopping process (\d+): the job it waits to join has ended")
SUMMARY_RE = re.compile(r"saddle_torch\.run: ranks \[([\d, ]*)\] finished(?:; (.*))?")
ACCURACY_RE = re.compile(r"averaged model of (\d+) ranks: test accuracy ([\d.]+)%")
ERROR_RE = re.compile(r"^(?:\[rank\d+\]:\s*)?(\w+(?:\.\w+)*(?:Error|Exception)): (.*)")
DONOR_LOST = "receiving the model and optimizer state"  # a joiner whose donor died (docs/errors.md)


def parse_line(line: str) -> dict[str, Any] | None:
    """The event a launcher or worker line records (exit, membership change, admission ...), or None."""
    if m := EXIT_RE.search(line):
        code = int(m[3]) if m[3] is not None else _signal_code(m[2])
        replacement = int(m[4]) if m[4] else None
        return {"type": "exit", "id": int(m[1]), "code": code, "replacement": replacement}
    if m := MEMBERSHIP_RE.search(line):
        return {"type": "membership", "epoch": int(m[1]), "step": int(m[2]), "what": m[3], "size": int(m[4])}
    if m := LAUNCH_MISSING_RE.search(line):
        return {
            "type": "membership",
            "epoch": None,
            "step": 0,
            "what": f"{m[1]} missing at launch",
            "size": int(m[2]),
        }
    if m := ASK_RE.search(line):
        return {"type": "ask", "id": int(m[1])}
    if m := JOINED_RE.search(line):
        return {"type": "joined", "id": int(m[1]), "rank": int(m[2]), "size": int(m[3]), "step": int(m[4])}
    if m := STOPPING_RE.search(line):
        return {"type": "stopping", "id": int(m[1])}
    if m := SUMMARY_RE.search(line):
        return {"type": "summary", "finished": [int(x) for x in m[1].split(",") if x.strip()], "failed": m[2]}
    if m := ACCURACY_RE.search(line):
        return {"type": "accuracy", "size": int(m[1]), "accuracy": float(m[2])}
    if m := ERROR_RE.match(line.strip()):
        return {"type": "error", "error": m[1], "message": m[2][:300]}
    return None


# --- one episode --------------------------------------------------------------------------------------------
@dataclass
class Worker:
    """A worker process seen in a launcher's process group."""

    pid: int
    id: int
    node: int
    seen: float  # wall time first seen
    code: int | None = None  # exit code, when known (the launcher's report, or reaped as an orphan)
    exited: float | None = None  # wall time it was found gone
    orphan: bool = False  # its launcher was killed while it ran


@dataclass
class Fault:
    """One fault as injected."""

    index: int
    kind: str
    time: float  # wall time of its first action
    step: int  # the job's most advanced step then
    targets: list[dict[str, Any]] = field(default_factory=list)  # pid, id, node, signal, time, phase
    end: float = 0.0  # wall time of its last action
    detail: str = ""
    # filled in by the analysis
    survived: bool | None = None
    why: str = ""
    slowest_after: float | None = None
    slowest_where: str = ""
    back_to_full: float | None = None
    collateral: list[str] = field(default_factory=list)  # documented casualties: a joiner whose donor died


@dataclass
class Options:
    """The harness's options (see ``--help``)."""

    steps: int = 2500
    step_seconds: float = 0.05
    timeout: float = 10.0
    seed: int = 0
    mtbf: float = 40.0
    min_gap: float = 15.0
    kinds: tuple[str, ...] = KINDS
    nnodes: int = 2
    restarts: int = 100
    stop_extra: float = 5.0
    setup_delay: float = 2.0
    admit_delay: float = 0.5
    launch_setup: float = 0.5
    launch_window: float = 15.0
    quiet_tail: float = 35.0
    min_world: int = 5
    stall: float = 60.0
    startup: float = 240.0
    out: Path = ROOT / "runs" / "chaos"


class Episode:
    """One job under the launcher(s), faults injected by a thread while the main thread watches it."""

    def __init__(self, config: Config, index: int, opts: Options, out: Path) -> None:
        self.config, self.index, self.opts, self.out = config, index, opts, out
        self.rng = random.Random(f"{opts.seed}/{config.name}/{index}")
        self.lock = threading.RLock()
        self.stop = threading.Event()
        self.launchers: list[subprocess.Popen] = []
        self.launcher_dead: list[bool] = []
        self.workers: dict[int, Worker] = {}  # by pid
        self.events: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.steps: dict[int, list[StepRow]] = {}  # by process id
        self.last_step_time: dict[int, float] = {}
        self.max_step = -1
        self.progress_at = 0.0
        self.rate: list[tuple[float, int]] = []  # (wall time, max step) samples, for the time left
        self.started = 0.0
        self.first_step_at: float | None = None
        self.last_step_at: float | None = None
        self.hang: str | None = None
        self.stopped: set[int] = set()  # pids currently SIGSTOPped by us
        self._offsets: dict[Path, tuple[int, str]] = {}
        self._scan_lock = threading.Lock()
        self._events_file = None
        self._log_files: list[Any] = []

    # -- logging --------------------------------------------------------------------------------------
    def say(self, text: str) -> None:
        """A progress line: configuration, episode, seconds since launch, the job's step."""
        t = time.time() - self.started if self.started else 0.0
        print(f"[{self.config.name} ep{self.index} +{t:6.1f}s step {self.max_step:>5}] {text}", flush=True)

    def record(self, event: dict[str, Any], echo: str | None = None) -> None:
        """Append an event to events.jsonl (and say it)."""
        event.setdefault("t", time.time())
        with self.lock:
            self.events.append(event)
            if self._events_file is not None:
                self._events_file.write(json.dumps(event) + "\n")
                self._events_file.flush()
        if echo:
            self.say(echo)

    # -- launch ---------------------------------------------------------------------------------------
    def _launcher_argv(self, node: int, port: int, secret: Path | None) -> list[str]:
        o, nproc = self.opts, WORLD // self.opts.nnodes
        cmd = [sys.executable, "-m", "saddle_torch.run", "--nproc", str(nproc)]
        if o.nnodes > 1:
            cmd += [
                "--nnodes",
                str(o.nnodes),
                "--node-rank",
                str(node),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
            if secret is not None:
                cmd += ["--secret-file", str(secret)]
        cmd += ["--restarts", str(o.restarts if self.config.joiners else 0)]
        return [*cmd, *job_args(self.config, o.steps, o.step_seconds, o.timeout, o.seed, self.out)]

    def launch(self) -> None:
        """Start the launcher(s), one process group each, and a reader thread per launcher's output."""
        self.out.mkdir(parents=True, exist_ok=True)
        self._events_file = (self.out / "events.jsonl").open("w")
        secret = None
        if self.opts.nnodes > 1 and _launcher_takes_secret_file():
            secret = self.out / "job.secret"
            secret.unlink(missing_ok=True)
            fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, secrets.token_hex(16).encode())
            os.close(fd)
        port = _free_port()
        self.started = self.progress_at = time.time()
        for node in range(self.opts.nnodes):
            argv = self._launcher_argv(node, port, secret)
            p = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,  # its own process group: cleaned up with killpg
            )
            self.launchers.append(p)
            self.launcher_dead.append(False)
            log = (self.out / f"node{node}.log").open("w")
            self._log_files.append(log)
            self.record({"type": "launch", "node": node, "pid": p.pid, "argv": argv})
            threading.Thread(target=self._read, args=(node, p, log), daemon=True).start()
        self.say(f"launched {self.opts.nnodes} launcher(s): {' '.join(self._launcher_argv(0, port, secret))}")

    def _read(self, node: int, proc: subprocess.Popen, log: Any) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            now = time.time()
            log.write(f"{now - self.started:9.3f} {line}")
            log.flush()
            event = parse_line(line)
            if event is None:
                continue
            event.update(t=now, node=node)
            self._on_event(event)

    def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind == "exit":
            with self.lock:
                for w in self.workers.values():
                    if w.id == event["id"] and w.code is None:
                        w.code = event["code"]
                if event["code"] > 0:  # its last words: the newest error line of its node
                    last = [
                        e
                        for e in self.events
                        if e["type"] == "error" and e["node"] == event["node"] and event["t"] - e["t"] < 5
                    ]
                    if last:
                        event["error"] = f"{last[-1]['error']}: {last[-1]['message']}"
            note = (
                f"; launcher started process {event['replacement']}"
                if event["replacement"] is not None
                else ""
            )
            self.record(
                event, f"exit: process {event['id']} (node {event['node']}) code {event['code']}{note}"
            )
        elif kind == "membership":
            self.record(
                event,
                f"membership epoch {event['epoch']} at step {event['step']}: {event['what']} "
                f"-> {event['size']} ranks",
            )
        elif kind in ("ask", "joined", "stopping"):
            what = {
                "ask": "asks to join",
                "joined": "admitted",
                "stopping": "stopped by its launcher (job ended)",
            }
            self.record(event, f"process {event['id']} {what[kind]}")
        elif kind == "error":
            self.record(event, f"error on node {event['node']}: {event['error']}: {event['message'][:120]}")
        else:
            self.record(event)

    # -- watching -------------------------------------------------------------------------------------
    def scan(self) -> None:
        """Find new workers in the launchers' process groups, notice exits, reap orphans."""
        with self._scan_lock:  # the main thread and the fault thread both scan
            self._scan()

    def _scan(self) -> None:
        pgids = {p.pid for p in self.launchers}
        me = os.getpid()
        now = time.time()
        alive: set[int] = set()
        for pid, pgrp, state, ppid in _group_members(pgids):
            if pid in pgids:
                continue
            alive.add(pid)
            with self.lock:
                w = self.workers.get(pid)
            if w is None:
                wid = _worker_id(pid)
                if wid is None:
                    continue
                node = [p.pid for p in self.launchers].index(pgrp)
                with self.lock:
                    w = self.workers[pid] = Worker(pid, wid, node, now)
            if ppid == me:  # reparented to us: its launcher is gone
                w.orphan = True
                if state == "Z" and w.code is None:
                    with contextlib.suppress(ChildProcessError):
                        reaped, status = os.waitpid(pid, os.WNOHANG)
                        if reaped != pid:
                            continue
                        w.code = os.waitstatus_to_exitcode(status)
                        self.record(
                            {"type": "orphan-exit", "id": w.id, "code": w.code},
                            f"orphan {w.id} exited with {w.code}",
                        )
        with self.lock:
            for w in self.workers.values():
                if w.exited is None and (w.pid not in alive or _stat(w.pid) is None):
                    w.exited = now
        for i, p in enumerate(self.launchers):
            if not self.launcher_dead[i] and p.poll() is not None:
                self.launcher_dead[i] = True
                self.record(
                    {"type": "launcher-exit", "node": i, "code": p.returncode},
                    f"launcher {i} exited with {p.returncode}",
                )

    def read_steps(self) -> None:
        """Read the new lines of every step log; note progress."""
        folder = self.out / "steps"
        if not folder.is_dir():
            return
        for path in folder.glob("steps*.tsv"):
            offset, rest = self._offsets.get(path, (0, ""))
            with path.open() as f:
                f.seek(offset)
                chunk = f.read()
                offset = f.tell()
            text = rest + chunk
            lines = text.split("\n")
            self._offsets[path] = (offset, lines.pop())
            wid = int(path.stem[5:])
            for line in lines:
                if not line:
                    continue
                t, step, size, secs, skip = line.split("\t")
                row = (float(t), int(step), int(size), float(secs), int(skip))
                with self.lock:
                    self.steps.setdefault(wid, []).append(row)
                    self.last_step_time[wid] = row[0]
                    if row[1] > self.max_step:
                        self.max_step, self.progress_at = row[1], time.time()
                    if self.first_step_at is None:
                        self.first_step_at = row[0] - row[3]
                    self.last_step_at = max(self.last_step_at or 0.0, row[0])
        now = time.time()
        self.rate.append((now, self.max_step))
        self.rate = [(t, s) for t, s in self.rate if now - t <= 15.0]

    def seconds_left(self) -> float:
        """Estimated seconds until the job's last step, from the step rate of the last 15 s."""
        if len(self.rate) < 2 or self.rate[-1][1] <= self.rate[0][1]:
            per_step = self.opts.step_seconds + 0.02
        else:
            per_step = (self.rate[-1][0] - self.rate[0][0]) / (self.rate[-1][1] - self.rate[0][1])
        return (self.opts.steps - 1 - self.max_step) * per_step

    def running(self) -> bool:
        """Whether a launcher or a worker (an orphan, say) still runs."""
        return any(not dead for dead in self.launcher_dead) or any(
            w.exited is None for w in self.workers.values()
        )

    def watch(self) -> None:
        """The main loop: scan, read steps, watchdog; returns when everything has exited (or a hang)."""
        while True:
            self.scan()
            self.read_steps()
            now = time.time()
            if not self.running():
                return
            done = self.max_step >= self.opts.steps - 1
            bound = self.opts.startup if self.max_step < 0 else self.opts.stall
            if now - self.progress_at > bound:
                self.hang = (
                    f"the launchers or workers did not exit within {bound:.0f} s of the last step"
                    if done
                    else f"no step for {now - self.progress_at:.0f} s (bound {bound:.0f} s) at step "
                    f"{self.max_step}"
                )
                alive = sorted(w.id for w in self.workers.values() if w.exited is None)
                self.record(
                    {"type": "hang", "why": self.hang, "alive": alive}, f"HANG: {self.hang}; alive: {alive}"
                )
                return
            time.sleep(0.1)

    def kill_all(self) -> None:
        """SIGCONT what we stopped, then SIGKILL every process of the launchers' groups."""
        for pid in list(self.stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        for p in self.launchers:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
        for p in self.launchers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=10)
        orphans = [w.pid for w in self.workers.values() if w.exited is None or w.orphan]  # ours now: reap
        deadline = time.time() + 5
        while orphans and time.time() < deadline:
            for pid in list(orphans):
                try:
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        orphans.remove(pid)
                except ChildProcessError:
                    orphans.remove(pid)
            time.sleep(0.05)

    # -- faults ---------------------------------------------------------------------------------------
    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the episode is stopping; False if it is."""
        return not self.stop.wait(max(0.0, seconds))

    def _wait_for(self, pred: Callable[[], Any], timeout: float) -> Any:
        deadline = time.time() + timeout
        while time.time() < deadline and not self.stop.is_set():
            value = pred()
            if value:
                return value
            time.sleep(0.05)
        return None

    def _event(self, kind: str, after: float, **match: Any) -> dict[str, Any] | None:
        with self.lock:
            for e in self.events:
                if e["type"] == kind and e["t"] >= after and all(e.get(k) == v for k, v in match.items()):
                    return e
        return None

    def _launcher_alive(self, node: int) -> bool:
        return not self.launcher_dead[node] and self.launchers[node].poll() is None

    def members(self) -> list[Worker]:
        """Workers training now (a step within the last 5 s), alive, not stopped."""
        now = time.time()
        with self.lock:
            return [
                w
                for w in self.workers.values()
                if w.exited is None
                and w.pid not in self.stopped
                and now - self.last_step_time.get(w.id, 0.0) < 5.0
            ]

    def targets(self) -> list[Worker]:
        """Members whose launcher lives (it reports and restarts them)."""
        return [w for w in self.members() if self._launcher_alive(w.node)]

    def _signal(self, fault: Fault, w: Worker, sig: signal.Signals, phase: str = "") -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, sig)
        now = time.time()
        fault.targets.append(
            {"pid": w.pid, "id": w.id, "node": w.node, "signal": sig.name, "time": now, "phase": phase}
        )
        fault.end = now

    def _replacement(self, fault: Fault, victim: Worker) -> Worker | None:
        """The process the victim's launcher started in its place (its pid, once it runs our script)."""
        exit_event = self._wait_for(lambda: self._event("exit", fault.time - 1, id=victim.id), 10.0)
        if exit_event is None or exit_event["replacement"] is None:
            fault.detail += "; no replacement was started"
            return None
        new = exit_event["replacement"]

        def find() -> Worker | None:
            self.scan()
            with self.lock:
                return next((w for w in self.workers.values() if w.id == new and w.exited is None), None)

        w = self._wait_for(find, 10.0)
        if w is None:
            fault.detail += f"; replacement {new} not found"
        return w

    def inject(self, fault: Fault) -> bool:
        """Carry out ``fault`` (its kind); False if no target was available."""
        o, rng = self.opts, self.rng
        pool = self.targets()
        if fault.kind == "launcher":
            node = o.nnodes - 1
            p = self.launchers[node]
            orphans = [w.id for w in self.workers.values() if w.node == node and w.exited is None]
            os.kill(p.pid, signal.SIGKILL)
            fault.targets.append(
                {
                    "pid": p.pid,
                    "id": None,
                    "node": node,
                    "signal": "SIGKILL",
                    "time": time.time(),
                    "phase": "launcher",
                }
            )
            fault.end = time.time()
            fault.detail = f"node {node}'s launcher; its workers {sorted(orphans)} are orphans now"
            return True
        if not pool:
            return False
        victim = rng.choice(pool)
        if fault.kind == "sigkill":
            self._signal(fault, victim, signal.SIGKILL)
        elif fault.kind == "sigstop":
            hold = o.timeout + o.stop_extra
            self.stopped.add(victim.pid)
            self._signal(fault, victim, signal.SIGSTOP)
            fault.detail = f"stopped {hold:.1f} s"
            self._sleep(hold)
            self._signal(fault, victim, signal.SIGCONT)
            self.stopped.discard(victim.pid)
        elif fault.kind == "double":
            delay = math.exp(rng.uniform(math.log(0.05), math.log(o.timeout)))
            self._signal(fault, victim, signal.SIGKILL)
            if not self._sleep(delay):
                return True
            others = [w for w in self.members() if w.pid != victim.pid and self._launcher_alive(w.node)]
            if others:
                self._signal(fault, rng.choice(others), signal.SIGKILL)
                fault.detail = f"second kill {delay:.2f} s after the first"
            else:
                fault.detail = "no second target"
        elif fault.kind in ("setup", "joiner"):
            self._signal(fault, victim, signal.SIGKILL, "member")
            new = self._replacement(fault, victim)
            if new is None:
                return True
            if fault.kind == "setup":
                delay = rng.uniform(0.2, o.setup_delay)
                self._sleep(delay)
                asked = self._event("ask", fault.time, id=new.id) is not None
                self._signal(fault, new, signal.SIGKILL, "asked to join" if asked else "setting up")
                fault.detail = f"replacement {new.id} killed {delay:.2f} s after it started"
            else:
                self._kill_while_admitted(fault, new)
        return True

    def _kill_while_admitted(self, fault: Fault, new: Worker) -> None:
        """SIGKILL a joiner while the members admit it: once it opens the new group's connections.

        A joiner waiting for admission holds its store connection(s) only; when the members admit it
        (at a step boundary after the change that removed the victim), it forms the new Gloo group
        (one connection per member) and then receives its state. It is killed a uniform
        0..``--admit-delay`` s after its socket count first rises, or at once if it was admitted first.
        """
        ask = self._wait_for(lambda: self._event("ask", fault.time, id=new.id), 120.0)
        if ask is None:
            fault.detail = f"replacement {new.id} never asked to join"
            return
        base = _sockets(new.pid)

        def admitting() -> str | None:
            if self._event("joined", fault.time, id=new.id) is not None:
                return "admitted"
            n = _sockets(new.pid)
            return f"admitting ({base} -> {n} sockets)" if n > base + 1 else None

        phase = self._wait_for(admitting, 60.0) or "waiting for admission"
        delay = self.rng.uniform(0.0, self.opts.admit_delay)
        self._sleep(delay)
        if self._event("joined", fault.time, id=new.id) is not None:
            phase += ", admitted before the kill"
        self._signal(fault, new, signal.SIGKILL, phase)
        waited = fault.end - ask["t"]
        fault.detail = f"replacement {new.id} killed {waited:.2f} s after it asked to join"

    def _describe(self, fault: Fault) -> str:
        who = ", ".join(
            f"{t['signal']} {'launcher' if t['id'] is None else 'process ' + str(t['id'])} (node {t['node']}"
            + (f", {t['phase']})" if t["phase"] else ")")
            for t in fault.targets
        )
        return f"fault #{fault.index} {fault.kind}: {who}" + (f"; {fault.detail}" if fault.detail else "")

    def _launch_setup_fault(self) -> None:
        """A launch rank killed while the job sets up (before its first step).

        At a uniform 0.5..``--launch-window`` s after every launch rank runs the script (the launchers
        themselves take a second or two to start them): importing torch, loading the data, in
        ``init()`` or in the set-up collectives.
        """
        delay = self.rng.uniform(0.5, self.opts.launch_window)

        def launch_ranks() -> list[Worker]:
            with self.lock:
                return [
                    w
                    for w in self.workers.values()
                    if w.exited is None and w.id < WORLD and self._launcher_alive(w.node)
                ]

        if not self._wait_for(lambda: len(launch_ranks()) == WORLD, 60.0):
            self.say("launch set-up fault skipped: the launch ranks never all ran")
            return
        since = time.time()
        if not self._sleep(delay):
            return
        if self.max_step >= 0:
            self.say(f"launch set-up fault skipped: the job trained within {delay:.1f} s")
            return
        pool = launch_ranks()
        if not pool:
            return
        fault = Fault(len(self.faults), "setup", time.time(), self.max_step)
        self._signal(fault, self.rng.choice(pool), signal.SIGKILL, f"launch, +{time.time() - since:.1f} s")
        fault.detail = "a launch rank, before the job trained"
        self.faults.append(fault)
        self.record({"type": "fault", **asdict(fault)}, self._describe(fault))

    def inject_loop(self) -> None:
        """The fault thread: draw times and kinds, inject, until the job nears its end."""
        o, rng = self.opts, self.rng
        kinds = [k for k in o.kinds if k != "launcher" or o.nnodes > 1]
        if "setup" in kinds and rng.random() < o.launch_setup:
            self._launch_setup_fault()  # a launch rank: needs no joiner, so the DDP hook too
        if not self.config.joiners:  # no restarted process to kill while it sets up or is admitted
            kinds = [k for k in kinds if k not in ("setup", "joiner")]
        regular = [k for k in kinds if k != "launcher"]
        expected = max(1, int(o.steps * (o.step_seconds + 0.012) / o.mtbf))
        launcher_slot = rng.randrange(expected) if "launcher" in kinds else -1
        deck: list[str] = []
        if not self._wait_for(lambda: self.max_step >= 0, o.startup):
            return
        slot = 0
        last = time.time()
        while not self.stop.is_set():
            gap = o.min_gap + rng.expovariate(1.0 / max(o.mtbf - o.min_gap, 1e-3))
            if not self._sleep(last + gap - time.time()):
                return
            if self.seconds_left() < o.quiet_tail:
                self.say(
                    f"no more faults: about {self.seconds_left():.0f} s left "
                    f"(quiet tail {o.quiet_tail:.0f} s)"
                )
                return
            if slot == launcher_slot:
                kind = "launcher"
            else:
                if not deck:
                    deck = list(regular)
                    rng.shuffle(deck)
                kind = deck.pop()
            slot += 1
            if kind != "launcher" and not self.config.joiners:
                lost = 2 if kind == "double" else 1
                if len(self.members()) - lost < o.min_world:
                    self.say(f"{kind} skipped: it would leave fewer than {o.min_world} ranks (no restarts)")
                    last = time.time()
                    continue
            fault = Fault(len(self.faults), kind, time.time(), self.max_step)
            self.say(f"fault #{fault.index}: {kind} ...")
            if not self.inject(fault):
                self.say(f"{kind} skipped: no training worker with a live launcher")
                last = time.time()
                continue
            with self.lock:
                self.faults.append(fault)
            self.record({"type": "fault", **asdict(fault)}, self._describe(fault))
            last = fault.end or time.time()

    # -- the whole episode ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Launch, inject, watch, clean up, analyse."""
        self.launch()
        injector = threading.Thread(target=self.inject_loop, daemon=True)
        injector.start()
        try:
            self.watch()
        finally:
            self.stop.set()
            injector.join(timeout=self.opts.timeout + self.opts.stop_extra + 30)
            leftover = sorted(w.id for w in self.workers.values() if w.exited is None)
            self.kill_all()
            time.sleep(0.5)  # the readers drain
            self.read_steps()
            for f in self._log_files:
                f.close()
        result = self.analyse(leftover)
        if self._events_file is not None:
            self._events_file.close()
        (self.out / "episode.json").write_text(json.dumps(result, indent=1))
        return result

    def analyse(self, leftover: list[int]) -> dict[str, Any]:
        """Survival of each fault, steps lost, slowest steps, accuracy."""
        result_file = self.out / "result.json"
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        node0 = self.launchers[0].returncode if self.launchers else None
        job_ok = self.hang is None and result is not None and node0 == 0 and not leftover
        job_why = (
            f"hang: {self.hang}"
            if self.hang
            else "no result (the final members did not evaluate)"
            if result is None
            else f"node 0's launcher exited with {node0}"
            if node0 != 0
            else f"processes {leftover} still running at the end"
            if leftover
            else ""
        )
        # Exits with an error, each explained by a fault or by the launcher stopping a never-admitted joiner.
        hit: dict[int, set[str]] = {}
        for f in self.faults:
            for t in f.targets:
                if t["id"] is not None:
                    hit.setdefault(t["id"], set()).add(t["signal"])
        stopped_by_launcher = {e["id"] for e in self.events if e["type"] == "stopping"}
        kills = [t["time"] for f in self.faults for t in f.targets if t["signal"] == "SIGKILL"]
        codes: dict[int, dict[str, Any]] = {}
        for e in self.events:
            if e["type"] in ("exit", "orphan-exit") and e["code"] != 0:
                codes.setdefault(e["id"], e)
        unexplained, collateral = [], []
        for wid, e in sorted(codes.items()):
            code, t = e["code"], e["t"]
            sigs = hit.get(wid, set())
            if code == -int(signal.SIGKILL) and "SIGKILL" in sigs:
                continue
            if code == 1 and "SIGSTOP" in sigs:
                continue  # fenced
            if code == -int(signal.SIGTERM) and wid in stopped_by_launcher:
                continue
            # Blamed on the fault in whose window the process got stuck: its last step (a rank blocked
            # in a group formation exits long after the fault that blocked it), else its start.
            stuck = self.last_step_time.get(wid) or next(
                (w.seen for w in self.workers.values() if w.id == wid), t
            )
            exit_info = {
                "id": wid,
                "code": code,
                "t": t,
                "stuck": stuck,
                "node": e.get("node", -1),
                "error": e.get("error", ""),
            }
            if DONOR_LOST in exit_info["error"] and any(t - self.opts.timeout - 10 <= k <= t for k in kills):
                collateral.append(exit_info)  # documented: a joiner whose donor was killed exits; restarted
                continue
            unexplained.append(exit_info)
        ends = [f.time for f in self.faults[1:]] + [math.inf] * bool(self.faults)
        rows = [r for rows in self.steps.values() for r in rows]
        for f, until in zip(self.faults, ends, strict=True):
            mine = [u for u in unexplained if f.time - 0.5 <= u["stuck"] < until]
            f.collateral = [
                f"process {u['id']}: {u['error'][:160]}"
                for u in collateral
                if f.time - 0.5 <= u["stuck"] < until
            ]
            if not job_ok:
                f.survived, f.why = False, job_why
            elif mine:
                f.survived, f.why = (
                    False,
                    "unexpected exits: " + ", ".join(f"process {u['id']} code {u['code']}" for u in mine),
                )
            else:
                f.survived = True
            window = [(r, wid) for wid, rs in self.steps.items() for r in rs if f.time < r[0] < until]
            if window:
                (t, step, _, secs, _), wid = max(window, key=lambda x: x[0][3])
                f.slowest_after, f.slowest_where = secs, f"process {wid} step {step}"
            later = sorted((r for r in rows if f.time < r[0] < until), key=lambda r: r[0])
            drop = next((r for r in later if r[2] < WORLD), None)
            if drop is not None:
                full = next((r for r in later if r[0] > drop[0] and r[2] >= WORLD), None)
                f.back_to_full = None if full is None else full[0] - f.time
        before_faults = [u for u in unexplained if not self.faults or u["stuck"] < self.faults[0].time - 0.5]
        # Steps lost: (8 - group size) per step, plus the steps skipped to line up.
        size_at: dict[int, int] = {}
        skipped = 0
        for r in rows:
            size_at[r[1]] = max(size_at.get(r[1], 0), r[2])
            skipped += r[4]
        missing = sum(WORLD - size_at.get(s, 0) for s in range(self.opts.steps))
        durations = sorted(r[3] for r in rows)
        median = statistics.median(durations) if durations else 0.0
        span = (self.last_step_at or 0.0) - (self.first_step_at or 0.0)
        per_step = median + self.opts.step_seconds
        orphans = sorted(
            (
                {
                    "id": w.id,
                    "code": w.code,
                    "steps_after": sum(
                        1 for r in self.steps.get(w.id, []) if r[0] > self._launcher_kill_time()
                    ),
                    "finished": (self.out / f"rank{w.id}.json").exists(),
                }
                for w in self.workers.values()
                if w.orphan
            ),
            key=lambda d: d["id"],
        )
        return {
            "config": self.config.name,
            "episode": self.index,
            "started": self.started,
            "wall_seconds": time.time() - self.started,
            "train_seconds": span,
            "steps": self.opts.steps,
            "hang": self.hang,
            "job_ok": job_ok,
            "job_why": job_why,
            "launcher_codes": [p.returncode for p in self.launchers],
            "accuracy": None if result is None else result["accuracy"],
            "final_members": None if result is None else result["members"],
            "faults": [asdict(f) for f in self.faults],
            "unexplained_exits": unexplained,
            "unexplained_before_faults": before_faults,
            "collateral_exits": collateral,
            "stopped_by_launcher": sorted(stopped_by_launcher),
            "steps_lost": missing + skipped,
            "missing_rank_steps": missing,
            "skipped_steps": skipped,
            "seconds_lost": max(0.0, span - self.opts.steps * per_step),
            "median_step": median,
            "slowest_step": durations[-1] if durations else None,
            "membership_changes": [e for e in self.events if e["type"] == "membership"],
            "orphans": orphans,
            "processes": len(self.workers),
        }

    def _launcher_kill_time(self) -> float:
        return next((f.time for f in self.faults if f.kind == "launcher"), math.inf)


def job_args(
    config: Config, steps: int, step_seconds: float, timeout: float, seed: int, out: Path
) -> list[str]:
    """examples/elastic.py's command line for ``config``."""
    return [
        str(EXAMPLE),
        "--data",
        "fashion-mnist",
        "--data-dir",
        str(FMNIST),
        *config.flags,
        "--steps",
        str(steps),
        "--step-seconds",
        str(step_seconds),
        "--timeout",
        str(timeout),
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--step-log",
        str(out / "steps"),
    ]


def reference(config: Config, opts: Options, out: Path, *, reuse: bool = False) -> dict[str, Any]:
    """The uninterrupted run of ``config`` (same steps and seed; one launcher of 8, unpaced).

    Written to ``out/reference-<steps>-seed<seed>.json``; with ``reuse``, an earlier run's file of the
    same command line is read instead (the code may have changed since: off by default).
    """
    cache = out / f"reference-{opts.steps}-seed{opts.seed}.json"
    argv = [sys.executable, "-m", "saddle_torch.run", "--nproc", str(WORLD)]
    argv += job_args(config, opts.steps, 0.0, opts.timeout, opts.seed, out / "reference")
    if reuse and cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("argv") == argv:
            return cached
    t0 = time.time()
    print(
        f"[{config.name}] uninterrupted reference run: {' '.join(argv[3:6])} ... {opts.steps} steps",
        flush=True,
    )
    proc = subprocess.run(
        argv,
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=opts.startup + opts.steps * 0.2,
        check=False,
    )
    result_file = out / "reference" / "result.json"
    if proc.returncode != 0 or not result_file.exists():
        raise SystemExit(
            f"the uninterrupted run of {config.name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}"
        )
    doc = {
        "argv": argv,
        "accuracy": json.loads(result_file.read_text())["accuracy"],
        "seconds": time.time() - t0,
    }
    cache.write_text(json.dumps(doc))
    print(f"[{config.name}] uninterrupted: {doc['accuracy']:.2f}% ({doc['seconds']:.0f} s)", flush=True)
    return doc


# --- the report ---------------------------------------------------------------------------------------------
def summarize(
    name: str, episodes: list[dict[str, Any]], ref: float | None, max_drop: float
) -> dict[str, Any]:
    """One configuration's row: faults by kind, hangs, steps lost, slowest steps, accuracy."""
    faults = [f for e in episodes for f in e["faults"]]
    by_kind = {
        k: {
            "injected": sum(f["kind"] == k for f in faults),
            "survived": sum(f["kind"] == k and bool(f["survived"]) for f in faults),
        }
        for k in KINDS
    }
    accs = [e["accuracy"] for e in episodes if e["accuracy"] is not None]
    slow = [f["slowest_after"] for f in faults if f["slowest_after"] is not None]
    worst = None if not accs or ref is None else min(accs) - ref
    return {
        "config": name,
        "episodes": len(episodes),
        "steps": episodes[0]["steps"] if episodes else 0,
        "membership_changes": sum(len(e["membership_changes"]) for e in episodes),
        "wall_seconds": sum(e["wall_seconds"] for e in episodes),
        "faults": len(faults),
        "survived": sum(bool(f["survived"]) for f in faults),
        "by_kind": by_kind,
        "hangs": sum(e["hang"] is not None for e in episodes),
        "jobs_failed": sum(not e["job_ok"] for e in episodes),
        "steps_lost": sum(e["steps_lost"] for e in episodes),
        "missing_rank_steps": sum(e["missing_rank_steps"] for e in episodes),
        "skipped_steps": sum(e["skipped_steps"] for e in episodes),
        "seconds_lost": sum(e["seconds_lost"] for e in episodes),
        "slowest_after_fault_max": max(slow, default=None),
        "slowest_after_fault_median": statistics.median(slow) if slow else None,
        "accuracy": accs,
        "uninterrupted": ref,
        "worst_delta": worst,
        "accuracy_ok": worst is None or worst >= -max_drop,
        "unexplained_exits": sum(len(e["unexplained_exits"]) for e in episodes),
        "collateral_exits": sum(len(e["collateral_exits"]) for e in episodes),
    }


def _fmt(x: float | None, spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def _fault_row(e: dict[str, Any], f: dict[str, Any]) -> str:
    targets = "; ".join(
        f"{t['signal']} {'launcher' if t['id'] is None else t['id']}"
        + (f" ({t['phase']})" if t["phase"] else "")
        for t in f["targets"]
    )
    if f["detail"]:
        targets += f" — {f['detail']}"
    survived = "yes" if f["survived"] else f"NO: {f['why']}"
    if f["collateral"]:
        survived += " (collateral: " + "; ".join(f["collateral"]) + ")"
    return (
        f"| {e['config']} | {e['episode']} | {f['index']} | {f['time'] - e['started']:.1f} | {f['step']} "
        f"| {f['kind']} | {targets} | {_fmt(f['slowest_after'])} ({f['slowest_where']}) "
        f"| {_fmt(f['back_to_full'], '.1f')} | {survived} |"
    )


def markdown(
    rows: list[dict[str, Any]], episodes: list[dict[str, Any]], opts: Options, verdict: list[str]
) -> str:
    """The report as markdown: a row per configuration, then every fault, the orphans, other exits."""
    kinds = [k for k in KINDS if any(r["by_kind"][k]["injected"] for r in rows)]
    out = [
        "# Chaos report",
        "",
        f"{WORLD} ranks, Fashion-MNIST, {opts.nnodes} launcher(s) on 127.0.0.1, timeout {opts.timeout:g} s, "
        f"steps paced at {opts.step_seconds:g} s, MTBF {opts.mtbf:g} s (min gap {opts.min_gap:g} s), seed "
        f"{opts.seed}. Per kind: injected/survived. Steps lost: rank-steps not trained (missing ranks + "
        "lined-up skips); time lost: training time beyond steps x the median step. Slowest: the slowest "
        "step after a fault, max (median over the faults). Accuracy: each episode's averaged model; Δ: the "
        "worst episode against the uninterrupted run (same steps and seed).",
        "",
        "| configuration | episodes x steps | wall | faults | survived | "
        + "".join(f"{k} | " for k in kinds)
        + "hangs | changes | steps lost | time lost | slowest step | collateral | accuracy "
        "| uninterrupted | Δ |",
        "|---" * (14 + len(kinds)) + "|",
    ]
    for r in rows:
        out.append(
            f"| {r['config']} | {r['episodes']} x {r['steps']} | {r['wall_seconds'] / 60:.1f} min "
            f"| {r['faults']} | {r['survived']} | "
            + "".join(f"{r['by_kind'][k]['injected']}/{r['by_kind'][k]['survived']} | " for k in kinds)
            + f"{r['hangs']} | {r['membership_changes']} | {r['steps_lost']} | {r['seconds_lost']:.0f} s "
            f"| {_fmt(r['slowest_after_fault_max'])} s ({_fmt(r['slowest_after_fault_median'])}) "
            f"| {r['collateral_exits']} | {', '.join(f'{a:.2f}' for a in r['accuracy']) or '—'} "
            f"| {_fmt(r['uninterrupted'])} | {_fmt(r['worst_delta'], '+.2f')} |"
        )
    by_kind = {k: sum(r["by_kind"][k]["survived"] for r in rows) for k in kinds}
    out += [
        "",
        f"Faults: {sum(r['faults'] for r in rows)} injected, {sum(r['survived'] for r in rows)} survived "
        f"({', '.join(f'{k} {n}' for k, n in by_kind.items())}); hangs: {sum(r['hangs'] for r in rows)}; "
        f"wall: {sum(r['wall_seconds'] for r in rows) / 60:.1f} min.",
        "",
        "Verdict: " + ("PASS" if not verdict else "FAIL — " + "; ".join(verdict)),
        "",
        "## Faults",
        "",
        "| config | ep | # | t (s) | step | kind | targets | slowest after (s) | back to 8 (s) | survived |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    out += [_fault_row(e, f) for e in episodes for f in e["faults"]]
    hangs = [e for e in episodes if e["hang"] or not e["job_ok"]]
    if hangs:
        out += ["", "## Failed jobs", ""]
        out += [f"- {e['config']} ep{e['episode']}: {e['job_why']}" for e in hangs]
    orphan_rows = [(e, o) for e in episodes for o in e["orphans"]]
    if orphan_rows:
        out += [
            "",
            "## Orphans (node 1's launcher killed)",
            "",
            "| config | ep | process | steps after its launcher died | finished | exit code |",
            "|---|---|---|---|---|---|",
        ]
        out += [
            f"| {e['config']} | {e['episode']} | {o['id']} | {o['steps_after']} | {o['finished']} "
            f"| {o['code']} |"
            for e, o in orphan_rows
        ]
    odd = [(e, u, "not hit by a fault") for e in episodes for u in e["unexplained_exits"]]
    odd += [(e, u, "collateral, documented") for e in episodes for u in e["collateral_exits"]]
    if odd or any(e["stopped_by_launcher"] for e in episodes):
        out += ["", "## Other exits", ""]
        out += [
            f"- {e['config']} ep{e['episode']}: process {u['id']} exited with {u['code']} ({why}) "
            f"+{u['t'] - e['started']:.1f} s: {u['error'][:200] or 'no error line'}"
            for e, u, why in odd
        ]
        out += [
            f"- {e['config']} ep{e['episode']}: processes {e['stopped_by_launcher']} stopped by their "
            "launcher after the job ended (never admitted)"
            for e in episodes
            if e["stopped_by_launcher"]
        ]
    return "\n".join(out) + "\n"


def parse_config_specs(text: str, episodes: int, steps: int) -> list[tuple[Config, int, int]]:
    """``name[@EPISODESxSTEPS],...`` → (config, episodes, steps) each."""
    out = []
    for spec in filter(None, (s.strip() for s in text.split(","))):
        name, _, plan = spec.partition("@")
        if name not in CONFIGS:
            raise SystemExit(f"unknown configuration {name!r}; known: {', '.join(CONFIGS)}")
        e, s = episodes, steps
        if plan:
            a, _, b = plan.partition("x")
            e, s = int(a), int(b)
        out.append((CONFIGS[name], e, s))
    return out


# The flags that set the Options field of the same name: (flag, type, help; the default is Options').
TUNING: tuple[tuple[str, type, str], ...] = (
    ("--step-seconds", float, "sleep per step"),
    ("--timeout", float, "gossip timeout, seconds"),
    ("--seed", int, "fault draws; also the training seed"),
    ("--mtbf", float, "mean seconds between faults"),
    ("--min-gap", float, "least seconds between faults"),
    ("--nnodes", int, "launchers, 4 ranks each (1 or 2)"),
    ("--restarts", int, "each launcher's --restarts"),
    ("--stop-extra", float, "sigstop holds timeout + this"),
    ("--setup-delay", float, "setup: kill 0.2..this s after the start"),
    ("--admit-delay", float, "joiner: kill 0..this s after it asked"),
    ("--launch-setup", float, "chance of a set-up kill at launch"),
    ("--launch-window", float, "... within this many s of launch"),
    ("--quiet-tail", float, "no fault this close to the end (s)"),
    ("--min-world", int, "least ranks left where none restart"),
    ("--startup", float, "hang: no first step within this"),
)
TUNED = tuple(flag[2:].replace("-", "_") for flag, _, _ in TUNING)  # their Options fields


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The harness's command line."""
    d = Options()
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--configs",
        default=",".join(DEFAULT_CONFIGS),
        help="comma-separated NAME[@EPISODESxSTEPS] (overrides --episodes/--steps for that configuration); "
        f"names: {', '.join(CONFIGS)}",
    )
    p.add_argument("--episodes", type=int, default=1, help="jobs per configuration (default 1)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"steps per job (default {d.steps})")
    for (flag, kind, what), name in zip(TUNING, TUNED, strict=True):
        p.add_argument(flag, type=kind, default=getattr(d, name), help=f"{what} (default %(default)s)")
    p.add_argument("--kinds", default=",".join(KINDS), help="fault kinds to draw from (default: all)")
    p.add_argument(
        "--stall", type=float, default=None, help="hang: no step for this long (default 3 x timeout + 30)"
    )
    p.add_argument(
        "--max-drop", type=float, default=1.0, help="accuracy points allowed below the uninterrupted run"
    )
    p.add_argument(
        "--reference-accuracy", type=float, default=None, help="skip the uninterrupted run: its accuracy"
    )
    p.add_argument("--no-reference", action="store_true", help="no uninterrupted run, no accuracy check")
    p.add_argument(
        "--reuse-reference", action="store_true", help="read an earlier uninterrupted run of the same command"
    )
    p.add_argument("--require-faults", type=int, default=0, help="fail with fewer faults injected in all")
    p.add_argument("--require-each", type=int, default=0, help="fail unless every kind survived this often")
    p.add_argument("--out", type=Path, default=d.out, help="report and logs (default runs/chaos)")
    args = p.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if bad := [k for k in kinds if k not in KINDS]:
        p.error(f"unknown kinds {bad}; known: {', '.join(KINDS)}")
    args.kinds = kinds
    if args.mtbf <= args.min_gap:
        p.error("--mtbf must exceed --min-gap")
    if args.nnodes not in (1, 2):
        p.error("--nnodes must be 1 or 2")
    return args


def _final_verdict(args: argparse.Namespace, rows: list[dict[str, Any]], verdict: list[str]) -> list[str]:
    """``verdict`` plus the run's requirements (faults in all, survivals per kind)."""
    out = list(verdict)
    total = sum(r["faults"] for r in rows)
    if total < args.require_faults:
        out.append(f"{total} faults injected, {args.require_faults} required")
    if args.require_each:
        for k in args.kinds:
            n = sum(r["by_kind"][k]["survived"] for r in rows)
            if n < args.require_each:
                out.append(f"{k} survived {n} times, {args.require_each} required")
    return out


def _write_report(
    args: argparse.Namespace,
    rows: list[dict[str, Any]],
    episodes: list[dict[str, Any]],
    opts: Options,
    verdict: list[str],
) -> None:
    """report.json and report.md in ``--out`` (rewritten after each configuration)."""
    report = {
        "options": {k: str(v) for k, v in vars(args).items()},
        "configs": rows,
        "episodes": episodes,
        "verdict": verdict,
    }
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    (args.out / "report.md").write_text(markdown(rows, episodes, opts, verdict))


def main(argv: list[str] | None = None) -> int:
    """Run every configuration's episodes, write the report; 0 if everything survived."""
    args = parse_args(argv)
    if not FMNIST.is_dir():
        raise SystemExit(f"{FMNIST} is missing: apt-get install dataset-fashion-mnist")
    _become_subreaper()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up (finally) when told to stop
    plan = parse_config_specs(args.configs, args.episodes, args.steps)
    args.out.mkdir(parents=True, exist_ok=True)
    rows, episodes, verdict = [], [], []
    for config, n_episodes, steps in plan:
        opts = Options(
            **{name: getattr(args, name) for name in TUNED},
            steps=steps,
            kinds=args.kinds,
            stall=args.stall if args.stall is not None else 3 * args.timeout + 30,
            out=args.out,
        )
        folder = args.out / config.name
        mine = []
        for i in range(n_episodes):
            ep_dir = folder / f"ep{i}"
            shutil.rmtree(ep_dir, ignore_errors=True)
            ep = Episode(config, i, opts, ep_dir)
            try:
                result = ep.run()
            except BaseException:
                ep.stop.set()
                ep.kill_all()
                raise
            mine.append(result)
            (ep_dir / "episode.json").write_text(json.dumps(result, indent=1))
            ok = sum(bool(f["survived"]) for f in result["faults"])
            print(
                f"[{config.name} ep{i}] done in {result['wall_seconds']:.0f} s: {len(result['faults'])} "
                f"faults, {ok} survived, hang {result['hang']}, accuracy {result['accuracy']}, steps lost "
                f"{result['steps_lost']}",
                flush=True,
            )
        ref = args.reference_accuracy
        if ref is None and not args.no_reference:
            ref = reference(config, opts, folder, reuse=args.reuse_reference)["accuracy"]
        row = summarize(config.name, mine, ref, args.max_drop)
        rows.append(row)
        episodes += mine
        if row["hangs"]:
            verdict.append(f"{config.name}: {row['hangs']} hang(s)")
        if row["survived"] < row["faults"] or row["jobs_failed"]:
            verdict.append(f"{config.name}: {row['faults'] - row['survived']} fault(s) not survived")
        if early := [u for e in mine for u in e["unexplained_before_faults"]]:
            verdict.append(f"{config.name}: processes {[u['id'] for u in early]} failed before any fault")
        if not row["accuracy_ok"]:
            verdict.append(
                f"{config.name}: accuracy {row['worst_delta']:+.2f} points against the uninterrupted run"
            )
        _write_report(args, rows, episodes, opts, [*verdict, "partial: configurations left to run"])
    verdict = _final_verdict(args, rows, verdict)
    _write_report(args, rows, episodes, opts, verdict)
    print(markdown(rows, episodes, opts, verdict), flush=True)
    return 1 if verdict else 0


if __name__ == "__main__":
    sys.exit(main())
