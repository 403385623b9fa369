"""
Per-peer limits: the rate limit of SPEC 5.3 (a token bucket, and the rule
for when a flood ends a connection), and the bound on what the server holds
for a peer that does not read (SPEC 1.4 step 7).  Pure: time is passed in.
"""

from __future__ import annotations

__all__ = ["RateLimiter", "SendBuffer", "Verdict"]

import enum

from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer


class Verdict(enum.Enum):
    PASS = "pass"
    DROP_AND_WARN = "drop and warn"
    """The first drop of a run of drops: tell the client."""
    DROP = "drop"
    CLOSE = "close"
    """Dropped in every second for the whole flood timeout: close with 1008."""


class RateLimiter:
    """
    A bucket of `burst` tokens refilled at `rate` per `period` seconds.  A
    message takes a token; a message that finds none is dropped.

    Drops come in runs: a run goes on as long as drops keep coming, at least
    one a second (or one per token's time, for rates under one a second),
    however the frames are spaced and whatever the refill lets through in
    between.  The first drop of a run is to be answered with an error (so at
    most one error a second), and a run that lasts `flood_timeout` seconds
    ends the connection.
    """

    __slots__ = (
        "_burst",
        "_flood_timeout",
        "_last_drop",
        "_per_second",
        "_run_gap",
        "_run_started",
        "_stamp",
        "_tokens",
    )

    def __init__(
        self, rate: float, period: float, burst: int, flood_timeout: float, now: float
    ) -> None:
        self._per_second = rate / period
        self._run_gap = max(1.0, period / rate)
        self._burst = float(burst)
        self._last_drop = now
        self._flood_timeout = flood_timeout
        self._tokens = float(burst)
        self._stamp = now
        self._run_started: float | None = None

    @property
    def dropping(self) -> bool:
        """
        Whether its last drop began or continued a run of drops (the run
        may have ended since: that is known at the next `check`).
        """
        return self._run_started is not None

    def check(self, now: float) -> Verdict:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._per_second)
            self._stamp = now
        run_started = self._run_started
        if run_started is not None and now - self._last_drop > self._run_gap:
            run_started = self._run_started = None  # a quiet second: the run is over
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return Verdict.PASS
        self._last_drop = now
        if run_started is None:
            self._run_started = now
            return Verdict.DROP_AND_WARN
        if now - run_started >= self._flood_timeout:
            return Verdict.CLOSE
        return Verdict.DROP


@implementer(IPushProducer)
class SendBuffer:
    """
    What a peer's connection holds that it could not write yet, counted.

    Registered as the streaming producer of the peer's transport, it hears
    when the transport's own buffer is full (more than its ``bufferSize``,
    64 KiB for TCP: `pauseProducing`) and when it has written everything
    (`resumeProducing`).  Every byte handed to the transport in between is
    held by the server for the peer: `add` counts them and answers False
    once they pass `limit`.  So what is held for a peer is at most `limit`
    plus the transport's ``bufferSize`` and the one write that filled it.
    """

    __slots__ = ("full", "held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        """Bytes written since the transport said it was full."""
        self.full = False

    def add(self, size: int) -> bool:
        """
        `size` more bytes are to be written: False once that makes more
        than `limit` held while the transport is full.
        """
        if not self.full:
            return True
        self.held += size
        return self.held <= self.limit

    def pauseProducing(self) -> None:
        self.full = True

    def resumeProducing(self) -> None:
        self.full = False
        self.held = 0

    def stopProducing(self) -> None:
        pass
