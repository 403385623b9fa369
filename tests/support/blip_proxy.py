"""
A TCP proxy that can make network blips, for the browser tests: run as
``python blip_proxy.py TARGET_PORT NAME...`` (in the test's network
namespace), it listens on 127.0.0.1 on one free port per NAME, forwards every
connection to 127.0.0.1:TARGET_PORT byte for byte (TLS and all: it never
looks inside), and prints ``{"NAME": port, ...}`` as its first line.

Then it obeys commands on stdin, one per line, answering each with one line:

- ``cut NAME SECONDS``: reset every open connection of NAME at once, on both
  sides (SO_LINGER 0 then close: an RST, no FIN, so no WebSocket close frame
  can get through), and reset the new connections to NAME for SECONDS, as a
  network that is down for a while.  Answers ``cut N`` (N connections).
- ``drop NAME``: reset the client's side of every open connection of NAME,
  and leave the server's side open and silent (a half-open connection: the
  client knows at once, the server only when its pings go unanswered).
  Answers ``drop N``.
- ``restore NAME``: the network of NAME is back now.  Answers ``restore 0``.
- ``open NAME``: answers ``open N``, the connections of NAME open now.

EOF on stdin ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import sys
import time
from dataclasses import dataclass, field

TARGET_HOST = "127.0.0.1"
CHUNK = 65536


def reset(writer: asyncio.StreamWriter) -> None:
    """
    Close at once with an RST.
    """
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Pair:
    """
    One proxied connection: the client's side and ours to the server.
    """

    def __init__(self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream = upstream
        self.tasks: list[asyncio.Task[None]] = []
        self.keep_upstream = False

    def cut(self) -> None:
        for task in self.tasks:
            task.cancel()
        reset(self.client)
        reset(self.upstream)

    def drop_client(self) -> None:
        """
        Reset the client's side only: the server's side stays open, and
        silent, as a server sees a client whose network has gone.
        """
        self.keep_upstream = True
        for task in self.tasks:
            task.cancel()
        reset(self.client)
        transport = self.upstream.transport
        if isinstance(transport, asyncio.ReadTransport):
            transport.pause_reading()


@dataclass
class Listener:
    target_port: int
    down_until: float = 0.0
    pairs: set[Pair] = field(default_factory=set)
    # Server sides left open by `drop`, kept until the end.
    kept: list[Pair] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < self.down_until:
            reset(writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(
                TARGET_HOST, self.target_port
            )
        except OSError:
            reset(writer)
            return
        pair = Pair(writer, upstream_writer)
        pair.tasks = [
            asyncio.create_task(pipe(reader, upstream_writer)),
            asyncio.create_task(pipe(upstream_reader, writer)),
        ]
        self.pairs.add(pair)
        try:
            await asyncio.gather(*pair.tasks)
        except (OSError, RuntimeError, asyncio.CancelledError):
            pass  # reset by either side, or by a cut or a drop
        finally:
            self.pairs.discard(pair)
            writer.transport.abort()
            if not pair.keep_upstream:
                upstream_writer.transport.abort()

    def cut(self, seconds: float) -> int:
        self.down_until = time.monotonic() + seconds
        pairs = list(self.pairs)
        self.pairs.clear()
        for pair in pairs:
            pair.cut()
        return len(pairs)

    def drop(self) -> int:
        pairs = list(self.pairs)
        self.pairs.clear()
        for pair in pairs:
            pair.drop_client()
        self.kept.extend(pairs)
        return len(pairs)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def main(target_port: int, names: list[str]) -> None:
    listeners: dict[str, Listener] = {}
    ports: dict[str, int] = {}
    for name in names:
        listener = Listener(target_port)
        server = await asyncio.start_server(listener.handle, "127.0.0.1", 0)
        listeners[name] = listener
        ports[name] = server.sockets[0].getsockname()[1]
    print(json.dumps(ports), flush=True)
    loop = asyncio.get_running_loop()
    commands = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(commands), sys.stdin)
    while line := (await commands.readline()).decode():
        match line.split():
            case ["cut", name, seconds]:
                answer = f"cut {listeners[name].cut(float(seconds))}"
            case ["drop", name]:
                answer = f"drop {listeners[name].drop()}"
            case ["restore", name]:
                listeners[name].down_until = 0.0
                answer = "restore 0"
            case ["open", name]:
                answer = f"open {len(listeners[name].pairs)}"
            case _:
                answer = f"error {line.strip()!r}"
        print(answer, flush=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2:]))
