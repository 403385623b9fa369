"""
How fast does a room relay?  Side by side, in one run:

- twisted-signal: a real ``twistd -n rtcsignal``, one room of P peers, one
  peer broadcasting N messages of S bytes to ``"all"``;
- baseline: bench/baseline_server.py, a bare Autobahn relay doing the same
  forwarding with no JSON, rooms or callbacks.

For each it prints wall-clock throughput and the server's own CPU time per
relayed frame (read from /proc, so the clients' CPU does not count), and the
ratio of the two.  Rounds alternate between the servers; medians are shown.

    .venv/bin/python bench/relay.py [--peers 4] [--messages 20000] [--size 200] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import websockets

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")
ROUND_TIMEOUT = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


@dataclass
class Server:
    name: str
    argv: list[str]
    signaling: bool
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.port = free_port()
        argv = [a.replace("PORT", str(self.port)) for a in self.argv]
        self.process = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd="/tmp"
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise SystemExit(f"{self.name} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)


async def one_round(server: Server, peers: int, messages: int, size: int) -> tuple[float, float]:
    url = f"ws://127.0.0.1:{server.port}/socket/bench/"
    clients = []
    for _ in range(peers):
        ws = await websockets.connect(url, max_size=None, compression=None)
        if server.signaling:
            while json.loads(await ws.recv())["event"] != "authenticated":
                pass
        clients.append(ws)
    if server.signaling:  # let the joined messages settle
        await asyncio.sleep(0.3)
        for ws in clients:
            while True:
                try:
                    await asyncio.wait_for(ws.recv(), 0.05)
                except TimeoutError:
                    break
    sender, receivers = clients[0], clients[1:]
    frame = json.dumps({"event": "candidate", "to": "all", "data": "x" * size})

    async def receive(ws: websockets.ClientConnection) -> None:
        for _ in range(messages):
            await ws.recv()

    assert server.process is not None
    cpu_before = cpu_seconds(server.process.pid)
    started = time.perf_counter()
    readers = [asyncio.create_task(receive(ws)) for ws in receivers]
    for _ in range(messages):
        await sender.send(frame)
    try:
        await asyncio.wait_for(asyncio.gather(*readers), ROUND_TIMEOUT)
    except TimeoutError:
        raise SystemExit(
            f"{server.name}: not every frame arrived within {ROUND_TIMEOUT}s"
        ) from None
    wall = time.perf_counter() - started
    cpu = cpu_seconds(server.process.pid) - cpu_before
    for ws in clients:
        await ws.close()
    relayed = messages * len(receivers)
    return relayed / wall, cpu / relayed * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--peers", type=int, default=4)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    servers = [
        Server(
            "twisted-signal",
            [
                str(BIN / "twistd"),
                "--pidfile=",
                "-n",
                "rtcsignal",
                "--max-peers",
                "64",
                # A benchmark floods on purpose: lift the per-peer rate limit.
                "--rate-limit",
                "1000000/1",
                "--rate-burst",
                "1000000",
                "--endpoint",
                "tcp:PORT:interface=127.0.0.1",
            ],
            signaling=True,
        ),
        Server("baseline", [sys.executable, str(HERE / "baseline_server.py"), "PORT"], False),
    ]
    results: dict[str, list[tuple[float, float]]] = {s.name: [] for s in servers}
    for server in servers:
        server.start()
    try:
        for _ in range(args.rounds):
            for server in servers:
                results[server.name].append(
                    asyncio.run(one_round(server, args.peers, args.messages, args.size))
                )
    finally:
        for server in servers:
            server.stop()
    from autobahn.websocket import USES_NVX

    print(
        f"{args.peers} peers, {args.messages} broadcasts of {args.size} bytes, "
        f"{args.rounds} rounds, Autobahn NVX: {USES_NVX}"
    )
    medians = {}
    for name, rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        cpu = statistics.median(r[1] for r in rows)
        medians[name] = (rate, cpu)
        print(f"{name:>15}: {rate:10.0f} frames/s delivered, {cpu:6.1f} us server CPU per frame")
    ours, base = medians["twisted-signal"], medians["baseline"]
    print(
        f"{'ratio':>15}: {ours[0] / base[0]:10.2f} of baseline throughput, "
        f"{ours[1] / base[1]:6.2f}x baseline CPU per frame"
    )


if __name__ == "__main__":
    main()
