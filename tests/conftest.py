"""
The fixtures every test module may use, and the rules of the test tree:
shared helpers live in the `tests.support` package, never in a test module
that others import.
"""

from __future__ import annotations

import ast
import contextlib
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from playwright.sync_api import Browser

from .support import LiveServer, start_server
from .support import browser as browser_support
from .support.admin import FILE_TOKEN
from .support.browser import ROOM, Call, Network, Server
from .support.cluster import Cluster, Redis
from .support.firefox import Firefox
from .support.twistd import Spawn, Twistd, spawn_in


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
    Start real ``twistd rtcsignal`` processes (see `support.twistd.spawn_in`);
    they are killed after the test.
    """
    processes: list[Twistd] = []
    try:
        yield spawn_in(tmp_path, processes)
    finally:
        for twistd in processes:
            twistd.kill()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    """
    A file holding `support.admin.FILE_TOKEN`, for ``--admin-token-file``.
    """
    path = tmp_path / "admin-token"
    path.write_text(FILE_TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """
    A real ``redis-server`` and a way to start ``twistd --redis`` nodes on it
    (see `support.cluster`); all are killed after the test.
    """
    redis = Redis(tmp_path)
    redis.start()
    processes: list[Twistd] = []
    try:
        yield Cluster(redis, spawn_in(tmp_path, processes))
    finally:
        for twistd in processes:
            if twistd.process.poll() is None:
                with contextlib.suppress(OSError):
                    twistd.process.send_signal(signal.SIGCONT)  # in case a test froze it
            twistd.kill()
        redis.stop()


@pytest.fixture
def loopback_candidates(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    aioice offers 127.0.0.1 only (it leaves loopback out by default); the
    aiortc tests use it with ``pytest.mark.usefixtures``.
    """
    import aioice.ice

    def loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    monkeypatch.setattr(aioice.ice, "get_host_addresses", loopback)


# The browser tests' (see support/browser.py).


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


@pytest.fixture
def call(server: Server, browser: Browser, tmp_path: Path) -> Iterator[Call]:
    """
    The people of one call in Chromium, on `server`'s room page.
    """
    shots = tmp_path / "screenshots"
    shots.mkdir()
    call = Call(browser, f"{server.url}/{ROOM}", shots)
    yield call
    for peer in call.peers:
        print(repr(peer))  # the pages' consoles: pytest shows them if the test failed
    call.close()


# The rules of the tree, checked when the tests are collected.


def imported_test_modules(path: Path) -> list[str]:
    """
    The test modules (``test_*``) that the module at `path` imports.
    """
    found = []
    for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
        if isinstance(node, ast.ImportFrom):
            names = [node.module or ""]
            if not node.module:
                names = [alias.name for alias in node.names]
            found += [n for n in names if n.rsplit(".", 1)[-1].startswith("test_")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.rsplit(".", 1)[-1].startswith("test_")]
    return found


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> None:
    if file_path.suffix == ".py":
        imported = imported_test_modules(file_path)
        if imported:
            where = file_path.relative_to(parent.config.rootpath)
            raise pytest.Collector.CollectError(
                f"{where} imports the test module(s) {', '.join(imported)}: "
                "move what it needs into the tests/support package "
                "(tests/support/<topic>.py) and import it from there"
            )
