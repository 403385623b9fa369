"""
Cluster mode without a Redis: the reply parser, URLs, options, and that a
server without --redis never imports the cluster package.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from twisted.python import usage

from twisted_signal.cluster.resp import RedisError, _Parser, encode, parse_url
from twisted_signal.tap import Options


def test_encode() -> None:
    assert (
        encode(("SET", "k", b"v\r\n", 5))
        == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$1\r\n5\r\n"
    )


def test_parser_takes_replies_in_pieces() -> None:
    data = b"+OK\r\n:42\r\n$-1\r\n*2\r\n$3\r\nabc\r\n*1\r\n:1\r\n-ERR no\r\n*-1\r\n$0\r\n\r\n"
    parser = _Parser()
    replies = []
    for i in range(len(data)):
        replies += parser.feed(data[i : i + 1])
    assert replies[:5] == ["OK", 42, None, [b"abc", [1]], replies[4]]
    assert isinstance(replies[4], RedisError) and str(replies[4]) == "ERR no"
    assert replies[5:] == [None, b""]


@pytest.mark.parametrize(
    ("url", "parsed"),
    [
        ("redis://127.0.0.1:6380/2", ("tcp", "127.0.0.1", 6380, 2)),
        ("redis://localhost", ("tcp", "localhost", 6379, 0)),
        ("redis://[::1]:7000/0", ("tcp", "::1", 7000, 0)),
        ("unix:///run/redis.sock", ("unix", "/run/redis.sock", 0, 0)),
    ],
)
def test_parse_url(url: str, parsed: tuple[str, str, int, int]) -> None:
    assert parse_url(url) == parsed


@pytest.mark.parametrize(
    "url", ["http://x", "redis://h:port", "redis://h/db", "unix://", "rediss://h"]
)
def test_bad_redis_url_is_a_usage_error(url: str) -> None:
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions(["--redis", url])
    assert str(info.value).startswith(f"--redis {url!r}: ")


def test_cluster_options() -> None:
    options = Options()
    options.parseOptions(["--redis", "redis://127.0.0.1:6379/0", "--cluster-lease", "2.5"])
    assert options["redis"] == "redis://127.0.0.1:6379/0"
    assert options["cluster-lease"] == 2.5
    with pytest.raises(usage.UsageError):
        Options().parseOptions(["--cluster-lease", "0"])


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
