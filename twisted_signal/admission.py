"""
Admission (SPEC 1.4 step 2, SPEC 5.1, SPEC 5.4): whether an upgrade request
may become a peer, and as whom.

`Admission.admit` takes what the request carries (an `Upgrade`, no socket
and no Autobahn object) and the front's hooks, and answers `Admitted` or
`Refused` with the status and reason of the HTTP answer.  The order of the
checks lives here and nowhere else:

1. 400: ``parse_request`` raised `BadRequest`, or the room name is not one;
2. 401: the JWT is missing or bad (SPEC 5.1), or ``on_init`` raised
   `Unauthorized`;
3. 404: the room does not exist and rooms are not created on demand;
4. 403: the Origin is not allowed;
5. 503: the connection limit is reached, or the server is shutting down.

A resume token (SPEC 5.4) that names a peer held here hands that peer over
(no second ``on_init``); one another node of a cluster issued asks that node
to give its peer up, but only when the connection would be let in (that
node cannot take the peer back).  An unknown, used, expired, other-room or
other-identity token is no refusal: the connection joins as a new peer.

The user callbacks are called through `twisted_signal.hooks`, so they may be
``async``; the checks around them are plain functions of their inputs.  The
front turns a `Refused` into its HTTP answer, metric and log.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from .auth import token_from_request
from .context import AuthData, PeerContext
from .errors import BadRequest, Unauthorized
from .hooks import call
from .rooms import is_room_name
from .session import Host

if TYPE_CHECKING:
    from .resume import Link
    from .settings import Settings

__all__ = [
    "Admission",
    "Admitted",
    "Held",
    "Refused",
    "Server",
    "Upgrade",
    "check_token",
    "gate",
    "same_identity",
]

_log = Logger()


@dataclass(frozen=True, slots=True)
class Upgrade:
    """
    What an upgrade request carries that admission reads (the front makes it
    from its own request object).
    """

    path: str
    params: dict[str, list[str]]
    """The query, each name with its values (as Autobahn gives it)."""
    headers: dict[str, str]
    """Lower-case names (the cookies are in ``cookie``)."""
    origin: str | None = None

    @property
    def resume_token(self) -> str | None:
        values = self.params.get("resume")
        return values[0] if values else None

    def repeated(self) -> str | None:
        """
        The first of the parameters that say who the client is (``token``,
        ``resume``) that the query gives more than once, or None.  Which of
        two values counts is not for the server to guess: a proxy in front
        may have checked the other one.
        """
        for name in SINGLE_PARAMETERS:
            if len(self.params.get(name, ())) > 1:
                return name
        return None


SINGLE_PARAMETERS = ("token", "resume")


@dataclass(frozen=True, slots=True)
class Refused:
    """
    The request is answered with this HTTP status instead of an upgrade;
    `why` only goes to the log.
    """

    status: int
    reason: str
    why: str = ""


BAD_REQUEST = Refused(400, "Bad Request")
UNAUTHORIZED = Refused(401, "Unauthorized")
NOT_FOUND = Refused(404, "Not Found")
FORBIDDEN = Refused(403, "Forbidden")
UNAVAILABLE = Refused(503, "Service Unavailable")
INTERNAL_ERROR = Refused(500, "Internal Server Error")


class Held(Protocol):
    """
    What a peer held for resume carries over to the connection that takes it
    (the front's own type; see `Resumption.issue`).
    """

    @property
    def auth(self) -> AuthData: ...

    @property
    def context(self) -> PeerContext: ...

    @property
    def state(self) -> Any: ...


@dataclass(frozen=True, slots=True)
class Admitted:
    """
    The request becomes this peer.
    """

    auth: AuthData
    context: PeerContext
    state: Any
    """``on_init``'s value, or the resumed peer's."""
    held: Held | None = None
    """The peer it resumes, held here (`link` is set) or on another node."""
    link: Link | None = None
    """The claimed link of a peer held here: the connection takes it over."""


class Server(Host, Protocol):
    """
    What admission needs of the server (a `PeerFactory` is one): what a
    session needs, and more.
    """

    @property
    def settings(self) -> Settings: ...

    @property
    def countConnections(self) -> int:
        """How many connections are open (Autobahn's name)."""

    def origin_allowed(self, origin: str | None) -> bool: ...


def check_token(settings: Settings, upgrade: Upgrade, room: str) -> dict[str, Any] | None:
    """
    With a server-wide token verifier, the token's claims (they replace the
    credentials); None without one.

    @raise Unauthorized: the token is missing or bad for `room`.
    """
    verifier = settings.token_verifier
    if verifier is None:
        return None
    return verifier.verify(token_from_request(upgrade.params, upgrade.headers), room)


def gate(server: Server, upgrade: Upgrade, room: str) -> Refused | None:
    """
    The checks after authentication, in the contract's order: 404, 403, 503.
    """
    rooms = server.rooms
    if room not in rooms and not rooms.creates_on_demand:
        return NOT_FOUND
    if not server.origin_allowed(upgrade.origin):
        return FORBIDDEN
    if not server.accepting or server.countConnections > server.settings.max_connections:
        return UNAVAILABLE
    return None


def same_identity(settings: Settings, held: Held, identity: str | None) -> bool:
    """
    With tokens, only the same identity may take a held peer over.
    """
    return settings.token_verifier is None or held.auth.identity == identity


class _Refusal(Exception):
    def __init__(self, refused: Refused) -> None:
        self.refused = refused


class Admission:
    """
    The admission of one server's connections.  The front's hooks are given
    per request:

    - ``parse()``: ``(credentials, metadata, room_name)``; raises
      `BadRequest` for a 400;
    - ``init(context, auth)``: authenticate; raises `Unauthorized` for a
      401; its value becomes the peer's state;
    - ``terminate(admitted)``: a peer that ``init`` accepted is refused after
      all (or its client has gone): its end;
    - ``gone()``: the client has gone meanwhile (then a 400).
    """

    def __init__(self, server: Server) -> None:
        self._server = server

    async def admit(
        self,
        upgrade: Upgrade,
        peer_id: str,
        *,
        parse: Callable[[], Any],
        init: Callable[[PeerContext, AuthData], Any],
        terminate: Callable[[Admitted], object],
        gone: Callable[[], bool],
    ) -> Admitted | Refused:
        """
        Whether this request becomes a peer (a new one called `peer_id`, or
        the one its resume token names), in SPEC 1.4 step 2's order.
        """
        server = self._server
        repeated = upgrade.repeated()
        if repeated is not None:
            return Refused(400, "Bad Request", f"the query gives {repeated!r} more than once")
        # _parse and _init raise _Refusal: a refusal of the user's hooks.
        try:
            credentials, metadata, room = await _parse(parse)
            try:
                claims = check_token(server.settings, upgrade, room)
            except Unauthorized as e:
                return Refused(401, "Unauthorized", str(e))
            if claims is not None:
                credentials = claims
            token = upgrade.resume_token
            here = held = self._held_here(token, room, credentials)
            if held is None and token is not None and self._gate(upgrade, room, gone) is None:
                # Only a connection that will be let in asks another node to
                # give its peer up: that node cannot take the peer back.
                held = await self._held_elsewhere(token, room, credentials, init)
            if token is not None and held is None:
                server.events.resume("refused")
            if held is not None:
                # The same peer on a new connection: no second on_init.
                admitted = Admitted(held.auth, held.context, held.state, held)
            else:
                auth = AuthData(peer_id, credentials, metadata)
                context = PeerContext(peer_id, room)
                admitted = Admitted(auth, context, await _init(init, context, auth))
            # The peer is accepted: from here on, whatever ends it must call
            # on_terminate exactly once (a resumed peer's comes at its end).
            refused = self._gate(upgrade, room, gone)
            if refused is not None:
                if here is None:
                    # A new peer, or one another node has handed over:
                    # this connection was to carry it, and cannot.
                    terminate(admitted)
                return refused
            if here is not None:
                claimed = server.resumption.claim(token, room)
                assert claimed is not None  # nothing awaited since _held_here
                return Admitted(here.auth, here.context, here.state, here, claimed[0])
            if held is not None:
                # Held on another node, which has handed the peer over: it
                # joins the room's relay as itself (see docs/cluster.md).
                server.events.resume("resumed")
            return admitted
        except _Refusal as e:
            return e.refused

    def _gate(self, upgrade: Upgrade, room: str, gone: Callable[[], bool]) -> Refused | None:
        if gone():
            return BAD_REQUEST
        return gate(self._server, upgrade, room)

    def _held_here(self, token: str | None, room: str, credentials: dict[str, Any]) -> Held | None:
        """
        The peer held here that `token` takes over, if any.
        """
        server = self._server
        held: Held | None = server.resumption.peek(token, room)
        if held is None:
            return None
        if not same_identity(server.settings, held, AuthData("", credentials).identity):
            return None
        return held

    async def _held_elsewhere(
        self,
        token: str,
        room: str,
        credentials: dict[str, Any],
        init: Callable[[PeerContext, AuthData], Any],
    ) -> Held | None:
        """
        A token another node of a cluster issued: that node gives its peer
        up, and this connection carries it on.  Per-connection state cannot
        cross processes, so ``init`` runs here again with the peer's id and
        credentials (and its ``on_terminate`` ran there).
        """
        server = self._server
        if not server.resumption.enabled:
            return None
        with_tokens = server.settings.token_verifier is not None
        identity = AuthData("", credentials).identity if with_tokens else None
        other_nodes = server.rooms.other_nodes
        claim = other_nodes.claim(token, room, identity) if other_nodes is not None else None
        auth = None if claim is None else await claim
        if auth is None:
            return None
        context = PeerContext(auth.peer_id, room)
        return _Elsewhere(auth, context, await _init(init, context, auth))


@dataclass(frozen=True, slots=True)
class _Elsewhere:
    """A peer that was held on another node, now carried on here."""

    auth: AuthData
    context: PeerContext
    state: Any


async def _resolve(result: Any) -> Any:
    if isinstance(result, Deferred):
        return await result
    return result


async def _parse(parse: Callable[[], Any]) -> tuple[dict[str, Any], Any, str]:
    """
    ``parse_request``, checked: a bad request or room name is a 400.
    """
    try:
        credentials, metadata, room = await _resolve(call(parse))
        if not isinstance(room, str) or not is_room_name(room):
            raise BadRequest("not a valid room name")
    except BadRequest:
        raise _Refusal(BAD_REQUEST) from None
    except Exception:
        _log.failure("Error in parse_request")
        raise _Refusal(INTERNAL_ERROR) from None
    return dict(credentials or {}), metadata, room


async def _init(
    init: Callable[[PeerContext, AuthData], Any], context: PeerContext, auth: AuthData
) -> Any:
    """
    ``on_init``: `Unauthorized` is a 401, any other failure a 500.
    """
    try:
        return await _resolve(call(init, context, auth))
    except Unauthorized:
        raise _Refusal(UNAUTHORIZED) from None
    except Exception:
        _log.failure("Error in on_init of peer {peer_id}", peer_id=auth.peer_id)
        raise _Refusal(INTERNAL_ERROR) from None
