"""
A second wire protocol plugs in as a front over the session and the room
(docs/architecture.md, "Fronts"): the test-only line front of
`tests.support.linefront` and the server's own front share a room, in
memory.  Its loopback twin is ``test_second_front_live.py``.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from twisted_signal import Room, Rooms
from twisted_signal.peer import PeerFactory
from twisted_signal.resume import Resumption
from twisted_signal.settings import Settings

from .support.linefront import LineFactory, LineFront
from .support.memory import MemoryClient

pytestmark = pytest.mark.memory

WINDOW = 30.0
ROOT = Path(__file__).parent.parent


class _LineClient:
    def __init__(self, factory: LineFactory, enter: dict[str, Any]) -> None:
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
        self.protocol: LineFront = protocol
        self.transport = StringTransport()
        protocol.makeConnection(self.transport)
        self.request(op="enter", **enter)

    def request(self, **fields: Any) -> None:
        self.protocol.dataReceived(json.dumps(fields).encode() + b"\n")

    def received(self) -> list[dict[str, Any]]:
        lines = self.transport.value().splitlines()
        self.transport.clear()
        return [json.loads(line) for line in lines]

    def lose(self) -> None:
        self.protocol.connectionLost()


class _Server:
    """One registry, the server's own front and the line front over it."""

    def __init__(self) -> None:
        self.clock = clock = Clock()
        self.rooms = Rooms(lambda name: Room(name, clock=clock), clock=clock)
        self.rooms.startService()
        settings = Settings(resume_window=WINDOW)
        self.spec1 = PeerFactory(self.rooms, settings=settings, clock=clock)
        self.lines = LineFactory(self.rooms, Resumption(WINDOW, clock))

    def line(self, **enter: Any) -> _LineClient:
        return _LineClient(self.lines, {"room": "r"} | enter)


def _welcome(client: _LineClient) -> dict[str, Any]:
    (welcome,) = client.received()
    assert welcome["op"] == "welcome", welcome
    return welcome


def test_two_line_clients_and_a_spec1_client_share_a_room() -> None:
    server = _Server()
    a = server.line()
    a_id = _welcome(a)["me"]
    b = server.line()
    welcome = _welcome(b)
    b_id = welcome["me"]
    assert welcome["here"] == [a_id] and welcome["resume"]
    assert a.received() == [{"op": "came", "who": b_id}]
    c = MemoryClient(server.spec1, "r")
    (authenticated,) = c.received()
    c_id = authenticated["data"]["peer_id"]
    assert authenticated["data"]["peers"] == [a_id, b_id]
    assert a.received() == b.received() == [{"op": "came", "who": c_id}]

    # Line to everyone, SPEC 1 to one line client, line to one line client.
    a.request(op="say", what="hello", body={"n": 1}, **{"for": "everyone"})
    heard = {"op": "heard", "what": "hello", "body": {"n": 1}, "by": a_id}
    assert b.received() == [heard] and a.received() == []
    assert c.received() == [{"event": "hello", "data": {"n": 1}, "from": a_id, "to": "all"}]
    c.send("offer", [b_id], {"sdp": "v=0"})
    assert b.received() == [{"op": "heard", "what": "offer", "body": {"sdp": "v=0"}, "by": c_id}]
    assert a.received() == []
    b.request(op="say", what="answer", body="x", **{"for": [a_id]})
    assert a.received() == [{"op": "heard", "what": "answer", "body": "x", "by": b_id}]
    assert c.received() == []

    # The room's rules and errors reach the line front in its own words.
    b.request(op="say", what="joined", body=None, **{"for": "everyone"})
    assert [m["op"] for m in b.received()] == ["oops"]
    b.request(op="say", what="x", body=None, **{"for": ["nobody"]})
    assert b.received() == [{"op": "oops", "why": "No such peer", "more": ["nobody"]}]

    # A line client that says bye leaves at once; the others see it go.
    b.request(op="bye")
    assert b.transport.disconnecting
    b.lose()  # what the reactor does once the transport has closed
    assert a.received() == [{"op": "went", "who": b_id}]
    assert c.received() == [{"event": "left", "data": {"peer_id": b_id}, "from": None, "to": "all"}]
    assert server.lines.terminated == [b_id]
    assert list(server.rooms.get("r").peers) == [a_id, c_id]  # type: ignore[union-attr]


def test_a_line_client_resumes_through_the_session() -> None:
    """
    The line front gets resume from the session as it is: a lost line
    client is held, what is sent to it is queued, and a new line connection
    with its token carries it on; the others never see it leave.
    """
    server = _Server()
    a = server.line()
    welcome = _welcome(a)
    a_id, token = welcome["me"], welcome["resume"]
    c = MemoryClient(server.spec1, "r")
    c_id = c.received()[0]["data"]["peer_id"]
    a.received()
    a.lose()
    c.send("chat", [a_id], "while you were away")
    again = server.line(resume=token)
    messages = again.received()
    assert messages[0]["op"] == "welcome" and messages[0]["me"] == a_id
    assert messages[0]["here"] == [c_id] and messages[0]["resume"] not in (None, token)
    assert messages[1:] == [
        {"op": "heard", "what": "chat", "body": "while you were away", "by": c_id}
    ]
    again.request(op="say", what="back", body=None, **{"for": [c_id]})
    assert [m["event"] for m in c.received()] == ["back"]  # no left, no joined
    # A used token carries nobody on: that connection is a new peer.
    other = server.line(resume=token)
    assert _welcome(other)["me"] not in (a_id, c_id)
    assert server.lines.terminated == []


def _private_uses(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self``: a private member of another."""
    tree = ast.parse(path.read_text())
    return [
        f"{path.name}:{node.lineno} {ast.unparse(node)}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(("." * node.level) + node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def test_the_second_front_needs_no_private_member_and_no_change_to_the_core() -> None:
    """
    The line front uses public API only, and the room, the registry and
    the cluster know no front: they import neither a front, nor the
    session, nor Autobahn.
    """
    assert _private_uses(ROOT / "tests" / "support" / "linefront.py") == []
    fronts = {".peer", ".peerjs", ".session", ".websocket", "..peer", "..peerjs", "..session"}
    fronts |= {"..websocket", "autobahn", "tests"}
    core = [ROOT / "twisted_signal" / "room.py", ROOT / "twisted_signal" / "rooms.py"]
    core += sorted((ROOT / "twisted_signal" / "cluster").glob("*.py"))
    for path in core:
        found = {name for name in _imports(path) if name.split(".")[0] in fronts}
        found |= _imports(path) & fronts
        assert found == set(), path
