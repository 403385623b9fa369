"""
A room: the peers that may talk to each other, and the one order in which
their messages are delivered.

The room never sees a WebSocket.  It holds each peer as a `PeerHandle`, a
few callables that the connection (or, later, another process) supplies, and
it does all its work through one `SerialQueue`, so joins, leaves and
messages happen in a single total order even when user callbacks answer
asynchronously.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import message as wire
from .context import AuthData
from .errors import NoSuchPeer, Refused
from .events import NO_EVENTS, Events
from .hooks import SerialQueue, call, call_logged, then
from .message import ALL, Message

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_NORMAL",
    "CLOSE_POLICY_VIOLATION",
    "PeerHandle",
    "Room",
    "RoomAccess",
]

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008


@dataclass(eq=False, frozen=True, slots=True)
class PeerHandle:
    """
    How a room reaches one of its peers.

    - `send(payload)` writes an encoded message to the client;
    - `close(code)` closes the client's connection with that close code;
    - `admitted(peer_ids)` tells the connection it has joined (it then
      sends ``authenticated``, listing `peer_ids`, the peers already there).

    When the connection ends, its owner calls `Room.leave(peer_id)`.  The
    room itself never reads more of a handle than these and the peer's
    identity (`peer_id`, `auth`).
    """

    peer_id: str
    auth: AuthData
    send: Callable[[bytes], None]
    close: Callable[[int], None]
    admitted: Callable[[list[str]], None]
    front: Callable[[], Any] | None = None
    """Finds the front's own object for the peer now (see `peer`)."""
    announced: bool = False
    """
    Its front has logged its arrival in the room, with its remote address:
    the room does not log its join a second time (one log event per join).
    """

    @property
    def peer(self) -> Any:
        """
        The front's own object for this peer, for room callbacks that talk
        to it: the `Peer` of its current connection for the server's own
        protocol (after a resume, the new one), None for a peer that is on
        another node or has no such object.
        """
        front = self.front
        return None if front is None else front()


class RoomAccess(Protocol):
    """
    What a connection needs of its room: a `Room`, or in cluster mode the
    node's relay to the room's owner (`twisted_signal.cluster`).
    """

    name: str

    @property
    def peers(self) -> Mapping[str, PeerHandle]: ...

    def join(self, handle: PeerHandle) -> None: ...

    def leave(self, peer_id: str) -> None: ...

    def submit(self, message: Message, received: float | None = None) -> None: ...


class Room(Service):
    """
    One room.  Subclass it and override the ``on_*`` callbacks; each may
    return a plain value, a `Deferred`, or be ``async def``.

    `max_peers` (None for no limit) is checked before `on_join`, so a
    subclass keeps the server's cap even if it overrides `on_join`.
    """

    _log = Logger()
    name: str

    #: How long `stopService` waits for the peers' connections to close
    #: before it lets them go anyway.
    stop_timeout: float = 5.0

    #: Where the room reports its lifecycle (metrics, webhooks); `Rooms`
    #: sets it to its own `Rooms.events`.
    events: Events = NO_EVENTS

    def __init__(
        self,
        name: str,
        options: Any = None,
        *,
        max_peers: int | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self.max_peers = max_peers
        if clock is None:
            from twisted.internet import reactor

            clock = cast("IReactorTime", reactor)
        self._clock = clock
        self._peers: dict[str, PeerHandle] = {}
        self._peers_view = MappingProxyType(self._peers)
        self._queue = SerialQueue(f"room {name!r}")
        self._joining = 0
        self._closing = False
        self._stopped: Deferred[None] | None = None
        self._all_left: Deferred[None] | None = None
        self._on_empty: Callable[[Room], None] | None = None
        self._departures: dict[str, list[Deferred[None]]] = {}
        self.close_reason = "normal"
        """What `stopService` tells the peers: ``"normal"``, or ``"shutdown"``."""

    # User callbacks.

    def on_init(self, options: Any) -> Any:
        """
        Called once when the room starts, with the options it was started with.
        """

    def on_join(self, auth: AuthData) -> Any:
        """
        Called before a peer joins.  Raise `Refused` to keep it out.
        """

    def on_leave(self, peer_id: str) -> Any:
        """
        Called after a peer has left (it is no longer in `peers`).
        """

    def on_forward(self, message: Message) -> Any:
        """
        Called for every message a peer sends and for the room's own
        ``joined`` and ``left``.  Return the message (or a changed one) to
        deliver it, None to drop it.
        """
        return message

    def on_terminate(self) -> Any:
        """
        Called once when the room stops, after its peers have gone.
        """

    # Public API.

    @property
    def peers(self) -> Mapping[str, PeerHandle]:
        """
        The peers in the room, by id (read-only).
        """
        return self._peers_view

    def forward(self, message: Message) -> None:
        """
        Deliver `message` to its addressees (``"all"`` means every peer but
        its sender), after any messages the room is still working on.  It does
        not pass through `on_forward`.

        @raise NoSuchPeer: some listed peer is not in the room; then nothing
            is delivered.
        """
        self._check_addressees(message)
        self._queue.run(self._deliver, message, False)

    def disconnect(self, peer_id: str, code: int = CLOSE_POLICY_VIOLATION) -> Deferred[None]:
        """
        Close one peer's connection (1008 unless told).  The server closed
        it, so it is not held for resume: it leaves as soon as the connection
        is closed (a held peer at once), and the others get ``left``.  Fires
        once the peer is no longer in `peers`.

        @raise NoSuchPeer: the peer is not in the room.
        """
        handle = self._peers.get(peer_id)
        if handle is None:
            raise NoSuchPeer([peer_id])
        gone: Deferred[None] = Deferred()
        self._departures.setdefault(peer_id, []).append(gone)
        handle.close(code)
        return gone

    def startService(self) -> None:
        super().startService()
        self.events.room_started(self.name)
        self._queue.run(call, self.on_init, self.options)

    def stopService(self) -> Deferred[None]:
        """
        Tell every peer ``"Room closed"`` (with `close_reason`), close their
        connections (1000, or 1001 on shutdown), wait for them to leave (at
        most `stop_timeout`), then call `on_terminate`.
        """
        if self._stopped is not None:
            return _chain(self._stopped)
        super().stopService()
        self._closing = True
        self._stopped = Deferred()
        code = CLOSE_GOING_AWAY if self.close_reason == "shutdown" else CLOSE_NORMAL
        for handle in list(self._peers.values()):
            handle.send(wire.error(handle.peer_id, "Room closed", self.close_reason).to_bytes())
            self.events.error_sent("Room closed")
            handle.close(code)
        if self._peers:
            self._all_left = Deferred()
            timeout = self._clock.callLater(self.stop_timeout, self._let_go)
            self._all_left.addCallback(_cancel_timer, timeout)
            self._all_left.addCallback(lambda _: self._terminate())
        else:
            self._terminate()
        return _chain(self._stopped)

    # What connections call.

    def join(self, handle: PeerHandle) -> None:
        """
        Ask for `handle` to join.  The answer comes through the handle: it is
        either admitted, or sent ``"Could not join room"`` and closed.
        """
        self._joining += 1
        self._queue.run(self._join, handle)

    def leave(self, peer_id: str) -> None:
        """
        The peer's connection has ended.  Unknown ids are ignored, so this is
        safe to call for a peer that was refused or never joined.
        """
        if self._closing:
            self._leave_now(peer_id)
        else:
            self._queue.run(self._leave, peer_id)

    def submit(self, message: Message, received: float | None = None) -> None:
        """
        A message from the peer ``message.from_``: `on_forward` it, then
        deliver it in room order.  `received` is when its frame arrived
        (clock seconds), for `Events.forwarded`.
        """
        self._queue.run(self._relay, message, received)

    def restore(self, handle: PeerHandle) -> None:
        """
        Put `handle` in `peers` as it is, without `on_join` or ``joined``
        (replacing the handle of the same id, if any): a peer that joined
        under the room's previous owner node (cluster mode), or one that now
        sends through another node.
        """
        self._peers[handle.peer_id] = handle

    def call_when_empty(self, callback: Callable[[Room], None] | None) -> None:
        """
        Call `callback(room)` whenever the room is left with no peers and
        none joining, until it is stopped or the callback is replaced (None:
        no callback).  The registry stops rooms made on demand with it.
        """
        self._on_empty = callback

    def run_in_order(self, job: Callable[..., Any], *args: Any) -> None:
        """
        Run `job(*args)` in the room's one order: after every join, leave
        and message asked for before it, and before any asked for after it
        (a job that returns a `Deferred` holds the order until it fires).
        """
        self._queue.run(job, *args)

    @property
    def idle(self) -> bool:
        """Whether the room has nothing to do: no job running or waiting."""
        return self._queue.idle

    def abandon(self) -> None:
        """
        Drop what the room has not done yet, and do nothing more: it runs
        elsewhere now (cluster mode: another node owns it), and its peers
        are told nothing from here.
        """
        self._queue.cancel()

    # Internals.  Everything below runs as a job of self._queue.

    def _join(self, handle: PeerHandle) -> Any:
        if self._closing:
            return self._refuse(handle, "room_closed")
        if self.max_peers is not None and len(self._peers) >= self.max_peers:
            return self._refuse(handle, "room_is_full")
        try:
            result = call(self.on_join, handle.auth)
        except Exception as e:
            return self._refuse_for(handle, e)
        if isinstance(result, Deferred):
            return result.addCallbacks(
                lambda _: self._admit(handle),
                lambda f: self._refuse_for(handle, f.value, f),
            )
        return self._admit(handle)

    def _refuse_for(self, handle: PeerHandle, exc: BaseException, failure: Any = None) -> None:
        if isinstance(exc, Refused):
            return self._refuse(handle, exc.reason)
        self._log.failure(
            "Error in on_join of room {room}; refusing peer {peer_id}",
            failure,
            room=self.name,
            peer_id=handle.peer_id,
        )
        return self._refuse(handle, "internal_error")

    def _refuse(self, handle: PeerHandle, reason: str) -> None:
        self._joining -= 1
        self._log.info(
            "peer {peer_id} refused by room {room}: {reason}",
            peer_id=handle.peer_id,
            room=self.name,
            reason=reason,
        )
        handle.send(wire.error(handle.peer_id, "Could not join room", reason).to_bytes())
        handle.close(CLOSE_NORMAL)
        self.events.join_refused(self.name, reason)
        self.events.error_sent("Could not join room")
        self._check_empty()

    def _admit(self, handle: PeerHandle) -> Any:
        if self._closing:
            return self._refuse(handle, "room_closed")
        self._joining -= 1
        already = list(self._peers)
        self._peers[handle.peer_id] = handle
        if not handle.announced:
            self._log.info(
                "peer {peer_id} joined room {room}", peer_id=handle.peer_id, room=self.name
            )
        self.events.peer_joined(self.name, handle.peer_id)
        return then(self._relay(wire.joined(handle.peer_id)), lambda _: handle.admitted(already))

    def _leave(self, peer_id: str) -> Any:
        if self._closing:
            # The room was stopped while this leave waited its turn.
            return self._leave_now(peer_id)
        if self._peers.pop(peer_id, None) is None:
            return None
        self._departed(peer_id)
        self._log.info("peer {peer_id} left room {room}", peer_id=peer_id, room=self.name)
        self.events.peer_left(self.name, peer_id)
        result = call_logged("on_leave", self.on_leave, peer_id)
        result = then(result, lambda _: self._relay(wire.left(peer_id)))
        return then(result, lambda _: self._check_empty())

    def _leave_now(self, peer_id: str) -> None:
        if self._peers.pop(peer_id, None) is None:
            return
        self.events.peer_left(self.name, peer_id)
        self._departed(peer_id)
        call_logged("on_leave", self.on_leave, peer_id)
        if not self._peers and self._all_left is not None and not self._all_left.called:
            self._all_left.callback(None)

    def _departed(self, peer_id: str) -> None:
        for waiter in self._departures.pop(peer_id, ()):
            waiter.callback(None)

    def _let_go(self) -> None:
        for peer_id in list(self._peers):
            self._leave_now(peer_id)

    def _terminate(self) -> None:
        stopped = self._stopped
        assert stopped is not None

        def finished(_: object) -> None:
            self.events.room_finished(self.name)
            stopped.callback(None)

        then(call_logged("on_terminate", self.on_terminate), finished)

    def _check_empty(self) -> None:
        if not self._peers and not self._joining and not self._closing and self._on_empty:
            self._on_empty(self)

    def _relay(self, message: Message, received: float | None = None) -> Any:
        """
        on_forward, then deliver; a peer that addressed unknown peers gets
        ``"No such peer"``.
        """
        try:
            result = call(self.on_forward, message)
        except Exception:
            self._log.failure("Error in on_forward of room {room}", room=self.name)
            return None
        if isinstance(result, Deferred):
            return result.addCallbacks(
                self._deliver_from, self._forward_failed, callbackArgs=(message.from_, received)
            )
        return self._deliver_from(result, message.from_, received)

    def _forward_failed(self, failure: Failure) -> None:
        # Log here rather than let the queue do it: what follows a relay
        # (admitting a newcomer, stopping an empty room) must still happen.
        if not failure.check(CancelledError):
            self._log.failure("Error in on_forward of room {room}", failure, room=self.name)

    def _deliver_from(
        self, message: Message | None, sender: str | None, received: float | None = None
    ) -> None:
        if message is None:
            return
        if not isinstance(message, Message):
            self._log.error(
                "on_forward of room {room} returned {value!r}, not a Message or None",
                room=self.name,
                value=message,
            )
            return
        try:
            self._deliver(message, strict=True)
        except NoSuchPeer as e:
            handle = self._peers.get(sender) if sender is not None else None
            if handle is not None:
                handle.send(wire.error(handle.peer_id, "No such peer", e.peer_ids).to_bytes())
                self.events.error_sent("No such peer")
            return
        if received is not None:
            self.events.forwarded(received)

    def _check_addressees(self, message: Message) -> tuple[str, ...]:
        """
        The listed addressees, each once.

        @raise NoSuchPeer: some are not in the room.
        """
        ids = message.addressees()
        missing = [peer_id for peer_id in ids if peer_id not in self._peers]
        if missing:
            raise NoSuchPeer(missing)
        return ids

    def _deliver(self, message: Message, strict: bool) -> None:
        to = message.to
        peers = self._peers
        if to == ALL:
            sender = message.from_
            recipients = [h for peer_id, h in peers.items() if peer_id != sender]
        elif isinstance(to, tuple):
            ids = self._check_addressees(message) if strict else message.addressees()
            recipients = [peers[p] for p in ids if p in peers]
        else:
            return
        if recipients:
            payload = message.to_bytes()
            for handle in recipients:
                handle.send(payload)


def _cancel_timer(result: None, timer: IDelayedCall) -> None:
    if timer.active():
        timer.cancel()


def _chain(d: Deferred[None]) -> Deferred[None]:
    """
    A new Deferred that fires with `d`, so several callers can wait on it.
    """
    if d.called:
        return succeed(None)
    waiter: Deferred[None] = Deferred()

    def fire(result: object) -> object:
        waiter.callback(None)
        return result

    d.addBoth(fire)
    return waiter
