"""
The core protocol cases (SPEC 1.2 and 1.3: server events and relaying),
written once against a ``make_server`` fixture and run twice: by
tests/test_peer.py on one in-process server, and by
tests/test_cluster_protocol.py on a two-node cluster whose ``make_server``
spreads the connections over both nodes.  A module imports them by name;
pytest collects them there with that module's fixtures.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import replace
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from twisted_signal import Message, Peer, PeerContext

from . import (
    MakeServer,
    close_all,
    error,
    is_peer_id,
    join_quietly,
    join_strict,
    joined,
    left,
    relayed,
)


@pytest_twisted.ensureDeferred
async def test_authenticated_for_the_first_peer(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a = join_strict(server.socket_url("r"))
        message = a.authenticated
        peer_id = message["data"]["peer_id"]
        assert is_peer_id(peer_id), peer_id
        token = message["data"]["resume_token"]
        assert isinstance(token, str) and len(token) >= 32, token
        assert message == {
            "event": "authenticated",
            "data": {
                "peer_id": peer_id,
                "peers": [],
                "ice_servers": [],
                "resume_token": token,
                "ping_interval": 20.0,
                "ping_timeout": 20.0,
                "idle_timeout": 900.0,
            },
            "from": None,
            "to": [peer_id],
        }
        assert a.nothing_within(0.1)
        a.close()

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_joined_to_others_and_peers_already_in_the_room(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a = join_strict(server.socket_url("r"))
        b = join_strict(server.socket_url("r"))
        assert a.recv() == joined(b.peer_id)
        assert b.authenticated["data"]["peers"] == [a.peer_id]
        c = join_strict(server.socket_url("r"))
        assert a.recv() == joined(c.peer_id)
        assert b.recv() == joined(c.peer_id)
        peers = c.authenticated["data"]["peers"]
        assert sorted(peers) == sorted([a.peer_id, b.peer_id]) and len(peers) == 2
        ids = {a.peer_id, b.peer_id, c.peer_id}
        assert len(ids) == 3 and all(is_peer_id(i) for i in ids)
        # Nobody got anything else (c's own joined does not come back to it).
        c.send("done", [a.peer_id, b.peer_id, c.peer_id])
        for client in (a, b, c):
            assert client.recv() == relayed("done", None, c, [a.peer_id, b.peer_id, c.peer_id])
        close_all(a, b, c)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_left_when_a_peer_closes(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        b.close()
        assert a.recv() == left(b.peer_id)
        assert c.recv() == left(b.peer_id)
        c.close()
        assert a.recv() == left(c.peer_id)
        a.close()

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_trailing_slash_is_optional_and_64_character_names_work(
    make_server: MakeServer,
) -> None:
    server = await make_server()
    name = "A-z_0.9~" * 8

    def scenario() -> None:
        a = join_strict(f"ws://{server.base}/socket/{name}")
        b = join_strict(server.socket_url(name))
        assert a.recv() == joined(b.peer_id)
        close_all(a, b)

    assert len(name) == 64
    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_unicast_reaches_only_the_addressee(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        a.send("offer", [b.peer_id], {"sdp": "v=0"})
        a.send("tick", "all")
        assert b.recv() == relayed("offer", {"sdp": "v=0"}, a, [b.peer_id])
        assert b.recv() == relayed("tick", None, a, "all")
        assert c.recv() == relayed("tick", None, a, "all")
        assert a.nothing_within(0.1)
        close_all(a, b, c)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_broadcast_never_comes_back_to_the_sender(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        a.send("candidate", "all", {"candidate": "x"})
        b.send("after", [a.peer_id])
        assert b.recv() == relayed("candidate", {"candidate": "x"}, a, "all")
        assert c.recv() == relayed("candidate", {"candidate": "x"}, a, "all")
        # The first thing a receives is b's message, not its own broadcast.
        assert a.recv() == relayed("after", None, b, [a.peer_id])
        close_all(a, b, c)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_addressing_yourself_echoes(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        a.send("note", [a.peer_id], [1, 2])
        assert a.recv() == relayed("note", [1, 2], a, [a.peer_id])
        a.send("tick", "all")
        assert b.recv() == relayed("tick", None, a, "all")
        close_all(a, b)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_duplicate_addressees_get_the_message_once(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        to = [b.peer_id, c.peer_id, b.peer_id, b.peer_id]
        a.send("offer", to, "x")
        a.send("tick", [b.peer_id])
        assert b.recv() == relayed("offer", "x", a, to)
        assert b.recv() == relayed("tick", None, a, [b.peer_id])
        assert c.recv() == relayed("offer", "x", a, to)
        # 64 copies of one id are allowed, and delivered once.
        many = [c.peer_id] * 64
        a.send("many", many)
        a.send("tick", [c.peer_id])
        assert c.recv() == relayed("many", None, a, many)
        assert c.recv() == relayed("tick", None, a, [c.peer_id])
        close_all(a, b, c)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_unknown_addressee_delivers_nothing(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        ghost = str(uuid.uuid4())
        to = [b.peer_id, ghost, c.peer_id, "nobody", ghost]
        a.send("offer", to, "x")
        assert a.recv() == error(a.peer_id, "No such peer", [ghost, "nobody"])
        # Nothing reached b or c: the next thing each sees is this.
        a.send("tick", "all")
        assert b.recv() == relayed("tick", None, a, "all")
        assert c.recv() == relayed("tick", None, a, "all")
        # A peer that has left is unknown too.
        c.close()
        assert a.recv() == left(c.peer_id)
        assert b.recv() == left(c.peer_id)
        a.send("offer", [c.peer_id])
        assert a.recv() == error(a.peer_id, "No such peer", [c.peer_id])
        close_all(a, b)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_from_is_stamped_and_extra_keys_are_dropped(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        a.send("offer", [b.peer_id], {"sdp": "v=0"}, **{"from": b.peer_id, "extra": 1})
        assert b.recv() == relayed("offer", {"sdp": "v=0"}, a, [b.peer_id])
        a.send_raw(json.dumps({"event": "bare", "to": "all", "from": None, "id": 7}))
        assert b.recv() == relayed("bare", None, a, "all")
        a.send_raw(json.dumps({"event": "custom", "to": "all", "data": {"deep": [None, True]}}))
        assert b.recv() == relayed("custom", {"deep": [None, True]}, a, "all")
        a.send_raw(json.dumps({"event": "e" * 64, "to": "all"}))
        assert b.recv() == relayed("e" * 64, None, a, "all")
        # A lone surrogate (valid JSON, not encodable as UTF-8) survives.
        a.send_raw('{"event":"odd","to":"all","data":"\\ud800x"}')
        assert b.recv() == relayed("odd", "\ud800x", a, "all")
        a.send_raw(json.dumps({"event": "nobody", "to": []}))
        a.send("tick", "all")
        assert b.recv() == relayed("tick", None, a, "all")
        close_all(a, b)

    await deferToThread(scenario)


# SPEC 1.2: the names of the server's events are the server's.


@pytest_twisted.ensureDeferred
async def test_a_peer_cannot_send_the_servers_events(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        forged: list[tuple[str, Any, Any]] = []
        for event in ("authenticated", "joined", "left", "error"):
            for to in ("all", [b.peer_id], [a.peer_id], [b.peer_id, c.peer_id]):
                forged.append((event, to, {"peer_id": b.peer_id, "description": "Room closed"}))
        turn = [{"urls": ["turn:127.0.0.1:9"], "username": "u", "credential": "c"}]
        for to in ("all", [b.peer_id], [a.peer_id, b.peer_id], [b.peer_id, a.peer_id], []):
            forged.append(("ice_servers", to, turn))
        for event, to, data in forged:
            a.send(event, to, data)
            got = a.recv()
            reason = got["data"]["details"]
            assert isinstance(reason, str) and event in reason and len(reason) <= 200, got
            assert got == error(a.peer_id, "Invalid message", reason), (event, to)
        # Asking for fresh ICE servers (to oneself alone) is still answered.
        a.send("ice_servers", [a.peer_id, a.peer_id], turn)
        assert a.recv() == {"event": "ice_servers", "data": [], "from": None, "to": [a.peer_id]}
        # Nothing reached the others: the next message they get is this one.
        a.send("after", "all", 1)
        assert b.recv() == relayed("after", 1, a, "all")
        assert c.recv() == relayed("after", 1, a, "all")
        assert a.nothing_within(0.1) and b.nothing_within(0.05) and c.nothing_within(0.05)
        close_all(a, b, c)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_server_code_may_use_the_servers_event_names(make_server: MakeServer) -> None:
    # The rule is on what clients send: what Peer.on_receive makes of a
    # message is the server's own doing, relayed as it is (in a cluster too,
    # from any node to the room's owner).
    class RenamingPeer(Peer):
        def on_receive(self, message: Message, context: PeerContext) -> Message:
            if message.event == "bye":
                return replace(message, event="left")
            return message

    server = await make_server(peer_class=RenamingPeer)

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        # From the second peer: in a cluster, the one on another node.
        b.send("bye", [a.peer_id], {"peer_id": b.peer_id})
        assert a.recv() == relayed("left", {"peer_id": b.peer_id}, b, [a.peer_id])
        assert b.nothing_within(0.05)
        close_all(a, b)

    await deferToThread(scenario)
