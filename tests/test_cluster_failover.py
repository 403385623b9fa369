"""
Failover between cluster nodes on a `task.Clock`, the nodes sharing one
in-memory store (`twisted_signal.cluster.memory`) instead of a redis-server
(docs/cluster.md, "Failures"): an owner that dies, a store that cannot be
reached for a while, a renewal that comes late, a node that restarts.  At
every step of every test at most one node acts as the room's owner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal.cluster.backend import key
from twisted_signal.cluster.resp import RedisUnavailable
from twisted_signal.events import Events
from twisted_signal.room import CLOSE_GOING_AWAY

from .support.memory_cluster import LEASE, STEP, Cluster

pytestmark = pytest.mark.memory


class Counted(Events):
    """The errors a node counted."""

    def __init__(self) -> None:
        self.errors: list[str] = []

    def error_sent(self, description: str) -> None:
        self.errors.append(description)


#: How long a room may go without an owner when its owner dies: its lease,
#: and a tick (lease/3) until a node with members finds it gone.
TAKEOVER = LEASE + LEASE / 3 + 0.1


def _nothing() -> None:
    pass


class ThreeNodes:
    """Room ``r`` owned by node a (peer x), with y on node b and z on node c."""

    def __init__(self) -> None:
        self.cluster = c = Cluster()
        for name in ("a", "b", "c"):
            c.start(name)
        self.x = c.join("a", "x")
        c.wait(0.1)
        self.y = c.join("b", "y")
        c.wait(0.1)
        self.z = c.join("c", "z")
        c.wait(0.2)
        assert c.owners() == {"a"}
        assert (self.y.admitted, self.z.admitted) == (["x"], ["x", "y"])

    def two_owners(self) -> list[set[str]]:
        """The steps at which two nodes acted as the room's owner."""
        return [o for o in self.cluster.owners_seen if len(o) > 1]

    def flow(self, seconds: float, start: int = 0) -> int:
        """y sends 0, 1, ... to z every step for `seconds`; the next number."""
        n = start
        for _ in range(round(seconds / 0.05)):
            self.y.send(n, "z")
            n += 1
            self.cluster.wait(0.05)
        return n

    def epoch(self, node: str) -> int:
        relay = self.cluster.nodes[node].node.find("r")
        assert relay is not None
        return relay.epoch

    def refused(self, seconds: float, start: int, each: Callable[[], None] = _nothing) -> int:
        """
        The store refuses connections for `seconds` while y sends to z; at
        every step, a node acts as the room's owner only while the store
        still has it as the owner, and a node whose key lapsed has closed
        its peers (the others let them leave).
        """
        c = self.cluster
        owner_key = key("room", "r", "owner")
        peers = {"a": self.x, "b": self.y, "c": self.z}
        c.store.stop()
        n = start
        for _ in range(round(seconds / STEP)):
            self.y.send(n, "z")
            n += 1
            c.wait(STEP)
            held = c.store.get(owner_key)
            for owner in c.owners():
                assert held is not None and held.startswith(f"{owner}|"), (owner, held)
            for name, peer in peers.items():
                if c.store.get(key("node", name)) is None:
                    assert peer.closed == CLOSE_GOING_AWAY, name
            each()
        c.store.start()
        return n


@pytest.fixture
def three() -> Iterator[ThreeNodes]:
    nodes = ThreeNodes()
    yield nodes
    nodes.cluster.stop_all()
    assert nodes.two_owners() == []


class _ThreeNodes(SynchronousTestCase):
    """Room ``r`` owned by node a (peer x), with y on node b and z on node c."""

    def setUp(self) -> None:
        self.three = three = ThreeNodes()
        self.cluster, self.x, self.y, self.z = three.cluster, three.x, three.y, three.z
        self.addCleanup(self._no_two_owners)
        self.addCleanup(self.cluster.stop_all)

    def _no_two_owners(self) -> None:
        self.assertEqual(self.three.two_owners(), [])

    def flow(self, seconds: float, start: int = 0) -> int:
        return self.three.flow(seconds, start)

    def epoch(self, node: str) -> int:
        return self.three.epoch(node)


class OwnerDiesTests(_ThreeNodes):
    def test_another_node_takes_over_within_the_lease_and_peers_keep_their_ids(self) -> None:
        c = self.cluster
        self.x.send(1, "y", "z")
        c.wait(0.1)
        self.assertEqual((self.y.numbers("x"), self.z.numbers("x")), ([1], [1]))
        old = self.epoch("a")
        c.links["a"].cut()  # killed: it writes and renews nothing more
        took = c.until(lambda: bool(c.owners() - {"a"}), TAKEOVER)
        self.assertLessEqual(took, TAKEOVER)
        (owner,) = c.owners()
        self.assertIn(owner, {"b", "c"})
        self.assertGreater(self.epoch(owner), old)
        # The survivors keep their ids and their room; the dead node's
        # peer leaves, once, as on one server.
        c.until(lambda: self.y.left() == ["x"] and self.z.left() == ["x"], LEASE)
        relay = c.nodes[owner].node.find("r")
        assert relay is not None
        self.assertEqual(set(relay.peers), {"y", "z"})
        n = self.flow(1.0)
        c.wait(0.2)
        self.assertEqual(self.z.numbers("y"), list(range(n)))
        self.z.send(7, "y")
        c.wait(0.2)
        self.assertEqual(self.y.numbers("z"), [7])
        self.assertEqual((self.y.closed, self.z.closed), (None, None))
        self.assertEqual(self.y.events("joined") + self.z.events("joined"), [{"peer_id": "z"}])

    def test_a_relay_that_dies_has_its_peers_leave(self) -> None:
        c = self.cluster
        c.links["c"].cut()
        c.until(lambda: self.x.left() == ["z"] and self.y.left() == ["z"], TAKEOVER)
        self.assertEqual(c.owners(), {"a"})
        self.assertEqual(self.x.closed, None)


class StoreUnreachableTests(_ThreeNodes):
    def test_a_short_outage_closes_nobody_and_loses_nothing(self) -> None:
        c = self.cluster
        n = self.flow(0.5)
        # Frozen (commands wait in line) for almost half a lease, then
        # refusing connections for almost a third of one.
        c.store.pause()
        n = self.flow(LEASE * 0.45, n)
        c.store.resume()
        n = self.flow(LEASE / 3, n)
        c.store.stop()
        n = self.flow(LEASE * 0.3, n)
        c.store.start()
        n = self.flow(LEASE, n)
        c.wait(0.5)
        self.assertEqual(self.z.numbers("y"), list(range(n)))
        self.assertEqual([p.closed for p in (self.x, self.y, self.z)], [None] * 3)
        self.assertEqual(c.owners(), {"a"})
        self.assertEqual([node.unavailable for node in c.nodes.values()], [None] * 3)

    def test_a_long_outage_closes_the_peers_and_the_cluster_serves_again(self) -> None:
        c = self.cluster
        c.store.stop()
        c.wait(LEASE * 1.5)
        self.assertEqual([p.closed for p in (self.x, self.y, self.z)], [CLOSE_GOING_AWAY] * 3)
        self.assertEqual([node.unavailable for node in c.nodes.values()], ["redis_unreachable"] * 3)
        self.assertEqual(c.owners(), set())
        c.store.start()
        c.until(lambda: all(node.unavailable is None for node in c.nodes.values()), LEASE / 2)
        # New connections work by themselves.
        v, w = c.join("b", "v"), c.join("c", "w")
        c.until(lambda: v.admitted is not None and w.admitted is not None, LEASE)
        v.send(5, "w")
        c.until(lambda: w.numbers("v") == [5], LEASE)

    def test_a_store_restart_that_loses_every_key_delivers_nothing_twice(self) -> None:
        c = self.cluster
        n = self.flow(0.5)
        c.store.restart()
        n = self.flow(LEASE * 2, n)
        c.wait(0.5)
        self.assertEqual(self.z.numbers("y"), list(range(n)))
        self.assertEqual([p.closed for p in (self.x, self.y, self.z)], [None] * 3)
        self.assertEqual(c.owners(), {"a"})


#: Where between two of node a's ticks an outage begins: ten points.
PHASES = [k * LEASE / 30 for k in range(10)]


@pytest.mark.parametrize("phase", PHASES)
def test_refused_for_just_under_half_a_lease_closes_nobody_and_loses_nothing(
    three: ThreeNodes, phase: float
) -> None:
    # A heartbeat that the store refuses at once does not count; the next
    # one that gets through must, whatever the phase, so that an outage
    # spanning two ticks does not look like a whole lease of silence.
    c = three.cluster
    n = three.flow(0.5)
    c.before_tick("a")
    c.wait(phase)
    n = three.refused(LEASE / 2 - STEP, n)
    n = three.flow(LEASE, n)
    c.wait(0.5)
    assert three.z.numbers("y") == list(range(n))
    assert [p.closed for p in (three.x, three.y, three.z)] == [None] * 3
    assert c.owners() == {"a"}
    assert [node.unavailable for node in c.nodes.values()] == [None] * 3


@pytest.mark.parametrize("phase", PHASES)
def test_refused_for_just_over_a_lease_closes_every_peer_before_its_node_lapses(
    three: ThreeNodes, phase: float
) -> None:
    c = three.cluster
    three.flow(0.5)
    c.before_tick("a")
    c.wait(phase)
    began = c.clock.seconds()
    closed_by: dict[str, float] = {}
    peers = {"x": three.x, "y": three.y, "z": three.z}

    def note() -> None:
        for name, peer in peers.items():
            if peer.closed is not None:
                closed_by.setdefault(name, c.clock.seconds() - began)

    three.refused(LEASE + 2 * STEP, 0, note)
    assert [p.closed for p in peers.values()] == [CLOSE_GOING_AWAY] * 3
    # 0.9 of a lease after the last heartbeat that counted (at most the
    # outage's start), at the next heartbeat sent again (every lease/30):
    # before the node's key can lapse.
    assert max(closed_by.values()) < LEASE * 0.95, closed_by
    assert c.owners() == set()
    # New connections work by themselves once the store answers.
    c.until(lambda: all(node.unavailable is None for node in c.nodes.values()), LEASE / 2)
    v, w = c.join("b", "v"), c.join("c", "w")
    c.until(lambda: v.admitted is not None and w.admitted is not None, LEASE)
    v.send(5, "w")
    c.until(lambda: w.numbers("v") == [5], LEASE)


def test_a_room_not_taken_again_after_a_restart_is_taken_at_the_next_heartbeat(
    three: ThreeNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis restarts (its keys lost) and refuses the owner's taking the
    # room again right after the owner has registered: the owner must try
    # to take it again, not renew a key that the new Redis never had.
    c = three.cluster
    n = three.flow(0.5)
    leases = c.nodes["a"].node.leases
    acquire = leases.acquire
    refused: list[str] = []

    def refused_once(room: str, *args: Any) -> Deferred[tuple[int, str]]:
        if not refused:
            refused.append(room)
            return fail(RedisUnavailable("Connection lost"))
        return acquire(room, *args)

    c.before_tick("a")
    c.store.restart()
    monkeypatch.setattr(leases, "acquire", refused_once)
    n = three.flow(LEASE * 2, n)
    c.wait(0.5)
    assert refused == ["r"]
    assert three.z.numbers("y") == list(range(n))
    assert [p.closed for p in (three.x, three.y, three.z)] == [None] * 3
    assert c.owners() == {"a"}


class LateRenewalTests(_ThreeNodes):
    def test_a_late_renewal_within_the_lease_holds_deliveries_then_sends_them(self) -> None:
        c = self.cluster
        w = c.join("a", "w")
        c.wait(0.2)
        c.before_tick("a")
        # a's renewals wait in line for 0.57 of a lease, from when its last
        # one is oldest: past the safe share (0.8), within the lease.
        c.links["a"].pause()
        for n in range(34):
            self.x.send(n, "w")  # from a peer on a to another one there
            c.wait(0.05)
        held = len(w.numbers("x"))
        self.assertLess(held, 34)  # the lease passed its safe share: held
        self.assertGreater(held, 20)
        c.links["a"].resume()
        c.wait(0.1)
        self.assertEqual(w.numbers("x"), list(range(34)))
        self.assertEqual(c.owners(), {"a"})
        self.assertEqual([p.closed for p in (self.x, self.y, self.z, w)], [None] * 4)

    def test_a_renewal_later_than_the_lease_loses_the_room_and_what_was_held(self) -> None:
        c = self.cluster
        w = c.join("a", "w")
        c.wait(0.2)
        c.before_tick("a")
        old = self.epoch("a")
        c.links["a"].pause()
        for n in range(20):
            self.x.send(n, "w")
            c.wait(0.05)
        # Another node with members took the room (a's key lapsed).
        c.until(lambda: bool(c.owners() - {"a"}), TAKEOVER)
        (owner,) = c.owners()
        self.assertGreater(self.epoch(owner), old)
        delivered = w.numbers("x")
        c.links["a"].resume()
        c.wait(LEASE)
        # a stepped down: what it held is dropped, its peers reconnect.
        self.assertEqual(w.numbers("x"), delivered)
        self.assertEqual((self.x.closed, w.closed), (CLOSE_GOING_AWAY, CLOSE_GOING_AWAY))
        self.assertNotIn("a", c.owners())
        # The others go on in the new owner's room.
        n = self.flow(0.5)
        c.wait(0.2)
        self.assertEqual(self.z.numbers("y"), list(range(n)))


class RestartTests(_ThreeNodes):
    def test_an_owner_shut_down_hands_its_room_over_and_loses_nothing(self) -> None:
        c = self.cluster
        n = self.flow(0.3)
        counted = Counted()
        c.nodes["a"].events = counted
        c.nodes["a"].stopService()  # SIGTERM; the test goes on meanwhile
        n = self.flow(LEASE / 3 + 0.5, n)
        # One shutdown path: the notice, and its count, as on one server.
        self.assertEqual(
            self.x.events("error"), [{"description": "Room closed", "details": "shutdown"}]
        )
        self.assertEqual(counted.errors, ["Room closed"])
        self.assertEqual(self.x.closed, CLOSE_GOING_AWAY)
        del c.nodes["a"]
        (owner,) = c.owners()
        self.assertIn(owner, {"b", "c"})
        c.wait(0.3)
        self.assertEqual(self.z.numbers("y"), list(range(n)))
        self.assertEqual((self.y.left(), self.z.left()), (["x"], ["x"]))
        # The node starts again (a new id, as a process does) and serves.
        c.start("a2")
        x2 = c.join("a2", "x2")
        c.until(lambda: x2.admitted is not None, LEASE)
        self.assertEqual(sorted(x2.admitted or []), ["y", "z"])
        x2.send(3, "y", "z")
        c.wait(0.2)
        self.assertEqual((self.y.numbers("x2"), self.z.numbers("x2")), ([3], [3]))

    def test_a_relay_restarted_comes_back_as_a_new_node(self) -> None:
        c = self.cluster
        counted = Counted()
        c.nodes["c"].events = counted
        c.stop("c")
        c.until(lambda: self.y.left() == ["z"], LEASE)
        self.assertEqual(self.z.closed, CLOSE_GOING_AWAY)
        self.assertEqual(
            self.z.events("error"), [{"description": "Room closed", "details": "shutdown"}]
        )
        self.assertEqual(counted.errors, ["Room closed"])
        c.start("c2")
        z2 = c.join("c2", "z2")
        c.until(lambda: z2.admitted is not None, LEASE)
        self.assertEqual(sorted(z2.admitted or []), ["x", "y"])
        self.assertEqual(c.owners(), {"a"})


def test_after_a_restart_no_node_takes_a_room_while_its_owner_may_deliver(
    three: ThreeNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis restarts (its keys lost) right after the owner's renewal went
    # out, and refuses the owner's taking the room back for 0.9 of a lease:
    # the owner delivers until 0.8 of a lease after that renewal.  Joins on
    # another node meanwhile must not make that node take the room before.
    c = three.cluster
    three.flow(0.5)
    c.before_tick("a")
    c.wait(2 * STEP)
    leases = c.nodes["a"].node.leases
    acquire = leases.acquire
    refuse_until = c.clock.seconds() + LEASE * 0.9

    def refused(room: str, *args: Any) -> Deferred[tuple[int, str]]:
        if c.clock.seconds() < refuse_until:
            return fail(RedisUnavailable("Connection refused"))
        return acquire(room, *args)

    monkeypatch.setattr(leases, "acquire", refused)
    c.store.restart()
    late = []
    for i in range(12):
        late.append(c.join("b" if i % 2 else "c", f"w{i}"))
        c.wait(LEASE / 10)
    c.until(lambda: all(p.admitted is not None for p in late), LEASE * 2)
    assert three.two_owners() == []
