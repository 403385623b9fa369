"""
The seed guide's example application (examples/seed_app): its cookie
parsing, then the room and the peer live, with a real WebSocket client.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from http.cookies import SimpleCookie
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed, InvalidStatus

from examples.seed_app.peer import (
    DEMO_PASSWORD,
    DEMO_USERNAME,
    CookiePeer,
    cookie_value,
    parse_credentials,
)
from examples.seed_app.room import CappedRoom
from twisted_signal import BadRequest, Rooms
from twisted_signal.tap import Options

from .support import Client, LiveServer, join, open_socket

pytestmark = pytest.mark.pure

MakeServer = Callable[..., Awaitable[LiveServer]]

GOOD = json.dumps({"username": DEMO_USERNAME, "password": DEMO_PASSWORD})


def cookie(credentials: str) -> dict[str, str]:
    return {"Cookie": f"theme=dark; credentials={credentials}; other=1"}


def handshake_status(url: str, **kwargs: Any) -> int:
    try:
        ws = open_socket(url, **kwargs)
    except InvalidStatus as e:
        return e.response.status_code
    ws.close()
    raise AssertionError(f"the upgrade to {url} was accepted")


def refused_with(url: str, **kwargs: Any) -> tuple[dict[str, Any], int | None]:
    """
    Connect to a room that refuses us: the error message and the close code.
    """
    client = Client(open_socket(url, **kwargs))
    message = client.recv()
    try:
        frame = client.ws.recv(timeout=5)
    except ConnectionClosed as e:
        return message, None if e.rcvd is None else e.rcvd.code
    raise AssertionError(f"expected the connection to close, got {frame!r}")


# The cookie, without a server.


def test_simple_cookie_cannot_read_raw_json() -> None:
    """
    Why CookiePeer splits the header by hand.
    """
    jar: SimpleCookie = SimpleCookie()
    jar.load(f"credentials={GOOD}")
    assert "credentials" not in jar


@pytest.mark.parametrize(
    ("header", "value"),
    [
        (f"credentials={GOOD}", GOOD),
        (f"a=1; credentials={GOOD}; b=2", GOOD),
        (f"a=1;credentials={GOOD}", GOOD),
        ("credentials=first; credentials=second", "first"),
        ("xcredentials=1", None),
        ("credentials", None),
        ("", None),
    ],
)
def test_cookie_value(header: str, value: str | None) -> None:
    assert cookie_value(header, "credentials") == value


def test_parse_credentials() -> None:
    expected = {"username": DEMO_USERNAME, "password": DEMO_PASSWORD}
    assert parse_credentials(GOOD) == expected
    # As encodeURIComponent(JSON.stringify(...)) leaves it.
    encoded = GOOD.replace("{", "%7B").replace('"', "%22").replace(" ", "%20")
    assert parse_credentials(encoded) == expected
    for bad in ("not json", "[1, 2]", '"text"', ""):
        with pytest.raises(BadRequest):
            parse_credentials(bad)


def test_twistd_loads_the_classes() -> None:
    """
    The command of examples/seed_app/README.md names classes that load.
    """
    options = Options()
    options.parseOptions(
        [
            "--room-class",
            "examples.seed_app.room.CappedRoom",
            "--peer-class",
            "examples.seed_app.peer.CookiePeer",
        ]
    )
    assert options["room-class"] is CappedRoom
    assert options["peer-class"] is CookiePeer


# Live.


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_credentials_are_checked_before_the_upgrade(make_server: MakeServer) -> None:
    server = await make_server(room_class=CappedRoom, peer_class=CookiePeer)
    url = server.socket_url("demo")
    wrong = json.dumps({"username": DEMO_USERNAME, "password": "guess"})

    def scenario() -> None:
        assert handshake_status(url) == 401
        assert handshake_status(url, additional_headers=cookie(wrong)) == 401
        assert handshake_status(url, additional_headers=cookie("{}")) == 401
        assert handshake_status(url, additional_headers=cookie('{"username": 1}')) == 401
        assert handshake_status(url, additional_headers=cookie("not-json")) == 400
        # The right cookie, under another name, is no cookie at all.
        assert handshake_status(url, additional_headers={"Cookie": f"creds={GOOD}"}) == 401
        with join(url, additional_headers=cookie(GOOD)) as client:
            assert client.authenticated["data"]["peers"] == []

    await deferToThread(scenario)


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_two_admitted_third_refused(make_server: MakeServer) -> None:
    server = await make_server(room_class=CappedRoom, peer_class=CookiePeer)
    url = server.socket_url("demo")
    headers = cookie(GOOD)

    def scenario() -> None:
        first = join(url, additional_headers=headers)
        second = join(url, additional_headers=headers)
        assert second.authenticated["data"]["peers"] == [first.peer_id]
        assert first.recv()["event"] == "joined"

        message, code = refused_with(url, additional_headers=headers)
        assert message["event"] == "error"
        assert message["data"] == {"description": "Could not join room", "details": "room_is_full"}
        assert code == 1000
        # The peers already in the room saw nothing.
        assert first.nothing_within(0.3)
        assert second.nothing_within(0.1)

        # A place frees up when someone leaves: the count cannot drift.
        second.close()
        assert first.recv() == {
            "event": "left",
            "data": {"peer_id": second.peer_id},
            "from": None,
            "to": "all",
        }
        third = join(url, additional_headers=headers)
        assert third.authenticated["data"]["peers"] == [first.peer_id]
        message, code = refused_with(url, additional_headers=headers)
        assert message["data"]["details"] == "room_is_full"
        first.close()
        third.close()

    await deferToThread(scenario)


@pytest.mark.loopback
@pytest_twisted.ensureDeferred
async def test_the_limit_comes_from_the_room_options(make_server: MakeServer) -> None:
    rooms = Rooms(None, max_peers=None)
    rooms.start_room("big", CappedRoom, options={"max_peers": 3})
    server = await make_server(rooms=rooms, peer_class=CookiePeer)
    url = server.socket_url("big")
    headers = cookie(GOOD)

    def scenario() -> None:
        clients = [join(url, additional_headers=headers) for _ in range(3)]
        message, _ = refused_with(url, additional_headers=headers)
        assert message["data"]["details"] == "room_is_full"
        for client in clients:
            client.close()

    await deferToThread(scenario)
    room = rooms.get("big")
    assert isinstance(room, CappedRoom)
    assert room.capacity == 3


def test_bad_limits_are_refused() -> None:
    for bad in (0, -1, "3", True):
        with pytest.raises(ValueError):
            CappedRoom("x", clock=object()).on_init({"max_peers": bad})  # type: ignore[arg-type]
    room = CappedRoom("x", clock=object())  # type: ignore[arg-type]
    room.on_init(None)
    assert room.capacity == 2
