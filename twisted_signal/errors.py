"""
The exceptions of the public API.  Each maps to one answer on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable

from .message import InvalidMessage

__all__ = [
    "BadRequest",
    "InvalidMessage",
    "NoSuchPeer",
    "NoSuchRoom",
    "Refused",
    "RoomUnavailable",
    "Unauthorized",
]


class BadRequest(Exception):
    """
    Raised by `Peer.parse_request`: the upgrade is answered with HTTP 400.
    """


class Unauthorized(Exception):
    """
    Raised by `Peer.on_init`: the upgrade is answered with HTTP 401.
    """


class Refused(Exception):
    """
    Raised by `Room.on_join`: the client gets ``error`` / ``"Could not join
    room"`` with `reason` as details, and is closed with 1000.
    """

    def __init__(self, reason: str = "refused") -> None:
        super().__init__(reason)
        self.reason = reason


class NoSuchPeer(Exception):
    """
    A message was addressed to peers that are not in the room; `peer_ids` are
    the unknown ones, in the order they were listed.
    """

    def __init__(self, peer_ids: Iterable[str]) -> None:
        self.peer_ids = list(peer_ids)
        super().__init__(f"no such peer: {', '.join(self.peer_ids)}")


class NoSuchRoom(KeyError):
    """
    An admin call named a room that does not exist (the admin API answers
    404 ``"No such room"``).
    """

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class RoomUnavailable(Exception):
    """
    In cluster mode, the node that owns the room did not answer an admin call
    in time, or Redis could not be reached (the admin API answers 503).  The
    change may still be applied later, when the owner reads it.
    """
