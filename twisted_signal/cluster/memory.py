"""
In-memory twins of the cluster's backends (`backend.Bus`, `backend.Leases`):
one `MemoryRedis` shared by the nodes of one process, each node on a
`MemoryLink` of its own.  Keys expire on the given clock, so failover runs
on a `task.Clock` in milliseconds, with the faults a real Redis has:

- `MemoryRedis.stop`/`start` (unreachable, then back; ``lost=True`` also
  loses every key and changes the run id, as a restart does);
- `MemoryRedis.pause`/`resume` (SIGSTOP: commands wait and are answered in
  order, after time has passed and keys have expired);
- `MemoryLink.cut`/`mend` and `MemoryLink.pause`/`resume`, the same for
  one node only (a node killed, or one whose network is slow).

Commands time out as `resp.RedisClient`'s do: a reply that comes after its
command timed out is dropped, but the command took effect.

    store = MemoryRedis(clock)
    link = store.connect(timeout=lease / 3)
    rooms = ClusterRooms(factory, bus=link.bus, leases=link.leases,
                         lease=lease, reactor=clock)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail

from .backend import Batch, key
from .resp import RedisUnavailable

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["MemoryBus", "MemoryLeases", "MemoryLink", "MemoryRedis"]

_Id = tuple[int, int]
_Stream = list[tuple[_Id, list[bytes]]]


def _parse_id(entry_id: str) -> _Id:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _format_id(entry_id: _Id) -> str:
    return f"{entry_id[0]}-{entry_id[1]}"


def _encode(value: Any) -> bytes:
    """As the Redis client encodes an argument (a lone surrogate: ValueError)."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int):
        return str(value).encode()
    raise ValueError(f"cannot send {type(value).__name__} to Redis")


class _Read:
    """A blocking read waiting for entries."""

    def __init__(self, link: MemoryLink, streams: Sequence[tuple[str, str]]) -> None:
        self.link = link
        self.streams = [(name, _parse_id(after)) for name, after in streams]
        self.d: Deferred[Batch] = Deferred()
        self.timer: IDelayedCall | None = None


class MemoryRedis:
    """The keys and streams that the nodes of one process share."""

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self.run_id = uuid.uuid4().hex
        self._values: dict[str, Any] = {}
        self._expires: dict[str, float] = {}
        self._last: _Id = (0, 0)
        self._reads: list[_Read] = []
        self._down = False
        self._paused = False
        self._pending: list[Callable[[], None]] = []

    def connect(self, timeout: float) -> MemoryLink:
        """A node's connection; its commands time out after `timeout` seconds."""
        return MemoryLink(self, timeout)

    # Faults.

    def stop(self) -> None:
        """Unreachable: every command fails at once, blocked reads too."""
        self._down = True
        self._fail_reads(lambda read: True)
        self._pending.clear()

    def start(self, *, lost: bool = False) -> None:
        """Reachable again; with `lost`, started anew: no keys, a new run id."""
        self._down = False
        if lost:
            self._values.clear()
            self._expires.clear()
            self.run_id = uuid.uuid4().hex

    def restart(self) -> None:
        """Stopped and started again at once, with every key lost."""
        self.stop()
        self.start(lost=True)

    def pause(self) -> None:
        """Frozen (SIGSTOP): commands wait, time goes on."""
        self._paused = True

    def resume(self) -> None:
        """Answer what waited, in order."""
        self._paused = False
        pending, self._pending = self._pending, []
        for run in pending:
            run()

    # What the links call.

    def call(self, link: MemoryLink, command: Callable[[], Any], timeout: float) -> Deferred[Any]:
        if self._down or link.down:
            return fail(RedisUnavailable("Connection refused"))
        d: Deferred[Any] = Deferred()

        def run() -> None:
            try:
                result = command()
            except Exception as e:
                d.errback(e)  # ignored when it timed out
            else:
                d.callback(result)  # ignored when it timed out

        self._when_answering(link, run)
        return d.addTimeout(timeout, self.clock)

    def read(
        self, link: MemoryLink, streams: Sequence[tuple[str, str]], block: float
    ) -> Deferred[Batch]:
        if self._down or link.down:
            return fail(RedisUnavailable("Connection refused"))
        read = _Read(link, streams)

        def run() -> None:
            batch = self._batch(read)
            if batch:
                read.d.callback(batch)
                return
            self._reads.append(read)
            read.timer = self.clock.callLater(block, self._answer, read, [])

        self._when_answering(link, run)
        return read.d.addTimeout(block + 5, self.clock)

    def _when_answering(self, link: MemoryLink, run: Callable[[], None]) -> None:
        if link.paused:
            link.pending.append(run)
        elif self._paused:
            self._pending.append(run)
        else:
            run()

    def fail_reads(self, link: MemoryLink) -> None:
        self._fail_reads(lambda read: read.link is link)

    def _fail_reads(self, which: Callable[[_Read], bool]) -> None:
        for read in [r for r in self._reads if which(r)]:
            self._answer(read, None)

    def _answer(self, read: _Read, batch: Batch | None) -> None:
        if read not in self._reads:
            return
        self._reads.remove(read)
        if read.timer is not None and read.timer.active():
            read.timer.cancel()
        if batch is None:
            read.d.errback(RedisUnavailable("Connection lost"))
        else:
            read.d.callback(batch)

    def _batch(self, read: _Read) -> Batch:
        batch: Batch = []
        for name, after in read.streams:
            stream: _Stream = self.get(name) or []
            entries = [(_format_id(i), list(flat)) for i, flat in stream if i > after][:1000]
            if entries:
                batch.append((name, entries))
        return batch

    def _woken(self) -> None:
        for read in list(self._reads):
            batch = self._batch(read)
            if batch:
                self._answer(read, batch)

    # The data, as Redis keeps it (expiry on the clock, checked on access).

    def get(self, name: str) -> Any:
        due = self._expires.get(name)
        if due is not None and due <= self.clock.seconds():
            self._values.pop(name, None)
            self._expires.pop(name, None)
        return self._values.get(name)

    def set(self, name: str, value: Any, px: int | None = None) -> None:
        self._values[name] = value
        self._expires.pop(name, None)
        if px is not None:
            self.pexpire(name, px)

    def delete(self, *names: str) -> int:
        """Forget `names`; how many there were."""
        deleted = 0
        for name in names:
            deleted += self.get(name) is not None
            self._values.pop(name, None)
            self._expires.pop(name, None)
        return deleted

    def pexpire(self, name: str, ms: int) -> int:
        if self.get(name) is None:
            return 0
        self._expires[name] = self.clock.seconds() + ms / 1000
        return 1

    def names(self) -> list[str]:
        return [name for name in list(self._values) if self.get(name) is not None]

    def xadd(self, stream: str, fields: Sequence[Any]) -> str:
        flat = [_encode(value) for value in fields]
        ms = int(self.clock.seconds() * 1000)
        last = self._last
        entry_id = (ms, 0) if ms > last[0] else (last[0], last[1] + 1)
        self._last = entry_id
        entries: _Stream | None = self.get(stream)
        if entries is None:
            entries = []
            self.set(stream, entries)
        entries.append((entry_id, flat))
        self.clock.callLater(0, self._woken)
        return _format_id(entry_id)


class MemoryLink:
    """One node's connection to a `MemoryRedis`: its `bus` and `leases`."""

    def __init__(self, store: MemoryRedis, timeout: float) -> None:
        self.store = store
        self.timeout = timeout
        self.down = False
        self.paused = False
        self.pending: list[Callable[[], None]] = []
        self.bus = MemoryBus(self)
        self.leases = MemoryLeases(self)

    def cut(self) -> None:
        """This node cannot reach the store (or it was killed)."""
        self.down = True
        self.pending.clear()
        self.store.fail_reads(self)

    def mend(self) -> None:
        self.down = False

    def pause(self) -> None:
        """This node's commands wait (its network stalls)."""
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        pending, self.pending = self.pending, []
        for run in pending:
            run()

    def call(self, command: Callable[[], Any]) -> Deferred[Any]:
        return self.store.call(self, command, self.timeout)


class MemoryBus:
    """`backend.Bus` in a `MemoryRedis`."""

    def __init__(self, link: MemoryLink) -> None:
        self._link = link
        self._store = link.store

    def add(self, stream: str, fields: Sequence[Any]) -> Deferred[Any]:
        try:
            flat = [_encode(value) for value in fields]
        except ValueError as e:
            return fail(e)  # nothing was sent, as with the Redis client
        return self._link.call(lambda: self._store.xadd(stream, flat))

    def expire(self, stream: str, keep_ms: int) -> Deferred[Any]:
        return self._link.call(lambda: self._store.pexpire(stream, keep_ms))

    def read(self, streams: Sequence[tuple[str, str]], block: float) -> Deferred[Batch]:
        return self._store.read(self._link, streams, block)

    def trim(self, stream: str, min_id: str) -> Deferred[Any]:
        def trim() -> int:
            entries: _Stream | None = self._store.get(stream)
            if not entries:
                return 0
            least = _parse_id(min_id)
            kept = [(i, flat) for i, flat in entries if i >= least]
            removed = len(entries) - len(kept)
            entries[:] = kept
            return removed

        return self._link.call(trim)

    def reset(self) -> None:
        pass

    def close(self) -> None:
        self._link.cut()


class MemoryLeases:
    """`backend.Leases` in a `MemoryRedis`: what the scripts of `scripts.py` do."""

    def __init__(self, link: MemoryLink) -> None:
        self._link = link
        self._store = link.store

    def run_id(self) -> Deferred[str]:
        return self._link.call(lambda: self._store.run_id)

    def register(self, node: str, incarnation: str, lease_ms: int) -> Deferred[int]:
        def register() -> int:
            store, name = self._store, key("node", node)
            current = store.get(name)
            if current == incarnation:
                store.pexpire(name, lease_ms)
                return 1
            if current is not None:
                return -1
            store.set(name, incarnation, px=lease_ms)
            return 0

        return self._link.call(register)

    def unregister(self, node: str) -> Deferred[Any]:
        return self._link.call(lambda: self._store.delete(key("node", node)))

    def node_alive(self, node: str) -> Deferred[bool]:
        return self._link.call(lambda: self._store.get(key("node", node)) is not None)

    def acquire(
        self, room: str, node: str, lease_ms: int, keep_ms: int, mode: str
    ) -> Deferred[tuple[int, str]]:
        def acquire() -> tuple[int, str]:
            store = self._store
            owner, counter = key("room", room, "owner"), key("room", room, "epoch")
            stream, cursor = key("room", room, "in"), key("room", room, "cursor")
            current = store.get(owner)
            if current is not None:
                return 0, current
            if store.get(key("node", node)) is None:
                return 0, "unregistered"
            if mode == "wait":
                return 0, "waiting"
            epoch = (store.get(counter) or 0) + 1
            if epoch == 1:  # as the script does: a new counter starts at the clock
                epoch = int(store.clock.seconds() * 1000)
            store.set(counter, epoch)
            store.pexpire(counter, keep_ms)
            store.pexpire(stream, keep_ms)
            store.set(owner, f"{node}|{epoch}", px=lease_ms)
            where = store.get(cursor)
            if where is not None:
                store.delete(cursor)
            else:
                entries: _Stream = store.get(stream) or []
                where = _format_id(entries[-1][0]) if entries else "0-0"
            return epoch, where

        return self._link.call(acquire)

    def _owned_by(self, room: str, token: str) -> bool:
        return bool(self._store.get(key("room", room, "owner")) == token)

    def renew(self, room: str, token: str, lease_ms: int, keep_ms: int) -> Deferred[bool]:
        def renew() -> bool:
            if not self._owned_by(room, token):
                return False
            for name in ("epoch", "in", "peers"):
                self._store.pexpire(key("room", room, name), keep_ms)
            return bool(self._store.pexpire(key("room", room, "owner"), lease_ms))

        return self._link.call(renew)

    def release(self, room: str, token: str) -> Deferred[Any]:
        def release() -> bool:
            if not self._owned_by(room, token):
                return False
            self._store.delete(key("room", room, "owner"), key("room", room, "peers"))
            return True

        return self._link.call(release)

    def hand_over(self, room: str, token: str, cursor: str, lease_ms: int) -> Deferred[Any]:
        def hand_over() -> bool:
            if not self._owned_by(room, token):
                return False
            self._store.set(key("room", room, "cursor"), cursor, px=lease_ms)
            self._store.delete(key("room", room, "owner"))
            return True

        return self._link.call(hand_over)

    def owner(self, room: str) -> Deferred[str | None]:
        return self._link.call(lambda: self._store.get(key("room", room, "owner")))

    def owned_rooms(self) -> Deferred[set[str]]:
        prefix, suffix = key("room", ""), ":owner"

        def scan() -> set[str]:
            return {
                name[len(prefix) : -len(suffix)]
                for name in self._store.names()
                if name.startswith(prefix) and name.endswith(suffix)
            }

        return self._link.call(scan)

    def members(self, room: str) -> Deferred[list[tuple[str, bytes]]]:
        def members() -> list[tuple[str, bytes]]:
            return list((self._store.get(key("room", room, "peers")) or {}).items())

        return self._link.call(members)

    def add_member(
        self, room: str, token: str, keep_ms: int, peer_id: str, member: str
    ) -> Deferred[Any]:
        def add() -> bool:
            if not self._owned_by(room, token):
                return False
            name = key("room", room, "peers")
            peers = self._store.get(name)
            if peers is None:
                peers = {}
                self._store.set(name, peers)
            peers[peer_id] = member.encode()
            self._store.pexpire(name, keep_ms)
            return True

        return self._link.call(add)

    def remove_member(self, room: str, token: str, peer_id: str) -> Deferred[Any]:
        def remove() -> bool:
            if not self._owned_by(room, token):
                return False
            peers = self._store.get(key("room", room, "peers"))
            if peers is not None:
                peers.pop(peer_id, None)
                if not peers:
                    self._store.delete(key("room", room, "peers"))
            return True

        return self._link.call(remove)

    def dead_members(self, room: str) -> Deferred[list[str]]:
        def dead() -> list[str]:
            peers = self._store.get(key("room", room, "peers")) or {}
            return [
                peer_id
                for peer_id, member in peers.items()
                if self._store.get(key("node", json.loads(member)["node"])) is None
            ]

        return self._link.call(dead)
