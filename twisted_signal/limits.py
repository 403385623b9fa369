"""
Per-peer rate limiting (SPEC 5.3): a token bucket, and the rule for when a
flood ends a connection.  Pure: time is passed in.
"""

from __future__ import annotations

__all__ = ["RateLimiter", "Verdict"]

import enum


class Verdict(enum.Enum):
    PASS = "pass"
    DROP_AND_WARN = "drop and warn"
    """The first drop of a run of drops: tell the client."""
    DROP = "drop"
    CLOSE = "close"
    """Over the limit for the whole flood timeout: close with 1008."""


class RateLimiter:
    """
    A bucket of `burst` tokens refilled at `rate` per `period` seconds.  A
    message takes a token; a message that finds none is dropped.  The first
    drop of each run of drops is to be answered with an error, and a run that
    lasts `flood_timeout` seconds ends the connection.  A run ends only when
    the peer pauses for at least the time one token takes to come back: a
    flood that the refill lets through a message at a time is still a flood.
    """

    __slots__ = (
        "_burst",
        "_flood_timeout",
        "_last_drop",
        "_per_second",
        "_run_started",
        "_stamp",
        "_token_time",
        "_tokens",
    )

    def __init__(
        self, rate: float, period: float, burst: int, flood_timeout: float, now: float
    ) -> None:
        self._per_second = rate / period
        self._token_time = period / rate
        self._burst = float(burst)
        self._last_drop = now
        self._flood_timeout = flood_timeout
        self._tokens = float(burst)
        self._stamp = now
        self._run_started: float | None = None

    def check(self, now: float) -> Verdict:
        elapsed = now - self._stamp
        if elapsed > 0:
            self._tokens = min(self._burst, self._tokens + elapsed * self._per_second)
            self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            if self._run_started is not None and now - self._last_drop >= self._token_time:
                self._run_started = None
            return Verdict.PASS
        self._last_drop = now
        if self._run_started is None:
            self._run_started = now
            return Verdict.DROP_AND_WARN
        if now - self._run_started >= self._flood_timeout:
            return Verdict.CLOSE
        return Verdict.DROP
