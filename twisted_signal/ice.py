"""
ICE servers for peers, with ephemeral TURN credentials (SPEC 5.2).

The credentials are in the form of the TURN REST API that coturn's
``use-auth-secret`` accepts: ``username = "<expiry>:<peer id>"`` and
``credential = base64(HMAC-SHA1(secret, username))``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any

__all__ = ["IceConfig", "turn_credential"]


def turn_credential(secret: str, username: str) -> str:
    """
    The TURN REST API password for `username`: standard padded base64 of
    HMAC-SHA1 keyed with the shared secret.
    """
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


@dataclass(frozen=True)
class IceConfig:
    """
    What goes into ``authenticated.data.ice_servers``.

    `urls` are handed out as they are (STUN, or TURN with static
    credentials in the URL's server); with a `turn_secret`, each peer also
    gets `turn_uris` with credentials valid for `turn_ttl` seconds.
    """

    urls: tuple[str, ...] = ()
    turn_uris: tuple[str, ...] = ()
    turn_secret: str | None = field(default=None, repr=False)
    turn_ttl: int = 86400

    def __post_init__(self) -> None:
        if self.turn_ttl < 1:
            raise ValueError("turn_ttl must be at least 1 second")
        if self.turn_secret is not None and not self.turn_uris:
            raise ValueError("a TURN secret needs at least one TURN URI")
        if self.turn_uris and self.turn_secret is None:
            raise ValueError("TURN URIs need a TURN secret")

    def servers_for(self, peer_id: str, now: float) -> list[dict[str, Any]]:
        """
        RTCIceServer dictionaries for `peer_id`, as of `now` (unix seconds).
        """
        servers: list[dict[str, Any]] = []
        if self.urls:
            servers.append({"urls": list(self.urls)})
        if self.turn_secret is not None:
            username = f"{int(now) + self.turn_ttl}:{peer_id}"
            servers.append(
                {
                    "urls": list(self.turn_uris),
                    "username": username,
                    "credential": turn_credential(self.turn_secret, username),
                }
            )
        return servers
