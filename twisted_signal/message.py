"""
The wire format: one immutable `Message`, one parser, the server's own messages.

This module is pure: it imports nothing from Twisted or Autobahn and does no
I/O, so it can be tested (and fuzzed) on its own.  `Message.from_json` is the
only way client input becomes a `Message`; it raises `InvalidMessage` and
nothing else.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

__all__ = [
    "ALL",
    "MAX_ADDRESSEES",
    "MAX_DEPTH",
    "MAX_EVENT_LENGTH",
    "SERVER_EVENTS",
    "Addressees",
    "InvalidMessage",
    "Message",
    "authenticated",
    "error",
    "impersonates_server",
    "joined",
    "left",
]

ALL: Final = "all"
MAX_EVENT_LENGTH: Final = 64
MAX_ADDRESSEES: Final = 64
MAX_DEPTH: Final = 64
"""How deeply `data` may nest arrays and objects."""
_DETAILS_PREVIEW: Final = 256
SERVER_EVENTS: Final = frozenset({"authenticated", "joined", "left", "error", "ice_servers"})
"""The names of the server's own events (SPEC 1.3 and 5.2): a client may not
send them, except ``ice_servers`` to itself (the request for fresh ICE
servers), and clients act on them only when the server sent them (see
`impersonates_server`)."""

Addressees = Literal["all"] | tuple[str, ...] | None


class InvalidMessage(ValueError):
    """
    A frame that is not a valid client message.

    `description` is the wire error's description (``"Invalid JSON"`` or
    ``"Invalid message"``) and `details` what the client is told about it.
    """

    def __init__(self, description: str, details: Any) -> None:
        super().__init__(f"{description}: {details}")
        self.description = description
        self.details = details


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number out of range: {text[:32]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# orjson decodes and encodes the frames; the standard library's codec (set
# up to be as strict: finite numbers only) answers for the few it cannot do
# exactly: integers beyond 64 bits (orjson would make them floats), escaped
# lone surrogates (valid JSON that orjson refuses), the exact "Invalid JSON"
# details, and any value orjson cannot encode.
_decoder = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)
_encode_ascii = json.JSONEncoder(ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode
_encode_utf8 = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode
_fast_loads = orjson.loads
_fast_dumps = orjson.dumps
_FastError = (orjson.JSONDecodeError, orjson.JSONEncodeError)
# A run of 19 digits may be an integer beyond 64 bits, which the stdlib keeps
# exact.  Mapping digits to "0" and the rest to " " and looking for 19 zeros
# is done in C and costs a fraction of a regular expression's search.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_NUMBER = b"0" * 19


@dataclass(frozen=True, slots=True, init=False)
class Message:
    """
    One signaling message.  `to` is ``"all"``, peer ids (any iterable of
    them, kept as a tuple), or None.

    The JSON key ``from`` is the attribute `from_`.  Instances are immutable
    and hashable as long as `data` is; use `dataclasses.replace` to derive a
    changed copy.
    """

    event: str
    data: Any = None
    from_: str | None = None
    to: Addressees = None
    _plain: bool = field(default=False, init=False, compare=False, repr=False)
    """`data` came out of the JSON decoder (or is the server's own): it holds
    no NaN or infinity, which orjson would write as null instead of refusing."""

    def __init__(
        self,
        event: str,
        data: Any = None,
        from_: str | None = None,
        to: Literal["all"] | Iterable[str] | None = None,
    ) -> None:
        if isinstance(to, str):
            if to != ALL:
                raise ValueError("'to' must be \"all\", peer ids, or None")
        elif to is not None and not isinstance(to, tuple):
            to = tuple(to)
        object.__setattr__(self, "event", event)
        object.__setattr__(self, "data", data)
        object.__setattr__(self, "from_", from_)
        object.__setattr__(self, "to", to)
        object.__setattr__(self, "_plain", False)

    @classmethod
    def _of_plain_json(cls, event: str, data: Any, from_: str | None, to: Addressees) -> Message:
        message = cls(event, data, from_, to)
        object.__setattr__(message, "_plain", True)
        return message

    @classmethod
    def from_json(
        cls, text: str | bytes, *, from_: str | None = None, server_events: bool = False
    ) -> Message:
        """
        Parse one client frame.  The client's ``from`` is replaced by `from_`
        (the server stamps the sender) and every key other than ``event``,
        ``data`` and ``to`` is dropped.

        A frame from a peer (`from_` given) may not use the name of one of the
        server's events (`SERVER_EVENTS`), except ``ice_servers`` addressed
        to the sender alone, which is then addressed to it exactly once.
        `server_events` lifts that rule, for text that the server side
        already accepted (a message relayed between the nodes of a cluster).
        Without `from_` the text is the server's own (the admin API's) and
        may use any name.

        @raise InvalidMessage: with description ``"Invalid JSON"`` when the
            text is not JSON, ``"Invalid message"`` when it is JSON but not a
            message.
        """
        obj = _decode(text)
        if not isinstance(obj, dict):
            raise InvalidMessage("Invalid message", "a message must be a JSON object")
        event = obj.get("event")
        if not isinstance(event, str):
            raise InvalidMessage("Invalid message", "'event' must be a string")
        if not 1 <= len(event) <= MAX_EVENT_LENGTH:
            raise InvalidMessage(
                "Invalid message", f"'event' must be 1 to {MAX_EVENT_LENGTH} characters"
            )
        data = obj.get("data")
        if isinstance(data, (dict, list)) and _may_nest_deeper(text) and _nested_deeper_than(data):
            raise InvalidMessage("Invalid message", f"'data' is nested deeper than {MAX_DEPTH}")
        to = _parse_to(obj.get("to", _MISSING))
        if from_ is not None and event in SERVER_EVENTS and not server_events:
            to = _server_event_from_peer(event, to, from_)
        return cls._of_plain_json(event, data, from_, to)

    def to_json(self) -> str:
        """
        Encode with exactly the four keys ``event``, ``data``, ``from``, ``to``.
        """
        obj = self._as_dict()
        if self._plain:
            try:
                return _fast_dumps(obj).decode("utf-8")
            except _FastError:
                pass
        return _encode_utf8(obj)

    def to_bytes(self) -> bytes:
        """
        The UTF-8 frame payload.  A lone surrogate (which a client can send as
        a JSON escape) cannot be UTF-8, so such a message is sent escaped.
        """
        obj = self._as_dict()
        if self._plain:
            try:
                return _fast_dumps(obj)
            except _FastError:
                pass  # a lone surrogate, an integer beyond 64 bits, ...
        try:
            return _encode_utf8(obj).encode("utf-8")
        except UnicodeEncodeError:
            return _encode_ascii(obj).encode("ascii")

    def _as_dict(self) -> dict[str, Any]:
        to = self.to
        return {
            "event": self.event,
            "data": self.data,
            "from": self.from_,
            "to": list(to) if isinstance(to, tuple) else to,
        }

    def addressees(self) -> tuple[str, ...]:
        """
        The listed peer ids, in order, each once (empty for ``"all"``/None).
        """
        to = self.to
        if not isinstance(to, tuple):
            return ()
        return tuple(dict.fromkeys(to))


_MISSING: Final = object()


def _decode(text: str | bytes) -> Any:
    """
    The JSON value of a frame.

    @raise InvalidMessage: ``"Invalid JSON"``.
    """
    if isinstance(text, bytes) and _LONG_NUMBER not in text.translate(_DIGITS_AS_ZEROS):
        try:
            return _fast_loads(text)
        except orjson.JSONDecodeError:
            pass  # the standard library decides, and says why
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidMessage("Invalid JSON", "frame is not valid UTF-8") from None
    try:
        return _decoder.decode(text)
    except (ValueError, RecursionError):
        raise InvalidMessage("Invalid JSON", text[:_DETAILS_PREVIEW]) from None


def _may_nest_deeper(text: str | bytes) -> bool:
    """
    Whether `text` has enough brackets to nest deeper than `MAX_DEPTH`: a
    count done in C that spares almost every frame the walk below.
    """
    if isinstance(text, bytes):
        return text.count(b"[") + text.count(b"{") > MAX_DEPTH
    return text.count("[") + text.count("{") > MAX_DEPTH


def _nested_deeper_than(value: dict[str, Any] | list[Any], limit: int = MAX_DEPTH) -> bool:
    """
    Whether `value` nests containers more than `limit` deep, found without
    recursion (a message must stay encodable however deep the stack is).
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _server_event_from_peer(event: str, to: Addressees, sender: str) -> Addressees:
    """
    The addressees of a peer's message named as one of the server's events:
    only a request for fresh ICE servers, to the sender alone, is one.

    @raise InvalidMessage: ``"Invalid message"`` for every other.
    """
    if event != "ice_servers":
        raise InvalidMessage(
            "Invalid message", f"'{event}' is an event of the server's; a peer may not send it"
        )
    if not isinstance(to, tuple) or set(to) != {sender}:
        raise InvalidMessage(
            "Invalid message",
            "'ice_servers' may only be sent to yourself, to ask for fresh ICE servers",
        )
    return (sender,)


def _parse_to(to: object) -> Addressees:
    if to is _MISSING:
        raise InvalidMessage("Invalid message", "'to' is missing")
    if to == ALL:
        return ALL
    if not isinstance(to, list):
        raise InvalidMessage("Invalid message", "'to' must be \"all\" or a list of peer ids")
    if len(to) > MAX_ADDRESSEES:
        raise InvalidMessage("Invalid message", f"'to' may list at most {MAX_ADDRESSEES} peer ids")
    for peer_id in to:
        if not isinstance(peer_id, str):
            raise InvalidMessage("Invalid message", "'to' must list peer ids as strings")
    return tuple(to)


# The server's own messages (SPEC 1.3).


def impersonates_server(message: Message) -> bool:
    """
    Whether `message`, as a client received it, bears the name of one of the
    server's events (`SERVER_EVENTS`) without being the server's: its
    ``from`` is not null (and, for ``joined``, not the newcomer itself).  A
    server never relays a peer's message under those names, but clients do
    not take a relay's word for it: they ignore such a message (SPEC 1.2).
    """
    if message.event not in SERVER_EVENTS or message.from_ is None:
        return False
    data = message.data
    return not (
        message.event == "joined"
        and isinstance(data, dict)
        and data.get("peer_id") == message.from_
    )


def authenticated(
    peer_id: str, peers: list[str], ice_servers: list[dict[str, Any]], **extra: Any
) -> Message:
    data: dict[str, Any] = {"peer_id": peer_id, "peers": peers, "ice_servers": ice_servers}
    data.update(extra)
    return Message._of_plain_json("authenticated", data, None, (peer_id,))


def joined(peer_id: str) -> Message:
    return Message._of_plain_json("joined", {"peer_id": peer_id}, peer_id, ALL)


def left(peer_id: str) -> Message:
    return Message._of_plain_json("left", {"peer_id": peer_id}, None, ALL)


def error(peer_id: str, description: str, details: Any = None) -> Message:
    data = {"description": description, "details": details}
    return Message._of_plain_json("error", data, None, (peer_id,))
