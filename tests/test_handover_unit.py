"""
The hand-over's choice of a node, without any I/O: rendezvous hashing.
"""

from __future__ import annotations

import pytest

from twisted_signal.handover import rendezvous

pytestmark = pytest.mark.pure

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
