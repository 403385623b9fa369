"""
What a join costs, in process and deterministically: N real `Peer`s join
rooms of two over in-memory transports (as tests/test_hot_path.py drives
them), with logging at info to a text observer as under ``twistd``.

Reports the CPU time per join (and, with ``--profile``, cProfile's top
entries), the bytes each idle connection keeps (tracemalloc, with the top
allocation sites), and what one `Peer` retains, attribute by attribute.

    .venv/bin/python bench/joins_profile.py [--peers 2000] [--profile] [--top 20]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import os
import pstats
import sys
import time
import tracemalloc
import types
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogBeginner, textFileLogObserver

from twisted_signal import Peer, Room
from twisted_signal.peer import PeerFactory
from twisted_signal.rooms import Rooms
from twisted_signal.service import SignalingSite
from twisted_signal.settings import Settings
from twisted_signal.web import SignalingResource

if TYPE_CHECKING:
    from twisted.internet.base import ReactorBase
    from twisted.internet.interfaces import IReactorTime


def upgrade(room: str) -> bytes:
    return (
        f"GET /socket/{room}/ HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\nOrigin: http://localhost\r\n"
        "User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0\r\n"
        "\r\n"
    ).encode()


class _Transport(StringTransport):
    protocol: Any = None
    """As a TCP transport has (the upgrade gives it to the `Peer`)."""


class Bench:
    def __init__(self, peers: int, site: bool = False) -> None:
        # The real reactor's clock (it is never run): its timers are a heap,
        # where task.Clock sorts a list on every callLater.
        from twisted.internet import reactor

        self.clock = cast("IReactorTime", reactor)
        rooms = Rooms(lambda name: Room(name, clock=self.clock), clock=self.clock)
        rooms.startService()
        settings = Settings(rate=1e9)
        self.factory = PeerFactory(rooms, settings=settings, clock=self.clock)
        self.site: SignalingSite | None = None
        if site:
            resource = SignalingResource(rooms, settings=settings, clock=self.clock)
            self.factory = resource.factory
            self.site = SignalingSite(resource, handshake_timeout=10.0, clock=self.clock)
        self.requests = [upgrade(f"bench-{n // 2}") for n in range(peers)]
        self.transports = [_Transport() for _ in range(peers)]
        self.address = IPv4Address("TCP", "127.0.0.1", 40000)
        self.peers: list[Peer] = []

    def join_all(self) -> None:
        factory, address = self.site or self.factory, self.address
        for request, transport in zip(self.requests, self.transports, strict=True):
            protocol = factory.buildProtocol(address)
            assert protocol is not None
            transport.protocol = protocol
            protocol.makeConnection(transport)
            protocol.dataReceived(request)
            # Through the site, the upgrade hands the transport to the Peer.
            peer = getattr(transport, "protocol", protocol)
            assert isinstance(peer, Peer)
            self.peers.append(peer)
        for transport in self.transports:
            transport.clear()
        assert all(peer.room is not None for peer in self.peers)


def _shared(obj: Any) -> bool:
    return isinstance(obj, (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType))


def retained(peer: Peer, baseline: set[int], others: set[int]) -> dict[str, int]:
    """
    Bytes reachable from each of `peer`'s attributes and made for it: not
    there before the joins, and not another peer (or its transport).
    """
    seen: set[int] = {id(peer)}
    sizes: dict[str, int] = {}
    attributes = dict(vars(peer))
    for name in ("transport", "factory"):
        attributes.pop(name, None)
    for name, value in sorted(attributes.items()):
        total = 0
        stack = [value]
        while stack:
            obj = stack.pop()
            key = id(obj)
            if key in seen or key in baseline or key in others or _shared(obj):
                continue
            seen.add(key)
            total += sys.getsizeof(obj)
            stack.extend(gc.get_referents(obj))
        sizes[name] = total
    return sizes


def count_calls(bench: Bench, show: bool, top: int) -> None:
    """
    Function calls per join (cProfile's count, Python and C): unlike CPU
    time on a shared machine, the same from run to run.  With `show`,
    cProfile's top entries too.
    """
    profiler = cProfile.Profile()
    profiler.runcall(bench.join_all)
    stats = pstats.Stats(profiler)
    calls = cast("int", stats.total_calls)  # type: ignore[attr-defined]
    print(f"function calls per join: {calls / len(bench.requests):.0f}")
    if show:
        stats.sort_stats("tottime").print_stats(top)
        stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=2000)
    parser.add_argument("--profile", action="store_true", help="cProfile the joins")
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument(
        "--site", action="store_true", help="connect through the HTTP site, as twistd does"
    )
    args = parser.parse_args()
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(open(os.devnull, "w"))],  # noqa: SIM115
        discardBuffer=True,
        redirectStandardIO=False,
    )

    # CPU: a fresh server per round, the median of three rounds.
    times = []
    for _ in range(3):
        bench = Bench(args.peers, args.site)
        gc.collect()
        started = time.process_time()
        bench.join_all()
        times.append(time.process_time() - started)
    times.sort()
    print(f"CPU per join: {times[1] / args.peers * 1e6:.1f} us (median of 3 x {args.peers})")

    count_calls(Bench(args.peers, args.site), args.profile, args.top)

    # Memory: what the joins allocated and still hold, per connection.
    bench = Bench(args.peers, args.site)
    gc.collect()
    baseline = {id(obj) for obj in gc.get_objects()}
    baseline.update(id(t) for t in bench.transports)
    tracemalloc.start(8)
    before = tracemalloc.take_snapshot()
    bench.join_all()
    # A running reactor drops the timers cancelled meanwhile (the handshake
    # timeouts); this one never runs, so let it once.
    cast("ReactorBase", bench.clock).runUntilCurrent()
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    filters = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(filters).compare_to(before.filter_traces(filters), "lineno")
    total = sum(stat.size_diff for stat in diff)
    print(f"bytes per idle connection (tracemalloc): {total / args.peers:.0f}")
    print("top allocation sites (bytes per connection):")
    for stat in diff[: args.top]:
        frame = stat.traceback[0]
        where = f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
        print(f"  {stat.size_diff / args.peers:8.0f}  {where}")

    others = {id(p) for p in bench.peers[1:]} | {id(bench.clock), id(bench.factory)}
    sizes = retained(bench.peers[0], baseline, others)
    peer = bench.peers[0]
    print(
        f"one Peer: {sys.getsizeof(peer)} B object, {len(sizes)} attributes in a"
        f" {sys.getsizeof(vars(peer))} B __dict__,"
    )
    print(f"  {sum(sizes.values())} B reachable and made for it; the largest:")
    for name, size in sorted(sizes.items(), key=lambda item: -item[1])[: args.top]:
        print(f"  {size:6d}  {name}")
    calls = [c for c in bench.clock.getDelayedCalls() if c.active()]
    print(f"delayed calls: {len(calls)} for {args.peers} peers")


if __name__ == "__main__":
    main()
