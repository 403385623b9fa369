"""
The README's example room works as the README says.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal import AuthData, Message, PeerHandle, Room

pytestmark = pytest.mark.memory

README = Path(__file__).parent.parent / "README.md"


def readme_module() -> ModuleType:
    text = README.read_text()
    match = re.search(r"```python\n# myrooms.py\n(.*?)```", text, re.DOTALL)
    assert match, "the README lost its myrooms.py example"
    module = ModuleType("myrooms")
    exec(compile(match.group(1), "README.md", "exec"), module.__dict__)
    return module


class Connection:
    def __init__(self, room: Room, peer_id: str) -> None:
        self.received: list[dict[str, Any]] = []
        self.closed: list[int] = []
        self.handle = PeerHandle(
            peer_id,
            AuthData(peer_id),
            lambda payload: self.received.append(json.loads(payload)),
            self.closed.append,
            lambda peers: None,
        )
        room.join(self.handle)


class ReadmeRoomTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.room: Room = readme_module().SmallRoom("demo", None, max_peers=None, clock=Clock())
        self.room.startService()

    def test_third_peer_is_refused(self) -> None:
        a, b, c = (Connection(self.room, name) for name in "abc")
        self.assertEqual(list(self.room.peers), ["a", "b"])
        self.assertEqual(c.closed, [1000])
        self.assertEqual(
            c.received[-1]["data"],
            {"description": "Could not join room", "details": "room_is_full"},
        )
        self.assertEqual(a.closed + b.closed, [])

    def test_spam_is_dropped_and_the_rest_delivered(self) -> None:
        Connection(self.room, "a")
        b = Connection(self.room, "b")
        self.room.submit(Message("spam", None, "a", "all"))
        self.room.submit(Message("offer", {"sdp": "v=0"}, "a", "all"))
        self.assertEqual([m["event"] for m in b.received], ["offer"])
