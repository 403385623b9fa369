"""
The small value objects handed to user callbacks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["AuthData", "PeerContext"]


@dataclass(frozen=True, slots=True)
class AuthData:
    """
    Who a peer says it is: built from what `Peer.parse_request` returned and
    passed to `Peer.on_init` and `Room.on_join`.  Its `repr` never shows the
    credentials, so it is safe to log.
    """

    peer_id: str
    credentials: dict[str, Any] = field(default_factory=dict, repr=False)
    metadata: Any = field(default=None, repr=False)

    @property
    def identity(self) -> str | None:
        """
        The ``sub`` credential when there is one (a JWT subject), else None.
        """
        sub = self.credentials.get("sub")
        return sub if isinstance(sub, str) else None


@dataclass(frozen=True, slots=True)
class PeerContext:
    """
    Passed to every `Peer` callback but `parse_request`.  `room` is the name
    of the room the peer asked for (the `Room` object itself is the peer's
    `room` attribute once it has joined).
    """

    peer_id: str
    room: str
