"""
The in-memory bus and leases (`twisted_signal.cluster.memory`) against the
Redis ones (`backend.RedisBus`, `RedisLeases`) on a real redis-server: the
same calls give the same answers, so what the failover tests prove on the
twins holds for the scripts.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
import pytest_twisted

from twisted_signal.cluster import ClusterRooms
from twisted_signal.cluster.backend import Bus, Leases, RedisBus, RedisLeases, key
from twisted_signal.cluster.memory import MemoryRedis
from twisted_signal.cluster.resp import RedisClient
from twisted_signal.rooms import LocalRooms, Rooms

from .support import sleep
from .support.cluster import Redis

pytestmark = pytest.mark.process


def _plain(value: Any) -> Any:
    """Bytes as text, and entry ids and epochs (which differ) as their shape."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        value = re.sub(r"\b\d{13,}-\d+\b", "<id>", value)
        return re.sub(r"\|\d+\b", "|<epoch>", value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, set):
        return sorted(_plain(v) for v in value)
    return value


@pytest_twisted.inlineCallbacks
def _transcript(bus: Bus, leases: Leases) -> Any:
    """The same calls, in order; what each answered."""
    seen: list[Any] = []
    lease, keep = 5000, 15000
    seen.append((yield leases.register("a", "one", lease)))
    seen.append((yield leases.register("a", "one", lease)))
    seen.append((yield leases.register("a", "two", lease)))  # another process
    seen.append((yield leases.node_alive("a")))
    seen.append((yield leases.node_alive("b")))
    # Only a registered node takes a room; "wait" takes none.
    seen.append((yield leases.acquire("r", "b", lease, keep, "take")))
    seen.append((yield leases.acquire("r", "a", lease, keep, "wait")))
    epoch, cursor = yield leases.acquire("r", "a", lease, keep, "take")
    seen.append(cursor)
    token = f"a|{epoch}"
    seen.append((yield leases.acquire("r", "a", lease, keep, "take")))
    seen.append((yield leases.owner("r")))
    seen.append((yield leases.owned_rooms()))
    # Writes are owner-checked.
    member = json.dumps({"node": "a", "credentials": {}, "metadata": None})
    gone = json.dumps({"node": "b", "credentials": {}, "metadata": None})
    seen.append((yield leases.add_member("r", token, keep, "x", member)))
    seen.append((yield leases.add_member("r", token, keep, "y", gone)))
    seen.append((yield leases.add_member("r", "a|1", keep, "z", member)))
    seen.append((yield leases.members("r")))
    seen.append((yield leases.dead_members("r")))
    seen.append((yield leases.remove_member("r", "a|1", "x")))
    seen.append((yield leases.remove_member("r", token, "y")))
    seen.append((yield leases.members("r")))
    seen.append((yield leases.renew("r", token, lease, keep)))
    seen.append((yield leases.renew("r", "a|1", lease, keep)))
    # The bus: entries after an id, trimmed once read.
    stream = key("room", "r", "in")
    first = yield bus.add(stream, ["op", "join", "peer", "x"])
    yield bus.add(stream, ["op", "submit", "message", b'{"a":1}'])
    batch = yield bus.read([(stream, "0-0")], 0.1)
    seen.append(batch)
    seen.append((yield bus.read([(stream, first)], 0.1)))
    seen.append((yield bus.trim(stream, first)))
    seen.append((yield bus.read([(stream, "0-0")], 0.1)))
    seen.append((yield bus.read([(key("inbox", "a"), "0-0")], 0.1)))
    # A hand-over says where the next owner reads on, once.
    last = batch[0][1][-1][0]
    seen.append((yield leases.hand_over("r", "a|1", last, lease)))
    seen.append((yield leases.hand_over("r", token, last, lease)))
    seen.append((yield leases.owner("r")))
    epoch2, cursor2 = yield leases.acquire("r", "a", lease, keep, "take")
    seen.append((epoch2 > epoch, cursor2 == last))
    token = f"a|{epoch2}"
    seen.append((yield leases.release("r", token)))
    seen.append((yield leases.members("r")))
    epoch3, cursor3 = yield leases.acquire("r", "a", lease, keep, "take")
    seen.append((epoch3 > epoch2, cursor3 == last))
    seen += yield _expiry(leases)
    return [_plain(s) for s in seen]


@pytest_twisted.inlineCallbacks
def _expiry(leases: Leases) -> Any:
    """Leases expire, or end when a node leaves."""
    seen: list[Any] = []
    seen.append((yield leases.register("c", "one", 100)))
    yield sleep(0.3)
    seen.append((yield leases.node_alive("c")))
    seen.append((yield leases.unregister("a")))
    seen.append((yield leases.unregister("a")))
    seen.append((yield leases.node_alive("a")))
    return seen


@pytest_twisted.inlineCallbacks
def test_the_in_memory_twins_answer_as_redis_does(redis: Redis) -> Any:
    from twisted.internet import reactor

    client = RedisClient(redis.url, reactor, timeout=2)
    reader = RedisClient(redis.url, reactor, timeout=5)
    try:
        on_redis = yield _transcript(RedisBus(client, reader), RedisLeases(client))
    finally:
        client.close()
        reader.close()
    link = MemoryRedis(reactor).connect(timeout=2)
    in_memory = yield _transcript(link.bus, link.leases)
    assert in_memory == on_redis
    assert on_redis[:5] == [0, 1, -1, True, False]


def test_the_cluster_registry_is_composed_not_a_subclass_with_hooks() -> None:
    # One server: every room here, and no other nodes.
    rooms = Rooms()
    assert isinstance(rooms.backend, LocalRooms)
    assert rooms.other_nodes is None
    # A node: the registry's methods, with a node as its backend.
    overridden = {
        name
        for name, value in vars(ClusterRooms).items()
        if callable(value) and not name.startswith("__")  # zope.interface's __provides__ too
    }
    assert overridden == set()
    node = ClusterRooms(redis_url="redis://127.0.0.1:1/0", node_id="n")
    assert node.backend is node.node
    assert node.other_nodes is node.node
    assert node.node.token_prefix == "n."
