"""
Helpers shared by the tests: a live server on a loopback port, and a
blocking WebSocket client (the `websockets` library, run in a thread, so the
server is not only tested against Autobahn).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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
