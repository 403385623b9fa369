"""
The Redis client's codec and connection on in-memory transports: a command
is queued only once it is encoded, replies go to their own commands in
order however they are split, and input that is not RESP2 drops the
connection and fails what was in flight (it never shifts a reply).
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure

from twisted_signal.cluster.resp import (
    MAX_LINE,
    ProtocolError,
    RedisError,
    RedisUnavailable,
    _Parser,
    encode,
)

from .support.resp import Outcome, connected

pytestmark = pytest.mark.memory

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_all(data: bytes) -> list[Any]:
    parser = _Parser()
    parser.feed(data)
    return list(parser.replies())


# Encoding.


def test_a_command_that_cannot_be_encoded_fails_alone_and_shifts_nothing() -> None:
    protocol, transport, _ = connected()
    # A str with a lone surrogate (what a peer can send as a JSON escape)
    # is not UTF-8.
    bad = Outcome(protocol.execute("XADD", "s", "*", "message", "\ud800"))
    get_a = Outcome(protocol.execute("GET", "a"))
    get_b = Outcome(protocol.execute("GET", "b"))
    assert bad.failure is not None and bad.failure.check(ValueError)
    assert transport.value() == encode(("GET", "a")) + encode(("GET", "b"))
    protocol.dataReceived(b"$1\r\na\r\n$1\r\nb\r\n")
    assert (get_a.value, get_b.value) == (b"a", b"b")


def test_commands_are_pipelined_each_written_at_once_without_waiting_for_replies() -> None:
    # Twisted's TCP transport sends what a turn of the reactor wrote in one
    # go, so a node's XADDs of one turn leave in one write.
    protocol, transport, _ = connected()
    outcomes = [Outcome(protocol.execute("XADD", "s", "*", "n", i)) for i in range(100)]
    assert transport.value() == b"".join(encode(("XADD", "s", "*", "n", i)) for i in range(100))
    assert all(o.value is None and o.failure is None for o in outcomes)
    protocol.dataReceived(b"".join(b"$3\r\n%d-0\r\n" % (i % 10) for i in range(100)))
    assert [o.value for o in outcomes] == [b"%d-0" % (i % 10) for i in range(100)]


@pytest.mark.parametrize("arg", [None, True, object(), ["x"]])
def test_only_bytes_str_and_numbers_are_arguments(arg: object) -> None:
    protocol, transport, _ = connected()
    bad = Outcome(protocol.execute("SET", "k", arg))
    assert bad.failure is not None and bad.failure.check(ValueError)
    assert transport.value() == b""


def test_the_client_encodes_before_it_connects() -> None:
    from twisted.internet.testing import MemoryReactorClock

    from twisted_signal.cluster.resp import RedisClient

    reactor = MemoryReactorClock()
    client = RedisClient("redis://127.0.0.1:1/0", reactor)
    bad = Outcome(client.execute("SET", "k", "\udfff"))
    assert bad.failure is not None and bad.failure.check(ValueError)
    assert reactor.tcpClients == []


def test_every_command_waiting_for_a_connection_that_fails_fails_as_refused() -> None:
    from twisted.internet.error import ConnectionRefusedError
    from twisted.internet.testing import MemoryReactorClock

    from twisted_signal.cluster.resp import RedisClient, RedisRefused

    reactor = MemoryReactorClock()
    client = RedisClient("redis://127.0.0.1:1/0", reactor)
    waiting = [Outcome(client.execute("PING")) for _ in range(3)]
    assert len(reactor.tcpClients) == 1  # one connection for all three
    _, _, factory, _, _ = reactor.tcpClients[0]
    factory.clientConnectionFailed(reactor.connectors[0], Failure(ConnectionRefusedError()))
    for outcome in waiting:
        assert outcome.failure is not None and outcome.failure.check(RedisRefused), outcome
    # The next command tries a new connection.
    Outcome(client.execute("PING"))
    assert len(reactor.tcpClients) == 2


# Protocol errors.


@pytest.mark.parametrize(
    "garbage",
    [
        b"!oops\r\n",  # no such type
        b"%1\r\n+a\r\n+b\r\n",  # a RESP3 map: never asked for
        b"_\r\n",  # RESP3 null
        b"$x\r\n",  # a length that is no number
        b"$1_0\r\n0123456789\r\n",  # int() would take it
        b"$ 1\r\na\r\n",
        b"$-2\r\n",
        b"*-5\r\n",
        b"$1\r\nab\r\n",  # a bulk not followed by CRLF
        b":12a\r\n",
        b"+\xff\xfe\r\n",  # not UTF-8
        b"+" + b"x" * (MAX_LINE + 1),  # no end of line in sight
    ],
)
def test_input_that_is_not_resp_drops_the_connection_and_fails_what_is_in_flight(
    garbage: bytes,
) -> None:
    protocol, transport, lost = connected()
    first = Outcome(protocol.execute("PING"))
    second = Outcome(protocol.execute("GET", "k"))
    third = Outcome(protocol.execute("GET", "j"))
    protocol.dataReceived(b"+PONG\r\n" + garbage + b"$1\r\nv\r\n")
    assert first.value == "PONG"
    for outcome in (second, third):
        assert outcome.failure is not None and outcome.failure.check(RedisUnavailable)
        assert "protocol error" in outcome.failure.getErrorMessage()
    assert transport.disconnecting or transport.disconnected
    assert lost == ["lost"]
    # The connection is done with: nothing more is sent on it.
    later = Outcome(protocol.execute("PING"))
    assert later.failure is not None and later.failure.check(RedisUnavailable)
    protocol.dataReceived(b"+PONG\r\n")
    assert later.value is None


def test_a_reply_to_no_command_drops_the_connection() -> None:
    protocol, transport, lost = connected()
    ping = Outcome(protocol.execute("PING"))
    protocol.dataReceived(b"+PONG\r\n+PONG\r\n")
    assert ping.value == "PONG"
    assert transport.disconnecting or transport.disconnected
    assert lost == ["lost"]


def test_an_error_reply_fails_only_its_command() -> None:
    protocol, _, lost = connected()
    a, b = Outcome(protocol.execute("EVAL", "x", 0)), Outcome(protocol.execute("PING"))
    protocol.dataReceived(b"-ERR bad script\r\n+PONG\r\n")
    assert a.failure is not None and a.failure.check(RedisError)
    assert a.failure.getErrorMessage() == "ERR bad script"
    assert b.value == "PONG" and lost == []


class _CountingParser(_Parser):
    calls = 0

    def _next(self) -> Any:
        self.calls += 1
        return super()._next()


def test_a_command_that_timed_out_still_takes_its_own_reply() -> None:
    from twisted.internet.defer import TimeoutError as DeferredTimeout
    from twisted.internet.task import Clock

    protocol, _, lost = connected()
    clock = Clock()
    slow = Outcome(protocol.execute("XREAD", "BLOCK", 0).addTimeout(1, clock))
    clock.advance(2)
    assert slow.failure is not None and slow.failure.check(DeferredTimeout)
    after = Outcome(protocol.execute("GET", "k"))
    protocol.dataReceived(b"*-1\r\n$1\r\nv\r\n")
    assert after.value == b"v" and lost == []


def test_a_large_reply_in_many_pieces_is_read_once() -> None:
    """Each piece costs what it holds, not what came before it."""
    entries = [[b"%d-0" % i, [b"op", b"submit", b"message", b"x" * 200]] for i in range(2000)]
    data = resp([[b"stream", entries]])
    parser = _CountingParser()
    replies: list[Any] = []
    for i in range(0, len(data), 1000):
        parser.feed(data[i : i + 1000])
        replies += parser.replies()
    assert replies == [[[b"stream", entries]]]
    assert parser.calls <= len(data) // 1000 + 2


# Fuzz: arbitrary replies, arbitrary pieces, arbitrary arguments, garbage.


def resp(value: Any) -> bytes:
    """`value` as Redis would send it (RESP2)."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, bytes):
        return b"$%d\r\n%s\r\n" % (len(value), value)
    if isinstance(value, RedisError):
        return b"-%s\r\n" % str(value).encode()
    if isinstance(value, str):
        return b"+%s\r\n" % value.encode()
    if isinstance(value, int):
        return b":%d\r\n" % value
    return b"*%d\r\n" % len(value) + b"".join(resp(v) for v in value)


line_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=20
)
replies = st.recursive(
    st.none()
    | st.binary(max_size=40)
    | st.integers(-(2**63), 2**63 - 1)
    | line_text
    | line_text.map(lambda t: RedisError("ERR " + t)),
    lambda children: st.lists(children, max_size=5),
    max_leaves=30,
)
args = (
    st.binary(max_size=30)
    | st.text(st.characters(exclude_categories=[]), max_size=10)
    | st.text(st.sampled_from("a\u00e9\ud800\udfff\U0001f600\r\n"), max_size=5)
    | st.integers(-(2**70), 2**70)
)


# Bytes of any kind, but mostly pieces of RESP, so that lines end and types,
# lengths and nesting go wrong in every way.
garbage = st.lists(
    st.sampled_from([b"\r\n", b"$", b"*", b":", b"+", b"-", b"1", b"3", b"-1", b"0", b"x"])
    | st.sampled_from([b"\xff", b"%", b"_", b"#", b">", b"\n", b"\r", b" "])
    | st.binary(min_size=1, max_size=4),
    min_size=1,
    max_size=25,
).map(b"".join)


def same(a: Any, b: Any) -> bool:
    if isinstance(a, RedisError):
        return isinstance(b, RedisError) and str(a) == str(b)
    if isinstance(a, list):
        return (
            isinstance(b, list)
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    return type(a) is type(b) and a == b


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    at = sorted({c % (len(data) + 1) for c in cuts})
    return [data[i:j] for i, j in zip([0, *at], [*at, len(data)], strict=True)]


@FAST
@given(st.lists(replies, min_size=1, max_size=8), st.lists(st.integers(0, 10**6), max_size=20))
def test_fuzz_replies_split_anywhere_reach_their_own_commands(
    sent: list[Any], cuts: list[int]
) -> None:
    protocol, _, lost = connected()
    outcomes = [Outcome(protocol.execute("GET", str(i))) for i in range(len(sent))]
    for piece in pieces(b"".join(resp(r) for r in sent), cuts):
        protocol.dataReceived(piece)
    assert lost == []
    for reply, outcome in zip(sent, outcomes, strict=True):
        assert outcome.fired
        if isinstance(reply, RedisError):
            assert outcome.failure is not None and same(outcome.failure.value, reply)
        else:
            assert outcome.failure is None and same(outcome.value, reply)


@FAST
@given(st.lists(st.lists(args, min_size=1, max_size=6), min_size=1, max_size=8))
def test_fuzz_commands_are_encoded_exactly_or_not_at_all(commands: list[list[Any]]) -> None:
    protocol, transport, _ = connected()
    outcomes, expected = [], []
    for command in commands:
        outcomes.append(Outcome(protocol.execute(*command)))
        try:
            wire = [a if isinstance(a, bytes) else str(a).encode() for a in command]
        except UnicodeEncodeError:
            continue
        expected.append((len(outcomes) - 1, wire))
    # What went out is exactly the encodable commands, each whole.
    assert parse_all(transport.value()) == [wire for _, wire in expected]
    for i, outcome in enumerate(outcomes):
        if i not in dict(expected):
            assert outcome.failure is not None and outcome.failure.check(ValueError)
        else:
            assert not outcome.fired
    protocol.dataReceived(b"".join(resp(b"%d" % i) for i, _ in expected))
    for i, _ in expected:
        assert outcomes[i].value == b"%d" % i


@FAST
@given(
    st.lists(replies, max_size=4),
    garbage,
    st.lists(st.integers(0, 10**6), max_size=10),
)
def test_fuzz_garbage_never_delivers_a_wrong_reply(
    good: list[Any], garbage: bytes, cuts: list[int]
) -> None:
    """
    After some good replies, bytes of any kind: each command gets its own
    reply (as a parser that saw all of it at once reads it) or fails with
    the connection; once one fails, every later one does and the
    connection is dropped.
    """
    protocol, transport, lost = connected()
    outcomes = [Outcome(protocol.execute("GET", str(i))) for i in range(len(good) + 6)]
    data = b"".join(resp(r) for r in good) + garbage
    reference: list[Any] = []
    reference_parser = _Parser()
    reference_parser.feed(data)
    with contextlib.suppress(ProtocolError):
        reference.extend(reference_parser.replies())
    for piece in pieces(data, cuts):
        protocol.dataReceived(piece)
    broken = False
    for i, outcome in enumerate(outcomes):
        failure = outcome.failure
        if failure is not None and failure.check(RedisUnavailable):
            broken = True
        elif broken:
            pytest.fail(f"command {i} fired after the connection broke: {outcome.value!r}")
        elif outcome.fired:
            got = failure.value if failure is not None else outcome.value
            assert i < len(reference) and same(got, reference[i])
    assert broken == bool(lost)
    if broken:
        assert transport.disconnecting or transport.disconnected
    assert all(same(r, o) for r, o in zip(good, reference, strict=False))
