"""
Signed webhooks (SPEC 5.6): ``room_started``, ``room_finished``,
``peer_joined`` and ``peer_left`` POSTed as JSON to one URL.

An `Events` observer puts each event in a bounded in-memory queue and
returns at once: signaling never waits for a receiver.  Deliveries run a few
at a time; a failed one (no answer within the timeout, a connection error,
any status but 2xx) is retried with exponential backoff and jitter, and the
events of one room are delivered in the order they happened (a room's next
event waits while its previous one is being retried).  When the queue is
full, new events are dropped, counted, and logged once per burst.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from uuid import uuid4

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from .events import Events

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["DELIVERY_HEADER", "SIGNATURE_HEADER", "Post", "Webhooks", "sign"]

SIGNATURE_HEADER = "X-Rtcsignal-Signature"
DELIVERY_HEADER = "X-Rtcsignal-Delivery"

Post = Callable[[str, bytes, dict[str, str]], "Deferred[int]"]
"""Sends one POST (url, body, headers) and fires with the response's status."""


def sign(secret: bytes, body: bytes) -> str:
    """The `SIGNATURE_HEADER` value for `body`: ``sha256=<hex HMAC-SHA256>``."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


@dataclass(eq=False)
class _Event:
    body: bytes
    delivery: str
    attempts: int = 0


@dataclass(eq=False)
class _RoomQueue:
    events: deque[_Event] = field(default_factory=deque)
    retry: IDelayedCall | None = None


class Webhooks(Events):
    """
    Delivers the lifecycle events to `url`, signed with `secret`.

    - `max_queue`: events waiting at most (beyond it new events are dropped);
    - `max_attempts`: tries per event before it is given up;
    - `timeout`: seconds one attempt may take, answer included;
    - `backoff`, `max_backoff`: the first retry waits about `backoff`
      seconds, each next one twice as long, at most `max_backoff` (each wait
      is drawn between half and all of that, so receivers coming back are
      not hit by every server at once);
    - `concurrency`: deliveries in flight at once (one per room at most).

    `post` replaces the HTTP client (treq), for tests.
    """

    _log = Logger()

    def __init__(
        self,
        url: str,
        secret: str | bytes,
        *,
        clock: IReactorTime,
        max_queue: int = 10000,
        max_attempts: int = 6,
        timeout: float = 5.0,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        concurrency: int = 4,
        post: Post | None = None,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if not secret:
            raise ValueError("a webhook needs a secret")
        if max_queue < 1 or max_attempts < 1 or concurrency < 1:
            raise ValueError("max_queue, max_attempts and concurrency must be at least 1")
        self.url = url
        self._secret = secret.encode("utf-8") if isinstance(secret, str) else secret
        self._clock = clock
        self.max_queue = max_queue
        self.max_attempts = max_attempts
        self.timeout = timeout
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.concurrency = concurrency
        self._post = post if post is not None else _TreqPost(clock, concurrency).post
        self._jitter = jitter
        self._rooms: dict[str, _RoomQueue] = {}
        self._ready: deque[str] = deque()
        self._in_flight: dict[str, Deferred[int]] = {}
        self._queued = 0
        self._pumping = False
        self._dropped_in_burst = 0
        self._failing = False
        self._idle: list[Deferred[None]] = []
        self.deliveries: dict[str, int] = dict.fromkeys(
            ("delivered", "retried", "failed", "dropped"), 0
        )
        """Attempts and events by outcome: ``delivered`` and ``failed``
        (given up) count events, ``retried`` failed attempts that will be
        tried again, ``dropped`` events the full queue turned away."""

    @property
    def queued(self) -> int:
        """Events waiting or being delivered."""
        return self._queued

    # Events.

    def room_started(self, room: str) -> None:
        self._enqueue("room_started", room, None)

    def room_finished(self, room: str) -> None:
        self._enqueue("room_finished", room, None)

    def peer_joined(self, room: str, peer_id: str) -> None:
        self._enqueue("peer_joined", room, peer_id)

    def peer_left(self, room: str, peer_id: str) -> None:
        self._enqueue("peer_left", room, peer_id)

    # Stopping.

    def flush(self) -> Deferred[None]:
        """
        Fires once nothing is queued.  Cancel it to give up: the queue is
        then emptied and deliveries in flight are cancelled.
        """
        if not self._queued:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda _: self._abandon())
        self._idle.append(d)
        return d

    def _abandon(self) -> None:
        for queue in self._rooms.values():
            if queue.retry is not None and queue.retry.active():
                queue.retry.cancel()
        self._rooms.clear()
        self._ready.clear()
        self._queued = 0
        in_flight, self._in_flight = self._in_flight, {}
        for attempt in in_flight.values():
            attempt.cancel()

    # Internals.

    def _enqueue(self, event: str, room: str, peer_id: str | None) -> None:
        if self._queued >= self.max_queue:
            self.deliveries["dropped"] += 1
            if not self._dropped_in_burst:
                self._log.warn(
                    "webhook queue full ({max} events): dropping events until it drains",
                    max=self.max_queue,
                )
            self._dropped_in_burst += 1
            return
        if self._dropped_in_burst:
            self._log.warn(
                "webhook queue draining again; {count} events were dropped",
                count=self._dropped_in_burst,
            )
            self._dropped_in_burst = 0
        at = round(self._clock.seconds(), 3)
        body = json.dumps(
            {"event": event, "room": room, "peer_id": peer_id, "at": at},
            separators=(",", ":"),
        ).encode("utf-8")
        queue = self._rooms.get(room)
        if queue is None:
            queue = self._rooms[room] = _RoomQueue()
            self._ready.append(room)
        queue.events.append(_Event(body, str(uuid4())))
        self._queued += 1
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._ready and len(self._in_flight) < self.concurrency:
                room = self._ready.popleft()
                self._attempt(room)
        finally:
            self._pumping = False

    def _attempt(self, room: str) -> None:
        event = self._rooms[room].events[0]
        event.attempts += 1
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "twisted-signal",
            SIGNATURE_HEADER: sign(self._secret, event.body),
            DELIVERY_HEADER: event.delivery,
        }
        try:
            attempt = self._post(self.url, event.body, headers)
        except Exception:
            attempt = fail()
        attempt.addTimeout(self.timeout, self._clock)
        self._in_flight[room] = attempt
        attempt.addCallbacks(
            self._answered,
            self._not_delivered,
            callbackArgs=(room, event),
            errbackArgs=(room, event),
        )

    def _answered(self, status: int, room: str, event: _Event) -> None:
        if 200 <= status < 300:
            self._in_flight.pop(room, None)
            self.deliveries["delivered"] += 1
            if self._failing:
                self._failing = False
                self._log.info("webhook {url} answers again", url=self.url)
            self._next(room)
        else:
            self._not_delivered(Failure(_Status(status)), room, event)

    def _not_delivered(self, failure: Failure, room: str, event: _Event) -> None:
        if self._in_flight.pop(room, None) is None:
            return  # abandoned
        why = _why(failure, self.timeout)
        if not self._failing:
            self._failing = True
            self._log.warn(
                "webhook {url} failed ({why}); retrying with backoff", url=self.url, why=why
            )
        if event.attempts < self.max_attempts:
            self.deliveries["retried"] += 1
            wait = min(self.max_backoff, self.backoff * 2 ** (event.attempts - 1))
            wait *= 0.5 + self._jitter() / 2
            self._rooms[room].retry = self._clock.callLater(wait, self._retry, room)
        else:
            self.deliveries["failed"] += 1
            self._log.warn(
                "webhook {url}: gave up on an event after {attempts} attempts ({why})",
                url=self.url,
                attempts=event.attempts,
                why=why,
            )
            self._next(room)
        self._pump()

    def _retry(self, room: str) -> None:
        queue = self._rooms.get(room)
        if queue is None:
            return
        queue.retry = None
        self._ready.append(room)
        self._pump()

    def _next(self, room: str) -> None:
        queue = self._rooms[room]
        queue.events.popleft()
        self._queued -= 1
        if queue.events:
            self._ready.append(room)
        else:
            del self._rooms[room]
        if not self._queued:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)
        self._pump()


def _why(failure: Failure, timeout: float) -> str:
    """
    A short reason for a log line: a timeout (which treq reports as a
    cancelled request) says so.
    """
    from twisted.internet.defer import CancelledError, TimeoutError
    from twisted.web.client import ResponseNeverReceived

    cancelled = failure.check(TimeoutError, CancelledError) is not None
    if failure.check(ResponseNeverReceived):
        reasons: list[Failure] = getattr(failure.value, "reasons", [])
        cancelled = any(r.check(CancelledError) for r in reasons)
    if cancelled:
        return f"no answer within {timeout}s"
    return failure.getErrorMessage() or repr(failure.value)


class _Status(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")


class _TreqPost:
    """
    POSTs with treq over a pool of persistent connections.
    """

    def __init__(self, clock: IReactorTime, concurrency: int) -> None:
        from twisted.web.client import HTTPConnectionPool

        self._reactor: Any = clock
        self._pool = HTTPConnectionPool(clock, persistent=True)
        self._pool.maxPersistentPerHost = concurrency

    def post(self, url: str, body: bytes, headers: dict[str, str]) -> Deferred[int]:
        import treq
        from twisted.web.http_headers import Headers

        d = treq.post(
            url,
            data=body,
            headers=Headers({k: [v] for k, v in headers.items()}),
            pool=self._pool,
            reactor=self._reactor,
        )
        return d.addCallback(
            lambda response: treq.content(response).addCallback(lambda _: self._done(response))
        )

    def _done(self, response: Any) -> int:
        """
        An HTTP/1.0 receiver without keep-alive closes each connection after
        its answer, but Twisted's pool keeps it (twisted#7843): the next POST
        would go out on a closed connection, fail, and wait for a retry.  So
        from then on every request asks for ``Connection: close``, and the
        connection just returned to the pool is dropped.
        """
        if tuple(response.version[1:]) < (1, 1) and not any(
            b"keep-alive" in value.lower()
            for value in response.headers.getRawHeaders(b"connection", [])
        ):
            self._pool.persistent = False
            self._pool.closeCachedConnections()
        return int(response.code)
