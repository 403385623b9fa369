"""
The Twisted face of the client: Autobahn's WebSocket client protocol
driving a `ClientCore`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Unpack

from autobahn.twisted.websocket import WebSocketClientFactory, WebSocketClientProtocol
from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from ..hooks import SerialQueue, call_logged
from ..message import ALL, Message
from ._core import (
    CLOSE_NORMAL,
    ClientClosed,
    ClientCore,
    ClientOptions,
    ClientState,
    HandshakeFailed,
    NotConnected,
    Target,
    _Waiter,
    encode,
    perform,
)
from ._core import LogLevel as _Level

if TYPE_CHECKING:
    from collections.abc import Callable
    from urllib.parse import SplitResult

    from twisted.internet.interfaces import (
        IDelayedCall,
        IOpenSSLClientConnectionCreator,
        IProtocol,
        IReactorTime,
        IStreamClientEndpoint,
    )


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
        else:
            error = self.client._core.ended_before_joining(code, reason)
        if not self.ready.called:
            self.ready.errback(Failure(error))


class SignalingClient(ClientState):
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
        tls: IOpenSSLClientConnectionCreator | None = None,
        endpoint: IStreamClientEndpoint | None = None,
        **options: Unpack[ClientOptions[SignalingClient]],
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self._core = ClientCore(url, self, options)
        self._reactor = reactor
        self._clock: IReactorTime = reactor
        self._tls = tls
        self._endpoint = endpoint
        self._callbacks = SerialQueue("client callbacks")
        self._connection: _Connection | None = None
        self._attempt: Deferred[None] | None = None
        self._retry: IDelayedCall | None = None
        self._when_closed: list[Deferred[ClientClosed]] = []

    # Public API.

    @property
    def connected(self) -> bool:
        """True while a connection is open and joined to the room."""
        return self._open_protocol() is not None

    def send(self, event: str, data: Any = None, to: Target = ALL) -> None:
        """
        Send a message: `to` is ``"all"`` (every other peer), a peer id, or
        a list of peer ids.

        @raise NotConnected: there is no open connection right now.
        """
        protocol = self._open_protocol()
        if protocol is None or protocol.state != WebSocketProtocol.STATE_OPEN:
            raise NotConnected("not connected to the signaling server")
        protocol.sendMessage(encode(event, data, to).encode("utf-8"))

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
        message = self._core.inbox.take(event)
        if message is not None:
            return succeed(message)
        waiter: _Waiter | None = None

        def cancel(_: Deferred[Message]) -> None:
            if waiter is not None:
                self._core.inbox.cancel(waiter)

        result: Deferred[Message] = Deferred(cancel)
        waiter = self._core.inbox.wait(event, result.callback, lambda e: result.errback(Failure(e)))
        if timeout is not None and not result.called:
            result.addTimeout(timeout, self._clock)
        return result

    def close(self, code: int = CLOSE_NORMAL) -> Deferred[ClientClosed]:
        """
        Leave the room (close code `code`, 1000 or 3000-4999) and stop
        reconnecting.  Fires when the connection has closed.
        """
        result = self.when_closed()
        if not self._core.close(code):
            return result
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
            self._retry = None
        protocol = self._open_protocol()
        if protocol is not None:
            protocol.sendClose(code)
        elif self._attempt is not None:
            self._attempt.cancel()
        else:
            self._finish(self._core.closed_by_client())
        return result

    def when_closed(self) -> Deferred[ClientClosed]:
        """
        Fires with the reason once the client is closed for good.
        """
        if self._core.closed is not None:
            return succeed(self._core.closed)
        result: Deferred[ClientClosed] = Deferred()
        self._when_closed.append(result)
        return result

    # Connecting.

    def _open_protocol(self) -> _Protocol | None:
        connection = self._connection
        return connection.protocol if connection is not None and connection.open else None

    def _open(self) -> Deferred[None]:
        """
        One attempt: connect, upgrade, wait for ``authenticated``.
        """
        from urllib.parse import urlsplit

        core = self._core
        url = core.attempt()
        connection = _Connection(self)
        factory = _Factory(
            connection, url, headers=core.headers, origin=core.origin, reactor=self._reactor
        )
        factory.setProtocolOptions(
            openHandshakeTimeout=core.timeout,
            autoPingInterval=core.ping_interval or 0,
            autoPingTimeout=core.ping_timeout or 0,
            maxMessagePayloadSize=0,
            maxFramePayloadSize=0,
        )
        endpoint = self._endpoint or self._endpoint_for(urlsplit(url))
        self._connection = connection
        attempt = endpoint.connect(factory).addCallback(connection.connected)
        attempt.addTimeout(core.timeout, self._clock)
        self._attempt = attempt

        def done(result: object) -> object:
            if self._attempt is attempt:
                self._attempt = None
            return result

        attempt.addBoth(done)
        return attempt

    def _endpoint_for(self, parts: SplitResult) -> IStreamClientEndpoint:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
        from twisted.internet.ssl import optionsForClientTLS

        secure = parts.scheme == "wss"
        host = parts.hostname or "localhost"
        port = parts.port or (443 if secure else 80)
        endpoint = HostnameEndpoint(self._reactor, host, port, timeout=self._core.timeout)
        if secure:
            return wrapClientTLS(self._tls or optionsForClientTLS(host), endpoint)
        return endpoint

    def _received(self, connection: _Connection, payload: bytes, is_binary: bool) -> None:
        if connection is not self._connection:
            return
        perform(self._core.received(payload, is_binary), self)
        if self._core.joined and not connection.open:
            connection.open = True
            connection.ready.callback(None)

    def _lost(self, code: int | None, reason: str) -> None:
        perform(self._core.lost(code, reason), self)

    def _try_again(self) -> None:
        self._retry = None
        self._open().addCallbacks(
            lambda _: perform(self._core.reconnected(), self),
            lambda failure: perform(self._core.attempt_failed(failure.value), self),
        )

    # Effects: what the core's actions do here.

    def _run_callback(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        # One queue for all user callbacks, so they run in the order of events.
        self._callbacks.run(lambda: call_logged(what, fn, *args))

    def _log_line(self, level: _Level, text: str, fields: dict[str, Any]) -> None:
        self._log.emit(LogLevel.lookupByName(level), text, **fields)

    def _retry_after(self, delay: float) -> None:
        self._retry = self._clock.callLater(delay, self._try_again)

    def _finish(self, reason: ClientClosed) -> None:
        if not self._core.finish(reason):
            return
        self._connection = None
        waiting, self._when_closed = self._when_closed, []
        for d in waiting:
            d.callback(reason)


def connect(
    url: str,
    *,
    reactor: Any = None,
    tls: IOpenSSLClientConnectionCreator | None = None,
    endpoint: IStreamClientEndpoint | None = None,
    **options: Unpack[ClientOptions[SignalingClient]],
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

    @param reactor: the reactor (default: the global one).
    @param tls: the TLS options for ``wss://`` (default: the system's
        trust roots and the URL's host name).
    @param endpoint: connect through this endpoint instead of one made from
        the URL.
    @param options: those of `ClientOptions`:
        ``token`` (sent as the ``token`` query parameter, SPEC 5.1);
        ``reconnect`` (come back after a lost connection, see the module
        docstring, waiting ``backoff`` delays; ``on_disconnected(client)``
        is called when the connection is lost and ``on_reconnected(client)``
        once the client is back in the room); ``on_message(message)``;
        ``headers`` and ``origin`` for the upgrade request; ``timeout``
        (seconds, 10); ``ping_interval`` (send WebSocket pings this often,
        20 s; None: never) and ``ping_timeout`` (drop a connection that has
        not answered within it, 20 s); ``buffer_size`` (1024 messages);
        ``random`` (the jitter's source, for tests).
    """
    client = SignalingClient(url, reactor=reactor, tls=tls, endpoint=endpoint, **options)

    def failed(failure: Failure) -> Failure:
        perform(client._core.gave_up(failure.value), client)
        return failure

    try:
        attempt = client._open()
    except Exception:
        return fail()
    return attempt.addCallbacks(lambda _: client, failed)
