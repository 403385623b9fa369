"""
The asyncio face of the client: the `websockets` package driving a
`ClientCore` (the sans-IO core), with no Twisted reactor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Generator
from inspect import isawaitable
from typing import TYPE_CHECKING, Any, Unpack, cast

from ..message import ALL, Message
from . import _core as sansio
from ._core import ClientClosed, ClientOptions, LogLevel, Target

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

_log = logging.getLogger("twisted_signal.client")
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}


class AsyncSignalingClient(sansio.ClientState):
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
        ssl: ssl.SSLContext | None = None,
        **options: Unpack[ClientOptions[AsyncSignalingClient]],
    ) -> None:
        self._core = sansio.ClientCore(url, self, options)
        self._ssl = ssl
        self._ws: ClientConnection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._callbacks: asyncio.Queue[Callable[[], Awaitable[None]] | None] = asyncio.Queue()
        self._dispatcher: asyncio.Task[None] | None = None
        self._next_delay: float | None = None
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
            raise sansio.NotConnected("not connected to the signaling server")
        try:
            await ws.send(sansio.encode(event, data, to))
        except ConnectionClosed:
            raise sansio.NotConnected("the connection to the signaling server was lost") from None

    async def recv(self, event: str | None = None, *, timeout: float | None = None) -> Message:
        """
        The next message (the oldest buffered one first), or the next one
        whose event is `event`; other messages stay buffered.

        @raise ClientClosed: the client is closed and nothing buffered matches.
        @raise TimeoutError: nothing came within `timeout` seconds.
        """
        inbox = self._core.inbox
        message = inbox.take(event)
        if message is not None:
            return message
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()

        def deliver(message: Message) -> None:
            if not future.done():
                future.set_result(message)

        def failed(error: BaseException) -> None:
            if not future.done():
                future.set_exception(error)

        waiter = inbox.wait(event, deliver, failed)
        try:
            async with asyncio.timeout(timeout):
                return await future
        finally:
            inbox.cancel(waiter)

    def __aiter__(self) -> AsyncSignalingClient:
        return self

    async def __anext__(self) -> Message:
        try:
            return await self.recv()
        except ClientClosed:
            raise StopAsyncIteration from None

    async def close(self, code: int = sansio.CLOSE_NORMAL) -> ClientClosed:
        """
        Leave the room (close code `code`) and stop reconnecting; returns
        once the connection has closed.
        """
        if self._core.close(code):
            ws = self._ws
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.close(code)
            supervisor = self._supervisor
            if supervisor is not None and supervisor is not asyncio.current_task():
                supervisor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await supervisor
            self._finish(self._core.closed_by_client())
        return await self.wait_closed()

    async def wait_closed(self) -> ClientClosed:
        """
        Returns the reason once the client is closed for good.
        """
        await self._done.wait()
        assert self._core.closed is not None
        return self._core.closed

    # Connecting.

    async def _start(self) -> None:
        try:
            ws = await self._open()
        except BaseException as e:
            sansio.perform(self._core.gave_up(e), self)
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

        core = self._core
        url = core.attempt()
        try:
            async with asyncio.timeout(core.timeout):
                tls: dict[str, Any] = {} if self._ssl is None else {"ssl": self._ssl}
                ws = await ws_connect(
                    url,
                    additional_headers=core.headers,
                    origin=cast(Any, core.origin),
                    open_timeout=None,
                    ping_interval=core.ping_interval,
                    ping_timeout=core.ping_timeout,
                    max_size=None,
                    proxy=None,
                    **tls,
                )
                try:
                    while not core.joined:
                        frame = await ws.recv()
                        sansio.perform(core.received(frame, isinstance(frame, bytes)), self)
                    return ws
                except BaseException:
                    await _abort(ws)
                    raise
        except InvalidStatus as e:
            status = e.response.status_code
            raise sansio.HandshakeFailed(status, e.response.reason_phrase) from None
        except (InvalidHandshake, ssl.SSLError) as e:
            raise sansio.HandshakeFailed(None, str(e)) from e
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd is not None else sansio.ABNORMAL
            reason = e.rcvd.reason if e.rcvd is not None else "connection lost"
            raise core.ended_before_joining(code, reason) from None

    async def _supervise(self, ws: ClientConnection | None) -> None:
        try:
            while ws is not None:
                self._ws = ws
                code, text = await self._read(ws)
                self._ws = None
                sansio.perform(self._core.lost(code, text), self)
                ws = await self._reopen()
        except Exception as e:
            _log.exception("the signaling connection failed")
            sansio.perform(self._core.gave_up(e), self)
        finally:
            self._ws = None
            if self._core.closing:
                self._finish(self._core.closed_by_client())

    async def _read(self, ws: ClientConnection) -> tuple[int, str]:
        from websockets.exceptions import ConnectionClosed

        try:
            async for frame in ws:
                sansio.perform(self._core.received(frame, isinstance(frame, bytes)), self)
        except ConnectionClosed:
            pass
        return ws.close_code or sansio.ABNORMAL, ws.close_reason or ""

    async def _reopen(self) -> ClientConnection | None:
        """Attempts after the delays the core asks for; None when it gives up."""
        while self._next_delay is not None:
            delay, self._next_delay = self._next_delay, None
            await asyncio.sleep(delay)
            try:
                ws = await self._open()
            except OSError as e:  # our errors, timeouts and the network's
                sansio.perform(self._core.attempt_failed(e), self)
                continue
            sansio.perform(self._core.reconnected(), self)
            return ws
        return None

    # Effects: what the core's actions do here.

    def _run_callback(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        # User callbacks run one at a time, in the order of events, in a task
        # of their own: one that waits (even for a message) never stops the
        # connection from being read.
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch())
        self._callbacks.put_nowait(lambda: _call_logged(what, fn, *args))

    async def _dispatch(self) -> None:
        while (job := await self._callbacks.get()) is not None:
            await job()

    def _log_line(self, level: LogLevel, text: str, fields: dict[str, Any]) -> None:
        _log.log(_LEVELS[level], text.format(**fields))

    def _retry_after(self, delay: float) -> None:
        self._next_delay = delay

    def _finish(self, reason: ClientClosed) -> None:
        if not self._core.finish(reason):
            return
        if self._dispatcher is not None:
            self._callbacks.put_nowait(None)
        self._done.set()


async def _abort(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 1.0)


async def _call_logged(what: str, fn: Callable[..., Any], *args: Any) -> None:
    try:
        result = fn(*args)
        if isawaitable(result):
            await result
    except Exception:
        _log.exception("Error in %s", what)


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
    ssl: ssl.SSLContext | None = None,
    **options: Unpack[ClientOptions[AsyncSignalingClient]],
) -> _Connector:
    """
    Join the room at `url` from asyncio code; needs the `websockets` package
    (``pip install websockets``), and no Twisted reactor.

    Use it as ``async with aio_connect(url) as client:`` (the client is
    closed on the way out) or ``client = await aio_connect(url)`` (then
    ``await client.close()``).  It returns once the server sent
    ``authenticated``, or raises `HandshakeFailed`, `JoinRefused`,
    `ClientClosed`, `OSError` or `TimeoutError` (after `timeout` seconds);
    the first attempt is never retried.  `ssl` is the `ssl.SSLContext` for
    ``wss://``; the other options are those of `connect` (`ClientOptions`).
    """
    return _Connector(AsyncSignalingClient(url, ssl=ssl, **options))
