"""
Resume (SPEC 5.4) across the nodes of a cluster: a peer held on one node
comes back as itself on another, with what was queued for it, in order.
A real Redis and real nodes (see docs/cluster.md, "Resume on another node").
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from websockets.exceptions import ConnectionClosed

from twisted_signal.cluster.node import _Arrival
from twisted_signal.context import AuthData
from twisted_signal.resume import MAX_QUEUED
from twisted_signal.room import PeerHandle

from .support import Client, abort, handshake_status, join, joined, left, relayed
from .support.cluster import LEASE, Cluster
from .support.twistd import Twistd

pytestmark = pytest.mark.process

WINDOW = ("--resume-window", "30", "--rate-limit", "1000/1")


def lose(node: Twistd, client: Client) -> str:
    """Drop `client`'s connection without a close frame; wait until `node` holds it."""
    token = str(client.authenticated["data"]["resume_token"])
    abort(client.ws)
    deadline = time.monotonic() + 10
    while f"peer {client.peer_id} held for" not in node.stdout:
        assert time.monotonic() < deadline, node.output
        time.sleep(0.05)
    return token


def numbers(client: Client, count: int) -> list[int]:
    return [int(client.recv()["data"]) for _ in range(count)]


@pytest.mark.parametrize("held_on_owner", [False, True], ids=["held-on-relay", "held-on-owner"])
def test_resume_on_another_node_keeps_the_queue_and_its_order(
    cluster: Cluster,
    held_on_owner: bool,
) -> None:
    """
    The peer is held on node `a` and comes back on node `b`; one of them
    owns the room.  Its sender keeps sending all the while, and nobody sees
    it leave or join.
    """
    a, b = cluster.node(*WINDOW), cluster.node(*WINDOW)
    owner, other = (a, b) if held_on_owner else (b, a)
    x = join(owner.socket_url("move"))  # the first to join owns the room
    y = join(a.socket_url("move"))
    w = join(other.socket_url("move"))
    assert x.recv() == joined(y.peer_id) and x.recv() == joined(w.peer_id)
    assert y.recv() == joined(w.peer_id)
    token = lose(a, y)
    assert "." in token  # <node>.<random>
    for n in range(1, 6):
        x.send("n", [y.peer_id], n)  # queued on a
        w.send("n", [y.peer_id], n)

    def keep_sending() -> None:
        for n in range(6, 41):
            x.send("n", [y.peer_id], n)
            w.send("n", [y.peer_id], n)
            time.sleep(0.005)

    sender = threading.Thread(target=keep_sending)
    sender.start()
    again = join(b.socket_url("move", f"resume={token}"))
    sender.join()
    assert again.peer_id == y.peer_id
    assert set(again.authenticated["data"]["peers"]) == {x.peer_id, w.peer_id}
    assert again.authenticated["data"]["resume_token"] != token
    got: dict[str, list[int]] = {x.peer_id: [], w.peer_id: []}
    for _ in range(80):
        message = again.recv()
        got[message["from"]].append(int(message["data"]))
    assert got == {x.peer_id: list(range(1, 41)), w.peer_id: list(range(1, 41))}
    # Live: both ways, and nobody saw a leave or a join.
    again.send("hello", [x.peer_id, w.peer_id], "back")
    assert x.recv() == relayed("hello", "back", again, [x.peer_id, w.peer_id])
    assert w.recv() == relayed("hello", "back", again, [x.peer_id, w.peer_id])
    x.send("n", [y.peer_id], 41)
    assert numbers(again, 1) == [41]
    assert x.nothing_within(0.3) and w.nothing_within(0.1) and again.nothing_within(0.1)
    assert f"peer {y.peer_id} of room move moved to node" in a.stdout, a.output
    for c in (x, w, again):
        c.close()


def test_a_token_works_once_in_its_room_for_its_identity_on_any_node(cluster: Cluster) -> None:
    import jwt

    secret = "a secret long enough for the HS256 algorithm"

    def as_(sub: str, resume: str = "") -> str:
        token = jwt.encode({"room": "*", "sub": sub}, secret, algorithm="HS256")
        return f"token={token}" + (f"&resume={resume}" if resume else "")

    a, b = (cluster.node(*WINDOW, "--jwt-secret", secret) for _ in range(2))
    x = join(b.socket_url("once", as_("bob")))
    y = join(a.socket_url("once", as_("alice")))
    assert x.recv() == joined(y.peer_id)
    token = lose(a, y)
    # Mallory has a valid token of her own and Alice's resume token.
    mallory = join(b.socket_url("once", as_("mallory", token)))
    assert mallory.peer_id != y.peer_id
    assert x.recv() == joined(mallory.peer_id)
    mallory.close()
    assert x.recv() == left(mallory.peer_id)
    # Another room: a new peer there.  Neither refusal used the token up.
    elsewhere = join(b.socket_url("elsewhere", as_("alice", token)))
    assert elsewhere.peer_id != y.peer_id and elsewhere.authenticated["data"]["peers"] == []
    again = join(b.socket_url("once", as_("alice", token)))
    assert again.peer_id == y.peer_id
    # What it missed while held comes over from a.
    assert again.recv() == joined(mallory.peer_id)
    assert again.recv() == left(mallory.peer_id)
    # Used up: on the node that issued it and on any other.
    for node in (a, b):
        fresh = join(node.socket_url("once", as_("alice", token)))
        assert fresh.peer_id != y.peer_id
        assert set(fresh.authenticated["data"]["peers"]) == {x.peer_id, y.peer_id}
        assert x.recv() == joined(fresh.peer_id)
        assert again.recv() == joined(fresh.peer_id)
        fresh.close()
        assert x.recv() == left(fresh.peer_id)
        assert again.recv() == left(fresh.peer_id)
    # The token the new node gave works on the first node, even while the
    # connection it was given to still looks open: that one is cut, quietly.
    second = again.authenticated["data"]["resume_token"]
    back = join(a.socket_url("once", as_("alice", second)))
    assert back.peer_id == y.peer_id
    with pytest.raises(ConnectionClosed):
        again.recv()
    x.send("hi", [y.peer_id], 1)
    assert back.recv() == relayed("hi", 1, x, [y.peer_id])
    assert x.nothing_within(0.3)
    for c in (x, back, elsewhere):
        c.close()


def test_the_holding_node_killed_while_the_claim_is_in_flight(cluster: Cluster) -> None:
    """
    Nobody answers the claim: after half a lease the connection joins as
    a new peer, and the held peer leaves once its node is seen dead.
    """
    a, b = cluster.node(*WINDOW), cluster.node(*WINDOW)
    x = join(b.socket_url("dies"))
    y = join(a.socket_url("dies"))
    assert x.recv() == joined(y.peer_id)
    token = lose(a, y)
    a.process.send_signal(signal.SIGSTOP)  # alive for Redis a little longer
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        claim = pool.submit(join, b.socket_url("dies", f"resume={token}"))
        time.sleep(0.3)  # the claim is out, unanswered
        a.kill()
        fresh = claim.result(timeout=LEASE + 8)
        took = time.monotonic() - started
    assert fresh.peer_id != y.peer_id
    assert took < LEASE + 8
    news = [x.recv(timeout=3 * LEASE + 5), x.recv(timeout=3 * LEASE + 5)]
    assert sorted(news, key=str) == sorted([joined(fresh.peer_id), left(y.peer_id)], key=str)
    assert "could not claim a resume token of node" in b.stdout, b.output
    for c in (x, fresh):
        c.close()


def test_an_arrival_goes_live_with_the_handed_over_queue_first() -> None:
    """
    What the owner sends the peer here before the old node's queue arrives
    waits, and comes after that queue, behind ``authenticated``.
    """
    clock = Clock()
    got: list[object] = []
    finished: list[bool] = []
    real = PeerHandle("p", AuthData("p"), got.append, got.append, got.append)

    def schedule(delay: float) -> IDelayedCall:
        return clock.callLater(delay, lambda: None)

    arrival = _Arrival("a", 1.0, schedule, lambda: finished.append(True))
    handle = arrival.wrap(real)
    handle.send(b"3")  # the owner moved the peer here: new deliveries come here
    handle.admitted(["x"])
    handle.send(b"4")
    assert got == [] and not finished
    arrival.handed_over([b"1", b"2"])  # what the old node had queued
    assert got == [["x"], b"1", b"2", b"3", b"4"] and finished
    assert not arrival.timer.active()
    handle.send(b"5")
    assert got[-1] == b"5"
    # At most MAX_QUEUED wait, the newest ones, as on one node.
    got.clear()
    arrival = _Arrival("a", 1.0, schedule, lambda: None)
    handle = arrival.wrap(real)
    for n in range(MAX_QUEUED):
        handle.send(b"%d" % (MAX_QUEUED + n))
    handle.admitted([])
    arrival.handed_over([b"%d" % n for n in range(MAX_QUEUED)])
    assert got[1:] == [b"%d" % n for n in range(MAX_QUEUED, 2 * MAX_QUEUED)]


SLOW_INIT = """
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import deferLater

from twisted_signal import Peer

FLAG = Path({flag!r})


class SlowInit(Peer):
    def on_init(self, context, auth, options):
        if FLAG.exists():
            return deferLater(reactor, {delay}, lambda: None)
        return None
"""


def test_the_holding_node_killed_after_it_answered_the_claim(
    cluster: Cluster,
    tmp_path: Path,
) -> None:
    """
    The claim is answered, then the node that held the peer dies before it
    can hand its queue over: the peer goes live on the new node without
    that queue (a lease after it is admitted there), and it does not leave.
    """
    flag = tmp_path / "slow"
    # Long enough for a to be killed, short enough that its node key has not
    # lapsed yet when the peer moves (else the owner lets the peer go first).
    (tmp_path / "slowinit.py").write_text(SLOW_INIT.format(flag=str(flag), delay=0.5))
    a = cluster.node(*WINDOW)
    b = cluster.node(*WINDOW, "--peer-class", "slowinit.SlowInit", pythonpath=tmp_path)
    x = join(b.socket_url("late"))
    y = join(a.socket_url("late"))
    assert x.recv() == joined(y.peer_id)
    token = lose(a, y)
    x.send("n", [y.peer_id], 1)  # queued on a, lost with it
    time.sleep(0.2)
    flag.touch()  # on_init on b now takes a while: a dies meanwhile
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        resumed = pool.submit(join, b.socket_url("late", f"resume={token}"))
        deadline = started + 10
        while f"peer {y.peer_id} of room late claimed by node" not in a.stdout:
            assert time.monotonic() < deadline, a.output
            time.sleep(0.02)
        a.kill()
        again = resumed.result(timeout=2 * LEASE + 8)
    assert again.peer_id == y.peer_id
    assert time.monotonic() - started >= LEASE - 0.5  # it waited for the handover
    x.send("n", [y.peer_id], 2)
    assert numbers(again, 1) == [2]
    # Its node died, but the peer lives on b now: nobody sees it leave.
    assert x.nothing_within(0.5)
    assert "handed nothing over for peer" in b.stdout, b.output
    for c in (x, again):
        c.close()


def test_a_refused_connection_does_not_take_a_peer_from_another_node(cluster: Cluster) -> None:
    good, evil = "https://good.example", "https://evil.example"
    a, b = (cluster.node(*WINDOW, "--allowed-origin", good) for _ in range(2))
    x = join(b.socket_url("keep"), origin=good)
    y = join(a.socket_url("keep"), origin=good)
    assert x.recv() == joined(y.peer_id)
    token = lose(a, y)
    assert handshake_status(b.socket_url("keep", f"resume={token}"), origin=evil) == 403
    # The peer is still held on its node, and still comes back as itself.
    again = join(b.socket_url("keep", f"resume={token}"), origin=good)
    assert again.peer_id == y.peer_id
    assert x.nothing_within(0.3)
    x.close()
    again.close()
