"""
Clients of the server's own front (SPEC 1) without a socket: a real `Peer`
of a `PeerFactory` over an in-memory transport, fed the bytes a client
sends, read back as the messages the server wrote.
"""

from __future__ import annotations

import json
import struct
from typing import Any

from autobahn.websocket.protocol import WebSocketProtocol
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_signal.peer import Peer, PeerFactory


def upgrade(room: str, query: str = "") -> bytes:
    """A client's upgrade request for ``/socket/<room>/``."""
    target = f"/socket/{room}/" + (f"?{query}" if query else "")
    return (
        f"GET {target} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def frame(text: bytes) -> bytes:
    """A masked client text frame (with an all-zero mask: the text as it is)."""
    size = len(text)
    if size < 126:
        head = bytes([0x81, 0x80 | size])
    elif size < 65536:
        head = bytes([0x81, 0x80 | 126]) + struct.pack("!H", size)
    else:
        head = bytes([0x81, 0x80 | 127]) + struct.pack("!Q", size)
    return head + b"\0\0\0\0" + text


class MemoryClient:
    """One SPEC 1 client of `factory`, in memory."""

    def __init__(self, factory: PeerFactory, room: str, query: str = "") -> None:
        peer = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        assert isinstance(peer, Peer)
        self.peer = peer
        self.transport = StringTransport()
        peer.makeConnection(self.transport)
        peer.dataReceived(upgrade(room, query))
        self._read = self.transport.value().index(b"\r\n\r\n") + 4

    @property
    def open(self) -> bool:
        return bool(self.peer.state == WebSocketProtocol.STATE_OPEN)

    def send(self, event: str, to: Any = "all", data: Any = None) -> None:
        self.peer.dataReceived(frame(json.dumps({"event": event, "to": to, "data": data}).encode()))

    def received(self) -> list[dict[str, Any]]:
        """The text messages the server wrote since the last call."""
        written = self.transport.value()
        messages: list[dict[str, Any]] = []
        at = self._read
        while at + 2 <= len(written):
            opcode, size = written[at] & 0x0F, written[at + 1] & 0x7F
            at += 2
            if size == 126:
                (size,) = struct.unpack("!H", written[at : at + 2])
                at += 2
            elif size == 127:
                (size,) = struct.unpack("!Q", written[at : at + 8])
                at += 8
            if at + size > len(written):
                at -= 2
                break
            if opcode == 1:
                messages.append(json.loads(written[at : at + size]))
            at += size
        self._read = at
        return messages

    def lose(self) -> None:
        """The connection is gone without a close frame."""
        self.peer.connectionLost(Failure(ConnectionDone()))
