"""
The metrics and the events seam, on a fake clock; the options that turn
them on; the metrics resource of an embedded service.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import pytest_twisted
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from twisted_signal import Rooms, SignalingService
from twisted_signal.events import NO_EVENTS, Events, combine
from twisted_signal.message import Message
from twisted_signal.metrics import MAX_LABELS, Metrics
from twisted_signal.room import Room
from twisted_signal.tap import Options, makeService

from .support import LiveServer, sleep
from .support.room import FakeConnection

pytestmark = pytest.mark.memory


def samples(metrics: Metrics) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics.text().decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found


class Recorder(Events):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def room_started(self, room: str) -> None:
        self.seen.append(("room_started", room))

    def peer_joined(self, room: str, peer_id: str) -> None:
        self.seen.append(("peer_joined", room, peer_id))

    def peer_left(self, room: str, peer_id: str) -> None:
        self.seen.append(("peer_left", room, peer_id))

    def room_finished(self, room: str) -> None:
        self.seen.append(("room_finished", room))

    def join_refused(self, room: str, reason: str) -> None:
        self.seen.append(("join_refused", room, reason))


class EventsTests(SynchronousTestCase):
    def test_combine(self) -> None:
        a, b = Recorder(), Recorder()
        assert combine() is NO_EVENTS and combine(None) is NO_EVENTS
        assert combine(a, None) is a
        both = combine(a, b)
        both.room_started("r")
        both.forwarded(1.0)  # overridden by neither: a no-op
        assert a.seen == b.seen == [("room_started", "r")]

    def test_a_room_reports_its_lifecycle_in_order(self) -> None:
        clock = Clock()
        recorder = Recorder()
        rooms = Rooms(lambda name: Room(name, clock=clock, max_peers=1), clock=clock)
        rooms.events = recorder
        rooms.startService()
        room = rooms.get_or_create("r")
        assert room is not None
        room.join(FakeConnection("p1").handle())
        room.join(FakeConnection("p2").handle())
        room.leave("p1")
        assert recorder.seen == [
            ("room_started", "r"),
            ("peer_joined", "r", "p1"),
            ("join_refused", "r", "room_is_full"),
            ("peer_left", "r", "p1"),
            ("room_finished", "r"),
        ]

    def test_setting_the_events_reaches_rooms_already_there(self) -> None:
        rooms = Rooms(None, clock=Clock())
        room = rooms.start_room("r")
        recorder = Recorder()
        rooms.events = recorder
        assert room.events is recorder


class MetricsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.rooms = Rooms(lambda name: Room(name, clock=self.clock), clock=self.clock)
        self.metrics = Metrics(self.rooms, clock=self.clock)
        self.rooms.events = self.metrics
        self.rooms.startService()

    def test_gauges_follow_the_rooms(self) -> None:
        room = self.rooms.get_or_create("r")
        assert room is not None
        room.join(FakeConnection("p1").handle())
        room.join(FakeConnection("p2").handle())
        found = samples(self.metrics)
        assert found["rtcsignal_rooms"] == 1 and found["rtcsignal_peers"] == 2
        assert found["rtcsignal_rooms_started_total"] == 1

    def test_forwarding_is_counted_and_timed(self) -> None:
        room = self.rooms.get_or_create("r")
        assert room is not None
        room.join(FakeConnection("p1").handle())
        room.join(FakeConnection("p2").handle())
        self.clock.advance(10)
        room.submit(Message("offer", None, "p1", "all"), received=self.clock.seconds() - 0.003)
        room.submit(Message("offer", None, "p1", ("nobody",)), received=self.clock.seconds())
        found = samples(self.metrics)
        assert found["rtcsignal_messages_forwarded_total"] == 1
        assert found["rtcsignal_forward_seconds_count"] == 1
        assert found["rtcsignal_forward_seconds_sum"] == pytest.approx(0.003)
        assert found["rtcsignal_forward_seconds_bucket{le=0.0025}"] == 0
        assert found["rtcsignal_forward_seconds_bucket{le=0.005}"] == 1
        assert found["rtcsignal_forward_seconds_bucket{le=+Inf}"] == 1
        assert found["rtcsignal_errors_total{description=No such peer}"] == 1

    def test_the_latency_includes_a_slow_on_forward_and_the_wait_behind_it(self) -> None:
        from twisted.internet.task import deferLater

        clock = self.clock

        class Slow(Room):
            def on_forward(self, message: Message) -> Any:
                if message.event != "slow":
                    return message
                return deferLater(clock, 0.2, lambda: message)

        room = Slow("slow", clock=clock)
        self.rooms.add(room)
        room.join(FakeConnection("p1").handle())
        room.join(FakeConnection("p2").handle())
        now = clock.seconds()
        room.submit(Message("slow", None, "p1", "all"), received=now)
        room.submit(Message("fast", None, "p1", "all"), received=now)
        assert samples(self.metrics)["rtcsignal_forward_seconds_count"] == 0
        clock.advance(0.2)
        found = samples(self.metrics)
        assert found["rtcsignal_forward_seconds_count"] == 2
        assert found["rtcsignal_forward_seconds_sum"] == pytest.approx(0.4)
        assert found["rtcsignal_forward_seconds_bucket{le=0.1}"] == 0
        assert found["rtcsignal_forward_seconds_bucket{le=0.25}"] == 2

    def test_labelled_counters_start_at_zero_and_are_capped(self) -> None:
        found = samples(self.metrics)
        assert found["rtcsignal_joins_refused_total{reason=room_is_full}"] == 0
        assert found["rtcsignal_handshake_rejections_total{status=401}"] == 0
        for i in range(MAX_LABELS + 10):
            self.metrics.join_refused("r", f"reason{i}")
        self.metrics.handshake_rejected(401)
        self.metrics.closed(None)
        self.metrics.closed(4000)
        self.metrics.resume("resumed")
        self.metrics.rate_limited()
        self.metrics.connected()
        found = samples(self.metrics)
        reasons = [k for k in found if k.startswith("rtcsignal_joins_refused_total")]
        assert len(reasons) == MAX_LABELS + 1  # and "other"
        assert found["rtcsignal_joins_refused_total{reason=other}"] > 0
        assert found["rtcsignal_handshake_rejections_total{status=401}"] == 1
        assert found["rtcsignal_closes_total{code=1006}"] == 1
        assert found["rtcsignal_closes_total{code=4000}"] == 1
        assert found["rtcsignal_resumes_total{outcome=resumed}"] == 1
        assert found["rtcsignal_rate_limited_total"] == 1
        assert found["rtcsignal_connections_total"] == 1
        assert "process_cpu_seconds_total" in found

    def test_two_servers_in_one_process_do_not_collide(self) -> None:
        other = Metrics(Rooms(None, clock=self.clock), clock=self.clock)
        other.connected()
        assert samples(other)["rtcsignal_connections_total"] == 1
        assert samples(self.metrics)["rtcsignal_connections_total"] == 0

    def test_the_resource_answers_the_text_format(self) -> None:
        request = DummyRequest([b""])
        body = self.metrics.resource.render_GET(request)  # type: ignore[arg-type]
        assert b"rtcsignal_peers 0.0" in body
        content_type = request.responseHeaders.getRawHeaders(b"content-type") or [b""]
        assert content_type[0].startswith(b"text/plain")


class ServiceTests(SynchronousTestCase):
    def test_no_metrics_unless_asked(self) -> None:
        assert SignalingService(Rooms(None)).metrics is None

    def test_an_embedded_service_gives_its_metrics(self) -> None:
        signaling = SignalingService(Rooms(None), metrics=True)
        assert signaling.metrics is not None
        assert signaling.rooms.events is signaling.metrics
        assert signaling.resource.factory.events is signaling.metrics


def parse(*args: str) -> Options:
    options = Options()
    options.parseOptions(list(args))
    return options


class OptionTests(SynchronousTestCase):
    def test_defaults_are_off(self) -> None:
        options = parse()
        assert options["metrics-endpoint"] is None and options["webhook"] is None
        service = makeService(options)
        assert service.metrics is None and service.webhooks is None  # type: ignore[attr-defined]

    def test_metrics_endpoint_and_webhook(self) -> None:
        options = parse(
            "--metrics-endpoint",
            "tcp:0:interface=127.0.0.1",
            "--webhook",
            "https://hooks.example/rtc",
            "--webhook-secret",
            "s",
        )
        service = makeService(options)
        assert service.metrics is not None  # type: ignore[attr-defined]
        assert service.webhooks.url == "https://hooks.example/rtc"  # type: ignore[attr-defined]

    def test_the_webhook_secret_may_come_from_a_file(self) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "secret")
            with open(path, "w") as f:
                f.write("from a file\n")
            options = parse("--webhook", "http://127.0.0.1/h", "--webhook-secret-file", path)
        assert options["webhook-secret"] == "from a file"

    def test_bad_values_are_usage_errors(self) -> None:
        for args, message in [
            (["--metrics-endpoint", "nonsense:1"], "--metrics-endpoint"),
            (["--webhook", "ftp://x/"], "--webhook"),
            (["--webhook", "http://x/"], "needs --webhook-secret"),
            (["--webhook-secret", "s"], "needs --webhook"),
            (
                ["--webhook", "http://x/", "--webhook-secret", "a", "--webhook-secret-file", "f"],
                "not both",
            ),
        ]:
            with pytest.raises(usage.UsageError, match=message):
                parse(*args)

    def test_help_lists_the_options(self) -> None:
        text = str(Options())
        for option in (
            "--metrics-endpoint",
            "--webhook",
            "--webhook-secret",
            "--webhook-secret-file",
        ):
            assert option in text


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_resumes_and_closes_are_counted_live(
    make_server: Callable[..., Awaitable[LiveServer]],
) -> None:
    from twisted.internet import reactor

    from twisted_signal import Settings

    from .support import join_quietly
    from .support.resume import lose_and_wait, resume, token_of

    server = await make_server(settings=Settings(resume_window=0.5))
    metrics = Metrics(server.rooms, clock=reactor, process_metrics=False)
    server.rooms.events = metrics
    server.service.resource.factory.events = metrics

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        a_id = a.peer_id
        lose_and_wait(server, a)
        a2 = resume(server, "r", token_of(a))
        assert a2.peer_id == a_id
        lose_and_wait(server, a2)
        time.sleep(1.0)  # the window passes
        b.close()

    await deferToThread(scenario)
    await sleep(0.3)
    found = samples(metrics)
    assert found["rtcsignal_resumes_total{outcome=held}"] == 2
    assert found["rtcsignal_resumes_total{outcome=resumed}"] == 1
    assert found["rtcsignal_resumes_total{outcome=expired}"] == 1
    assert found["rtcsignal_connections_total"] == 3
    assert found["rtcsignal_closes_total{code=1006}"] == 2
    assert found["rtcsignal_peers"] == 0
