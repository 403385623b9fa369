"""
The admin API of a real ``twistd -n rtcsignal`` (the installed package, as
``make test`` installs it): an operator's session with curl-like calls, and
property-based runs of schemathesis against ``docs/admin-openapi.yaml``
with the token, with a wrong one and with none.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from .support import StrictClient, error, join_strict, joined, left
from .support.admin import FILE_TOKEN
from .support.twistd import Spawn, Twistd

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
DESCRIPTION = ROOT / "docs" / "admin-openapi.yaml"
SCHEMATHESIS = Path(sys.executable).with_name("st")
# A fixed seed: the run is property-based but the same on every machine, so
# a failure is a finding, never a flake.
SEED = "20261201"
EXAMPLES = "15"


def admin(twistd: Twistd, method: str, path: str, **kwargs: object) -> requests.Response:
    headers = {"Authorization": f"Bearer {FILE_TOKEN}"}
    return requests.request(
        method,
        twistd.url(path),
        headers=headers,
        timeout=5,
        **kwargs,  # type: ignore[arg-type]
    )


def join_all(twistd: Twistd, room: str, n: int) -> list[StrictClient]:
    clients: list[StrictClient] = []
    for _ in range(n):
        client = join_strict(twistd.socket_url(room))
        for earlier in clients:
            assert earlier.recv() == joined(client.peer_id)
        clients.append(client)
    return clients


def test_an_operator_lists_posts_kicks_and_closes(spawn: Spawn, token_file: Path) -> None:
    twistd = spawn("--room", "lobby:8", "--admin-token-file", str(token_file))
    assert admin(twistd, "GET", "/admin/rooms").json() == {
        "rooms": [{"name": "lobby", "peers": [], "max_peers": 8}]
    }
    a, b, c = join_all(twistd, "lobby", 3)
    listed = admin(twistd, "GET", "/admin/rooms/lobby").json()
    assert listed["peers"] == [a.peer_id, b.peer_id, c.peer_id]

    sent = admin(
        twistd, "POST", "/admin/rooms/lobby/messages", json={"event": "notice", "to": "all"}
    )
    assert sent.status_code == 202
    for client in (a, b, c):
        assert client.recv() == {"event": "notice", "data": None, "from": None, "to": "all"}

    kicked = admin(twistd, "DELETE", f"/admin/rooms/lobby/peers/{a.peer_id}")
    assert kicked.status_code == 204
    assert a.closed_with() == 1008
    assert b.recv() == left(a.peer_id) and c.recv() == left(a.peer_id)

    closed = admin(twistd, "DELETE", "/admin/rooms/lobby")
    assert closed.status_code == 204
    for client in (b, c):
        assert client.recv() == error(client.peer_id, "Room closed", "normal")
        assert client.closed_with() == 1000
    assert admin(twistd, "GET", "/admin/rooms").json() == {"rooms": []}
    unauthenticated = requests.get(twistd.url("/admin/rooms"), timeout=5)
    assert unauthenticated.status_code == 401

    twistd.kill()
    log = twistd.output
    for line in ("sent 'notice' to all in room lobby", "disconnected peer", "stopped room lobby"):
        assert f"admin: 127.0.0.1 {line}" in log, log
    assert "admin: refused GET /admin/rooms from 127.0.0.1" in log
    assert FILE_TOKEN not in log


def test_without_a_token_twistd_has_no_admin_api(spawn: Spawn) -> None:
    twistd = spawn("--room", "lobby")
    for path in ("/admin/rooms", "/admin/openapi.yaml", "/admin/rooms/lobby"):
        answer = admin(twistd, "GET", path)
        assert answer.status_code == 404, path
        assert "WWW-Authenticate" not in answer.headers


def schemathesis(
    twistd: Twistd, folder: Path, *args: str, hooks: bool = False
) -> subprocess.CompletedProcess[str]:
    """
    ``st run`` against `twistd`; with `hooks`, our own checks are loaded
    (``--checks all`` would then include them).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCHEMATHESIS")}
    if hooks:
        env["PYTHONPATH"] = str(ROOT)
        env["SCHEMATHESIS_HOOKS"] = "tests.support.schemathesis_hooks"
    argv = [str(SCHEMATHESIS), "run", str(DESCRIPTION), "--url", twistd.url("")]
    argv += ["--seed", SEED, "--max-examples", EXAMPLES, "--workers", "1", "--no-color"]
    argv += ["--request-timeout", "10", *args]
    return subprocess.run(
        argv, cwd=folder, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def test_schemathesis_finds_no_fault(spawn: Spawn, token_file: Path, tmp_path: Path) -> None:
    """
    With the token: no 5xx, no answer that contradicts the description, no
    wrong method without 405 + Allow, and (its ``ignored_auth`` check) no
    operation that answers without the token.  With a wrong token, and with
    none, every answer is 401 with a Bearer challenge.
    """
    twistd = spawn("--room", "lobby", "--room", "hall", "--admin-token-file", str(token_file))
    peers = join_all(twistd, "lobby", 2) + join_all(twistd, "hall", 2)
    try:
        run = schemathesis(
            twistd, tmp_path, "--checks", "all", "-H", f"Authorization: Bearer {FILE_TOKEN}"
        )
        assert run.returncode == 0, run.stdout + run.stderr
        # Its stateful phase followed the links to real rooms and peers.
        assert "API Links:" in run.stdout and "API Links:    0 covered" not in run.stdout
        own_checks = "refused_without_the_token,not_a_server_error,response_schema_conformance"
        # ignored_auth probes only answers that succeeded; these runs send
        # everything, valid or not, with a wrong token and with none.
        for wrong in (["-H", "Authorization: Bearer not-the-token"], []):
            run = schemathesis(
                twistd, tmp_path, "--checks", own_checks, "-n", "5", *wrong, hooks=True
            )
            assert run.returncode == 0, run.stdout + run.stderr
            assert "passed" in run.stdout
        # The server lived through it all and still answers.
        assert admin(twistd, "GET", "/admin/rooms").status_code == 200
        assert twistd.process.poll() is None
        assert "Traceback" not in twistd.output, twistd.output
    finally:
        for peer in peers:
            peer.close()
