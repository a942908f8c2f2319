"""An emulated cluster on one Linux machine: one network namespace per rank, shaped links, one bridge.

Every rank gets its own network namespace with one veth interface, joined to the other ranks by a
Linux bridge in the root namespace. Each rank's link can be shaped with ``tc tbf`` to a rate of its
own, in both directions (the namespace side shapes what the rank sends, the bridge side what it
receives), so a transfer from rank i to rank j runs at ``min(rate_i, rate_j)`` and one slow
"straggler" link can be emulated. Addresses are private (``10.213.k.0/24``, a ``k`` that collides with
nothing on this machine); the bridge has no address, and the namespaces have no default route, so
nothing is routed or NATed anywhere else.

    from saddle_torch.testing.cluster import Cluster

    with Cluster(4, rates_mbit=[100, 100, 100, 10]) as c:        # rank 3 is a straggler
        codes = c.run([sys.executable, "train.py", "--epochs", "1"], timeout=600)

    python -m saddle_torch.testing.cluster --n 4 --rate 100mbit -- train.py --epochs 1

Each rank is started with ``ip netns exec <ns> <argv>`` and torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK=0``, ``LOCAL_WORLD_SIZE=1``, ``MASTER_ADDR`` = rank 0's address,
``MASTER_PORT``, ``GLOO_SOCKET_IFNAME`` = the rank's interface, ``OMP_NUM_THREADS=1``), by a launcher
of its own rather than ``torchrun --nnodes N --node_rank i``: no agent process and rendezvous per rank
on 2 cores, and one place that stops every rank when one fails. Output is streamed with a
``[rank i]`` prefix. Everything (namespaces, veths, bridge, qdiscs) is removed on exit, on
exceptions, on Ctrl-C and on SIGTERM; objects are named ``stc<pid><letter>...`` so parallel runs
never collide, and :func:`cleanup_stale` removes what killed runs left behind.

Needs root, ``ip`` and ``tc`` (iproute2), and a kernel with network namespaces, veth, bridge and the
``tbf`` qdisc; :func:`unavailable_reason` says what is missing (for test skips), and
:class:`ClusterUnavailable` is raised naming it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import itertools
import os
import re
import shutil
import signal
import string
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "Cluster",
    "ClusterError",
    "ClusterTimeout",
    "ClusterUnavailable",
    "RankFailure",
    "check_available",
    "cleanup_stale",
    "leftovers",
    "parse_rate",
    "tbf_burst_bytes",
    "unavailable_reason",
]

_PREFIX = "stc"  # every object of a run is named stc<pid><letter>...: ip link names have ≤ 15 chars
_NAME = re.compile(rf"^{_PREFIX}(\d+)([a-z])(?:b|[hn]\d+|-\d+)$")
_MAX_RANKS = 253  # one /24, .1 .. .253
_SUBNET_BASE = ipaddress.ip_network("10.213.0.0/16")
_MIN_BURST = 8 * 1024  # bytes: a few full frames (tbf segments larger GSO packets)
_BURST_SECONDS = 0.002  # bucket depth in time: covers timer and softirq slack at high rates
_KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL of a rank
_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the directory holding saddle_torch/
_letters = itertools.cycle(string.ascii_lowercase)
_letters_lock = threading.Lock()


class ClusterError(RuntimeError):
    """Base of the emulated cluster's errors."""


class ClusterUnavailable(ClusterError):
    """This machine cannot host the emulated cluster (not root, no ``ip``/``tc``, kernel refused)."""


class RankFailure(ClusterError):
    """A rank exited with a non-zero code; the other ranks were stopped.

    Attributes:
        rank: the first rank seen to fail.
        codes: every rank's exit code (a negative code: killed by that signal).
    """

    def __init__(self, message: str, *, rank: int, codes: list[int]) -> None:
        super().__init__(message)
        self.rank = rank
        self.codes = codes


class ClusterTimeout(ClusterError, TimeoutError):
    """Ranks were still running at the timeout; they were killed.

    Attributes:
        codes: every rank's exit code (killed ranks have a negative code).
    """

    def __init__(self, message: str, *, codes: list[int]) -> None:
        super().__init__(message)
        self.codes = codes


# --- commands ---------------------------------------------------------------------------------------
def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _cmd("ip", *args, check=check)


def _cmd(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run an iproute2 command; raise :class:`ClusterError` with its stderr when it fails."""
    res = subprocess.run(list(argv), capture_output=True, text=True)
    if check and res.returncode != 0:
        raise ClusterError(f"`{' '.join(argv)}` failed ({res.returncode}): {res.stderr.strip()}")
    return res


def _need_tools() -> None:
    if os.geteuid() != 0:
        raise ClusterUnavailable(
            "the emulated cluster needs root (network namespaces, veth pairs, tc qdiscs); run as root"
        )
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            raise ClusterUnavailable(f"`{tool}` not found on PATH: install iproute2")


def parse_rate(text: str | float | None) -> float | None:
    """A link rate in Mbit/s from ``"100mbit"``, ``"1gbit"``, ``"500kbit"``, ``"100"`` (Mbit/s) or ``None``.

    ``None``, ``"none"``, ``"unshaped"`` and ``"0"`` mean an unshaped link.

    Raises:
        ValueError: the text is not a rate.
    """
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return None if text == 0 else float(text)
    s = text.strip().lower()
    if s in ("none", "unshaped", "0", ""):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*(kbit|mbit|gbit|k|m|g)?", s)
    if m is None:
        raise ValueError(f"not a rate: {text!r} (e.g. 100mbit, 1gbit, 500kbit, none)")
    scale = {"kbit": 1e-3, "k": 1e-3, "mbit": 1.0, "m": 1.0, "gbit": 1e3, "g": 1e3, None: 1.0}[m.group(2)]
    value = float(m.group(1)) * scale
    if value <= 0:
        raise ValueError(f"a rate must be positive, got {text!r}")
    return value


def tbf_burst_bytes(rate_mbit: float) -> int:
    """Bucket size of a tbf at ``rate_mbit``: 2 ms at that rate, at least 8 KiB.

    A bucket smaller than what the rate delivers between two wake-ups of the qdisc's timer caps the
    achieved rate below the configured one (at 10 Gbit/s a 64 KiB bucket gave 3.7 Gbit/s, 2.5 MB
    9.57); a larger one lets a link that was idle (during compute) send that much at once, which
    flatters slow links (64 KiB is 52 ms at 10 Mbit/s). 2 ms reached 0.956 of the rate (the TCP
    payload share of 1500-byte frames) from 10 Mbit/s to 10 Gbit/s on the development machine.
    """
    return max(_MIN_BURST, int(rate_mbit * 1e6 / 8 * _BURST_SECONDS))


# --- availability -----------------------------------------------------------------------------------
_probe_result: list[str | None] = []


def unavailable_reason() -> str | None:
    """Why this machine cannot host the emulated cluster, or ``None`` when it can (cached).

    Checks root, ``ip`` and ``tc``, then creates and removes a probe namespace with a veth pair, a
    bridge and a tbf qdisc, so a kernel without netns, veth, bridge or tbf support is detected.
    """
    if not _probe_result:
        try:
            with Cluster(1, rates_mbit=[100.0]):
                pass
            _probe_result.append(None)
        except ClusterUnavailable as e:
            _probe_result.append(str(e))
        except ClusterError as e:  # an unexpected refusal is still a reason to skip, with its message
            _probe_result.append(f"the probe cluster could not be set up: {e}")
    return _probe_result[0]


def check_available() -> None:
    """Raise :class:`ClusterUnavailable` naming what is missing, unless the machine can host a cluster."""
    reason = unavailable_reason()
    if reason is not None:
        raise ClusterUnavailable(reason)


# --- leftovers --------------------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _our_objects() -> tuple[list[str], list[str]]:
    """Names of this module's namespaces and root-namespace links (every run's, alive or not)."""
    netns = [
        line.split()[0]
        for line in _ip("netns", "list", check=False).stdout.splitlines()
        if line.strip() and _NAME.match(line.split()[0])
    ]
    links = []
    for line in _ip("-o", "link", "show", check=False).stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            name = parts[1].strip().split("@")[0]
            if _NAME.match(name):
                links.append(name)
    return netns, links


def _remove(run_prefix: str) -> list[str]:
    """Remove every namespace and link of one run (its processes first); returns what failed."""
    netns, links = _our_objects()
    netns = [n for n in netns if n.startswith(run_prefix + "-")]
    links = [name for name in links if name[: len(run_prefix)] == run_prefix and _NAME.match(name)]
    failures: list[str] = []
    for ns in netns:  # a namespace with live processes outlives `ip netns del`, veth included
        for pid in _ip("netns", "pids", ns, check=False).stdout.split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
    # Deleting the host end removes the pair at once; a namespace's own links go asynchronously.
    for name in sorted(links, key=lambda s: s.endswith("b")):
        res = _ip("link", "del", name, check=False)
        if res.returncode != 0 and "Cannot find device" not in res.stderr:
            failures.append(f"link {name}: {res.stderr.strip()}")
    for ns in netns:
        res = _ip("netns", "del", ns, check=False)
        if res.returncode != 0 and "No such file" not in res.stderr:
            failures.append(f"netns {ns}: {res.stderr.strip()}")
    return failures


def cleanup_stale() -> list[str]:
    """Remove the namespaces and links of emulated clusters whose process is no longer alive.

    Returns:
        The run prefixes removed (``stc<pid><letter>``).
    """
    _need_tools()
    netns, links = _our_objects()
    prefixes = set()
    for name in netns + links:
        m = _NAME.match(name)
        if m is not None and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            prefixes.add(f"{_PREFIX}{m.group(1)}{m.group(2)}")
    for prefix in sorted(prefixes):
        _remove(prefix)
    return sorted(prefixes)


def leftovers(run_prefix: str) -> list[str]:
    """Namespaces and root-namespace links whose names start with ``run_prefix`` (empty once torn down)."""
    netns, links = _our_objects()
    return [n for n in netns + links if n.startswith(run_prefix)]


def _free_subnet() -> ipaddress.IPv4Network:
    """The first ``10.213.k.0/24`` that overlaps no address or route of the root namespace."""
    used = []
    for line in _ip("-o", "-4", "addr", "show", check=False).stdout.splitlines():
        m = re.search(r"inet (\S+)", line)
        if m:
            used.append(ipaddress.ip_interface(m.group(1)).network)
    for line in _ip("-4", "route", "show", "table", "all", check=False).stdout.splitlines():
        first = line.split()[0] if line.split() else ""
        with contextlib.suppress(ValueError):
            if first not in ("default", "broadcast", "local", "unreachable", "prohibit", "blackhole"):
                used.append(ipaddress.ip_network(first, strict=False))
    for subnet in _SUBNET_BASE.subnets(new_prefix=24):
        if not any(subnet.overlaps(u) for u in used):
            return subnet
    raise ClusterUnavailable(f"every /24 of {_SUBNET_BASE} overlaps an address or route of this machine")


# --- the cluster ------------------------------------------------------------------------------------
class Cluster:
    """N network namespaces on one bridge, each rank's link shaped by tbf; a context manager.

    Args:
        n: number of ranks (1 to 253).
        rates_mbit: the rate of every rank's link in Mbit/s, one value for all or a list with one per
            rank; ``None`` (or a ``None`` entry) leaves a link unshaped.
        latency_ms: tbf ``latency``: the longest a packet may wait in the shaper's queue.
        burst_bytes: tbf bucket size (default: :func:`tbf_burst_bytes` of each rank's rate).
        master_port: first ``MASTER_PORT`` given to the ranks (each :meth:`run` takes the next one).

    Raises:
        ValueError: invalid ``n`` or rates.
        ClusterUnavailable: (on entry) not root, ``ip``/``tc`` missing, the kernel refused a
            namespace, veth, bridge or tbf qdisc.
    """

    def __init__(
        self,
        n: int,
        *,
        rates_mbit: float | Sequence[float | None] | None = None,
        latency_ms: float = 100.0,
        burst_bytes: int | None = None,
        master_port: int = 29500,
    ) -> None:
        if not 1 <= n <= _MAX_RANKS:
            raise ValueError(f"n must be in [1, {_MAX_RANKS}], got {n}")
        if rates_mbit is None or isinstance(rates_mbit, (int, float)):
            rates = [parse_rate(rates_mbit)] * n
        else:
            rates = [parse_rate(r) for r in rates_mbit]
            if len(rates) != n:
                raise ValueError(f"rates_mbit has {len(rates)} entries for {n} ranks")
        if latency_ms <= 0:
            raise ValueError(f"latency_ms must be positive, got {latency_ms}")
        self.n = n
        self.rates_mbit: list[float | None] = rates
        self.latency_ms = latency_ms
        self.burst_bytes = burst_bytes
        with _letters_lock:
            self.prefix = f"{_PREFIX}{os.getpid()}{next(_letters)}"
        self.bridge = f"{self.prefix}b"
        self.namespaces = [f"{self.prefix}-{i}" for i in range(n)]
        self.host_ifs = [f"{self.prefix}h{i}" for i in range(n)]
        self.ifnames = [f"{self.prefix}n{i}" for i in range(n)]
        self.addresses: list[str] = []
        self._port = itertools.count(master_port)
        self._up = False
        self._saved_handlers: dict[int, Any] = {}

    # -- set-up and teardown --------------------------------------------------------------------------
    def __enter__(self) -> Cluster:
        self._install_signal_handlers()
        try:
            self.setup()
        except BaseException:
            self.teardown()
            self._restore_signal_handlers()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.teardown()
        finally:
            self._restore_signal_handlers()

    def setup(self) -> None:
        """Create the bridge, the namespaces, the veth pairs, the addresses and the qdiscs.

        Raises:
            ClusterUnavailable: not root, tools missing, or the kernel refused one of the pieces.
            ClusterError: another ``ip``/``tc`` command failed.
        """
        _need_tools()
        subnet = _free_subnet()
        self.addresses = [str(subnet.network_address + i + 1) for i in range(self.n)]
        self._up = True  # from here on teardown has something to remove
        self._step(
            "the kernel refused a bridge (CONFIG_BRIDGE)", "link", "add", self.bridge, "type", "bridge"
        )
        _ip("link", "set", self.bridge, "addrgenmode", "none", check=False)  # no IPv6 link-local chatter
        _ip("link", "set", self.bridge, "up")
        for i in range(self.n):
            ns, host, inner = self.namespaces[i], self.host_ifs[i], self.ifnames[i]
            self._step("the kernel refused a network namespace (CONFIG_NET_NS)", "netns", "add", ns)
            self._step(
                "the kernel refused a veth pair (CONFIG_VETH)",
                *("link", "add", host, "type", "veth", "peer", "name", inner, "netns", ns),
            )
            _ip("link", "set", host, "addrgenmode", "none", check=False)
            _ip("-n", ns, "link", "set", inner, "addrgenmode", "none", check=False)
            _ip("link", "set", host, "master", self.bridge, "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[i]}/{subnet.prefixlen}", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            rate = self.rates_mbit[i]
            if rate is not None:
                self._shape(host, None, rate)  # bridge → rank: what the rank receives
                self._shape(inner, ns, rate)  # rank → bridge: what the rank sends

    def _step(self, refused: str, *args: str) -> None:
        res = _ip(*args, check=False)
        if res.returncode != 0:
            err = res.stderr.strip()
            if any(s in err for s in ("not supported", "Unknown device type", "Operation not permitted")):
                raise ClusterUnavailable(f"{refused}: `ip {' '.join(args)}`: {err}")
            raise ClusterError(f"`ip {' '.join(args)}` failed: {err}")

    def _shape(self, ifname: str, ns: str | None, rate_mbit: float) -> None:
        burst = self.burst_bytes or tbf_burst_bytes(rate_mbit)
        argv = ["tc"] if ns is None else ["ip", "netns", "exec", ns, "tc"]
        argv += ["qdisc", "add", "dev", ifname, "root", "tbf", "rate", f"{rate_mbit * 1000:.0f}kbit"]
        argv += ["burst", str(burst), "latency", f"{self.latency_ms:g}ms"]
        res = _cmd(*argv, check=False)
        if res.returncode != 0:
            err = res.stderr.strip()
            if "Unknown qdisc" in err or "not supported" in err or "No such file" in err:
                raise ClusterUnavailable(f"the kernel refused the tbf qdisc (CONFIG_NET_SCH_TBF): {err}")
            raise ClusterError(f"`{' '.join(argv)}` failed: {err}")

    def teardown(self) -> None:
        """Remove everything this cluster created (idempotent); signals wait until it is done.

        Raises:
            ClusterError: something could not be removed (named in the message).
        """
        if not self._up:
            return
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            failures = _remove(self.prefix)
            self._up = False
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if failures:
            raise ClusterError(f"teardown of {self.prefix} left: " + "; ".join(failures))

    def _install_signal_handlers(self) -> None:
        # SIGTERM/SIGHUP end the process without unwinding: turn them into SystemExit so that
        # __exit__ tears down (Ctrl-C already raises KeyboardInterrupt).
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: Any) -> None:
            raise SystemExit(128 + signum)

        for sig in (signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                self._saved_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._saved_handlers.items():
            signal.signal(sig, old)
        self._saved_handlers.clear()

    # -- processes -----------------------------------------------------------------------------------
    def rank_env(self, rank: int, master_port: int) -> dict[str, str]:
        """The environment variables a rank gets: torchrun's, one rank per "node".

        ``PYTHONPATH`` starts with the directory this ``saddle_torch`` was imported from, so the ranks
        import the same copy.
        """
        path = [str(_PACKAGE_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        return {
            "PYTHONPATH": os.pathsep.join(dict.fromkeys(path)),
            "RANK": str(rank),
            "WORLD_SIZE": str(self.n),
            "LOCAL_RANK": "0",
            "LOCAL_WORLD_SIZE": "1",
            "GROUP_RANK": str(rank),
            "MASTER_ADDR": self.addresses[0],
            "MASTER_PORT": str(master_port),
            "GLOO_SOCKET_IFNAME": self.ifnames[rank],
            "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
        }

    def popen(self, rank: int, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen:
        """Start ``argv`` inside ``rank``'s namespace (no rank environment added; see :meth:`run`)."""
        if not self._up:
            raise ClusterError("the cluster is not set up: use it as `with Cluster(...) as c:`")
        return subprocess.Popen(["ip", "netns", "exec", self.namespaces[rank], *argv], **kwargs)

    def run(
        self,
        argv: Sequence[str] | Callable[[int], Sequence[str]],
        *,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        output: IO[str] | Callable[[int, str], None] | None = None,
        check: bool = True,
    ) -> list[int]:
        """Run one process per rank, each in its namespace, and wait for all of them.

        Args:
            argv: the command (the same for every rank), or a function of the rank giving it.
            timeout: seconds before every rank still running is killed (``None``: no limit).
            env: extra environment variables (on top of this process's and the rank's own).
            output: where each line of the ranks' stdout and stderr goes, as ``[rank i] line``: a
                text stream (default ``sys.stdout``) or a function ``(rank, line)``.
            check: raise :class:`RankFailure` when a rank fails (else return the codes).

        Returns:
            Every rank's exit code (negative: killed by that signal).

        Raises:
            RankFailure: a rank exited non-zero (``check=True``); the others were stopped first.
            ClusterTimeout: ranks still ran at the timeout; all were killed.
        """
        port = next(self._port)
        emit = _emitter(output)
        procs: list[subprocess.Popen] = []
        readers: list[threading.Thread] = []
        try:
            for rank in range(self.n):
                cmd = list(argv(rank) if callable(argv) else argv)
                rank_env = {**os.environ, **(env or {}), **self.rank_env(rank, port)}
                proc = self.popen(
                    rank,
                    cmd,
                    env=rank_env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    start_new_session=True,  # Ctrl-C goes to us; we stop the ranks ourselves
                )
                procs.append(proc)
                reader = threading.Thread(target=_pump, args=(proc, rank, emit), daemon=True)
                reader.start()
                readers.append(reader)
            status, which = _wait(procs, timeout)
        finally:
            for proc in procs:
                _stop(proc)
            for reader in readers:
                reader.join(timeout=5)
        codes = [p.returncode for p in procs]
        if status == "timeout":
            raise ClusterTimeout(
                f"ranks {which} still ran after {timeout:g} s and were killed; exit codes {codes}",
                codes=codes,
            )
        if status == "failed" and check:
            others = [r for r in range(self.n) if r != which and codes[r] != 0]
            raise RankFailure(
                f"rank {which} exited with code {codes[which]} (the first to fail); "
                + (f"ranks {others} were stopped or failed after it" if others else "the others had finished")
                + f"; exit codes {codes}",
                rank=which,
                codes=codes,
            )
        return codes

    def measure_rate(self, src: int, dst: int, *, seconds: float = 2.0, port: int = 5999) -> float:
        """TCP goodput from rank ``src`` to rank ``dst`` in Mbit/s (payload bytes over time).

        Payload only: at a tbf rate R the expected goodput with 1500-byte frames is about 0.956 R
        (1448 payload bytes per 1514 bytes on the wire, TCP timestamps on).
        """
        probe = str(Path(__file__).with_name("netprobe.py"))
        recv = self.popen(
            dst, [sys.executable, probe, "recv", str(port), str(seconds)], stdout=subprocess.PIPE, text=True
        )
        try:
            send = self.popen(
                src, [sys.executable, probe, "send", self.addresses[dst], str(port), str(seconds)]
            )
            send.wait(timeout=seconds + 30)
            out, _ = recv.communicate(timeout=30)
        finally:
            _stop(recv)
        total, elapsed = (float(v) for v in out.split())
        if elapsed <= 0:
            raise ClusterError(f"rate probe {src} → {dst} received nothing")
        return total * 8 / elapsed / 1e6


def _emitter(output: IO[str] | Callable[[int, str], None] | None) -> Callable[[int, str], None]:
    if callable(output) and not hasattr(output, "write"):
        return output  # type: ignore[return-value]
    stream = output if output is not None else sys.stdout
    lock = threading.Lock()

    def emit(rank: int, line: str) -> None:
        with lock:
            stream.write(f"[rank {rank}] {line}\n")  # type: ignore[union-attr]
            stream.flush()  # type: ignore[union-attr]

    return emit


def _pump(proc: subprocess.Popen, rank: int, emit: Callable[[int, str], None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        emit(rank, line.rstrip("\n"))


def _wait(procs: list[subprocess.Popen], timeout: float | None) -> tuple[str, Any]:
    """Poll the ranks until every one exits, one fails or the timeout passes.

    Returns:
        ``("ok", None)``, ``("failed", first failed rank)`` or ``("timeout", ranks still running)``.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        codes = [p.poll() for p in procs]
        bad = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            return "failed", bad[0]
        if all(c is not None for c in codes):
            return "ok", None
        if deadline is not None and time.monotonic() > deadline:
            return "timeout", [r for r, c in enumerate(codes) if c is None]
        time.sleep(0.05)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the process's session, SIGKILL it after a grace period; no-op once it has exited."""
    if proc.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, _KILL_GRACE), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            return


# --- command line -----------------------------------------------------------------------------------
def _rates(args: argparse.Namespace) -> list[float | None]:
    if args.rates:
        rates = [parse_rate(r) for r in args.rates.split(",")]
        if len(rates) != args.n:
            raise SystemExit(f"--rates has {len(rates)} entries for --n {args.n}")
        return rates
    return [parse_rate(args.rate)] * args.n


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m saddle_torch.testing.cluster --n 4 --rate 100mbit -- script.py args``."""
    parser = argparse.ArgumentParser(
        prog="python -m saddle_torch.testing.cluster",
        description="Run a script on N ranks, one network namespace each, links shaped with tc tbf.",
    )
    parser.add_argument("--n", type=int, default=2, help="number of ranks")
    parser.add_argument("--rate", default="none", help="every rank's link rate: 100mbit, 1gbit, none")
    parser.add_argument("--rates", default=None, help="per-rank rates, comma-separated (overrides --rate)")
    parser.add_argument("--timeout", type=float, default=None, help="kill every rank after this many s")
    parser.add_argument("--measure", action="store_true", help="print the goodput 0 → 1 (and 1 → 0) first")
    parser.add_argument("--cleanup-stale", action="store_true", help="remove leftovers of dead runs, exit")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py args (python is added)")
    args = parser.parse_args(argv)
    try:
        if args.cleanup_stale:
            print("removed:", " ".join(cleanup_stale()) or "nothing")
            return 0
        command = list(args.command)
        if command[:1] == ["--"]:
            command = command[1:]
        if not command and not args.measure:
            parser.error("give a command after --")
        if command and command[0].endswith(".py"):
            command.insert(0, sys.executable)
        with Cluster(args.n, rates_mbit=_rates(args)) as cluster:
            print(
                f"cluster {cluster.prefix}: {args.n} ranks, {cluster.addresses[0]}/24, rates (Mbit/s) "
                f"{cluster.rates_mbit}",
                flush=True,
            )
            if args.measure and args.n >= 2:
                for a, b in ((0, 1), (1, 0)):
                    print(f"goodput {a} → {b}: {cluster.measure_rate(a, b):.1f} Mbit/s", flush=True)
            if not command:
                return 0
            codes = cluster.run(command, timeout=args.timeout)
    except RankFailure as e:
        print(f"error: {e}", file=sys.stderr)
        return e.codes[e.rank] if e.codes[e.rank] > 0 else 1
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"exit codes: {codes}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
