"""
The peerjs front (SPEC 5.10) on the wire: plain WebSocket and HTTP on real
loopback sockets.  Each test of the protocol runs against this server's
front and against peerjs-server 1.0.2 itself, so the tests are known to
describe peerjs-server; where the front deliberately goes beyond it, the
test is marked `beyond` and is a strict xfail against peerjs-server.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import jwt
import pytest
import pytest_twisted
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed

from twisted_signal import Room, Rooms, Settings, SignalingService
from twisted_signal.auth import TokenVerifier
from twisted_signal.events import Events
from twisted_signal.peerjs import (
    ERROR_INVALID_KEY,
    ERROR_INVALID_PARAMETERS,
    PeerjsOptions,
)

from .support import handshake_status, in_reactor
from .support.peerjs import EXPIRE_SECONDS, PATH, PeerjsServer, Target

pytestmark = pytest.mark.process

PUBLIC = {
    "name": "PeerJS Server",
    "description": "A server side element to broker connections between PeerJS clients.",
    "website": "https://peerjs.com/",
}


async def start_front(**kwargs: Any) -> tuple[SignalingService, Any, Target]:
    """
    This server with the peerjs front at `PATH` on a loopback port;
    `kwargs` go to `SignalingService` (and ``options`` to `PeerjsOptions`).
    """
    from twisted.internet import reactor

    options = PeerjsOptions(path=PATH, expire_timeout=EXPIRE_SECONDS, **kwargs.pop("options", {}))
    rooms = Rooms(Room, max_peers=4)
    service = SignalingService(rooms, peerjs=options, **kwargs)
    service.startService()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(service.site)
    target = Target("rtcsignal", f"127.0.0.1:{port.getHost().port}")
    return service, port, target


@pytest_twisted.async_yield_fixture(params=["rtcsignal", "peerjs-server"])
async def target(request: pytest.FixtureRequest) -> AsyncIterator[Target]:
    if request.param == "rtcsignal":
        service, port, found = await start_front()
        yield found
        await port.stopListening()
        await service.stopService()
    else:
        server = PeerjsServer("--expire_timeout", str(int(EXPIRE_SECONDS * 1000)))
        yield Target("peerjs-server", server.base)
        server.stop()


def beyond(request: pytest.FixtureRequest, target: Target, why: str) -> None:
    """
    The test checks something this front does and peerjs-server 1.0.2 does
    not: against peerjs-server it must fail.
    """
    if target.is_peerjs_server:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"beyond peerjs-server: {why}"))


async def in_thread(scenario: Callable[[], Any]) -> Any:
    return await deferToThread(scenario)


def ids(n: int = 1) -> list[str]:
    return [f"p{uuid.uuid4().hex[:10]}" for _ in range(n)]


# HTTP.


@pytest_twisted.ensureDeferred
async def test_get_path_answers_peerjs_servers_json(target: Target) -> None:
    def scenario() -> None:
        status, body = target.get()
        assert status == 200
        assert json.loads(body) == PUBLIC

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_id_is_a_fresh_id_as_text(target: Target) -> None:
    def scenario() -> None:
        first, second = target.get("peerjs/id"), target.get("peerjs/id")
        assert first[0] == second[0] == 200
        assert first[1] != second[1]
        uuid.UUID(first[1].decode())  # a UUID, as peerjs-server makes them

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_peers_is_401_without_discovery(target: Target) -> None:
    def scenario() -> None:
        assert target.get("peerjs/peers")[0] == 401

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_id_checks_the_key(target: Target, request: pytest.FixtureRequest) -> None:
    beyond(request, target, "/id answers any key")

    def scenario() -> None:
        assert target.get("wrong/id")[0] == 401

    await in_thread(scenario)


# The WebSocket.


@pytest_twisted.ensureDeferred
async def test_open_comes_first(target: Target) -> None:
    (a,) = ids()

    def scenario() -> None:
        client = target.open(a)
        assert client.recv() == {"type": "OPEN"}
        client.close()

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("query", ["key=peerjs&token=t", "key=peerjs&id=x", "id=x&token=t"])
async def test_a_missing_parameter_is_an_error_then_close(target: Target, query: str) -> None:
    def scenario() -> None:
        from .support.peerjs import PJ

        client = PJ(target.ws_url(query))
        assert client.recv() == {"type": "ERROR", "payload": {"msg": ERROR_INVALID_PARAMETERS}}
        client.closed()

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("bad_id", ["a%0Ab", "-a", "a%20b%20", "x" * 300, "%C3%A9"])
async def test_an_id_the_peerjs_client_would_refuse_is_an_error(
    target: Target, bad_id: str, request: pytest.FixtureRequest
) -> None:
    beyond(request, target, "any id is taken, newlines included")

    def scenario() -> None:
        client = target.open(bad_id)
        assert client.recv(1.0) == {"type": "ERROR", "payload": {"msg": ERROR_INVALID_PARAMETERS}}
        client.closed()

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_a_wrong_key_is_an_error_then_close(target: Target) -> None:
    (a,) = ids()

    def scenario() -> None:
        client = target.open(a, key="wrong")
        assert client.recv() == {"type": "ERROR", "payload": {"msg": ERROR_INVALID_KEY}}
        client.closed()

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_an_id_held_with_another_token_is_taken(target: Target) -> None:
    a, b = ids(2)

    def scenario() -> None:
        holder, other = target.join(a, "one"), target.join(b)
        taker = target.open(a, "two")
        assert taker.recv() == {"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}
        taker.closed()
        # The holder keeps its id.
        other.send(type="OFFER", dst=a, payload={"sdp": 1})
        assert holder.recv() == {"type": "OFFER", "src": b, "dst": a, "payload": {"sdp": 1}}

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_each_type_is_relayed_as_exactly_type_src_dst_payload(target: Target) -> None:
    a, b = ids(2)

    def scenario() -> None:
        alice, bob = target.join(a), target.join(b)
        for type_ in ("OFFER", "ANSWER", "CANDIDATE", "LEAVE", "EXPIRE"):
            payload = {"type": "data", "connectionId": "dc_1", "n": [1, "é", None]}
            alice.send(type=type_, dst=b, src="forged", payload=payload, extra=True)
            assert bob.recv() == {"type": type_, "src": a, "dst": b, "payload": payload}
        bob.send(type="ANSWER", dst=a, payload="x")
        assert alice.recv() == {"type": "ANSWER", "src": b, "dst": a, "payload": "x"}

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_heartbeats_and_unknown_messages_are_not_relayed(target: Target) -> None:
    a, b = ids(2)

    def scenario() -> None:
        alice, bob = target.join(a), target.join(b)
        alice.send(type="HEARTBEAT", dst=b, payload=1)
        alice.send(type="HELLO", dst=b, payload=1)
        alice.ws.send("[1, 2]")
        alice.send(type="OFFER", payload=1)  # no dst
        assert bob.nothing_within(0.3)
        alice.send(type="OFFER", dst=b, payload=2)
        assert bob.recv() == {"type": "OFFER", "src": a, "dst": b, "payload": 2}

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_a_frame_that_is_not_json_is_ignored(
    target: Target, request: pytest.FixtureRequest
) -> None:
    beyond(request, target, "after a frame that is not JSON, the socket's frames are ignored")
    a, b = ids(2)

    def scenario() -> None:
        alice, bob = target.join(a), target.join(b)
        alice.ws.send("not json")
        alice.ws.send(b"\x00binary")
        alice.send(type="OFFER", dst=b, payload=2)
        assert bob.recv(1.0) == {"type": "OFFER", "src": a, "dst": b, "payload": 2}

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_messages_to_an_id_not_connected_are_delivered_after_its_open(
    target: Target,
) -> None:
    a, c = ids(2)

    def scenario() -> None:
        alice = target.join(a)
        alice.send(type="OFFER", dst=c, payload=1)
        alice.send(type="CANDIDATE", dst=c, payload=2)
        alice.send(type="LEAVE", dst=c)  # not kept
        time.sleep(0.2)
        carol = target.open(c)
        assert carol.recv() == {"type": "OPEN"}
        assert carol.recv() == {"type": "OFFER", "src": a, "dst": c, "payload": 1}
        assert carol.recv() == {"type": "CANDIDATE", "src": a, "dst": c, "payload": 2}
        assert carol.nothing_within(0.2)
        # Delivered: no EXPIRE comes back.
        assert alice.nothing_within(EXPIRE_SECONDS + 1.2)

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_undelivered_messages_expire_with_one_expire_to_the_sender(target: Target) -> None:
    a, b, c = ids(3)

    def scenario() -> None:
        alice, bob = target.join(a), target.join(b)
        alice.send(type="OFFER", dst=c, payload=1)
        alice.send(type="CANDIDATE", dst=c, payload=2)
        bob.send(type="OFFER", dst=c, payload=3)
        started = time.monotonic()
        assert alice.recv(EXPIRE_SECONDS + 3) == {"type": "EXPIRE", "src": c, "dst": a}
        assert time.monotonic() - started >= EXPIRE_SECONDS * 0.9
        assert bob.recv(2) == {"type": "EXPIRE", "src": c, "dst": b}
        assert alice.nothing_within(1.2)
        # Expired messages are gone.
        carol = target.join(c)
        assert carol.nothing_within(0.3)

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_a_closed_peers_id_is_free_and_messages_to_it_wait(target: Target) -> None:
    a, b = ids(2)

    def scenario() -> None:
        alice, bob = target.join(a, "one"), target.join(b)
        alice.close()
        time.sleep(0.3)
        bob.send(type="OFFER", dst=a, payload=1)
        again = target.open(a, "two")
        assert again.recv() == {"type": "OPEN"}
        assert again.recv() == {"type": "OFFER", "src": b, "dst": a, "payload": 1}

    await in_thread(scenario)


@pytest_twisted.ensureDeferred
async def test_a_reconnect_with_the_same_token_gets_open_while_the_old_socket_is_held(
    target: Target, request: pytest.FixtureRequest
) -> None:
    beyond(request, target, "no OPEN for a reconnect while the old socket is open (peerjs#1289)")
    a, b = ids(2)

    def scenario() -> None:
        old, bob = target.join(a, "same"), target.join(b)
        new = target.open(a, "same")
        assert new.recv(1.0) == {"type": "OPEN"}
        # The new socket is the peer now.
        bob.send(type="OFFER", dst=a, payload=1)
        assert new.recv() == {"type": "OFFER", "src": b, "dst": a, "payload": 1}
        old.close()

    await in_thread(scenario)


# Beyond peerjs-server, on this front only.


@pytest_twisted.ensureDeferred
async def test_peers_lists_the_ids_with_discovery() -> None:
    service, port, target = await start_front(options={"discovery": True})
    a, b = ids(2)

    def scenario() -> None:
        target.join(a), target.join(b)
        status, body = target.get("peerjs/peers")
        assert status == 200
        assert sorted(json.loads(body)) == sorted([a, b])
        assert target.get("wrong/peers")[0] == 401

    try:
        await in_thread(scenario)
    finally:
        await port.stopListening()
        await service.stopService()


def _token(**claims: Any) -> str:
    return jwt.encode({"room": "peerjs", **claims}, SECRET, algorithm="HS256")


SECRET = "peerjs-test-secret-of-at-least-32-bytes"


@pytest_twisted.ensureDeferred
async def test_with_a_jwt_key_the_token_is_the_peerjs_key() -> None:
    settings = Settings(token_verifier=TokenVerifier.from_secret(SECRET))
    service, port, target = await start_front(settings=settings)
    a, b = ids(2)

    def scenario() -> None:
        good = _token(sub="someone")
        assert target.get(f"{good}/id")[0] == 200
        for bad in ("peerjs", _token()[:-2] + "xx", jwt.encode({"room": "other"}, SECRET)):
            assert target.get(f"{bad}/id")[0] == 401
            refused = target.open(a, key=bad)
            assert refused.recv() == {"type": "ERROR", "payload": {"msg": ERROR_INVALID_KEY}}
            refused.closed()
        alice, bob = target.join(a, key=good), target.join(b, key=_token(room="*"))
        alice.send(type="OFFER", dst=b, payload=1)
        assert bob.recv() == {"type": "OFFER", "src": a, "dst": b, "payload": 1}

    try:
        await in_thread(scenario)
    finally:
        await port.stopListening()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_token_bound_to_an_id_takes_only_that_id_and_takes_it_over() -> None:
    settings = Settings(token_verifier=TokenVerifier.from_secret(SECRET))
    service, port, target = await start_front(settings=settings)
    (b,) = ids()

    def scenario() -> None:
        alices = _token(peerjs_id="alice")
        status, body = target.get(f"{alices}/id")
        assert (status, body) == (200, b"alice")
        other = target.open(b, key=alices)
        assert other.recv() == {"type": "ID-TAKEN", "payload": {"msg": "ID is taken"}}
        # Someone with an unbound token cannot take alice while she is here...
        first = target.join("alice", "tab-1", key=alices)
        thief = target.open("alice", "tab-x", key=_token())
        assert thief.recv()["type"] == "ID-TAKEN"
        # ... but alice's token can, with another peerjs token (a reloaded page).
        second = target.join("alice", "tab-2", key=alices)
        assert first.closed() == 1000
        bob = target.join(b, key=_token())
        bob.send(type="OFFER", dst="alice", payload=1)
        assert second.recv() == {"type": "OFFER", "src": b, "dst": "alice", "payload": 1}

    try:
        await in_thread(scenario)
    finally:
        await port.stopListening()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_rate_and_size_limits_apply_to_peerjs_peers() -> None:
    settings = Settings(rate=1, rate_burst=5, flood_timeout=0.5, max_message_bytes=1024)
    service, port, target = await start_front(settings=settings)
    a, b, c = ids(3)

    def scenario() -> None:
        alice, bob = target.join(a), target.join(b)
        for n in range(150):
            try:
                alice.send(type="CANDIDATE", dst=b, payload=n)
            except ConnectionClosed as e:
                assert e.rcvd is not None and e.rcvd.code == 1008
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the flood was not closed")
        got = []
        while True:
            try:
                got.append(bob.recv(0.3)["payload"])
            except TimeoutError:
                break
        assert got[:5] == [0, 1, 2, 3, 4] and len(got) < 10
        carol = target.join(c)
        carol.send(type="OFFER", dst=b, payload="x" * 2000)
        assert carol.closed() == 1009

    try:
        await in_thread(scenario)
    finally:
        await port.stopListening()
        await service.stopService()


class Recorder(Events):
    def __init__(self) -> None:
        self.seen: list[tuple[Any, ...]] = []

    def peer_joined(self, room: str, peer_id: str) -> None:
        self.seen.append(("peer_joined", room, peer_id))

    def peer_left(self, room: str, peer_id: str) -> None:
        self.seen.append(("peer_left", room, peer_id))


@pytest_twisted.ensureDeferred
async def test_peerjs_peers_count_in_metrics_the_admin_api_and_events() -> None:
    recorder = Recorder()
    service, port, target = await start_front(
        metrics=True, admin_token="admintoken", events=recorder
    )
    a, b = ids(2)
    metrics = service.metrics
    assert metrics is not None

    def admin(method: str, path: str) -> tuple[int, Any]:
        request = Request(
            f"http://{target.base}/admin/{path}",
            method=method,
            headers={"Authorization": "Bearer admintoken"},
        )
        try:
            with urlopen(request, timeout=5) as response:
                body = response.read()
                return response.status, json.loads(body) if body else None
        except HTTPError as e:
            return e.code, None

    def scenario() -> None:
        alice, bob = target.join(a), target.join(b)
        status, room = admin("GET", "rooms/peerjs")
        assert status == 200
        assert room == {"name": "peerjs", "peers": [a, b], "max_peers": None}
        text = in_reactor(metrics.text).decode()
        assert "rtcsignal_peers 2" in text
        alice.send(type="OFFER", dst=b, payload=1)
        bob.recv()
        assert admin("DELETE", f"rooms/peerjs/peers/{a}")[0] == 204
        assert alice.closed() == 1008
        target.open(a, key="wrong").recv()
        text = in_reactor(metrics.text).decode()
        assert 'rtcsignal_errors_total{description="Invalid key provided"} 1' in text
        assert "rtcsignal_messages_forwarded_total 1" in text

    try:
        await in_thread(scenario)
    finally:
        await port.stopListening()
        await service.stopService()
    assert recorder.seen[:3] == [
        ("peer_joined", "peerjs", a),
        ("peer_joined", "peerjs", b),
        ("peer_left", "peerjs", a),
    ]


@pytest_twisted.ensureDeferred
async def test_a_peer_that_sends_nothing_for_the_alive_timeout_is_closed() -> None:
    service, port, target = await start_front(options={"alive_timeout": 0.6})
    a, b = ids(2)

    def scenario() -> None:
        quiet, beating = target.join(a), target.join(b)
        started = time.monotonic()
        for _ in range(8):
            beating.send(type="HEARTBEAT")
            time.sleep(0.15)
        assert quiet.closed(2) == 1000
        assert 0.5 < time.monotonic() - started < 2.5
        beating.send(type="HEARTBEAT")
        beating.send(type="OFFER", dst=b, payload=1)
        assert beating.recv() == {"type": "OFFER", "src": b, "dst": b, "payload": 1}

    try:
        await in_thread(scenario)
    finally:
        await port.stopListening()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_allowed_origins_and_shutdown_refuse_the_upgrade() -> None:
    settings = Settings(allowed_origins=("https://app.example",))
    service, port, target = await start_front(settings=settings)

    def scenario() -> None:
        url = target.ws_url("key=peerjs&id=a&token=t")
        assert handshake_status(url, origin="https://evil.example") == 403
        target.join("a").close()
        in_reactor(lambda: setattr(service.resource, "accepting", False))
        assert handshake_status(url, origin="https://app.example") == 503

    try:
        await in_thread(scenario)
    finally:
        await port.stopListening()
        await service.stopService()
