"""
The client's protocol logic, without any I/O: the sans-IO core that both
faces of `twisted_signal.client` (Twisted and asyncio) drive.

`ClientCore` takes the events of a client's life (an attempt to connect
begins, a frame arrived, the connection was lost, a reconnection attempt
failed or succeeded, the user closes) and answers with `Action` objects
that an adapter carries out by calling its own `Effects` methods: run a user
callback, put a message in the inbox, log, try again after a delay, close
for good.  The adapters only move bytes and time; every decision (what a
frame means, whether and when to come back, why the client ended) is here,
once.
"""

from __future__ import annotations

import json
import random as _random
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, Protocol, TypedDict, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ..message import ALL, Addressees, InvalidMessage, Message, impersonates_server

DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_BUFFER_SIZE: Final = 1024
DEFAULT_PING: Final = 20.0
CLOSE_NORMAL: Final = 1000
CLOSE_POLICY: Final = 1008
ABNORMAL: Final = 1006
# Refusals that another attempt will not change.
_PERMANENT_STATUSES: Final = frozenset({400, 401, 403})

Target = str | Iterable[str]
"""Where a message goes: ``"all"``, one peer id, or several."""

C = TypeVar("C")


# Errors.


class HandshakeFailed(ConnectionError):
    """
    The server did not accept the WebSocket upgrade.  `status` is the HTTP
    status it answered (401: bad token, 404: no such room...), None when the
    handshake failed for another reason.
    """

    def __init__(self, status: int | None, reason: str) -> None:
        super().__init__(f"WebSocket upgrade refused: {status} {reason}" if status else reason)
        self.status = status
        self.reason = reason


class JoinRefused(ConnectionError):
    """
    The room refused the peer (``"Could not join room"``); `reason` is the
    server's reason, e.g. ``"room_is_full"``.
    """

    def __init__(self, reason: Any) -> None:
        super().__init__(f"could not join the room: {reason}")
        self.reason = reason


class ClientClosed(ConnectionError):
    """
    The client is closed for good: by `close`, or because the connection was
    lost and it does not reconnect.  `code` is the WebSocket close code
    (1006 when the connection was dropped).
    """

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"connection closed ({code}): {reason}" if reason else f"closed ({code})")
        self.code = code
        self.reason = reason


class NotConnected(ConnectionError):
    """
    `send` was called while there is no open connection (it is being
    re-established, or the client is closed).  Nothing was sent.
    """


# Decoding, URLs, backoff, the followed state, the inbox.


def decode_server_message(frame: str | bytes) -> Message:
    """
    Decode one message from the server.  Unlike `Message.from_json`, which
    parses what *clients* send, this keeps ``from`` (as `Message.from_`).

    @raise InvalidMessage: the frame is not a JSON object with a string
        ``event``.
    """
    try:
        obj = json.loads(frame)
    except (ValueError, RecursionError):
        text = frame.decode("utf-8", "replace") if isinstance(frame, bytes) else frame
        raise InvalidMessage("Invalid JSON", text[:256]) from None
    if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
        raise InvalidMessage("Invalid message", "not an object with a string 'event'")
    from_ = obj.get("from")
    to = obj.get("to")
    addressees: Addressees
    if to == ALL or to is None:
        addressees = to
    elif isinstance(to, list) and all(isinstance(peer_id, str) for peer_id in to):
        addressees = tuple(to)
    else:
        raise InvalidMessage("Invalid message", "'to' must be \"all\", a list of ids or null")
    return Message(
        obj["event"], obj.get("data"), from_ if isinstance(from_, str) else None, addressees
    )


def encode(event: str, data: Any, to: Target) -> str:
    addressees: Addressees = (ALL if to == ALL else (to,)) if isinstance(to, str) else tuple(to)
    return Message(event, data, None, addressees).to_json()


def socket_url(url: str, *, token: str | None = None, resume: str | None = None) -> str:
    """
    `url` with the ``token`` and ``resume`` query parameters set (when
    given), replacing any of the same name.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a ws:// or wss:// URL: {parts.scheme}://...")
    extra = {name: value for name, value in (("token", token), ("resume", resume)) if value}
    query = [(name, value) for name, value in parse_qsl(parts.query) if name not in extra]
    query.extend(extra.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redacted(url: str) -> str:
    """`url` without its query (tokens never reach a log line)."""
    return urlunsplit(urlsplit(url)._replace(query="", fragment=""))


@dataclass(frozen=True)
class Backoff:
    """
    The delays between reconnection attempts: ``initial * factor**attempt``,
    at most `maximum`, of which the last `jitter` fraction is random (so the
    clients of a restarted server do not all come back at the same instant).
    """

    initial: float = 0.5
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError("Backoff needs 0 < initial <= maximum")
        if self.factor < 1:
            raise ValueError("Backoff factor must be at least 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("Backoff jitter must be between 0 and 1")

    def delay(self, attempt: int, random: Callable[[], float] = _random.random) -> float:
        """
        The delay before attempt number `attempt` (0 for the first one).
        `random` returns a float in [0, 1).
        """
        ceiling = min(self.maximum, self.initial * self.factor ** min(attempt, 64))
        return ceiling * (1 - self.jitter) + ceiling * self.jitter * random()


class _Session:
    """
    What the client knows about its peer and its room, followed from the
    server's messages.
    """

    def __init__(self) -> None:
        self.peer_id = ""
        self.peers: list[str] = []
        self.ice_servers: list[dict[str, Any]] = []
        self.authenticated: dict[str, Any] = {}
        self.resume_token: str | None = None
        self.resumed = False
        self.refusal: Any = None
        """The reason of the last ``"Could not join room"``."""
        self.final = False
        """The server closed the room on purpose: do not come back."""

    def authenticate(self, data: Any) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("peer_id"), str):
            raise InvalidMessage("Invalid message", "'authenticated' without a peer id")
        peer_id = data["peer_id"]
        self.resumed = bool(self.peer_id) and peer_id == self.peer_id
        self.peer_id = peer_id
        peers = data.get("peers")
        self.peers = [p for p in peers if isinstance(p, str)] if isinstance(peers, list) else []
        ice_servers = data.get("ice_servers")
        self.ice_servers = list(ice_servers) if isinstance(ice_servers, list) else []
        token = data.get("resume_token")
        self.resume_token = token if isinstance(token, str) and token else None
        self.authenticated = dict(data)

    def follow(self, message: Message) -> None:
        data = message.data
        if message.event in ("joined", "left"):
            peer_id = data.get("peer_id") if isinstance(data, dict) else None
            if not isinstance(peer_id, str) or peer_id == self.peer_id:
                return
            if message.event == "joined" and peer_id not in self.peers:
                self.peers.append(peer_id)
            elif message.event == "left" and peer_id in self.peers:
                self.peers.remove(peer_id)
        elif message.event == "ice_servers" and isinstance(data, list):
            self.ice_servers = list(data)
        elif message.event == "error" and isinstance(data, dict):
            description = data.get("description")
            if description == "Could not join room":
                self.refusal = data.get("details")
            elif description == "Room closed" and data.get("details") != "shutdown":
                self.final = True

    def resume_url(self, url: str, token: str | None) -> str:
        return socket_url(url, token=token, resume=self.resume_token if self.peer_id else None)


@dataclass(eq=False)
class _Waiter:
    event: str | None
    deliver: Callable[[Message], None]
    fail: Callable[[BaseException], None]


class _Inbox:
    """
    Messages waiting for a reader, and readers waiting for a message (the
    oldest reader whose filter matches gets it).
    """

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("buffer_size must be at least 1")
        self._messages: deque[Message] = deque(maxlen=size)
        self._waiters: list[_Waiter] = []
        self.closed: ClientClosed | None = None

    def put(self, message: Message) -> None:
        for waiter in self._waiters:
            if waiter.event is None or waiter.event == message.event:
                self._waiters.remove(waiter)
                waiter.deliver(message)
                return
        self._messages.append(message)

    def take(self, event: str | None) -> Message | None:
        for message in self._messages:
            if event is None or message.event == event:
                self._messages.remove(message)
                return message
        return None

    def wait(
        self,
        event: str | None,
        deliver: Callable[[Message], None],
        failed: Callable[[BaseException], None],
    ) -> _Waiter:
        waiter = _Waiter(event, deliver, failed)
        if self.closed is not None:
            failed(self.closed)
        else:
            self._waiters.append(waiter)
        return waiter

    def cancel(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def close(self, reason: ClientClosed) -> None:
        self.closed = reason
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.fail(reason)


def permanent(error: object) -> bool:
    """Whether another attempt cannot change the outcome of `error`."""
    return isinstance(error, HandshakeFailed) and error.status in _PERMANENT_STATUSES


# The options both faces take.


class ClientOptions(TypedDict, Generic[C], total=False):
    """
    The keyword arguments `connect` and `aio_connect` share; `C` is the
    client class the callbacks get.  Defaults: no token, no reconnection,
    ``Backoff()``, no callbacks, no extra headers, no Origin, a 10 s timeout,
    a ping every 20 s answered within 20 s, a buffer of 1024 messages.
    """

    token: str | None
    reconnect: bool
    backoff: Backoff
    on_message: Callable[[Message], Any] | None
    on_reconnected: Callable[[C], Any] | None
    on_disconnected: Callable[[C], Any] | None
    headers: Mapping[str, str] | None
    origin: str | None
    timeout: float
    ping_interval: float | None
    ping_timeout: float | None
    buffer_size: int
    random: Callable[[], float]


# What the core asks an adapter to do.


LogLevel = Literal["debug", "info", "warn"]


class Effects(Protocol):
    """What an adapter provides to carry out the core's actions."""

    def _run_callback(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        """Run a user callback after those already queued, logging its failure."""

    def _log_line(self, level: LogLevel, text: str, fields: dict[str, Any]) -> None:
        """Log `text` (a PEP 3101 format of `fields`)."""

    def _retry_after(self, delay: float) -> None:
        """Make the next connection attempt in `delay` seconds."""

    def _finish(self, reason: ClientClosed) -> None:
        """The client is closed for good (the inbox already is)."""


class Action(Protocol):
    def perform(self, effects: Effects) -> None: ...


@dataclass(frozen=True)
class Callback:
    what: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]

    def perform(self, effects: Effects) -> None:
        effects._run_callback(self.what, self.fn, *self.args)


@dataclass(frozen=True)
class Deliver:
    inbox: _Inbox
    message: Message

    def perform(self, effects: Effects) -> None:
        self.inbox.put(self.message)


@dataclass(frozen=True)
class Log:
    level: LogLevel
    text: str
    fields: dict[str, Any] = field(default_factory=dict)

    def perform(self, effects: Effects) -> None:
        effects._log_line(self.level, self.text, self.fields)


@dataclass(frozen=True)
class Retry:
    delay: float

    def perform(self, effects: Effects) -> None:
        effects._retry_after(self.delay)


@dataclass(frozen=True)
class Finish:
    reason: ClientClosed

    def perform(self, effects: Effects) -> None:
        effects._finish(self.reason)


def perform(actions: Iterable[Action], effects: Effects) -> None:
    """Carry out `actions` in order."""
    for action in actions:
        action.perform(effects)


# The core.


class ClientCore(Generic[C]):
    """
    One client's state and decisions.  `owner` is the client object the
    ``on_reconnected`` and ``on_disconnected`` callbacks get.  Nothing here
    touches a socket, a clock or a logger: the methods return the actions
    to carry out.
    """

    def __init__(self, url: str, owner: C, options: ClientOptions[C]) -> None:
        socket_url(url)  # check it early
        self.url = url
        self.owner = owner
        self.token = options.get("token")
        self.reconnect = options.get("reconnect", False)
        self.backoff = options.get("backoff", Backoff())
        self.on_message = options.get("on_message")
        self.on_reconnected = options.get("on_reconnected")
        self.on_disconnected = options.get("on_disconnected")
        self.headers = dict(options.get("headers") or {})
        self.origin = options.get("origin")
        self.timeout = options.get("timeout", DEFAULT_TIMEOUT)
        self.ping_interval = options.get("ping_interval", DEFAULT_PING)
        self.ping_timeout = options.get("ping_timeout", DEFAULT_PING)
        self.random = options.get("random", _random.random)
        self.session = _Session()
        self.inbox = _Inbox(options.get("buffer_size", DEFAULT_BUFFER_SIZE))
        self.joined = False
        """The current connection got ``authenticated``."""
        self.closing = False
        self.close_code = CLOSE_NORMAL
        self._retries = 0

    @property
    def closed(self) -> ClientClosed | None:
        return self.inbox.closed

    @property
    def redacted_url(self) -> str:
        return _redacted(self.url)

    # Events.

    def attempt(self) -> str:
        """A connection attempt begins: the URL to open."""
        self.joined = False
        self.session.refusal = None
        return self.session.resume_url(self.url, self.token)

    def received(self, frame: str | bytes, binary: bool = False) -> list[Action]:
        """
        A frame arrived on the current connection.  ``authenticated`` sets
        `joined` and is no message; any other is followed and delivered.  A
        message named as one of the server's events that is not the
        server's (its ``from`` is a peer's, see `impersonates_server`) is
        ignored: neither followed nor delivered.
        """
        if binary or frame in ("pong", b"pong"):
            return []
        try:
            message = decode_server_message(frame)
            if impersonates_server(message):
                return [
                    Log(
                        "warn",
                        "ignored {event!r} from peer {peer_id}: only the server sends it",
                        {"event": message.event, "peer_id": message.from_},
                    )
                ]
            if message.event == "authenticated":
                self.session.authenticate(message.data)
        except InvalidMessage as e:
            return [Log("warn", "ignored a frame from the server: {error}", {"error": str(e)})]
        if message.event == "authenticated":
            self.joined = True
            return []
        self.session.follow(message)
        actions: list[Action] = []
        if self.on_message is not None:
            actions.append(Callback("on_message", self.on_message, (message,)))
        actions.append(Deliver(self.inbox, message))
        return actions

    def ended_before_joining(self, code: int | None, reason: str) -> ConnectionError:
        """The error of an attempt whose connection closed before ``authenticated``."""
        if self.session.refusal is not None:
            return JoinRefused(self.session.refusal)
        return ClientClosed(code, reason or "closed before joining the room")

    def lost(self, code: int | None, reason: str) -> list[Action]:
        """The joined connection ended."""
        self.joined = False
        actions: list[Action] = [
            Log(
                "info",
                "lost the connection to {url} ({code}: {reason})",
                {"url": self.redacted_url, "code": code, "reason": reason},
            )
        ]
        if self.closing:
            actions.append(Finish(self.closed_by_client()))
        elif not self.reconnect or self.session.final or code == CLOSE_POLICY:
            actions.append(Finish(ClientClosed(code, reason)))
        else:
            if self.on_disconnected is not None:
                actions.append(Callback("on_disconnected", self.on_disconnected, (self.owner,)))
            actions.append(self._retry())
        return actions

    def gave_up(self, error: object) -> list[Action]:
        """The client failed for good (a first attempt is never retried)."""
        return [Finish(ClientClosed(ABNORMAL, str(error)))]

    def attempt_failed(self, error: object) -> list[Action]:
        """A reconnection attempt failed (`error`: ours, the network's, a timeout)."""
        if self.closing:
            return [Finish(self.closed_by_client())]
        if permanent(error):
            return [Finish(ClientClosed(ABNORMAL, str(error)))]
        return [Log("debug", "reconnection failed: {error}", {"error": str(error)}), self._retry()]

    def reconnected(self) -> list[Action]:
        """A reconnection attempt joined the room."""
        self._retries = 0
        actions: list[Action] = [
            Log(
                "info",
                "reconnected to {url} as {peer_id} (resumed: {resumed})",
                {
                    "url": self.redacted_url,
                    "peer_id": self.session.peer_id,
                    "resumed": self.session.resumed,
                },
            )
        ]
        if self.on_reconnected is not None:
            actions.append(Callback("on_reconnected", self.on_reconnected, (self.owner,)))
        return actions

    def close(self, code: int) -> bool:
        """
        The user closes the client: True when the adapter must now end the
        connection (or the attempt, or the wait); False when it is already
        closed or closing.
        """
        if self.closing or self.inbox.closed is not None:
            return False
        self.closing = True
        self.close_code = code
        return True

    def closed_by_client(self) -> ClientClosed:
        return ClientClosed(self.close_code, "closed by the client")

    def finish(self, reason: ClientClosed) -> bool:
        """Close the inbox with `reason`; False when it was already closed."""
        if self.inbox.closed is not None:
            return False
        self.inbox.close(reason)
        return True

    def _retry(self) -> Retry:
        delay = self.backoff.delay(self._retries, self.random)
        self._retries += 1
        return Retry(delay)


class ClientState:
    """The read-only view both clients share, over their `ClientCore`."""

    _core: ClientCore[Any]

    @property
    def url(self) -> str:
        """The room's socket URL, as given."""
        return self._core.url

    @property
    def peer_id(self) -> str:
        """This client's peer id (it changes when a reconnection is not a resume)."""
        return self._core.session.peer_id

    @property
    def peers(self) -> tuple[str, ...]:
        """The other peers of the room, in the order they joined."""
        return tuple(self._core.session.peers)

    @property
    def ice_servers(self) -> list[dict[str, Any]]:
        """RTCIceServer dictionaries from the server (see SPEC 5.2)."""
        return list(self._core.session.ice_servers)

    @property
    def authenticated(self) -> dict[str, Any]:
        """The data of the last ``authenticated`` message."""
        return dict(self._core.session.authenticated)

    @property
    def resume_token(self) -> str | None:
        """The token the next reconnection resumes with, when the server gave one."""
        return self._core.session.resume_token

    @property
    def resumed(self) -> bool:
        """True when the last reconnection kept the same peer id."""
        return self._core.session.resumed

    @property
    def closed(self) -> ClientClosed | None:
        """Why the client is closed for good; None while it is not."""
        return self._core.inbox.closed
