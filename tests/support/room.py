"""
A room's world without any WebSocket, for the room and registry tests:
`FakeConnection` (what a connection gives a room, recorded), `RecordingRoom`
(a room that journals its callbacks), `RoomTestCase` (a fake clock, the
journal and the captured log), and the wire messages they expect.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal import AuthData, Message, PeerHandle, Room

Journal = list[tuple[str, str, Any]]
"""What happened, in order: (who, what, value), shared by rooms and peers."""

ALICE, BOB, CAROL, DAVE = "alice", "bob", "carol", "dave"


# Expected wire messages (SPEC 1.3).


def error_msg(peer_id: str, description: str, details: Any) -> dict[str, Any]:
    return {
        "event": "error",
        "data": {"description": description, "details": details},
        "from": None,
        "to": [peer_id],
    }


def joined_msg(peer_id: str) -> dict[str, Any]:
    return {"event": "joined", "data": {"peer_id": peer_id}, "from": peer_id, "to": "all"}


def left_msg(peer_id: str) -> dict[str, Any]:
    return {"event": "left", "data": {"peer_id": peer_id}, "from": None, "to": "all"}


def wire(event: str, data: Any, from_: str | None, to: Any) -> dict[str, Any]:
    return {"event": event, "data": data, "from": from_, "to": to}


class FakeConnection:
    """
    What a real connection gives a room: it records what the room sends
    (`payloads`, `messages`), the close codes and the admissions.  With
    `leave_on_close`, closing it leaves the room, as a real connection does
    when its close handshake ends.
    """

    def __init__(
        self,
        peer_id: str,
        room: Room | None = None,
        *,
        leave_on_close: bool = False,
        journal: Journal | None = None,
        credentials: dict[str, Any] | None = None,
    ) -> None:
        self.peer_id = peer_id
        self.room = room
        self.leave_on_close = leave_on_close
        self.journal: Journal = journal if journal is not None else []
        self.auth = AuthData(peer_id, credentials or {}, None)
        self.payloads: list[bytes] = []
        self.close_codes: list[int] = []
        self.admissions: list[list[str]] = []

    def handle(self) -> PeerHandle:
        return PeerHandle(self.peer_id, self.auth, self.send, self.close, self.admitted)

    def send(self, payload: bytes) -> None:
        assert isinstance(payload, bytes), payload
        self.payloads.append(payload)
        self.journal.append((self.peer_id, "send", json.loads(payload)))

    def close(self, code: int) -> None:
        self.close_codes.append(code)
        self.journal.append((self.peer_id, "close", code))
        if self.leave_on_close and self.room is not None:
            self.room.leave(self.peer_id)

    def admitted(self, peer_ids: list[str]) -> None:
        self.admissions.append(list(peer_ids))
        self.journal.append((self.peer_id, "admitted", list(peer_ids)))

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(payload) for payload in self.payloads]

    def take(self) -> list[dict[str, Any]]:
        """
        The messages received so far, forgetting them.
        """
        messages = self.messages
        self.payloads.clear()
        return messages


class RecordingRoom(Room):
    """
    A room that writes each callback into `journal` as ("room", name, arg).
    """

    def __init__(self, *args: Any, journal: Journal | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.journal: Journal = journal if journal is not None else []

    def calls(self, name: str) -> list[Any]:
        return [value for who, what, value in self.journal if who == "room" and what == name]

    def on_init(self, options: Any) -> Any:
        self.journal.append(("room", "on_init", options))

    def on_join(self, auth: AuthData) -> Any:
        self.journal.append(("room", "on_join", auth))

    def on_leave(self, peer_id: str) -> Any:
        self.journal.append(("room", "on_leave", peer_id))

    def on_forward(self, message: Message) -> Any:
        self.journal.append(("room", "on_forward", message))
        return message

    def on_terminate(self) -> Any:
        self.journal.append(("room", "on_terminate", None))


class RoomTestCase(SynchronousTestCase):
    """
    A fake clock, a shared journal, and the log: a test that expects a
    failure to be logged takes it with `take_failures`; any other logged
    failure fails the test.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.journal: Journal = []
        stack = ExitStack()
        self.logs = stack.enter_context(capturedLogs())
        self.addCleanup(stack.close)
        self._failures_taken = 0
        self.addCleanup(self._no_unexpected_failures)

    def _failure_events(self) -> list[LogEvent]:
        return [event for event in self.logs if event.get("log_failure") is not None]

    def take_failures(self, *types: type[BaseException]) -> list[tuple[str, Failure]]:
        """
        The failures logged since the last call, as (formatted text, failure).
        """
        events = self._failure_events()[self._failures_taken :]
        self._failures_taken += len(events)
        if types:
            self.flushLoggedErrors(*types)
        return [(formatEvent(event), event["log_failure"]) for event in events]

    def _no_unexpected_failures(self) -> None:
        unexpected = self._failure_events()[self._failures_taken :]
        self.assertEqual(
            [(formatEvent(e), e["log_failure"].getErrorMessage()) for e in unexpected], []
        )

    def errors_logged(self) -> list[str]:
        """
        The text of the events logged at level error or above, failures excepted.
        """
        return [
            formatEvent(event)
            for event in self.logs
            if event.get("log_failure") is None
            and getattr(event.get("log_level"), "name", "") in ("error", "critical")
        ]

    def make_room(
        self,
        room_class: Callable[..., Room] = RecordingRoom,
        name: str = "r",
        options: Any = None,
        *,
        max_peers: int | None = None,
        start: bool = True,
    ) -> Room:
        kwargs: dict[str, Any] = {"max_peers": max_peers, "clock": self.clock}
        if isinstance(room_class, type) and issubclass(room_class, RecordingRoom):
            kwargs["journal"] = self.journal
        room = room_class(name, options, **kwargs)
        if start:
            room.startService()
        return room

    def connect(
        self,
        room: Room,
        peer_id: str,
        *,
        leave_on_close: bool = False,
        credentials: dict[str, Any] | None = None,
    ) -> FakeConnection:
        conn = FakeConnection(
            peer_id,
            room,
            leave_on_close=leave_on_close,
            journal=self.journal,
            credentials=credentials,
        )
        room.join(conn.handle())
        return conn

    def connect_all(
        self, room: Room, *peer_ids: str, leave_on_close: bool = False
    ) -> list[FakeConnection]:
        """
        Join the peers in order and forget what they were sent while joining.
        """
        conns = [self.connect(room, p, leave_on_close=leave_on_close) for p in peer_ids]
        for conn in conns:
            self.assertEqual(len(conn.admissions), 1, conn.peer_id)
            conn.take()
        del self.journal[:]
        return conns


def refusal(peer_id: str, reason: str) -> list[dict[str, Any]]:
    return [error_msg(peer_id, "Could not join room", reason)]
