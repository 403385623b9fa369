"""
twisted-signal: a WebRTC signaling server on Twisted and Autobahn.

Peers open a WebSocket at ``/socket/<room>/``, join the room, and exchange
JSON messages that the server relays between the peers of the room.

The public names below are imported on first use (PEP 562), so that
``import twisted_signal.client`` (the asyncio client in particular) loads
the pure codec and not the server, Autobahn's Twisted side or twisted.web.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

__version__ = "0.1.0"

# Each public name and the module that defines it.
_HOMES = {
    "AuthData": "context",
    "PeerContext": "context",
    "BadRequest": "errors",
    "InvalidMessage": "errors",
    "NoSuchPeer": "errors",
    "Refused": "errors",
    "Unauthorized": "errors",
    "Message": "message",
    "Peer": "peer",
    "PeerFactory": "peer",
    "PeerHandle": "room",
    "Room": "room",
    "Rooms": "rooms",
    "SignalingService": "service",
    "Settings": "settings",
    "SignalingResource": "web",
}

__all__ = [
    "AuthData",
    "BadRequest",
    "InvalidMessage",
    "Message",
    "NoSuchPeer",
    "Peer",
    "PeerContext",
    "PeerFactory",
    "PeerHandle",
    "Refused",
    "Room",
    "Rooms",
    "Settings",
    "SignalingResource",
    "SignalingService",
    "Unauthorized",
    "__version__",
]

if TYPE_CHECKING:
    from .context import AuthData, PeerContext
    from .errors import BadRequest, InvalidMessage, NoSuchPeer, Refused, Unauthorized
    from .message import Message
    from .peer import Peer, PeerFactory
    from .room import PeerHandle, Room
    from .rooms import Rooms
    from .service import SignalingService
    from .settings import Settings
    from .web import SignalingResource


__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOMES)
