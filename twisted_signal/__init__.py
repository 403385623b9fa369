"""
twisted-signal: a WebRTC signaling server on Twisted and Autobahn.

Peers open a WebSocket at ``/socket/<room>/``, join the room, and exchange
JSON messages that the server relays between the peers of the room.
"""

from .context import AuthData, PeerContext
from .errors import BadRequest, InvalidMessage, NoSuchPeer, Refused, Unauthorized
from .message import Message
from .peer import Peer, PeerFactory
from .room import PeerHandle, Room
from .rooms import Rooms
from .service import SignalingService
from .settings import Settings
from .web import SignalingResource

__version__ = "0.1.0"

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
