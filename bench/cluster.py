"""
Cluster mode figures, with a real redis-server and real ``twistd rtcsignal
--redis`` processes on loopback:

- latency (p50/p99, paced sends) and flood throughput for two peers on the
  room's owner node ("same node"), and for two peers on a node that does not
  own the room, so every message goes relay -> Redis -> owner -> Redis ->
  relay ("across nodes");
- throughput with ROOMS rooms of two peers each, served by 1 and then by 2
  processes (each room's peers on one node; rooms spread over the nodes).

It prints the CPU seconds used by the nodes, by Redis and by this generator,
so you can see what limits scaling on the machine it runs on.

    .venv/bin/python bench/cluster.py [--messages 3000] [--rooms 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import websockets

BIN = Path(sys.executable).parent
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


class Processes:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.redis_port = free_port()
        redis = shutil.which("redis-server") or "redis-server"
        argv = [redis, "--port", str(self.redis_port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(folder)]
        self.redis = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        self.nodes: list[tuple[subprocess.Popen[bytes], int]] = []

    def node(self) -> int:
        port = free_port()
        argv = [str(BIN / "twistd"), "--pidfile=", "-n", "rtcsignal"]
        argv += ["--endpoint", f"tcp:{port}:interface=127.0.0.1", "--max-peers", "100"]
        argv += ["--redis", f"redis://127.0.0.1:{self.redis_port}/0", "--resume-window", "0"]
        argv += ["--rate-limit", "1000000/1", "--rate-burst", "1000000"]
        log = (self.folder / f"node-{port}.log").open("wb")
        process = subprocess.Popen(argv, cwd=self.folder, stdout=log, stderr=log)
        self.nodes.append((process, port))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                time.sleep(0.05)
        raise SystemExit("a node did not start")

    def cpu(self) -> tuple[float, float]:
        nodes = sum(cpu_seconds(p.pid) for p, _ in self.nodes)
        return nodes, cpu_seconds(self.redis.pid)

    def stop(self) -> None:
        for process, _ in self.nodes:
            process.kill()
            process.wait()
        self.redis.kill()
        self.redis.wait()


async def join(port: int, room: str) -> tuple[object, str]:
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/socket/{room}/", max_size=None)
    hello = json.loads(await ws.recv())
    assert hello["event"] == "authenticated", hello
    return ws, hello["data"]["peer_id"]


async def drain_joined(ws: object, count: int) -> None:
    for _ in range(count):
        message = json.loads(await ws.recv())  # type: ignore[attr-defined]
        assert message["event"] == "joined", message


async def pair(port: int, room: str) -> tuple[object, object, str]:
    a, _ = await join(port, room)
    b, b_id = await join(port, room)
    await drain_joined(a, 1)
    return a, b, b_id


async def flood(sender: object, receiver: object, to: str, n: int) -> float:
    """Messages per second from sender to receiver, all sent at once."""
    frame = json.dumps({"event": "m", "to": [to], "data": "x" * 100})
    start = time.perf_counter()

    async def send() -> None:
        for _ in range(n):
            await sender.send(frame)  # type: ignore[attr-defined]

    async def receive() -> None:
        for _ in range(n):
            await receiver.recv()  # type: ignore[attr-defined]

    await asyncio.wait_for(asyncio.gather(send(), receive()), 120)
    return n / (time.perf_counter() - start)


async def latency(sender: object, receiver: object, to: str, n: int) -> tuple[float, float]:
    """p50 and p99 in ms of paced sends (one every 2 ms)."""
    delays: list[float] = []

    async def send() -> None:
        for _ in range(n):
            frame = json.dumps({"event": "m", "to": [to], "data": time.perf_counter()})
            await sender.send(frame)  # type: ignore[attr-defined]
            await asyncio.sleep(0.002)

    async def receive() -> None:
        for _ in range(n):
            message = json.loads(await receiver.recv())  # type: ignore[attr-defined]
            delays.append((time.perf_counter() - message["data"]) * 1000)

    await asyncio.gather(send(), receive())
    delays.sort()
    return statistics.median(delays), delays[int(len(delays) * 0.99) - 1]


async def paths(procs: Processes, n: int) -> None:
    owner = procs.node()
    other = procs.node()
    # Same node: the room is owned by the node its peers are on.
    a, b, b_id = await pair(owner, "same")
    p50, p99 = await latency(a, b, b_id, min(n, 1000))
    rate = await flood(a, b, b_id, n)
    print(f"same node      : {rate:8.0f} msg/s   latency p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    # Across nodes: a peer on `owner` takes the room first; the two measured
    # peers are on the other node, so each message crosses Redis twice.
    anchor, _ = await join(owner, "across")
    c, _ = await join(other, "across")
    d, d_id = await join(other, "across")
    await drain_joined(anchor, 2)
    await drain_joined(c, 1)
    p50, p99 = await latency(c, d, d_id, min(n, 1000))
    rate = await flood(c, d, d_id, n)
    print(f"across nodes   : {rate:8.0f} msg/s   latency p50 {p50:6.2f} ms  p99 {p99:6.2f} ms")
    for ws in (a, b, anchor, c, d):
        await ws.close()  # type: ignore[attr-defined]


async def scaling(procs: Processes, nodes: list[int], rooms: int, n: int) -> None:
    pairs = [await pair(nodes[i % len(nodes)], f"s{len(nodes)}-{i}") for i in range(rooms)]
    before_nodes, before_redis = procs.cpu()
    before_self = own_cpu()
    start = time.perf_counter()
    await asyncio.gather(*(flood(a, b, b_id, n) for a, b, b_id in pairs))
    elapsed = time.perf_counter() - start
    after_nodes, after_redis = procs.cpu()
    total = rooms * n / elapsed
    print(
        f"{len(nodes)} process(es)  : {total:8.0f} msg/s over {rooms} rooms; CPU s: "
        f"nodes {after_nodes - before_nodes:.1f}, redis {after_redis - before_redis:.1f}, "
        f"generator {own_cpu() - before_self:.1f} (wall {elapsed:.1f})"
    )
    for a, b, _ in pairs:
        await a.close()  # type: ignore[attr-defined]
        await b.close()  # type: ignore[attr-defined]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rooms", type=int, default=8)
    parser.add_argument("--logs", help="keep the nodes' logs in this folder")
    parser.add_argument("--only-scaling", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.logs or scratch
        os.makedirs(folder, exist_ok=True)
        procs = Processes(Path(folder))
        try:
            time.sleep(0.3)
            if not args.only_scaling:
                await paths(procs, args.messages)
            procs.stop()
            procs = Processes(Path(folder))
            one = [procs.node()]
            await scaling(procs, one, args.rooms, args.messages // 4)
            procs.stop()
            procs = Processes(Path(folder))
            two = [procs.node(), procs.node()]
            await scaling(procs, two, args.rooms, args.messages // 4)
        finally:
            procs.stop()


if __name__ == "__main__":
    asyncio.run(main())
