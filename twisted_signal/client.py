"""
A client for the signaling server, for Python programs that join rooms:
media bots, recorders, AI agents, test probes, load generators.

Two flavours over the same protocol (docs/protocol.md):

- Twisted: ``client = await connect(url)`` (or ``connect(url).addCallback(...)``)
  gives a `SignalingClient` once the server has said ``authenticated``::

      client = await connect("ws://127.0.0.1:8080/socket/demo/")
      client.send("hello", {"text": "hi"})          # to everyone else
      message = await client.next_message("hello")
      await client.close()

- asyncio: ``async with aio_connect(url) as client:`` gives an
  `AsyncSignalingClient`, built on the `websockets` package (install it:
  ``pip install websockets``); it needs no Twisted reactor::

      async with aio_connect("ws://127.0.0.1:8080/socket/demo/") as client:
          await client.send("hello", {"text": "hi"})
          async for message in client:
              print(message.event, message.from_, message.data)

Both keep `peer_id`, `peers` (followed through ``joined`` and ``left``),
`ice_servers` and `authenticated` (the data of the last ``authenticated``)
up to date.  Every other message from the server, ``error`` included, is a
`Message` with its sender in `Message.from_`; it goes to the ``on_message``
callback and to a buffer that `SignalingClient.next_message` and
`AsyncSignalingClient.recv` read from (a buffer of ``buffer_size`` messages:
when nobody reads it, the oldest are dropped).

With ``reconnect=True`` a lost connection is opened again after an
exponential, capped and jittered delay (`Backoff`), for as long as it takes.
When the server handed out a ``resume_token``, the new connection asks to
resume (``?resume=<token>``) and, if the server still holds the peer, keeps
its peer id (`resumed` is then true); otherwise the client joins as a new
peer.  ``on_reconnected(client)`` is called each time.  The client does not
come back when it was closed by the server on purpose: its room was closed
(``"Room closed"`` other than ``"shutdown"``), it was kicked or rate-limited
(close code 1008), or the server refuses the upgrade with 400, 401 or 403.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random as _random
import re
import ssl
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass
from inspect import isawaitable
from typing import TYPE_CHECKING, Any, Final, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .hooks import SerialQueue, call_logged
from .message import ALL, Addressees, InvalidMessage, Message

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IDelayedCall,
        IOpenSSLClientConnectionCreator,
        IProtocol,
        IReactorTime,
        IStreamClientEndpoint,
    )
    from websockets.asyncio.client import ClientConnection

__all__ = [
    "AsyncSignalingClient",
    "Backoff",
    "ClientClosed",
    "HandshakeFailed",
    "JoinRefused",
    "NotConnected",
    "SignalingClient",
    "aio_connect",
    "connect",
    "decode_server_message",
    "socket_url",
]

DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_BUFFER_SIZE: Final = 1024
_CLOSE_NORMAL: Final = 1000
_CLOSE_POLICY: Final = 1008
_ABNORMAL: Final = 1006
# Refusals that another attempt will not change.
_PERMANENT_STATUSES: Final = frozenset({400, 401, 403})

Target = str | Iterable[str]
"""Where a message goes: ``"all"``, one peer id, or several."""


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


# The pure parts: decoding, URLs, backoff, the followed state, the inbox.


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


def _encode(event: str, data: Any, to: Target) -> str:
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


def _permanent(error: BaseException) -> bool:
    return isinstance(error, HandshakeFailed) and error.status in _PERMANENT_STATUSES


class _ClientState:
    """The read-only view both clients share."""

    _session: _Session
    _inbox: _Inbox

    @property
    def peer_id(self) -> str:
        """This client's peer id (it changes when a reconnection is not a resume)."""
        return self._session.peer_id

    @property
    def peers(self) -> tuple[str, ...]:
        """The other peers of the room, in the order they joined."""
        return tuple(self._session.peers)

    @property
    def ice_servers(self) -> list[dict[str, Any]]:
        """RTCIceServer dictionaries from the server (see SPEC 5.2)."""
        return list(self._session.ice_servers)

    @property
    def authenticated(self) -> dict[str, Any]:
        """The data of the last ``authenticated`` message."""
        return dict(self._session.authenticated)

    @property
    def resume_token(self) -> str | None:
        """The token the next reconnection resumes with, when the server gave one."""
        return self._session.resume_token

    @property
    def resumed(self) -> bool:
        """True when the last reconnection kept the same peer id."""
        return self._session.resumed

    @property
    def closed(self) -> ClientClosed | None:
        """Why the client is closed for good; None while it is not."""
        return self._inbox.closed


# The Twisted client.


class _Protocol(WebSocketClientProtocol):
    factory: _Factory

    def __init__(self) -> None:
        super().__init__()
        self._handshake_error: str | None = None
        self._opened = False

    def onOpen(self) -> None:
        self._opened = True

    def failHandshake(self, reason: str) -> None:
        self._handshake_error = reason
        super().failHandshake(reason)

    def handshake_status(self) -> int | None:
        line = getattr(self, "http_status_line", None)
        match = re.match(r"HTTP/\S+\s+(\d{3})", line or "")
        return int(match.group(1)) if match else None

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        self.factory.connection.received(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.connection.lost(self, code, reason or "")


class _Factory(WebSocketClientFactory):
    def __init__(self, connection: _Connection, url: str, **kwargs: Any) -> None:
        super().__init__(url, **kwargs)
        self.protocol = _Protocol
        self.connection = connection


class _Connection:
    """
    One connection attempt.  `ready` fires when ``authenticated`` arrived,
    or fails when the connection ends before it.
    """

    def __init__(self, client: SignalingClient) -> None:
        self.client = client
        self.protocol: _Protocol | None = None
        self.open = False
        self.ready: Deferred[None] = Deferred(self._cancel)

    def _cancel(self, _: Deferred[None]) -> None:
        if self.protocol is not None:
            self.protocol.dropConnection(abort=True)

    def connected(self, protocol: IProtocol) -> Deferred[None]:
        assert isinstance(protocol, _Protocol)
        self.protocol = protocol
        return self.ready

    def received(self, payload: bytes, is_binary: bool) -> None:
        self.client._received(self, payload, is_binary)

    def lost(self, protocol: _Protocol, code: int | None, reason: str) -> None:
        self.protocol = None
        if self.open:
            self.client._lost(code, reason)
            return
        error: Exception
        if protocol._handshake_error is not None:
            error = HandshakeFailed(protocol.handshake_status(), protocol._handshake_error)
        elif not protocol._opened:
            # TLS failed, or the server hung up during the upgrade.
            error = HandshakeFailed(None, reason or "the connection closed during the handshake")
        elif self.client._session.refusal is not None:
            error = JoinRefused(self.client._session.refusal)
        else:
            error = ClientClosed(code, reason or "closed before joining the room")
        if not self.ready.called:
            self.ready.errback(Failure(error))


class SignalingClient(_ClientState):
    """
    A connection to a room, for Twisted programs; made by `connect`.

    The callbacks (`on_message(message)`, `on_disconnected(client)`,
    `on_reconnected(client)`) are called one at a time, in the order of
    events: if one returns a `Deferred` (or is ``async def``), the next waits
    for it.  Their failures are logged.  ``authenticated`` is not a message:
    it updates the properties (and fires `connect`'s Deferred, or
    ``on_reconnected``).
    """

    _log = Logger()

    def __init__(
        self,
        url: str,
        *,
        reactor: Any = None,
        token: str | None = None,
        reconnect: bool = False,
        backoff: Backoff = Backoff(),
        on_message: Callable[[Message], Any] | None = None,
        on_reconnected: Callable[[SignalingClient], Any] | None = None,
        on_disconnected: Callable[[SignalingClient], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        origin: str | None = None,
        tls: IOpenSSLClientConnectionCreator | None = None,
        endpoint: IStreamClientEndpoint | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        random: Callable[[], float] = _random.random,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        socket_url(url)  # check it early
        self.url = url
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._token = token
        self._reconnect = reconnect
        self._backoff = backoff
        self._on_message = on_message
        self._on_reconnected = on_reconnected
        self._on_disconnected = on_disconnected
        self._headers = dict(headers or {})
        self._origin = origin
        self._tls = tls
        self._endpoint = endpoint
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._random = random
        self._session = _Session()
        self._inbox = _Inbox(buffer_size)
        self._callbacks = SerialQueue("client callbacks")
        self._connection: _Connection | None = None
        self._attempt: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        self._retries = 0
        self._closing = False
        self._close_code = _CLOSE_NORMAL
        self._when_closed: list[Deferred[ClientClosed]] = []

    # Public API.

    @property
    def connected(self) -> bool:
        """True while a connection is open and joined to the room."""
        connection = self._connection
        return connection is not None and connection.open and connection.protocol is not None

    def send(self, event: str, data: Any = None, to: Target = ALL) -> None:
        """
        Send a message: `to` is ``"all"`` (every other peer), a peer id, or
        a list of peer ids.

        @raise NotConnected: there is no open connection right now.
        """
        connection = self._connection
        protocol = connection.protocol if connection is not None and connection.open else None
        if protocol is None or protocol.state != WebSocketProtocol.STATE_OPEN:
            raise NotConnected("not connected to the signaling server")
        protocol.sendMessage(_encode(event, data, to).encode("utf-8"))

    def next_message(
        self, event: str | None = None, *, timeout: float | None = None
    ) -> Deferred[Message]:
        """
        The next message (the oldest buffered one first), or the next one
        whose event is `event`; other messages stay buffered for later calls.
        Fails with `ClientClosed` once the client is closed and nothing
        buffered matches, and with `twisted.internet.defer.TimeoutError`
        after `timeout` seconds.
        """
        message = self._inbox.take(event)
        if message is not None:
            return succeed(message)
        waiter: _Waiter | None = None

        def cancel(_: Deferred[Message]) -> None:
            if waiter is not None:
                self._inbox.cancel(waiter)

        result: Deferred[Message] = Deferred(cancel)
        waiter = self._inbox.wait(event, result.callback, lambda e: result.errback(Failure(e)))
        if timeout is not None and not result.called:
            result.addTimeout(timeout, self._clock)
        return result

    def close(self, code: int = _CLOSE_NORMAL) -> Deferred[ClientClosed]:
        """
        Leave the room (close code `code`, 1000 or 3000-4999) and stop
        reconnecting.  Fires when the connection has closed.
        """
        if self._inbox.closed is not None:
            return succeed(self._inbox.closed)
        result = self.when_closed()
        self._closing = True
        self._close_code = code
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
            self._retry = None
        connection = self._connection
        if connection is not None and connection.open and connection.protocol is not None:
            connection.protocol.sendClose(code)
        elif self._attempt is not None:
            self._attempt.cancel()
        else:
            self._finish(ClientClosed(code, "closed by the client"))
        return result

    def when_closed(self) -> Deferred[ClientClosed]:
        """
        Fires with the reason once the client is closed for good.
        """
        if self._inbox.closed is not None:
            return succeed(self._inbox.closed)
        result: Deferred[ClientClosed] = Deferred()
        self._when_closed.append(result)
        return result

    # Connecting.

    def _open(self) -> Deferred[None]:
        """
        One attempt: connect, upgrade, wait for ``authenticated``.
        """
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
        from twisted.internet.ssl import optionsForClientTLS

        url = self._session.resume_url(self.url, self._token)
        parts = urlsplit(url)
        secure = parts.scheme == "wss"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if secure else 80)
        connection = _Connection(self)
        self._session.refusal = None
        factory = _Factory(
            connection,
            url,
            headers=self._headers,
            origin=self._origin,
            reactor=self._reactor,
        )
        factory.setProtocolOptions(
            openHandshakeTimeout=self._timeout,
            autoPingInterval=self._ping_interval or 0,
            autoPingTimeout=self._ping_timeout or 0,
            maxMessagePayloadSize=0,
            maxFramePayloadSize=0,
        )
        endpoint = self._endpoint
        if endpoint is None:
            endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self._timeout)
            if secure:
                endpoint = wrapClientTLS(self._tls or optionsForClientTLS(host), endpoint)
        self._connection = connection
        attempt = endpoint.connect(factory).addCallback(connection.connected)
        attempt.addTimeout(self._timeout, self._clock)
        self._attempt = attempt

        def done(result: object) -> object:
            if self._attempt is attempt:
                self._attempt = None
            return result

        attempt.addBoth(done)
        return attempt

    def _received(self, connection: _Connection, payload: bytes, is_binary: bool) -> None:
        if connection is not self._connection or is_binary or payload == b"pong":
            return
        try:
            message = decode_server_message(payload)
            if message.event == "authenticated":
                self._session.authenticate(message.data)
        except InvalidMessage as e:
            self._log.warn("ignored a frame from the server: {error}", error=str(e))
            return
        if message.event == "authenticated":
            if not connection.open:
                connection.open = True
                connection.ready.callback(None)
            return
        self._session.follow(message)
        if self._on_message is not None:
            self._callback("on_message", self._on_message, message)
        self._inbox.put(message)

    def _callback(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        # One queue for all user callbacks, so they run in the order of events.
        self._callbacks.run(lambda: call_logged(what, fn, *args))

    def _lost(self, code: int | None, reason: str) -> None:
        self._log.info(
            "lost the connection to {url} ({code}: {reason})",
            url=_redacted(self.url),
            code=code,
            reason=reason,
        )
        if self._closing:
            self._finish(ClientClosed(self._close_code, "closed by the client"))
        elif not self._reconnect or self._session.final or code == _CLOSE_POLICY:
            self._finish(ClientClosed(code, reason))
        else:
            if self._on_disconnected is not None:
                self._callback("on_disconnected", self._on_disconnected, self)
            self._schedule()

    def _schedule(self) -> None:
        delay = self._backoff.delay(self._retries, self._random)
        self._retries += 1
        self._retry = self._clock.callLater(delay, self._try_again)

    def _try_again(self) -> None:
        self._retry = None
        self._open().addCallbacks(self._reconnected, self._failed_again)

    def _reconnected(self, _: object) -> None:
        self._retries = 0
        self._log.info(
            "reconnected to {url} as {peer_id} (resumed: {resumed})",
            url=_redacted(self.url),
            peer_id=self.peer_id,
            resumed=self.resumed,
        )
        if self._on_reconnected is not None:
            self._callback("on_reconnected", self._on_reconnected, self)

    def _failed_again(self, failure: Failure) -> None:
        if self._closing:
            self._finish(ClientClosed(self._close_code, "closed by the client"))
        elif failure.value is not None and _permanent(failure.value):
            self._finish(ClientClosed(_ABNORMAL, str(failure.value)))
        else:
            self._log.debug("reconnection failed: {error}", error=str(failure.value))
            self._schedule()

    def _finish(self, reason: ClientClosed) -> None:
        if self._inbox.closed is not None:
            return
        self._connection = None
        self._inbox.close(reason)
        waiting, self._when_closed = self._when_closed, []
        for d in waiting:
            d.callback(reason)


def connect(
    url: str,
    *,
    reactor: Any = None,
    token: str | None = None,
    reconnect: bool = False,
    backoff: Backoff = Backoff(),
    on_message: Callable[[Message], Any] | None = None,
    on_reconnected: Callable[[SignalingClient], Any] | None = None,
    on_disconnected: Callable[[SignalingClient], Any] | None = None,
    headers: Mapping[str, str] | None = None,
    origin: str | None = None,
    tls: IOpenSSLClientConnectionCreator | None = None,
    endpoint: IStreamClientEndpoint | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    random: Callable[[], float] = _random.random,
) -> Deferred[SignalingClient]:
    """
    Join the room at `url` (``ws://HOST/socket/<room>/`` or ``wss://...``).

    Fires with the `SignalingClient` once the server sent ``authenticated``.
    Fails with `HandshakeFailed` (the upgrade was refused: `status` 401,
    404, ...; or None when the TLS or WebSocket handshake failed),
    `JoinRefused` (the room refused the peer), a Twisted connection error
    (`twisted.internet.error.ConnectError`), or
    `twisted.internet.defer.TimeoutError` after `timeout` seconds.  The
    first attempt is never retried, even with `reconnect`.

    @param token: sent as the ``token`` query parameter (SPEC 5.1).
    @param reconnect: come back after a lost connection (see the module
        docstring), waiting `backoff` delays; `on_disconnected(client)` is
        called when the connection is lost and `on_reconnected(client)` once
        the client is back in the room.
    @param tls: the TLS options for ``wss://`` (default: the system's
        trust roots and the URL's host name).
    @param endpoint: connect through this endpoint instead of one made from
        the URL.
    @param ping_interval: send WebSocket pings this often (None: never) and
        drop a connection that has not answered within `ping_timeout`.
    @param random: the jitter's source, for tests.
    """
    client = SignalingClient(
        url,
        reactor=reactor,
        token=token,
        reconnect=reconnect,
        backoff=backoff,
        on_message=on_message,
        on_reconnected=on_reconnected,
        on_disconnected=on_disconnected,
        headers=headers,
        origin=origin,
        tls=tls,
        endpoint=endpoint,
        timeout=timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        buffer_size=buffer_size,
        random=random,
    )

    def failed(failure: Failure) -> Failure:
        client._finish(ClientClosed(_ABNORMAL, str(failure.value)))
        return failure

    try:
        attempt = client._open()
    except Exception:
        return fail()
    return attempt.addCallbacks(lambda _: client, failed)


# The asyncio client.

_aio_log = logging.getLogger(__name__)


class AsyncSignalingClient(_ClientState):
    """
    A connection to a room, for asyncio programs; made by `aio_connect`.
    It needs the `websockets` package.

    Read messages with `recv` or ``async for message in client`` (which
    ends when the client is closed for good).  The callbacks
    (`on_message(message)`, `on_disconnected(client)`,
    `on_reconnected(client)`, plain or ``async def``) are called one at a
    time, in the order of events, from a task of their own, so a callback
    may wait for anything, even `recv`.
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        reconnect: bool = False,
        backoff: Backoff = Backoff(),
        on_message: Callable[[Message], Any] | None = None,
        on_reconnected: Callable[[AsyncSignalingClient], Any] | None = None,
        on_disconnected: Callable[[AsyncSignalingClient], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        origin: str | None = None,
        ssl: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        random: Callable[[], float] = _random.random,
    ) -> None:
        socket_url(url)  # check it early
        self.url = url
        self._token = token
        self._reconnect = reconnect
        self._backoff = backoff
        self._on_message = on_message
        self._on_reconnected = on_reconnected
        self._on_disconnected = on_disconnected
        self._headers = dict(headers or {})
        self._origin = origin
        self._ssl = ssl
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._random = random
        self._session = _Session()
        self._inbox = _Inbox(buffer_size)
        self._ws: ClientConnection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._callbacks: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closing = False
        self._close_code = _CLOSE_NORMAL
        self._done = asyncio.Event()

    # Public API.

    @property
    def connected(self) -> bool:
        """True while a connection is open and joined to the room."""
        return self._ws is not None

    async def send(self, event: str, data: Any = None, to: Target = ALL) -> None:
        """
        Send a message: `to` is ``"all"`` (every other peer), a peer id, or
        a list of peer ids.

        @raise NotConnected: there is no open connection right now.
        """
        from websockets.exceptions import ConnectionClosed

        ws = self._ws
        if ws is None:
            raise NotConnected("not connected to the signaling server")
        try:
            await ws.send(_encode(event, data, to))
        except ConnectionClosed:
            raise NotConnected("the connection to the signaling server was lost") from None

    async def recv(self, event: str | None = None, *, timeout: float | None = None) -> Message:
        """
        The next message (the oldest buffered one first), or the next one
        whose event is `event`; other messages stay buffered.

        @raise ClientClosed: the client is closed and nothing buffered matches.
        @raise TimeoutError: nothing came within `timeout` seconds.
        """
        message = self._inbox.take(event)
        if message is not None:
            return message
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        def deliver(message: Message) -> None:
            if not future.done():
                future.set_result(message)

        def failed(error: BaseException) -> None:
            if not future.done():
                future.set_exception(error)

        waiter = self._inbox.wait(event, deliver, failed)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            self._inbox.cancel(waiter)

    def __aiter__(self) -> AsyncSignalingClient:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.recv()
        except ClientClosed:
            raise StopAsyncIteration from None

    async def close(self, code: int = _CLOSE_NORMAL) -> ClientClosed:
        """
        Leave the room (close code `code`) and stop reconnecting; returns
        once the connection has closed.
        """
        if not self._closing and self._inbox.closed is None:
            self._closing = True
            self._close_code = code
            ws = self._ws
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.close(code)
            supervisor = self._supervisor
            if supervisor is not None and supervisor is not asyncio.current_task():
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
            self._finish(ClientClosed(code, "closed by the client"))
        return await self.wait_closed()

    async def wait_closed(self) -> ClientClosed:
        """
        Returns the reason once the client is closed for good.
        """
        await self._done.wait()
        assert self._inbox.closed is not None
        return self._inbox.closed

    # Connecting.

    async def _start(self) -> None:
        try:
            ws = await self._open()
        except BaseException as e:
            self._finish(ClientClosed(_ABNORMAL, str(e)))
            raise
        self._ws = ws
        self._supervisor = asyncio.create_task(self._supervise(ws))

    async def _open(self) -> ClientConnection:
        """
        One attempt: connect, upgrade, wait for ``authenticated``.
        """
        try:
            from websockets.asyncio.client import connect as ws_connect
            from websockets.exceptions import (
                ConnectionClosed,
                InvalidHandshake,
                InvalidStatus,
            )
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError(
                "the asyncio client needs the websockets package: pip install websockets"
            ) from e

        self._session.refusal = None
        url = self._session.resume_url(self.url, self._token)
        try:
            async with asyncio.timeout(self._timeout):
                tls: dict[str, Any] = {} if self._ssl is None else {"ssl": self._ssl}
                ws = await ws_connect(
                    url,
                    additional_headers=self._headers,
                    origin=cast(Any, self._origin),
                    open_timeout=None,
                    ping_interval=self._ping_interval,
                    ping_timeout=self._ping_timeout,
                    max_size=None,
                    proxy=None,
                    **tls,
                )
                try:
                    while True:
                        frame = await ws.recv()
                        message = self._decode(frame)
                        if message is None:
                            continue
                        if message.event == "authenticated":
                            return ws
                        self._deliver(message)
                except BaseException:
                    await _abort(ws)
                    raise
        except InvalidStatus as e:
            status = e.response.status_code
            raise HandshakeFailed(status, e.response.reason_phrase) from None
        except (InvalidHandshake, ssl.SSLError) as e:
            raise HandshakeFailed(None, str(e)) from e
        except ConnectionClosed as e:
            if self._session.refusal is not None:
                raise JoinRefused(self._session.refusal) from None
            code = e.rcvd.code if e.rcvd is not None else _ABNORMAL
            reason = e.rcvd.reason if e.rcvd is not None else "connection lost"
            raise ClientClosed(code, reason or "closed before joining the room") from None

    def _decode(self, frame: str | bytes) -> Message | None:
        if isinstance(frame, bytes) or frame == "pong":
            return None
        try:
            message = decode_server_message(frame)
            if message.event == "authenticated":
                self._session.authenticate(message.data)
        except InvalidMessage as e:
            _aio_log.warning("ignored a frame from the server: %s", e)
            return None
        return message

    def _deliver(self, message: Message) -> None:
        self._session.follow(message)
        if self._on_message is not None:
            self._callback("on_message", self._on_message, message)
        self._inbox.put(message)

    def _callback(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        # User callbacks run one at a time, in the order of events, in a task
        # of their own: one that waits (even for a message) never stops the
        # connection from being read.
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch())
        self._callbacks.put_nowait(lambda: _call_logged(what, fn, *args))

    async def _dispatch(self) -> None:
        while (job := await self._callbacks.get()) is not None:
            await job()

    async def _supervise(self, ws: ClientConnection) -> None:
        reason = ClientClosed(_ABNORMAL, "connection lost")
        try:
            while True:
                self._ws = ws
                code, text = await self._read(ws)
                self._ws = None
                _aio_log.info("lost the connection to %s (%s: %s)", _redacted(self.url), code, text)
                reason = ClientClosed(code, text)
                if (
                    self._closing
                    or not self._reconnect
                    or self._session.final
                    or code == _CLOSE_POLICY
                ):
                    return
                if self._on_disconnected is not None:
                    self._callback("on_disconnected", self._on_disconnected, self)
                ws = self._ws = await self._reopen()
                _aio_log.info(
                    "reconnected to %s as %s (resumed: %s)",
                    _redacted(self.url),
                    self.peer_id,
                    self.resumed,
                )
                if self._on_reconnected is not None:
                    self._callback("on_reconnected", self._on_reconnected, self)
        except _GiveUp as e:
            reason = ClientClosed(_ABNORMAL, str(e.__cause__))
        except Exception as e:
            _aio_log.exception("the signaling connection failed")
            reason = ClientClosed(_ABNORMAL, str(e))
        finally:
            self._ws = None
            if self._closing:
                reason = ClientClosed(self._close_code, "closed by the client")
            self._finish(reason)

    async def _read(self, ws: ClientConnection) -> tuple[int, str]:
        from websockets.exceptions import ConnectionClosed

        try:
            async for frame in ws:
                message = self._decode(frame)
                if message is not None and message.event != "authenticated":
                    self._deliver(message)
        except ConnectionClosed:
            pass
        return ws.close_code or _ABNORMAL, ws.close_reason or ""

    async def _reopen(self) -> ClientConnection:
        attempt = 0
        while True:
            await asyncio.sleep(self._backoff.delay(attempt, self._random))
            attempt += 1
            try:
                return await self._open()
            except OSError as e:  # our errors, timeouts and the network's
                if _permanent(e):
                    raise _GiveUp() from e
                _aio_log.debug("reconnection failed: %s", e)

    def _finish(self, reason: ClientClosed) -> None:
        if self._inbox.closed is not None:
            return
        self._inbox.close(reason)
        if self._dispatcher is not None:
            self._callbacks.put_nowait(None)
        self._done.set()


class _GiveUp(Exception):
    pass


async def _abort(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 1.0)


async def _call_logged(what: str, fn: Callable[..., Any], *args: Any) -> None:
    try:
        result = fn(*args)
        if isawaitable(result):
            await result
    except Exception:
        _aio_log.exception("Error in %s", what)


class _Connector:
    """What `aio_connect` returns: awaitable, or an async context manager."""

    def __init__(self, client: AsyncSignalingClient) -> None:
        self._client = client

    async def _connect(self) -> AsyncSignalingClient:
        await self._client._start()
        return self._client

    def __await__(self) -> Generator[Any, None, AsyncSignalingClient]:
        return self._connect().__await__()

    async def __aenter__(self) -> AsyncSignalingClient:
        return await self._connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self._client.close()


def aio_connect(
    url: str,
    *,
    token: str | None = None,
    reconnect: bool = False,
    backoff: Backoff = Backoff(),
    on_message: Callable[[Message], Any] | None = None,
    on_reconnected: Callable[[AsyncSignalingClient], Any] | None = None,
    on_disconnected: Callable[[AsyncSignalingClient], Any] | None = None,
    headers: Mapping[str, str] | None = None,
    origin: str | None = None,
    ssl: ssl.SSLContext | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    ping_interval: float | None = 20.0,
    ping_timeout: float | None = 20.0,
    buffer_size: int = DEFAULT_BUFFER_SIZE,
    random: Callable[[], float] = _random.random,
) -> _Connector:
    """
    Join the room at `url` from asyncio code; needs the `websockets` package
    (``pip install websockets``), and no Twisted reactor.

    Use it as ``async with aio_connect(url) as client:`` (the client is
    closed on the way out) or ``client = await aio_connect(url)`` (then
    ``await client.close()``).  It returns once the server sent
    ``authenticated``, or raises `HandshakeFailed`, `JoinRefused`,
    `ClientClosed`, `OSError` or `TimeoutError` (after `timeout` seconds);
    the first attempt is never retried.  The other arguments are those of
    `connect`; `ssl` is the `ssl.SSLContext` for ``wss://``.
    """
    client = AsyncSignalingClient(
        url,
        token=token,
        reconnect=reconnect,
        backoff=backoff,
        on_message=on_message,
        on_reconnected=on_reconnected,
        on_disconnected=on_disconnected,
        headers=headers,
        origin=origin,
        ssl=ssl,
        timeout=timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        buffer_size=buffer_size,
        random=random,
    )
    return _Connector(client)
