"""
The example app of the browser client library (``examples/chat-call``,
written against the public API of ``rtcsignal.js`` and ``rtcsignal-calls.js``
only), served by ``twistd -n rtcsignal --static examples/chat-call``: a
Chromium page and a Firefox page chat, call each other (each shows the
other's video, frames moving) and show the same verification code.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser

from .support.browser import REPO, Network, Peer, Server, make_certs, open_chromium, open_firefox
from .support.firefox import Firefox

pytestmark = pytest.mark.browser

EXAMPLE = REPO / "examples" / "chat-call"
ROOM = "example"

SAY = """(text) => {
    document.getElementById("text").value = text;
    document.getElementById("chat").requestSubmit();
    return true;
}"""

# The remote videos: peer id -> {width, time} (time: the video's currentTime).
VIDEOS = """() => Object.fromEntries([...document.querySelectorAll("video[data-peer-id]")].map(
    (v) => [v.dataset.peerId, { width: v.videoWidth, time: v.currentTime }]))"""

# The verification state and code shown for each remote peer.
CODES = """() => Object.fromEntries([...document.querySelectorAll("figure[data-peer]")].map((f) => {
    const caption = f.querySelector("figcaption");
    return [f.dataset.peer, [caption.dataset.verification, caption.textContent]];
}))"""


@pytest.fixture
def example_server(network: Network, tmp_path: Path) -> Iterator[Server]:
    key, cert = make_certs(tmp_path / "certs")
    server = Server(network, tmp_path, key, cert, ["--static", str(EXAMPLE)])
    server.start()
    yield server
    server.close()


def wait_until(what: str, check: Any, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not {what} within {timeout}s"
        time.sleep(0.2)


def remote(peer: Peer[Any]) -> dict[str, dict[str, float]]:
    videos: dict[str, dict[str, float]] = peer.page.evaluate(VIDEOS)
    return videos


def test_example_chat_and_call_between_chromium_and_firefox(
    example_server: Server, browser: Browser, firefox: Firefox
) -> None:
    url = f"{example_server.url}/?room={ROOM}"
    chromium_peer = open_chromium(browser, url, "chromium")
    firefox_peer = open_firefox(firefox, url, "firefox")
    peers: list[Peer[Any]] = [chromium_peer, firefox_peer]
    try:
        for peer in peers:
            peer.wait_for("() => document.body.dataset.state === 'open'")
        # Each sees one remote video, with frames, moving on.
        for peer in peers:
            wait_until(f"{peer.name} sees video", lambda p=peer: len(remote(p)) == 1)
        chromium_sees, firefox_sees = (next(iter(remote(p))) for p in peers)
        for peer, other in ((chromium_peer, chromium_sees), (firefox_peer, firefox_sees)):
            wait_until(
                f"{peer.name} gets frames", lambda p=peer, o=other: remote(p)[o]["width"] > 0
            )
            start = remote(peer)[other]["time"]
            wait_until(
                f"{peer.name} plays",
                lambda p=peer, o=other, s=start: remote(p)[o]["time"] > s + 0.5,
            )

        # A chat both ways.
        assert chromium_peer.page.evaluate(SAY, "hello from chromium")
        assert firefox_peer.page.evaluate(SAY, "hello from firefox")
        firefox_peer.wait_for(
            "(id) => [...document.querySelectorAll('#log li')].some("
            "(li) => li.dataset.from === id && li.textContent.endsWith('hello from chromium'))",
            firefox_sees,
        )
        chromium_peer.wait_for(
            "(id) => [...document.querySelectorAll('#log li')].some("
            "(li) => li.dataset.from === id && li.textContent.endsWith('hello from firefox'))",
            chromium_sees,
        )

        # The same verification code on both sides.
        def verified(peer: Peer[Any]) -> str | None:
            codes: dict[str, list[str]] = peer.page.evaluate(CODES)
            (state, text), *_ = codes.values()
            found = re.search(r"\d{4}-\d{4}-\d{4}", text)
            return found.group(0) if state == "verified" and found else None

        codes = [wait_until(f"{p.name} verified", lambda p=p: verified(p)) for p in peers]
        assert codes[0] == codes[1], codes
        for peer in peers:
            assert peer.errors() == [], peer
    finally:
        for peer in peers:
            print(repr(peer))  # the pages' consoles: pytest shows them if the test failed
            peer.close()
