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

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Connection", "Link", "Resumption"]

MAX_QUEUED = 256


class Connection(Protocol):
    """
    What a link needs of the connection that carries its peer.
    """

    def write(self, payload: bytes) -> None: ...

    def close(self, code: int) -> None: ...

    def admitted(self, peer_ids: list[str]) -> None: ...


class Link:
    """
    The room's way to one peer, whichever connection carries it now.  Its
    bound methods are what the room's `PeerHandle` holds.
    """

    __slots__ = ("_on_close_while_held", "connection", "queue", "token")

    def __init__(self, connection: Connection, max_queued: int = MAX_QUEUED) -> None:
        self.connection: Connection | None = connection
        self.queue: deque[bytes] = deque(maxlen=max_queued)
        self.token: str | None = None
        self._on_close_while_held: Callable[[], None] | None = None

    @property
    def held(self) -> bool:
        return self.connection is None

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

    def admitted(self, peer_ids: list[str]) -> None:
        if self.connection is not None:
            self.connection.admitted(peer_ids)

    def new_token(self) -> str:
        """
        A fresh, unguessable resume token for this link (the old one is void).
        """
        self.token = secrets.token_urlsafe(32)
        return self.token


@dataclass
class _Hold:
    link: Link
    room: str
    state: Any
    expire: Callable[[], None]
    timer: IDelayedCall


class Resumption:
    """
    The held peers of a server, by resume token.
    """

    def __init__(self, window: float, clock: IReactorTime) -> None:
        self.window = window
        self._clock = clock
        self._held: dict[str, _Hold] = {}

    @property
    def enabled(self) -> bool:
        return self.window > 0

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, link: Link, room: str, state: Any, expire: Callable[[], None]) -> bool:
        """
        Hold `link` (its connection is gone) for the window.  `state` is given
        back to whoever resumes; `expire()` is called if nobody does in time,
        or if the room closes the link meanwhile.  False if resume is off or
        the link has no token: the caller lets the peer go at once.
        """
        token = link.token
        if not self.enabled or token is None:
            return False
        link.connection = None
        timer = self._clock.callLater(self.window, self._expire, token)
        self._held[token] = _Hold(link, room, state, expire, timer)
        link._on_close_while_held = lambda: self._expire(token)
        return True

    def peek(self, token: str | None, room: str) -> Any:
        """
        The state held under `token` for `room`, or None; nothing changes.
        """
        hold = self._held.get(token) if token else None
        return hold.state if hold is not None and hold.room == room else None

    def claim(self, token: str | None, room: str) -> tuple[Link, Any] | None:
        """
        Take the held link of `token` if it is held for `room`; the token is
        then used up.  None for an unknown, used, expired or other-room token.
        """
        if not token:
            return None
        hold = self._held.get(token)
        if hold is None or hold.room != room:
            return None
        del self._held[token]
        if hold.timer.active():
            hold.timer.cancel()
        hold.link._on_close_while_held = None
        hold.link.token = None
        return hold.link, hold.state

    def release_all(self) -> None:
        """
        Let every held peer go now (the server is shutting down).
        """
        for token in list(self._held):
            self._expire(token)

    def _expire(self, token: str) -> None:
        hold = self._held.pop(token, None)
        if hold is None:
            return
        if hold.timer.active():
            hold.timer.cancel()
        hold.link._on_close_while_held = None
        hold.link.token = None
        hold.expire()
