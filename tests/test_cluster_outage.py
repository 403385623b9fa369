"""
Redis outages as one cluster node sees them, on a `task.Clock` with an
in-memory stand-in for Redis (SPEC 5.7): an outage below half the lease
closes nobody and loses nothing, a longer one turns ``/healthz`` 503 until
Redis answers again, and a stream entry read twice is applied once.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal.cluster import scripts
from twisted_signal.cluster.backend import RedisBus, RedisLeases
from twisted_signal.cluster.node import ClusterRooms
from twisted_signal.cluster.relay import RoomRelay
from twisted_signal.cluster.resp import RedisUnavailable
from twisted_signal.context import AuthData
from twisted_signal.message import Message
from twisted_signal.room import CLOSE_GOING_AWAY, PeerHandle, Room

pytestmark = pytest.mark.memory

LEASE = 3.0


class FakeRedis:
    """
    Answers at once, as one Redis with one room would; `paused` (SIGSTOP)
    it holds every command and answers them in order when resumed; `down`
    it fails them at once.  Commands time out as `RedisClient`'s do: a
    reply that comes after its command timed out is dropped.
    """

    def __init__(self, clock: Clock, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout
        self.paused = False
        self.down = False
        self.pending: list[tuple[Deferred[Any], tuple[Any, ...]]] = []
        self.commands: list[tuple[Any, ...]] = []
        self.owned = False
        self.streams: dict[str, list[list[bytes]]] = {}
        """What each stream took, as a reader gets it (field, value, ...)."""
        self.lost = False
        """Renewals fail: the owner key lapsed."""

    def execute(self, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        self.commands.append(args)
        if self.down:
            return fail(RedisUnavailable("Connection refused"))
        d: Deferred[Any] = Deferred()
        if self.paused:
            self.pending.append((d, args))
        else:
            d.callback(self.reply(args))
        return d.addTimeout(timeout if timeout is not None else self.timeout, self.clock)

    def drop(self) -> None:
        pass

    def close(self) -> None:
        pass

    def resume(self) -> None:
        self.paused = False
        pending, self.pending = self.pending, []
        for d, args in pending:
            d.callback(self.reply(args))  # ignored when it timed out

    def reply(self, args: tuple[Any, ...]) -> Any:
        command = args[1] if args[0] == "EVALSHA" else args[0]
        if command == scripts.ACQUIRE.sha:
            acquired, self.owned = not self.owned, True
            return [7, b"0-0"] if acquired else [0, b"owner|7"]
        if command == "XADD":
            flat = [a if isinstance(a, bytes) else str(a).encode() for a in args[6:]]
            self.streams.setdefault(args[1], []).append(flat)
        answers: dict[str, Any] = {
            "INFO": b"# Server\r\nrun_id:one\r\n",
            "HGETALL": [],
            "XADD": b"1-1",
            scripts.DEAD_MEMBERS.sha: [],
            scripts.RENEW.sha: 0 if self.lost else 1,
        }
        return answers.get(command, 1)


class Reader:
    """The stream reader's connection: an XREAD that never returns."""

    def execute(self, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        return Deferred()

    def drop(self) -> None:
        pass

    def close(self) -> None:
        pass


class Local:
    """A peer connected to the node: what it was sent, and its close."""

    def __init__(self, peer_id: str) -> None:
        self.peer_id = peer_id
        self.got: list[dict[str, Any]] = []
        self.closed: int | None = None
        self.relay: RoomRelay | None = None
        self.handle = PeerHandle(
            peer_id, AuthData(peer_id), self.send, self.close, lambda peers: None
        )

    def send(self, payload: bytes) -> None:
        self.got.append(json.loads(payload))

    def close(self, code: int) -> None:
        self.closed = code
        if self.relay is not None:
            self.relay.leave(self.peer_id)  # as the connection does once it ends

    def numbers(self) -> list[int]:
        return [m["data"] for m in self.got if m["event"] == "n"]


class _OwnerCase(SynchronousTestCase):
    """A node that owns room ``r``, with its peers ``x`` and ``y``."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(100)
        self.redis = FakeRedis(self.clock, timeout=LEASE / 3)
        self.rooms = ClusterRooms(
            lambda name: Room(name, clock=self.clock),
            bus=RedisBus(self.redis, Reader()),
            leases=RedisLeases(self.redis),
            lease=LEASE,
            reactor=self.clock,
            node_id="owner",
        )
        self.rooms.startService()
        self.addCleanup(self.rooms.node._tick.stop)
        relay = self.rooms.node.access("r")
        assert relay is not None
        self.relay: RoomRelay = relay
        self.x, self.y = Local("x"), Local("y")
        for peer in (self.x, self.y):
            peer.relay = self.relay
            self.relay.join(peer.handle)
        self.clock.advance(0)
        assert self.relay.room is not None and set(self.relay.room.peers) == {"x", "y"}
        self.sent = 0

    def send_for(self, seconds: float, every: float = 0.05) -> None:
        """x sends n = 0, 1, 2, ... to y every `every` seconds."""
        for _ in range(round(seconds / every)):
            self.relay.submit(Message("n", self.sent, "x", ["y"]))
            self.sent += 1
            self.clock.advance(every)

    def wait(self, seconds: float, step: float = 0.05) -> None:
        """Let `seconds` pass, a step at a time, as a reactor would."""
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def just_before_tick(self) -> None:
        """Let x send until a hundredth of a second before the next tick."""
        due = self.rooms.node._tick.call.getTime()  # type: ignore[union-attr]
        self.send_for(due - self.clock.seconds() - 0.01, every=0.01)

    def pause(self, seconds: float) -> None:
        """Redis paused for `seconds` while x sends."""
        self.redis.paused = True
        self.send_for(seconds, every=0.01)
        self.redis.resume()
        self.clock.advance(0)


class OutageTests(_OwnerCase):
    def test_an_outage_below_half_the_lease_closes_nobody_and_loses_nothing(self) -> None:
        # Paused just before a tick (when the last renewal is oldest), and
        # at other points between ticks.
        for gap in (0.0, 0.3, 0.6):
            self.just_before_tick()
            self.send_for(gap)
            self.pause(LEASE / 2 - 0.02)
            self.assertIsNone(self.rooms.unavailable)
        self.send_for(LEASE)
        self.assertEqual(self.y.numbers(), list(range(self.sent)))
        self.assertIsNone(self.x.closed)
        self.assertIsNone(self.y.closed)
        self.assertIsNotNone(self.relay.room)

    def test_deliveries_wait_while_a_renewal_is_overdue(self) -> None:
        # Paused just before a tick: the last renewal went out a tick ago.
        self.just_before_tick()
        self.redis.paused = True
        self.send_for(LEASE / 2 - 0.01, every=0.01)
        # The lease ran past its safe share meanwhile: what came since waits.
        delivered = len(self.y.numbers())
        self.assertLess(delivered, self.sent)
        self.redis.resume()
        self.clock.advance(0)
        self.assertEqual(self.y.numbers(), list(range(self.sent)))

    def test_a_longer_outage_makes_healthz_503_until_redis_answers(self) -> None:
        self.send_for(0.5)
        self.redis.paused = True
        self.send_for(LEASE / 2 - 0.05)
        self.assertIsNone(self.rooms.unavailable)
        # Half a lease after the first unanswered heartbeat (at most a tick
        # after Redis stopped answering), the node says it is unavailable.
        self.send_for(LEASE / 3 + 0.1)
        self.assertEqual(self.rooms.unavailable, "redis_unreachable")
        # Beyond the node's lease its peers are let go (their clients
        # reconnect); the node stays unavailable until Redis answers.
        self.send_for(LEASE)
        self.assertEqual((self.x.closed, self.y.closed), (CLOSE_GOING_AWAY, CLOSE_GOING_AWAY))
        self.assertEqual(self.rooms.unavailable, "redis_unreachable")
        # The heartbeat waiting in line is answered: the node serves again.
        self.redis.resume()
        self.clock.advance(0)
        self.assertIsNone(self.rooms.unavailable)

    def test_redis_down_makes_healthz_503_too(self) -> None:
        self.redis.down = True
        self.wait(LEASE / 2 + LEASE / 3 + 0.1)
        self.assertEqual(self.rooms.unavailable, "redis_unreachable")
        self.redis.down = False
        self.wait(LEASE / 3)
        self.assertIsNone(self.rooms.unavailable)

    def test_a_lost_lease_drops_what_was_held(self) -> None:
        self.just_before_tick()
        self.redis.paused = True
        self.send_for(LEASE / 2 - 0.01, every=0.01)
        before = len(self.y.numbers())
        self.redis.lost = True  # the room's key expired meanwhile
        self.redis.resume()
        self.clock.advance(0)
        self.assertEqual(len(self.y.numbers()), before)
        self.assertEqual(self.y.closed, CLOSE_GOING_AWAY)
        self.assertIsNone(self.relay.room)


class AppliedOnceTests(_OwnerCase):
    """
    The owner reads a room's stream anew after a Redis restart (from its
    start, to miss nothing written before it took the room again); what it
    had read already is not applied twice.
    """

    def test_an_entry_read_twice_is_applied_once(self) -> None:
        relay = self.relay
        join = {"src": "b", "seq": "1", "op": "join", "peer": "z", "node": "b"}
        relay.from_stream(dict(join), b"")
        relay.from_stream(dict(join), b"")
        self.clock.advance(0)
        self.assertIn("z", relay.peers)
        entry = {
            "src": "b",
            "seq": "2",
            "op": "submit",
            "peer": "z",
            "message": json.dumps({"event": "n", "to": ["y"], "data": 1}),
        }
        for fields in (entry, entry, {**entry, "seq": "1"}, {**entry, "seq": "3"}):
            relay.from_stream(dict(fields), fields.get("message", "").encode())
        self.clock.advance(0)
        self.assertEqual(self.y.numbers(), [1, 1])  # seq 2 and 3, once each
        # Each node numbers its own entries.
        relay.from_stream({"src": "c", "seq": "2", "op": "join", "peer": "w", "node": "c"}, b"")
        self.clock.advance(0)
        self.assertIn("w", relay.peers)


class WritesTests(_OwnerCase):
    """
    Entries that Redis does not take are written again once it answers, in
    order, and a copy that reaches a stream twice is read once.
    """

    def write(self, n: int) -> None:
        """Write a delivery of n to y through this node's own inbox."""
        data = json.dumps({"event": "n", "data": n})
        self.rooms.node.xadd(self.inbox, room="r", epoch=7, peer="y", kind="send", data=data)

    def read_inbox(self) -> None:
        """Read this node's inbox as its reader does."""
        for i, flat in enumerate(self.redis.streams.pop(self.inbox, [])):
            self.rooms.node._entry(self.inbox, f"1-{i}", flat, self.inbox, [])

    def setUp(self) -> None:
        super().setUp()
        self.inbox = self.rooms.node.key("inbox", "owner")
        self.read_inbox()

    def test_writes_refused_meanwhile_are_written_again_in_order(self) -> None:
        self.write(1)
        self.redis.down = True
        for n in (2, 3, 4):
            self.write(n)
            self.wait(0.1)
        self.redis.down = False
        self.write(5)  # behind those that wait
        self.wait(0.3)
        self.write(6)
        self.read_inbox()
        self.assertEqual(self.y.numbers(), [1, 2, 3, 4, 5, 6])
        self.assertFalse(self.rooms.node.writes.waiting)

    def test_a_write_that_timed_out_but_was_taken_is_read_once(self) -> None:
        self.redis.paused = True
        self.write(1)
        self.wait(0.5)
        self.write(2)
        self.wait(LEASE / 3 + 0.1)  # both timed out: Redis has them in line
        self.write(3)
        self.redis.resume()
        self.wait(0.5)
        self.write(4)
        stream = [dict(zip(f[::2], f[1::2], strict=True)) for f in self.redis.streams[self.inbox]]
        numbers = [json.loads(e[b"data"])["data"] for e in stream if e[b"kind"] == b"send"]
        self.assertEqual(numbers, [1, 2, 1, 2, 3, 4])  # 1 and 2 twice in the stream
        self.read_inbox()
        self.assertEqual(self.y.numbers(), [1, 2, 3, 4])  # once each, in order

    def test_a_written_stream_expires_a_few_leases_after_its_last_write(self) -> None:
        def expiries() -> list[tuple[Any, ...]]:
            return [c for c in self.redis.commands if c[:2] == ("PEXPIRE", self.inbox)]

        self.wait(LEASE + 0.1)
        self.redis.commands.clear()
        for n in range(3):
            self.write(n)
        keep = int(LEASE * scripts.KEEP_LEASES * 1000)
        self.assertEqual(expiries(), [("PEXPIRE", self.inbox, keep)])  # once a lease
        self.wait(LEASE / 2)
        self.write(3)
        self.assertEqual(len(expiries()), 1)
        self.wait(LEASE / 2 + 0.1)
        self.write(4)
        self.assertEqual(len(expiries()), 2)
        # Refused, the write is made again and the stream then expires.
        self.wait(LEASE + 0.1)
        self.redis.down = True
        self.write(5)
        self.assertEqual(len(expiries()), 2)
        self.redis.down = False
        self.wait(0.3)
        self.assertEqual(len(expiries()), 3)

    def test_what_waits_for_redis_is_bounded(self) -> None:
        from twisted_signal.cluster import node

        self.patch(node, "MAX_OUTBOX_BYTES", 10_000)
        self.redis.down = True
        for n in range(100):
            self.write(n)
        waiting = self.rooms.node.writes.waiting
        self.assertLess(sum(node._size(e) for e in waiting), 10_000)
        self.assertEqual(waiting[-1][-1], json.dumps({"event": "n", "data": 99}))  # the newest
        self.redis.down = False
        self.wait(0.3)
        self.read_inbox()
        numbers = self.y.numbers()
        self.assertEqual(numbers, list(range(100 - len(numbers), 100)))

    def test_a_stopped_node_writes_nothing_again(self) -> None:
        self.redis.down = True
        self.write(1)
        self.rooms.node.writes.stop()
        self.wait(1)
        self.assertEqual(self.clock.getDelayedCalls(), [self.rooms.node._tick.call])

    def test_an_entry_that_cannot_be_encoded_is_dropped_not_written_again(self) -> None:
        execute = self.redis.execute

        def refuse_surrogates(*args: Any, timeout: float | None = None) -> Deferred[Any]:
            if any(isinstance(arg, str) and "\ud800" in arg for arg in args):
                return fail(ValueError("'utf-8' codec can't encode character '\\ud800'"))
            return execute(*args, timeout=timeout)

        self.redis.execute = refuse_surrogates  # type: ignore[method-assign]
        self.write(1)
        self.rooms.node.xadd(self.inbox, room="r", epoch=7, peer="y", kind="send", data="\ud800")
        self.write(2)
        self.wait(1)
        self.read_inbox()
        self.assertEqual(self.y.numbers(), [1, 2])
        self.assertFalse(self.rooms.node.writes.waiting)
