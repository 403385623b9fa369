from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from .support import LiveServer, join

pytestmark = pytest.mark.loopback


@pytest_twisted.ensureDeferred
async def test_two_peers_exchange_an_offer(
    make_server: Callable[..., Awaitable[LiveServer]],
) -> None:
    server = await make_server()

    def scenario() -> None:
        a = join(server.socket_url("demo"))
        b = join(server.socket_url("demo"))
        assert a.recv()["event"] == "joined"
        b.send("offer", [a.peer_id], {"sdp": "v=0"})
        got = a.recv()
        assert got == {
            "event": "offer",
            "data": {"sdp": "v=0"},
            "from": b.peer_id,
            "to": [a.peer_id],
        }
        a.close()
        b.close()

    await deferToThread(scenario)
