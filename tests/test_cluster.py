"""
Cluster mode end to end: a real Redis and two or three real nodes, with the
peers of one room spread over them.
"""

from __future__ import annotations

import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from .support import Client, abort, error, join, joined, left, open_socket, relayed
from .support.cluster import LEASE, Cluster
from .support.twistd import free_port

pytestmark = pytest.mark.process


def test_peers_on_two_nodes_share_a_room(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    with join(a.socket_url("r")) as x:
        assert x.authenticated["data"]["peers"] == []
        with join(b.socket_url("r")) as y:
            assert y.authenticated["data"]["peers"] == [x.peer_id]
            assert x.recv() == joined(y.peer_id)
            y.send("offer", [x.peer_id], {"sdp": 1})
            assert x.recv() == relayed("offer", {"sdp": 1}, y, [x.peer_id])
            x.send("answer", "all", {"sdp": 2})
            assert y.recv() == relayed("answer", {"sdp": 2}, x, "all")
            y.send("hello", [x.peer_id, "f3d1c5f6-2a6b-4c5b-9a3c-3f2f0e6b1a77"])
            assert y.recv() == error(
                y.peer_id, "No such peer", ["f3d1c5f6-2a6b-4c5b-9a3c-3f2f0e6b1a77"]
            )
            assert x.nothing_within(0.3)
        assert x.recv() == left(y.peer_id)


def test_the_room_limit_holds_under_a_join_race_from_every_node(cluster: Cluster) -> None:
    nodes = [cluster.node("--max-peers", "3") for _ in range(3)]
    urls = [nodes[i % 3].socket_url("race") for i in range(9)]
    sockets = []
    with ThreadPoolExecutor(9) as pool:
        sockets = list(pool.map(open_socket, urls))
    try:
        admitted, refused = [], []
        for ws in sockets:
            first = json.loads(ws.recv(timeout=10))
            if first["event"] == "authenticated":
                admitted.append(first)
            else:
                assert first["data"] == {
                    "description": "Could not join room",
                    "details": "room_is_full",
                }
                refused.append(first)
        assert len(admitted) == 3 and len(refused) == 6
        ids = {m["data"]["peer_id"] for m in admitted}
        # Each admitted peer saw only admitted peers, in one order of joins.
        seen = sorted(len(m["data"]["peers"]) for m in admitted)
        assert seen == [0, 1, 2]
        for m in admitted:
            assert set(m["data"]["peers"]) <= ids
    finally:
        for ws in sockets:
            ws.close()


def test_one_total_order_for_every_receiver_on_every_node(cluster: Cluster) -> None:
    nodes = [cluster.node("--max-peers", "6", "--rate-limit", "1000/1") for _ in range(3)]
    clients = []
    for i in range(6):
        clients.append(join(nodes[i % 3].socket_url("order")))
    try:
        for i, c in enumerate(clients):
            for _ in range(len(clients) - 1 - i):
                assert c.recv()["event"] == "joined"
        senders = clients[:3]

        def blast(c: Client) -> None:
            for n in range(30):
                c.send("n", "all", {"from": c.peer_id, "n": n})

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(blast, senders))
        orders = []
        for c in clients:
            expected = 90 - (30 if c in senders else 0)
            got = [c.recv()["data"] for _ in range(expected)]
            for s in senders:
                mine = [d["n"] for d in got if d["from"] == s.peer_id]
                assert mine == ([] if s is c else list(range(30)))
            orders.append([(d["from"], d["n"]) for d in got])
        # The receivers that sent nothing saw the very same sequence.
        assert orders[3] == orders[4] == orders[5]
        for c, order in zip(senders, orders[:3], strict=True):
            assert order == [m for m in orders[3] if m[0] != c.peer_id]
    finally:
        for c in clients:
            c.close()


def test_a_killed_relay_node_s_peers_leave(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    with join(a.socket_url("k")) as x:
        y = join(b.socket_url("k"))
        assert x.recv() == joined(y.peer_id)
        b.kill()
        started = time.monotonic()
        assert x.recv(timeout=LEASE * 4) == left(y.peer_id)
        assert time.monotonic() - started < LEASE * 3


def test_a_killed_owner_s_room_moves_and_the_others_keep_talking(cluster: Cluster) -> None:
    a, b, c = cluster.node(), cluster.node(), cluster.node()
    owner_peer = join(a.socket_url("m"))  # the first join makes node a the owner
    y = join(b.socket_url("m"))
    z = join(c.socket_url("m"))
    assert y.recv() == joined(z.peer_id)
    a.kill()
    # The new owner runs the room again; a's peer leaves, once.
    assert y.recv(timeout=LEASE * 6) == left(owner_peer.peer_id)
    assert z.recv(timeout=LEASE * 6) == left(owner_peer.peer_id)
    y.send("after", [z.peer_id], 1)
    assert z.recv(timeout=LEASE * 4) == relayed("after", 1, y, [z.peer_id])
    z.send("back", "all", 2)
    assert y.recv(timeout=LEASE * 4) == relayed("back", 2, z, "all")
    # New peers can join on either surviving node.
    with join(b.socket_url("m")) as w:
        assert set(w.authenticated["data"]["peers"]) == {y.peer_id, z.peer_id}
        assert z.recv() == joined(w.peer_id)
    y.close()
    z.close()


def test_the_peers_of_a_node_that_died_alone_in_a_room_are_not_restored(
    cluster: Cluster,
) -> None:
    # The room's only node dies with its peer: nobody is left to see that
    # peer go, so it stays in the members hash.  The node that takes the
    # room next must not restore it (no ghost in `peers`, no late `left`).
    a = cluster.node()
    ghost = join(a.socket_url("g"))
    a.kill()
    b = cluster.node()
    with join(b.socket_url("g")) as x:
        assert x.authenticated["data"]["peers"] == []
        assert x.nothing_within(LEASE * 2)
    ghost.close()


def test_a_frozen_owner_does_not_deliver_after_its_lease(cluster: Cluster) -> None:
    a, b, c = cluster.node(), cluster.node(), cluster.node()
    x = join(a.socket_url("f"))  # a owns the room
    y = join(b.socket_url("f"))
    z = join(c.socket_url("f"))
    assert x.recv() == joined(y.peer_id)
    assert x.recv() == joined(z.peer_id)
    assert y.recv() == joined(z.peer_id)
    a.process.send_signal(signal.SIGSTOP)
    try:
        # Sent to the frozen node: it will read it when it wakes, as a
        # stale owner, and must not deliver it.
        x.send("stale", "all", "x")
        assert y.recv(timeout=LEASE * 6) == left(x.peer_id)
        assert z.recv(timeout=LEASE * 6) == left(x.peer_id)
    finally:
        a.process.send_signal(signal.SIGCONT)
    # The woken node steps down: its peer is closed, nobody gets "stale".
    assert closed_or_room_gone(x)
    assert y.nothing_within(1.0)
    assert z.nothing_within(0.2)
    y.send("still", [z.peer_id], 3)
    assert z.recv(timeout=LEASE * 4) == relayed("still", 3, y, [z.peer_id])
    y.close()
    z.close()


def closed_or_room_gone(client: Client) -> bool:
    """The client's connection ends without any further delivery."""
    try:
        while True:
            frame = client.ws.recv(timeout=LEASE * 6)
            message = json.loads(frame)
            assert message["event"] not in ("stale", "joined", "left"), message
    except ConnectionClosed:
        return True
    except TimeoutError:
        return False


def test_redis_restart_mid_call(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    x = join(a.socket_url("rr"))
    y = join(b.socket_url("rr"))
    assert x.recv() == joined(y.peer_id)
    cluster.redis.stop()
    cluster.redis.start()  # same port, every key lost
    # Within a few ticks the owner has taken the room again and the call goes on.
    deadline = time.monotonic() + LEASE * 8
    while True:
        y.send("ping?", [x.peer_id], "p")
        try:
            assert x.recv(timeout=LEASE / 2) == relayed("ping?", "p", y, [x.peer_id])
            break
        except TimeoutError:
            assert time.monotonic() < deadline, "the call did not come back after Redis restarted"
    # New joins work again, on both nodes, without restarting any node.
    with join(b.socket_url("rr")) as w:
        assert set(w.authenticated["data"]["peers"]) == {x.peer_id, y.peer_id}
    with join(a.socket_url("fresh")) as v, join(b.socket_url("fresh")) as u:
        assert v.recv() == joined(u.peer_id)
    x.close()
    y.close()


def test_redis_unreachable_then_back(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    x = join(a.socket_url("u"))
    y = join(b.socket_url("u"))
    assert x.recv() == joined(y.peer_id)
    cluster.redis.stop()
    # Owners step down and relays give their peers up: clients are closed.
    for client in (x, y):
        with pytest.raises(ConnectionClosed):
            while True:
                client.ws.recv(timeout=LEASE * 6)
    cluster.redis.start()
    deadline = time.monotonic() + LEASE * 8
    while True:
        try:
            v = join(a.socket_url("u"))
            break
        except (OSError, AssertionError, ConnectionClosed):
            assert time.monotonic() < deadline
            time.sleep(0.2)
    with v, join(b.socket_url("u")) as u:
        assert v.recv(timeout=LEASE * 4) == joined(u.peer_id)


SLOW_ROOM = '''
import random

from twisted.internet import reactor, task

from twisted_signal import Room


class SlowRoom(Room):
    """Answers on_forward after a random delay, and counts its on_init runs."""

    def on_forward(self, message):
        return task.deferLater(reactor, random.random() / 50, lambda: message)
'''


def test_one_order_behind_a_slow_async_on_forward(cluster: Cluster, tmp_path: Path) -> None:
    (tmp_path / "slowroom.py").write_text(SLOW_ROOM)
    args = ("--room-class", "slowroom.SlowRoom", "--rate-limit", "1000/1")
    a, b = (cluster.node(*args, pythonpath=tmp_path) for _ in range(2))
    x, y = join(a.socket_url("s")), join(b.socket_url("s"))
    z, w = join(b.socket_url("s")), join(a.socket_url("s"))
    clients = [x, y, z, w]
    try:
        for i, c in enumerate(clients):
            for _ in range(len(clients) - 1 - i):
                assert c.recv()["event"] == "joined"
        for n in range(15):
            x.send("n", "all", {"from": "x", "n": n})
            y.send("n", "all", {"from": "y", "n": n})
        seen = [
            [(d["from"], d["n"]) for d in (c.recv()["data"] for _ in range(30))] for c in (z, w)
        ]
        assert seen[0] == seen[1]
        for sender in ("x", "y"):
            assert [n for s, n in seen[0] if s == sender] == list(range(15))
    finally:
        for c in clients:
            c.close()


def test_joins_as_an_on_demand_room_empties_and_moves(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    for n in range(4):
        first, second = (a, b) if n % 2 else (b, a)
        x = join(first.socket_url("churn"))
        x.close()
        # The room empties and its owner lets it go while this join is on its way.
        with join(second.socket_url("churn")) as y:
            assert y.authenticated["data"]["peers"] in ([], [x.peer_id])


def test_a_node_shut_down_hands_its_rooms_over(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node()
    x = join(a.socket_url("bye"))  # a owns the room
    y = join(b.socket_url("bye"))
    z = join(b.socket_url("bye"))
    assert x.recv() == joined(y.peer_id)
    assert x.recv() == joined(z.peer_id)
    assert y.recv() == joined(z.peer_id)
    a.process.send_signal(signal.SIGTERM)
    assert x.recv() == error(x.peer_id, "Room closed", "shutdown")
    assert a.wait_exit(10) == -signal.SIGTERM, a.output
    # The others see the departing node's peer leave, and go on talking.
    assert y.recv(timeout=LEASE * 4) == left(x.peer_id)
    assert z.recv(timeout=LEASE * 4) == left(x.peer_id)
    y.send("still", [z.peer_id], 1)
    assert z.recv(timeout=LEASE * 4) == relayed("still", 1, y, [z.peer_id])
    y.close()
    z.close()


def test_resume_on_the_same_node_that_does_not_own_the_room(cluster: Cluster) -> None:
    a, b = cluster.node(), cluster.node("--resume-window", "30")
    x = join(a.socket_url("res"))  # a owns the room
    y = join(b.socket_url("res"))
    z = join(b.socket_url("res"))
    assert x.recv() == joined(y.peer_id)
    assert x.recv() == joined(z.peer_id)
    assert y.recv() == joined(z.peer_id)
    token = y.authenticated["data"]["resume_token"]
    abort(y.ws)
    time.sleep(LEASE)  # the server notices, and a tick reads the members
    x.send("queued", [y.peer_id], 1)
    z.send("queued", [y.peer_id], 2)
    time.sleep(0.5)
    again = join(b.socket_url("res", f"resume={token}"))
    assert again.peer_id == y.peer_id
    assert set(again.authenticated["data"]["peers"]) == {x.peer_id, z.peer_id}
    got = [again.recv(), again.recv()]
    assert relayed("queued", 1, x, [y.peer_id]) in got
    assert relayed("queued", 2, z, [y.peer_id]) in got
    assert x.nothing_within(0.3) and z.nothing_within(0.1)  # no joined, no left
    for c in (x, again, z):
        c.close()


def test_nodes_behind_one_port_serve_one_room(cluster: Cluster) -> None:
    """
    ``make run-cluster``'s shape: nodes sharing one ``reuseport:`` port.
    The kernel spreads the connections over the nodes, and the peers still
    make one room.
    """
    shared = free_port()
    endpoint = f"reuseport:{shared}:interface=127.0.0.1:backlog=128"
    nodes = [cluster.node("--endpoint", endpoint, "--max-peers", "30") for _ in range(2)]
    url = f"ws://127.0.0.1:{shared}/socket/one/"
    clients: list[Client] = []
    try:
        # Join until each node holds two of them (the kernel spreads
        # connections by their addresses; eight on one node: 2^-7).
        def holding() -> list[int]:
            return [
                sum(f"peer {c.peer_id} connected to room one" in node.stdout for c in clients)
                for node in nodes
            ]

        while len(clients) < 20 and min(holding()) < 2:
            client = join(url)
            assert len(client.authenticated["data"]["peers"]) == len(clients)
            clients.append(client)
        assert min(holding()) >= 2, holding()
        last = clients[-1]
        last.send("hello", "all", {"n": 1})
        for client in clients[:-1]:
            message = client.recv()
            while message["event"] == "joined":
                message = client.recv()
            assert message == relayed("hello", {"n": 1}, last, "all")
    finally:
        for client in clients:
            client.close()
