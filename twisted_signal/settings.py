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

    ping_interval: float = 20.0
    """Seconds between the WebSocket pings the server sends (0: none)."""

    ping_timeout: float = 20.0
    """A peer that has not answered a ping within this is dropped."""

    idle_timeout: float = 900.0
    """A peer with no traffic from its client for this long is closed (1000)."""

    handshake_timeout: float = 10.0
    """A connection that has not finished its upgrade by then is dropped."""

    close_timeout: float = 2.0
    """How long a closing handshake may take before the TCP connection is dropped."""

    rate: float = 50.0
    """Messages a peer may send per `rate_period` seconds, on average."""

    rate_period: float = 1.0

    rate_burst: int = 200
    """How many messages a peer may send at once (the bucket's size)."""

    flood_timeout: float = 10.0
    """A peer over its rate limit for this long is closed with 1008."""

    max_send_buffer: int = 4194304
    """Bytes the server may hold for a peer that does not read what it is
    sent (beyond its transport's own buffer, 64 KiB for TCP); past it the
    peer is closed (1008) and leaves.  Keep it above `max_message_bytes`:
    one relayed message must fit."""

    max_connections: int = 10000
    """Upgrades beyond this many open connections are answered 503."""

    allowed_origins: tuple[str, ...] = ()
    """When set, an upgrade whose Origin is not listed is answered 403."""

    resume_window: float = 15.0
    """How long a peer whose connection was lost is held for resuming (0: off)."""

    trusted_proxies: int = 0
    """How many proxies in front of the server to trust for X-Forwarded-For
    (the remote address logged for a peer); 0 trusts none."""

    ice: IceConfig = field(default_factory=IceConfig)
    """The ICE servers (and TURN credentials) handed to peers."""

    token_verifier: TokenVerifier | None = None
    """When set, every peer must present a valid token (SPEC 5.1)."""

    peer_options: Any = None
    """Passed to `Peer.on_init` as ``options``."""

    def __post_init__(self) -> None:
        if self.max_message_bytes < 1024:
            raise ValueError("max_message_bytes must be at least 1024")
        for name in (
            "idle_timeout",
            "handshake_timeout",
            "close_timeout",
            "ping_timeout",
            "rate",
            "rate_period",
            "flood_timeout",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("ping_interval", "resume_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_send_buffer < 1:
            raise ValueError("max_send_buffer must be positive")
        if self.trusted_proxies < 0:
            raise ValueError("trusted_proxies must not be negative")
        if self.rate_burst < 1 or self.max_connections < 1:
            raise ValueError("rate_burst and max_connections must be at least 1")

    def keepalive(self) -> dict[str, float]:
        """
        What ``authenticated`` tells clients, so they can tune their own
        keepalive.
        """
        return {
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
            "idle_timeout": self.idle_timeout,
        }
