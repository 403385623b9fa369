"""
The peer's session (SPEC 1.4 steps 3 and 4, SPEC 5.4) as a state machine:
a real `Room` and `Resumption` on a `task.Clock`, fronts that record what
the session asks of them, no connection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from twisted_signal import message as wire
from twisted_signal.admission import same_identity
from twisted_signal.context import AuthData, PeerContext
from twisted_signal.events import Events
from twisted_signal.peer import PeerFactory
from twisted_signal.resume import Resumption
from twisted_signal.room import PeerHandle, Room
from twisted_signal.rooms import Rooms
from twisted_signal.session import Front, Session, give_away
from twisted_signal.settings import Settings

from .support.memory import MemoryClient

pytestmark = pytest.mark.memory

WINDOW = 10.0


class _Events(Events):
    def __init__(self) -> None:
        self.resumes: list[str] = []

    def resume(self, outcome: str) -> None:
        self.resumes.append(outcome)


@dataclass
class _Host:
    rooms: Rooms
    resumption: Resumption
    events: _Events = field(default_factory=_Events)
    accepting: bool = True


class _Connection:
    """A front's connection: what the session asked of it, in order."""

    def __init__(self) -> None:
        self.did: list[str] = []
        self.written: list[Any] = []
        self.tokens: list[str | None] = []
        self.front: Front = self

    @property
    def public(self) -> object:
        return self

    def write(self, payload: bytes) -> None:
        self.written.append(wire.Message.from_json(payload).data)

    def close(self, code: int) -> None:
        self.did.append(f"close {code}")

    def admitted(self, peer_ids: list[str], token: str | None) -> None:
        self.did.append(f"admitted {peer_ids}")
        self.tokens.append(token)

    def terminate(self) -> None:
        self.did.append("terminate")

    def drop(self) -> None:
        self.did.append("drop")


class _World:
    """A room ``r`` with one other peer, ``other``, watching."""

    def __init__(self, window: float = WINDOW, on_join: Deferred[None] | None = None) -> None:
        self.clock = Clock()
        self.rooms = Rooms(None, clock=self.clock)
        self.rooms.startService()
        self.room = self.rooms.start_room("r", _SlowRoom, on_join)
        self.host = _Host(self.rooms, Resumption(window, self.clock))
        self.seen: list[str] = []
        self.room.join(PeerHandle("other", AuthData("other"), self._watch, _nothing, _nothing))

    def _watch(self, payload: bytes) -> None:
        message = wire.Message.from_json(payload)
        if message.event in ("joined", "left"):
            self.seen.append(f"{message.event} {message.data['peer_id']}")
        else:
            self.seen.append(f"{message.event} {message.data}")

    def join(self, connection: _Connection, peer_id: str = "p") -> Session:
        session = Session(
            self.host,
            AuthData(peer_id, {"sub": "alice"}),
            PeerContext(peer_id, "r"),
            "state",
            connection.front,
        )
        session.join(self.room)
        return session

    def say(self, text: str, to: str = "p") -> None:
        self.room.submit(wire.Message("chat", text, "other", (to,)))

    def claim(self, session: Session, token: str | None) -> None:
        """What admission does with a token that names a peer held here."""
        claimed = self.host.resumption.claim(token, "r")
        assert claimed is not None and claimed[1] is session
        session.taken()


class _SlowRoom(Room):
    """The first peer gets in at once; the others wait for the Deferred in
    the room's options, if any."""

    def on_join(self, auth: AuthData) -> Any:
        if self.options is None or not self.peers:
            return None
        return self.options


def _status(session: Session) -> str:
    """Its status now (a call, so that the checker does not narrow it)."""
    return session.status


def _nothing(*args: Any) -> None:
    pass


def _token(connection: _Connection) -> str:
    """The latest resume token `connection` was given."""
    token = connection.tokens[-1]
    assert token is not None
    return token


# Losing the connection: held, or gone.


@pytest.mark.parametrize(
    ("admitted", "may_hold", "accepting", "window", "status"),
    [
        (True, True, True, WINDOW, "held"),
        (True, False, True, WINDOW, "finished"),  # a close frame, or closed by the server
        (True, True, False, WINDOW, "finished"),  # the server is shutting down
        (True, True, True, 0.0, "finished"),  # resume is off
        (False, True, True, WINDOW, "finished"),  # lost before the room let it in
    ],
)
def test_a_lost_connection_holds_the_peer_or_lets_it_go(
    admitted: bool, may_hold: bool, accepting: bool, window: float, status: str
) -> None:
    pending: Deferred[None] = Deferred()
    world = _World(window, None if admitted else pending)
    world.host.accepting = accepting
    a = _Connection()
    session = world.join(a)
    assert _status(session) == ("joined" if admitted else "joining")
    assert a.did == (["admitted ['other']"] if admitted else [])
    if admitted:
        assert (a.tokens[0] is not None) == (window > 0)
    session.lost(a.front, may_hold=may_hold)
    assert _status(session) == status
    held = status == "held"
    assert a.did[admitted:] == ([] if held else ["terminate"])
    if not admitted:
        pending.callback(None)  # the room lets it in after it has gone
    assert ("p" in world.room.peers) == held
    assert world.seen == ["joined p"] + ([] if held else ["left p"])
    assert world.host.events.resumes == (["held"] if held else [])
    assert len(world.host.resumption) == (1 if held else 0)


def test_a_held_peer_queues_and_goes_when_the_window_passes() -> None:
    world = _World()
    a = _Connection()
    session = world.join(a)
    session.lost(a.front, may_hold=True)
    world.say("one")
    assert session.queued == 1 and a.written == []
    world.clock.advance(WINDOW - 0.001)
    assert _status(session) == "held"
    world.clock.advance(0.001)
    assert _status(session) == "finished"
    assert a.did == ["admitted ['other']", "terminate"]
    assert world.seen == ["joined p", "left p"]
    assert world.host.events.resumes == ["held", "expired"]
    assert len(world.host.resumption) == 0


@pytest.mark.parametrize("how", ["held", "live"])
def test_a_new_connection_carries_the_peer_on(how: str) -> None:
    """
    Held, or its old connection still looks open (its client knew better):
    the new connection is told the peers, gets a new token and then what
    was queued; the room's handle reaches it, not the old one.
    """
    world = _World()
    a, b = _Connection(), _Connection()
    session = world.join(a)
    first = a.tokens[0]
    if how == "held":
        session.lost(a.front, may_hold=True)
    world.claim(session, _token(a))
    assert _status(session) == "taken"
    assert a.did == ["admitted ['other']"] + (["drop"] if how == "live" else [])
    world.say("meanwhile")
    # The old connection's end changes nothing now.
    session.lost(a.front, may_hold=True)
    session.closed_by_server(a.front)
    assert _status(session) == "taken" and a.written == []
    session.resume(b.front)
    assert _status(session) == "joined"
    assert b.did == ["admitted ['other']"] and b.written == ["meanwhile"]
    assert b.tokens[0] not in (None, first)
    assert world.room.peers["p"].peer is b
    world.say("now")
    assert b.written == ["meanwhile", "now"]
    assert world.seen == ["joined p"]  # no left, no second joined
    assert world.host.events.resumes == (["held"] if how == "held" else []) + ["resumed"]
    # It ends as any peer does, through its new connection's hook.
    session.lost(b.front, may_hold=False)
    assert (a.did.count("terminate"), b.did.count("terminate")) == (0, 1)
    assert world.seen == ["joined p", "left p"]


def test_a_claim_lost_before_it_opens_lets_the_peer_go() -> None:
    world = _World()
    a, b = _Connection(), _Connection()
    session = world.join(a)
    session.lost(a.front, may_hold=True)
    world.claim(session, _token(a))
    session.abandon(b.front)
    assert _status(session) == "finished"
    assert (a.did.count("terminate"), b.did) == (0, ["terminate"])
    assert world.seen == ["joined p", "left p"]


def test_closed_by_the_server_it_leaves_at_once_and_its_token_is_void() -> None:
    world = _World()
    a = _Connection()
    session = world.join(a)
    session.closed_by_server(a.front)
    assert _status(session) == "finished" and len(world.host.resumption) == 0
    assert world.seen == ["joined p", "left p"]
    # The connection's end, when the client answers the close, changes nothing.
    session.lost(a.front, may_hold=True)
    session.finish()
    assert a.did == ["admitted ['other']", "terminate"]
    assert world.seen == ["joined p", "left p"]


def test_stopping_the_room_ends_a_hold() -> None:
    world = _World()
    a = _Connection()
    session = world.join(a)
    session.lost(a.front, may_hold=True)
    world.rooms.stop_room("r")
    assert _status(session) == "finished"
    assert a.did == ["admitted ['other']", "terminate"]
    assert world.host.events.resumes == ["held", "expired"]


@pytest.mark.parametrize("arrives", [True, False])
def test_a_peer_given_to_another_node_ends_here_without_a_leave(arrives: bool) -> None:
    world = _World()
    settings = Settings()
    a = _Connection()
    session = world.join(a)
    session.lost(a.front, may_hold=True)
    token = _token(a)

    def same(held: Any, identity: str | None) -> bool:
        return same_identity(settings, held, identity)

    assert give_away(world.host.resumption, same, token, "elsewhere", None) is None
    departure = give_away(world.host.resumption, same, token, "r", None)
    assert departure is not None and departure.auth == session.auth
    assert give_away(world.host.resumption, same, token, "r", None) is None  # used up
    if arrives:
        departure.moved()
        assert _status(session) == "moved"
        session.finish()  # nothing more here
        assert world.seen == ["joined p"]
    else:
        departure.lost()
        assert _status(session) == "finished"
        assert world.seen == ["joined p", "left p"]
    assert a.did == ["admitted ['other']", "terminate"]


def test_peer_state_is_the_sessions() -> None:
    world = _World()
    a, b = _Connection(), _Connection()
    session = world.join(a)
    session.state = "changed"
    session.lost(a.front, may_hold=True)
    claimed = world.host.resumption.peek(_token(a), "r")
    assert claimed is session and claimed.state == "changed"
    world.claim(session, _token(a))
    session.resume(b.front)
    assert session.state == "changed"


# Through the server's own front, in memory.


def test_a_peer_gone_before_the_room_lets_it_in_leaves_no_token() -> None:
    """
    The client goes while the room's ``on_join`` is still deciding: once the
    room lets the peer in (and it leaves right after, in room order), no
    resume token is left behind for a peer nobody can resume.
    """
    clock = Clock()
    deciding: Deferred[None] = Deferred()
    rooms = Rooms(lambda name: _SlowRoom(name, deciding, clock=clock), clock=clock)
    rooms.startService()
    factory = PeerFactory(rooms, settings=Settings(resume_window=WINDOW), clock=clock)
    watcher = MemoryClient(factory, "r")
    assert watcher.open and [m["event"] for m in watcher.received()] == ["authenticated"]
    client = MemoryClient(factory, "r")
    client.lose()
    deciding.callback(None)
    assert [m["event"] for m in watcher.received()] == ["joined", "left"]
    assert len(factory.resumption) == 1  # the watcher's
    assert client.peer.peer_id not in rooms.get("r").peers  # type: ignore[union-attr]
