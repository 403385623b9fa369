"""
Tests for `twisted_signal.rooms`: the registry of rooms, with rooms started up
front and rooms created on demand.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal import AuthData, Message, Refused, Room, Rooms
from twisted_signal.errors import NoSuchPeer, NoSuchRoom

from .support.room import (
    ALICE,
    BOB,
    CAROL,
    FakeConnection,
    RecordingRoom,
    RoomTestCase,
    error_msg,
    joined_msg,
    left_msg,
    refusal,
)

pytestmark = pytest.mark.memory


class RefusingRoom(RecordingRoom):
    def on_join(self, auth: AuthData) -> None:
        super().on_join(auth)
        raise Refused("invite_only")


class RoomsTestCase(RoomTestCase):
    def make_rooms(
        self,
        room_class: type[RecordingRoom] | None = None,
        *,
        max_peers: int | None = 4,
    ) -> Rooms:
        """
        Started rooms; with `room_class`, rooms are made on demand from it
        (and `made` lists them).
        """
        self.made: list[RecordingRoom] = []
        factory = None
        if room_class is not None:
            cls = room_class

            def factory(name: str) -> Room:
                room = cls(name, None, max_peers=None, clock=self.clock, journal=self.journal)
                self.made.append(room)
                return room

        rooms = Rooms(factory, max_peers=max_peers, clock=self.clock)
        rooms.startService()
        return rooms

    def start_room(self, rooms: Rooms, name: str, **kwargs: Any) -> RecordingRoom:
        room = rooms.start_room(name, RecordingRoom, **kwargs)
        assert isinstance(room, RecordingRoom)
        room.journal = self.journal
        return room


class RegistryTests(RoomsTestCase):
    def test_start_room(self) -> None:
        rooms = self.make_rooms()
        a = rooms.start_room("a")
        b = rooms.start_room("b")
        self.assertIsInstance(a, Room)
        self.assertEqual(a.name, "a")
        self.assertIs(rooms.get("a"), a)
        self.assertIs(rooms.get("b"), b)
        self.assertIsNone(rooms.get("c"))
        self.assertIn("a", rooms)
        self.assertNotIn("c", rooms)
        self.assertEqual(len(rooms), 2)
        self.assertEqual(list(rooms), [a, b])
        self.assertTrue(a.running)
        self.assertIs(a.parent, rooms)

    def test_start_room_class_and_options(self) -> None:
        """
        The room is an instance of `room_class`, started with `options`.
        """
        seen: list[Any] = []

        class MyRoom(Room):
            def on_init(self, options: Any) -> None:
                seen.append(options)

        rooms = self.make_rooms()
        room = rooms.start_room("lobby", MyRoom, {"topic": "t"})
        self.assertIsInstance(room, MyRoom)
        self.assertEqual(room.options, {"topic": "t"})
        self.assertEqual(seen, [{"topic": "t"}])

    def test_rooms_start_with_the_registry(self) -> None:
        """
        Rooms started before the registry runs start with it.
        """
        rooms = Rooms(clock=self.clock)
        room = rooms.start_room("a", RecordingRoom, "opts")
        assert isinstance(room, RecordingRoom)
        self.assertFalse(room.running)
        self.assertEqual(room.calls("on_init"), [])
        rooms.startService()
        self.assertTrue(room.running)
        self.assertEqual(room.calls("on_init"), ["opts"])

    def test_name_taken(self) -> None:
        rooms = self.make_rooms()
        a = rooms.start_room("a")
        with self.assertRaises(ValueError):
            rooms.start_room("a")
        self.assertIs(rooms.get("a"), a)
        self.assertEqual(len(rooms), 1)
        self.assertTrue(a.running)

    def test_invalid_names(self) -> None:
        rooms = self.make_rooms()
        for name in ["", "a/b", "a b", "x" * 65, "caf\u00e9", "a?b", "..%2f", "a\n"]:
            with self.assertRaises(ValueError, msg=repr(name)):
                rooms.start_room(name)
        self.assertEqual(len(rooms), 0)
        self.assertEqual(list(rooms), [])

    def test_valid_names(self) -> None:
        rooms = self.make_rooms()
        for name in ["a", "A-z_0.9~", "x" * 64, "..", "-"]:
            self.assertEqual(rooms.start_room(name).name, name)
        self.assertEqual(len(rooms), 5)

    def test_max_peers_default(self) -> None:
        """
        `start_room` uses the registry's `max_peers` unless given one;
        an explicit None means no cap.
        """
        rooms = self.make_rooms(max_peers=2)
        self.assertEqual(rooms.start_room("a").max_peers, 2)
        self.assertIsNone(rooms.start_room("b", max_peers=None).max_peers)
        self.assertEqual(rooms.start_room("c", max_peers=7).max_peers, 7)
        self.assertEqual(Rooms().max_peers, 4)

    def test_max_peers_enforced(self) -> None:
        rooms = self.make_rooms(max_peers=2)
        capped = rooms.start_room("capped")
        uncapped = rooms.start_room("uncapped", max_peers=None)
        self.connect_all(capped, ALICE, BOB)
        carol = self.connect(capped, CAROL)
        self.assertEqual(carol.messages, refusal(CAROL, "room_is_full"))
        self.assertEqual(carol.close_codes, [1000])
        many = [self.connect(uncapped, f"peer-{i}") for i in range(10)]
        self.assertEqual([len(c.admissions) for c in many], [1] * 10)
        self.assertEqual(len(uncapped.peers), 10)

    def test_start_room_stays_when_empty(self) -> None:
        rooms = self.make_rooms(RecordingRoom)
        room = self.start_room(rooms, "a")
        self.connect_all(room, ALICE, BOB)
        room.leave(ALICE)
        room.leave(BOB)
        self.assertIs(rooms.get("a"), room)
        self.assertTrue(room.running)
        self.assertEqual(room.calls("on_terminate"), [])
        # and still admits peers
        carol = self.connect(room, CAROL)
        self.assertEqual(carol.admissions, [[]])

    def test_start_room_stays_when_its_only_joiner_is_refused(self) -> None:
        rooms = self.make_rooms(RecordingRoom)
        room = rooms.start_room("a", RefusingRoom)
        bob = self.connect(room, BOB, leave_on_close=True)
        self.assertEqual(bob.messages, refusal(BOB, "invite_only"))
        self.assertIs(rooms.get("a"), room)
        self.assertTrue(room.running)


class OnDemandTests(RoomsTestCase):
    def test_get_or_create(self) -> None:
        rooms = self.make_rooms(RecordingRoom)
        room = rooms.get_or_create("a")
        self.assertEqual(self.made, [room])
        assert room is not None
        self.assertEqual(room.name, "a")
        self.assertIs(rooms.get("a"), room)
        self.assertIn("a", rooms)
        self.assertTrue(room.running)
        self.assertIs(rooms.get_or_create("a"), room)
        self.assertEqual(len(self.made), 1)
        self.assertTrue(rooms.creates_on_demand)

    def test_get_or_create_existing_start_room(self) -> None:
        rooms = self.make_rooms(RecordingRoom)
        room = rooms.start_room("a")
        self.assertIs(rooms.get_or_create("a"), room)
        self.assertEqual(self.made, [])

    def test_get_or_create_invalid_name(self) -> None:
        rooms = self.make_rooms(RecordingRoom)
        with self.assertRaises(ValueError):
            rooms.get_or_create("a/b")
        self.assertEqual(len(rooms), 0)

    def test_without_factory(self) -> None:
        rooms = self.make_rooms()
        self.assertFalse(rooms.creates_on_demand)
        self.assertIsNone(rooms.get_or_create("a"))
        self.assertNotIn("a", rooms)
        room = rooms.start_room("b")
        self.assertIs(rooms.get_or_create("b"), room)

    def test_stops_when_the_last_peer_leaves(self) -> None:
        rooms = self.make_rooms(RecordingRoom)
        room = rooms.get_or_create("a")
        assert isinstance(room, RecordingRoom)
        self.connect_all(room, ALICE, BOB)
        room.leave(ALICE)
        self.assertIs(rooms.get("a"), room)
        self.assertTrue(room.running)
        room.leave(BOB)
        self.assertIsNone(rooms.get("a"))
        self.assertNotIn("a", rooms)
        self.assertEqual(len(rooms), 0)
        self.assertFalse(room.running)
        self.assertEqual(room.calls("on_terminate"), [None])

    def test_a_new_room_after_the_old_one_stopped(self) -> None:
        rooms = self.make_rooms(RecordingRoom)
        first = rooms.get_or_create("a")
        assert first is not None
        self.connect_all(first, ALICE)
        first.leave(ALICE)
        second = rooms.get_or_create("a")
        assert second is not None
        self.assertIsNot(second, first)
        self.assertEqual(self.made, [first, second])
        bob = self.connect(second, BOB)
        self.assertEqual(bob.admissions, [[]])

    def test_stops_when_its_only_joiner_is_refused(self) -> None:
        rooms = self.make_rooms(RefusingRoom)
        room = rooms.get_or_create("a")
        assert isinstance(room, RecordingRoom)
        bob = self.connect(room, BOB, leave_on_close=True)
        self.assertEqual(bob.messages, refusal(BOB, "invite_only"))
        self.assertEqual(bob.close_codes, [1000])
        self.assertNotIn("a", rooms)
        self.assertFalse(room.running)
        self.assertEqual(room.calls("on_terminate"), [None])

    def test_stays_for_a_peer_joining_while_the_last_one_leaves(self) -> None:
        """
        A peer that asked to join while the last peer was leaving keeps the
        room: it is not stopped under the newcomer.
        """
        gates: list[Deferred[None]] = []

        class SlowRoom(RecordingRoom):
            def on_leave(self, peer_id: str) -> Any:
                super().on_leave(peer_id)
                gate: Deferred[None] = Deferred()
                gates.append(gate)
                return gate

        rooms = self.make_rooms(SlowRoom)
        room = rooms.get_or_create("a")
        assert room is not None
        self.connect_all(room, ALICE)
        room.leave(ALICE)
        self.assertEqual(len(gates), 1)
        self.assertIs(rooms.get_or_create("a"), room)
        bob = self.connect(room, BOB)
        gates[0].callback(None)
        self.assertIs(rooms.get("a"), room)
        self.assertTrue(room.running)
        self.assertEqual(bob.admissions, [[]])
        self.assertEqual(bob.messages, [])
        self.assertEqual(len(self.made), 1)
        room.leave(BOB)
        gates[1].callback(None)
        self.assertNotIn("a", rooms)

    def test_stops_even_if_on_forward_fails_on_left(self) -> None:
        """
        A failing asynchronous `on_forward` for the last ``left`` is logged;
        the room still stops.
        """

        class MyRoom(RecordingRoom):
            async def on_forward(self, message: Message) -> Message:
                if message.event == "left":
                    raise ZeroDivisionError("oops")
                return message

        rooms = self.make_rooms(MyRoom)
        room = rooms.get_or_create("a")
        assert room is not None
        self.connect_all(room, ALICE)
        room.leave(ALICE)
        self.assertEqual(len(self.take_failures(ZeroDivisionError)), 1)
        self.assertNotIn("a", rooms)
        self.assertFalse(room.running)

    def test_on_demand_rooms_do_not_use_the_registry_cap(self) -> None:
        """
        The factory decides the cap of the rooms it makes.
        """
        rooms = self.make_rooms(RecordingRoom, max_peers=1)
        room = rooms.get_or_create("a")
        assert room is not None
        self.connect_all(room, ALICE, BOB)
        self.assertEqual(len(room.peers), 2)


class StopTests(RoomsTestCase):
    def test_stop_room_unknown(self) -> None:
        rooms = self.make_rooms()
        with self.assertRaises(KeyError):
            rooms.stop_room("nope")

    def test_stop_room(self) -> None:
        rooms = self.make_rooms()
        room = self.start_room(rooms, "a")
        alice, bob = self.connect_all(room, ALICE, BOB, leave_on_close=True)
        d = rooms.stop_room("a")
        self.successResultOf(d)
        self.assertNotIn("a", rooms)
        self.assertIsNone(rooms.get("a"))
        self.assertFalse(room.running)
        self.assertEqual(alice.messages, [error_msg(ALICE, "Room closed", "normal")])
        self.assertEqual(bob.messages, [error_msg(BOB, "Room closed", "normal")])
        self.assertEqual(alice.close_codes + bob.close_codes, [1000, 1000])
        self.assertEqual(room.calls("on_leave"), [ALICE, BOB])
        self.assertEqual(room.calls("on_terminate"), [None])
        # The name is free again.
        self.assertIsNot(rooms.start_room("a"), room)

    def test_stop_room_waits_for_the_peers(self) -> None:
        """
        `stop_room` fires once the peers have left, or after the room's
        `stop_timeout` on the registry's clock.
        """
        rooms = self.make_rooms()
        room = self.start_room(rooms, "a")
        self.connect_all(room, ALICE, BOB)
        d = rooms.stop_room("a")
        self.assertNoResult(d)
        self.assertNotIn("a", rooms)
        room.leave(ALICE)
        self.assertNoResult(d)
        self.clock.advance(room.stop_timeout)
        self.successResultOf(d)
        self.assertEqual(room.calls("on_leave"), [ALICE, BOB])
        self.assertEqual(room.calls("on_terminate"), [None])

    def test_stop_on_demand_room(self) -> None:
        rooms = self.make_rooms(RecordingRoom)
        room = rooms.get_or_create("a")
        assert isinstance(room, RecordingRoom)
        (alice,) = self.connect_all(room, ALICE, leave_on_close=True)
        self.successResultOf(rooms.stop_room("a"))
        self.assertEqual(alice.messages, [error_msg(ALICE, "Room closed", "normal")])
        self.assertEqual(alice.close_codes, [1000])
        self.assertNotIn("a", rooms)
        self.assertEqual(room.calls("on_terminate"), [None])

    def test_shutdown(self) -> None:
        """
        When the registry stops (server shutdown), every room tells its
        peers "Room closed" / "shutdown" and closes them with 1001; no
        ``left`` is sent.
        """
        rooms = self.make_rooms(RecordingRoom)
        fixed = self.start_room(rooms, "fixed")
        on_demand = rooms.get_or_create("auto")
        assert isinstance(on_demand, RecordingRoom)
        alice, bob = self.connect_all(fixed, ALICE, BOB, leave_on_close=True)
        (carol,) = self.connect_all(on_demand, CAROL)
        d = rooms.stopService()
        self.assertNoResult(d)
        for conn in (alice, bob, carol):
            self.assertEqual(
                conn.messages, [error_msg(conn.peer_id, "Room closed", "shutdown")], conn.peer_id
            )
            self.assertEqual(conn.close_codes, [1001])
        on_demand.leave(CAROL)
        self.successResultOf(d)
        # Both rooms write to the same journal.
        self.assertEqual(fixed.calls("on_terminate"), [None, None])
        self.assertEqual(sorted(fixed.calls("on_leave")), [ALICE, BOB, CAROL])
        self.assertFalse(fixed.running)
        self.assertFalse(on_demand.running)

    def test_shutdown_timeout(self) -> None:
        rooms = self.make_rooms()
        room = self.start_room(rooms, "a")
        self.connect_all(room, ALICE)
        d = rooms.stopService()
        self.assertNoResult(d)
        self.clock.advance(room.stop_timeout)
        self.successResultOf(d)
        self.assertEqual(room.calls("on_terminate"), [None])


class AdminInterfaceTests(RoomsTestCase):
    """
    What the admin API calls: each answers through a Deferred, at once on
    one server, and fails with `NoSuchRoom` or `NoSuchPeer`.
    """

    def test_summaries_and_summary(self) -> None:
        rooms = self.make_rooms(RecordingRoom)
        room = self.start_room(rooms, "a")
        self.connect_all(room, ALICE, BOB)
        auto = rooms.get_or_create("auto")
        assert auto is not None
        self.connect_all(auto, CAROL)
        a = {"name": "a", "peers": [ALICE, BOB], "max_peers": 4}
        auto_summary = {"name": "auto", "peers": [CAROL], "max_peers": None}
        self.assertEqual(self.successResultOf(rooms.summaries()), [a, auto_summary])
        self.assertEqual(self.successResultOf(rooms.summary("a")), a)
        for d in (
            rooms.summary("nope"),
            rooms.stop("nope"),
            rooms.disconnect("nope", ALICE),
            rooms.post("nope", Message("x", to="all")),
        ):
            self.assertEqual(self.failureResultOf(d, NoSuchRoom).value.name, "nope")

    def test_post_is_all_or_nothing(self) -> None:
        rooms = self.make_rooms()
        room = self.start_room(rooms, "a")
        alice, bob = self.connect_all(room, ALICE, BOB)
        refused = rooms.post("a", Message("x", to=(ALICE, CAROL)))
        self.assertEqual(self.failureResultOf(refused, NoSuchPeer).value.peer_ids, [CAROL])
        self.assertEqual(alice.messages + bob.messages, [])
        self.successResultOf(rooms.post("a", Message("x", to=(BOB,))))
        self.assertEqual(alice.messages, [])
        self.assertEqual(len(bob.messages), 1)

    def test_disconnect_and_stop(self) -> None:
        rooms = self.make_rooms()
        room = self.start_room(rooms, "a")
        alice, _ = self.connect_all(room, ALICE, BOB, leave_on_close=True)
        self.failureResultOf(rooms.disconnect("a", CAROL), NoSuchPeer)
        self.successResultOf(rooms.disconnect("a", ALICE))
        self.assertEqual(alice.close_codes, [1008])
        self.assertEqual(list(room.peers), [BOB])
        self.successResultOf(rooms.stop("a"))
        self.assertNotIn("a", rooms)


class LogTests(RoomsTestCase):
    def test_no_failure_in_normal_flow(self) -> None:
        rooms = self.make_rooms(RefusingRoom)
        fixed = rooms.start_room("fixed")
        alice = FakeConnection(ALICE, fixed, leave_on_close=True, journal=self.journal)
        fixed.join(alice.handle())
        bob = FakeConnection(BOB, fixed, leave_on_close=True)
        fixed.join(bob.handle())
        self.assertEqual(alice.messages, [joined_msg(BOB)])
        fixed.leave(BOB)
        self.assertEqual(alice.messages, [joined_msg(BOB), left_msg(BOB)])
        auto = rooms.get_or_create("auto")
        assert auto is not None
        carol = FakeConnection(CAROL, auto, leave_on_close=True)
        auto.join(carol.handle())
        self.assertNotIn("auto", rooms)
        self.successResultOf(rooms.stopService())
        self.assertEqual(self.take_failures(), [])
        self.assertEqual(self.errors_logged(), [])
        self.assertTrue(any("room" in str(event.get("log_format")) for event in self.logs))


class PublicNamesTests(SynchronousTestCase):
    def test_exports(self) -> None:
        import twisted_signal
        from twisted_signal import room, rooms

        self.assertIs(twisted_signal.Room, room.Room)
        self.assertIs(twisted_signal.Rooms, rooms.Rooms)
        self.assertIs(twisted_signal.PeerHandle, room.PeerHandle)
