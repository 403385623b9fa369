"""
Stateful fuzzing of a live server (SPEC 1.2 to 1.4): a `hypothesis`
`RuleBasedStateMachine` drives several `websockets` clients against a real
server on a loopback port, across two rooms made on demand, with random
valid and malformed frames, joins (some into a full room), clean leaves,
dropped and reset connections, and connections the server must close itself
(a frame over the size limit, a text frame that is not UTF-8).

The whole hypothesis run is blocking client code in one thread
(`deferToThread`); the server runs in the reactor thread and its state is
read there (`in_reactor`, `wait_until`).

Sending is lazy: a rule sends a frame and records what each client must
receive because of it, and the messages are read later, when a room is
drained (the `settle` rule, and before any change of membership, so that
the recipients of a message are known when it is sent).  Several peers'
frames are therefore in flight at once and the server interleaves them as it
likes; what is checked is what the contract promises whatever the
interleaving:

- every message a client receives was addressed to it and was expected: a
  relay from another peer of its room (to ``"all"`` or to a list naming it),
  or a server event for it; nothing arrives twice, nothing goes missing;
- one total order per room: two peers that both received two messages of the
  room received them in the same order (departed peers included), and each
  sender's messages arrive in the order it sent them;
- ``joined``/``authenticated`` on joining, ``Could not join room`` /
  ``room_is_full`` and close 1000 for a full room (the others see nothing),
  ``left`` exactly once per departed peer for each remaining peer;
- malformed frames get exactly the right ``error`` (or ``pong`` for
  ``ping``), in the order sent, keep the connection open and never reach
  anybody else; frames over the limit close with 1009, bad UTF-8 with 1007;
- the server's own view agrees (the peers of each room), and after each
  example no state is left: the example's rooms (made on demand) are gone,
  resumption holds nothing (resume is off), no connection is open;
- the server logged no failure and nothing at error level.

Resume is off (``resume_window=0``: a lost connection leaves at once) and the
rate limit is out of reach, so every outcome is determined by the frames.
A run prints its seed and what it did (``pytest -s``) and fails if it did not
exercise every kind of outcome; ``FUZZ_SEED=<n>`` replays a run and
``FUZZ_EXAMPLES=<n>`` changes its size (300 examples of up to 30 steps).

`test_the_fuzz_catches_a_broken_server` shows that the checks bite: the same
machine run against servers broken on purpose through the public API
(misrouted, lost, reordered messages, a failing callback, a rate limit) must
fail.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import socket
import struct
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import pytest
import pytest_twisted
from hypothesis import HealthCheck, Phase, assume, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)
from twisted.internet.threads import deferToThread
from twisted.logger import LogEvent, LogLevel, capturedLogs, formatEvent
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection

from twisted_signal import Message, Peer, PeerContext, PeerHandle, Room, Settings

from .support import (
    TIMEOUT,
    LiveServer,
    MakeServer,
    error,
    in_reactor,
    is_peer_id,
    open_socket,
    wait_until,
)

pytestmark = pytest.mark.loopback

ROOM_CAP = 4
"""`max_peers` of the rooms: a fifth peer is refused with ``room_is_full``."""

MAX_CONNECTIONS = 7
"""At most this many clients at once (enough to fill one room and more)."""

MAX_MESSAGE_BYTES = 4096
"""The server's frame limit, small so that the oversized frame is cheap."""

SERVER_SETTINGS = Settings(
    resume_window=0,
    rate=1_000_000.0,
    rate_burst=1_000_000,
    max_message_bytes=MAX_MESSAGE_BYTES,
)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "300"))
STEPS = 30

SERVER_KEYS = frozenset({"event", "data", "from", "to"})
DIRECT_ERRORS = frozenset({"Invalid JSON", "Invalid message"})
"""Errors answered at once by the connection, not in the room's order."""
SPECIAL_EVENTS = ["offer", "answer", "candidate", "joined", "left", "error"]
SPECIAL_EVENTS += ["authenticated", "ice_servers", "ping", "pong", "all"]

# What the server must answer a frame with, found from the contract alone.

Expected = tuple[str, Any]
"""A direct answer: ("pong", None), ("ice", None), (error description, details or None)."""


def strict_json(text: str) -> Any:
    """
    JSON as SPEC 1.2 and docs/protocol.md read it: NaN, Infinity and numbers
    too large for a double are not JSON.
    """

    def no_constant(name: str) -> Any:
        raise ValueError(name)

    def finite(number: str) -> float:
        value = float(number)
        if not math.isfinite(value):
            raise ValueError(number)
        return value

    return json.loads(text, parse_constant=no_constant, parse_float=finite)


SERVER_ONLY_EVENTS = frozenset({"authenticated", "joined", "left", "error"})
"""Names a peer may not send; "ice_servers" it may, to itself alone (SPEC 1.2)."""


def classify(frame: str, sender: str) -> tuple[str, Any]:
    """
    ``("valid", parsed)``, or the direct answer the server owes `frame` from
    the peer `sender`.
    """
    if frame == "ping":
        return ("pong", None)
    try:
        value = strict_json(frame)
    except (ValueError, RecursionError):
        return ("Invalid JSON", frame[:256])
    valid = isinstance(value, dict)
    if valid:
        event, to = value.get("event"), value.get("to", ())
        valid = isinstance(event, str) and 1 <= len(event) <= 64
        valid = valid and (
            to == "all"
            or (isinstance(to, list) and len(to) <= 64 and all(isinstance(i, str) for i in to))
        )
        valid = valid and event not in SERVER_ONLY_EVENTS
        valid = valid and (event != "ice_servers" or refresh(to, sender))
    return ("valid", value) if valid else ("Invalid message", None)


def refresh(to: Any, sender: str) -> bool:
    """Whether `to` addresses `sender` alone: an ``ice_servers`` request (SPEC 5.2)."""
    return isinstance(to, list) and set(to) == {sender}


def key(message: dict[str, Any]) -> str:
    """One string per distinct message (object key order does not matter)."""
    return json.dumps(message, sort_keys=True)


# Strategies.

DEPARTURES = ["clean", "drop", "reset", "oversize", "bad-utf8"]
"""How a peer goes: close frame, FIN, RST, or closed by the server (1009, 1007)."""

ANY_CHAR = st.characters() | st.characters(categories=["Cs"])
"""Any code point, lone surrogates included (sent as JSON escapes)."""
SENDABLE_CHAR = st.characters(exclude_categories=["Cs"])
"""What can be in a text frame as such (UTF-8)."""

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(ANY_CHAR, max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(ANY_CHAR, max_size=6), children)
    ),
    max_leaves=8,
)

PICK = st.integers(min_value=0, max_value=63)
"""Chooses among whatever exists when the rule runs (modulo)."""

EVENTS = st.sampled_from(SPECIAL_EVENTS) | st.text(ANY_CHAR, min_size=1, max_size=40)

UNKNOWN_IDS = st.one_of(
    st.tuples(st.just("other-room"), PICK),
    st.tuples(st.just("departed"), PICK),
    st.tuples(st.just("fresh"), st.just(0)),
    st.tuples(st.just("junk"), st.text(ANY_CHAR, max_size=12)),
)

ADDRESSEES = st.one_of(
    st.just("all"),
    st.just("self"),
    st.tuples(st.lists(PICK, max_size=5), st.lists(st.tuples(UNKNOWN_IDS, PICK), max_size=2)),
)
"""``"all"``, ``"self"``, or (picks among the room's peers, unknown ids and where they go)."""

EXTRA_KEYS = st.dictionaries(st.sampled_from(["from", "id", "type", "extra"]), JSON_VALUES)

CUTS = st.lists(st.integers(min_value=1, max_value=10_000), max_size=3)
"""Where to split a frame into WebSocket fragments."""


@st.composite
def bad_objects(draw: st.DrawFn) -> str:
    """A JSON object that is not a valid message, for one reason or several."""
    message: dict[str, Any] = {
        "event": draw(st.text(min_size=1, max_size=10)),
        "to": draw(st.sampled_from(["all", []])),
        "data": draw(JSON_VALUES),
    }
    faults = draw(
        st.sets(
            st.sampled_from(
                [
                    *("no-event", "event-type", "event-empty", "event-long"),
                    *("no-to", "to-type", "to-string", "to-item", "to-long"),
                ]
            ),
            min_size=1,
            max_size=2,
        )
    )
    not_a_string: st.SearchStrategy[Any] = (
        st.none() | st.booleans() | st.integers() | st.lists(st.text(max_size=3))
    )
    for fault in sorted(faults):
        if fault == "no-event":
            del message["event"]
        elif fault == "event-type":
            message["event"] = draw(not_a_string | st.dictionaries(st.text(max_size=3), st.none()))
        elif fault == "event-empty":
            message["event"] = ""
        elif fault == "event-long":
            message["event"] = draw(st.text(min_size=65, max_size=80))
        elif fault == "no-to":
            message.pop("to", None)
        elif fault == "to-type":
            message["to"] = draw(
                st.none() | st.booleans() | st.integers() | st.dictionaries(st.text(), st.none())
            )
        elif fault == "to-string":
            message["to"] = draw(st.text(max_size=8).filter(lambda s: s != "all"))
        elif fault == "to-item":
            items: list[Any] = draw(st.lists(st.text(max_size=8), max_size=3))
            items.insert(draw(st.integers(0, len(items))), draw(not_a_string))
            message["to"] = items
        else:
            message["to"] = [str(i) for i in range(draw(st.integers(65, 70)))]
    return json.dumps(message)


@st.composite
def non_finite(draw: st.DrawFn) -> str:
    """A message whose data holds a number JSON cannot carry."""
    token = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-2E400"]))
    return '{"event": "x", "to": "all", "data": [1, TOKEN]}'.replace("TOKEN", token)


@st.composite
def truncated(draw: st.DrawFn) -> str:
    frame = json.dumps({"event": draw(st.text(min_size=1, max_size=8)), "to": "all"})
    return frame[: draw(st.integers(0, len(frame) - 1))]


TEXT_FRAMES = st.one_of(
    st.text(SENDABLE_CHAR, max_size=300),
    st.sampled_from(["ping", " ping", "PING", "pong", "", "null", "{}", "[]", '"all"']),
    JSON_VALUES.filter(lambda v: not isinstance(v, dict)).map(json.dumps),
    bad_objects(),
    non_finite(),
    truncated(),
)

RAW_FRAMES = (
    TEXT_FRAMES
    | st.just("ping")
    | st.binary(max_size=64)
    | JSON_VALUES.map(lambda v: json.dumps(v).encode())
)
"""Text frames that are not valid messages (or ``ping``), and binary frames."""


# The clients, as the model sees them.


@dataclass(eq=False)
class Tracked:
    ws: ClientConnection
    peer_id: str
    room: str
    pending: Counter[str] = field(default_factory=Counter)
    """Room-ordered messages still to come (relays, joined, left, No such peer)."""
    direct: deque[Expected] = field(default_factory=deque)
    """Direct answers still to come, in order (pong, Invalid ..., ice_servers)."""
    stream: list[str] = field(default_factory=list)
    """The room-ordered messages received, in order."""
    last_seq: dict[str, int] = field(default_factory=dict)
    """Per sender, the sequence number of the last of its messages received."""

    def __repr__(self) -> str:
        return f"<peer {self.peer_id[:8]} in {self.room}>"


def closed_with(ws: ClientConnection, timeout: float = TIMEOUT) -> int | None:
    """The close code the server sent (None: no close frame); fails on a message."""
    try:
        frame = ws.recv(timeout=timeout)
    except ConnectionClosed as e:
        return None if e.rcvd is None else e.rcvd.code
    raise AssertionError(f"expected the connection to close, got {frame!r}")


def abort(ws: ClientConnection, reset: bool = False) -> None:
    """End the TCP connection without a close frame (FIN, or RST with `reset`)."""
    sock = ws.socket
    if reset:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def fragments(frame: str, cuts: list[int]) -> list[str]:
    points = sorted({c % len(frame) for c in cuts if len(frame) > 1 and c % len(frame)})
    bounds = [0, *points, len(frame)]
    return [frame[a:b] for a, b in itertools.pairwise(bounds)]


class ServerFuzz(RuleBasedStateMachine):
    """
    One example: up to `MAX_CONNECTIONS` clients in this example's two rooms.
    `server` and `events` (the captured log) are set by the test.
    """

    server: ClassVar[LiveServer]
    events: ClassVar[Sequence[LogEvent]]
    _examples: ClassVar[Iterator[int]] = itertools.count()
    patience: ClassVar[float] = TIMEOUT
    """How long a drain waits for what is owed."""
    stats: ClassVar[Counter[str]] = Counter()
    """What the run did, by rule and outcome (printed, and checked for coverage)."""

    def __init__(self) -> None:
        super().__init__()
        n = next(self._examples)
        self.room_names = (f"fz{n}-a", f"fz{n}-b")
        self.members: dict[str, list[Tracked]] = {name: [] for name in self.room_names}
        self.archive: dict[str, list[list[str]]] = {name: [] for name in self.room_names}
        self.departed: list[str] = []
        self.origin: dict[str, tuple[str, int]] = {}
        self.counter = itertools.count()
        self.failed = False
        self.log_start = in_reactor(lambda: len(self.events))

    # Helpers.

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        """A rule's body: if it fails, teardown only cleans up."""
        self.stats[name] += 1
        self.failed = True
        yield
        self.failed = False

    def alive(self) -> list[Tracked]:
        return [p for name in self.room_names for p in self.members[name]]

    def pick(self, n: int) -> Tracked:
        peers = self.alive()
        return peers[n % len(peers)]

    def factory_state(self) -> tuple[int, int]:
        factory = self.server.service.resource.factory
        return len(factory.resumption), factory.countConnections

    def check_server_room(self, room: str) -> None:
        """The server's peers of `room` are the model's (and an empty room is gone)."""
        expected = sorted(p.peer_id for p in self.members[room])
        rooms = self.server.rooms
        if not expected:
            wait_until(lambda: room not in rooms)
            return

        def actual() -> list[str] | None:
            found = rooms.get(room)
            return None if found is None else sorted(found.peers)

        assert in_reactor(actual) == expected, room

    def accept(self, peer: Tracked, raw: str | bytes) -> None:
        """One frame `peer` received: it must be one it was owed."""
        assert isinstance(raw, str), f"{peer} got a binary frame {raw!r}"
        if raw == "pong":
            self.accept_direct(peer, ("pong", None), raw)
            return
        message = json.loads(raw)
        assert isinstance(message, dict), f"{peer} got {raw!r}"
        assert set(message) == SERVER_KEYS, f"{peer} got {message}"
        to, sender, event = message["to"], message["from"], message["event"]
        addressed = (to == "all" and sender != peer.peer_id) or (
            isinstance(to, list) and peer.peer_id in to
        )
        assert addressed, f"{peer} got a message not addressed to it: {message}"
        if sender is None and event == "ice_servers":
            assert message == {
                "event": "ice_servers",
                "data": [],
                "from": None,
                "to": [peer.peer_id],
            }, message
            self.accept_direct(peer, ("ice", None), message)
            return
        data = message["data"]
        description = data.get("description") if isinstance(data, dict) else None
        if sender is None and event == "error" and description in DIRECT_ERRORS:
            assert to == [peer.peer_id], message
            assert set(data) == {"description", "details"}, message
            self.accept_direct(peer, (description, data["details"]), message)
            return
        if sender is None and event == "error" and description == "No such peer":
            details = data["details"]
            assert isinstance(details, list), message
            data["details"] = sorted(set(details))
        k = key(message)
        if peer.pending[k] <= 0:
            raise AssertionError(f"{peer} got an unexpected message: {message}")
        peer.pending[k] -= 1
        if not peer.pending[k]:
            del peer.pending[k]
        peer.stream.append(k)
        self.stats["delivered"] += 1
        origin = self.origin.get(k)
        if origin is not None:
            sender_id, seq = origin
            last = peer.last_seq.get(sender_id, -1)
            assert seq > last, f"{peer} got {sender_id[:8]}'s messages out of order: {message}"
            peer.last_seq[sender_id] = seq

    def accept_direct(self, peer: Tracked, got: Expected, message: Any) -> None:
        assert peer.direct, f"{peer} got an unexpected answer: {message}"
        kind, details = peer.direct.popleft()
        self.stats[f"answered {kind}"] += 1
        assert got[0] == kind, f"{peer} expected {kind!r}, got {message}"
        if kind == "Invalid message" and details is None:
            # "a short human-readable reason"
            assert isinstance(got[1], str) and 0 < len(got[1]) <= 200, message
        else:
            assert got[1] == details, f"{peer} expected {details!r}, got {message}"

    def drain(self, room: str | None = None) -> None:
        """
        Read until every client of `room` (or of both rooms) has received all
        it is owed; anything else it has received by then fails.  Then check
        the room's total order.
        """
        rooms = self.room_names if room is None else (room,)
        deadline = time.monotonic() + self.patience
        for name in rooms:
            for peer in self.members[name]:
                while peer.pending or peer.direct:
                    remaining = deadline - time.monotonic()
                    try:
                        raw = peer.ws.recv(timeout=max(remaining, 0.0))
                    except TimeoutError:
                        raise AssertionError(
                            f"{peer} still waits for {dict(peer.pending)} {list(peer.direct)}"
                        ) from None
                    except ConnectionClosed as e:
                        raise AssertionError(f"{peer} was disconnected: {e!r}") from None
                    self.accept(peer, raw)
                while True:  # what has arrived meanwhile must have been owed too
                    try:
                        raw = peer.ws.recv(timeout=0)
                    except TimeoutError:
                        break
                    self.accept(peer, raw)
            self.check_order(name)

    def check_order(self, room: str) -> None:
        streams = [p.stream for p in self.members[room]] + self.archive[room]
        for one, other in itertools.combinations(streams, 2):
            common = set(one) & set(other)
            mine = [k for k in one if k in common]
            theirs = [k for k in other if k in common]
            assert mine == theirs, f"two peers of {room} saw different orders:\n{mine}\n{theirs}"

    def relay(self, sender: Tracked, frame: str, parsed: dict[str, Any], cuts: list[int]) -> None:
        """Send a valid message, recording who must get what."""
        members = self.members[sender.room]
        by_id = {p.peer_id: p for p in members}
        to = parsed["to"]
        if parsed["event"] == "ice_servers" and refresh(to, sender.peer_id):
            sender.direct.append(("ice", None))
        else:
            message = {
                "event": parsed["event"],
                "data": parsed.get("data"),
                "from": sender.peer_id,
                "to": to,
            }
            recipients: list[Tracked] = []
            if to == "all":
                recipients = [p for p in members if p is not sender]
            else:
                listed = list(dict.fromkeys(to))
                unknown = [i for i in listed if i not in by_id]
                if unknown:
                    problem = error(sender.peer_id, "No such peer", sorted(set(unknown)))
                    sender.pending[key(problem)] += 1
                else:
                    recipients = [by_id[i] for i in listed]
            k = key(message)
            assert k not in self.origin, "the fuzz sent the same message twice"
            self.origin[k] = (sender.peer_id, next(self.counter))
            for peer in recipients:
                peer.pending[k] += 1
        pieces = fragments(frame, cuts)
        sender.ws.send(pieces if len(pieces) > 1 else frame)

    def unknown_id(self, sender: Tracked, kind: str, which: Any) -> str:
        if kind == "other-room":
            others = [p for p in self.alive() if p.room != sender.room]
            if others:
                return others[int(which) % len(others)].peer_id
        elif kind == "departed" and self.departed:
            return self.departed[int(which) % len(self.departed)]
        elif kind == "junk":
            return str(which)
        return str(uuid.uuid4())

    def end(self, peer: Tracked, how: str) -> None:
        """`peer` leaves (as `how` says); the others get ``left``."""
        self.stats[f"ended {how}"] += 1
        room = peer.room
        self.drain(room)
        self.members[room].remove(peer)
        self.archive[room].append(peer.stream)
        self.departed.append(peer.peer_id)
        ws = peer.ws
        if how == "clean":
            ws.close()
            assert ws.close_code == 1000, ws.close_code
        elif how in ("drop", "reset"):
            abort(ws, reset=how == "reset")
        else:
            if how == "oversize":
                frame, code = "x" * (MAX_MESSAGE_BYTES + 1), 1009
                with suppress(ConnectionClosed, OSError):
                    ws.send(frame)
            else:
                with suppress(ConnectionClosed, OSError):
                    ws.send(b'{"event": "\xff"}', text=True)
                code = 1007
            assert closed_with(ws) == code, how
            ws.close()
        gone = {"event": "left", "data": {"peer_id": peer.peer_id}, "from": None, "to": "all"}
        for other in self.members[room]:
            other.pending[key(gone)] += 1
        self.drain(room)
        self.check_server_room(room)

    def new_events(self) -> list[LogEvent]:
        return list(in_reactor(lambda: self.events[self.log_start :]))

    # Rules.

    @precondition(lambda self: len(self.alive()) < MAX_CONNECTIONS)
    @rule(which=st.integers(0, 1))
    def join(self, which: int) -> None:
        with self.step("join"):
            room = self.room_names[which]
            self.drain(room)
            members = self.members[room]
            ws = open_socket(self.server.socket_url(room))
            first = json.loads(ws.recv(timeout=TIMEOUT))
            assert set(first) == SERVER_KEYS, first
            to = first["to"]
            assert isinstance(to, list) and len(to) == 1 and is_peer_id(to[0]), first
            peer_id = to[0]
            assert peer_id not in self.departed
            assert all(p.peer_id != peer_id for p in self.alive())
            if len(members) >= ROOM_CAP:
                assert first == error(peer_id, "Could not join room", "room_is_full")
                assert closed_with(ws) == 1000
                ws.close()
                self.stats["refused room_is_full"] += 1
            else:
                assert first["event"] == "authenticated", first
                assert first["from"] is None, first
                data = first["data"]
                assert data["peer_id"] == peer_id, first
                assert sorted(data["peers"]) == sorted(p.peer_id for p in members), first
                assert data["ice_servers"] == [], first
                joined = {"event": "joined", "data": {"peer_id": peer_id}, "from": peer_id}
                joined["to"] = "all"
                for other in members:
                    other.pending[key(joined)] += 1
                members.append(Tracked(ws, peer_id, room))
                self.drain(room)
            self.check_server_room(room)

    @precondition(lambda self: self.alive())
    @rule(
        pick=PICK,
        event=EVENTS,
        data=st.none() | st.tuples(JSON_VALUES),
        addressees=ADDRESSEES,
        extra=EXTRA_KEYS,
        cuts=CUTS,
    )
    def send(
        self,
        *,
        pick: int,
        event: str,
        data: tuple[Any] | None,
        addressees: Any,
        extra: dict[str, Any],
        cuts: list[int],
    ) -> None:
        with self.step("send"):
            sender = self.pick(pick)
            n = next(self.counter)
            body: dict[str, Any] = dict(extra)
            if event in SPECIAL_EVENTS:
                body["event"] = event
                body["data"] = {"n": n, "v": None if data is None else data[0]}
            else:
                body["event"] = f"{event}#{n}"
                if data is not None:
                    body["data"] = data[0]
            if addressees == "all":
                body["to"] = "all"
            elif addressees == "self":
                body["to"] = [sender.peer_id]
            else:
                picks, unknown = addressees
                members = self.members[sender.room]
                ids = [members[p % len(members)].peer_id for p in picks]
                for (kind, which), where in unknown:
                    ids.insert(where % (len(ids) + 1), self.unknown_id(sender, kind, which))
                body["to"] = ids
            frame = json.dumps(body)
            verdict, parsed = classify(frame, sender.peer_id)
            if verdict != "valid":
                # One of the server's event names: refused, delivered to nobody.
                assert verdict == "Invalid message", (frame, verdict)
                sender.direct.append((verdict, None))
                sender.ws.send(frame)
                return
            self.relay(sender, frame, parsed, cuts)

    @precondition(lambda self: self.alive())
    @rule(which=st.integers(0, 1), rounds=st.integers(1, 4))
    def burst(self, which: int, rounds: int) -> None:
        """Every peer of a room sends to "all" in turn, without waiting."""
        with self.step("burst"):
            for _ in range(rounds):
                for sender in self.members[self.room_names[which]]:
                    n = next(self.counter)
                    body = {"event": f"burst#{n}", "to": "all", "data": n}
                    self.relay(sender, json.dumps(body), body, [])

    @precondition(lambda self: self.alive())
    @rule(pick=PICK, frame=RAW_FRAMES)
    def send_raw(self, pick: int, frame: str | bytes) -> None:
        """A frame that is not a valid message: it gets its error, and nobody else hears of it."""
        expected: Expected
        sender = self.pick(pick)
        if isinstance(frame, bytes):
            expected = ("Invalid message", "binary frames are not supported")
        else:
            expected = classify(frame, sender.peer_id)
            assume(expected[0] != "valid")
        with self.step("send_raw"):
            sender.direct.append(expected)
            sender.ws.send(frame)

    @precondition(lambda self: self.alive())
    @rule(pick=PICK, what=st.sampled_from(["ping", "ice_servers"]))
    def ask(self, pick: int, what: str) -> None:
        """The requests the server answers itself: ``ping``, and fresh ICE servers."""
        with self.step("ask"):
            sender = self.pick(pick)
            if what == "ping":
                sender.direct.append(("pong", None))
                sender.ws.send("ping")
            else:
                body = {"event": "ice_servers", "to": [sender.peer_id]}
                self.relay(sender, json.dumps(body), body, [])

    @precondition(lambda self: any(p.pending or p.direct for p in self.alive()))
    @rule()
    def settle(self) -> None:
        with self.step("settle"):
            self.drain()

    @precondition(lambda self: self.alive())
    @rule(
        pick=PICK,
        how=st.sampled_from(["clean", *DEPARTURES]),
    )
    def depart(self, pick: int, how: str) -> None:
        with self.step("depart"):
            self.end(self.pick(pick), how)

    def teardown(self) -> None:
        rooms = self.server.rooms

        def clean() -> bool:
            gone = all(name not in rooms for name in self.room_names)
            return gone and self.factory_state() == (0, 0)

        if self.failed:
            # Only clean up, so that shrinking starts from a clean server.
            for peer in self.alive():
                abort(peer.ws)
            with suppress(AssertionError):
                wait_until(clean)
            return
        self.drain()
        for peer in self.alive():
            self.end(peer, "clean")
        try:
            wait_until(clean)
        except AssertionError:
            state = in_reactor(lambda: ([r.name for r in rooms], self.factory_state()))
            raise AssertionError(
                f"state left behind: rooms, (held, connections) = {state}"
            ) from None
        assert_no_errors(self.new_events())


def assert_no_errors(events: Sequence[LogEvent]) -> None:
    bad = [
        e
        for e in events
        if "log_failure" in e or e.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]
    if bad:
        lines = []
        for e in bad:
            lines.append(formatEvent(e) or repr(e))
            failure = e.get("log_failure")
            if failure is not None:
                lines.append(failure.getTraceback())
        raise AssertionError("the server logged errors:\n" + "\n".join(lines))


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    derandomize=False,
    database=None,
    print_blob=True,
    # Each example talks to a live server: slow by design, and large.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)


def bind(
    server: LiveServer, events: Sequence[LogEvent], patience: float = TIMEOUT
) -> type[ServerFuzz]:
    """The machine, for `server`, with its own statistics."""
    attributes = {"server": server, "events": events, "patience": patience, "stats": Counter()}
    return type("ServerFuzz", (ServerFuzz,), attributes)


@pytest_twisted.ensureDeferred
async def test_fuzz_live_server(make_server: MakeServer) -> None:
    server = await make_server(settings=SERVER_SETTINGS, max_peers=ROOM_CAP)
    chosen = int(os.environ.get("FUZZ_SEED") or random.getrandbits(64))
    with capturedLogs() as events:
        machine = bind(server, events)
        try:
            await deferToThread(
                run_state_machine_as_test, seed(chosen)(machine), settings=FUZZ_SETTINGS
            )
        except BaseException as e:
            print(f"fuzz failed; replay with FUZZ_SEED={chosen}")
            e.add_note(f"replay with: FUZZ_SEED={chosen} .venv/bin/pytest tests/test_fuzz.py")
            raise
        factory = server.service.resource.factory

        def clean() -> bool:
            return not len(server.rooms) and not len(factory.resumption)

        await deferToThread(wait_until, clean)
        assert factory.countConnections == 0
    assert_no_errors(events)
    stats = machine.stats
    print(f"fuzz (FUZZ_SEED={chosen}):", ", ".join(f"{k} {v}" for k, v in sorted(stats.items())))
    if EXAMPLES >= 100:
        # The run exercised what it is meant to (a fuzz that does nothing passes too).
        assert stats["delivered"] > 10 * EXAMPLES, stats
        wanted = ["refused room_is_full", "answered pong", "answered ice", "answered Invalid JSON"]
        wanted += ["answered Invalid message"] + [f"ended {how}" for how in DEPARTURES]
        assert all(stats[what] for what in wanted), stats


# The fuzz can fail: servers broken on purpose (through the public API only).


class MisroutingRoom(Room):
    """Turns messages to listed peers into messages to everybody."""

    def on_forward(self, message: Message) -> Message:
        if isinstance(message.to, tuple) and message.from_ is not None:
            return replace(message, to="all")
        return message


class ForgetfulRoom(Room):
    """Loses one message in 10."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._count = itertools.count()

    def on_forward(self, message: Message) -> Message | None:
        return None if next(self._count) % 10 == 9 else message


class ShufflingRoom(Room):
    """Swaps two consecutive messages to every other peer that joins."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._count = itertools.count()

    def join(self, handle: PeerHandle) -> None:
        if next(self._count) % 2:
            super().join(handle)
            return
        held: list[bytes] = []

        def send(payload: bytes) -> None:
            if not held and b"burst#" in payload:
                held.append(payload)
                return
            handle.send(payload)
            while held:
                handle.send(held.pop())

        super().join(replace(handle, send=send))


class FailingPeer(Peer):
    """Its on_terminate fails (so the server logs a failure)."""

    def on_terminate(self, context: PeerContext) -> None:
        raise RuntimeError("on_terminate failed on purpose")


MUTANTS: dict[str, tuple[dict[str, Any], str]] = {
    "misrouting": ({"room_class": MisroutingRoom}, "unexpected message|still waits"),
    "forgetful": ({"room_class": ForgetfulRoom}, "still waits|state left behind"),
    "shuffling": ({"room_class": ShufflingRoom}, "order|still waits"),
    "failing-callback": ({"peer_class": FailingPeer}, "the server logged errors"),
    # A throttled server drops messages ("Rate limited", "still waits"), and
    # now and then (about one run in ten) the fuzz meets it first as
    # connections that outlive their clients' close: either is a catch.
    # Why they linger under a rate of 5/s is not yet known (see
    # docs/operations.md, "Under attack").
    "throttled": (
        {"settings": replace(SERVER_SETTINGS, rate=5, rate_burst=5)},
        "Rate limited|still waits|state left behind",
    ),
}


def describe(error: BaseException) -> str:
    if isinstance(error, BaseExceptionGroup):
        return "\n".join(describe(e) for e in error.exceptions)
    assert isinstance(error, AssertionError), error
    return str(error)


@pytest.mark.parametrize("mutant", sorted(MUTANTS))
@pytest_twisted.ensureDeferred
async def test_the_fuzz_catches_a_broken_server(make_server: MakeServer, mutant: str) -> None:
    options, symptom = MUTANTS[mutant]
    server = await make_server(**{"settings": SERVER_SETTINGS, "max_peers": ROOM_CAP, **options})
    quick = settings(FUZZ_SETTINGS, max_examples=100, phases=[Phase.generate], print_blob=False)
    with capturedLogs() as events:
        machine = bind(server, events, patience=0.5)
        # AssertionError, or FlakyFailure (a group of them) when a replay fails differently.
        with pytest.raises(Exception) as failed:
            await deferToThread(run_state_machine_as_test, machine, settings=quick)
    assert re.search(symptom, describe(failed.value)), failed.value
