"""
Soak: does a real ``twistd -n rtcsignal`` keep its memory flat and lose no
message under hours of churn?  (Minutes, by default.)

It starts the server on a free loopback port, then for ``--minutes`` runs
``--peers`` concurrent peers (asyncio `websockets` clients) over ``--rooms``
rooms made on demand.  Each peer, again and again: joins a random room,
chats to ``"all"`` (every message carries the sender's sequence number) for
a random lifetime, and goes: mostly with a clean close, sometimes by dropping
its TCP connection without a close frame (the server holds it for the resume
window, SPEC 5.4, then the others get ``left``), and sometimes by dropping and
resuming with its resume token (same peer id, queued messages delivered).

Memory: the server's RSS (``VmRSS`` of /proc/<pid>/status) is sampled every
``--sample`` seconds and printed as a table (with the peers connected, the
joins, messages sent and received so far, and how late the sample was: the
lag of the clients' own event loop, a sign that the machine is overloaded).
The baseline is the RSS at the end of a warm-up under full load (``--warmup``,
default half the run, 20 to 150 s), once the buffers, caches and allocator
arenas the workload needs exist.  After the churn stops, every peer has gone
and the resume window has passed, the RSS must not exceed the baseline by
more than ``max(--tolerance-percent of the baseline, --tolerance-mib)``
(10 %, 5 MiB).  Why a tolerance: CPython rarely gives memory back to the OS
(pymalloc frees an arena only when all of it is free), so RSS follows the
highest load seen so far rather than the live data, and a burst of
connections or of messages in flight after the baseline leaves the idle
server a few MiB above it.  A leak that grows with churn (per join, per room,
per message, per held peer) goes well beyond that over thousands of joins:
1 KiB per join is about 5 MiB over the default 5 minutes, and the growth per
1000 joins and the RSS slope after the warm-up are printed too.  Runs much
shorter than 5 minutes end their warm-up before the RSS has levelled off and
are smoke tests only.  After the churn ``/healthz`` must report no rooms and
no peers.

Messages: a receiver checks, per sender, that sequence numbers arrive with no
gap, no duplicate and in order.  That is sound under churn because a room
delivers in one total order: once a peer has received a message from a
sender, every later message of that sender reaches it as long as both are in
the room.  The first message from a sender is the baseline (the receiver may
have joined mid-stream), and a peer that resumes starts over (what the server
wrote to the dead connection is legitimately lost).  A sender's tail is
checked too: when ``left`` arrives for a sender, the last message received
from it must be the last it sent (a sender drops with a FIN after its last
write, so the server reads everything it sent), and at the end every peer
sends a final ``fin`` and waits until it has the ``fin`` (or the ``left``) of
every peer of its room.  Rate limits are not lifted; peers send well below
the default 50 per second.

Connections that cannot be opened within 10 s are reported; more than 2 % of
the attempts fails the run.  Exits 0 when memory stayed flat and nothing was
lost, 1 otherwise; 2 if the server could not start or died.  Loopback only;
every wait is bounded.  The server's log goes to $SOAK_LOG
(/tmp/rtcsignal-soak.log).

    .venv/bin/python bench/soak.py [--minutes 5] [--peers 200] [--rooms 20] [--rate 1]
        [--seed N] [--server-arg=--room-class=my.Room ...]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

BIN = Path(sys.executable).parent
RESUME_WINDOW = 15.0
"""The resume window: the default of SPEC 4, and given as ``--resume-window``."""
MAX_PEERS = 16
OPEN_TIMEOUT = 10.0
MiB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def server_help() -> str:
    """What ``twistd rtcsignal --help`` says (the options of this version)."""
    argv = [str(BIN / "twistd"), "rtcsignal", "--help"]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60).stdout


class Server:
    """A ``twistd -n rtcsignal`` on a free loopback port."""

    def __init__(self, log: Path, extra: list[str]) -> None:
        self.port = free_port()
        self.log = log
        argv = [str(BIN / "twistd"), "--pidfile=", "-n", "rtcsignal"]
        argv += ["--endpoint", f"tcp:{self.port}:interface=127.0.0.1"]
        argv += ["--max-peers", str(MAX_PEERS)]
        if "--resume-window=" in server_help():
            # Say it, so that the settling below matches the server.
            argv += ["--resume-window", f"{RESUME_WINDOW:g}"]
        argv += extra
        with log.open("wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd="/tmp")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                print(f"the server exited at start; see {log}")
                raise SystemExit(2)
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            time.sleep(0.05)
        self.stop()
        print(f"the server did not listen within 20 s; see {log}")
        raise SystemExit(2)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def rss(self) -> int:
        return rss_bytes(self.process.pid)

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/healthz"
        with urllib.request.urlopen(url, timeout=5) as response:
            result: dict[str, Any] = json.loads(response.read())
            return result

    def stop(self) -> None:
        if self.alive:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@dataclass
class Stats:
    sent: int = 0
    received: int = 0
    joins: int = 0
    refused: int = 0
    clean: int = 0
    dropped: int = 0
    resumed: int = 0
    resume_missed: int = 0
    lost: int = 0
    connect_failures: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)

    def warning(self, text: str) -> None:
        if len(self.warnings) < 10:
            self.warnings.append(text)


@dataclass
class Identity:
    """The sending side of one peer id (it outlives a connection that resumes)."""

    peer_id: str
    seq: int = -1
    """The last sequence number sent."""
    final: int | None = None
    """Set once the peer will send no more (before its connection ends)."""


@dataclass
class Connection:
    """One connection of a peer, and what it has received."""

    ws: ClientConnection
    peer_id: str
    room: str
    token: str | None
    known: set[str]
    """The other peers of the room, as this connection learnt them."""
    last: dict[str, int] = field(default_factory=dict)
    fins: set[str] = field(default_factory=set)
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class Soak:
    def __init__(self, args: argparse.Namespace, server: Server) -> None:
        self.args = args
        self.server = server
        self.stats = Stats()
        self.identities: dict[str, Identity] = {}
        self.stopping = asyncio.Event()
        self.fin_ready = asyncio.Event()
        self.connecting = 0
        self.connected = 0
        self.last_drop = 0.0

    def url(self, room: str, query: str = "") -> str:
        return f"ws://127.0.0.1:{self.server.port}/socket/{room}/" + (f"?{query}" if query else "")

    @contextlib.contextmanager
    def opening(self) -> Iterator[None]:
        self.connecting += 1
        try:
            yield
        finally:
            self.connecting -= 1

    async def open(self, room: str, token: str | None = None) -> Connection | None:
        """Join `room` (resuming with `token`): the connection, or None if refused."""
        with self.opening():
            if self.stopping.is_set() and token is None:
                return None
            try:
                ws = await connect(
                    self.url(room, f"resume={token}" if token else ""),
                    open_timeout=OPEN_TIMEOUT,
                    compression=None,
                    # The server pings; our own pings would only add noise.
                    ping_interval=None,
                )
            except (OSError, InvalidStatus, TimeoutError) as e:
                self.stats.connect_failures += 1
                self.stats.warning(f"could not connect to {room}: {e!r}")
                return None
            try:
                first = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT))
            except (ConnectionClosed, TimeoutError) as e:
                self.stats.problem(f"no answer from {room}: {e!r}")
                await ws.close()
                return None
            data = first.get("data") or {}
            if first.get("event") == "error" and data.get("details") == "room_is_full":
                self.stats.refused += 1
                await ws.close()
                return None
            if first.get("event") != "authenticated":
                self.stats.problem(f"expected authenticated, got {first}")
                await ws.close()
                return None
            self.stats.joins += 1
            return Connection(
                ws, data["peer_id"], room, data.get("resume_token"), set(data["peers"])
            )

    # Receiving.

    async def read(self, conn: Connection) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for frame in conn.ws:
                self.receive(conn, json.loads(frame))
                conn.changed.set()
        conn.changed.set()

    def receive(self, conn: Connection, message: dict[str, Any]) -> None:
        event, sender = message.get("event"), message.get("from")
        data: Any = message.get("data")
        if event in ("chat", "fin"):
            assert isinstance(sender, str) and isinstance(data, dict)
            self.stats.received += 1
            seq = data["seq"]
            last = conn.last.get(sender)
            if last is not None and seq != last + 1:
                if seq > last + 1:
                    self.stats.lost += seq - last - 1
                self.stats.problem(
                    f"{conn.peer_id[:8]} got {sender[:8]}'s #{seq} right after #{last}"
                    f" in {conn.room}"
                )
            conn.last[sender] = seq
            if event == "fin":
                conn.fins.add(sender)
        elif event == "joined":
            conn.known.add(data["peer_id"])
        elif event == "left":
            gone = data["peer_id"]
            conn.known.discard(gone)
            identity = self.identities.get(gone)
            last = conn.last.get(gone)
            if identity is not None and last is not None and identity.final != last:
                missing = (identity.final if identity.final is not None else identity.seq) - last
                self.stats.lost += max(missing, 0)
                self.stats.problem(
                    f"{conn.peer_id[:8]} got left({gone[:8]}) after #{last}, "
                    f"but it sent up to #{identity.final} in {conn.room}"
                )
        else:
            self.stats.problem(f"{conn.peer_id[:8]} got {message}")

    # Sending.

    async def chat(self, conn: Connection, identity: Identity, event: str = "chat") -> bool:
        identity.seq += 1
        frame = json.dumps({"event": event, "to": "all", "data": {"seq": identity.seq}})
        try:
            await conn.ws.send(frame)
        except ConnectionClosed:
            identity.seq -= 1
            return False
        self.stats.sent += 1
        return True

    async def chat_until(
        self, conn: Connection, identity: Identity, until: float, rng: random.Random
    ) -> bool:
        """Chat until `until` (monotonic) or the end of the churn; False if the connection died."""
        while not self.stopping.is_set():
            pause = min(rng.expovariate(self.args.rate), until - time.monotonic())
            if pause <= 0:
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), pause)
            if self.stopping.is_set() or time.monotonic() >= until:
                return True
            if not await self.chat(conn, identity):
                self.stats.problem(f"{conn.peer_id[:8]} was disconnected in {conn.room}")
                return False
        return True

    # A peer's lives.

    async def slot(self, n: int) -> None:
        rng = random.Random(self.args.seed * 100_003 + n)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), rng.uniform(0, 5))
        while not self.stopping.is_set():
            room = f"soak-{rng.randrange(self.args.rooms)}"
            conn = await self.open(room)
            if conn is not None:
                await self.life(conn, rng)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), rng.uniform(0.1, 1.5))

    async def life(self, conn: Connection, rng: random.Random) -> None:
        identity = Identity(conn.peer_id)
        self.identities[conn.peer_id] = identity
        until = time.monotonic() + rng.uniform(self.args.min_life, self.args.max_life)
        self.connected += 1
        try:
            current: Connection | None = conn
            while current is not None:
                reader = asyncio.create_task(self.read(current))
                alive = await self.chat_until(current, identity, until, rng)
                if alive and self.stopping.is_set():
                    await self.finish(current, identity)
                    await reader
                    return
                current = await self.depart(current, identity, rng, alive, reader)
                until = max(until, time.monotonic() + 1)
        finally:
            self.connected -= 1

    async def depart(
        self,
        conn: Connection,
        identity: Identity,
        rng: random.Random,
        alive: bool,
        reader: asyncio.Task[None],
    ) -> Connection | None:
        """
        End `conn`: a clean close, or a drop (a FIN after the last write, no
        close frame).  After some drops the peer resumes: the new connection.
        """
        how = rng.random()
        if not alive or how < 1 - 2 * self.args.drop_fraction:
            identity.final = identity.seq
            self.stats.clean += alive
            await conn.ws.close()
            await reader
            return None
        self.stats.dropped += 1
        self.last_drop = time.monotonic()
        resume = how >= 1 - self.args.drop_fraction and conn.token is not None
        if not resume:
            identity.final = identity.seq
        conn.ws.transport.close()
        await reader
        if not resume:
            return None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), rng.uniform(0.5, 3))
        again = None if self.stopping.is_set() else await self.open(conn.room, conn.token)
        if again is not None and again.peer_id != conn.peer_id:
            self.stats.resume_missed += 1
            self.stats.problem(f"{conn.peer_id[:8]} could not resume in {conn.room}")
            await again.ws.close()
            again = None
        if again is None:
            identity.final = identity.seq  # held until the window ends, then left
            return None
        self.stats.resumed += 1
        return again

    async def finish(self, conn: Connection, identity: Identity) -> None:
        """The end of the churn: send ``fin``, wait for everybody else's, close."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.fin_ready.wait(), OPEN_TIMEOUT * 2)
        sent = await self.chat(conn, identity, "fin")
        identity.final = identity.seq
        deadline = time.monotonic() + RESUME_WINDOW + 15
        while sent and not conn.known <= conn.fins and time.monotonic() < deadline:
            conn.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.changed.wait(), deadline - time.monotonic())
            if conn.ws.state.name == "CLOSED":
                break
        missing = conn.known - conn.fins
        if missing:
            self.stats.lost += len(missing)
            self.stats.problem(
                f"{conn.peer_id[:8]} never got the fin of {sorted(m[:8] for m in missing)}"
                f" in {conn.room}"
            )
        await conn.ws.close()


async def run(
    args: argparse.Namespace, server: Server
) -> tuple[Soak, list[tuple[float, str, int, int]]]:
    soak = Soak(args, server)
    duration = args.minutes * 60
    warmup = args.warmup if args.warmup is not None else min(150.0, max(20.0, duration / 2))
    samples: list[tuple[float, str, int, int]] = []
    started = time.monotonic()
    slots = [asyncio.create_task(soak.slot(n)) for n in range(args.peers)]

    def sample(phase: str, due: float | None = None) -> None:
        if not server.alive:
            print(f"the server died; see {server.log}")
            raise SystemExit(2)
        now = time.monotonic()
        row = (now - started, phase, soak.connected, server.rss())
        samples.append(row)
        lag = 0.0 if due is None else max(0.0, now - due)
        print(
            f"{row[0]:7.0f} {phase:>8} {row[2]:6d} {row[3] / MiB:9.1f}"
            f" {soak.stats.joins:7d} {soak.stats.sent:9d} {soak.stats.received:10d}"
            f" {lag * 1000:8.0f}",
            flush=True,
        )

    print(
        f"{'t (s)':>7} {'phase':>8} {'peers':>6} {'RSS MiB':>9} {'joins':>7}"
        f" {'sent':>9} {'received':>10} {'lag ms':>8}"
    )
    sample("start")
    next_sample = started + args.sample
    warmed = False
    while time.monotonic() - started < duration:
        await asyncio.sleep(max(0.0, min(next_sample, started + duration) - time.monotonic()))
        now = time.monotonic()
        if now >= next_sample:
            phase = "churn" if warmed else "warm-up"
            if not warmed and now - started >= warmup:
                warmed = True
                phase = "baseline"
            sample(phase, next_sample)
            next_sample = max(next_sample + args.sample, now)
    if not warmed:
        sample("baseline")
    soak.stopping.set()
    # No fin until every join under way has finished: a peer joining later
    # would wait for the fin of a peer that has already said it.
    deadline = time.monotonic() + OPEN_TIMEOUT * 2
    while soak.connecting and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    soak.fin_ready.set()
    done, pending = await asyncio.wait(slots, timeout=RESUME_WINDOW + 60)
    for task in pending:
        task.cancel()
        soak.stats.problem("a peer did not finish in time")
    for task in done:
        if task.exception() is not None:
            soak.stats.problem(f"a peer failed: {task.exception()!r}")
    sample("stopped")
    # Let every held peer's resume window pass, then cleanup settle.
    settle_until = max(time.monotonic() + args.settle, soak.last_drop + RESUME_WINDOW + 2)
    while time.monotonic() < settle_until:
        await asyncio.sleep(min(args.sample, settle_until - time.monotonic()))
        sample("settle")
    for _ in range(3):
        await asyncio.sleep(1)
        sample("after")
    return soak, samples


def main() -> None:
    parser = argparse.ArgumentParser(
        description="Churn peers against a real `twistd -n rtcsignal`; fail if its memory "
        "grows or a message is lost.",
        epilog="How it works and how to read the table: the docstring of bench/soak.py.",
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="how long the churn lasts")
    parser.add_argument("--peers", type=int, default=200, help="concurrent peers")
    parser.add_argument("--rooms", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1.0, help="messages per second per peer")
    parser.add_argument("--min-life", type=float, default=3.0, help="seconds in a room, at least")
    parser.add_argument("--max-life", type=float, default=20.0, help="seconds in a room, at most")
    parser.add_argument(
        "--drop-fraction",
        type=float,
        default=0.1,
        help="of departures that drop the connection, and again that drop and resume",
    )
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds (default: half the run, 20 to 150)"
    )
    parser.add_argument("--settle", type=float, default=5.0, help="seconds after the churn")
    parser.add_argument(
        "--tolerance-percent", type=float, default=10.0, help="allowed RSS growth, of the baseline"
    )
    parser.add_argument(
        "--tolerance-mib", type=float, default=5.0, help="allowed RSS growth, at least"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="one more argument for `twistd rtcsignal` (repeatable)",
    )
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.randrange(2**32)
    if not 0 <= args.drop_fraction <= 0.5 or args.peers < 1 or args.rooms < 1 or args.rate <= 0:
        parser.error("bad --drop-fraction, --peers, --rooms or --rate")
    log = Path(os.environ.get("SOAK_LOG", "/tmp/rtcsignal-soak.log"))
    print(
        f"soak: {args.minutes:g} min, {args.peers} peers over {args.rooms} rooms, "
        f"{args.rate:g} msg/s each, seed {args.seed}; server log in {log}",
        flush=True,
    )
    server = Server(log, args.server_arg)
    try:
        soak, samples = asyncio.run(run(args, server))
        health = server.health()
    finally:
        server.stop()
    failures = report(args, soak, samples, health)
    if failures:
        print("FAIL: " + "; ".join(failures))
        raise SystemExit(1)
    print("OK: memory flat, nothing lost")


def report(
    args: argparse.Namespace,
    soak: Soak,
    samples: list[tuple[float, str, int, int]],
    health: dict[str, Any],
) -> list[str]:
    stats = soak.stats
    baseline = next(rss for _, phase, _, rss in samples if phase == "baseline")
    baseline_at = next(t for t, phase, _, _ in samples if phase == "baseline")
    final = statistics.median(rss for _, phase, _, rss in samples if phase == "after")
    peak = max(rss for *_, rss in samples)
    allowed = max(baseline * args.tolerance_percent / 100, args.tolerance_mib * MiB)
    growth = final - baseline
    churn = [(t, rss) for t, phase, _, rss in samples if phase in ("baseline", "churn")]
    slope = 0.0
    if len(churn) >= 3:
        slope = statistics.linear_regression([t for t, _ in churn], [r for _, r in churn]).slope
    print()
    print(
        f"joins {stats.joins} (refused {stats.refused}), clean leaves {stats.clean}, "
        f"drops {stats.dropped} (resumed {stats.resumed}, missed {stats.resume_missed}); "
        f"messages sent {stats.sent}, deliveries received {stats.received}, lost {stats.lost}"
    )
    print(
        f"RSS: start {samples[0][3] / MiB:.1f} MiB, baseline {baseline / MiB:.1f} MiB "
        f"(at {baseline_at:.0f} s), peak {peak / MiB:.1f} MiB, after {final / MiB:.1f} MiB; "
        f"growth {growth / MiB:+.1f} MiB (allowed {allowed / MiB:.1f}), "
        f"{growth / MiB / max(stats.joins, 1) * 1000:+.2f} MiB per 1000 joins, "
        f"slope under churn {slope * 60 / MiB:+.2f} MiB/min"
    )
    print(f"/healthz after the churn: {health}")
    attempts = stats.joins + stats.refused + stats.connect_failures
    print(f"connections that could not be opened: {stats.connect_failures} of {attempts}")
    for warning in stats.warnings:
        print("  " + warning)
    failures = []
    if stats.connect_failures > max(5, attempts * 0.02):
        failures.append(f"{stats.connect_failures} of {attempts} connections failed to open")
    if growth > allowed:
        failures.append(f"RSS grew by {growth / MiB:.1f} MiB (allowed {allowed / MiB:.1f})")
    if stats.lost or stats.problems:
        failures.append(f"{stats.lost} messages lost, {len(stats.problems)} problems")
        for problem in stats.problems:
            print("  " + problem)
    if health.get("rooms") or health.get("peers"):
        failures.append(f"state left behind: {health}")
    if stats.joins == 0 or stats.received == 0:
        failures.append("nothing happened")
    return failures


if __name__ == "__main__":
    main()
