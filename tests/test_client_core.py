"""
The client's sans-IO core (`twisted_signal.client._core`): events in,
actions out, with no socket, clock or event loop.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Unpack

import pytest

from twisted_signal import Message
from twisted_signal.client import Backoff, ClientClosed, HandshakeFailed, JoinRefused
from twisted_signal.client._core import (
    Action,
    Callback,
    ClientCore,
    ClientOptions,
    Deliver,
    Finish,
    Log,
    LogLevel,
    Retry,
    perform,
)

pytestmark = pytest.mark.pure

URL = "ws://example.invalid/socket/demo/"
NO_JITTER = Backoff(initial=1.0, maximum=4.0, factor=2.0, jitter=0.5)


class Recorder:
    """An adapter that only writes down what the core asks of it."""

    def __init__(self) -> None:
        self.done: list[tuple[str, Any]] = []

    def _run_callback(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        self.done.append(("callback", what))
        fn(*args)

    def _log_line(self, level: LogLevel, text: str, fields: dict[str, Any]) -> None:
        self.done.append(("log", level))

    def _retry_after(self, delay: float) -> None:
        self.done.append(("retry", delay))

    def _finish(self, reason: ClientClosed) -> None:
        self.done.append(("finish", reason.code))


def frame(event: str, data: Any = None, from_: str | None = None) -> str:
    return json.dumps({"event": event, "data": data, "from": from_, "to": "all"})


def joined_core(**options: Unpack[ClientOptions[str]]) -> ClientCore[str]:
    core = ClientCore(URL, "the client", ClientOptions(random=lambda: 0.0, **options))
    assert core.attempt().startswith(URL)
    authenticated = {"peer_id": "me", "peers": ["a"], "resume_token": "r1"}
    assert core.received(frame("authenticated", authenticated)) == []
    assert core.joined
    return core


def kinds(actions: list[Action]) -> list[type]:
    return [type(action) for action in actions]


def finished(actions: list[Action]) -> tuple[int | None, str]:
    """The code and reason of the `Finish` that ends `actions`."""
    last = actions[-1]
    assert isinstance(last, Finish)
    return last.reason.code, last.reason.reason


def test_authenticated_joins_and_messages_are_followed_then_delivered() -> None:
    seen: list[Message] = []
    core = joined_core(on_message=seen.append)
    assert core.session.peer_id == "me" and core.session.peers == ["a"]
    actions = core.received(frame("joined", {"peer_id": "b"}, "b"))
    assert kinds(actions) == [Callback, Deliver]
    assert core.session.peers == ["a", "b"]  # followed before anyone sees it
    perform(actions, Recorder())
    assert seen == [Message("joined", {"peer_id": "b"}, "b", "all")]
    assert core.inbox.take(None) == seen[0]


def test_pongs_binary_and_garbage_are_not_messages() -> None:
    core = joined_core()
    assert core.received("pong") == []
    assert core.received(b"pong") == []
    assert core.received(b'{"event": "x"}', binary=True) == []
    (warning,) = core.received("{nope")
    assert isinstance(warning, Log) and warning.level == "warn"
    assert core.inbox.take(None) is None


def test_reconnecting_resumes_with_the_token_and_backs_off() -> None:
    core = joined_core(reconnect=True, backoff=NO_JITTER, token="t")
    disconnected: list[str] = []
    core.on_disconnected = disconnected.append
    actions = core.lost(1006, "dropped")
    assert kinds(actions) == [Log, Callback, Retry]
    assert not core.joined
    recorder = Recorder()
    perform(actions, recorder)
    assert disconnected == ["the client"]
    assert recorder.done[-1] == ("retry", 0.5)
    assert core.attempt() == URL + "?token=t&resume=r1"
    retries = [core.attempt_failed(ConnectionRefusedError())[-1] for _ in range(3)]
    assert retries == [Retry(1.0), Retry(2.0), Retry(2.0)]  # capped at 4, half jitter
    reconnected = core.reconnected()
    assert kinds(reconnected) == [Log]  # no on_reconnected given
    assert core.lost(1006, "again")[-1] == Retry(0.5)  # the count starts over


@pytest.mark.parametrize("status", [400, 401, 403])
def test_a_permanent_refusal_ends_the_reconnection(status: int) -> None:
    core = joined_core(reconnect=True)
    core.lost(1006, "")
    (finish,) = core.attempt_failed(HandshakeFailed(status, "no"))
    assert isinstance(finish, Finish) and finish.reason.code == 1006
    assert str(status) in finish.reason.reason
    assert isinstance(core.attempt_failed(HandshakeFailed(500, "later"))[-1], Retry)


@pytest.mark.parametrize(
    ("error", "code", "reconnect"),
    [
        (None, 1000, False),  # no reconnection asked for
        (None, 1008, True),  # kicked or rate-limited
        ({"description": "Room closed", "details": "normal"}, 1000, True),
    ],
)
def test_no_coming_back_when_sent_away(error: Any, code: int, reconnect: bool) -> None:
    core = joined_core(reconnect=reconnect)
    if error is not None:
        perform(core.received(frame("error", error)), Recorder())
    actions = core.lost(code, "bye")
    assert kinds(actions) == [Log, Finish]
    assert finished(actions) == (code, "bye")


def test_a_room_closed_for_shutdown_is_come_back_to() -> None:
    core = joined_core(reconnect=True)
    core.received(frame("error", {"description": "Room closed", "details": "shutdown"}))
    assert isinstance(core.lost(1001, "")[-1], Retry)


def test_closing_wins_over_everything() -> None:
    core = joined_core(reconnect=True)
    assert core.close(4000)
    assert not core.close(4001)  # once
    assert finished(core.lost(1006, "")) == (4000, "closed by the client")
    assert finished(core.attempt_failed(ConnectionRefusedError())) == (4000, "closed by the client")
    assert core.finish(core.closed_by_client())
    assert not core.finish(ClientClosed(1006, "late"))
    assert core.closed is not None and core.closed.code == 4000
    assert not core.close(1000)


def test_why_an_attempt_ended_before_joining() -> None:
    core: ClientCore[None] = ClientCore(URL, None, {})
    core.attempt()
    assert isinstance(core.ended_before_joining(1000, ""), ClientClosed)
    core.received(frame("error", {"description": "Could not join room", "details": "full"}))
    refused = core.ended_before_joining(1000, "")
    assert isinstance(refused, JoinRefused) and refused.reason == "full"
    core.attempt()  # a new attempt forgets the last refusal
    assert isinstance(core.ended_before_joining(1000, ""), ClientClosed)


def test_options_are_checked_early() -> None:
    with pytest.raises(ValueError):
        ClientCore("http://example.invalid/", None, {})
    with pytest.raises(ValueError):
        ClientCore(URL, None, {"buffer_size": 0})
    core: ClientCore[None] = ClientCore(URL, None, {})
    assert (core.timeout, core.ping_interval, core.reconnect) == (10.0, 20.0, False)


def test_the_public_names_stay_put() -> None:
    from twisted_signal import client

    assert sorted(client.__all__) == [
        "AsyncSignalingClient",
        "Backoff",
        "ClientClosed",
        "ClientOptions",
        "HandshakeFailed",
        "JoinRefused",
        "NotConnected",
        "PeerVerification",
        "SignalingClient",
        "Target",
        "aio_connect",
        "connect",
        "decode_server_message",
        "socket_url",
        "verify_peer_connection",
    ]
    for name in client.__all__:
        assert getattr(client, name) is not None


@pytest.mark.process
def test_importing_the_client_needs_neither_aiortc_nor_websockets() -> None:
    import subprocess
    import sys

    code = (
        "import sys, twisted_signal.client; "
        "print(sorted({'aiortc', 'websockets'} & set(sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


# Server events are trusted only from the server (SPEC 1.2).

FORGED = [
    ("left", {"peer_id": "a"}),
    ("error", {"description": "Room closed", "details": "normal"}),
    ("error", {"description": "Could not join room", "details": "room_is_full"}),
    ("authenticated", {"peer_id": "evil", "peers": [], "resume_token": "stolen"}),
    ("ice_servers", [{"urls": ["turn:evil.example"], "username": "u", "credential": "c"}]),
    ("joined", {"peer_id": "ghost"}),
]


@pytest.mark.parametrize(("event", "data"), FORGED)
def test_a_server_event_from_a_peer_is_ignored(event: str, data: Any) -> None:
    seen: list[Message] = []
    core = joined_core(on_message=seen.append, reconnect=True)
    core.received(json.dumps({"event": "ice_servers", "data": [{"urls": ["stun:ok"]}]}))
    before = (core.session.peer_id, list(core.session.peers), list(core.session.ice_servers))
    authenticated = core.session.authenticated
    seen.clear()
    core.inbox.take(None)

    actions = core.received(frame(event, data, "a"))
    assert [(type(a), getattr(a, "level", None)) for a in actions] == [(Log, "warn")]
    perform(actions, Recorder())
    assert seen == [] and core.inbox.take(None) is None
    assert (core.session.peer_id, core.session.peers, core.session.ice_servers) == before
    assert core.session.authenticated == authenticated and core.session.resume_token == "r1"
    assert core.joined and not core.session.final and core.session.refusal is None
    # The connection is lost: the client comes back (the room was not closed
    # for it), resuming as itself.
    assert kinds(core.lost(1006, "")) == [Log, Retry]
    assert "resume=r1" in core.attempt()


def test_joined_is_the_servers_when_from_the_newcomer_itself() -> None:
    core = joined_core()
    assert kinds(core.received(frame("joined", {"peer_id": "b"}, "b"))) == [Deliver]
    assert kinds(core.received(frame("joined", {"peer_id": "c"}, "b"))) == [Log]
    assert core.session.peers == ["a", "b"]
    # The same server events from the server (from: null) are followed.
    assert kinds(core.received(frame("left", {"peer_id": "a"}))) == [Deliver]
    assert core.session.peers == ["b"]
    core.received(frame("error", {"description": "Room closed", "details": "normal"}))
    assert core.session.final
