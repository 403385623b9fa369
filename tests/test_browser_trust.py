"""
The room page acts on the server's events only when the server sent them
(SPEC 1.2): a peer's message named ``left``, ``error``, ``authenticated``,
``joined`` or ``ice_servers`` (``from`` = that peer) must not end the call,
change the page's peer id or the ICE servers it uses.

The server refuses such messages from peers, so they come through a room
that rewrites them (`tests.forged_events`), as a hostile or buggy relay on
the server side would.  Headless Chromium in a private network namespace,
as in ``test_browser``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page

from .support.browser import ALL_REMOTE_VIDEOS, Network, Peer, Server, make_certs, open_chromium

pytestmark = pytest.mark.browser

GHOST = "00000000-0000-4000-8000-000000000000"
EVIL_TURN = [{"urls": ["turn:127.0.0.1:9"], "username": "evil", "credential": "evil"}]
MARKER = "forged-done"

# Keeps the page's WebSockets in window.sockets, so that the test can send
# frames on the page's own connection, and the text frames they received in
# window.received.
CAPTURE_SOCKETS = """(() => {
    const Native = window.WebSocket;
    window.sockets = [];
    window.received = [];
    window.WebSocket = class extends Native {
        constructor(...args) {
            super(...args);
            window.sockets.push(this);
            this.addEventListener("message", (e) => window.received.push(String(e.data)));
        }
    };
})();"""

HAS_RECEIVED = "(marker) => window.received.some((text) => text.includes(marker))"

SEND = """(frame) => {
    const ws = window.sockets.at(-1);
    if (!ws || ws.readyState !== WebSocket.OPEN) return false;
    ws.send(frame);
    return true;
}"""

# What the page believes: its peer id, resume token, ICE servers, state, and
# per call the connection state and the ICE servers it was configured with.
BELIEFS = """() => ({
    peerId: window.rtcsignal.peerId,
    resumeToken: window.rtcsignal.resumeToken,
    iceServers: window.rtcsignal.iceServers,
    state: document.body.dataset.state,
    calls: Object.fromEntries([...window.rtcsignal.peers].map(([id, pc]) => [
        id, {state: pc.connectionState, iceServers: pc.getConfiguration().iceServers},
    ])),
})"""


def forge(sender: Peer[Page], to: str, event: str, data: Any) -> None:
    frame = {"event": "forge", "to": [to], "data": {"event": event, "data": data}}
    assert sender.page.evaluate(SEND, json.dumps(frame)), "the sender's socket is not open"


def test_the_page_ignores_server_events_from_a_peer(
    network: Network, browser: Browser, tmp_path: Path
) -> None:
    key, cert = make_certs(tmp_path / "certs")
    server = Server(
        network,
        tmp_path,
        key,
        cert,
        ["--room-class", "tests.support.forged_events.ForgeServerEvents"],
    )
    server.start()
    alice = bob = None
    try:
        alice = open_chromium(
            browser, f"{server.url}/trust", "alice", init_scripts=[CAPTURE_SOCKETS]
        )
        alice_id = alice.joined()
        bob = open_chromium(browser, f"{server.url}/trust", "bob", init_scripts=[CAPTURE_SOCKETS])
        bob_id = bob.joined()
        alice.sees(bob)
        bob.sees(alice)
        before = alice.page.evaluate(BELIEFS)
        assert before["state"] == "joined" and before["peerId"] == alice_id, before
        assert before["calls"][bob_id]["state"] == "connected", before

        forged = [
            ("ice_servers", EVIL_TURN),
            ("authenticated", {"peer_id": GHOST, "peers": [], "ice_servers": EVIL_TURN}),
            ("joined", {"peer_id": GHOST}),
            ("left", {"peer_id": bob_id}),
            ("error", {"description": "Could not join room", "details": "room_is_full"}),
            ("error", {"description": "Room closed", "details": "normal"}),
        ]
        for event, data in forged:
            forge(bob, alice_id, event, data)
        # An ordinary message after them: once the page has it, it has had
        # them all (one room, one order).
        forge(bob, alice_id, MARKER, None)
        deadline = time.monotonic() + 10
        while not alice.page.evaluate(HAS_RECEIVED, MARKER) and time.monotonic() < deadline:
            time.sleep(0.1)

        after = alice.page.evaluate(BELIEFS)
        assert after["state"] == "joined", after
        assert after["peerId"] == alice_id and after["resumeToken"] == before["resumeToken"]
        assert after["iceServers"] == before["iceServers"], after
        assert list(after["calls"]) == [bob_id], after
        assert after["calls"][bob_id] == before["calls"][bob_id], after
        assert alice.page.evaluate(ALL_REMOTE_VIDEOS) == [bob_id]
        assert alice.page.evaluate(HAS_RECEIVED, MARKER), "the marker never arrived"
        ignored = [line for line in alice.console if "did not come from the server" in line]
        assert len(ignored) == len(forged), ignored
        # The call goes on, both ways, and nobody logged an error.
        alice.sees(bob)
        bob.sees(alice)
        assert bob.state == "joined"
        assert alice.errors() == [] and bob.errors() == [], (alice, bob)
    finally:
        for peer in (alice, bob):
            if peer is not None:
                print(repr(peer))
                peer.close()
        server.close()
