"""
An existing twisted.web application that mounts the signaling server at
``/rtc/``: WebSockets at ``/rtc/socket/<room>/``, room pages at
``/rtc/<room>``, health at ``/rtc/healthz``.  Its own routes stay its own.

Run it from the repository's root, then open http://127.0.0.1:8080/rtc/demo::

    python -m examples.embedding.app tcp:8080:interface=127.0.0.1
"""

from __future__ import annotations

import json
import sys

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request, Site

from twisted_signal import Message, Room, Rooms, SignalingService


class CallRoom(Room):
    """
    A one-to-one call: two peers at most, and only WebRTC signaling passes
    (other events are dropped).
    """

    SIGNALS = frozenset({"offer", "answer", "candidate", "joined", "left"})

    def on_forward(self, message: Message) -> Message | None:
        return message if message.event in self.SIGNALS else None


class Root(Resource):
    """
    The application's root: its own routes, and 404 for the rest.
    """

    def getChild(self, path: bytes, request: Request) -> IResource:
        return notFound()


class Status(Resource):
    """
    One of the application's own routes.
    """

    isLeaf = True

    def __init__(self, rooms: Rooms) -> None:
        super().__init__()
        self._rooms = rooms

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        calls = {room.name: len(room.peers) for room in self._rooms}
        return json.dumps({"app": "example", "calls": calls}).encode()


def make_signaling() -> SignalingService:
    # No endpoints: the application's own site serves the signaling resource.
    return SignalingService(Rooms(lambda name: CallRoom(name, max_peers=2)))


def make_site(signaling: SignalingService) -> Site:
    root = Root()
    root.putChild(b"", Status(signaling.rooms))
    root.putChild(b"rtc", signaling.resource)
    return Site(root)


def make_service(endpoint: str) -> MultiService:
    """
    The application's service tree: the signaling service, and the site
    listening on `endpoint` (a Twisted server endpoint string).
    """
    app = MultiService()
    signaling = make_signaling()
    signaling.setServiceParent(app)
    strports.service(endpoint, make_site(signaling)).setServiceParent(app)
    return app


def main(argv: list[str]) -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stdout)])
    app = make_service(argv[0] if argv else "tcp:8080:interface=127.0.0.1")
    app.privilegedStartService()
    app.startService()
    reactor.addSystemEventTrigger("before", "shutdown", app.stopService)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
