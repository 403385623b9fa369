"""
The yardstick for the benchmarks: about the least a signaling relay on
Twisted + Autobahn (with NVX) + orjson can do.  It speaks enough of
twisted-signal's protocol for the same load generator to drive it: rooms by
path, ``authenticated`` and ``joined`` on arrival, ``from`` stamped, ``to`` a
list of ids or ``"all"``.  No validation, callbacks, order guarantees beyond
the stack's, limits, keepalive or resume.

    python bench/baseline_server.py PORT
"""

from __future__ import annotations

import sys
from uuid import uuid4

import orjson
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor


class Relay(WebSocketServerProtocol):
    factory: RelayFactory
    peer_id = ""
    room: dict[str, Relay] | None = None

    def onOpen(self) -> None:
        self.peer_id = str(uuid4())
        self.room = room = self.factory.rooms.setdefault(self.http_request_path, {})
        data = {"peer_id": self.peer_id}
        joined = orjson.dumps({"event": "joined", "data": data, "from": self.peer_id, "to": "all"})
        for other in room.values():
            other.sendMessage(joined)
        welcome = {"peer_id": self.peer_id, "peers": list(room)}
        room[self.peer_id] = self
        to = [self.peer_id]
        self.sendMessage(
            orjson.dumps({"event": "authenticated", "data": welcome, "from": None, "to": to})
        )

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        room = self.room
        if room is None:
            return
        message = orjson.loads(payload)
        message["from"] = self.peer_id
        out = orjson.dumps(message)
        to = message.get("to")
        if to == "all":
            prepared = self.factory.prepareMessage(out)
            for peer_id, peer in room.items():
                if peer_id != self.peer_id:
                    peer.sendPreparedMessage(prepared)
        else:
            for peer_id in to:
                found = room.get(peer_id)
                if found is not None:
                    found.sendMessage(out)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        if self.room is not None:
            self.room.pop(self.peer_id, None)
            if not self.room:
                self.factory.rooms.pop(self.http_request_path, None)
            self.room = None


class RelayFactory(WebSocketServerFactory):
    def __init__(self) -> None:
        super().__init__()
        self.protocol = Relay
        self.rooms: dict[str, dict[str, Relay]] = {}


if __name__ == "__main__":
    reactor.listenTCP(int(sys.argv[1]), RelayFactory(), interface="127.0.0.1", backlog=1024)
    reactor.run()
