"""
twisted_signal.testing: a room subclass tested in memory, as an embedder
would (docs/embedding.md).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal import AuthData, Message, Refused, Room
from twisted_signal.testing import RoomTester

pytestmark = pytest.mark.memory


class Shouting(Room):
    """Upper-cases text, refuses guests, and remembers who left."""

    def on_init(self, options: Any) -> None:
        self.gone: list[str] = []
        self.terminated = False

    def on_join(self, auth: AuthData) -> None:
        if auth.credentials.get("guest"):
            raise Refused("no_guests")

    def on_forward(self, message: Message) -> Message:
        if isinstance(message.data, str):
            return Message(message.event, message.data.upper(), message.from_, message.to)
        return message

    def on_leave(self, peer_id: str) -> None:
        self.gone.append(peer_id)

    def on_terminate(self) -> None:
        self.terminated = True


class Slow(Room):
    """Admits a peer only after a second of clock time."""

    def on_join(self, auth: AuthData) -> Deferred[None]:
        return deferLater(self._clock, 1.0, lambda: None)


class RoomTesterTests(SynchronousTestCase):
    def test_peers_join_and_see_each_other(self) -> None:
        tester = RoomTester(Shouting)
        alice = tester.join()
        bob = tester.join()
        self.assertTrue(alice.joined and bob.joined)
        self.assertEqual(alice.admitted, [])
        self.assertEqual(bob.admitted, [alice.peer_id])
        [joined] = alice.take()
        self.assertEqual(
            (joined.event, joined.data, joined.from_, joined.to),
            ("joined", {"peer_id": bob.peer_id}, bob.peer_id, "all"),
        )

    def test_messages_go_through_on_forward_to_their_addressees(self) -> None:
        tester = RoomTester(Shouting)
        alice, bob, carol = tester.join(), tester.join(), tester.join()
        for peer in (alice, bob, carol):
            peer.take()
        alice.send("chat", "hi", to=[bob.peer_id])
        [message] = bob.take()
        self.assertEqual(
            (message.event, message.data, message.from_), ("chat", "HI", alice.peer_id)
        )
        self.assertEqual(carol.take(), [])
        alice.send("chat", "all of you")
        self.assertEqual([m.data for m in bob.take() + carol.take()], ["ALL OF YOU"] * 2)
        self.assertEqual(alice.take(), [])

    def test_bad_input_gets_the_servers_errors(self) -> None:
        tester = RoomTester()
        alice = tester.join()
        alice.send_text("{not json")
        alice.send("x", to=["nobody"])
        errors = [m.data["description"] for m in alice.take()]
        self.assertEqual(errors, ["Invalid JSON", "No such peer"])

    def test_a_request_for_ice_servers_is_answered_not_relayed(self) -> None:
        ice = [{"urls": ["stun:stun.example.org"]}]
        tester = RoomTester(ice_servers=ice)
        alice, bob = tester.join(), tester.join()
        alice.take()
        alice.send("ice_servers", to=[alice.peer_id])
        [answer] = alice.take()
        self.assertEqual((answer.event, answer.data, answer.from_), ("ice_servers", ice, None))
        self.assertEqual(bob.take(), [])
        alice.send("left", {"peer_id": bob.peer_id})
        [refused] = alice.take()
        self.assertEqual(refused.data["description"], "Invalid message")
        self.assertEqual(bob.take(), [])

    def test_refusals(self) -> None:
        tester = RoomTester(Shouting, max_peers=1)
        tester.join()
        self.assertEqual(tester.join().refused, "room_is_full")
        guest = RoomTester(Shouting).join({"guest": True})
        self.assertEqual(guest.refused, "no_guests")
        self.assertEqual(guest.close_code, 1000)
        self.assertFalse(guest.joined)

    def test_leaving_and_stopping(self) -> None:
        tester = RoomTester(Shouting)
        alice, bob = tester.join(), tester.join()
        alice.take()
        bob.leave()
        self.assertEqual(
            [(m.event, m.data) for m in alice.take()], [("left", {"peer_id": bob.peer_id})]
        )
        room = tester.room
        assert isinstance(room, Shouting)
        self.assertEqual(room.gone, [bob.peer_id])
        self.successResultOf(tester.stop())
        [closed] = alice.take()
        self.assertEqual(closed.data, {"description": "Room closed", "details": "normal"})
        self.assertEqual(alice.close_code, 1000)
        self.assertTrue(room.terminated)

    def test_callbacks_that_wait_go_on_with_the_clock(self) -> None:
        tester = RoomTester(Slow)
        alice = tester.join()
        self.assertFalse(alice.joined)
        tester.advance(1.0)
        self.assertTrue(alice.joined)
