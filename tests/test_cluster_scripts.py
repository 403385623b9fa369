"""
The cluster's Lua scripts as `scripts.Script`s, on the Redis client's
connection over an in-memory transport: a call sends ``EVALSHA`` with the
script's SHA1, a ``NOSCRIPT`` reply is followed by one ``EVAL`` of the same
call whose reply the caller gets, and any other failure reaches the caller
as it is.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from twisted.internet.testing import StringTransport

from twisted_signal.cluster import scripts
from twisted_signal.cluster.backend import PREFIX
from twisted_signal.cluster.resp import RedisError, RedisUnavailable, encode
from twisted_signal.cluster.scripts import Script

from .support.resp import Outcome, connected

pytestmark = pytest.mark.memory

RETURN_ONE = Script("return 1")
KEYS = ("room:a:owner", "room:a:peers")
ARGS = ("node|7", 9000, b"\xff bytes")


def sent(transport: StringTransport) -> bytes:
    data: bytes = transport.value()
    transport.clear()
    return data


def test_the_sha_is_the_sha1_of_the_text_as_redis_computes_it() -> None:
    # Redis's documentation gives this SHA for "return 1" (SCRIPT LOAD).
    assert RETURN_ONE.sha == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db"
    for name in scripts.__all__:
        script = getattr(scripts, name)
        if isinstance(script, Script):
            assert script.sha == hashlib.sha1(script.text.encode()).hexdigest()


def test_the_first_call_sends_evalsha_and_gets_its_reply() -> None:
    protocol, transport, _ = connected()
    call = Outcome(RETURN_ONE.run(protocol, KEYS, ARGS))
    assert sent(transport) == encode(("EVALSHA", RETURN_ONE.sha, 2, *KEYS, *ARGS))
    protocol.dataReceived(b":1\r\n")
    assert call.value == 1
    assert sent(transport) == b""


def test_noscript_is_followed_by_one_eval_of_the_same_call() -> None:
    protocol, transport, _ = connected()
    call = Outcome(RETURN_ONE.run(protocol, KEYS, ARGS))
    sent(transport)
    protocol.dataReceived(b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
    assert not call.fired
    assert sent(transport) == encode(("EVAL", "return 1", 2, *KEYS, *ARGS))
    protocol.dataReceived(b"*2\r\n:7\r\n$3\r\n0-0\r\n")
    assert call.value == [7, b"0-0"]
    assert sent(transport) == b""


def test_a_failing_eval_after_noscript_reaches_the_caller() -> None:
    protocol, transport, _ = connected()
    call = Outcome(RETURN_ONE.run(protocol, KEYS, ARGS))
    protocol.dataReceived(b"-NOSCRIPT No matching script. Please use EVAL.\r\n")
    protocol.dataReceived(b"-NOSCRIPT again\r\n")
    assert call.failure is not None and call.failure.check(RedisError)
    assert call.failure.getErrorMessage() == "NOSCRIPT again"
    # One EVAL, not a loop of them.
    assert sent(transport).count(b"EVAL") == 2


@pytest.mark.parametrize(
    "reply",
    [
        b"-ERR Error running script (call to f_e0e1): user_script:1: oops\r\n",
        b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n",
        b"-BUSY Redis is busy running a script\r\n",
    ],
)
def test_other_error_replies_reach_the_caller_without_an_eval(reply: bytes) -> None:
    protocol, transport, _ = connected()
    call = Outcome(RETURN_ONE.run(protocol, KEYS, ARGS))
    sent(transport)
    protocol.dataReceived(reply)
    assert call.failure is not None and call.failure.check(RedisError)
    assert call.failure.getErrorMessage() == reply[1:-2].decode()
    assert sent(transport) == b""


def test_a_lost_connection_reaches_the_caller_without_an_eval() -> None:
    protocol, transport, _ = connected()
    call = Outcome(RETURN_ONE.run(protocol, KEYS, ARGS))
    sent(transport)
    protocol.connectionLost()
    assert call.failure is not None and call.failure.check(RedisUnavailable)
    assert sent(transport) == b""


def test_a_renewal_sends_about_half_the_bytes_eval_did() -> None:
    """
    The sizes docs/cluster.md quotes: one room's renewal (RENEW, then
    DEAD_MEMBERS) for a room named ``lobby``.
    """
    room = [f"{PREFIX}room:lobby:{part}" for part in ("owner", "epoch", "in", "peers")]
    calls: list[tuple[Script, list[str], list[Any]]] = [
        (scripts.RENEW, room, ["node-1|1765000000000", 15000, 45000]),
        (scripts.DEAD_MEMBERS, room[3:], [f"{PREFIX}node:"]),
    ]
    by_sha = sum(len(encode(("EVALSHA", s.sha, len(k), *k, *a))) for s, k, a in calls)
    by_text = sum(len(encode(("EVAL", s.text, len(k), *k, *a))) for s, k, a in calls)
    # 376 and 693 bytes when written; the text costs more with every edit.
    assert by_sha < 400 < by_text
