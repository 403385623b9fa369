"""
What a cluster node needs of a shared store, behind two small interfaces
(see docs/cluster.md, "Backends"):

- `Bus`, the message bus: append an entry to a stream, read the streams
  a node follows (its inbox and the rooms it owns) from where it got to;
- `Leases`, the room lease and membership: who owns a room at which
  epoch, the members a new owner takes over, which nodes are alive.

`RedisBus` and `RedisLeases` are the real ones (one Redis, the scripts of
`scripts.py`); `twisted_signal.cluster.memory` has in-memory twins that
tests and embedders run on a `task.Clock`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred

from . import scripts

__all__ = [
    "PREFIX",
    "STREAM_MAXLEN",
    "Batch",
    "Bus",
    "Client",
    "Leases",
    "RedisBus",
    "RedisLeases",
    "key",
    "text",
]

PREFIX = "rtcsignal:"
#: Readers trim what they have read (`Bus.trim`); this bound only caps the
#: memory of a stream whose reader is gone.  Trimming by length alone would
#: drop entries that a reader under load has not read yet.
STREAM_MAXLEN = 1_000_000

Batch = list[tuple[str, list[tuple[str, list[bytes]]]]]
"""What a read gives: per stream, its new entries (id, field, value, ...)."""


def key(*parts: str) -> str:
    """The name of a key or stream: ``rtcsignal:<part>:<part>...``."""
    return PREFIX + ":".join(parts)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Client(Protocol):
    """What sends Redis commands: `resp.RedisClient`, or a test's stand-in."""

    def execute(self, *args: Any, timeout: float | None = None) -> Deferred[Any]: ...

    def drop(self) -> None: ...

    def close(self) -> None: ...


class Bus(Protocol):
    """
    Streams of entries, each read in order from where its reader got to;
    an entry is a flat list of field names and values.  Every call fails
    (`RedisUnavailable`, `TimeoutError`) while the store cannot be reached.
    """

    def add(self, stream: str, fields: Sequence[Any]) -> Deferred[Any]:
        """Append an entry (field, value, ...) to `stream`."""

    def expire(self, stream: str, keep_ms: int) -> Deferred[Any]:
        """Let `stream` go `keep_ms` from now unless set again."""

    def read(self, streams: Sequence[tuple[str, str]], block: float) -> Deferred[Batch]:
        """
        The entries after each (stream, last id read), waiting up to `block`
        seconds for one to come (then an empty list).
        """

    def trim(self, stream: str, min_id: str) -> Deferred[Any]:
        """Forget the entries of `stream` before `min_id` (read already)."""

    def reset(self) -> None:
        """A read failed: the next one starts afresh (a new connection)."""

    def close(self) -> None:
        """The node has stopped."""


class Leases(Protocol):
    """
    Which node owns each room, at which epoch, with which members, and
    which nodes are alive.  Every change of a room's lease or members is
    checked against the owner's token (``<node>|<epoch>``): a node that
    lost the room changes nothing.
    """

    def run_id(self) -> Deferred[str]:
        """The store's run id: new whenever it lost everything (a restart)."""

    def register(self, node: str, incarnation: str, lease_ms: int) -> Deferred[int]:
        """Keep `node` alive: 1 renewed, 0 it had lapsed (set again), -1 another has it."""

    def unregister(self, node: str) -> Deferred[Any]:
        """`node` is gone (it shut down)."""

    def node_alive(self, node: str) -> Deferred[bool]:
        """Whether `node`'s lease holds."""

    def acquire(
        self, room: str, node: str, lease_ms: int, keep_ms: int, mode: str
    ) -> Deferred[tuple[int, str]]:
        """
        Take `room` if nobody owns it (`mode` "take"; "wait" never takes):
        (epoch, where to read the room's stream from), or (0, the owner or
        why not).
        """

    def renew(self, room: str, token: str, lease_ms: int, keep_ms: int) -> Deferred[bool]:
        """Extend the lease if `token` still owns `room`."""

    def release(self, room: str, token: str) -> Deferred[Any]:
        """The room emptied: nobody owns it, it has no members."""

    def hand_over(self, room: str, token: str, cursor: str, lease_ms: int) -> Deferred[Any]:
        """Let `room` go, saying where the next owner reads its stream on."""

    def owner(self, room: str) -> Deferred[str | None]:
        """``<node>|<epoch>`` of the room's owner, or None."""

    def owned_rooms(self) -> Deferred[set[str]]:
        """The names of the rooms that have an owner now."""

    def members(self, room: str) -> Deferred[list[tuple[str, bytes]]]:
        """The room's members: (peer id, JSON ``{node, credentials, metadata}``)."""

    def add_member(
        self, room: str, token: str, keep_ms: int, peer_id: str, member: str
    ) -> Deferred[Any]:
        """Record a member (as the owner `token`)."""

    def remove_member(self, room: str, token: str, peer_id: str) -> Deferred[Any]:
        """Forget a member (as the owner `token`)."""

    def dead_members(self, room: str) -> Deferred[list[str]]:
        """The members whose node is not alive."""


class RedisBus:
    """`Bus` on Redis Streams: ``XADD``, ``XREAD BLOCK`` on a connection of its own."""

    def __init__(self, redis: Client, reader: Client) -> None:
        self._redis = redis
        self._reader = reader

    def add(self, stream: str, fields: Sequence[Any]) -> Deferred[Any]:
        return self._redis.execute("XADD", stream, "MAXLEN", "~", STREAM_MAXLEN, "*", *fields)

    def expire(self, stream: str, keep_ms: int) -> Deferred[Any]:
        return self._redis.execute("PEXPIRE", stream, keep_ms)

    def read(self, streams: Sequence[tuple[str, str]], block: float) -> Deferred[Batch]:
        names = [s for s, _ in streams]
        ids = [i for _, i in streams]
        d: Deferred[Any] = self._reader.execute(
            "XREAD",
            "COUNT",
            1000,
            "BLOCK",
            int(block * 1000),
            "STREAMS",
            *names,
            *ids,
            timeout=block + 5,
        )
        return d.addCallback(_batch)

    def trim(self, stream: str, min_id: str) -> Deferred[Any]:
        return self._redis.execute("XTRIM", stream, "MINID", min_id)

    def reset(self) -> None:
        self._reader.drop()

    def close(self) -> None:
        self._redis.close()
        self._reader.close()


def _batch(reply: Any) -> Batch:
    return [
        (text(stream), [(text(entry_id), list(flat)) for entry_id, flat in entries])
        for stream, entries in reply or []
    ]


class RedisLeases:
    """`Leases` in Redis keys, changed only by the scripts of `scripts.py`."""

    def __init__(self, redis: Client) -> None:
        self._redis = redis

    def _room(self, room: str, *names: str) -> list[str]:
        return [key("room", room, name) for name in names]

    def run_id(self) -> Deferred[str]:
        d: Deferred[Any] = self._redis.execute("INFO", "server")
        return d.addCallback(_run_id)

    def register(self, node: str, incarnation: str, lease_ms: int) -> Deferred[int]:
        return scripts.NODE_RENEW.run(self._redis, [key("node", node)], [incarnation, lease_ms])

    def unregister(self, node: str) -> Deferred[Any]:
        return self._redis.execute("DEL", key("node", node))

    def node_alive(self, node: str) -> Deferred[bool]:
        d: Deferred[Any] = self._redis.execute("EXISTS", key("node", node))
        return d.addCallback(bool)

    def acquire(
        self, room: str, node: str, lease_ms: int, keep_ms: int, mode: str
    ) -> Deferred[tuple[int, str]]:
        d = scripts.ACQUIRE.run(
            self._redis,
            [*self._room(room, "owner", "epoch", "in", "cursor"), key("node", node)],
            [node, lease_ms, keep_ms, mode],
        )
        return d.addCallback(lambda reply: (int(reply[0]), text(reply[1])))

    def renew(self, room: str, token: str, lease_ms: int, keep_ms: int) -> Deferred[bool]:
        d = scripts.RENEW.run(
            self._redis,
            self._room(room, "owner", "epoch", "in", "peers"),
            [token, lease_ms, keep_ms],
        )
        return d.addCallback(bool)

    def release(self, room: str, token: str) -> Deferred[Any]:
        return scripts.RELEASE.run(self._redis, self._room(room, "owner", "peers"), [token])

    def hand_over(self, room: str, token: str, cursor: str, lease_ms: int) -> Deferred[Any]:
        return scripts.HAND_OVER.run(
            self._redis, self._room(room, "owner", "cursor"), [token, cursor, lease_ms]
        )

    def owner(self, room: str) -> Deferred[str | None]:
        d: Deferred[Any] = self._redis.execute("GET", key("room", room, "owner"))
        return d.addCallback(lambda v: None if v is None else text(v))

    def owned_rooms(self) -> Deferred[set[str]]:
        return Deferred.fromCoroutine(self._owned_rooms())

    async def _owned_rooms(self) -> set[str]:
        """SCAN (never KEYS) for the owner keys."""
        names: set[str] = set()
        prefix, suffix = key("room", ""), ":owner"
        cursor = "0"
        while True:
            cursor_raw, keys = await self._redis.execute(
                "SCAN", cursor, "MATCH", key("room", "*", "owner"), "COUNT", 1000
            )
            names.update(text(raw)[len(prefix) : -len(suffix)] for raw in keys)
            cursor = text(cursor_raw)
            if cursor == "0":
                return names

    def members(self, room: str) -> Deferred[list[tuple[str, bytes]]]:
        d: Deferred[Any] = self._redis.execute("HGETALL", key("room", room, "peers"))
        return d.addCallback(
            lambda flat: [(text(flat[i]), flat[i + 1]) for i in range(0, len(flat), 2)]
        )

    def add_member(
        self, room: str, token: str, keep_ms: int, peer_id: str, member: str
    ) -> Deferred[Any]:
        return scripts.MEMBER_ADD.run(
            self._redis, self._room(room, "owner", "peers"), [token, keep_ms, peer_id, member]
        )

    def remove_member(self, room: str, token: str, peer_id: str) -> Deferred[Any]:
        return scripts.MEMBER_DEL.run(
            self._redis, self._room(room, "owner", "peers"), [token, peer_id]
        )

    def dead_members(self, room: str) -> Deferred[list[str]]:
        d = scripts.DEAD_MEMBERS.run(self._redis, [key("room", room, "peers")], [key("node", "")])
        return d.addCallback(lambda ids: [text(i) for i in ids])


def _run_id(info: bytes) -> str:
    """The ``run_id`` of Redis's ``INFO server``: new at every start."""
    for line in text(info).splitlines():
        if line.startswith("run_id:"):
            return line.partition(":")[2].strip()
    return ""
