"""
``reuseport:`` endpoints: several listeners, and several real ``twistd
rtcsignal`` processes, on one port.
"""

from __future__ import annotations

import re
import socket
import time

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.python import usage

from twisted_signal.reuseport import ReusePortEndpoint
from twisted_signal.tap import Options

from .support.twistd import Spawn, Twistd, free_port

pytestmark = pytest.mark.process


def test_the_string_makes_a_reuseport_endpoint() -> None:
    endpoint = serverFromString(reactor, "reuseport:8080:interface=127.0.0.1:backlog=128")
    assert isinstance(endpoint, ReusePortEndpoint)
    assert (endpoint._port, endpoint._interface, endpoint._backlog) == (8080, "127.0.0.1", 128)
    default = serverFromString(reactor, "reuseport:8080")
    assert isinstance(default, ReusePortEndpoint)
    assert (default._interface, default._backlog) == ("", 1024)


@pytest.mark.parametrize(
    ("description", "mentions"),
    [
        ("reuseport:http", "PORT must be a whole number"),
        ("reuseport:70000", "at most 65535"),
        ("reuseport:8080:backlog=0", "backlog must be a whole number of at least 1"),
        ("reuseport:8080:colour=blue", "not colour"),
        ("reuseport:", "PORT"),
    ],
)
def test_a_bad_string_is_a_one_line_usage_error(description: str, mentions: str) -> None:
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions(["--endpoint", description])
    assert mentions in str(info.value)
    assert "\n" not in str(info.value)


@pytest_twisted.ensureDeferred
async def test_two_listeners_share_a_port_that_plain_tcp_cannot() -> None:
    factory = Factory.forProtocol(Protocol)
    first = await serverFromString(reactor, "reuseport:0:interface=127.0.0.1").listen(factory)
    port = first.getHost().port
    try:
        description = f"reuseport:{port}:interface=127.0.0.1"
        second = await serverFromString(reactor, description).listen(factory)
        try:
            with pytest.raises(CannotListenError):
                await serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(factory)
        finally:
            await second.stopListening()
    finally:
        await first.stopListening()


@pytest_twisted.ensureDeferred
async def test_ipv6_interface() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    endpoint = serverFromString(reactor, r"reuseport:0:interface=\:\:1")
    try:
        port = await endpoint.listen(Factory.forProtocol(Protocol))
    except CannotListenError:
        pytest.skip("no ::1 on this machine")
    try:
        assert port.getHost().host == "::1"
    finally:
        await port.stopListening()


def health_on(port: int, tag: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(f"GET /healthz?n={tag} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer


def served(twistd: Twistd) -> set[int]:
    """
    The tags of the /healthz?n= requests this process's access log shows.
    """
    return {int(n) for n in re.findall(r"GET /healthz\?n=(\d+)", twistd.stdout)}


def test_two_twistd_processes_on_one_port_both_get_connections(spawn: Spawn) -> None:
    shared = free_port()
    endpoint = f"reuseport:{shared}:interface=127.0.0.1:backlog=128"
    first, second = spawn("--endpoint", endpoint), spawn("--endpoint", endpoint)
    tags = range(60)
    for tag in tags:
        health_on(shared, tag)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and served(first) | served(second) != set(tags):
        time.sleep(0.1)  # access log lines are written after the answer
    one, other = served(first), served(second)
    assert one | other == set(tags), (one, other)
    assert not one & other
    # The kernel spreads connections by their addresses: both get some.
    assert one and other, (one, other)
    # One process going away leaves the port served by the other.
    first.kill()
    for tag in range(100, 110):
        health_on(shared, tag)


def test_under_twistd_a_bad_reuseport_string_is_one_line(spawn: Spawn) -> None:
    twistd = spawn("--endpoint", "reuseport:8080:backlog=none", ready=False)
    assert twistd.wait_exit() != 0, twistd.output
    output = (twistd.stdout + twistd.stderr).strip()
    assert len(output.splitlines()) == 1, output
    assert "backlog must be a whole number" in output
    assert "Traceback" not in output
