"""
A room that admits at most N peers.

The seed's guide kept a counter in the room's state, incremented it in
``on_join`` and decremented it in ``on_leave``.  Here the room already knows
its peers (`Room.peers`), and joins are handled one at a time in the room's
order, so the count is simply ``len(self.peers)``: nothing to keep in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted_signal import AuthData, Refused, Room

__all__ = ["DEFAULT_MAX_PEERS", "CappedRoom"]

DEFAULT_MAX_PEERS = 2
"""Mesh calls do not scale: the guide's room let in two peers."""


class CappedRoom(Room):
    """
    Admits at most ``options["max_peers"]`` peers (default 2); the next
    ones are refused with ``room_is_full``.
    """

    capacity: int = DEFAULT_MAX_PEERS

    def on_init(self, options: Any) -> None:
        if isinstance(options, Mapping):
            capacity = options.get("max_peers", DEFAULT_MAX_PEERS)
        else:
            capacity = DEFAULT_MAX_PEERS
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"max_peers must be a whole number of at least 1, not {capacity!r}")
        self.capacity = capacity

    def on_join(self, auth: AuthData) -> None:
        if len(self.peers) >= self.capacity:
            raise Refused("room_is_full")
