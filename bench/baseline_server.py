"""
The yardstick for bench/relay.py: the least an Autobahn-on-Twisted relay can
do.  Every text frame is sent on to every other connection; no JSON, no
rooms, no callbacks.
"""

from __future__ import annotations

import sys

from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.internet import reactor


class Relay(WebSocketServerProtocol):
    factory: RelayFactory

    def onOpen(self) -> None:
        self.factory.clients.add(self)

    def onMessage(self, payload: bytes, isBinary: bool) -> None:
        for client in self.factory.clients:
            if client is not self:
                client.sendMessage(payload, isBinary)

    def onClose(self, wasClean: bool, code: int | None, reason: str | None) -> None:
        self.factory.clients.discard(self)


class RelayFactory(WebSocketServerFactory):
    def __init__(self) -> None:
        super().__init__()
        self.protocol = Relay
        self.clients: set[Relay] = set()


if __name__ == "__main__":
    reactor.listenTCP(int(sys.argv[1]), RelayFactory(), interface="127.0.0.1", backlog=1024)
    reactor.run()
