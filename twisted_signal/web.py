"""
The HTTP surface: pages, static assets, ``/healthz`` and ``/socket/<room>/``.
"""

from __future__ import annotations

import json
import re
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote_to_bytes as unquote

from twisted.python.filepath import FilePath
from twisted.web.http import combinedLogFormatter
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.static import File
from twisted.web.util import redirectTo

from .admin import AdminResource
from .bodies import BodyLimit
from .headers import secure_asset, secure_page, secure_response
from .peer import Peer, PeerFactory
from .peerjs import PeerjsFront, PeerjsOptions, PeerjsResource, mount
from .rooms import Rooms, is_room_name
from .settings import Settings
from .websocket import UpgradeResource

if TYPE_CHECKING:
    from twisted.internet.interfaces import IReactorTime
    from twisted.web.http_headers import Headers
    from twisted.web.server import Request

    from .handover import Handover

__all__ = [
    "PACKAGED_PAGES",
    "SignalingResource",
    "access_log_formatter",
    "redact",
]


def _packaged_pages() -> str:
    # An installed wheel holds the top-level static/ folder as
    # twisted_signal/static; a source checkout has it beside the package.
    installed = files("twisted_signal") / "static"
    if installed.is_dir():
        return str(installed)
    return str(Path(__file__).resolve().parent.parent / "static")


PACKAGED_PAGES = _packaged_pages()
"""The folder of the pages that ship with the package."""


class _NotFound(Resource):
    """
    The 404 page, an HTML answer like the others.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self._page = notFound()

    def render(self, request: Request) -> bytes:
        secure_page(request)
        return cast(bytes, self._page.render(request))


_NOT_FOUND = _NotFound()

# The query parameters that carry credentials: a peer's token (``token``,
# or ``access_token`` as some clients name it), its resume token, and the
# peerjs front's ``key`` (a token, with a JWT key configured).
_SECRET_PARAMS = frozenset({b"token", b"access_token", b"resume", b"key"})
# A JWT wherever it is: the peerjs client puts its key in the path of
# /<path><key>/id.
_JWT = re.compile(rb"eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*")
_SEPARATORS = re.compile(rb"([&;])")


def _param_name(key: bytes) -> bytes:
    """
    A query parameter's name as a server would read it: percent-decoded
    (as often as it takes, so no spelling hides it) and in lower case.
    """
    name = key.replace(b"+", b" ")
    for _ in range(4):
        decoded = unquote(name)
        if decoded == name:
            break
        name = decoded
    return name.strip().lower()


def redact(uri: bytes) -> bytes:
    """
    `uri` with the values of its ``token``, ``access_token``, ``resume``
    and ``key`` parameters hidden, however their names are spelled
    (``%74oken``, ``TOKEN``, repeated, separated by ``;``), and any JWT in
    its path.
    """
    path, question, rest = uri.partition(b"?")
    path = _JWT.sub(b"REDACTED", path)
    if not question:
        return uri
    query, hash_, fragment = rest.partition(b"#")
    parts = _SEPARATORS.split(query)
    for i in range(0, len(parts), 2):
        key, equals, _ = parts[i].partition(b"=")
        if equals and _param_name(key) in _SECRET_PARAMS:
            parts[i] = key + b"=REDACTED"
    return path + question + b"".join(parts) + hash_ + fragment


def _valid_segment(segment: bytes) -> bool:
    """
    Whether the path segment `segment` (percent-decoded) is UTF-8 text
    without NUL: anything else (``%00``, ``%FF``, overlong forms such as
    ``%C0%AE``, encoded surrogates) names nothing the server serves.
    """
    if b"\x00" in segment:
        return False
    try:
        segment.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class _Redacted:
    """
    A request as the access log sees it: without tokens in the URI or the
    Referer (a room page opened with ?token= is the referrer of its assets).
    """

    def __init__(self, request: Request) -> None:
        self._request = request

    @property
    def uri(self) -> bytes:
        return redact(self._request.uri)

    def getHeader(self, name: bytes) -> bytes | None:
        value = self._request.getHeader(name)
        if value is not None and name.lower() == b"referer":
            return redact(value)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def access_log_formatter(timestamp: str, request: Request) -> str:
    """
    Twisted's combined log format, minus tokens (use as a `Site`'s
    ``logFormatter``).
    """
    return cast(str, combinedLogFormatter(timestamp, _Redacted(request)))


class SignalingResource(Resource):
    """
    The whole HTTP surface of a signaling server, to serve as a site's root
    or to mount under a path of your own site:

    - ``/`` the landing page (``index.html`` of the pages folder);
    - ``/<room>`` the room page (``room.html``) for valid room names;
    - ``/static/<path>`` the pages folder's files;
    - ``/healthz`` JSON health;
    - ``/socket/<room>/`` the WebSocket endpoint;
    - ``/admin/...`` the admin API, only with an `admin_token`.

    `pages` replaces the packaged pages folder.  With `handover`, upgrades
    for rooms of other nodes of this host are handed to them.  Every answer carries the
    security headers of `twisted_signal.headers`.
    """

    def __init__(
        self,
        rooms: Rooms,
        *,
        peer_class: type[Peer] = Peer,
        settings: Settings | None = None,
        pages: str | None = None,
        clock: IReactorTime | None = None,
        admin_token: str | None = None,
        peerjs: PeerjsOptions | None = None,
        handover: Handover | None = None,
    ) -> None:
        super().__init__()
        self.rooms = rooms
        self._admin: AdminResource | None = None
        self.factory = PeerFactory(rooms, peer_class=peer_class, settings=settings, clock=clock)
        self.peerjs: PeerjsFront | None = None
        """The peerjs-compatible front, when mounted (`peerjs` options given)."""
        folder = FilePath(pages or PACKAGED_PAGES)
        self._room_page = _page(folder.child("room.html"))
        self.putChild(b"", _page(folder.child("index.html")))
        self.putChild(b"static", _StaticFiles(folder.path))
        self.putChild(b"healthz", _Health(self))
        self.putChild(b"socket", _Sockets(UpgradeResource(self.factory), handover))
        if admin_token is not None:
            # Without a token there is no admin API at all: /admin/... is
            # the plain 404 of any other path.
            max_body = self.factory.settings.max_message_bytes
            self._admin = AdminResource(rooms, admin_token, max_body_bytes=max_body)
            self.putChild(b"admin", self._admin)
        if peerjs is not None:
            settings = self.factory.settings
            self.peerjs = PeerjsFront(rooms, peerjs, settings=settings, clock=clock)
            front = PeerjsResource(self.peerjs, settings.allowed_origins)
            mount(self, front, peerjs.path)

    def body_limit(self, method: bytes, segments: list[bytes], headers: Headers) -> BodyLimit:
        """
        How many bytes of body a `method` request for the path `segments`
        (below this resource, percent-decoded) may carry: the admin API's
        message posts take a message, nothing else takes a body.  (The
        server's `twisted_signal.service.SignalingSite` asks before reading
        a body.)
        """
        if segments[:1] == [b"admin"] and self._admin is not None:
            return self._admin.body_limit(method, segments[1:], headers)
        return BodyLimit()

    @property
    def accepting(self) -> bool:
        """
        False once the server is shutting down: ``/healthz`` answers 503 and
        new peers are refused with 503.
        """
        return self.factory.accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self.factory.accepting = value
        if self.peerjs is not None:
            self.peerjs.accepting = value

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        # Every request below this resource passes here first.
        secure_response(request)
        return cast(IResource, super().getChildWithDefault(path, request))

    def render_GET(self, request: Request) -> bytes:
        secure_response(request)
        # Mounted at /rtc, a request for /rtc lands here: the pages link
        # relatively, so send it to /rtc/.
        return redirectTo(request.prePathURL() + b"/", request)

    def getChild(self, path: bytes, request: Request) -> IResource:
        try:
            name = path.decode("utf-8")
        except UnicodeDecodeError:
            return _NOT_FOUND
        if is_room_name(name) and not request.postpath:
            return self._room_page
        return _NOT_FOUND


# Text is UTF-8, and says so; scripts are served as JavaScript whatever the
# machine's mime.types says (nosniff makes a wrong type fatal).
_CONTENT_TYPES = {
    **File.contentTypes,
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".txt": "text/plain; charset=utf-8",
}


class _Page(File):
    """
    An HTML page: its policy, and never cached.
    """

    isLeaf = True
    contentTypes = _CONTENT_TYPES

    def render(self, request: Request) -> bytes | int:
        secure_page(request)
        return cast("bytes | int", super().render(request))


def _page(path: FilePath[str]) -> IResource:
    return _Page(path.path, defaultType="text/html; charset=utf-8")


class _StaticFiles(File):
    """
    Static files without directory listings (or index pages standing in
    for them), revalidated by caches.
    """

    indexNames: list[str] = []  # noqa: RUF012 (File's own attribute)
    contentTypes = _CONTENT_TYPES

    def getChild(self, path: bytes, request: Request) -> IResource:
        # File would log a traceback for a name that is not UTF-8, and
        # answer 500 for one with NUL.
        if not _valid_segment(path):
            return _NOT_FOUND
        child = super().getChild(path, request)
        return _NOT_FOUND if child is self.childNotFound else cast(IResource, child)

    def render(self, request: Request) -> bytes | int:
        if not self.exists():
            return _NOT_FOUND.render(request)
        if self.isfile() and self.splitext()[1].lower() in (".html", ".htm"):
            secure_page(request)
        else:
            secure_asset(request)
        return cast("bytes | int", super().render(request))

    def directoryListing(self) -> IResource:
        return _NOT_FOUND


class _Sockets(Resource):
    """
    ``/socket/<room>/``: hands the request to Autobahn, which answers 400
    itself for a path without a valid room (or, with a hand-over between
    the nodes of one host, to the room's node).
    """

    def __init__(self, websocket: IResource, handover: Handover | None) -> None:
        super().__init__()
        self._websocket = websocket
        self._handover = handover

    def getChild(self, path: bytes, request: Request) -> IResource:
        if request.postpath in ([], [b""]):
            if self._handover is not None:
                # Before the upgrade: the room's node on this host takes it.
                return self._handover.route(path, request, self._websocket)
            return self._websocket
        return _NOT_FOUND

    def render(self, request: Request) -> bytes:
        return _NOT_FOUND.render(request)


class _Health(Resource):
    isLeaf = True

    def __init__(self, signaling: SignalingResource) -> None:
        super().__init__()
        self._signaling = signaling

    def render_GET(self, request: Request) -> bytes:
        if request.postpath:
            return _NOT_FOUND.render(request)
        rooms = self._signaling.rooms
        status = "shutting_down" if not self._signaling.accepting else rooms.unavailable or "ok"
        body = {
            "status": status,
            "rooms": len(rooms),
            "peers": sum(len(room.peers) for room in rooms),
        }
        request.setResponseCode(200 if status == "ok" else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode("utf-8")
