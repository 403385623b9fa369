"""
The admin API (SPEC 5.6) against a live server on a loopback port, with
real WebSocket peers watching what each call does.  Every answer is checked
against ``docs/admin-openapi.yaml`` with openapi-core.

Each scenario is blocking code (``requests`` and the `websockets` client)
run in a thread while the reactor serves.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
import requests
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.python import usage

from twisted_signal import Message, Room, Rooms, Settings
from twisted_signal.admin import OPENAPI_PATH
from twisted_signal.tap import Options, makeService

from .support import (
    TIMEOUT,
    MakeServer,
    RawClient,
    close_all,
    error,
    in_reactor,
    join_quietly,
    join_strict,
    joined,
    left,
    sleep,
    wait_until,
)
from .support.admin import DEFAULT, ROOT, TOKEN, Admin, problem, server_message

pytestmark = pytest.mark.loopback

# Every route and method of the API, with a room and peer filled in.
ROUTES = [
    ("GET", "/admin/rooms"),
    ("GET", "/admin/rooms/lobby"),
    ("DELETE", "/admin/rooms/lobby"),
    ("DELETE", "/admin/rooms/lobby/peers/0b1e7a4c-6f1d-4c55-9a55-51c2b5f4e0a1"),
    ("POST", "/admin/rooms/lobby/messages"),
    ("GET", "/admin/openapi.yaml"),
]


def lobby_rooms() -> Rooms:
    rooms = Rooms(lambda name: Room(name, max_peers=4), max_peers=4)
    rooms.start_room("lobby")
    rooms.start_room("a~b.c", max_peers=None)
    return rooms


def in_thread(fn: Any) -> Deferred[Any]:
    return deferToThread(fn)


# No token configured: no admin API at all.


@pytest_twisted.ensureDeferred
async def test_without_a_token_admin_paths_are_the_plain_404(make_server: MakeServer) -> None:
    server = await make_server(rooms=lobby_rooms())

    def scenario() -> None:
        admin = Admin(server)
        other = admin.call("GET", "/no/such/thing", validate=False, admin_api=False)
        assert other.status_code == 404
        for method, path in [
            *ROUTES,
            ("GET", "/admin/"),
            ("GET", "/admin/rooms/"),
            ("PUT", "/admin/rooms"),
        ]:
            for token in (TOKEN, None):
                answer = admin.call(method, path, token=token, validate=False, admin_api=False)
                assert answer.status_code == 404, (method, path, answer.status_code)
                assert answer.content == other.content, (method, path)
                assert answer.headers["Content-Type"] == other.headers["Content-Type"]
                assert "WWW-Authenticate" not in answer.headers

    await in_thread(scenario)
    assert server.rooms.get("lobby") is not None


# Authentication.


@pytest_twisted.ensureDeferred
async def test_every_path_needs_the_token_and_nothing_happens_without_it(
    make_server: MakeServer,
) -> None:
    server = await make_server(rooms=lobby_rooms(), admin_token=TOKEN)

    def scenario() -> None:
        a, b = join_quietly(server, "lobby", 2)
        admin = Admin(server)
        paths = [
            *ROUTES,
            ("DELETE", f"/admin/rooms/lobby/peers/{a.peer_id}"),
            ("GET", "/admin/nothing/here"),
            ("PUT", "/admin/rooms"),
            ("GET", "/admin/"),
            ("GET", "/admin"),
        ]
        refusals = [
            ({"token": None}, 'Bearer realm="rtcsignal"'),
            ({"token": "not-it"}, 'Bearer realm="rtcsignal", error="invalid_token"'),
            ({"token": TOKEN + "x"}, 'Bearer realm="rtcsignal", error="invalid_token"'),
            ({"token": TOKEN[:-1]}, 'Bearer realm="rtcsignal", error="invalid_token"'),
            (
                {"authorization": f"Basic {TOKEN}"},
                'Bearer realm="rtcsignal", error="invalid_token"',
            ),
            ({"authorization": TOKEN}, 'Bearer realm="rtcsignal", error="invalid_token"'),
            ({"authorization": "Bearer"}, 'Bearer realm="rtcsignal", error="invalid_token"'),
        ]
        for method, path in paths:
            for how, challenge in refusals:
                body = {"event": "x", "to": "all"} if method == "POST" else DEFAULT
                known = (method, path) in ROUTES
                answer = admin.call(method, path, body, validate=known, **how)  # type: ignore[arg-type]
                problem(answer, 401, "Unauthorized")
                assert answer.headers["WWW-Authenticate"] == challenge, (method, path, how)
        # Nobody was told anything, kicked or closed, and the room is there.
        assert a.nothing_within(0.2) and b.nothing_within(0.2)
        assert admin.rooms()[0] == {
            "name": "lobby",
            "peers": [a.peer_id, b.peer_id],
            "max_peers": 4,
        }
        # The scheme is case-insensitive, as HTTP says.
        answer = admin.call("GET", "/admin/rooms", authorization=f"bearer {TOKEN}")
        assert answer.status_code == 200
        close_all(a, b)

    with capturedLogs() as events:
        await in_thread(scenario)
    text = json.dumps([str(e) for e in events])
    assert TOKEN not in text and "s3cret" not in text
    refused = [e for e in events if "admin: refused" in e.get("log_format", "")]
    assert refused and refused[0]["remote"] == "127.0.0.1"


# Reading.


@pytest_twisted.ensureDeferred
async def test_rooms_are_listed_with_their_peers(make_server: MakeServer) -> None:
    server = await make_server(rooms=lobby_rooms(), admin_token=TOKEN)

    def scenario() -> None:
        admin = Admin(server)
        # Rooms started up front are listed while empty.
        assert admin.rooms() == [
            {"name": "lobby", "peers": [], "max_peers": 4},
            {"name": "a~b.c", "peers": [], "max_peers": None},
        ]
        a, b = join_quietly(server, "lobby", 2)
        c = join_strict(server.socket_url("made-on-demand"))
        rooms = admin.rooms()
        assert rooms[0] == {"name": "lobby", "peers": [a.peer_id, b.peer_id], "max_peers": 4}
        assert rooms[2] == {"name": "made-on-demand", "peers": [c.peer_id], "max_peers": 4}
        for path in ("/admin/rooms/lobby", "/admin/rooms/lobby/", "/admin/rooms/%6Cobby"):
            answer = admin.call("GET", path)
            assert answer.status_code == 200, path
            assert answer.json() == rooms[0]
        assert admin.call("GET", "/admin/rooms/").json() == {"rooms": rooms}
        encoded = admin.call("GET", "/admin/rooms/" + quote("a~b.c", safe=""))
        assert encoded.json()["name"] == "a~b.c"
        assert admin.call("GET", "/admin/rooms/a%7Eb.c").json()["name"] == "a~b.c"
        for unknown in ("nope", "Lobby", "lob%2Fby", "%ff", "x" * 100):
            answer = admin.call("GET", f"/admin/rooms/{unknown}")
            problem(answer, 404, "No such room")
        # Unknown paths below /admin/ are a JSON 404 too.
        for path in ("/admin/", "/admin/room", "/admin/rooms/lobby/peers", "/admin/rooms//x"):
            problem(admin.call("GET", path, validate=False), 404, "Not Found", path)
        # HEAD works where GET does.
        head = requests.head(
            server.http_url("/admin/rooms"),
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=TIMEOUT,
        )
        assert head.status_code == 200 and head.content == b""
        close_all(a, b, c)

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_wrong_methods_are_405_with_allow(make_server: MakeServer) -> None:
    server = await make_server(rooms=lobby_rooms(), admin_token=TOKEN)

    def scenario() -> None:
        admin = Admin(server)
        for method, path, allow in [
            ("POST", "/admin/rooms", "GET, HEAD"),
            ("DELETE", "/admin/rooms", "GET, HEAD"),
            ("PUT", "/admin/rooms/lobby", "GET, HEAD, DELETE"),
            ("POST", "/admin/rooms/lobby/", "GET, HEAD, DELETE"),
            ("GET", "/admin/rooms/lobby/peers/x", "DELETE"),
            ("GET", "/admin/rooms/lobby/messages", "POST"),
            ("PATCH", "/admin/rooms/lobby/messages", "POST"),
            ("DELETE", "/admin/openapi.yaml", "GET, HEAD"),
        ]:
            # A wrong method is no operation of the description: openapi-core
            # cannot check these (schemathesis's unsupported_method does).
            answer = admin.call(method, path, validate=False)
            problem(answer, 405, "Method Not Allowed", method)
            assert answer.headers["Allow"] == allow, (method, path)
        assert server.rooms.get("lobby") is not None

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_the_openapi_description_is_served(make_server: MakeServer) -> None:
    server = await make_server(rooms=lobby_rooms(), admin_token=TOKEN)

    def scenario() -> None:
        answer = Admin(server).call("GET", "/admin/openapi.yaml")
        assert answer.status_code == 200
        assert answer.headers["Content-Type"] == "application/yaml"
        assert answer.content == (ROOT / "docs" / "admin-openapi.yaml").read_bytes()

    await in_thread(scenario)
    assert Path(OPENAPI_PATH).read_bytes() == (ROOT / "docs" / "admin-openapi.yaml").read_bytes()


# Disconnecting a peer.


@pytest_twisted.ensureDeferred
async def test_a_disconnected_peer_is_closed_with_1008_and_leaves_at_once(
    make_server: MakeServer,
) -> None:
    server = await make_server(
        rooms=lobby_rooms(), admin_token=TOKEN, settings=Settings(resume_window=30.0)
    )

    def scenario() -> None:
        a, b, c = join_quietly(server, "lobby", 3)
        admin = Admin(server)
        token = a.authenticated["data"]["resume_token"]
        answer = admin.call("DELETE", f"/admin/rooms/lobby/peers/{a.peer_id}")
        assert answer.status_code == 204 and answer.content == b""
        # It has left by the time the answer comes: not held for resume.
        assert admin.rooms()[0]["peers"] == [b.peer_id, c.peer_id]
        assert a.closed_with() == 1008
        assert b.recv() == left(a.peer_id)
        assert c.recv() == left(a.peer_id)
        # Its resume token does not bring it back.
        again = join_strict(server.socket_url("lobby", f"resume={token}"))
        assert again.peer_id != a.peer_id
        assert b.recv() == joined(again.peer_id)
        assert c.recv() == joined(again.peer_id)
        # Unknown peers (and peers of other rooms) are 404; nobody is touched.
        for unknown in ("0b1e7a4c-6f1d-4c55-9a55-51c2b5f4e0a1", a.peer_id, "x"):
            answer = admin.call("DELETE", f"/admin/rooms/lobby/peers/{unknown}")
            problem(answer, 404, "No such peer", [unknown])
        answer = admin.call("DELETE", f"/admin/rooms/a~b.c/peers/{b.peer_id}")
        problem(answer, 404, "No such peer", [b.peer_id])
        answer = admin.call("DELETE", f"/admin/rooms/nope/peers/{b.peer_id}")
        problem(answer, 404, "No such room", "nope")
        assert b.nothing_within(0.2) and c.nothing_within(0.01)
        # A trailing slash is fine.
        answer = admin.call("DELETE", f"/admin/rooms/lobby/peers/{b.peer_id}/")
        assert answer.status_code == 204
        assert b.closed_with() == 1008
        assert c.recv() == left(b.peer_id)
        close_all(c, again)

    with capturedLogs() as events:
        await in_thread(scenario)
    kicked = [e for e in events if "disconnected peer" in e.get("log_format", "")]
    assert len(kicked) == 2 and kicked[0]["room"] == "lobby"


@pytest_twisted.ensureDeferred
async def test_a_peer_held_for_resume_is_disconnected_at_once(make_server: MakeServer) -> None:
    server = await make_server(
        rooms=lobby_rooms(), admin_token=TOKEN, settings=Settings(resume_window=30.0)
    )
    resumption = server.service.resource.factory.resumption

    def scenario() -> None:
        b = join_strict(server.socket_url("lobby"))
        raw = RawClient.connect(server.base, "/socket/lobby/")
        authenticated = raw.recv_json()
        a_id, token = authenticated["data"]["peer_id"], authenticated["data"]["resume_token"]
        assert b.recv() == joined(a_id)
        raw.drop()
        wait_until(lambda: resumption.held == 1)
        admin = Admin(server)
        assert admin.rooms()[0]["peers"] == [b.peer_id, a_id]
        answer = admin.call("DELETE", f"/admin/rooms/lobby/peers/{a_id}")
        assert answer.status_code == 204
        assert b.recv() == left(a_id)
        assert admin.rooms()[0]["peers"] == [b.peer_id]
        assert in_reactor(lambda: resumption.held) == 0
        again = join_strict(server.socket_url("lobby", f"resume={token}"))
        assert again.peer_id != a_id
        close_all(b, again)

    await in_thread(scenario)


# Stopping a room.


@pytest_twisted.ensureDeferred
async def test_a_stopped_room_tells_its_peers_room_closed(make_server: MakeServer) -> None:
    server = await make_server(rooms=lobby_rooms(), admin_token=TOKEN)

    def scenario() -> None:
        a, b = join_quietly(server, "lobby", 2)
        admin = Admin(server)
        answer = admin.call("DELETE", "/admin/rooms/lobby/")
        assert answer.status_code == 204 and answer.content == b""
        for client in (a, b):
            assert client.recv() == error(client.peer_id, "Room closed", "normal")
            assert client.closed_with() == 1000
        assert [room["name"] for room in admin.rooms()] == ["a~b.c"]
        problem(admin.call("GET", "/admin/rooms/lobby"), 404, "No such room", "lobby")
        problem(admin.call("DELETE", "/admin/rooms/lobby"), 404, "No such room", "lobby")
        # An empty room stops too, and encoded names work.
        assert admin.call("DELETE", "/admin/rooms/a%7Eb.c").status_code == 204
        assert admin.rooms() == []

    with capturedLogs() as events:
        await in_thread(scenario)
    stopped = [e for e in events if "stopped room" in e.get("log_format", "")]
    assert [e["room"] for e in stopped] == ["lobby", "a~b.c"]


# Sending a server message.


class SlowRoom(Room):
    """
    Holds every client message for a while in `on_forward`, so a message
    sent meanwhile must wait its turn behind it.
    """

    async def on_forward(self, message: Message) -> Message:
        if message.from_ is not None and message.event == "slow":
            await sleep(0.3)
        return message


@pytest_twisted.ensureDeferred
async def test_a_posted_message_comes_from_null_in_room_order(make_server: MakeServer) -> None:
    server = await make_server(room_class=SlowRoom, admin_token=TOKEN)

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        admin = Admin(server)
        a.send("slow", "all", 1)
        # Frames are handled in order: once "ping" is answered, the slow
        # message is in the room's hands, held by on_forward.
        a.send_raw("ping")
        assert a.recv_raw() == "pong"
        answer = admin.post("r", {"event": "notice", "data": {"n": 2}, "to": "all"})
        assert answer.status_code == 202
        assert answer.json() == server_message("notice", {"n": 2}, "all")
        for client in (b, c):
            assert client.recv()["data"] == 1  # not overtaken by the notice
            assert client.recv() == server_message("notice", {"n": 2}, "all")
        # "all" from the server includes every peer.
        assert a.recv() == server_message("notice", {"n": 2}, "all")
        # A list: each listed peer once, in order; others get nothing.
        to = [c.peer_id, b.peer_id, c.peer_id]
        answer = admin.post("r", {"event": "direct", "to": to, "from": "forged", "x": 1})
        assert answer.status_code == 202
        assert answer.json() == server_message("direct", None, to)
        assert b.recv() == server_message("direct", None, to)
        assert c.recv() == server_message("direct", None, to)
        # Unknown ids: 404 with them, and nothing delivered to anyone.
        unknown = "0b1e7a4c-6f1d-4c55-9a55-51c2b5f4e0a1"
        answer = admin.post("r", {"event": "lost", "to": [b.peer_id, unknown, "y"]})
        problem(answer, 404, "No such peer", [unknown, "y"])
        problem(admin.post("nope", {"event": "x", "to": "all"}), 404, "No such room", "nope")
        sentinel = {"event": "sentinel", "to": [a.peer_id, b.peer_id, c.peer_id]}
        assert admin.post("r", sentinel).status_code == 202
        for client in (a, b, c):
            assert client.recv()["event"] == "sentinel"
        close_all(a, b, c)

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_a_bad_message_body_is_refused_and_nothing_is_sent(
    make_server: MakeServer,
) -> None:
    server = await make_server(
        rooms=lobby_rooms(), admin_token=TOKEN, settings=Settings(max_message_bytes=2048)
    )

    def scenario() -> None:
        a, b = join_quietly(server, "lobby", 2)
        admin = Admin(server)
        path = "/admin/rooms/lobby/messages"
        for raw, description, details in [
            (b"", "Invalid JSON", ""),
            (b"{not json", "Invalid JSON", "{not json"),
            (b"\xff\xfe", "Invalid JSON", "frame is not valid UTF-8"),
            (b"[1, 2]", "Invalid message", "a message must be a JSON object"),
            (b'{"to": "all"}', "Invalid message", "'event' must be a string"),
            (b'{"event": "", "to": "all"}', "Invalid message", DEFAULT),
            (json.dumps({"event": "e" * 65, "to": "all"}).encode(), "Invalid message", DEFAULT),
            (b'{"event": "x"}', "Invalid message", "'to' is missing"),
            (b'{"event": "x", "to": "some"}', "Invalid message", DEFAULT),
            (b'{"event": "x", "to": [1]}', "Invalid message", DEFAULT),
            (json.dumps({"event": "x", "to": ["p"] * 65}).encode(), "Invalid message", DEFAULT),
        ]:
            problem(admin.call("POST", path, raw=raw), 400, description, details)
        big = json.dumps({"event": "x", "to": "all", "data": "d" * 3000}).encode()
        problem(admin.call("POST", path, raw=big), 413, "Payload Too Large")
        # An unknown room is a 404 whatever the body.
        nowhere = "/admin/rooms/nope/messages"
        problem(admin.call("POST", nowhere, raw=b"{not json"), 404, "No such room", "nope")
        for content_type in ("text/plain", "application/x-www-form-urlencoded"):
            answer = admin.call(
                "POST", path, {"event": "x", "to": "all"}, content_type=content_type
            )
            problem(answer, 415, "Unsupported Media Type")
        # A malformed form body is ours to refuse too, not Twisted's.
        answer = admin.call(
            "POST", path, raw=b"--x\r\n", content_type="multipart/form-data", validate=False
        )
        problem(answer, 415, "Unsupported Media Type")
        with_charset = admin.call(
            "POST",
            path,
            {"event": "ok", "to": "all"},
            content_type="application/json; charset=utf-8",
        )
        assert with_charset.status_code == 202
        for client in (a, b):
            assert client.recv() == server_message("ok", None, "all")
        assert a.nothing_within(0.2) and b.nothing_within(0.01)
        close_all(a, b)

    await in_thread(scenario)


# Options and the embedding API.


@pytest.mark.pure
def test_admin_token_options(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--admin-token", TOKEN])
    assert options["admin-token"] == TOKEN
    secret = tmp_path / "admin-token"
    secret.write_text(TOKEN + "\n")
    options = Options()
    options.parseOptions(["--admin-token-file", str(secret)])
    assert options["admin-token"] == TOKEN
    options = Options()
    options.parseOptions([])
    assert options["admin-token"] is None
    for argv, message in [
        (["--admin-token", TOKEN, "--admin-token-file", str(secret)], "not both"),
        (["--admin-token-file", str(tmp_path / "missing")], "--admin-token-file"),
        (["--admin-token", ""], "empty"),
        (["--admin-token", "has space"], "letters, digits"),
        (["--admin-token", "naïve"], "letters, digits"),
    ]:
        with pytest.raises(usage.UsageError, match=message) as raised:
            Options().parseOptions(argv)
        assert TOKEN not in str(raised.value)
    help_text = str(Options())
    assert "--admin-token=" in help_text and "--admin-token-file=" in help_text


@pytest.mark.pure
def test_make_service_mounts_the_admin_api_only_with_a_token() -> None:
    with_token, without = Options(), Options()
    with_token.parseOptions(["--admin-token", TOKEN])
    without.parseOptions([])
    assert makeService(with_token).resource.children[b"admin"] is not None  # type: ignore[attr-defined]
    assert b"admin" not in makeService(without).resource.children  # type: ignore[attr-defined]
