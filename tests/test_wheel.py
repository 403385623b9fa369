"""
The keepalive timer wheel: entries checked at their deadline (within one
resolution, never before), behind a single DelayedCall.
"""

from __future__ import annotations

import itertools

import pytest
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal import Room
from twisted_signal.peer import PeerFactory
from twisted_signal.rooms import Rooms
from twisted_signal.settings import Settings
from twisted_signal.wheel import Wheel

pytestmark = pytest.mark.memory


class Entry:
    def __init__(self, clock: Clock, *deadlines: float) -> None:
        self.wheel_slot: int | None = None
        self.clock = clock
        self.deadlines = list(deadlines)
        self.fired: list[float] = []

    def wheel_fired(self, now: float) -> float | None:
        self.fired.append(now)
        return self.deadlines.pop(0) if self.deadlines else None


class WheelTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.wheel = Wheel(self.clock, 0.5)

    def active_calls(self) -> int:
        return sum(1 for call in self.clock.getDelayedCalls() if call.active())

    def test_due_within_one_resolution_never_before(self) -> None:
        entry = Entry(self.clock)
        self.wheel.schedule(entry, 1.2)
        self.clock.advance(1.19)
        self.assertEqual(entry.fired, [])
        self.clock.advance(0.31)
        self.assertEqual(entry.fired, [1.5])
        self.assertEqual((len(self.wheel), self.active_calls()), (0, 0))

    def test_one_timer_for_many_entries(self) -> None:
        entries = [Entry(self.clock, 30.0) for _ in range(100)]
        for n, entry in enumerate(entries):
            self.wheel.schedule(entry, 1.0 + n / 10)
        self.assertEqual((len(self.wheel), self.active_calls()), (100, 1))
        self.clock.pump([0.5] * 24)
        self.assertTrue(all(len(entry.fired) == 1 for entry in entries))
        self.assertEqual((len(self.wheel), self.active_calls()), (100, 1))
        self.clock.advance(18)
        self.assertTrue(all(entry.fired[1] == 30.0 for entry in entries))
        self.assertEqual((len(self.wheel), self.active_calls()), (0, 0))

    def test_schedule_only_moves_earlier(self) -> None:
        entry = Entry(self.clock)
        self.wheel.schedule(entry, 10.0)
        self.wheel.schedule(entry, 20.0)
        self.wheel.schedule(entry, 2.0)
        self.assertEqual(len(self.wheel), 1)
        self.clock.advance(2.0)
        self.assertEqual(entry.fired, [2.0])
        self.clock.advance(20)
        self.assertEqual(entry.fired, [2.0])

    def test_cancel(self) -> None:
        kept, cancelled = Entry(self.clock), Entry(self.clock)
        self.wheel.schedule(kept, 1.0)
        self.wheel.schedule(cancelled, 1.0)
        self.wheel.cancel(cancelled)
        self.wheel.cancel(cancelled)
        self.clock.advance(1)
        self.assertEqual((kept.fired, cancelled.fired), ([1.0], []))
        self.wheel.schedule(cancelled, 5.0)
        self.wheel.cancel(cancelled)
        self.assertEqual((len(self.wheel), self.active_calls()), (0, 0))

    def test_an_entry_may_cancel_another_of_its_bucket(self) -> None:
        other = Entry(self.clock)
        wheel = self.wheel

        class Cancelling(Entry):
            def wheel_fired(self, now: float) -> float | None:
                wheel.cancel(other)
                return super().wheel_fired(now)

        first = Cancelling(self.clock)
        self.wheel.schedule(first, 1.0)
        self.wheel.schedule(other, 1.0)
        self.clock.advance(1)
        # Sets have no order: either the canceller went first, or both ran.
        self.assertEqual(first.fired, [1.0])
        self.assertIn(other.fired, ([], [1.0]))
        self.assertEqual((len(self.wheel), self.active_calls()), (0, 0))

    def test_a_deadline_already_past_is_checked_at_the_next_slot(self) -> None:
        entry = Entry(self.clock, 0.0, 0.0)
        self.wheel.schedule(entry, 0.0)
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.clock.advance(0.5)
        self.assertEqual(entry.fired, [0.5, 1.0, 1.5])

    def test_a_late_clock_catches_up(self) -> None:
        entries = [Entry(self.clock) for _ in range(3)]
        for n, entry in enumerate(entries):
            self.wheel.schedule(entry, 1.0 + n)
        self.clock.advance(100)
        self.assertEqual([entry.fired for entry in entries], [[100.0]] * 3)

    def test_bad_resolution(self) -> None:
        self.assertRaises(ValueError, Wheel, self.clock, 0)


_UPGRADE = (
    b"GET /socket/r/ HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
_EMPTY_PONG = b"\x8a\x80\0\0\0\0"
_TEXT_PING = b"\x81\x84\0\0\0\0ping"
_CLIENT_PING = b"\x89\x80\0\0\0\0"


def _frame(text: bytes) -> bytes:
    """A short masked client text frame (with an all-zero mask)."""
    return bytes([0x81, 0x80 | len(text)]) + b"\0\0\0\0" + text


_CLOSE_1000 = b"\x88\x02\x03\xe8"


class PeerKeepaliveTests(SynchronousTestCase):
    """
    SPEC 1.4 step 6 on the factory's wheel, on a fake clock: pings every
    interval, a peer that does not answer in time dropped, an idle one closed.
    """

    def setUp(self) -> None:
        self.connect(Settings(ping_interval=10, ping_timeout=5, idle_timeout=60))
        self.assertEqual(self.factory.wheel.resolution, 1.0)

    def connect(self, settings: Settings) -> None:
        self.clock = Clock()
        rooms = Rooms(lambda name: Room(name, clock=self.clock), clock=self.clock)
        rooms.startService()
        self.addCleanup(rooms.stopService)
        self.factory = PeerFactory(rooms, settings=settings, clock=self.clock)
        self.peer = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        self.transport = StringTransport()
        # Autobahn unregisters a producer before it drops a connection.
        self.patch(self.transport, "unregisterProducer", lambda: None)
        self.peer.makeConnection(self.transport)
        self.peer.dataReceived(_UPGRADE)
        self.assertEqual(self.peer.state, WebSocketProtocol.STATE_OPEN)
        self.transport.clear()

    def pings(self) -> int:
        return len(self.ping_payloads())

    def ping_payloads(self) -> list[bytes]:
        written: bytes = self.transport.value()
        self.transport.clear()
        payloads = []
        while written:  # the server's frames: short, unmasked
            opcode, size = written[0] & 0x0F, written[1]
            assert size < 126, written
            if opcode == 0x9:
                payloads.append(written[2 : 2 + size])
            written = written[2 + size :]
        return payloads

    def pong(self, payload: bytes) -> None:
        """The client answers a ping (a masked pong, with an all-zero mask)."""
        self.peer.dataReceived(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)

    def test_pings_every_interval_while_answered(self) -> None:
        times = []
        for _ in range(1000):
            self.clock.advance(0.1)
            for payload in self.ping_payloads():
                times.append(self.clock.seconds())
                self.pong(payload)
        gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
        # Never early, at most one resolution late.
        self.assertTrue(10 - 1e-6 <= times[0] <= 11 + 1e-6, times)
        self.assertTrue(all(10 - 1e-6 <= gap <= 11 + 1e-6 for gap in gaps), gaps)
        self.assertGreaterEqual(len(times), 9)
        self.assertFalse(self.transport.disconnecting)

    def test_a_peer_that_does_not_answer_is_dropped(self) -> None:
        self.clock.advance(10)
        self.assertEqual(self.pings(), 1)
        self.clock.advance(4.5)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(1)
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.peer.wasClean)
        self.assertEqual(len(self.factory.wheel), 0)

    def test_a_pong_answers_a_ping(self) -> None:
        self.clock.advance(10)
        [payload] = self.ping_payloads()
        self.clock.advance(1)
        self.pong(payload)
        self.clock.advance(10)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.pings(), 1)  # the next one, an interval after the first

    def test_only_a_pong_answers_a_ping(self) -> None:
        """
        SPEC 1.4 step 6: a client that keeps sending but never reads is not
        alive.  `ping` text frames, messages, pings of its own and pongs
        without the ping's payload (which it cannot know without reading)
        do not answer the server's ping.
        """
        self.clock.advance(10)
        [payload] = self.ping_payloads()
        for _ in range(8):
            self.clock.advance(0.5)
            self.peer.dataReceived(_TEXT_PING)
            self.peer.dataReceived(_frame(b'{"event":"x","to":"all"}'))
            self.peer.dataReceived(_CLIENT_PING)
            self.peer.dataReceived(_EMPTY_PONG)
            self.pong(b"\0" * 8 if payload != b"\0" * 8 else b"\1" * 8)
        self.assertFalse(self.transport.disconnecting)
        self.clock.advance(2)  # 5 s after the ping, and a resolution
        self.assertTrue(self.transport.disconnecting)
        self.assertFalse(self.peer.wasClean)

    def test_pings_carry_fresh_payloads(self) -> None:
        payloads = []
        for _ in range(5):
            self.clock.advance(10)
            [payload] = self.ping_payloads()
            payloads.append(payload)
            self.pong(payload)
        self.assertEqual(len(set(payloads)), 5)

    def test_idle_peer_closed_with_1000(self) -> None:
        self.connect(Settings(ping_interval=0, idle_timeout=60))
        self.clock.advance(30)
        self.peer.dataReceived(_TEXT_PING)
        self.clock.pump([1] * 59)
        self.assertNotIn(_CLOSE_1000, self.transport.value())
        self.clock.pump([1] * 2)
        self.assertIn(_CLOSE_1000, self.transport.value())
        self.assertEqual(self.pings(), 0)
