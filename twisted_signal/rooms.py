"""
The registry of rooms: a `MultiService` holding the `Room`s that run here,
by name, composed with a `Backend` that says where rooms run and how a
connection reaches them: here (`LocalRooms`, one server), or on each room's
owner node (`twisted_signal.cluster`).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger

from . import message as wire
from .errors import NoSuchRoom
from .events import NO_EVENTS, Events
from .message import Message
from .room import CLOSE_GOING_AWAY, PeerHandle, Room, RoomAccess

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from .context import AuthData
    from .resume import GiveAway

__all__ = [
    "ROOM_NAME",
    "Backend",
    "LocalRooms",
    "OtherNodes",
    "RoomFactory",
    "Rooms",
    "close_for_shutdown",
    "is_room_name",
    "room_summary",
]

ROOM_NAME = re.compile(r"[A-Za-z0-9_.~-]{1,64}\Z")


class _Default(enum.Enum):
    DEFAULT = "the registry's"


DEFAULT = _Default.DEFAULT

RoomFactory = Callable[[str], Room]
"""Makes the room for a name; used for rooms created on demand."""


def is_room_name(name: str) -> bool:
    return ROOM_NAME.match(name) is not None


def room_summary(room: Room) -> dict[str, Any]:
    """
    A room as the admin API shows it.
    """
    return {"name": room.name, "peers": list(room.peers), "max_peers": room.max_peers}


def close_for_shutdown(handle: PeerHandle, events: Events) -> None:
    """
    What a server that shuts down does to a peer connected to it, as
    `Room.stopService` does once ``close_reason`` is ``"shutdown"``: it
    sends ``"Room closed"`` (details ``"shutdown"``), counts that error,
    and closes the connection with 1001 (going away).  A cluster node
    does it for its own peers, whichever node runs their room.
    """
    handle.send(wire.error(handle.peer_id, "Room closed", "shutdown").to_bytes())
    events.error_sent("Room closed")
    handle.close(CLOSE_GOING_AWAY)


class OtherNodes(Protocol):
    """
    Resume across nodes (SPEC 5.4 in cluster mode): what a cluster has and
    a single server does not (`Rooms.other_nodes` is None there).
    """

    @property
    def token_prefix(self) -> str:
        """What the resume tokens issued here start with (the node's id)."""

    def claim(
        self, token: str, room: str, identity: str | None
    ) -> Deferred[AuthData | None] | None:
        """
        A resume token that another node issued: ask that node for its
        peer.  Fires with the peer's id and credentials, or None if that
        node refuses or does not answer; None at once when the token is
        not another node's.
        """

    def give_away_with(self, give_away: GiveAway) -> None:
        """How this node hands one of its held peers to a connection on another."""


class Backend(Protocol):
    """
    Where the rooms of a `Rooms` run and how a connection reaches them:
    `LocalRooms` runs every room here; a cluster node
    (`twisted_signal.cluster.ClusterNode`) runs each room on its owner
    node.  `Rooms` calls it for everything but the registry itself.
    """

    @property
    def other_nodes(self) -> OtherNodes | None:
        """Resume across nodes, or None (one server)."""

    @property
    def unavailable(self) -> str | None:
        """Why joins cannot be served right now (see `Rooms.unavailable`), or None."""

    def configure(self, name: str, make: Callable[[], Room], cap: int | None) -> Room:
        """A room that stays (`Rooms.start_room`): `make` makes it."""

    def knows(self, name: str) -> bool:
        """Whether there is a room `name` (`name in rooms`)."""

    def access(self, name: str) -> RoomAccess | None:
        """What a connection joining `name` talks to (see `Rooms.access`)."""

    def find(self, name: str) -> RoomAccess | None:
        """What a connection of `name` talks to, if it exists; never creates."""

    def stop_room(self, name: str) -> Deferred[None]:
        """Stop a room that runs here; KeyError if none does."""

    def summaries(self) -> Deferred[list[dict[str, Any]]]: ...

    def summary(self, name: str) -> Deferred[dict[str, Any]]: ...

    def stop(self, name: str) -> Deferred[None]: ...

    def disconnect(self, name: str, peer_id: str) -> Deferred[None]: ...

    def post(self, name: str, message: Message) -> Deferred[None]: ...

    def start(self) -> None:
        """The registry has started (its rooms have)."""

    def shut_down(self) -> Deferred[None]:
        """
        The server shuts down: do what must come before the rooms that are
        still here stop (with ``"Room closed"``, ``"shutdown"``).
        """


def on_room(rooms: Rooms, name: str, action: Callable[[Room], Any]) -> Deferred[Any]:
    """`action` on the room `name` that runs here, or `NoSuchRoom`."""
    room = rooms.get(name)
    if room is None:
        return fail(NoSuchRoom(name))
    return maybeDeferred(action, room)


class LocalRooms:
    """A single server's `Backend`: every room runs here, in the registry."""

    other_nodes = None
    unavailable = None

    def __init__(self, rooms: Rooms) -> None:
        self._rooms = rooms

    def configure(self, name: str, make: Callable[[], Room], cap: int | None) -> Room:
        room = make()
        self._rooms.add(room)
        return room

    def knows(self, name: str) -> bool:
        return self._rooms.get(name) is not None

    def access(self, name: str) -> RoomAccess | None:
        return self._rooms.get_or_create(name)

    def find(self, name: str) -> RoomAccess | None:
        return self._rooms.get(name)

    def stop_room(self, name: str) -> Deferred[None]:
        room = self._rooms.get(name)
        if room is None:
            raise KeyError(name)
        return self._rooms.remove(room)

    def summaries(self) -> Deferred[list[dict[str, Any]]]:
        return succeed([room_summary(room) for room in self._rooms])

    def summary(self, name: str) -> Deferred[dict[str, Any]]:
        return on_room(self._rooms, name, room_summary)

    def stop(self, name: str) -> Deferred[None]:
        return on_room(self._rooms, name, lambda room: self.stop_room(room.name))

    def disconnect(self, name: str, peer_id: str) -> Deferred[None]:
        return on_room(self._rooms, name, lambda room: room.disconnect(peer_id))

    def post(self, name: str, message: Message) -> Deferred[None]:
        return on_room(self._rooms, name, lambda room: room.forward(message))

    def start(self) -> None:
        pass

    def shut_down(self) -> Deferred[None]:
        return succeed(None)


class _NotStartedAgain(Events):
    """`Events` that pass everything on but a room's start."""

    def __init__(self, inner: Events) -> None:
        self._inner = inner

    def room_started(self, room: str) -> None:
        pass

    def __getattribute__(self, name: str) -> Any:
        if name in ("room_started", "_inner", "__class__"):
            return object.__getattribute__(self, name)
        return getattr(object.__getattribute__(self, "_inner"), name)


class Rooms(MultiService):
    """
    The rooms of a server, by name.

    Rooms started with `start_room` stay until `stop_room`, even when they
    empty.  With a `factory`, a peer asking for a room that does not exist
    gets one made by the factory, and such a room stops when its last peer
    leaves.  `max_peers` is the cap for rooms started here without one of
    their own (None: no cap).

    `backend` makes the `Backend` for this registry: `LocalRooms` (every
    room here) unless given; cluster mode gives a cluster node's
    (`twisted_signal.cluster.ClusterRooms` does).  Iterating, `len` and
    `get` are about the rooms that run here.
    """

    _log = Logger()

    def __init__(
        self,
        factory: RoomFactory | None = None,
        *,
        max_peers: int | None = 4,
        clock: IReactorTime | None = None,
        backend: Callable[[Rooms], Backend] | None = None,
    ) -> None:
        super().__init__()
        self.factory = factory
        self.max_peers = max_peers
        self._clock = clock
        self._events: Events = NO_EVENTS
        self.backend: Backend = (backend or LocalRooms)(self)

    @property
    def events(self) -> Events:
        """
        Where every room of this registry reports its lifecycle (see
        `twisted_signal.events`); setting it reaches the rooms already here.
        """
        return self._events

    @events.setter
    def events(self, events: Events) -> None:
        self._events = events
        for room in self:
            room.events = events

    def get(self, name: str) -> Room | None:
        """The room `name` if it runs here."""
        room = self.namedServices.get(name)
        return room if isinstance(room, Room) else None

    @property
    def creates_on_demand(self) -> bool:
        return self.factory is not None

    @property
    def unavailable(self) -> str | None:
        """
        Why these rooms cannot serve joins right now (``/healthz`` answers
        503 with it as its ``status``), or None.  One server always can; a
        cluster node cannot while Redis is unreachable.
        """
        return self.backend.unavailable

    @property
    def other_nodes(self) -> OtherNodes | None:
        """Resume across the nodes of a cluster; None on one server."""
        return self.backend.other_nodes

    def start_room(
        self,
        name: str,
        room_class: type[Room] = Room,
        options: Any = None,
        *,
        max_peers: int | _Default | None = DEFAULT,
    ) -> Room:
        """
        Start a room that stays until `stop_room`.  `max_peers` is the
        registry's unless given (None: no cap).  (In cluster mode every
        node is given the same rooms, and runs each only while it owns it.)

        @raise ValueError: the name is not a valid room name or is taken.
        """
        cap = self.max_peers if isinstance(max_peers, _Default) else max_peers

        def make() -> Room:
            return room_class(name, options, max_peers=cap, clock=self._clock)

        return self.backend.configure(name, make, cap)

    def get_or_create(self, name: str) -> Room | None:
        """
        The room called `name` here, made by the factory if there is none
        and rooms are created on demand; None otherwise.
        """
        room = self.get(name)
        if room is None and self.factory is not None:
            room = self.factory(name)
            room.call_when_empty(self._emptied)
            self.add(room)
        return room

    def access(self, name: str) -> RoomAccess | None:
        """
        What a connection joining `name` talks to: on one server
        `get_or_create`; in cluster mode, the relay to the room's owner node.
        """
        return self.backend.access(name)

    def find(self, name: str) -> RoomAccess | None:
        """
        What a connection of `name` talks to, if it exists; never creates.
        """
        return self.backend.find(name)

    def stop_room(self, name: str) -> Deferred[None]:
        """
        Stop the room (its peers get "Room closed") and forget it.

        @raise KeyError: there is no such room (here).
        """
        return self.backend.stop_room(name)

    # What the admin API calls (`twisted_signal.admin`).  Each fails with
    # `NoSuchRoom` for a room that is not here; a cluster node answers them
    # for every room of the cluster.

    def summaries(self) -> Deferred[list[dict[str, Any]]]:
        """The `room_summary` of every room."""
        return self.backend.summaries()

    def summary(self, name: str) -> Deferred[dict[str, Any]]:
        """The `room_summary` of one room."""
        return self.backend.summary(name)

    def stop(self, name: str) -> Deferred[None]:
        """`stop_room`: fires once the room is gone."""
        return self.backend.stop(name)

    def disconnect(self, name: str, peer_id: str) -> Deferred[None]:
        """`Room.disconnect`: fires once the peer is gone, or fails with `NoSuchPeer`."""
        return self.backend.disconnect(name, peer_id)

    def post(self, name: str, message: Message) -> Deferred[None]:
        """`Room.forward` (all or nothing: fails with `NoSuchPeer`)."""
        return self.backend.post(name, message)

    # The service.

    def startService(self) -> None:
        super().startService()
        self.backend.start()

    def stopService(self) -> Deferred[None]:
        """
        The one shutdown path: the backend first (a cluster node tells its
        peers and hands its rooms over), then every room still here stops,
        its peers told ``"Room closed"`` (``"shutdown"``) and closed 1001.
        """

        def rooms_stop(_: object) -> Deferred[None]:
            for room in self:
                room.close_reason = "shutdown"
            d = super(Rooms, self).stopService()
            return d if d is not None else succeed(None)

        return self.backend.shut_down().addCallback(rooms_stop)

    def __iter__(self) -> Iterator[Room]:
        return (s for s in list(self.services) if isinstance(s, Room))

    def __len__(self) -> int:
        return len(self.namedServices)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.backend.knows(name)

    # What a backend calls: the rooms that run here.

    def add(self, room: Room, *, continued: bool = False) -> None:
        """
        Run `room` here.  A room `continued` (started before on another
        node, cluster mode) does not report that it started again.

        @raise ValueError: the name is not a valid room name or is taken.
        """
        if not is_room_name(room.name):
            raise ValueError(f"not a valid room name: {room.name!r}")
        if room.name in self.namedServices:
            raise ValueError(f"room {room.name!r} already exists")
        room.events = _NotStartedAgain(self._events) if continued else self._events
        try:
            room.setServiceParent(self)
        finally:
            room.events = self._events
        self._log.info("room {room} started", room=room.name)

    def remove(self, room: Room) -> Deferred[None]:
        """Stop `room` (its peers get "Room closed") and forget it."""
        room.call_when_empty(None)
        d = self.removeService(room)
        self._log.info("room {room} stopped", room=room.name)
        return d if d is not None else succeed(None)

    def forsake(self, room: Room) -> None:
        """
        Forget `room` without stopping it: it runs on another node now
        (cluster mode), so its peers are told nothing from here.
        """
        room.abandon()
        if room in self.services:
            self.services.remove(room)
            self.namedServices.pop(room.name, None)
            room.parent = None
            room.running = False

    def _emptied(self, room: Room) -> None:
        if self.get(room.name) is room:
            self.remove(room)
