"""
Verification codes on the room page (SPEC 5.8), in real headless Chromium on
``twistd -n rtcsignal`` over TLS (the harness of tests/test_browser.py):

- static/verify.js reproduces tests/verification_vectors.json and behaves
  like twisted_signal.verification on the same inputs, good and bad;
- in an honest call both pages show the same code, the one Python derives
  from the two certificates' fingerprints and the two nonces;
- with a real man in the middle (an aiortc relay that terminates DTLS with
  each page, relays the media and even the verification messages) the call
  works and the codes differ, or the pages say "not verified";
- a server that swaps the SDP fingerprints makes DTLS fail, and no code.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, expect

from twisted_signal.verification import Verification, derive_code, fingerprint_from_sdp

from .test_browser import (
    TIMEOUT_MS,
    Call,
    Network,
    Peer,
    Server,
    browser,
    make_certs,
    network,
)

__all__ = ["browser", "network"]  # fixtures

VECTORS = json.loads((Path(__file__).with_name("verification_vectors.json")).read_text("utf-8"))
ROOM = "verify"

# Every vector and the transcript, computed by static/verify.js in the page.
RUN_VECTORS = """async (vectors) => {
    const v = await import(new URL("static/verify.js", location.href));
    const out = { vectors: [], digits: [] };
    for (const vector of vectors.vectors) {
        const committer = v.fingerprintFromSdp(vector.committer_fingerprint);
        const responder = v.fingerprintFromSdp(vector.responder_fingerprint);
        const nonceC = v.fromHex(vector.committer_nonce);
        const nonceR = v.fromHex(vector.responder_nonce);
        out.vectors.push({
            name: vector.name,
            commitment: v.toHex(await v.commitment(nonceC)),
            code: await v.deriveCode(committer, responder, nonceC, nonceR),
            swapped: await v.deriveCode(responder, committer, nonceC, nonceR),
            sdp: v.fingerprintToSdp(committer),
        });
    }
    for (const { digest } of vectors.digits) out.digits.push(v.codeDigits(v.fromHex(digest)));
    const t = vectors.transcript;
    const committer = new v.Verification(
        v.fingerprintFromSdp(t.committer_fingerprint),
        v.fingerprintFromSdp(t.responder_fingerprint),
        v.fromHex(t.committer_nonce),
    );
    const responder = new v.Verification(
        v.fingerprintFromSdp(t.responder_fingerprint),
        v.fingerprintFromSdp(t.committer_fingerprint),
        v.fromHex(t.responder_nonce),
    );
    const messages = [];
    const quiet = await responder.start();
    let inbox = await committer.start();
    let turn = responder;
    while (inbox.length > 0) {
        messages.push(...inbox);
        const next = [];
        for (const text of inbox) next.push(...(await turn.receive(text)));
        inbox = next;
        turn = turn === responder ? committer : responder;
    }
    out.transcript = {
        quiet, messages,
        roles: [committer.committer, responder.committer],
        states: [committer.state, responder.state],
        codes: [committer.code, responder.code],
    };
    return out;
}"""

# One side of an exchange driven by a script of steps, as in `run_script`.
RUN_SCRIPT = """async ({ local, remote, nonce, steps }) => {
    const v = await import(new URL("static/verify.js", location.href));
    const verification = new v.Verification(
        v.fingerprintFromSdp(local), v.fingerprintFromSdp(remote), v.fromHex(nonce));
    const sent = [];
    for (const [step, text] of steps) {
        if (step === "start") sent.push(await verification.start());
        else if (step === "expire") sent.push(await verification.expire());
        else sent.push(await verification.receive(text));
    }
    return { sent, state: verification.state, code: verification.code };
}"""

# The pages' view of each exchange (the test hook), and of the tile.
VERIFICATIONS = """() => Object.fromEntries(window.rtcsignal.verification)"""
TILES = """() => Object.fromEntries([...document.querySelectorAll("video[data-peer-id]")].map(
    (video) => {
        const badge = video.closest("figure").querySelector("[data-verification]");
        return [video.dataset.peerId, {
            state: badge.dataset.verification,
            code: badge.dataset.verificationCode ?? null,
            text: badge.textContent,
            title: badge.title,
        }];
    }))"""
SETTLED = """(ids) => ids.every((id) => {
    const v = window.rtcsignal.verification.get(id);
    return v && v.state !== "pending";
})"""


def run_script(local: str, remote: str, nonce: str, steps: list[tuple[str, Any]]) -> dict[str, Any]:
    """What twisted_signal.verification does with the same script."""
    verification = Verification(
        fingerprint_from_sdp(local), fingerprint_from_sdp(remote), bytes.fromhex(nonce)
    )
    sent: list[list[str]] = []
    for step, text in steps:
        if step == "start":
            sent.append(verification.start())
        elif step == "expire":
            verification.expire()
            sent.append([])
        else:
            sent.append(verification.receive(text))
    return {"sent": sent, "state": verification.state, "code": verification.code}


@pytest.fixture
def server(network: Network, tmp_path: Path) -> Iterator[Server]:
    key, cert = make_certs(tmp_path / "certs")
    server = Server(network, tmp_path, key, cert)
    server.start()
    yield server
    server.close()


@pytest.fixture
def call(server: Server, browser: Browser, tmp_path: Path) -> Iterator[Call]:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    call = Call(browser, f"{server.url}/{ROOM}", shots)
    yield call
    for peer in call.peers:
        print(repr(peer))  # the pages' consoles: pytest shows them if the test failed
    call.close()


def settled(peer: Peer, *ids: str) -> dict[str, dict[str, Any]]:
    """Wait until the exchanges with `ids` are verified or failed; the hook's view."""
    peer.page.wait_for_function(SETTLED, arg=list(ids), timeout=TIMEOUT_MS + 15_000)
    views: dict[str, dict[str, Any]] = peer.page.evaluate(VERIFICATIONS)
    return views


def tiles(peer: Peer) -> dict[str, dict[str, Any]]:
    shown: dict[str, dict[str, Any]] = peer.page.evaluate(TILES)
    return shown


def python_code(view: dict[str, Any]) -> str:
    """The code twisted_signal.verification derives from what a page used."""
    return derive_code(
        fingerprint_from_sdp(view["localFingerprint"]),
        fingerprint_from_sdp(view["remoteFingerprint"]),
        bytes.fromhex(view["committerNonce"]),
        bytes.fromhex(view["responderNonce"]),
    )


def page_errors(peer: Peer) -> list[str]:
    return [line for line in peer.console if line.startswith(("page error", "error"))]


def test_vectors_and_transcript(server: Server, browser: Browser) -> None:
    peer = Peer(browser, f"{server.url}/", "vectors")
    try:
        got = peer.page.evaluate(RUN_VECTORS, VECTORS)
        for vector, mine in zip(VECTORS["vectors"], got["vectors"], strict=True):
            assert mine == {
                "name": vector["name"],
                "commitment": vector["commitment"],
                "code": vector["code"],
                "swapped": vector["code"],
                "sdp": vector["committer_fingerprint"],
            }
        assert got["digits"] == [d["code"] for d in VECTORS["digits"]]
        transcript = VECTORS["transcript"]
        assert got["transcript"] == {
            "quiet": [],
            "messages": transcript["messages"],
            "roles": [True, False],
            "states": ["verified", "verified"],
            "codes": [transcript["code"], transcript["code"]],
        }
        assert page_errors(peer) == []
    finally:
        peer.close()


def test_exchange_mirrors_python(server: Server, browser: Browser) -> None:
    """
    Both implementations send the same messages and end in the same state
    for the same scripts, including out-of-order and malformed messages.
    """
    t = VECTORS["transcript"]
    low, high = t["committer_fingerprint"], t["responder_fingerprint"]
    nonce_c, nonce_r = t["committer_nonce"], t["responder_nonce"]
    commit, nonce, reveal = t["messages"]
    digest = json.loads(commit)["hash"]
    bad_reveal = json.dumps({"v": 1, "type": "reveal", "nonce": "33" * 32}, separators=(",", ":"))
    scripts: list[tuple[str, str, str, list[tuple[str, Any]]]] = [
        # The responder's side of the transcript, then what comes after.
        (high, low, nonce_r, [("start", None), ("receive", commit), ("receive", reveal)]),
        (high, low, nonce_r, [("receive", commit), ("receive", reveal), ("receive", commit)]),
        # The committer's side, with a nonce before it started or twice.
        (low, high, nonce_c, [("start", None), ("receive", nonce), ("receive", nonce)]),
        (low, high, nonce_c, [("receive", nonce), ("start", None)]),
        (low, high, nonce_c, [("start", None), ("start", None), ("receive", commit)]),
        # Out of order, or a reveal that does not match the commitment.
        (high, low, nonce_r, [("receive", reveal)]),
        (high, low, nonce_r, [("receive", commit), ("receive", commit)]),
        (high, low, nonce_r, [("receive", commit), ("receive", bad_reveal)]),
        (high, low, nonce_r, [("receive", nonce)]),
        # Both sides believe they answer (as under a man in the middle).
        (high, low, nonce_r, [("start", None), ("expire", None), ("receive", commit)]),
        # The same certificate at both ends.
        (low, low, nonce_c, [("start", None), ("receive", nonce)]),
        # Malformed messages.
        *(
            (high, low, nonce_r, [("receive", text), ("receive", commit)])
            for text in [
                "",
                "not json",
                "[1]",
                "null",
                '{"v":2,"type":"commit","hash":"' + "00" * 32 + '"}',
                '{"v":1,"type":"commit","hash":"' + "00" * 31 + '"}',
                '{"v":1,"type":"commit","hash":"' + "zz" * 32 + '"}',
                '{"v":1,"type":"commit","nonce":"' + "00" * 32 + '"}',
                '{"v":1,"type":"hello","hash":"' + "00" * 32 + '"}',
                '{"v":"1","type":"commit","hash":"' + "00" * 32 + '"}',
            ]
        ),
        # Upper-case hex and extra keys are accepted by both.
        (high, low, nonce_r, [("receive", commit.replace(digest, digest.upper()))]),
        (high, low, nonce_r, [("receive", commit[:-1] + ',"extra":true}')]),
    ]
    peer = Peer(browser, f"{server.url}/", "mirror")
    try:
        for local, remote, mine, steps in scripts:
            expected = run_script(local, remote, mine, steps)
            page = peer.page.evaluate(
                RUN_SCRIPT, {"local": local, "remote": remote, "nonce": mine, "steps": steps}
            )
            assert page == expected, steps
        assert page_errors(peer) == []
    finally:
        peer.close()


def test_same_code_on_both_pages(server: Server, call: Call) -> None:
    alice = call.join("alice")
    bob = call.join("bob")
    alice_id, bob_id = alice.joined(), bob.joined()
    alice.sees(bob)
    bob.sees(alice)
    on_alice = settled(alice, bob_id)[bob_id]
    on_bob = settled(bob, alice_id)[alice_id]
    assert on_alice["state"] == on_bob["state"] == "verified", (on_alice, on_bob)
    # Each page got the other's own certificate, and one commits.
    assert on_alice["remoteFingerprint"] == on_bob["localFingerprint"]
    assert on_bob["remoteFingerprint"] == on_alice["localFingerprint"]
    assert {on_alice["committer"], on_bob["committer"]} == {True, False}
    assert on_alice["committerNonce"] == on_bob["committerNonce"]
    assert on_alice["responderNonce"] == on_bob["responderNonce"]
    # The certificate the page made is the one in its SDP.
    sdp = alice.page.evaluate("(id) => window.rtcsignal.peers.get(id).localDescription.sdp", bob_id)
    assert f"a=fingerprint:sha-256 {on_alice['localFingerprint']}" in sdp
    code = python_code(on_alice)
    assert on_alice["code"] == on_bob["code"] == code == python_code(on_bob)
    # The tiles show it.
    for page, other, name in ((alice, bob_id, "Guest " + bob_id[:4]), (bob, alice_id, None)):
        shown = tiles(page)[other]
        assert shown["state"] == "verified"
        assert shown["code"] == shown["text"] == code
        if name:
            assert f"Compare this code with {name}'s screen" in shown["title"]
    call.screenshot(alice, "verified")

    # Closing a page: no exception on either side, and the code stays.
    alice.page.goto("about:blank")
    expect(bob.page.locator("video[data-peer-id]")).to_have_count(0, timeout=TIMEOUT_MS)
    assert page_errors(alice) == [] and page_errors(bob) == [], (alice, bob)
