"""
Cluster mode: `ClusterRooms` is the `Rooms` of a node that shares its rooms
with other nodes through Redis (see docs/cluster.md).

Each room a node's peers use has a `RoomRelay` here.  On the node that owns
the room the relay hands everything to the one local `Room`; on the others it
writes joins, messages and leaves to the room's stream, and hands the owner's
deliveries (from this node's inbox stream) to the local connections.  The
room itself sees only `PeerHandle`s.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, DeferredList, TimeoutError
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .. import message as wire
from ..context import AuthData
from ..errors import NoSuchPeer, NoSuchRoom, RoomUnavailable
from ..events import Events
from ..hooks import SerialQueue
from ..message import InvalidMessage, Message
from ..resume import MAX_QUEUED, Departure, GiveAway
from ..room import CLOSE_GOING_AWAY, PeerHandle, Room
from ..rooms import RoomFactory, Rooms, is_room_name
from . import scripts
from .resp import RedisClient, RedisRefused, RedisURL

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall

__all__ = ["ClusterRooms", "RoomRelay"]

PREFIX = "rtcsignal:"
#: The share of the lease during which an owner still acts as owner, counted
#: on the monotonic clock from when it sent its last acquire or renew.
SAFE_SHARE = 0.8
#: Readers trim what they have read (XTRIM MINID); this bound only caps the
#: memory of a stream whose reader is gone.  Trimming by length alone would
#: drop entries that a reader under load has not read yet.
STREAM_MAXLEN = 1_000_000
#: What a node id in a resume token may look like (`ClusterRooms.claim_elsewhere`).
_NODE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RoomRelay:
    """
    This node's side of one room: the peers connected here, and, while this
    node owns the room, the `Room` itself.
    """

    _log = Logger()

    def __init__(self, rooms: ClusterRooms, name: str) -> None:
        self.name = name
        self._rooms = rooms
        self._local: dict[str, PeerHandle] = {}
        self._local_view = MappingProxyType(self._local)
        self._sent: set[str] = set()
        """Local peers whose join has gone to an owner."""
        self._answered: set[str] = set()
        """Local peers the owner has admitted or closed."""
        self._known: dict[str, PeerHandle] = {}
        self.room: Room | None = None
        self.epoch = 0
        self.token = ""
        self.cursor = "0-0"
        self.seen_epoch = 0
        self._valid_until = 0.0
        self._members: dict[str, str] = {}
        """While owner: the node of each member."""
        self._queue = SerialQueue(f"relay {name!r}")
        self._resolved = False

    # What a Peer calls (the same as on a Room).

    @property
    def peers(self) -> Mapping[str, PeerHandle]:
        """
        The room's peers: the owner's own view, or on another node what the
        members hash said at the last tick (a resumed peer's ``peers``), with
        this node's own peers.
        """
        if self.room is not None:
            return self.room.peers
        if not self._known:
            return self._local_view
        return MappingProxyType({**self._known, **self._local})

    def join(self, handle: PeerHandle) -> None:
        arrival = self._rooms.arrivals.get(handle.peer_id)
        if arrival is not None and arrival.handle is None:
            # Resumed here, held on another node: it moves, it does not join.
            handle = arrival.wrap(handle)
            self._local[handle.peer_id] = handle
            self._run(lambda: self._move_here(handle))
            return
        self._local[handle.peer_id] = handle
        self._run(lambda: self._join(handle))

    def submit(self, message: Message, received: float | None = None) -> None:
        self._run(lambda: self._submit(message, received))

    def leave(self, peer_id: str) -> None:
        self._local.pop(peer_id, None)
        self._answered.discard(peer_id)
        self._rooms.drop_arrival(peer_id)
        self._run(lambda: self._leave(peer_id))

    def _moved(self, peer_id: str, peer: Any) -> None:
        if self.room is not None:
            self.room._moved(peer_id, peer)

    # Ordering: nothing goes out before the owner is known.

    def _run(self, job: Callable[[], Any]) -> None:
        if not self._resolved:
            self._resolved = True
            self._queue.run(self.resolve)
        self._queue.run(job)

    def resolve(self) -> Deferred[None]:
        """
        Take the room if it has no owner; otherwise learn the owner's epoch.
        """
        sent = time.monotonic()
        d = self._acquire()
        return d.addCallbacks(self._acquired, self._unresolved, callbackArgs=(sent,))

    def _acquire(self) -> Deferred[Any]:
        """Run the ACQUIRE script: the owner lease and epoch, or the owner's epoch."""
        rooms = self._rooms
        return rooms.redis.execute(
            "EVAL",
            scripts.ACQUIRE,
            4,
            rooms.key("room", self.name, "owner"),
            rooms.key("room", self.name, "epoch"),
            rooms.key("room", self.name, "in"),
            rooms.key("room", self.name, "cursor"),
            rooms.node_id,
            int(rooms.lease * 1000),
        )

    def _unresolved(self, failure: Failure) -> None:
        self._log.warn(
            "room {room}: cannot reach Redis to find its owner: {why}",
            room=self.name,
            why=failure.getErrorMessage(),
        )
        self._resolved = False

    def _acquired(self, reply: list[Any], sent: float) -> Any:
        epoch, detail = int(reply[0]), _text(reply[1])
        if epoch == 0:
            # Someone else owns it.  What this node has seen of its epoch is
            # what came through the inbox, in stream order (see from_inbox).
            rooms = self._rooms
            d = rooms.redis.execute("HGETALL", rooms.key("room", self.name, "peers"))
            return d.addCallbacks(self._members_read, lambda _: None)
        return self._become_owner(epoch, detail, sent)

    def _members_read(self, flat: list[bytes]) -> None:
        ids = [_text(flat[i]) for i in range(0, len(flat), 2)]
        self._known = {p: PeerHandle(p, AuthData(p), _nothing, _nothing, _nothing) for p in ids}

    # Owning the room.

    def lease_valid(self) -> bool:
        return self.room is not None and time.monotonic() < self._valid_until

    def _become_owner(self, epoch: int, cursor: str, sent: float) -> Deferred[None]:
        rooms = self._rooms
        self.epoch, self.cursor = epoch, cursor
        self.token = f"{rooms.node_id}|{epoch}"
        self._valid_until = sent + rooms.lease * SAFE_SHARE
        peers = rooms.key("room", self.name, "peers")
        d = rooms.redis.execute("HGETALL", peers)
        if time.monotonic() < rooms.judge_after:
            # Redis restarted lately (see renew): nobody is judged dead yet.
            return d.addCallback(self._take_over, [])
        # Members of a node that died while no other node was in the room
        # are still in the hash: nobody saw them go.  They must go now,
        # before anyone joins, not be restored as if they were there.
        dead = rooms.redis.execute("EVAL", scripts.DEAD_MEMBERS, 1, peers, rooms.key("node", ""))
        return d.addCallback(lambda flat: dead.addCallback(lambda ids: self._take_over(flat, ids)))

    def _take_over(self, flat: list[bytes], dead: list[bytes]) -> Any:
        rooms = self._rooms
        room = rooms.make_room(self.name)
        if room is None:
            return None
        self._log.info(
            "room {room}: owned by this node, epoch {epoch}", room=self.name, epoch=self.epoch
        )
        self.room = room
        self._members = {}
        if rooms.creates_on_demand and not rooms.is_configured(self.name):
            room._on_empty = self._emptied
        # A room with members was started by a previous owner: for the
        # lifecycle events (webhooks) it goes on, it does not start again.
        rooms.adopt(room, continued=bool(flat))
        nodes: set[str] = set()
        gone: list[str] = []
        for i in range(0, len(flat), 2):
            peer_id, member = _text(flat[i]), json.loads(flat[i + 1])
            node = member["node"]
            auth = AuthData(peer_id, member.get("credentials") or {}, member.get("metadata"))
            if node == rooms.node_id:
                local = self._local.get(peer_id)
                if local is None:
                    gone.append(peer_id)
                    handle = PeerHandle(peer_id, auth, _nothing, _nothing, _nothing)
                else:
                    handle = self._guarded(local)
            else:
                handle = self._remote(node, peer_id, auth)
                nodes.add(node)
            self._members[peer_id] = node
            room._restore(handle)
        # The announcement goes through each member node's inbox, this one's
        # too: what the old owner wrote before it is still delivered, what
        # it writes after it is dropped (fencing at the receiver).
        for node in sorted(nodes | {rooms.node_id}):
            self._to_node(node, "", "epoch", "")
        # The members that are not there leave first (in room order), so
        # that a peer joining now neither sees them nor gets their `left`.
        gone += [
            _text(p) for p in dead if self._members.get(_text(p), rooms.node_id) != rooms.node_id
        ]
        for peer_id in gone:
            self._owner_leave(peer_id)
        # Local peers whose join went to an owner that is gone join again.
        for peer_id in sorted(self._sent - set(self._members)):
            local = self._local.get(peer_id)
            if local is not None:
                self._join_room(self._guarded(local), rooms.node_id)
        rooms.wake()
        return None

    def renew(self) -> Deferred[None]:
        """Keep the lease, and let the members of dead nodes go."""
        rooms = self._rooms
        sent = time.monotonic()
        token = self.token
        d = rooms.redis.execute(
            "EVAL",
            scripts.RENEW,
            1,
            rooms.key("room", self.name, "owner"),
            token,
            int(rooms.lease * 1000),
        )

        def renewed(reply: int) -> Any:
            if self.token != token or self.room is None:
                return None
            if not reply:
                self._log.warn("room {room}: lease lost; stepping down", room=self.name)
                self.step_down()
                return None
            self._valid_until = sent + rooms.lease * SAFE_SHARE
            took = time.monotonic() - sent
            if took > rooms.lease / 3:
                self._log.warn("room {room}: renewing took {took:.1f}s", room=self.name, took=took)
            if time.monotonic() < rooms.judge_after:
                # Redis restarted lately: the live nodes may not have
                # registered again yet, so nobody is judged dead for now.
                return None
            return rooms.redis.execute(
                "EVAL",
                scripts.DEAD_MEMBERS,
                1,
                rooms.key("room", self.name, "peers"),
                rooms.key("node", ""),
            ).addCallback(self._dead)

        return d.addCallback(renewed).addErrback(self._log_failure, "renew its lease")

    def _dead(self, peer_ids: list[bytes]) -> None:
        for raw in peer_ids:
            peer_id = _text(raw)
            if self.room is not None and self._members.get(peer_id) != self._rooms.node_id:
                self._log.info(
                    "room {room}: peer {peer_id}'s node is gone", room=self.name, peer_id=peer_id
                )
                self._owner_leave(peer_id)

    def reacquire(self) -> Deferred[None]:
        """Redis lost its keys: take the room again and write its members back."""
        rooms = self._rooms
        room = self.room
        assert room is not None
        sent = time.monotonic()
        d = self._acquire()

        def got(reply: list[Any]) -> Any:
            epoch = int(reply[0])
            if not epoch:
                self.step_down()
                return None
            self.epoch = epoch
            self.token = f"{rooms.node_id}|{epoch}"
            self._valid_until = sent + rooms.lease * SAFE_SHARE
            self.cursor = "0-0"
            for peer_id, handle in room.peers.items():
                self._record(peer_id, self._members.get(peer_id, rooms.node_id), handle.auth)
            for node in sorted(set(self._members.values()) | {rooms.node_id}):
                self._to_node(node, "", "epoch", "")
            rooms.wake()
            return None

        return d.addCallback(got).addErrback(self._log_failure, "take the room again")

    def step_down(self) -> None:
        """
        Stop acting as owner at once: drop the `Room` without a word to the
        remote peers (a new owner has them), close the local ones.
        """
        room, self.room = self.room, None
        self._resolved = False
        self.token = ""
        if room is None:
            return
        self._rooms.forsake(room)
        for handle in list(self._local.values()):
            handle.close(CLOSE_GOING_AWAY)

    def _emptied(self, room: Room) -> None:
        if self.room is not room:
            return
        self._let_go()
        self._rooms.release(self, room)

    def stop(self) -> Deferred[None]:
        """
        Stop the room this node owns (the admin API): its peers on every node
        get "Room closed" and leave, then the room is let go.  A node with
        it among its configured rooms starts it again on its next join.
        """
        room = self.room
        assert room is not None

        def gone(_: object) -> None:
            if self.room is room:
                self._let_go()
            self._rooms.forget_if_idle(self)

        return self._rooms._remove(room).addCallback(gone)

    def _let_go(self) -> None:
        """Delete the owner key and the members (owner-checked): nobody owns it now."""
        rooms = self._rooms
        rooms.redis.execute(
            "EVAL",
            scripts.RELEASE,
            2,
            rooms.key("room", self.name, "owner"),
            rooms.key("room", self.name, "peers"),
            self.token,
        ).addErrback(lambda _: None)
        self.room, self.token, self._resolved = None, "", False

    def _guarded(self, local: PeerHandle) -> PeerHandle:
        """A local peer's handle that delivers only while the lease holds."""
        send, admitted = local.send, local.admitted

        def guarded_send(payload: bytes) -> None:
            if self.lease_valid():
                send(payload)
            else:
                self._lease_ran_out()

        def close(code: int) -> None:
            self._forget_refused(local.peer_id)
            local.close(code)

        def recorded(peer_ids: list[str]) -> None:
            self._record(local.peer_id, self._rooms.node_id, local.auth)
            if self.lease_valid():
                admitted(peer_ids)

        return PeerHandle(
            local.peer_id, local.auth, guarded_send, local.close, recorded, local.peer
        )

    def _remote(self, node: str, peer_id: str, auth: AuthData) -> PeerHandle:
        def send(payload: bytes) -> None:
            self._to_node(node, peer_id, "send", payload)

        def close(code: int) -> None:
            self._forget_refused(peer_id)
            self._to_node(node, peer_id, "close", str(code))

        def admitted(peer_ids: list[str]) -> None:
            self._record(peer_id, node, auth)
            self._to_node(node, peer_id, "admitted", json.dumps(peer_ids))

        return PeerHandle(peer_id, auth, send, close, admitted)

    def _lease_ran_out(self) -> None:
        if self.room is not None and self.token:
            self._log.warn(
                "room {room}: lease not renewed within {share:.0%} of its time; stepping down",
                room=self.name,
                share=SAFE_SHARE,
            )
            self.token = ""
            self._rooms.soon(self.step_down)

    def _to_node(self, node: str, peer_id: str, kind: str, data: bytes | str) -> None:
        if not self.lease_valid():
            self._lease_ran_out()
            return
        self._rooms.xadd(
            self._rooms.key("inbox", node),
            room=self.name,
            epoch=self.epoch,
            peer=peer_id,
            kind=kind,
            data=data,
        )

    def _forget_refused(self, peer_id: str) -> None:
        if self.room is not None and peer_id not in self.room.peers:
            self._members.pop(peer_id, None)

    def _record(self, peer_id: str, node: str, auth: AuthData) -> None:
        rooms = self._rooms
        self._members[peer_id] = node
        member = json.dumps(
            {"node": node, "credentials": auth.credentials, "metadata": auth.metadata}
        )
        rooms.redis.execute(
            "EVAL",
            scripts.MEMBER_ADD,
            2,
            rooms.key("room", self.name, "owner"),
            rooms.key("room", self.name, "peers"),
            self.token,
            peer_id,
            member,
        ).addErrback(self._log_failure, "record a member")

    def _owner_leave(self, peer_id: str) -> None:
        rooms = self._rooms
        if self.room is not None:
            self.room.leave(peer_id)
        self._members.pop(peer_id, None)
        rooms.redis.execute(
            "EVAL",
            scripts.MEMBER_DEL,
            2,
            rooms.key("room", self.name, "owner"),
            rooms.key("room", self.name, "peers"),
            self.token,
            peer_id,
        ).addErrback(self._log_failure, "forget a member")

    def _join_room(self, handle: PeerHandle, node: str) -> None:
        room = self.room
        if room is None or handle.peer_id in room.peers or handle.peer_id in self._members:
            return
        self._members[handle.peer_id] = node
        room.join(handle)

    def _log_failure(self, failure: Failure, what: str) -> None:
        self._log.warn(
            "room {room}: could not {what}: {why}",
            room=self.name,
            what=what,
            why=failure.getErrorMessage(),
        )

    # The jobs behind join, submit and leave.

    def _join(self, handle: PeerHandle) -> None:
        peer_id = handle.peer_id
        if peer_id not in self._local:
            return
        self._sent.add(peer_id)
        if self.room is not None:
            self._join_room(self._guarded(handle), self._rooms.node_id)
            return
        auth = handle.auth
        self._rooms.xadd(
            self._rooms.key("room", self.name, "in"),
            op="join",
            peer=peer_id,
            node=self._rooms.node_id,
            auth=json.dumps({"credentials": auth.credentials, "metadata": auth.metadata}),
        )
        self._rooms.reactor.callLater(self._rooms.lease, self._check_answered, handle)

    def _check_answered(self, handle: PeerHandle) -> None:
        """
        A join nobody answered went to an owner that had just let the room go
        (or died): find the owner again and ask once more.  The owner ignores
        a join it already has.
        """
        peer_id = handle.peer_id
        if peer_id in self._local and peer_id not in self._answered:
            self._log.info(
                "room {room}: join of {peer_id} unanswered; again", room=self.name, peer_id=peer_id
            )
            self._resolved = False
            self._run(lambda: self._join(handle))

    def _submit(self, message: Message, received: float | None) -> None:
        if self.room is not None:
            self.room.submit(message, received)
            return
        self._rooms.xadd(
            self._rooms.key("room", self.name, "in"),
            op="submit",
            peer=message.from_ or "",
            message=message.to_json(),
        )

    def _leave(self, peer_id: str) -> None:
        self._sent.discard(peer_id)
        node = self._rooms.node_id
        if self.room is not None:
            if self._members.get(peer_id, node) == node:
                self._owner_leave(peer_id)
        else:
            self._rooms.xadd(
                self._rooms.key("room", self.name, "in"), op="leave", peer=peer_id, node=node
            )
        self._rooms.forget_if_idle(self)

    # Resume across nodes (docs/cluster.md, "Resume on another node").

    def _move_here(self, handle: PeerHandle) -> None:
        """
        A peer held on another node resumed on this one: the owner swaps its
        handle over to here, in room order (it knows the member's node).
        """
        peer_id = handle.peer_id
        if peer_id not in self._local:
            return
        self._sent.add(peer_id)
        node = self._rooms.node_id
        if self.room is not None:
            self.room._queue.run(self._move_in, peer_id, node, self._guarded(handle))
            return
        auth = handle.auth
        self._rooms.xadd(
            self._rooms.key("room", self.name, "in"),
            op="move",
            peer=peer_id,
            node=node,
            auth=json.dumps({"credentials": auth.credentials, "metadata": auth.metadata}),
        )

    def _move_in(self, peer_id: str, node: str, handle: PeerHandle) -> None:
        """
        (Owner, a job of the room's queue.)  From now on the room reaches
        the peer on `node`: it is admitted there, and the node that had it
        is told, after everything it was sent for the peer.
        """
        room = self.room
        if room is None:
            return
        current = room.peers.get(peer_id)
        if current is None:
            # It left meanwhile (its old node died, or gave up waiting): it
            # can only join again, as any newcomer does.
            self._log.info(
                "room {room}: {peer_id} moved to node {node} after it left; it joins again",
                room=self.name,
                peer_id=peer_id,
                node=node,
            )
            self._members.pop(peer_id, None)
            self._join_room(handle, node)
            self._rooms.handover(node, self.name, peer_id, [])
            return
        origin = self._members.get(peer_id, "")
        room._restore(handle)
        handle.admitted([p for p in room.peers if p != peer_id])
        self._log.info(
            "room {room}: {peer_id} moved from node {origin} to node {node}",
            room=self.name,
            peer_id=peer_id,
            origin=origin,
            node=node,
        )
        if origin == self._rooms.node_id:
            self._rooms.departed(self, peer_id, node)
        elif origin and origin != node:
            self._to_node(origin, peer_id, "moved", node)
        else:
            self._rooms.handover(node, self.name, peer_id, [])

    # Entries from the room's stream (while owner) and from this node's inbox.

    def from_stream(self, fields: dict[str, str]) -> None:
        room = self.room
        if room is None:
            return
        op, peer_id = fields.get("op"), fields.get("peer", "")
        if op == "join":
            auth = json.loads(fields.get("auth", "{}"))
            handle = self._remote(
                fields["node"],
                peer_id,
                AuthData(peer_id, auth.get("credentials") or {}, auth.get("metadata")),
            )
            self._join_room(handle, fields["node"])
        elif op == "submit":
            self._relayed(room, peer_id, fields.get("message", ""))
        elif op == "leave":
            node = fields.get("node")
            if node is None or self._members.get(peer_id, node) == node:
                self._owner_leave(peer_id)
        elif op == "move":
            self._move(room, peer_id, fields)
        elif op == "control":
            self._rooms.answer_control(self.name, fields)

    def _relayed(self, room: Room, peer_id: str, text: str) -> None:
        """A member on another node sent a message."""
        if peer_id not in room.peers:
            return
        try:
            message = Message.from_json(text, from_=peer_id)
        except InvalidMessage:
            self._log.warn(
                "room {room}: dropped a relayed message that is not valid", room=self.name
            )
            return
        room.submit(message)

    def _move(self, room: Room, peer_id: str, fields: dict[str, str]) -> None:
        """A member resumed on another node (or on this one)."""
        node = fields.get("node", "")
        current = room.peers.get(peer_id)
        if current is not None:
            auth_data = current.auth
        else:
            auth = json.loads(fields.get("auth", "{}"))
            auth_data = AuthData(peer_id, auth.get("credentials") or {}, auth.get("metadata"))
        local = self._local.get(peer_id) if node == self._rooms.node_id else None
        if local is not None:
            # Its own move, written before this node took the room over.
            handle = self._guarded(local)
        else:
            handle = self._remote(node, peer_id, auth_data)
        room._queue.run(self._move_in, peer_id, node, handle)

    def from_inbox(self, fields: dict[str, str], raw: bytes) -> None:
        epoch = int(fields.get("epoch", "0"))
        if epoch < self.seen_epoch:
            self._log.info(
                "room {room}: dropped a delivery of stale epoch {epoch} (seen {seen})",
                room=self.name,
                epoch=epoch,
                seen=self.seen_epoch,
            )
            return
        self.seen_epoch = epoch
        kind = fields.get("kind")
        if kind == "moved":
            self._rooms.departed(self, fields.get("peer", ""), fields.get("data", ""))
            return
        handle = self._local.get(fields.get("peer", ""))
        if handle is None:
            return
        if kind in ("admitted", "close"):
            self._answered.add(handle.peer_id)
        if kind == "send":
            handle.send(raw)
        elif kind == "close":
            handle.close(int(fields.get("data", "1000")))
        elif kind == "admitted":
            handle.admitted(json.loads(fields.get("data", "[]")))

    @property
    def idle(self) -> bool:
        return not self._local and self.room is None and self._queue.idle


def _nothing(*_: Any) -> None:
    pass


def _run_id(info: bytes) -> str:
    """The ``run_id`` of Redis's ``INFO server``: new at every start."""
    for line in _text(info).splitlines():
        if line.startswith("run_id:"):
            return line.partition(":")[2].strip()
    return ""


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
        return PeerHandle(
            handle.peer_id, handle.auth, self.send, handle.close, self.admitted, handle.peer
        )

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


class _NotStartedAgain(Events):
    """`Events` that pass everything on but a room's start."""

    def __init__(self, inner: Events) -> None:
        self._inner = inner

    def room_started(self, room: str) -> None:
        pass

    def __getattribute__(self, name: str) -> Any:
        if name in ("room_started", "_inner", "__class__"):
            return object.__getattribute__(self, name)
        return getattr(object.__getattribute__(self, "_inner"), name)


class ClusterRooms(Rooms):
    """
    The rooms of one node of a cluster.  `get_or_create` gives a `RoomRelay`;
    the `Room` objects (iteration, `get`) are those this node owns now.
    """

    _log = Logger()

    def __init__(
        self,
        factory: RoomFactory | None = None,
        *,
        redis_url: str | RedisURL,
        lease: float = 10.0,
        max_peers: int | None = 4,
        reactor: Any = None,
        node_id: str | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        super().__init__(factory, max_peers=max_peers, clock=reactor)
        self.reactor = reactor
        self.lease = lease
        self.node_id = node_id or uuid.uuid4().hex[:12]
        self._incarnation = uuid.uuid4().hex
        self.redis = RedisClient(redis_url, reactor, timeout=max(lease / 3, 0.5))
        self._reader = RedisClient(redis_url, reactor, timeout=lease)
        self._relays: dict[str, RoomRelay] = {}
        self._configured: dict[str, Callable[[], Room]] = {}
        # The node id is new at every start, so its inbox starts empty.
        self._inbox_cursor = "0-0"
        self._run_id: str | None = None
        self._node_ok = 0.0
        self._ticking = False
        self._registered = False
        self._quiet_ticks = 0
        self.judge_after = 0.0
        """Before this (monotonic), owners judge no member's node dead."""
        self._last_tick = 0.0
        self._tick = LoopingCall(self._heartbeat)
        self._tick.clock = reactor
        self._reading = False
        self._asked: dict[str, Deferred[Any]] = {}
        self.answerers: dict[str, Callable[[dict[str, str]], None]] = {}
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
        self.answerers["claim"] = self._claim

    def key(self, *parts: str) -> str:
        return PREFIX + ":".join(parts)

    # The Rooms seam, as a Peer uses it.

    def start_room(
        self, name: str, room_class: type[Room] = Room, options: Any = None, **kw: Any
    ) -> Room:
        """
        Every node is started with the same rooms; each one runs the `Room`
        only while it owns it.
        """
        cap = kw.get("max_peers", self.max_peers)
        if not isinstance(cap, int | type(None)):
            cap = self.max_peers
        self._configured[name] = lambda: room_class(name, options, max_peers=cap, clock=self._clock)
        self._caps[name] = cap
        return room_class(name, options, max_peers=cap, clock=self._clock)

    def is_configured(self, name: str) -> bool:
        return name in self._configured

    def __contains__(self, name: object) -> bool:
        return name in self._configured or name in self._relays

    def access(self, name: str) -> RoomRelay | None:
        relay = self._relays.get(name)
        if relay is None and (name in self._configured or self.factory is not None):
            relay = self._relays[name] = RoomRelay(self, name)
        return relay

    def find(self, name: str) -> RoomRelay | None:
        return self._relays.get(name)

    def make_room(self, name: str) -> Room | None:
        if name in self._configured:
            return self._configured[name]()
        if self.factory is not None:
            return self.factory(name)
        return None

    def adopt(self, room: Room, *, continued: bool = False) -> None:
        """Run `room` here (this node owns it now)."""
        if not continued:
            self._add(room)
            return
        events = self.events
        self._events = _NotStartedAgain(events)
        try:
            self._add(room)
        finally:
            self._events = events
            room.events = events

    def forsake(self, room: Room) -> None:
        """Drop `room` without stopping it: another node owns it now."""
        room._queue.cancel()
        if room in self.services:
            self.services.remove(room)
            self.namedServices.pop(room.name, None)
            room.parent = None
            room.running = False

    def release(self, relay: RoomRelay, room: Room) -> None:
        if self.get(room.name) is room:
            self._remove(room)
        self.forget_if_idle(relay)

    def forget_if_idle(self, relay: RoomRelay) -> None:
        def check() -> None:
            if relay.idle and self._relays.get(relay.name) is relay:
                del self._relays[relay.name]

        self.soon(check)

    def soon(self, fn: Callable[[], Any]) -> None:
        self.reactor.callLater(0, fn)

    def xadd(self, stream: str, **fields: Any) -> None:
        args: list[Any] = ["XADD", stream, "MAXLEN", "~", STREAM_MAXLEN, "*"]
        for name, value in fields.items():
            args += [name, value]
        self.redis.execute(*args).addErrback(self._xadd_failed, stream)

    def _xadd_failed(self, failure: Failure, stream: str) -> None:
        self._log.warn(
            "could not write to {stream}: {why}", stream=stream, why=failure.getErrorMessage()
        )

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

    def claim_elsewhere(
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

        d = self.redis.execute("EXISTS", self.key("node", origin))
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
        relay._local.pop(peer_id, None)
        relay._answered.discard(peer_id)
        relay._sent.discard(peer_id)
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
        """The rooms that have an owner now: SCAN (never KEYS) for their owner keys."""
        names: set[str] = set()
        prefix, suffix = self.key("room", ""), ":owner"
        cursor = "0"
        while True:
            cursor_raw, keys = await self.redis.execute(
                "SCAN", cursor, "MATCH", self.key("room", "*", "owner"), "COUNT", 1000
            )
            for raw in keys:
                name = _text(raw)[len(prefix) : -len(suffix)]
                if is_room_name(name):
                    names.add(name)
            cursor = _text(cursor_raw)
            if cursor == "0":
                return names

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
            owner = await self.redis.execute("GET", self.key("room", name, "owner"))
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
        if action == "summary":
            return await super().summary(name)
        if action == "stop":
            return await super().stop(name)
        if action == "disconnect":
            return await super().disconnect(name, str(args.get("peer")))
        if action == "post":
            return await super().post(name, Message.from_json(args.get("message", "")))
        raise ValueError(f"unknown admin action {action!r}")

    async def _take(self, name: str) -> None:
        """Own the configured room `name` if nobody else does (the relay's resolve)."""
        relay = self.access(name)
        if relay is None:
            return
        if relay.room is None:
            relay._resolved = False
        taken: Deferred[None] = Deferred()
        relay._run(lambda: taken.callback(None))
        await taken
        self.forget_if_idle(relay)

    # The node's life.

    def startService(self) -> None:
        super().startService()
        self._node_ok = time.monotonic()
        self._tick.start(self.lease / 3, now=True)
        self._reading = True
        self._read()

    def stopService(self) -> Deferred[None]:
        self._reading = False
        if self._tick.running:
            self._tick.stop()
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
            for handle in list(relay._local.values()):
                handle.send(wire.error(handle.peer_id, "Room closed", "shutdown").to_bytes())
                handle.close(CLOSE_GOING_AWAY)
        d: Deferred[None] = Deferred()
        self._when_settled(d, time.monotonic() + self.lease * SAFE_SHARE / 2)
        return d

    def _when_settled(self, done: Deferred[None], deadline: float) -> None:
        """
        Hand the rooms over once this node's peers have left them and the
        rooms have sent every ``left`` (or when the deadline comes).
        """
        busy = any(
            relay._local or not relay._queue.idle or (relay.room and not relay.room._queue.idle)
            for relay in self._relays.values()
        )
        if busy and time.monotonic() < deadline:
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
                    self.redis.execute(
                        "EVAL",
                        scripts.HAND_OVER,
                        2,
                        self.key("room", relay.name, "owner"),
                        self.key("room", relay.name, "cursor"),
                        token,
                        relay.cursor,
                        int(self.lease * 1000),
                    ).addErrback(lambda _: None)
                )
        waits.append(
            self.redis.execute("DEL", self.key("node", self.node_id)).addErrback(lambda _: None)
        )

        def closed(_: object) -> None:
            self.redis.close()
            self._reader.close()
            self.running = False
            done.callback(None)

        DeferredList(waits).addBoth(closed)

    def _heartbeat(self) -> None:
        """
        One tick.  It never makes the next tick wait: a tick whose commands
        are still out holds the next one back for at most lease/2.
        """
        sent = time.monotonic()
        if self._ticking and sent - self._last_tick < self.lease / 2:
            return
        self._ticking = True
        if self._last_tick and sent - self._last_tick > self.lease / 2:
            self._log.warn("cluster heartbeat {late:.1f}s late", late=sent - self._last_tick)
        self._last_tick = sent
        if sent - self._node_ok > self.lease * SAFE_SHARE:
            self._presumed_dead("could not renew its node lease in time")
        d = self.redis.execute("INFO", "server").addCallback(_run_id)
        d.addCallback(
            lambda run_id: self.redis.execute(
                "EVAL",
                scripts.NODE_RENEW,
                1,
                self.key("node", self.node_id),
                self._incarnation,
                int(self.lease * 1000),
            ).addCallback(self._node_renewed, sent, run_id)
        )
        d.addErrback(self._heartbeat_failed)

        def done(_: object) -> None:
            self._ticking = False

        d.addBoth(done)

    def _node_renewed(self, reply: int, sent: float, run_id: str) -> Any:
        self._node_ok = sent
        # The run id is taken as seen only once this node has registered
        # with that Redis: a tick that fails between the two sees it again.
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if restarted:
            self._log.warn("Redis restarted (new run id); taking the owned rooms again")
            # The owners take their rooms back first: relays wait two ticks
            # before they would take an ownerless room themselves.
            self._quiet_ticks = 2
            self.judge_after = time.monotonic() + self.lease
            waits = []
            for relay in self._relays.values():
                relay.seen_epoch = 0
                if relay.room is not None:
                    waits.append(relay.reacquire())
            return DeferredList(waits, consumeErrors=True)
        if reply == 0 and self._registered:
            self._presumed_dead("found its node lease lapsed")
        self._registered = True
        waits = []
        quiet, self._quiet_ticks = self._quiet_ticks > 0, max(self._quiet_ticks - 1, 0)
        for relay in list(self._relays.values()):
            if relay.room is not None:
                waits.append(relay.renew())
            elif relay._local and not quiet:
                waits.append(relay.resolve())
        return DeferredList(waits, consumeErrors=True)

    def _heartbeat_failed(self, failure: Failure) -> None:
        if not failure.check(RedisRefused):  # the client has said why
            self._log.warn("cluster heartbeat failed: {why}", why=failure.getErrorMessage())

    def _presumed_dead(self, why: str) -> None:
        """
        The other nodes take this node for dead: its peers have left their
        rooms there.  Let them go here too; their clients reconnect.
        """
        had = [r for r in self._relays.values() if r._local or r.room is not None]
        if not had:
            return
        self._log.warn("this node {why}: closing its peers", why=why)
        for relay in had:
            relay.step_down()
            for handle in list(relay._local.values()):
                handle.close(CLOSE_GOING_AWAY)

    # Reading the streams.

    def _read(self) -> None:
        if not self._reading:
            return
        owned = [r for r in self._relays.values() if r.room is not None]
        streams = [self.key("inbox", self.node_id)] + [
            self.key("room", r.name, "in") for r in owned
        ]
        ids = [self._inbox_cursor] + [r.cursor for r in owned]
        block = int(self.lease * 1000 / 3)
        d = self._reader.execute(
            "XREAD",
            "COUNT",
            1000,
            "BLOCK",
            block,
            "STREAMS",
            *streams,
            *ids,
            timeout=self.lease / 3 + 5,
        )
        d.addCallbacks(self._got, self._read_failed, callbackArgs=(owned,))

    def _got(self, reply: Any, owned: list[RoomRelay]) -> None:
        inbox = self.key("inbox", self.node_id)
        for stream, entries in reply or []:
            name = _text(stream)
            if entries:
                self.redis.execute("XTRIM", name, "MINID", _text(entries[-1][0])).addErrback(
                    lambda _: None
                )
            for entry_id, flat in entries:
                try:
                    self._entry(name, _text(entry_id), flat, inbox, owned)
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
            field = _text(flat[i])
            if field == "data":
                raw = flat[i + 1]
            fields[field] = _text(flat[i + 1])
        if name == inbox:
            self._inbox_cursor = entry_id
            self._from_inbox(fields, raw)
            return
        relay = self._relays.get(name[len(self.key("room", "")) : -len(":in")])
        if relay is not None and relay in owned:
            relay.cursor = entry_id
            relay.from_stream(fields)

    def _read_failed(self, failure: Failure) -> None:
        if not self._reading:
            return
        if not failure.check(RedisRefused):  # the client has said why
            self._log.warn("cluster reader: {why}; retrying", why=failure.getErrorMessage())
        self._reader.drop()
        self.reactor.callLater(0.5, self._read)
