"""
A small Redis client on Twisted: RESP2 over one connection, Deferred per
command, in order.  It knows only what cluster mode sends (EVALSHA, EVAL, XADD,
XREAD BLOCK, INFO and a few plain commands), and reconnects by itself.
Over ``rediss://`` it verifies the server's certificate and host name, and
it sends ``AUTH`` on every connection when the URL (or
``--redis-password-file``) has a password.
"""

from __future__ import annotations

import dataclasses
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote, unquote, urlsplit

from twisted.internet import defer
from twisted.internet.defer import Deferred, fail
from twisted.internet.endpoints import (
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    UNIXClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

if TYPE_CHECKING:
    from twisted.internet.interfaces import (
        IOpenSSLClientConnectionCreator,
        IStreamClientEndpoint,
        ITCPTransport,
    )

__all__ = [
    "ProtocolError",
    "RedisClient",
    "RedisError",
    "RedisRefused",
    "RedisURL",
    "RedisUnavailable",
    "client_tls",
    "parse_url",
    "redact",
]


class RedisError(Exception):
    """Redis answered with an error."""


class RedisUnavailable(Exception):
    """No connection to Redis right now."""


class RedisRefused(RedisUnavailable):
    """
    No connection could be made or set up (unreachable, TLS, password).
    The client has logged why, once until a connection works again, so
    whoever retries need not log it again.
    """


_SCHEMES = {"redis": "tcp", "rediss": "tls", "unix": "unix"}

#: The TLS files a ``rediss://`` URL names in its query, by every accepted
#: spelling: short (``ca``, ``cert``, ``key``) or redis-py's.
_TLS_FILES = {
    "ca": "ca",
    "ssl_ca_certs": "ca",
    "cert": "cert",
    "ssl_certfile": "cert",
    "key": "key",
    "ssl_keyfile": "key",
}


@dataclass(frozen=True)
class RedisURL:
    """
    Where Redis is and how to talk to it, as parsed from ``--redis``.
    `str` of it is the URL with the password hidden: safe to log.
    """

    kind: str
    """``tcp`` (``redis://``), ``tls`` (``rediss://``) or ``unix``."""
    host: str
    """The host name or address, or the socket path for ``unix``."""
    port: int = 0
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca: str | None = None
    """A PEM file of the CAs to trust instead of the system's."""
    cert: str | None = None
    """A PEM file with this client's certificate (and chain, maybe its key)."""
    key: str | None = None
    """A PEM file with the client certificate's private key."""

    @property
    def tls(self) -> bool:
        return self.kind == "tls"

    def with_password(self, password: str) -> RedisURL:
        return dataclasses.replace(self, password=password)

    def __str__(self) -> str:
        scheme = next(s for s, k in _SCHEMES.items() if k == self.kind)
        userinfo = ""
        if self.username is not None or self.password is not None:
            userinfo = quote(self.username or "", safe="")
            userinfo += ":***@" if self.password is not None else "@"
        query = [
            f"{name}={value}" for name in ("ca", "cert", "key") if (value := getattr(self, name))
        ]
        if self.kind == "unix":
            if self.db:
                query.insert(0, f"db={self.db}")
            where = f"{userinfo}{self.host}"
        else:
            host = f"[{self.host}]" if ":" in self.host else self.host
            where = f"{userinfo}{host}:{self.port}/{self.db}"
        return f"{scheme}://{where}" + ("?" + "&".join(query) if query else "")


def redact(url: str) -> str:
    """
    `url` with the password (anything between ``user:`` and the last ``@``)
    replaced by ``***``, even when the URL does not parse.
    """
    return _USERINFO.sub(lambda m: f"{m[1]}:***@" if m[2] is not None else m[0], url, count=1)


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*)(:.*)?@")


def parse_url(url: str) -> RedisURL:
    """
    Parse ``redis://[[user]:password@]host[:port][/db]``, the same with
    ``rediss://`` (TLS; query ``ca``, ``cert``, ``key``) or
    ``unix://[[user]:password@]/path[?db=N]``.  It reads no file.

    @raise ValueError: not such a URL; the message never holds the password.
    """
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise ValueError(
            "the port must be a number (percent-encode any / : @ # ? in a password, "
            "or give it with --redis-password-file)"
        ) from None
    kind = _SCHEMES.get(parts.scheme)
    if kind is None:
        raise ValueError("expected redis://host:port/db, rediss://host:port/db or unix:///path")
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    if password == "":
        raise ValueError("the password in the URL is empty")
    options = _query(parts.query, kind)
    db_text = options.pop("db", None)
    if kind == "unix":
        if not parts.path:
            raise ValueError("unix:// needs a socket path, as in unix:///run/redis.sock")
        host, port = parts.path, 0
    else:
        host, port = parts.hostname or "127.0.0.1", port or 6379
        if parts.path.strip("/"):
            if db_text is not None:
                raise ValueError("the db is given twice (in the path and as db=)")
            db_text = parts.path.strip("/")
    try:
        db = int(db_text or 0)
    except ValueError:
        raise ValueError("the db must be a number") from None
    if db < 0:
        raise ValueError("the db must not be negative")
    return RedisURL(kind, host, port, db, username, password, **options)


def _query(query: str, kind: str) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        # Not parse_qsl: a "+" in a file name is a "+", not a space.
        name, _, value = (unquote(part) for part in item.partition("="))
        if name in _TLS_FILES and kind != "tls":
            raise ValueError(f"{name}= is for rediss:// (TLS) only")
        canonical = _TLS_FILES.get(name) or ("db" if name == "db" else None)
        if canonical is None:
            known = "db, ca, cert, key (or ssl_ca_certs, ssl_certfile, ssl_keyfile)"
            known = known if kind == "tls" else "db"
            raise ValueError(f"unknown query option {name!r} (known: {known})")
        if canonical in options:
            raise ValueError(f"{canonical}= is given twice")
        if not value:
            raise ValueError(f"{name}= needs a value")
        options[canonical] = value
    return options


def encode(args: tuple[Any, ...]) -> bytes:
    """
    One command as RESP: bytes as they are, `str` as UTF-8, numbers in
    decimal.

    @raise ValueError: an argument cannot be encoded (a `str` with a lone
        surrogate is not UTF-8); nothing has been sent or queued then.
    """
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, str):
            data = arg.encode()
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = str(arg).encode()
        else:
            raise ValueError(f"a Redis argument must be bytes, str or a number, not {arg!r:.40}")
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class ProtocolError(Exception):
    """Redis sent something that is not a RESP2 reply."""


#: The longest header or simple line (``+``, ``-``, ``:``, ``$``, ``*``)
#: accepted; past it, the input is not RESP.
MAX_LINE = 64 * 1024
#: Redis's own limit on one bulk string (``proto-max-bulk-len``).
MAX_BULK = 512 * 1024 * 1024

_INCOMPLETE: Any = object()
_OPENED: Any = object()


class _Parser:
    """
    Incremental RESP2 reply parser: `feed` it bytes as they come, then take
    the complete replies from `replies`.  It keeps its place across pieces
    (arrays half read stay half built; a bulk string is waited for until
    all of it is there), so a large reply that arrives in many pieces is
    read, and copied, once; deep nesting costs no recursion.

    Anything that is not RESP2 (an unknown type byte, a malformed length, a
    bulk string not followed by CRLF, an over-long line) raises
    `ProtocolError`, and the parser is then done with: what follows cannot
    be told apart from the rest of a reply.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._at = 0
        """Where the unread part of `_buf` starts."""
        self._more: list[bytes] = []
        """Pieces fed since `_buf` was last joined."""
        self._more_size = 0
        self._need = 0
        """How many more bytes the item at `_at` needs, at least."""
        self._open: list[tuple[list[Any], int]] = []
        """The arrays being read, outermost first, each with its length."""

    def feed(self, data: bytes) -> None:
        self._more.append(data)
        self._more_size += len(data)

    def replies(self) -> Iterator[Any]:
        """
        The replies complete so far, in order.

        @raise ProtocolError: the input is not RESP2.
        """
        while (reply := self._next()) is not _INCOMPLETE:
            yield reply

    def _next(self) -> Any:
        if self._more_size < self._need:
            return _INCOMPLETE
        if self._more:
            self._buf = self._buf[self._at :] + b"".join(self._more)
            self._at = 0
            self._more.clear()
        self._more_size = self._need = 0
        opened = self._open
        while True:
            value = self._item()
            if value is _INCOMPLETE:
                return _INCOMPLETE
            if value is _OPENED:
                continue
            while opened:
                items, count = opened[-1]
                items.append(value)
                if len(items) < count:
                    break
                opened.pop()
                value = items
            else:
                return value

    def _item(self) -> Any:
        """
        Read the item at `_at` and move past it: a value, `_OPENED` for the
        header of a non-empty array, or `_INCOMPLETE` (`_at` unmoved,
        `_need` set).
        """
        buf, at = self._buf, self._at
        eol = buf.find(b"\r\n", at, at + MAX_LINE + 1)
        if eol < 0:
            if len(buf) - at > MAX_LINE:
                raise ProtocolError(f"a line longer than {MAX_LINE} bytes")
            self._need = 1
            return _INCOMPLETE
        kind = buf[at]
        if kind == 0x24:  # $
            return self._bulk(_length(buf[at + 1 : eol]), eol + 2)
        value: Any
        if kind == 0x2A:  # *
            count = _length(buf[at + 1 : eol])
            if count > 0:
                self._open.append(([], count))
                value = _OPENED
            else:
                value = [] if count == 0 else None
        elif kind == 0x3A:  # :
            value = _integer(buf[at + 1 : eol])
        elif kind == 0x2B:  # +
            value = _text_line(buf[at + 1 : eol])
        elif kind == 0x2D:  # -
            value = RedisError(_text_line(buf[at + 1 : eol]))
        else:
            raise ProtocolError(f"unknown reply type {buf[at : at + 1]!r}")
        self._at = eol + 2
        return value

    def _bulk(self, size: int, at: int) -> Any:
        """The bulk string of `size` bytes at `at` (or nil, or `_INCOMPLETE`)."""
        if size < 0:
            self._at = at
            return None
        buf, end = self._buf, at + size
        if len(buf) < end + 2:
            self._need = end + 2 - len(buf)
            return _INCOMPLETE
        if buf[end : end + 2] != b"\r\n":
            raise ProtocolError("a bulk string not followed by CRLF")
        self._at = end + 2
        return buf[at:end]


def _length(line: bytes) -> int:
    """A bulk or array length: -1 (nil), or 0 to `MAX_BULK`."""
    if line.isdigit() and (line[0] != 0x30 or len(line) == 1) and len(line) < 10:
        size = int(line)
        if size <= MAX_BULK:
            return size
    elif line == b"-1":
        return -1
    raise ProtocolError(f"bad length {line[:32]!r}")


def _integer(line: bytes) -> int:
    digits = line[1:] if line[:1] == b"-" else line
    if digits.isdigit() and (digits[0] != 0x30 or len(line) == 1) and len(digits) < 20:
        return int(line)
    raise ProtocolError(f"bad integer {line[:32]!r}")


def _text_line(line: bytes) -> str:
    try:
        return line.decode()
    except UnicodeDecodeError:
        raise ProtocolError(f"a status or error line that is not UTF-8: {line[:32]!r}") from None


def client_tls(url: RedisURL) -> IOpenSSLClientConnectionCreator:
    """
    The TLS settings of a ``rediss://`` URL: verify the server's certificate
    and host name against the system's CAs, or only those in ``ca``, and
    show the client certificate in ``cert`` (with its key in ``key``, or in
    ``cert`` too) when the server asks for one.

    @raise ValueError: a file is unreadable or not what it should be; the
        message is one line that names the file.
    """
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from OpenSSL import crypto
    from twisted.internet import ssl

    def certificates(option: str, path: str) -> list[x509.Certificate]:
        data = _read(option, path)
        try:
            found = x509.load_pem_x509_certificates(data)
        except ValueError:
            found = []
        if not found:
            raise ValueError(f"{option}={path}: no PEM certificate in it")
        return found

    if url.key is not None and url.cert is None:
        raise ValueError("key= needs cert= (the client certificate)")
    trust: Any = None
    if url.ca is not None:
        trust = ssl.trustRootFromCertificates(
            [ssl.Certificate(crypto.X509.from_cryptography(c)) for c in certificates("ca", url.ca)]
        )
    extra: dict[str, Any] = {}
    if url.cert is not None:
        leaf, *chain = certificates("cert", url.cert)
        option, path = ("key", url.key) if url.key is not None else ("cert", url.cert)
        data = _read(option, path)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (TypeError, ValueError, UnsupportedAlgorithm) as e:
            why = (
                "it is encrypted" if isinstance(e, TypeError) else "no usable PEM private key in it"
            )
            hint = "" if url.key is not None else " (give the key with key=)"
            raise ValueError(f"{option}={path}: {why}{hint}") from None
        spki = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
            raise ValueError(f"{option}={path}: this key is not the key of cert={url.cert}")
        # pyOpenSSL takes cryptography's objects as they are.
        extra.update(certificate=leaf, privateKey=key, extraCertChain=chain)
    # Redis speaks TLS 1.2 and 1.3; nothing older is worth offering.
    extra["raiseMinimumTo"] = ssl.TLSVersion.TLSv1_2
    return ssl.optionsForClientTLS(url.host, trust, extraCertificateOptions=extra)


def _read(option: str, path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"{option}={path}: {e.strerror or e}") from None


def _describe(failure: Failure) -> str:
    """
    Why a connection to Redis failed, in a sentence an operator can act on.
    """
    from OpenSSL import SSL
    from service_identity import VerificationError

    error = failure.value
    if isinstance(error, defer.TimeoutError):
        return "no answer in time while setting up the connection (TLS, AUTH, SELECT or PING)"
    if isinstance(error, VerificationError):
        return "TLS: the server's certificate is not for this host name or address"
    if isinstance(error, SSL.Error):
        reasons = [str(r[-1]) for r in error.args[0] if isinstance(r, tuple)] if error.args else []
        return _explain("; ".join(reasons) or str(error), "TLS: ", _TLS_CLUES)
    if isinstance(error, RedisError):
        return _explain(str(error), "", _AUTH_CLUES, "Redis refused to set up the connection: ")
    return failure.getErrorMessage()


def _explain(text: str, prefix: str, clues: list[tuple[str, str]], otherwise: str = "") -> str:
    for clue, meaning in clues:
        if clue in text:
            return f"{prefix}{meaning}: {text}"
    return f"{prefix}{otherwise}{text}"


_TLS_CLUES = [
    (
        "certificate verify failed",
        "the server's certificate does not verify with the trusted CAs (ca=, or the system's)",
    ),
    ("certificate required", "the server wants a client certificate (cert= and key=)"),
    ("unknown ca", "the server does not trust this client's certificate"),
    ("bad certificate", "the server does not accept this client's certificate"),
    ("wrong version number", "the server does not speak TLS on this port"),
]

_AUTH_CLUES = [
    ("WRONGPASS", "Redis refused the user name or password"),
    ("NOAUTH", "Redis wants a password (in the URL or --redis-password-file)"),
    ("ERR AUTH", "Redis has no password set, but one was given"),
    ("ERR invalid password", "Redis refused the password"),
]


class _RedisProtocol(Protocol):
    """
    One connection: each command's reply slot is queued only once the
    command is encoded and written, replies fill the slots in order, and
    anything that breaks that order (input that is not RESP2, a reply
    nobody asked for) drops the connection and fails every command in
    flight: a reply never reaches the wrong command.
    """

    _log = Logger()

    def __init__(self) -> None:
        self._parser = _Parser()
        self._waiting: deque[Deferred[Any]] = deque()
        self._broken: str | None = None
        self.on_lost: Any = None

    def execute(self, *args: Any) -> Deferred[Any]:
        try:
            data = encode(args)
        except ValueError as e:
            return fail(e)
        return self.send(data)

    def send(self, command: bytes) -> Deferred[Any]:
        """Send one encoded command; fires with its reply."""
        if self._broken is not None or self.transport is None:
            return fail(RedisUnavailable(self._broken or "not connected"))
        d: Deferred[Any] = Deferred()
        self._waiting.append(d)
        self.transport.write(command)
        return d

    def dataReceived(self, data: bytes) -> None:
        if self._broken is not None:
            return
        self._parser.feed(data)
        try:
            for reply in self._parser.replies():
                if not self._waiting:
                    raise ProtocolError("a reply to no command")
                d = self._waiting.popleft()
                if isinstance(reply, RedisError):
                    d.errback(Failure(reply))
                else:
                    d.callback(reply)
                if self._broken is not None:
                    return  # a callback dropped the connection
        except ProtocolError as e:
            self._break(f"protocol error: {e}")

    def _break(self, why: str) -> None:
        """Drop the connection: nothing more read from it can be trusted."""
        self._log.error("Redis: {why}; dropping the connection", why=why)
        self._broken = why
        waiting, self._waiting = self._waiting, deque()
        for d in waiting:
            d.errback(Failure(RedisUnavailable(why)))
        if self.transport is not None:
            cast("ITCPTransport", self.transport).abortConnection()
        self._gone()

    def _gone(self) -> None:
        on_lost, self.on_lost = self.on_lost, None
        if on_lost is not None:
            on_lost()

    def connectionLost(self, reason: Failure = Failure(ConnectionError())) -> None:  # noqa: B008
        if self._broken is None:
            self._broken = "connection lost"
        waiting, self._waiting = self._waiting, deque()
        why = _describe(reason) if waiting else ""
        for d in waiting:
            d.errback(Failure(RedisUnavailable(why)))
        self._gone()


class RedisClient:
    """
    One connection to Redis, made on first use and again after it is lost.
    While there is none, commands fail with `RedisUnavailable` at once: the
    cluster code retries on its own schedule, so nothing queues up unbounded.

    Every connection is set up before it is used: TLS (``rediss://``) with
    the server's certificate verified, then ``AUTH`` when there is a
    password, then ``SELECT`` of the db (or a ``PING``), so that a refused
    certificate or password shows up, and is logged, as such.  Failures are
    logged once each until a connection works again, not once per retry.
    """

    _log = Logger()

    def __init__(self, url: str | RedisURL, reactor: Any, *, timeout: float = 5.0) -> None:
        """
        @raise ValueError: `url` is not a Redis URL, names a user but no
            password, or names a TLS file that cannot be used.
        """
        self._url = parse_url(url) if isinstance(url, str) else url
        if self._url.username is not None and self._url.password is None:
            raise ValueError("a Redis user name needs a password")
        self._reactor = reactor
        self._timeout = timeout
        self._endpoint: IStreamClientEndpoint
        kind, host, port = self._url.kind, self._url.host, self._url.port
        if kind == "unix":
            self._endpoint = UNIXClientEndpoint(reactor, host, timeout=timeout)
        elif ":" in host:
            self._endpoint = TCP6ClientEndpoint(reactor, host, port, timeout=timeout)
        else:
            self._endpoint = TCP4ClientEndpoint(reactor, host, port, timeout=timeout)
        if self._url.tls:
            self._endpoint = wrapClientTLS(client_tls(self._url), self._endpoint)
        self._protocol: _RedisProtocol | None = None
        self._connecting: Deferred[Any] | None = None
        self._waiters: list[Deferred[_RedisProtocol]] = []
        """The commands waiting for the connection being made."""
        self._closed = False
        self._failing: str | None = None

    @property
    def url(self) -> RedisURL:
        return self._url

    def execute(self, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        """Send one command; fires with its reply."""
        if self._closed:
            return fail(RedisUnavailable("closed"))
        try:
            command = encode(args)
        except ValueError as e:
            return fail(e)
        protocol = self._protocol
        if protocol is not None:
            d = protocol.send(command)
        else:
            d = self._connect().addCallback(lambda p: p.send(command))
        return d.addTimeout(timeout if timeout is not None else self._timeout, self._reactor)

    def _connect(self) -> Deferred[_RedisProtocol]:
        """The connection being made, for one more command to wait for."""
        waiter: Deferred[_RedisProtocol] = Deferred()
        self._waiters.append(waiter)
        if self._connecting is None:
            connecting: Deferred[Any] = self._endpoint.connect(Factory.forProtocol(_RedisProtocol))
            self._connecting = connecting
            connecting.addCallback(self._set_up)
            connecting.addTimeout(self._timeout, self._reactor)
            connecting.addBoth(self._connected)
        return waiter

    def _set_up(self, protocol: _RedisProtocol) -> Deferred[_RedisProtocol]:
        """AUTH (with the user name if there is one), then SELECT or PING."""
        url = self._url
        last = ("SELECT", url.db) if url.db else ("PING",)
        d: Deferred[Any]
        if url.password is None:
            d = protocol.execute(*last)
        else:
            user = () if url.username is None else (url.username,)
            d = protocol.execute("AUTH", *user, url.password)
            d.addCallback(lambda _: protocol.execute(*last))

        def failed(failure: Failure) -> Failure:
            if protocol.transport is not None:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
            return failure

        return d.addCallbacks(lambda _: protocol, failed)

    def _connected(self, result: Any) -> None:
        """
        The connection is made, or could not be: every command that waited
        for it goes on, or fails with `RedisRefused`, each alike.
        """
        self._connecting = None
        waiters, self._waiters = self._waiters, []
        if isinstance(result, Failure):
            why = result.getErrorMessage() if result.check(RedisUnavailable) else _describe(result)
            if why != self._failing:
                self._failing = why
                emit = (
                    self._log.error if "TLS" in why or result.check(RedisError) else self._log.warn
                )
                emit("Redis {url}: {why}", url=str(self._url), why=why)
            for waiter in waiters:
                waiter.errback(RedisRefused(f"{self._url}: {why}"))
            return
        if self._failing is not None:
            self._failing = None
            self._log.info("Redis {url}: connected again", url=str(self._url))
        self._protocol = result
        result.on_lost = lambda: self._lost(result)
        if self._closed:
            self.close()
        for waiter in waiters:
            waiter.callback(result)

    def _lost(self, protocol: _RedisProtocol) -> None:
        if self._protocol is protocol:
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
