"""
The unchanged ``peerjs`` client (1.5.5, pinned in tests/browsers/) in real
browsers against ``twistd -n rtcsignal --peerjs /peerjs/``: a page served by
the server loads peerjs's own browser bundle, and ``tests/peerjs_pages/
pjtest.js`` drives it.  One test crosses Chromium and Firefox (data with
JSON and binary serialization, a media call with fake devices, an id made
by the server); one, in Chromium only, the error cases and reconnect.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from .browser_support import Network, Server, make_certs, open_chromium, open_firefox
from .firefox import Firefox

HERE = Path(__file__).resolve().parent
BUNDLE = HERE / "browsers" / "node_modules" / "peerjs" / "dist" / "peerjs.min.js"


@pytest.fixture
def peerjs_server(network: Network, tmp_path: Path) -> Iterator[Server]:
    if not BUNDLE.exists():
        from .browser_support import unavailable

        unavailable("peerjs is not installed in tests/browsers (make browser-drivers)")
    pages = tmp_path / "pages"
    shutil.copytree(HERE / "peerjs_pages", pages)
    shutil.copy(BUNDLE, pages / "peerjs.min.js")
    key, cert = make_certs(tmp_path / "certs")
    server = Server(
        network,
        tmp_path,
        key,
        cert,
        args=["--peerjs", "/peerjs/", "--peerjs-expire-timeout", "1", "--static", str(pages)],
    )
    server.start()
    yield server
    server.close()


def _page_url(server: Server) -> str:
    return f"{server.url}/static/pjtest.html"


def _ready(page: Any) -> None:
    page.wait_for_function("() => !!window.T && !!window.Peer")


def test_chromium_and_firefox_exchange_data_and_call(
    peerjs_server: Server, browser: Browser, firefox: Firefox
) -> None:
    chromium = open_chromium(browser, _page_url(peerjs_server), "chromium")
    gecko = open_firefox(firefox, _page_url(peerjs_server), "firefox")
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
