"""Measure TCP goodput between two network namespaces (run by path, without importing saddle_torch).

    python netprobe.py recv PORT SECONDS        # prints "<bytes> <seconds>" of the payload received
    python netprobe.py send HOST PORT SECONDS   # sends as fast as the socket allows for SECONDS

The receiver times from its first byte to the last, so connection set-up and slow start's first
round trip are not counted; the sender stops after ``SECONDS`` and closes the connection.
"""

from __future__ import annotations

import socket
import sys
import time

_CHUNK = 1 << 20


def receive(port: int, seconds: float) -> tuple[int, float]:
    """Accept one connection on ``port`` and count its bytes until it closes.

    Args:
        port: TCP port to listen on (all addresses of this namespace).
        seconds: how long to wait for the sender to connect (plus slack) before giving up.

    Returns:
        ``(payload bytes, seconds from the first to the last byte)``.
    """
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", port))
        server.listen(1)
        server.settimeout(seconds + 30)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(seconds + 30)
            total, first, last = 0, None, None
            while True:
                data = conn.recv(_CHUNK)
                if not data:
                    break
                last = time.perf_counter()
                if first is None:
                    first = last
                total += len(data)
    return total, (last - first) if first is not None and last is not None else 0.0


def send(host: str, port: int, seconds: float) -> None:
    """Connect to ``host:port`` (retrying while the receiver starts) and send for ``seconds``."""
    deadline = time.monotonic() + 10
    while True:
        try:
            sock = socket.create_connection((host, port), timeout=10)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    payload = b"\0" * _CHUNK
    with sock:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            sock.sendall(payload)


def main(argv: list[str]) -> int:
    """Command line entry point (see the module docstring)."""
    if len(argv) == 3 and argv[0] == "recv":
        total, elapsed = receive(int(argv[1]), float(argv[2]))
        print(f"{total} {elapsed:.6f}", flush=True)
        return 0
    if len(argv) == 4 and argv[0] == "send":
        send(argv[1], int(argv[2]), float(argv[3]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
