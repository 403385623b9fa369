"""
The HTTP surface against hostile requests (SPEC section 2), byte for byte
over loopback sockets: bodies longer than their route takes are refused
before they are read and never reach a file; paths that are not UTF-8 are a
400 or 404 without a traceback; every answer carries the security headers;
credentials never reach a log line.
"""

from __future__ import annotations

import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs, formatEvent
from twisted.web import http
from twisted.web.resource import Resource

from twisted_signal.service import SignalingSite
from twisted_signal.web import redact

from .support import TIMEOUT, MakeServer, tcp_connect, upgrade_request

pytestmark = pytest.mark.loopback

TOKEN = "admin-token-0123456789"
MESSAGES = "/admin/rooms/lobby/messages"
TEN_GB = 10_000_000_000


@dataclass
class Answer:
    status: int
    headers: dict[str, list[str]]
    body: bytes
    seconds: float

    def header(self, name: str) -> str:
        values = self.headers.get(name.lower(), [])
        assert len(values) == 1, (name, self.headers)
        return values[0]


def parse_answer(data: bytes, seconds: float) -> Answer:
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, list[str]] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return Answer(int(status_line.split(" ")[1]), headers, body, seconds)


def exchange(base: str, head: bytes, body: Iterable[bytes] = (), timeout: float = 3) -> Answer:
    """
    From a client thread: send `head`, then `body` piece by piece for as
    long as the server reads it, and return the server's first answer (read
    until the server closes or goes quiet).
    """
    sock = tcp_connect(base)
    started = time.monotonic()
    try:
        sock.sendall(head)
        sock.settimeout(0.05)
        received = b""
        for piece in body:
            try:
                sock.sendall(piece)
            except TimeoutError:
                break  # the server no longer reads
            except OSError:
                break  # it has closed
            received += _drain(sock)
            if b"\r\n\r\n" in received:
                break
        sock.settimeout(timeout)
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if b"\r\n\r\n" in received:
                    break
                raise AssertionError(f"no answer in {timeout}s; got {received!r}") from None
            except OSError:  # reset once the answer is out
                break
            if not chunk:
                break
            received += chunk
            if _complete(received):
                break
        return parse_answer(received, time.monotonic() - started)
    finally:
        sock.close()


def _complete(received: bytes) -> bool:
    """Whether `received` holds a whole answer (a 101 ends with its head)."""
    if b"\r\n\r\n" not in received:
        return False
    answer = parse_answer(received, 0)
    if answer.status == 101:
        return True
    length = answer.headers.get("content-length")
    return length is not None and len(answer.body) >= int(length[0])


def _drain(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except (TimeoutError, OSError):
        return b""


@pytest.fixture
def no_spool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[dict[str, int]]:
    """
    Count the body bytes handed to requests and the temporary files made,
    in a temporary folder of the test's own.
    """
    seen = {"body_bytes": 0, "temporary_files": 0}
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    real_temporary_file = tempfile.TemporaryFile
    real_chunk = http.Request.handleContentChunk

    def temporary_file(*args: Any, **kwargs: Any) -> Any:
        seen["temporary_files"] += 1
        return real_temporary_file(*args, **kwargs)

    def handle_content_chunk(self: http.Request, data: bytes) -> None:
        seen["body_bytes"] += len(data)
        real_chunk(self, data)

    monkeypatch.setattr(tempfile, "TemporaryFile", temporary_file)
    monkeypatch.setattr(http.Request, "handleContentChunk", handle_content_chunk)
    yield seen
    assert seen["temporary_files"] == 0
    assert list(spool.iterdir()) == []


def body_of(total: int, piece: int = 65536) -> Iterator[bytes]:
    sent = 0
    while sent < total:
        yield b"x" * min(piece, total - sent)
        sent += piece


def chunked(total: int, piece: int = 16384) -> Iterator[bytes]:
    for data in body_of(total, piece):
        yield b"%x\r\n%s\r\n" % (len(data), data)
    yield b"0\r\n\r\n"


def post(path: str, *headers: str) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def secure(answer: Answer) -> None:
    """The headers every answer carries (SPEC 2)."""
    assert answer.header("Referrer-Policy") == "no-referrer", answer.headers
    assert answer.header("X-Content-Type-Options") == "nosniff", answer.headers
    server = answer.header("Server")
    assert server == "rtcsignal", answer.headers
    assert not any(c.isdigit() for c in server), answer.headers


# Bodies (SPEC 2: refused before they are read, never written to disk).


@pytest_twisted.ensureDeferred
async def test_a_huge_declared_body_is_refused_at_once_unread(
    make_server: MakeServer, no_spool: dict[str, int]
) -> None:
    server = await make_server(admin_token=TOKEN)
    length = f"Content-Length: {TEN_GB}"
    json_type = "Content-Type: application/json"
    bearer = f"Authorization: Bearer {TOKEN}"

    def scenario() -> list[Answer]:
        return [
            # Without the token: 401 first, as for any admin request.
            exchange(server.base, post(MESSAGES, length, json_type), body_of(1 << 20)),
            exchange(server.base, post(MESSAGES, length, "Authorization: Bearer x")),
            # With it: 413.
            exchange(server.base, post(MESSAGES, length, json_type, bearer), body_of(1 << 20)),
            exchange(server.base, post(MESSAGES, length, "Expect: 100-continue", bearer)),
            # Routes that take no body take none.
            exchange(server.base, post("/healthz", length), body_of(1 << 20)),
            exchange(server.base, post("/", "Content-Length: 1025"), body_of(1025)),
            exchange(server.base, post("/static/room.js", length)),
            exchange(server.base, post("/socket/lobby/", length)),
            exchange(server.base, post("/admin/rooms", length, bearer)),
        ]

    answers = await deferToThread(scenario)
    assert [a.status for a in answers] == [401, 401, 413, 413, 413, 413, 413, 413, 413]
    for answer in answers:
        secure(answer)
        assert answer.header("Connection") == "close"
        assert answer.seconds < 1.5, answer
        assert b"100 Continue" not in answer.body
    assert answers[0].header("WWW-Authenticate") == 'Bearer realm="rtcsignal"'
    assert 'error="invalid_token"' in answers[1].header("WWW-Authenticate")
    assert b"65536" in answers[2].body
    # Nothing of any body was read.
    assert no_spool["body_bytes"] == 0


@pytest_twisted.ensureDeferred
async def test_a_chunked_body_is_counted_as_it_arrives(
    make_server: MakeServer, no_spool: dict[str, int]
) -> None:
    server = await make_server(admin_token=TOKEN)
    te = "Transfer-Encoding: chunked"
    json_type = "Content-Type: application/json"
    bearer = f"Authorization: Bearer {TOKEN}"

    def scenario() -> list[Answer]:
        return [
            exchange(server.base, post(MESSAGES, te, json_type), chunked(8 << 20)),
            exchange(server.base, post(MESSAGES, te, json_type, bearer), chunked(8 << 20)),
            exchange(server.base, post("/healthz", te), chunked(8 << 20, piece=512)),
            # A whole small body over the limit, at once.
            exchange(server.base, post("/healthz", te) + b"".join(chunked(2048, piece=512))),
        ]

    answers = await deferToThread(scenario)
    assert [a.status for a in answers] == [401, 413, 413, 413]
    for answer in answers:
        secure(answer)
        assert answer.seconds < 1.5, answer
    # Each request was read up to its limit (64 KiB for the messages, 1 KiB
    # elsewhere) and one piece more, of the 8 MiB sent.
    assert no_spool["body_bytes"] <= 2 * (65536 + 16384) + 2 * (1024 + 512)


@pytest_twisted.ensureDeferred
async def test_bodies_within_their_route_still_work(
    make_server: MakeServer, no_spool: dict[str, int]
) -> None:
    server = await make_server(admin_token=TOKEN)
    message = b'{"event": "notice", "to": "all", "data": "' + b"x" * 60000 + b'"}'
    bearer = f"Authorization: Bearer {TOKEN}"
    json_type = "Content-Type: application/json"

    def scenario() -> list[Answer]:
        head = post(MESSAGES, bearer, json_type, f"Content-Length: {len(message)}")
        chunk = b"%x\r\n%s\r\n0\r\n\r\n" % (len(message), message)
        return [
            exchange(server.base, head + message),
            exchange(
                server.base, post(MESSAGES, bearer, json_type, "Transfer-Encoding: chunked") + chunk
            ),
            exchange(
                server.base, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"
            ),
        ]

    answers = await deferToThread(scenario)
    # 404: the room is not there, which is looked up once the body is in.
    assert [a.status for a in answers] == [404, 404, 200]


# Paths (SPEC 2: NUL, invalid or overlong UTF-8 is 400 or 404, no traceback).

BAD_SEGMENTS = [
    "%00",
    "a%00b",
    "%C0%AE",
    "%C0%80",
    "%E0%80%AE",
    "%FF",
    "%ED%A0%80",
    "%F8%88%80%80%80",
]
ROUTES = [
    "/{}",
    "/{}/x",
    "/static/{}",
    "/static/x/{}",
    "/healthz/{}",
    "/admin/rooms/{}",
    "/admin/{}",
]


@pytest_twisted.ensureDeferred
async def test_paths_that_are_not_utf8_are_400_or_404_without_a_traceback(
    make_server: MakeServer,
) -> None:
    server = await make_server(admin_token=TOKEN)
    bearer = f"Authorization: Bearer {TOKEN}\r\n"

    def scenario() -> list[tuple[str, Answer]]:
        answers = []
        for segment in BAD_SEGMENTS:
            for route in ROUTES:
                path = route.format(segment)
                head = f"GET {path} HTTP/1.1\r\nHost: x\r\n{bearer}Connection: close\r\n\r\n"
                answers.append((path, exchange(server.base, head.encode())))
            path = f"/socket/{segment}/"
            answers.append((path, exchange(server.base, upgrade_request(server.base, path))))
        return answers

    with capturedLogs() as events:
        answers = await deferToThread(scenario)
    for path, answer in answers:
        assert answer.status in (400, 404), (path, answer)
        secure(answer)
    failures = [formatEvent(e) for e in events if "log_failure" in e]
    assert failures == []
    loud = [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical)]
    assert loud == []


# Headers (SPEC 2: on every answer).


class _Boom(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        raise RuntimeError("a bug")


@pytest_twisted.ensureDeferred
async def test_every_answer_carries_the_security_headers(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> list[Answer]:
        base = server.base
        return [
            exchange(base, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            exchange(base, b"GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            # twisted.web's own 405 and 501 pages.
            exchange(base, b"POST /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            exchange(base, b"PUT /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
            # The HTTP parser's own 400s.
            exchange(base, b"GET / HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n"),
            exchange(base, b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
            exchange(base, b"BAD\r\n\r\n"),
            # The upgrade.
            exchange(base, upgrade_request(base, "/socket/lobby/")),
        ]

    answers = await deferToThread(scenario)
    assert [a.status for a in answers] == [200, 405, 405, 501, 400, 400, 400, 101]
    for answer in answers:
        secure(answer)


@pytest_twisted.ensureDeferred
async def test_twisted_error_pages_carry_the_security_headers() -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint

    root = Resource()
    root.putChild(b"boom", _Boom())
    site = SignalingSite(root, handshake_timeout=TIMEOUT, clock=reactor)
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    base = f"127.0.0.1:{port.getHost().port}"
    try:
        with capturedLogs():
            answer = await deferToThread(
                exchange, base, b"GET /boom HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
    finally:
        await port.stopListening()
    assert answer.status == 500
    secure(answer)


# Credentials in logs (SPEC 2: token, access_token and resume never reach a log line).

SECRET = "s3cr3t-VALUE"


@pytest.mark.parametrize(
    "query",
    [
        f"token={SECRET}",
        f"access_token={SECRET}",
        f"resume={SECRET}",
        f"%74oken={SECRET}",
        f"%74%6F%6B%65%6E={SECRET}",
        f"to%6Ben={SECRET}",
        f"access%5Ftoken={SECRET}",
        f"TOKEN={SECRET}",
        f"Access_Token={SECRET}",
        f"%2574oken={SECRET}",
        f"lang=en&token=a&token={SECRET}",
        f"lang=en;token={SECRET};x=1",
        f"x=1&resume={SECRET}#frag",
        f"token={SECRET}&access_token={SECRET}&resume={SECRET}",
    ],
)
def test_redact_hides_credentials_however_spelled(query: str) -> None:
    uri = f"/demo?{query}".encode()
    redacted = redact(uri)
    assert SECRET.encode() not in redacted, redacted
    assert redacted.startswith(b"/demo?")


def test_redact_keeps_other_parameters() -> None:
    assert redact(b"/demo?lang=en&tokens=1;x=%74") == b"/demo?lang=en&tokens=1;x=%74"
    assert redact(b"/demo?lang=en&token=abc") == b"/demo?lang=en&token=REDACTED"
    assert redact(b"/demo") == b"/demo"


@pytest_twisted.ensureDeferred
async def test_no_log_line_holds_a_credential(make_server: MakeServer) -> None:
    server = await make_server()
    queries = [
        f"access_token={SECRET}",
        f"%74oken={SECRET}",
        f"lang=en;TOKEN={SECRET}",
        f"resume={SECRET}&resume={SECRET}",
    ]

    def scenario() -> None:
        for query in queries:
            for path in ("/demo", "/static/style.css", "/nope/x", "/socket/demo/"):
                head = (
                    f"GET {path}?{query} HTTP/1.1\r\nHost: x\r\n"
                    f"Referer: http://x/demo?{query}\r\nConnection: close\r\n\r\n"
                )
                exchange(server.base, head.encode())
            # An upgrade with a bad resume token is refused and logged.
            path = f"/socket/demo/?{query}"
            exchange(server.base, upgrade_request(server.base, path))

    with capturedLogs() as events:
        await deferToThread(scenario)
    lines = [formatEvent(e) for e in events]
    assert any("GET /demo?" in line for line in lines), lines
    leaked = [line for line in lines if SECRET in line]
    assert leaked == []
    assert SECRET not in repr(events)


# Listeners (SPEC 2: a backlog of at least 1024 unless the string sets one).


def listen_backlog(port: int) -> int:
    """The backlog of the socket listening on loopback `port`, as ``ss`` shows it."""
    import subprocess

    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    [line] = out.strip().splitlines()
    return int(line.split()[2])  # State Recv-Q Send-Q: a listener's Send-Q is its backlog


@pytest_twisted.ensureDeferred
async def test_listeners_have_a_backlog_of_1024() -> None:
    from twisted.internet import reactor

    from twisted_signal import SignalingService

    from .support.twistd import free_port

    ports = [free_port() for _ in range(3)]
    service = SignalingService(
        endpoints=[
            f"tcp:{ports[0]}:interface=127.0.0.1",
            f"tcp:{ports[1]}:interface=127.0.0.1:backlog=64",
        ],
        metrics_endpoints=[f"tcp:{ports[2]}:interface=127.0.0.1"],
        reactor=reactor,
    )
    service.privilegedStartService()
    service.startService()
    try:
        assert [listen_backlog(port) for port in ports] == [1024, 64, 1024]
    finally:
        await service.stopService()
