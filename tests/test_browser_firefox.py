"""
The room page across browsers: Debian's Firefox ESR (``tests/support/firefox.py``)
and Chromium call each other through ``twistd -n rtcsignal``, in both join
orders, in the private loopback-only network of ``tests/support/browser.py``; and a
page that goes away leaves the room at once, with no error in either
browser.
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import Browser

from .support.browser import ROOM, Peer, Server, open_chromium, open_firefox
from .support.firefox import Firefox

pytestmark = pytest.mark.browser

# Notes every error the page reports from now on (an exception thrown by an
# event handler reaches window "error"), for pages whose console the driver
# may not see any more once they are gone.
CATCH_ERRORS = """() => {
    window.__errors = [];
    window.addEventListener("error", (e) => window.__errors.push(String(e.message)));
    return true;
}"""

# The page is being left (as on closing its tab or following a link): run
# its pagehide handlers now, and say what they threw.
PAGEHIDE = """() => {
    window.dispatchEvent(new PageTransitionEvent("pagehide", { persisted: false }));
    return window.__errors;
}"""


def wait_for_log(server: Server, pattern: str, timeout: float = 10) -> str:
    """
    Wait until the server logs a line matching `pattern`; that line.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = re.search(f".*{pattern}.*", server.log())
        if found:
            return found.group(0)
        assert time.monotonic() < deadline, f"not in the log: {pattern}"
        time.sleep(0.05)


def leaves_cleanly(server: Server, leaving: Peer[Any], staying: Peer[Any]) -> None:
    """
    `leaving` goes away: its pagehide handler throws nothing, the server
    lets it go at once (not held for resume), and `staying` drops its tile.
    """
    leaving_id = leaving.peer_id
    assert leaving.page.evaluate(CATCH_ERRORS)
    assert leaving.page.evaluate(PAGEHIDE) == []
    line = wait_for_log(server, rf"peer {leaving_id} disconnected from room")
    assert "code 1000, clean, closed by the client" in line, line
    wait_for_log(server, rf"peer {leaving_id} left room {ROOM}")
    staying.wait_for(
        "(id) => !document.querySelector(`video[data-peer-id='${id}']`)", leaving_id, 5_000
    )
    assert f"peer {leaving_id} held for" not in server.log()


def test_chromium_and_firefox_call_in_both_orders(
    server: Server, browser: Browser, firefox: Firefox
) -> None:
    url = f"{server.url}/{ROOM}"
    peers: list[Peer[Any]] = []
    try:
        for first_in_firefox in (False, True):
            chromium_peer = open_chromium(browser, None, "chromium")
            firefox_peer = open_firefox(firefox, None, "firefox")
            peers += [chromium_peer, firefox_peer]
            first, second = (
                (firefox_peer, chromium_peer) if first_in_firefox else (chromium_peer, firefox_peer)
            )
            first.page.goto(url)
            first.joined()
            second.page.goto(url)
            second.joined()
            first.sees(second)
            second.sees(first)
            # The one who came second leaves; then the first, by going to
            # another page: its pagehide says goodbye, and it leaves at once.
            leaves_cleanly(server, second, first)
            first_id = first.peer_id
            first.page.goto("about:blank")
            line = wait_for_log(server, rf"peer {first_id} disconnected from room")
            # (The browser may have closed the socket itself first, with 1001.)
            assert re.search(r"code 100[01], clean, closed by the client", line), line
            wait_for_log(server, rf"peer {first_id} left room {ROOM}")
            for peer in (first, second):
                assert peer.errors() == [], peer
    finally:
        for peer in peers:
            print(repr(peer))  # the pages' consoles: pytest shows them if the test failed
            peer.close()
