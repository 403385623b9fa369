"""
The hand-over without processes: the choice of a node (rendezvous hashing)
and what a node reads from its hand-over socket.
"""

from __future__ import annotations

import os
import struct
from typing import Any

import pytest
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_signal.events import Events
from twisted_signal.handover import MAX_REQUEST_BYTES, Handover, rendezvous

pytestmark = pytest.mark.memory

ROOMS = [f"room-{i}" for i in range(2000)]


def test_every_node_makes_the_same_choice_whatever_the_order() -> None:
    names = ["a1", "b2", "c3"]
    for room in ROOMS[:100]:
        assert rendezvous(room, names) == rendezvous(room, list(reversed(names)))


def test_rooms_spread_evenly() -> None:
    names = ["a1", "b2", "c3", "d4"]
    counts = {name: 0 for name in names}
    for room in ROOMS:
        counts[rendezvous(room, names)] += 1
    assert min(counts.values()) > len(ROOMS) / len(names) * 0.8


def test_a_node_that_goes_moves_only_its_own_rooms() -> None:
    before = {room: rendezvous(room, ["a1", "b2", "c3"]) for room in ROOMS}
    after = {room: rendezvous(room, ["a1", "c3"]) for room in ROOMS}
    for room in ROOMS:
        if before[room] != "b2":
            assert after[room] == before[room]
    assert sum(1 for room in ROOMS if before[room] == "b2") > 0


# What a node reads from its hand-over socket, on an in-memory transport.


class Outcomes(Events):
    def __init__(self) -> None:
        self.seen: list[str] = []

    def handover(self, outcome: str) -> None:
        self.seen.append(outcome)


class Recording(Handover):
    """A node that takes (records and closes) what it is handed."""

    def __init__(self, *, accept: bool = True) -> None:
        super().__init__("/nonexistent", reactor=Clock(), name="me")
        self.adopted: list[bytes] = []
        self.outcomes = Outcomes()
        self.events = self.outcomes
        self._accept = accept

    def adopt(self, fd: int, data: bytes) -> bool:
        os.close(fd)
        self.adopted.append(data)
        return self._accept


def inbox(handover: Handover) -> tuple[Any, StringTransport]:
    protocol: Any = handover.inbox_factory().buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def frame(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_frames_in_pieces_each_take_their_descriptor_in_order() -> None:
    handover = Recording()
    protocol, transport = inbox(handover)
    stream = frame(b"first") + frame(b"") + frame(b"x" * 1000)
    pipes = [os.pipe() for _ in range(3)]
    starts = [0, len(frame(b"first")), len(frame(b"first")) + 4]
    try:
        for i, byte in enumerate(stream):
            for n, start in enumerate(starts):
                if i == start:
                    protocol.fileDescriptorReceived(os.dup(pipes[n][0]))
            protocol.dataReceived(bytes([byte]))
        assert handover.adopted == [b"first", b"", b"x" * 1000]
        assert transport.value() == b"\x01\x01\x01"
        assert transport.connected
    finally:
        for reader, writer in pipes:
            os.close(reader)
            os.close(writer)


@pytest.mark.parametrize(
    ("data", "descriptors", "accept"),
    [
        (frame(b"GET /"), 0, True),  # a request without its connection
        (struct.pack(">I", MAX_REQUEST_BYTES + 1), 1, True),  # too long
        (b"", 17, True),  # too many descriptors ahead of their requests
        (frame(b"GET /"), 1, False),  # not a TCP connection
    ],
)
def test_garbage_closes_the_connection_and_its_descriptors(
    data: bytes, descriptors: int, accept: bool
) -> None:
    handover = Recording(accept=accept)
    protocol, transport = inbox(handover)
    reader, writer = os.pipe()
    try:
        fds = [os.dup(reader) for _ in range(descriptors)]
        for fd in fds:
            protocol.fileDescriptorReceived(fd)
        protocol.dataReceived(data)
        assert transport.disconnecting
        assert handover.outcomes.seen == ["refused"]
        assert transport.value() == b""
        protocol.connectionLost(Failure(ConnectionDone()))
        assert not any(is_open(fd) for fd in fds)
        # Nothing more is taken on that connection.
        late = os.dup(reader)
        protocol.fileDescriptorReceived(late)
        protocol.dataReceived(frame(b"GET /"))
        assert not is_open(late)
        assert handover.adopted == ([b"GET /"] if not accept else [])
    finally:
        os.close(reader)
        os.close(writer)


def test_descriptors_whose_requests_never_came_are_closed_with_the_connection() -> None:
    handover = Recording()
    protocol, _ = inbox(handover)
    reader, writer = os.pipe()
    try:
        fd = os.dup(reader)
        protocol.fileDescriptorReceived(fd)
        protocol.dataReceived(frame(b"GET /")[:5])
        protocol.connectionLost(Failure(ConnectionDone()))
        assert not is_open(fd)
        assert handover.adopted == []
    finally:
        os.close(reader)
        os.close(writer)
