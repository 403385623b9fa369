"""
The knobs of the WebSocket side, in one place, with their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .auth import TokenVerifier
from .ice import IceConfig

__all__ = ["Settings"]


@dataclass(frozen=True)
class Settings:
    """
    How peers' connections behave.  The defaults are those of the
    ``rtcsignal`` server (see ``twistd rtcsignal --help``).
    """

    max_message_bytes: int = 65536
    """Frames larger than this close the connection with 1009."""

    idle_timeout: float = 900.0
    """A peer with no traffic from its client for this long is closed (1000)."""

    handshake_timeout: float = 10.0
    """A connection that has not finished its upgrade by then is dropped."""

    close_timeout: float = 2.0
    """How long a closing handshake may take before the TCP connection is dropped."""

    ice: IceConfig = field(default_factory=IceConfig)
    """The ICE servers (and TURN credentials) handed to peers."""

    token_verifier: TokenVerifier | None = None
    """When set, every peer must present a valid token (SPEC 5.1)."""

    peer_options: Any = None
    """Passed to `Peer.on_init` as ``options``."""

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        for name in ("idle_timeout", "handshake_timeout", "close_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
