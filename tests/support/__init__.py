"""
Helpers shared by the tests: a live server on a loopback port, and a
blocking WebSocket client (the `websockets` library, run in a thread, so the
server is not only tested against Autobahn).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from websockets.sync.client import ClientConnection, connect

from twisted_signal import Peer, Room, Rooms, Settings, SignalingService

TIMEOUT = 5.0


@dataclass
class LiveServer:
    service: SignalingService
    port: IListeningPort

    @property
    def rooms(self) -> Rooms:
        return self.service.rooms

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"  # type: ignore[attr-defined]

    def http_url(self, path: str = "/") -> str:
        return f"http://{self.base}{path}"

    def socket_url(self, room: str, query: str = "") -> str:
        return f"ws://{self.base}/socket/{room}/" + (f"?{query}" if query else "")

    async def stop(self) -> None:
        await maybeDeferred(self.port.stopListening)
        await self.service.stopService()


async def start_server(
    *,
    rooms: Rooms | None = None,
    room_class: type[Room] = Room,
    peer_class: type[Peer] = Peer,
    settings: Settings | None = None,
    auto_rooms: bool = True,
    max_peers: int | None = 4,
    admin_token: str | None = None,
) -> LiveServer:
    """
    A `SignalingService` listening on a free loopback port.  Without
    `rooms`, rooms are made on demand from `room_class` (unless
    `auto_rooms` is false).
    """
    from twisted.internet import reactor

    if rooms is None:
        factory: Callable[[str], Room] | None = None
        if auto_rooms:

            def factory(name: str) -> Room:
                return room_class(name, None, max_peers=max_peers)

        rooms = Rooms(factory, max_peers=max_peers)
    service = SignalingService(
        rooms, peer_class=peer_class, settings=settings, admin_token=admin_token
    )
    service.startService()
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(service.site)
    return LiveServer(service, port)


@dataclass
class Client:
    """
    A blocking client: `recv()` decodes JSON, `events()` drains what
    arrived.
    """

    ws: ClientConnection
    authenticated: dict[str, Any] = field(default_factory=dict)

    @property
    def peer_id(self) -> str:
        return str(self.authenticated["data"]["peer_id"])

    def send(self, event: str, to: Any = "all", data: Any = None, **extra: Any) -> None:
        self.ws.send(json.dumps({"event": event, "to": to, "data": data, **extra}))

    def send_raw(self, frame: str | bytes) -> None:
        self.ws.send(frame)

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        frame = self.ws.recv(timeout=timeout)
        result: dict[str, Any] = json.loads(frame)
        return result

    def recv_raw(self, timeout: float = TIMEOUT) -> str | bytes:
        return self.ws.recv(timeout=timeout)

    def nothing_within(self, seconds: float = 0.3) -> bool:
        try:
            self.ws.recv(timeout=seconds)
        except TimeoutError:
            return True
        return False

    def close(self) -> None:
        self.ws.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.ws.close()


def join(url: str, **kwargs: Any) -> Client:
    """
    Connect and wait for ``authenticated``.
    """
    client = Client(open_socket(url, **kwargs))
    message = client.recv()
    assert message["event"] == "authenticated", message
    client.authenticated = message
    return client


def open_socket(url: str, **kwargs: Any) -> ClientConnection:
    """
    A raw `websockets` connection (entered, so it can be used without `with`).
    """
    ws: ClientConnection = connect(url, open_timeout=TIMEOUT, **kwargs)
    ws.__enter__()
    return ws


def abort(ws: ClientConnection) -> None:
    """End the TCP connection without a close frame."""
    import contextlib
    import socket

    with contextlib.suppress(OSError):
        ws.socket.shutdown(socket.SHUT_RDWR)
    ws.socket.close()


def deferred_in_thread(fn: Callable[[], Any]) -> Deferred[Any]:
    from twisted.internet.threads import deferToThread

    return deferToThread(fn)


# Helpers for the end-to-end protocol tests (tests/test_peer.py).

SERVER_KEYS = frozenset({"event", "data", "from", "to"})
"""The keys of every message the server sends (SPEC 1.1)."""


class StrictClient(Client):
    """
    A `Client` that checks that every message it receives has exactly the
    four keys of SPEC 1.1, and can wait for the server to close.
    """

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        message = super().recv(timeout)
        assert set(message) == SERVER_KEYS, message
        return message

    def closed_with(self, timeout: float = TIMEOUT) -> int | None:
        """
        Wait for the connection to end: the close code the server sent (None
        if it dropped the connection without a close frame).  Fails if a
        message arrives first.
        """
        from websockets.exceptions import ConnectionClosed

        try:
            frame = self.ws.recv(timeout=timeout)
        except ConnectionClosed as e:
            return None if e.rcvd is None else e.rcvd.code
        raise AssertionError(f"expected the connection to close, got {frame!r}")


def join_strict(url: str, **kwargs: Any) -> StrictClient:
    """
    Like `join`, with a `StrictClient`.
    """
    client = StrictClient(open_socket(url, **kwargs))
    message = client.recv()
    assert message["event"] == "authenticated", message
    client.authenticated = message
    return client


def join_quietly(server: LiveServer, room: str, n: int) -> list[StrictClient]:
    """
    `n` clients join `room` in turn; each earlier client has received (and
    checked) the ``joined`` of every later one, so all are quiet at the end.
    """
    clients: list[StrictClient] = []
    for _ in range(n):
        client = join_strict(server.socket_url(room))
        for earlier in clients:
            assert earlier.recv() == joined(client.peer_id)
        clients.append(client)
    return clients


def close_all(*clients: Client) -> None:
    for client in clients:
        client.close()


def handshake_status(url: str, **kwargs: Any) -> int:
    """
    The HTTP status with which the server refuses the upgrade to `url`
    (fails if the upgrade is accepted).
    """
    from websockets.exceptions import InvalidStatus

    try:
        ws = open_socket(url, **kwargs)
    except InvalidStatus as e:
        return e.response.status_code
    ws.close()
    raise AssertionError(f"the upgrade to {url} was accepted")


def in_reactor(fn: Callable[..., Any], *args: Any) -> Any:
    """
    From a client thread: call `fn` in the reactor thread and return its
    result (waiting for it if it is a `Deferred`).
    """
    from twisted.internet import reactor
    from twisted.internet.interfaces import IReactorFromThreads
    from twisted.internet.threads import blockingCallFromThread

    return blockingCallFromThread(cast(IReactorFromThreads, reactor), fn, *args)


def wait_until(predicate: Callable[[], bool], timeout: float = TIMEOUT) -> None:
    """
    From a client thread: poll `predicate` (in the reactor thread) until it
    is true; fail after `timeout` seconds.
    """
    import time

    deadline = time.monotonic() + timeout
    while not in_reactor(predicate):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {predicate!r}")
        time.sleep(0.01)


def http_get(url: str, timeout: float = TIMEOUT) -> tuple[int, bytes]:
    """
    From a client thread: GET `url`; its status and body (error statuses
    included).
    """
    from urllib.error import HTTPError
    from urllib.request import urlopen

    try:
        with urlopen(url, timeout=timeout) as response:
            return int(response.status), bytes(response.read())
    except HTTPError as e:
        return int(e.code), bytes(e.read())


# A hand-written WebSocket client (tests/test_limits.py, tests/test_resume.py):
# it does only what the test tells it, so it can leave pings unanswered,
# stall mid-handshake, or vanish without a close frame.

OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA


def upgrade_request(base: str, path: str, headers: dict[str, str] | None = None) -> bytes:
    """
    The bytes of a WebSocket upgrade request for `path` on `base`
    (``host:port``), with extra `headers`.
    """
    import base64
    import os

    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {base}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}",
        "Sec-WebSocket-Version: 13",
        *(f"{name}: {value}" for name, value in (headers or {}).items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def tcp_connect(base: str) -> Any:
    """
    A plain TCP socket connected to `base` (``host:port``).
    """
    import socket

    host, port = base.rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=TIMEOUT)


class RawClient:
    """
    A WebSocket client over a bare socket, after an upgrade done by hand.
    Frames are read and written one by one; nothing is answered on its own.
    """

    def __init__(self, sock: Any, buffered: bytes = b"") -> None:
        self.sock = sock
        self._buffer = buffered

    @classmethod
    def connect(cls, base: str, path: str) -> RawClient:
        """
        Upgrade `path` on `base`; fails unless the server answers 101.
        """
        sock = tcp_connect(base)
        sock.sendall(upgrade_request(base, path))
        client = cls(sock)
        head = client._read_until(b"\r\n\r\n")
        status = head.split(b"\r\n", 1)[0]
        assert status.split(b" ")[1] == b"101", head
        return client

    def _fill(self, deadline: float) -> bool:
        import time

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("nothing from the server in time")
        self.sock.settimeout(remaining)
        try:
            chunk: bytes = self.sock.recv(65536)
        except TimeoutError:
            raise
        except OSError:  # reset by the server
            return False
        if not chunk:
            return False
        self._buffer += chunk
        return True

    def _read_until(self, marker: bytes, timeout: float = TIMEOUT) -> bytes:
        import time

        deadline = time.monotonic() + timeout
        while marker not in self._buffer:
            if not self._fill(deadline):
                raise ConnectionError("the server ended the connection")
        head, _, self._buffer = self._buffer.partition(marker)
        return head

    def _read_exact(self, n: int, deadline: float) -> bytes:
        while len(self._buffer) < n:
            if not self._fill(deadline):
                raise ConnectionError("the server ended the connection")
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data

    def recv_frame(self, timeout: float = TIMEOUT) -> tuple[int, bytes] | None:
        """
        The next frame as ``(opcode, payload)``; None when the server has
        ended the TCP connection.  Raises `TimeoutError` if nothing comes.
        """
        import struct
        import time

        deadline = time.monotonic() + timeout
        try:
            first, second = self._read_exact(2, deadline)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack(">H", self._read_exact(2, deadline))
            elif length == 127:
                (length,) = struct.unpack(">Q", self._read_exact(8, deadline))
            payload = self._read_exact(length, deadline)
        except ConnectionError:
            return None
        return first & 0x0F, payload

    def recv_json(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        """
        The next text frame, decoded (pings on the way are not answered).
        """
        import time

        deadline = time.monotonic() + timeout
        while True:
            frame = self.recv_frame(max(deadline - time.monotonic(), 0.001))
            assert frame is not None, "the server ended the connection"
            opcode, payload = frame
            if opcode == OP_TEXT:
                result: dict[str, Any] = json.loads(payload)
                return result
            assert opcode == OP_PING, frame

    def send_frame(self, opcode: int, payload: bytes = b"") -> None:
        import os
        import struct

        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
        elif n < 1 << 16:
            header = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            header = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode("utf-8"))

    def drop(self) -> None:
        """
        Vanish without a close frame (a FIN, as when a network path dies
        and the kernel notices).
        """
        import contextlib
        import socket

        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


# Expected messages and small helpers shared by the live tests.

MakeServer = Callable[..., Awaitable[LiveServer]]
"""The type of the `make_server` fixture."""


def sleep(seconds: float) -> Deferred[None]:
    """
    A Deferred that fires after `seconds` of the real reactor's time.
    """
    from twisted.internet import reactor, task
    from twisted.internet.interfaces import IReactorTime

    return task.deferLater(cast(IReactorTime, reactor), seconds)


def joined(peer_id: str) -> dict[str, Any]:
    return {"event": "joined", "data": {"peer_id": peer_id}, "from": peer_id, "to": "all"}


def left(peer_id: str) -> dict[str, Any]:
    return {"event": "left", "data": {"peer_id": peer_id}, "from": None, "to": "all"}


def error(peer_id: str, description: str, details: Any) -> dict[str, Any]:
    return {
        "event": "error",
        "data": {"description": description, "details": details},
        "from": None,
        "to": [peer_id],
    }


def relayed(event: str, data: Any, sender: Client | str, to: Any) -> dict[str, Any]:
    """
    A client's message as its addressees receive it.
    """
    sender_id = sender if isinstance(sender, str) else sender.peer_id
    return {"event": event, "data": data, "from": sender_id, "to": to}


def is_peer_id(value: object) -> bool:
    """
    A lowercase hyphenated UUIDv4 string, as the server assigns (SPEC 1.1).
    """
    import uuid

    if not isinstance(value, str):
        return False
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        return False
    return parsed.version == 4 and str(parsed) == value
