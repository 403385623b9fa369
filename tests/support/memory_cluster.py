"""
Cluster nodes in this process on one `task.Clock`, sharing one in-memory
store (`twisted_signal.cluster.memory`), with peers that record what they
get: failover in milliseconds, without a redis-server.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.task import Clock

from twisted_signal.cluster.memory import MemoryLink, MemoryRedis
from twisted_signal.cluster.node import ClusterRooms
from twisted_signal.cluster.relay import RoomRelay
from twisted_signal.context import AuthData
from twisted_signal.message import Message
from twisted_signal.room import PeerHandle, Room

LEASE = 3.0
STEP = 0.05


class Peer:
    """A connection on one node: what it was sent, and how it ended."""

    def __init__(self, peer_id: str, relay: RoomRelay) -> None:
        self.peer_id = peer_id
        self.relay = relay
        self.got: list[dict[str, Any]] = []
        self.admitted: list[str] | None = None
        self.closed: int | None = None
        self.handle = PeerHandle(peer_id, AuthData(peer_id), self._send, self._close, self._in)

    def _send(self, payload: bytes) -> None:
        self.got.append(json.loads(payload))

    def _in(self, peer_ids: list[str]) -> None:
        self.admitted = peer_ids

    def _close(self, code: int) -> None:
        if self.closed is None:
            self.closed = code
            self.relay.leave(self.peer_id)  # as the connection does once it ends

    def send(self, n: int, *to: str) -> None:
        self.relay.submit(Message("n", n, self.peer_id, list(to)))

    def numbers(self, sender: str | None = None) -> list[int]:
        return [
            m["data"]
            for m in self.got
            if m["event"] == "n" and (sender is None or m.get("from") == sender)
        ]

    def events(self, event: str) -> list[Any]:
        return [m["data"] for m in self.got if m["event"] == event]

    def left(self) -> list[str]:
        return [data["peer_id"] for data in self.events("left")]


class Cluster:
    """Nodes by name on one clock and one `MemoryRedis`."""

    def __init__(self, lease: float = LEASE) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.lease = lease
        self.store = MemoryRedis(self.clock)
        self.nodes: dict[str, ClusterRooms] = {}
        self.links: dict[str, MemoryLink] = {}
        self.started: dict[str, float] = {}
        """When each node started: it ticks every lease/3 from then."""
        self.owners_seen: list[set[str]] = []
        """At every step, the nodes that acted as owner of room ``r``."""

    def start(self, name: str, *rooms: str) -> ClusterRooms:
        link = self.store.connect(timeout=max(self.lease / 3, 0.5))
        node = ClusterRooms(
            lambda room: Room(room, clock=self.clock),
            bus=link.bus,
            leases=link.leases,
            lease=self.lease,
            max_peers=None,
            reactor=self.clock,
            node_id=name,
        )
        for room in rooms:
            node.start_room(room)
        self.nodes[name], self.links[name] = node, link
        self.started[name] = self.clock.seconds()
        node.startService()
        self.wait(STEP)
        return node

    def join(self, node: str, peer_id: str, room: str = "r") -> Peer:
        relay = self.nodes[node].node.access(room)
        assert relay is not None
        peer = Peer(peer_id, relay)
        relay.join(peer.handle)
        return peer

    def owners(self, room: str = "r") -> set[str]:
        """The nodes that act as the room's owner now (their lease holds)."""
        owners = set()
        for name, node in self.nodes.items():
            relay = node.node.find(room)
            if relay is not None and relay.lease_valid():
                owners.add(name)
        return owners

    def wait(self, seconds: float) -> None:
        """Let `seconds` pass, a step at a time, as a reactor would."""
        for _ in range(round(seconds / STEP)):
            self.clock.advance(STEP)
            self.owners_seen.append(self.owners())

    def until(self, condition: Any, limit: float) -> float:
        """Wait until `condition()` holds; how long it took (fails past `limit`)."""
        start = self.clock.seconds()
        while not condition():
            assert self.clock.seconds() - start <= limit, "not within the limit"
            self.wait(STEP)
        return self.clock.seconds() - start

    def before_tick(self, name: str) -> None:
        """Wait until a step before node `name`'s next tick (its renewals)."""
        tick = self.lease / 3
        since = (self.clock.seconds() - self.started[name]) % tick
        self.wait(round((tick - since) / STEP) * STEP - STEP)

    def stop(self, name: str) -> None:
        """Shut a node down gracefully (SIGTERM), until it has stopped."""
        node = self.nodes.pop(name)
        done = node.stopService()
        stopped: list[object] = []
        done.addBoth(stopped.append)
        self.until(lambda: bool(stopped), self.lease * 2)

    def stop_all(self) -> None:
        self.store.start()
        for link in self.links.values():
            link.mend()
            link.resume()
        for name in list(self.nodes):
            self.stop(name)
