"""
Helpers of the peerjs front's tests: the same wire tests run against this
server's front and against peerjs-server 1.0.2 itself (``bench/node_modules/
peer``, pinned by ``bench/package-lock.json``), through a blocking
WebSocket client that speaks peerjs's messages.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from . import TIMEOUT, http_get

ROOT = Path(__file__).resolve().parents[2]
PEERJS_SERVER = ROOT / "bench" / "node_modules" / "peer" / "dist" / "bin" / "peerjs.js"
PATH = "/peerjs/"
EXPIRE_SECONDS = 1.0
"""The expire timeout both servers run with in the wire tests."""


@dataclass
class Target:
    """
    A server speaking peerjs's protocol at ``base`` (host:port) under `path`.
    """

    name: str
    base: str
    path: str = PATH
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_peerjs_server(self) -> bool:
        return self.name == "peerjs-server"

    def http(self, rest: str = "") -> str:
        return f"http://{self.base}{self.path}{rest}"

    def ws_url(self, query: str) -> str:
        return f"ws://{self.base}{self.path}peerjs?{query}"

    def open(self, peer_id: str, token: str = "tok", key: str = "peerjs") -> PJ:
        """A connection with the peerjs client's query (not waiting for anything)."""
        return PJ(self.ws_url(f"key={key}&id={peer_id}&token={token}&version=1.5.5"))

    def join(self, peer_id: str, token: str = "tok", key: str = "peerjs") -> PJ:
        """A connection that got ``OPEN``."""
        client = self.open(peer_id, token, key)
        assert client.recv() == {"type": "OPEN"}
        return client

    def get(self, rest: str = "") -> tuple[int, bytes]:
        return http_get(self.http(rest))


class PJ:
    """A blocking peerjs-protocol client."""

    def __init__(self, url: str) -> None:
        self.ws: ClientConnection = connect(url, open_timeout=TIMEOUT)
        self.ws.__enter__()

    def send(self, **message: Any) -> None:
        self.ws.send(json.dumps(message))

    def recv(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.ws.recv(timeout=timeout))
        return result

    def nothing_within(self, seconds: float = 0.3) -> bool:
        try:
            frame = self.ws.recv(timeout=seconds)
        except TimeoutError:
            return True
        raise AssertionError(f"expected nothing, got {frame!r}")

    def closed(self, timeout: float = TIMEOUT) -> int | None:
        """Wait for the server to close: its close code (None: no code)."""
        try:
            frame = self.ws.recv(timeout=timeout)
        except ConnectionClosed as e:
            return None if e.rcvd is None else e.rcvd.code
        raise AssertionError(f"expected the connection to close, got {frame!r}")

    def close(self) -> None:
        self.ws.close()


class PeerjsServer:
    """peerjs-server 1.0.2 as users run it (its own command line), on loopback."""

    def __init__(self, *args: str) -> None:
        node = shutil.which("node")
        if node is None or not PEERJS_SERVER.exists():
            message = (
                "node or bench/node_modules/peer is missing (make bench/node_modules/.installed)"
            )
            if os.environ.get("CI") == "true":
                pytest.fail(message)
            pytest.skip(message)
        self.port = _free_port()
        command = [node, str(PEERJS_SERVER), "--host", "127.0.0.1", "--path", PATH]
        command += ["--port", str(self.port), *args]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise AssertionError("peerjs-server did not start") from None
                time.sleep(0.05)

    @property
    def base(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class FakeConnection:
    """
    What `PeerjsFront` needs of a connection, in memory: what it was sent,
    and whether (and how) it was closed.
    """

    def __init__(self, front: Any) -> None:
        from twisted_signal.peerjs import PeerjsConnection

        self.front = front
        self.state = PeerjsConnection.STATE_OPEN
        self.client: Any = None
        self.sent: list[dict[str, Any]] = []
        self.close_code: int | None = None

    def write(self, payload: bytes) -> None:
        self.sent.append(json.loads(payload))

    def refuse(self, type_: str, msg: str) -> None:
        self.sent.append({"type": type_, "payload": {"msg": msg}})
        self.close_with(1000)

    def close_with(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
            self.state = -1
            self.front.closed(self)

    def take(self) -> list[dict[str, Any]]:
        sent, self.sent = self.sent, []
        return sent
