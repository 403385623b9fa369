"""
A client for the signaling server, for Python programs that join rooms:
media bots, recorders, AI agents, test probes, load generators.

Two flavours over the same protocol (docs/protocol.md):

- Twisted: ``client = await connect(url)`` (or ``connect(url).addCallback(...)``)
  gives a `SignalingClient` once the server has said ``authenticated``::

      client = await connect("ws://127.0.0.1:8080/socket/demo/")
      client.send("hello", {"text": "hi"})          # to everyone else
      message = await client.next_message("hello")
      await client.close()

- asyncio: ``async with aio_connect(url) as client:`` gives an
  `AsyncSignalingClient`, built on the `websockets` package (install it:
  ``pip install websockets``); it needs no Twisted reactor::

      async with aio_connect("ws://127.0.0.1:8080/socket/demo/") as client:
          await client.send("hello", {"text": "hi"})
          async for message in client:
              print(message.event, message.from_, message.data)

Both keep `peer_id`, `peers` (followed through ``joined`` and ``left``),
`ice_servers` and `authenticated` (the data of the last ``authenticated``)
up to date.  Every other message from the server, ``error`` included, is a
`Message` with its sender in `Message.from_`; it goes to the ``on_message``
callback and to a buffer that `SignalingClient.next_message` and
`AsyncSignalingClient.recv` read from (a buffer of ``buffer_size`` messages:
when nobody reads it, the oldest are dropped).

With ``reconnect=True`` a lost connection is opened again after an
exponential, capped and jittered delay (`Backoff`), for as long as it takes.
When the server handed out a ``resume_token``, the new connection asks to
resume (``?resume=<token>``) and, if the server still holds the peer, keeps
its peer id (`resumed` is then true); otherwise the client joins as a new
peer.  ``on_reconnected(client)`` is called each time.  The client does not
come back when it was closed by the server on purpose: its room was closed
(``"Room closed"`` other than ``"shutdown"``), it was kicked or rate-limited
(close code 1008), or the server refuses the upgrade with 400, 401 or 403.

Both faces are thin adapters over one sans-IO core (`_core.ClientCore`,
which takes events and returns actions); they take the same options
(`ClientOptions`).  For aiortc peers, `verify_peer_connection(pc)` computes
the verification code the room page shows (docs/verification.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

# The sans-IO core is pure; each face is imported on first use (PEP 562), so
# that the asyncio client loads neither Twisted nor Autobahn's Twisted side,
# and neither face loads aiortc.
from ._core import (
    Backoff,
    ClientClosed,
    ClientOptions,
    HandshakeFailed,
    JoinRefused,
    NotConnected,
    Target,
    decode_server_message,
    socket_url,
)

_HOMES = {
    "AsyncSignalingClient": "_asyncio",
    "aio_connect": "_asyncio",
    "PeerVerification": "_aiortc",
    "verify_peer_connection": "_aiortc",
    "SignalingClient": "_twisted",
    "connect": "_twisted",
}

if TYPE_CHECKING:
    from ._aiortc import PeerVerification, verify_peer_connection
    from ._asyncio import AsyncSignalingClient, aio_connect
    from ._twisted import SignalingClient, connect


__getattr__, __dir__ = lazy_exports(__name__, globals(), _HOMES)


__all__ = [
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
