"""
The lifecycle events of a server, behind one small seam.

Rooms and peers tell an `Events` what happens to them (a room starts or
finishes, a peer joins or leaves, a join or handshake is refused, an error
goes to a client, a connection closes, a message is forwarded); metrics and
webhooks are both `Events` subclasses, and `combine` hands several of them
to the server as one.  Every method is a no-op here: override the ones you
need.  Methods are called synchronously and must not raise or block.
"""

from __future__ import annotations

from typing import Any

__all__ = ["NO_EVENTS", "Events", "combine"]


class Events:
    """
    What a server reports.  Subclass it and override what you need.
    """

    def room_started(self, room: str) -> None:
        """A room has started (on the node that runs it)."""

    def room_finished(self, room: str) -> None:
        """A room has stopped, after its peers have gone."""

    def peer_joined(self, room: str, peer_id: str) -> None:
        """A peer has been admitted to a room."""

    def peer_left(self, room: str, peer_id: str) -> None:
        """A peer has left its room (for good: not while held for resume)."""

    def join_refused(self, room: str, reason: str) -> None:
        """A peer was refused by the room (``"room_is_full"``, a `Refused` reason, ...)."""

    def handshake_rejected(self, status: int) -> None:
        """An upgrade was answered with this HTTP status (400, 401, 403, 404, 503, 500)."""

    def connected(self) -> None:
        """A WebSocket upgrade was accepted."""

    def closed(self, code: int | None) -> None:
        """A peer's connection ended, with this close code (None: no close frame)."""

    def error_sent(self, description: str) -> None:
        """An ``error`` message with this description was sent to a client."""

    def rate_limited(self) -> None:
        """A client's message was dropped by its rate limit."""

    def resume(self, outcome: str) -> None:
        """
        A held peer's fate: ``"held"``, ``"resumed"`` or ``"expired"``, or
        ``"refused"`` for a resume token that could not be honoured.
        """

    def handover(self, outcome: str) -> None:
        """
        A connection between the nodes of one host (``--handover``):
        ``"sent"`` to the node of its room, ``"received"`` from another
        node, ``"fallback"`` served here because that node did not answer,
        or ``"refused"``, a hand-over socket closed for what it sent.
        """

    def forwarded(self, received: float) -> None:
        """
        A client's message has been written to its addressees; `received`
        is when its frame arrived (the server clock's seconds).  This is
        the hot path: keep it cheap.
        """


NO_EVENTS = Events()
"""Reports nothing."""


class _Fanout(Events):
    """
    Several observers as one, each method calling only the observers that
    override it.
    """

    def __init__(self, observers: tuple[Events, ...]) -> None:
        for name in _METHODS:
            targets = tuple(getattr(o, name) for o in observers if _overrides(o, name))
            setattr(self, name, _fan(targets))


_METHODS = tuple(
    name for name, value in vars(Events).items() if callable(value) and not name.startswith("_")
)


def _overrides(observer: Events, name: str) -> bool:
    return getattr(type(observer), name) is not getattr(Events, name)


def _fan(targets: tuple[Any, ...]) -> Any:
    if not targets:
        return _nothing
    if len(targets) == 1:
        return targets[0]

    def fan(*args: Any) -> None:
        for target in targets:
            target(*args)

    return fan


def _nothing(*args: Any) -> None:
    pass


def combine(*observers: Events | None) -> Events:
    """
    One `Events` that reports to each of `observers` (None ones are skipped).
    """
    present = tuple(o for o in observers if o is not None)
    if not present:
        return NO_EVENTS
    if len(present) == 1:
        return present[0]
    return _Fanout(present)
