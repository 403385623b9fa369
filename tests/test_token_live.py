"""
Token authentication and ICE servers through a live server (SPEC 5.1, 5.2).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar
from urllib.request import Request, urlopen

import jwt
import pytest
import pytest_twisted
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent

from twisted_signal import AuthData, Refused, Room, Settings
from twisted_signal.auth import TokenVerifier
from twisted_signal.ice import IceConfig, turn_credential

from .support import (
    MakeServer,
    StrictClient,
    handshake_status,
    join_strict,
    open_socket,
)

pytestmark = pytest.mark.loopback

SECRET = "a secret long enough for HS256 tokens, for tests only"
HS256 = Settings(token_verifier=TokenVerifier.from_secret(SECRET))


def token(**claims: Any) -> str:
    return jwt.encode(claims, SECRET, algorithm="HS256")


class ByIdentity(Room):
    """Refuses mallory by identity, and remembers what it saw."""

    seen: ClassVar[list[AuthData]] = []

    def on_join(self, auth: AuthData) -> None:
        ByIdentity.seen.append(auth)
        if auth.identity == "mallory":
            raise Refused("not_welcome")


@pytest_twisted.ensureDeferred
async def test_token_by_query_and_by_cookie(make_server: MakeServer) -> None:
    ByIdentity.seen = []
    server = await make_server(settings=HS256, room_class=ByIdentity)
    alice, bob = token(room="demo", sub="alice"), token(room="*", sub="bob")

    def scenario() -> None:
        a = join_strict(server.socket_url("demo", f"token={alice}"))
        b = join_strict(server.socket_url("demo"), additional_headers={"Cookie": f"token={bob}"})
        assert a.recv()["event"] == "joined"
        a.close()
        b.close()

    await deferToThread(scenario)
    assert [(auth.identity, auth.credentials["room"]) for auth in ByIdentity.seen] == [
        ("alice", "demo"),
        ("bob", "*"),
    ]


@pytest_twisted.ensureDeferred
async def test_a_room_can_refuse_by_identity(make_server: MakeServer) -> None:
    server = await make_server(settings=HS256, room_class=ByIdentity)
    mallory = token(room="demo", sub="mallory")

    def scenario() -> None:
        client = StrictClient(open_socket(server.socket_url("demo", f"token={mallory}")))
        assert client.recv()["data"] == {
            "description": "Could not join room",
            "details": "not_welcome",
        }
        assert client.closed_with() == 1000

    await deferToThread(scenario)


def bad_tokens() -> list[Any]:
    now = int(time.time())
    return [
        pytest.param("", id="missing"),
        pytest.param("token=not-a-jwt", id="malformed"),
        pytest.param(
            "token="
            + jwt.encode({"room": "demo"}, "another secret, long enough for HS256 too", "HS256"),
            id="bad-signature",
        ),
        pytest.param("token=" + token(room="demo", exp=now - 3600), id="expired"),
        pytest.param("token=" + token(room="demo", nbf=now + 3600), id="not-yet-valid"),
        pytest.param("token=" + token(sub="alice"), id="no-room-claim"),
        pytest.param("token=" + token(room="elsewhere"), id="wrong-room"),
    ]


@pytest.mark.parametrize("query", bad_tokens())
@pytest_twisted.ensureDeferred
async def test_bad_tokens_are_401_and_never_logged(make_server: MakeServer, query: str) -> None:
    server = await make_server(settings=HS256, auto_rooms=False)
    with capturedLogs() as events:
        status = await deferToThread(handshake_status, server.socket_url("nowhere", query))
    assert status == 401  # before the 404 of a missing room
    secret_part = query.partition("=")[2]
    logged = " ".join(repr(e) for e in events)
    if secret_part:
        assert secret_part not in logged
    assert SECRET not in logged


@pytest_twisted.ensureDeferred
async def test_es256_public_key(make_server: MakeServer) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    server = await make_server(settings=Settings(token_verifier=TokenVerifier.from_public_key(pem)))
    good = jwt.encode({"room": "demo", "sub": "carol"}, private, algorithm="ES256")

    def scenario() -> None:
        join_strict(server.socket_url("demo", f"token={good}")).close()
        assert handshake_status(server.socket_url("demo", f"token={token(room='demo')}")) == 401

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_the_access_log_hides_tokens(make_server: MakeServer) -> None:
    server = await make_server(settings=HS256)
    secret_token = token(room="demo")
    page = server.http_url(f"/demo?lang=en&token={secret_token}")

    def scenario() -> None:
        request = Request(server.http_url("/static/style.css"), headers={"Referer": page})
        with urlopen(Request(page)) as response, urlopen(request):
            assert response.status == 200

    with capturedLogs() as events:
        await deferToThread(scenario)
    lines = [formatEvent(e) for e in events]
    access = [line for line in lines if "GET /demo" in line]
    assert access, lines
    assert "GET /demo?lang=en&token=REDACTED" in access[0]
    assert any("/static/style.css" in line and "token=REDACTED" in line for line in lines)
    assert secret_token not in " ".join(lines)


ICE = Settings(
    ice=IceConfig(
        urls=("stun:127.0.0.1:3478",),
        turn_uris=("turn:127.0.0.1:3478",),
        turn_secret="coturn-shared-secret",
        turn_ttl=600,
    )
)


@pytest_twisted.ensureDeferred
async def test_ice_servers_in_authenticated_and_on_request(make_server: MakeServer) -> None:
    server = await make_server(settings=ICE)

    def scenario() -> None:
        a = join_strict(server.socket_url("demo"))
        servers = a.authenticated["data"]["ice_servers"]
        assert servers[0] == {"urls": ["stun:127.0.0.1:3478"]}
        turn = servers[1]
        expiry, _, peer_id = turn["username"].partition(":")
        assert peer_id == a.peer_id
        assert 0 < int(expiry) - time.time() <= 600
        assert turn["credential"] == turn_credential("coturn-shared-secret", turn["username"])
        a.send("ice_servers", [a.peer_id])
        answer = a.recv()
        assert answer["event"] == "ice_servers"
        assert answer["from"] is None
        assert answer["to"] == [a.peer_id]
        assert answer["data"][1]["credential"] == turn_credential(
            "coturn-shared-secret", answer["data"][1]["username"]
        )
        # Addressed to someone else, "ice_servers" is refused (SPEC 1.2):
        # a peer cannot hand another the ICE servers of its choosing.
        b = join_strict(server.socket_url("demo"))
        assert a.recv()["event"] == "joined"
        b.send("ice_servers", [a.peer_id], [{"urls": ["turn:127.0.0.1:9"]}])
        refused = b.recv()
        assert refused["event"] == "error", refused
        assert refused["data"]["description"] == "Invalid message", refused
        assert a.nothing_within(0.1)
        a.close()
        b.close()

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_a_token_given_twice_is_400_and_never_logged(make_server: MakeServer) -> None:
    server = await make_server(settings=HS256)
    good, other = token(room="demo"), token(room="demo", sub="mallory")
    with capturedLogs() as events:
        status = await deferToThread(
            handshake_status, server.socket_url("demo", f"token={good}&token={other}")
        )
    assert status == 400  # a proxy in front may have checked either one
    logged = " ".join(repr(e) for e in events)
    assert good not in logged and other not in logged
    assert "'token' more than once" in logged
