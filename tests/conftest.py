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
from typing import Any, cast

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
def redis(tmp_path: Path) -> Iterator[Redis]:
    """A real ``redis-server`` of the test's own, stopped after the test."""
    server = Redis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


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


# Tiers: every test says how much of the machine it needs, and the tests run
# in that order, fastest first (docs/testing.md).

TIERS = ("pure", "memory", "loopback", "process", "browser")
"""The markers, lightest first (registered in pyproject.toml)."""

FIXTURE_TIERS = {
    "make_server": "loopback",
    "spawn": "process",
    "cluster": "process",
    "redis": "process",
    "network": "browser",
    "server": "browser",
    "browser": "browser",
    "firefox": "browser",
    "call": "browser",
}
"""The lightest tier a test using one of conftest's fixtures can be in."""


def tier_of(item: pytest.Item) -> str | None:
    """
    The closest tier marker of `item`: its own, else its class's, else its
    module's ``pytestmark``.
    """
    for marker in item.iter_markers():
        if marker.name in TIERS:
            return marker.name
    return None


def implied_tier(item: pytest.Item) -> tuple[str, str] | None:
    """
    The heaviest tier that the conftest fixtures `item` uses imply, and the
    fixture that implies it.  A module's own fixture of the same name (as
    test_twistd's ``server``) implies nothing.
    """
    heaviest: tuple[str, str] | None = None
    definitions = getattr(item, "_fixtureinfo", None)
    if definitions is None:
        return None
    for name in getattr(item, "fixturenames", ()):
        tier = FIXTURE_TIERS.get(name)
        chosen = definitions.name2fixturedefs.get(name)
        if tier is None or not chosen or chosen[-1].baseid.endswith(".py"):
            continue
        if heaviest is None or TIERS.index(tier) > TIERS.index(heaviest[0]):
            heaviest = (tier, name)
    return heaviest


TIER_PROBLEM = pytest.StashKey[str]()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """
    Refuse tests without a tier or in too light a tier (before ``-m``
    deselects anything), then order the tests by tier, keeping the order of
    modules and tests within a tier.
    """
    problems: dict[pytest.Item, str] = {}
    for item in items:
        tier = tier_of(item)
        if tier is None:
            module = item.nodeid.split("::")[0]
            problems[item] = (
                f"{module} has no tier: mark this module with pytestmark = pytest.mark.<tier>, "
                f"<tier> one of {', '.join(TIERS)} (see docs/testing.md)"
            )
            continue
        implied = implied_tier(item)
        if implied is not None and TIERS.index(implied[0]) > TIERS.index(tier):
            problems[item] = (
                f"{item.nodeid} is marked {tier} but uses the {implied[1]} fixture: mark it "
                f"@pytest.mark.{implied[0]} (or move it to a module with "
                f"pytestmark = pytest.mark.{implied[0]})"
            )
    if problems and not hasattr(config, "workerinput"):
        raise pytest.UsageError("\n".join(dict.fromkeys(problems.values())))
    # An xdist worker cannot stop the run with a message of its own: there
    # each such test fails instead, and is in the first tier so that every
    # run, ``make check`` too, has it.
    for item, problem in problems.items():
        item.stash[TIER_PROBLEM] = problem
    tiers = {item: tier_of(item) if item not in problems else TIERS[0] for item in items}
    # ``-m`` sees every marker up the chain, so a loopback test in a pure
    # module would be both: each test keeps its own tier only.
    for item, tier in tiers.items():
        for node in item.listchain():
            node.own_markers[:] = [m for m in node.own_markers if m.name not in TIERS]
        item.add_marker(cast(str, tier))
    rank = {tier: n for n, tier in enumerate(TIERS)}
    items.sort(key=lambda item: rank[cast(str, tiers[item])])
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    if workers > BROWSER_LANES:
        browser_lanes_first([item for item in items if tiers[item] == "browser"], items)


BROWSER_LANES = 2
"""How many browser tests may run at once on a run with more workers than
this: each is two browsers making a call, which is most of a core."""

BROWSER_SECONDS = {
    "test_browser_resume": 140,
    "test_browser_verify": 138,
    "test_browser_outage": 125,
    "test_peerjs_browser": 49,
    "test_browser_firefox": 43,
    "test_example_chat_call": 22,
    "test_browser": 21,
    "test_browser_trust": 9,
    "test_aiortc": 8,
}
"""About how long each browser module takes on a loaded two-core machine
(``--durations``), only to share the modules out evenly between the lanes;
a module not listed counts as 10 s."""


def browser_lanes_first(browser: list[pytest.Item], items: list[pytest.Item]) -> None:
    """
    With more xdist workers than `BROWSER_LANES`, the browser tests run in
    that many lanes (``xdist_group``s, whole modules each, the longest
    module first into the least loaded lane), and the lanes come first in
    the order: each takes a worker from the start, while the other workers
    run the other tiers lightest first.  Otherwise the longest browser tests
    would start last, and the run would wait for them alone.
    """
    modules: dict[str, list[pytest.Item]] = {}
    for item in browser:
        modules.setdefault(item.nodeid.split("::")[0], []).append(item)
    loads = [0] * BROWSER_LANES

    def seconds(module: str) -> int:
        return BROWSER_SECONDS.get(Path(module).stem, 10)

    for module in sorted(modules, key=lambda m: (-seconds(m), m)):
        lane = loads.index(min(loads))
        loads[lane] += seconds(module)
        for item in modules[module]:
            item.add_marker(pytest.mark.xdist_group(f"browser-{lane + 1}"))
    lanes = set(browser)
    items.sort(key=lambda item: item not in lanes)


def pytest_runtest_setup(item: pytest.Item) -> None:
    problem = item.stash.get(TIER_PROBLEM, None)
    if problem is not None:
        pytest.fail(problem, pytrace=False)
