"""
The test-only line front (`tests.support.linefront`) on a real loopback
port beside a live server's own front, over the server's rooms: the bytes
of both protocols on real sockets.  The same in memory, and the checks
that it needs nothing private: ``test_second_front.py``.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.threads import deferToThread

from twisted_signal.resume import Resumption

from .support import TIMEOUT, MakeServer, join_strict, joined, left, relayed
from .support.linefront import LineFactory

pytestmark = pytest.mark.loopback


class _LineClient:
    """A blocking client of the line front."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.file = self.sock.makefile("rb")

    def request(self, **fields: Any) -> None:
        self.sock.sendall(json.dumps(fields).encode() + b"\n")

    def recv(self) -> dict[str, Any]:
        line = self.file.readline()
        assert line, "the server closed the connection"
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        self.file.close()
        self.sock.close()


@pytest_twisted.ensureDeferred
async def test_two_line_clients_and_a_spec1_client_on_real_sockets(
    make_server: MakeServer,
) -> None:
    from twisted.internet import reactor

    server = await make_server()
    lines = LineFactory(server.rooms, Resumption(0, reactor))
    endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await endpoint.listen(lines)
    number = port.getHost().port

    def scenario() -> None:
        a = _LineClient(number)
        a.request(op="enter", room="mixed")
        a_id = a.recv()["me"]
        c = join_strict(server.socket_url("mixed"))
        assert c.authenticated["data"]["peers"] == [a_id]
        assert a.recv() == {"op": "came", "who": c.peer_id}
        b = _LineClient(number)
        b.request(op="enter", room="mixed")
        welcome = b.recv()
        b_id = welcome["me"]
        assert welcome["here"] == [a_id, c.peer_id] and welcome["resume"] is None
        assert a.recv() == {"op": "came", "who": b_id}
        assert c.recv() == joined(b_id)
        a.request(op="say", what="hello", body=[1, 2], **{"for": "everyone"})
        assert b.recv() == {"op": "heard", "what": "hello", "body": [1, 2], "by": a_id}
        assert c.recv() == relayed("hello", [1, 2], a_id, "all")
        c.send("offer", [b_id], {"sdp": "v=0"})
        assert b.recv() == {"op": "heard", "what": "offer", "body": {"sdp": "v=0"}, "by": c.peer_id}
        b.request(op="say", what="answer", body="x", **{"for": [a_id]})
        assert a.recv() == {"op": "heard", "what": "answer", "body": "x", "by": b_id}
        b.request(op="bye")
        assert a.recv() == {"op": "went", "who": b_id}
        assert c.recv() == left(b_id)
        c.close()
        assert a.recv() == {"op": "went", "who": c.peer_id}
        a.close()
        b.close()

    try:
        await deferToThread(scenario)
    finally:
        await maybeDeferred(port.stopListening)
