"""
What every connection gets, for peerjs clients too (SPEC 5.10: the limits of
5.3 apply; SPEC 1.4 steps 6 and 7): WebSocket pings count against the rate
limit, a client that does not read is closed past ``max_send_buffer`` and
its id freed at once, and a client that answers no ping is dropped.

In memory on a `task.Clock` (`PeerjsConnection`s over `StringTransport`s),
but for one test over loopback sockets: a ping flood's cost to another
client's round trips.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import orjson
import pytest
import pytest_twisted
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal import Room, Rooms, Settings, SignalingService
from twisted_signal.peerjs import PeerjsConnection, PeerjsFactory, PeerjsFront, PeerjsOptions

from .support import RawClient, in_reactor, upgrade_request
from .support.peerjs import PATH, Target

pytestmark = pytest.mark.loopback

OP_TEXT, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x8, 0x9, 0xA


def _upgrade(peer_id: str) -> bytes:
    return (
        f"GET {PATH}peerjs?key=peerjs&id={peer_id}&token=t HTTP/1.1\r\n"
        "Host: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def _client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A masked client frame (an all-zero mask: the payload as it is)."""
    size = len(payload)
    if size < 126:
        head = bytes([0x80 | opcode, 0x80 | size])
    else:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", size)
    return head + b"\0" * 4 + payload


def _server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """The (unmasked) frames the server wrote, after the 101 answer."""
    data = data.partition(b"\r\n\r\n")[2]
    frames = []
    while data:
        opcode, size = data[0] & 0x0F, data[1] & 0x7F
        start = 2
        if size == 126:
            size, start = struct.unpack("!H", data[2:4])[0], 4
        elif size == 127:
            size, start = struct.unpack("!Q", data[2:10])[0], 10
        frames.append((opcode, data[start : start + size]))
        data = data[start + size :]
    return frames


def _close_code(frames: list[tuple[int, bytes]]) -> int | None:
    for opcode, payload in frames:
        if opcode == OP_CLOSE:
            code: int = struct.unpack("!H", payload[:2])[0]
            return code
    return None


class _InMemory(SynchronousTestCase):
    def start(self, settings: Settings, **options: Any) -> None:
        self.clock = Clock()
        rooms = Rooms(Room, clock=self.clock)
        rooms.startService()
        self.addCleanup(rooms.stopService)
        self.front = PeerjsFront(
            rooms, PeerjsOptions(path=PATH, **options), settings=settings, clock=self.clock
        )
        self.factory = PeerjsFactory(self.front)

    def connect(self, peer_id: str) -> tuple[PeerjsConnection, StringTransport]:
        connection = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(connection, PeerjsConnection)
        transport = StringTransport()
        connection.makeConnection(transport)
        connection.dataReceived(_upgrade(peer_id))
        self.assertEqual(connection.state, WebSocketProtocol.STATE_OPEN)
        self.assertIn((OP_TEXT, b'{"type":"OPEN"}'), _server_frames(transport.value()))
        return connection, transport


class PingFloodTests(_InMemory):
    def test_websocket_pings_count_and_a_ping_flood_is_closed_after_the_flood_timeout(
        self,
    ) -> None:
        """
        A client that sends WebSocket pings at ten times its rate gets pongs
        only for those within its limit, and is closed 1008 a flood timeout
        after its first drop; its id is free at once.
        """
        self.start(Settings(rate=10, rate_period=1, rate_burst=10, flood_timeout=2.0))
        flooder, transport = self.connect("flooder")
        self.connect("other")
        self.clock.advance(0)
        ping = _client_frame(OP_PING)
        for _ in range(300):  # 100 pings a second, for 3 seconds
            flooder.dataReceived(ping)
            self.clock.advance(0.01)
            if _close_code(_server_frames(transport.value())) is not None:
                break
        frames = _server_frames(transport.value())
        self.assertEqual(_close_code(frames), 1008)
        # The burst and about 10 a second for 2 s: not 100 a second.
        pongs = sum(1 for opcode, _ in frames if opcode == OP_PONG)
        self.assertLess(pongs, 40)
        self.assertTrue(2.0 < self.clock.seconds() < 2.4, self.clock.seconds())
        self.assertEqual(self.front.ids(), ["other"])


class SendBufferTests(_InMemory):
    def test_a_client_that_never_reads_is_closed_past_the_send_buffer_and_its_id_freed(
        self,
    ) -> None:
        """
        The transport of a client that does not read says it is full: what
        is written for it from then on is counted, and once it passes
        ``max_send_buffer`` the client is closed 1008 and leaves at once;
        its sender is told nothing wrong.
        """
        limit = 64 * 1024
        self.start(Settings(max_send_buffer=limit))
        _, slow_transport = self.connect("slow")
        sender, sender_transport = self.connect("sender")
        self.clock.advance(0)  # they count what their transports hold from now on
        assert slow_transport.producer is not None
        slow_transport.producer.pauseProducing()  # as TCP does once its buffer is full
        slow_transport.clear()
        sender_transport.clear()
        blob = "x" * 10_000
        for n in range(20):
            message = {"type": "OFFER", "dst": "slow", "payload": {"n": n, "blob": blob}}
            sender.dataReceived(_client_frame(OP_TEXT, orjson.dumps(message)))
            if "slow" not in self.front.ids():
                break
        frames = _server_frames(b"\r\n\r\n" + slow_transport.value())
        self.assertEqual(_close_code(frames), 1008)
        self.assertEqual(frames[-1][1][2:], b"too slow")
        # What was written for it: the limit and the message that went over.
        self.assertLessEqual(len(slow_transport.value()), limit + 11_000)
        self.assertEqual(self.front.ids(), ["sender"])
        self.assertEqual(_server_frames(b"\r\n\r\n" + sender_transport.value()), [])
        # Its id is free for a new connection at once.
        self.connect("slow")


class KeepaliveTests(_InMemory):
    def setUp(self) -> None:
        self.start(Settings(ping_interval=1.0, ping_timeout=1.0), alive_timeout=5.0)

    def _pings(self, transport: StringTransport) -> list[bytes]:
        return [p for opcode, p in _server_frames(transport.value()) if opcode == OP_PING]

    def test_a_client_that_answers_no_ping_is_dropped(self) -> None:
        silent, silent_transport = self.connect("silent")
        answering, answering_transport = self.connect("answering")
        answered: set[bytes] = set()
        for _ in range(16):
            self.clock.advance(0.25)
            # HEARTBEATs keep both within the alive timeout; only one
            # answers the server's pings (with their payload).
            if not silent_transport.disconnecting:
                silent.dataReceived(_client_frame(OP_TEXT, b'{"type":"HEARTBEAT"}'))
            answering.dataReceived(_client_frame(OP_TEXT, b'{"type":"HEARTBEAT"}'))
            for payload in self._pings(answering_transport):
                if payload not in answered:
                    answered.add(payload)
                    answering.dataReceived(_client_frame(OP_PONG, payload))
        self.assertEqual(len(self._pings(silent_transport)), 1)
        self.assertEqual(len(self._pings(silent_transport)[0]), 8)
        self.assertTrue(silent_transport.disconnecting)
        self.assertGreaterEqual(len(answered), 2)
        self.assertFalse(answering_transport.disconnecting)
        silent.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.front.ids(), ["answering"])

    def test_answering_pings_is_not_what_keeps_a_peerjs_client_alive(self) -> None:
        """
        The browser answers pings by itself: the alive timeout still waits
        for something the client sends (its ``HEARTBEAT``).
        """
        quiet, transport = self.connect("quiet")
        answered: set[bytes] = set()
        for _ in range(28):
            self.clock.advance(0.25)
            for payload in self._pings(transport):
                if payload not in answered:
                    answered.add(payload)
                    quiet.dataReceived(_client_frame(OP_PONG, payload))
        self.assertEqual(_close_code(_server_frames(transport.value())), 1000)
        self.assertGreaterEqual(len(answered), 3)
        self.assertEqual(self.front.ids(), [])


# Over loopback sockets: what a ping flood costs another client.


def _round_trips(client: Any, peer_id: str, seconds: float) -> list[float]:
    """Messages to oneself for `seconds`, one at a time: their round-trip times."""
    times = []
    ends = time.monotonic() + seconds
    n = 0
    while time.monotonic() < ends:
        sent = time.monotonic()
        client.send(type="OFFER", dst=peer_id, payload=n)
        assert client.recv() == {"type": "OFFER", "src": peer_id, "dst": peer_id, "payload": n}
        times.append(time.monotonic() - sent)
        n += 1
        time.sleep(0.02)
    return times


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


@pytest_twisted.ensureDeferred
async def test_a_websocket_ping_flood_is_closed_and_others_stay_fast() -> None:
    """
    A peerjs client sends WebSocket pings as fast as it can and never reads:
    it is closed with 1008 a flood timeout after its first drop (its id is
    then free), and another client's round trips stay short meanwhile.
    """
    from twisted.internet import reactor

    flood_timeout = 2.0
    service = SignalingService(
        Rooms(Room), settings=Settings(flood_timeout=flood_timeout), peerjs=PeerjsOptions(PATH)
    )
    service.startService()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(service.site)
    target = Target("rtcsignal", f"127.0.0.1:{port.getHost().port}")
    front = service.resource.peerjs
    assert front is not None

    def scenario() -> tuple[float, list[float]]:
        other = target.join("other")
        host, port_number = target.base.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(5.0)
        sock.connect((host, int(port_number)))
        sock.sendall(upgrade_request(target.base, f"{PATH}peerjs?key=peerjs&id=flooder&token=t"))
        raw = RawClient(sock)
        assert raw._read_until(b"\r\n\r\n").split(b" ")[1] == b"101"
        assert raw.recv_frame() == (OP_TEXT, b'{"type":"OPEN"}')
        stop = threading.Event()

        def flood() -> None:
            pings = _client_frame(OP_PING) * 20_000
            while not stop.is_set():
                try:
                    sock.sendall(pings)
                except OSError:
                    return

        sender = threading.Thread(target=flood)
        started = time.monotonic()
        sender.start()
        try:
            loud = _round_trips(other, "other", 1.5)
            deadline = started + flood_timeout + 5
            while in_reactor(lambda: "flooder" in front.ids()) and time.monotonic() < deadline:
                time.sleep(0.05)
            elapsed = time.monotonic() - started
        finally:
            stop.set()
            sender.join()
            raw.drop()
            other.ws.close()
        return elapsed, loud

    try:
        elapsed, loud = await deferToThread(scenario)
    finally:
        await port.stopListening()
        await service.stopService()
    assert flood_timeout - 0.5 < elapsed < flood_timeout + 1.5, elapsed
    assert _median(loud) < 0.05, (_median(loud), max(loud))
