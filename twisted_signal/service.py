"""
The signaling server as one service: its rooms, its resource tree, and the
endpoints it listens on.  This is what ``twistd rtcsignal`` runs, and what an
application embeds.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.web.server import Site

from .peer import Peer
from .rooms import Rooms
from .settings import Settings
from .web import SignalingResource, access_log_formatter

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorCore

__all__ = ["SignalingService"]


class SignalingService(MultiService):
    """
    Rooms, plus a `Site` serving `resource` on each of `endpoints` (Twisted
    server endpoint strings).

    To mount the server in a site of your own, give no endpoints, add this
    service to your application and put `resource` where you want it::

        signaling = SignalingService(Rooms(lambda name: Room(name)))
        signaling.setServiceParent(application)
        root.putChild(b"rtc", signaling.resource)
    """

    def __init__(
        self,
        rooms: Rooms | None = None,
        *,
        endpoints: Iterable[str] = (),
        peer_class: type[Peer] = Peer,
        settings: Settings | None = None,
        pages: str | None = None,
        reactor: Any = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.rooms = rooms if rooms is not None else Rooms(clock=reactor)
        self.rooms.setServiceParent(self)
        self.resource = SignalingResource(
            self.rooms, peer_class=peer_class, settings=settings, pages=pages, clock=reactor
        )
        self.site = Site(self.resource, logFormatter=access_log_formatter)
        self.site.displayTracebacks = False
        for description in endpoints:
            strports.service(description, self.site, reactor=reactor).setServiceParent(self)
        self._reactor: IReactorCore = reactor

    def stopService(self) -> Deferred[None]:
        # Health goes red first, so a load balancer stops sending peers.
        self.resource.accepting = False
        return super().stopService()  # type: ignore[no-any-return]
