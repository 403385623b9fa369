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

pytestmark = pytest.mark.memory

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
        assert "rtcsignal.js" not in answer.text, path


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
    assert {"room.js", "rtcsignal-calls.js", "rtcsignal.js", "verify.js", "names.js"} <= seen


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


# Security headers (SPEC section 2): tokens may be in a page's URL.

HTML_PATHS = ["/", "/standup", "/nope/deeper", "/static/missing.js"]
ASSET_PATHS = ["/static/room.js", "/static/style.css", "/static/rtcsignal.js"]
EVERY_PATH = [*HTML_PATHS, *ASSET_PATHS, "/healthz", "/socket/standup/extra/"]


def assert_common_headers(headers: dict[str, str]) -> None:
    assert headers.get("referrer-policy") == "no-referrer", headers
    assert headers.get("x-content-type-options") == "nosniff", headers
    assert headers.get("server") == "rtcsignal", headers


def directives(policy: str) -> dict[str, list[str]]:
    parts = (d.split() for d in policy.split(";") if d.strip())
    return {name: values for name, *values in parts}


def assert_page_policy(headers: dict[str, str], host: str = "signal.example") -> None:
    policy = directives(headers["content-security-policy"])
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"]
    assert policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'", f"ws://{host}", f"wss://{host}"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert policy["object-src"] == ["'none'"]
    # No inline script, no eval, anywhere.
    assert "'unsafe-inline'" not in headers["content-security-policy"]
    assert "'unsafe-eval'" not in headers["content-security-policy"]


@pytest.mark.parametrize("path", EVERY_PATH)
@pytest_twisted.ensureDeferred
async def test_every_answer_has_the_common_security_headers(get: Get, path: str) -> None:
    assert_common_headers((await get(path)).headers)


@pytest.mark.parametrize("path", HTML_PATHS)
@pytest_twisted.ensureDeferred
async def test_html_has_a_policy_utf8_and_is_never_stored(get: Get, path: str) -> None:
    answer = await get(path)
    assert answer.content_type.replace(" ", "").lower() == "text/html;charset=utf-8"
    assert_page_policy(answer.headers)
    assert answer.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", ASSET_PATHS)
@pytest_twisted.ensureDeferred
async def test_assets_are_revalidated_and_typed_as_utf8(get: Get, path: str) -> None:
    answer = await get(path)
    assert answer.status == 200
    assert answer.headers["cache-control"] == "no-cache"
    assert "last-modified" in answer.headers
    kind = "text/javascript" if path.endswith(".js") else "text/css"
    assert answer.content_type.replace(" ", "") == f"{kind};charset=utf-8"
    assert "content-security-policy" not in answer.headers


@pytest_twisted.ensureDeferred
async def test_healthz_is_never_stored(get: Get) -> None:
    assert (await get("/healthz")).headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    "host",
    [
        b"evil.example; script-src *",
        b"a b",
        b"x'y",
        b"[::1]:80:80",
        b"",
    ],
)
def test_a_malformed_host_is_never_echoed_into_the_policy(host: bytes) -> None:
    from twisted_signal.headers import content_security_policy

    policy = directives(content_security_policy(host).decode("ascii"))
    assert policy["connect-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]
    assert content_security_policy(None) == content_security_policy(host)


@pytest.mark.parametrize("host", [b"meet.example.org:8443", b"127.0.0.1:8080", b"[::1]:8443"])
def test_a_host_with_a_port_or_an_ipv6_address_is_allowed(host: bytes) -> None:
    from twisted_signal.headers import content_security_policy

    policy = directives(content_security_policy(host).decode("ascii"))
    name = host.decode()
    assert policy["connect-src"] == ["'self'", f"ws://{name}", f"wss://{name}"]


@pytest_twisted.ensureDeferred
async def test_pages_of_a_static_folder_get_the_same_headers(tmp_path: Path) -> None:
    for name in ("index.html", "room.html"):
        (tmp_path / name).write_text("<!doctype html><title>mine</title>")
    (tmp_path / "app.js").write_text("export {};")
    (tmp_path / "help.html").write_text("<!doctype html><title>help</title>")
    rooms = Rooms(lambda name: Room(name, clock=Clock()), clock=Clock())
    stub = StubTreq(SignalingResource(rooms, pages=str(tmp_path), clock=Clock()))
    client: Any = cast(Any, stub)

    async def fetch(path: str) -> dict[str, str]:
        response = await _pumped(stub, client.get(BASE + path))
        await _pumped(stub, treq.content(response))
        assert response.code == 200, path
        return {k.decode().lower(): v[-1].decode() for k, v in response.headers.getAllRawHeaders()}

    for path in ("/", "/standup", "/static/help.html"):
        headers = await fetch(path)
        assert_common_headers(headers)
        assert_page_policy(headers)
        assert headers["cache-control"] == "no-store"
    headers = await fetch("/static/app.js")
    assert_common_headers(headers)
    assert headers["cache-control"] == "no-cache"
    assert headers["content-type"] == "text/javascript; charset=utf-8"


@pytest.mark.loopback
@pytest.mark.parametrize(
    ("path", "status"), [("/socket/bad%20name/", 400), ("/socket/closed/", 404)]
)
@pytest_twisted.ensureDeferred
async def test_upgrade_refusals_get_the_security_headers(
    make_server: Callable[..., Awaitable[Any]], path: str, status: int
) -> None:
    from twisted.internet.threads import deferToThread
    from websockets.exceptions import InvalidStatus

    from .support import open_socket

    server = await make_server(auto_rooms=False)

    def refused() -> dict[str, str]:
        with pytest.raises(InvalidStatus) as info:
            open_socket(f"ws://{server.base}{path}")
        response = info.value.response
        assert response.status_code == status
        return {name.lower(): value for name, value in response.headers.raw_items()}

    headers = await deferToThread(refused)
    assert_common_headers(headers)
    assert headers["cache-control"] == "no-store"
