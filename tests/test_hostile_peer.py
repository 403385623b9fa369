"""
Hostile peers over real loopback sockets, with raw frames: what one client
that misbehaves on purpose may cost the server and the others.

- A peer the server closes (a protocol error, its rate limit, too slow)
  leaves at once, whether or not its client answers the close (SPEC 1.4
  step 4); it is never held for resume.
- A flood at several times the rate, however its frames are spaced, gets a
  handful of ``Rate limited`` errors and is closed with 1008 (SPEC 5.3).
- A client that never reads is closed once the server holds more than
  ``max_send_buffer`` for it (SPEC 1.4 step 7); a WebSocket ping flood is
  rate-limited and closed; nobody else waits or loses anything.

The rules themselves (limiter, keepalive, send-buffer accounting) are
tested on a fake clock in test_limits.py and test_wheel.py; here, what the
bytes on the wire and the server's buffers show.
"""

from __future__ import annotations

import socket
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs

from twisted_signal import Peer, Room, Settings

from .support import (
    OP_CLOSE,
    OP_TEXT,
    LiveServer,
    MakeServer,
    RawClient,
    StrictClient,
    in_reactor,
    join_strict,
    joined,
    left,
    relayed,
    upgrade_request,
)

pytestmark = pytest.mark.loopback

# Helpers.


def raw_join(server: LiveServer, room: str, rcvbuf: int | None = None) -> tuple[RawClient, str]:
    """
    A raw client in `room` and its peer id.  With `rcvbuf`, its socket's
    receive buffer is that small (set before connecting, so the TCP window
    is small too): a client that does not read stops the server's writes
    after a few kilobytes rather than after the kernel's megabytes.
    """
    if rcvbuf is None:
        raw = RawClient.connect(server.base, f"/socket/{room}/")
    else:
        host, port = server.base.rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.settimeout(5.0)
        sock.connect((host, int(port)))
        sock.sendall(upgrade_request(server.base, f"/socket/{room}/"))
        raw = RawClient(sock)
        head = raw._read_until(b"\r\n\r\n")
        assert head.split(b" ")[1] == b"101", head
    authenticated = raw.recv_json()
    assert authenticated["event"] == "authenticated", authenticated
    return raw, authenticated["data"]["peer_id"]


def close_code(frame: tuple[int, bytes] | None) -> int | None:
    if frame is None or frame[0] != OP_CLOSE or len(frame[1]) < 2:
        return None
    code: int = struct.unpack(">H", frame[1][:2])[0]
    return code


def next_close(raw: RawClient, timeout: float = 5.0) -> tuple[int, bytes] | None:
    """The next close frame from the server (other frames skipped)."""
    deadline = time.monotonic() + timeout
    while (frame := raw.recv_frame(max(deadline - time.monotonic(), 0.001))) is not None:
        if frame[0] == OP_CLOSE:
            return frame
    return None


def held_by_transport(peer: Peer, lowest: bool = False) -> int:
    """
    What the TCP transport of `peer` holds that it has not written yet
    (Twisted's `FileDescriptor` buffers): measured, not our own count.
    With `lowest`, the transport under the peer's own (TLS).
    """
    transport: Any = peer.transport
    if lowest:
        transport = transport.transport
    if transport is None or not hasattr(transport, "dataBuffer"):
        return 0
    held: int = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return held


def server_peer(server: LiveServer, room: str, peer_id: str) -> Peer:
    handle = server.rooms.find(room).peers[peer_id]  # type: ignore[union-attr]
    peer = handle.peer
    assert isinstance(peer, Peer)
    return peer


# SPEC 1.4 step 4: closed by the server, never held.

_BAD_FRAMES = {
    # A frame larger than the limit (64 KiB).
    1009: bytes([0x81, 0x80 | 127]) + struct.pack(">Q", 70_000) + b"\0" * 4 + b"x" * 70_000,
    # A text frame that is not UTF-8.
    1007: bytes([0x81, 0x82]) + b"\0" * 4 + b"\xff\xfe",
    # A reserved opcode.
    1002: bytes([0x83, 0x80]) + b"\0" * 4,
}


@pytest.mark.parametrize("code", sorted(_BAD_FRAMES))
@pytest_twisted.ensureDeferred
async def test_a_peer_closed_for_a_protocol_error_leaves_at_once(
    make_server: MakeServer, code: int
) -> None:
    """
    The client breaks the protocol and then never answers the server's
    close: it leaves at once (the others get ``left`` now, not after the
    close timeout and the resume window), and its resume token is void.
    """
    server = await make_server(settings=Settings(resume_window=15, close_timeout=2))

    def scenario() -> float:
        watcher = join_strict(server.socket_url("r"))
        raw, raw_id = raw_join(server, "r")
        assert watcher.recv() == joined(raw_id)
        started = time.monotonic()
        raw.sock.sendall(_BAD_FRAMES[code])
        assert close_code(next_close(raw)) == code
        # The client keeps its socket open and says nothing.
        assert watcher.recv(timeout=1.5) == left(raw_id)
        elapsed = time.monotonic() - started
        watcher.send("still", [watcher.peer_id])
        assert watcher.recv() == relayed("still", None, watcher, [watcher.peer_id])
        assert len(server.service.resource.factory.resumption) == 1  # the watcher's
        watcher.close()
        raw.drop()
        return elapsed

    elapsed = await deferToThread(scenario)
    assert elapsed < 1.0, elapsed


# SPEC 5.3: the flood close at the default rate, whatever the gaps.


def masked_text(text: bytes) -> bytes:
    """A client text frame (all-zero mask: the payload as it is)."""
    size = len(text)
    head = (
        bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + struct.pack(">H", size)
    )
    return head + b"\0" * 4 + text


def flood_until(raw: RawClient, frames: bytes, every: float, stop: threading.Event) -> None:
    """Send `frames` every `every` seconds, never reading, until `stop` (or the server hangs up)."""
    while not stop.is_set():
        try:
            raw.sock.sendall(frames)
        except OSError:
            return
        stop.wait(every)


@pytest.mark.parametrize("per_second", [190, 1000])
@pytest_twisted.ensureDeferred
async def test_a_flood_with_gaps_between_reads_is_closed_with_1008(
    make_server: MakeServer, per_second: int
) -> None:
    """
    The default rate (50/s, burst 200) and a flood of `per_second` frames
    sent in batches every 100 ms (so the server reads them with gaps far
    longer than a token's 20 ms): one ``Rate limited`` error, the close
    with 1008 a flood timeout after the first drop, and one log line for it
    however many frames still arrive.  The flood timeout is 2 s here; the
    default's 10 s is the same rule, on a fake clock in test_limits.py.
    """
    flood_timeout = 2.0
    server = await make_server(settings=Settings(flood_timeout=flood_timeout))
    burst_lasts = 200 / (per_second - 50)

    def scenario() -> tuple[float, list[dict[str, Any]], int | None]:
        watcher = join_strict(server.socket_url("r"))
        raw, raw_id = raw_join(server, "r")
        try:
            return flood(watcher, raw, raw_id)
        finally:
            raw.drop()
            watcher.close()

    def flood(
        watcher: StrictClient, raw: RawClient, raw_id: str
    ) -> tuple[float, list[dict[str, Any]], int | None]:
        assert watcher.recv() == joined(raw_id)
        frame = masked_text(orjson.dumps({"event": "n", "to": [watcher.peer_id]}))
        stop = threading.Event()
        sender = threading.Thread(
            target=flood_until, args=(raw, frame * (per_second // 10), 0.1, stop)
        )
        started = time.monotonic()
        sender.start()
        try:
            deadline = started + burst_lasts + flood_timeout + 4
            while (message := watcher.recv(timeout=deadline - time.monotonic())) != left(raw_id):
                assert message == relayed("n", None, raw_id, [watcher.peer_id]), message
            elapsed = time.monotonic() - started
            time.sleep(0.5)  # frames keep coming after the close
        finally:
            stop.set()
            sender.join()
        texts = []
        code = None
        while (got := raw.recv_frame(timeout=3)) is not None:
            if got[0] == OP_TEXT:
                texts.append(orjson.loads(got[1]))
            elif got[0] == OP_CLOSE:
                code = close_code(got)
                break
        return elapsed, texts, code

    with capturedLogs() as events:
        elapsed, texts, code = await deferToThread(scenario)
    assert code == 1008
    assert [t["data"]["description"] for t in texts] == ["Rate limited"], texts
    expected = burst_lasts + flood_timeout
    assert expected - 0.5 < elapsed < expected + 1.5, (elapsed, expected)
    closes = [e for e in events if "over its rate limit" in e.get("log_format", "")]
    assert len(closes) == 1, closes


# SPEC 1.4 step 7 and 5.3: clients that never read.


class Sampler:
    """
    The most a peer's transport has held, sampled every few milliseconds
    in the reactor thread.
    """

    def __init__(self, lowest: bool = False) -> None:
        from twisted.internet import task

        self.lowest = lowest
        """Sample the transport under the peer's (TLS: the TCP one)."""
        self.peer: Peer | None = None
        self.most = 0
        self._loop = task.LoopingCall(self._sample)

    def start(self, peer: Peer) -> None:
        self.peer = peer
        self._loop.start(0.002)

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()

    def _sample(self) -> None:
        if self.peer is not None:
            self.most = max(self.most, held_by_transport(self.peer, self.lowest))


def round_trips(client: StrictClient, seconds: float) -> list[float]:
    """Messages to oneself for `seconds`, one at a time: their round-trip times."""
    times = []
    ends = time.monotonic() + seconds
    n = 0
    while time.monotonic() < ends:
        sent = time.monotonic()
        client.send("rtt", [client.peer_id], n)
        assert client.recv() == relayed("rtt", n, client, [client.peer_id])
        times.append(time.monotonic() - sent)
        n += 1
        time.sleep(0.02)
    return times


@pytest_twisted.ensureDeferred
async def test_a_websocket_ping_flood_that_never_reads_is_closed(make_server: MakeServer) -> None:
    """
    A client sends WebSocket pings as fast as it can and never reads: the
    pings count against its rate limit (the dropped ones get no pong), so
    what the server holds for it stays small; it is closed with 1008 a
    flood timeout after its first drop; a call in another room goes on
    undisturbed meanwhile.
    """
    flood_timeout = 2.0
    server = await make_server(settings=Settings(flood_timeout=flood_timeout))
    sampler = Sampler()

    def scenario() -> tuple[float, list[float], list[float]]:
        watcher = join_strict(server.socket_url("r"))
        other = join_strict(server.socket_url("other"))
        raw, raw_id = raw_join(server, "r", rcvbuf=4096)
        try:
            assert watcher.recv() == joined(raw_id)
            in_reactor(sampler.start, server_peer(server, "r", raw_id))
            quiet = round_trips(other, 0.5)
            pings = (bytes([0x89, 0x80]) + b"\0" * 4) * 20_000
            stop = threading.Event()
            sender = threading.Thread(target=flood_until, args=(raw, pings, 0.0, stop))
            started = time.monotonic()
            sender.start()
            try:
                loud = round_trips(other, 1.5)
                assert watcher.recv(timeout=flood_timeout + 3) == left(raw_id)
                elapsed = time.monotonic() - started
            finally:
                stop.set()
                sender.join()
            return elapsed, quiet, loud
        finally:
            in_reactor(sampler.stop)
            raw.drop()
            watcher.close()
            other.close()

    elapsed, quiet, loud = await deferToThread(scenario)
    assert flood_timeout - 0.5 < elapsed < flood_timeout + 1.5, elapsed
    # Only the pongs of the pings that passed: a few hundred bytes.
    assert sampler.most < 16 * 1024, sampler.most
    # The other room's round trips: about a millisecond before the flood;
    # during it, a connection's turn is bounded, so a few milliseconds
    # (without that bound: 200 ms and more).
    assert median(loud) < 0.05, (median(quiet), median(loud), max(loud))


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_is_closed_past_the_send_buffer(
    make_server: MakeServer,
) -> None:
    """
    A client that never reads, in a room where 60 KB messages are
    broadcast (10 MB in all): once the server holds more than
    ``max_send_buffer`` for it, it is closed and leaves (the others get
    ``left``); what its transport held never went much past the limit; a
    peer that reads gets every message, in order.
    """
    limit = 1024 * 1024
    server = await make_server(settings=Settings(max_send_buffer=limit))
    sampler = Sampler()
    count = 170
    blob = "x" * 60_000

    def scenario() -> tuple[str, list[dict[str, Any]]]:
        sender = join_strict(server.socket_url("r"))
        # A reader that keeps reading (while this thread sends) however
        # many messages are waiting for the test.
        reader = join_strict(server.socket_url("r"), max_queue=None)
        assert sender.recv() == joined(reader.peer_id)
        raw, raw_id = raw_join(server, "r", rcvbuf=4096)
        try:
            assert sender.recv() == joined(raw_id)
            assert reader.recv() == joined(raw_id)
            in_reactor(sampler.start, server_peer(server, "r", raw_id))
            # The reader reads as it goes, so that on a busy machine it is
            # the client that never reads, not this one, that passes the
            # buffer.
            received = []
            for n in range(count):
                sender.send("big", "all", {"n": n, "blob": blob})
                received.append(reader.recv())
            received += [reader.recv() for _ in range(count + 1 - len(received))]
            assert sender.recv() == left(raw_id)
            assert sender.nothing_within(0.2)
            # Not held for resume: only the two others have tokens.
            assert len(server.service.resource.factory.resumption) == 2
            return raw_id, received
        finally:
            in_reactor(sampler.stop)
            raw.drop()
            sender.close()
            reader.close()

    raw_id, received = await deferToThread(scenario)
    assert received.count(left(raw_id)) == 1
    big = [m["data"]["n"] for m in received if m["event"] == "big"]
    assert big == list(range(count))
    # Past the limit it is closed: at most the limit, the transport's own
    # 64 KiB, the message that filled it and the one that went over.
    assert sampler.most <= limit + 64 * 1024 + 2 * 61_000, sampler.most


@pytest_twisted.ensureDeferred
async def test_a_client_that_sends_but_never_reads_is_not_alive(make_server: MakeServer) -> None:
    """
    SPEC 1.4 step 6: a client that sends a ``ping`` text frame every 100 ms
    but never reads does not answer the server's pings: it is dropped at
    the ping timeout (and leaves, with resume off).
    """
    server = await make_server(
        settings=Settings(ping_interval=0.5, ping_timeout=0.5, resume_window=0)
    )

    def scenario() -> float:
        watcher = join_strict(server.socket_url("r"))
        raw, raw_id = raw_join(server, "r", rcvbuf=4096)
        stop = threading.Event()
        sender = threading.Thread(target=flood_until, args=(raw, masked_text(b"ping"), 0.1, stop))
        try:
            assert watcher.recv() == joined(raw_id)
            started = time.monotonic()
            sender.start()
            assert watcher.recv(timeout=5) == left(raw_id)
            return time.monotonic() - started
        finally:
            stop.set()
            if sender.is_alive():
                sender.join()
            raw.drop()
            watcher.close()

    elapsed = await deferToThread(scenario)
    # The first ping within an interval (and a wheel slot), its timeout after.
    assert 0.5 < elapsed < 3.0, elapsed


async def start_tls_server(folder: Path, settings: Settings) -> LiveServer:
    """A server on an ``ssl:`` loopback endpoint (a development certificate)."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString

    from twisted_signal import Rooms, SignalingService
    from twisted_signal.devcert import write_dev_certificate

    key, cert = write_dev_certificate(folder)
    rooms = Rooms(lambda name: Room(name, None, max_peers=4), max_peers=4)
    service = SignalingService(rooms, settings=settings)
    service.startService()
    endpoint = serverFromString(
        reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    )
    return LiveServer(service, await endpoint.listen(service.site))


def raw_tls_join(server: LiveServer, context: ssl.SSLContext) -> tuple[RawClient, str]:
    """A raw client over TLS in room ``r`` (4 KiB receive buffer), and its peer id."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5.0)
    host, port = server.base.rsplit(":", 1)
    sock.connect((host, int(port)))
    raw = RawClient(context.wrap_socket(sock))
    raw.sock.sendall(upgrade_request(server.base, "/socket/r/"))
    raw._read_until(b"\r\n\r\n")
    peer_id: str = raw.recv_json()["data"]["peer_id"]
    return raw, peer_id


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_reads_over_tls_is_closed_past_the_send_buffer(
    tmp_path: Path,
) -> None:
    """
    The same over an ``ssl:`` endpoint: the count follows the TLS
    transport (whose writes end in the TCP transport's buffer, encrypted).
    """
    limit = 1024 * 1024
    server = await start_tls_server(tmp_path, Settings(max_send_buffer=limit))
    sampler = Sampler(lowest=True)
    client_context = ssl.create_default_context()
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE
    url = f"wss://{server.base}/socket/r/"

    def scenario() -> None:
        sender = join_strict(url, ssl=client_context)
        reader = join_strict(url, ssl=client_context, max_queue=None)
        assert sender.recv() == joined(reader.peer_id)
        raw, raw_id = raw_tls_join(server, client_context)
        try:
            assert sender.recv() == joined(raw_id)
            assert reader.recv() == joined(raw_id)
            in_reactor(sampler.start, server_peer(server, "r", raw_id))
            # The reader reads as it goes, so that on a busy machine it is
            # the client that never reads, not this one, that passes the
            # buffer.
            received = []
            for n in range(100):
                sender.send("big", "all", {"n": n, "blob": "x" * 60_000})
                received.append(reader.recv())
            received += [reader.recv() for _ in range(101 - len(received))]
            assert received.count(left(raw_id)) == 1
            assert [m["data"]["n"] for m in received if m["event"] == "big"] == list(range(100))
            assert sender.recv() == left(raw_id)
        finally:
            in_reactor(sampler.stop)
            raw.drop()
            sender.close()
            reader.close()

    try:
        await deferToThread(scenario)
    finally:
        await server.stop()
    assert sampler.most <= limit + 64 * 1024 + 2 * 62_000, sampler.most
