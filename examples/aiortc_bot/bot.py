"""
A WebRTC bot that joins a room and answers calls, built on the asyncio
client (`twisted_signal.client.aio_connect`) and aiortc.

It speaks the room page's signaling (static/room.js and
rtcsignal-calls.js): ``offer``/``answer`` carry ``{type, sdp}``, ``candidate`` an
RTCIceCandidateInit, ``media`` ``{audio, video}``; the newcomer makes the
offers.  To every peer it sends a moving test pattern, it decodes (counts)
the video they send, it echoes what arrives on their data channels, and it
logs the verification code of each call (docs/verification.md): the code
the peer's room page shows when nobody is in the middle.

Run it from the repository's root, next to a running server::

    python -m examples.aiortc_bot.bot ws://127.0.0.1:8080/socket/demo/

then open http://127.0.0.1:8080/demo in a browser.  Replace `Bot.on_frame`
(or subclass `Bot`) to put server-side logic into the room: recording,
an AI agent, a test probe.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import aioice.ice
import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.sdp import candidate_from_sdp

from twisted_signal import Message
from twisted_signal.client import (
    AsyncSignalingClient,
    NotConnected,
    PeerVerification,
    aio_connect,
    verify_peer_connection,
)

__all__ = ["Bot", "TestPattern", "gather_loopback_only", "main", "run"]

log = logging.getLogger("aiortc_bot")

OFFER_WAIT = 4.0
"""Like rtcsignal-calls.js: if a newcomer has not offered within this long, offer."""

# BT.601 Y, U, V of the classic colour bars: white, yellow, cyan, green,
# magenta, red, blue, black.
BARS = [
    (235, 128, 128),
    (210, 16, 146),
    (170, 166, 16),
    (145, 54, 34),
    (106, 202, 222),
    (81, 90, 240),
    (41, 240, 110),
    (16, 128, 128),
]


class TestPattern(VideoStreamTrack):
    """
    Colour bars that scroll sideways, `width` x `height` at 30 frames per
    second, made without numpy: each row of a plane is the same, so a frame
    is one row repeated.
    """

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, width: int = 320, height: int = 240, speed: int = 4) -> None:
        super().__init__()
        if width % 16 or height % 2:
            raise ValueError("width must be a multiple of 16 and height even")
        self.width = width
        self.height = height
        self.speed = speed
        self.frames_sent = 0
        # Two periods of the bars, so any window of one width is a slice.
        self._rows = [self._row(width, channel) for channel in range(3)]

    @staticmethod
    def _row(width: int, channel: int) -> bytes:
        bar = width // len(BARS)
        one = b"".join(bytes([colour[channel]]) * bar for colour in BARS)
        one = one.ljust(width, bytes([BARS[-1][channel]]))
        return one * 2

    def frame(self, index: int) -> av.VideoFrame:
        """Frame number `index` of the pattern."""
        frame = av.VideoFrame(self.width, self.height, "yuv420p")
        shift = (index * self.speed) % self.width
        for channel, plane in enumerate(frame.planes):
            scale = 1 if channel == 0 else 2
            width = self.width // scale
            start = shift // scale
            row = self._rows[channel][::scale][start : start + width]
            row = row.ljust(plane.line_size, b"\0")
            plane.update(row * (self.height // scale))
        return frame

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        frame = self.frame(self.frames_sent)
        frame.pts = pts
        frame.time_base = time_base
        self.frames_sent += 1
        return frame


def gather_loopback_only() -> None:
    """
    Make aiortc (aioice) offer only 127.0.0.1 as its host candidate: for a
    bot and a browser on the same machine, and for tests.
    """

    def loopback(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return ["127.0.0.1"] if use_ipv4 else []

    setattr(aioice.ice, "get_host_addresses", loopback)  # noqa: B010


def _ice_servers(servers: list[dict[str, Any]]) -> list[RTCIceServer]:
    result = []
    for server in servers:
        urls = server.get("urls")
        if urls:
            result.append(
                RTCIceServer(
                    urls=urls, username=server.get("username"), credential=server.get("credential")
                )
            )
    return result


class Call:
    """One RTCPeerConnection with one remote peer."""

    def __init__(self, bot: Bot, peer_id: str, *, polite: bool) -> None:
        self.bot = bot
        self.peer_id = peer_id
        self.polite = polite
        self.pattern = TestPattern()
        self.verification: PeerVerification | None = None
        self.pc = self._new_pc()
        self._tasks: set[asyncio.Task[None]] = set()
        self._offer_timer: asyncio.TimerHandle | None = None
        self._offered = False

    def _new_pc(self) -> RTCPeerConnection:
        pc = RTCPeerConnection(
            RTCConfiguration(iceServers=_ice_servers(self.bot.client.ice_servers))
        )
        # The verification channel is part of the first offer or answer; a
        # new peer connection (new DTLS transport) is verified anew.
        self.verification = verify_peer_connection(pc, on_result=self._verified)
        self.bot.verifications[self.peer_id] = self.verification

        @pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._spawn(self._consume(track))

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            @channel.on("message")
            def on_message(data: str | bytes) -> None:
                channel.send(data)

        @pc.on("connectionstatechange")
        def on_state() -> None:
            log.info("call with %s: %s", self.peer_id, pc.connectionState)
            if pc.connectionState == "failed":
                self._spawn(self.bot.hang_up(self.peer_id))

        return pc

    def _verified(self, verification: PeerVerification) -> None:
        if verification is not self.verification:
            return  # a peer connection since replaced
        if verification.state == "verified":
            log.info("verification code with %s: %s", self.peer_id, verification.code)
        else:
            log.warning("could not verify %s: %s", self.peer_id, verification.reason)
        self.bot.on_verification(self.peer_id, verification)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def wait_for_offer(self, seconds: float) -> None:
        loop = asyncio.get_running_loop()
        self._offer_timer = loop.call_later(seconds, lambda: self._spawn(self._offer_if_idle()))

    async def _offer_if_idle(self) -> None:
        if self.pc.remoteDescription is None and not self._offered:
            log.info("no offer from %s; offering", self.peer_id)
            await self.offer()

    async def offer(self) -> None:
        """Call the peer: test pattern out, audio and video in."""
        self._offered = True
        self.pc.addTransceiver(self.pattern, direction="sendrecv")
        self.pc.addTransceiver("audio", direction="recvonly")
        await self.pc.setLocalDescription(await self.pc.createOffer())
        await self._send_description()

    async def description(self, data: Any) -> None:
        """An ``offer`` or ``answer`` from the peer."""
        if not isinstance(data, dict) or data.get("type") not in ("offer", "answer"):
            log.warning("%s sent something that is not a description: %r", self.peer_id, data)
            return
        description = RTCSessionDescription(sdp=str(data.get("sdp", "")), type=data["type"])
        if description.type == "answer":
            if self.pc.signalingState == "have-local-offer":
                await self.pc.setRemoteDescription(description)
            return
        if self._offer_timer is not None:
            self._offer_timer.cancel()
        if self.pc.signalingState != "stable":
            # Both offered at once.  The impolite side ignores the other's
            # offer; aiortc cannot roll back, so the polite side starts over.
            if not self.polite:
                return
            await self.pc.close()
            self.pattern = TestPattern()
            self.pc = self._new_pc()
        await self.pc.setRemoteDescription(description)
        if any(t.kind == "video" for t in self.pc.getTransceivers()):
            self.pc.addTrack(self.pattern)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        await self._send_description()

    async def candidate(self, data: Any) -> None:
        """A trickled ICE candidate (an RTCIceCandidateInit)."""
        if not isinstance(data, dict) or self.pc.remoteDescription is None:
            return
        text = str(data.get("candidate") or "")
        if not text:
            return  # end of candidates: aiortc does not need to be told
        candidate = candidate_from_sdp(text.removeprefix("candidate:"))
        candidate.sdpMid = data.get("sdpMid")
        candidate.sdpMLineIndex = data.get("sdpMLineIndex")
        try:
            await self.pc.addIceCandidate(candidate)
        except ValueError as e:
            log.debug("ignored a candidate from %s: %s", self.peer_id, e)

    async def _send_description(self) -> None:
        local = self.pc.localDescription
        await self.bot.send(local.type, {"type": local.type, "sdp": local.sdp}, self.peer_id)

    async def _consume(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            if track.kind == "video":
                self.bot.frames_received[self.peer_id] += 1
                self.bot.on_frame(self.peer_id, frame)

    async def close(self) -> None:
        if self._offer_timer is not None:
            self._offer_timer.cancel()
        await self.pc.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()


class Bot:
    """
    Answers (and makes) calls in the room of `client`, one `Call` per peer.
    `frames_received` counts the video frames decoded from each peer;
    `verifications` holds the verification of each peer's current
    connection (its `code` is what the peer's room page shows).
    """

    def __init__(self, client: AsyncSignalingClient, *, offer_wait: float = OFFER_WAIT) -> None:
        self.client = client
        self.offer_wait = offer_wait
        self.calls: dict[str, Call] = {}
        self.frames_received: defaultdict[str, int] = defaultdict(int)
        self.media: dict[str, Any] = {}
        self.verifications: dict[str, PeerVerification] = {}
        self._lock = asyncio.Lock()

    def on_frame(self, peer_id: str, frame: Any) -> None:
        """
        A decoded frame from `peer_id` (an `av.VideoFrame`).  Override it to
        record, analyse or answer what the peer shows.
        """

    def on_verification(self, peer_id: str, verification: PeerVerification) -> None:
        """
        The verification with `peer_id` ended: ``verification.state`` is
        ``"verified"`` (then ``verification.code`` is the code to compare
        with the one the peer shows) or ``"failed"``.  Override it to act
        on it, e.g. to hang up on a peer that cannot be verified.
        """

    async def run(self) -> None:
        """Call everyone already in the room, then follow it until the client closes."""
        async with self._lock:
            await self._call_everyone()
        async for message in self.client:
            async with self._lock:
                try:
                    await self.handle(message)
                except Exception:
                    # One peer's bad description must not end everyone's call.
                    log.exception("could not handle %s from %s", message.event, message.from_)

    async def rejoined(self, client: AsyncSignalingClient) -> None:
        """The client reconnected: a new identity means new calls."""
        if client.resumed:
            return
        async with self._lock:
            for peer_id in list(self.calls):
                await self.hang_up(peer_id)
            await self._call_everyone()

    async def _call_everyone(self) -> None:
        # We are the newcomer for everyone already here: we make the offers.
        for peer_id in self.client.peers:
            call = self.calls[peer_id] = Call(self, peer_id, polite=False)
            await self._say_media(peer_id)
            await call.offer()

    async def handle(self, message: Message) -> None:
        """One message from the room."""
        event, data, sender = message.event, message.data, message.from_
        if event == "joined" and isinstance(data, dict):
            peer_id = str(data.get("peer_id"))
            if peer_id not in self.calls:
                # The newcomer offers; we wait (and offer if it does not).
                call = self.calls[peer_id] = Call(self, peer_id, polite=True)
                call.wait_for_offer(self.offer_wait)
                await self._say_media(peer_id)
        elif event == "left" and isinstance(data, dict):
            await self.hang_up(str(data.get("peer_id")))
        elif event in ("offer", "answer", "description") and sender:
            existing = self.calls.get(sender)
            if existing is None:
                # Someone we were not told about offers: answer, politely.
                if not isinstance(data, dict) or data.get("type") != "offer":
                    return
                existing = self.calls[sender] = Call(self, sender, polite=True)
            await existing.description(data)
        elif event == "reset" and sender and sender in self.calls:
            # The room page rebuilt its connection to us after an outage
            # (docs/room-page.md): start afresh too, in the same roles.
            polite = self.calls[sender].polite
            await self.hang_up(sender)
            call = self.calls[sender] = Call(self, sender, polite=polite)
            if polite:
                call.wait_for_offer(self.offer_wait)
            else:
                await call.offer()
        elif event == "candidate" and sender and sender in self.calls:
            await self.calls[sender].candidate(data)
        elif event == "media" and sender:
            self.media[sender] = data
        elif event == "error":
            log.warning("server error: %r", data)

    async def hang_up(self, peer_id: str) -> None:
        call = self.calls.pop(peer_id, None)
        self.verifications.pop(peer_id, None)
        if call is not None:
            await call.close()

    async def send(self, event: str, data: Any, peer_id: str) -> None:
        try:
            await self.client.send(event, data, to=[peer_id])
        except NotConnected:
            log.info("not connected; dropped %s to %s", event, peer_id)

    async def _say_media(self, peer_id: str) -> None:
        await self.send("media", {"audio": False, "video": True}, peer_id)

    async def close(self) -> None:
        for peer_id in list(self.calls):
            await self.hang_up(peer_id)


async def run(
    url: str,
    *,
    token: str | None = None,
    ready: Callable[[Bot], None] | None = None,
) -> None:
    """
    Join the room at `url` and answer calls until the connection ends for
    good (the bot reconnects after a lost connection).  `ready(bot)` is
    called once the bot is in the room.
    """
    bot: Bot | None = None

    async def rejoined(client: AsyncSignalingClient) -> None:
        if bot is not None:
            await bot.rejoined(client)

    async with aio_connect(url, token=token, reconnect=True, on_reconnected=rejoined) as client:
        bot = Bot(client)
        log.info("joined as %s with %d peer(s) present", client.peer_id, len(client.peers))
        if ready is not None:
            ready(bot)
        try:
            await bot.run()
        finally:
            await bot.close()


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m examples.aiortc_bot.bot",
        description="Join a room and answer calls with a test pattern.",
    )
    parser.add_argument("url", help="the room's socket, e.g. ws://127.0.0.1:8080/socket/demo/")
    parser.add_argument("--token", help="a JWT, for servers that want one")
    parser.add_argument(
        "--loopback-only",
        action="store_true",
        help="offer only 127.0.0.1 as ICE candidate (bot and browser on this machine)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log more")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    if not args.verbose:
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.loopback_only:
        gather_loopback_only()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args.url, token=args.token))


if __name__ == "__main__":
    main()
