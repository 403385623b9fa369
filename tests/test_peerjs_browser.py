"""
The unchanged ``peerjs`` client (1.5.5, pinned in tests/browsers/) in real
browsers against ``twistd -n rtcsignal --peerjs /peerjs/``: a page served by
the server loads peerjs's own browser bundle, and ``tests/support/peerjs_pages/
pjtest.js`` drives it.  One test crosses Chromium and Firefox (data with
JSON and binary serialization, a media call with fake devices, an id made
by the server), on one node and across two nodes of a cluster (a real
redis-server); one, in Chromium only, the error cases and reconnect.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from .support.browser import Network, Server, make_certs, open_chromium, open_firefox
from .support.firefox import Firefox

pytestmark = pytest.mark.browser

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "browsers" / "node_modules" / "peerjs" / "dist" / "peerjs.min.js"


@pytest.fixture
def peerjs_server(network: Network, tmp_path: Path) -> Iterator[Server]:
    server = _server(network, tmp_path)
    server.start()
    yield server
    server.close()


def _server(network: Network, folder: Path, extra: list[str] | None = None) -> Server:
    """``twistd -n rtcsignal --peerjs /peerjs/`` serving the test page."""
    if not BUNDLE.exists():
        from .support.browser import unavailable

        unavailable("peerjs is not installed in tests/browsers (make browser-drivers)")
    pages = folder / "pages"
    shutil.copytree(HERE / "support" / "peerjs_pages", pages)
    shutil.copy(BUNDLE, pages / "peerjs.min.js")
    key, cert = make_certs(folder / "certs")
    args = ["--peerjs", "/peerjs/", "--peerjs-expire-timeout", "1", "--static", str(pages)]
    return Server(network, folder, key, cert, args=[*args, *(extra or [])])


def _page_url(server: Server) -> str:
    return f"{server.url}/static/pjtest.html"


def _ready(page: Any) -> None:
    page.wait_for_function("() => !!window.T && !!window.Peer")


def _exchange_and_call(
    chromium_url: str, firefox_url: str, browser: Browser, firefox: Firefox
) -> None:
    chromium = open_chromium(browser, chromium_url, "chromium")
    gecko = open_firefox(firefox, firefox_url, "firefox")
    try:
        for peer in (chromium, gecko):
            _ready(peer.page)
        # An id the server makes (GET /peerjs/peerjs/id), and one chosen.
        made = chromium.page.evaluate("() => T.start('a', null)")
        assert "id" in made, (made, chromium.console)
        a = made["id"]
        assert len(a) == 36
        assert gecko.page.evaluate("() => T.start('b', 'firefox-peer')") == {"id": "firefox-peer"}
        # Data, both serializations, both ways.
        message = {"hello": "json", "n": [1, 2.5, None, "é"]}
        echoed = chromium.page.evaluate(
            "(m) => T.exchange('a', 'firefox-peer', 'json', m)", message
        )
        assert echoed == message
        binary = {"bytes": [0, 1, 2, 254, 255]}
        echoed = gecko.page.evaluate("([to, m]) => T.exchange('b', to, 'binary', m)", [a, binary])
        assert echoed == binary
        received = gecko.page.evaluate("() => T.state.received")
        assert received == [{"from": a, "serialization": "json", "data": message}]
        # A media call with fake devices: both sides get the other's video.
        assert chromium.page.evaluate("() => T.call('a', 'firefox-peer')")
        chromium.page.wait_for_function("() => T.state.calls.length === 1", timeout=20_000)
        gecko.page.wait_for_function("() => T.state.calls.length === 1", timeout=20_000)
        assert chromium.page.evaluate("() => T.state.calls") == [
            {"peer": "firefox-peer", "tracks": 1}
        ]
        assert gecko.page.evaluate("() => T.state.calls") == [{"peer": a, "tracks": 1}]
        for peer in (chromium, gecko):
            assert peer.page.evaluate("() => T.state.errors") == []
    finally:
        chromium.close()
        gecko.close()


def test_chromium_and_firefox_exchange_data_and_call(
    peerjs_server: Server, browser: Browser, firefox: Firefox
) -> None:
    _exchange_and_call(_page_url(peerjs_server), _page_url(peerjs_server), browser, firefox)


def test_chromium_and_firefox_on_two_cluster_nodes(
    network: Network, tmp_path: Path, browser: Browser, firefox: Firefox
) -> None:
    redis_server, redis_cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if redis_server is None or redis_cli is None:
        from .support.browser import unavailable

        unavailable("redis-server is not installed (Debian package redis-server)")
    redis_port = 6390 if network.private else network.free_port()
    argv = [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(tmp_path)]
    redis = subprocess.Popen(
        network.command(argv),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    nodes: list[Server] = []
    try:
        ping = network.command([redis_cli, "-p", str(redis_port), "ping"])
        deadline = time.monotonic() + 10
        while subprocess.run(ping, capture_output=True, check=False).stdout.strip() != b"PONG":
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)
        cluster = ["--redis", f"redis://127.0.0.1:{redis_port}/0", "--cluster-lease", "2"]
        for n in range(2):
            folder = tmp_path / f"node-{n}"
            folder.mkdir()
            node = _server(network, folder, cluster)
            if network.private:
                node.port = 8443 + n
                node.endpoint = node.endpoint.replace("ssl:8443:", f"ssl:{node.port}:")
            nodes.append(node)
            node.start()
        _exchange_and_call(_page_url(nodes[0]), _page_url(nodes[1]), browser, firefox)
    finally:
        for node in nodes:
            node.close()
        redis.kill()
        redis.wait()


def test_chromium_sees_peerjs_errors_and_reconnects(
    peerjs_server: Server, browser: Browser
) -> None:
    first = open_chromium(browser, _page_url(peerjs_server), "first")
    second = open_chromium(browser, _page_url(peerjs_server), "second")
    try:
        for peer in (first, second):
            _ready(peer.page)
        assert first.page.evaluate("() => T.start('a', 'alice')") == {"id": "alice"}
        # The id is held (with another token): unavailable-id.
        assert second.page.evaluate("() => T.start('b', 'alice')") == {"error": "unavailable-id"}
        # A wrong key: server-error (peerjs-server's "Invalid key provided").
        assert second.page.evaluate("() => T.start('c', 'carol', {key: 'wrong'})") == {
            "error": "server-error"
        }
        # Nobody there: EXPIRE after the expire timeout, peer-unavailable.
        assert first.page.evaluate("() => T.connectNobody('a', 'nobody')") == "peer-unavailable"
        # Disconnect, reconnect: the same id, open again.
        assert first.page.evaluate("() => T.reconnect('a')") == {
            "id": "alice",
            "disconnected": False,
        }
        # Still reachable as alice.
        assert second.page.evaluate("() => T.start('d', 'dave')") == {"id": "dave"}
        echoed = second.page.evaluate("() => T.exchange('d', 'alice', 'json', {x: 1})")
        assert echoed == {"x": 1}
        log = peerjs_server.log()
        assert "peerjs" in log
    finally:
        first.close()
        second.close()
