"""
Tests for `twisted_signal.room`: a `Room` driven through fake peer handles,
on a fake clock, without any WebSocket.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.logger import formatEvent

from twisted_signal import AuthData, Message, PeerHandle, Refused, Room
from twisted_signal.errors import NoSuchPeer

from .support.room import (
    ALICE,
    BOB,
    CAROL,
    DAVE,
    FakeConnection,
    RecordingRoom,
    RoomTestCase,
    error_msg,
    joined_msg,
    left_msg,
    refusal,
    wire,
)

pytestmark = pytest.mark.memory


class JoinTests(RoomTestCase):
    def test_first_peer(self) -> None:
        """
        The first peer is admitted with no other peers and is sent nothing.
        """
        room = self.make_room()
        alice = self.connect(room, ALICE)
        self.assertEqual(alice.admissions, [[]])
        self.assertEqual(alice.messages, [])
        self.assertEqual(alice.close_codes, [])
        self.assertEqual(list(room.peers), [ALICE])

    def test_others_get_joined_before_the_newcomer_is_admitted(self) -> None:
        """
        Each peer already there gets ``joined`` (from the newcomer, to
        "all"); then the newcomer is admitted with the ids already there,
        not its own, and never sees its own ``joined``.
        """
        room = self.make_room()
        self.connect(room, ALICE)
        self.connect(room, BOB)
        self.connect(room, CAROL)
        self.assertEqual(
            [entry for entry in self.journal if entry[0] != "room"],
            [
                (ALICE, "admitted", []),
                (ALICE, "send", joined_msg(BOB)),
                (BOB, "admitted", [ALICE]),
                (ALICE, "send", joined_msg(CAROL)),
                (BOB, "send", joined_msg(CAROL)),
                (CAROL, "admitted", [ALICE, BOB]),
            ],
        )

    def test_on_join_gets_the_auth(self) -> None:
        """
        `on_join` is called with the handle's `AuthData`, before the peer is
        in `peers`.
        """
        seen: list[tuple[AuthData, list[str]]] = []

        class MyRoom(Room):
            def on_join(self, auth: AuthData) -> None:
                seen.append((auth, list(self.peers)))

        room = self.make_room(MyRoom)
        alice = self.connect(room, ALICE, credentials={"sub": "a"})
        self.connect(room, BOB)
        self.assertEqual(len(seen), 2)
        self.assertIs(seen[0][0], alice.auth)
        self.assertEqual(seen[0][1], [])
        self.assertEqual(seen[1][0].peer_id, BOB)
        self.assertEqual(seen[1][1], [ALICE])

    def test_peers_is_a_read_only_mapping(self) -> None:
        room = self.make_room()
        alice = self.connect(room, ALICE)
        self.connect(room, BOB)
        peers = room.peers
        self.assertEqual(sorted(peers), [ALICE, BOB])
        handle = peers[ALICE]
        self.assertIsInstance(handle, PeerHandle)
        self.assertEqual(handle.peer_id, ALICE)
        self.assertIs(handle.auth, alice.auth)
        with self.assertRaises(TypeError):
            peers[CAROL] = handle  # type: ignore[index]
        with self.assertRaises(TypeError):
            del peers[ALICE]  # type: ignore[attr-defined]
        self.assertEqual(sorted(room.peers), [ALICE, BOB])

    def test_name_and_options(self) -> None:
        room = self.make_room(name="lobby", options={"k": 1})
        self.assertEqual(room.name, "lobby")
        self.assertEqual(room.options, {"k": 1})


class RefusalTests(RoomTestCase):
    def assert_refused(self, room_class: Callable[..., Room], reason: str) -> FakeConnection:
        """
        With ALICE in the room, BOB is refused with `reason`: one error, then
        close(1000); ALICE sees nothing.
        """
        room = self.make_room(room_class)
        (alice,) = self.connect_all(room, ALICE)
        bob = self.connect(room, BOB, leave_on_close=True)
        self.assertEqual(bob.messages, refusal(BOB, reason))
        self.assertEqual(bob.close_codes, [1000])
        self.assertEqual(bob.admissions, [])
        self.assertEqual(
            [(who, what) for who, what, _ in self.journal if who == BOB],
            [(BOB, "send"), (BOB, "close")],
        )
        self.assertEqual(alice.messages, [])
        self.assertEqual(list(room.peers), [ALICE])
        return bob

    def test_refused_synchronously(self) -> None:
        class MyRoom(Room):
            def on_join(self, auth: AuthData) -> None:
                if auth.peer_id == BOB:
                    raise Refused("room_is_full")

        self.assert_refused(MyRoom, "room_is_full")

    def test_refused_by_a_failed_deferred(self) -> None:
        class MyRoom(Room):
            def on_join(self, auth: AuthData) -> Deferred[None]:
                if auth.peer_id == BOB:
                    return fail(Refused("room_is_full"))
                return succeed(None)

        self.assert_refused(MyRoom, "room_is_full")

    def test_refused_by_async_def(self) -> None:
        class MyRoom(Room):
            async def on_join(self, auth: AuthData) -> None:
                if auth.peer_id == BOB:
                    raise Refused("room_is_full")

        self.assert_refused(MyRoom, "room_is_full")

    def test_refused_later(self) -> None:
        """
        A Deferred that fails later refuses then, and nothing is sent before.
        """
        pending: list[Deferred[None]] = []

        class MyRoom(Room):
            def on_join(self, auth: AuthData) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                pending.append(d)
                return d

        room = self.make_room(MyRoom)
        bob = self.connect(room, BOB)
        self.assertEqual((bob.messages, bob.close_codes, bob.admissions), ([], [], []))
        pending[0].errback(Refused("vip_only"))
        self.assertEqual(bob.messages, refusal(BOB, "vip_only"))
        self.assertEqual(bob.close_codes, [1000])
        self.assertEqual(bob.admissions, [])
        self.assertEqual(dict(room.peers), {})

    def test_refused_default_reason(self) -> None:
        class MyRoom(Room):
            def on_join(self, auth: AuthData) -> None:
                if auth.peer_id == BOB:
                    raise Refused()

        self.assert_refused(MyRoom, "refused")

    def test_refused_peer_leaving_sends_nothing(self) -> None:
        """
        The connection of a refused peer leaves when it closes: the others
        get no ``left`` and `on_leave` is not called for it.
        """

        class MyRoom(RecordingRoom):
            def on_join(self, auth: AuthData) -> None:
                if auth.peer_id == BOB:
                    raise Refused("nope")

        self.assert_refused(MyRoom, "nope")
        room_calls = [(what, v) for who, what, v in self.journal if who == "room"]
        self.assertEqual(room_calls, [])

    def test_max_peers(self) -> None:
        """
        A room with `max_peers` refuses the next peer with "room_is_full",
        even when a subclass overrides `on_join` without calling super, and
        without calling `on_join` for it.
        """
        asked: list[str] = []

        class MyRoom(Room):
            def on_join(self, auth: AuthData) -> None:
                asked.append(auth.peer_id)

        room = self.make_room(MyRoom, max_peers=2)
        alice, bob = self.connect_all(room, ALICE, BOB)
        carol = self.connect(room, CAROL)
        self.assertEqual(carol.messages, refusal(CAROL, "room_is_full"))
        self.assertEqual(carol.close_codes, [1000])
        self.assertEqual(carol.admissions, [])
        self.assertEqual(asked, [ALICE, BOB])
        self.assertEqual((alice.messages, bob.messages), ([], []))
        self.assertEqual(sorted(room.peers), [ALICE, BOB])

    def test_max_peers_frees_a_place(self) -> None:
        room = self.make_room(max_peers=1)
        self.connect_all(room, ALICE)
        room.leave(ALICE)
        bob = self.connect(room, BOB)
        self.assertEqual(bob.admissions, [[]])
        self.assertEqual(bob.messages, [])

    def test_max_peers_with_a_slow_on_join(self) -> None:
        """
        A join waiting for its `on_join` counts: the join behind it is checked
        against the cap after it.
        """
        pending: list[Deferred[None]] = []

        class MyRoom(Room):
            def on_join(self, auth: AuthData) -> Deferred[None]:
                d: Deferred[None] = Deferred()
                pending.append(d)
                return d

        room = self.make_room(MyRoom, max_peers=1)
        alice = self.connect(room, ALICE)
        bob = self.connect(room, BOB)
        self.assertEqual(len(pending), 1)
        self.assertEqual((alice.admissions, bob.messages), ([], []))
        pending[0].callback(None)
        self.assertEqual(alice.admissions, [[]])
        self.assertEqual(bob.messages, refusal(BOB, "room_is_full"))
        self.assertEqual(alice.messages, [])
        self.assertEqual(len(pending), 1)

    def test_on_join_error_is_logged_and_refused(self) -> None:
        """
        An `on_join` raising anything but `Refused` is logged and the peer
        is refused with "internal_error".
        """

        class MyRoom(Room):
            def on_join(self, auth: AuthData) -> None:
                if auth.peer_id == BOB:
                    raise ZeroDivisionError("oops")

        self.assert_refused(MyRoom, "internal_error")
        [(text, failure)] = self.take_failures(ZeroDivisionError)
        self.assertTrue(failure.check(ZeroDivisionError))
        self.assertIn("on_join", text)
        self.assertIn(BOB, text)

    def test_async_on_join_error_is_logged_and_refused(self) -> None:
        class MyRoom(Room):
            async def on_join(self, auth: AuthData) -> None:
                if auth.peer_id == BOB:
                    raise ZeroDivisionError("oops")

        self.assert_refused(MyRoom, "internal_error")
        [(text, failure)] = self.take_failures(ZeroDivisionError)
        self.assertTrue(failure.check(ZeroDivisionError))
        self.assertIn("on_join", text)

    def test_refusal_does_not_block_later_joins(self) -> None:
        class MyRoom(Room):
            def on_join(self, auth: AuthData) -> Any:
                if auth.peer_id == BOB:
                    return fail(Refused("no_bob"))
                return None

        room = self.make_room(MyRoom)
        alice = self.connect(room, ALICE)
        bob = self.connect(room, BOB, leave_on_close=True)
        carol = self.connect(room, CAROL)
        self.assertEqual(bob.close_codes, [1000])
        self.assertEqual(carol.admissions, [[ALICE]])
        self.assertEqual(alice.messages, [joined_msg(CAROL)])


class ForwardingTests(RoomTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.room = self.make_room()
        self.alice, self.bob, self.carol = self.connect_all(self.room, ALICE, BOB, CAROL)

    def received(self) -> list[tuple[str, dict[str, Any]]]:
        return [(who, value) for who, what, value in self.journal if what == "send"]

    def test_to_all(self) -> None:
        """
        "all" is every other peer, never the sender.
        """
        self.room.submit(Message("offer", {"sdp": "x"}, ALICE, "all"))
        expected = wire("offer", {"sdp": "x"}, ALICE, "all")
        self.assertEqual(self.received(), [(BOB, expected), (CAROL, expected)])

    def test_to_all_alone(self) -> None:
        room = self.make_room(name="solo")
        (alice,) = self.connect_all(room, ALICE)
        room.submit(Message("offer", None, ALICE, "all"))
        self.assertEqual(alice.messages, [])

    def test_to_list_in_order(self) -> None:
        self.room.submit(Message("offer", 1, ALICE, (CAROL, BOB)))
        expected = wire("offer", 1, ALICE, [CAROL, BOB])
        self.assertEqual(self.received(), [(CAROL, expected), (BOB, expected)])

    def test_duplicates_delivered_once(self) -> None:
        """
        Each listed peer gets the message once, in the order of its first
        mention; ``to`` is kept as sent.
        """
        self.room.submit(Message("candidate", 2, ALICE, (BOB, BOB, CAROL, BOB)))
        expected = wire("candidate", 2, ALICE, [BOB, BOB, CAROL, BOB])
        self.assertEqual(self.received(), [(BOB, expected), (CAROL, expected)])

    def test_listing_yourself_echoes(self) -> None:
        self.room.submit(Message("ping", None, ALICE, (ALICE,)))
        self.room.submit(Message("ping", None, BOB, (CAROL, BOB)))
        self.assertEqual(
            self.received(),
            [
                (ALICE, wire("ping", None, ALICE, [ALICE])),
                (CAROL, wire("ping", None, BOB, [CAROL, BOB])),
                (BOB, wire("ping", None, BOB, [CAROL, BOB])),
            ],
        )

    def test_unknown_peer(self) -> None:
        """
        One unknown addressee and nothing is delivered; the sender gets "No
        such peer" listing the unknown ids in order.
        """
        self.room.submit(Message("offer", None, ALICE, (BOB, "ghost", CAROL, "phantom")))
        self.assertEqual(
            self.received(), [(ALICE, error_msg(ALICE, "No such peer", ["ghost", "phantom"]))]
        )

    def test_unknown_peer_then_more(self) -> None:
        self.room.submit(Message("offer", None, ALICE, ("ghost",)))
        self.room.submit(Message("answer", None, ALICE, (BOB,)))
        self.assertEqual(
            self.received(),
            [
                (ALICE, error_msg(ALICE, "No such peer", ["ghost"])),
                (BOB, wire("answer", None, ALICE, [BOB])),
            ],
        )

    def test_left_peer_is_unknown(self) -> None:
        self.room.leave(CAROL)
        del self.journal[:]
        self.room.submit(Message("offer", None, ALICE, (BOB, CAROL)))
        self.assertEqual(self.received(), [(ALICE, error_msg(ALICE, "No such peer", [CAROL]))])

    def test_encoded_once(self) -> None:
        """
        Every recipient is given the very same bytes object.
        """
        dave = self.connect(self.room, DAVE)
        for conn in (self.alice, self.bob, self.carol, dave):
            conn.take()
        self.room.submit(Message("offer", {"sdp": "é"}, ALICE, "all"))
        self.room.submit(Message("answer", None, BOB, (CAROL, DAVE, ALICE)))
        first = self.bob.payloads[0]
        self.assertIs(self.carol.payloads[0], first)
        self.assertIs(dave.payloads[0], first)
        second = self.alice.payloads[0]
        self.assertIs(self.carol.payloads[1], second)
        self.assertIs(dave.payloads[1], second)
        self.assertEqual(json.loads(first), wire("offer", {"sdp": "é"}, ALICE, "all"))

    def test_sent_as_compact_utf8_json(self) -> None:
        self.room.submit(Message("offer", {"sdp": "é"}, ALICE, (BOB,)))
        self.assertEqual(
            self.bob.payloads,
            [
                '{"event":"offer","data":{"sdp":"é"},"from":"alice","to":["bob"]}'.encode(),
            ],
        )


class OnForwardTests(RoomTestCase):
    def test_change(self) -> None:
        class MyRoom(Room):
            def on_forward(self, message: Message) -> Message:
                if message.event == "offer":
                    return replace(message, data={"changed": message.data}, to=(CAROL,))
                return message

        room = self.make_room(MyRoom)
        alice, bob, carol = self.connect_all(room, ALICE, BOB, CAROL)
        room.submit(Message("offer", 1, ALICE, "all"))
        room.submit(Message("answer", 2, ALICE, "all"))
        self.assertEqual(
            carol.messages,
            [wire("offer", {"changed": 1}, ALICE, [CAROL]), wire("answer", 2, ALICE, "all")],
        )
        self.assertEqual(bob.messages, [wire("answer", 2, ALICE, "all")])
        self.assertEqual(alice.messages, [])

    def test_drop(self) -> None:
        class MyRoom(Room):
            def on_forward(self, message: Message) -> Message | None:
                return None if message.event == "secret" else message

        room = self.make_room(MyRoom)
        alice, bob = self.connect_all(room, ALICE, BOB)
        room.submit(Message("secret", 1, ALICE, "all"))
        room.submit(Message("secret", 1, ALICE, (BOB, "ghost")))
        room.submit(Message("offer", 2, ALICE, "all"))
        self.assertEqual(bob.messages, [wire("offer", 2, ALICE, "all")])
        self.assertEqual(alice.messages, [])

    def test_drop_async(self) -> None:
        class MyRoom(Room):
            async def on_forward(self, message: Message) -> Message | None:
                return None if message.event == "secret" else message

        room = self.make_room(MyRoom)
        _, bob = self.connect_all(room, ALICE, BOB)
        room.submit(Message("secret", 1, ALICE, "all"))
        room.submit(Message("offer", 2, ALICE, "all"))
        self.assertEqual(bob.messages, [wire("offer", 2, ALICE, "all")])

    def test_runs_for_joined_and_left(self) -> None:
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        self.connect(room, ALICE)
        self.connect(room, BOB)
        room.submit(Message("offer", None, ALICE, (BOB,)))
        room.leave(BOB)
        self.assertEqual(
            [m.to_json() for m in room.calls("on_forward")],
            [
                Message("joined", {"peer_id": ALICE}, ALICE, "all").to_json(),
                Message("joined", {"peer_id": BOB}, BOB, "all").to_json(),
                Message("offer", None, ALICE, (BOB,)).to_json(),
                Message("left", {"peer_id": BOB}, None, "all").to_json(),
            ],
        )

    def test_drop_joined_and_left(self) -> None:
        """
        Dropping ``joined`` hides the newcomer from the others but still
        admits it; dropping ``left`` hides the departure.
        """

        class MyRoom(Room):
            def on_forward(self, message: Message) -> Message | None:
                return None if message.event in ("joined", "left") else message

        room = self.make_room(MyRoom)
        alice = self.connect(room, ALICE)
        bob = self.connect(room, BOB)
        self.assertEqual(bob.admissions, [[ALICE]])
        room.leave(BOB)
        self.assertEqual(alice.messages, [])
        self.assertEqual(list(room.peers), [ALICE])

    def test_change_joined(self) -> None:
        class MyRoom(Room):
            def on_forward(self, message: Message) -> Message:
                if message.event == "joined":
                    return replace(message, data={**message.data, "name": "B"})
                return message

        room = self.make_room(MyRoom)
        alice = self.connect(room, ALICE)
        self.connect(room, BOB)
        self.assertEqual(
            alice.messages, [wire("joined", {"peer_id": BOB, "name": "B"}, BOB, "all")]
        )

    def test_slow_on_forward_keeps_one_order(self) -> None:
        """
        Each message takes less time in `on_forward` than the one before it,
        so without one order they would overtake each other.  Nothing is
        delivered before the first one is done, and every peer sees the
        messages in the order they were submitted.
        """
        clock = self.clock
        delays = iter([5.0, 4.0, 3.0, 2.0, 1.0, 0.5])

        class MyRoom(Room):
            async def on_forward(self, message: Message) -> Message:
                if message.event == "chat":
                    await deferLater(clock, next(delays), lambda: None)
                return message

        room = self.make_room(MyRoom)
        conns = dict(
            zip(
                [ALICE, BOB, CAROL, DAVE],
                self.connect_all(room, ALICE, BOB, CAROL, DAVE),
                strict=True,
            )
        )
        order = [(ALICE, 1), (BOB, 2), (CAROL, 3), (ALICE, 4), (DAVE, 5), (BOB, 6)]
        for sender, n in order:
            room.submit(Message("chat", n, sender, "all"))
        clock.advance(4.9)
        self.assertEqual([c.payloads for c in conns.values()], [[], [], [], []])
        clock.advance(0.1)
        self.assertEqual(conns[BOB].messages, [wire("chat", 1, ALICE, "all")])
        self.assertEqual(conns[ALICE].messages, [])
        clock.pump([1.0] * 20)
        for peer_id, conn in conns.items():
            self.assertEqual(
                [(m["from"], m["data"]) for m in conn.messages],
                [(sender, n) for sender, n in order if sender != peer_id],
                peer_id,
            )
        # One order across peers too: the journal delivers message n to
        # everyone before anyone gets message n + 1.
        self.assertEqual(
            [value["data"] for _, what, value in self.journal if what == "send"],
            [1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6],
        )

    def test_slow_on_forward_holds_back_joins_leaves_and_forward(self) -> None:
        """
        Joins, leaves and `Room.forward` wait behind a slow `on_forward`
        too: a peer joining after a message was sent does not get it.
        """
        gates: list[Deferred[None]] = []

        class MyRoom(Room):
            def on_forward(self, message: Message) -> Any:
                if message.event != "slow":
                    return message
                gate: Deferred[None] = Deferred()
                gates.append(gate)
                return gate.addCallback(lambda _: message)

        room = self.make_room(MyRoom)
        alice, bob, carol = self.connect_all(room, ALICE, BOB, CAROL)
        room.submit(Message("slow", 1, ALICE, "all"))
        dave = self.connect(room, DAVE)
        room.submit(Message("fast", 2, BOB, "all"))
        room.leave(CAROL)
        room.forward(Message("notice", 3, None, "all"))
        room.submit(Message("slow", 4, DAVE, (ALICE,)))
        self.assertEqual(
            [alice.payloads, bob.payloads, carol.payloads, dave.payloads], [[], [], [], []]
        )
        self.assertEqual(dave.admissions, [])
        self.assertEqual(len(gates), 1)
        gates[0].callback(None)
        self.assertEqual(len(gates), 2)
        gates[1].callback(None)
        self.assertEqual(
            alice.messages,
            [
                joined_msg(DAVE),
                wire("fast", 2, BOB, "all"),
                left_msg(CAROL),
                wire("notice", 3, None, "all"),
                wire("slow", 4, DAVE, [ALICE]),
            ],
        )
        self.assertEqual(
            bob.messages,
            [
                wire("slow", 1, ALICE, "all"),
                joined_msg(DAVE),
                left_msg(CAROL),
                wire("notice", 3, None, "all"),
            ],
        )
        self.assertEqual(
            carol.messages,
            [wire("slow", 1, ALICE, "all"), joined_msg(DAVE), wire("fast", 2, BOB, "all")],
        )
        self.assertEqual(dave.admissions, [[ALICE, BOB, CAROL]])
        self.assertEqual(
            dave.messages,
            [wire("fast", 2, BOB, "all"), left_msg(CAROL), wire("notice", 3, None, "all")],
        )

    def test_on_forward_error_is_logged_and_dropped(self) -> None:
        class MyRoom(Room):
            def on_forward(self, message: Message) -> Message:
                if message.event == "bad":
                    raise ZeroDivisionError("oops")
                return message

        room = self.make_room(MyRoom)
        alice, bob = self.connect_all(room, ALICE, BOB)
        room.submit(Message("bad", 1, ALICE, "all"))
        room.submit(Message("good", 2, ALICE, "all"))
        self.assertEqual(bob.messages, [wire("good", 2, ALICE, "all")])
        self.assertEqual(alice.messages, [])
        [(text, failure)] = self.take_failures(ZeroDivisionError)
        self.assertTrue(failure.check(ZeroDivisionError))
        self.assertIn("on_forward", text)

    def test_async_on_forward_error_is_logged_and_dropped(self) -> None:
        class MyRoom(Room):
            async def on_forward(self, message: Message) -> Message:
                if message.event == "bad":
                    raise ZeroDivisionError("oops")
                return message

        room = self.make_room(MyRoom)
        alice, bob = self.connect_all(room, ALICE, BOB)
        room.submit(Message("bad", 1, ALICE, "all"))
        room.submit(Message("good", 2, ALICE, "all"))
        self.assertEqual(bob.messages, [wire("good", 2, ALICE, "all")])
        self.assertEqual(alice.messages, [])
        [(_, failure)] = self.take_failures(ZeroDivisionError)
        self.assertTrue(failure.check(ZeroDivisionError))

    def test_on_forward_error_on_joined_still_admits(self) -> None:
        """
        When `on_forward` fails on ``joined`` the others do not get it, but
        the newcomer is still admitted and later work goes on.
        """

        class MyRoom(Room):
            def on_forward(self, message: Message) -> Message:
                if message.event == "joined":
                    raise ZeroDivisionError("oops")
                return message

        room = self.make_room(MyRoom)
        alice = self.connect(room, ALICE)
        bob = self.connect(room, BOB)
        room.submit(Message("hi", None, BOB, "all"))
        self.assertEqual(len(self.take_failures(ZeroDivisionError)), 2)
        self.assertEqual(bob.admissions, [[ALICE]])
        self.assertEqual(alice.messages, [wire("hi", None, BOB, "all")])

    def test_async_on_forward_error_on_joined_still_admits(self) -> None:
        class MyRoom(Room):
            async def on_forward(self, message: Message) -> Message:
                if message.event == "joined":
                    raise ZeroDivisionError("oops")
                return message

        room = self.make_room(MyRoom)
        alice = self.connect(room, ALICE)
        bob = self.connect(room, BOB)
        room.submit(Message("hi", None, BOB, "all"))
        self.assertEqual(len(self.take_failures(ZeroDivisionError)), 2)
        self.assertEqual(alice.admissions, [[]])
        self.assertEqual(bob.admissions, [[ALICE]])
        self.assertEqual(alice.messages, [wire("hi", None, BOB, "all")])

    def test_on_forward_returning_junk(self) -> None:
        """
        Something that is neither a Message nor None is logged as an error
        and dropped.
        """

        class MyRoom(Room):
            def on_forward(self, message: Message) -> Any:
                return {"event": "x"} if message.event == "bad" else message

        room = self.make_room(MyRoom)
        _, bob = self.connect_all(room, ALICE, BOB)
        room.submit(Message("bad", 1, ALICE, "all"))
        room.submit(Message("good", 2, ALICE, "all"))
        self.assertEqual(bob.messages, [wire("good", 2, ALICE, "all")])
        [text] = self.errors_logged()
        self.assertIn("on_forward", text)


class LeaveTests(RoomTestCase):
    def test_leave(self) -> None:
        """
        `on_leave` (the peer is no longer in `peers`), then ``left`` to the
        remaining peers.
        """
        in_peers: list[bool] = []

        class MyRoom(RecordingRoom):
            def on_leave(self, peer_id: str) -> Any:
                in_peers.append(peer_id in self.peers)
                return super().on_leave(peer_id)

        room = self.make_room(MyRoom)
        _, bob, _ = self.connect_all(room, ALICE, BOB, CAROL)
        room.leave(BOB)
        self.assertEqual(
            [(who, what, value) for who, what, value in self.journal if what != "on_forward"],
            [
                ("room", "on_leave", BOB),
                (ALICE, "send", left_msg(BOB)),
                (CAROL, "send", left_msg(BOB)),
            ],
        )
        self.assertEqual(in_peers, [False])
        self.assertEqual(sorted(room.peers), [ALICE, CAROL])
        self.assertEqual((bob.messages, bob.close_codes), ([], []))

    def test_leave_twice(self) -> None:
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        alice, _ = self.connect_all(room, ALICE, BOB)
        room.leave(BOB)
        room.leave(BOB)
        self.assertEqual(alice.messages, [left_msg(BOB)])
        self.assertEqual(room.calls("on_leave"), [BOB])

    def test_leave_unknown(self) -> None:
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        alice, bob = self.connect_all(room, ALICE, BOB)
        room.leave("ghost")
        self.assertEqual((alice.messages, bob.messages), ([], []))
        self.assertEqual(room.calls("on_leave"), [])
        self.assertEqual(sorted(room.peers), [ALICE, BOB])

    def test_last_peer(self) -> None:
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        (alice,) = self.connect_all(room, ALICE)
        room.leave(ALICE)
        self.assertEqual(alice.messages, [])
        self.assertEqual(room.calls("on_leave"), [ALICE])
        self.assertEqual(dict(room.peers), {})

    def test_slow_on_leave(self) -> None:
        """
        ``left`` waits for an asynchronous `on_leave`, and so does what
        comes after it.
        """
        gate: Deferred[None] = Deferred()

        class MyRoom(Room):
            def on_leave(self, peer_id: str) -> Deferred[None]:
                return gate

        room = self.make_room(MyRoom)
        alice, _, _ = self.connect_all(room, ALICE, BOB, CAROL)
        room.leave(BOB)
        room.submit(Message("after", None, CAROL, "all"))
        self.assertEqual(alice.messages, [])
        gate.callback(None)
        self.assertEqual(alice.messages, [left_msg(BOB), wire("after", None, CAROL, "all")])

    def test_on_leave_error(self) -> None:
        """
        A failing `on_leave` is logged; the others still get ``left``.
        """

        class MyRoom(Room):
            def on_leave(self, peer_id: str) -> None:
                raise ZeroDivisionError("oops")

        room = self.make_room(MyRoom)
        alice, _ = self.connect_all(room, ALICE, BOB)
        room.leave(BOB)
        self.assertEqual(alice.messages, [left_msg(BOB)])
        [(text, _)] = self.take_failures(ZeroDivisionError)
        self.assertIn("on_leave", text)

    def test_async_on_leave_error(self) -> None:
        class MyRoom(Room):
            async def on_leave(self, peer_id: str) -> None:
                raise ZeroDivisionError("oops")

        room = self.make_room(MyRoom)
        alice, _ = self.connect_all(room, ALICE, BOB)
        room.leave(BOB)
        self.assertEqual(alice.messages, [left_msg(BOB)])
        [(text, _)] = self.take_failures(ZeroDivisionError)
        self.assertIn("on_leave", text)

    def test_leave_while_joining(self) -> None:
        """
        A connection that ends while its join waits for `on_join` leaves
        after being admitted: the others see ``joined`` then ``left``.
        """
        gates: list[Deferred[None]] = []

        class MyRoom(Room):
            def on_join(self, auth: AuthData) -> Any:
                if auth.peer_id != BOB:
                    return None
                gate: Deferred[None] = Deferred()
                gates.append(gate)
                return gate

        room = self.make_room(MyRoom)
        (alice,) = self.connect_all(room, ALICE)
        self.connect(room, BOB)
        room.leave(BOB)
        self.assertEqual(alice.messages, [])
        gates[0].callback(None)
        self.assertEqual(alice.messages, [joined_msg(BOB), left_msg(BOB)])
        self.assertEqual(list(room.peers), [ALICE])


class ForwardMethodTests(RoomTestCase):
    def setUp(self) -> None:
        super().setUp()
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        self.room = room
        self.alice, self.bob, self.carol = self.connect_all(room, ALICE, BOB, CAROL)

    def test_to_all(self) -> None:
        """
        A server message to "all" goes to every peer, without `on_forward`.
        """
        self.room.forward(Message("notice", {"n": 1}, None, "all"))
        expected = [wire("notice", {"n": 1}, None, "all")]
        self.assertEqual(
            [self.alice.messages, self.bob.messages, self.carol.messages], [expected] * 3
        )
        self.assertEqual(self.room.calls("on_forward"), [])
        self.assertIs(self.alice.payloads[0], self.carol.payloads[0])

    def test_to_all_from_a_peer(self) -> None:
        self.room.forward(Message("notice", None, BOB, "all"))
        self.assertEqual(self.bob.messages, [])
        self.assertEqual(self.alice.messages, [wire("notice", None, BOB, "all")])

    def test_to_list(self) -> None:
        self.room.forward(Message("notice", None, None, (CAROL, ALICE)))
        self.assertEqual(
            [(who, value["to"]) for who, what, value in self.journal if what == "send"],
            [(CAROL, [CAROL, ALICE]), (ALICE, [CAROL, ALICE])],
        )
        self.assertEqual(self.bob.messages, [])

    def test_unknown_peer(self) -> None:
        """
        `forward` raises `NoSuchPeer` at once, with the unknown ids, and
        delivers nothing.
        """
        with self.assertRaises(NoSuchPeer) as caught:
            self.room.forward(Message("notice", None, None, ("ghost", BOB, "phantom")))
        self.assertEqual(caught.exception.peer_ids, ["ghost", "phantom"])
        self.assertEqual([], self.alice.messages + self.bob.messages + self.carol.messages)

    def test_public_no_such_peer(self) -> None:
        import twisted_signal

        self.assertIs(twisted_signal.NoSuchPeer, NoSuchPeer)


class StopTests(RoomTestCase):
    def peer_events(self) -> list[tuple[str, str, Any]]:
        return [entry for entry in self.journal if entry[1] != "on_forward"]

    def test_stop(self) -> None:
        """
        Each peer is told "Room closed" / "normal" and closed with 1000;
        `on_leave` for each, then `on_terminate` once; no ``left``.
        """
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        conns = self.connect_all(room, ALICE, BOB, CAROL, leave_on_close=True)
        d = room.stopService()
        self.assertIsNone(self.successResultOf(d))
        for conn in conns:
            self.assertEqual(
                conn.messages, [error_msg(conn.peer_id, "Room closed", "normal")], conn.peer_id
            )
            self.assertEqual(conn.close_codes, [1000])
        self.assertEqual(
            self.peer_events(),
            [
                (ALICE, "send", error_msg(ALICE, "Room closed", "normal")),
                (ALICE, "close", 1000),
                ("room", "on_leave", ALICE),
                (BOB, "send", error_msg(BOB, "Room closed", "normal")),
                (BOB, "close", 1000),
                ("room", "on_leave", BOB),
                (CAROL, "send", error_msg(CAROL, "Room closed", "normal")),
                (CAROL, "close", 1000),
                ("room", "on_leave", CAROL),
                ("room", "on_terminate", None),
            ],
        )
        self.assertEqual(dict(room.peers), {})
        self.assertFalse(room.running)

    def test_shutdown(self) -> None:
        room = self.make_room()
        conns = self.connect_all(room, ALICE, BOB, leave_on_close=True)
        room.close_reason = "shutdown"
        self.successResultOf(room.stopService())
        for conn in conns:
            self.assertEqual(conn.messages, [error_msg(conn.peer_id, "Room closed", "shutdown")])
            self.assertEqual(conn.close_codes, [1001])

    def test_waits_for_the_peers(self) -> None:
        """
        The Deferred fires once every peer has left, after `on_terminate`.
        """
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        alice, bob = self.connect_all(room, ALICE, BOB)
        d = room.stopService()
        self.assertNoResult(d)
        self.assertEqual(room.calls("on_terminate"), [])
        room.leave(ALICE)
        self.assertNoResult(d)
        self.assertEqual(room.calls("on_leave"), [ALICE])
        room.leave(BOB)
        self.successResultOf(d)
        self.assertEqual(room.calls("on_leave"), [ALICE, BOB])
        self.assertEqual(room.calls("on_terminate"), [None])
        self.assertEqual(alice.messages, [error_msg(ALICE, "Room closed", "normal")])
        self.assertEqual(bob.messages, [error_msg(BOB, "Room closed", "normal")])
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_timeout(self) -> None:
        """
        Peers that never leave are let go after `stop_timeout`.
        """
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        alice, bob = self.connect_all(room, ALICE, BOB)
        d = room.stopService()
        self.clock.advance(room.stop_timeout - 0.01)
        self.assertNoResult(d)
        self.assertEqual(room.calls("on_leave"), [])
        self.clock.advance(0.01)
        self.successResultOf(d)
        self.assertEqual(sorted(room.calls("on_leave")), [ALICE, BOB])
        self.assertEqual(room.calls("on_terminate"), [None])
        self.assertEqual(dict(room.peers), {})
        # A late leave changes nothing.
        room.leave(ALICE)
        self.assertEqual(len(room.calls("on_leave")), 2)
        self.assertEqual(len(room.calls("on_terminate")), 1)
        self.assertEqual(alice.close_codes + bob.close_codes, [1000, 1000])

    def test_stop_timeout_after_some_left(self) -> None:
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        self.connect_all(room, ALICE, BOB)
        d = room.stopService()
        room.leave(BOB)
        self.clock.advance(room.stop_timeout)
        self.successResultOf(d)
        self.assertEqual(room.calls("on_leave"), [BOB, ALICE])
        self.assertEqual(room.calls("on_terminate"), [None])

    def test_empty_room(self) -> None:
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        self.successResultOf(room.stopService())
        self.assertEqual(room.calls("on_terminate"), [None])

    def test_stop_twice(self) -> None:
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        (alice,) = self.connect_all(room, ALICE)
        d1 = room.stopService()
        d2 = room.stopService()
        self.assertNoResult(d1)
        self.assertNoResult(d2)
        room.leave(ALICE)
        self.successResultOf(d1)
        self.successResultOf(d2)
        self.successResultOf(room.stopService())
        self.assertEqual(room.calls("on_terminate"), [None])
        self.assertEqual(alice.messages, [error_msg(ALICE, "Room closed", "normal")])
        self.assertEqual(alice.close_codes, [1000])

    def test_slow_on_terminate(self) -> None:
        gate: Deferred[None] = Deferred()

        class MyRoom(Room):
            def on_terminate(self) -> Deferred[None]:
                return gate

        room = self.make_room(MyRoom)
        self.connect_all(room, ALICE, leave_on_close=True)
        d = room.stopService()
        self.assertNoResult(d)
        gate.callback(None)
        self.successResultOf(d)

    def test_on_terminate_error(self) -> None:
        class MyRoom(Room):
            def on_terminate(self) -> None:
                raise ZeroDivisionError("oops")

        room = self.make_room(MyRoom)
        self.connect_all(room, ALICE, leave_on_close=True)
        self.successResultOf(room.stopService())
        [(text, _)] = self.take_failures(ZeroDivisionError)
        self.assertIn("on_terminate", text)

    def test_join_while_stopping(self) -> None:
        room = self.make_room()
        assert isinstance(room, RecordingRoom)
        (alice,) = self.connect_all(room, ALICE)
        d = room.stopService()
        alice.take()
        bob = self.connect(room, BOB)
        self.assertEqual(bob.messages, refusal(BOB, "room_closed"))
        self.assertEqual(bob.close_codes, [1000])
        self.assertEqual(bob.admissions, [])
        self.assertEqual(alice.messages, [])
        self.assertEqual(room.calls("on_join"), [])
        room.leave(ALICE)
        self.successResultOf(d)

    def test_join_after_stop(self) -> None:
        room = self.make_room()
        self.successResultOf(room.stopService())
        bob = self.connect(room, BOB)
        self.assertEqual(bob.messages, refusal(BOB, "room_closed"))
        self.assertEqual(bob.close_codes, [1000])

    def test_join_pending_when_stopped(self) -> None:
        """
        A join still waiting for `on_join` when the room stops is refused
        with "room_closed" when it would have been admitted.
        """
        gate: Deferred[None] = Deferred()

        class MyRoom(Room):
            def on_join(self, auth: AuthData) -> Deferred[None]:
                return gate

        room = self.make_room(MyRoom)
        bob = self.connect(room, BOB)
        room.stopService()
        self.assertEqual(bob.messages, [])
        gate.callback(None)
        self.assertEqual(bob.messages, refusal(BOB, "room_closed"))
        self.assertEqual(bob.close_codes, [1000])
        self.assertEqual(bob.admissions, [])
        self.assertEqual(dict(room.peers), {})


class InitTests(RoomTestCase):
    def test_on_init(self) -> None:
        """
        `on_init` is called once, with the options, when the room starts.
        """
        room = self.make_room(options={"topic": "x"}, start=False)
        assert isinstance(room, RecordingRoom)
        self.assertEqual(room.calls("on_init"), [])
        room.startService()
        self.assertEqual(room.calls("on_init"), [{"topic": "x"}])
        self.connect(room, ALICE)
        self.connect(room, BOB)
        room.leave(ALICE)
        self.assertEqual(room.calls("on_init"), [{"topic": "x"}])

    def test_slow_on_init_holds_back_joins(self) -> None:
        gate: Deferred[None] = Deferred()
        joins: list[str] = []

        class MyRoom(Room):
            async def on_init(self, options: Any) -> None:
                await gate

            def on_join(self, auth: AuthData) -> None:
                joins.append(auth.peer_id)

        room = self.make_room(MyRoom)
        alice = self.connect(room, ALICE)
        bob = self.connect(room, BOB)
        self.assertEqual((joins, alice.admissions, bob.admissions), ([], [], []))
        gate.callback(None)
        self.assertEqual(joins, [ALICE, BOB])
        self.assertEqual(alice.admissions, [[]])
        self.assertEqual(bob.admissions, [[ALICE]])
        self.assertEqual(alice.messages, [joined_msg(BOB)])

    def test_on_init_error_is_logged(self) -> None:
        """
        A failing `on_init` is logged; the room still admits peers.
        """

        class MyRoom(Room):
            def on_init(self, options: Any) -> None:
                raise ZeroDivisionError("oops")

        room = self.make_room(MyRoom)
        alice = self.connect(room, ALICE)
        self.assertEqual(alice.admissions, [[]])
        [(_, failure)] = self.take_failures(ZeroDivisionError)
        self.assertTrue(failure.check(ZeroDivisionError))


class LogTests(RoomTestCase):
    def test_normal_flow_logs_no_failure_and_no_secrets(self) -> None:
        """
        Joins, messages, a refusal, leaves and a stop log no failure and
        never log credentials.
        """
        room = self.make_room(max_peers=2)
        self.connect(room, ALICE, credentials={"token": "s3cret-value"}, leave_on_close=True)
        self.connect(room, BOB, leave_on_close=True)
        self.connect(room, CAROL, leave_on_close=True)
        room.submit(Message("offer", None, ALICE, "all"))
        room.submit(Message("offer", None, ALICE, ("ghost",)))
        room.forward(Message("notice", None, None, "all"))
        room.leave(BOB)
        self.successResultOf(room.stopService())
        self.assertEqual(self.take_failures(), [])
        self.assertEqual(self.errors_logged(), [])
        self.assertTrue(self.logs)
        for event in self.logs:
            self.assertNotIn("s3cret-value", formatEvent(event))
            self.assertNotIn("s3cret-value", repr(event))


class DisconnectTests(RoomTestCase):
    """
    `Room.disconnect`: what the admin API's kick uses.
    """

    def test_closes_with_1008_and_fires_once_the_peer_has_left(self) -> None:
        room = self.make_room()
        alice, bob = self.connect_all(room, ALICE, BOB)
        gone = room.disconnect(BOB)
        self.assertEqual(bob.close_codes, [1008])
        # Still there until its connection has closed.
        self.assertNoResult(gone)
        self.assertEqual(sorted(room.peers), [ALICE, BOB])
        room.leave(BOB)
        self.successResultOf(gone)
        self.assertEqual(list(room.peers), [ALICE])
        self.assertEqual(alice.messages, [left_msg(BOB)])

    def test_another_close_code(self) -> None:
        room = self.make_room()
        (alice,) = self.connect_all(room, ALICE, leave_on_close=True)
        self.successResultOf(room.disconnect(ALICE, 1000))
        self.assertEqual(alice.close_codes, [1000])

    def test_unknown_peer(self) -> None:
        room = self.make_room()
        (alice,) = self.connect_all(room, ALICE)
        with self.assertRaises(NoSuchPeer) as raised:
            room.disconnect("ghost")
        self.assertEqual(raised.exception.peer_ids, ["ghost"])
        self.assertEqual((alice.messages, alice.close_codes), ([], []))

    def test_fires_when_the_room_stops_meanwhile(self) -> None:
        room = self.make_room()
        self.connect_all(room, ALICE)
        gone = room.disconnect(ALICE)
        room.stopService()
        self.assertNoResult(gone)
        self.clock.advance(room.stop_timeout)
        self.successResultOf(gone)
