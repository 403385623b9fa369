"""
Real WebRTC through a real server: aiortc peers signalling through a
``twistd -n rtcsignal`` process, the example bot (examples/aiortc_bot)
answering an aiortc peer that plays the browser's part, and the bot in a
call with headless Chromium on the packaged room page.

Everything stays on this machine: aioice is told to gather 127.0.0.1 only,
and Chromium is allowed loopback candidates.  Chromium also offers its other
host addresses; a pair it picks may use one of them, but a packet between
two local addresses never leaves the host (Linux routes it over ``lo``), and
no STUN/TURN server is configured, so no network namespace is needed.
Nothing here is skipped: a missing aiortc, twistd plugin, Chromium or room
page is a failure.

The package must be installed in the virtualenv (``make test`` does it):
twistd finds the plugin in site-packages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import av
import pytest
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError

from examples.aiortc_bot.bot import Bot, TestPattern
from examples.aiortc_bot.bot import run as run_bot
from twisted_signal import Message
from twisted_signal.client import (
    AsyncSignalingClient,
    PeerVerification,
    aio_connect,
    verify_peer_connection,
)
from twisted_signal.verification import (
    derive_code,
    fingerprint_from_der,
    fingerprint_from_sdp,
    fingerprint_to_sdp,
)

from .support.browser import CHROMIUM_ARGS

# aioice offers 127.0.0.1 only (see conftest.loopback_candidates).
pytestmark = [pytest.mark.process, pytest.mark.usefixtures("loopback_candidates")]

TWISTD = Path(sys.executable).with_name("twistd")
CHROMIUM = "/usr/bin/chromium"
ROOM_JS = Path(__file__).parent.parent / "static" / "room.js"
START_TIMEOUT = 15.0
TIMEOUT = 15.0


# The server: twistd as users run it.


@dataclass
class Server:
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    def socket_url(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.port}/socket/{room}/"

    def page_url(self, room: str) -> str:
        return f"http://127.0.0.1:{self.port}/{room}"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    assert TWISTD.exists(), f"{TWISTD} is missing: install the package (make test does)"
    port = free_port()
    log = tmp_path / "twistd.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(TWISTD),
                "--pidfile=",
                "-n",
                "rtcsignal",
                "--endpoint",
                f"tcp:{port}:interface=127.0.0.1",
            ],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    running = Server(port, process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert process.poll() is None, f"twistd exited\n{log.read_text()}"
            health = f"http://127.0.0.1:{port}/healthz"
            with contextlib.suppress(OSError), urllib.request.urlopen(health, timeout=1) as r:
                if r.status == 200:
                    break
            assert time.monotonic() < deadline, f"twistd did not start\n{log.read_text()}"
            time.sleep(0.05)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run(scenario: Callable[[], Awaitable[None]], seconds: float = 40) -> None:
    """Run an asyncio scenario to its end (the test reactor is not asyncio)."""

    async def bounded() -> None:
        async with asyncio.timeout(seconds):
            await scenario()

    asyncio.run(bounded())


# A peer in the browser's part: it follows the room page's signaling.


class BrowserRole:
    """
    An aiortc peer that does what rtcsignal-calls.js does, as far as the bot can
    tell: the newcomer offers, ``{type, sdp}`` descriptions, candidates in
    the SDP (aiortc does not trickle).  It sends a test pattern as its
    "camera", opens a data channel and keeps the frames it receives.
    """

    def __init__(self, client: AsyncSignalingClient) -> None:
        self.client = client
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.verification = verify_peer_connection(self.pc)
        self.frames: list[av.VideoFrame] = []
        self.echoes: asyncio.Queue[str] = asyncio.Queue()
        self.channel: RTCDataChannel | None = None
        self.media: dict[str, Any] = {}
        self._tasks: list[asyncio.Task[None]] = []

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._consume(track)))

    async def _consume(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                if track.kind == "video":
                    assert isinstance(frame, av.VideoFrame)
                    self.frames.append(frame)

    def _open_channel(self) -> None:
        channel = self.channel = self.pc.createDataChannel("chat")

        @channel.on("message")
        def on_message(data: str | bytes) -> None:
            self.echoes.put_nowait(text(data))

    async def offer(self, peer_id: str) -> None:
        self.pc.addTransceiver(TestPattern(160, 120), direction="sendrecv")
        self.pc.addTransceiver("audio", direction="recvonly")
        self._open_channel()
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self._send_description(peer_id)

    async def follow(self) -> None:
        """Answer offers and apply answers, until the client closes."""
        async for message in self.client:
            await self.handle(message)

    async def handle(self, message: Message) -> None:
        data = message.data
        if message.event == "media" and message.from_ is not None:
            self.media[message.from_] = data
        if message.event not in ("offer", "answer") or message.from_ is None:
            return
        await self.pc.setRemoteDescription(RTCSessionDescription(data["sdp"], data["type"]))
        if data["type"] == "offer":
            self.pc.addTrack(TestPattern(160, 120))
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self._send_description(message.from_)

    async def _send_description(self, peer_id: str) -> None:
        local = self.pc.localDescription
        await self.client.send(local.type, {"type": local.type, "sdp": local.sdp}, to=[peer_id])

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def bot_in(url: str) -> AsyncIterator[Bot]:
    """The example bot, running in this event loop."""
    ready: asyncio.Future[Bot] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(run_bot(url, ready=ready.set_result))
    try:
        waiting: set[asyncio.Future[Any]] = {ready, task}
        await asyncio.wait(waiting, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()  # the bot could not start: its error
        assert ready.done(), "the bot did not join"
        yield ready.result()
    finally:
        if ready.done() and not task.done():
            await ready.result().client.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def text(data: str | bytes) -> str:
    return data if isinstance(data, str) else data.decode()


def luma_is_bars(frame: av.VideoFrame) -> bool:
    """A row of the frame's luma has several distinct levels (not a flat image)."""
    plane = frame.planes[0]
    row = bytes(plane)[: frame.width]
    return len({value // 16 for value in row}) >= 4


def sdp_fingerprint(pc: RTCPeerConnection) -> bytes:
    """The sha-256 fingerprint `pc` put in its own description."""
    for line in pc.localDescription.sdp.splitlines():
        if line.startswith("a=fingerprint:sha-256 "):
            return fingerprint_from_sdp(line.split(" ", 1)[1])
    raise AssertionError("no a=fingerprint:sha-256 line")


async def codes_agree(
    a: PeerVerification, a_pc: RTCPeerConnection, b: PeerVerification, b_pc: RTCPeerConnection
) -> str:
    """
    Both ends verified with the same code, which is the code computed here
    from the two certificates' fingerprints and the two nonces.
    """
    async with asyncio.timeout(TIMEOUT):
        code_a, code_b = await a.done, await b.done
    assert (a.state, b.state) == ("verified", "verified"), (a.reason, b.reason)
    assert code_a == code_b == a.code
    assert a.verification is not None and b.verification is not None
    committer, responder = (a, b) if a.verification.committer else (b, a)
    assert committer.verification is not None and responder.verification is not None
    assert not responder.verification.committer
    # Each end got the other's real certificate from DTLS.
    assert a.verification.local_fingerprint == sdp_fingerprint(a_pc)
    assert a.verification.remote_fingerprint == sdp_fingerprint(b_pc)
    assert b.verification.remote_fingerprint == sdp_fingerprint(a_pc)
    expected = derive_code(
        sdp_fingerprint(a_pc),
        sdp_fingerprint(b_pc),
        committer.verification.nonce,
        responder.verification.nonce,
    )
    assert code_a == expected
    assert responder.verification.remote_nonce == committer.verification.nonce
    assert code_a is not None
    return code_a


# The tests.


@pytest.mark.pure
def test_test_pattern_scrolls() -> None:
    pattern = TestPattern(320, 240, speed=4)
    first, second = pattern.frame(0), pattern.frame(1)
    assert (first.width, first.height, first.format.name) == (320, 240, "yuv420p")
    assert luma_is_bars(first)
    row0, row1 = bytes(first.planes[0])[:320], bytes(second.planes[0])[:320]
    assert row1 == row0[4:] + row0[:4]  # moved 4 pixels to the left
    assert bytes(first.planes[0])[320 * 100 : 320 * 101] == row0  # every row is the same
    with pytest.raises(ValueError):
        TestPattern(100, 50)


def test_two_aiortc_peers_exchange_a_datachannel_message(server: Server) -> None:
    url = server.socket_url("datachannel")

    async def scenario() -> None:
        async with aio_connect(url) as first, aio_connect(url) as second:
            assert first.peer_id in second.peers
            got: asyncio.Queue[str] = asyncio.Queue()

            answerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            answerer_verification = verify_peer_connection(answerer)

            @answerer.on("datachannel")
            def on_datachannel(channel: RTCDataChannel) -> None:
                @channel.on("message")
                def on_message(data: str | bytes) -> None:
                    got.put_nowait(f"first got {text(data)}")
                    channel.send(f"pong to {text(data)}")

            offerer = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            offerer_verification = verify_peer_connection(offerer)
            channel = offerer.createDataChannel("chat")

            @channel.on("open")
            def on_open() -> None:
                channel.send("ping")

            @channel.on("message")
            def on_reply(data: str | bytes) -> None:
                got.put_nowait(f"second got {text(data)}")

            # The newcomer (second) offers, through the server.
            await offerer.setLocalDescription(await offerer.createOffer())
            local = offerer.localDescription
            await second.send("offer", {"type": "offer", "sdp": local.sdp}, to=first.peer_id)
            offer = await first.recv("offer", timeout=TIMEOUT)
            assert offer.from_ == second.peer_id
            await answerer.setRemoteDescription(RTCSessionDescription(**offer.data))
            await answerer.setLocalDescription(await answerer.createAnswer())
            reply = {"type": "answer", "sdp": answerer.localDescription.sdp}
            await first.send("answer", reply, to=[second.peer_id])
            answer = await second.recv("answer", timeout=TIMEOUT)
            await offerer.setRemoteDescription(RTCSessionDescription(**answer.data))

            async with asyncio.timeout(TIMEOUT):
                assert await got.get() == "first got ping"
                assert await got.get() == "second got pong to ping"
            await codes_agree(offerer_verification, offerer, answerer_verification, answerer)
            await offerer.close()
            await answerer.close()

    run(scenario)


def test_bot_answers_a_browser_role_peer(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="aiortc_bot")
    url = server.socket_url("bot")

    async def scenario() -> None:
        async with bot_in(url) as bot, aio_connect(url) as client:
            browser = BrowserRole(client)
            follow = asyncio.create_task(browser.follow())
            try:
                assert client.peers == (bot.client.peer_id,)
                await browser.offer(bot.client.peer_id)  # the newcomer offers
                await eventually(lambda: len(browser.frames) >= 10, "the bot's test pattern")
                frame = browser.frames[-1]
                assert (frame.width, frame.height) == (320, 240)
                assert luma_is_bars(frame)
                await eventually(
                    lambda: bot.frames_received[client.peer_id] >= 5, "the bot to decode frames"
                )
                assert browser.channel is not None
                browser.channel.send("hello bot")
                async with asyncio.timeout(TIMEOUT):
                    assert await browser.echoes.get() == "hello bot"
                # The bot says what it sends, like the room page does.
                assert browser.media == {bot.client.peer_id: {"audio": False, "video": True}}
                # The bot answered: it verified the call and shows the same code.
                call = bot.calls[client.peer_id]
                assert bot.verifications[client.peer_id] is call.verification
                assert call.verification is not None
                code = await codes_agree(
                    call.verification, call.pc, browser.verification, browser.pc
                )
                assert f"verification code with {client.peer_id}: {code}" in caplog.text
            finally:
                follow.cancel()
                await browser.close()

    run(scenario)


def test_bot_starts_afresh_on_reset(server: Server) -> None:
    """
    The room page rebuilds a call after an outage and says "reset"
    (docs/room-page.md): the bot drops its connection and answers the new
    offer with a new one.
    """
    url = server.socket_url("reset")

    async def scenario() -> None:
        async with bot_in(url) as bot, aio_connect(url) as client:
            bot_id = bot.client.peer_id
            first = BrowserRole(client)
            follow = asyncio.create_task(first.follow())
            await first.offer(bot_id)
            await eventually(lambda: len(first.frames) >= 5, "the bot's test pattern")
            old_pc = bot.calls[client.peer_id].pc
            follow.cancel()
            # The first connection stays up, as on a page whose media stalled.
            again = BrowserRole(client)
            follow = asyncio.create_task(again.follow())
            try:
                await client.send("reset", {"epoch": 1}, to=[bot_id])
                await again.offer(bot_id)
                await eventually(lambda: len(again.frames) >= 5, "the test pattern, again")
                assert bot.calls[client.peer_id].pc is not old_pc
                assert old_pc.connectionState == "closed"
            finally:
                follow.cancel()
                await again.close()
                await first.close()

    run(scenario)


def test_bot_calls_the_peers_already_in_the_room(server: Server) -> None:
    url = server.socket_url("bot-last")

    async def scenario() -> None:
        async with aio_connect(url) as client:
            browser = BrowserRole(client)
            follow = asyncio.create_task(browser.follow())
            try:
                async with bot_in(url) as bot:
                    assert bot.client.peers == (client.peer_id,)
                    await eventually(lambda: len(browser.frames) >= 5, "the bot's test pattern")
                    assert luma_is_bars(browser.frames[-1])
                    await eventually(
                        lambda: bot.frames_received[client.peer_id] >= 5, "the bot to decode"
                    )
                    # The bot offered: it verified the call too.
                    call = bot.calls[client.peer_id]
                    assert call.verification is not None
                    await codes_agree(call.verification, call.pc, browser.verification, browser.pc)
            finally:
                follow.cancel()
                await browser.close()

    run(scenario)


@contextlib.asynccontextmanager
async def bot_and_chromium(server: Server, room: str) -> AsyncIterator[tuple[Bot, Any]]:
    """The bot in `room`, then headless Chromium on the room page of `room`."""
    from playwright.async_api import async_playwright

    assert ROOM_JS.exists(), f"{ROOM_JS} is missing"
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (make test installs it)"
    async with bot_in(server.socket_url(room)) as bot, async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            await page.goto(server.page_url(room))
            yield bot, page
            assert errors == []
        finally:
            await browser.close()


@pytest.mark.browser
def test_bot_in_a_call_with_chromium_on_the_room_page(server: Server) -> None:
    async def scenario() -> None:
        async with bot_and_chromium(server, "chromium") as (bot, page):
            video = page.locator(f'video[data-peer-id="{bot.client.peer_id}"]')
            await video.wait_for(state="attached", timeout=TIMEOUT * 1000)
            await page.wait_for_function(
                "(video) => video.videoWidth > 0",
                arg=await video.element_handle(),
                timeout=TIMEOUT * 1000,
            )
            width = await video.evaluate("(video) => video.videoWidth")
            assert width == 320
            first = await frames_decoded(page, bot.client.peer_id)
            await asyncio.sleep(1.0)
            later = await frames_decoded(page, bot.client.peer_id)
            assert later > first > 0, (first, later)
            browser_id = await page.evaluate("window.rtcsignal.peerId")
            await eventually(
                lambda: bot.frames_received[browser_id] >= 5,
                "the bot to decode the browser's camera",
            )

    run(scenario, seconds=50)


async def frames_decoded(page: Any, peer_id: str) -> int:
    """framesDecoded of the video coming from `peer_id`, from the page's stats."""
    value = await page.evaluate(
        """async (peerId) => {
            const pc = window.rtcsignal.peers.get(peerId);
            if (!pc) return -1;
            let frames = 0;
            (await pc.getStats()).forEach((s) => {
                if (s.type === "inbound-rtp" && s.kind === "video") frames += s.framesDecoded ?? 0;
            });
            return frames;
        }""",
        peer_id,
    )
    return int(value)


@pytest.mark.loopback
def test_a_peer_without_the_channel_is_not_verified_by_the_deadline() -> None:
    """No signaling server needed: the two peer connections talk in process."""

    async def scenario() -> None:
        verified = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        other = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        results: list[PeerVerification] = []
        verification = verify_peer_connection(verified, deadline=1.0, on_result=results.append)
        try:
            await verified.setLocalDescription(await verified.createOffer())
            await other.setRemoteDescription(verified.localDescription)
            await other.setLocalDescription(await other.createAnswer())
            await verified.setRemoteDescription(other.localDescription)
            async with asyncio.timeout(TIMEOUT):
                assert await verification.done is None
            assert verification.state == "failed" and verification.code is None
            assert results == [verification]
            # It did start: the channel opened over a real DTLS transport.
            assert verification.verification is not None
            assert verification.verification.remote_fingerprint == sdp_fingerprint(other)
            assert "in time" in str(verification.reason)
        finally:
            await verified.close()
            await other.close()

    run(scenario)


# The element of the remote peer's tile that shows its verification (SPEC 5.8).
TILE_VERIFICATION = """(video) => {
    for (let node = video.parentElement; node; node = node.parentElement) {
        const shown = node.querySelector("[data-verification]");
        if (shown) return shown;
    }
    return null;
}"""


@pytest.mark.browser
def test_bot_and_chromium_show_the_same_verification_code(server: Server) -> None:
    async def scenario() -> None:
        async with bot_and_chromium(server, "verify") as (bot, page):
            video = page.locator(f'video[data-peer-id="{bot.client.peer_id}"]')
            await video.wait_for(state="attached", timeout=TIMEOUT * 1000)
            tile = (await video.evaluate_handle(TILE_VERIFICATION)).as_element()
            assert tile is not None, "no [data-verification] next to the bot's video"
            await page.wait_for_function(
                "(shown) => shown.dataset.verification !== 'pending'",
                arg=tile,
                timeout=TIMEOUT * 1000,
            )
            assert await tile.get_attribute("data-verification") == "verified"
            shown = await tile.get_attribute("data-verification-code")
            browser_id = await page.evaluate("window.rtcsignal.peerId")
            verification = bot.verifications[browser_id]
            async with asyncio.timeout(TIMEOUT):
                code = await verification.done
            assert code is not None and shown == code, (shown, code, verification.reason)
            assert code in (await tile.inner_text())

    run(scenario, seconds=50)


@pytest.mark.loopback
def test_a_relaying_man_in_the_middle_gets_different_codes() -> None:
    """
    Mallory terminates DTLS with Alice (as M1) and with Bob (as M2), and
    relays the verification messages between them untouched: Alice and Bob
    see different certificate pairs, so their codes cannot agree.
    """

    async def connect(offerer: RTCPeerConnection, answerer: RTCPeerConnection) -> None:
        await offerer.setLocalDescription(await offerer.createOffer())
        await answerer.setRemoteDescription(offerer.localDescription)
        await answerer.setLocalDescription(await answerer.createAnswer())
        await offerer.setRemoteDescription(answerer.localDescription)

    async def scenario() -> None:
        pcs = [RTCPeerConnection(RTCConfiguration(iceServers=[])) for _ in range(4)]
        alice, m1, m2, bob = pcs
        # Failing by the deadline is one of the outcomes: keep it short.
        alice_verification = verify_peer_connection(alice, deadline=1.0)
        bob_verification = verify_peer_connection(bob, deadline=1.0)
        to_alice = m1.createDataChannel("rtcsignal-verify", negotiated=True, id=0)
        to_bob = m2.createDataChannel("rtcsignal-verify", negotiated=True, id=0)
        pending: dict[RTCDataChannel, list[str | bytes]] = {to_alice: [], to_bob: []}

        def relay(source: RTCDataChannel, target: RTCDataChannel) -> None:
            @source.on("message")
            def forward(data: str | bytes) -> None:
                if target.readyState == "open":
                    target.send(data)
                else:
                    pending[target].append(data)

            @target.on("open")
            def flush() -> None:
                for data in pending[target]:
                    target.send(data)

        relay(to_alice, to_bob)
        relay(to_bob, to_alice)
        try:
            await connect(alice, m1)
            await connect(m2, bob)
            async with asyncio.timeout(TIMEOUT):
                codes = (await alice_verification.done, await bob_verification.done)
            assert alice_verification.verification is not None
            assert bob_verification.verification is not None
            # Each end got Mallory's certificate, not the other end's.
            assert alice_verification.verification.remote_fingerprint == sdp_fingerprint(m1)
            assert bob_verification.verification.remote_fingerprint == sdp_fingerprint(m2)
            assert codes[0] is None or codes[1] is None or codes[0] != codes[1], codes
        finally:
            for pc in pcs:
                await pc.close()

    run(scenario)


# The verification adapter over in-memory stand-ins for aiortc's objects.


class FakeChannel:
    """Just what `PeerVerification` uses of an RTCDataChannel."""

    def __init__(self, local: bytes, remote_der: bytes) -> None:
        self.readyState = "connecting"
        self.sent: list[str | bytes] = []
        self.handlers: dict[str, Callable[..., None]] = {}
        certificate = type("Cert", (), {"public_bytes": lambda self, encoding: remote_der})()
        ssl = type("SSL", (), {"get_peer_certificate": lambda self, **_: certificate})()
        fingerprint = type("FP", (), {"algorithm": "sha-256", "value": fingerprint_to_sdp(local)})
        parameters = type("Params", (), {"fingerprints": [fingerprint]})()
        dtls = type("Dtls", (), {"_ssl": ssl, "getLocalParameters": lambda self: parameters})()
        self.transport = type("Sctp", (), {"transport": dtls})()

    def on(self, event: str, handler: Callable[..., None]) -> None:
        self.handlers[event] = handler

    def send(self, data: str | bytes) -> None:
        self.sent.append(data)

    def emit(self, event: str, *args: Any) -> None:
        if event == "open":
            self.readyState = "open"
        self.handlers[event](*args)


class FakePeerConnection:
    def __init__(self, channel: FakeChannel) -> None:
        self.channel = channel

    def createDataChannel(self, label: str, *, negotiated: bool, id: int) -> FakeChannel:
        assert (label, negotiated, id) == ("rtcsignal-verify", True, 0)
        return self.channel


def fake_pair() -> tuple[PeerVerification, FakeChannel, PeerVerification, FakeChannel]:
    """Two verifications whose channels are not yet connected to each other."""
    der_a, der_b = b"certificate of a", b"certificate of b"
    a = FakeChannel(fingerprint_from_der(der_a), der_b)
    b = FakeChannel(fingerprint_from_der(der_b), der_a)
    return (
        verify_peer_connection(cast(Any, FakePeerConnection(a))),
        a,
        verify_peer_connection(cast(Any, FakePeerConnection(b))),
        b,
    )


def pump(*channels: FakeChannel) -> None:
    """Deliver what each channel sent to the other, until nothing moves."""
    first, second = channels
    while first.sent or second.sent:
        for source, target in ((first, second), (second, first)):
            sent, source.sent = source.sent, []
            for data in sent:
                target.emit("message", data)


@pytest.mark.memory
def test_verification_over_stand_in_channels() -> None:
    async def scenario() -> None:
        a, a_channel, b, b_channel = fake_pair()
        b_channel.emit("open")
        # A message may overtake the open event: it starts the exchange too.
        pump(a_channel, b_channel)
        if a.state == "pending":
            a_channel.emit("open")
            pump(a_channel, b_channel)
        assert (a.state, b.state) == ("verified", "verified")
        assert a.code == b.code == await a.done == await b.done

    run(scenario)


@pytest.mark.memory
@pytest.mark.parametrize(
    "trouble",
    ["binary", "garbage", "close"],
)
def test_stand_in_verification_fails_for_good(trouble: str) -> None:
    async def scenario() -> None:
        a, a_channel, _, b_channel = fake_pair()
        for channel in (a_channel, b_channel):
            channel.emit("open")
        if trouble == "close":
            a_channel.emit("close")
        else:
            a_channel.emit("message", b"\x00" if trouble == "binary" else '{"v":1}')
        assert a.state == "failed" and a.code is None and a.reason
        assert await a.done is None
        pump(a_channel, b_channel)  # what follows changes nothing
        assert a.state == "failed"

    run(scenario)
