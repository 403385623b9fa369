"""
Graceful shutdown (issue: hardening): every peer is told and closed with
1001, every on_leave/on_terminate runs, and the whole thing never takes
longer than the grace, even when a callback hangs.
"""

from __future__ import annotations

import time

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread

from twisted_signal import Peer, PeerContext, Room, Rooms, Settings

from .support import (
    LiveServer,
    MakeServer,
    StrictClient,
    join_strict,
)

pytestmark = pytest.mark.loopback


def two_peers(server: LiveServer) -> list[StrictClient]:
    a = join_strict(server.socket_url("demo"))
    b = join_strict(server.socket_url("demo"))
    assert a.recv()["event"] == "joined"
    return [a, b]


@pytest_twisted.ensureDeferred
async def test_shutdown_runs_every_callback_and_respects_the_grace(
    make_server: MakeServer,
) -> None:
    calls: list[str] = []

    class Stubborn(Room):
        def on_leave(self, peer_id: str) -> None:
            calls.append("on_leave")

        def on_terminate(self) -> Deferred[None]:
            calls.append("room.on_terminate")
            return Deferred()  # never fires

    class Recording(Peer):
        def on_terminate(self, context: PeerContext) -> None:
            calls.append("peer.on_terminate")

    rooms = Rooms(lambda name: Stubborn(name, None, max_peers=4))
    server = await make_server(rooms=rooms, peer_class=Recording, settings=Settings())
    server.service.shutdown_grace = 1.0
    clients = await deferToThread(two_peers, server)

    started = time.monotonic()
    await server.service.stopService()
    took = time.monotonic() - started

    def told_and_closed() -> list[tuple[object, int | None]]:
        return [(client.recv()["data"], client.closed_with()) for client in clients]

    told = {"description": "Room closed", "details": "shutdown"}
    assert await deferToThread(told_and_closed) == [(told, 1001), (told, 1001)]
    # The hung on_terminate would hold the stop forever; the grace ends it.
    # (Generous bound: this is not a timing test, the machine may be busy.)
    assert 0.9 <= took < 6, took
    assert calls.count("peer.on_terminate") == 2
    assert calls.count("on_leave") == 2
    assert calls.count("room.on_terminate") == 1
