"""
Webhooks on a fake clock with a fake HTTP client, then against real
receivers on loopback that answer 500 or hang.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal import Rooms
from twisted_signal.room import Room
from twisted_signal.webhooks import DELIVERY_HEADER, SIGNATURE_HEADER, Webhooks, sign

from .support import LiveServer, join
from .support.room import FakeConnection
from .support.webhook_receiver import Receiver, docs_verify

pytestmark = pytest.mark.memory

SECRET = b"s3cret"


class FakePost:
    """Records requests; each answers with the next of `answers` (default 204)."""

    def __init__(self, *answers: Any, default: Any = 204) -> None:
        self.answers = list(answers)
        self.default = default
        self.requests: list[tuple[str, bytes, dict[str, str]]] = []
        self.pending: list[Deferred[int]] = []

    def __call__(self, url: str, body: bytes, headers: dict[str, str]) -> Deferred[int]:
        self.requests.append((url, body, headers))
        answer = self.answers.pop(0) if self.answers else self.default
        if answer == "hang":
            d: Deferred[int] = Deferred()
            self.pending.append(d)
            return d
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)

    def events(self) -> list[tuple[str, str, str | None]]:
        return [
            (e["event"], e["room"], e["peer_id"])
            for e in (json.loads(b) for _, b, _ in self.requests)
        ]


def make(post: FakePost, clock: Clock | None = None, **kwargs: Any) -> tuple[Webhooks, Clock]:
    clock = clock or Clock()
    clock.advance(1_700_000_000)
    return Webhooks(
        "http://127.0.0.1:1/hook", SECRET, clock=clock, post=post, jitter=lambda: 1.0, **kwargs
    ), clock


class WebhookTests(SynchronousTestCase):
    def test_body_and_headers(self) -> None:
        post = FakePost()
        hooks, _ = make(post)
        hooks.peer_joined("demo", "p1")
        url, body, headers = post.requests[0]
        assert url == "http://127.0.0.1:1/hook"
        assert json.loads(body) == {
            "event": "peer_joined",
            "room": "demo",
            "peer_id": "p1",
            "at": 1_700_000_000,
        }
        assert headers[SIGNATURE_HEADER] == sign(SECRET, body)
        assert headers[SIGNATURE_HEADER].startswith("sha256=")
        assert headers["Content-Type"] == "application/json"
        assert len(headers[DELIVERY_HEADER]) == 36
        assert hooks.deliveries["delivered"] == 1 and hooks.queued == 0

    def test_signature_is_hmac_sha256_of_the_body(self) -> None:
        import hashlib
        import hmac

        body = b'{"event":"room_started"}'
        assert sign(SECRET, body) == "sha256=" + hmac.new(SECRET, body, hashlib.sha256).hexdigest()

    def test_the_docs_snippet_accepts_good_and_refuses_bad_deliveries(self) -> None:
        verify = docs_verify()
        body = json.dumps(
            {"event": "room_started", "room": "r", "peer_id": None, "at": time.time()}
        ).encode()
        assert verify(SECRET, body, sign(SECRET, body))["event"] == "room_started"
        with pytest.raises(ValueError, match="signature"):
            verify(b"other", body, sign(SECRET, body))
        with pytest.raises(ValueError, match="signature"):
            verify(SECRET, body + b" ", sign(SECRET, body))
        old = json.dumps({"event": "room_started", "at": time.time() - 3600}).encode()
        with pytest.raises(ValueError, match="old"):
            verify(SECRET, old, sign(SECRET, old))

    def test_retries_with_exponential_backoff_then_gives_up(self) -> None:
        post = FakePost(500, 500, ConnectionRefusedError(), 503, 500, 500)
        hooks, clock = make(post, max_attempts=6, backoff=1.0, max_backoff=60.0)
        with capturedLogs() as logs:
            hooks.room_started("demo")
            assert len(post.requests) == 1
            waits = []
            for _ in range(5):
                call = clock.getDelayedCalls()[0]
                waits.append(call.getTime() - clock.seconds())
                clock.advance(waits[-1])
        assert waits == [1.0, 2.0, 4.0, 8.0, 16.0]
        assert len(post.requests) == 6
        assert len({h[DELIVERY_HEADER] for _, _, h in post.requests}) == 1
        assert hooks.deliveries == {"delivered": 0, "retried": 5, "failed": 1, "dropped": 0}
        assert hooks.queued == 0 and not clock.getDelayedCalls()
        assert sum("gave up" in str(e.get("log_format")) for e in logs) == 1

    def test_jitter_draws_between_half_and_all_of_the_wait(self) -> None:
        post = FakePost(500)
        clock = Clock()
        hooks = Webhooks("http://x/", SECRET, clock=clock, post=post, jitter=lambda: 0.0)
        hooks.room_started("r")
        assert clock.getDelayedCalls()[0].getTime() == 0.5

    def test_a_hanging_attempt_times_out_and_is_retried(self) -> None:
        post = FakePost("hang")
        hooks, clock = make(post, timeout=5.0)
        hooks.room_started("demo")
        clock.advance(5.0)
        assert post.pending[0].called  # cancelled by the timeout
        assert hooks.deliveries["retried"] == 1
        clock.advance(1.0)
        assert hooks.deliveries["delivered"] == 1

    def test_order_is_kept_per_room_while_other_rooms_go_on(self) -> None:
        post = FakePost(500)
        hooks, clock = make(post)
        hooks.room_started("a")  # fails once
        hooks.peer_joined("a", "p1")
        hooks.room_started("b")
        hooks.peer_joined("b", "p2")
        assert post.events() == [
            ("room_started", "a", None),
            ("room_started", "b", None),
            ("peer_joined", "b", "p2"),
        ]
        clock.advance(1.0)
        assert post.events()[3:] == [("room_started", "a", None), ("peer_joined", "a", "p1")]

    def test_concurrency_is_bounded(self) -> None:
        post = FakePost(*["hang"] * 10)
        hooks, _ = make(post, concurrency=3)
        for i in range(10):
            hooks.room_started(f"r{i}")
        assert len(post.requests) == 3 and hooks.queued == 10
        post.pending[0].callback(204)
        assert len(post.requests) == 4 and hooks.queued == 9

    def test_a_full_queue_drops_counts_and_logs_once_per_burst(self) -> None:
        post = FakePost(*["hang"] * 5)
        hooks, _ = make(post, max_queue=5, concurrency=1)
        with capturedLogs() as logs:
            for i in range(1000):
                hooks.peer_joined("r", f"p{i}")
        assert hooks.queued == 5
        assert hooks.deliveries["dropped"] == 995
        warnings = [e for e in logs if e["log_level"] == LogLevel.warn]
        assert len(warnings) == 1 and "queue full" in warnings[0]["log_format"]

    def test_flush_waits_for_the_queue_and_gives_up_when_cancelled(self) -> None:
        post = FakePost("hang", "hang")
        hooks, clock = make(post)
        assert (
            self.successResultOf(Webhooks("http://x/", SECRET, clock=clock, post=post).flush())
            is None
        )
        hooks.room_started("a")
        hooks.room_started("b")
        flushed = hooks.flush()
        assert not flushed.called
        post.pending[0].callback(204)
        assert not flushed.called
        flushed.cancel()
        self.failureResultOf(flushed)
        assert hooks.queued == 0 and not clock.getDelayedCalls()

    def test_a_secret_is_required(self) -> None:
        with pytest.raises(ValueError):
            Webhooks("http://x/", "", clock=Clock())


class ChurnTests(SynchronousTestCase):
    def test_memory_stays_bounded_while_thousands_of_peers_churn_and_the_receiver_is_dead(
        self,
    ) -> None:
        """
        A dead receiver (every attempt refused) while 5000 peers join and
        leave rooms on a fake clock: the queue never passes its cap, the
        drops are counted, and nothing is left behind once time passes.
        """
        clock = Clock()
        post = FakePost(default=ConnectionRefusedError())
        hooks = Webhooks("http://x/", SECRET, clock=clock, post=post, max_queue=500)
        rooms = Rooms(lambda name: Room(name, clock=clock), max_peers=None, clock=clock)
        rooms.events = hooks
        rooms.startService()
        highest = 0
        for i in range(5000):
            room = rooms.get_or_create(f"room{i % 50}")
            assert room is not None
            room.join(FakeConnection(f"peer{i}").handle())
            room.leave(f"peer{i}")
            highest = max(highest, hooks.queued)
            clock.advance(0.01)
        assert highest <= 500
        assert hooks.deliveries["dropped"] > 5000
        assert len(hooks._rooms) <= 500
        for _ in range(200):
            clock.advance(60)
        assert hooks.queued == 0 and not hooks._rooms and not clock.getDelayedCalls()
        # Each round started a room, joined and left a peer, finished the room.
        assert hooks.deliveries["failed"] + hooks.deliveries["dropped"] == 4 * 5000
        assert hooks.deliveries["delivered"] == 0


# Against real receivers: signaling does not wait for them.


def abandon(hooks: Webhooks) -> None:
    flushed = hooks.flush()
    flushed.addErrback(lambda _: None)
    flushed.cancel()


async def relay_latency(server: LiveServer, count: int = 50) -> float:
    def measure() -> float:
        a = join(server.socket_url("lat"))
        b = join(server.socket_url("lat"))
        a.recv()  # joined
        worst = 0.0
        for i in range(count):
            started = time.monotonic()
            a.send("candidate", [b.peer_id], i)
            assert b.recv()["data"] == i
            worst = max(worst, time.monotonic() - started)
        a.close()
        b.close()
        return worst

    result: float = await deferToThread(measure)
    return result


@pytest.mark.loopback
@pytest.mark.parametrize("mode", ["hang", "fail"])
@pytest_twisted.ensureDeferred
async def test_a_hanging_or_failing_receiver_does_not_slow_signaling(mode: str) -> None:
    from twisted.internet import reactor

    from .support import start_server

    with Receiver(SECRET, mode=mode) as receiver:
        hooks = Webhooks(receiver.url, SECRET, clock=reactor, timeout=30.0, backoff=0.2)
        server = await start_server()
        server.rooms.events = hooks
        server.service.resource.factory.events = hooks
        try:
            worst = await relay_latency(server)
            # Generous: the machine is shared; a blocked relay would take
            # the receiver's 30 s timeout.
            assert worst < 2.0, worst
            assert receiver.requests >= 1
            if mode == "fail":
                assert hooks.deliveries["retried"] >= 1
        finally:
            await server.stop()
            abandon(hooks)


@pytest.mark.loopback
@pytest.mark.parametrize("http", ["HTTP/1.1", "HTTP/1.0"])
@pytest_twisted.ensureDeferred
async def test_back_to_back_deliveries_need_no_retry(http: str) -> None:
    """
    A receiver that closes every connection after its answer (HTTP/1.0)
    gets each delivery at the first attempt, as a keep-alive one does.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    with Receiver(SECRET, http=http) as receiver:
        hooks = Webhooks(receiver.url, SECRET, clock=reactor, backoff=5.0)
        try:
            for i in range(6):
                hooks.peer_joined("r", f"p{i}")
            deadline = time.monotonic() + 10
            while len(receiver.events) < 6 and time.monotonic() < deadline:
                await deferLater(reactor, 0.02, lambda: None)
            assert [e["peer_id"] for e in receiver.events] == [f"p{i}" for i in range(6)]
            assert hooks.deliveries["retried"] == 0, hooks.deliveries
        finally:
            abandon(hooks)


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_live_churn_against_a_dead_receiver_stays_bounded() -> None:
    from twisted.internet import reactor

    from .support import start_server
    from .support.twistd import free_port

    dead = f"http://127.0.0.1:{free_port()}/hook"  # nobody listens there
    hooks = Webhooks(dead, SECRET, clock=reactor, max_queue=40, backoff=5.0)
    server = await start_server()
    server.rooms.events = hooks
    highest = [0]

    def churn() -> None:
        from .support import in_reactor

        for i in range(60):
            client = join(server.socket_url(f"churn{i % 5}"))
            client.close()
            highest[0] = max(highest[0], in_reactor(lambda: hooks.queued))

    try:
        await deferToThread(churn)
        assert highest[0] <= 40
        assert hooks.deliveries["dropped"] > 0
    finally:
        await server.stop()
        abandon(hooks)


class ShutdownTests(SynchronousTestCase):
    def service(self, post: FakePost) -> tuple[Any, Webhooks, Clock]:
        from twisted_signal import SignalingService

        clock = Clock()
        hooks = Webhooks("http://x/", SECRET, clock=clock, post=post, jitter=lambda: 1.0)
        rooms = Rooms(None, clock=clock)
        rooms.start_room("r")
        signaling = SignalingService(rooms, webhooks=hooks, reactor=clock, shutdown_grace=10)
        signaling.startService()
        return signaling, hooks, clock

    def test_the_last_events_go_out_on_shutdown(self) -> None:
        post = FakePost()
        signaling, _, _ = self.service(post)
        room = signaling.rooms.get("r")
        connection = FakeConnection("p1", room, leave_on_close=True)
        room.join(connection.handle())
        self.successResultOf(signaling.stopService())
        assert post.events() == [
            ("room_started", "r", None),
            ("peer_joined", "r", "p1"),
            ("peer_left", "r", "p1"),
            ("room_finished", "r", None),
        ]

    def test_a_hanging_receiver_holds_shutdown_only_for_the_grace(self) -> None:
        post = FakePost("hang", default="hang")
        signaling, hooks, clock = self.service(post)
        stopped = signaling.stopService()
        self.assertNoResult(stopped)
        assert hooks.queued == 2
        clock.advance(10)
        self.successResultOf(stopped)
        assert hooks.queued == 0
