"""
The HTTP surface (SPEC section 2) and the packaged pages, through a whole
`SignalingResource` in memory with `treq.testing.StubTreq`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import pytest
import pytest_twisted
import treq
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater

from twisted_signal import Room, Rooms, SignalingResource
from twisted_signal.web import PACKAGED_PAGES

T = TypeVar("T")

PAGES = Path(PACKAGED_PAGES)
BASE = "http://signal.example"


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


async def _pumped(stub: StubTreq, d: Deferred[T]) -> T:
    """
    Wait for `d`, moving the in-memory connection's bytes meanwhile.  Static
    files are written by a pull producer that Twisted drives from the global
    cooperator, so the reactor has to turn as well.
    """
    from twisted.internet import reactor

    done: list[object] = []

    def note(result: object) -> object:
        done.append(result)
        return result

    d.addBoth(note)
    for _ in range(1000):
        stub.flush()
        if done:
            return await d
        await deferLater(reactor, 0, lambda: None)
    raise AssertionError("the request did not finish")


Get = Callable[[str], Awaitable[Answer]]


@pytest.fixture
def get() -> Get:
    rooms = Rooms(lambda name: Room(name, clock=Clock()), clock=Clock())
    stub = StubTreq(SignalingResource(rooms, clock=Clock()))
    # StubTreq makes its request methods at run time.
    client: Any = cast(Any, stub)

    async def get(path: str) -> Answer:
        response = await _pumped(stub, client.get(BASE + path))
        body = await _pumped(stub, treq.content(response))
        headers = {
            name.decode("ascii").lower(): values[-1].decode("latin-1")
            for name, values in response.headers.getAllRawHeaders()
        }
        return Answer(response.code, headers, body)

    return get


@pytest_twisted.ensureDeferred
async def test_landing_page(get: Get) -> None:
    answer = await get("/")
    assert answer.status == 200
    assert answer.content_type.startswith("text/html")
    assert 'id="room-name"' in answer.text
    assert 'src="static/landing.js"' in answer.text


@pytest.mark.parametrize("room", ["standup", "a.b~c_d-e", "x" * 64, "Daily-Standup_2"])
@pytest_twisted.ensureDeferred
async def test_room_page(get: Get, room: str) -> None:
    answer = await get(f"/{room}")
    assert answer.status == 200
    assert answer.content_type.startswith("text/html")
    # The DOM contract the browser tests rely on.
    assert '<video id="local"' in answer.text
    assert 'src="static/room.js"' in answer.text


@pytest.mark.parametrize(
    "path",
    [
        "/bad%20name",
        "/a/b",
        "/standup/",
        "/" + "x" * 65,
        "/%ff",
        "/caf%C3%A9",
        "/nope/deeper/still",
        "/static/missing.js",
        "/static/../pyproject.toml",
        "/socket/standup/extra/",
        "/healthz/extra",
    ],
)
@pytest_twisted.ensureDeferred
async def test_not_found(get: Get, path: str) -> None:
    assert (await get(path)).status == 404


@pytest_twisted.ensureDeferred
async def test_no_directory_listing(get: Get) -> None:
    for path in ("/static/", "/static"):
        answer = await get(path)
        assert answer.status in (301, 404), path
        assert "Directory listing" not in answer.text, path
        assert "room.js" not in answer.text, path
        assert "signaling.js" not in answer.text, path


@pytest.mark.parametrize(
    "name", sorted(p.name for p in PAGES.iterdir() if p.suffix in (".js", ".css"))
)
@pytest_twisted.ensureDeferred
async def test_static_assets(get: Get, name: str) -> None:
    answer = await get(f"/static/{name}")
    assert answer.status == 200
    assert answer.body == (PAGES / name).read_bytes()
    expected = {".js": ("text/javascript", "application/javascript"), ".css": ("text/css",)}
    assert answer.content_type.split(";")[0].strip() in expected[Path(name).suffix]


@pytest_twisted.ensureDeferred
async def test_room_script_is_javascript(get: Get) -> None:
    answer = await get("/static/room.js")
    assert answer.status == 200
    # Browsers refuse to run a module script served with another type.
    assert answer.content_type.split(";")[0] in ("text/javascript", "application/javascript")


@pytest_twisted.ensureDeferred
async def test_every_imported_module_is_served(get: Get) -> None:
    """
    Each ``import ... from "./x.js"`` of the pages resolves to a served file.
    """
    pending = ["room.js", "landing.js"]
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        answer = await get(f"/static/{name}")
        assert answer.status == 200, name
        pending += re.findall(r'^import .* from "\./([\w.-]+\.js)";$', answer.text, re.M)
    assert {"room.js", "call.js", "signaling.js", "names.js"} <= seen


@pytest_twisted.ensureDeferred
async def test_healthz(get: Get) -> None:
    answer = await get("/healthz")
    assert answer.status == 200
    assert answer.content_type == "application/json"
    body = json.loads(answer.body)
    assert body["status"] == "ok"


def test_pages_reference_nothing_outside_the_server() -> None:
    """
    The pages fetch nothing from elsewhere (no CDN, no fonts), and refer to
    their assets relatively, so the server can be mounted under any path.
    """
    files = [p for p in PAGES.iterdir() if p.suffix in (".html", ".js", ".css", ".svg")]
    assert {"index.html", "room.html", "room.js", "style.css"} <= {p.name for p in files}
    for path in files:
        text = path.read_text("utf-8")
        assert not re.search(r"(?i)\b(?:https?|wss?)://", text), path.name
        assert not re.search(r"""(?i)(?:src|href)\s*=\s*["']?(?://|/)""", text), path.name
        assert not re.search(r"""(?i)url\(\s*["']?(?://|/|[a-z]+:)""", text), path.name
        assert not re.search(r"""(?i)@import""", text), path.name
