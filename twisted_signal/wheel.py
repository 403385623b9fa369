"""
One timer for many connections: a coarse timer wheel.

Keepalive deadlines (the next ping, a ping's timeout, the idle timeout) need
no precision finer than a fraction of a second, and a server holds thousands
of them.  Rather than a `DelayedCall` each (an object, its heap entry, and a
reschedule whenever a deadline moves), each entry sits in the bucket of the
`resolution`-wide slot its deadline falls in, and the wheel keeps a single
`DelayedCall`, armed for the earliest bucket.  When a bucket comes due, each
of its entries is asked when it is next due (`Timed.wheel_fired`), and goes
into that bucket, or leaves the wheel.

Deadlines only ever move later between two checks (traffic from a client
pushes its idle deadline back), so an entry is checked when its bucket comes
due and finds out itself whether anything is due yet: nothing touches the
wheel per message.  A deadline that moves earlier (a ping answered before its
timeout, when the next ping is due before that timeout) is moved with
`schedule`, which only ever moves an entry earlier.
"""

from __future__ import annotations

import heapq
import math
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Timed", "Wheel"]

# Slots are whole multiples of the resolution; a timer armed for a slot's
# start may fire a hair before it in floating point.
_EPSILON = 1e-9


class Timed(Protocol):
    """
    What the wheel keeps: an object that knows when it is next due.
    """

    wheel_slot: int | None
    """The bucket it is in (the wheel's own bookkeeping; None: not in the wheel)."""

    def wheel_fired(self, now: float) -> float | None:
        """
        Its bucket came due: do what is due, and answer when it is next due
        (None: it leaves the wheel).
        """


class Wheel:
    """
    Coarse timers on `clock`: an entry is checked at its deadline or up to
    `resolution` seconds after, never before.
    """

    def __init__(self, clock: IReactorTime, resolution: float) -> None:
        if resolution <= 0:
            raise ValueError("resolution must be positive")
        self.resolution = resolution
        self._clock = clock
        self._buckets: dict[int, set[Timed]] = {}
        self._slots: list[int] = []
        """A heap of the buckets' slots (some may be gone: skipped)."""
        self._count = 0
        self._done = math.floor(clock.seconds() / resolution)
        """The last slot checked: nothing is scheduled into it or before."""
        self._armed: IDelayedCall | None = None
        self._armed_slot = 0

    def __len__(self) -> int:
        return self._count

    def schedule(self, entry: Timed, when: float) -> None:
        """
        Check `entry` at `when` (or up to one resolution later), unless it is
        already due earlier.
        """
        slot = max(math.ceil(when / self.resolution - _EPSILON), self._done + 1)
        current = entry.wheel_slot
        if current is not None:
            if current <= slot:
                return
            self._remove(entry, current)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = set()
            heapq.heappush(self._slots, slot)
        bucket.add(entry)
        entry.wheel_slot = slot
        self._count += 1
        if self._armed is None or slot < self._armed_slot:
            self._arm(slot)

    def cancel(self, entry: Timed) -> None:
        """
        Take `entry` out of the wheel (nothing happens if it is not in it).
        """
        slot = entry.wheel_slot
        if slot is not None:
            self._remove(entry, slot)
            if self._count == 0:
                self._disarm()

    def _remove(self, entry: Timed, slot: int) -> None:
        entry.wheel_slot = None
        self._count -= 1
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.discard(entry)
            if not bucket:
                del self._buckets[slot]

    def _arm(self, slot: int) -> None:
        delay = max(0.0, slot * self.resolution - self._clock.seconds())
        if self._armed is not None and self._armed.active():
            self._armed.reset(delay)
        else:
            self._armed = self._clock.callLater(delay, self._fire)
        self._armed_slot = slot

    def _disarm(self) -> None:
        if self._armed is not None and self._armed.active():
            self._armed.cancel()
        self._armed = None
        self._buckets.clear()
        self._slots.clear()

    def _fire(self) -> None:
        self._armed = None
        now = self._clock.seconds()
        self._done = due = math.floor(now / self.resolution + _EPSILON)
        slots = self._slots
        while slots and slots[0] <= due:
            slot = heapq.heappop(slots)
            bucket = self._buckets.pop(slot, None)
            for entry in bucket or ():
                if entry.wheel_slot != slot:
                    continue  # taken out by an entry checked before it
                entry.wheel_slot = None
                self._count -= 1
                when = entry.wheel_fired(now)
                if when is not None and entry.wheel_slot is None:
                    self.schedule(entry, when)
        while slots and slots[0] not in self._buckets:
            heapq.heappop(slots)
        if slots and (self._armed is None or slots[0] < self._armed_slot):
            self._arm(slots[0])
