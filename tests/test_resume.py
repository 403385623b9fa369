"""
Resume (SPEC 5.4), end to end: a peer whose connection is lost without a
close frame from its client is held for the resume window and can come back
as itself with ``?resume=<token>``.

Connections are lost the way networks lose them: the client's socket is
shut down (a FIN, no close frame) or reset (SO_LINGER 0), or a hand-written
client stops answering pings.
"""

from __future__ import annotations

import json
import secrets
import string
import time
from typing import Any

import pytest
import pytest_twisted
from autobahn.websocket.types import ConnectionRequest
from twisted.internet.threads import deferToThread

from twisted_signal import AuthData, Message, Peer, PeerContext, Room, Settings

from .support import (
    OP_PING,
    MakeServer,
    RawClient,
    StrictClient,
    close_all,
    join_quietly,
    join_strict,
    joined,
    left,
    relayed,
    wait_until,
)
from .support.resume import held, in_reactor_len, lose, lose_and_wait, quiet, resume, token_of

pytestmark = pytest.mark.loopback

URLSAFE = set(string.ascii_letters + string.digits + "-_")


# The token.


@pytest_twisted.ensureDeferred
async def test_resume_tokens_are_unguessable_and_fresh(make_server: MakeServer) -> None:
    server = await make_server(settings=Settings(resume_window=3.0))

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        tokens = [token_of(x) for x in (a, b, c)]
        for token in tokens:
            # At least 32 characters, safe in a query string, and not
            # derived from anything the client knows.
            assert len(token) >= 32, token
            assert set(token) <= URLSAFE, token
            assert a.peer_id not in token and b.peer_id not in token
        assert len(set(tokens)) == 3
        # A new token on every authenticated, also on resume.
        lose_and_wait(server, a)
        again = resume(server, "r", tokens[0])
        assert again.peer_id == a.peer_id
        fresh = token_of(again)
        assert len(fresh) >= 32 and fresh not in tokens
        lose_and_wait(server, again)
        third = resume(server, "r", fresh)
        assert third.peer_id == a.peer_id
        assert token_of(third) not in [*tokens, fresh]
        close_all(third, b, c)

    await deferToThread(scenario)


# Holding and resuming.


@pytest.mark.parametrize("how", ["drop", "reset"])
@pytest_twisted.ensureDeferred
async def test_a_lost_peer_is_held_and_resumes(make_server: MakeServer, how: str) -> None:
    server = await make_server(settings=Settings(resume_window=3.0))

    def scenario() -> None:
        a, b, c = join_quietly(server, "r", 3)
        a_id, token = a.peer_id, token_of(a)
        lose_and_wait(server, a, how)
        # Messages for the held peer: unicast, "all", and a list with others
        # (each seen by someone before the next is sent, so the room's
        # order is the order sent here).
        b.send("one", [a_id, b.peer_id], 1)
        assert b.recv() == relayed("one", 1, b.peer_id, [a_id, b.peer_id])
        c.send("two", "all", 2)
        assert b.recv() == relayed("two", 2, c.peer_id, "all")
        b.send("three", [a_id, c.peer_id], 3)
        assert c.recv() == relayed("three", 3, b.peer_id, [a_id, c.peer_id])
        # The others see nothing of the loss.
        assert quiet(b, c)
        a2 = resume(server, "r", token)
        data = a2.authenticated["data"]
        assert a2.authenticated["to"] == [a_id]
        assert data["peer_id"] == a_id
        assert sorted(data["peers"]) == sorted([b.peer_id, c.peer_id])
        assert len(data["peers"]) == 2
        assert data["ice_servers"] == []
        assert token_of(a2) != token
        # Then what was queued, in order.
        assert a2.recv() == relayed("one", 1, b.peer_id, [a_id, b.peer_id])
        assert a2.recv() == relayed("two", 2, c.peer_id, "all")
        assert a2.recv() == relayed("three", 3, b.peer_id, [a_id, c.peer_id])
        # No joined, no left, and nothing more for anyone.
        assert quiet(a2, b, c)
        assert in_reactor_len(server) == 0
        # The resumed peer sends and receives as before.
        a2.send("hello", "all", "again")
        assert b.recv() == relayed("hello", "again", a_id, "all")
        assert c.recv() == relayed("hello", "again", a_id, "all")
        b.send("back", [a_id])
        assert a2.recv() == relayed("back", None, b.peer_id, [a_id])
        a2.send("me", [a_id])
        assert a2.recv() == relayed("me", None, a_id, [a_id])
        # And leaves as usual.
        a2.close()
        assert b.recv() == left(a_id)
        assert c.recv() == left(a_id)
        close_all(b, c)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_at_most_256_messages_are_queued(make_server: MakeServer) -> None:
    server = await make_server(settings=Settings(resume_window=3.0, rate=10000, rate_burst=10000))

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        a_id, token = a.peer_id, token_of(a)
        lose_and_wait(server, a)
        for i in range(300):
            b.send("n", [a_id] if i % 2 else "all", i)
        # The room has handled all of them once b's own message comes back.
        b.send("sync", [b.peer_id])
        assert b.recv()["event"] == "sync"
        a2 = resume(server, "r", token)
        assert a2.peer_id == a_id
        got = [a2.recv()["data"] for _ in range(256)]
        assert got == list(range(44, 300))
        assert a2.nothing_within(0.2)
        close_all(a2, b)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_a_peer_can_be_held_and_resumed_again_and_again(make_server: MakeServer) -> None:
    server = await make_server(settings=Settings(resume_window=3.0))

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        a_id = a.peer_id
        current = a
        for i in range(4):
            lose_and_wait(server, current, "drop" if i % 2 else "reset")
            b.send("n", [a_id], i)
            current = resume(server, "r", token_of(current))
            assert current.peer_id == a_id
            assert current.recv() == relayed("n", i, b.peer_id, [a_id])
        assert b.nothing_within(0.2)
        current.close()
        assert b.recv() == left(a_id)
        b.close()

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_on_init_is_not_called_again_and_the_state_is_carried_over(
    make_server: MakeServer,
) -> None:
    inits: list[str] = []
    terminates: list[str] = []
    joins: list[str] = []

    class StatefulPeer(Peer):
        def on_init(self, context: PeerContext, auth: AuthData, options: Any) -> Any:
            inits.append(context.peer_id)
            return {"n": len(inits), "name": auth.credentials.get("name")}

        def parse_request(self, request: ConnectionRequest) -> Any:
            _, metadata, room = super().parse_request(request)
            return {"name": request.params.get("name", [None])[0]}, metadata, room

        def on_receive(self, message: Message, context: PeerContext) -> Message:
            return Message(message.event, self.peer_state, message.from_, message.to)

        def on_terminate(self, context: PeerContext) -> None:
            terminates.append(context.peer_id)

    class CountingRoom(Room):
        def on_join(self, auth: AuthData) -> None:
            joins.append(auth.peer_id)

    server = await make_server(
        peer_class=StatefulPeer, room_class=CountingRoom, settings=Settings(resume_window=3.0)
    )

    def scenario() -> None:
        a = join_strict(server.socket_url("r", "name=ann"))
        b = join_strict(server.socket_url("r", "name=bob"))
        assert a.recv() == joined(b.peer_id)
        a_id = a.peer_id
        a.send("x", [b.peer_id])
        assert b.recv() == relayed("x", {"n": 1, "name": "ann"}, a_id, [b.peer_id])
        lose_and_wait(server, a)
        # The resuming connection gives other credentials: they are ignored,
        # the peer is the one it was.
        a2 = join_strict(server.socket_url("r", f"name=eve&resume={token_of(a)}"))
        assert a2.peer_id == a_id
        a2.send("y", [b.peer_id])
        assert b.recv() == relayed("y", {"n": 1, "name": "ann"}, a_id, [b.peer_id])
        assert in_reactor_len(server) == 0
        assert inits == [a_id, b.peer_id]
        assert joins == [a_id, b.peer_id]
        assert terminates == []
        a2.close()
        assert b.recv() == left(a_id)
        assert terminates == [a_id]
        b.close()

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_the_rooms_handle_reaches_the_resumed_connection(make_server: MakeServer) -> None:
    """
    SPEC 3: ``room.peers`` maps ids to peers; a room callback that talks to
    a peer through it must reach the peer's current connection.
    """

    class ControlRoom(Room):
        def on_forward(self, message: Message) -> Message | None:
            sender = message.from_
            if message.event == "whoami" and sender is not None:
                self.peers[sender].peer.send_to_client(Message("you", sender, None, [sender]))
                return None
            if message.event == "kick":
                self.peers[message.data].peer.stop()
                return None
            return message

    server = await make_server(room_class=ControlRoom, settings=Settings(resume_window=3.0))

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        a_id = a.peer_id
        lose_and_wait(server, a)
        a2 = resume(server, "r", token_of(a))
        a2.send("whoami", "all")
        assert a2.recv(timeout=1.0) == {"event": "you", "data": a_id, "from": None, "to": [a_id]}
        b.send("kick", "all", a_id)
        assert a2.closed_with(timeout=1.0) == 1000
        assert b.recv() == left(a_id)
        b.close()

    await deferToThread(scenario)


# The window passes.


@pytest_twisted.ensureDeferred
async def test_a_held_peer_leaves_when_the_window_passes(make_server: MakeServer) -> None:
    window = 1.0
    events: list[tuple[str, str]] = []

    class RecordingPeer(Peer):
        def on_terminate(self, context: PeerContext) -> None:
            events.append(("peer.on_terminate", context.peer_id))

    class RecordingRoom(Room):
        def on_leave(self, peer_id: str) -> None:
            events.append(("room.on_leave", peer_id))

    server = await make_server(
        peer_class=RecordingPeer,
        room_class=RecordingRoom,
        settings=Settings(resume_window=window),
    )

    def scenario() -> float:
        a, b = join_quietly(server, "r", 2)
        a_id, token = a.peer_id, token_of(a)
        lost_at = time.monotonic()
        lose_and_wait(server, a)
        assert events == []
        b.send("for-a", [a_id])  # queued, never delivered: no error for b
        assert b.recv(timeout=3 * window) == left(a_id)
        elapsed = time.monotonic() - lost_at
        assert events == [("peer.on_terminate", a_id), ("room.on_leave", a_id)]
        # The expired token joins as a new peer.
        a2 = resume(server, "r", token)
        assert a2.peer_id != a_id
        assert a2.authenticated["data"]["peers"] == [b.peer_id]
        assert b.recv() == joined(a2.peer_id)
        assert a2.nothing_within(0.2)
        time.sleep(0.2)
        assert events == [("peer.on_terminate", a_id), ("room.on_leave", a_id)]
        close_all(a2, b)
        return elapsed

    elapsed = await deferToThread(scenario)
    assert window - 0.1 <= elapsed < window + 2.8, elapsed


# Tokens that do not resume.


@pytest_twisted.ensureDeferred
async def test_tokens_that_do_not_resume_join_as_new_peers(make_server: MakeServer) -> None:
    window = 1.5
    server = await make_server(settings=Settings(resume_window=window))

    def new_peer(room: str, token: str, *watchers: StrictClient) -> StrictClient:
        client = resume(server, room, token)
        assert client.authenticated["event"] == "authenticated"
        for watcher in watchers:
            assert watcher.recv() == joined(client.peer_id)
        return client

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        a_id, token = a.peer_id, token_of(a)
        lose_and_wait(server, a)
        a2 = resume(server, "r", token)
        assert a2.peer_id == a_id
        # Used: the token is spent.
        used = new_peer("r", token, b, a2)
        assert used.peer_id not in (a_id, b.peer_id)
        used.close()
        assert b.recv() == left(used.peer_id)
        assert a2.recv() == left(used.peer_id)
        # Unknown, or empty.
        for bogus in (secrets.token_urlsafe(32), "x", ""):
            stranger = new_peer("r", bogus, b, a2)
            assert stranger.peer_id not in (a_id, b.peer_id)
            stranger.close()
            assert b.recv() == left(stranger.peer_id)
            assert a2.recv() == left(stranger.peer_id)
        # Another room's token: a new peer there, and the held peer is not
        # resumed by it (it leaves r when the window passes).
        token2 = token_of(a2)
        lose_and_wait(server, a2)
        elsewhere = resume(server, "other", token2)
        assert elsewhere.peer_id != a_id
        assert elsewhere.authenticated["data"]["peers"] == []
        assert b.recv(timeout=3 * window) == left(a_id)
        # Expired.
        late = new_peer("r", token2, b)
        assert late.peer_id != a_id
        close_all(late, elsewhere, b)

    await deferToThread(scenario)


# What is not held.


@pytest.mark.parametrize("code", [1000, 1001, 4000])
@pytest_twisted.ensureDeferred
async def test_a_client_that_closes_leaves_at_once(make_server: MakeServer, code: int) -> None:
    server = await make_server(settings=Settings(resume_window=5.0))

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        a.ws.close(code=code)
        assert b.recv(timeout=1.0) == left(a.peer_id)
        assert in_reactor_len(server) == 0
        again = resume(server, "r", token_of(a))
        assert again.peer_id != a.peer_id
        close_all(again, b)

    await deferToThread(scenario)


def first_news(client: StrictClient, seconds: float = 3.0) -> str | bytes:
    """
    Keep `client` busy (``ping`` frames, so it is not idle itself) until
    something other than ``pong`` arrives; that frame.
    """
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        client.send_raw("ping")
        frame = client.recv_raw()
        if frame != "pong":
            return frame
        time.sleep(0.1)
    raise AssertionError(f"nothing but pongs for {seconds}s")


@pytest.mark.parametrize("why", ["idle", "stop", "too-big"])
@pytest_twisted.ensureDeferred
async def test_connections_the_server_closes_are_not_held(
    make_server: MakeServer, why: str
) -> None:
    class KickingRoom(Room):
        def on_forward(self, message: Message) -> Message | None:
            if message.event == "kick":
                self.peers[message.data].peer.stop()
                return None
            return message

    idle_timeout = 0.5 if why == "idle" else 900.0
    server = await make_server(
        room_class=KickingRoom,
        settings=Settings(resume_window=5.0, idle_timeout=idle_timeout, max_message_bytes=1024),
    )

    def scenario() -> float:
        a, b = join_quietly(server, "r", 2)
        started = time.monotonic()
        if why == "idle":
            news = first_news(b)
            assert isinstance(news, str) and json.loads(news) == left(a.peer_id), news
            assert a.closed_with() == 1000
        else:
            if why == "stop":
                b.send("kick", "all", a.peer_id)
                expected = 1000
            else:
                a.send("big", "all", "x" * 2000)
                expected = 1009
            assert b.recv(timeout=1.0) == left(a.peer_id)
            assert a.closed_with() == expected
        elapsed = time.monotonic() - started
        assert in_reactor_len(server) == 0
        again = resume(server, "r", token_of(a))
        assert again.peer_id != a.peer_id
        close_all(again, b)
        return elapsed

    elapsed = await deferToThread(scenario)
    assert elapsed < idle_timeout + 3.0, elapsed


@pytest_twisted.ensureDeferred
async def test_a_ping_timeout_is_held(make_server: MakeServer) -> None:
    """
    SPEC 5.4: a ping timeout is a connection lost without a close frame.
    """
    server = await make_server(
        settings=Settings(resume_window=3.0, ping_interval=1, ping_timeout=1)
    )

    def scenario() -> None:
        b = join_strict(server.socket_url("r"))
        raw = RawClient.connect(server.base, "/socket/r/")
        authenticated = raw.recv_json()
        a_id = authenticated["data"]["peer_id"]
        assert b.recv() == joined(a_id)
        # Never answer: the server pings, then drops the connection.
        opcodes = []
        while (frame := raw.recv_frame(timeout=4.0)) is not None:
            opcodes.append(frame[0])
        raw.sock.close()
        assert OP_PING in opcodes, opcodes
        wait_until(lambda: held(server) == 1)
        b.send("for-a", [a_id])
        assert b.nothing_within(0.2)
        a2 = resume(server, "r", authenticated["data"]["resume_token"])
        assert a2.peer_id == a_id
        assert a2.recv() == relayed("for-a", None, b.peer_id, [a_id])
        close_all(a2, b)

    await deferToThread(scenario)


# Holds that end early.


def recording_classes(events: list[tuple[str, str]]) -> tuple[type[Peer], type[Room]]:
    class RecordingPeer(Peer):
        def on_terminate(self, context: PeerContext) -> None:
            events.append(("peer.on_terminate", context.peer_id))

    class RecordingRoom(Room):
        def on_leave(self, peer_id: str) -> None:
            events.append(("room.on_leave", peer_id))

        def on_forward(self, message: Message) -> Message:
            if message.event == "left":
                events.append(("room.left", message.data["peer_id"]))
            return message

    return RecordingPeer, RecordingRoom


@pytest_twisted.ensureDeferred
async def test_stopping_the_room_ends_its_holds(make_server: MakeServer) -> None:
    events: list[tuple[str, str]] = []
    peer_class, room_class = recording_classes(events)
    server = await make_server(
        peer_class=peer_class, room_class=room_class, settings=Settings(resume_window=5.0)
    )
    server.rooms.start_room("lobby", room_class)
    a, b = await deferToThread(join_quietly, server, "lobby", 2)
    a_id, token = a.peer_id, token_of(a)
    await deferToThread(lose_and_wait, server, a)
    await server.rooms.stop_room("lobby")

    def scenario() -> None:
        # b hears that the room closed, and nothing about a.
        assert b.recv()["data"] == {"description": "Room closed", "details": "normal"}
        assert b.closed_with() == 1000
        assert in_reactor_len(server) == 0
        # The token is void: a new peer in a new room of that name.
        again = resume(server, "lobby", token)
        assert again.peer_id != a_id
        assert again.authenticated["data"]["peers"] == []
        again.close()

    await deferToThread(scenario)
    mine = [what for what, peer_id in events if peer_id == a_id]
    assert mine == ["peer.on_terminate", "room.on_leave"]
    assert ("room.left", a_id) not in events


@pytest_twisted.ensureDeferred
async def test_server_shutdown_ends_holds(make_server: MakeServer) -> None:
    events: list[tuple[str, str]] = []
    peer_class, room_class = recording_classes(events)
    server = await make_server(
        peer_class=peer_class, room_class=room_class, settings=Settings(resume_window=5.0)
    )
    a, b = await deferToThread(join_quietly, server, "r", 2)
    a_id = a.peer_id
    await deferToThread(lose_and_wait, server, a)
    started = time.monotonic()
    await server.service.stopService()
    assert time.monotonic() - started < 4.0  # well under the 5 s window
    assert held(server) == 0

    def scenario() -> None:
        # SPEC 1.4 step 5: no left on shutdown, only "Room closed".
        first = b.recv()
        assert first["data"] == {"description": "Room closed", "details": "shutdown"}, first
        assert b.closed_with() == 1001

    await deferToThread(scenario)
    mine = [what for what, peer_id in events if peer_id == a_id]
    assert mine == ["peer.on_terminate", "room.on_leave"]
    assert ("room.left", a_id) not in events


# Resume off.


@pytest_twisted.ensureDeferred
async def test_resume_off(make_server: MakeServer) -> None:
    server = await make_server(settings=Settings(resume_window=0))

    def scenario() -> None:
        a, b = join_quietly(server, "r", 2)
        assert "resume_token" not in a.authenticated["data"]
        assert "resume_token" not in b.authenticated["data"]
        lose(a)
        assert b.recv(timeout=1.0) == left(a.peer_id)
        c = resume(server, "r", secrets.token_urlsafe(32))
        assert c.peer_id != a.peer_id
        assert b.recv() == joined(c.peer_id)
        close_all(b, c)

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_with_tokens_only_the_same_identity_resumes(make_server: MakeServer) -> None:
    import jwt

    from twisted_signal.auth import TokenVerifier

    secret = "a secret long enough for the HS256 algorithm"
    settings = Settings(token_verifier=TokenVerifier.from_secret(secret), resume_window=5)
    server = await make_server(settings=settings)

    def jwt_for(sub: str) -> str:
        return jwt.encode({"room": "demo", "sub": sub}, secret, algorithm="HS256")

    def scenario() -> None:
        alice = join_strict(server.socket_url("demo", f"token={jwt_for('alice')}"))
        bob = join_strict(server.socket_url("demo", f"token={jwt_for('bob')}"))
        assert alice.recv() == joined(bob.peer_id)
        lose_and_wait(server, alice)
        stolen = token_of(alice)
        # Mallory has a valid token of her own and Alice's resume token.
        query = f"token={jwt_for('mallory')}&resume={stolen}"
        mallory = join_strict(server.socket_url("demo", query))
        assert mallory.peer_id != alice.peer_id
        assert bob.recv() == joined(mallory.peer_id)
        # Alice herself still can: the failed attempt did not use the token up.
        query = f"token={jwt_for('alice')}&resume={stolen}"
        back = join_strict(server.socket_url("demo", query))
        assert back.peer_id == alice.peer_id
        assert quiet(bob)
        for client in (bob, mallory, back):
            client.close()

    await deferToThread(scenario)
