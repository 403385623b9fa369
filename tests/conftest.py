from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from playwright.sync_api import Browser

from . import browser_support
from .browser_support import Network, Server
from .firefox import Firefox
from .support import LiveServer, start_server
from .test_twistd import Spawn, Twistd, spawn_in


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


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Spawn]:
    """
    Start real ``twistd rtcsignal`` processes (see `test_twistd.spawn_in`);
    they are killed after the test.
    """
    processes: list[Twistd] = []
    try:
        yield spawn_in(tmp_path, processes)
    finally:
        for twistd in processes:
            twistd.kill()


# The browser tests' (see browser_support).


@pytest.fixture
def network() -> Iterator[Network]:
    network = browser_support.private_network()
    yield network
    network.close()


@pytest.fixture
def server(network: Network, tmp_path: Path) -> Iterator[Server]:
    key, cert = browser_support.make_certs(tmp_path / "certs")
    server = Server(network, tmp_path, key, cert)
    server.start()
    yield server
    server.close()


@pytest.fixture
def browser(network: Network, tmp_path: Path) -> Iterator[Browser]:
    """
    Chromium.
    """
    with browser_support.chromium(network, tmp_path) as browser:
        yield browser


@pytest.fixture(name="firefox")
def firefox_fixture(network: Network, tmp_path: Path) -> Iterator[Firefox]:
    folder = tmp_path / "firefox"
    folder.mkdir()
    with browser_support.firefox(network, folder) as browser:
        yield browser
