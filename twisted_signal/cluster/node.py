"""
Cluster mode: `ClusterRooms` is the `Rooms` of a node that shares its rooms
with other nodes through Redis (see docs/cluster.md): the node's life (its
lease, the heartbeat, reading its streams), asking other nodes, the admin
API's calls and resume across nodes.  Each room a node's peers use has a
`RoomRelay` (`relay.py`).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, TimeoutError
from twisted.internet.interfaces import IReactorCore
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..context import AuthData
from ..errors import NoSuchPeer, NoSuchRoom, RoomUnavailable
from ..message import Message
from ..resume import MAX_QUEUED, Departure, GiveAway
from ..room import CLOSE_GOING_AWAY, PeerHandle, Room
from ..rooms import (
    RoomFactory,
    Rooms,
    close_for_shutdown,
    is_room_name,
    on_room,
    room_summary,
)
from . import scripts
from .backend import Batch, Bus, Leases, RedisBus, RedisLeases, key, text
from .relay import SAFE_SHARE, RoomRelay
from .resp import RedisClient, RedisError, RedisRefused, RedisUnavailable, RedisURL

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

__all__ = ["ClusterNode", "ClusterRooms", "RoomRelay"]

#: The most entries, and bytes of them, that a node keeps to write again
#: while Redis does not take them (`ClusterNode.xadd`); beyond either the
#: oldest go.  (A node lets them all go once it closes its peers, a lease
#: into an outage at most.)
MAX_OUTBOX = 1_000_000
MAX_OUTBOX_BYTES = 64 * 1024 * 1024
#: How soon a node writes its waiting entries again (seconds).
RETRY_DELAY = 0.2
#: How soon, as a share of the lease, a node sends a heartbeat again that
#: Redis refused at once (`ClusterNode._beat`).
BEAT_RETRY_SHARE = 1 / 30
#: The share of the lease after the last answered heartbeat went out from
#: which a node takes itself for dead (`ClusterNode._beat`): Redis expires
#: the node's key a lease after that heartbeat reached it, at the earliest
#: a lease after it went out.  Above 1/3 + 1/2 + `BEAT_RETRY_SHARE`, so that
#: Redis refusing connections for less than half a lease, from any point
#: between two ticks, leaves time for a heartbeat sent again to get
#: through; ticks come every lease/3, so where they are on time a node that
#: hears nothing from Redis closes its peers at the tick a lease after.
NODE_SHARE = 0.9
#: What a node id in a resume token may look like (`ClusterNode.claim`).
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


class _Arrival:
    """
    A peer that resumed on this node while node `origin` held it.  What the
    room sends it waits here until the owner has admitted it on this node
    and `origin` has handed over what it had queued; then the connection
    gets ``authenticated``, the handed-over queue, and what came meanwhile,
    in that order (the newest `MAX_QUEUED` of them, as on one node).
    """

    __slots__ = (
        "_lease",
        "_schedule",
        "finished",
        "handle",
        "handover",
        "meanwhile",
        "origin",
        "peers",
        "timer",
    )
    _log = Logger()

    def __init__(
        self,
        origin: str,
        lease: float,
        schedule: Callable[[float], IDelayedCall],
        finished: Callable[[], Any],
    ) -> None:
        self.origin = origin
        self._lease = lease
        self._schedule = schedule
        # Until the connection joins (on_init may take a while), then two
        # leases to be admitted, then one more for the handover.
        self.timer = schedule(lease * 4)
        self.finished = finished
        self.handle: PeerHandle | None = None
        self.peers: list[str] | None = None
        self.handover: list[bytes] | None = None
        self.meanwhile: deque[bytes] | None = deque(maxlen=MAX_QUEUED)
        """None once the connection is live."""

    def wrap(self, handle: PeerHandle) -> PeerHandle:
        """The handle through which the room reaches the peer here."""
        self.handle = handle
        self._arm(self._lease * 2)
        return replace(handle, send=self.send, admitted=self.admitted)

    def send(self, payload: bytes) -> None:
        meanwhile = self.meanwhile
        if meanwhile is not None:
            meanwhile.append(payload)
        elif self.handle is not None:
            self.handle.send(payload)

    def admitted(self, peer_ids: list[str]) -> None:
        self.peers = peer_ids
        if self.handover is None:
            self._arm(self._lease)
        self._go_live()

    def handed_over(self, payloads: list[bytes]) -> None:
        self.handover = payloads
        self._go_live()

    def cancel(self) -> None:
        if self.timer.active():
            self.timer.cancel()

    def _arm(self, delay: float) -> None:
        self.cancel()
        self.timer = self._schedule(delay)

    def _go_live(self) -> None:
        handle, meanwhile = self.handle, self.meanwhile
        if handle is None or meanwhile is None or self.peers is None or self.handover is None:
            return
        self.meanwhile = None
        self.cancel()
        self.finished()
        self._log.info(
            "peer {peer_id} moved here from node {origin}: {handed} handed over, {since} since",
            peer_id=handle.peer_id,
            origin=self.origin,
            handed=len(self.handover),
            since=len(meanwhile),
        )
        handle.admitted(self.peers)
        queued = deque(self.handover, maxlen=MAX_QUEUED)
        queued.extend(meanwhile)
        for payload in queued:
            handle.send(payload)


class _Writes:
    """
    A node's writes to streams (`ClusterNode.xadd`), numbered and in order.
    One that Redis does not take (no connection, or no answer in time) is
    written again once Redis answers, with every one after it, in order; a
    copy that reaches a stream twice (Redis took it after all) is skipped by
    its reader (``seq``).

    Each stream it writes to expires `ClusterNode.keep_ms` after it last
    set that: a ``PEXPIRE`` after a write, at most once a lease per stream
    (a plain ``XADD`` costs Redis half what a script doing both does).
    """

    _log = Logger()

    def __init__(self, rooms: ClusterNode) -> None:
        self._rooms = rooms
        self.seq = 0
        """The number of the last entry written."""
        self.waiting: deque[tuple[Any, ...]] = deque()
        """Entries that Redis has not taken yet, to write again, in order."""
        self._waiting_bytes = 0
        self._writing = 0
        self._flushing = False
        self._failed = False
        self._retry: IDelayedCall | None = None
        self._stopped = False
        self._expiring: dict[str, float] = {}
        """When this node last made each stream expire (`now`)."""

    def add(self, stream: str, fields: Mapping[str, Any]) -> None:
        rooms = self._rooms
        self.seq += 1
        args: list[Any] = [stream, "src", rooms.node_id, "seq", self.seq]
        for name, value in fields.items():
            args += [name, value]
        if self.waiting or self._flushing:
            # Earlier entries wait for Redis: this one waits behind them.
            self._keep(tuple(args))
            return
        self._writing += 1
        rooms.bus.add(stream, args[1:]).addBoth(self._written, tuple(args))

    def clear(self) -> None:
        self.waiting.clear()
        self._waiting_bytes = 0

    def stop(self) -> None:
        """The node has stopped: nothing is written again."""
        self._stopped = True
        self.clear()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None

    def forget_expiries(self) -> None:
        """Redis lost its keys: the next write to each stream sets its expiry."""
        self._expiring.clear()

    def _written(self, result: Any, args: tuple[Any, ...]) -> None:
        self._writing -= 1
        if not isinstance(result, Failure):
            self._taken(args[0])
        elif result.check(RedisError):
            self._log.warn(
                "Redis refused an entry for {stream}: {why}",
                stream=args[0],
                why=result.getErrorMessage(),
            )
        elif result.check(ValueError):
            # The client could not encode it: writing it again cannot help.
            self._log.error(
                "an entry for {stream} cannot be encoded for Redis, dropped: {why}",
                stream=args[0],
                why=result.getErrorMessage(),
            )
        else:
            if not self.waiting:
                self._log.warn(
                    "could not write to {stream}: {why}; writing it again when Redis answers",
                    stream=args[0],
                    why=result.getErrorMessage(),
                )
            self._keep(args)
        self._flush_soon(RETRY_DELAY)

    def _taken(self, stream: str) -> None:
        """Redis took an entry for `stream`: make the stream expire, now and then."""
        rooms = self._rooms
        now = rooms.now()
        if now - self._expiring.get(stream, -rooms.lease) < rooms.lease:
            return
        if len(self._expiring) > 10_000:
            self._expiring = {k: t for k, t in self._expiring.items() if now - t < rooms.lease}
        self._expiring[stream] = now

        def failed(_: Failure) -> None:
            self._expiring.pop(stream, None)  # the next write tries again

        rooms.bus.expire(stream, rooms.keep_ms).addErrback(failed)

    def _keep(self, args: tuple[Any, ...]) -> None:
        self.waiting.append(args)
        self._waiting_bytes += _size(args)
        while len(self.waiting) > MAX_OUTBOX or self._waiting_bytes > MAX_OUTBOX_BYTES:
            self._drop_first()

    def _drop_first(self) -> None:
        self._waiting_bytes -= _size(self.waiting.popleft())

    def _flush_soon(self, delay: float) -> None:
        if self._stopped:
            return
        if self.waiting and not self._writing and not self._flushing and self._retry is None:
            self._retry = self._rooms.reactor.callLater(delay, self._flush)

    def _flush(self) -> None:
        """Write the waiting entries again, in order, until Redis takes them all."""
        self._retry = None
        if not self.waiting or self._writing or self._flushing:
            return
        self._flushing = True
        # After a failed try, one entry finds out whether Redis answers.
        batch = [self.waiting[0]] if self._failed else list(self.waiting)
        writes = [self._rooms.bus.add(args[0], args[1:]) for args in batch]

        def done(results: list[tuple[bool, Any]]) -> None:
            self._flushing = False
            taken = 0
            for ok, value in results:
                if not ok and not value.check(RedisError):
                    break
                taken += 1
            for args in batch[:taken]:
                if self.waiting and self.waiting[0] is args:
                    self._drop_first()
                self._taken(args[0])
            self._failed = taken < len(batch)
            if not self._failed and not self.waiting:
                self._log.info("Redis took the entries that waited for it")
            self._flush_soon(RETRY_DELAY if self._failed else 0)

        DeferredList(writes, consumeErrors=True).addCallback(done)


def _size(args: tuple[Any, ...]) -> int:
    """About how many bytes an entry's command holds."""
    return sum(len(a) if isinstance(a, bytes | str) else 8 for a in args)


def _monotonic(reactor: Any) -> Callable[[], float]:
    """
    The clock that goes with `reactor`: a real reactor's time is the wall
    clock, which may jump, so leases are measured on `time.monotonic`;
    a reactor that is not real (`task.Clock`) is the only time there is.
    """
    if IReactorCore.providedBy(reactor):
        return time.monotonic
    seconds: Callable[[], float] = reactor.seconds
    return seconds


def _on_redis(url: str | RedisURL, reactor: Any, lease: float) -> tuple[RedisClient, Bus, Leases]:
    """A client for commands, and the bus and leases on Redis at `url`."""
    redis = RedisClient(url, reactor, timeout=max(lease / 3, 0.5))
    reader = RedisClient(url, reactor, timeout=lease)
    return redis, RedisBus(redis, reader), RedisLeases(redis)


class ClusterNode:
    """
    One node of a cluster: the `rooms.Backend` of its registry (`Rooms`),
    which runs the rooms this node owns now.  `access` gives a `RoomRelay`
    for any room of the cluster; the node's life, asking other nodes, the
    admin API's calls and resume across nodes (`rooms.OtherNodes`) are here.
    """

    _log = Logger()
    _beat_retry: IDelayedCall | None = None
    """The next heartbeat, soon, after one that Redis refused at once."""

    def __init__(
        self,
        rooms: Rooms,
        *,
        redis_url: str | RedisURL | None = None,
        bus: Bus | None = None,
        leases: Leases | None = None,
        lease: float = 10.0,
        reactor: Any = None,
        now: Callable[[], float] | None = None,
        node_id: str | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.rooms = rooms  # the registry: the rooms that run here
        self.reactor = reactor
        """What schedules every timer of the node (a test's `task.Clock`)."""
        self.lease = lease
        self.now: Callable[[], float] = now or _monotonic(reactor)
        """
        What leases and timeouts are measured on: the monotonic clock with
        a real reactor, the reactor's own time with any other (a test's
        `task.Clock`), unless `now` says otherwise.
        """
        self.keep_ms = int(lease * scripts.KEEP_LEASES * 1000)
        """How long a room's keys outlive its last renewal or write (ms)."""
        self.writes = _Writes(self)
        self._inbox_applied: dict[str, int] = {}
        """The last ``seq`` read in this node's inbox from each node."""
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self._incarnation = uuid.uuid4().hex
        if bus is None or leases is None:
            if redis_url is None:
                raise TypeError("ClusterRooms needs redis_url, or both bus and leases")
            self.redis, bus, leases = _on_redis(redis_url, reactor, lease)
        self.bus: Bus = bus
        """The message bus: streams between the nodes."""
        self.leases: Leases = leases
        """Who owns each room, its members, and which nodes are alive."""
        self._relays: dict[str, RoomRelay] = {}
        self._configured: dict[str, Callable[[], Room]] = {}
        # The node id is new at every start, so its inbox starts empty.
        self._inbox_cursor = "0-0"
        self._run_id: str | None = None
        self._node_ok = 0.0
        self._waiting_since: float | None = None
        """When the oldest heartbeat that Redis has not answered yet went out."""
        self._registered = False
        self._settle_until = 0.0
        self.judge_after = 0.0
        """Before this (monotonic), owners judge no member's node dead."""
        self._last_tick = 0.0
        self._tick = LoopingCall(self._heartbeat)
        self._tick.clock = reactor
        self._reading = False
        self._asked: dict[str, Deferred[Any]] = {}
        self.answerers: dict[str, Callable[[dict[str, str]], None]] = {"claim": self._claim}
        """What this node answers when another node asks (`ask`), by ``op``."""
        self._caps: dict[str, int | None] = {}
        self.admin_timeout = max(lease / 2, 3.0)
        """How long an admin call waits for the room's owner node (then 503)."""
        self.token_prefix = f"{self.node_id}."
        self._give_away: GiveAway | None = None
        self.arrivals: dict[str, _Arrival] = {}
        """Peers resumed here that another node held, until they are live."""
        self._departures: dict[str, tuple[Departure, IDelayedCall]] = {}
        """Peers held here that another node has claimed, until they move."""

    def key(self, *parts: str) -> str:
        return key(*parts)

    # The registry's backend, as a Peer uses it.

    @property
    def other_nodes(self) -> ClusterNode:
        return self

    def configure(self, name: str, make: Callable[[], Room], cap: int | None) -> Room:
        """
        Every node is started with the same rooms; each one runs the `Room`
        only while it owns it.
        """
        self._configured[name] = make
        self._caps[name] = cap
        return make()

    def stops_when_empty(self, name: str) -> bool:
        """Whether the room stops when it empties: made on demand, not configured."""
        return self.rooms.creates_on_demand and name not in self._configured

    def knows(self, name: str) -> bool:
        return name in self._configured or name in self._relays

    def access(self, name: str) -> RoomRelay | None:
        relay = self._relays.get(name)
        if relay is None and (name in self._configured or self.rooms.factory is not None):
            relay = self._relays[name] = RoomRelay(self, name)
        return relay

    def find(self, name: str) -> RoomRelay | None:
        return self._relays.get(name)

    def make_room(self, name: str) -> Room | None:
        if name in self._configured:
            return self._configured[name]()
        factory = self.rooms.factory
        if factory is not None:
            return factory(name)
        return None

    def adopt(self, room: Room, *, continued: bool = False) -> None:
        """Run `room` here (this node owns it now)."""
        self.rooms.add(room, continued=continued)

    def forsake(self, room: Room) -> None:
        """Drop `room` without stopping it: another node owns it now."""
        self.rooms.forsake(room)

    def stop_here(self, room: Room) -> Deferred[None]:
        """Stop `room`, which runs here (its peers get "Room closed")."""
        return self.rooms.remove(room)

    def release(self, relay: RoomRelay, room: Room) -> None:
        if self.rooms.get(room.name) is room:
            self.rooms.remove(room)
        self.forget_if_idle(relay)

    def forget_if_idle(self, relay: RoomRelay) -> None:
        def check() -> None:
            if relay.idle and self._relays.get(relay.name) is relay:
                del self._relays[relay.name]

        self.soon(check)

    def soon(self, fn: Callable[[], Any]) -> None:
        self.reactor.callLater(0, fn)

    def xadd(self, stream: str, **fields: Any) -> None:
        """
        Append an entry to `stream`, numbered (``src``, ``seq``) so that its
        reader applies it once even if it reads it again, and written again
        until Redis takes it (`_Writes`); the stream expires `keep_ms` after
        its last write.
        """
        self.writes.add(stream, fields)

    def ask(self, stream: str, timeout: float, **fields: Any) -> Deferred[Any]:
        """
        Write a request to `stream` (a room's stream, read by its owner, or
        another node's inbox, with ``kind="ask"`` and an ``op`` that node
        `answerers` knows).  Fires with the JSON that `answer` sends back
        through this node's inbox, or fails with `twisted.internet.defer.TimeoutError` when nothing
        comes back in `timeout` seconds.
        """
        request = uuid.uuid4().hex
        d: Deferred[Any] = Deferred()
        self._asked[request] = d
        self.xadd(stream, **fields, request=request, reply_to=self.node_id)

        def done(result: Any) -> Any:
            self._asked.pop(request, None)
            return result

        return d.addTimeout(timeout, self.reactor).addBoth(done)

    def answer(self, request: Mapping[str, str], body: Any) -> None:
        """Send `body` (JSON) back to the node that wrote `request` with `ask`."""
        reply_to, request_id = request.get("reply_to"), request.get("request")
        if reply_to and request_id:
            self.xadd(
                self.key("inbox", reply_to),
                kind="answer",
                request=request_id,
                data=json.dumps(body),
            )

    # Resume on another node (docs/cluster.md).

    def give_away_with(self, give_away: GiveAway) -> None:
        self._give_away = give_away

    def claim(
        self, token: str, room: str, identity: str | None
    ) -> Deferred[AuthData | None] | None:
        """
        Ask the node named in `token` (``<node>.<random>``) to give its peer
        up (``op=claim``).  A dead node, a refusal or no answer within half
        a lease is None: the connection joins as a new peer.  (Half, so that
        the whole handshake stays well within ``--handshake-timeout``, which
        is as long as the default lease.)
        """
        origin, dot, _ = token.partition(".")
        if not dot or origin == self.node_id or not _NODE_ID.match(origin):
            return None

        def alive(exists: int) -> Any:
            if not exists:
                return None
            return self.ask(
                self.key("inbox", origin),
                self.lease / 2,
                kind="ask",
                op="claim",
                token=token,
                room=room,
                identity=json.dumps(identity),
            )

        def claimed(answer: Any) -> AuthData | None:
            if not isinstance(answer, dict) or not isinstance(answer.get("peer_id"), str):
                return None
            peer_id: str = answer["peer_id"]
            self.arrivals[peer_id] = _Arrival(
                origin,
                self.lease,
                lambda delay: self.reactor.callLater(delay, self._arrival_late, peer_id),
                lambda: self.arrivals.pop(peer_id, None),
            )
            return AuthData(peer_id, answer.get("credentials") or {}, answer.get("metadata"))

        def failed(failure: Failure) -> None:
            self._log.warn(
                "could not claim a resume token of node {node}: {why}; "
                "the connection joins as a new peer",
                node=origin,
                why=f"no answer within {self.lease / 2}s"
                if failure.check(TimeoutError)
                else failure.getErrorMessage(),
            )

        d = self.leases.node_alive(origin)
        return d.addCallback(alive).addCallback(claimed).addErrback(failed)

    def _arrival_late(self, peer_id: str) -> None:
        arrival = self.arrivals.get(peer_id)
        if arrival is None:
            return
        handle = arrival.handle
        if handle is None:
            self.arrivals.pop(peer_id, None)  # its connection never got that far
        elif arrival.peers is None:
            self.arrivals.pop(peer_id, None)
            self._log.warn(
                "peer {peer_id} resumed here but no owner admitted it in {t}s; closing it",
                peer_id=peer_id,
                t=self.lease * 2,
            )
            handle.close(CLOSE_GOING_AWAY)
        else:
            self._log.warn(
                "node {node} handed nothing over for peer {peer_id} in {t}s: "
                "what it had queued for it is lost",
                node=arrival.origin,
                peer_id=peer_id,
                t=self.lease,
            )
            arrival.handed_over([])

    def arriving(self, handle: PeerHandle) -> PeerHandle | None:
        """
        The handle through which the room reaches `handle`'s peer, if it
        resumed here while another node held it (it moves, it does not
        join); None for a peer that joins.
        """
        arrival = self.arrivals.get(handle.peer_id)
        if arrival is None or arrival.handle is not None:
            return None
        return arrival.wrap(handle)

    def drop_arrival(self, peer_id: str) -> None:
        arrival = self.arrivals.pop(peer_id, None)
        if arrival is not None:
            arrival.cancel()

    def handover(self, node: str, room: str, peer_id: str, payloads: list[bytes]) -> None:
        """Send `node` what was queued here for `peer_id`, which lives there now."""
        data = json.dumps([p.decode() for p in payloads])
        self.xadd(self.key("inbox", node), kind="handover", room=room, peer=peer_id, data=data)

    def _handed_over(self, fields: dict[str, str], raw: bytes) -> None:
        # Not fenced by epoch: it comes from the node that held the peer,
        # which may not be the owner; only that node writes it.
        arrival = self.arrivals.get(fields.get("peer", ""))
        if arrival is not None:
            arrival.handed_over([p.encode() for p in json.loads(raw or b"[]")])

    def _claim(self, request: dict[str, str]) -> None:
        """Another node asks for a peer held here (``op=claim``)."""
        give_away = self._give_away
        identity = json.loads(request.get("identity") or "null")
        departure = (
            give_away(
                request.get("token", ""),
                request.get("room", ""),
                identity if isinstance(identity, str) else None,
            )
            if give_away is not None
            else None
        )
        if departure is None:
            self.answer(request, None)
            return
        auth = departure.auth
        peer_id = auth.peer_id
        late = self.reactor.callLater(self.lease * 3, self._not_moved, peer_id)
        self._departures[peer_id] = (departure, late)
        self._log.info(
            "peer {peer_id} of room {room} claimed by node {node}",
            peer_id=peer_id,
            room=request.get("room"),
            node=request.get("reply_to"),
        )
        self.answer(
            request,
            {"peer_id": peer_id, "credentials": auth.credentials, "metadata": auth.metadata},
        )

    def departed(self, relay: RoomRelay, peer_id: str, node: str) -> None:
        """
        The owner has moved `peer_id` to `node`, after everything it sent
        here for it: hand the queue over and end the peer here, no leave.
        """
        entry = self._departures.pop(peer_id, None)
        if entry is None:
            self.handover(node, relay.name, peer_id, [])
            return
        departure, late = entry
        if late.active():
            late.cancel()
        queue = departure.link.queue
        self.handover(node, relay.name, peer_id, list(queue))
        self._log.info(
            "peer {peer_id} of room {room} moved to node {node}; {n} queued handed over",
            peer_id=peer_id,
            room=relay.name,
            node=node,
            n=len(queue),
        )
        queue.clear()
        relay.moved_away(peer_id)
        departure.moved()
        self.forget_if_idle(relay)

    def _not_moved(self, peer_id: str) -> None:
        entry = self._departures.pop(peer_id, None)
        if entry is not None:
            self._log.info(
                "peer {peer_id} was claimed by another node but never moved there; it leaves",
                peer_id=peer_id,
            )
            entry[0].lost()

    def _from_inbox(self, fields: dict[str, str], raw: bytes) -> None:
        kind = fields.get("kind")
        if kind == "handover":
            self._handed_over(fields, raw)
        elif kind == "answer":
            d = self._asked.pop(fields.get("request", ""), None)
            if d is not None:
                d.callback(json.loads(raw or b"null"))
        elif kind == "ask":
            answerer = self.answerers.get(fields.get("op", ""))
            if answerer is not None:
                answerer(fields)
        else:
            relay = self._relays.get(fields.get("room", ""))
            if relay is not None:
                relay.from_inbox(fields, raw)

    def wake(self) -> None:
        """End the reader's wait, so it reads the streams of newly owned rooms too."""
        self.xadd(self.key("inbox", self.node_id), kind="wake")

    # The admin API (`twisted_signal.admin`), for every room of the cluster.
    # The owner applies each call with the `Rooms` methods of one server, in
    # room order: another node writes it to the room's stream as a
    # ``control`` entry (`ask`) and the owner answers.

    def summaries(self) -> Deferred[list[dict[str, Any]]]:
        """
        Every room of the cluster: the configured ones (owned or not), then
        the others that have an owner, by name.
        """
        return Deferred.fromCoroutine(self._summaries())

    def summary(self, name: str) -> Deferred[dict[str, Any]]:
        return Deferred.fromCoroutine(self._control(name, "summary", {}))

    def stop(self, name: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._control(name, "stop", {}))

    def disconnect(self, name: str, peer_id: str) -> Deferred[None]:
        return Deferred.fromCoroutine(self._control(name, "disconnect", {"peer": peer_id}))

    def post(self, name: str, message: Message) -> Deferred[None]:
        return Deferred.fromCoroutine(self._control(name, "post", {"message": message.to_json()}))

    def stop_room(self, name: str) -> Deferred[None]:
        """
        Stop a room this node owns (see `RoomRelay.stop`).

        @raise KeyError: this node does not own it.
        """
        relay = self._relays.get(name)
        if relay is None or not relay.lease_valid():
            raise KeyError(name)
        return relay.stop()

    def answer_control(self, name: str, fields: dict[str, str]) -> None:
        """The owner of `name` applies a ``control`` entry of its stream and answers."""
        try:
            args = json.loads(fields.get("args") or "{}")
        except ValueError:
            args = {}
        d = Deferred.fromCoroutine(self._apply(name, fields.get("action", ""), args))
        d.addCallbacks(
            lambda body: self.answer(fields, {"ok": body}),
            self._control_failed,
            errbackArgs=(name, fields),
        )

    def _control_failed(self, failure: Failure, name: str, fields: dict[str, str]) -> None:
        e = failure.value
        if isinstance(e, NoSuchPeer):
            self.answer(fields, {"error": "No such peer", "details": e.peer_ids})
        elif isinstance(e, NoSuchRoom):
            self.answer(fields, {"error": "No such room"})
        else:
            self._log.failure("admin call on room {room} failed", failure, room=name)
            self.answer(fields, {"error": "Internal Server Error"})

    async def _summaries(self) -> list[dict[str, Any]]:
        try:
            owned = await self._owned_rooms()
        except Exception as e:
            raise RoomUnavailable(f"cannot reach Redis: {e}") from None
        names = list(self._configured) + sorted(owned - set(self._configured))
        answers = await DeferredList(
            [Deferred.fromCoroutine(self._summary_if_any(name)) for name in names],
            consumeErrors=True,
        )
        summaries = []
        for _, result in answers:
            if isinstance(result, Failure):
                result.raiseException()
            if result is not None:
                summaries.append(result)
        return summaries

    async def _owned_rooms(self) -> set[str]:
        """The rooms that have an owner now."""
        return {name for name in await self.leases.owned_rooms() if is_room_name(name)}

    async def _summary_if_any(self, name: str) -> dict[str, Any] | None:
        try:
            summary: dict[str, Any] = await self._control(name, "summary", {})
        except NoSuchRoom:
            return None
        return summary

    def _owns(self, name: str) -> bool:
        relay = self._relays.get(name)
        return relay is not None and relay.lease_valid()

    async def _control(self, name: str, action: str, args: dict[str, Any]) -> Any:
        if not is_room_name(name):
            raise NoSuchRoom(name)
        if self._owns(name):
            return await self._apply(name, action, args)
        try:
            owner = await self.leases.owner(name)
        except Exception as e:
            raise RoomUnavailable(f"cannot reach Redis: {e}") from None
        if owner is None:
            if name not in self._configured:
                raise NoSuchRoom(name)
            if action == "summary":
                return {"name": name, "peers": [], "max_peers": self._caps[name]}
            # Nobody runs this configured room: take it, and apply it here.
            await self._take(name)
            if self._owns(name):
                return await self._apply(name, action, args)
        try:
            answer = await self.ask(
                self.key("room", name, "in"),
                self.admin_timeout,
                op="control",
                action=action,
                args=json.dumps(args),
            )
        except TimeoutError:
            raise RoomUnavailable(
                f"the node that owns room {name} did not answer within {self.admin_timeout:g}s"
            ) from None
        if "ok" in answer:
            return answer["ok"]
        if answer.get("error") == "No such peer":
            raise NoSuchPeer(answer.get("details") or [])
        if answer.get("error") == "No such room":
            raise NoSuchRoom(name)
        raise RuntimeError(f"the node that owns room {name} failed to apply {action}")

    async def _apply(self, name: str, action: str, args: dict[str, Any]) -> Any:
        """An admin call on a room this node owns: what one server does."""
        if not self._owns(name):
            raise NoSuchRoom(name)
        rooms = self.rooms
        if action == "summary":
            return await on_room(rooms, name, room_summary)
        if action == "stop":
            return await on_room(rooms, name, lambda room: self.stop_room(room.name))
        if action == "disconnect":
            peer_id = str(args.get("peer"))
            return await on_room(rooms, name, lambda room: room.disconnect(peer_id))
        if action == "post":
            message = Message.from_json(args.get("message", ""))
            return await on_room(rooms, name, lambda room: room.forward(message))
        raise ValueError(f"unknown admin action {action!r}")

    async def _take(self, name: str) -> None:
        """Own the configured room `name` if nobody else does (the relay's resolve)."""
        relay = self.access(name)
        if relay is None:
            return
        await relay.take()
        self.forget_if_idle(relay)

    # The node's life.

    def start(self) -> None:
        """The registry has started: register, tick, read."""
        self._node_ok = self.now()
        self._tick.start(self.lease / 3, now=True)
        self._reading = True
        self._read()

    def shut_down(self) -> Deferred[None]:
        """
        Close this node's peers (``"Room closed"``, ``"shutdown"``: the
        registry's one shutdown path), let their rooms send every ``left``,
        then hand the rooms over and leave the cluster.
        """
        self._reading = False
        if self._tick.running:
            self._tick.stop()
        self._cancel_beat_retry()
        for arrival in self.arrivals.values():
            arrival.cancel()
        # Peers another node claimed but that have not moved yet: they go
        # now, with the others (a leave after a move is ignored).
        departures, self._departures = self._departures, {}
        for departure, late in departures.values():
            if late.active():
                late.cancel()
            departure.lost()
        for relay in list(self._relays.values()):
            for handle in list(relay.local_peers.values()):
                close_for_shutdown(handle, self.rooms.events)
        d: Deferred[None] = Deferred()
        self._when_settled(d, self.now() + self.lease * SAFE_SHARE / 2)
        return d

    def _when_settled(self, done: Deferred[None], deadline: float) -> None:
        """
        Hand the rooms over once this node's peers have left them and the
        rooms have sent every ``left`` (or when the deadline comes).
        """
        busy = any(not relay.settled for relay in self._relays.values())
        if busy and self.now() < deadline:
            self.reactor.callLater(0.05, self._when_settled, done, deadline)
        else:
            self.reactor.callLater(0.1, self._hand_over, done)

    def _hand_over(self, done: Deferred[None]) -> None:
        waits = []
        for relay in list(self._relays.values()):
            if relay.room is not None:
                room, token = relay.room, relay.token
                relay.room = None
                self.forsake(room)
                waits.append(
                    self.leases.hand_over(
                        relay.name, token, relay.cursor, int(self.lease * 1000)
                    ).addErrback(lambda _: None)
                )
        waits.append(self.leases.unregister(self.node_id).addErrback(lambda _: None))

        def closed(_: object) -> None:
            self.writes.stop()
            self.bus.close()
            done.callback(None)

        DeferredList(waits).addBoth(closed)

    @property
    def unavailable(self) -> str | None:
        """
        ``redis_unreachable`` (``/healthz`` answers 503) until the node has
        registered with Redis, and once a heartbeat has waited for Redis for
        more than half a lease, until one is answered: the node cannot serve
        joins meanwhile.
        """
        since = self._waiting_since
        waited = since is not None and self.now() - since > self.lease / 2
        return "redis_unreachable" if waited or not self._registered else None

    @property
    def settling(self) -> bool:
        """
        Redis restarted lately (within a lease of this node seeing it):
        relays here take no room yet, so that its previous owner gets it.  A
        lease, not less: the previous owner may deliver until 0.8 of a lease
        after its last renewal went out, which was before the restart.
        """
        return self.now() < self._settle_until

    def _heartbeat(self) -> None:
        """
        One tick, every lease/3, whether or not the previous tick's commands
        have been answered: while Redis is slow or paused, each tick's
        renewals wait in line, and the newest one renews the leases as soon
        as Redis answers.
        """
        sent = self.now()
        if self._last_tick and sent - self._last_tick > self.lease / 2:
            self._log.warn("cluster heartbeat {late:.1f}s late", late=sent - self._last_tick)
        self._last_tick = sent
        self._beat(tick=True)

    def _beat(self, *, tick: bool = False) -> None:
        """
        Renew this node's lease, then its rooms': on every tick, and soon
        again after a heartbeat that Redis refused at once (no connection,
        or it was lost), every lease/20 until one gets through.  A refused
        heartbeat renews nothing; the first one after Redis is back must
        come at once, not at the next tick, or an outage of refused
        connections spanning two ticks would leave this node a whole lease
        without a heartbeat that counts, and it would take itself for dead
        (it cannot know that Redis had not expired its key meanwhile).  A
        heartbeat that waits for Redis (paused, slow) is not sent again: it
        counts once answered.
        """
        self._cancel_beat_retry()
        sent = self.now()
        if self._waiting_since is None:
            self._waiting_since = sent
        if sent - self._node_ok > self.lease * NODE_SHARE:
            self._presumed_dead("could not renew its node lease in time")
        d = self.leases.run_id()
        d.addCallback(
            lambda run_id: self.leases.register(
                self.node_id, self._incarnation, int(self.lease * 1000)
            ).addCallback(self._node_renewed, sent, run_id, tick)
        )
        d.addErrback(self._heartbeat_failed, tick)

    def _cancel_beat_retry(self) -> None:
        if self._beat_retry is not None and self._beat_retry.active():
            self._beat_retry.cancel()
        self._beat_retry = None

    def _node_renewed(self, reply: int, sent: float, run_id: str, tick: bool) -> Any:
        self._node_ok = max(self._node_ok, sent)
        self._waiting_since = None
        # The run id is taken as seen only once this node has registered
        # with that Redis: a tick that fails between the two sees it again.
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if restarted:
            self._log.warn("Redis restarted (new run id); taking the owned rooms again")
            # The owners take their rooms back first: relays wait a lease
            # before they would take an ownerless room themselves.
            self._settle_until = self.now() + self.lease
            self.judge_after = self.now() + self.lease
            self.writes.forget_expiries()  # the streams are new
            waits = []
            for relay in self._relays.values():
                relay.seen_epoch = 0
                if relay.room is not None:
                    relay.lost_keys = True
                    waits.append(relay.reacquire())
            return self._renewals(waits)
        if reply == 0 and self._registered:
            self._presumed_dead("found its node lease lapsed")
        self._registered = True
        waits = []
        quiet = self.settling
        for relay in list(self._relays.values()):
            if relay.room is not None:
                # A room whose taking again after a restart failed is
                # taken again, not renewed: its key is gone.
                waits.append(relay.reacquire() if relay.lost_keys else relay.renew())
            elif relay.local_peers and not quiet:
                waits.append(relay.resolve())
        return self._renewals(waits)

    def _renewals(self, waits: list[Deferred[None]]) -> Deferred[None]:
        """Fires once the rooms' renewals are answered; beats again soon if one was refused."""

        def done(results: list[tuple[bool, Any]]) -> None:
            if any(not ok and value.check(RedisUnavailable) for ok, value in results):
                self._beat_soon()

        return DeferredList(waits, consumeErrors=True).addCallback(done)

    def _heartbeat_failed(self, failure: Failure, tick: bool) -> None:
        if tick and not failure.check(RedisRefused):  # the client has said why
            self._log.warn("cluster heartbeat failed: {why}", why=failure.getErrorMessage())
        if failure.check(RedisUnavailable):
            self._beat_soon()

    def _beat_soon(self) -> None:
        """Redis refused a heartbeat at once (no connection, or it was lost): beat again soon."""
        if self._tick.running and self._beat_retry is None:
            self._beat_retry = self.reactor.callLater(self.lease * BEAT_RETRY_SHARE, self._beat)

    def _presumed_dead(self, why: str) -> None:
        """
        The other nodes take this node for dead: its peers have left their
        rooms there.  Let them go here too; their clients reconnect.
        """
        had = [r for r in self._relays.values() if r.local_peers or r.room is not None]
        if not had:
            return
        # What waited for Redis is stale now: the others let go of this
        # node's peers.
        self.writes.clear()
        self._log.warn("this node {why}: closing its peers", why=why)
        for relay in had:
            relay.step_down()
            for handle in list(relay.local_peers.values()):
                handle.close(CLOSE_GOING_AWAY)

    # Reading the streams.

    def _read(self) -> None:
        if not self._reading:
            return
        owned = [r for r in self._relays.values() if r.room is not None]
        streams = [(self.key("inbox", self.node_id), self._inbox_cursor)]
        streams += [(self.key("room", r.name, "in"), r.cursor) for r in owned]
        d = self.bus.read(streams, self.lease / 3)
        d.addCallbacks(self._got, self._read_failed, callbackArgs=(owned,))

    def _got(self, batch: Batch, owned: list[RoomRelay]) -> None:
        inbox = self.key("inbox", self.node_id)
        for name, entries in batch:
            if entries:
                self.bus.trim(name, entries[-1][0]).addErrback(lambda _: None)
            for entry_id, flat in entries:
                try:
                    self._entry(name, entry_id, flat, inbox, owned)
                except Exception:
                    # One bad entry must not stop this node's reading.
                    self._log.failure("cluster reader: an entry of {stream} failed", stream=name)
        self._read()

    def _entry(
        self, name: str, entry_id: str, flat: list[bytes], inbox: str, owned: list[RoomRelay]
    ) -> None:
        fields: dict[str, str] = {}
        raw = b""
        for i in range(0, len(flat), 2):
            field = text(flat[i])
            if field in ("data", "message"):  # a payload: its bytes go on as they are
                raw = flat[i + 1]
            fields[field] = text(flat[i + 1])
        if name == inbox:
            self._inbox_cursor = entry_id
            src, seq = fields.get("src"), fields.get("seq", "")
            if src is not None and seq.isdigit():
                if int(seq) <= self._inbox_applied.get(src, 0):
                    return  # written again after all: read already
                self._inbox_applied[src] = int(seq)
            self._from_inbox(fields, raw)
            return
        relay = self._relays.get(name[len(self.key("room", "")) : -len(":in")])
        if relay is not None and relay in owned:
            relay.cursor = entry_id
            relay.from_stream(fields, raw)

    def _read_failed(self, failure: Failure) -> None:
        if not self._reading:
            return
        if not failure.check(RedisRefused):  # the client has said why
            self._log.warn("cluster reader: {why}; retrying", why=failure.getErrorMessage())
        self.bus.reset()
        self.reactor.callLater(0.5, self._read)


class ClusterRooms(Rooms):
    """
    The rooms of one node of a cluster: a `Rooms` composed with a
    `ClusterNode` (`node`) as its backend.  It only puts the two together;
    every method is the registry's.
    """

    def __init__(
        self,
        factory: RoomFactory | None = None,
        *,
        redis_url: str | RedisURL | None = None,
        bus: Bus | None = None,
        leases: Leases | None = None,
        lease: float = 10.0,
        max_peers: int | None = 4,
        reactor: Any = None,
        now: Callable[[], float] | None = None,
        node_id: str | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        made: list[ClusterNode] = []

        def node(rooms: Rooms) -> ClusterNode:
            made.append(
                ClusterNode(
                    rooms,
                    redis_url=redis_url,
                    bus=bus,
                    leases=leases,
                    lease=lease,
                    reactor=reactor,
                    now=now,
                    node_id=node_id,
                )
            )
            return made[0]

        super().__init__(factory, max_peers=max_peers, clock=reactor, backend=node)
        self.node: ClusterNode = made[0]
        """This node: its id, lease, streams and the other nodes."""
