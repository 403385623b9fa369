"""
Behind a reverse proxy: the remote address logged for a peer is the one the
trusted proxy reports in X-Forwarded-For, and only when told to trust it.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent

from twisted_signal import Settings

from .support import (
    MakeServer,
    join_strict,
)

pytestmark = pytest.mark.loopback


@pytest.mark.parametrize(
    ("trusted", "expected"), [(0, "from tcp4:127.0.0.1:"), (1, "from 203.0.113.7")]
)
@pytest_twisted.ensureDeferred
async def test_remote_address_follows_trusted_proxies(
    make_server: MakeServer, trusted: int, expected: str
) -> None:
    server = await make_server(settings=Settings(trusted_proxies=trusted))

    def scenario() -> None:
        headers = {"X-Forwarded-For": "198.51.100.1, 203.0.113.7"}
        join_strict(server.socket_url("demo"), additional_headers=headers).close()

    with capturedLogs() as events:
        await deferToThread(scenario)
    lines = [formatEvent(e) for e in events if "connected to room" in formatEvent(e)]
    assert len(lines) == 1, lines
    assert expected in lines[0], lines[0]
