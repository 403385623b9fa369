"""
``twistd -n rtcsignal`` as users run it: real processes of the installed
package, on free loopback ports, driven by the `websockets` client.

The package must be installed in the virtualenv (``make test`` does it):
twistd finds the plugin in site-packages, not in the source tree.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from .support import Client, join, open_socket
from .support.twistd import Spawn, Twistd, get, spawn_in

# One worker runs the whole module, so that its module-scoped default server
# is made once, not once per xdist worker.
pytestmark = [pytest.mark.process, pytest.mark.xdist_group("twistd")]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Twistd]:
    """
    One server with the default options, shared by the tests that do not
    change it.
    """
    processes: list[Twistd] = []
    try:
        yield spawn_in(tmp_path_factory.mktemp("server"), processes)()
    finally:
        for twistd in processes:
            twistd.kill()


def refused_join(url: str) -> tuple[dict[str, object], int | None]:
    """
    Open a socket whose join is refused: the error message and the close code.
    """
    ws = open_socket(url)
    try:
        error = json.loads(ws.recv(timeout=5))
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)
        return error, ws.close_code
    finally:
        ws.close()


def handshake_status(url: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        open_socket(url)
    return info.value.response.status_code


# (a) The default server relays signaling and serves its pages.


def test_pages_and_health(server: Twistd) -> None:
    status, content_type, body = get(server.url("/"))
    assert status == 200, body
    assert content_type.startswith("text/html")
    status, content_type, _ = get(server.url("/demo"))
    assert status == 200
    assert content_type.startswith("text/html")
    status, content_type, body = get(server.url("/healthz"))
    assert status == 200
    assert content_type == "application/json"
    assert json.loads(body)["status"] == "ok"
    assert get(server.url("/no/such/thing"))[0] == 404


def test_two_peers_exchange_offer_answer_and_candidate(server: Twistd) -> None:
    with join(server.socket_url("demo")) as a, join(server.socket_url("demo")) as b:
        assert a.authenticated["data"]["peers"] == []
        assert b.authenticated["data"]["peers"] == [a.peer_id]
        assert a.recv() == {
            "event": "joined",
            "data": {"peer_id": b.peer_id},
            "from": b.peer_id,
            "to": "all",
        }

        b.send("offer", [a.peer_id], {"type": "offer", "sdp": "v=0 b"})
        assert a.recv() == {
            "event": "offer",
            "data": {"type": "offer", "sdp": "v=0 b"},
            "from": b.peer_id,
            "to": [a.peer_id],
        }
        a.send("answer", [b.peer_id], {"type": "answer", "sdp": "v=0 a"}, **{"from": "forged"})
        assert b.recv() == {
            "event": "answer",
            "data": {"type": "answer", "sdp": "v=0 a"},
            "from": a.peer_id,
            "to": [b.peer_id],
        }
        candidate = {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"}
        b.send("candidate", "all", candidate)
        assert a.recv() == {
            "event": "candidate",
            "data": candidate,
            "from": b.peer_id,
            "to": "all",
        }
        assert b.nothing_within(0.2)
        assert json.loads(get(server.url("/healthz"))[2])["peers"] == 2


# (b) User classes named on the command line.

EXTENSION = '''
from twisted_signal import Peer, Refused, Room


class NamedRoom(Room):
    """Peers must say who they are."""

    def on_join(self, auth):
        if not auth.credentials.get("name"):
            raise Refused("name_required")


class QueryPeer(Peer):
    """Credentials are the query string's parameters."""

    def parse_request(self, request):
        credentials, metadata, room = super().parse_request(request)
        params = request.params
        return {key: values[0] for key, values in params.items()}, metadata, room
'''


def test_room_and_peer_classes_from_a_user_module(spawn: Spawn, tmp_path: Path) -> None:
    extensions = tmp_path / "ext"
    extensions.mkdir()
    (extensions / "myrtc.py").write_text(EXTENSION)
    server = spawn(
        "--room-class", "myrtc.NamedRoom", "--peer-class", "myrtc.QueryPeer", pythonpath=extensions
    )

    error, code = refused_join(server.socket_url("demo"))
    assert error["event"] == "error"
    assert error["data"] == {"description": "Could not join room", "details": "name_required"}
    assert code == 1000

    with join(server.socket_url("demo", "name=alice")) as alice:
        assert alice.authenticated["data"]["peers"] == []
        error, _ = refused_join(server.socket_url("demo", "other=1"))
        assert error["data"] == {"description": "Could not join room", "details": "name_required"}
        with join(server.socket_url("demo", "name=bob")) as bob:
            assert alice.recv()["data"] == {"peer_id": bob.peer_id}


# (c) Only the rooms given with --room.


def test_no_auto_rooms_serves_only_the_given_rooms(spawn: Spawn) -> None:
    server = spawn("--no-auto-rooms", "--room", "lobby:2")
    assert handshake_status(server.socket_url("other")) == 404

    with join(server.socket_url("lobby")) as a, join(server.socket_url("lobby")) as b:
        assert b.authenticated["data"]["peers"] == [a.peer_id]
        error, code = refused_join(server.socket_url("lobby"))
        assert error["data"] == {"description": "Could not join room", "details": "room_is_full"}
        assert code == 1000
        assert a.recv()["event"] == "joined"
        assert a.nothing_within(0.2)
        assert b.nothing_within(0.0)

    # The room stays when it empties, and admits peers again.
    joined: list[Client] = []
    deadline = time.monotonic() + 5
    while len(joined) < 2 and time.monotonic() < deadline:
        ws = open_socket(server.socket_url("lobby"))
        message = json.loads(ws.recv(timeout=5))
        if message["event"] == "authenticated":
            joined.append(Client(ws, message))
        else:
            # The leaving peers' connections may not have been noticed yet.
            ws.close()
            time.sleep(0.05)
    for client in joined:
        client.close()
    assert len(joined) == 2


# (d) A port that is in use.


def test_busy_port_is_one_line_and_a_failure(server: Twistd, spawn: Spawn) -> None:
    second = spawn(port=server.port, ready=False)
    code = second.wait_exit()
    assert code != 0, second.output
    output = second.stdout + second.stderr
    assert "cannot listen" in output
    assert f"127.0.0.1:{server.port}" in output
    assert "Traceback" not in output
    # The first server is untouched.
    assert get(server.url("/healthz"))[0] == 200


# (e) Bad options.


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--max-peers", "0"], "--max-peers"),
        (["--frob"], "--frob"),
        (["--endpoint", "bogus:1"], "bogus:1"),
    ],
)
def test_bad_option_is_one_line(spawn: Spawn, args: list[str], mentions: str) -> None:
    twistd = spawn(*args, ready=False)
    assert twistd.wait_exit() != 0, twistd.output
    output = (twistd.stdout + twistd.stderr).strip()
    assert len(output.splitlines()) == 1, output
    assert "twistd rtcsignal:" in output
    assert mentions in output
    assert "Traceback" not in output


# (f) SIGTERM.


def test_sigterm_closes_peers_with_1001_and_exits_by_that_signal(spawn: Spawn) -> None:
    server = spawn()
    with join(server.socket_url("demo")) as a, join(server.socket_url("demo")) as b:
        assert a.recv()["event"] == "joined"
        server.process.send_signal(signal.SIGTERM)
        for client in (a, b):
            assert client.recv() == {
                "event": "error",
                "data": {"description": "Room closed", "details": "shutdown"},
                "from": None,
                "to": [client.peer_id],
            }
            with pytest.raises(ConnectionClosed):
                client.recv()
            assert client.ws.close_code == 1001
        # twistd re-raises the signal that stopped it once it has shut down
        # cleanly, as init systems expect.
        assert server.wait_exit() == -signal.SIGTERM, server.output
    assert "Traceback" not in server.output
