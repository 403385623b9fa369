"""
Whatever one server accepts from a peer, a cluster relays the same way
(SPEC 5.7): valid but unusual text sent from a node that does not own the
room (a lone surrogate, every JSON escape, the largest allowed message, the
deepest nesting) reaches peers on both nodes as the very bytes a single
server sends, and the cluster goes on as if nothing happened: ordinary
traffic from both nodes for 1.5 leases arrives whole, once and in order,
no peer is closed and ``/healthz`` stays 200.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
from websockets.exceptions import ConnectionClosed

from .support import Client, join
from .support.cluster import LEASE, Cluster
from .support.twistd import Twistd, get

pytestmark = pytest.mark.process

MAX_MESSAGE = 65536
RATE = ("--rate-limit", "1000/1")

# JSON text as a client writes it: every escape JSON has, and what UTF-8
# cannot carry (a lone surrogate) or needs four bytes for.
ESCAPES = r'"\" \\ \/ \b \f \n \r \t \u0000 \u001f \u2028 \ud800 \udfff \ud83d\ude00"'
DEEP = "[" * 64 + '"deep"' + "]" * 64


def frames(to: str) -> list[bytes]:
    """The unusual frames, each to the peer id `to`."""
    head = f'{{"event":"%s","to":["{to}"],"data":'
    small = [
        (head % "sur" + r'"\ud800"}').encode(),
        (head % "low" + r'"\udfff"}').encode(),
        (head % "esc" + ESCAPES + "}").encode(),
        (head % "deep" + DEEP + "}").encode(),
    ]
    big = (head % "big" + '"').encode()
    filler = "é\\n" * ((MAX_MESSAGE - len(big) - 2) // 4)
    big += filler.encode() + b"x" * (MAX_MESSAGE - len(big) - len(filler.encode()) - 2) + b'"}'
    assert len(big) == MAX_MESSAGE
    return [*small, big]


@dataclass
class Reader:
    """Reads a client's frames (as bytes) on a thread of its own."""

    client: Client
    frames: list[bytes] = field(default_factory=list)
    closed: str | None = None

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.client.ws.recv(timeout=0.1, decode=False)
            except TimeoutError:
                continue
            except ConnectionClosed as e:
                self.closed = str(e)
                return
            self.frames.append(frame)

    def wait_for(self, count: int, timeout: float = LEASE * 3) -> list[bytes]:
        deadline = time.monotonic() + timeout
        while len(self.frames) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.frames) >= count, (len(self.frames), count, self.closed)
        return self.frames

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def same_ids(frames: list[bytes], ids: dict[str, str]) -> list[bytes]:
    """`frames` with the cluster's peer ids written as the single server's."""
    out = []
    for frame in frames:
        renamed = frame
        for mine, theirs in ids.items():
            renamed = renamed.replace(mine.encode(), theirs.encode())
        out.append(renamed)
    return out


def room(first: Twistd, second: Twistd) -> tuple[Client, Client, Client]:
    """A on `first`, then B and C on `second`; each has seen the joins after it."""
    a = join(first.socket_url("c3"))
    b = join(second.socket_url("c3"))
    assert a.recv()["event"] == "joined"
    c = join(second.socket_url("c3"))
    assert a.recv()["event"] == "joined" and b.recv()["event"] == "joined"
    return a, b, c


def traffic(senders: list[Client], seconds: float) -> int:
    """Each sender sends numbered messages to all at 100/s: how many each sent."""
    count = int(seconds * 100)

    def send(client: Client) -> None:
        for n in range(count):
            client.send("n", "all", {"n": n, "pad": "\u2028é"})
            time.sleep(0.01)

    threads = [threading.Thread(target=send, args=(c,)) for c in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return count


def same_order(
    got: list[bytes], want: list[bytes], senders: tuple[str, str], *, ids: dict[str, str], sent: int
) -> None:
    """
    What one sender sent: nothing lost, nothing twice, nothing out of
    order, and byte for byte what the single server sent.
    """
    mine = [f for f in got if senders[0].encode() in f]
    theirs = [f for f in want if senders[1].encode() in f]
    assert same_ids(mine, ids) == theirs
    numbers = [int(f.split(b'"n":')[1].split(b",")[0]) for f in theirs]
    assert numbers == list(range(sent))


def unharmed(nodes: list[Twistd], readers: list[Reader]) -> None:
    """No peer closed, each got as much as its twin on the single server, the nodes well."""
    for r in readers:
        assert r.closed is None, r.closed
    half = len(readers) // 2
    assert [len(r.frames) for r in readers[:half]] == [len(r.frames) for r in readers[half:]]
    for node in nodes:
        assert get(node.url("/healthz"))[0] == 200
        for sign in ("Traceback", "protocol error", "Unhandled", "stepping down"):
            assert sign not in node.output, node.output


def test_unusual_text_from_a_non_owner_crosses_as_a_single_server_s_bytes(
    cluster: Cluster,
) -> None:
    owner, other = cluster.node(*RATE), cluster.node(*RATE)
    single = cluster.spawn(*RATE)
    a, b, c = room(owner, other)
    a1, b1, c1 = room(single, single)
    ids = {a.peer_id: a1.peer_id, b.peer_id: b1.peer_id, c.peer_id: c1.peer_id}
    peers = [a, b, c, a1, b1, c1]
    readers = {id(p): Reader(p) for p in peers}
    try:
        # B (not on the owner) sends each unusual frame to A (on the owner)
        # and to C (on B's own node); the single server gets the same.
        for sender, targets in ((b, (a, c)), (b1, (a1, c1))):
            for target in targets:
                for frame in frames(target.peer_id):
                    sender.send_raw(frame.decode("utf-8"))
        unusual = len(frames(""))
        for mine, theirs in ((a, a1), (c, c1)):
            got = readers[id(mine)].wait_for(unusual)[:unusual]
            want = readers[id(theirs)].wait_for(unusual)[:unusual]
            assert same_ids(got, ids) == want
        assert b"\\ud800" in readers[id(a)].frames[0]

        # Then ordinary traffic from both nodes for 1.5 leases.
        sent = traffic([a, b, c, a1, b1, c1], LEASE * 1.5)
        for mine, theirs in ((a, a1), (b, b1), (c, c1)):
            skip = 0 if mine is b else unusual
            got = readers[id(mine)].wait_for(skip + 2 * sent)[skip:]
            want = readers[id(theirs)].wait_for(skip + 2 * sent)[skip:]
            assert len(got) == len(want) == 2 * sent
            for sender, sender1 in ((a, a1), (b, b1), (c, c1)):
                if sender is not mine:
                    same_order(got, want, (sender.peer_id, sender1.peer_id), ids=ids, sent=sent)
        time.sleep(0.3)
        unharmed([owner, other], [readers[id(p)] for p in peers])
        # The first owner kept the room all along.
        assert "room c3: owned by this node" in owner.output
        assert "room c3: owned by this node" not in other.output
    finally:
        for r in readers.values():
            r.stop()
        for p in peers:
            p.close()
