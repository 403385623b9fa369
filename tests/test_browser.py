"""
End to end, as users run it: ``twistd -n rtcsignal`` over TLS, with a
certificate from ``python -m twisted_signal.devcert``, and the room page in
real headless Chromium (Debian's, driven by Playwright) making real WebRTC
calls with fake camera and microphone, in a private loopback-only network
namespace (see ``tests/support/browser.py``).

Without a usable Chromium the test is skipped, except under ``CI=true``,
where it fails.
"""

from __future__ import annotations

import os
import shutil

import pytest
from playwright.sync_api import Page, expect

from .support.browser import ALL_REMOTE_VIDEOS, REPO, ROOM, Call, Peer, Server

pytestmark = pytest.mark.browser

DOCS_SCREENSHOT = REPO / "docs" / "screenshot.png"

# rtcsignal.socketUrl, run in the page: the socket is in the page's own
# folder, over wss: for https: pages, and carries the page's token.
SOCKET_URLS = """async () => {
    const { socketUrl } = await import(new URL("static/rtcsignal.js", location.href));
    return [
        ["https://h.test/standup", "standup"],
        ["http://h.test:8080/rtc/standup?token=a.b.c&x=1#top", "standup"],
        ["https://h.test/a%20b", "a b"],
    ].map(([page, room]) => socketUrl(page, room).href);
}"""


def test_video_call(server: Server, call: Call) -> None:
    # Two people: each sees the other.
    alice = call.join_from_landing_page("alice", f"{server.url}/", ROOM)
    bob = call.join("bob")
    alice.joined()
    bob.joined()
    alice.sees(bob)
    bob.sees(alice)
    assert alice.page.evaluate(SOCKET_URLS) == [
        "wss://h.test/socket/standup/",
        "ws://h.test:8080/rtc/socket/standup/?token=a.b.c",
        "wss://h.test/socket/a%20b/",
    ]
    check_controls(alice, bob)

    # A third one: a three-way mesh.
    carol = call.join("carol")
    carol.joined()
    alice.sees(bob, carol)
    bob.sees(alice, carol)
    carol.sees(alice, bob)
    expect(alice.page.locator("figure.remote .connection").first).to_have_text("connected")
    for peer in (bob, carol):
        call.screenshot(peer, "three-way")
    shot = call.screenshot(alice, "three-way")
    if os.environ.get("RTCSIGNAL_UPDATE_SCREENSHOT") == "1":
        # The README's picture: refreshed on request, not on every run.
        shutil.copyfile(shot, DOCS_SCREENSHOT)

    # A fourth one is over --max-peers: the page says so, and stops.
    dave = call.join("dave")
    dave.wait_for_state("error")
    expect(dave.page.get_by_text("This room is full")).to_be_visible()
    expect(dave.page.get_by_role("alert")).to_contain_text("Could not join room")
    call.screenshot(dave, "room-full")
    assert dave.page.evaluate(ALL_REMOTE_VIDEOS) == []
    assert alice.page.evaluate(ALL_REMOTE_VIDEOS) == sorted([bob.peer_id, carol.peer_id])
    call.remove(dave)

    # Carol leaves with the Leave button: her video goes from the others.
    carol_id = carol.peer_id
    carol.page.get_by_role("button", name="Leave").click()
    carol.wait_for_state("closed")
    alice.sees(bob)
    bob.sees(alice)
    assert carol_id not in alice.page.evaluate(ALL_REMOTE_VIDEOS)
    call.remove(carol)

    # The server crashes and comes back: the pages reconnect by themselves,
    # under new peer ids, and call each other again.
    old_ids = {alice.peer_id, bob.peer_id}
    server.kill()
    alice.wait_for_state("connecting")
    bob.wait_for_state("connecting")
    expect(alice.page.get_by_role("status")).to_contain_text("retrying")
    server.start()
    new_ids = {alice.joined(), bob.joined()}
    assert not new_ids & old_ids, (old_ids, new_ids)
    alice.sees(bob)
    bob.sees(alice)
    call.screenshot(alice, "after-restart")
    check_receive_only(call, alice, bob)
    check_security_headers(alice)
    assert call.csp_violations() == {}


def check_security_headers(peer: Peer[Page]) -> None:
    """
    The page the browsers just used came with the policy they obeyed.
    """
    headers = peer.page.evaluate(
        """async () => {
            const answer = await fetch(location.href);
            return Object.fromEntries(answer.headers.entries());
        }"""
    )
    assert "script-src 'self'" in headers["content-security-policy"], headers
    assert headers["referrer-policy"] == "no-referrer", headers


def check_receive_only(call: Call, alice: Peer[Page], bob: Peer[Page]) -> None:
    """
    Someone without camera and microphone joins receive-only: they see the
    others, and the others see that their camera is off.
    """
    erin = call.join("erin", no_devices=True)
    erin.joined()
    expect(erin.page.get_by_role("alert")).to_contain_text("receive-only")
    erin.sees(alice, bob)
    erin_on_alice = alice.page.locator(f'figure[data-peer-tile="{erin.peer_id}"]')
    expect(erin_on_alice).to_have_attribute("data-video", "off")
    expect(erin_on_alice).to_have_attribute("data-connection", "connected")
    call.screenshot(erin, "receive-only")


def check_controls(alice: Peer[Page], bob: Peer[Page]) -> None:
    """
    Alice mutes and turns her camera off, then on again: Bob's page shows
    it, and her video comes back with the new camera track.
    """
    alice_on_bob = bob.page.locator(f'figure[data-peer-tile="{alice.peer_id}"]')
    alice.page.get_by_role("button", name="Mute", exact=True).click()
    unmute = alice.page.get_by_role("button", name="Unmute", exact=True)
    expect(unmute).to_have_attribute("aria-pressed", "true")
    expect(alice_on_bob).to_have_attribute("data-audio", "off")
    alice.page.get_by_role("button", name="Camera off", exact=True).click()
    expect(alice_on_bob).to_have_attribute("data-video", "off")
    expect(alice_on_bob.get_by_text("camera off")).to_be_visible()
    alice.page.get_by_role("button", name="Camera on", exact=True).click()
    unmute.click()
    expect(alice_on_bob).to_have_attribute("data-video", "on")
    expect(alice_on_bob).to_have_attribute("data-audio", "on")
    bob.sees(alice)
