"""
Cluster mode figures, with a real redis-server and real ``twistd rtcsignal
--redis`` processes on loopback:

- latency (p50/p99, paced sends) and flood throughput for two peers on the
  room's owner node ("same node"), and for two peers on a node that does not
  own the room, so every message goes relay -> Redis -> owner -> Redis ->
  relay ("across nodes");
- node CPU per message on each of those two paths (the nodes' and Redis's
  CPU over the flood, divided by the messages);
- throughput with ROOMS rooms of two peers each (600-byte unicast
  ``candidate`` messages, 32 in flight per peer, as in bench/suite.py),
  served by 1 and then by 2 processes, driven by the Node load generator
  (bench/loadgen.mjs).  "2 cluster nodes" puts each room's peers on one node
  by its port; "2 nodes, reuseport" lets the kernel spread the connections
  over two nodes sharing one port, as ``make run-cluster`` runs them, first
  without and then with ``--handover``.  With one process the node is
  pinned to core 0 and the generator to core 1; with two, one node per core
  and the generator wherever the kernel puts it (the generator is always on
  the same machine).

It prints, for the measured interval, the CPU used by the nodes, by Redis and
by the generator, so you can see what limits scaling on the machine it runs
on, and appends the scaling figures to bench/results/cluster.jsonl.

    .venv/bin/python bench/cluster.py [--messages 3000] [--rooms 8] [--seconds 5]
        [--rounds 1] [--only-scaling]

With several rounds it prints the medians (a machine shared with other work
moves single figures by 2x).
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
import urllib.request
from pathlib import Path
from typing import Any

import websockets

BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
NODE = shutil.which("node") or "/usr/bin/node"
TICKS = os.sysconf("SC_CLK_TCK")


def pinned(core: int | None, argv: list[str]) -> list[str]:
    taskset = shutil.which("taskset")
    if core is None or taskset is None or (os.cpu_count() or 1) < 2:
        return argv
    return [taskset, "-c", str(core), *argv]


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

    def node(
        self,
        core: int | None = None,
        *,
        cluster: bool = True,
        shared: int | None = None,
        handover: bool = False,
    ) -> int:
        port = free_port()
        argv = pinned(core, [str(BIN / "twistd"), "--pidfile=", "-n", "rtcsignal"])
        argv += ["--endpoint", f"tcp:{port}:interface=127.0.0.1", "--max-peers", "100"]
        argv += ["--resume-window", "0"]
        if shared is not None:
            argv += ["--endpoint", f"reuseport:{shared}:interface=127.0.0.1"]
        if handover:
            # A folder of this setup's own: killed nodes leave their sockets.
            argv += ["--handover", str(self.folder / f"handover-{self.redis_port}")]
        if cluster:
            argv += ["--redis", f"redis://127.0.0.1:{self.redis_port}/0"]
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


async def measured_flood(
    procs: Processes, sender: object, receiver: object, to: str, n: int
) -> tuple[float, float, float]:
    """A flood's msg/s, and the nodes' and Redis's CPU per message in us."""
    nodes_before, redis_before = procs.cpu()
    rate = await flood(sender, receiver, to, n)
    nodes_after, redis_after = procs.cpu()
    return rate, (nodes_after - nodes_before) / n * 1e6, (redis_after - redis_before) / n * 1e6


async def paths(procs: Processes, n: int) -> dict[str, float]:
    owner = procs.node()
    other = procs.node()
    figures: dict[str, float] = {}
    # Same node: the room is owned by the node its peers are on.
    a, b, b_id = await pair(owner, "same")
    p50, p99 = await latency(a, b, b_id, min(n, 1000))
    rate, cpu, redis = await measured_flood(procs, a, b, b_id, n)
    figures |= {"same_msgs_per_s": rate, "same_cpu_us": cpu, "same_redis_us": redis}
    print(
        f"same node      : {rate:8.0f} msg/s   latency p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
        f"   CPU per message: nodes {cpu:5.1f} us, redis {redis:5.1f} us"
    )
    # Across nodes: a peer on `owner` takes the room first; the two measured
    # peers are on the other node, so each message crosses Redis twice.
    anchor, _ = await join(owner, "across")
    c, _ = await join(other, "across")
    d, d_id = await join(other, "across")
    await drain_joined(anchor, 2)
    await drain_joined(c, 1)
    p50, p99 = await latency(c, d, d_id, min(n, 1000))
    rate, cpu, redis = await measured_flood(procs, c, d, d_id, n)
    figures |= {"across_msgs_per_s": rate, "across_cpu_us": cpu, "across_redis_us": redis}
    print(
        f"across nodes   : {rate:8.0f} msg/s   latency p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
        f"   CPU per message: nodes {cpu:5.1f} us, redis {redis:5.1f} us"
    )
    for ws in (a, b, anchor, c, d):
        await ws.close()  # type: ignore[attr-defined]
    return figures


def peers_by_node(ports: list[int]) -> list[int]:
    """How many peers each node at `ports` holds (its /healthz)."""
    counts = []
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as answer:
            counts.append(int(json.load(answer)["peers"]))
    return counts


def scaling(
    procs: Processes,
    ports: list[int],
    rooms: int,
    seconds: float,
    label: str,
    *,
    nodes: list[int] | None = None,
) -> dict[str, Any]:
    """
    Deliveries per second of `rooms` pairs flooding over the nodes at
    `ports` (the rooms spread over them by number); `nodes`, the nodes' own
    ports, when that is not `ports`.
    """
    options = {
        "protocol": "signal",
        "ports": ports,
        "scenario": "throughput",
        "groups": rooms,
        "size": 600,
        "window": 32,
        "warmup": 1,
        "seconds": seconds,
    }
    nodes = nodes or ports
    core = 1 if len(nodes) == 1 else None
    argv = pinned(core, [NODE, str(HERE / "loadgen.mjs"), json.dumps(options)])
    marks: dict[str, tuple[float, float]] = {}
    gen = subprocess.Popen(argv, stdout=subprocess.PIPE, cwd=HERE, text=True)
    assert gen.stdout is not None
    result: dict[str, float] = {}
    split: list[int] = []
    for line in gen.stdout:
        message = json.loads(line)
        if "mark" in message:
            marks[message["mark"]] = procs.cpu()
            if message["mark"] == "start":
                split = peers_by_node(nodes)
                marks["start"] = procs.cpu()
        else:
            result = message
    if gen.wait(60) != 0 or not result:
        raise SystemExit("the load generator failed")
    (nodes_start, redis_start), (nodes_stop, redis_stop) = marks["start"], marks["stop"]
    figures = {
        "label": label,
        "processes": len(nodes),
        "peers_by_node": split,
        "rooms": rooms,
        "deliveries_per_s": result["deliveries_per_s"],
        "nodes_cpu": (nodes_stop - nodes_start) / seconds,
        "redis_cpu": (redis_stop - redis_start) / seconds,
        "loadgen_cpu": result["loadgen_cpu"],
        "node_cpu_us_per_delivery": (nodes_stop - nodes_start) / result["delivered"] * 1e6,
        # The server's CPU: its nodes' and Redis's.
        "server_cpu_us_per_delivery": (nodes_stop - nodes_start + redis_stop - redis_start)
        / result["delivered"]
        * 1e6,
    }
    print(
        f"{label:<22}: {figures['deliveries_per_s']:8.0f} msg/s over {rooms} rooms;"
        f" cores used: nodes {figures['nodes_cpu']:.2f}, redis {figures['redis_cpu']:.2f},"
        f" generator {figures['loadgen_cpu']:.2f};"
        f" node CPU per message {figures['node_cpu_us_per_delivery']:.1f} us;"
        f" peers by node {split}"
    )
    return figures


SETUPS: list[tuple[list[int], bool, str, str | None]] = [
    # One server without --redis first: what cluster mode itself costs.
    ([0], False, "1 server, no --redis", None),
    ([0], True, "1 cluster node", None),
    ([0, 1], True, "2 cluster nodes", None),
    ([0, 1], True, "2 nodes, reuseport", "reuseport"),
    ([0, 1], True, "2 nodes, hand-over", "handover"),
]


def run_setups(folder: Path, rounds: int, rooms: int, seconds: float) -> list[dict[str, Any]]:
    """The scaling figures of every setup, `rounds` times."""
    figures: list[dict[str, Any]] = []
    # Rounds take turns through the setups, so that a machine whose
    # load changes weighs on each of them alike.
    for _ in range(rounds):
        for cores, cluster, label, sharing in SETUPS:
            procs = Processes(folder)
            try:
                shared = free_port() if sharing else None
                handover = sharing == "handover"
                ports = [
                    procs.node(core, cluster=cluster, shared=shared, handover=handover)
                    for core in cores
                ]
                time.sleep(0.5)
                figure = scaling(
                    procs,
                    [shared] if shared is not None else ports,
                    rooms,
                    seconds,
                    label,
                    nodes=ports,
                )
                figures.append({"cluster": cluster} | figure)
            finally:
                procs.stop()
    return figures


def report(figures: list[dict[str, Any]], rounds: int) -> None:
    """Print the medians of `figures` by setup, and their ratios."""

    def median(label: str, key: str) -> float:
        return float(statistics.median(f[key] for f in figures if f["label"] == label))

    single, one, two, shared_port, handed = (label for _, _, label, _ in SETUPS)
    if rounds > 1:
        print(f"medians of {rounds} rounds:")
    for label in (single, one, two, shared_port, handed):
        print(
            f"{label:<22}: {median(label, 'deliveries_per_s'):8.0f} msg/s,"
            f" server CPU per message {median(label, 'server_cpu_us_per_delivery'):.1f} us"
        )
    rate = median(one, "deliveries_per_s") / median(single, "deliveries_per_s")
    print(f"1 node / no cluster: {rate:.2f}x")
    rate = median(two, "deliveries_per_s") / median(one, "deliveries_per_s")
    print(f"2 processes / 1: {rate:.2f}x")
    for base in (single, one):
        for other in (shared_port, handed):
            rate = median(other, "deliveries_per_s") / median(base, "deliveries_per_s")
            cpu = median(other, "server_cpu_us_per_delivery") / median(
                base, "server_cpu_us_per_delivery"
            )
            target = other == handed and base == one
            print(
                f"{other} / {base}: {rate:.2f}x the messages,"
                f" {cpu:.2f}x the server CPU per message"
                + (" (targets: at least 1.6x, at most 1.15x)" if target else "")
            )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rooms", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--logs", help="keep the nodes' logs in this folder")
    parser.add_argument("--only-scaling", action="store_true")
    parser.add_argument("--rounds", type=int, default=1, help="runs of the scaling setups")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.logs or scratch
        os.makedirs(folder, exist_ok=True)
        procs = Processes(Path(folder))
        try:
            time.sleep(0.3)
            paths_figures: dict[str, float] = {}
            if not args.only_scaling:
                paths_figures = await paths(procs, args.messages)
            procs.stop()
            figures = run_setups(Path(folder), args.rounds, args.rooms, args.seconds)
            report(figures, args.rounds)
            if paths_figures:
                ratio = paths_figures["across_cpu_us"] / paths_figures["same_cpu_us"]
                print(f"CPU per message across nodes / on one node: {ratio:.2f}x (nodes)")
            with (HERE / "results" / "cluster.jsonl").open("a") as results:
                at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                load = os.getloadavg()[0]
                for figure in figures:
                    results.write(json.dumps({"at": at, "load": load, **figure}))
                    results.write("\n")
                if paths_figures:
                    results.write(json.dumps({"at": at, "load": load, "paths": paths_figures}))
                    results.write("\n")
        finally:
            procs.stop()


if __name__ == "__main__":
    asyncio.run(main())
