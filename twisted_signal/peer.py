"""
The server's own front (SPEC 1): one client's connection, from the
handshake to a thin relay between the client and its `Room`.  Whether the
upgrade is let in, and as whom, is `twisted_signal.admission`'s to decide;
the peer turns its `Refused` into the HTTP answer.

The protocol decodes a frame, hands it to the room, and maps domain
exceptions to wire errors; it keeps no signaling logic of its own.  The room
reaches it only through a `PeerHandle`.  What every WebSocket gets whichever
front it speaks (the rate limit on every frame, reading in turns, the send
buffer bound, keepalive, the Autobahn workarounds) is
`twisted_signal.websocket`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, NoReturn, cast
from urllib.parse import unquote
from uuid import uuid4

from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from . import message as wire
from .admission import Admission, Admitted, Held, Refused, Upgrade, same_identity
from .context import AuthData, PeerContext
from .errors import BadRequest
from .hooks import SerialQueue, call, call_logged, then
from .message import InvalidMessage, Message
from .resume import Departure, Link, Resumption
from .room import PeerHandle, RoomAccess
from .rooms import Rooms
from .settings import Settings
from .websocket import WebSocketConnection, WebSocketFactory

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

__all__ = ["Peer", "PeerFactory"]

_PONG = b"pong"
_PING = b"ping"
_LOGGED_ERRORS = 10


class Peer(WebSocketConnection):
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
        self._queue = SerialQueue("peer")
        self._admission: Deferred[None] | None = None
        self._admitted_once = False
        self._finished = False
        self._link: Link | None = None
        self._resuming: tuple[Link, Held] | None = None
        self._closing_by_server = False
        self._client_sent_close = False
        self._superseded = False
        self._errors_sent = 0

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
        self.write(message.to_bytes())

    def stop(self, code: int = 1000) -> None:
        """
        Close the connection (1000 unless told); the peer then leaves its room.
        """
        self.close_with(code)

    # The handshake (SPEC 1.4 steps 1 and 2).

    # Autobahn waits on a Deferred from onConnect (txaio.as_future).
    def onConnect(self, request: ConnectionRequest) -> Deferred[None]:  # type: ignore[override]
        self.peer_id = str(uuid4())
        self._remote = request.peer  # the X-Forwarded-For address when trusted
        return Deferred.fromCoroutine(self._handshake(request))

    async def _handshake(self, request: ConnectionRequest) -> None:
        upgrade = Upgrade(request.path, request.params, request.headers, request.origin)
        verdict = await self.factory.admission.admit(
            upgrade,
            self.peer_id,
            parse=partial(self.parse_request, request),
            init=self._init,
            terminate=self._terminate_refused,
            gone=self._gone,
        )
        if isinstance(verdict, Refused):
            self._refuse_handshake(verdict.status, verdict.reason, verdict.why)
        auth, context, held = verdict.auth, verdict.context, verdict.held
        self.peer_id, self.auth, self.context = auth.peer_id, auth, context
        self.peer_state = verdict.state
        if verdict.link is not None:
            assert held is not None
            self._resuming = (verdict.link, held)
        elif held is not None:
            self._log.info(
                "peer {peer_id} resumed in room {room} from {remote}; it was held on another node",
                peer_id=auth.peer_id,
                room=context.room,
                remote=self._remote,
            )
        self._initialised = True

    def _init(self, context: PeerContext, auth: AuthData) -> Any:
        """
        `on_init`, for admission: the peer is this one from now on.
        """
        self.peer_id, self.auth, self.context = auth.peer_id, auth, context
        return self.on_init(context, auth, self.factory.settings.peer_options)

    def _terminate_refused(self, admitted: Admitted) -> None:
        """
        A peer `on_init` accepted is refused after all: its end.
        """
        self.auth, self.context, self.peer_state = admitted.auth, admitted.context, admitted.state
        self._terminate()

    def _gone(self) -> bool:
        return self.ended

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

    # The open connection (SPEC 1.4 steps 3 to 6).

    def opened(self) -> None:
        assert self.context is not None and self.auth is not None
        factory = self.factory
        factory.events.connected()
        if self._resuming is not None:
            self._resume(*self._resuming)
            return
        room = factory.rooms.access(self.context.room)
        if room is None:
            # The room was stopped between the handshake and now.
            self._error("Could not join room", "no_such_room")
            self.close_with(1000)
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
        room.join(
            PeerHandle(
                self.peer_id, self.auth, link.send, link.close, link.admitted, self, announced=True
            )
        )

    def _resume(self, link: Link, carried: Held) -> None:
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
            self.write(link.queue.popleft())

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

    def frame_received(self, payload: bytes, is_binary: bool, now: float) -> None:
        if is_binary:
            self._error("Invalid message", "binary frames are not supported")
            return
        if payload == _PING:
            self.write(_PONG)
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

    def rate_limit_warning(self) -> None:
        settings = self.factory.settings
        self._error(
            "Rate limited",
            {"rate": settings.rate, "per": settings.rate_period, "burst": settings.rate_burst},
        )

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

    def onCloseFrame(self, code: int, reasonRaw: bytes) -> Any:
        self._client_sent_close = True
        return super().onCloseFrame(code, reasonRaw)

    def closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        if self._initialised:
            self.factory.events.closed(code)
        self._queue.cancel()
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
            clean="clean" if was_clean else "not clean",
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

    def log_id(self) -> str:
        return self.peer_id

    def closed_by_server(self) -> None:
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
        self.write = peer.write
        self.close = peer.close_with
        self.admitted = peer._admitted


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


class PeerFactory(WebSocketFactory):
    """
    Makes a `Peer` (or your subclass) per connection, with Autobahn's
    permissive defaults replaced by the server's (see
    `twisted_signal.websocket.WebSocketFactory`): ``isinstance(peer,
    factory.protocol)`` holds, ``type(peer) is factory.protocol`` does not.
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
        settings = settings or Settings()
        super().__init__(settings, cast("IReactorTime", clock), idle_timeout=settings.idle_timeout)
        self.protocol = peer_class
        self.rooms = rooms
        self.accepting = True
        """False once the server is shutting down: new peers get 503."""
        self.resumption = Resumption(settings.resume_window, self.clock, rooms.token_prefix)
        rooms.give_away_with(self._give_away)
        self.admission = Admission(self)
        """Whether an upgrade request may become a peer (SPEC 1.4 step 2)."""

    def same_identity(self, held: Held, identity: str | None) -> bool:
        """
        With tokens, only the same identity may take a held peer over.
        """
        return same_identity(self.settings, held, identity)

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
