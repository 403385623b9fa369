"""
One WebSocket connection: the handshake checks, then a thin relay between
the client and its `Room`.

The protocol decodes a frame, hands it to the room, and maps domain
exceptions to wire errors; it keeps no signaling logic of its own.  The room
reaches it only through a `PeerHandle`.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, cast
from urllib.parse import unquote
from uuid import uuid4

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import PreparedMessage, WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from . import message as wire
from .auth import token_from_request
from .context import AuthData, PeerContext
from .errors import BadRequest, Unauthorized
from .events import NO_EVENTS, Events
from .headers import COMMON_HEADERS
from .hooks import SerialQueue, call, call_logged, then
from .limits import RateLimiter, SendBuffer, Verdict
from .message import InvalidMessage, Message
from .resume import Departure, Link, Resumption
from .room import PeerHandle, RoomAccess
from .rooms import Rooms, is_room_name
from .settings import Settings
from .wheel import Wheel

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IConsumer, IDelayedCall, IReactorTime

__all__ = ["Peer", "PeerFactory"]

_OPEN = WebSocketProtocol.STATE_OPEN
_NO_SEND_QUEUE = cast("deque[Any]", ())
"""Autobahn's send queue until a write needs one (a write to it would fail loudly)."""
_PONG = b"pong"
_PING = b"ping"
_CLOSE_POLICY = 1008
_STEPS_PER_TURN = 128
"""At most this many steps of reading frames (a frame is one or two) are
taken per connection and turn of the reactor: a client that floods cannot
keep the others waiting."""
_FLOOD_TURN_DELAY = 0.01
"""How long a connection whose frames are being dropped waits between turns."""
_LOGGED_ERRORS = 10
_REFUSAL_HEADERS = [
    (name.decode("ascii"), value.decode("ascii"))
    for name, value in (*COMMON_HEADERS, (b"Cache-Control", b"no-store"))
]


async def _resolve(result: Any) -> Any:
    if isinstance(result, Deferred):
        return await result
    return result


class Peer(WebSocketServerProtocol):
    """
    The connection of one client.  Subclass it and override:

    - `parse_request(request)`: return ``(credentials, metadata, room_name)``
      from Autobahn's `ConnectionRequest`; raise `BadRequest` for a 400;
    - `on_init(context, auth, options)`: authenticate; raise `Unauthorized`
      for a 401; the return value becomes `peer_state`;
    - `on_receive(message, context)`: return the message (or a changed one)
      to forward it, None to drop it;
    - `on_terminate(context)`: the peer has gone.

    Each may return a plain value, a `Deferred`, or be ``async def``.  A peer
    that resumes (SPEC 5.4) on a new connection keeps its id, credentials and
    `peer_state`: `on_init` and `on_terminate` are called once per peer, not
    once per connection (in cluster mode, once per node: a peer that resumes
    on another node runs `on_init` there and `on_terminate` here).
    """

    factory: PeerFactory
    maxMessagePayloadSize: int  # the factory's option (see PeerFactory.buildProtocol)
    _log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self.peer_id = ""
        self.peer_state: Any = None
        self.room: RoomAccess | None = None
        self.context: PeerContext | None = None
        self.auth: AuthData | None = None
        self._remote = ""
        self._initialised = False
        self._gone = False
        self._queue = SerialQueue("peer")
        self._admission: Deferred[None] | None = None
        self._admitted_once = False
        self._wheel_slot: int | None = None
        self._last_seen = 0.0
        self._ping_sent = 0.0
        """When the unanswered ping went out (0: none is)."""
        self._ping_payload = b""
        """What the unanswered ping carried: only a pong with it answers."""
        self._send_buffer: SendBuffer | None = None
        self._finished = False
        self._next_ping = 0.0
        self._limiter: RateLimiter | None = None
        self._link: Link | None = None
        self._resuming: tuple[Link, _Carried] | None = None
        self._closing_by_server = False
        self._client_sent_close = False
        self._superseded = False
        self._errors_sent = 0
        self._steps_this_turn = 0
        self._next_turn: IDelayedCall | None = None
        self._deaf = False

    # User callbacks.

    def parse_request(self, request: ConnectionRequest) -> Any:
        """
        The built-in peer needs no credentials: the room is the path segment
        after ``/socket/``, credentials are empty and metadata is None.
        """
        return {}, None, room_from_path(request.path)

    def on_init(self, context: PeerContext, auth: AuthData, options: Any) -> Any:
        """
        Authenticate the peer; raise `Unauthorized` to answer 401.
        """

    def on_receive(self, message: Message, context: PeerContext) -> Any:
        """
        A message from the client, with ``from`` already set to its id.
        """
        return message

    def on_terminate(self, context: PeerContext) -> Any:
        """
        The peer has gone (called once, before the room's `on_leave`).
        """

    # Public API.

    def send_to_client(self, message: Message) -> None:
        """
        Send `message` to this peer's client as it is.
        """
        self._write(message.to_bytes())

    def stop(self, code: int = 1000) -> None:
        """
        Close the connection (1000 unless told); the peer then leaves its room.
        """
        self._close(code)

    # The handshake (SPEC 1.4 steps 1 and 2).

    # Autobahn waits on a Deferred from onConnect (txaio.as_future).
    def onConnect(self, request: ConnectionRequest) -> Deferred[None]:  # type: ignore[override]
        self.peer_id = str(uuid4())
        self._remote = request.peer  # the X-Forwarded-For address when trusted
        return Deferred.fromCoroutine(self._handshake(request))

    async def _handshake(self, request: ConnectionRequest) -> None:
        credentials, metadata, room_name = await self._parse(request)
        credentials = self._check_token(request, room_name, credentials)
        resume_token = _first(request.params.get("resume"))
        held = self._resumable(resume_token, room_name, credentials)
        if held is None and resume_token is not None and self._gate(request, room_name) is None:
            # Only a connection that will be let in asks another node to give
            # its peer up: that node cannot take the peer back.
            held = await self._resumable_elsewhere(resume_token, room_name, credentials)
        if resume_token is not None and held is None:
            self.factory.events.resume("refused")
        if held is not None:
            # The same peer on a new connection: no second on_init.
            self.peer_id = held.auth.peer_id
            self.auth, self.context, self.peer_state = held.auth, held.context, held.state
        else:
            self.auth = AuthData(self.peer_id, credentials, metadata)
            self.context = PeerContext(self.peer_id, room_name)
            await self._init(self.context, self.auth)
        # The peer is accepted: from here on, whatever ends it must call
        # on_terminate exactly once (a resumed peer's comes at its very end).
        refusal = self._gate(request, room_name)
        if refusal is not None:
            if held is None or held.peer is None:
                self._terminate()
            self._refuse_handshake(*refusal)
        if held is not None and held.peer is None:
            # Held on another node, which has handed the peer over: it
            # joins the room's relay as itself (see docs/cluster.md).
            self.factory.events.resume("resumed")
        elif held is not None:
            claimed = self.factory.resumption.claim(resume_token, room_name)
            assert claimed is not None  # nothing awaited since _resumable
            self._resuming = (claimed[0], held)
        self._initialised = True

    async def _parse(self, request: ConnectionRequest) -> tuple[dict[str, Any], Any, str]:
        """
        `parse_request`, checked: a bad request or room name is a 400.
        """
        try:
            credentials, metadata, room_name = await _resolve(call(self.parse_request, request))
            if not isinstance(room_name, str) or not is_room_name(room_name):
                raise BadRequest("not a valid room name")
        except BadRequest:
            self._refuse_handshake(400, "Bad Request")
        except Exception:
            self._log.failure("Error in parse_request")
            self._refuse_handshake(500, "Internal Server Error")
        return dict(credentials or {}), metadata, room_name

    def _check_token(
        self, request: ConnectionRequest, room_name: str, credentials: dict[str, Any]
    ) -> dict[str, Any]:
        """
        With a server-wide token verifier, the token's claims become the
        credentials; a bad token is a 401.
        """
        verifier = self.factory.settings.token_verifier
        if verifier is None:
            return credentials
        try:
            token = token_from_request(request.params, request.headers)
            return verifier.verify(token, room_name)
        except Unauthorized as e:
            self._refuse_handshake(401, "Unauthorized", why=str(e))

    def _resumable(
        self, token: str | None, room_name: str, credentials: dict[str, Any]
    ) -> _Carried | None:
        """
        What this connection takes over with its resume token, if anything.
        With tokens, only the same identity may take a peer over.
        """
        held: _Carried | None = self.factory.resumption.peek(token, room_name)
        if held is None:
            return None
        if not self.factory.same_identity(held, AuthData("", credentials).identity):
            return None
        return held

    async def _resumable_elsewhere(
        self, token: str, room_name: str, credentials: dict[str, Any]
    ) -> _Carried | None:
        """
        A token another node of a cluster issued: that node gives its peer
        up, and this connection carries it on.  Per-connection state cannot
        cross processes, so `on_init` runs here again with the peer's id and
        credentials (and `on_terminate` ran there).
        """
        factory = self.factory
        if not factory.resumption.enabled:
            return None
        with_tokens = factory.settings.token_verifier is not None
        identity = AuthData("", credentials).identity if with_tokens else None
        claim = factory.rooms.claim_elsewhere(token, room_name, identity)
        auth = None if claim is None else await claim
        if auth is None:
            return None
        self.peer_id = auth.peer_id
        context = PeerContext(auth.peer_id, room_name)
        await self._init(context, auth)
        self._log.info(
            "peer {peer_id} resumed in room {room} from {remote}; it was held on another node",
            peer_id=auth.peer_id,
            room=room_name,
            remote=self._remote,
        )
        return _Carried(auth, context, self.peer_state)

    async def _init(self, context: PeerContext, auth: AuthData) -> None:
        """
        `on_init`: `Unauthorized` is a 401, any other failure a 500.
        """
        try:
            options = self.factory.settings.peer_options
            self.peer_state = await _resolve(call(self.on_init, context, auth, options))
        except Unauthorized:
            self._refuse_handshake(401, "Unauthorized")
        except Exception:
            self._log.failure("Error in on_init of peer {peer_id}", peer_id=self.peer_id)
            self._refuse_handshake(500, "Internal Server Error")

    def _gate(self, request: ConnectionRequest, room_name: str) -> tuple[int, str] | None:
        """
        The checks after authentication, in the contract's order: 404, 403,
        503 (or the client has gone meanwhile).
        """
        factory = self.factory
        if self._gone:
            return 400, "Bad Request"
        rooms = factory.rooms
        if room_name not in rooms and not rooms.creates_on_demand:
            return 404, "Not Found"
        if not factory.origin_allowed(request.origin):
            return 403, "Forbidden"
        if not factory.accepting or factory.countConnections > factory.settings.max_connections:
            return 503, "Service Unavailable"
        return None

    def _refuse_handshake(self, status: int, reason: str, why: str = "") -> NoReturn:
        self.factory.events.handshake_rejected(status)
        self._log.info(
            "refused connection from {remote}: {status} {reason}{why}",
            remote=self._remote,
            status=status,
            reason=reason,
            why=f" ({why})" if why else "",
        )
        raise ConnectionDeny(status, reason)

    def failHandshake(self, reason: str, code: int = 400, responseHeaders: Any = None) -> None:
        # Autobahn writes its refusals itself, past twisted.web: give them
        # the headers of every other answer.
        headers = [*(responseHeaders or ()), *_REFUSAL_HEADERS]
        super().failHandshake(reason, code, headers)

    # The open connection (SPEC 1.4 steps 3 to 6).

    def onOpen(self) -> None:
        self._forget_handshake()
        if self._gone:
            return
        assert self.context is not None and self.auth is not None
        factory = self.factory
        factory.events.connected()
        settings = factory.settings
        now = factory.clock.seconds()
        self._last_seen = now
        self._next_ping = now + settings.ping_interval
        idle_at = now + settings.idle_timeout
        factory.wheel.schedule(
            self, min(idle_at, self._next_ping) if settings.ping_interval else idle_at
        )
        self._limiter = RateLimiter(
            settings.rate, settings.rate_period, settings.rate_burst, settings.flood_timeout, now
        )
        factory.count_unsent(self)
        if self._resuming is not None:
            self._resume(*self._resuming)
            return
        room = factory.rooms.access(self.context.room)
        if room is None:
            # The room was stopped between the handshake and now.
            self._error("Could not join room", "no_such_room")
            self._close(1000)
            return
        self.room = room
        self._log.info(
            "peer {peer_id} connected to room {room} from {remote}",
            peer_id=self.peer_id,
            room=room.name,
            remote=self._remote,
        )
        admission: Deferred[None] = Deferred()
        self._admission = admission
        self._queue.run(lambda: admission)
        self._link = link = Link(_Carrier(self))
        room.join(PeerHandle(self.peer_id, self.auth, link.send, link.close, link.admitted, self))

    def _resume(self, link: Link, carried: _Carried) -> None:
        self._resuming = None
        self._link = link
        link.connection = _Carrier(self)
        self.room = room = self.factory.rooms.find(carried.context.room)
        if room is not None:
            room._moved(self.peer_id, self)
        self.factory.events.resume("resumed")
        self._log.info(
            "peer {peer_id} resumed in room {room} from {remote} ({queued} queued)",
            peer_id=self.peer_id,
            room=carried.context.room,
            remote=self._remote,
            queued=len(link.queue),
        )
        others = [p for p in room.peers if p != self.peer_id] if room is not None else []
        self._admitted(others)
        while link.queue and link.connection is not None:
            self._write(link.queue.popleft())

    def _ice_servers(self) -> list[dict[str, Any]]:
        return self.factory.settings.ice.servers_for(self.peer_id, self.factory.clock.seconds())

    def _admitted(self, peer_ids: list[str]) -> None:
        self._admitted_once = True
        extra: dict[str, Any] = self.factory.settings.keepalive()
        link, context = self._link, self.context
        if link is not None and context is not None:
            token = self.factory.resumption.issue(
                link, context.room, self._carry, self._expired, self._supersede
            )
            if token is not None:
                extra["resume_token"] = token
        self.send_to_client(
            wire.authenticated(self.peer_id, peer_ids, self._ice_servers(), **extra)
        )
        admission, self._admission = self._admission, None
        if admission is not None and not admission.called:
            admission.callback(None)

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
        if self._steps_this_turn > _STEPS_PER_TURN:
            if self._next_turn is None:
                self._pause_reading()
                # A peer whose frames are being dropped waits a little
                # longer: what it sends is mostly thrown away anyway.
                limiter = self._limiter
                delay = _FLOOD_TURN_DELAY if limiter is not None and limiter.dropping else 0
                self._next_turn = self.factory.clock.callLater(delay, self._take_turn)
            return False
        result: bool = super().processData()
        return result

    def _take_turn(self) -> None:
        self._next_turn = None
        self._steps_this_turn = 0
        if self.state == WebSocketProtocol.STATE_CLOSED:
            return
        self.consumeData()
        if self._next_turn is None and not self._deaf:
            transport = self.transport
            resume = getattr(transport, "resumeProducing", None)
            if resume is not None:
                resume()

    def _pause_reading(self) -> None:
        pause = getattr(self.transport, "pauseProducing", None)
        if pause is not None:
            pause()

    def _connectionMade(self) -> None:
        super()._connectionMade()
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
        self._last_seen = now
        if not self._within_limit(now):
            return
        if isBinary:
            self._error("Invalid message", "binary frames are not supported")
            return
        if payload == _PING:
            self._write(_PONG)
            return
        try:
            message = Message.from_json(payload, from_=self.peer_id)
        except InvalidMessage as e:
            self._error(e.description, e.details)
            return
        if message.event == "ice_servers" and message.to == (self.peer_id,):
            # A request for fresh ICE credentials, answered instead of echoed.
            self.send_to_client(Message("ice_servers", self._ice_servers(), None, (self.peer_id,)))
            return
        self._queue.run(self._receive, message, now)

    def _within_limit(self, now: float) -> bool:
        """
        Whether a frame from the client (a message, a ``ping`` text frame,
        a WebSocket ping or pong) passes the rate limit (SPEC 5.3).
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
        settings = self.factory.settings
        self.factory.events.rate_limited()
        if verdict is Verdict.DROP_AND_WARN:
            self._error(
                "Rate limited",
                {"rate": settings.rate, "per": settings.rate_period, "burst": settings.rate_burst},
            )
        elif verdict is Verdict.CLOSE:
            self._log.info(
                "peer {peer_id} closed: over its rate limit for {seconds}s",
                peer_id=self.peer_id,
                seconds=settings.flood_timeout,
            )
            self._close(_CLOSE_POLICY, "rate limit")
            # Nothing it sends now matters: stop reading it at all (the
            # close handshake's timeout drops the connection).
            self._deaf = True
            self._pause_reading()

    def _receive(self, message: Message, received: float) -> Any:
        return then(
            call(self.on_receive, message, self.context), lambda m: self._submit(m, received)
        )

    def _submit(self, message: Any, received: float) -> None:
        if message is None or self.room is None:
            return
        if not isinstance(message, Message):
            self._log.error(
                "on_receive of peer {peer_id} returned {value!r}, not a Message or None",
                peer_id=self.peer_id,
                value=message,
            )
            return
        self.room.submit(message, received)

    def onPing(self, payload: bytes) -> None:
        if self.state != _OPEN:
            return
        self._last_seen = now = self.factory.clock.seconds()
        if self._within_limit(now):
            super().onPing(payload)  # the pong

    def onPong(self, payload: bytes) -> None:
        if self.state != _OPEN:
            return
        self._last_seen = now = self.factory.clock.seconds()
        if self._ping_sent and payload == self._ping_payload:
            # Answered: the next ping is due an interval from now, which may
            # come before the answered ping's timeout the wheel waits for.
            self._ping_sent = 0.0
            self._next_ping = now + self.factory.settings.ping_interval
            self.factory.wheel.schedule(self, self._next_ping)
        elif not self._within_limit(now):
            return  # pongs nobody asked for count against the rate limit

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> Any:
        self._client_sent_close = True
        return super().onCloseFrame(code, reasonRaw)

    def _wheel_fired(self, now: float) -> float | None:
        """
        Keepalive (SPEC 1.4 step 6), checked by the factory's wheel at the
        next deadline: the idle timeout, the next ping, or a ping's timeout.
        """
        if self.state != _OPEN:
            return None
        settings = self.factory.settings
        idle_at = self._last_seen + settings.idle_timeout
        if now >= idle_at:
            self._log.info(
                "peer {peer_id} idle for {timeout}s",
                peer_id=self.peer_id,
                timeout=settings.idle_timeout,
            )
            self._close(1000)
            return None
        if not settings.ping_interval:
            return idle_at
        ping_at = self._ping(now, settings)
        return None if ping_at is None else min(idle_at, ping_at)

    def _ping(self, now: float, settings: Settings) -> float | None:
        """
        Send the ping that is due, or drop a peer that has not answered its
        ping in time.  Only a pong with the ping's payload answers it (it
        carries 8 random bytes): a client that sends but never reads cannot
        make one, so other traffic, even unasked-for pongs, does not keep it
        alive (SPEC 1.4 step 6).
        """
        sent = self._ping_sent
        if sent:
            timeout_at = sent + settings.ping_timeout
            if now < timeout_at:
                return timeout_at
            self.onAutoPingTimeout()  # Autobahn's: drops the connection, not clean
            return None
        if now < self._next_ping:
            return self._next_ping
        self._ping_sent = now
        self._ping_payload = os.urandom(8)
        self.sendPing(self._ping_payload)
        return now + settings.ping_timeout

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._gone:
            return
        self._gone = True
        if self._initialised:
            self.factory.events.closed(code)
        self.factory.wheel.cancel(self)
        self._queue.cancel()
        if self._next_turn is not None and self._next_turn.active():
            self._next_turn.cancel()
        self._next_turn = None
        if not self._initialised or self._superseded:
            return
        room_name = self.context.room if self.context is not None else None
        if self._resuming is not None:
            # Lost between the handshake and onOpen, with the token used up:
            # nobody can resume this peer any more, so it leaves.
            self._link, _ = self._resuming
            self._resuming = None
            self._finish()
            return
        self._log.info(
            "peer {peer_id} disconnected from room {room} ({remote}): code {code}, {clean}, {by}",
            peer_id=self.peer_id,
            room=room_name,
            remote=self._remote,
            code=code,
            clean="clean" if wasClean else "not clean",
            by="closed by the server"
            if self._closing_by_server
            else "closed by the client"
            if self._client_sent_close
            else "connection lost",
        )
        if self._finished:
            return  # it left when the server closed it
        link = self._link
        if link is not None and self._may_resume() and self.factory.resumption.hold(link):
            self._log.info(
                "peer {peer_id} held for {window}s to resume",
                peer_id=self.peer_id,
                window=self.factory.resumption.window,
            )
            self.factory.events.resume("held")
            return
        self._finish()

    def _may_resume(self) -> bool:
        """
        Lost without a close frame from the client, not closed by us, and the
        server is not shutting down: the client may come back as itself.
        """
        return (
            self._admitted_once
            and not self._client_sent_close
            and not self._closing_by_server
            and self.factory.accepting
        )

    def _carry(self) -> _Carried:
        assert self.auth is not None and self.context is not None
        return _Carried(self.auth, self.context, self.peer_state, self)

    def _supersede(self) -> None:
        """
        A new connection has resumed this peer while this one still looked
        open (its client knew it was dead before we did): cut it, quietly.
        """
        self._superseded = True
        if self._link is not None:
            self._link.connection = None
        self._queue.cancel()
        self._log.info(
            "peer {peer_id} resumed elsewhere; dropping its old connection from {remote}",
            peer_id=self.peer_id,
            remote=self._remote,
        )
        self.dropConnection(abort=True)

    def _expired(self) -> None:
        """
        Held for resume and nobody came back in time (or the room closed).
        """
        self.factory.events.resume("expired")
        self._finish()

    def _finish(self) -> None:
        """
        The peer is gone for good: on_terminate, then leave the room.
        """
        if self._finished:
            return
        self._finished = True
        if self._link is not None:
            self.factory.resumption.forget(self._link)
        result = self._terminate()
        room = self.room
        if room is None and self.context is not None:
            room = self.factory.rooms.find(self.context.room)
        if room is not None:
            peer_id = self.peer_id
            then(result, lambda _: room.leave(peer_id))

    def _terminate(self) -> Any:
        assert self.context is not None
        return call_logged("on_terminate", self.on_terminate, self.context)

    # Writing.

    def _error(self, description: str, details: Any) -> None:
        # One log event per error, but a client that sends garbage on purpose
        # must not flood the log: the first few of each connection only.
        self._errors_sent += 1
        if self._errors_sent <= _LOGGED_ERRORS:
            self._log.info(
                "error {description!r} to peer {peer_id} in room {room}{more}",
                description=description,
                peer_id=self.peer_id,
                room=self.context.room if self.context is not None else None,
                more=" (further errors to this peer are not logged)"
                if self._errors_sent == _LOGGED_ERRORS
                else "",
            )
        self.factory.events.error_sent(description)
        self.send_to_client(wire.error(self.peer_id, description, details))

    def sendData(self, data: bytes, sync: bool = False, chopsize: int | None = None) -> None:
        # Every byte for the client passes here: count what the transport
        # could not write yet, and close a peer past --max-send-buffer.
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

    def _count_unsent(self) -> None:
        """
        Count what the transport holds for the client from now on (SPEC 1.4
        step 7), as its streaming producer.
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
        The client does not read what it is sent: it is closed and leaves,
        and nothing more is written for it (the close frame aside).
        """
        self._send_buffer = None
        if self.state != _OPEN:
            return
        self._log.info(
            "peer {peer_id} closed: {held} bytes it did not read, over the send buffer of {limit}",
            peer_id=self.peer_id,
            held=buffer.held,
            limit=buffer.limit,
        )
        self._close(_CLOSE_POLICY, "too slow")

    def _write(self, payload: bytes) -> None:
        if self.state != _OPEN:
            return
        # A prepared frame is built once however many peers a fan-out writes
        # it to.  It also escapes maxMessagePayloadSize, which Autobahn's
        # sendMessage applies to what we send: the limit is for clients, and
        # a relayed message is a little larger than the frame it came in.
        self.sendPreparedMessage(self.factory.prepared(payload))

    def _close(self, code: int, reason: str | None = None) -> None:
        if self.state != _OPEN:
            return
        # sendClose refuses 1001 and 1008; the frame itself is fine.
        self.sendCloseFrame(code, None if reason is None else reason.encode(), isReply=False)

    def sendCloseFrame(
        self, code: int | None = None, reasonUtf8: bytes | None = None, isReply: bool = False
    ) -> None:
        # Every close the server starts passes here: ours (_close) and
        # Autobahn's for a protocol error (1002, 1007, 1009).
        starting = self.state == _OPEN and not isReply
        super().sendCloseFrame(code, reasonUtf8, isReply)
        if starting:
            self._closed_by_server()

    def _closed_by_server(self) -> None:
        """
        The server closed this peer (a protocol error, its rate limit, too
        slow, idle, an operator, its room stopping): it is never held for
        resume, and it leaves now, whether or not its client ever answers
        the close (SPEC 1.4 step 4).
        """
        self._closing_by_server = True
        if self._link is not None:
            # Void its token now, so a client that reconnects before the
            # close is done joins as a new peer instead of taking this one over.
            self.factory.resumption.forget(self._link)
        if self._initialised and not self._superseded and self._resuming is None:
            self._queue.cancel()
            self._finish()


@dataclass(frozen=True, slots=True)
class _Carried:
    """
    What a held peer carries over to the connection that resumes it.
    """

    auth: AuthData
    context: PeerContext
    state: Any
    peer: Peer | None = None
    """The connection that held it here; None when it was held on another node."""


class _Carrier:
    """
    A `resume.Connection` over a `Peer`'s private writers.
    """

    __slots__ = ("admitted", "close", "write")

    def __init__(self, peer: Peer) -> None:
        self.write = peer._write
        self.close = peer._close
        self.admitted = peer._admitted


def _first(values: list[str] | None) -> str | None:
    return values[0] if values else None


def room_from_path(path: str) -> str:
    """
    The room of a ``.../socket/<room>/`` path (the trailing slash is
    optional), URL-decoded.

    @raise BadRequest: the path does not end that way.
    """
    segments = path.split("/")
    if segments and segments[-1] == "":
        segments.pop()
    if len(segments) < 2 or segments[-2] != "socket":
        raise BadRequest("expected /socket/<room>/")
    try:
        return unquote(segments[-1], errors="strict")
    except UnicodeDecodeError:
        raise BadRequest("the room name is not UTF-8") from None


class PeerFactory(WebSocketServerFactory):
    """
    Makes a `Peer` (or your subclass) per connection, with Autobahn's
    permissive defaults replaced by the server's.

    Each peer is an instance of a subclass of `protocol` made once per
    factory, holding Autobahn's options as class attributes (Autobahn would
    copy them onto every connection): ``isinstance(peer, factory.protocol)``
    holds, ``type(peer) is factory.protocol`` does not.
    """

    def __init__(
        self,
        rooms: Rooms,
        *,
        peer_class: type[Peer] = Peer,
        settings: Settings | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        # The 101 of the upgrade carries the headers of every other answer.
        headers = {name.decode("ascii"): value.decode("ascii") for name, value in COMMON_HEADERS}
        super().__init__(server=None, reactor=clock, headers=headers)
        self.protocol = peer_class
        self.rooms = rooms
        self.accepting = True
        """False once the server is shutting down: new peers get 503."""
        self.events: Events = NO_EVENTS
        """Where connections report (see `twisted_signal.events`)."""
        self.settings = settings = settings or Settings()
        self.clock: IReactorTime = cast("IReactorTime", clock)
        self.resumption = Resumption(settings.resume_window, self.clock, rooms.token_prefix)
        rooms.give_away_with(self._give_away)
        self._origins = frozenset(_normal_origin(o) for o in settings.allowed_origins)
        # Autobahn's defaults are permissive: no payload limit, no pings, any
        # origin, any number of connections.  The origin and connection
        # checks are ours (the contract orders them after 401 and 404), and
        # so are the pings: Autobahn's make two timers per peer, the wheel
        # one timer for all of them.
        self.wheel = Wheel(self.clock, _resolution(settings))
        """The keepalive timers of every peer (see `Peer._wheel_fired`)."""
        self._configured: type[Peer] | None = None
        self.setProtocolOptions(
            maxFramePayloadSize=settings.max_message_bytes,
            maxMessagePayloadSize=settings.max_message_bytes,
            failByDrop=False,
            openHandshakeTimeout=settings.handshake_timeout,
            closeHandshakeTimeout=settings.close_timeout,
            trustXForwardedFor=settings.trusted_proxies,
            # Origins are ours to judge (403, after 401 and 404); Autobahn
            # would refuse "null" with a 400 before we are asked.
            allowNullOrigin=True,
            webStatus=False,
        )
        # Autobahn runs its ping and handshake timers through txaio's batched
        # timer, which rounds deadlines down to whole seconds; put them on our
        # (injected) clock instead.
        self._batched_timer = _Timers(self.clock)
        self._last_payload = b""
        self._last_prepared = PreparedMessage(b"", False, False, True)
        self._to_count: list[Peer] = []
        self._counting: IDelayedCall | None = None

    def count_unsent(self, peer: Peer) -> None:
        """
        Have `peer` count what its transport holds for its client, from the
        next turn of the reactor on: the HTTP channel that did the upgrade
        lets go of the transport only once the upgrade has been answered.
        One timer for all the peers that open in a turn.
        """
        self._to_count.append(peer)
        if self._counting is None:
            self._counting = self.clock.callLater(0, self._count_unsent)

    def _count_unsent(self) -> None:
        self._counting = None
        peers, self._to_count = self._to_count, []
        for peer in peers:
            peer._count_unsent()

    def setProtocolOptions(self, *args: Any, **kwargs: Any) -> None:
        super().setProtocolOptions(*args, **kwargs)
        self._configured = None

    def buildProtocol(self, addr: IAddress | None) -> Any:
        # Autobahn copies its 29 options from the factory onto each new
        # protocol (and pretty-prints them for a debug line, whether debug is
        # on or not): a third of a join's CPU and a fifth of an idle
        # connection's memory.  The options are the same for every peer of a
        # factory, so they are class attributes of a subclass made once.
        configured = self._configured
        if configured is None or configured.__bases__ != (self.protocol,):
            peer_class = cast("type[Peer]", self.protocol)
            configured = self._configured = _configured(peer_class, self)
        peer = configured()
        peer.factory = self
        return peer

    def same_identity(self, held: _Carried, identity: str | None) -> bool:
        """
        With tokens, only the same identity may take a held peer over.
        """
        return self.settings.token_verifier is None or held.auth.identity == identity

    def _give_away(self, token: str, room: str, identity: str | None) -> Departure | None:
        """
        Hand a peer held here to a connection on another node, as
        `Resumption.claim` does on this one (a live old connection is cut
        without a leave).  Its end here is ``on_terminate`` and no ``left``.
        """
        held: _Carried | None = self.resumption.peek(token, room)
        if held is None or held.peer is None or not self.same_identity(held, identity):
            return None
        peer = held.peer
        claimed = self.resumption.claim(token, room)
        assert claimed is not None  # peeked just now
        return Departure(held.auth, claimed[0], peer._terminate, peer._expired)

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
        return _normal_origin(origin) in self._origins


def _configured(peer_class: type[Peer], factory: PeerFactory) -> type[Peer]:
    """
    `peer_class` with `factory`'s Autobahn options as class attributes (and
    none left for Autobahn to copy per connection).
    """
    options: dict[str, Any] = {}
    for name in peer_class.CONFIG_ATTRS:
        value = getattr(factory, name)
        # A function (perMessageCompressionAccept) must not become a method.
        options[name] = staticmethod(value) if callable(value) else value
    namespace = {
        **options,
        "CONFIG_ATTRS": (),
        "__module__": peer_class.__module__,
        "__qualname__": peer_class.__qualname__,
        "__doc__": peer_class.__doc__,
    }
    return type(peer_class.__name__, (peer_class,), namespace)


def _resolution(settings: Settings) -> float:
    """
    How coarse the keepalive timers may be: a second, or a quarter of the
    shortest keepalive setting when that is under four seconds.
    """
    periods = [settings.ping_timeout, settings.idle_timeout]
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


def _normal_origin(origin: str) -> str:
    return origin.strip().rstrip("/").lower()
