"""
The limits of SPEC 5.3 and 4 (rate limit, connection cap, allowed origins,
handshake timeout) and the keepalive of SPEC 1.4 step 6.

`RateLimiter` is pure and is tested with plain numbers for time; the rest
runs against a live server on a loopback port, with the `websockets` client
or, where a client must misbehave (leave pings unanswered, stall in the
handshake), a hand-written one over a bare socket.
"""

from __future__ import annotations

import itertools
import json
import select
import time
from typing import Any

import jwt
import pytest
import pytest_twisted
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed

from twisted_signal import AuthData, Peer, PeerContext, PeerFactory, Settings, Unauthorized
from twisted_signal.auth import TokenVerifier
from twisted_signal.limits import RateLimiter, SendBuffer, Verdict

from .support import (
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    LiveServer,
    MakeServer,
    RawClient,
    StrictClient,
    handshake_status,
    join_strict,
    joined,
    left,
    relayed,
    sleep,
    tcp_connect,
    upgrade_request,
    wait_until,
)

pytestmark = pytest.mark.loopback

# Helpers.


def join_pair(server: LiveServer, room: str = "r") -> tuple[StrictClient, StrictClient]:
    """
    Two clients in `room`; the first has seen the second join.
    """
    a = join_strict(server.socket_url(room))
    b = join_strict(server.socket_url(room))
    assert a.recv() == joined(b.peer_id)
    return a, b


def is_rate_limited(message: dict[str, Any], peer_id: str) -> bool:
    return (
        message["event"] == "error"
        and message["from"] is None
        and message["to"] == [peer_id]
        and message["data"]["description"] == "Rate limited"
    )


def factory_of(server: LiveServer) -> PeerFactory:
    return server.service.resource.factory


# SPEC 5.3: the token bucket, with time as plain numbers.


def passes(limiter: RateLimiter, *times: float) -> list[bool]:
    return [limiter.check(now) is Verdict.PASS for now in times]


@pytest.mark.memory
def test_limiter_burst_then_refill_at_the_rate() -> None:
    limiter = RateLimiter(rate=5, period=1, burst=10, flood_timeout=1.0, now=100.0)
    assert [limiter.check(100.0) for _ in range(10)] == [Verdict.PASS] * 10
    assert limiter.check(100.0) is Verdict.DROP_AND_WARN
    # 5 per second: one token every 0.2 s.
    assert limiter.check(100.1) is Verdict.DROP
    assert passes(limiter, 100.21, 100.21, 100.3, 100.42, 100.42) == [
        True,
        False,
        False,
        True,
        False,
    ]
    # A second refills 5 tokens, never more than the burst.
    assert passes(limiter, *[101.5] * 6) == [True] * 5 + [False]
    assert passes(limiter, *[1000.0] * 11) == [True] * 10 + [False]


@pytest.mark.memory
def test_limiter_rate_per_period() -> None:
    # 10 per 2 s is 5 per second.
    limiter = RateLimiter(rate=10, period=2, burst=1, flood_timeout=10.0, now=0.0)
    assert limiter.check(0.0) is Verdict.PASS
    assert limiter.check(0.1) is Verdict.DROP_AND_WARN
    assert passes(limiter, 0.21, 0.3, 0.35, 0.42) == [True, False, False, True]


@pytest.mark.memory
def test_limiter_the_bucket_starts_full() -> None:
    limiter = RateLimiter(rate=1, period=1, burst=3, flood_timeout=10.0, now=0.0)
    assert [limiter.check(0.0) for _ in range(4)] == [Verdict.PASS] * 3 + [Verdict.DROP_AND_WARN]


@pytest.mark.memory
def test_limiter_warns_once_per_run_of_drops() -> None:
    limiter = RateLimiter(rate=5, period=1, burst=2, flood_timeout=10.0, now=0.0)
    verdicts = [limiter.check(0.001 * i) for i in range(100)]
    assert verdicts[:2] == [Verdict.PASS, Verdict.PASS]
    assert verdicts[2] is Verdict.DROP_AND_WARN
    assert verdicts[3:] == [Verdict.DROP] * 97


@pytest.mark.memory
def test_limiter_closes_after_flood_timeout_of_continuous_drops() -> None:
    limiter = RateLimiter(rate=1, period=10, burst=1, flood_timeout=1.0, now=0.0)
    assert limiter.check(0.0) is Verdict.PASS
    assert limiter.check(0.5) is Verdict.DROP_AND_WARN
    assert limiter.check(1.0) is Verdict.DROP
    assert limiter.check(1.49) is Verdict.DROP
    # One flood_timeout after the first drop of the run.
    assert limiter.check(1.5) is Verdict.CLOSE
    assert limiter.check(1.6) is Verdict.CLOSE


@pytest.mark.memory
def test_limiter_a_passing_message_ends_the_run() -> None:
    # One token every 10 s.
    limiter = RateLimiter(rate=1, period=10, burst=1, flood_timeout=2.0, now=0.0)
    assert limiter.check(0.0) is Verdict.PASS
    assert limiter.check(0.1) is Verdict.DROP_AND_WARN
    assert limiter.check(1.0) is Verdict.DROP
    # The peer pauses: the bucket refills, a message passes, the run is over.
    assert limiter.check(25.0) is Verdict.PASS
    # A new run: warned again, and timed from its own first drop.
    assert limiter.check(25.1) is Verdict.DROP_AND_WARN
    assert limiter.check(26.5) is Verdict.DROP
    assert limiter.check(27.0) is Verdict.DROP
    assert limiter.check(27.1) is Verdict.CLOSE


@pytest.mark.memory
def test_limiter_a_sustained_flood_is_closed_although_refills_let_some_through() -> None:
    """
    SPEC 5.3: "a peer that keeps being over its limit for 10 s is closed".
    A flood far above the rate is over its limit the whole time, even though
    the bucket lets one message through whenever a token has been refilled.
    """
    limiter = RateLimiter(rate=5, period=1, burst=10, flood_timeout=1.0, now=0.0)
    verdicts: list[tuple[float, Verdict]] = []
    for i in range(300):  # 100 messages a second for 3 s
        now = i * 0.01
        verdicts.append((now, limiter.check(now)))
    closes = [now for now, verdict in verdicts if verdict is Verdict.CLOSE]
    assert closes, "a 3 s flood at 20 times the rate was never closed"
    assert closes[0] <= 1.0 + 0.25, closes[0]
    # And it made a handful of errors, not one per refill.
    warnings = [now for now, verdict in verdicts if verdict is Verdict.DROP_AND_WARN]
    assert 1 <= len(warnings) <= 3, warnings


def flood(limiter: RateLimiter, per_second: float, read_every: float, seconds: float) -> Any:
    """
    A flood of `per_second` frames that the server reads in batches, one
    read every `read_every` seconds (all frames of a read are checked at
    once, as when they arrive in one TCP segment): the verdicts, timed.
    """
    verdicts: list[tuple[float, Verdict]] = []
    owed = 0.0
    now = 0.0
    while now < seconds:
        now += read_every
        owed += per_second * read_every
        while owed >= 1:
            owed -= 1
            verdicts.append((now, limiter.check(now)))
    return verdicts


@pytest.mark.parametrize(
    ("per_second", "read_every"),
    [(190, 0.05), (190, 0.3), (1000, 0.01), (1000, 0.25), (60, 0.1), (55, 1.0)],
)
def test_limiter_the_default_closes_a_flood_after_10_s_whatever_the_gaps(
    per_second: float, read_every: float
) -> None:
    """
    SPEC 5.3 at the defaults (50/s, burst 200, 10 s): a peer whose messages
    keep being dropped (some in every second) is closed 10 s after its first
    drop, with a handful of errors, however its frames are spaced; a gap of
    20 ms between drops does not end the run.
    """
    defaults = Settings()
    limiter = RateLimiter(
        defaults.rate, defaults.rate_period, defaults.rate_burst, defaults.flood_timeout, 0.0
    )
    verdicts = flood(limiter, per_second, read_every, 60.0)
    drops = [now for now, verdict in verdicts if verdict is not Verdict.PASS]
    closes = [now for now, verdict in verdicts if verdict is Verdict.CLOSE]
    warnings = [now for now, verdict in verdicts if verdict is Verdict.DROP_AND_WARN]
    assert closes, "never closed"
    assert closes[0] - drops[0] == pytest.approx(10.0, abs=max(read_every, 0.05) + 1e-9)
    assert len(warnings) == 1, warnings


def test_limiter_at_most_one_warning_a_second() -> None:
    limiter = RateLimiter(rate=50, period=1, burst=1, flood_timeout=10.0, now=0.0)
    verdicts = []
    # Bursts of 5 frames separated by pauses just over a second: each burst
    # is a new run of drops, and there are never two warnings in a second.
    for burst in range(8):
        now = burst * 1.05
        verdicts += [(now, limiter.check(now)) for _ in range(5)]
    warnings = [now for now, verdict in verdicts if verdict is Verdict.DROP_AND_WARN]
    assert len(warnings) == 8
    assert all(b - a >= 1.0 for a, b in itertools.pairwise(warnings))
    assert all(verdict is not Verdict.CLOSE for _, verdict in verdicts)


def test_limiter_a_quiet_second_ends_the_run() -> None:
    limiter = RateLimiter(rate=50, period=1, burst=1, flood_timeout=3.0, now=0.0)
    assert limiter.check(0.0) is Verdict.PASS
    assert limiter.check(0.001) is Verdict.DROP_AND_WARN
    # Drops every 0.9 s (after a message the refill lets through): one
    # run, closed 3 s after its first drop.
    for i in range(1, 4):
        now = 0.001 + 0.9 * i
        assert [limiter.check(now), limiter.check(now)] == [Verdict.PASS, Verdict.DROP]
    assert [limiter.check(3.001), limiter.check(3.001)] == [Verdict.PASS, Verdict.CLOSE]
    # The same peer after more than a second without a drop: a new run.
    limiter = RateLimiter(rate=50, period=1, burst=1, flood_timeout=3.0, now=0.0)
    assert limiter.check(0.0) is Verdict.PASS
    assert limiter.check(0.001) is Verdict.DROP_AND_WARN
    assert limiter.check(0.002) is Verdict.DROP
    assert limiter.check(1.1) is Verdict.PASS  # a token came back
    assert limiter.check(1.1) is Verdict.DROP_AND_WARN


# SPEC 1.4 step 7: what is held for a peer that does not read.


def test_send_buffer_counts_only_what_the_transport_could_not_write() -> None:
    buffer = SendBuffer(limit=1000)
    # The transport writes everything at once: nothing is held.
    assert all(buffer.add(600) for _ in range(100))
    assert buffer.held == 0
    buffer.pauseProducing()  # its buffer is full
    assert buffer.add(600) is True
    assert buffer.add(400) is True
    assert buffer.held == 1000
    assert buffer.add(1) is False
    # Written out: nothing is held any more.
    buffer.resumeProducing()
    assert buffer.held == 0
    assert buffer.add(5000) is True


def test_settings_max_send_buffer() -> None:
    assert Settings().max_send_buffer == 4 * 1024 * 1024
    with pytest.raises(ValueError, match="max_send_buffer"):
        Settings(max_send_buffer=0)


def test_send_buffer_over_a_real_transport() -> None:
    """
    Registered with a TCP transport (Twisted's `FileDescriptor` write
    buffer), the count follows what the transport holds: paused past its
    ``bufferSize``, resumed once it has written everything.
    """
    from twisted.internet.abstract import FileDescriptor

    class Stalled(FileDescriptor):
        written = 0
        accepting = True

        def writeSomeData(self, data: bytes) -> int:
            n = min(len(data), 1000) if self.accepting else 0
            self.written += n
            return n

        def startWriting(self) -> None:
            pass

        def stopWriting(self) -> None:
            pass

    transport = Stalled()
    transport.connected = True
    buffer = SendBuffer(limit=200_000)
    transport.registerProducer(buffer, True)
    transport.accepting = False
    chunk = b"x" * 60_000
    transport.write(chunk)
    assert not buffer.full
    transport.write(chunk)  # 120 KB: past the transport's 64 KiB
    assert buffer.full
    assert buffer.add(len(chunk))
    transport.write(chunk)
    assert buffer.add(len(chunk))
    transport.write(chunk)
    assert buffer.add(len(chunk))
    transport.write(chunk)
    assert not buffer.add(len(chunk))  # 240 KB written since it was full
    transport.accepting = True
    while transport.dataBuffer or transport._tempDataLen:
        transport.doWrite()
    assert not buffer.full and buffer.held == 0


# SPEC 5.3: live.

FLOOD_SETTINGS = Settings(rate=5, rate_period=1, rate_burst=10, flood_timeout=1.0)


@pytest_twisted.ensureDeferred
async def test_a_flood_delivers_the_burst_and_warns_a_few_times(make_server: MakeServer) -> None:
    server = await make_server(settings=FLOOD_SETTINGS)

    def scenario() -> None:
        a, b = join_pair(server)
        for i in range(100):
            a.send("n", [b.peer_id], i)
        # Exactly the burst reaches b, in order.
        for i in range(10):
            assert b.recv() == relayed("n", i, a, [b.peer_id])
        # The sender hears about it a few times, not once per frame.
        errors = []
        while True:
            try:
                message = a.recv(timeout=0.5)
            except TimeoutError:
                break
            errors.append(message)
        assert all(is_rate_limited(m, a.peer_id) for m in errors), errors
        assert 1 <= len(errors) <= 3, errors
        # The drops are never delivered late: after a pause the next
        # message is the next thing b sees.
        time.sleep(0.5)
        a.send("after", [b.peer_id])
        assert b.recv() == relayed("after", None, a, [b.peer_id])
        assert b.nothing_within(0.3)
        # The sender's connection still works, both ways.
        b.send("back", [a.peer_id])
        assert a.recv() == relayed("back", None, b, [a.peer_id])
        a.close()
        assert b.recv() == left(a.peer_id)
        b.close()

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_ping_frames_count_against_the_limit(make_server: MakeServer) -> None:
    server = await make_server(settings=FLOOD_SETTINGS)

    def scenario() -> None:
        a, b = join_pair(server)
        for _ in range(30):
            a.send_raw("ping")
        pongs = 0
        errors = []
        while True:
            try:
                frame = a.recv_raw(timeout=0.5)
            except TimeoutError:
                break
            if frame == "pong":
                pongs += 1
            else:
                errors.append(json.loads(frame))
        assert pongs == 10
        assert len(errors) >= 1 and all(is_rate_limited(m, a.peer_id) for m in errors), errors
        # Pings and messages share one bucket: after 6 pings, 4 messages pass.
        time.sleep(2.0)  # the bucket is full again
        for _ in range(6):
            a.send_raw("ping")
        for i in range(10):
            a.send("n", [b.peer_id], i)
        for i in range(4):
            assert b.recv() == relayed("n", i, a, [b.peer_id])
        assert b.nothing_within(0.3)
        a.close()
        b.close()

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_a_peer_that_pauses_recovers(make_server: MakeServer) -> None:
    server = await make_server(settings=FLOOD_SETTINGS)

    def scenario() -> None:
        a, b = join_pair(server)
        for i in range(50):
            a.send("n", [b.peer_id], i)
        for i in range(10):
            assert b.recv() == relayed("n", i, a, [b.peer_id])
        assert is_rate_limited(a.recv(), a.peer_id)
        time.sleep(1.05)  # 5 tokens back
        for i in range(5):
            a.send("again", [b.peer_id], i)
        for i in range(5):
            assert b.recv() == relayed("again", i, a, [b.peer_id])
        # No error for any of those: the next thing a gets is b's message.
        assert a.nothing_within(0.2)
        b.send("back", [a.peer_id])
        assert a.recv() == relayed("back", None, b, [a.peer_id])
        close_both(a, b)

    await deferToThread(scenario)


def close_both(a: StrictClient, b: StrictClient) -> None:
    a.close()
    b.close()


@pytest_twisted.ensureDeferred
async def test_a_peer_that_keeps_flooding_is_closed_with_1008(make_server: MakeServer) -> None:
    server = await make_server(settings=FLOOD_SETTINGS)

    def scenario() -> float:
        a, b = join_pair(server)
        started = time.monotonic()
        code: int | None = -1
        # 100 frames a second (20 times the rate) until the server hangs up.
        while time.monotonic() - started < 4.0:
            try:
                a.send("n", [b.peer_id])
            except ConnectionClosed as e:
                code = None if e.rcvd is None else e.rcvd.code
                break
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        if code == -1:
            raise AssertionError("a peer flooding at 20 times its rate for 4 s was not closed")
        assert code == 1008
        # b got the burst and what the refills let through, then left.
        while (message := b.recv()) != left(a.peer_id):
            assert message["event"] == "n" and message["from"] == a.peer_id, message
        b.close()
        return elapsed

    elapsed = await deferToThread(scenario)
    # Closed about flood_timeout after the flood began (plus the burst's time).
    assert 0.9 <= elapsed < 4.5, elapsed


# SPEC 1.4 step 6: keepalive.


@pytest_twisted.ensureDeferred
async def test_authenticated_carries_the_keepalive_settings(make_server: MakeServer) -> None:
    server = await make_server(
        settings=Settings(ping_interval=7.5, ping_timeout=3.0, idle_timeout=120.0)
    )

    def scenario() -> None:
        a = join_strict(server.socket_url("r"))
        data = a.authenticated["data"]
        assert data["ping_interval"] == 7.5
        assert data["ping_timeout"] == 3.0
        assert data["idle_timeout"] == 120.0
        a.close()

    await deferToThread(scenario)


def mute_client(server: LiveServer) -> tuple[str, float, list[int]]:
    """
    A client that joins ``r`` and then never answers a ping: its peer id,
    how long it stayed after joining, and the opcodes it received.
    """
    raw = RawClient.connect(server.base, "/socket/r/")
    authenticated = raw.recv_json()
    assert authenticated["event"] == "authenticated"
    started = time.monotonic()
    opcodes = []
    while (frame := raw.recv_frame(timeout=5)) is not None:
        opcodes.append(frame[0])
    raw.sock.close()
    return authenticated["data"]["peer_id"], time.monotonic() - started, opcodes


def answering_client(server: LiveServer, seconds: float) -> None:
    """
    A `websockets` client (it answers pings by itself) that joins ``r``,
    stays `seconds`, and checks that its connection still works.
    """
    b = join_strict(server.socket_url("r"))
    time.sleep(seconds)
    b.send("still-here", [b.peer_id])
    while (message := b.recv())["event"] != "still-here":
        assert message["event"] in ("joined", "left"), message
    b.close()


async def check_keepalive(server: LiveServer, stay: float) -> tuple[float, list[int]]:
    """
    A mute client and an answering one join alongside a watcher; the mute
    one must be dropped (the watcher sees it leave), the other must stay.
    """
    watcher = await deferToThread(join_strict, server.socket_url("r"))
    mute_done = deferToThread(mute_client, server)
    await deferToThread(answering_client, server, stay)
    mute_id, elapsed, opcodes = await mute_done

    def watch() -> None:
        while (message := watcher.recv()) != left(mute_id):
            assert message["event"] in ("joined", "left"), message
        watcher.close()

    await deferToThread(watch)
    assert OP_PING in opcodes, opcodes
    return elapsed, opcodes


@pytest_twisted.ensureDeferred
async def test_a_client_that_never_answers_pings_is_dropped(make_server: MakeServer) -> None:
    server = await make_server(settings=Settings(ping_interval=1, ping_timeout=1, resume_window=0))
    elapsed, _ = await check_keepalive(server, stay=2.5)
    # Pinged after about a second, dropped about a second later.
    assert 0.9 <= elapsed < 4.6, elapsed


@pytest_twisted.ensureDeferred
async def test_sub_second_keepalive(make_server: MakeServer) -> None:
    """
    The settings take fractions of a second (the plugin's options are
    seconds as floats): a healthy client must not be dropped by them.
    """
    server = await make_server(
        settings=Settings(ping_interval=0.3, ping_timeout=0.3, resume_window=0)
    )
    elapsed, _ = await check_keepalive(server, stay=1.5)
    assert 0.4 <= elapsed < 3.3, elapsed


@pytest_twisted.ensureDeferred
async def test_pings_come_every_ping_interval(make_server: MakeServer) -> None:
    """
    Pings are spaced by the interval, not sent as fast as the client answers.
    """
    interval = 0.25
    server = await make_server(settings=Settings(ping_interval=interval, ping_timeout=5))

    def scenario() -> int:
        raw = RawClient.connect(server.base, "/socket/r/")
        assert raw.recv_json()["event"] == "authenticated"
        started = time.monotonic()
        pings = 0
        while time.monotonic() - started < 2.0:
            frame = raw.recv_frame(timeout=1.0)
            assert frame is not None and frame[0] == OP_PING, frame
            pings += 1
            raw.send_frame(OP_PONG, frame[1])
        raw.drop()
        return pings

    pings = await deferToThread(scenario)
    assert 2.0 / interval - 3 <= pings <= 2.0 / interval + 2, pings


@pytest_twisted.ensureDeferred
async def test_pongs_count_as_traffic_for_the_idle_timeout(make_server: MakeServer) -> None:
    """
    SPEC 1.4 step 6: a client that sends nothing but answers the server's
    pings is not idle.  Observed: it stays (whether the pongs come from the
    `websockets` client or are sent by hand); a client that does not even
    answer pings is closed with 1000 at the idle timeout.
    """
    server = await make_server(
        settings=Settings(idle_timeout=0.8, ping_interval=0.2, ping_timeout=10)
    )

    def quiet_but_answering() -> None:
        a = join_strict(server.socket_url("one"))
        time.sleep(2.0)
        a.send("still-here", [a.peer_id])
        assert a.recv()["event"] == "still-here"
        a.close()

    def answering_by_hand() -> None:
        raw = RawClient.connect(server.base, "/socket/two/")
        assert raw.recv_json()["event"] == "authenticated"
        started = time.monotonic()
        while time.monotonic() - started < 2.0:
            frame = raw.recv_frame(timeout=1.0)
            assert frame is not None, "closed although it answered every ping"
            opcode, payload = frame
            assert opcode == OP_PING, frame
            raw.send_frame(OP_PONG, payload)
        raw.drop()

    def silent() -> tuple[float, list[tuple[int, bytes]]]:
        # From before the connection: on a busy machine "authenticated" may
        # reach this thread well after the server's idle clock started.
        started = time.monotonic()
        raw = RawClient.connect(server.base, "/socket/three/")
        assert raw.recv_json()["event"] == "authenticated"
        frames = []
        while (frame := raw.recv_frame(timeout=5)) is not None:
            frames.append(frame)
            if frame[0] == OP_CLOSE:
                break
        raw.drop()
        return time.monotonic() - started, frames

    done = [deferToThread(quiet_but_answering), deferToThread(answering_by_hand)]
    elapsed, frames = await deferToThread(silent)
    for d in done:
        await d
    assert frames and frames[-1][0] == OP_CLOSE, frames
    assert int.from_bytes(frames[-1][1][:2], "big") == 1000
    assert 0.7 <= elapsed < 3.6, elapsed


# SPEC 4: --max-connections.


@pytest_twisted.ensureDeferred
async def test_connections_beyond_the_cap_get_503(make_server: MakeServer) -> None:
    server = await make_server(settings=Settings(max_connections=2))
    factory = factory_of(server)

    def scenario() -> None:
        a = join_strict(server.socket_url("r"))
        b = join_strict(server.socket_url("other"))
        assert handshake_status(server.socket_url("r")) == 503
        assert handshake_status(server.socket_url("third")) == 503
        a.close()
        wait_until(lambda: factory.countConnections == 1)
        c = join_strict(server.socket_url("r"))
        assert c.authenticated["data"]["peers"] == []
        assert handshake_status(server.socket_url("r")) == 503
        close_both(b, c)

    await deferToThread(scenario)


# SPEC 4: --allowed-origin.


@pytest.mark.parametrize(
    "origin",
    ["https://good.example", "HTTPS://Good.Example", "https://good.example/", None],
)
@pytest_twisted.ensureDeferred
async def test_allowed_origins_accept(make_server: MakeServer, origin: str | None) -> None:
    server = await make_server(settings=Settings(allowed_origins=("https://good.example",)))

    def scenario() -> None:
        a = join_strict(server.socket_url("r"), origin=origin)
        assert a.authenticated["event"] == "authenticated"
        a.close()

    await deferToThread(scenario)


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://good.example",
        "https://good.example:8443",
        "https://good.example.evil.example",
        "null",
    ],
)
@pytest_twisted.ensureDeferred
async def test_other_origins_get_403(make_server: MakeServer, origin: str) -> None:
    server = await make_server(settings=Settings(allowed_origins=("https://good.example",)))
    status = await deferToThread(handshake_status, server.socket_url("r"), origin=origin)
    assert status == 403
    assert len(server.rooms) == 0


@pytest.mark.parametrize(
    "origin", ["https://anywhere.example", "null", "file://", "http://127.0.0.1:1"]
)
@pytest_twisted.ensureDeferred
async def test_any_origin_without_an_allow_list(make_server: MakeServer, origin: str) -> None:
    """
    SPEC 4: ``--allowed-origin`` defaults to any.  Browsers send ``null``
    for pages opened from files and for sandboxed frames.
    """
    server = await make_server()

    def scenario() -> None:
        a = join_strict(server.socket_url("r"), origin=origin)
        a.close()

    await deferToThread(scenario)


class NamedPeer(Peer):
    """A peer that needs ``?name=``: 401 without it."""

    def parse_request(self, request: ConnectionRequest) -> Any:
        _, metadata, room = super().parse_request(request)
        return {"name": request.params.get("name")}, metadata, room

    def on_init(self, context: PeerContext, auth: AuthData, options: Any) -> Any:
        if not auth.credentials["name"]:
            raise Unauthorized("no name")


@pytest_twisted.ensureDeferred
async def test_401_and_404_come_before_403(make_server: MakeServer) -> None:
    good = ("https://good.example",)
    server = await make_server(
        peer_class=NamedPeer, auto_rooms=False, settings=Settings(allowed_origins=good)
    )
    server.rooms.start_room("lobby")
    evil = "https://evil.example"
    secret = "a secret long enough for the HS256 algorithm"
    with_token = await make_server(
        settings=Settings(allowed_origins=good, token_verifier=TokenVerifier.from_secret(secret))
    )
    token = jwt.encode({"room": "*", "sub": "ann"}, secret, algorithm="HS256")

    def scenario() -> None:
        # 401 before 403.
        assert handshake_status(server.socket_url("lobby"), origin=evil) == 401
        assert handshake_status(with_token.socket_url("r"), origin=evil) == 401
        assert handshake_status(with_token.socket_url("r", "token=bad"), origin=evil) == 401
        # 404 before 403.
        assert handshake_status(server.socket_url("missing", "name=x"), origin=evil) == 404
        # Then 403.
        assert handshake_status(server.socket_url("lobby", "name=x"), origin=evil) == 403
        assert handshake_status(with_token.socket_url("r", f"token={token}"), origin=evil) == 403
        # And with a good origin, all is well.
        a = join_strict(server.socket_url("lobby", "name=x"), origin=good[0])
        b = join_strict(with_token.socket_url("r", f"token={token}"), origin=good[0])
        close_both(a, b)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_403_comes_before_503(make_server: MakeServer) -> None:
    server = await make_server(
        settings=Settings(allowed_origins=("https://good.example",), max_connections=1)
    )

    def scenario() -> None:
        a = join_strict(server.socket_url("r"), origin="https://good.example")
        assert handshake_status(server.socket_url("r"), origin="https://evil.example") == 403
        assert handshake_status(server.socket_url("r"), origin="https://good.example") == 503
        a.close()

    await deferToThread(scenario)


# SPEC 4: --handshake-timeout.

HANDSHAKE_TIMEOUT = 0.5


def dropped_within(sock: Any, seconds: float) -> float | None:
    """
    How long until the server ends the connection on `sock` (it must send
    nothing first but its end); None if it is still open after `seconds`.
    """
    started = time.monotonic()
    sock.setblocking(False)
    try:
        while time.monotonic() - started < seconds:
            readable, _, _ = select.select([sock], [], [], 0.02)
            if readable:
                try:
                    data = sock.recv(4096)
                except OSError:
                    return time.monotonic() - started
                assert data == b"", data
                return time.monotonic() - started
        return None
    finally:
        sock.close()


@pytest_twisted.ensureDeferred
async def test_handshake_timeout(make_server: MakeServer) -> None:
    server = await make_server(settings=Settings(handshake_timeout=HANDSHAKE_TIMEOUT))

    def silent() -> float | None:
        # Opens TCP and sends nothing.
        return dropped_within(tcp_connect(server.base), 3.0)

    def partial() -> float | None:
        # Sends half a request line, then nothing.
        sock = tcp_connect(server.base)
        sock.sendall(b"GET /socket/r/ HT")
        return dropped_within(sock, 3.0)

    def dripping() -> tuple[float | None, int]:
        # One byte every 0.1 s: it would take seconds to finish.
        request = upgrade_request(server.base, "/socket/r/")
        sock = tcp_connect(server.base)
        started = time.monotonic()
        sent = 0
        try:
            for byte in request:
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable:
                    data = sock.recv(4096)
                    assert data == b"", data
                    return time.monotonic() - started, sent
                if time.monotonic() - started > 3.0:
                    return None, sent
                sock.sendall(bytes([byte]))
                sent += 1
        except OSError:
            return time.monotonic() - started, sent
        finally:
            sock.close()
        return None, sent

    def normal() -> None:
        a = join_strict(server.socket_url("r"))
        time.sleep(2 * HANDSHAKE_TIMEOUT)
        a.send("still-here", [a.peer_id])
        assert a.recv()["event"] == "still-here"
        a.close()

    silent_done = deferToThread(silent)
    partial_done = deferToThread(partial)
    dripping_done = deferToThread(dripping)
    await deferToThread(normal)
    silent_after = await silent_done
    partial_after = await partial_done
    dripping_after, sent = await dripping_done
    request_length = len(upgrade_request(server.base, "/socket/r/"))
    assert silent_after is not None, "a silent connection was kept for 3 s"
    assert partial_after is not None, "a half-sent request line was kept for 3 s"
    assert dripping_after is not None, f"a dripping request was kept for 3 s ({sent} bytes)"
    assert silent_after < 2 * HANDSHAKE_TIMEOUT + 0.3, silent_after
    assert partial_after < 2 * HANDSHAKE_TIMEOUT + 0.3, partial_after
    assert dripping_after < 2 * HANDSHAKE_TIMEOUT + 0.3, dripping_after
    assert sent < request_length


@pytest_twisted.ensureDeferred
async def test_handshake_timeout_covers_a_slow_on_init(make_server: MakeServer) -> None:
    """
    A connection whose upgrade is held up by the server's own callbacks is
    dropped at the deadline too (Autobahn's part of the handshake).
    """

    class SlowPeer(NamedPeer):
        async def on_init(self, context: PeerContext, auth: AuthData, options: Any) -> Any:
            if auth.credentials["name"] == ["slow"]:
                await sleep(2.0)

    server = await make_server(
        peer_class=SlowPeer, settings=Settings(handshake_timeout=HANDSHAKE_TIMEOUT)
    )

    def scenario() -> float | None:
        sock = tcp_connect(server.base)
        sock.sendall(upgrade_request(server.base, "/socket/r/?name=slow"))
        return dropped_within(sock, 3.0)

    after = await deferToThread(scenario)
    assert after is not None and after < 2 * HANDSHAKE_TIMEOUT + 0.3, after
    # The room never saw it.
    await sleep(2.0)
    assert all(not room.peers for room in server.rooms)


@pytest_twisted.ensureDeferred
async def test_a_handshake_within_the_timeout_is_not_dropped(make_server: MakeServer) -> None:
    """
    A peer whose `on_init` takes a fifth of the handshake timeout gets in,
    every time (eight times in a row, spread over more than a second).
    """

    class SlowishPeer(NamedPeer):
        async def on_init(self, context: PeerContext, auth: AuthData, options: Any) -> Any:
            await sleep(HANDSHAKE_TIMEOUT / 5)

    server = await make_server(
        peer_class=SlowishPeer, settings=Settings(handshake_timeout=HANDSHAKE_TIMEOUT)
    )

    def scenario() -> list[str]:
        failures = []
        for i in range(8):
            try:
                client = join_strict(server.socket_url("r", f"name={i}"))
            except Exception as e:
                failures.append(f"{i}: {e!r}")
            else:
                client.close()
            time.sleep(0.07)
        return failures

    failures = await deferToThread(scenario)
    assert failures == []
