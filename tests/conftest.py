from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest_twisted

from .support import LiveServer, start_server


@pytest_twisted.async_yield_fixture
async def make_server() -> AsyncIterator[Callable[..., Awaitable[LiveServer]]]:
    """
    Start servers (see `support.start_server` for the arguments); they are
    stopped after the test.
    """
    servers: list[LiveServer] = []

    async def make(**kwargs: Any) -> LiveServer:
        server = await start_server(**kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


# The browser tests' fixtures: network, server, browser (Chromium), firefox.
pytest_plugins = ["tests.browser_support"]
