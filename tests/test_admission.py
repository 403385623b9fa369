"""
Admission (SPEC 1.4 step 2, 5.1, 5.4) as a table: an upgrade request and the
server's state in, `Admitted` or `Refused` out, without a socket.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from twisted_signal import BadRequest, Room, Unauthorized
from twisted_signal.admission import Admission, Admitted, Refused, Upgrade
from twisted_signal.auth import TokenVerifier
from twisted_signal.context import AuthData, PeerContext
from twisted_signal.events import Events
from twisted_signal.peer import room_from_path
from twisted_signal.resume import Link, Resumption
from twisted_signal.rooms import Rooms
from twisted_signal.settings import Settings

pytestmark = pytest.mark.memory

SECRET = "correct horse battery staple, long enough for HS256"
GOOD_ORIGIN = "https://good.example"
NOW = int(time.time())


def _jwt(room: str = "demo", sub: str = "alice") -> str:
    claims = {"room": room, "sub": sub, "iat": NOW, "nbf": NOW, "exp": NOW + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


class _Events(Events):
    def __init__(self) -> None:
        self.resumes: list[str] = []

    def resume(self, outcome: str) -> None:
        self.resumes.append(outcome)


class _Rooms(Rooms):
    """Rooms whose resume tokens starting with ``other-`` are another node's."""

    def __init__(self, on_demand: bool) -> None:
        super().__init__(Room if on_demand else None)
        self.asked: list[tuple[str, str, str | None]] = []
        self.elsewhere: dict[str, AuthData] = {}

    @property
    def other_nodes(self) -> _Rooms:
        return self

    token_prefix = "here-"

    def give_away_with(self, give_away: Any) -> None:
        pass

    def claim(
        self, token: str, room: str, identity: str | None
    ) -> Deferred[AuthData | None] | None:
        if not token.startswith("other-"):
            return None
        self.asked.append((token, room, identity))
        return succeed(self.elsewhere.pop(token, None))


@dataclass
class _Server:
    settings: Settings
    rooms: _Rooms
    resumption: Resumption
    events: _Events = field(default_factory=_Events)
    accepting: bool = True
    countConnections: int = 1

    def origin_allowed(self, origin: str | None) -> bool:
        return origin is None or origin in self.settings.allowed_origins


@dataclass(frozen=True)
class _Carried:
    auth: AuthData
    context: PeerContext
    state: Any


class _Connection:
    def write(self, payload: bytes) -> None:
        pass

    def close(self, code: int) -> None:
        pass

    def admitted(self, peer_ids: list[str]) -> None:
        pass


def _server(*, tokens: bool = False, on_demand: bool = False, **state: Any) -> _Server:
    verifier = TokenVerifier.from_secret(SECRET) if tokens else None
    settings = Settings(max_connections=10, allowed_origins=(GOOD_ORIGIN,), token_verifier=verifier)
    rooms = _Rooms(on_demand)
    rooms.start_room("demo")
    return _Server(settings, rooms, Resumption(settings.resume_window, Clock()), **state)


@dataclass
class _Request:
    """One upgrade request and the front's hooks, recording what ran."""

    path: str = "/socket/demo/"
    params: dict[str, list[str]] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    origin: str | None = GOOD_ORIGIN
    parse: Callable[[str], Any] | None = None
    init: Callable[[PeerContext, AuthData], Any] | None = None
    gone: bool = False
    calls: list[str] = field(default_factory=list)

    def admit(self, server: _Server) -> Admitted | Refused:
        upgrade = Upgrade(self.path, self.params, self.headers, self.origin)
        d = Deferred.fromCoroutine(
            Admission(server).admit(
                upgrade,
                "new-peer",
                parse=self._parse,
                init=self._init,
                terminate=self._terminate,
                gone=lambda: self.gone,
            )
        )
        results: list[Admitted | Refused] = []
        d.addCallback(results.append)
        assert results, "admission is still waiting"
        return results[0]

    def _parse(self) -> Any:
        if self.parse is not None:
            return self.parse(self.path)
        return {}, None, room_from_path(self.path)

    def _init(self, context: PeerContext, auth: AuthData) -> Any:
        self.calls.append(f"init {auth.peer_id}")
        if self.init is not None:
            return self.init(context, auth)
        return {"state of": auth.peer_id}

    def _terminate(self, admitted: Admitted) -> None:
        self.calls.append(f"terminate {admitted.auth.peer_id}")


def _raise(error: Exception) -> Callable[..., Any]:
    def hook(*_: Any) -> Any:
        raise error

    return hook


def _bad_origin(request: _Request) -> None:
    request.origin = "https://evil.example"


def _missing_room(request: _Request) -> None:
    request.path = "/socket/nowhere/"


def _bad_room_name(request: _Request) -> None:
    request.path = "/chat/demo/"


def _no_token(request: _Request) -> None:
    request.params.pop("token", None)


def _token_twice(request: _Request) -> None:
    request.params["token"] = [_jwt(), _jwt()]


def _resume_twice(request: _Request) -> None:
    request.params["resume"] = ["a", "b"]


def _token_for(room: str) -> Callable[[_Request], None]:
    def change(request: _Request) -> None:
        request.params["token"] = [_jwt(room)]

    return change


def _full(server: _Server) -> None:
    server.countConnections = 11


def _shutting_down(server: _Server) -> None:
    server.accepting = False


def _parse_with(hook: Callable[[str], Any]) -> Callable[[_Request], None]:
    def change(request: _Request) -> None:
        request.parse = hook

    return change


def _init_with(hook: Callable[..., Any]) -> Callable[[_Request], None]:
    def change(request: _Request) -> None:
        request.init = hook

    return change


def _gone(request: _Request) -> None:
    request.gone = True


def _no_origin(request: _Request) -> None:
    request.origin = None


def _on_demand(server: _Server) -> None:
    server.rooms.factory = Room


def _just_below_the_limit(server: _Server) -> None:
    server.countConnections = 10


_unauthorized = _init_with(_raise(Unauthorized()))

_RequestChange = Callable[[_Request], None]
_ServerChange = Callable[[_Server], None]

# Each row: what is wrong with the request, what is wrong with the server,
# whether tokens are on, and the status of the answer (None: admitted).
REFUSALS: list[tuple[str, list[_RequestChange], list[_ServerChange], bool, int | None]] = [
    ("all well", [], [], False, None),
    ("all well, with a token", [], [], True, None),
    ("bad room name", [_bad_room_name], [], False, 400),
    ("bad room name and no token", [_bad_room_name, _no_token], [], True, 400),
    ("bad room name at the limit", [_bad_room_name, _bad_origin], [_full], False, 400),
    ("parse_request raised BadRequest", [_parse_with(_raise(BadRequest()))], [], True, 400),
    ("parse_request gave a bad name", [_parse_with(lambda _: ({}, None, "a/b"))], [], False, 400),
    ("parse_request failed", [_parse_with(_raise(ValueError("bug")))], [], False, 500),
    ("token twice", [_token_twice], [], True, 400),
    ("token twice, bad origin, at the limit", [_token_twice, _bad_origin], [_full], True, 400),
    ("resume twice", [_resume_twice], [], False, 400),
    ("resume twice, no token, no room", [_resume_twice, _no_token, _missing_room], [], True, 400),
    ("no token", [_no_token], [], True, 401),
    ("no token for a missing room", [_no_token, _missing_room], [], True, 401),
    ("another room's token", [_token_for("other")], [], True, 401),
    ("no token, bad origin, at the limit", [_no_token, _bad_origin], [_full], True, 401),
    ("on_init refused a missing room", [_unauthorized, _missing_room], [], False, 401),
    ("on_init failed", [_init_with(_raise(RuntimeError("bug")))], [], False, 500),
    ("missing room", [_missing_room], [], False, 404),
    ("missing room, bad origin, at the limit", [_missing_room, _bad_origin], [_full], False, 404),
    ("missing room, created on demand", [_missing_room], [_on_demand], False, None),
    ("bad origin", [_bad_origin], [], False, 403),
    ("bad origin at the limit", [_bad_origin], [_full], False, 403),
    ("bad origin while shutting down", [_bad_origin], [_shutting_down], True, 403),
    ("no origin (not a browser)", [_no_origin], [], False, None),
    ("at the limit", [], [_full], False, 503),
    ("just below the limit", [], [_just_below_the_limit], False, None),
    ("shutting down", [], [_shutting_down], True, 503),
    ("the client has gone", [_gone], [], False, 400),
    ("the client has gone at the limit", [_gone, _bad_origin], [_full], False, 400),
]  # fmt: skip


@pytest.mark.parametrize(
    ("request_changes", "server_changes", "tokens", "status"),
    [pytest.param(*row[1:], id=row[0]) for row in REFUSALS],
)
def test_the_order_of_refusals(
    request_changes: list[Callable[[_Request], None]],
    server_changes: list[Callable[[_Server], None]],
    tokens: bool,
    status: int | None,
) -> None:
    server = _server(tokens=tokens)
    request = _Request(params={"token": [_jwt()]} if tokens else {})
    for change_request in request_changes:
        change_request(request)
    for change_server in server_changes:
        change_server(server)
    verdict = request.admit(server)
    if status is None:
        assert isinstance(verdict, Admitted), verdict
        assert verdict.auth.peer_id == "new-peer"
        assert verdict.state == {"state of": "new-peer"}
        assert (verdict.held, verdict.link) == (None, None)
        assert request.calls == ["init new-peer"]
    else:
        assert isinstance(verdict, Refused), verdict
        assert verdict.status == status
        # on_init runs after 400 and the token's 401, before the gate; a
        # peer it accepted and the gate refused has its end.
        if status in (403, 404, 503) or request.gone:
            assert request.calls == ["init new-peer", "terminate new-peer"]
        elif request.init is not None:
            assert request.calls == ["init new-peer"]
        else:
            assert request.calls == []


def test_a_refusal_has_the_http_reason_and_the_log_says_why() -> None:
    server = _server(tokens=True)
    assert _Request(params={"token": [_jwt("other")]}).admit(server) == Refused(
        401, "Unauthorized", "token is for another room"
    )
    assert _Request(path="/x").admit(server) == Refused(400, "Bad Request")
    assert _Request(origin="https://evil.example", params={"token": [_jwt()]}).admit(
        server
    ) == Refused(403, "Forbidden")


def test_the_token_claims_are_the_credentials() -> None:
    server = _server(tokens=True)
    request = _Request(
        headers={"cookie": f"theme=dark; token={_jwt()}"},
        parse=lambda _: ({"sub": "mallory"}, {"nick": "a"}, "demo"),
    )
    verdict = request.admit(server)
    assert isinstance(verdict, Admitted)
    assert verdict.auth.identity == "alice"
    assert verdict.auth.metadata == {"nick": "a"}
    assert verdict.context == PeerContext("new-peer", "demo")


def test_async_hooks_are_waited_for() -> None:
    server = _server()
    parsed: Deferred[Any] = Deferred()
    initialised: Deferred[Any] = Deferred()
    request = _Request(parse=lambda _: parsed, init=lambda *_: initialised)
    upgrade = Upgrade(request.path, request.params, request.headers, request.origin)
    d = Deferred.fromCoroutine(
        Admission(server).admit(
            upgrade,
            "new-peer",
            parse=request._parse,
            init=request._init,
            terminate=request._terminate,
            gone=lambda: False,
        )
    )
    assert not d.called
    parsed.callback(({}, None, "demo"))
    assert not d.called
    initialised.callback("ready")
    verdict = d.result
    assert isinstance(verdict, Admitted) and verdict.state == "ready"


# Resume tokens (SPEC 5.4).


def _hold(server: _Server, room: str = "demo", sub: str | None = None) -> tuple[str, Link]:
    credentials = {"sub": sub} if sub else {}
    carried = _Carried(AuthData("held-peer", credentials), PeerContext("held-peer", room), "kept")
    link = Link(_Connection())
    token = server.resumption.issue(link, room, lambda: carried, lambda: None, lambda: None)
    assert token is not None
    return token, link


def _resume(token: str) -> dict[str, list[str]]:
    return {"resume": [token]}


def test_a_held_peer_is_taken_over_without_a_second_on_init() -> None:
    server = _server()
    token, link = _hold(server)
    request = _Request(params=_resume(token))
    verdict = request.admit(server)
    assert isinstance(verdict, Admitted)
    assert (verdict.auth.peer_id, verdict.state, verdict.link) == ("held-peer", "kept", link)
    assert isinstance(verdict.held, _Carried)  # the held peer itself
    assert request.calls == []
    assert server.events.resumes == []
    # The token is used up: the next connection with it joins as new.
    again = _Request(params=_resume(token))
    assert isinstance(again.admit(server), Admitted)
    assert again.calls == ["init new-peer"]
    assert server.events.resumes == ["refused"]


@pytest.mark.parametrize(
    ("case", "tokens"),
    [("unknown", False), ("other room", False), ("other identity", True), ("used", False)],
)
def test_a_token_that_cannot_be_honoured_joins_as_new(case: str, tokens: bool) -> None:
    server = _server(tokens=tokens)
    server.rooms.start_room("lobby")
    token, _ = _hold(server, room="lobby" if case == "other room" else "demo", sub="bob")
    if case == "unknown":
        token = "no-such-token"
    if case == "used":
        server.resumption.claim(token, "demo")
    params = _resume(token) | ({"token": [_jwt()]} if tokens else {})
    request = _Request(params=params)
    verdict = request.admit(server)
    assert isinstance(verdict, Admitted), verdict
    assert (verdict.auth.peer_id, verdict.held, verdict.link) == ("new-peer", None, None)
    assert request.calls == ["init new-peer"]
    assert server.events.resumes == ["refused"]
    assert server.rooms.asked == []


def test_a_refused_resume_keeps_the_held_peer() -> None:
    server = _server()
    token, _ = _hold(server)
    request = _Request(params=_resume(token), origin="https://evil.example")
    assert request.admit(server) == Refused(403, "Forbidden")
    assert request.calls == []  # not this connection's peer to end
    assert server.resumption.claim(token, "demo") is not None


def test_a_peer_held_on_another_node_is_carried_on_here() -> None:
    server = _server()
    server.rooms.elsewhere["other-1"] = AuthData("far-peer", {"sub": "x"})
    request = _Request(params=_resume("other-1"))
    verdict = request.admit(server)
    assert isinstance(verdict, Admitted)
    assert verdict.auth.peer_id == "far-peer" and verdict.context.peer_id == "far-peer"
    assert verdict.held is not None and not isinstance(verdict.held, _Carried)
    assert verdict.link is None
    assert verdict.state == {"state of": "far-peer"}
    assert request.calls == ["init far-peer"]  # state cannot cross processes
    assert server.rooms.asked == [("other-1", "demo", None)]
    assert server.events.resumes == ["resumed"]


@pytest.mark.parametrize(
    "refuse",
    [_bad_origin, _missing_room, lambda r: setattr(r, "gone", True)],
    ids=["bad origin", "missing room", "gone"],
)
def test_a_connection_that_will_be_refused_takes_no_peer_from_another_node(
    refuse: Callable[[_Request], None],
) -> None:
    server = _server()
    server.rooms.elsewhere["other-1"] = AuthData("far-peer")
    request = _Request(params=_resume("other-1"))
    refuse(request)
    verdict = request.admit(server)
    assert isinstance(verdict, Refused)
    assert server.rooms.asked == []
    assert "other-1" in server.rooms.elsewhere


def test_another_node_is_not_asked_at_the_limit() -> None:
    server = _server(countConnections=11)
    server.rooms.elsewhere["other-1"] = AuthData("far-peer")
    assert _Request(params=_resume("other-1")).admit(server).status == 503  # type: ignore[union-attr]
    assert server.rooms.asked == []


def test_another_node_is_asked_with_the_identity_when_tokens_are_on() -> None:
    server = _server(tokens=True)
    request = _Request(params=_resume("other-2") | {"token": [_jwt()]})
    verdict = request.admit(server)
    assert isinstance(verdict, Admitted) and verdict.auth.peer_id == "new-peer"
    assert server.rooms.asked == [("other-2", "demo", "alice")]
    assert server.events.resumes == ["refused"]
