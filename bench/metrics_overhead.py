"""
What metrics cost on the relay path, measured in process and interleaved.

The side-by-side suite (figure 5) compares two server processes, and on a
shared machine their runs differ by more than the few percent at stake.
Here one process relays unicast ``candidate`` messages through a real
`Room` in rounds that alternate between metrics off and on, so slow drifts
of the machine hit both alike; the figure is the median of the per-pair
differences, in microseconds of CPU per message, and that difference as a
share of what the whole server spends per relayed message (``--server-us``,
from figure 1 of the suite).

    python bench/metrics_overhead.py [--messages 20000] [--pairs 15] [--server-us 37.6]
"""

from __future__ import annotations

import argparse
import statistics
import time

from twisted.internet.task import Clock

from twisted_signal import AuthData, Message, PeerHandle, Room, Rooms
from twisted_signal.events import Events
from twisted_signal.metrics import Metrics

PAYLOAD = {"candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host " * 8}


def room_with_two_peers(events: Events) -> Room:
    room = Room("bench", None, clock=Clock())
    room.events = events
    room.startService()
    for peer_id in ("a", "b"):
        handle = PeerHandle(
            peer_id, AuthData(peer_id), lambda payload: None, lambda code: None, lambda ids: None
        )
        room.join(handle)
    return room


def cpu_us_per_message(room: Room, messages: int) -> float:
    message = Message("candidate", PAYLOAD, "a", ("b",))
    clock = time.perf_counter
    start = time.process_time()
    for _ in range(messages):
        room.submit(message, clock())
    return (time.process_time() - start) / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--server-us", type=float, default=37.6)
    args = parser.parse_args()
    metrics = Metrics(Rooms(None), clock=Clock(), process_metrics=False)
    off, on = room_with_two_peers(Events()), room_with_two_peers(metrics)
    cpu_us_per_message(off, args.messages)  # warm up both
    cpu_us_per_message(on, args.messages)
    deltas, offs, ons = [], [], []
    for n in range(args.pairs):
        first, second = (off, on) if n % 2 == 0 else (on, off)
        a, b = cpu_us_per_message(first, args.messages), cpu_us_per_message(second, args.messages)
        cost_off, cost_on = (a, b) if first is off else (b, a)
        offs.append(cost_off)
        ons.append(cost_on)
        deltas.append(cost_on - cost_off)
    delta = statistics.median(deltas)
    print(f"room path, metrics off: {statistics.median(offs):.2f} us/msg")
    print(f"room path, metrics on:  {statistics.median(ons):.2f} us/msg")
    print(f"metrics cost: {delta:.2f} us/msg (median of {args.pairs} interleaved pairs)")
    share = 100 * delta / args.server_us
    print(f"= {share:.1f}% of a server's {args.server_us} us per relayed message")


if __name__ == "__main__":
    main()
