"""
Verification codes on the room page (SPEC 5.8), in real headless Chromium
and Firefox on ``twistd -n rtcsignal`` over TLS (tests/support/browser.py):

- static/verify.js reproduces tests/verification_vectors.json and behaves
  like twisted_signal.verification on the same inputs, good and bad;
- in an honest call (Chromium and Chromium, Chromium and Firefox) both
  pages show the same code, the one Python derives from the two
  certificates' fingerprints and the two nonces;
- with a real man in the middle (an aiortc relay that terminates DTLS with
  each page, relays the media and even the verification messages) the call
  works and the codes differ, or the pages say "not verified";
- a server that swaps the SDP fingerprints makes DTLS fail, and no code.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Literal

import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.rtcdtlstransport import RTCCertificate
from aiortc.sdp import candidate_from_sdp
from playwright.sync_api import Browser, expect

from twisted_signal import Message
from twisted_signal.client import AsyncSignalingClient, aio_connect
from twisted_signal.verification import (
    CHANNEL_ID,
    CHANNEL_LABEL,
    Verification,
    derive_code,
    fingerprint_from_sdp,
)

from .support.browser import (
    TIMEOUT_MS,
    Call,
    Network,
    Peer,
    Server,
    make_certs,
    open_chromium,
    open_firefox,
)
from .support.firefox import Firefox

# aioice offers 127.0.0.1 only (see conftest.loopback_candidates).
pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("loopback_candidates")]


VECTORS = json.loads((Path(__file__).with_name("verification_vectors.json")).read_text("utf-8"))

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
# Every state a remote tile's verification element shows, in order:
# window.tileStates = [[peer id, data-verification, data-verification-code]].
# Every state a tile showed, also one that changed again within the same
# task (a failed call rebuilt at once): a record's oldValue is the value
# that change replaced, the element's the value now.
RECORD_TILE_STATES = """window.tileStates = [];
new MutationObserver((records) => {
    for (const record of records) {
        const element = record.target;
        if (element.dataset?.verification === undefined) continue;
        const video = element.closest("figure")?.querySelector("video[data-peer-id]");
        const peer = video?.dataset.peerId ?? null;
        if (record.oldValue !== null) {
            window.tileStates.push(record.attributeName === "data-verification"
                ? [peer, record.oldValue, null]
                : [peer, "code shown", record.oldValue]);
        }
        window.tileStates.push([
            peer,
            element.dataset.verification,
            element.dataset.verificationCode ?? null,
        ]);
    }
}).observe(document, {
    subtree: true,
    attributes: true,
    attributeOldValue: true,
    attributeFilter: ["data-verification", "data-verification-code"],
});"""

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


def settled(peer: Peer[Any], *ids: str) -> dict[str, dict[str, Any]]:
    """Wait until the exchanges with `ids` are verified or failed; the hook's view."""
    peer.wait_for(SETTLED, list(ids), TIMEOUT_MS + 15_000)
    views: dict[str, dict[str, Any]] = peer.page.evaluate(VERIFICATIONS)
    return views


def tiles(peer: Peer[Any]) -> dict[str, dict[str, Any]]:
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


def page_errors(peer: Peer[Any], since: int = 0) -> list[str]:
    """Uncaught exceptions and errors in the page's console (from line `since` on)."""
    return [line for line in peer.console[since:] if line.startswith(("error:", "page error:"))]


def check_vectors(peer: Peer[Any]) -> None:
    """The page computes every vector and the transcript as the file says."""
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


def test_vectors_and_python(server: Server, browser: Browser) -> None:
    """
    static/verify.js reproduces the vectors and the transcript, and it and
    twisted_signal.verification send the same messages and end in the same
    state for the same scripts, including out-of-order and malformed messages.
    """
    check_vectors(open_chromium(browser, f"{server.url}/", "vectors"))
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
    peer = open_chromium(browser, f"{server.url}/", "mirror")
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

    # The server restarts: the pages come back under new ids, with new
    # connections, and a new exchange gives them a new code, the same again.
    server.kill()
    server.start()
    alice_id, bob_id = alice.joined(), bob.joined()
    alice.sees(bob)
    bob.sees(alice)
    again = settled(alice, bob_id)[bob_id], settled(bob, alice_id)[alice_id]
    assert again[0]["state"] == again[1]["state"] == "verified", again
    assert again[0]["code"] == again[1]["code"] == python_code(again[0]) != code, again
    assert again[0]["localFingerprint"] == on_alice["localFingerprint"]  # the page's own
    assert again[0]["committerNonce"] != on_alice["committerNonce"]

    # Closing a page: no exception on either side (before it, the pages
    # logged that the server was gone for a while).
    seen = len(alice.console), len(bob.console)
    alice.page.goto("about:blank")
    expect(bob.page.locator("video[data-peer-id]")).to_have_count(0, timeout=TIMEOUT_MS)
    bob.page.wait_for_timeout(500)
    assert page_errors(alice, seen[0]) == [] and page_errors(bob, seen[1]) == [], (alice, bob)
    assert not [line for line in alice.console + bob.console if line.startswith("page error")]


# A real man in the middle: an aiortc relay that is each page's only peer.

CLONE_NEWNET = 0x40000000
Role = Literal["committer", "responder"]


def enter(network: Network) -> None:
    """Move the calling thread (only) into `network`'s namespace."""
    holder = getattr(network, "_holder", None)
    if holder is None:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/proc/{holder.pid}/ns/net", "rb") as namespace:
        if libc.setns(namespace.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")


class Forward(MediaStreamTrack):
    """A track that sends what another one, known later, receives."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.source: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    async def recv(self) -> Any:
        source = await self.source
        return await source.recv()


def certificate_for(role: Role, browser_fingerprint: bytes) -> RTCCertificate:
    """
    A certificate whose fingerprint makes the browser `role` (the side
    whose own fingerprint is lower commits).
    """
    while True:
        certificate = RTCCertificate.generateCertificate()
        mine = next(f for f in certificate.getFingerprints() if f.algorithm == "sha-256")
        lower = fingerprint_from_sdp(mine.value) < browser_fingerprint
        if lower == (role == "responder"):
            return certificate


class Leg:
    """
    The relay's connection with one page: it answers the page's offer with
    a certificate of its own, sends it the other page's media, and passes
    the verification messages on to the other leg.
    """

    def __init__(self, client: AsyncSignalingClient, role: Role) -> None:
        self.client = client
        self.role = role
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.outgoing = {kind: Forward(kind) for kind in ("audio", "video")}
        self.channel: RTCDataChannel = self.pc.createDataChannel(
            CHANNEL_LABEL, negotiated=True, id=CHANNEL_ID
        )
        self.passed_on: list[str] = []
        self.other: Leg | None = None
        self._waiting: list[str] = []
        self._answered = False

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            assert self.other is not None
            source = self.other.outgoing[track.kind].source
            if not source.done():
                source.set_result(track)

        @self.channel.on("open")
        def on_open() -> None:
            for text in self._waiting:
                self.channel.send(text)
            self._waiting.clear()

        @self.channel.on("message")
        def on_message(data: str | bytes) -> None:
            assert self.other is not None
            text = data if isinstance(data, str) else data.decode()
            self.passed_on.append(text)
            self.other.deliver(text)

    def deliver(self, text: str) -> None:
        if self.channel.readyState == "open":
            self.channel.send(text)
        else:
            self._waiting.append(text)

    async def follow(self) -> None:
        async for message in self.client:
            await self.handle(message)

    async def handle(self, message: Message) -> None:
        data, sender = message.data, message.from_
        if sender is None or not isinstance(data, dict):
            return
        if message.event == "candidate" and data.get("candidate"):
            candidate = candidate_from_sdp(str(data["candidate"]).split(":", 1)[1])
            candidate.sdpMid = data.get("sdpMid")
            candidate.sdpMLineIndex = data.get("sdpMLineIndex")
            await self.pc.addIceCandidate(candidate)
        elif message.event in ("offer", "description") and data.get("type") == "offer":
            if not self._answered:
                # Chosen now that the page's fingerprint is known.
                line = next(
                    line for line in data["sdp"].splitlines() if "a=fingerprint:sha-256" in line
                )
                theirs = fingerprint_from_sdp(line.split()[-1])
                certificate = certificate_for(self.role, theirs)
                # aiortc makes its own and takes none: replace it.
                vars(self.pc)["_RTCPeerConnection__certificates"] = [certificate]
            await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"], "offer"))
            if not self._answered:
                for track in self.outgoing.values():
                    self.pc.addTrack(track)
                self._answered = True
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            local = self.pc.localDescription
            await self.client.send("answer", {"type": "answer", "sdp": local.sdp}, to=[sender])


class Relay:
    """
    In a thread of its own, in the browsers' network namespace: joins the
    rooms `left` and `right` as one peer in each, and relays a call between
    the page that comes to each room.
    """

    def __init__(self, network: Network, server: Server, roles: tuple[Role, Role]) -> None:
        self.network = network
        self.urls = [f"wss://127.0.0.1:{server.port}/socket/{room}/" for room in ("left", "right")]
        self.roles = roles
        self.peer_ids: list[str] = []
        self.legs: list[Leg] = []
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)

    def __enter__(self) -> Relay:
        self._thread.start()
        assert self._ready.wait(30), "the relay did not start"
        if self.error is not None:
            raise self.error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        assert not self._thread.is_alive(), "the relay did not stop"

    def _run(self) -> None:
        try:
            enter(self.network)
            asyncio.run(self._main())
        except BaseException as e:
            self.error = e
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the test server's own certificate
        async with contextlib.AsyncExitStack() as stack:
            for url, role in zip(self.urls, self.roles, strict=True):
                client = await stack.enter_async_context(aio_connect(url, ssl=context))
                self.peer_ids.append(client.peer_id)
                self.legs.append(Leg(client, role))
            left, right = self.legs
            left.other, right.other = right, left
            tasks = [asyncio.create_task(leg.follow()) for leg in self.legs]
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                for task in tasks:
                    task.cancel()
                for result in await asyncio.gather(*tasks, return_exceptions=True):
                    if not isinstance(result, asyncio.CancelledError | None):
                        self.error = self.error or result
                for leg in self.legs:
                    await leg.pc.close()


@pytest.mark.parametrize(
    "roles",
    [("committer", "responder"), ("committer", "committer"), ("responder", "responder")],
    ids=["codes-differ", "both-commit", "both-wait"],
)
def test_man_in_the_middle(
    network: Network,
    server: Server,
    browser: Browser,
    roles: tuple[Role, Role],
) -> None:
    """
    The relay terminates DTLS with each page and relays media and the
    verification messages: the call works, and the codes differ.  With its
    certificates chosen so that both pages commit, they fail at once; so
    that both wait for a commitment, they fail once the deadline has passed.
    """
    with Relay(network, server, roles) as relay:
        alice = open_chromium(browser, f"{server.url}/left", "alice")
        bob = open_chromium(browser, f"{server.url}/right", "bob")
        try:
            alice.joined()
            bob.joined()
            to_alice, to_bob = relay.peer_ids
            alice.sees(to_alice)
            bob.sees(to_bob)
            started = time.monotonic()
            on_alice = settled(alice, to_alice)[to_alice]
            on_bob = settled(bob, to_bob)[to_bob]
            waited = time.monotonic() - started
            # Each page saw the relay's certificate, not the other page's.
            for view in (on_alice, on_bob):
                assert view["localFingerprint"] is not None, view
            assert on_alice["remoteFingerprint"] != on_bob["localFingerprint"]
            assert on_bob["remoteFingerprint"] != on_alice["localFingerprint"]
            assert [on_alice["committer"], on_bob["committer"]] == [r == "committer" for r in roles]
            if roles == ("committer", "responder"):
                # The relay passed every message on: both finish, and differ.
                assert on_alice["state"] == on_bob["state"] == "verified", (on_alice, on_bob)
                assert on_alice["committerNonce"] == on_bob["committerNonce"]
                assert on_alice["responderNonce"] == on_bob["responderNonce"]
                assert on_alice["code"] == python_code(on_alice)
                assert on_bob["code"] == python_code(on_bob)
                assert on_alice["code"] != on_bob["code"]
                assert len(relay.legs[0].passed_on) == 2 and len(relay.legs[1].passed_on) == 1
            elif roles == ("committer", "committer"):
                # Each gets the other's commitment where it expects a nonce.
                assert on_alice["state"] == on_bob["state"] == "failed", (on_alice, on_bob)
                assert on_alice["reason"] == on_bob["reason"] == "unexpected commit"
            else:
                assert on_alice["state"] == on_bob["state"] == "failed", (on_alice, on_bob)
                assert waited > 10, waited  # the 15 s deadline, less the call's setup
                assert relay.legs[0].passed_on == relay.legs[1].passed_on == []
            # The tiles show what the pages found.
            for page, other, view in ((alice, to_alice, on_alice), (bob, to_bob, on_bob)):
                shown = tiles(page)[other]
                assert (shown["state"], shown["code"]) == (view["state"], view["code"])
                assert shown["text"] == (view["code"] or "not verified")
            # The call still works.
            alice.sees(to_alice)
            bob.sees(to_bob)
            assert page_errors(alice) == [] and page_errors(bob) == [], (alice, bob)
        finally:
            print(repr(alice), repr(bob))
            alice.close()
            bob.close()
    if relay.error is not None:
        raise relay.error


def test_swapped_fingerprints_show_no_code(
    network: Network, browser: Browser, tmp_path: Path
) -> None:
    """
    A server that rewrites the fingerprints it relays, without relaying any
    media: DTLS fails, and the pages show no code.
    """
    key, cert = make_certs(tmp_path / "certs")
    server = Server(
        network,
        tmp_path,
        key,
        cert,
        ["--room-class", "tests.support.fingerprint_swap.SwapFingerprints"],
    )
    server.start()
    alice = bob = None
    try:
        # A failed connection is rebuilt at once (and fails again), so the
        # tile may show "failed" only for a moment: record every state it
        # shows.
        alice = open_chromium(
            browser, f"{server.url}/verify", "alice", init_scripts=[RECORD_TILE_STATES]
        )
        alice_id = alice.joined()
        bob = open_chromium(
            browser, f"{server.url}/verify", "bob", init_scripts=[RECORD_TILE_STATES]
        )
        bob_id = bob.joined()
        for page, other in ((alice, bob_id), (bob, alice_id)):
            page.wait_for(
                "(id) => window.tileStates.some(([peer, state]) =>"
                " peer === id && state === 'failed')",
                other,
                TIMEOUT_MS + 15_000,
            )
        time.sleep(2)
        for page in (alice, bob):
            seen = page.page.evaluate("() => window.tileStates")
            assert all(state != "verified" and code is None for _, state, code in seen), seen
        assert page_errors(alice) == [] and page_errors(bob) == [], (alice, bob)
        alice.page.screenshot(path=tmp_path / "not-verified.png")
    finally:
        for peer in (alice, bob):
            if peer is not None:
                print(repr(peer))
                peer.close()
        server.close()


def test_same_code_in_chromium_and_firefox(
    server: Server, browser: Browser, firefox: Firefox
) -> None:
    """
    Firefox computes the vectors too; Firefox and Chromium call each other
    in both join orders: both show the same code, the one Python derives
    from what they used.
    """
    check_vectors(open_firefox(firefox, f"{server.url}/", "vectors"))
    url = f"{server.url}/verify"
    peers: list[Peer[Any]] = []
    try:
        for firefox_first in (False, True):
            opened: list[Peer[Any]] = [
                open_chromium(browser, None, "chromium"),
                open_firefox(firefox, None, "firefox"),
            ]
            peers += opened
            first, second = opened[::-1] if firefox_first else opened
            first.page.goto(url)
            first_id = first.joined()
            second.page.goto(url)
            second_id = second.joined()
            first.sees(second)
            second.sees(first)
            on_first = settled(first, second_id)[second_id]
            on_second = settled(second, first_id)[first_id]
            assert on_first["state"] == on_second["state"] == "verified", (on_first, on_second)
            assert on_first["remoteFingerprint"] == on_second["localFingerprint"]
            assert on_second["remoteFingerprint"] == on_first["localFingerprint"]
            code = python_code(on_first)
            assert on_first["code"] == on_second["code"] == code == python_code(on_second)
            for page, other in ((first, second_id), (second, first_id)):
                shown = tiles(page)[other]
                assert (shown["state"], shown["code"], shown["text"]) == ("verified", code, code)
            for peer in opened:
                assert page_errors(peer) == [], peer
                peer.close()
    finally:
        for peer in peers:
            print(repr(peer))
            peer.close()
