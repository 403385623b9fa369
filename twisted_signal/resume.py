"""
Resume (SPEC 5.4): a peer whose connection is lost without a close frame is
held for a while, so a client on a flaky network can come back as itself.

The room reaches a peer through a `Link`, not through its connection.  While
the peer is held, the link queues what the room sends (the newest 256
messages); a connection that resumes takes the link over and gets the queue.
This module does no I/O and knows nothing of WebSockets.
"""

from __future__ import annotations

import secrets
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from .context import AuthData

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Connection", "Departure", "GiveAway", "Link", "Resumption"]

MAX_QUEUED = 256


class Connection(Protocol):
    """
    What a link needs of the connection that carries its peer.
    """

    def write(self, payload: bytes) -> None: ...

    def close(self, code: int) -> None: ...


class Link:
    """
    The room's way to one peer, whichever connection carries it now.  Its
    `send` and `close` are what the room's `PeerHandle` holds (see
    `twisted_signal.session`).
    """

    __slots__ = ("_max_queued", "_on_close_while_held", "_queue", "connection", "token")

    def __init__(self, connection: Connection, max_queued: int = MAX_QUEUED) -> None:
        self.connection: Connection | None = connection
        self.token: str | None = None
        self._max_queued = max_queued
        self._queue: deque[bytes] | None = None
        self._on_close_while_held: Callable[[], None] | None = None

    @property
    def queue(self) -> deque[bytes]:
        """
        What the room sent while the peer was held (made on first use: most
        peers are never held, and an empty bounded deque is most of a
        kilobyte).
        """
        if self._queue is None:
            self._queue = deque(maxlen=self._max_queued)
        return self._queue

    def send(self, payload: bytes) -> None:
        connection = self.connection
        if connection is not None:
            connection.write(payload)
        else:
            self.queue.append(payload)

    def close(self, code: int) -> None:
        connection = self.connection
        if connection is not None:
            connection.close(code)
        elif self._on_close_while_held is not None:
            # The room wants a held peer gone (it is stopping, or an operator
            # asked): the hold ends now.
            release, self._on_close_while_held = self._on_close_while_held, None
            release()


@dataclass
class _Entry:
    """
    A peer that may be resumed with a token: held (its connection is gone),
    or live (its connection seems open, but the client may know better).
    """

    link: Link
    room: str
    state: Callable[[], Any]
    expire: Callable[[], None]
    replace: Callable[[], None]
    timer: IDelayedCall | None = None


@dataclass(frozen=True, slots=True)
class Departure:
    """
    A peer held here that a connection on another node (cluster mode) has
    claimed with its token: the token is used up, and `link` goes on
    queueing what the room sends until the peer has moved.
    """

    auth: AuthData
    link: Link
    moved: Callable[[], None]
    """It lives on elsewhere: end it here without a leave (`on_terminate`)."""
    lost: Callable[[], None]
    """It never arrived elsewhere: let it go as usual (it leaves the room)."""


GiveAway = Callable[[str, str, str | None], Departure | None]
"""``give_away(token, room, identity)``: the `Departure` for a claim from
another node, or None (unknown, used, expired, other-room or other-identity
token)."""


class Resumption:
    """
    The resumable peers of a server, by resume token.

    Every admitted peer gets a token (`issue`).  When its connection is lost
    without a close frame it is `hold`-ed for the window.  A connection that
    presents the token (`claim`) takes the peer over, whether it is held or
    its old connection still looks open: a client on a phone that changed
    networks knows its socket is dead long before the server's pings do.
    """

    def __init__(self, window: float, clock: IReactorTime, prefix: str = "") -> None:
        self.window = window
        self.prefix = prefix
        """What every token starts with (in cluster mode, the node's id)."""
        self._clock = clock
        self._entries: dict[str, _Entry] = {}

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def held(self) -> int:
        return sum(1 for entry in self._entries.values() if entry.timer is not None)

    def issue(
        self,
        link: Link,
        room: str,
        state: Callable[[], Any],
        expire: Callable[[], None],
        replace: Callable[[], None],
    ) -> str | None:
        """
        A fresh token for `link` (its previous one is void), or None when
        resume is off.  `state()` gives what a resuming connection inherits,
        `expire()` lets the peer go, and `replace()` cuts its old connection
        when a new one takes it over.
        """
        if not self.enabled:
            return None
        self.forget(link)
        token = self.prefix + secrets.token_urlsafe(32)
        link.token = token
        self._entries[token] = _Entry(link, room, state, expire, replace)
        return token

    def forget(self, link: Link) -> None:
        """
        The peer is gone for good: its token is void.
        """
        token, link.token = link.token, None
        entry = self._entries.pop(token, None) if token else None
        if entry is not None and entry.timer is not None and entry.timer.active():
            entry.timer.cancel()
        link._on_close_while_held = None

    def hold(self, link: Link) -> bool:
        """
        Hold `link` (its connection is gone) for the window; its entry's
        `expire()` runs if nobody resumes it in time, or if the room closes
        the link meanwhile.  False if it has no live token: the caller lets
        the peer go at once.
        """
        token = link.token
        entry = self._entries.get(token) if token else None
        if entry is None or entry.timer is not None:
            return False
        assert token is not None
        link.connection = None
        entry.timer = self._clock.callLater(self.window, self._expire, token)
        link._on_close_while_held = lambda: self._expire(token)
        return True

    def peek(self, token: str | None, room: str) -> Any:
        """
        The state `token` would hand over in `room`, or None; nothing changes.
        """
        entry = self._entries.get(token) if token else None
        return entry.state() if entry is not None and entry.room == room else None

    def claim(self, token: str | None, room: str) -> tuple[Link, Any] | None:
        """
        Take the peer of `token` over if it is resumable in `room`; the token
        is then used up (and a live peer's old connection cut).  None for an
        unknown, used, expired or other-room token.
        """
        entry = self._entries.get(token) if token else None
        if entry is None or entry.room != room:
            return None
        state = entry.state()
        self.forget(entry.link)
        if entry.timer is None:
            entry.replace()
        return entry.link, state

    def release_all(self) -> None:
        """
        Let every held peer go now (the server is shutting down).
        """
        for token, entry in list(self._entries.items()):
            if entry.timer is not None:
                self._expire(token)

    def _expire(self, token: str) -> None:
        entry = self._entries.get(token)
        if entry is None:
            return
        self.forget(entry.link)
        entry.expire()
