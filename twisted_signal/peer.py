"""
One WebSocket connection: the handshake checks, then a thin relay between
the client and its `Room`.

The protocol decodes a frame, hands it to the room, and maps domain
exceptions to wire errors; it keeps no signaling logic of its own.  The room
reaches it only through a `PeerHandle`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NoReturn, cast
from urllib.parse import unquote
from uuid import uuid4

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from . import message as wire
from .auth import token_from_request
from .context import AuthData, PeerContext
from .errors import BadRequest, Unauthorized
from .hooks import SerialQueue, call, call_logged, then
from .message import InvalidMessage, Message
from .room import PeerHandle, Room
from .rooms import Rooms, is_room_name
from .settings import Settings

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Peer", "PeerFactory"]

_OPEN = WebSocketProtocol.STATE_OPEN
_PONG = b"pong"
_PING = b"ping"


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
    - `on_terminate(context)`: the connection has ended.

    Each may return a plain value, a `Deferred`, or be ``async def``.
    """

    factory: PeerFactory
    maxMessagePayloadSize: int  # set by Autobahn from the factory's options
    _log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self.peer_id = ""
        self.peer_state: Any = None
        self.room: Room | None = None
        self.context: PeerContext | None = None
        self.auth: AuthData | None = None
        self._initialised = False
        self._gone = False
        self._queue = SerialQueue("peer")
        self._admission: Deferred[None] | None = None
        self._idle: IDelayedCall | None = None
        self._last_seen = 0.0

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
        The connection has ended (called once, before the room's `on_leave`).
        """

    # Public API.

    def send_to_client(self, message: Message) -> None:
        """
        Send `message` to this peer's client as it is.
        """
        self._write(message.to_bytes())

    def stop(self) -> None:
        """
        Close the connection (1000); the peer then leaves its room.
        """
        self._close(1000)

    # The handshake (SPEC 1.4 steps 1 and 2).

    # Autobahn waits on a Deferred from onConnect (txaio.as_future).
    def onConnect(self, request: ConnectionRequest) -> Deferred[None]:  # type: ignore[override]
        self.peer_id = str(uuid4())
        return Deferred.fromCoroutine(self._handshake(request))

    async def _handshake(self, request: ConnectionRequest) -> None:
        try:
            credentials, metadata, room_name = await _resolve(call(self.parse_request, request))
            if not isinstance(room_name, str) or not is_room_name(room_name):
                raise BadRequest("not a valid room name")
        except BadRequest:
            self._refuse_handshake(request, 400, "Bad Request")
        except Exception:
            self._log.failure("Error in parse_request")
            self._refuse_handshake(request, 500, "Internal Server Error")
        verifier = self.factory.settings.token_verifier
        if verifier is not None:
            # Server-wide token check: the claims become the credentials.
            try:
                token = token_from_request(request.params, request.headers)
                credentials = verifier.verify(token, room_name)
            except Unauthorized as e:
                self._refuse_handshake(request, 401, "Unauthorized", why=str(e))
        self.auth = AuthData(self.peer_id, dict(credentials or {}), metadata)
        self.context = PeerContext(self.peer_id, room_name)
        try:
            options = self.factory.settings.peer_options
            self.peer_state = await _resolve(call(self.on_init, self.context, self.auth, options))
        except Unauthorized:
            self._refuse_handshake(request, 401, "Unauthorized")
        except Exception:
            self._log.failure("Error in on_init of peer {peer_id}", peer_id=self.peer_id)
            self._refuse_handshake(request, 500, "Internal Server Error")
        # on_init accepted the peer: from here on, whatever ends the
        # connection must call on_terminate, exactly once.
        if self._gone:
            # The client left while on_init was running.
            self._terminate()
            raise ConnectionDeny(400, "Bad Request")
        rooms = self.factory.rooms
        if room_name not in rooms and not rooms.creates_on_demand:
            self._terminate()
            self._refuse_handshake(request, 404, "Not Found")
        if not self.factory.accepting:
            self._terminate()
            self._refuse_handshake(request, 503, "Service Unavailable")
        self._initialised = True

    def _refuse_handshake(
        self, request: ConnectionRequest, status: int, reason: str, why: str = ""
    ) -> NoReturn:
        self._log.info(
            "refused connection from {remote}: {status} {reason}{why}",
            remote=request.peer,
            status=status,
            reason=reason,
            why=f" ({why})" if why else "",
        )
        raise ConnectionDeny(status, reason)

    # The open connection (SPEC 1.4 steps 3 to 6).

    def onOpen(self) -> None:
        if self._gone:
            return
        assert self.context is not None and self.auth is not None
        self._last_seen = self.factory.clock.seconds()
        self._idle = self.factory.clock.callLater(
            self.factory.settings.idle_timeout, self._check_idle
        )
        room = self.factory.rooms.get_or_create(self.context.room)
        if room is None:
            # The room was stopped between the handshake and now.
            self.send_to_client(wire.error(self.peer_id, "Could not join room", "no_such_room"))
            self._close(1000)
            return
        self.room = room
        admission: Deferred[None] = Deferred()
        self._admission = admission
        self._queue.run(lambda: admission)
        room.join(
            PeerHandle(self.peer_id, self.auth, self._write, self._close, self._admitted, self)
        )

    def _ice_servers(self) -> list[dict[str, Any]]:
        return self.factory.settings.ice.servers_for(self.peer_id, self.factory.clock.seconds())

    def _admitted(self, peer_ids: list[str]) -> None:
        self.send_to_client(wire.authenticated(self.peer_id, peer_ids, self._ice_servers()))
        if self._admission is not None and not self._admission.called:
            self._admission.callback(None)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self._last_seen = self.factory.clock.seconds()
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
        self._queue.run(lambda: self._receive(message))

    def _receive(self, message: Message) -> Any:
        return then(call(self.on_receive, message, self.context), self._submit)

    def _submit(self, message: Any) -> None:
        if message is None or self.room is None:
            return
        if not isinstance(message, Message):
            self._log.error(
                "on_receive of peer {peer_id} returned {value!r}, not a Message or None",
                peer_id=self.peer_id,
                value=message,
            )
            return
        self.room.submit(message)

    def onPing(self, payload: bytes) -> None:
        self._last_seen = self.factory.clock.seconds()
        super().onPing(payload)

    def onPong(self, payload: bytes) -> None:
        self._last_seen = self.factory.clock.seconds()
        super().onPong(payload)

    def _check_idle(self) -> None:
        timeout = self.factory.settings.idle_timeout
        remaining = self._last_seen + timeout - self.factory.clock.seconds()
        if remaining > 0:
            self._idle = self.factory.clock.callLater(remaining, self._check_idle)
        else:
            self._idle = None
            self._log.info(
                "peer {peer_id} idle for {timeout}s", peer_id=self.peer_id, timeout=timeout
            )
            self._close(1000)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self._gone:
            return
        self._gone = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        self._idle = None
        self._queue.cancel()
        if not self._initialised:
            return
        result = self._terminate()
        room = self.room
        if room is not None:
            then(result, lambda _: room.leave(self.peer_id))

    def _terminate(self) -> Any:
        assert self.context is not None
        return call_logged("on_terminate", self.on_terminate, self.context)

    # Writing.

    def _error(self, description: str, details: Any) -> None:
        self.send_to_client(wire.error(self.peer_id, description, details))

    def _write(self, payload: bytes) -> None:
        if self.state != _OPEN:
            return
        # Autobahn applies maxMessagePayloadSize to what we send too; the
        # limit is for clients, and a relayed message is a little larger than
        # the frame it came in, so lift it for our own writes.
        limit = self.maxMessagePayloadSize
        self.maxMessagePayloadSize = 0
        try:
            self.sendMessage(payload)
        finally:
            self.maxMessagePayloadSize = limit

    def _close(self, code: int) -> None:
        if self.state != _OPEN:
            return
        if code == 1000 or 3000 <= code <= 4999:
            self.sendClose(code)
        else:
            # sendClose refuses 1001 and 1008; the frame itself is fine.
            self.sendCloseFrame(code, isReply=False)


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
        super().__init__(server=None, reactor=clock)
        self.protocol = peer_class
        self.rooms = rooms
        self.accepting = True
        """False once the server is shutting down: new peers get 503."""
        self.settings = settings = settings or Settings()
        self.clock: IReactorTime = cast("IReactorTime", clock)
        self.setProtocolOptions(
            maxFramePayloadSize=settings.max_message_bytes,
            maxMessagePayloadSize=settings.max_message_bytes,
            failByDrop=False,
            openHandshakeTimeout=settings.handshake_timeout,
            closeHandshakeTimeout=settings.close_timeout,
            webStatus=False,
        )
