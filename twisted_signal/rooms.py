"""
The registry of rooms: a `MultiService` holding one `Room` per name.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger

from .errors import NoSuchRoom
from .events import NO_EVENTS, Events
from .message import Message
from .room import Room, RoomAccess

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime

    from .context import AuthData
    from .resume import GiveAway

__all__ = ["ROOM_NAME", "RoomFactory", "Rooms", "is_room_name", "room_summary"]

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


class Rooms(MultiService):
    """
    The rooms of a server, by name.

    Rooms started with `start_room` stay until `stop_room`, even when they
    empty.  With a `factory`, a peer asking for a room that does not exist
    gets one made by the factory, and such a room stops when its last peer
    leaves.  `max_peers` is the cap for rooms started here without one of
    their own (None: no cap).
    """

    _log = Logger()

    def __init__(
        self,
        factory: RoomFactory | None = None,
        *,
        max_peers: int | None = 4,
        clock: IReactorTime | None = None,
    ) -> None:
        super().__init__()
        self.factory = factory
        self.max_peers = max_peers
        self._clock = clock
        self._events: Events = NO_EVENTS

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
        return None

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
        registry's unless given (None: no cap).

        @raise ValueError: the name is not a valid room name or is taken.
        """
        cap = self.max_peers if isinstance(max_peers, _Default) else max_peers
        room = room_class(name, options, max_peers=cap, clock=self._clock)
        self._add(room)
        return room

    def get_or_create(self, name: str) -> Room | None:
        """
        The room called `name`, made by the factory if there is none and
        rooms are created on demand; None otherwise.
        """
        room = self.get(name)
        if room is None and self.factory is not None:
            room = self.factory(name)
            room.call_when_empty(self._emptied)
            self._add(room)
        return room

    def access(self, name: str) -> RoomAccess | None:
        """
        What a connection joining `name` talks to: here `get_or_create`;
        in cluster mode, the relay to the room's owner node.
        """
        return self.get_or_create(name)

    def find(self, name: str) -> RoomAccess | None:
        """
        What a connection of `name` talks to, if it exists; never creates.
        """
        return self.get(name)

    #: What the resume tokens of this server start with (in cluster mode,
    #: the node's id, so that another node knows whom to ask).
    token_prefix = ""

    def claim_elsewhere(
        self, token: str, room: str, identity: str | None
    ) -> Deferred[AuthData | None] | None:
        """
        A resume token that another node issued (cluster mode): ask that
        node for its peer.  Fires with the peer's id and credentials, or
        None if that node refuses or does not answer; None at once when the
        token is not another node's (always, on a single server).
        """
        return None

    def give_away_with(self, give_away: GiveAway) -> None:
        """
        How this server hands one of its held peers to a connection on
        another node (cluster mode); a single server has no other node.
        """

    def stop_room(self, name: str) -> Deferred[None]:
        """
        Stop the room (its peers get "Room closed") and forget it.

        @raise KeyError: there is no such room.
        """
        room = self.get(name)
        if room is None:
            raise KeyError(name)
        return self._remove(room)

    # What the admin API calls (`twisted_signal.admin`).  Each fails with
    # `NoSuchRoom` for a room that is not here; a cluster node answers them
    # for every room of the cluster.

    def summaries(self) -> Deferred[list[dict[str, Any]]]:
        """The `room_summary` of every room."""
        return succeed([room_summary(room) for room in self])

    def summary(self, name: str) -> Deferred[dict[str, Any]]:
        """The `room_summary` of one room."""
        return self._on_room(name, room_summary)

    def stop(self, name: str) -> Deferred[None]:
        """`stop_room`: fires once the room is gone."""
        return self._on_room(name, lambda room: self.stop_room(room.name))

    def disconnect(self, name: str, peer_id: str) -> Deferred[None]:
        """`Room.disconnect`: fires once the peer is gone, or fails with `NoSuchPeer`."""
        return self._on_room(name, lambda room: room.disconnect(peer_id))

    def post(self, name: str, message: Message) -> Deferred[None]:
        """`Room.forward` (all or nothing: fails with `NoSuchPeer`)."""
        return self._on_room(name, lambda room: room.forward(message))

    def _on_room(self, name: str, action: Callable[[Room], Any]) -> Deferred[Any]:
        room = self.get(name)
        if room is None:
            return fail(NoSuchRoom(name))
        return maybeDeferred(action, room)

    def stopService(self) -> Deferred[None]:
        for room in self:
            room.close_reason = "shutdown"
        return super().stopService()  # type: ignore[no-any-return]

    def __iter__(self) -> Iterator[Room]:
        return (s for s in list(self.services) if isinstance(s, Room))

    def __len__(self) -> int:
        return len(self.namedServices)

    def __contains__(self, name: object) -> bool:
        return name in self.namedServices

    def _add(self, room: Room) -> None:
        if not is_room_name(room.name):
            raise ValueError(f"not a valid room name: {room.name!r}")
        if room.name in self.namedServices:
            raise ValueError(f"room {room.name!r} already exists")
        room.events = self._events
        room.setServiceParent(self)
        self._log.info("room {room} started", room=room.name)

    def _remove(self, room: Room) -> Deferred[None]:
        room.call_when_empty(None)
        d = self.removeService(room)
        self._log.info("room {room} stopped", room=room.name)
        return d if d is not None else succeed(None)

    def _emptied(self, room: Room) -> None:
        if self.get(room.name) is room:
            self._remove(room)
