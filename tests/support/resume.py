"""
Resume (SPEC 5.4) from a client's side: its token, losing its connection
the way networks do (FIN or RST, no close frame), waiting until the server
holds its peer, and coming back with ``?resume=<token>``.
"""

from __future__ import annotations

import socket
import struct
import time

from twisted_signal.resume import Resumption

from . import LiveServer, StrictClient, in_reactor, join_strict, wait_until


def token_of(client: StrictClient) -> str:
    token = client.authenticated["data"]["resume_token"]
    assert isinstance(token, str), client.authenticated
    return token


def resumption(server: LiveServer) -> Resumption:
    return server.service.resource.factory.resumption


def held(server: LiveServer) -> int:
    return resumption(server).held


def lose(client: StrictClient, how: str = "drop") -> None:
    """
    End `client`'s connection without a close frame: ``"drop"`` shuts the
    socket down (FIN), ``"reset"`` aborts it (RST).
    """
    sock = client.ws.socket
    if how == "drop":
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
        sock.close()


def lose_and_wait(server: LiveServer, client: StrictClient, how: str = "drop") -> None:
    """
    Lose `client`'s connection and wait until the server holds its peer.
    """
    before = in_reactor_len(server)
    lose(client, how)
    wait_until(lambda: held(server) == before + 1)


def in_reactor_len(server: LiveServer) -> int:
    return int(in_reactor(held, server))


def resume(server: LiveServer, room: str, token: str) -> StrictClient:
    return join_strict(server.socket_url(room, f"resume={token}"))


def quiet(*clients: StrictClient, seconds: float = 0.3) -> bool:
    """
    Nothing arrives at any of `clients` for `seconds` (checked together).
    """
    deadline = time.monotonic() + seconds
    return all(c.nothing_within(max(deadline - time.monotonic(), 0.01)) for c in clients)
