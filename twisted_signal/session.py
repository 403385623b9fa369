"""
The peer's session: one peer from the moment admission lets it in until it
has gone for good, whichever connection carries it (SPEC 1.4 steps 3 and 4,
SPEC 5.4).

A front (the server's own protocol in `twisted_signal.peer`, or any other)
makes a `Session` for a new peer, or carries on the one that a resume token
names, and tells it what happens to its connection.  The session joins the
room, holds the peer for resume when its connection is lost, hands it to a
new connection or to another node, or lets it go: the front's
``on_terminate``, then the room's leave, exactly once per peer.  The room
reaches the peer through the session's `Link` (`Session.handle`), never
through a connection, so a local connection, a held peer and a peer carried
on by another node all look the same to it.

Its life cycle (`Session.status`):

- ``joining``: the room has been asked to take it in;
- ``joined``: the room took it in, a connection carries it;
- ``held``: its connection was lost without a close frame; the room's
  messages queue until a connection resumes it or the window passes;
- ``taken``: a new connection has claimed its token and carries it on once
  open (`resume`); its old connection, if it still looked open, is cut;
- ``moved``: another node of a cluster carries it on: its end here is the
  front's ``on_terminate``, without a leave;
- ``finished``: it has gone (``on_terminate``, then the leave).

This module does no I/O and knows nothing of WebSockets.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, Protocol

from twisted.logger import Logger

from .context import AuthData, PeerContext
from .hooks import then
from .resume import Departure, Link
from .room import PeerHandle, RoomAccess

if TYPE_CHECKING:
    from .admission import Held
    from .events import Events
    from .resume import Resumption
    from .rooms import Rooms

__all__ = ["Front", "Host", "Session", "Status", "give_away"]

Status = Literal["joining", "joined", "held", "taken", "moved", "finished"]


class Host(Protocol):
    """
    What a session needs of the server (a `PeerFactory` is one).
    """

    @property
    def rooms(self) -> Rooms: ...

    @property
    def resumption(self) -> Resumption: ...

    @property
    def events(self) -> Events: ...

    @property
    def accepting(self) -> bool:
        """False once the server is shutting down: nobody is held then."""


class Front(Protocol):
    """
    What a session needs of the connection that carries it.  `write` and
    `close` are what the room calls through the session's `Link`: make
    them the connection's own bound methods (attributes), so that a message
    costs no call in between.
    """

    def write(self, payload: bytes) -> None:
        """Write what the room sends (SPEC 1's encoding) to the client."""

    def close(self, code: int) -> None:
        """Close the connection with this close code."""

    def admitted(self, peer_ids: list[str], resume_token: str | None) -> None:
        """
        The peer is in the room, with `peer_ids` there already; its resume
        token is now `resume_token` (None when resume is off).
        """

    def terminate(self) -> Any:
        """
        The peer has gone: the front's user hook (``on_terminate``); it may
        return a `Deferred`.
        """

    def drop(self) -> None:
        """Another connection has taken the peer over: cut this one, quietly."""

    @property
    def public(self) -> object:
        """What room callbacks get as ``room.peers[peer_id].peer``."""


class Session:
    """
    One peer, whichever connection carries it (see the module's docstring).
    `auth`, `context` and `state` (``on_init``'s value) are what a resuming
    connection inherits.
    """

    __slots__ = (
        "_front",
        "_host",
        "_last",
        "_link",
        "auth",
        "context",
        "room",
        "state",
        "status",
    )

    _log = Logger()

    def __init__(
        self, host: Host, auth: AuthData, context: PeerContext, state: Any, front: Front
    ) -> None:
        self.auth = auth
        self.context = context
        self.state = state
        self.room: RoomAccess | None = None
        """The room it joined, or that its resuming connection found."""
        self.status: Status = "joining"
        self._host = host
        self._front: Front | None = front
        self._last = front
        """The last connection that carried it: its front ends the peer."""
        self._link = Link(front)

    @property
    def peer_id(self) -> str:
        return self.auth.peer_id

    @property
    def queued(self) -> int:
        """How many of the room's messages wait for a connection."""
        return len(self._link.queue)

    def carried_by(self, front: Front) -> bool:
        """Whether `front` carries the peer now (not one that was cut)."""
        return self._front is front

    def handle(self, *, announced: bool = False) -> PeerHandle:
        """
        How the room reaches this peer, whichever connection carries it
        (`announced`: see `PeerHandle.announced`).
        """
        link = self._link
        return PeerHandle(
            self.auth.peer_id,
            self.auth,
            link.send,
            link.close,
            self._admitted,
            self._public,
            announced=announced,
        )

    # What the front calls.

    def join(self, room: RoomAccess, *, announced: bool = False) -> None:
        """
        Ask `room` to take the peer in; the front's `Front.admitted` (or the
        room's refusal, written and closed) is the answer.  `announced`: the
        front has logged the arrival already.
        """
        self.room = room
        room.join(self.handle(announced=announced))

    def taken(self) -> None:
        """
        A new connection has claimed the peer's resume token; it carries the
        peer on once it is open (`resume`).  Meanwhile the room's messages
        queue.
        """
        self.status = "taken"

    def resume(self, front: Front) -> None:
        """
        `front` carries the peer on (it claimed the token, see `taken`): it
        is told the peers in the room, gets a new token and what was queued.
        """
        self._front = self._last = front
        link = self._link
        link.connection = front
        self.room = room = self._host.rooms.find(self.context.room)
        self._host.events.resume("resumed")
        peer_id = self.auth.peer_id
        self._admitted([p for p in room.peers if p != peer_id] if room is not None else [])
        while link.queue and link.connection is not None:
            front.write(link.queue.popleft())

    def lost(self, front: Front, *, may_hold: bool) -> None:
        """
        The connection of `front` has ended.  With `may_hold` (the client
        sent no close frame and the server did not close it) a peer the room
        had taken in is held for resume, unless the server is shutting down;
        otherwise the peer has gone.  A connection that no longer carries
        the peer changes nothing.
        """
        if front is not self._front or self.status in ("finished", "moved"):
            return
        self._front = None
        host = self._host
        admitted = self.status == "joined"
        if may_hold and admitted and host.accepting and host.resumption.hold(self._link):
            self.status = "held"
            self._log.info(
                "peer {peer_id} held for {window}s to resume",
                peer_id=self.auth.peer_id,
                window=host.resumption.window,
            )
            host.events.resume("held")
            return
        self.finish()

    def closed_by_server(self, front: Front) -> None:
        """
        The server is closing the connection of `front` (a protocol error,
        its rate limit, too slow, an operator, its room stopping): its token
        is void now, and the peer leaves now, whether or not the client
        answers the close.
        """
        if front is not self._front:
            return
        self._host.resumption.forget(self._link)
        self.finish()

    def abandon(self, front: Front) -> None:
        """
        The connection that claimed the peer's token (`taken`) was lost
        before it opened: the token is used up, nobody can resume the peer
        any more, so it goes (with `front`'s ``on_terminate``).
        """
        self._last = front
        self.room = None
        self.finish()

    def finish(self) -> None:
        """
        The peer has gone for good: the front's ``on_terminate``, then it
        leaves its room (once; later calls do nothing).
        """
        if self.status in ("finished", "moved"):
            return
        self.status = "finished"
        self._front = None
        host = self._host
        host.resumption.forget(self._link)
        result = self._last.terminate()
        room = self.room
        if room is None:
            room = host.rooms.find(self.context.room)
        if room is not None:
            peer_id = self.auth.peer_id
            then(result, lambda _: room.leave(peer_id))

    # What the room and the resumption call.

    def _admitted(self, peer_ids: list[str]) -> None:
        """The room (or `resume`) lets the peer in: a fresh token, and the front is told."""
        front = self._front
        if front is None:
            # Let in after it had gone (its leave waits behind the join in
            # the room's order), or while it is held or taken over: no
            # token for a peer nobody can resume.
            return
        self.status = "joined"
        token = self._host.resumption.issue(
            self._link, self.context.room, self._carried, self._expired, self._supersede
        )
        front.admitted(peer_ids, token)

    def _carried(self) -> Session:
        return self

    def _expired(self) -> None:
        """Held and nobody came back in time (or the room closed)."""
        self._host.events.resume("expired")
        self.finish()

    def _supersede(self) -> None:
        """
        A new connection claimed the token while the old one still looked
        open (its client knew it was dead before we did): cut the old one.
        """
        front, self._front = self._front, None
        self._link.connection = None
        self.status = "taken"
        if front is not None:
            front.drop()

    def _moved(self) -> Any:
        """Another node carries the peer on: its end here, without a leave."""
        self.status = "moved"
        self._front = None
        return self._last.terminate()

    def _public(self) -> object:
        front = self._front or self._last
        return front.public


def give_away(
    resumption: Resumption,
    same_identity: Callable[[Held, str | None], bool],
    token: str,
    room: str,
    identity: str | None,
) -> Departure | None:
    """
    Hand a peer held here to a connection on another node (cluster mode), as
    `Resumption.claim` does on this one (a live old connection is cut
    without a leave).  Its end here is ``on_terminate`` and no ``left``.
    None for a token that names no session of `room` or another identity.
    """
    held = resumption.peek(token, room)
    if not isinstance(held, Session) or not same_identity(held, identity):
        return None
    claimed = resumption.claim(token, room)
    assert claimed is not None  # peeked just now
    return Departure(held.auth, claimed[0], held._moved, held._expired)
