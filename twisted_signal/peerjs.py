"""
The peerjs-compatible front (SPEC 5.10): the protocol of peerjs-server 1.0.2
for the unchanged ``peerjs`` browser client, over the server's own rooms.

A front, like `twisted_signal.peer` is one: `PeerjsConnection` turns frames
into calls on `PeerjsFront`, which joins each peerjs id to one pseudo-room
(named after the key, see `PeerjsOptions.room`) as a `PeerHandle`, relays
through that room, and maps what the room sends back to peerjs messages.
The room, the registry and the cluster see peers and messages, never peerjs.

What is peerjs's, and so the front's: ids and their tokens, ``OPEN``,
``ID-TAKEN`` and ``ERROR``; store-and-forward for ids not connected (and
``EXPIRE`` when it runs out); ``LEAVE`` back to a sender whose message could
not be written; the alive timeout kept by ``HEARTBEAT``.  What is the
server's: token authentication, rate and size limits, metrics, the admin
API and webhooks.  ``docs/peerjs.md`` tells the differences from
peerjs-server.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import orjson
from autobahn.websocket.protocol import WebSocketProtocol
from autobahn.websocket.types import ConnectionDeny, ConnectionRequest
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource

from .context import AuthData
from .errors import Refused, Unauthorized
from .events import NO_EVENTS, Events
from .message import Message
from .room import CLOSE_NORMAL, PeerHandle, Room, RoomAccess
from .rooms import Rooms, is_room_name
from .settings import Settings
from .websocket import UpgradeResource, WebSocketConnection, WebSocketFactory

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime
    from twisted.web.server import Request

__all__ = [
    "ERROR_CONCURRENT_LIMIT",
    "ERROR_INVALID_KEY",
    "ERROR_INVALID_PARAMETERS",
    "ID_CLAIM",
    "PeerjsConnection",
    "PeerjsFront",
    "PeerjsOptions",
    "PeerjsResource",
    "PeerjsRoom",
    "mount",
    "normal_path",
]

ERROR_INVALID_PARAMETERS = "No id, token, or key supplied to websocket server"
ERROR_INVALID_KEY = "Invalid key provided"
ERROR_CONCURRENT_LIMIT = "Server has reached its concurrent user limit"
ID_TAKEN = "ID is taken"

_VALID_ID = re.compile(r"[A-Za-z0-9]+(?:[ _-][A-Za-z0-9]+)*\Z")
"""The ids the peerjs client accepts (its ``util.validateId``)."""
MAX_ID_LENGTH = 256

ID_CLAIM = "peerjs_id"
"""The JWT claim that binds a token to one peerjs id."""

RELAYED = frozenset({"OFFER", "ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"})
"""The message types relayed between peers; the rest is ``HEARTBEAT`` or ignored."""
_NOT_QUEUED = frozenset({"LEAVE", "EXPIRE"})
_FRONT = "peerjs"
_ID_TAKEN_REASON = "id_taken"
_METADATA = {"front": _FRONT}
"""The metadata of every peerjs peer's `AuthData`: how `PeerjsRoom` knows its own."""

_PUBLIC = orjson.dumps(
    {
        "name": "PeerJS Server",
        "description": "A server side element to broker connections between PeerJS clients.",
        "website": "https://peerjs.com/",
    }
)
_OPEN_STATE = WebSocketProtocol.STATE_OPEN
_RESERVED = frozenset({"", "static", "socket", "healthz", "admin", "metrics"})


def normal_path(path: str) -> str:
    """
    `path` with one leading and one trailing slash, as the peerjs client
    makes it.

    @raise ValueError: the path is the root, holds empty or odd segments, or
        begins with one of the server's own paths.
    """
    segments = path.strip().split("/")
    while segments and segments[0] == "":
        segments.pop(0)
    while segments and segments[-1] == "":
        segments.pop()
    if not segments:
        raise ValueError("the peerjs path cannot be / (the server's pages are there)")
    for segment in segments:
        if not is_room_name(segment) or segment in (".", ".."):
            raise ValueError(f"{segment!r} is not a path segment (1 to 64 of A-Z a-z 0-9 _ . ~ -)")
    if segments[0] in _RESERVED:
        raise ValueError(f"/{segments[0]}/ is the server's own")
    return "/" + "/".join(segments) + "/"


@dataclass(frozen=True)
class PeerjsOptions:
    """
    How the peerjs front behaves (``twistd rtcsignal --help`` lists the
    options that set these).
    """

    path: str = "/peerjs/"
    """Where the front is mounted (with a slash at each end)."""

    key: str = "peerjs"
    """The key clients pass (peerjs's ``key``) when no JWT key is configured;
    also the name of the pseudo-room of the front's peers."""

    discovery: bool = False
    """Whether ``GET PATH<key>/peers`` lists the ids (else 401)."""

    expire_timeout: float = 5.0
    """How long messages to an id not connected are kept for it."""

    alive_timeout: float = 90.0
    """A peer that has sent nothing (a ``HEARTBEAT`` at least) for this long is closed."""

    queue_limit: int = 256
    """How many messages one peer may have waiting for ids not connected."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", normal_path(self.path))
        if not is_room_name(self.key):
            raise ValueError("the peerjs key must be 1 to 64 of A-Z a-z 0-9 _ . ~ -")
        if not self.expire_timeout > 0 or not self.alive_timeout > 0:
            raise ValueError("the peerjs timeouts must be positive")
        if self.queue_limit < 0:
            raise ValueError("the peerjs queue limit must not be negative")

    @property
    def room(self) -> str:
        """The name of the pseudo-room that holds the front's peers."""
        return self.key


class PeerjsRoom(Room):
    """
    The pseudo-room of the peerjs front: no cap on peers, and only peers
    that came through the front (a peer of the server's own protocol could
    not read peerjs's messages, nor they its own).
    """

    def on_join(self, auth: AuthData) -> Any:
        if auth.metadata != _METADATA:
            raise Refused("peerjs_only")
        if auth.peer_id in self.peers:
            # Two connections asked for a free id at once (on two nodes of a
            # cluster): the room's order decides, as for room owners.
            raise Refused(_ID_TAKEN_REASON)


def _valid_id(peer_id: str) -> bool:
    """
    An id the peerjs client itself would take: ids reach logs, the admin API,
    webhooks and (in cluster mode) Redis, so nothing else is let in.
    """
    return len(peer_id) <= MAX_ID_LENGTH and _VALID_ID.match(peer_id) is not None


def _encode(type_: str, src: Any, dst: Any, payload: Any = None) -> bytes:
    """
    A relayed message as peerjs-server writes it: ``{type, src, dst,
    payload}``, without the keys that are missing (None).
    """
    message: dict[str, Any] = {"type": type_}
    if src is not None:
        message["src"] = src
    if dst is not None:
        message["dst"] = dst
    if payload is not None:
        message["payload"] = payload
    try:
        return orjson.dumps(message)
    except orjson.JSONEncodeError:
        # What orjson cannot write (integers beyond 64 bits, lone
        # surrogates) the standard library can.
        import json

        return json.dumps(message, separators=(",", ":")).encode("utf-8", "surrogatepass")


def _server_message(type_: str, msg: str) -> bytes:
    return orjson.dumps({"type": type_, "payload": {"msg": msg}})


class _Client:
    """
    One peerjs id on this node: its token, and the connection it has now
    (a reconnect with the same token moves it to a new one).
    """

    __slots__ = (
        "admitted",
        "bound",
        "connection",
        "front",
        "id",
        "left",
        "pending",
        "token",
    )

    def __init__(
        self,
        front: PeerjsFront,
        peer_id: str,
        token: str,
        connection: PeerjsConnection,
        bound: bool,
    ) -> None:
        self.front = front
        self.id = peer_id
        self.token = token
        self.connection: PeerjsConnection | None = connection
        self.bound = bound
        """Its token's `ID_CLAIM` names it: any connection with such a token may take it over."""
        self.admitted = False
        self.left = False
        self.pending = 0
        """Its messages waiting for ids not connected."""

    def write(self, payload: bytes) -> bool:
        connection = self.connection
        if connection is None or connection.state != _OPEN_STATE:
            return False
        connection.write(payload)
        return True

    # The PeerHandle's callables: what the room does to this peer.

    def send(self, payload: bytes) -> None:
        self.front._from_room(self, payload)

    def close(self, code: int) -> None:
        connection = self.connection
        if connection is not None:
            connection.close_with(code)
        else:
            self.front._gone(self)

    def on_admitted(self, peer_ids: list[str]) -> None:
        self.front._admitted(self)


@dataclass(frozen=True, slots=True)
class _Refusal:
    type: str
    msg: str


@dataclass
class _Waiting:
    """Messages for an id that is not connected, until it comes or they expire."""

    messages: list[tuple[str, str, Any, _Client]]
    senders: dict[str, None]
    timer: IDelayedCall


class PeerjsFront:
    """
    The peerjs peers of this node and what peerjs-server keeps for them.
    `rooms` is the server's registry; the front starts its pseudo-room there.
    """

    _log = Logger()

    def __init__(
        self,
        rooms: Rooms,
        options: PeerjsOptions | None = None,
        *,
        settings: Settings | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast("IReactorTime", reactor)
        self.clock = clock
        self.rooms = rooms
        self.options = options = options or PeerjsOptions()
        self.settings = settings or Settings()
        self.events: Events = NO_EVENTS
        """Where connections report (the server sets it with its own)."""
        self.accepting = True
        self._clients: dict[str, _Client] = {}
        self._waiting: dict[str, _Waiting] = {}
        self._room()

    # What the HTTP side asks.

    def check_key(self, key: str) -> dict[str, Any] | None:
        """
        The credentials of a client that passes `key`: the token's claims
        with a JWT key configured, else empty; None for a bad key.
        """
        verifier = self.settings.token_verifier
        if verifier is None:
            return {} if key == self.options.key else None
        try:
            return verifier.verify(key, self.options.room)
        except Unauthorized:
            return None

    def fresh_id(self, credentials: dict[str, Any]) -> str:
        """
        An id nobody holds (or the one the token is bound to).
        """
        bound = credentials.get(ID_CLAIM)
        if isinstance(bound, str) and bound:
            return bound
        taken = self._taken
        while True:
            peer_id = str(uuid.uuid4())
            if not taken(peer_id):
                return peer_id

    def ids(self) -> list[str]:
        """The ids connected (in cluster mode, to any node)."""
        return list(self._room().peers)

    # What connections call.

    def connect(self, connection: PeerjsConnection, params: dict[str, str]) -> None:
        """
        A WebSocket is open with these query parameters: ``OPEN`` it, or
        tell it why not and close it.
        """
        checked = self._checked(params)
        if isinstance(checked, _Refusal):
            connection.refuse(checked.type, checked.msg)
            return
        peer_id, token, credentials = checked
        bound = ID_CLAIM in credentials
        client = self._clients.get(peer_id)
        if client is not None and (token == client.token or (bound and client.bound)):
            self._take_over(client, connection, token)
            return
        if client is not None or self._taken(peer_id):
            connection.refuse("ID-TAKEN", ID_TAKEN)
            return
        if len(self._clients) >= self.settings.max_connections:
            connection.refuse("ERROR", ERROR_CONCURRENT_LIMIT)
            return
        client = _Client(self, peer_id, token, connection, bound)
        self._clients[peer_id] = client
        connection.client = client
        auth = AuthData(peer_id, credentials, dict(_METADATA))
        self._room().join(PeerHandle(peer_id, auth, client.send, client.close, client.on_admitted))

    def _checked(self, params: dict[str, str]) -> tuple[str, str, dict[str, Any]] | _Refusal:
        """
        The id, token and credentials of a connection, or why it is refused.
        """
        peer_id, token, key = params.get("id"), params.get("token"), params.get("key")
        if not peer_id or not token or not key or not _valid_id(peer_id):
            return _Refusal("ERROR", ERROR_INVALID_PARAMETERS)
        credentials = self.check_key(key)
        if credentials is None:
            return _Refusal("ERROR", ERROR_INVALID_KEY)
        bound = credentials.get(ID_CLAIM)
        if bound is not None and bound != peer_id:
            return _Refusal("ID-TAKEN", ID_TAKEN)
        return peer_id, token, credentials

    def _take_over(self, client: _Client, connection: PeerjsConnection, token: str) -> None:
        """
        A reconnect with the id's token (or, for an id bound by its JWT, with
        such a JWT) while the old connection is still here: the new one
        carries on as the same peer, and gets ``OPEN`` (peerjs-server 1.0.2
        sends nothing, and the client waits for ever).
        """
        old, client.connection, client.token = client.connection, connection, token
        connection.client = client
        if old is not None:
            old.client = None
            old.close_with(CLOSE_NORMAL)
        self._log.info("peerjs peer {peer_id} reconnected", peer_id=client.id)
        if client.admitted:
            client.write(_OPEN)

    def received(self, client: _Client, frame: bytes, now: float) -> None:
        """
        A frame from `client`'s connection (past the rate limit).
        """
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return  # peerjs-server ignores what is not JSON too
        if not isinstance(message, dict):
            return
        type_ = message.get("type")
        if type_ not in RELAYED:
            return  # HEARTBEAT (already counted as traffic), or unknown
        dst = message.get("dst")
        if not isinstance(dst, str) or not dst:
            if type_ == "LEAVE" and dst is None:
                # peerjs-server forgets the id of a peer that leaves everyone.
                self._gone(client)
                if client.connection is not None:
                    client.connection.close_with(CLOSE_NORMAL)
            return
        type_ = cast(str, type_)
        payload = message.get("payload")
        room = self._room()
        if dst in room.peers:
            room.submit(Message(type_, payload, client.id, (dst,)), now)
        elif type_ not in _NOT_QUEUED:
            self._keep(dst, type_, payload, client)

    def closed(self, connection: PeerjsConnection) -> None:
        """
        A connection has ended; its peer leaves unless another connection
        has taken it over.
        """
        client = connection.client
        if client is None or client.connection is not connection:
            return
        client.connection = None
        self._gone(client)

    # Store and forward.

    def _keep(self, dst: str, type_: str, payload: Any, sender: _Client) -> None:
        waiting = self._waiting.get(dst)
        if sender.pending >= self.options.queue_limit:
            # Dropped.  The sender still hears that dst is not there: with
            # the others' EXPIRE if something waits for it, else at once
            # (so what a flood to made-up ids leaves here stays bounded).
            if waiting is not None:
                waiting.senders[sender.id] = None
            else:
                sender.write(_encode("EXPIRE", dst, sender.id))
            return
        if waiting is None:
            timer = self.clock.callLater(self.options.expire_timeout, self._expire, dst)
            waiting = self._waiting[dst] = _Waiting([], {}, timer)
        waiting.senders[sender.id] = None
        sender.pending += 1
        waiting.messages.append((type_, sender.id, payload, sender))

    def _expire(self, dst: str) -> None:
        waiting = self._waiting.pop(dst, None)
        if waiting is None:
            return
        self._release(waiting)
        for src in waiting.senders:
            sender = self._clients.get(src)
            if sender is not None:
                sender.write(_encode("EXPIRE", dst, src))

    def _deliver_waiting(self, client: _Client) -> None:
        waiting = self._waiting.pop(client.id, None)
        if waiting is None:
            return
        if waiting.timer.active():
            waiting.timer.cancel()
        self._release(waiting)
        for type_, src, payload, _ in waiting.messages:
            client.write(_encode(type_, src, client.id, payload))

    @staticmethod
    def _release(waiting: _Waiting) -> None:
        for *_, sender in waiting.messages:
            sender.pending -= 1

    # What the room does.

    def _admitted(self, client: _Client) -> None:
        client.admitted = True
        if client.left:
            return
        client.write(_OPEN)
        self._log.info("peerjs peer {peer_id} open", peer_id=client.id)
        self._deliver_waiting(client)

    def _from_room(self, client: _Client, payload: bytes) -> None:
        """
        The room writes `payload` (the server's own encoding) to `client`:
        write it as peerjs would.
        """
        message = orjson.loads(payload)
        event, src, data = message["event"], message["from"], message["data"]
        if event in RELAYED and src is not None:
            if not client.write(_encode(event, src, client.id, data)):
                # peerjs-server tells the sender that this peer has gone.
                self._leave_to(client, src)
            return
        if event == "joined" and isinstance(data, dict):
            # An id came (here or on another node): what waits for it goes
            # to it through the room, after its OPEN.
            self._forward_waiting(str(data.get("peer_id")))
            return
        if src is not None or event == "left":
            return
        if event == "error" and isinstance(data, dict):
            description, details = data.get("description"), data.get("details")
            if description == "No such peer":
                # The addressee left between the check and the delivery.
                for gone in details or ():
                    client.write(_encode("LEAVE", gone, client.id))
                return
            if description == "Could not join room" and details == _ID_TAKEN_REASON:
                self.events.error_sent(ID_TAKEN)
                client.write(_server_message("ID-TAKEN", ID_TAKEN))
                return
            self.events.error_sent(str(description))
            client.write(_server_message("ERROR", str(description)))
            return
        # A message from the server (the admin API): its event is the type.
        client.write(_encode(event, None, client.id, data))

    def _leave_to(self, client: _Client, src: str) -> None:
        sender = self._clients.get(src)
        if sender is not None:
            sender.write(_encode("LEAVE", client.id, src))
        elif not client.left:
            # The sender is on another node.
            self._room().submit(Message("LEAVE", None, client.id, (src,)))

    def _forward_waiting(self, peer_id: str) -> None:
        waiting = self._waiting.pop(peer_id, None)
        if waiting is None:
            return
        if waiting.timer.active():
            waiting.timer.cancel()
        self._release(waiting)
        room = self._room()
        for type_, src, payload, _ in waiting.messages:
            room.submit(Message(type_, payload, src, (peer_id,)))

    def _gone(self, client: _Client) -> None:
        if client.left:
            return
        client.left = True
        if self._clients.get(client.id) is client:
            del self._clients[client.id]
        self._room().leave(client.id)

    # Helpers.

    def _taken(self, peer_id: str) -> bool:
        return peer_id in self._clients or peer_id in self._room().peers

    def _room(self) -> RoomAccess:
        """
        The pseudo-room, started again if the admin API stopped it.
        """
        rooms, name = self.rooms, self.options.room
        if name not in rooms:
            rooms.start_room(name, PeerjsRoom, max_peers=None)
        room = rooms.access(name)
        assert room is not None
        return room


_OPEN = orjson.dumps({"type": "OPEN"})


class PeerjsConnection(WebSocketConnection):
    """
    One peerjs client's WebSocket: decodes frames and hands them to the
    front.  The rate limit, the send buffer, keepalive (the alive timeout
    is its idle timeout) and reading in turns are every connection's
    (`twisted_signal.websocket`).
    """

    factory: PeerjsFactory
    pongs_are_traffic = False
    """The alive timeout waits for what the client sends (its ``HEARTBEAT``
    at least), not for the pongs its browser sends by itself."""
    _log = Logger()

    def __init__(self) -> None:
        super().__init__()
        self.client: _Client | None = None
        self._params: dict[str, str] = {}
        self._counted = False

    def onConnect(self, request: ConnectionRequest) -> None:
        factory = self.factory
        front = factory.front
        status = None
        if not front.accepting:
            status = (503, "Service Unavailable")
        elif not factory.origin_allowed(request.origin):
            status = (403, "Forbidden")
        if status is not None:
            front.events.handshake_rejected(status[0])
            raise ConnectionDeny(*status)
        self._params = {name: values[0] for name, values in request.params.items() if values}

    def opened(self) -> None:
        front = self.factory.front
        self._counted = True
        front.events.connected()
        params, self._params = self._params, {}
        front.connect(self, params)

    def frame_received(self, payload: bytes, is_binary: bool, now: float) -> None:
        client = self.client
        if client is not None and not is_binary:
            self.factory.front.received(client, payload, now)

    def rate_limit_warning(self) -> None:
        """
        Nothing: peerjs has no message for it (an ``ERROR`` would end the
        client), so the dropped frames are dropped silently.
        """

    def closed_by_server(self) -> None:
        # Closed by the server (its rate limit, too slow, unanswered pings,
        # the front): the id is free now, whether or not the client answers.
        self.factory.front.closed(self)

    def closed(self, was_clean: bool, code: int | None, reason: str | None) -> None:
        front = self.factory.front
        if self._counted:
            self._counted = False
            front.events.closed(code)
        front.closed(self)

    def log_id(self) -> str:
        return self.client.id if self.client is not None else ""

    def refuse(self, type_: str, msg: str) -> None:
        """
        Tell the client why it cannot go on (``ERROR`` or ``ID-TAKEN``),
        and close as peerjs-server does (a close frame without a code).
        """
        self.factory.front.events.error_sent(msg)
        self.write(_server_message(type_, msg))
        self.sendClose()


class PeerjsFactory(WebSocketFactory):
    """
    Makes a `PeerjsConnection` per WebSocket, with the server's limits;
    the alive timeout is the connections' idle timeout.
    """

    def __init__(self, front: PeerjsFront, origins: tuple[str, ...] = ()) -> None:
        super().__init__(
            front.settings, front.clock, idle_timeout=front.options.alive_timeout, origins=origins
        )
        self.protocol = PeerjsConnection
        self.front = front

    @property
    def events(self) -> Events:
        """The front's (the server sets them there)."""
        return self.front.events

    @events.setter
    def events(self, events: Events) -> None:
        self.front.events = events


# The HTTP side.


def _cors(request: Request) -> None:
    # peerjs-server answers every origin (cors({origin: true})): the peerjs
    # client fetches /id from the page's origin, often another one.
    origin = request.getHeader(b"origin")
    if origin:
        request.setHeader(b"Access-Control-Allow-Origin", origin)
    request.setHeader(b"Vary", b"Origin")


def _plain(request: Request, status: int, body: bytes, content_type: bytes) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", content_type)
    request.setHeader(b"Cache-Control", b"no-store")
    return body


def _unauthorized(request: Request) -> bytes:
    return _plain(request, 401, b"Unauthorized", b"text/plain; charset=utf-8")


def _not_found(request: Request) -> bytes:
    return _plain(request, 404, b"Not Found", b"text/plain; charset=utf-8")


class _KeyResource(Resource):
    """``PATH<key>/id`` and ``PATH<key>/peers``."""

    isLeaf = True

    def __init__(self, front: PeerjsFront, key: str) -> None:
        super().__init__()
        self._front = front
        self._key = key

    def render_GET(self, request: Request) -> bytes:
        _cors(request)
        postpath = request.postpath
        if postpath == [b"id"]:
            credentials = self._front.check_key(self._key)
            if credentials is None:
                return _unauthorized(request)
            peer_id = self._front.fresh_id(credentials)
            # Text (peerjs-server says HTML: an id bound by a token is the
            # token issuer's string, and is not to be read as a page).
            return _plain(request, 200, peer_id.encode("utf-8"), b"text/plain; charset=utf-8")
        if postpath == [b"peers"]:
            if not self._front.options.discovery:
                return _unauthorized(request)
            if self._front.check_key(self._key) is None:
                return _unauthorized(request)
            return _plain(request, 200, orjson.dumps(self._front.ids()), b"application/json")
        return _not_found(request)


class PeerjsResource(Resource):
    """
    The front's HTTP surface, to mount at its path: ``GET`` here answers
    peerjs-server's JSON; ``<key>/id``, ``<key>/peers``; ``peerjs`` is the
    WebSocket.
    """

    def __init__(self, front: PeerjsFront, origins: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.front = front
        self.factory = PeerjsFactory(front, origins)
        self._socket = UpgradeResource(self.factory)

    def render_GET(self, request: Request) -> bytes:
        _cors(request)
        return _plain(request, 200, _PUBLIC, b"application/json; charset=utf-8")

    def getChild(self, path: bytes, request: Request) -> IResource:
        if path == b"":
            return self
        if path == b"peerjs" and not request.postpath:
            return cast(IResource, self._socket)
        try:
            key = path.decode("utf-8")
        except UnicodeDecodeError:
            key = ""
        return _KeyResource(self.front, key)


def mount(root: Resource, resource: IResource, path: str) -> None:
    """
    Put `resource` at `path` (a `normal_path`) below `root`, making plain
    folders for the segments between.
    """
    segments = [s.encode("ascii") for s in path.strip("/").split("/")]
    parent = root
    for segment in segments[:-1]:
        child = parent.children.get(segment)
        if not isinstance(child, Resource):
            child = _Folder()
            parent.putChild(segment, child)
        parent = child
    parent.putChild(segments[-1], resource)


class _Folder(Resource):
    def render(self, request: Request) -> bytes:
        return _not_found(request)

    def getChild(self, path: bytes, request: Request) -> IResource:
        return _NotFound()


class _NotFound(Resource):
    isLeaf = True

    def render(self, request: Request) -> bytes:
        return _not_found(request)
