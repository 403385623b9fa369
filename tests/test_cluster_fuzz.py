"""
A stateful fuzz over a two-node cluster (real Redis, real ``twistd``
processes): peers join on either node, send unicast, broadcast and messages
to unknown peers, send unusual frames (lone surrogates, every JSON escape,
the largest message, the deepest nesting) and frames a server refuses (bad
JSON, binary, too deep), lose their connection and resume on either node,
and leave; each example starts with the node that does not own the room
sending all the unusual and refused frames.  Between steps a node is killed
and started again, or Redis is restarted.  After every step each client must
have received exactly what the contract says (docs/cluster.md for what a
failure may take away), and nothing else.

``FUZZ_EXAMPLES`` sets the number of examples (2 by default, to keep it
within the suite's time budget); ``FUZZ_REDIS_RESTARTS=0`` leaves out the
Redis restarts between steps.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    precondition,
    rule,
    run_state_machine_as_test,
)

from .support import Client, abort, error, join, joined, left, relayed
from .support.cluster import LEASE, Cluster
from .support.twistd import Twistd

pytestmark = pytest.mark.process

MAX_PEERS = 5
NODE_ARGS = ("--max-peers", str(MAX_PEERS), "--resume-window", "60")
REDIS_RESTARTS = os.environ.get("FUZZ_REDIS_RESTARTS") != "0"
WAIT = LEASE * 6


# Unusual but valid frames (SPEC 5.7: whatever one server accepts, a cluster
# relays the same way): the event, the JSON text of the data, and the data
# its addressees must get.
MAX_MESSAGE = 65536
ESCAPES = r'"\" \\ \/ \b \f \n \r \t \u0000 \u001f \u2028 \ud800 \udfff \ud83d\ude00"'
UNUSUAL: list[tuple[str, str, Any]] = [
    ("sur", r'"\ud800"', "\ud800"),
    ("esc", ESCAPES, json.loads(ESCAPES)),
    ("deep", "[" * 64 + "1" + "]" * 64, json.loads("[" * 64 + "1" + "]" * 64)),
    ("\\ud800\\u0000", "null", None),
    ("big", "", None),  # a string that makes the frame exactly MAX_MESSAGE bytes
]
# Frames one server refuses: the sender gets this error, nobody else anything.
INVALID: list[tuple[str | bytes, str, str]] = [
    ('{"event":"x","to":"all","data":', "Invalid JSON", '{"event":"x","to":"all","data":'),
    ('{"event":"x","to":"all","data":"\\ud800}', "Invalid JSON", ""),
    (b'{"event":"x","to":"all"}', "Invalid message", "binary frames are not supported"),
    (
        '{"event":"x","to":"all","data":' + "[" * 65 + "]" * 65 + "}",
        "Invalid message",
        "'data' is nested deeper than 64",
    ),
    ('{"event":"","to":"all"}', "Invalid message", "'event' must be 1 to 64 characters"),
]


def unusual_frame(index: int, to: Any) -> tuple[str, str, Any]:
    """The frame, its event and its data as the addressees get them."""
    event, data_text, data = UNUSUAL[index]
    head = '{"event":"' + event + '","to":' + json.dumps(to) + ',"data":'
    if event == "big":
        size = MAX_MESSAGE - len((head + '""}').encode())
        data = "é" * (size // 2) + "x" * (size % 2)
        data_text = '"' + data + '"'
    frame = head + data_text + "}"
    assert event != "big" or len(frame.encode()) == MAX_MESSAGE
    return frame, json.loads('"' + event + '"'), data


class Peer:
    def __init__(self, client: Client, node: int) -> None:
        self.client = client
        self.node = node

    @property
    def peer_id(self) -> str:
        return self.client.peer_id


def drain_until(client: Client, wanted: dict[str, Any], ignore: str) -> None:
    """Read until `wanted`; only messages of the event `ignore` may come first."""
    deadline = time.monotonic() + WAIT
    while True:
        message = client.recv(timeout=max(deadline - time.monotonic(), 0.1))
        if message == wanted:
            return
        assert message["event"] == ignore, (message, wanted)


class ClusterFuzz(RuleBasedStateMachine):
    cluster: Cluster
    nodes: list[Twistd]
    counter = iter(range(10**6))

    def __init__(self) -> None:
        super().__init__()
        self.room = f"fz{next(self.counter)}"
        self.peers: list[Peer] = []

    def others(self, peer: Peer) -> list[Peer]:
        return [p for p in self.peers if p is not peer]

    @precondition(lambda self: len(self.peers) < MAX_PEERS)
    @rule(node=st.integers(0, 1))
    def join(self, node: int) -> None:
        client = join(self.nodes[node].socket_url(self.room))
        assert set(client.authenticated["data"]["peers"]) == {p.peer_id for p in self.peers}
        for p in self.peers:
            assert p.client.recv(timeout=WAIT) == joined(client.peer_id)
        self.peers.append(Peer(client, node))

    @precondition(lambda self: len(self.peers) >= 1)
    @rule(data=st.data())
    def send(self, data: st.DataObject) -> None:
        sender = data.draw(st.sampled_from(self.peers))
        kind = data.draw(st.sampled_from(["all", "one", "ghost"]))
        payload = data.draw(st.integers(0, 1000))
        if kind == "all":
            sender.client.send("m", "all", payload)
            for p in self.others(sender):
                assert p.client.recv(timeout=WAIT) == relayed("m", payload, sender.client, "all")
        elif kind == "one":
            target = data.draw(st.sampled_from(self.peers))
            sender.client.send("m", [target.peer_id], payload)
            got = target.client.recv(timeout=WAIT)
            assert got == relayed("m", payload, sender.client, [target.peer_id])
        else:
            ghost = str(uuid.uuid4())
            sender.client.send("m", [ghost], payload)
            assert sender.client.recv(timeout=WAIT) == error(
                sender.peer_id, "No such peer", [ghost]
            )

    @initialize()
    def hostile_start(self) -> None:
        """
        Each example starts with a peer on each node; the one on node 1,
        which does not own the room, sends every unusual frame to the room
        and every invalid one, then the owner's peer sends the unusual
        frames to it alone.
        """
        self.join(0)
        self.join(1)
        owners, other = self.peers
        self.unusual(other, None)
        self.invalid(other)
        self.unusual(owners, other)

    @precondition(lambda self: len(self.peers) >= 1)
    @rule(data=st.data())
    def send_unusual(self, data: st.DataObject) -> None:
        self.unusual(
            data.draw(st.sampled_from(self.peers)), data.draw(st.sampled_from([None, *self.peers]))
        )

    @precondition(lambda self: len(self.peers) >= 1)
    @rule(data=st.data())
    def send_invalid(self, data: st.DataObject) -> None:
        self.invalid(data.draw(st.sampled_from(self.peers)))

    def unusual(self, sender: Peer, addressee: Peer | None) -> None:
        """Every unusual but valid frame, in order, to all (None) or to one peer."""
        to = "all" if addressee is None else [addressee.peer_id]
        frames = [unusual_frame(i, to) for i in range(len(UNUSUAL))]
        for text, _, _ in frames:
            sender.client.send_raw(text)
        for p in self.others(sender) if addressee is None else [addressee]:
            for _, event, expected in frames:
                assert p.client.recv(timeout=WAIT) == relayed(event, expected, sender.client, to)

    def invalid(self, sender: Peer) -> None:
        """Every frame a server refuses: an error each to the sender, nothing to anyone else."""
        for frame, _, _ in INVALID:
            sender.client.send_raw(frame)
        for frame, description, details in INVALID:
            got = sender.client.recv(timeout=WAIT)
            assert got == error(sender.peer_id, description, details or str(frame))

    @precondition(lambda self: len(self.peers) >= 1)
    @rule(data=st.data())
    def leave(self, data: st.DataObject) -> None:
        peer = data.draw(st.sampled_from(self.peers))
        peer.client.close()
        self.peers.remove(peer)
        for p in self.peers:
            assert p.client.recv(timeout=WAIT) == left(peer.peer_id)

    @precondition(lambda self: len(self.peers) >= 1)
    @rule(data=st.data(), node=st.integers(0, 1))
    def resume(self, data: st.DataObject, node: int) -> None:
        """Lose a connection; the others write to it; it resumes on `node`."""
        peer = data.draw(st.sampled_from(self.peers))
        token = peer.client.authenticated["data"]["resume_token"]
        held = f"peer {peer.peer_id} held for"
        before = self.nodes[peer.node].stdout.count(held)
        abort(peer.client.ws)
        deadline = time.monotonic() + WAIT
        while self.nodes[peer.node].stdout.count(held) == before:
            assert time.monotonic() < deadline, "the lost peer was not held"
            time.sleep(0.05)
        others = self.others(peer)
        for n, p in enumerate(others):
            p.client.send("q", [peer.peer_id], n)
        client = join(self.nodes[node].socket_url(self.room, f"resume={token}"))
        assert client.peer_id == peer.peer_id
        assert set(client.authenticated["data"]["peers"]) == {p.peer_id for p in others}
        # Senders on two nodes: the owner decides their order.
        got = {json.dumps(client.recv(timeout=WAIT), sort_keys=True) for _ in others}
        sent = [relayed("q", n, p.client, [peer.peer_id]) for n, p in enumerate(others)]
        assert got == {json.dumps(m, sort_keys=True) for m in sent}
        peer.client, peer.node = client, node

    @rule(node=st.integers(0, 1))
    def restart_node(self, node: int) -> None:
        self.nodes[node].kill()
        self.nodes[node] = self.cluster.node(*NODE_ARGS)
        gone = [p for p in self.peers if p.node == node]
        self.peers = [p for p in self.peers if p.node != node]
        for p in self.peers:
            got = {json.dumps(p.client.recv(timeout=WAIT), sort_keys=True) for _ in gone}
            assert got == {json.dumps(left(g.peer_id), sort_keys=True) for g in gone}
        for g in gone:
            g.client.close()

    @precondition(lambda self: REDIS_RESTARTS)
    @rule()
    def restart_redis(self) -> None:
        self.cluster.redis.stop()
        self.cluster.redis.start()
        # What was in flight may be lost; the room must come back by itself.
        if len(self.peers) >= 2:
            a, b = self.peers[0], self.peers[1]
            deadline = time.monotonic() + WAIT
            while True:
                a.client.send("probe", [b.peer_id], "p")
                try:
                    drain_until(b.client, relayed("probe", "p", a.client, [b.peer_id]), "probe")
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, "the room did not come back"
            time.sleep(0.3)
            while not b.client.nothing_within(0.2):
                pass
        else:
            time.sleep(LEASE)

    def teardown(self) -> None:
        # Every peer is checked before any is closed: closing one sends the
        # others its (due) `left`, which is not "more".
        try:
            for p in self.peers:
                with contextlib.suppress(TimeoutError):
                    extra = p.client.recv(timeout=0.1)
                    pytest.fail(f"{p.peer_id} on node {p.node} got more: {extra}")
        finally:
            for p in self.peers:
                p.client.close()


@pytest.fixture
def fuzz_nodes(cluster: Cluster) -> Iterator[Cluster]:
    yield cluster


def test_fuzz_a_two_node_cluster(fuzz_nodes: Cluster, tmp_path: Path) -> None:
    ClusterFuzz.cluster = fuzz_nodes
    ClusterFuzz.nodes = [fuzz_nodes.node(*NODE_ARGS) for _ in range(2)]
    run_state_machine_as_test(
        ClusterFuzz,
        settings=settings(
            max_examples=int(os.environ.get("FUZZ_EXAMPLES", "2")),
            stateful_step_count=10,
            deadline=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
            print_blob=True,
        ),
    )
