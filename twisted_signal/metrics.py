"""
Prometheus metrics (SPEC 5.5): an `Events` observer that counts in plain
ints, and a collector that turns them into metric families only when
Prometheus scrapes.  The hot path (`forwarded`) is two additions, a clock
read and a bisect; nothing is allocated per message.

Each `Metrics` has its own `CollectorRegistry` (with the process, platform
and garbage-collector metrics `prometheus_client` offers), so several
servers in one process never collide.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    CollectorRegistry,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from twisted.web.resource import IResource, Resource

from .events import Events
from .headers import secure_response

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.web.server import Request

    from .rooms import Rooms

__all__ = ["FORWARD_BUCKETS", "Metrics", "MetricsResource", "WebhookStats"]

FORWARD_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
"""Upper bounds (seconds) of the `rtcsignal_forward_seconds` buckets."""

#: Distinct label values kept per labelled counter; the rest count as "other"
#: (a `Refused` reason or a client's close code must not grow the series
#: without bound).
MAX_LABELS = 64


class WebhookStats(Protocol):
    """What the metrics read from a webhook sender at scrape time."""

    @property
    def queued(self) -> int: ...

    @property
    def deliveries(self) -> dict[str, int]: ...


class _Tally:
    """
    Counts by label value, with at most `MAX_LABELS` distinct values.
    """

    __slots__ = ("counts",)

    def __init__(self, *known: str) -> None:
        self.counts: dict[str, int] = dict.fromkeys(known, 0)

    def add(self, label: str) -> None:
        counts = self.counts
        if label in counts:
            counts[label] += 1
        elif len(counts) < MAX_LABELS:
            counts[label] = 1
        else:
            counts["other"] = counts.get("other", 0) + 1


class Metrics(Events):
    """
    The server's metrics.  Give it to the server as (part of) its events;
    serve `resource` (or `registry` with any exporter) for Prometheus.
    """

    def __init__(
        self,
        rooms: Rooms,
        *,
        clock: IReactorTime,
        webhooks: WebhookStats | None = None,
        process_metrics: bool = True,
    ) -> None:
        self._rooms = rooms
        self._clock = clock
        self.webhooks = webhooks
        self.connections = 0
        self.forwarded_count = 0
        self.rate_limited_count = 0
        self.rooms_started = 0
        self.errors = _Tally(
            "Invalid JSON", "Invalid message", "No such peer", "Could not join room", "Room closed"
        )
        self.refusals = _Tally("room_is_full")
        self.rejections = _Tally("400", "401", "403", "404", "503")
        self.closes = _Tally("1000", "1001", "1006", "1008", "1009")
        self.resumes = _Tally("held", "resumed", "expired", "refused")
        self.handovers = _Tally("sent", "received", "fallback", "refused")
        self._bounds = FORWARD_BUCKETS
        self._buckets = [0] * (len(FORWARD_BUCKETS) + 1)
        self._latency_sum = 0.0
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(self))
        if process_metrics:
            ProcessCollector(registry=self.registry)
            for collector in (PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(_Borrowed(collector))
        self.resource = MetricsResource(self.registry)
        """A `twisted.web` resource answering with the metrics text."""

    # Events.

    def forwarded(self, received: float) -> None:
        seconds = self._clock.seconds() - received
        self.forwarded_count += 1
        self._buckets[bisect_left(self._bounds, seconds)] += 1
        self._latency_sum += seconds

    def connected(self) -> None:
        self.connections += 1

    def room_started(self, room: str) -> None:
        self.rooms_started += 1

    def error_sent(self, description: str) -> None:
        self.errors.add(description)

    def join_refused(self, room: str, reason: str) -> None:
        self.refusals.add(reason)

    def handshake_rejected(self, status: int) -> None:
        self.rejections.add(str(status))

    def closed(self, code: int | None) -> None:
        self.closes.add("1006" if code is None else str(code))

    def rate_limited(self) -> None:
        self.rate_limited_count += 1

    def resume(self, outcome: str) -> None:
        self.resumes.add(outcome)

    def handover(self, outcome: str) -> None:
        self.handovers.add(outcome)

    # Reading.

    def text(self) -> bytes:
        """The metrics in the Prometheus text format."""
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        rooms = list(self._rooms)
        yield _gauge("rtcsignal_rooms", "Rooms running.", len(rooms))
        yield _gauge("rtcsignal_peers", "Peers in rooms.", sum(len(r.peers) for r in rooms))
        yield _counter("rtcsignal_connections", "WebSocket upgrades accepted.", self.connections)
        yield _counter("rtcsignal_rooms_started", "Rooms started.", self.rooms_started)
        yield _counter(
            "rtcsignal_messages_forwarded",
            "Client messages delivered to their addressees.",
            self.forwarded_count,
        )
        yield _counter(
            "rtcsignal_rate_limited",
            "Client messages dropped by the per-peer rate limit.",
            self.rate_limited_count,
        )
        yield _labelled("rtcsignal_errors", "Errors sent to clients.", "description", self.errors)
        yield _labelled(
            "rtcsignal_joins_refused", "Peers refused by a room.", "reason", self.refusals
        )
        yield _labelled(
            "rtcsignal_handshake_rejections",
            "WebSocket upgrades answered with an HTTP error.",
            "status",
            self.rejections,
        )
        yield _labelled(
            "rtcsignal_closes", "Peer connections closed, by close code.", "code", self.closes
        )
        yield _labelled(
            "rtcsignal_resumes",
            "Peers held for resume and what became of them.",
            "outcome",
            self.resumes,
        )
        yield _labelled(
            "rtcsignal_handovers",
            "Connections handed between the nodes of one host (--handover), by outcome.",
            "outcome",
            self.handovers,
        )
        cumulative, buckets = 0, []
        for bound, count in zip((*self._bounds, float("inf")), self._buckets, strict=True):
            cumulative += count
            buckets.append((_bound(bound), cumulative))
        histogram = HistogramMetricFamily(
            "rtcsignal_forward_seconds",
            "From a client's frame arriving to its relayed frames being written.",
            buckets=buckets,
            sum_value=self._latency_sum,
        )
        yield histogram
        webhooks = self.webhooks
        if webhooks is not None:
            yield _gauge(
                "rtcsignal_webhook_queue_length", "Webhook events waiting.", webhooks.queued
            )
            yield _labelled(
                "rtcsignal_webhook_deliveries",
                "Webhook delivery attempts and events, by outcome.",
                "outcome",
                webhooks.deliveries,
            )


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _gauge(name: str, doc: str, value: float) -> Metric:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> Metric:
    return CounterMetricFamily(name, doc, value=value)


def _labelled(name: str, doc: str, label: str, counts: _Tally | dict[str, int]) -> Metric:
    family = CounterMetricFamily(name, doc, labels=[label])
    items = counts.counts if isinstance(counts, _Tally) else counts
    for value, count in list(items.items()):
        family.add_metric([value], count)
    return family


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self._metrics.collect()


class _Borrowed(Collector):
    """
    One of prometheus_client's process-wide collectors, in another registry.
    """

    def __init__(self, collector: Any) -> None:
        self._collector = collector

    def collect(self) -> Iterable[Metric]:
        return self._collector.collect()  # type: ignore[no-any-return]


class MetricsResource(Resource):
    """
    Answers GET with the registry's metrics in the Prometheus text format
    (without a thread: collecting is quick).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self._registry = registry

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return generate_latest(self._registry)


class _MetricsRoot(Resource):
    """
    The root of a metrics listener: its answers, 404s included, carry the
    same common headers as the pages (no Twisted version in ``Server``).
    """

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        secure_response(request)
        child: IResource = super().getChildWithDefault(path, request)
        return child


def metrics_root(metrics: Metrics) -> Resource:
    """
    The resource tree of a metrics listener: ``/metrics`` only.
    """
    root = _MetricsRoot()
    root.putChild(b"metrics", metrics.resource)
    return root
