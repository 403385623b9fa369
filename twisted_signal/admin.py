"""
The admin API (``/admin/...``): list rooms, stop one, disconnect a peer,
send a server message into a room.  JSON in and out, every request with
``Authorization: Bearer <token>``; `docs/admin-openapi.yaml` describes it.

It works only through the admin-facing methods of `Rooms` (`summaries`,
`summary`, `stop`, `disconnect`, `post`), each returning a `Deferred`, never
through rooms or the peers' connections, so another registry of rooms can
stand behind it: a cluster node answers them for rooms other nodes own.
"""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from .bodies import BODY_ALLOWANCE, BodyLimit
from .errors import NoSuchPeer, NoSuchRoom, RoomUnavailable
from .message import InvalidMessage, Message
from .rooms import Rooms, room_summary

if TYPE_CHECKING:
    from twisted.web.http_headers import Headers
    from twisted.web.server import Request

__all__ = ["OPENAPI_PATH", "AdminResource", "is_bearer_token", "room_summary"]


def _openapi_path() -> str:
    # An installed wheel holds docs/admin-openapi.yaml as
    # twisted_signal/docs/admin-openapi.yaml; a source checkout has it in
    # the top-level docs/ folder.
    installed = files("twisted_signal") / "docs" / "admin-openapi.yaml"
    if installed.is_file():
        return str(installed)
    return str(Path(__file__).resolve().parent.parent / "docs" / "admin-openapi.yaml")


OPENAPI_PATH = _openapi_path()
"""The OpenAPI 3.1 description of the admin API that ships with the package."""

_JSON = b"application/json"
_YAML = b"application/yaml"
_REALM = b'Bearer realm="rtcsignal"'
_TOKEN68 = re.compile(r"[A-Za-z0-9._~+/-]+=*\Z")


def is_bearer_token(value: str) -> bool:
    """
    Whether `value` can be sent as ``Authorization: Bearer <value>`` (the
    token68 characters of RFC 6750: letters, digits, ``-._~+/``, then ``=``).
    """
    return _TOKEN68.match(value) is not None


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Any = None
    """JSON to send, or None for an empty body."""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    raw: bytes | None = None
    content_type: bytes = _JSON


def _problem(status: int, error: str, details: Any = None, **headers: bytes) -> _Answer:
    """
    An error answer: ``{"error": ..., "details": ...}``.
    """
    extra = tuple((name.replace("_", "-").encode("ascii"), v) for name, v in headers.items())
    return _Answer(status, {"error": error, "details": details}, extra)


class _Refusal(Exception):
    def __init__(self, answer: _Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


Handler = Callable[["Request", list[str]], "_Answer | Deferred[_Answer]"]


class AdminResource(Resource):
    """
    ``/admin/...``: the whole admin API, for requests that carry `token`.

    Answers: 401 without the token (before anything else, so nothing about
    the rooms leaks), 404 for an unknown path, room or peer, 405 for a wrong
    method (with ``Allow``), 415 for a body not sent as JSON, 413 for one
    over `max_body_bytes`, 400 for one that is not a valid message, 503 when
    (in cluster mode) the node that owns the room does not answer.  Every
    answer is JSON (the OpenAPI description is YAML) and is sent with
    ``Cache-Control: no-store``.
    """

    isLeaf = True
    _log = Logger()

    def __init__(self, rooms: Rooms, token: str, *, max_body_bytes: int = 65536) -> None:
        super().__init__()
        if not is_bearer_token(token):
            raise ValueError("the admin token must be letters, digits and -._~+/ (then =)")
        self.rooms = rooms
        self._token = token.encode("utf-8")
        self._max_body_bytes = max_body_bytes
        self._openapi: bytes | None = None

    def render(self, request: Request) -> bytes | int:
        try:
            answer = self._answer(request)
        except _Refusal as refusal:
            answer = refusal.answer
        except Exception:
            self._log.failure("Error in the admin API for {path}", path=_path(request))
            answer = _problem(500, "Internal Server Error")
        if isinstance(answer, Deferred):
            finished: list[bool] = []
            request.notifyFinish().addBoth(lambda _: finished.append(True))

            def write(result: _Answer | Failure) -> None:
                if isinstance(result, Failure):
                    self._log.failure(
                        "Error in the admin API for {path}", result, path=_path(request)
                    )
                    result = _problem(500, "Internal Server Error")
                if not finished:
                    request.write(self._write(request, result))
                    request.finish()

            answer.addBoth(write)
            return NOT_DONE_YET
        return self._write(request, answer)

    # Dispatch.

    def _answer(self, request: Request) -> _Answer | Deferred[_Answer]:
        self._authenticate(request)
        segments = _segments(request)
        handlers = self._route(segments)
        if handlers is None:
            raise _Refusal(_problem(404, "Not Found", _path(request)))
        method = request.method.decode("ascii", "replace")
        handler = handlers.get("GET" if method == "HEAD" else method)
        if handler is None:
            raise _Refusal(_problem(405, "Method Not Allowed", method, allow=_allow(handlers)))
        return handler(request, segments)

    def _route(self, segments: list[str]) -> dict[str, Handler] | None:
        match segments:
            case ["rooms"]:
                return {"GET": self._list}
            case ["rooms", _]:
                return {"GET": self._show, "DELETE": self._stop}
            case ["rooms", _, "peers", _]:
                return {"DELETE": self._kick}
            case ["rooms", _, "messages"]:
                return {"POST": self._post}
            case ["openapi.yaml"]:
                return {"GET": self._describe}
        return None

    def body_limit(self, method: bytes, segments: list[bytes], headers: Headers) -> BodyLimit:
        """
        How many bytes of body a `method` request for the path `segments`
        (below ``/admin/``, percent-decoded) with `headers` may carry, and
        the answer to one that carries more: a message post takes
        `max_body_bytes`, other requests `BODY_ALLOWANCE`; over it, 401
        without the token (as any request without it), else 413.
        """
        route = [s.decode("utf-8", "replace") for s in segments]
        if route and route[-1] == "":
            route.pop()
        limit = BODY_ALLOWANCE
        if method == b"POST" and len(route) == 3 and route[::2] == ["rooms", "messages"]:
            limit = self._max_body_bytes
        header = headers.getRawHeaders(b"authorization", [None])[0]
        if self._authorized(header):
            return BodyLimit(limit)
        return BodyLimit(
            limit,
            401,
            "Unauthorized",
            _why(header),
            ((b"WWW-Authenticate", _challenge(header)),),
        )

    def _authorized(self, header: bytes | None) -> bool:
        scheme, _, credentials = (header or b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token)

    def _authenticate(self, request: Request) -> None:
        header = request.getHeader(b"authorization")
        if self._authorized(header):
            return
        why = _why(header)
        self._log.info(
            "admin: refused {method} {path} from {remote}: {why}",
            method=request.method.decode("ascii", "replace"),
            path=_path(request),
            remote=_remote(request),
            why=why,
        )
        raise _Refusal(_problem(401, "Unauthorized", why, www_authenticate=_challenge(header)))

    # The routes.

    def _list(self, request: Request, segments: list[str]) -> Deferred[_Answer]:
        d = self.rooms.summaries()
        return d.addCallbacks(lambda rooms: _Answer(200, {"rooms": rooms}), _refused)

    def _show(self, request: Request, segments: list[str]) -> Deferred[_Answer]:
        d = self.rooms.summary(segments[1])
        return d.addCallbacks(lambda summary: _Answer(200, summary), _refused)

    def _stop(self, request: Request, segments: list[str]) -> Deferred[_Answer]:
        name = segments[1]

        def stopped(_: object) -> _Answer:
            self._log.info(
                "admin: {remote} stopped room {room}", remote=_remote(request), room=name
            )
            return _Answer(204)

        return self.rooms.stop(name).addCallbacks(stopped, _refused)

    def _kick(self, request: Request, segments: list[str]) -> Deferred[_Answer]:
        name, peer_id = segments[1], segments[3]

        def gone(_: object) -> _Answer:
            self._log.info(
                "admin: {remote} disconnected peer {peer_id} from room {room}",
                remote=_remote(request),
                peer_id=peer_id,
                room=name,
            )
            return _Answer(204)

        return self.rooms.disconnect(name, peer_id).addCallbacks(gone, _refused)

    def _post(self, request: Request, segments: list[str]) -> Deferred[_Answer]:
        name = segments[1]
        try:
            sent = self._message(request)
        except _Refusal as refusal:
            # An unknown room is a 404 whatever the body; the room is looked
            # up only on this error path, so a good message costs one call.
            answer = refusal.answer
            return self.rooms.summary(name).addCallbacks(lambda _: answer, _refused)

        def posted(_: object) -> _Answer:
            self._log.info(
                "admin: {remote} sent {event!r} to {to} in room {room}",
                remote=_remote(request),
                event=sent.event,
                to=sent.to,
                room=name,
            )
            return _Answer(202, json.loads(sent.to_json()))

        return self.rooms.post(name, sent).addCallbacks(posted, _refused)

    def _message(self, request: Request) -> Message:
        """The posted message, or a `_Refusal` (415, 413 or 400)."""
        content_type = request.getHeader(b"content-type") or b""
        if content_type.split(b";")[0].strip().lower() != _JSON:
            raise _Refusal(
                _problem(415, "Unsupported Media Type", "send the message as application/json")
            )
        body = request.content.read(self._max_body_bytes + 1) if request.content else b""
        if len(body) > self._max_body_bytes:
            raise _Refusal(
                _problem(413, "Payload Too Large", f"the body is over {self._max_body_bytes} bytes")
            )
        try:
            return Message.from_json(body, from_=None)
        except InvalidMessage as e:
            raise _Refusal(_problem(400, e.description, e.details)) from None

    def _describe(self, request: Request, segments: list[str]) -> _Answer:
        if self._openapi is None:
            with open(OPENAPI_PATH, "rb") as f:
                self._openapi = f.read()
        return _Answer(200, raw=self._openapi, content_type=_YAML)

    # Writing.

    def _write(self, request: Request, answer: _Answer) -> bytes:
        request.setResponseCode(answer.status)
        request.setHeader(b"cache-control", b"no-store")
        for name, value in answer.headers:
            request.setHeader(name, value)
        if answer.raw is not None:
            body = answer.raw
        elif answer.body is not None:
            body = json.dumps(answer.body).encode("utf-8")
        else:
            return b""
        request.setHeader(b"content-type", answer.content_type)
        request.setHeader(b"content-length", b"%d" % len(body))
        return b"" if request.method == b"HEAD" else body


def _refused(failure: Failure) -> _Answer:
    """The answer to a room or peer that is not there, or an owner that did not answer."""
    e = failure.value
    if isinstance(e, NoSuchRoom):
        return _problem(404, "No such room", e.name)
    if isinstance(e, NoSuchPeer):
        return _problem(404, "No such peer", e.peer_ids)
    if isinstance(e, RoomUnavailable):
        return _problem(503, "Service Unavailable", str(e), retry_after=b"1")
    failure.raiseException()


def _why(header: bytes | None) -> str:
    """Why a request with the ``Authorization`` `header` is refused."""
    return "a bearer token is required" if header is None else "the bearer token is not valid"


def _challenge(header: bytes | None) -> bytes:
    """The ``WWW-Authenticate`` of a refusal of the ``Authorization`` `header`."""
    return _REALM if header is None else _REALM + b', error="invalid_token"'


def _allow(handlers: dict[str, Handler]) -> bytes:
    methods = list(handlers)
    if "GET" in methods:
        methods.insert(methods.index("GET") + 1, "HEAD")
    return ", ".join(methods).encode("ascii")


def _segments(request: Request) -> list[str]:
    """
    The path below ``/admin/``, URL-decoded (Twisted has unquoted each
    segment), without one trailing slash.
    """
    segments = [s.decode("utf-8", "replace") for s in request.postpath or ()]
    if segments and segments[-1] == "":
        segments.pop()
    return segments


def _path(request: Request) -> str:
    return request.path.decode("utf-8", "replace")


def _remote(request: Request) -> str:
    address = request.getClientAddress()
    return str(getattr(address, "host", address))
