"""
A peer that logs in with a ``credentials`` cookie.

As in the seed's guide, the browser stores its credentials as raw JSON in a
cookie, ``credentials={"username": "...", "password": "..."}``, which the
WebSocket upgrade request carries.  Such a value (with its quotes, commas
and colons) is not a valid cookie value as far as `http.cookies.SimpleCookie`
is concerned, which silently drops it, so the ``Cookie`` header is split by
hand.

Storing a password in a cookie in plain text is what the guide did to keep
the example short; a real application would hand out a signed token instead
(see the JWT options of ``twistd rtcsignal``).
"""

from __future__ import annotations

import hmac
import json
from typing import Any
from urllib.parse import unquote

from autobahn.websocket.types import ConnectionRequest

from twisted_signal import AuthData, BadRequest, Peer, PeerContext, Unauthorized
from twisted_signal.peer import room_from_path

__all__ = ["COOKIE", "DEMO_PASSWORD", "DEMO_USERNAME", "CookiePeer", "cookie_value"]

COOKIE = "credentials"
DEMO_USERNAME = "USERNAME"
DEMO_PASSWORD = "PASSWORD"


def cookie_value(header: str, name: str) -> str | None:
    """
    The value of the cookie `name` in a ``Cookie`` request header, as sent
    (the first one when it is there twice); None when it is not there.
    """
    for pair in header.split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key.strip() == name:
            return value.strip()
    return None


def parse_credentials(value: str) -> dict[str, Any]:
    """
    The JSON object of a ``credentials`` cookie, raw or percent-encoded (as
    ``encodeURIComponent`` leaves it).

    @raise BadRequest: it is not a JSON object.
    """
    for candidate in (value, unquote(value)):
        try:
            credentials = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(credentials, dict):
            return credentials
    raise BadRequest("the credentials cookie is not a JSON object")


class CookiePeer(Peer):
    """
    Reads ``{"username": ..., "password": ...}`` from the ``credentials``
    cookie, and lets in only the guide's demo user.  Without the cookie, or
    with wrong credentials, the upgrade is answered 401; with a cookie that
    is not JSON, 400.
    """

    def parse_request(self, request: ConnectionRequest) -> tuple[dict[str, Any], None, str]:
        room = room_from_path(request.path)
        header = request.headers.get("cookie", "")
        value = cookie_value(header, COOKIE) if isinstance(header, str) else None
        credentials = {} if value is None else parse_credentials(value)
        return credentials, None, room

    def on_init(self, context: PeerContext, auth: AuthData, options: Any) -> dict[str, Any]:
        username = auth.credentials.get("username")
        password = auth.credentials.get("password")
        if not (isinstance(username, str) and isinstance(password, str)):
            raise Unauthorized("no credentials")
        # Compare in constant time, as one should with passwords.
        valid = hmac.compare_digest(username.encode(), DEMO_USERNAME.encode())
        valid &= hmac.compare_digest(password.encode(), DEMO_PASSWORD.encode())
        if not valid:
            raise Unauthorized("wrong credentials")
        return {}
