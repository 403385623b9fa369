"""
Helpers shared by the tests: a live server on a loopback port, and a
blocking WebSocket client (the `websockets` library, run in a thread, so the
server is not only tested against Autobahn).
"""

from __future__ import annotations

import json
from collections.abc import Callable
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
    service = SignalingService(rooms, peer_class=peer_class, settings=settings)
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
