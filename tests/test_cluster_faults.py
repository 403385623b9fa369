"""
Redis faults in cluster mode (SPEC 5.7), with a real Redis and real nodes:
Redis paused (SIGSTOP) below and above half the lease, Redis restarted with
senders on both nodes, and what stays in Redis after many short rooms.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed

from .support import Client, join, joined
from .support.cluster import LEASE, Cluster, Redis
from .support.twistd import Twistd, get

pytestmark = pytest.mark.process

PROXY = Path(__file__).parent / "support" / "blip_proxy.py"


def _join_all(urls: list[str]) -> list[Client]:
    """Join in turn; each client has read the ``joined`` of those after it."""
    clients = [join(url) for url in urls]
    for i, c in enumerate(clients):
        for later in clients[i + 1 :]:
            assert c.recv() == joined(later.peer_id)
    return clients


@contextmanager
def _sending(senders: list[Client], interval: float = 0.02) -> Iterator[list[int]]:
    """
    Each sender sends ``n`` = 0, 1, 2, ... to all, every `interval`, until
    the block ends; the list holds how many each one sent.
    """
    stop = threading.Event()
    sent = [0]

    def run() -> None:
        while not stop.is_set():
            for c in senders:
                c.send("n", "all", {"from": c.peer_id, "n": sent[0]})
            sent[0] += 1
            time.sleep(interval)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield sent
    finally:
        stop.set()
        thread.join()


def _received(client: Client, last: dict[str, int], timeout: float) -> list[dict[str, Any]]:
    """
    What `client` gets until it has each sender's last number (`last`, by
    peer id), then whatever else comes within a moment (a duplicate).
    """
    got: list[dict[str, Any]] = []
    waiting = dict(last)
    deadline = time.monotonic() + timeout
    while waiting:
        message = client.recv(timeout=max(deadline - time.monotonic(), 0.01))
        got.append(message)
        if message["event"] == "n" and waiting.get(message["data"]["from"]) == message["data"]["n"]:
            del waiting[message["data"]["from"]]
    while True:
        try:
            got.append(client.recv(timeout=0.3))
        except TimeoutError:
            return got


def _numbers(got: list[dict[str, Any]], sender: Client) -> list[int]:
    return [m["data"]["n"] for m in got if m["data"]["from"] == sender.peer_id]


def _redis_cli(redis: Redis, *args: str) -> str:
    return subprocess.run(
        ["redis-cli", "-p", str(redis.port), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout


def _health(node: Twistd) -> int:
    try:
        return get(node.url("/healthz"))[0]
    except OSError:
        return 0


def test_redis_paused_below_half_the_lease_is_invisible(cluster: Cluster) -> None:
    """
    SPEC 5.7: Redis unreachable for less than half the lease closes no peer
    and loses nothing; what was sent meanwhile comes once Redis answers,
    once, in order.  Senders on both nodes (the owner and the other one),
    receivers on both; Redis frozen for 0.45 of the lease, three times at
    different points of the nodes' ticks.
    """
    args = ("--rate-limit", "1000/1", "--max-peers", "8")
    a, b = cluster.node(*args), cluster.node(*args)
    room = "pause"
    x, y, w, v = _join_all(
        [a.socket_url(room), b.socket_url(room), a.socket_url(room), b.socket_url(room)]
    )
    redis = cluster.redis.process
    assert redis is not None
    with _sending([x, y]) as sent:
        time.sleep(0.3)
        for gap in (0.5, 0.75, 0.6):
            redis.send_signal(signal.SIGSTOP)
            try:
                time.sleep(LEASE * 0.45)
            finally:
                redis.send_signal(signal.SIGCONT)
            time.sleep(gap)
    total = sent[0]
    for client, senders in ((x, [y]), (y, [x]), (w, [x, y]), (v, [x, y])):
        try:
            got = _received(client, {s.peer_id: total - 1 for s in senders}, LEASE * 2)
        except ConnectionClosed as e:
            raise AssertionError(f"a peer was closed: {e}\n{a.output}\n{b.output}") from None
        assert all(m["event"] == "n" for m in got), [m for m in got if m["event"] != "n"]
        for sender in senders:
            assert _numbers(got, sender) == list(range(total)), (
                f"lost, twice or out of order ({total} sent)"
            )
    for c in (x, y, w, v):
        c.close()


class _Blips:
    """
    ``support/blip_proxy.py`` in front of Redis: `cut` resets every
    connection of the nodes to Redis and resets new ones for a while (to
    the nodes, Redis refuses connections).
    """

    def __init__(self, redis: Redis) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(PROXY), str(redis.port), "redis"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        line = self.stdout.readline()
        assert line, "the proxy did not start"
        self.url = f"redis://127.0.0.1:{json.loads(line)['redis']}/0"

    def cut(self, seconds: float) -> None:
        self.stdin.write(f"cut redis {seconds}\n")
        self.stdin.flush()
        assert self.stdout.readline().startswith("cut ")

    def close(self) -> None:
        self.stdin.close()
        self.process.wait(timeout=10)


def test_redis_refusing_connections_below_half_the_lease_is_invisible(
    cluster: Cluster,
) -> None:
    """
    SPEC 5.7, as for a pause, with connections refused: Redis unreachable
    (every connection reset, new ones refused) for 0.45 of the lease, four
    times, each starting a quarter of a tick later between two ticks than
    the one before, so that at least one spans two ticks of each node (one
    that starts in the last third of a tick does).
    """
    blips = _Blips(cluster.redis)
    try:
        common = ("--cluster-lease", str(LEASE), "--resume-window", "0")
        args = ("--redis", blips.url, *common, "--rate-limit", "1000/1", "--max-peers", "8")
        a, b = cluster.spawn(*args), cluster.spawn(*args)
        room = "refused"
        x, y, w, v = _join_all(
            [a.socket_url(room), b.socket_url(room), a.socket_url(room), b.socket_url(room)]
        )
        outage, tick = LEASE * 0.45, LEASE / 3
        with _sending([x, y]) as sent:
            time.sleep(0.3)
            for _ in range(4):
                blips.cut(outage)
                time.sleep(2 * tick + tick / 4)
        total = sent[0]
        for client, senders in ((x, [y]), (y, [x]), (w, [x, y]), (v, [x, y])):
            try:
                got = _received(client, {s.peer_id: total - 1 for s in senders}, LEASE * 2)
            except ConnectionClosed as e:
                raise AssertionError(f"a peer was closed: {e}\n{a.output}\n{b.output}") from None
            assert all(m["event"] == "n" for m in got), [m for m in got if m["event"] != "n"]
            for sender in senders:
                assert _numbers(got, sender) == list(range(total)), (
                    f"lost, twice or out of order ({total} sent)"
                )
        assert _health(a) == _health(b) == 200
        for c in (x, y, w, v):
            c.close()
    finally:
        blips.close()


def test_redis_paused_longer_makes_healthz_503_until_it_answers(cluster: Cluster) -> None:
    """
    SPEC 5.7: a node that cannot reach Redis for longer than half the lease
    answers 503 on /healthz until it can serve joins again.
    """
    a, b = cluster.node(), cluster.node()
    x = join(a.socket_url("long"))
    redis = cluster.redis.process
    assert redis is not None
    redis.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        assert _health(a) == _health(b) == 200  # a moment is nothing
        seen: dict[int, set[int]] = {a.port: set(), b.port: set()}
        while time.monotonic() - started < LEASE * 1.5:
            for node in (a, b):
                seen[node.port].add(_health(node))
            time.sleep(0.1)
        # Half a lease, and at most one tick more, after Redis went away.
        assert _health(a) == _health(b) == 503
    finally:
        redis.send_signal(signal.SIGCONT)
    deadline = time.monotonic() + LEASE * 3
    while not _health(a) == _health(b) == 200:
        assert time.monotonic() < deadline, "still 503 after Redis came back"
        time.sleep(0.1)
    with join(a.socket_url("after")) as u, join(b.socket_url("after")) as t:
        assert u.recv(timeout=LEASE * 2) == joined(t.peer_id)
    x.close()


def test_a_redis_restart_delivers_nothing_twice(cluster: Cluster) -> None:
    """
    SPEC 5.7: no message is delivered twice, also across a Redis restart.
    Senders on both nodes keep sending while Redis restarts (losing every
    key) six times, since the duplicate came from a race after a restart
    (the owner read the new stream, then read it again from its start once
    it took the room again).  Each receiver gets each sender's messages at
    most once and in order, and the call goes on.
    """
    args = ("--rate-limit", "1000/1", "--max-peers", "8")
    a, b = cluster.node(*args), cluster.node(*args)
    room = "restart"
    x, y, w, v = _join_all(
        [a.socket_url(room), b.socket_url(room), a.socket_url(room), b.socket_url(room)]
    )
    with _sending([x, y], interval=0.05) as sent:
        for _ in range(6):
            time.sleep(LEASE * 0.5)
            cluster.redis.stop()
            cluster.redis.start()  # same port, every key lost
        time.sleep(LEASE * 1.5)  # the owner takes the room again
    total = sent[0]
    for client, senders in ((x, [y]), (y, [x]), (w, [x, y]), (v, [x, y])):
        got = _received(client, {s.peer_id: total - 1 for s in senders}, LEASE * 2)
        assert all(m["event"] == "n" for m in got), [m for m in got if m["event"] != "n"]
        for sender in senders:
            numbers = _numbers(got, sender)
            assert len(set(numbers)) == len(numbers), "delivered twice"
            assert numbers == sorted(numbers), "out of order"
            assert numbers[-1] == total - 1, "the call did not go on"
    for c in (x, y, w, v):
        c.close()


def test_many_short_rooms_leave_nothing_in_redis(cluster: Cluster) -> None:
    """
    SPEC 5.7: Redis keeps nothing per room name once the room is gone, so
    many short rooms (each with peers on both nodes) do not pile up keys.
    """
    a, b = cluster.node(), cluster.node()

    def short_room(i: int) -> None:
        with join(a.socket_url(f"short-{i}")) as x, join(b.socket_url(f"short-{i}")) as y:
            y.send("hi", [x.peer_id], i)
            assert x.recv()["event"] == "joined"
            assert x.recv()["data"] == i

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(short_room, range(200)))
    # Every room key expires within a few leases of the room's end.
    deadline = time.monotonic() + LEASE * 4
    while True:
        keys = _redis_cli(cluster.redis, "--scan").split()
        per_room = [k for k in keys if ":room:" in k]
        if not per_room:
            break
        assert time.monotonic() < deadline, (len(per_room), sorted(per_room)[:10])
        time.sleep(0.2)
    # What remains is per node: its liveness key and its inbox.
    assert len(keys) <= 4, keys


def test_a_join_elsewhere_right_after_a_redis_restart_does_not_split_the_room(
    cluster: Cluster,
) -> None:
    """
    Redis restarts; before the room's owner has taken it again, a peer
    joins the room on the other node.  That node must not take the room
    (two rooms of one name, and the owner's peers closed with 1001): the
    join waits for the owner, which admits it.
    """
    a, b = cluster.node(), cluster.node()
    for i in range(2):
        room = f"again{i}"
        x, y = _join_all([a.socket_url(room), a.socket_url(room)])  # a owns the room
        time.sleep(LEASE / 6 * i)  # at another point between ticks each time
        cluster.redis.stop()
        cluster.redis.start()
        time.sleep(0.05)
        try:
            with join(b.socket_url(room)) as z:
                assert set(z.authenticated["data"]["peers"]) == {x.peer_id, y.peer_id}
                assert x.recv(timeout=LEASE * 2) == joined(z.peer_id)
                assert y.recv(timeout=LEASE * 2) == joined(z.peer_id)
                z.send("hi", "all", i)
                assert x.recv(timeout=LEASE * 2)["data"] == i
        except ConnectionClosed as e:
            raise AssertionError(f"round {i}: {e}\n{a.output}\n{b.output}") from None
        x.close()
        y.close()
