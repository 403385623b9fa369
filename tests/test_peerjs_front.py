"""
`PeerjsFront` in memory, on a `task.Clock`: store-and-forward and its
expiry, what a peer may queue, ``LEAVE`` on a failed write, the pseudo-room
(only peerjs peers, started again once the admin API stops it).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal import Room, Rooms
from twisted_signal.context import AuthData
from twisted_signal.peerjs import PeerjsFront, PeerjsOptions, PeerjsRoom
from twisted_signal.room import PeerHandle

from .support.peerjs import FakeConnection

pytestmark = pytest.mark.memory


def _params(peer_id: str, token: str = "t", key: str = "peerjs") -> dict[str, str]:
    return {"id": peer_id, "token": token, "key": key}


class FrontTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.rooms = Rooms(Room, clock=self.clock)
        self.rooms.startService()
        self.front = PeerjsFront(
            self.rooms, PeerjsOptions(queue_limit=3, expire_timeout=5.0), clock=self.clock
        )

    def tearDown(self) -> None:
        self.rooms.stopService()

    def join(self, peer_id: str, token: str = "t") -> FakeConnection:
        connection = FakeConnection(self.front)
        self.front.connect(connection, _params(peer_id, token))  # type: ignore[arg-type]
        assert connection.take() == [{"type": "OPEN"}], peer_id
        return connection

    def send(self, connection: FakeConnection, **message: Any) -> None:
        self.front.received(connection.client, json.dumps(message).encode(), self.clock.seconds())

    def test_the_pseudo_room_is_named_after_the_key_and_has_no_cap(self) -> None:
        room = self.rooms.get("peerjs")
        assert isinstance(room, PeerjsRoom)
        assert room.max_peers is None
        for n in range(6):
            self.join(f"p{n}")
        assert len(room.peers) == 6

    def test_messages_wait_for_the_expire_timeout_then_one_expire_per_sender(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.send(alice, type="OFFER", dst="carol", payload=1)
        self.clock.advance(3)
        self.send(alice, type="CANDIDATE", dst="carol", payload=2)
        self.send(bob, type="OFFER", dst="carol", payload=3)
        self.clock.advance(1.9)
        assert alice.take() == bob.take() == []
        self.clock.advance(0.1)
        assert alice.take() == [{"type": "EXPIRE", "src": "carol", "dst": "alice"}]
        assert bob.take() == [{"type": "EXPIRE", "src": "carol", "dst": "bob"}]
        carol = self.join("carol")
        self.clock.advance(10)
        assert carol.take() == alice.take() == []

    def test_a_peer_queues_at_most_the_limit_and_still_gets_its_expire(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        self.send(bob, type="OFFER", dst="dave", payload=8)
        for n in range(5):
            self.send(alice, type="CANDIDATE", dst="carol", payload=n)
        # Over its limit: for dave (whom bob's message waits for) alice's
        # EXPIRE comes with bob's; for erin (nothing waits) at once.
        self.send(alice, type="CANDIDATE", dst="dave", payload=9)
        self.send(alice, type="CANDIDATE", dst="erin", payload=9)
        assert alice.take() == [{"type": "EXPIRE", "src": "erin", "dst": "alice"}]
        carol = FakeConnection(self.front)
        self.front.connect(carol, _params("carol"))  # type: ignore[arg-type]
        assert [m.get("payload") for m in carol.take()] == [None, 0, 1, 2]
        # Delivered messages free their places.
        self.send(alice, type="CANDIDATE", dst="frank", payload=10)
        self.clock.advance(5)
        assert alice.take() == [
            {"type": "EXPIRE", "src": "dave", "dst": "alice"},
            {"type": "EXPIRE", "src": "frank", "dst": "alice"},
        ]
        assert bob.take() == [{"type": "EXPIRE", "src": "dave", "dst": "bob"}]

    def test_a_message_that_cannot_be_written_is_answered_with_leave(self) -> None:
        alice, bob = self.join("alice"), self.join("bob")
        # Bob's connection is gone but the room has not seen him leave yet.
        bob.state = -1
        self.send(alice, type="OFFER", dst="bob", payload=1)
        assert alice.take() == [{"type": "LEAVE", "src": "bob", "dst": "alice"}]

    def test_leave_without_dst_frees_the_id(self) -> None:
        alice = self.join("alice", "one")
        self.send(alice, type="LEAVE")
        assert alice.close_code == 1000
        assert "alice" not in self.rooms.get("peerjs").peers  # type: ignore[union-attr]
        self.join("alice", "two")

    def test_a_peer_of_the_native_protocol_cannot_join_the_pseudo_room(self) -> None:
        room = self.rooms.get("peerjs")
        assert room is not None
        sent: list[bytes] = []
        closed: list[int] = []
        room.join(PeerHandle("x", AuthData("x"), sent.append, closed.append, lambda _: None))
        assert json.loads(sent[0])["data"] == {
            "description": "Could not join room",
            "details": "peerjs_only",
        }
        assert closed == [1000]

    def test_a_stopped_pseudo_room_is_started_again(self) -> None:
        alice = self.join("alice")
        self.rooms.stop_room("peerjs")
        assert alice.take() == [{"type": "ERROR", "payload": {"msg": "Room closed"}}]
        assert alice.close_code == 1000
        self.join("alice")
        assert isinstance(self.rooms.get("peerjs"), PeerjsRoom)

    def test_the_admin_apis_messages_reach_the_peer_with_their_event_as_type(self) -> None:
        from twisted_signal.message import Message

        alice = self.join("alice")
        room = self.rooms.get("peerjs")
        assert room is not None
        room.forward(Message("notice", {"text": "hi"}, None, ("alice",)))
        assert alice.take() == [{"type": "notice", "dst": "alice", "payload": {"text": "hi"}}]


def test_the_access_log_hides_peerjs_keys_and_tokens() -> None:
    from twisted_signal.token import mint
    from twisted_signal.web import redact

    jwt_key = mint("a-secret-of-at-least-thirty-two-bytes!", "HS256", "peerjs").encode()
    socket = b"/peerjs/peerjs?key=" + jwt_key + b"&id=alice&token=tok123&version=1.5.5"
    assert redact(socket) == (b"/peerjs/peerjs?key=REDACTED&id=alice&token=REDACTED&version=1.5.5")
    assert redact(b"/peerjs/" + jwt_key + b"/id?ts=1") == b"/peerjs/REDACTED/id?ts=1"


def test_the_options_make_the_fronts_options_and_refuse_bad_values() -> None:
    import pytest
    from twisted.python.usage import UsageError

    from twisted_signal.tap import Options

    def parse(*argv: str) -> Options:
        options = Options()
        options.parseOptions(list(argv))
        return options

    assert parse()["peerjs"] is None
    made = parse(
        "--peerjs", "app/signal", "--peerjs-key", "k1", "--peerjs-discovery",
        "--peerjs-expire-timeout", "2", "--peerjs-alive-timeout", "30",
        "--peerjs-queue-limit", "0",
    )["peerjs"]  # fmt: skip
    assert made == PeerjsOptions(
        path="/app/signal/",
        key="k1",
        discovery=True,
        expire_timeout=2.0,
        alive_timeout=30.0,
        queue_limit=0,
    )
    for argv, says in [
        (["--peerjs", "/"], "cannot be /"),
        (["--peerjs", "/static/"], "the server's own"),
        (["--peerjs", "/a//b/"], "is not a path segment"),
        (["--peerjs", "/p/", "--peerjs-key", "no/slash"], "--peerjs-key"),
        (["--peerjs", "/p/", "--room", "peerjs"], "--peerjs-key"),
        (["--peerjs-key", "other"], "--peerjs-key needs --peerjs"),
        (["--peerjs-discovery"], "--peerjs-discovery needs --peerjs"),
        (["--peerjs", "/p/", "--peerjs-expire-timeout", "0"], "--peerjs-expire-timeout"),
        (["--peerjs", "/p/", "--peerjs-queue-limit", "-1"], "--peerjs-queue-limit"),
    ]:
        with pytest.raises(UsageError, match=re.escape(says)):
            parse(*argv)


class IdsTests(SynchronousTestCase):
    def test_the_room_refuses_an_id_it_holds_as_id_taken(self) -> None:
        # Two fronts over one registry stand for two nodes over one room.
        clock = Clock()
        rooms = Rooms(Room, clock=clock)
        rooms.startService()
        one = PeerjsFront(rooms, clock=clock)
        two = PeerjsFront(rooms, clock=clock)
        first, second = FakeConnection(one), FakeConnection(two)
        one.connect(first, _params("alice", "t1"))  # type: ignore[arg-type]
        two.connect(second, _params("alice", "t2"))  # type: ignore[arg-type]
        assert first.take() == [{"type": "OPEN"}]
        assert second.take() == [{"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}]
        assert second.close_code == 1000
        # What waits on one node for an id goes to it when it comes on another.
        one.received(first.client, b'{"type":"OFFER","dst":"carol","payload":1}', 0)
        carol = FakeConnection(two)
        two.connect(carol, _params("carol"))  # type: ignore[arg-type]
        assert carol.take() == [
            {"type": "OPEN"},
            {"type": "OFFER", "src": "alice", "dst": "carol", "payload": 1},
        ]
        clock.advance(10)
        assert first.take() == []
        rooms.stopService()

    def test_a_join_racing_for_a_held_id_is_refused_by_the_room_and_told_id_taken(self) -> None:
        clock = Clock()
        rooms = Rooms(Room, clock=clock)
        front = PeerjsFront(rooms, clock=clock)
        self.addCleanup(rooms.stopService)
        rooms.startService()
        alice = FakeConnection(front)
        front.connect(alice, _params("alice"))  # type: ignore[arg-type]
        room = rooms.get("peerjs")
        assert room is not None
        # The front's own check passed on another node; the room decides.
        late = FakeConnection(front)
        front.connect(late, _params("bob"))  # type: ignore[arg-type]
        late.take()
        handle = room.peers["bob"]
        room.leave("bob")
        auth = AuthData("alice", {}, handle.auth.metadata)
        racing = PeerHandle("alice", auth, handle.send, handle.close, handle.admitted)
        room.join(racing)
        assert late.take() == [{"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}]
        assert late.close_code == 1000
        assert list(room.peers) == ["alice"]


def test_beyond_max_connections_is_peerjs_servers_concurrent_limit_error() -> None:
    from twisted_signal import Settings

    clock = Clock()
    rooms = Rooms(Room, clock=clock)
    front = PeerjsFront(rooms, settings=Settings(max_connections=1), clock=clock)
    first, second = FakeConnection(front), FakeConnection(front)
    front.connect(first, _params("alice"))  # type: ignore[arg-type]
    front.connect(second, _params("bob"))  # type: ignore[arg-type]
    assert first.take() == [{"type": "OPEN"}]
    assert second.take() == [
        {"type": "ERROR", "payload": {"msg": "Server has reached its concurrent user limit"}}
    ]
