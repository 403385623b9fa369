"""
The admin API and webhooks of a cluster: a real Redis and real nodes, the
admin calls sent to a node that does not own the room, every answer checked
against ``docs/admin-openapi.yaml``, and one webhook receiver for two nodes.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

from .support import error, join_strict, joined, left
from .support.admin import FILE_TOKEN, Admin, problem, server_message
from .support.cluster import Cluster
from .support.twistd import Twistd
from .support.webhook_receiver import Receiver

pytestmark = pytest.mark.process

if TYPE_CHECKING:
    from .support import LiveServer

UNKNOWN = "0b1e7a4c-6f1d-4c55-9a55-51c2b5f4e0a1"


@dataclass
class _Node:
    """What `Admin` needs of a server: its URLs."""

    twistd: Twistd

    def http_url(self, path: str) -> str:
        return self.twistd.url(path)


def admin_of(twistd: Twistd) -> Admin:
    """An OpenAPI-checking admin client of one node."""
    return Admin(cast("LiveServer", _Node(twistd)), FILE_TOKEN)


def admin_nodes(cluster: Cluster, token_file: Path, n: int, *args: str) -> list[Twistd]:
    return [cluster.node("--admin-token-file", str(token_file), *args) for _ in range(n)]


def test_a_node_that_does_not_own_the_room_lists_posts_kicks_and_stops(
    cluster: Cluster,
    token_file: Path,
) -> None:
    a, b = admin_nodes(cluster, token_file, 2, "--room", "lobby:8")
    admin = admin_of(b)
    x = join_strict(a.socket_url("lobby"))  # the first join makes node a the owner
    y = join_strict(b.socket_url("lobby"))
    assert x.recv() == joined(y.peer_id)
    on_demand = join_strict(a.socket_url("side"))

    lobby = {"name": "lobby", "peers": [x.peer_id, y.peer_id], "max_peers": 8}
    side = {"name": "side", "peers": [on_demand.peer_id], "max_peers": 4}
    assert admin.rooms() == [lobby, side]
    assert admin_of(a).rooms() == [lobby, side]
    assert admin.call("GET", "/admin/rooms/lobby").json() == lobby
    problem(admin.call("GET", "/admin/rooms/nope"), 404, "No such room", "nope")
    for method, path in [
        ("DELETE", "/admin/rooms/nope"),
        ("DELETE", f"/admin/rooms/nope/peers/{x.peer_id}"),
    ]:
        problem(admin.call(method, path), 404, "No such room", "nope")
    problem(admin.post("nope", {"event": "x", "to": "all"}), 404, "No such room", "nope")
    for room, status, error_ in [("nope", 404, "No such room"), ("lobby", 400, "Invalid JSON")]:
        answer = admin.call("POST", f"/admin/rooms/{room}/messages", raw=b"{not json")
        problem(answer, status, error_)

    # A message from the server, all or nothing, in room order.
    assert admin.post("lobby", {"event": "notice", "data": 1, "to": "all"}).status_code == 202
    for client in (x, y):
        assert client.recv() == server_message("notice", 1, "all")
    refused = admin.post("lobby", {"event": "x", "to": [y.peer_id, UNKNOWN]})
    problem(refused, 404, "No such peer", [UNKNOWN])
    problem(admin.call("DELETE", f"/admin/rooms/lobby/peers/{UNKNOWN}"), 404, "No such peer")
    assert admin.post("lobby", {"event": "only", "to": [x.peer_id]}).status_code == 202
    assert x.recv() == server_message("only", None, [x.peer_id])
    assert y.nothing_within(0.3)

    # A peer on the owner node, kicked through the other node.
    assert admin.call("DELETE", f"/admin/rooms/lobby/peers/{x.peer_id}").status_code == 204
    assert x.closed_with() == 1008
    assert y.recv() == left(x.peer_id)
    assert admin.call("GET", "/admin/rooms/lobby").json()["peers"] == [y.peer_id]
    # And one on the node asked, which is not the owner either.
    v = join_strict(b.socket_url("lobby"))
    assert y.recv() == joined(v.peer_id)
    assert admin.call("DELETE", f"/admin/rooms/lobby/peers/{v.peer_id}").status_code == 204
    assert v.closed_with() == 1008
    assert y.recv() == left(v.peer_id)

    # Stopped: every peer on every node gets "Room closed"; a configured
    # room is then listed as nobody's, with no peers.
    w = join_strict(a.socket_url("lobby"))
    assert y.recv() == joined(w.peer_id)
    assert admin.call("DELETE", "/admin/rooms/lobby").status_code == 204
    for client in (y, w):
        assert client.recv() == error(client.peer_id, "Room closed", "normal")
        assert client.closed_with() == 1000
    assert admin.call("GET", "/admin/rooms/lobby").json() == {**lobby, "peers": []}

    # An on-demand room stopped through the other node is gone.
    assert admin.call("DELETE", "/admin/rooms/side").status_code == 204
    assert on_demand.recv() == error(on_demand.peer_id, "Room closed", "normal")
    assert admin.rooms() == [{**lobby, "peers": []}]
    problem(admin.call("GET", "/admin/rooms/side"), 404, "No such room", "side")
    # The node asked logs each call, as one server does.
    b.kill()
    for line in ("sent 'notice' to all in room lobby", "disconnected peer", "stopped room lobby"):
        assert f"admin: 127.0.0.1 {line}" in b.output, b.output
    assert "Traceback" not in a.output + b.output


def test_a_configured_room_nobody_runs_is_taken_by_the_node_asked(
    cluster: Cluster,
    token_file: Path,
) -> None:
    a, b = admin_nodes(cluster, token_file, 2, "--room", "hall:3", "--no-auto-rooms")
    admin = admin_of(b)
    assert admin.rooms() == [{"name": "hall", "peers": [], "max_peers": 3}]
    problem(admin.call("DELETE", f"/admin/rooms/hall/peers/{UNKNOWN}"), 404, "No such peer")
    # Node b runs the room now; a peer of node a joins it there.
    with join_strict(a.socket_url("hall")) as x:
        assert admin.post("hall", {"event": "hi", "to": "all"}).status_code == 202
        assert x.recv() == server_message("hi", None, "all")
        assert admin_of(a).rooms() == [{"name": "hall", "peers": [x.peer_id], "max_peers": 3}]


def test_an_owner_that_does_not_answer_is_a_503(
    cluster: Cluster,
    token_file: Path,
) -> None:
    a, b = admin_nodes(cluster, token_file, 2, "--room", "lobby")
    admin = admin_of(b)
    with join_strict(a.socket_url("lobby")) as x:
        assert admin.call("GET", "/admin/rooms/lobby").json()["peers"] == [x.peer_id]
        a.process.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            answer = admin.call("GET", "/admin/rooms/lobby")
            took = time.monotonic() - started
        finally:
            a.process.send_signal(signal.SIGCONT)
        problem(answer, 503, "Service Unavailable")
        assert "did not answer" in answer.json()["details"]
        assert answer.headers["Retry-After"] == "1"
        assert 2.5 < took < 10
    # Without Redis, every node says so at once.
    cluster.redis.stop()
    for path in ("/admin/rooms", "/admin/rooms/lobby"):
        answer = admin.call("GET", path)
        problem(answer, 503, "Service Unavailable")
        assert "Redis" in answer.json()["details"]


# Webhooks: each room event once, from whichever node runs the room.


HOOK_SECRET = "hook-s3cret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(HOOK_SECRET.encode()) as receiver:
        yield receiver


def webhook_nodes(cluster: Cluster, receiver: Receiver) -> list[Twistd]:
    """Two nodes with the same webhook URL and secret."""
    hooks = ("--webhook", receiver.url, "--webhook-secret", HOOK_SECRET)
    return [cluster.node(*hooks) for _ in range(2)]


def _events(receiver: Receiver, expected: int, timeout: float = 15.0) -> list[tuple[str, Any]]:
    deadline = time.monotonic() + timeout
    while len(receiver.events) < expected and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # and nothing more comes
    assert not receiver.bad, receiver.bad
    return [(e["event"], e["peer_id"]) for e in receiver.events if e["room"] == "w"]


def test_webhooks_fire_once_per_event_across_nodes(
    cluster: Cluster,
    receiver: Receiver,
) -> None:
    a, b = webhook_nodes(cluster, receiver)
    x = join_strict(a.socket_url("w"))  # node a runs the on-demand room
    y = join_strict(b.socket_url("w"))
    assert x.recv() == joined(y.peer_id)
    z = join_strict(b.socket_url("w"))
    assert x.recv() == joined(z.peer_id) == y.recv()
    y.close()
    assert x.recv() == left(y.peer_id) == z.recv()
    x.close()
    assert z.recv() == left(x.peer_id)
    z.close()
    events = _events(receiver, 8)
    assert "failed" not in a.output + b.output, a.output + b.output
    assert events[0] == ("room_started", None)
    assert events[-1] == ("room_finished", None)
    assert sorted(events[1:-1]) == sorted(
        [("peer_joined", c.peer_id) for c in (x, y, z)]
        + [("peer_left", c.peer_id) for c in (x, y, z)]
    )
    for c in (x, y, z):  # each peer joined before it left
        assert events.index(("peer_joined", c.peer_id)) < events.index(("peer_left", c.peer_id))


def test_a_room_handed_over_on_shutdown_neither_starts_nor_finishes_twice(
    cluster: Cluster,
    receiver: Receiver,
) -> None:
    a, b = webhook_nodes(cluster, receiver)
    x = join_strict(a.socket_url("w"))
    y = join_strict(b.socket_url("w"))
    assert x.recv() == joined(y.peer_id)
    a.process.send_signal(signal.SIGTERM)  # a hands the room over to b
    assert x.recv() == error(x.peer_id, "Room closed", "shutdown")
    assert a.wait_exit(10) == -signal.SIGTERM, a.output
    assert y.recv(timeout=10) == left(x.peer_id)
    with join_strict(b.socket_url("w")) as z:
        assert y.recv(timeout=10) == joined(z.peer_id)
        y.close()
        assert z.recv(timeout=10) == left(y.peer_id)
    events = _events(receiver, 8)
    assert events == [
        ("room_started", None),
        ("peer_joined", x.peer_id),
        ("peer_joined", y.peer_id),
        ("peer_left", x.peer_id),
        ("peer_joined", z.peer_id),
        ("peer_left", y.peer_id),
        ("peer_left", z.peer_id),
        ("room_finished", None),
    ]
