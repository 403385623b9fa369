"""
The security headers of every HTTP answer the server gives: pages, assets,
``/healthz``, 404s and the WebSocket upgrade's refusals.

Tokens may travel in a room page's URL (``?token=``), so nothing is sent as
a referrer, and pages are never stored by caches.  Pages may run only the
server's own scripts and styles and talk only to its own WebSocket.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from twisted.web.server import Request

__all__ = [
    "ASSET_CACHE_CONTROL",
    "COMMON_HEADERS",
    "PAGE_CACHE_CONTROL",
    "SERVER",
    "content_security_policy",
    "secure_asset",
    "secure_page",
    "secure_response",
]

SERVER = b"rtcsignal"
"""The ``Server`` header: no version for scanners to match."""

COMMON_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"Server", SERVER),
    (b"Referrer-Policy", b"no-referrer"),
    (b"X-Content-Type-Options", b"nosniff"),
)
"""Sent with every answer."""

PAGE_CACHE_CONTROL = b"no-store"
"""A page's URL may carry a token: no cache keeps it."""

ASSET_CACHE_CONTROL = b"no-cache"
"""Assets keep their names across releases: caches revalidate them
(``Last-Modified`` / ``If-Modified-Since``) before each use."""

# A Host header is only echoed into the policy if it is a plain host name
# or address, with an optional port: nothing that could end a directive.
_HOST = re.compile(rb"(?:[A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?")

_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"media-src 'self' blob: mediastream:; connect-src 'self'%s; form-action 'self'; "
    b"frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


def content_security_policy(host: bytes | None) -> bytes:
    """
    The policy of the server's HTML: its own scripts, styles and WebSocket
    only (``'self'`` and, spelled out for older browsers, ``ws:``/``wss:``
    of `host`, the request's Host header, when it is a well-formed one).
    """
    sockets = b""
    if host is not None and _HOST.fullmatch(host):
        sockets = b" ws://%s wss://%s" % (host, host)
    return _POLICY % sockets


def secure_response(request: Request) -> None:
    """
    Put `COMMON_HEADERS` on the answer to `request` (replacing Twisted's
    ``Server``).
    """
    for name, value in COMMON_HEADERS:
        request.setHeader(name, value)


def secure_page(request: Request) -> None:
    """
    The headers of an HTML answer: the common ones, the content security
    policy, and no caching.
    """
    secure_response(request)
    policy = content_security_policy(request.getHeader(b"host"))
    request.setHeader(b"Content-Security-Policy", policy)
    request.setHeader(b"Cache-Control", PAGE_CACHE_CONTROL)


def secure_asset(request: Request) -> None:
    """
    The headers of a static asset: the common ones, and revalidation.
    """
    secure_response(request)
    request.setHeader(b"Cache-Control", ASSET_CACHE_CONTROL)
