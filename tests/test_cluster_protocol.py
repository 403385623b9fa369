"""
The core protocol cases of test_peer (tests/support/protocol_cases.py), run
a second time against a two-node
cluster (a real Redis; the nodes are two services in this process), with the
peers of each test spread over both nodes: each new connection goes to the
other node.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from twisted_signal import Room
from twisted_signal.cluster import ClusterRooms
from twisted_signal.events import Events

from .support import Client, LiveServer, join, joined, start_server
from .support.cluster import Redis
from .support.protocol_cases import (
    test_a_peer_cannot_send_the_servers_events,
    test_addressing_yourself_echoes,
    test_authenticated_for_the_first_peer,
    test_broadcast_never_comes_back_to_the_sender,
    test_duplicate_addressees_get_the_message_once,
    test_from_is_stamped_and_extra_keys_are_dropped,
    test_joined_to_others_and_peers_already_in_the_room,
    test_left_when_a_peer_closes,
    test_server_code_may_use_the_servers_event_names,
    test_trailing_slash_is_optional_and_64_character_names_work,
    test_unicast_reaches_only_the_addressee,
    test_unknown_addressee_delivers_nothing,
)

pytestmark = pytest.mark.process

__all__ = [
    "test_a_peer_cannot_send_the_servers_events",
    "test_addressing_yourself_echoes",
    "test_authenticated_for_the_first_peer",
    "test_broadcast_never_comes_back_to_the_sender",
    "test_duplicate_addressees_get_the_message_once",
    "test_from_is_stamped_and_extra_keys_are_dropped",
    "test_joined_to_others_and_peers_already_in_the_room",
    "test_left_when_a_peer_closes",
    "test_server_code_may_use_the_servers_event_names",
    "test_trailing_slash_is_optional_and_64_character_names_work",
    "test_unicast_reaches_only_the_addressee",
    "test_unknown_addressee_delivers_nothing",
]

LEASE = 3.0


class SpreadServer:
    """Looks like one `LiveServer`; each socket URL is on the next node."""

    def __init__(self, nodes: list[LiveServer]) -> None:
        self.nodes = nodes
        self._next = itertools.cycle(nodes)

    @property
    def base(self) -> str:
        return self.nodes[0].base

    def http_url(self, path: str = "/") -> str:
        return self.nodes[0].http_url(path)

    def socket_url(self, room: str, query: str = "") -> str:
        return next(self._next).socket_url(room, query)


@pytest_twisted.async_yield_fixture
async def make_server(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[SpreadServer]]]:
    redis = Redis(tmp_path)
    redis.start()
    servers: list[LiveServer] = []

    async def make(
        *, room_class: type[Room] = Room, max_peers: int | None = 4, **kwargs: Any
    ) -> SpreadServer:
        nodes = []
        for _ in range(2):

            def factory(name: str) -> Room:
                return room_class(name, None, max_peers=max_peers)

            rooms = ClusterRooms(factory, redis_url=redis.url, lease=LEASE, max_peers=max_peers)
            server = await start_server(rooms=rooms, **kwargs)
            servers.append(server)
            nodes.append(server)
        return SpreadServer(nodes)

    try:
        yield make
    finally:
        for server in servers:
            if server.service.running:
                await server.stop()
        redis.stop()


class Recorder(Events):
    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def room_started(self, room: str) -> None:
        self.seen.append(("room_started", room))

    def peer_joined(self, room: str, peer_id: str) -> None:
        self.seen.append(("peer_joined", peer_id))


@pytest_twisted.ensureDeferred
async def test_a_room_that_moves_does_not_start_again_for_events(
    make_server: Callable[..., Awaitable[SpreadServer]],
) -> None:
    server = await make_server()
    first, second = server.nodes
    recorders = [Recorder(), Recorder()]
    for node, recorder in zip(server.nodes, recorders, strict=True):
        node.rooms.events = recorder

    def before() -> tuple[Client, Client]:
        x = join(first.socket_url("moving"))
        y = join(second.socket_url("moving"))
        assert x.recv() == joined(y.peer_id)
        return x, y

    x, y = await deferToThread(before)
    await first.stop()  # hands the room over to the second node
    server.nodes.remove(first)

    def after() -> None:
        assert y.recv(timeout=LEASE * 3)["event"] == "left"
        z = join(second.socket_url("moving"))
        assert z.authenticated["data"]["peers"] == [y.peer_id]
        z.close()
        y.close()

    await deferToThread(after)
    assert recorders[0].seen == [
        ("room_started", "moving"),
        ("peer_joined", x.peer_id),
        ("peer_joined", y.peer_id),
    ]
    assert [e for e in recorders[1].seen if e[0] == "room_started"] == []
