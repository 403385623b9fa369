"""
The signaling server as one service: its rooms, its resource tree, and the
endpoints it listens on.  This is what ``twistd rtcsignal`` runs, and what an
application embeds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote_to_bytes as unquote

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, datetimeToString
from twisted.web.server import Request, Site

from .bodies import BodyLimit, BoundedBody
from .events import Events, combine
from .headers import COMMON_HEADERS, secure_response
from .metrics import Metrics, metrics_root
from .peer import Peer
from .peerjs import PeerjsOptions
from .rooms import Rooms
from .settings import Settings
from .tls import TlsProfile, harden_endpoint
from .web import SignalingResource, access_log_formatter, redact
from .webhooks import Webhooks

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime
    from twisted.web.http_headers import Headers

__all__ = ["BACKLOG", "SignalingService", "SignalingSite", "with_backlog"]

BACKLOG = 1024
"""The listen backlog of ``tcp:`` and ``ssl:`` endpoints that set none
(Twisted's is 50: a burst of joins would stall on it)."""

_BACKLOG_PREFIXES = frozenset({"tcp", "tcp6", "ssl"})


def _split_endpoint(description: str) -> list[str]:
    """
    The ``:``-separated parts of an endpoint string (``\\:`` escapes a colon).
    """
    parts, current, escaped = [], "", False
    for character in description:
        if escaped:
            current += "\\" + character
            escaped = False
        elif character == "\\":
            escaped = True
        elif character == ":":
            parts.append(current)
            current = ""
        else:
            current += character
    parts.append(current + ("\\" if escaped else ""))
    return parts


def with_backlog(description: str, backlog: int = BACKLOG) -> str:
    """
    The endpoint string `description`, listening with `backlog` if it is a
    ``tcp:``, ``tcp6:`` or ``ssl:`` endpoint that sets no ``backlog=`` of
    its own (others, ``reuseport:`` whose default is already 1024 among
    them, are returned as they are).
    """
    prefix, *arguments = _split_endpoint(description)
    if prefix.strip().lower() not in _BACKLOG_PREFIXES or not arguments:
        return description
    if any(argument.partition("=")[0].strip() == "backlog" for argument in arguments):
        return description
    return f"{description}:backlog={backlog}"


class SignalingService(MultiService):
    """
    Rooms, plus a `SignalingSite` serving `resource` on each of `endpoints`
    (Twisted server endpoint strings; ``ssl:`` ones serve the TLS of
    `tls_profile`, a name of `twisted_signal.tls.PROFILES`).

    To mount the server in a site of your own, give no endpoints, add this
    service to your application and put `resource` where you want it::

        signaling = SignalingService(Rooms(lambda name: Room(name)))
        signaling.setServiceParent(application)
        root.putChild(b"rtc", signaling.resource)

    Stopping it is a graceful shutdown: ``/healthz`` turns 503, new peers are
    refused, the listeners close, every peer gets ``"Room closed"`` /
    ``"shutdown"`` and close 1001, and every ``on_leave``/``on_terminate`` runs;
    it takes at most `shutdown_grace` seconds.

    Observability: with `metrics` (or any `metrics_endpoints`), `metrics` is
    a `Metrics` whose `Metrics.resource` answers Prometheus (served at
    ``/metrics`` on each of `metrics_endpoints`, or mount it yourself);
    `webhooks` (a `Webhooks`) gets the lifecycle events, and so does
    `events`, an `Events` of your own.
    With an `admin_token`, ``resource`` also serves the admin API under
    ``/admin/`` to requests with ``Authorization: Bearer <admin_token>``.
    With `peerjs` options, it also serves the peerjs-compatible front
    (`twisted_signal.peerjs`) at their path.
    """

    _log = Logger()

    def __init__(
        self,
        rooms: Rooms | None = None,
        *,
        endpoints: Iterable[str] = (),
        peer_class: type[Peer] = Peer,
        settings: Settings | None = None,
        pages: str | None = None,
        shutdown_grace: float = 10.0,
        tls_profile: str | TlsProfile = "intermediate",
        reactor: Any = None,
        metrics: bool = False,
        metrics_endpoints: Iterable[str] = (),
        webhooks: Webhooks | None = None,
        events: Events | None = None,
        admin_token: str | None = None,
        peerjs: PeerjsOptions | None = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        settings = settings or Settings()
        self.shutdown_grace = shutdown_grace
        self.rooms = rooms if rooms is not None else Rooms(clock=reactor)
        self.rooms.setServiceParent(self)
        self.resource = SignalingResource(
            self.rooms,
            peer_class=peer_class,
            settings=settings,
            pages=pages,
            clock=reactor,
            admin_token=admin_token,
            peerjs=peerjs,
        )
        self.site = SignalingSite(
            self.resource, handshake_timeout=settings.handshake_timeout, clock=reactor
        )
        for description in endpoints:
            self._listen(description, self.site, reactor, tls_profile)
        self._clock: IReactorTime = reactor
        metrics_endpoints = list(metrics_endpoints)
        self.metrics: Metrics | None = None
        if metrics or metrics_endpoints:
            self.metrics = Metrics(self.rooms, clock=reactor, webhooks=webhooks)
            # Scrapers keep their connections open between scrapes: no
            # handshake deadline there.
            metrics_site = SignalingSite(
                metrics_root(self.metrics), handshake_timeout=None, clock=reactor
            )
            for description in metrics_endpoints:
                self._listen(description, metrics_site, reactor, tls_profile)
        self.webhooks = webhooks
        self.events = combine(self.metrics, webhooks, events)
        """Everything the rooms and peers report to."""
        self.rooms.events = self.events
        self.resource.factory.events = self.events
        if self.resource.peerjs is not None:
            self.resource.peerjs.events = self.events

    def _listen(
        self, description: str, site: Site, reactor: Any, tls_profile: str | TlsProfile
    ) -> None:
        """
        Serve `site` on the endpoint string `description` (TLS as `tls_profile`
        says, for ``ssl:``; a backlog of `BACKLOG` unless it sets one) while
        this service runs.
        """
        description = with_backlog(description)
        endpoint = harden_endpoint(serverFromString(reactor, description), tls_profile)
        listener = StreamServerEndpointService(endpoint, site)
        # As strports.service does: a port that cannot be had fails startup.
        listener._raiseSynchronously = True
        listener.setServiceParent(self)

    def stopService(self) -> Deferred[None]:
        # Health goes red first, so a load balancer stops sending peers.
        self.resource.accepting = False
        for room in self.rooms:
            room.stop_timeout = min(room.stop_timeout, self.shutdown_grace)
        stopped = cast("Deferred[None]", super().stopService())
        # The rooms are closing now, so held peers leave without a "left";
        # any hold left over (a room stopped before) ends here.
        self.resource.factory.resumption.release_all()
        webhooks = self.webhooks
        if webhooks is not None:
            # The rooms' last events (peer_left, room_finished) go out too,
            # within the grace.  (Cancelling the DeferredList would not
            # reach the flush, so the flush has its own deadline.)
            clock, deadline = self._clock, self._clock.seconds() + self.shutdown_grace
            stopped.addCallback(
                lambda _: webhooks.flush().addTimeout(max(0.0, deadline - clock.seconds()), clock)
            )
        # The grace ends the wait, but cancels nothing: cancelling the
        # MultiServices' DeferredLists would cancel every room's stop and
        # leave their CancelledErrors unhandled.  Each room gives up on its
        # own callbacks after its stop_timeout (set to the grace above).
        done: Deferred[None] = Deferred()
        timer = self._clock.callLater(self.shutdown_grace, self._grace_over, done)

        def finished(_: object) -> None:
            if timer.active():
                timer.cancel()
                done.callback(None)

        stopped.addErrback(self._stop_failed).addCallback(finished)
        return done

    def _stop_failed(self, failure: Failure) -> None:
        if failure.check(TimeoutError, CancelledError):
            self._log.warn("the webhook queue did not drain within the shutdown grace")
        else:
            self._log.failure("stopping the server", failure)

    def _grace_over(self, done: Deferred[None]) -> None:
        self._log.warn(
            "shutdown grace of {grace}s over; stopping anyway", grace=self.shutdown_grace
        )
        done.callback(None)


class _Channel(HTTPChannel):
    """
    An HTTP connection that can refuse a request's body before reading it:
    once `refuse` has answered, nothing more that arrives is parsed.  Its
    own 400s (a malformed request line or header) carry the headers of
    every other answer.
    """

    _refused = False

    def refuse(self) -> None:
        """
        Parse nothing more on this connection: its request has been
        answered, and the connection is closing.
        """
        self._refused = True
        self.persistent = False

    def lineReceived(self, line: bytes) -> None:
        if not self._refused:
            super().lineReceived(line)

    def rawDataReceived(self, data: bytes) -> None:
        if not self._refused:
            super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        if not self._refused:
            super().allContentReceived()

    def _respondToBadRequestAndDisconnect(self) -> None:
        # Twisted writes this one answer itself, without a Request.
        self._refused = True
        head = [b"HTTP/1.1 400 Bad Request"]
        head += [name + b": " + value for name, value in COMMON_HEADERS]
        head += [b"Content-Length: 0", b"Connection: close"]
        if self.transport is not None:
            self.transport.write(b"\r\n".join(head) + b"\r\n\r\n")
            self.loseConnection()


class _Request(Request):
    """
    A request of a `SignalingSite`:

    - its body is kept in memory, and refused (413, or 401 where credentials
      are missing) as soon as it is known to be longer than its route takes
      (`SignalingSite.body_limit`), before it is read;
    - every answer carries the common security headers;
    - it disarms its connection's handshake deadline while it is being
      served, and arms it again once it is done (for the next request on
      the connection).
    """

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        site = cast(SignalingSite, channel.site)  # type: ignore[attr-defined]
        method, uri = channel._command, channel._path
        limit = site.body_limit(method, uri.partition(b"?")[0], self.requestHeaders)
        self.content = BoundedBody(limit.limit, lambda: self._refuse_body(limit))
        if length is not None and length > limit.limit:
            self._refuse_body(limit)

    def handleContentChunk(self, data: bytes) -> None:
        # A refused body's chunks may still be in the parser's hands.
        if not self.finished:
            super().handleContentChunk(data)

    def _refuse_body(self, limit: BodyLimit) -> None:
        channel = self.channel
        if channel is None or self.finished:
            return
        # The request line is the channel's until the body is in.
        self.method, self.uri, self.clientproto = channel._command, channel._path, channel._version
        self.path = self.uri.partition(b"?")[0]
        # No "100 Continue" after the refusal.
        self.requestHeaders.removeHeader(b"expect")
        cast(_Channel, channel).refuse()
        self.setResponseCode(limit.status, limit.error.encode("ascii"))
        self.setHeader(b"Date", datetimeToString())
        for name, value in limit.headers:
            self.setHeader(name, value)
        self.setHeader(b"Connection", b"close")
        body = json.dumps({"error": limit.error, "details": limit.why}).encode("utf-8")
        self.setHeader(b"Content-Type", b"application/json")
        self.setHeader(b"Content-Length", b"%d" % len(body))
        self.setHeader(b"Cache-Control", b"no-store")
        self.write(body)
        self.finish()

    def process(self) -> None:
        site = cast(SignalingSite, self.channel.site)  # type: ignore[attr-defined]
        channel = self.channel  # Twisted drops request.channel once finished
        site._disarm(channel.transport)
        self.notifyFinish().addBoth(lambda _: site._arm(channel.transport))
        super().process()

    def write(self, data: bytes) -> None:
        if not self.startedWriting:
            # Replaces Twisted's Server header, on every answer: those of
            # OPTIONS * and of Twisted's own error pages too.
            secure_response(self)
        super().write(data)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method!r} {redact(self.uri)!r}>"


class SignalingSite(Site):
    """
    A `Site` whose connections must send a whole request within
    `handshake_timeout` seconds of connecting (or of their last request),
    so a client that dribbles its headers cannot hold a connection open
    (None: no deadline).  Once the WebSocket upgrade is accepted, Autobahn's
    own timers take over.  Access log lines hide tokens
    (`access_log_formatter`), and every answer carries the common security
    headers (`twisted_signal.headers`), those Twisted writes itself too.

    Request bodies are held in memory, never in a file, and only as many
    bytes as the route takes: the resource says how many with a
    ``body_limit(method, segments, headers)`` method returning a
    `twisted_signal.bodies.BodyLimit` (`SignalingResource` has one);
    without it, every route takes `twisted_signal.bodies.BODY_ALLOWANCE`.
    """

    requestFactory = _Request
    protocol = _Channel  # type: ignore[assignment]

    def __init__(
        self,
        resource: Any,
        *,
        handshake_timeout: float | None,
        clock: IReactorTime,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("logFormatter", access_log_formatter)
        # Nothing here takes form posts: a POST body is the resource's to read
        # (and refuse), not Twisted's to answer 400 for before any resource
        # (the admin API's authentication included) has seen the request.
        kwargs.setdefault("parsePOSTFormSubmission", False)
        super().__init__(resource, **kwargs)
        self.displayTracebacks = False
        self._handshake_timeout = handshake_timeout
        self._clock = clock
        self._deadlines: dict[object, IDelayedCall] = {}

    def body_limit(self, method: bytes, path: bytes, headers: Headers) -> BodyLimit:
        """
        How many bytes of body the route of a `method` request for `path`
        (percent-encoded, without its query) with `headers` takes.
        """
        policy = getattr(self.resource, "body_limit", None)
        if policy is None:
            return BodyLimit()
        segments = [unquote(segment) for segment in path[1:].split(b"/")]
        return cast(BodyLimit, policy(method, segments, headers))

    def buildProtocol(self, addr: IAddress | None) -> Any:
        protocol = super().buildProtocol(addr)
        if protocol is None:
            return None
        make, lost = protocol.makeConnection, protocol.connectionLost
        transports: list[Any] = []

        def makeConnection(transport: Any) -> None:
            transports.append(transport)
            self._arm(transport)
            make(transport)

        def connectionLost(reason: Failure) -> None:
            if transports:
                self._disarm(transports[0])
            lost(reason)

        protocol.makeConnection = makeConnection
        protocol.connectionLost = connectionLost
        return protocol

    def _arm(self, transport: Any) -> None:
        if self._handshake_timeout is None:
            return
        if transport is None or getattr(transport, "disconnected", False):
            return
        self._disarm(transport)
        self._deadlines[transport] = self._clock.callLater(
            self._handshake_timeout, self._expire, transport
        )

    def _disarm(self, transport: Any) -> None:
        deadline = self._deadlines.pop(transport, None)
        if deadline is not None and deadline.active():
            deadline.cancel()

    def _expire(self, transport: Any) -> None:
        del self._deadlines[transport]
        transport.abortConnection()
