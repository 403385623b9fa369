"""
The relay path stays lean: synchronous callbacks cost no Deferred (nor a
Future), a message is encoded and framed once however many peers receive
it, and relaying logs nothing, schedules no timer and never falls back to
the slow JSON codec or the nesting walk for an ordinary frame.
"""

from __future__ import annotations

import gc
import json
import weakref
from typing import Any, cast

import orjson
import pytest
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal import AuthData, Message, Peer, PeerHandle, Room
from twisted_signal import message as message_module
from twisted_signal import message as wire
from twisted_signal.peer import PeerFactory
from twisted_signal.rooms import Rooms
from twisted_signal.settings import Settings

from .support.memory import frame, upgrade

pytestmark = pytest.mark.memory


def count_deferreds(case: SynchronousTestCase) -> list[Any]:
    """Every Deferred made from now on, until `case` ends."""
    made: list[Any] = []
    original = defer.Deferred.__init__

    def counting_init(self: defer.Deferred[Any], *args: Any, **kwargs: Any) -> None:
        made.append(self)
        original(self, *args, **kwargs)

    case.patch(defer.Deferred, "__init__", counting_init)
    return made


class HotPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.room = Room("hot", None, clock=Clock())
        self.room.startService()
        self.payloads: dict[str, list[bytes]] = {}
        for peer_id in ("a", "b", "c", "d"):
            received: list[bytes] = []
            self.payloads[peer_id] = received
            handle = PeerHandle(
                peer_id, AuthData(peer_id), received.append, lambda code: None, lambda ids: None
            )
            self.room.join(handle)

    def test_sync_callbacks_make_no_deferreds(self) -> None:
        made = count_deferreds(self)
        for n in range(100):
            self.room.submit(Message("candidate", {"n": n}, "a", "all"))
        self.assertEqual(made, [])
        # b saw c and d join, then the 100 candidates.
        self.assertEqual(len(self.payloads["b"]), 2 + 100)

    def test_metrics_on_the_relay_make_no_deferreds(self) -> None:
        from twisted_signal import Rooms
        from twisted_signal.metrics import Metrics

        clock = Clock()
        metrics = Metrics(Rooms(None), clock=clock, process_metrics=False)
        self.room.events = metrics
        made = count_deferreds(self)
        for n in range(100):
            self.room.submit(Message("candidate", {"n": n}, "a", "all"), received=0.0)
        self.assertEqual(made, [])
        self.assertEqual(metrics.forwarded_count, 100)

    def test_a_broadcast_is_encoded_once(self) -> None:
        encodings: list[Message] = []
        original = Message.to_bytes

        def counting_to_bytes(message: Message) -> bytes:
            encodings.append(message)
            return original(message)

        self.patch(Message, "to_bytes", counting_to_bytes)
        self.room.submit(Message("offer", {"sdp": "v=0"}, "a", "all"))
        self.assertEqual(len(encodings), 1)
        last = [self.payloads[p][-1] for p in ("b", "c", "d")]
        self.assertTrue(last[0] is last[1] is last[2])
        self.assertEqual(last[0], wire.Message("offer", {"sdp": "v=0"}, "a", "all").to_bytes())


class _PeersTestCase(SynchronousTestCase):
    """Real `Peer`s of one factory, joined over in-memory transports."""

    def setUp(self) -> None:
        self.clock = Clock()
        rooms = Rooms(lambda name: Room(name, clock=self.clock), clock=self.clock)
        rooms.startService()
        self.addCleanup(rooms.stopService)
        self.factory = PeerFactory(rooms, settings=Settings(), clock=self.clock)

    def _connect(self) -> tuple[Peer, StringTransport]:
        peer = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(peer, Peer)
        transport = StringTransport()
        peer.makeConnection(transport)
        peer.dataReceived(upgrade("hot"))
        self.assertEqual(peer.state, WebSocketProtocol.STATE_OPEN)
        self.assertIsNotNone(peer.room)
        return peer, transport

    def _through_site(self) -> tuple[Any, _TCPLikeTransport]:
        """An HTTP connection of a site serving this factory's rooms, as twistd does."""
        from twisted_signal.service import SignalingSite
        from twisted_signal.web import SignalingResource

        resource = SignalingResource(self.factory.rooms, clock=self.clock)
        site = SignalingSite(resource, handshake_timeout=10.0, clock=self.clock)
        protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert protocol is not None
        transport = _TCPLikeTransport()
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return protocol, transport


class PeerHotPathTests(_PeersTestCase):
    """
    The whole relay path, from the bytes of a client's frame to the bytes
    written to the recipients, over in-memory transports: what it must not
    do for each message.
    """

    def setUp(self) -> None:
        super().setUp()
        self.peers = [self._connect() for _ in range(4)]
        self.clock.advance(0)  # they count what their transports hold from now on
        for _, transport in self.peers:
            transport.clear()

    def _send_many(self, to: Any, count: int = 100) -> None:
        sender = self.peers[0][0]
        for n in range(count):
            body = {"event": "candidate", "to": to, "data": {"candidate": "a" * 500, "n": n}}
            sender.dataReceived(frame(orjson.dumps(body)))

    def _unicast(self) -> list[str]:
        return [self.peers[1][0].peer_id]

    def _received(self, index: int) -> bytes:
        written: bytes = self.peers[index][1].value()
        return written

    def test_no_deferred_or_future(self) -> None:
        # txaio's futures on Twisted are Deferreds: this counts both.
        made = count_deferreds(self)
        self._send_many(self._unicast())
        self._send_many("all")
        self.assertEqual(made, [])
        self.assertEqual(self._received(1).count(b'"event":"candidate"'), 200)

    def test_one_encode_and_one_frame_per_delivered_message(self) -> None:
        encodings: list[Message] = []
        frames: list[bytes] = []
        to_bytes = Message.to_bytes
        prepared_init = PreparedMessage.__init__

        def counting_to_bytes(message: Message) -> bytes:
            encodings.append(message)
            return to_bytes(message)

        def counting_prepare(self: PreparedMessage, payload: bytes, *args: Any) -> None:
            frames.append(payload)
            prepared_init(self, payload, *args)

        self.patch(Message, "to_bytes", counting_to_bytes)
        self.patch(PreparedMessage, "__init__", counting_prepare)
        self._send_many("all", 10)
        self._send_many(self._unicast(), 10)
        self.assertEqual((len(encodings), len(frames)), (20, 20))
        for index in (1, 2, 3):
            self.assertEqual(
                self._received(index).count(b'"event":"candidate"'), 20 - 10 * (index > 1)
            )

    def test_no_stdlib_json_and_no_nesting_walk(self) -> None:
        calls: list[str] = []
        self.patch(json.JSONDecoder, "decode", lambda *a: calls.append("decode"))
        self.patch(json.JSONEncoder, "encode", lambda *a: calls.append("encode"))
        self.patch(message_module, "_nested_deeper_than", lambda *a: calls.append("walk"))
        self._send_many(self._unicast())
        self.assertEqual(calls, [])
        self.assertEqual(self._received(1).count(b'"event":"candidate"'), 100)

    def test_no_log_event(self) -> None:
        with capturedLogs() as events:
            self._send_many(self._unicast())
            self._send_many("all")
        self.assertEqual(events, [])

    def test_no_timer(self) -> None:
        scheduled: list[Any] = []
        call_later = self.clock.callLater

        def counting_call_later(delay: float, fn: Any, *args: Any, **kwargs: Any) -> Any:
            scheduled.append(fn)
            return call_later(delay, fn, *args, **kwargs)

        self.patch(self.clock, "callLater", counting_call_later)
        before = len(self.clock.getDelayedCalls())
        self._send_many(self._unicast())
        self.clock.advance(1)
        self._send_many("all")
        self.assertEqual(scheduled, [])
        self.assertEqual(len(self.clock.getDelayedCalls()), before)

    def test_autobahn_uses_its_accelerators(self) -> None:
        from autobahn.websocket import USES_NVX

        self.assertTrue(USES_NVX)


class _TCPLikeTransport(StringTransport):
    protocol: Any = None
    """The transport's protocol, as a TCP transport has (the upgrade replaces it)."""
    no_delay: bool | None = None
    """What TCP_NODELAY was set to (Nagle's algorithm off when True)."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        self.no_delay = enabled


class PeerJoinTests(_PeersTestCase):
    """
    What a joined, idle peer must not cost: a timer of its own, the upgrade
    request, or a copy of Autobahn's options.
    """

    def _join(self) -> Peer:
        return self._connect()[0]

    def _timers(self) -> int:
        return sum(1 for call in self.clock.getDelayedCalls() if call.active())

    def test_no_timer_per_peer(self) -> None:
        self._join()
        before = self._timers()
        peers = [self._join() for _ in range(20)]
        self.assertEqual(self._timers(), before)
        self.assertEqual(len(self.factory.wheel), 21)
        for peer in peers:
            peer.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(self.factory.wheel), 1)

    def test_the_upgrade_request_is_not_kept(self) -> None:
        from autobahn.websocket.types import ConnectionRequest

        peer = self._join()
        gc.collect()
        self.assertEqual([o for o in gc.get_objects() if isinstance(o, ConnectionRequest)], [])
        self.assertEqual((peer.http_headers, peer.http_request_data), ({}, b""))
        self.assertEqual(peer.http_response_data, "")
        self.assertIsNone(peer._admission)
        self.assertFalse(peer.send_queue)

    def test_one_log_event_per_join(self) -> None:
        # Into a room that is there already (starting one is an event of its own).
        self._join()
        with capturedLogs() as events:
            peer = self._join()
        self.assertEqual(len(events), 1, [e["log_format"] for e in events])
        (event,) = events
        self.assertEqual(
            (event["peer_id"], event["room"], event["remote"]), (peer.peer_id, "hot", peer.peer)
        )

    def test_no_copy_of_autobahn_options_per_peer(self) -> None:
        peer = self._join()
        own = set(vars(peer)) & set(Peer.CONFIG_ATTRS)
        self.assertIn("maxFramePayloadSize", Peer.CONFIG_ATTRS)
        self.assertEqual(own, set())
        self.assertEqual(vars(type(peer))["maxFramePayloadSize"], Settings().max_message_bytes)
        self.assertEqual(vars(type(peer))["autoPingInterval"], 0)  # the wheel pings instead
        self.assertIsInstance(peer, self.factory.protocol)

    def test_options_set_later_apply_to_new_peers(self) -> None:
        self._join()
        self.factory.setProtocolOptions(maxFramePayloadSize=4096)
        self.assertEqual(vars(type(self._join()))["maxFramePayloadSize"], 4096)

    def test_the_http_connection_is_let_go_after_the_upgrade(self) -> None:
        protocol, transport = self._through_site()
        # The site builds the HTTP channel itself (no wrapper around it).
        channel = weakref.ref(protocol)
        protocol.dataReceived(upgrade("hot"))
        peer = transport.protocol
        self.assertIsInstance(peer, Peer)
        self.assertEqual(peer.state, WebSocketProtocol.STATE_OPEN)
        del protocol
        gc.collect()
        self.assertIsNone(channel())
        self.assertIsNone(transport.producer)


class SiteJoinTests(_PeersTestCase):
    """
    What a join through the HTTP site (as ``twistd rtcsignal`` serves the
    sockets, beside the pages) must not do: parse the upgrade request a
    second time, or format Autobahn's debug lines.
    """

    def _join_through_site(self) -> Peer:
        protocol, transport = self._through_site()
        protocol.dataReceived(upgrade("hot"))
        peer = transport.protocol
        assert isinstance(peer, Peer)
        self.assertEqual(peer.state, WebSocketProtocol.STATE_OPEN)
        self.assertIsNotNone(peer.room)
        return peer

    def test_the_upgrade_request_is_parsed_once(self) -> None:
        from autobahn.websocket import protocol as autobahn_protocol
        from twisted.web import http

        parsed: list[str] = []
        header_received = http.HTTPChannel.headerReceived
        parse_http_header = autobahn_protocol.parseHttpHeader

        def counting_header_received(channel: Any, line: bytes) -> bool:
            parsed.append("twisted.web")
            return bool(header_received(channel, line))

        def counting_parse(data: bytes) -> Any:
            parsed.append("autobahn")
            return parse_http_header(data)

        self.patch(http.HTTPChannel, "headerReceived", counting_header_received)
        self.patch(autobahn_protocol, "parseHttpHeader", counting_parse)
        self._join_through_site()
        # twisted.web, once per header line of the request; Autobahn never.
        self.assertEqual(parsed, ["twisted.web"] * upgrade("hot").count(b": "))

    def test_nagle_is_off(self) -> None:
        # A small frame goes out at once, not after the client's delayed ACK.
        peer = self._join_through_site()
        self.assertIs(cast(_TCPLikeTransport, peer.transport).no_delay, True)

    def test_no_autobahn_debug_line_is_formatted(self) -> None:
        from autobahn import util

        formatted: list[Any] = []
        hltype = util.hltype

        def counting_hltype(obj: Any) -> str:
            formatted.append(obj)
            return str(hltype(obj))

        self.patch(util, "hltype", counting_hltype)
        for module in ("autobahn.websocket.protocol", "autobahn.twisted.websocket"):
            self.patch(__import__(module, fromlist=["hltype"]), "hltype", counting_hltype)
        self._join_through_site()
        self.assertEqual(formatted, [])


class PeerTurnTests(_PeersTestCase):
    """
    One connection cannot keep the reactor to itself: however many frames
    one read brings, a bounded number are handled per turn, reading stops
    meanwhile, and the rest are handled, in order, in the next turns.
    """

    def test_a_read_of_many_frames_is_handled_in_turns(self) -> None:
        peer, transport = self._connect()
        self.clock.advance(0)
        transport.clear()
        frames = [frame(b"ping") for _ in range(150)]
        pings = [bytes([0x89, 0x80]) + b"\0\0\0\0"] * 150
        peer.dataReceived(b"".join(frames + pings))
        handled_first = transport.value().count(b"pong")
        self.assertLess(handled_first, 150)
        self.assertEqual(transport.producerState, "paused")
        # What arrives meanwhile waits its turn too.
        peer.dataReceived(frame(b"ping"))
        self.assertEqual(transport.value().count(b"pong"), handled_first)
        for _ in range(20):
            self.clock.advance(0)
        # Once its frames are being dropped (past the burst of 200), the
        # connection's turns come 10 ms apart: the rest is still waiting.
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(transport.value().count(b"\x81\x04pong"), 150)
        for _ in range(10):
            self.clock.advance(0.01)
        # 150 text pongs and 50 WebSocket pongs (the burst of 200, and
        # what 10 ms turns refill), one "Rate limited" error, the rest dropped.
        written = transport.value()
        self.assertEqual(written.count(b"\x81\x04pong"), 150)
        self.assertIn(written.count(b"\x8a\x00"), (50, 51, 52))
        self.assertEqual(written.count(b"Rate limited"), 1)
        self.assertEqual(transport.producerState, "producing")
