"""
The client library (`twisted_signal.client`) against a live in-process
server: the Twisted API in the test's reactor, the asyncio API in a thread
with its own event loop, and reconnection across a server restart.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, ClassVar, cast

import pytest
import pytest_twisted
from autobahn.websocket.types import ConnectionRequest
from twisted.internet import defer, task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThread

from twisted_signal import Message, Peer, Room, Rooms, SignalingService
from twisted_signal.client import (
    AsyncSignalingClient,
    Backoff,
    ClientClosed,
    HandshakeFailed,
    JoinRefused,
    NotConnected,
    SignalingClient,
    aio_connect,
    connect,
    decode_server_message,
    socket_url,
)
from twisted_signal.message import InvalidMessage

from .support import (
    LiveServer,
    MakeServer,
    in_reactor,
    sleep,
)

pytestmark = pytest.mark.loopback

TIMEOUT = 5.0
FAST = Backoff(initial=0.05, maximum=0.2)


# The pure parts.


@pytest.mark.memory
def test_decode_keeps_from() -> None:
    message = decode_server_message(
        '{"event": "offer", "data": {"sdp": "v=0"}, "from": "a", "to": ["b"]}'
    )
    assert message == Message("offer", {"sdp": "v=0"}, "a", ("b",))
    assert decode_server_message(b'{"event": "left", "data": null, "from": null, "to": "all"}') == (
        Message("left", None, None, "all")
    )
    for bad in ("nope", "[]", '{"event": 1}', '{"event": "x", "to": 3}'):
        with pytest.raises(InvalidMessage):
            decode_server_message(bad)


@pytest.mark.memory
def test_socket_url_sets_token_and_resume() -> None:
    assert socket_url("ws://h/socket/r/") == "ws://h/socket/r/"
    assert (
        socket_url("wss://h/socket/r/?a=1&token=old", token="t", resume="r 1")
        == "wss://h/socket/r/?a=1&token=t&resume=r+1"
    )
    with pytest.raises(ValueError):
        socket_url("http://h/socket/r/")


@pytest.mark.memory
def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, factor=2.0, jitter=0.5)
    assert [backoff.delay(n, lambda: 0.0) for n in range(6)] == [0.5, 1, 2, 4, 4, 4]
    assert [backoff.delay(n, lambda: 1.0) for n in range(6)] == [1, 2, 4, 8, 8, 8]
    assert backoff.delay(10_000, lambda: 0.5) == 6.0
    with pytest.raises(ValueError):
        Backoff(initial=2.0, maximum=1.0)


# Reconnection policy on a fake clock (no network).


class FailingEndpoint:
    """An endpoint whose connection attempts fail with `errors`, in order."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.attempts = 0

    def connect(self, factory: object) -> Deferred[Any]:
        self.attempts += 1
        return defer.fail(self.errors.pop(0))


def lost_client(endpoint: FailingEndpoint, clock: task.Clock) -> SignalingClient:
    """A reconnecting client that has just lost its connection."""
    client = SignalingClient(
        "ws://example.invalid/socket/demo/",
        reactor=clock,
        reconnect=True,
        backoff=Backoff(initial=1.0, maximum=4.0, factor=2.0, jitter=0.5),
        random=lambda: 0.0,
        endpoint=cast(Any, endpoint),
    )
    client._lost(1006, "dropped")
    return client


def pending(clock: task.Clock) -> list[float]:
    return [call.getTime() for call in clock.getDelayedCalls()]


@pytest.mark.memory
def test_reconnection_backs_off_until_a_permanent_refusal() -> None:
    from twisted.internet.error import ConnectionRefusedError

    clock = task.Clock()
    endpoint = FailingEndpoint(
        ConnectionRefusedError(),
        ConnectionRefusedError(),
        ConnectionRefusedError(),
        HandshakeFailed(500, "Internal Server Error"),
        HandshakeFailed(401, "Unauthorized"),
    )
    client = lost_client(endpoint, clock)
    closed: list[ClientClosed] = []
    client.when_closed().addCallback(closed.append)
    for delay in (0.5, 1.0, 2.0, 2.0, 2.0):  # half of 1, 2, 4, 4, 4 (no jitter drawn)
        assert pending(clock) == [clock.seconds() + delay]
        clock.advance(delay)
    assert endpoint.attempts == 5
    assert pending(clock) == []
    assert closed and closed[0].code == 1006 and "401" in closed[0].reason


@pytest.mark.memory
def test_close_while_waiting_to_reconnect() -> None:
    clock = task.Clock()
    client = lost_client(FailingEndpoint(), clock)
    assert len(pending(clock)) == 1
    reason = client.close()
    assert pending(clock) == []
    assert reason.called and client.closed is not None and client.closed.code == 1000


@pytest.mark.memory
@pytest.mark.parametrize(
    ("error", "code"),
    [
        ({"description": "Room closed", "details": "normal"}, 1000),
        (None, 1008),
    ],
)
def test_no_reconnection_when_sent_away(error: dict[str, Any] | None, code: int) -> None:
    clock = task.Clock()
    client = SignalingClient("ws://example.invalid/socket/demo/", reactor=clock, reconnect=True)
    if error is not None:
        client._core.session.follow(Message("error", error, None, ("me",)))
    client._lost(code, "")
    assert pending(clock) == []
    assert client.closed is not None and client.closed.code == code


# The Twisted API.


@pytest_twisted.ensureDeferred
async def test_two_clients_exchange_messages(make_server: MakeServer) -> None:
    server = await make_server()
    url = server.socket_url("demo")
    a = await connect(url)
    received: list[Message] = []
    b = await connect(url, on_message=received.append)
    try:
        assert a.connected and b.connected
        assert list(a.peers) == [] and list(b.peers) == [a.peer_id]
        assert b.authenticated["peer_id"] == b.peer_id
        assert b.ice_servers == []
        joined = await a.next_message(timeout=TIMEOUT)
        assert joined == Message("joined", {"peer_id": b.peer_id}, b.peer_id, "all")
        assert list(a.peers) == [b.peer_id]

        b.send("offer", {"type": "offer", "sdp": "v=0"}, to=a.peer_id)
        offer = await a.next_message(timeout=TIMEOUT)
        assert offer == Message("offer", {"type": "offer", "sdp": "v=0"}, b.peer_id, (a.peer_id,))

        a.send("hello", [1, "two"])
        hello = await b.next_message("hello", timeout=TIMEOUT)
        assert hello == Message("hello", [1, "two"], a.peer_id, "all")
        assert received == [hello]
    finally:
        await a.close()
        await b.close()


@pytest_twisted.ensureDeferred
async def test_peers_follow_joined_and_left(make_server: MakeServer) -> None:
    server = await make_server()
    url = server.socket_url("demo")
    a = await connect(url)
    b = await connect(url)
    c = await connect(url)
    assert list(c.peers) == [a.peer_id, b.peer_id]
    assert (await b.next_message("joined", timeout=TIMEOUT)).data == {"peer_id": c.peer_id}
    assert list(b.peers) == [a.peer_id, c.peer_id]

    reason = await b.close()
    assert reason.code == 1000 and b.closed is reason
    for client in (a, c):
        left = await client.next_message("left", timeout=TIMEOUT)
        assert left == Message("left", {"peer_id": b.peer_id}, None, "all")
    assert list(a.peers) == [c.peer_id]
    assert list(c.peers) == [a.peer_id]
    await a.close()
    await c.close()


@pytest_twisted.ensureDeferred
async def test_server_errors_are_messages(make_server: MakeServer) -> None:
    server = await make_server()
    a = await connect(server.socket_url("demo"))
    seen: list[Message] = []
    a._core.on_message = seen.append
    a.send("offer", {"sdp": "v=0"}, to=["nobody", a.peer_id])
    error = await a.next_message(timeout=TIMEOUT)
    assert error == Message(
        "error", {"description": "No such peer", "details": ["nobody"]}, None, (a.peer_id,)
    )
    assert seen == [error]
    # The connection stays open: an echo to ourselves comes back.
    a.send("echo", "still here", to=[a.peer_id])
    assert (await a.next_message(timeout=TIMEOUT)).data == "still here"
    await a.close()


@pytest_twisted.ensureDeferred
async def test_next_message_filters_by_event(make_server: MakeServer) -> None:
    server = await make_server()
    url = server.socket_url("demo")
    a = await connect(url)
    b = await connect(url)
    for event in ("one", "two", "three"):
        b.send(event, event.upper(), to=[a.peer_id])
    three = await a.next_message("three", timeout=TIMEOUT)
    assert three.data == "THREE"
    # What was skipped stays buffered, in order.
    assert (await a.next_message(timeout=TIMEOUT)).event == "joined"
    assert (await a.next_message(timeout=TIMEOUT)).data == "ONE"
    # A filtered waiter takes only its event; the others keep theirs.
    later = a.next_message("later")
    anything = a.next_message()
    assert (await anything).data == "TWO"
    assert not later.called
    b.send("later", 4, to=[a.peer_id])
    assert (await later).data == 4
    with pytest.raises(defer.TimeoutError):
        await a.next_message("never", timeout=0.1)

    await a.close()
    with pytest.raises(ClientClosed):
        await a.next_message()
    with pytest.raises(NotConnected):
        a.send("too late")
    await b.close()


@pytest_twisted.ensureDeferred
async def test_on_message_calls_are_serialised(make_server: MakeServer) -> None:
    server = await make_server()
    url = server.socket_url("demo")
    calls: list[tuple[str, Any]] = []

    async def on_message(message: Message) -> None:
        calls.append(("start", message.data))
        await sleep(0.05 if message.data == 1 else 0)
        calls.append(("end", message.data))

    a = await connect(url, on_message=on_message)
    b = await connect(url)
    await a.next_message("joined", timeout=TIMEOUT)
    b.send("n", 1)
    b.send("n", 2)
    await a.next_message("n", timeout=TIMEOUT)
    await a.next_message("n", timeout=TIMEOUT)
    await sleep(0.2)
    assert calls[-4:] == [("start", 1), ("end", 1), ("start", 2), ("end", 2)]
    await a.close()
    await b.close()


@pytest_twisted.ensureDeferred
async def test_refusals_fail_connect(make_server: MakeServer) -> None:
    server = await make_server(max_peers=1)
    with pytest.raises(HandshakeFailed) as refused:
        await connect(server.socket_url("not%20a%20room"))
    assert refused.value.status == 400

    a = await connect(server.socket_url("demo"))
    with pytest.raises(JoinRefused) as full:
        await connect(server.socket_url("demo"))
    assert full.value.reason == "room_is_full"
    await a.close()


class TokenPeer(Peer):
    """
    Answers 401 without ``token=good``, and records the query strings.
    """

    queries: ClassVar[list[dict[str, list[str]]]] = []

    def parse_request(self, request: ConnectionRequest) -> Any:
        TokenPeer.queries.append(dict(request.params))
        return {"token": request.params.get("token", [""])[0]}, None, "demo"

    def on_init(self, context: Any, auth: Any, options: Any) -> None:
        from twisted_signal import Unauthorized

        if auth.credentials["token"] != "good":
            raise Unauthorized()


@pytest_twisted.ensureDeferred
async def test_reconnects_with_resume_token_after_a_drop(make_server: MakeServer) -> None:
    TokenPeer.queries = []
    server = await make_server(peer_class=TokenPeer)
    url = server.socket_url("demo")
    with pytest.raises(HandshakeFailed) as unauthorized:
        await connect(url, token="bad")
    assert unauthorized.value.status == 401

    events: list[str] = []
    back: Deferred[SignalingClient] = Deferred()
    a = await connect(
        url,
        token="good",
        reconnect=True,
        backoff=FAST,
        on_disconnected=lambda c: events.append("disconnected"),
        on_reconnected=back.callback,
    )
    b = await connect(url, token="good")
    first_id = a.peer_id
    first_token = a.resume_token
    assert first_token

    # The network drops a's connection (no close frame).
    room = server.rooms.get("demo")
    assert room is not None
    room.peers[first_id].peer.transport.abortConnection()
    from twisted.internet import reactor

    assert await back.addTimeout(TIMEOUT, cast(IReactorTime, reactor)) is a
    assert events == ["disconnected"]
    assert TokenPeer.queries[-1] == {"token": ["good"], "resume": [first_token]}
    # The server resumed it: same id, a fresh token, and b saw nothing.
    assert a.resumed and a.peer_id == first_id
    assert a.resume_token not in (None, first_token)
    assert list(a.peers) == [b.peer_id]
    a.send("again", 1, to=[b.peer_id])
    # No left or joined came first: the drop was invisible to b.
    after = await b.next_message(timeout=TIMEOUT)
    assert (after.event, after.from_) == ("again", a.peer_id)
    await a.close()
    await b.close()


# Servers on a fixed port, to restart one where the clients left it.


@pytest_twisted.async_yield_fixture
async def fixed_port() -> AsyncIterator[Callable[[int], Coroutine[Any, Any, LiveServer]]]:
    servers: list[LiveServer] = []

    async def listen(port: int) -> LiveServer:
        from twisted.internet import reactor

        service = SignalingService(Rooms(lambda name: Room(name, None, max_peers=4)))
        service.startService()
        listening = await TCP4ServerEndpoint(reactor, port, interface="127.0.0.1").listen(
            service.site
        )
        server = LiveServer(service, listening)
        servers.append(server)
        return server

    yield listen
    for server in servers:
        if server.service.running:
            await server.stop()


async def restart(
    server: LiveServer, listen: Callable[[int], Coroutine[Any, Any, LiveServer]]
) -> LiveServer:
    port = server.port.getHost().port  # type: ignore[attr-defined]
    await server.stop()
    await sleep(0.3)  # a few failed reconnection attempts
    return await listen(port)


@pytest_twisted.ensureDeferred
async def test_reconnects_after_the_server_restarts(
    fixed_port: Callable[[int], Coroutine[Any, Any, LiveServer]],
) -> None:
    first = await fixed_port(0)
    url = first.socket_url("demo")
    back: list[SignalingClient] = []
    a = await connect(url, reconnect=True, backoff=FAST, on_reconnected=back.append)
    b = await connect(url)
    old_id = a.peer_id

    second = await restart(first, fixed_port)
    shutdown = await a.next_message("error", timeout=TIMEOUT)
    assert shutdown.data == {"description": "Room closed", "details": "shutdown"}
    assert (await b.when_closed()).code == 1001  # without reconnect, b stays closed

    for _ in range(100):
        if back:
            break
        await sleep(0.05)
    assert back == [a] and a.connected and a.peer_id != old_id
    assert list(a.peers) == []
    c = await connect(second.socket_url("demo"))
    assert list(c.peers) == [a.peer_id]
    c.send("hi", None, to=[a.peer_id])
    assert (await a.next_message("hi", timeout=TIMEOUT)).from_ == c.peer_id
    await a.close()
    await c.close()


# The asyncio API, in a thread with its own event loop.


def run_async(scenario: Callable[[], Awaitable[Any]]) -> Deferred[Any]:
    async def bounded() -> Any:
        async with asyncio.timeout(20):
            return await scenario()

    return deferToThread(asyncio.run, bounded())


@pytest_twisted.ensureDeferred
async def test_asyncio_clients_exchange_messages(make_server: MakeServer) -> None:
    server = await make_server()
    url = server.socket_url("demo")

    async def scenario() -> None:
        async with aio_connect(url) as a, aio_connect(url) as b:
            assert isinstance(a, AsyncSignalingClient)
            assert a.connected and list(b.peers) == [a.peer_id]
            joined = await a.recv(timeout=TIMEOUT)
            assert joined == Message("joined", {"peer_id": b.peer_id}, b.peer_id, "all")
            assert list(a.peers) == [b.peer_id]

            await b.send("offer", {"type": "offer", "sdp": "v=0"}, to=a.peer_id)
            await b.send("skip", 1, to=[a.peer_id])
            await b.send("candidate", {"candidate": ""}, to=[a.peer_id])
            candidate = await a.recv("candidate", timeout=TIMEOUT)
            assert candidate.from_ == b.peer_id and candidate.to == (a.peer_id,)
            offer = await a.recv(timeout=TIMEOUT)
            assert offer.data == {"type": "offer", "sdp": "v=0"}

            await a.send("offer", None, to=["nobody"])
            error = await a.recv("error", timeout=TIMEOUT)
            assert error.data == {"description": "No such peer", "details": ["nobody"]}
            with pytest.raises(TimeoutError):
                await a.recv("never", timeout=0.1)

            await b.close()
            left = await a.recv("left", timeout=TIMEOUT)
            assert left.data == {"peer_id": b.peer_id} and list(a.peers) == []
            with pytest.raises(NotConnected):
                await b.send("too late")

            # async for: the buffered message, then the end when a closes.
            seen = [message.event async for message in _until_closed(a)]
            assert seen == ["skip"]

    await run_async(scenario)


async def _until_closed(client: AsyncSignalingClient) -> AsyncIterator[Message]:
    async def close_soon() -> None:
        await asyncio.sleep(0.2)
        await client.close()

    closer = asyncio.create_task(close_soon())
    async for message in client:
        yield message
    await closer
    assert client.closed is not None and client.closed.code == 1000


@pytest_twisted.ensureDeferred
async def test_asyncio_refusals_and_callbacks(make_server: MakeServer) -> None:
    server = await make_server(max_peers=1)

    async def scenario() -> None:
        with pytest.raises(HandshakeFailed) as refused:
            await aio_connect(server.socket_url("not%20a%20room"))
        assert refused.value.status == 400
        seen: list[Message] = []

        async def on_message(message: Message) -> None:
            seen.append(message)

        a = await aio_connect(server.socket_url("demo"), on_message=on_message)
        with pytest.raises(JoinRefused) as full:
            await aio_connect(server.socket_url("demo"))
        assert full.value.reason == "room_is_full"
        await a.send("me", 1, to=[a.peer_id])
        assert (await a.recv(timeout=TIMEOUT)).event == "me"
        await asyncio.sleep(0.05)
        assert [m.event for m in seen] == ["me"]
        assert (await a.close()).code == 1000

    await run_async(scenario)


@pytest_twisted.ensureDeferred
async def test_asyncio_reconnects_after_the_server_restarts(
    fixed_port: Callable[[int], Coroutine[Any, Any, LiveServer]],
) -> None:
    first = await fixed_port(0)
    url = first.socket_url("demo")
    port = first.port.getHost().port  # type: ignore[attr-defined]

    async def scenario() -> None:
        back = asyncio.Event()
        async with aio_connect(
            url, reconnect=True, backoff=FAST, on_reconnected=lambda c: back.set()
        ) as a:
            old_id = a.peer_id
            await asyncio.to_thread(in_reactor, lambda: Deferred.fromCoroutine(first.stop()))
            shutdown = await a.recv("error", timeout=TIMEOUT)
            assert shutdown.data == {"description": "Room closed", "details": "shutdown"}
            await asyncio.sleep(0.3)
            assert not a.connected
            await asyncio.to_thread(in_reactor, lambda: Deferred.fromCoroutine(fixed_port(port)))
            await asyncio.wait_for(back.wait(), TIMEOUT)
            assert a.connected and a.peer_id != old_id and not a.resumed
            async with aio_connect(url) as c:
                await c.send("hi", None, to=[a.peer_id])
                assert (await a.recv("hi", timeout=TIMEOUT)).from_ == c.peer_id

    await run_async(scenario)


# Twisted's TLS endpoints hand pyOpenSSL objects to pyOpenSSL.
@pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")
@pytest_twisted.ensureDeferred
async def test_wss_with_both_apis(tmp_path: Path) -> None:
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    from twisted_signal.devcert import write_dev_certificate

    key, cert = write_dev_certificate(tmp_path)
    service = SignalingService(Rooms(lambda name: Room(name, None)))
    service.startService()
    description = f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1"
    listening = await serverFromString(reactor, description).listen(service.site)
    server = LiveServer(service, listening)
    url = f"wss://localhost:{server.port.getHost().port}/socket/demo/"  # type: ignore[attr-defined]
    try:
        trust = Certificate.loadPEM(cert.read_bytes())
        a = await connect(url, tls=optionsForClientTLS("localhost", trustRoot=trust))
        # The system's roots do not know the certificate.
        with pytest.raises(HandshakeFailed, match="certificate verify failed"):
            await connect(url)

        async def scenario() -> None:
            with pytest.raises(HandshakeFailed, match="certificate verify failed"):
                await aio_connect(url)
            context = ssl.create_default_context(cafile=str(cert))
            async with aio_connect(url, ssl=context) as b:
                assert list(b.peers) == [a.peer_id]
                await b.send("over", "tls", to=a.peer_id)

        await run_async(scenario)
        assert (await a.next_message("over", timeout=TIMEOUT)).data == "tls"
        await a.close()
    finally:
        await server.stop()


_PLAIN_ASYNCIO = """
import asyncio, sys
from twisted_signal.client import aio_connect

async def main(url, to):
    async with aio_connect(url) as client:
        await client.send("from a plain asyncio program", client.peer_id, to=to)
        print(client.peer_id)

asyncio.run(main(sys.argv[1], sys.argv[2]))
assert "twisted.internet.reactor" not in sys.modules, "a reactor was installed"
"""


@pytest.mark.process
@pytest_twisted.ensureDeferred
async def test_the_asyncio_client_needs_no_reactor(make_server: MakeServer) -> None:
    server = await make_server()
    url = server.socket_url("demo")
    a = await connect(url)
    result = await deferToThread(
        subprocess.run,
        [sys.executable, "-c", _PLAIN_ASYNCIO, url, a.peer_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    message = await a.next_message("from a plain asyncio program", timeout=TIMEOUT)
    assert message.from_ == message.data == result.stdout.strip()
    await a.close()
