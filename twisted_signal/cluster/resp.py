"""
A small Redis client on Twisted: RESP2 over one connection, Deferred per
command, in order.  It knows only what cluster mode sends (EVAL, XADD,
XREAD BLOCK, INFO and a few plain commands), and reconnects by itself.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint, UNIXClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from twisted.internet.interfaces import IStreamClientEndpoint

__all__ = ["RedisClient", "RedisError", "RedisUnavailable", "parse_url"]


class RedisError(Exception):
    """Redis answered with an error."""


class RedisUnavailable(Exception):
    """No connection to Redis right now."""


def parse_url(url: str) -> tuple[str, str, int, int]:
    """
    ``redis://host:port/db`` or ``unix:///path`` as (kind, host or path,
    port, db).

    @raise ValueError: not such a URL.
    """
    parts = urlsplit(url)
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("unix:// needs a socket path, as in unix:///run/redis.sock")
        return "unix", parts.path, 0, 0
    if parts.scheme == "rediss":
        raise ValueError("rediss:// (TLS) is not supported yet; use a TLS tunnel or unix://")
    if parts.scheme != "redis":
        raise ValueError("expected redis://host:port/db or unix:///path")
    try:
        port = parts.port or 6379
        db = int(parts.path.strip("/") or 0)
    except ValueError:
        raise ValueError("the port and the db must be numbers") from None
    return "tcp", parts.hostname or "127.0.0.1", port, db


def encode(args: tuple[Any, ...]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg if isinstance(arg, bytes) else str(arg).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class _Parser:
    """Incremental RESP2 reply parser; `feed` returns the complete replies."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, data: bytes) -> list[Any]:
        self._buf += data
        replies = []
        while True:
            parsed = self._parse(0)
            if parsed is None:
                break
            value, end = parsed
            self._buf = self._buf[end:]
            replies.append(value)
        return replies

    def _parse(self, at: int) -> tuple[Any, int] | None:
        buf = self._buf
        eol = buf.find(b"\r\n", at)
        if eol < 0:
            return None
        kind, line, after = buf[at : at + 1], buf[at + 1 : eol], eol + 2
        if kind in _SIMPLE:
            return _SIMPLE[kind](line), after
        if kind == b"$":
            size = int(line)
            end = after + size + 2 if size >= 0 else after
            if len(buf) < end:
                return None
            return (buf[after : after + size] if size >= 0 else None), end
        if kind != b"*":
            raise RedisError(f"bad reply type {kind!r}")
        count = int(line)
        items: list[Any] | None = None if count < 0 else []
        for _ in range(max(count, 0)):
            parsed = self._parse(after)
            if parsed is None:
                return None
            item, after = parsed
            assert items is not None
            items.append(item)
        return items, after


_SIMPLE: dict[bytes, Any] = {
    b"+": lambda line: line.decode(),
    b"-": lambda line: RedisError(line.decode()),
    b":": int,
}


class _RedisProtocol(Protocol):
    def __init__(self) -> None:
        self._parser = _Parser()
        self._waiting: deque[Deferred[Any]] = deque()
        self.on_lost: Any = None

    def execute(self, *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        assert self.transport is not None
        self.transport.write(encode(args))
        return d

    def dataReceived(self, data: bytes) -> None:
        for reply in self._parser.feed(data):
            d = self._waiting.popleft()
            if isinstance(reply, RedisError):
                d.errback(Failure(reply))
            else:
                d.callback(reply)

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(Failure(RedisUnavailable(str(reason.value))))
        if self.on_lost is not None:
            self.on_lost()


class RedisClient:
    """
    One connection to Redis, made on first use and again after it is lost.
    While there is none, commands fail with `RedisUnavailable` at once: the
    cluster code retries on its own schedule, so nothing queues up unbounded.
    """

    _log = Logger()

    def __init__(self, url: str, reactor: Any, *, timeout: float = 5.0) -> None:
        kind, host, port, self._db = parse_url(url)
        self._reactor = reactor
        self._timeout = timeout
        self._endpoint: IStreamClientEndpoint
        if kind == "unix":
            self._endpoint = UNIXClientEndpoint(reactor, host, timeout=timeout)
        elif ":" in host:
            self._endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
        else:
            self._endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        self._protocol: _RedisProtocol | None = None
        self._connecting: Deferred[Any] | None = None
        self._closed = False

    def execute(self, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        """Send one command; fires with its reply."""
        if self._closed:
            return fail(RedisUnavailable("closed"))
        protocol = self._protocol
        if protocol is not None:
            d = protocol.execute(*args)
        else:
            d = self._connect().addCallback(lambda p: p.execute(*args))
        return d.addTimeout(timeout if timeout is not None else self._timeout, self._reactor)

    def _connect(self) -> Deferred[_RedisProtocol]:
        if self._connecting is None:
            connecting: Deferred[Any] = self._endpoint.connect(Factory.forProtocol(_RedisProtocol))
            connecting.addCallback(self._select)
            connecting.addBoth(self._connected)
            self._connecting = connecting
        waiter: Deferred[_RedisProtocol] = Deferred()
        self._connecting.addBoth(_pass_to, waiter)
        return waiter

    def _select(self, protocol: _RedisProtocol) -> Any:
        if not self._db:
            return protocol
        return protocol.execute("SELECT", self._db).addCallback(lambda _: protocol)

    def _connected(self, result: Any) -> Any:
        self._connecting = None
        if isinstance(result, Failure):
            return Failure(RedisUnavailable(str(result.value)))
        self._protocol = result
        result.on_lost = self._lost
        if self._closed:
            self.close()
        return result

    def _lost(self) -> None:
        self._protocol = None

    def close(self) -> None:
        self._closed = True
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.loseConnection()

    def drop(self) -> None:
        """Cut the connection (a command timed out); the next command reconnects."""
        protocol, self._protocol = self._protocol, None
        if protocol is not None and protocol.transport is not None:
            protocol.transport.abortConnection()  # type: ignore[attr-defined]


def _pass_to(result: Any, waiter: Deferred[Any]) -> Any:
    if isinstance(result, Failure):
        waiter.errback(result)
        return None
    waiter.callback(result)
    return result
