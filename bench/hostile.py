"""
What hostile clients cost a real ``twistd -n rtcsignal`` (the numbers in
docs/operations.md, "Under attack").

- Slow readers: rooms of one sender and three clients that never read (their
  sockets' receive buffers 4 KiB, so the server's writes stall at once); the
  sender broadcasts 200 messages of 60 KB (its whole burst).  Printed: the
  server's RSS (``VmRSS``) before, at its peak and after, and the peak per
  slow reader; with the default ``--max-send-buffer`` and, to compare, with a
  limit too large to matter.
- A ping flood: one client sends WebSocket pings as fast as it can and never
  reads.  Printed: how long until the server closed it, the server's CPU time
  meanwhile (``utime + stime`` of /proc/<pid>/stat), its RSS, and the round
  trips of a call in another room before and during the flood.

    .venv/bin/python -m bench.hostile [--rooms 5] [--skip-unbounded]

Loopback only; every wait is bounded.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import orjson
from websockets.sync.client import ClientConnection, connect

from bench.soak import MiB, Server, rss_bytes

_UPGRADE = (
    "GET /socket/{room}/ HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def deaf_client(port: int, room: str) -> socket.socket:
    """A client that upgrades, and then never reads (4 KiB receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    sock.sendall(_UPGRADE.format(room=room).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # the answer's head only, not a byte more
    assert b" 101 " in head.split(b"\r\n", 1)[0], head
    return sock


def join(port: int, room: str) -> tuple[ClientConnection, str]:
    ws = connect(f"ws://127.0.0.1:{port}/socket/{room}/", max_size=None, max_queue=None)
    ws.__enter__()  # entered, so it can be used without `with`
    authenticated = orjson.loads(ws.recv(timeout=10))
    return ws, authenticated["data"]["peer_id"]


class Peak:
    """The server's RSS, sampled every 10 ms in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.most = rss_bytes(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.most = max(self.most, rss_bytes(self.pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.most


def slow_readers(rooms: int, extra: list[str]) -> dict[str, Any]:
    server = Server(Path("/tmp/rtcsignal-hostile.log"), extra)
    try:
        senders = []
        deaf = []
        for r in range(rooms):
            ws, _ = join(server.port, f"slow{r}")
            senders.append(ws)
            for _ in range(3):
                deaf.append(deaf_client(server.port, f"slow{r}"))
        time.sleep(0.5)
        before = server.rss()
        peak = Peak(server.process.pid)
        blob = "x" * 60_000
        started = time.monotonic()
        for ws in senders:
            for n in range(200):
                ws.send(orjson.dumps({"event": "big", "to": "all", "data": [n, blob]}).decode())
        lefts = 0
        deadline = time.monotonic() + 30
        for ws in senders:
            seen = 0
            while seen < 3 and time.monotonic() < deadline:
                try:
                    message = orjson.loads(ws.recv(timeout=1))
                except TimeoutError:
                    continue
                if message["event"] == "left":
                    seen += 1
            lefts += seen
        elapsed = time.monotonic() - started
        time.sleep(0.5)
        most = peak.stop()
        after = server.rss()
        for ws in senders:
            ws.close()
        for sock in deaf:
            sock.close()
        return {
            "slow readers": len(deaf),
            "closed": lefts,
            "seconds": round(elapsed, 2),
            "rss before MiB": round(before / MiB, 1),
            "rss peak MiB": round(most / MiB, 1),
            "rss after MiB": round(after / MiB, 1),
            "peak per slow reader MiB": round((most - before) / len(deaf) / MiB, 2),
        }
    finally:
        server.stop()


def round_trips(ws: ClientConnection, peer_id: str, seconds: float) -> list[float]:
    times = []
    ends = time.monotonic() + seconds
    while time.monotonic() < ends:
        sent = time.monotonic()
        ws.send(orjson.dumps({"event": "rtt", "to": [peer_id]}).decode())
        ws.recv(timeout=10)
        times.append(time.monotonic() - sent)
        time.sleep(0.02)
    return times


def ping_flood() -> dict[str, Any]:
    server = Server(Path("/tmp/rtcsignal-hostile.log"), [])
    try:
        watcher, _ = join(server.port, "flood")
        other, other_id = join(server.port, "other")
        quiet = round_trips(other, other_id, 1.0)
        flooder = deaf_client(server.port, "flood")
        orjson.loads(watcher.recv(timeout=10))  # joined
        pings = (bytes([0x89, 0x80]) + b"\0" * 4) * 20_000
        sent = [0]
        stop = threading.Event()

        def flood() -> None:
            while not stop.is_set():
                try:
                    flooder.sendall(pings)
                except OSError:
                    return
                sent[0] += 20_000

        before_cpu = cpu_seconds(server.process.pid)
        before_rss = server.rss()
        peak = Peak(server.process.pid)
        started = time.monotonic()
        thread = threading.Thread(target=flood, daemon=True)
        thread.start()
        loud: list[float] = []
        closed_after = None
        deadline = started + 30
        while closed_after is None and time.monotonic() < deadline:
            loud += round_trips(other, other_id, 0.5)
            try:
                while True:
                    message = orjson.loads(watcher.recv(timeout=0))
                    if message["event"] == "left":
                        closed_after = time.monotonic() - started
                        break
            except TimeoutError:
                pass
        cpu = cpu_seconds(server.process.pid) - before_cpu
        stop.set()
        flooder.close()
        thread.join(10)
        most = peak.stop()
        watcher.close()
        other.close()
        return {
            "closed after s": None if closed_after is None else round(closed_after, 2),
            "pings sent": sent[0],
            "server cpu s": round(cpu, 2),
            "rss before MiB": round(before_rss / MiB, 1),
            "rss peak MiB": round(most / MiB, 1),
            "other room rtt ms (quiet median)": round(statistics.median(quiet) * 1000, 2),
            "other room rtt ms (flood median)": round(statistics.median(loud) * 1000, 2),
            "other room rtt ms (flood max)": round(max(loud) * 1000, 2),
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=5)
    parser.add_argument("--skip-unbounded", action="store_true")
    args = parser.parse_args()
    print("slow readers, default --max-send-buffer:", slow_readers(args.rooms, []))
    if not args.skip_unbounded:
        unbounded = ["--max-send-buffer", str(1 << 40)]
        print("slow readers, no effective limit:", slow_readers(args.rooms, unbounded))
    print("WebSocket ping flood:", ping_flood())


if __name__ == "__main__":
    main()
