"""
The server's own front (SPEC 1): one client's connection, from the
handshake to a thin relay between the client and its `Room`.  Whether the
upgrade is let in, and as whom, is `twisted_signal.admission`'s to decide;
the peer turns its `Refused` into the HTTP answer.

The protocol decodes a frame, hands it to the room, and maps domain
exceptions to wire errors; it keeps no signaling logic of its own.  The
peer's life cycle (joined, held, resumed, given away, finished) is its
`twisted_signal.session.Session`'s, and the room reaches the peer only
through the session's `PeerHandle`.  What every WebSocket gets whichever
front it speaks (the rate limit on every frame, reading in turns, the send
buffer bound, keepalive, the Autobahn workarounds) is
`twisted_signal.websocket`'s.
"""

from __future__ import annotations

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
from .resume import Departure, Resumption
from .room import RoomAccess
from .rooms import Rooms
from .session import Session, give_away
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
    _session: Session | None = None
    _state: Any = None

    def __init__(self) -> None:
        super().__init__()
        self.peer_id = ""
        self.room: RoomAccess | None = None
        self.context: PeerContext | None = None
        self.auth: AuthData | None = None
        self._remote = ""
        self._queue = SerialQueue("peer")
        self._admission: Deferred[None] | None = None
        self._front: _PeerFront | None = None
        self._resuming = False
        self._closing_by_server = False
        self._client_sent_close = False
        self._superseded = False
        self._errors_sent = 0

    @property
    def peer_state(self) -> Any:
        """
        What `on_init` returned; a resumed peer's is carried over to its new
        connection (set it to keep something for the peer's whole life).
        """
        session = self._session
        return self._state if session is None else session.state

    @peer_state.setter
    def peer_state(self, state: Any) -> None:
        session = self._session
        if session is None:
            self._state = state
        else:
            session.state = state

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
        self._front = front = _PeerFront(self)
        if verdict.link is not None:
            # Held here (or still looking open): this connection carries it on.
            assert isinstance(held, Session)
            self._session = held
            self._resuming = True
            held.taken()
            return
        if held is not None:
            self._log.info(
                "peer {peer_id} resumed in room {room} from {remote}; it was held on another node",
                peer_id=auth.peer_id,
                room=context.room,
                remote=self._remote,
            )
        self._session = Session(self.factory, auth, context, verdict.state, front)

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
        session, front = self._session, self._front
        assert session is not None and front is not None
        factory = self.factory
        factory.events.connected()
        if self._resuming:
            self._resuming = False
            self._log.info(
                "peer {peer_id} resumed in room {room} from {remote} ({queued} queued)",
                peer_id=self.peer_id,
                room=session.context.room,
                remote=self._remote,
                queued=session.queued,
            )
            session.resume(front)
            self.room = session.room
            return
        room = factory.rooms.access(session.context.room)
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
        session.join(room, announced=True)

    def _ice_servers(self) -> list[dict[str, Any]]:
        return self.factory.settings.ice.servers_for(self.peer_id, self.factory.clock.seconds())

    def _admitted(self, peer_ids: list[str], resume_token: str | None) -> None:
        extra: dict[str, Any] = self.factory.settings.keepalive()
        if resume_token is not None:
            extra["resume_token"] = resume_token
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
        session, front = self._session, self._front
        if session is not None:
            self.factory.events.closed(code)
        self._queue.cancel()
        if session is None or front is None or self._superseded:
            return
        if self._resuming:
            # Lost between the handshake and onOpen, with the token used up.
            self._resuming = False
            session.abandon(front)
            return
        self._log.info(
            "peer {peer_id} disconnected from room {room} ({remote}): code {code}, {clean}, {by}",
            peer_id=self.peer_id,
            room=session.context.room,
            remote=self._remote,
            code=code,
            clean="clean" if was_clean else "not clean",
            by="closed by the server"
            if self._closing_by_server
            else "closed by the client"
            if self._client_sent_close
            else "connection lost",
        )
        # Lost without a close frame from the client, and not closed by us:
        # the client may come back as itself.
        may_hold = not self._client_sent_close and not self._closing_by_server
        session.lost(front, may_hold=may_hold)

    def _drop(self) -> None:
        """
        A new connection has resumed this peer while this one still looked
        open (its client knew it was dead before we did): cut it, quietly.
        """
        self._superseded = True
        self._queue.cancel()
        self._log.info(
            "peer {peer_id} resumed elsewhere; dropping its old connection from {remote}",
            peer_id=self.peer_id,
            remote=self._remote,
        )
        self.dropConnection(abort=True)

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
        session, front = self._session, self._front
        if session is None or front is None or self._resuming:
            return
        if session.carried_by(front):
            self._queue.cancel()
            session.closed_by_server(front)


class _PeerFront:
    """
    A `Peer` as its session sees it (`session.Front`): the room's messages
    go straight to the peer's own writer.
    """

    __slots__ = ("close", "public", "write")

    def __init__(self, peer: Peer) -> None:
        self.write = peer.write
        self.close = peer.close_with
        self.public = peer

    def admitted(self, peer_ids: list[str], resume_token: str | None) -> None:
        self.public._admitted(peer_ids, resume_token)

    def terminate(self) -> Any:
        return self.public._terminate()

    def drop(self) -> None:
        self.public._drop()


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
        other_nodes = rooms.other_nodes
        prefix = other_nodes.token_prefix if other_nodes is not None else ""
        self.resumption = Resumption(settings.resume_window, self.clock, prefix)
        if other_nodes is not None:
            other_nodes.give_away_with(self._give_away)
        self.admission = Admission(self)
        """Whether an upgrade request may become a peer (SPEC 1.4 step 2)."""

    def same_identity(self, held: Held, identity: str | None) -> bool:
        """
        With tokens, only the same identity may take a held peer over.
        """
        return same_identity(self.settings, held, identity)

    def _give_away(self, token: str, room: str, identity: str | None) -> Departure | None:
        """
        Hand a peer held here to a connection on another node (see
        `twisted_signal.session.give_away`).
        """
        return give_away(self.resumption, self.same_identity, token, room, identity)
