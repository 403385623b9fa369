"""
Test a `Room` subclass in memory: no sockets, no reactor, time on a
`task.Clock`.

`RoomTester` starts your room and lets peers join, send and leave as real
connections do, through the same codec and the same room code, and records
what each peer receives::

    from twisted.trial.unittest import SynchronousTestCase
    from twisted_signal.testing import RoomTester

    class SmallRoomTests(SynchronousTestCase):
        def test_third_peer_is_refused(self) -> None:
            tester = RoomTester(SmallRoom, options={"limit": 2})
            alice, bob = tester.join(), tester.join()
            carol = tester.join()
            self.assertEqual(carol.refused, "room_is_full")
            alice.send("hello", {"text": "hi"}, to=[bob.peer_id])
            self.assertEqual(bob.take()[-1].data, {"text": "hi"})

Callbacks that return Deferreds or are ``async def`` work as on a server;
those waiting on time go on when you `RoomTester.advance` the clock.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from . import message as wire
from .context import AuthData
from .message import ALL, InvalidMessage, Message
from .room import PeerHandle, Room

__all__ = ["RoomTester", "TestPeer"]


class TestPeer:
    """
    One peer of a `RoomTester`: what the room sent it, in order, and how its
    connection ended.
    """

    __test__ = False  # not a test class, for pytest

    def __init__(self, tester: RoomTester, peer_id: str, auth: AuthData) -> None:
        self._tester = tester
        self.peer_id = peer_id
        self.auth = auth
        self.received: list[Message] = []
        """Every message the room sent this peer, oldest first."""
        self.admitted: list[str] | None = None
        """The peers already in the room when this one was admitted."""
        self.close_code: int | None = None
        """The close code the room closed this peer's connection with."""
        self._left = False

    @property
    def joined(self) -> bool:
        """Admitted and not gone."""
        return self.admitted is not None and self.close_code is None and not self._left

    @property
    def refused(self) -> str | None:
        """The reason of the room's refusal (``"room_is_full"``, ...), if it refused."""
        for message in self.received:
            if message.event == "error" and message.from_ is None:
                data = message.data if isinstance(message.data, dict) else {}
                if data.get("description") == "Could not join room":
                    details = data.get("details")
                    return str(details) if details is not None else ""
        return None

    def take(self) -> list[Message]:
        """The messages received since the last `take`, forgetting them."""
        taken, self.received = self.received, []
        return taken

    def events(self) -> list[str]:
        """The event names of the messages received so far."""
        return [message.event for message in self.received]

    def send(self, event: str, data: Any = None, to: Iterable[str] | str = ALL) -> None:
        """
        Send a message as the client would, through the server's codec (so
        invalid ones get the server's ``error`` reply).
        """
        addressees = to if isinstance(to, str) else list(to)
        self.send_text(json.dumps({"event": event, "data": data, "to": addressees}))

    def send_text(self, text: str) -> None:
        """Send one text frame as it comes from a client."""
        try:
            message = Message.from_json(text, from_=self.peer_id)
        except InvalidMessage as e:
            self._receive(wire.error(self.peer_id, e.description, e.details).to_bytes())
            return
        if message.event == "ice_servers":
            # The request for fresh ICE servers (SPEC 5.2) is the
            # connection's to answer; it never reaches the room.
            ice = Message("ice_servers", self._tester.ice_servers, None, (self.peer_id,))
            self._receive(ice.to_bytes())
            return
        self._tester.room.submit(message, self._tester.clock.seconds())

    def leave(self) -> None:
        """The connection ends (as when the client closes it)."""
        if not self._left:
            self._left = True
            self._tester.room.leave(self.peer_id)

    # The handle's callables.

    def _receive(self, payload: bytes) -> None:
        sent = json.loads(payload)
        self.received.append(Message(sent["event"], sent["data"], sent["from"], sent["to"]))

    def _close(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
            # A real connection leaves once its close handshake ends.
            self.leave()

    def _admit(self, peer_ids: list[str]) -> None:
        self.admitted = list(peer_ids)


class RoomTester:
    """
    One started room of class `room_class` on a `Clock`, with peers that
    join it in memory.

    `room_class`, `name`, `options` and `max_peers` are what the server would
    start the room with.
    """

    def __init__(
        self,
        room_class: type[Room] = Room,
        *,
        name: str = "test",
        options: Any = None,
        max_peers: int | None = None,
        clock: Clock | None = None,
        ice_servers: list[dict[str, Any]] | None = None,
    ) -> None:
        self.ice_servers = ice_servers if ice_servers is not None else []
        """What a peer's request for fresh ICE servers is answered with."""
        self.clock = clock if clock is not None else Clock()
        self.room = room_class(name, options, max_peers=max_peers, clock=self.clock)
        self.peers: list[TestPeer] = []
        self._ids = (str(uuid.UUID(int=n, version=4)) for n in itertools.count(1))
        self.room.startService()

    def join(
        self,
        credentials: dict[str, Any] | None = None,
        metadata: Any = None,
        *,
        peer_id: str | None = None,
    ) -> TestPeer:
        """
        A new peer asks to join; look at `TestPeer.joined` or
        `TestPeer.refused` for the answer (an ``async`` `on_join` may answer
        only after `advance`).  Peer ids are UUIDs counted from 1 unless given.
        """
        peer_id = peer_id if peer_id is not None else next(self._ids)
        peer = TestPeer(self, peer_id, AuthData(peer_id, credentials or {}, metadata))
        self.peers.append(peer)
        self.room.join(PeerHandle(peer_id, peer.auth, peer._receive, peer._close, peer._admit))
        return peer

    def advance(self, seconds: float) -> None:
        """Let `seconds` of clock time pass."""
        self.clock.advance(seconds)

    def stop(self) -> Deferred[None]:
        """Stop the room as the server does (its peers get ``"Room closed"``)."""
        return self.room.stopService()
