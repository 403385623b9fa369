"""
The peerjs front in cluster mode: two real ``twistd rtcsignal --redis
--peerjs`` nodes on a real ``redis-server``.  An id is unique across nodes,
messages are relayed across them (and wait across them for an id not yet
connected), and a killed node's ids become free.
"""

from __future__ import annotations

import time

import pytest

from .support.cluster import LEASE, Cluster
from .support.peerjs import PATH, Target

pytestmark = pytest.mark.process

ARGS = ("--peerjs", PATH, "--peerjs-expire-timeout", "3")


def _target(node: object) -> Target:
    return Target("rtcsignal", f"127.0.0.1:{node.port}")  # type: ignore[attr-defined]


def test_ids_relays_and_waiting_messages_span_the_nodes(cluster: Cluster) -> None:
    one, two = _target(cluster.node(*ARGS)), _target(cluster.node(*ARGS))
    alice, bob = one.join("alice"), two.join("bob")
    alice.send(type="OFFER", dst="bob", payload={"sdp": "o"})
    assert bob.recv() == {"type": "OFFER", "src": "alice", "dst": "bob", "payload": {"sdp": "o"}}
    bob.send(type="ANSWER", dst="alice", payload={"sdp": "a"})
    assert alice.recv() == {"type": "ANSWER", "src": "bob", "dst": "alice", "payload": {"sdp": "a"}}
    # alice's id is taken on the other node too.
    thief = two.open("alice", "other")
    assert thief.recv() == {"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}
    # A message for carol waits on node one; carol comes on node two.
    alice.send(type="OFFER", dst="carol", payload=1)
    time.sleep(0.3)
    carol = two.open("carol")
    assert carol.recv() == {"type": "OPEN"}
    assert carol.recv() == {"type": "OFFER", "src": "alice", "dst": "carol", "payload": 1}


def test_a_killed_nodes_ids_become_free(cluster: Cluster) -> None:
    first = cluster.node(*ARGS)
    one, two = _target(first), _target(cluster.node(*ARGS))
    one.join("alice")
    bob = two.join("bob")
    first.kill()
    deadline = time.monotonic() + 6 * LEASE
    while True:
        again = two.open("alice", "new-token")
        answer = again.recv()
        if answer == {"type": "OPEN"}:
            break
        assert answer["type"] == "ID-TAKEN"
        assert time.monotonic() < deadline, "alice's id was not freed"
        time.sleep(0.5)
    bob.send(type="OFFER", dst="alice", payload=2)
    assert again.recv() == {"type": "OFFER", "src": "bob", "dst": "alice", "payload": 2}
