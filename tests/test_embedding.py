"""
The embedding example (``examples/embedding/app.py``, shown in
``docs/embedding.md``): the signaling server mounted at ``/rtc/`` of an
application's own site.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import maybeDeferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IListeningPort
from twisted.internet.threads import deferToThread
from websockets.exceptions import ConnectionClosed, InvalidStatus

from examples.embedding import app
from twisted_signal import SignalingService

from .support import Client, join, open_socket

pytestmark = pytest.mark.loopback

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class App:
    signaling: SignalingService
    port: IListeningPort

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port.getHost().port}{path}"  # type: ignore[attr-defined]

    def socket_url(self, room: str) -> str:
        return f"ws://127.0.0.1:{self.port.getHost().port}/rtc/socket/{room}/"  # type: ignore[attr-defined]


@pytest_twisted.async_yield_fixture
async def served() -> AsyncIterator[App]:
    """
    The example's site on a free loopback port, in the test's reactor.
    """
    from twisted.internet import reactor

    signaling = app.make_signaling()
    site = app.make_site(signaling)
    signaling.startService()
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(site)
    yield App(signaling, port)
    await maybeDeferred(port.stopListening)
    await signaling.stopService()


def get(url: str) -> tuple[int, str, bytes, str]:
    """
    GET `url` (following redirects): status, content type, body, final URL.
    """
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return (
                response.status,
                response.headers.get("content-type", ""),
                response.read(),
                response.url,
            )
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read(), url


@pytest_twisted.ensureDeferred
async def test_two_peers_call_through_the_mounted_socket(served: App) -> None:
    def scenario() -> None:
        with join(served.socket_url("demo")) as a, join(served.socket_url("demo")) as b:
            assert b.authenticated["data"]["peers"] == [a.peer_id]
            assert a.recv()["data"] == {"peer_id": b.peer_id}

            # The application's own route sees the call.
            status, _, body, _ = get(served.url("/"))
            assert status == 200
            assert json.loads(body) == {"app": "example", "calls": {"demo": 2}}

            # CallRoom drops what is not signaling ...
            b.send("chat", "all", "hello")
            # ... and relays the rest.
            b.send("offer", [a.peer_id], {"type": "offer", "sdp": "v=0"})
            assert a.recv() == {
                "event": "offer",
                "data": {"type": "offer", "sdp": "v=0"},
                "from": b.peer_id,
                "to": [a.peer_id],
            }
            a.send("answer", [b.peer_id], {"type": "answer", "sdp": "v=0"})
            assert b.recv() == {
                "event": "answer",
                "data": {"type": "answer", "sdp": "v=0"},
                "from": a.peer_id,
                "to": [b.peer_id],
            }
            assert a.nothing_within(0.2)

            # A call is for two.
            ws = open_socket(served.socket_url("demo"))
            try:
                refusal = json.loads(ws.recv(timeout=5))
                assert refusal["data"] == {
                    "description": "Could not join room",
                    "details": "room_is_full",
                }
                with pytest.raises(ConnectionClosed):
                    ws.recv(timeout=5)
            finally:
                ws.close()

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_application_routes_and_mounted_pages(served: App) -> None:
    def scenario() -> None:
        status, content_type, body, _ = get(served.url("/"))
        assert (status, content_type) == (200, "application/json")
        assert json.loads(body) == {"app": "example", "calls": {}}

        for page in ("/rtc/", "/rtc/demo"):
            status, content_type, _, _ = get(served.url(page))
            assert status == 200, page
            assert content_type.startswith("text/html"), page

        status, _, body, _ = get(served.url("/rtc/healthz"))
        assert status == 200
        assert json.loads(body)["status"] == "ok"

        # Nothing of the signaling server leaks out of /rtc/.
        for path in ("/healthz", "/demo/x", "/socket/demo/"):
            assert get(served.url(path))[0] == 404, path
        with pytest.raises(InvalidStatus) as info:
            open_socket(served.socket_url("demo").replace("/rtc/", "/"))
        assert info.value.response.status_code == 404

    await deferToThread(scenario)


@pytest_twisted.ensureDeferred
async def test_mount_point_without_its_slash_leads_to_the_landing_page(served: App) -> None:
    """
    ``/rtc`` is what people type: it should land on ``/rtc/`` (the pages
    use relative links, which only work below the slash).
    """

    def scenario() -> None:
        status, content_type, _, final = get(served.url("/rtc"))
        assert status == 200
        assert content_type.startswith("text/html")
        assert final == served.url("/rtc/")

    await deferToThread(scenario)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest_twisted.ensureDeferred
async def test_make_service_listens_and_stops_with_the_application() -> None:
    port = free_port()
    service = app.make_service(f"tcp:{port}:interface=127.0.0.1")
    service.privilegedStartService()
    service.startService()
    stopped = False
    try:

        def connect() -> Client:
            assert get(f"http://127.0.0.1:{port}/")[0] == 200
            client = join(f"ws://127.0.0.1:{port}/rtc/socket/lobby/")
            assert client.authenticated["data"]["peers"] == []
            return client

        client = await deferToThread(connect)
        stopping = service.stopService()
        stopped = True

        def told_to_go() -> None:
            with client:
                assert client.recv() == {
                    "event": "error",
                    "data": {"description": "Room closed", "details": "shutdown"},
                    "from": None,
                    "to": [client.peer_id],
                }
                with pytest.raises(ConnectionClosed):
                    client.recv()
                assert client.ws.close_code == 1001

        await deferToThread(told_to_go)
        await stopping
        with pytest.raises(OSError):
            await deferToThread(get, f"http://127.0.0.1:{port}/")
    finally:
        if not stopped:
            await service.stopService()


@pytest.mark.process
def test_main_runs_the_example(tmp_path: Path) -> None:
    """
    ``python -m examples.embedding.app ENDPOINT``, as the guide says.
    """
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = tmp_path / "output"
    with out.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "examples.embedding.app", f"tcp:{port}:interface=127.0.0.1"],
            cwd=tmp_path,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 15
        answer: Any = None
        while answer is None and time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"the example exited with {process.returncode}\n{out.read_text()}")
            try:
                answer = get(f"http://127.0.0.1:{port}/rtc/healthz")
            except OSError:
                time.sleep(0.05)
        assert answer is not None, out.read_text()
        assert answer[0] == 200
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.pure
def test_the_guide_shows_the_example_as_it_is() -> None:
    guide = (ROOT / "docs" / "embedding.md").read_text()
    example = (ROOT / "examples" / "embedding" / "app.py").read_text()
    assert f"```python\n{example}```" in guide
