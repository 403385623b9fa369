"""
Cluster mode without a Redis: the reply parser, URLs, options, and that a
server without --redis never imports the cluster package.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.python import usage

from twisted_signal.cluster.resp import RedisError, RedisURL, _Parser, encode, parse_url, redact
from twisted_signal.message import MAX_DEPTH, Message
from twisted_signal.tap import Options

pytestmark = pytest.mark.pure


def test_encode() -> None:
    assert (
        encode(("SET", "k", b"v\r\n", 5))
        == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$1\r\n5\r\n"
    )


def test_parser_takes_replies_in_pieces() -> None:
    data = b"+OK\r\n:42\r\n$-1\r\n*2\r\n$3\r\nabc\r\n*1\r\n:1\r\n-ERR no\r\n*-1\r\n$0\r\n\r\n"
    parser = _Parser()
    replies: list[Any] = []
    for i in range(len(data)):
        parser.feed(data[i : i + 1])
        replies += parser.replies()
    assert replies[:5] == ["OK", 42, None, [b"abc", [1]], replies[4]]
    assert isinstance(replies[4], RedisError) and str(replies[4]) == "ERR no"
    assert replies[5:] == [None, b""]


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("redis://127.0.0.1:6380/2", RedisURL("tcp", "127.0.0.1", 6380, 2)),
        ("redis://localhost", RedisURL("tcp", "localhost", 6379, 0)),
        ("redis://[::1]:7000/0", RedisURL("tcp", "::1", 7000, 0)),
        ("unix:///run/redis.sock", RedisURL("unix", "/run/redis.sock", 0, 0)),
        ("unix://:pw@/run/redis.sock?db=3", RedisURL("unix", "/run/redis.sock", 0, 3, None, "pw")),
        ("redis://:p%40ss%2Fw@h/1", RedisURL("tcp", "h", 6379, 1, None, "p@ss/w")),
        ("redis://al%20ice:pw@h:1/0", RedisURL("tcp", "h", 1, 0, "al ice", "pw")),
        ("redis://alice@h", RedisURL("tcp", "h", 6379, 0, "alice")),
        ("rediss://redis.example:6380/0", RedisURL("tls", "redis.example", 6380, 0)),
        ("redis://h?db=5", RedisURL("tcp", "h", 6379, 5)),
        ("rediss://h?ca=/c/a+b%26c.pem", RedisURL("tls", "h", 6379, 0, ca="/c/a+b&c.pem")),
        (
            "rediss://u:p@h/4?ca=/c/ca.pem&cert=/c/me.pem&key=/c/me.key",
            RedisURL("tls", "h", 6379, 4, "u", "p", "/c/ca.pem", "/c/me.pem", "/c/me.key"),
        ),
        (
            "rediss://h?ssl_ca_certs=/ca&ssl_certfile=/me.pem&ssl_keyfile=/me.key",
            RedisURL("tls", "h", 6379, 0, ca="/ca", cert="/me.pem", key="/me.key"),
        ),
    ],
)
def test_parse_url(url: str, parsed: RedisURL) -> None:
    assert parse_url(url) == parsed
    assert parse_url(url).password == parsed.password  # not compared: it is no field of repr


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://x", "expected redis://host:port/db, rediss://host:port/db or unix:///path"),
        ("redis://h:port", "the port must be a number"),
        ("redis://h/db", "the db must be a number"),
        ("redis://h/-1", "the db must not be negative"),
        ("unix://", "unix:// needs a socket path"),
        ("redis://h?ca=/ca.pem", "ca= is for rediss:// (TLS) only"),
        ("redis://h/0?db=1", "the db is given twice"),
        ("rediss://h?ca=/a&ssl_ca_certs=/b", "ca= is given twice"),
        ("rediss://h?cert=", "cert= needs a value"),
        ("rediss://h?ssl_cert_reqs=none", "unknown query option 'ssl_cert_reqs' (known: db, ca"),
        ("unix:///s?timeout=1", "unknown query option 'timeout' (known: db)"),
        ("redis://:@h", "the password in the URL is empty"),
        ("redis://:pa/ss@h", "the port must be a number (percent-encode any"),
    ],
)
def test_bad_redis_url_is_a_usage_error(url: str, why: str) -> None:
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions(["--redis", url])
    assert str(info.value).startswith(f"--redis {redact(url)!r}: {why}")
    assert "pa/ss" not in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:secret@h:1/2", "redis://:***@h:1/2"),
        ("redis://alice:secret@[::1]:1/0", "redis://alice:***@[::1]:1/0"),
        ("redis://alice@h", "redis://alice@h:6379/0"),
        ("unix://:secret@/run/r.sock?db=2", "unix://:***@/run/r.sock?db=2"),
        ("rediss://:secret@h/0?ssl_ca_certs=/ca", "rediss://:***@h:6379/0?ca=/ca"),
    ],
)
def test_a_url_shows_no_password(url: str, shown: str) -> None:
    parsed = parse_url(url)
    assert str(parsed) == shown
    assert "secret" not in repr(parsed)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:se/cr@et@h/0", "redis://:***@h/0"),
        ("redis://user:secret@h", "redis://user:***@h"),
        ("redis://user@h", "redis://user@h"),
        ("redis://h:6379/0", "redis://h:6379/0"),
        ("not a url :secret@", "not a url :secret@"),
    ],
)
def test_redact_hides_a_password_even_in_a_url_that_does_not_parse(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_cluster_options(tmp_path: Path) -> None:
    options = Options()
    options.parseOptions(["--redis", "redis://127.0.0.1:6379/0", "--cluster-lease", "2.5"])
    assert options["redis"] == RedisURL("tcp", "127.0.0.1", 6379, 0)
    assert options["cluster-lease"] == 2.5
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--cluster-lease", "0"])
    secret = tmp_path / "password"
    secret.write_text("from a file\n")
    options = Options()
    options.parseOptions(["--redis", "redis://bob@h/1", "--redis-password-file", str(secret)])
    assert (options["redis"].username, options["redis"].password) == ("bob", "from a file")


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (
            ["--redis", "redis://bob@h"],
            "--redis 'redis://bob@h:6379/0': a user name needs a password",
        ),
        (["--redis-password-file", "{secret}"], "--redis-password-file needs --redis"),
        (
            ["--redis", "redis://:pw@h", "--redis-password-file", "{secret}"],
            "give the Redis password in --redis or in --redis-password-file, not both",
        ),
        (
            ["--redis", "redis://h", "--redis-password-file", "{missing}"],
            "--redis-password-file '{missing}': No such file or directory",
        ),
        (["--redis", "redis://h", "--redis-password-file", "{empty}"], "the secret is empty"),
    ],
)
def test_bad_redis_password_options(tmp_path: Path, args: list[str], why: str) -> None:
    files = {"secret": tmp_path / "secret", "empty": tmp_path / "empty"}
    files["secret"].write_text("pw")
    files["empty"].write_text("\n")
    names = {**{k: str(v) for k, v in files.items()}, "missing": str(tmp_path / "missing")}
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions([arg.format(**names) for arg in args])
    assert why.format(**names) in str(info.value)
    assert "pw" not in str(info.value).replace(str(tmp_path), "")


@pytest.mark.process
def test_without_redis_nothing_of_the_cluster_is_imported() -> None:
    script = """
import sys
import twisted_signal
from twisted_signal.tap import Options, makeService
options = Options()
options.parseOptions(["--endpoint", "tcp:0:interface=127.0.0.1"])
service = makeService(options)
service.startService()
service.stopService()
loaded = [m for m in sys.modules if m.startswith("twisted_signal.cluster") or "redis" in m]
assert not loaded, loaded
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "ok", result.stderr


# A relayed message crosses to the owner as the bytes a single server sends
# (RoomRelay._submit writes Message.to_bytes, the owner parses those bytes):
# delivered again from them, they are the very same bytes.

_ANY_CHAR = st.characters() | st.characters(categories=["Cs"])
_JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(_ANY_CHAR, max_size=12),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(_ANY_CHAR, max_size=6), children)
    ),
    max_leaves=12,
)


_DEEP: Any = ["deep"]


def _frame(event: str, data: Any) -> bytes:
    # As a client sends it: escapes for what UTF-8 cannot carry.
    return json.dumps({"event": event, "data": data, "to": "all"}).encode()


def _relayed_bytes(frame: bytes) -> tuple[bytes, bytes]:
    """What a single server sends for `frame`, and what the owner sends after relaying it."""
    sent = Message.from_json(frame, from_="p")
    crossing = sent.to_bytes()
    encode(("XADD", "room:in", "*", "op", "submit", "message", crossing))
    return sent.to_bytes(), Message.from_json(crossing, from_="p").to_bytes()


@settings(max_examples=200, deadline=None)
@given(st.text(_ANY_CHAR, min_size=1, max_size=10), _JSON_VALUES)
def test_a_relayed_message_is_delivered_as_the_same_bytes(event: str, data: Any) -> None:
    single, relayed = _relayed_bytes(_frame(event, data))
    assert relayed == single


@pytest.mark.parametrize(
    "data",
    [
        "\ud800",
        "\udfff",
        "\ud83d\ude00",
        '" \\ / \b \f \n \r \t \u0000 \u001f \u2028 \ud800 \udfff \ud83d\ude00',
        2**64 + 1,
        -(2**70),
        1e-300,
        functools.reduce(lambda inner, _: [inner], range(MAX_DEPTH - 1), _DEEP),
    ],
)
def test_unusual_text_is_relayed_as_the_same_bytes(data: Any) -> None:
    single, relayed = _relayed_bytes(_frame("e", data))
    assert relayed == single
