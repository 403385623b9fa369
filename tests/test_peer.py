"""
End-to-end tests of the wire protocol (SPEC 1.2 to 1.4) over real loopback
sockets, with the independent `websockets` client.

Each client scenario is blocking code run in a thread (`deferToThread`) while
the reactor serves.  "Nothing was delivered" is checked with a sentinel where
possible: a later message must be the next one to arrive.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import pytest_twisted
from autobahn.websocket.protocol import PreparedMessage
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from twisted_signal import (
    AuthData,
    BadRequest,
    Message,
    Peer,
    PeerContext,
    Refused,
    Room,
    Settings,
    Unauthorized,
)
from twisted_signal.peer import room_from_path

from .support import (
    MakeServer,
    StrictClient,
    close_all,
    error,
    handshake_status,
    http_get,
    in_reactor,
    is_peer_id,
    join_quietly,
    join_strict,
    joined,
    left,
    open_socket,
    relayed,
    sleep,
    wait_until,
)

# The core protocol cases, shared with test_cluster_protocol.
from .support.protocol_cases import (
    test_a_peer_cannot_send_the_servers_events,
    test_addressing_yourself_echoes,
    test_authenticated_for_the_first_peer,
    test_broadcast_never_comes_back_to_the_sender,
    test_duplicate_addressees_get_the_message_once,
    test_from_is_stamped_and_extra_keys_are_dropped,
    test_joined_to_others_and_peers_already_in_the_room,
    test_left_when_a_peer_closes,
    test_server_code_may_use_the_servers_event_names,
    test_trailing_slash_is_optional_and_64_character_names_work,
    test_unicast_reaches_only_the_addressee,
    test_unknown_addressee_delivers_nothing,
)

pytestmark = pytest.mark.loopback

__all__ = [
    "test_a_peer_cannot_send_the_servers_events",
    "test_addressing_yourself_echoes",
    "test_authenticated_for_the_first_peer",
    "test_broadcast_never_comes_back_to_the_sender",
    "test_duplicate_addressees_get_the_message_once",
    "test_from_is_stamped_and_extra_keys_are_dropped",
    "test_joined_to_others_and_peers_already_in_the_room",
    "test_left_when_a_peer_closes",
    "test_server_code_may_use_the_servers_event_names",
    "test_trailing_slash_is_optional_and_64_character_names_work",
    "test_unicast_reaches_only_the_addressee",
    "test_unknown_addressee_delivers_nothing",
]

# Helpers.


def varying_delays() -> Iterator[float]:
    """Small, uneven delays, so async callbacks finish out of step."""
    return itertools.cycle([0.004, 0.0, 0.002, 0.0005, 0.003, 0.001])


def answer(style: str, produce: Callable[[], Any]) -> Any:
    """
    What a user callback returns in `style`: ``produce()`` itself
    (``"sync"``), a Deferred that fires with it later (``"deferred"``), or a
    coroutine (``"async"``).  Exceptions from `produce` propagate the same way.
    """
    if style == "sync":
        return produce()
    if style == "deferred":
        return sleep(0.01).addCallback(lambda _: produce())

    async def later() -> Any:
        await sleep(0.01)
        return produce()

    return later()


STYLES = ["sync", "async", "deferred"]


# SPEC 1.3: server events.


@pytest_twisted.ensureDeferred
async def test_joined_is_written_before_the_newcomers_authenticated(
    make_server: MakeServer,
) -> None:
    writes: list[tuple[str, str]] = []

    class RecordingPeer(Peer):
        def sendPreparedMessage(self, preparedMsg: PreparedMessage) -> None:
            frame = preparedMsg.payloadHybi
            if b"{" in frame:
                writes.append((self.peer_id, json.loads(frame[frame.index(b"{") :])["event"]))
            super().sendPreparedMessage(preparedMsg)

    class SlowJoinedRoom(Room):
        async def on_forward(self, message: Message) -> Message:
            # A slow on_forward for joined must hold back authenticated.
            if message.event == "joined":
                await sleep(0.1)
            return message

    server = await make_server(peer_class=RecordingPeer, room_class=SlowJoinedRoom)

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        assert writes == [
            (a.peer_id, "authenticated"),
            (a.peer_id, "joined"),
            (b.peer_id, "authenticated"),
        ]
        close_all(a, b)

    await deferToThread(scenario)


# SPEC 1.2: relaying.


@pytest_twisted.ensureDeferred
async def test_ping_text_frame_gets_pong(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        a.send_raw("ping")
        assert a.recv_raw() == "pong"
        a.send_raw("ping")
        a.send_raw("ping")
        assert a.recv_raw() == "pong"
        assert a.recv_raw() == "pong"
        # The ping is not relayed.
        a.send("tick", "all")
        assert b.recv() == relayed("tick", None, a, "all")
        close_all(a, b)

    await deferToThread(scenario)


# SPEC 1.2: bad input.

_VALID_REASON = object()
_LONG_UNICODE = "é" * 300

BAD_FRAMES = [
    pytest.param("not json", "Invalid JSON", "not json", id="not-json"),
    pytest.param("", "Invalid JSON", "", id="empty"),
    pytest.param("{", "Invalid JSON", "{", id="truncated"),
    pytest.param("PING", "Invalid JSON", "PING", id="PING"),
    pytest.param("x" * 1000, "Invalid JSON", "x" * 256, id="long"),
    pytest.param(_LONG_UNICODE, "Invalid JSON", _LONG_UNICODE[:256], id="long-unicode"),
    pytest.param("[" * 20000, "Invalid JSON", "[" * 256, id="deeply-nested"),
    pytest.param(
        '{"event":"x","to":"all","data":NaN}',
        "Invalid JSON",
        '{"event":"x","to":"all","data":NaN}',
        id="nan",
    ),
    pytest.param(
        '{"event":"x","to":"all"} trailing',
        "Invalid JSON",
        '{"event":"x","to":"all"} trailing',
        id="trailing-garbage",
    ),
    pytest.param("[1, 2]", "Invalid message", _VALID_REASON, id="array"),
    pytest.param('"ping"', "Invalid message", _VALID_REASON, id="json-string"),
    pytest.param("5", "Invalid message", _VALID_REASON, id="json-number"),
    pytest.param("null", "Invalid message", _VALID_REASON, id="json-null"),
    pytest.param('{"to":"all"}', "Invalid message", _VALID_REASON, id="no-event"),
    pytest.param('{"event":5,"to":"all"}', "Invalid message", _VALID_REASON, id="event-5"),
    pytest.param('{"event":null,"to":"all"}', "Invalid message", _VALID_REASON, id="event-null"),
    pytest.param('{"event":"","to":"all"}', "Invalid message", _VALID_REASON, id="event-empty"),
    pytest.param(
        json.dumps({"event": "e" * 65, "to": "all"}),
        "Invalid message",
        _VALID_REASON,
        id="event-65",
    ),
    pytest.param('{"event":"x"}', "Invalid message", _VALID_REASON, id="no-to"),
    pytest.param('{"event":"x","to":null}', "Invalid message", _VALID_REASON, id="to-null"),
    pytest.param('{"event":"x","to":5}', "Invalid message", _VALID_REASON, id="to-5"),
    pytest.param('{"event":"x","to":{"a":1}}', "Invalid message", _VALID_REASON, id="to-object"),
    pytest.param('{"event":"x","to":[1]}', "Invalid message", _VALID_REASON, id="to-[1]"),
    pytest.param('{"event":"x","to":"bob"}', "Invalid message", _VALID_REASON, id="to-bob"),
    pytest.param('{"event":"x","to":"ALL"}', "Invalid message", _VALID_REASON, id="to-ALL"),
    pytest.param(
        '{"event":"x","to":[["a"]]}', "Invalid message", _VALID_REASON, id="to-nested-list"
    ),
    pytest.param(
        json.dumps({"event": "x", "to": ["p"] * 65}),
        "Invalid message",
        _VALID_REASON,
        id="to-65-ids",
    ),
    pytest.param(b"\x00\x01", "Invalid message", "binary frames are not supported", id="binary"),
    pytest.param(
        b'{"event":"x","to":"all"}',
        "Invalid message",
        "binary frames are not supported",
        id="binary-json",
    ),
    pytest.param(b"ping", "Invalid message", "binary frames are not supported", id="binary-ping"),
]


@pytest.mark.parametrize(("frame", "description", "details"), BAD_FRAMES)
@pytest_twisted.ensureDeferred
async def test_bad_input_is_answered_and_harms_nobody(
    make_server: MakeServer, frame: str | bytes, description: str, details: object
) -> None:
    server = await make_server()

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        a.send_raw(frame)
        got = a.recv()
        if details is _VALID_REASON:
            reason = got["data"]["details"]
            assert isinstance(reason, str) and 0 < len(reason) <= 200, got
            assert got == error(a.peer_id, description, reason)
        else:
            assert got == error(a.peer_id, description, details)
        # The sender's connection is still usable, both ways ...
        a.send("after", "all", 1)
        b.send("back", [a.peer_id], 2)
        assert a.recv() == relayed("back", 2, b, [a.peer_id])
        a.send_raw("ping")
        assert a.recv_raw() == "pong"
        # ... nothing reached the others, and the room still relays.
        assert b.recv() == relayed("after", 1, a, "all")
        assert c.recv() == relayed("after", 1, a, "all")
        c.send("still", [a.peer_id, b.peer_id])
        assert a.recv() == relayed("still", None, c, [a.peer_id, b.peer_id])
        assert b.recv() == relayed("still", None, c, [a.peer_id, b.peer_id])
        # Peers can still join and leave.
        d = join_strict(server.socket_url("r"))
        for client in (a, b, c):
            assert client.recv() == joined(d.peer_id)
        d.close()
        for client in (a, b, c):
            assert client.recv() == left(d.peer_id)
        close_all(a, b, c)

    await deferToThread(scenario)


# SPEC 1.2: the size limit.


def frame_of(size: int, event: str = "big") -> str:
    """A valid ASCII message to "all" of exactly `size` bytes."""
    head = json.dumps({"event": event, "to": "all", "data": ""})[:-2]
    tail = '"}'
    frame = head + "x" * (size - len(head) - len(tail)) + tail
    assert len(frame.encode()) == size
    return frame


@pytest.mark.parametrize(
    ("settings", "limit"),
    [
        pytest.param(None, 65536, id="default-64KiB"),
        pytest.param(Settings(max_message_bytes=1024), 1024, id="1KiB"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_message_size_limit(
    make_server: MakeServer, settings: Settings | None, limit: int
) -> None:
    server = await make_server(settings=settings)

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        # Exactly at the limit: accepted, and relayed although the relayed
        # message is larger than the limit; also when sent in fragments.
        at_limit = frame_of(limit)
        a.send_raw(at_limit)
        assert b.recv() == relayed("big", json.loads(at_limit)["data"], a, "all")
        third = limit // 3
        a.ws.send(iter([at_limit[:third], at_limit[third : 2 * third], at_limit[2 * third :]]))
        assert b.recv() == relayed("big", json.loads(at_limit)["data"], a, "all")
        a.close()
        assert b.recv() == left(a.peer_id)
        # One byte over, however it is sent: the connection is closed with
        # 1009 and the others see the peer leave.
        over = frame_of(limit + 1)
        half = len(over) // 2
        ways: list[Callable[[StrictClient], None]] = [
            lambda client: client.send_raw(over),
            lambda client: client.send_raw(b"\x00" * (limit + 1)),
            lambda client: client.ws.send(iter([over[:half], over[half:]])),
        ]
        for way in ways:
            c = join_strict(server.socket_url("r"))
            assert b.recv() == joined(c.peer_id)
            # The server may close while the client is still sending.
            with contextlib.suppress(ConnectionClosed):
                way(c)
            assert c.closed_with() == 1009
            assert b.recv() == left(c.peer_id)
        b.send("me", [b.peer_id])
        assert b.recv() == relayed("me", None, b, [b.peer_id])
        b.close()

    await deferToThread(scenario)


# SPEC 1.4 step 2: the handshake.


@pytest.mark.parametrize(
    "path",
    [
        "/socket/bad%20room/",
        "/socket/bad%20room",
        "/socket/",
        "/socket/" + "a" * 65 + "/",
        "/socket/a%2Fb/",
        "/socket/%FF/",
        "/socket/%C3%A9/",
        "/socket/a*b/",
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_room_name_is_400(make_server: MakeServer, path: str) -> None:
    server = await make_server()
    status = await deferToThread(handshake_status, f"ws://{server.base}{path}")
    assert status == 400
    assert len(server.rooms) == 0


def configurable_peer(style: str, parse: str = "ok", init: str = "ok") -> type[Peer]:
    """
    A peer whose `parse_request` and `on_init` answer in `style`:
    ``parse`` is "ok", "bad" (BadRequest) or "boom" (RuntimeError);
    ``init`` is "ok", "unauthorized" or "boom".
    """

    class ConfiguredPeer(Peer):
        def parse_request(self, request: ConnectionRequest) -> Any:
            def produce() -> Any:
                if parse == "bad":
                    raise BadRequest("no")
                if parse == "boom":
                    raise RuntimeError("parse_request exploded")
                name = request.params.get("name", ["anonymous"])[0]
                return {"name": name}, {"path": request.path}, room_from_path(request.path)

            return answer(style, produce)

        def on_init(self, context: PeerContext, auth: AuthData, options: Any) -> Any:
            def produce() -> Any:
                if init == "unauthorized":
                    raise Unauthorized("no")
                if init == "boom":
                    raise RuntimeError("on_init exploded")
                return {"display": auth.credentials["name"].upper(), "room": context.room}

            return answer(style, produce)

        def on_receive(self, message: Message, context: PeerContext) -> Any:
            return replace(message, data={"said": message.data, "state": self.peer_state})

    return ConfiguredPeer


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(
    ("parse", "init", "auto_rooms", "path", "status"),
    [
        pytest.param("bad", "unauthorized", False, "/socket/missing/", 400, id="bad-request"),
        pytest.param("ok", "unauthorized", True, "/socket/bad%20room/", 400, id="bad-room-name"),
        pytest.param("ok", "unauthorized", False, "/socket/missing/", 401, id="auth-before-404"),
        pytest.param("ok", "unauthorized", True, "/socket/r/", 401, id="unauthorized"),
        pytest.param("ok", "ok", False, "/socket/missing/", 404, id="no-such-room"),
        pytest.param("boom", "ok", True, "/socket/r/", 500, id="parse-request-error"),
        pytest.param("ok", "boom", True, "/socket/r/", 500, id="on-init-error"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_handshake_answers(
    make_server: MakeServer,
    *,
    style: str,
    parse: str,
    init: str,
    auto_rooms: bool,
    path: str,
    status: int,
) -> None:
    server = await make_server(
        peer_class=configurable_peer(style, parse, init), auto_rooms=auto_rooms
    )
    with capturedLogs() as events:
        got = await deferToThread(handshake_status, f"ws://{server.base}{path}")
    assert got == status
    assert len(server.rooms) == 0
    failures = [e for e in events if e.get("log_failure") is not None]
    if status == 500:
        assert any(f["log_failure"].check(RuntimeError) for f in failures), events
        assert any("exploded" in str(f["log_failure"].value) for f in failures)
    else:
        assert failures == []


@pytest.mark.parametrize("style", STYLES)
@pytest_twisted.ensureDeferred
async def test_parse_request_and_on_init_results_are_used(
    make_server: MakeServer, style: str
) -> None:
    auths: list[AuthData] = []

    class RecordingRoom(Room):
        def on_join(self, auth: AuthData) -> None:
            auths.append(auth)

    server = await make_server(peer_class=configurable_peer(style), room_class=RecordingRoom)

    def scenario() -> None:
        a = join_strict(server.socket_url("r", "name=ann"))
        b = join_strict(server.socket_url("r", "name=bob"))
        assert a.recv() == joined(b.peer_id)
        a.send("hi", "all", 1)
        assert b.recv() == relayed(
            "hi", {"said": 1, "state": {"display": "ANN", "room": "r"}}, a, "all"
        )
        assert [(x.peer_id, x.credentials, x.metadata) for x in auths] == [
            (a.peer_id, {"name": "ann"}, {"path": "/socket/r/"}),
            (b.peer_id, {"name": "bob"}, {"path": "/socket/r/"}),
        ]
        assert "ann" not in repr(auths[0])
        close_all(a, b)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_started_room_accepts_peers_when_auto_rooms_are_off(
    make_server: MakeServer,
) -> None:
    server = await make_server(auto_rooms=False)
    server.rooms.start_room("lobby")

    def scenario() -> None:
        assert handshake_status(server.socket_url("other")) == 404
        a, b = join_quietly(server, "lobby", 2)
        close_all(a, b)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_on_terminate_once_for_a_peer_refused_with_404(make_server: MakeServer) -> None:
    terminated: list[str] = []

    class RecordingPeer(Peer):
        def on_terminate(self, context: PeerContext) -> None:
            terminated.append(context.peer_id)

    server = await make_server(peer_class=RecordingPeer, auto_rooms=False)
    assert await deferToThread(handshake_status, server.socket_url("missing")) == 404
    await sleep(0.2)
    # SPEC 1.4 step 4: exactly once per peer (on_init had accepted it).
    assert len(terminated) == 1, terminated


@pytest_twisted.ensureDeferred
async def test_client_gone_during_a_slow_on_init(make_server: MakeServer) -> None:
    started: list[str] = []
    terminated: list[str] = []
    join_attempts: list[str] = []

    class SlowInitPeer(Peer):
        async def on_init(self, context: PeerContext, auth: AuthData, options: Any) -> None:
            started.append(context.peer_id)
            await sleep(0.3)

        def on_terminate(self, context: PeerContext) -> None:
            terminated.append(context.peer_id)

    class RecordingRoom(Room):
        def on_join(self, auth: AuthData) -> None:
            join_attempts.append(auth.peer_id)

    server = await make_server(peer_class=SlowInitPeer, room_class=RecordingRoom)

    def scenario() -> None:
        with pytest.raises(TimeoutError):
            connect(server.socket_url("r"), open_timeout=0.1)
        time.sleep(0.5)

    await deferToThread(scenario)
    assert len(started) == 1
    assert terminated == started
    assert join_attempts == []
    assert len(server.rooms) == 0


@pytest_twisted.ensureDeferred
async def test_messages_sent_before_authenticated_wait_for_the_join(
    make_server: MakeServer,
) -> None:
    class SlowJoinRoom(Room):
        async def on_join(self, auth: AuthData) -> None:
            await sleep(0.2)

    server = await make_server(room_class=SlowJoinRoom)

    def scenario() -> None:
        a = join_strict(server.socket_url("r"))
        b = StrictClient(open_socket(server.socket_url("r")))
        b.send("early", "all", 1)
        b.authenticated = b.recv()
        assert b.authenticated["event"] == "authenticated"
        assert b.authenticated["data"]["peers"] == [a.peer_id]
        assert a.recv() == joined(b.peer_id)
        assert a.recv() == relayed("early", 1, b, "all")
        close_all(a, b)

    await deferToThread(scenario)


# SPEC 1.4 step 3: refusals.


@pytest.mark.parametrize("style", STYLES)
@pytest_twisted.ensureDeferred
async def test_room_on_join_refusal(make_server: MakeServer, style: str) -> None:
    attempts: list[str] = []

    class PickyRoom(Room):
        def on_join(self, auth: AuthData) -> Any:
            attempts.append(auth.peer_id)

            def produce() -> None:
                if len(attempts) == 2:
                    raise Refused("room_is_full")

            return answer(style, produce)

    server = await make_server(room_class=PickyRoom, max_peers=None)

    def scenario() -> None:
        a = join_strict(server.socket_url("r"))
        refused = StrictClient(open_socket(server.socket_url("r")))
        message = refused.recv()
        refused_id = message["to"][0]
        assert refused_id == attempts[1]
        assert message == error(refused_id, "Could not join room", "room_is_full")
        assert refused.closed_with() == 1000
        # a saw nothing of it: the next thing it gets is c's joined.
        c = join_strict(server.socket_url("r"))
        assert a.recv() == joined(c.peer_id)
        assert c.authenticated["data"]["peers"] == [a.peer_id]
        close_all(a, c)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_max_peers_cap(make_server: MakeServer) -> None:
    server = await make_server(max_peers=2)

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        c = StrictClient(open_socket(server.socket_url("r")))
        message = c.recv()
        assert message == error(message["to"][0], "Could not join room", "room_is_full")
        assert is_peer_id(message["to"][0])
        assert c.closed_with() == 1000
        b.close()
        assert a.recv() == left(b.peer_id)
        # There is room again.
        d = join_strict(server.socket_url("r"))
        assert d.authenticated["data"]["peers"] == [a.peer_id]
        assert a.recv() == joined(d.peer_id)
        close_all(a, d)

    await deferToThread(scenario)


# SPEC 1.4 step 4: leaving.


def _end_connection(client: StrictClient, how: str) -> None:
    sock = client.ws.socket
    if how == "clean":
        client.close()
    elif how == "drop":
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    else:  # "reset": a TCP RST, no FIN and no close frame
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
        sock.close()


@pytest.mark.parametrize("how", ["clean", "drop", "reset"])
@pytest_twisted.ensureDeferred
async def test_on_terminate_then_on_leave_then_left_exactly_once(
    make_server: MakeServer, how: str
) -> None:
    events: list[tuple[str, str]] = []

    class RecordingPeer(Peer):
        async def on_terminate(self, context: PeerContext) -> None:
            events.append(("peer.on_terminate", context.peer_id))
            await sleep(0.02)
            events.append(("peer.on_terminate done", context.peer_id))

    class RecordingRoom(Room):
        async def on_leave(self, peer_id: str) -> None:
            assert peer_id not in self.peers
            events.append(("room.on_leave", peer_id))
            await sleep(0.02)
            events.append(("room.on_leave done", peer_id))

        def on_forward(self, message: Message) -> Message:
            if message.event == "left":
                events.append(("room.on_forward left", message.data["peer_id"]))
            return message

    # Resume off: a lost connection then leaves at once (SPEC 5.4 holds it
    # otherwise; tests/test_resume.py covers that).
    server = await make_server(
        peer_class=RecordingPeer, room_class=RecordingRoom, settings=Settings(resume_window=0)
    )

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        _end_connection(b, how)
        assert a.recv() == left(b.peer_id)
        assert c.recv() == left(b.peer_id)
        assert events == [
            ("peer.on_terminate", b.peer_id),
            ("peer.on_terminate done", b.peer_id),
            ("room.on_leave", b.peer_id),
            ("room.on_leave done", b.peer_id),
            ("room.on_forward left", b.peer_id),
        ]
        c.close()
        assert a.recv() == left(c.peer_id)
        a.close()
        wait_until(lambda: len(server.rooms) == 0)
        time.sleep(0.1)
        for peer in (a, b, c):
            mine = [what for what, peer_id in events if peer_id == peer.peer_id]
            assert mine == [
                "peer.on_terminate",
                "peer.on_terminate done",
                "room.on_leave",
                "room.on_leave done",
                "room.on_forward left",
            ]
        assert len(events) == 15

    await deferToThread(scenario)


# SPEC 1.4 step 5: rooms stopping.


@pytest_twisted.ensureDeferred
async def test_stopping_a_room(make_server: MakeServer) -> None:
    calls: list[str] = []

    class RecordingRoom(Room):
        def on_leave(self, peer_id: str) -> None:
            calls.append("on_leave")

        def on_forward(self, message: Message) -> Message:
            calls.append(f"on_forward {message.event}")
            return message

        def on_terminate(self) -> None:
            calls.append("on_terminate")

    server = await make_server(room_class=RecordingRoom)
    a, b = await deferToThread(join_quietly, server, "r", 2)
    other = await deferToThread(join_strict, server.socket_url("other"))
    del calls[:]
    stopped = server.rooms.stop_room("r")

    def scenario() -> None:
        for client in (a, b):
            assert client.recv() == error(client.peer_id, "Room closed", "normal")
            assert client.closed_with() == 1000

    await deferToThread(scenario)
    await stopped
    assert calls == ["on_leave", "on_leave", "on_terminate"]
    assert "r" not in server.rooms
    assert "other" in server.rooms

    def afterwards() -> None:
        # The other room is untouched, and the name can be used again.
        other.send("me", [other.peer_id])
        assert other.recv()["event"] == "me"
        c = join_strict(server.socket_url("r"))
        assert c.authenticated["data"]["peers"] == []
        close_all(c, other)

    await deferToThread(afterwards)


@pytest_twisted.ensureDeferred
async def test_server_shutdown(make_server: MakeServer) -> None:
    server = await make_server()
    server.rooms.start_room("lobby")
    a, b = await deferToThread(join_quietly, server, "lobby", 2)
    c = await deferToThread(join_strict, server.socket_url("demand"))
    status, body = await deferToThread(http_get, server.http_url("/healthz"))
    assert status == 200
    assert json.loads(body)["status"] == "ok"

    stopped = server.service.stopService()

    def scenario() -> None:
        for client in (a, b, c):
            assert client.recv() == error(client.peer_id, "Room closed", "shutdown")
            assert client.closed_with() == 1001

    await deferToThread(scenario)
    await stopped
    # Still listening (LiveServer.stop stops that): health is red.
    status, body = await deferToThread(http_get, server.http_url("/healthz"))
    assert status == 503
    assert json.loads(body)["status"] != "ok"


@pytest_twisted.ensureDeferred
async def test_no_peer_is_admitted_once_shutdown_has_begun(make_server: MakeServer) -> None:
    """
    SPEC 2: /healthz is 200 "while the server accepts peers", and 503 once
    shutdown has begun; a peer arriving then must not join a room (it may be
    refused at the upgrade, or get "Could not join room" and a close).
    """
    server = await make_server()
    server.rooms.start_room("lobby")
    await server.service.stopService()

    def scenario() -> None:
        for name in ("lobby", "fresh"):
            try:
                ws = open_socket(server.socket_url(name))
            except InvalidStatus as e:
                assert e.response.status_code == 503
                continue
            client = StrictClient(ws)
            message = client.recv()
            assert message["event"] == "error", (name, message)
            assert message["data"]["description"] == "Could not join room"
            assert client.closed_with() == 1000

    await deferToThread(scenario)
    assert all(not room.peers for room in server.rooms)


# SPEC 1.4 step 6: idle timeout.


@pytest_twisted.ensureDeferred
async def test_idle_timeout(make_server: MakeServer) -> None:
    server = await make_server(settings=Settings(idle_timeout=0.5))

    def silent() -> float:
        a = join_strict(server.socket_url("quiet"))
        started = time.monotonic()
        assert a.closed_with(timeout=3) == 1000
        return time.monotonic() - started

    def chatty() -> None:
        b = join_strict(server.socket_url("busy"))
        started = time.monotonic()
        while time.monotonic() - started < 1.2:
            b.send_raw("ping")
            assert b.recv_raw() == "pong"
            time.sleep(0.2)
        b.send("still-here", [b.peer_id])
        assert b.recv()["event"] == "still-here"
        b.close()

    silent_done = deferToThread(silent)
    chatty_done = deferToThread(chatty)
    elapsed = await silent_done
    await chatty_done
    assert 0.4 <= elapsed < 4.0


# SPEC 1.2: one total order per room.


@pytest_twisted.ensureDeferred
async def test_total_order_with_an_async_on_forward(make_server: MakeServer) -> None:
    delays = varying_delays()

    class SlowRoom(Room):
        async def on_forward(self, message: Message) -> Message:
            await sleep(next(delays))
            return message

    server = await make_server(room_class=SlowRoom)
    rounds = 12

    def scenario() -> None:
        clients = join_quietly(server, "r", 4)
        senders, listener = clients[:3], clients[3]
        index = {client.peer_id: k for k, client in enumerate(senders)}
        for i in range(rounds):
            for k, sender in enumerate(senders):
                sender.send("n", "all", {"k": k, "i": i})

        def view(client: StrictClient, count: int) -> list[tuple[int, int]]:
            seen = []
            for _ in range(count):
                message = client.recv()
                assert message["event"] == "n", message
                assert index[message["from"]] == message["data"]["k"]
                seen.append((message["data"]["k"], message["data"]["i"]))
            return seen

        total = view(listener, 3 * rounds)
        for k in range(3):
            # Each sender's messages in the order sent.
            assert [i for kk, i in total if kk == k] == list(range(rounds))
        for k, sender in enumerate(senders):
            # Everybody sees the same order.
            assert view(sender, 2 * rounds) == [m for m in total if m[0] != k]
        assert listener.nothing_within(0.05)
        close_all(*clients)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_slow_on_forward_holds_back_later_messages(make_server: MakeServer) -> None:
    class SlowRoom(Room):
        async def on_forward(self, message: Message) -> Message:
            if message.event == "slow":
                await sleep(0.2)
            return message

    server = await make_server(room_class=SlowRoom)

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        a.send("slow", [b.peer_id])
        a.send("fast", [b.peer_id])
        time.sleep(0.05)  # the server has a's messages before c's
        c.send("other", [b.peer_id])
        assert [b.recv()["event"] for _ in range(3)] == ["slow", "fast", "other"]
        close_all(a, b, c)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_slow_on_receive_keeps_each_senders_order(make_server: MakeServer) -> None:
    delays = varying_delays()

    class SlowPeer(Peer):
        async def on_receive(self, message: Message, context: PeerContext) -> Message:
            await sleep(next(delays))
            return message

    server = await make_server(peer_class=SlowPeer)
    count = 15

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        for i in range(count):
            a.send("n", [c.peer_id], i)
            b.send("n", [c.peer_id], i)
        seen: dict[str, list[int]] = {a.peer_id: [], b.peer_id: []}
        for _ in range(2 * count):
            message = c.recv()
            seen[message["from"]].append(message["data"])
        assert seen == {a.peer_id: list(range(count)), b.peer_id: list(range(count))}
        close_all(a, b, c)

    await deferToThread(scenario)


# SPEC 3: callbacks that change messages or act on peers.


@pytest_twisted.ensureDeferred
async def test_on_receive_and_on_forward_change_or_drop_messages(
    make_server: MakeServer,
) -> None:
    class FilteringPeer(Peer):
        async def on_receive(self, message: Message, context: PeerContext) -> Message | None:
            if message.event == "drop":
                return None
            if message.event == "shout":
                return replace(message, data=str(message.data).upper())
            return message

    class FilteringRoom(Room):
        def on_forward(self, message: Message) -> Message | None:
            if message.event == "censor":
                return None
            if message.event == "stamp":
                return replace(message, data={"stamped": message.data})
            return message

    server = await make_server(peer_class=FilteringPeer, room_class=FilteringRoom)

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        for event in ("drop", "shout", "censor", "stamp", "end"):
            a.send(event, [b.peer_id], "hi")
        assert b.recv() == relayed("shout", "HI", a, [b.peer_id])
        assert b.recv() == relayed("stamp", {"stamped": "hi"}, a, [b.peer_id])
        assert b.recv() == relayed("end", "hi", a, [b.peer_id])
        assert a.nothing_within(0.05)
        close_all(a, b)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_send_to_client_and_stop_from_a_room_callback(make_server: MakeServer) -> None:
    class ControlRoom(Room):
        def on_forward(self, message: Message) -> Message | None:
            sender = message.from_
            if message.event == "whoami" and sender is not None:
                peer = self.peers[sender].peer
                peer.send_to_client(
                    Message(
                        "you",
                        {"peer_id": peer.peer_id, "is_peer": isinstance(peer, Peer)},
                        None,
                        [sender],
                    )
                )
                return None
            if message.event == "kick":
                self.peers[message.data].peer.stop()
                return None
            return message

    server = await make_server(room_class=ControlRoom)

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        a.send("whoami", "all")
        assert a.recv() == {
            "event": "you",
            "data": {"peer_id": a.peer_id, "is_peer": True},
            "from": None,
            "to": [a.peer_id],
        }
        a.send("tick", "all")
        assert b.recv() == relayed("tick", None, a, "all")
        assert c.recv() == relayed("tick", None, a, "all")
        a.send("kick", "all", b.peer_id)
        assert b.closed_with() == 1000
        assert a.recv() == left(b.peer_id)
        assert c.recv() == left(b.peer_id)
        close_all(a, c)

    await deferToThread(scenario)


# SPEC 3: rooms made on demand go, started rooms stay.


@pytest_twisted.ensureDeferred
async def test_on_demand_rooms_go_started_rooms_stay(make_server: MakeServer) -> None:
    server = await make_server()
    lobby = server.rooms.start_room("lobby")

    def scenario() -> None:
        a, b = join_quietly(server, "demand", 2)
        lobbyist = join_strict(server.socket_url("lobby"))
        assert in_reactor(lambda: sorted(room.name for room in server.rooms)) == [
            "demand",
            "lobby",
        ]
        a.close()
        assert b.recv() == left(a.peer_id)
        assert in_reactor(lambda: "demand" in server.rooms)
        b.close()
        lobbyist.close()
        wait_until(lambda: "demand" not in server.rooms)
        wait_until(lambda: not lobby.peers)
        time.sleep(0.05)
        assert in_reactor(lambda: list(server.rooms)) == [lobby]
        assert len(server.rooms) == 1
        # The started room still works.
        c = join_strict(server.socket_url("lobby"))
        assert c.authenticated["data"]["peers"] == []
        c.close()

    await deferToThread(scenario)
    await deferToThread(wait_until, lambda: len(server.rooms) == 1 and not lobby.peers)
