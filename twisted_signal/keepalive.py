"""
Keepalive of one connection as deadlines (SPEC 1.4 step 6): when to ping,
when an unanswered ping means the client is gone, when a client that sent
nothing is idle.  Pure: time is passed in, and the connection does what
`Keepalive.check` answers.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable

__all__ = ["Due", "Keepalive"]


class Due(enum.Enum):
    WAIT = "wait"
    """Nothing yet: check again at `Keepalive.deadline`."""
    PING = "ping"
    """Send a ping carrying `Keepalive.payload`; check again at the deadline."""
    UNANSWERED = "unanswered"
    """The ping was not answered in time: drop the connection."""
    IDLE = "idle"
    """Nothing came from the client for the idle timeout: close it."""


class Keepalive:
    """
    The deadlines of one connection.  `ping_interval` 0 sends no pings.

    Only a pong with the ping's payload answers it (8 random bytes): a client
    that sends but never reads cannot make one, so other traffic does not
    keep it alive.  Traffic (`seen`) pushes the idle deadline back.
    """

    __slots__ = (
        "_idle_timeout",
        "_next_ping",
        "_ping_interval",
        "_ping_sent",
        "_ping_timeout",
        "_random",
        "deadline",
        "last_seen",
        "payload",
    )

    def __init__(
        self,
        now: float,
        idle_timeout: float,
        ping_interval: float,
        ping_timeout: float,
        random: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._idle_timeout = idle_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._random = random
        self.last_seen = now
        """When the client last sent something (`seen`)."""
        self._next_ping = now + ping_interval
        self._ping_sent = 0.0
        """When the unanswered ping went out (0: none is)."""
        self.payload = b""
        """What the unanswered ping carries."""
        idle_at = now + idle_timeout
        self.deadline = min(idle_at, self._next_ping) if ping_interval else idle_at
        """When to `check` next (it may be checked later, never earlier)."""

    def seen(self, now: float) -> None:
        """Traffic from the client."""
        self.last_seen = now

    def check(self, now: float) -> Due:
        """
        What is due at `now`; with `Due.WAIT` and `Due.PING`, `deadline` is
        when to check again.
        """
        idle_at = self.last_seen + self._idle_timeout
        if now >= idle_at:
            return Due.IDLE
        if not self._ping_interval:
            self.deadline = idle_at
            return Due.WAIT
        sent = self._ping_sent
        if sent:
            timeout_at = sent + self._ping_timeout
            if now >= timeout_at:
                return Due.UNANSWERED
            self.deadline = min(idle_at, timeout_at)
            return Due.WAIT
        if now < self._next_ping:
            self.deadline = min(idle_at, self._next_ping)
            return Due.WAIT
        self._ping_sent = now
        self.payload = self._random(8)
        self.deadline = min(idle_at, now + self._ping_timeout)
        return Due.PING

    def answered(self, payload: bytes, now: float) -> bool:
        """
        Whether a pong with `payload` answers the unanswered ping.  If it
        does, the next ping is due an interval from now (`deadline`), which
        may come before the timeout that was being waited for.
        """
        if not self._ping_sent or payload != self.payload:
            return False
        self._ping_sent = 0.0
        self._next_ping = now + self._ping_interval
        self.deadline = min(self.last_seen + self._idle_timeout, self._next_ping)
        return True
