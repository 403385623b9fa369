"""
A second front, for tests only: line-delimited JSON over plain TCP, with
field names of its own, over the same sessions and rooms as the server's
own protocol (SPEC 1).  It shows that a wire protocol plugs in through
public API only (`twisted_signal.session`, `RoomAccess`, `Rooms`,
`Resumption`, `Message`), with no change to the room, the registry or the
cluster: ``tests/test_second_front*.py``.

One JSON object per line.  The client sends:

- first ``{"op": "enter", "room": R}``, or ``{"op": "enter", "room": R,
  "resume": TOKEN}`` to carry on a peer held for resume;
- ``{"op": "say", "what": EVENT, "body": DATA, "for": [ID, ...]}`` (or
  ``"for": "everyone"``);
- ``{"op": "bye"}`` before it closes (else it may resume).

The server sends ``{"op": "welcome", "me": ID, "here": [ID, ...], "resume":
TOKEN}``, ``{"op": "heard", "what": EVENT, "body": DATA, "by": ID}``,
``{"op": "came", "who": ID}``, ``{"op": "went", "who": ID}`` and ``{"op":
"oops", "why": DESCRIPTION, "more": DETAILS}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, connectionDone
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure

from twisted_signal.context import AuthData, PeerContext
from twisted_signal.events import NO_EVENTS, Events
from twisted_signal.message import InvalidMessage, Message
from twisted_signal.resume import Resumption
from twisted_signal.rooms import Rooms, is_room_name
from twisted_signal.session import Front, Session

__all__ = ["LineFactory", "LineFront"]


@dataclass
class LineFactory(Factory):
    """The line front of one server: a `session.Host` too."""

    rooms: Rooms
    resumption: Resumption
    events: Events = NO_EVENTS
    accepting: bool = True
    terminated: list[str] = field(default_factory=list)
    """The peers whose end came through this front, in order."""

    def buildProtocol(self, addr: IAddress | None) -> LineFront:
        return LineFront(self)


class LineFront(LineOnlyReceiver):
    delimiter = b"\n"

    def __init__(self, factory: LineFactory) -> None:
        self.factory = factory
        self.session: Session | None = None
        self.front: Front = _Side(self)
        self._bye = False

    # From the client.

    def lineReceived(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            op = request["op"]
        except (ValueError, TypeError, KeyError):
            self._send(op="oops", why="Invalid message", more="one JSON object with 'op'")
            return
        if self.session is None:
            if op == "enter":
                self._enter(request)
            else:
                self._send(op="oops", why="Invalid message", more="enter first")
            return
        if op == "say":
            self._say(request)
        elif op == "bye":
            self._bye = True
            self._hang_up()

    def _enter(self, request: dict[str, Any]) -> None:
        factory, name = self.factory, request.get("room")
        room = None
        if isinstance(name, str) and is_room_name(name):
            room = factory.rooms.access(name)
        if room is None or not isinstance(name, str):
            self._send(op="oops", why="Could not join room", more="no_such_room")
            self._hang_up()
            return
        token = request.get("resume")
        held = factory.resumption.peek(token, name) if isinstance(token, str) else None
        if isinstance(held, Session) and factory.resumption.claim(token, name) is not None:
            self.session = held
            held.taken()
            held.resume(self.front)
            return
        peer_id = str(uuid4())
        self.session = session = Session(
            factory, AuthData(peer_id), PeerContext(peer_id, name), None, self.front
        )
        session.join(room)

    def _say(self, request: dict[str, Any]) -> None:
        session = self.session
        assert session is not None
        to = request.get("for")
        spec1 = {"event": request.get("what"), "data": request.get("body")}
        spec1["to"] = "all" if to == "everyone" else to
        try:
            # The same rules as SPEC 1 (a peer cannot send the server's events).
            message = Message.from_json(json.dumps(spec1), from_=session.peer_id)
        except InvalidMessage as e:
            self._send(op="oops", why=e.description, more=e.details)
            return
        if session.room is not None:
            session.room.submit(message)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        session = self.session
        if session is not None:
            session.lost(self.front, may_hold=not self._bye)

    # What the session asks (through `_Side`).

    def from_room(self, payload: bytes) -> None:
        # What the room sends is SPEC 1's encoding: re-encode it as ours.
        message = json.loads(payload)
        event, data, sender = message["event"], message["data"], message["from"]
        # (A peer cannot send the server's events: these are the room's.)
        if event == "joined":
            self._send(op="came", who=data["peer_id"])
        elif event == "left":
            self._send(op="went", who=data["peer_id"])
        elif event == "error":
            self._send(op="oops", why=data["description"], more=data["details"])
        else:
            self._send(op="heard", what=event, body=data, by=sender)

    def close_by_room(self, code: int) -> None:
        self._hang_up()

    def welcome(self, peer_ids: list[str], token: str | None) -> None:
        session = self.session
        assert session is not None
        self._send(op="welcome", me=session.peer_id, here=peer_ids, resume=token)

    def ended(self) -> None:
        session = self.session
        assert session is not None
        self.factory.terminated.append(session.peer_id)

    def cut(self) -> None:
        transport: Any = self.transport
        transport.abortConnection()

    def _hang_up(self) -> None:
        transport: Any = self.transport
        transport.loseConnection()

    def _send(self, **fields: Any) -> None:
        self.sendLine(json.dumps(fields).encode())


class _Side:
    """The line front as its session sees it (`session.Front`)."""

    __slots__ = ("close", "drop", "line", "terminate", "write")

    def __init__(self, line: LineFront) -> None:
        self.line = line
        self.write = line.from_room
        self.close = line.close_by_room
        self.terminate = line.ended
        self.drop = line.cut

    def admitted(self, peer_ids: list[str], resume_token: str | None) -> None:
        self.line.welcome(peer_ids, resume_token)

    @property
    def public(self) -> object:
        return None
