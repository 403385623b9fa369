"""
Tests of the pure codec `twisted_signal.message` (SPEC 1.1 to 1.3): no
reactor, no Twisted, only values in and values (or `InvalidMessage`) out.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twisted_signal.message import (
    ALL,
    MAX_ADDRESSEES,
    MAX_DEPTH,
    MAX_EVENT_LENGTH,
    SERVER_EVENTS,
    InvalidMessage,
    Message,
    authenticated,
    error,
    impersonates_server,
    joined,
    left,
)

pytestmark = pytest.mark.pure

T = TypeVar("T")

WIRE_KEYS = {"event", "data", "from", "to"}
PEER_A = "0b9e4a55-3a4b-4c8e-9d1e-6c1f0f1a2b3c"
PEER_B = "5d2c7f10-8e6a-4f3b-a1c9-2e4d6b8a0c1e"


def frame(**fields: Any) -> str:
    return json.dumps(fields)


def as_list(*ids: str) -> Any:
    """
    A list of ids, typed Any: SPEC 3 lets Python callers give `to` as a list.
    """
    return list(ids)


def parse_error(text: str | bytes) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        Message.from_json(text, from_=PEER_A)
    return info.value


def wire(message: Message) -> Any:
    return json.loads(message.to_json())


# Bad input (SPEC 1.2).


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "ping",
        "{",
        '{"event": "x", "to": "all"',
        "{'event': 'x', 'to': 'all'}",
        '{"event": "x", "to": "all"} trailing',
        '{"event": "x", "to": "all",}',
        "\ufeff" + '{"event": "x", "to": "all"}',
        '{"event": "x\x00", "to": "all"}',
    ],
)
def test_not_json(text: str) -> None:
    e = parse_error(text)
    assert (e.description, e.details) == ("Invalid JSON", text)


def test_invalid_json_details_are_the_first_256_characters() -> None:
    text = "not json " + "é" * 1000
    e = parse_error(text)
    assert e.description == "Invalid JSON"
    assert e.details == text[:256]
    assert len(e.details) == 256


def test_invalid_json_from_bytes_reports_characters_not_bytes() -> None:
    text = "é" * 300
    e = parse_error(text.encode("utf-8"))
    assert (e.description, e.details) == ("Invalid JSON", "é" * 256)


@pytest.mark.parametrize(
    "payload", [b"\xff", b'{"event": "x", "to": "all", "data": "\xc3"}', b"\xed\xa0\x80"]
)
def test_invalid_utf8_is_invalid_json(payload: bytes) -> None:
    e = parse_error(payload)
    assert (e.description, e.details) == ("Invalid JSON", "frame is not valid UTF-8")


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1.5e999"])
def test_non_finite_numbers_are_invalid_json(number: str) -> None:
    text = '{"event": "x", "to": "all", "data": ' + number + "}"
    e = parse_error(text)
    assert (e.description, e.details) == ("Invalid JSON", text)


def test_huge_integer_is_invalid_json_not_a_crash() -> None:
    # Python refuses to convert more than 4300 digits: still only InvalidMessage.
    text = '{"event": "x", "to": "all", "data": ' + "9" * 5000 + "}"
    e = parse_error(text)
    assert (e.description, e.details) == ("Invalid JSON", text[:256])


NOT_AN_OBJECT = "a message must be a JSON object"
EVENT_NOT_STRING = "'event' must be a string"
EVENT_LENGTH = "'event' must be 1 to 64 characters"
TO_MISSING = "'to' is missing"
TO_MALFORMED = "'to' must be \"all\" or a list of peer ids"
TO_NOT_STRINGS = "'to' must list peer ids as strings"
TO_TOO_MANY = "'to' may list at most 64 peer ids"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[]", NOT_AN_OBJECT),
        ('[{"event": "x", "to": "all"}]', NOT_AN_OBJECT),
        ('"offer"', NOT_AN_OBJECT),
        ("42", NOT_AN_OBJECT),
        ("null", NOT_AN_OBJECT),
        ("true", NOT_AN_OBJECT),
        ("{}", EVENT_NOT_STRING),
        (frame(to="all"), EVENT_NOT_STRING),
        (frame(event=None, to="all"), EVENT_NOT_STRING),
        (frame(event=1, to="all"), EVENT_NOT_STRING),
        (frame(event=["offer"], to="all"), EVENT_NOT_STRING),
        (frame(event={"name": "offer"}, to="all"), EVENT_NOT_STRING),
        (frame(event="", to="all"), EVENT_LENGTH),
        (frame(event="e" * 65, to="all"), EVENT_LENGTH),
        (frame(event="offer"), TO_MISSING),
        (frame(event="offer", data={"sdp": "v=0"}), TO_MISSING),
        (frame(event="offer", to=None), TO_MALFORMED),
        (frame(event="offer", to="ALL"), TO_MALFORMED),
        (frame(event="offer", to=PEER_A), TO_MALFORMED),
        (frame(event="offer", to={"id": PEER_A}), TO_MALFORMED),
        (frame(event="offer", to=7), TO_MALFORMED),
        (frame(event="offer", to=True), TO_MALFORMED),
        (frame(event="offer", to=[PEER_A, 1]), TO_NOT_STRINGS),
        (frame(event="offer", to=[None]), TO_NOT_STRINGS),
        (frame(event="offer", to=[[PEER_A]]), TO_NOT_STRINGS),
        (frame(event="offer", to=[f"peer-{i}" for i in range(65)]), TO_TOO_MANY),
    ],
)
def test_invalid_message(text: str, reason: str) -> None:
    e = parse_error(text)
    assert (e.description, e.details) == ("Invalid message", reason)
    # The same frame as bytes gives the same answer.
    e = parse_error(text.encode("utf-8"))
    assert (e.description, e.details) == ("Invalid message", reason)


def test_invalid_message_is_a_value_error_with_a_readable_str() -> None:
    e = parse_error("[]")
    assert isinstance(e, ValueError)
    assert str(e) == "Invalid message: a message must be a JSON object"


def test_unclosed_deep_nesting_is_invalid_json_not_recursion_error() -> None:
    text = "[" * 100_000
    e = parse_error(text)
    assert (e.description, e.details) == ("Invalid JSON", "[" * 256)


def test_closed_deep_nesting_is_invalid_not_recursion_error() -> None:
    text = '{"event": "x", "to": "all", "data": ' + "[" * 100_000 + "]" * 100_000 + "}"
    e = parse_error(text)
    assert e.description in {"Invalid JSON", "Invalid message"}


def _nested(depth: int) -> str:
    return '{"event": "x", "to": "all", "data": ' + "[" * depth + "]" * depth + "}"


def _accepted(depth: int) -> bool:
    try:
        Message.from_json(_nested(depth))
    except InvalidMessage:
        return False
    return True


def _deeper(frames: int, fn: Callable[[], T]) -> T:
    if frames == 0:
        return fn()
    return _deeper(frames - 1, fn)


def test_every_accepted_message_can_be_encoded_deeper_in_the_stack() -> None:
    """
    The server decodes a frame in `onMessage` and encodes it for delivery
    further down the stack (queues, callbacks, Deferreds).  Whatever
    `from_json` accepts must then encode: a nesting that only just fits under
    the recursion limit must be refused up front, not blow up in `to_bytes`.
    """
    low, high = 1, 100_000  # accepted(low); not accepted(high)
    assert _accepted(low)
    assert not _accepted(high)
    while high - low > 1:
        middle = (low + high) // 2
        if _accepted(middle):
            low = middle
        else:
            high = middle
    message = Message.from_json(_nested(low))
    payload = _deeper(50, message.to_bytes)
    assert json.loads(payload)["data"] == message.data


# Valid messages.


def test_to_all() -> None:
    text = frame(event="offer", data={"sdp": "v=0"}, to="all")
    assert Message.from_json(text, from_=PEER_A) == Message("offer", {"sdp": "v=0"}, PEER_A, ALL)


def test_to_list_keeps_order_and_duplicates_and_is_a_tuple() -> None:
    message = Message.from_json(frame(event="candidate", to=[PEER_B, PEER_A, PEER_B]))
    assert message.to == (PEER_B, PEER_A, PEER_B)
    assert type(message.to) is tuple
    assert message.addressees() == (PEER_B, PEER_A)


def test_to_empty_list() -> None:
    message = Message.from_json(frame(event="x", to=[]))
    assert message.to == ()
    assert message.addressees() == ()


def test_event_lengths_at_the_limits() -> None:
    assert MAX_EVENT_LENGTH == 64
    assert Message.from_json(frame(event="e", to="all")).event == "e"
    assert Message.from_json(frame(event="e" * 64, to="all")).event == "e" * 64
    # Characters, not bytes: 64 non-ASCII characters are fine.
    assert Message.from_json(frame(event="é" * 64, to="all")).event == "é" * 64


def test_at_most_64_addressees() -> None:
    assert MAX_ADDRESSEES == 64
    ids = [f"peer-{i}" for i in range(64)]
    assert Message.from_json(frame(event="x", to=ids)).to == tuple(ids)


def test_data_absent_is_none() -> None:
    assert Message.from_json(frame(event="x", to="all")).data is None


@pytest.mark.parametrize(
    "data", [None, 0, -1.5, "", "text", True, False, [], {}, [1, "a", None], {"a": {"b": [1]}}]
)
def test_data_any_json(data: Any) -> None:
    assert Message.from_json(frame(event="x", to="all", data=data)).data == data


def test_extra_keys_are_dropped() -> None:
    text = frame(event="x", to="all", data=1, room="other", id=5, peer_id=PEER_B)
    message = Message.from_json(text, from_=PEER_A)
    assert message == Message("x", 1, PEER_A, "all")
    assert wire(message) == {"event": "x", "data": 1, "from": PEER_A, "to": "all"}


def test_client_from_is_replaced_by_the_sender() -> None:
    text = frame(event="offer", to=[PEER_B], **{"from": PEER_B})
    assert Message.from_json(text, from_=PEER_A).from_ == PEER_A
    assert Message.from_json(text).from_ is None


# The names of the server's events are the server's (SPEC 1.2).

SERVER_ONLY = ["authenticated", "joined", "left", "error"]


@pytest.mark.parametrize("event", SERVER_ONLY)
@pytest.mark.parametrize("to", [ALL, [PEER_A], [PEER_B], [PEER_A, PEER_B], []])
def test_a_peer_may_not_send_a_server_event(event: str, to: Any) -> None:
    text = frame(event=event, to=to, data={"peer_id": PEER_A, "description": "Room closed"})
    for payload in (text, text.encode("utf-8")):
        e = parse_error(payload)
        assert e.description == "Invalid message"
        assert isinstance(e.details, str) and event in e.details, e.details


def test_the_server_events_are_exactly_these() -> None:
    assert {*SERVER_ONLY, "ice_servers"} == SERVER_EVENTS
    # Names that are not the server's, even close ones, are anyone's.
    for event in ("Left", "left ", "errors", "ice_server", "authenticate", "join"):
        assert Message.from_json(frame(event=event, to=ALL), from_=PEER_A).event == event


@pytest.mark.parametrize("to", [[PEER_A], [PEER_A, PEER_A]])
def test_ice_servers_to_oneself_is_the_refresh_request(to: list[str]) -> None:
    message = Message.from_json(frame(event="ice_servers", to=to, data=[1]), from_=PEER_A)
    # Addressed to the sender once, so the server answers it (SPEC 5.2).
    assert message == Message("ice_servers", [1], PEER_A, (PEER_A,))


@pytest.mark.parametrize("to", [ALL, [PEER_B], [PEER_A, PEER_B], [PEER_B, PEER_A], []])
def test_ice_servers_to_anyone_else_is_invalid(to: Any) -> None:
    e = parse_error(frame(event="ice_servers", to=to, data=[{"urls": ["turn:evil.test"]}]))
    assert e.description == "Invalid message"
    assert isinstance(e.details, str) and "ice_servers" in e.details, e.details


@pytest.mark.parametrize("event", sorted(SERVER_EVENTS))
def test_the_server_side_may_use_its_own_event_names(event: str) -> None:
    # The admin API's messages (no sender) are the server's own, and a
    # message a node relays was accepted by the member's node already.
    text = frame(event=event, to=ALL, data=None)
    assert Message.from_json(text).event == event
    relayed = Message.from_json(text, from_=PEER_A, server_events=True)
    assert relayed == Message(event, None, PEER_A, ALL)


@pytest.mark.parametrize(
    ("message", "forged"),
    [
        (authenticated(PEER_A, [], []), False),
        (joined(PEER_B), False),
        (left(PEER_B), False),
        (error(PEER_A, "Room closed", "normal"), False),
        (Message("ice_servers", [], None, (PEER_A,)), False),
        (Message("anything", 1, None, ALL), False),
        (Message("offer", 1, PEER_B, (PEER_A,)), False),
        (Message("authenticated", {"peer_id": PEER_B}, PEER_B, (PEER_A,)), True),
        (Message("joined", {"peer_id": PEER_A}, PEER_B, ALL), True),
        (Message("joined", None, PEER_B, ALL), True),
        (Message("left", {"peer_id": PEER_B}, PEER_B, ALL), True),
        (Message("error", {"description": "Room closed"}, PEER_B, (PEER_A,)), True),
        (Message("ice_servers", [{"urls": ["turn:evil.test"]}], PEER_B, (PEER_A,)), True),
        (Message("ice_servers", [], PEER_A, (PEER_A,)), True),
    ],
)
def test_impersonates_server(message: Message, forged: bool) -> None:
    assert impersonates_server(message) is forged


def test_bytes_input() -> None:
    text = frame(event="offer", data={"name": "Zoë 🎥"}, to=[PEER_B])
    assert Message.from_json(text.encode("utf-8"), from_=PEER_A) == Message(
        "offer", {"name": "Zoë 🎥"}, PEER_A, (PEER_B,)
    )


def test_escaped_lone_surrogate_survives_to_bytes() -> None:
    message = Message.from_json('{"event": "x", "to": "all", "data": "a\\ud800b"}')
    assert message.data == "a\ud800b"
    payload = message.to_bytes()
    assert payload.isascii()
    payload.decode("utf-8")  # valid UTF-8
    assert json.loads(payload) == {"event": "x", "data": "a\ud800b", "from": None, "to": "all"}


def test_lone_surrogate_in_event_survives_to_bytes() -> None:
    message = Message.from_json('{"event": "\\udc00", "to": "all"}')
    assert json.loads(message.to_bytes())["event"] == "\udc00"


def test_to_bytes_is_utf8_not_escaped() -> None:
    message = Message("x", "é🎥", None, ALL)
    assert message.to_bytes() == '{"event":"x","data":"é🎥","from":null,"to":"all"}'.encode()


# Encoding.


def test_to_json_has_exactly_the_four_keys() -> None:
    assert wire(Message("x")) == {"event": "x", "data": None, "from": None, "to": None}
    assert wire(Message("offer", {"sdp": "v=0"}, PEER_A, as_list(PEER_B))) == {
        "event": "offer",
        "data": {"sdp": "v=0"},
        "from": PEER_A,
        "to": [PEER_B],
    }


def test_to_json_is_compact() -> None:
    assert Message("x", [1, 2], None, "all").to_json() == (
        '{"event":"x","data":[1,2],"from":null,"to":"all"}'
    )


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_to_json_never_writes_non_json(value: float) -> None:
    with pytest.raises(ValueError):
        Message("x", value).to_json()


def test_round_trip_of_a_client_message() -> None:
    message = Message("candidate", {"candidate": "a=1", "sdpMLineIndex": 0}, PEER_A, (PEER_B,))
    assert Message.from_json(message.to_json(), from_=PEER_A) == message
    assert Message.from_json(message.to_bytes(), from_=PEER_A) == message


# The Message value.


def test_message_defaults() -> None:
    message = Message("x")
    assert (message.event, message.data, message.from_, message.to) == ("x", None, None, None)
    assert message.addressees() == ()


def test_message_is_immutable() -> None:
    message = Message("x", {"a": 1}, PEER_A, as_list(PEER_B))
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.event = "y"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.to = ALL  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del message.from_
    assert message == Message("x", {"a": 1}, PEER_A, (PEER_B,))


def test_list_to_is_stored_as_a_tuple() -> None:
    ids = as_list(PEER_A, PEER_B)
    message = Message("x", to=ids)
    ids.append("later")
    assert message.to == (PEER_A, PEER_B)
    assert type(message.to) is tuple
    assert message == Message("x", to=(PEER_A, PEER_B))
    assert hash(message) == hash(Message("x", to=(PEER_A, PEER_B)))


def test_a_string_to_other_than_all_is_refused() -> None:
    """
    ``to="<peer id>"`` is a likely mistake for ``to=["<peer id>"]``; it must
    not silently become a tuple of single characters.
    """
    with pytest.raises((TypeError, ValueError)):
        Message("x", to=PEER_A)


def test_replace_gives_a_changed_copy() -> None:
    message = Message("x", 1, PEER_A, ALL)
    changed = dataclasses.replace(message, data=2)
    assert changed == Message("x", 2, PEER_A, ALL)
    assert message.data == 1


def test_addressees_dedups_keeping_order() -> None:
    message = Message("x", to=("c", "a", "c", "b", "a", "c"))
    assert message.addressees() == ("c", "a", "b")
    assert Message("x", to=ALL).addressees() == ()
    assert Message("x", to=None).addressees() == ()


# The server's own messages (SPEC 1.3).


def test_authenticated() -> None:
    ice = [{"urls": ["stun:stun.example.org:3478"]}]
    message = authenticated(PEER_A, [PEER_B], ice)
    assert message == Message(
        "authenticated",
        {"peer_id": PEER_A, "peers": [PEER_B], "ice_servers": ice},
        None,
        (PEER_A,),
    )
    assert wire(message) == {
        "event": "authenticated",
        "data": {"peer_id": PEER_A, "peers": [PEER_B], "ice_servers": ice},
        "from": None,
        "to": [PEER_A],
    }


def test_authenticated_empty_room_and_extra_data() -> None:
    message = authenticated(PEER_A, [], [], resume_token="t0k")
    assert wire(message) == {
        "event": "authenticated",
        "data": {"peer_id": PEER_A, "peers": [], "ice_servers": [], "resume_token": "t0k"},
        "from": None,
        "to": [PEER_A],
    }


def test_joined_is_from_the_newcomer() -> None:
    assert wire(joined(PEER_B)) == {
        "event": "joined",
        "data": {"peer_id": PEER_B},
        "from": PEER_B,
        "to": "all",
    }


def test_left() -> None:
    assert wire(left(PEER_B)) == {
        "event": "left",
        "data": {"peer_id": PEER_B},
        "from": None,
        "to": "all",
    }


@pytest.mark.parametrize(
    ("description", "details"),
    [
        ("Invalid JSON", "{oops"),
        ("Invalid message", "'to' is missing"),
        ("No such peer", [PEER_B]),
        ("Could not join room", "room_is_full"),
        ("Room closed", "normal"),
        ("Room closed", "shutdown"),
    ],
)
def test_error(description: str, details: Any) -> None:
    assert wire(error(PEER_A, description, details)) == {
        "event": "error",
        "data": {"description": description, "details": details},
        "from": None,
        "to": [PEER_A],
    }


def test_error_without_details() -> None:
    assert wire(error(PEER_A, "Rate limited")) == {
        "event": "error",
        "data": {"description": "Rate limited", "details": None},
        "from": None,
        "to": [PEER_A],
    }


# Properties.

json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=20,
)

peer_ids = st.text(max_size=40)

message_like: st.SearchStrategy[dict[str, Any]] = st.fixed_dictionaries(
    {},
    optional={
        "event": st.text(max_size=70) | json_values,
        "to": st.just("all") | st.lists(peer_ids, max_size=70) | json_values,
        "data": json_values,
        "from": json_values,
        "extra": json_values,
    },
)

json_ish_text = st.text(alphabet='{}[]":,0123456789.eE+-\\ utrfalsenvoNIy', max_size=80)

messages: st.SearchStrategy[Message] = st.builds(
    Message,
    event=st.text(min_size=1, max_size=64).filter(lambda event: event not in SERVER_EVENTS),
    data=json_values,
    from_=st.none() | peer_ids,
    to=st.just(ALL) | st.lists(peer_ids, max_size=64).map(tuple),
)

fast = settings(max_examples=150, deadline=None)


def _check_parsed(obj: Any) -> None:
    """
    `obj` is valid JSON: parsing it is either the expected message or an
    "Invalid message", never "Invalid JSON" and never another exception.
    """
    try:
        message = Message.from_json(json.dumps(obj), from_=PEER_A)
    except InvalidMessage as e:
        assert e.description == "Invalid message"
        assert isinstance(e.details, str)
        return
    assert isinstance(obj, dict)
    assert message.event == obj["event"]
    assert message.data == obj.get("data")
    assert message.from_ == PEER_A
    assert message.to == (ALL if obj["to"] == ALL else tuple(obj["to"]))


@fast
@given(json_values)
def test_any_json_value_parses_or_is_an_invalid_message(obj: Any) -> None:
    _check_parsed(obj)


@fast
@given(message_like)
def test_any_message_like_object_parses_or_is_an_invalid_message(obj: dict[str, Any]) -> None:
    _check_parsed(obj)


def _parse_or_invalid(text: str | bytes) -> None:
    try:
        message = Message.from_json(text)
    except InvalidMessage as e:
        assert e.description in {"Invalid JSON", "Invalid message"}
        return
    assert isinstance(message, Message)


@fast
@given(st.text())
def test_any_text_parses_or_is_an_invalid_message(text: str) -> None:
    _parse_or_invalid(text)


@fast
@given(json_ish_text)
def test_any_json_ish_text_parses_or_is_an_invalid_message(text: str) -> None:
    _parse_or_invalid(text)


@fast
@given(st.binary())
def test_any_bytes_parse_or_are_an_invalid_message(payload: bytes) -> None:
    _parse_or_invalid(payload)


@fast
@given(messages)
def test_valid_messages_round_trip(message: Message) -> None:
    text = message.to_json()
    assert set(json.loads(text)) == WIRE_KEYS
    assert Message.from_json(text, from_=message.from_) == message
    assert Message.from_json(message.to_bytes(), from_=message.from_) == message


# The fast codec (orjson) and the frames it hands to the standard library.


def test_bytes_frames_keep_integers_beyond_64_bits_exact() -> None:
    big = 2**70 + 1
    payload = b'{"event": "x", "to": "all", "data": [%d, -%d]}' % (big, big)
    message = Message.from_json(payload)
    assert message.data == [big, -big]
    assert json.loads(message.to_bytes())["data"] == [big, -big]


def test_bytes_frames_with_an_escaped_lone_surrogate_are_accepted() -> None:
    message = Message.from_json(b'{"event": "x", "to": "all", "data": "a\\ud800b"}')
    assert message.data == "a\ud800b"
    payload = message.to_bytes()
    assert payload.isascii()
    assert json.loads(payload)["data"] == "a\ud800b"


@pytest.mark.parametrize(
    "text", ["{oops", '{"event": "x", "to": "all", "data": 1e400}', "[" * 2000]
)
def test_bytes_frames_get_the_same_invalid_json_details(text: str) -> None:
    e = parse_error(text.encode("utf-8"))
    assert (e.description, e.details) == ("Invalid JSON", text[:256])


@pytest.mark.parametrize("depth", [MAX_DEPTH, MAX_DEPTH + 1])
def test_bytes_frames_nesting_limit(depth: int) -> None:
    payload = _nested(depth).encode()
    if depth <= MAX_DEPTH:
        assert Message.from_json(payload).data is not None
    else:
        e = parse_error(payload)
        assert (e.description, e.details) == (
            "Invalid message",
            f"'data' is nested deeper than {MAX_DEPTH}",
        )


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    text = frame(event="x", to="all", data={"sdp": "[{" * 500})
    assert Message.from_json(text.encode()).data == {"sdp": "[{" * 500}


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_to_bytes_never_writes_non_json(value: float) -> None:
    # orjson would write NaN as null: a message built in Python is encoded
    # by the standard library, which refuses.
    with pytest.raises(ValueError):
        Message("x", value).to_bytes()
    with pytest.raises(ValueError):
        dataclasses.replace(Message.from_json(frame(event="x", to="all")), data=value).to_bytes()


def test_the_fast_and_the_standard_encodings_are_the_same_json() -> None:
    text = frame(event="offer", to=["b"], data={"sdp": "v=0\r\n", "n": [1, 2.5, None, True]})
    fast = Message.from_json(text.encode(), from_="a")
    standard = Message("offer", fast.data, "a", ("b",))
    assert fast.to_bytes() == standard.to_bytes()
    assert fast.to_json() == standard.to_json()
