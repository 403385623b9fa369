"""
Structured logs: one event per join (the peer's connection to its room),
refusal, error and close,
with the peer id, room and remote address as fields; garbage from one client
cannot flood the log.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs, formatEvent

from twisted_signal import Settings

from .support import MakeServer, handshake_status, join_strict, wait_until

pytestmark = pytest.mark.loopback


@pytest_twisted.ensureDeferred
async def test_one_event_per_step_with_fields(make_server: MakeServer) -> None:
    server = await make_server(settings=Settings(resume_window=0), max_peers=1)

    def scenario() -> str:
        assert handshake_status(server.socket_url("bad%20room")) == 400
        a = join_strict(server.socket_url("demo"))
        a.send_raw("not json")
        assert a.recv()["data"]["description"] == "Invalid JSON"
        a.close()
        wait_until(lambda: not server.rooms.get("demo"))
        return a.peer_id

    with capturedLogs() as events:
        peer_id = await deferToThread(scenario)
    mine = [e for e in events if e.get("peer_id") == peer_id]
    formats = [e["log_format"] for e in mine]
    # The join is one event, the peer's, with its remote address; the room
    # does not log it again.
    assert sum(f.startswith("peer {peer_id} connected to room") for f in formats) == 1, formats
    assert not any(f.startswith("peer {peer_id} joined room") for f in formats), formats
    assert any(f.startswith("error {description!r} to peer") for f in formats), formats
    assert any(f.startswith("peer {peer_id} disconnected") for f in formats), formats
    assert any(f.startswith("peer {peer_id} left room") for f in formats), formats
    connected = next(e for e in mine if "connected to room" in e["log_format"])
    assert connected["room"] == "demo"
    assert connected["remote"].startswith("tcp4:127.0.0.1:")
    refusals = [formatEvent(e) for e in events if "refused connection" in e["log_format"]]
    assert len(refusals) == 1 and "400 Bad Request" in refusals[0], refusals


@pytest_twisted.ensureDeferred
async def test_errors_to_one_peer_are_logged_a_few_times_only(make_server: MakeServer) -> None:
    server = await make_server()

    def scenario() -> None:
        a = join_strict(server.socket_url("demo"))
        for _ in range(25):
            a.send_raw("{oops")
        for _ in range(25):
            assert a.recv()["data"]["description"] == "Invalid JSON"
        a.close()

    with capturedLogs() as events:
        await deferToThread(scenario)
    errors = [e for e in events if e["log_format"].startswith("error {description!r}")]
    assert len(errors) == 10
    assert "not logged" in formatEvent(errors[-1])
