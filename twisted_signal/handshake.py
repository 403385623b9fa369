"""
The checks of a WebSocket opening handshake (RFC 6455 4.2.1) on a request
that twisted.web has already parsed: Autobahn's (``processHandshake``), in
its order and with its answers, without parsing the request a second time.

`check_upgrade` takes the request line and the headers as Autobahn would
have parsed them from the request as twisted.web rebuilt it for Autobahn
(each header once, its values joined by commas, lower-case names, on an
HTTP/1.1 request line) and answers an `Upgrade` to go on with, or the
`Refusal` to answer.  twisted.web has already refused header names that
are not tokens, values with NUL, CR or LF, and request lines that are not
``METHOD TARGET HTTP/1.x`` with a printable target; the rest of what
Autobahn's parser refuses is checked here.  Pure: no Twisted, no Autobahn
protocol object.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlparse

__all__ = ["Refusal", "Upgrade", "check_upgrade", "header_fields", "status_line"]

_FIELD_VALUE_INVALID = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""What a header value may not hold (RFC 9110 5.5)."""
_START_LINE_INVALID = re.compile(r"[\x00-\x1f\x7f]")
_KEY_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")
_PARSE_ERROR = "Error during parsing of HTTP status line / request headers : "


@dataclass(frozen=True, slots=True)
class Refusal:
    """The HTTP answer instead of the upgrade (Autobahn's reason and status)."""

    reason: str
    code: int = 400
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(slots=True)
class Upgrade:
    """What a valid opening handshake asks for."""

    uri: str
    path: str
    params: dict[str, list[str]]
    host: str
    version: int
    key: str
    protocols: list[str] = field(default_factory=list)
    origin: str = ""


def header_fields(raw: Any) -> dict[str, str] | Refusal:
    """
    The headers, from twisted.web's ``getAllRawHeaders()``, as Autobahn
    parses them from the request twisted.web rebuilds: lower-case names,
    each header's values joined by commas, stripped of spaces and tabs.
    """
    fields: dict[str, str] = {}
    for name, values in raw:
        value = b",".join(values).decode("iso-8859-1").strip(" \t")
        if _FIELD_VALUE_INVALID.search(value) is not None:
            return Refusal(_PARSE_ERROR + "invalid character in HTTP header field value")
        fields[name.decode("iso-8859-1").lower()] = value
    return fields


def status_line(method: bytes, uri: bytes) -> str | Refusal:
    """The request line Autobahn is given (always HTTP/1.1), or its refusal."""
    line = f"{method.decode('iso-8859-1')} {uri.decode('iso-8859-1')} HTTP/1.1"
    if _START_LINE_INVALID.search(line) is not None:
        return Refusal(_PARSE_ERROR + "invalid character in HTTP status line")
    return line


def check_upgrade(
    line: str,
    fields: dict[str, str],
    *,
    versions: Collection[int],
    external_port: int | None,
    origin_allowed: Callable[[str], Refusal | None],
) -> Upgrade | Refusal:
    """
    Autobahn's checks of an opening handshake, in its order, after the
    parse: the request line and target, Host, Upgrade and Connection, the
    version, the subprotocols, the Origin (`origin_allowed` judges one that
    is there), the key.
    """
    try:
        uri, path, params = _target(line)
        host = _host(fields, external_port)
        _upgrade_headers(fields)
        version = _version(fields, versions)
        protocols = _protocols(fields)
        origin = fields.get("sec-websocket-origin" if version < 13 else "origin")
        if origin is not None:
            origin = origin.strip()
            _raise(origin_allowed(origin))
        key = _key(fields)
    except _Refused as e:
        return e.refusal
    return Upgrade(uri, path, params, host, version, key, protocols, origin or "")


class _Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        self.refusal = refusal


def _raise(refusal: Refusal | None) -> None:
    if refusal is not None:
        raise _Refused(refusal)


def _refused(reason: str, code: int = 400, headers: tuple[tuple[str, str], ...] = ()) -> _Refused:
    return _Refused(Refusal(reason, code, headers))


def _target(line: str) -> tuple[str, str, dict[str, list[str]]]:
    parts = line.split()
    if len(parts) != 3:
        raise _refused(f'Bad HTTP request status line "{line}"')
    if parts[0] != "GET":
        raise _refused(f'HTTP method "{parts[0]}" not allowed', 405)
    uri = parts[1]
    try:
        parsed = urlparse(uri)
        params = parse_qs(parsed.query)
    except Exception:
        raise _refused(f'Bad HTTP request resource - could not parse "{uri}"') from None
    if parsed.fragment != "":
        raise _refused(
            f'HTTP requested resource contains a fragment identifier "{parsed.fragment}"'
        )
    return uri, parsed.path, params


def _host(fields: dict[str, str], external_port: int | None) -> str:
    host = fields.get("host")
    if host is None:
        raise _refused("HTTP Host header missing in opening handshake request")
    host = host.strip()
    if ":" not in host or host.endswith("]"):
        return host
    name, port = host.rsplit(":", 1)
    try:
        number = int(port.strip())
    except ValueError:
        raise _refused(f'invalid port "{port.strip()}" in HTTP Host header "{host}"') from None
    if external_port and number != external_port:
        raise _refused(
            f'port {number} in HTTP Host header "{host}" does not match server '
            f"listening port {external_port}"
        )
    return name


def _upgrade_headers(fields: dict[str, str]) -> None:
    upgrade = fields.get("upgrade")
    if upgrade is None:
        raise _refused("HTTP Upgrade header missing", 426)
    if not _lists(upgrade, "websocket"):
        raise _refused(
            f'HTTP Upgrade headers do not include "websocket" value (case-insensitive): "{upgrade}"'
        )
    connection = fields.get("connection")
    if connection is None:
        raise _refused("HTTP Connection header missing")
    if not _lists(connection, "upgrade"):
        raise _refused(
            'HTTP Connection headers do not include "upgrade" value (case-insensitive): '
            f'"{connection}"'
        )


def _lists(value: str, token: str) -> bool:
    return any(item.strip().lower() == token for item in value.split(","))


def _version(fields: dict[str, str], versions: Collection[int]) -> int:
    text = fields.get("sec-websocket-version")
    if text is None:
        raise _refused("WebSocket connection denied - Hixie76 protocol not supported.")
    try:
        version = int(text)
    except ValueError:
        raise _refused(
            f'could not parse HTTP Sec-WebSocket-Version header "{text}" in opening '
            "handshake request"
        ) from None
    if version not in versions:
        supported = ",".join(str(v) for v in sorted(versions, reverse=True))
        raise _refused(
            f"WebSocket version {version} not supported (supported versions: {supported})",
            400,
            (("Sec-WebSocket-Version", supported),),
        )
    return version


def _protocols(fields: dict[str, str]) -> list[str]:
    offered = fields.get("sec-websocket-protocol")
    if offered is None:
        return []
    protocols: list[str] = []
    for name in (p.strip() for p in offered.split(",")):
        if name in protocols:
            raise _refused(
                f'duplicate protocol "{name}" specified in HTTP Sec-WebSocket-Protocol header'
            )
        protocols.append(name)
    return protocols


def _key(fields: dict[str, str]) -> str:
    key = fields.get("sec-websocket-key")
    if key is None:
        raise _refused("HTTP Sec-WebSocket-Key header missing")
    key = key.strip()
    if len(key) != 24:
        raise _refused(f'bad Sec-WebSocket-Key (length must be 24 ASCII chars) "{key}"')
    if key[-2:] != "==":
        raise _refused(f'bad Sec-WebSocket-Key (invalid base64 encoding) "{key}"')
    for c in key[:-2]:
        if c not in _KEY_ALPHABET:
            raise _refused(
                f'bad character "{c}" in Sec-WebSocket-Key (invalid base64 encoding) "{key}"'
            )
    return key
