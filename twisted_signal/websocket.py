"""
The WebSocket side every front shares: what a connection gets whichever
protocol it speaks, on Autobahn.

A front (`twisted_signal.peer` for the server's own protocol,
`twisted_signal.peerjs` for peerjs's) subclasses `WebSocketConnection` and
`WebSocketFactory` and keeps only its protocol: the handshake and
admission, decoding a frame (`WebSocketConnection.frame_received`) into a
call on the room or the front, and its own wire messages.  Here, for every
connection:

- frame intake: every frame from the client (a message, a WebSocket ping,
  an unasked-for pong) passes the rate limit (SPEC 5.3), and a connection's
  frames are read in turns, so one that floods cannot keep the others
  waiting;
- the send buffer: what the transport holds for a client that does not read
  is bounded (``max_send_buffer``, SPEC 1.4 step 7); past it the connection
  is closed 1008 "too slow";
- keepalive (SPEC 1.4 step 6): WebSocket pings with a random payload, on the
  factory's timer wheel (no timer per connection), and the idle timeout;
- the origin check, and the Autobahn workarounds that keep a connection's
  CPU and memory low (see each).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, cast

from autobahn.twisted.resource import WebSocketResource
from autobahn.twisted.util import create_transport_details
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.wamp.types import TransportDetails
from autobahn.websocket.protocol import (
    PreparedMessage,
    WebSocketProtocol,
    _is_same_origin,
    _url_to_origin,
)
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.web.server import NOT_DONE_YET

from .events import NO_EVENTS, Events
from .handshake import Refusal, check_upgrade, header_fields, status_line
from .headers import COMMON_HEADERS
from .keepalive import Due, Keepalive
from .limits import RateLimiter, SendBuffer, Verdict
from .settings import Settings
from .wheel import Wheel

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IConsumer, IDelayedCall, IReactorTime
    from twisted.web.server import Request

__all__ = [
    "CLOSE_POLICY",
    "UpgradeResource",
    "WebSocketConnection",
    "WebSocketFactory",
    "normal_origin",
]

CLOSE_POLICY = 1008
_OPEN = WebSocketProtocol.STATE_OPEN
_CLOSED = WebSocketProtocol.STATE_CLOSED
_NO_SEND_QUEUE = cast("deque[Any]", ())
"""Autobahn's send queue until a write needs one (a write to it would fail loudly)."""
STEPS_PER_TURN = 128
"""At most this many steps of reading frames (a frame is one or two) are
taken per connection and turn of the reactor: a client that floods cannot
keep the others waiting."""
FLOOD_TURN_DELAY = 0.01
"""How long a connection whose frames are being dropped waits between turns."""
_REFUSAL_HEADERS = [
    (name.decode("ascii"), value.decode("ascii"))
    for name, value in (*COMMON_HEADERS, (b"Cache-Control", b"no-store"))
]


class WebSocketConnection(WebSocketServerProtocol):
    """
    One client's WebSocket, whatever its front.  A front overrides:

    - `frame_received(payload, is_binary, now)`: a message from the client
      that passed the rate limit;
    - `rate_limit_warning()`: the first drop of a run of drops (SPEC 5.3),
      to tell the client if the front's protocol has a way to;
    - `closed_by_server()`: the server has started closing (its rate limit,
      too slow, idle, a protocol error, the front itself);
    - `opened()` and `closed(was_clean, code, reason)` instead of Autobahn's
      ``onOpen`` and ``onClose``;
    - `log_id()`: the peer's id in log lines.

    A front writes with `write` and closes with `close_with`.
    """

    factory: WebSocketFactory
    # Autobahn's options (class attributes: see WebSocketFactory.buildProtocol).
    trustXForwardedFor: int
    versions: list[int]
    maxConnections: int
    allowedOriginsPatterns: list[Any]
    tcpNoDelay: bool
    pongs_are_traffic = True
    """Whether any pong from the client counts as traffic for the idle timeout."""
    _log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self.wheel_slot: int | None = None
        self._keepalive: Keepalive | None = None
        self._limiter: RateLimiter | None = None
        self._send_buffer: SendBuffer | None = None
        self._steps_this_turn = 0
        self._next_turn: IDelayedCall | None = None
        self._deaf = False
        self._ended = False

    # What a front overrides.

    def frame_received(self, payload: bytes, is_binary: bool, now: float) -> None:
        """A message from the client, past the rate limit."""

    def rate_limit_warning(self) -> None:
        """The first frame of a run of drops was dropped (SPEC 5.3)."""

    def closed_by_server(self) -> None:
        """The server has started closing this connection."""

    def opened(self) -> None:
        """The WebSocket is open (the upgrade request is forgotten by now)."""

    def closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        """The connection has ended (once)."""

    def log_id(self) -> str:
        """The peer's id, for log lines."""
        return ""

    # What a front calls.

    @property
    def ended(self) -> bool:
        """Whether the connection has ended (`closed` has been called)."""
        return self._ended

    def write(self, payload: bytes) -> None:
        """
        Send `payload` as a text frame (nothing if the connection is not open).
        """
        if self.state != _OPEN:
            return
        # A prepared frame is built once however many peers a fan-out writes
        # it to.  It also escapes maxMessagePayloadSize, which Autobahn's
        # sendMessage applies to what we send: the limit is for clients, and
        # a relayed message is a little larger than the frame it came in.
        self.sendPreparedMessage(self.factory.prepared(payload))

    def close_with(self, code: int, reason: str | None = None) -> None:
        """Start the close handshake with `code` (and `reason`), if open."""
        if self.state != _OPEN:
            return
        # sendClose refuses 1001 and 1008; the frame itself is fine.
        self.sendCloseFrame(code, None if reason is None else reason.encode(), isReply=False)

    # Autobahn's life cycle.

    def onOpen(self) -> None:
        self._forget_handshake()
        if self._ended:
            return
        factory = self.factory
        settings = factory.settings
        now = factory.clock.seconds()
        self._keepalive = keepalive = factory.keepalive(now)
        factory.wheel.schedule(self, keepalive.deadline)
        self._limiter = RateLimiter(
            settings.rate, settings.rate_period, settings.rate_burst, settings.flood_timeout, now
        )
        factory.count_unsent(self)
        self.opened()

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._ended:
            return
        self._ended = True
        self.factory.wheel.cancel(self)
        if self._next_turn is not None and self._next_turn.active():
            self._next_turn.cancel()
        self._next_turn = None
        self.closed(wasClean, code, reason)

    def connectionMade(self) -> None:
        # Autobahn's, without its debug line, whose arguments it formats
        # whether debug is on or not (as for the three below).
        transport: Any = self.transport
        details = create_transport_details(transport, True)
        details.channel_framing = TransportDetails.CHANNEL_FRAMING_WEBSOCKET
        self._transport_details = details
        self.peer = details.peer
        with suppress(Exception):  # as Autobahn's: not every transport is TCP
            transport.setTcpNoDelay(self.tcpNoDelay)
        self._connectionMade()

    def _connectionMade(self) -> None:
        # WebSocketServerProtocol's, without its debug line.
        WebSocketProtocol._connectionMade(self)
        self.factory.countConnections += 1
        # Autobahn's queue for chopped and synchronous writes, which only its
        # own test modes make: an empty deque is most of a kilobyte per
        # connection, so there is one only once a write needs it.
        self.send_queue = _NO_SEND_QUEUE

    def _forget_handshake(self) -> None:
        # Autobahn keeps the upgrade request and its answer on the protocol
        # for as long as the connection lasts (a kilobyte and a half); nothing
        # reads them after the upgrade.
        self.http_request_data = b""
        self.http_response_data = self.http_status_line = self.http_request_uri = ""
        self.http_headers = {}
        self.http_request_params = {}

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        # Autobahn writes its refusals itself, past twisted.web: give them
        # the headers of every other answer.
        headers = [*(responseHeaders or ()), *_REFUSAL_HEADERS]
        super().failHandshake(reason, code, headers)

    # The opening handshake of a request twisted.web has parsed.

    def upgrade_parsed(
        self,
        method: bytes,
        uri: bytes,
        headers: Iterable[tuple[bytes, Sequence[bytes]]],
        rest: bytes = b"",
    ) -> None:
        """
        Run the opening handshake of an upgrade request that twisted.web has
        already parsed (`UpgradeResource`), instead of handing Autobahn the
        request's bytes to parse again: Autobahn's checks and answers, in
        its order (`twisted_signal.handshake`), then ``onConnect`` and
        Autobahn's answer to it.  `rest` is what came after the request
        (its body), read as frames.
        """
        fields = header_fields(headers)
        if isinstance(fields, Refusal):
            return self._refuse(fields)
        line = status_line(method, uri)
        if isinstance(line, Refusal):
            return self._refuse(line)
        self.http_status_line, self.http_headers, self.data = line, fields, rest
        if "x-forwarded-for" in fields and self.trustXForwardedFor:
            addresses = [x.strip() for x in fields["x-forwarded-for"].split(",")]
            self.peer = addresses[-self.trustXForwardedFor :][0]
        upgrade = check_upgrade(
            line,
            fields,
            versions=self.versions,
            external_port=self.factory.externalPort,
            origin_allowed=self._origin_allowed,
        )
        if isinstance(upgrade, Refusal):
            return self._refuse(upgrade)
        self.http_request_uri, self.http_request_path = upgrade.uri, upgrade.path
        self.http_request_params, self.http_request_host = upgrade.params, upgrade.host
        self.websocket_version, self.websocket_protocols = upgrade.version, upgrade.protocols
        self.websocket_origin, self._wskey = upgrade.origin, upgrade.key
        self.websocket_extensions = []
        if "sec-websocket-extensions" in fields:
            self.websocket_extensions = self._parseExtensionsHeader(
                fields["sec-websocket-extensions"]
            )
        if self.maxConnections > 0 and self.factory.countConnections > self.maxConnections:
            return self.failHandshake("maximum number of connections reached", code=503)
        request = ConnectionRequest(
            self.peer,
            fields,
            upgrade.host,
            upgrade.path,
            upgrade.params,
            upgrade.version,
            upgrade.origin,
            upgrade.protocols,
            self.websocket_extensions,
        )
        # Autobahn's own waits on onConnect the same way (txaio.as_future).
        maybeDeferred(self.onConnect, request).addCallbacks(
            self.succeedHandshake, self._connect_failed
        )
        return None

    def _refuse(self, refusal: Refusal) -> None:
        self.failHandshake(refusal.reason, refusal.code, list(refusal.headers) or None)

    def _origin_allowed(self, origin: str) -> Refusal | None:
        # Autobahn's own origin check (the fronts' allow-list comes later).
        try:
            origin_tuple = _url_to_origin(origin)
        except ValueError as e:
            return Refusal(f"HTTP Origin header invalid: {e}")
        factory = self.factory
        if origin_tuple == "null" and factory.allowNullOrigin:
            return None
        if _is_same_origin(
            origin_tuple,
            "https" if factory.isSecure else "http",
            factory.externalPort or factory.port,
            self.allowedOriginsPatterns,
        ):
            return None
        return Refusal(f"WebSocket connection denied: origin '{origin}' not allowed")

    def _connect_failed(self, failure: Any) -> None:
        # As Autobahn's processHandshake answers an onConnect that raised.
        if isinstance(failure.value, ConnectionDeny):
            self.failHandshake(cast(str, failure.value.reason), failure.value.code)
            return
        self._log.failure("Unexpected exception in onConnect", failure)
        self.failHandshake(
            f"Internal server error: {failure.value}", ConnectionDeny.INTERNAL_SERVER_ERROR
        )

    # Reading, in turns.

    def dataReceived(self, data: bytes) -> None:
        # Autobahn's own logs every read at debug level, formatting its
        # arguments whether or not debug is on; hand the bytes on, nothing else.
        if self._next_turn is not None:
            self.data += data  # its turn comes (a transport that cannot pause)
            return
        self._steps_this_turn = 0
        self._dataReceived(data)

    def processData(self) -> bool:
        # Called for each step of reading a frame.  Past the steps of this
        # turn, stop reading and carry on in the next turn, once the reactor
        # has served the other connections.
        if self._deaf:
            return False
        self._steps_this_turn += 1
        if self._steps_this_turn > STEPS_PER_TURN:
            if self._next_turn is None:
                self._pause_reading()
                # A connection whose frames are being dropped waits a little
                # longer: what it sends is mostly thrown away anyway.
                limiter = self._limiter
                delay = FLOOD_TURN_DELAY if limiter is not None and limiter.dropping else 0
                self._next_turn = self.factory.clock.callLater(delay, self._take_turn)
            return False
        result: bool = super().processData()
        return result

    def _take_turn(self) -> None:
        self._next_turn = None
        self._steps_this_turn = 0
        if self.state == _CLOSED:
            return
        self.consumeData()
        if self._next_turn is None and not self._deaf:
            resume = getattr(self.transport, "resumeProducing", None)
            if resume is not None:
                resume()

    def _pause_reading(self) -> None:
        pause = getattr(self.transport, "pauseProducing", None)
        if pause is not None:
            pause()

    def onMessageEnd(self) -> None:
        # Autobahn's own also fires a "message" event for listeners added
        # with `.on()`, which costs a Future and callbacks per message; the
        # server adds none, so deliver the message and nothing else.
        if not self.failedByMe:
            payload = b"".join(self.message_data)
            self.message_data = []
            self.onMessage(payload, self.message_is_binary)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        if self.state != _OPEN:
            return  # closing: what still arrives is ignored, unlogged
        now = self.factory.clock.seconds()
        keepalive = self._keepalive
        if keepalive is not None:
            keepalive.last_seen = now
        if self._within_limit(now):
            self.frame_received(payload, isBinary, now)

    def onPing(self, payload: bytes) -> None:
        if self.state != _OPEN:
            return
        now = self.factory.clock.seconds()
        keepalive = self._keepalive
        if keepalive is not None:
            keepalive.last_seen = now
        if self._within_limit(now):
            super().onPing(payload)  # the pong

    def onPong(self, payload: bytes) -> None:
        if self.state != _OPEN:
            return
        keepalive = self._keepalive
        if keepalive is None:
            return
        now = self.factory.clock.seconds()
        if self.pongs_are_traffic:
            keepalive.last_seen = now
        if keepalive.answered(payload, now):
            self.factory.wheel.schedule(self, keepalive.deadline)
        else:
            self._within_limit(now)  # pongs nobody asked for count against the rate limit

    # The rate limit (SPEC 5.3).

    def _within_limit(self, now: float) -> bool:
        """
        Whether a frame from the client (a message, a WebSocket ping or an
        unasked-for pong) passes the rate limit.
        """
        limiter = self._limiter
        if limiter is None:
            return True
        verdict = limiter.check(now)
        if verdict is Verdict.PASS:
            return True
        self._over_limit(verdict)
        return False

    def _over_limit(self, verdict: Verdict) -> None:
        self.factory.events.rate_limited()
        if verdict is Verdict.DROP_AND_WARN:
            self.rate_limit_warning()
        elif verdict is Verdict.CLOSE:
            self._log.info(
                "peer {peer_id} closed: over its rate limit for {seconds}s",
                peer_id=self.log_id(),
                seconds=self.factory.settings.flood_timeout,
            )
            self.close_with(CLOSE_POLICY, "rate limit")
            # Nothing it sends now matters: stop reading it at all (the
            # close handshake's timeout drops the connection).
            self._deaf = True
            self._pause_reading()

    # Writing, bounded.

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Every byte for the client passes here: count what the transport
        # could not write yet, and close a client past --max-send-buffer.
        buffer = self._send_buffer
        if buffer is not None and not buffer.add(len(data)):
            self._too_slow(buffer)
            return
        # Autobahn's own formats a debug log line's arguments for every
        # write; an ordinary write is just this.
        transport = self.transport
        if sync or chopsize or self.send_queue or transport is None:
            if self.send_queue is _NO_SEND_QUEUE:
                self.send_queue = deque()
            super().sendData(data, sync, chopsize)
        else:
            transport.write(data)

    def count_unsent(self) -> None:
        """
        Count what the transport holds for the client from now on (SPEC 1.4
        step 7), as its streaming producer.  The factory calls it a turn
        after the upgrade (see `WebSocketFactory.count_unsent`).
        """
        transport = self.transport
        if self.state != _OPEN or transport is None or self._send_buffer is not None:
            return
        buffer = SendBuffer(self.factory.settings.max_send_buffer)
        consumer = cast("IConsumer", transport)
        try:
            consumer.registerProducer(buffer, True)
        except RuntimeError:
            # The HTTP channel of the upgrade still is: the WebSocket owns
            # the transport now.
            consumer.unregisterProducer()
            consumer.registerProducer(buffer, True)
        self._send_buffer = buffer

    def _too_slow(self, buffer: SendBuffer) -> None:
        """
        The client does not read what it is sent: it is closed, and nothing
        more is written for it (the close frame aside).
        """
        self._send_buffer = None
        if self.state != _OPEN:
            return
        self._log.info(
            "peer {peer_id} closed: {held} bytes it did not read, over the send buffer of {limit}",
            peer_id=self.log_id(),
            held=buffer.held,
            limit=buffer.limit,
        )
        self.close_with(CLOSE_POLICY, "too slow")

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        # Every close the server starts passes here: the front's, ours and
        # Autobahn's for a protocol error (1002, 1007, 1009).
        starting = self.state == _OPEN and not isReply
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if starting:
            self.closed_by_server()

    # Keepalive (SPEC 1.4 step 6).

    def wheel_fired(self, now: float) -> float | None:
        """
        Checked by the factory's wheel at the keepalive's deadline.
        """
        keepalive = self._keepalive
        if self.state != _OPEN or keepalive is None:
            return None
        due = keepalive.check(now)
        if due is Due.IDLE:
            self._log.info(
                "peer {peer_id} idle for {timeout}s",
                peer_id=self.log_id(),
                timeout=self.factory.idle_timeout,
            )
            self.close_with(1000)
            return None
        if due is Due.UNANSWERED:
            self.onAutoPingTimeout()  # Autobahn's: drops the connection, not clean
            return None
        if due is Due.PING:
            self.sendPing(keepalive.payload)
        return keepalive.deadline


class WebSocketFactory(WebSocketServerFactory):
    """
    Makes a connection per WebSocket with the server's limits in place of
    Autobahn's permissive defaults, and holds what its connections share:
    the keepalive wheel, the last prepared frame, the origin check.

    Each connection is an instance of a subclass of `protocol` made once
    per factory, holding Autobahn's options as class attributes (Autobahn
    would copy them onto every connection): ``isinstance(c, factory.protocol)``
    holds, ``type(c) is factory.protocol`` does not.
    """

    events: Events = NO_EVENTS
    """Where connections report (see `twisted_signal.events`)."""

    def __init__(
        self,
        settings: Settings,
        clock: IReactorTime,
        *,
        idle_timeout: float,
        origins: tuple[str, ...] | None = None,
    ) -> None:
        # The 101 of the upgrade carries the headers of every other answer.
        headers = {name.decode("ascii"): value.decode("ascii") for name, value in COMMON_HEADERS}
        super().__init__(server=None, reactor=clock, headers=headers)
        self.settings = settings
        self.clock = clock
        self.idle_timeout = idle_timeout
        """A connection with no traffic from its client for this long is closed."""
        if origins is None:
            origins = settings.allowed_origins
        self._origins = frozenset(normal_origin(o) for o in origins)
        # Autobahn's defaults are permissive: no payload limit, no pings, any
        # origin, any number of connections.  The origin and connection
        # checks are the fronts' (SPEC 1.4 orders them after 401 and 404),
        # and so are the pings: Autobahn's make two timers per connection,
        # the wheel one timer for all of them.
        self.wheel = Wheel(clock, _resolution(settings, idle_timeout))
        """The keepalive timers of every connection."""
        self._configured: type[WebSocketConnection] | None = None
        self.setProtocolOptions(
            maxFramePayloadSize=settings.max_message_bytes,
            maxMessagePayloadSize=settings.max_message_bytes,
            failByDrop=False,
            openHandshakeTimeout=settings.handshake_timeout,
            closeHandshakeTimeout=settings.close_timeout,
            trustXForwardedFor=settings.trusted_proxies,
            # Origins are the fronts' to judge; Autobahn would refuse "null"
            # with a 400 before they are asked.
            allowNullOrigin=True,
            webStatus=False,
        )
        # Autobahn runs its handshake timers through txaio's batched timer,
        # which rounds deadlines down to whole seconds; put them on our
        # (injected) clock instead.
        self._batched_timer = _Timers(clock)
        self._last_payload = b""
        self._last_prepared = PreparedMessage(b"", False, False, True)
        self._to_count: list[WebSocketConnection] = []
        self._counting: IDelayedCall | None = None

    def keepalive(self, now: float) -> Keepalive:
        """The keepalive of a connection opened at `now`."""
        settings = self.settings
        return Keepalive(now, self.idle_timeout, settings.ping_interval, settings.ping_timeout)

    def count_unsent(self, connection: WebSocketConnection) -> None:
        """
        Have `connection` count what its transport holds for its client,
        from the next turn of the reactor on: the HTTP channel that did the
        upgrade lets go of the transport only once the upgrade has been
        answered.  One timer for all the connections that open in a turn.
        """
        self._to_count.append(connection)
        if self._counting is None:
            self._counting = self.clock.callLater(0, self._count_unsent)

    def _count_unsent(self) -> None:
        self._counting = None
        connections, self._to_count = self._to_count, []
        for connection in connections:
            connection.count_unsent()

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        super().setProtocolOptions(*args, **kwargs)
        self._configured = None

    def buildProtocol(self, addr: IAddress | None) -> Any:
        # Autobahn copies its 29 options from the factory onto each new
        # protocol (and pretty-prints them for a debug line, whether debug is
        # on or not): a third of a join's CPU and a fifth of an idle
        # connection's memory.  The options are the same for every
        # connection of a factory, so they are class attributes of a
        # subclass made once.
        configured = self._configured
        if configured is None or configured.__bases__ != (self.protocol,):
            protocol = cast("type[WebSocketConnection]", self.protocol)
            configured = self._configured = _configured(protocol, self)
        connection = configured()
        connection.factory = self
        return connection

    def prepared(self, payload: bytes) -> PreparedMessage:
        """
        The WebSocket frame for `payload`.  A room hands the same bytes to
        each recipient of a message, so the last one made is kept.
        """
        if payload is not self._last_payload:
            self._last_payload = payload
            # A server's frames are not masked; never compressed (valid
            # whether or not compression was negotiated, so one frame fits all).
            self._last_prepared = PreparedMessage(payload, False, False, True)
        return self._last_prepared

    def origin_allowed(self, origin: str | None) -> bool:
        """
        Whether an upgrade with this Origin may go on.  Without an allow-list
        every origin may; with one, a request without Origin (not a browser)
        may too, since the list protects users' browsers from other sites.
        """
        if not self._origins or not origin or origin == "*":
            return True
        return normal_origin(origin) in self._origins


def _configured(
    protocol: type[WebSocketConnection], factory: WebSocketFactory
) -> type[WebSocketConnection]:
    """
    `protocol` with `factory`'s Autobahn options as class attributes (and
    none left for Autobahn to copy per connection).
    """
    options: dict[str, Any] = {}
    for name in protocol.CONFIG_ATTRS:
        value = getattr(factory, name)
        # A function (perMessageCompressionAccept) must not become a method.
        options[name] = staticmethod(value) if callable(value) else value
    namespace = {
        **options,
        "CONFIG_ATTRS": (),
        "__module__": protocol.__module__,
        "__qualname__": protocol.__qualname__,
        "__doc__": protocol.__doc__,
    }
    return type(protocol.__name__, (protocol,), namespace)


def _resolution(settings: Settings, idle_timeout: float) -> float:
    """
    How coarse the keepalive timers may be: a second, or a quarter of the
    shortest keepalive setting when that is under four seconds.
    """
    periods = [settings.ping_timeout, idle_timeout]
    if settings.ping_interval:
        periods.append(settings.ping_interval)
    return min(1.0, min(periods) / 4)


class _Timers:
    """
    The ``call_later`` Autobahn asks of its factory's timer, on a Twisted clock.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self._clock = clock

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return _Timer(self._clock.callLater(delay, fn, *args, **kwargs))


class _Timer:
    __slots__ = ("_call",)

    def __init__(self, call: IDelayedCall) -> None:
        self._call = call

    def cancel(self) -> None:
        if self._call.active():
            self._call.cancel()


def normal_origin(origin: str) -> str:
    """An Origin as the allow-list holds it: no spaces, no trailing slash, lower case."""
    return origin.strip().rstrip("/").lower()


class UpgradeResource(WebSocketResource):
    """
    Autobahn's upgrade, on the request twisted.web has parsed (Autobahn's
    own rebuilds the request's bytes and parses them again), letting go of
    the HTTP connection once the WebSocket has taken its transport over.
    """

    def render(self, request: Request) -> bytes | int:
        channel = request.channel
        transport: Any = channel.transport
        if transport is None:
            # HTTP/2 (as Autobahn's): the WebSocket needs the connection itself.
            return cast("bytes", super().render(request))
        factory = cast("WebSocketFactory", self._factory)
        protocol = factory.buildProtocol(transport.getPeer())
        if not protocol:
            request.setResponseCode(500)
            return b""
        channel.transport = None
        # Take the transport over (TLS wraps the protocol).
        if isinstance(transport, ProtocolWrapper):
            transport.wrappedProtocol = protocol
        elif isinstance(transport.protocol, ProtocolWrapper):
            transport.protocol.wrappedProtocol = protocol
        else:
            transport.protocol = protocol
        protocol.makeConnection(transport)
        # twisted.web pauses the transport while it serves a request; no
        # other request follows this one.
        producer = getattr(transport, "_networkProducer", None)
        if producer is not None:
            producer.resumeProducing()
        elif hasattr(transport, "resumeProducing"):
            transport.resumeProducing()
        protocol.upgrade_parsed(
            request.method,
            request.uri,
            request.requestHeaders.getAllRawHeaders(),
            request.content.read() if request.content is not None else b"",
        )
        # The HTTP channel is still the transport's producer: it would keep
        # itself, the upgrade request and its headers (about 6 KB) for as
        # long as the WebSocket lasts.  While a request is being handled it
        # does nothing as a producer anyway.  (A refused handshake has
        # unregistered every producer as it dropped the connection.)
        if protocol.state != _CLOSED:
            cast("IConsumer", transport).unregisterProducer()
        return NOT_DONE_YET
