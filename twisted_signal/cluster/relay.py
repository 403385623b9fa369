"""
A room as one node of a cluster sees it: `RoomRelay` (see docs/cluster.md).

Each room a node's peers use has a relay.  On the node that owns the room the
relay hands everything to the one local `Room`; on the others it writes
joins, messages and leaves to the room's stream, and hands the owner's
deliveries (from this node's inbox stream) to the local connections.  The
room itself sees only `PeerHandle`s.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..context import AuthData
from ..hooks import SerialQueue
from ..message import InvalidMessage, Message
from ..room import CLOSE_GOING_AWAY, PeerHandle, Room
from .resp import RedisUnavailable

if TYPE_CHECKING:
    from .backend import Leases

__all__ = ["SAFE_SHARE", "Node", "RoomRelay"]

#: The share of the lease during which an owner still acts as owner, counted
#: on the monotonic clock from when it sent its last acquire or renew.
SAFE_SHARE = 0.8


class Node(Protocol):
    """
    What a relay needs of its node (`node.ClusterNode`): who it is, its
    clock and lease, the leases and the bus, the registry's rooms, and
    resume across nodes.
    """

    node_id: str
    lease: float
    keep_ms: int
    judge_after: float
    reactor: Any
    leases: Leases

    def now(self) -> float: ...

    @property
    def settling(self) -> bool: ...

    def key(self, *parts: str) -> str: ...

    def xadd(self, stream: str, **fields: Any) -> None: ...

    def wake(self) -> None: ...

    def make_room(self, name: str) -> Room | None: ...

    def stops_when_empty(self, name: str) -> bool: ...

    def adopt(self, room: Room, *, continued: bool = False) -> None: ...

    def forsake(self, room: Room) -> None: ...

    def stop_here(self, room: Room) -> Deferred[None]: ...

    def release(self, relay: RoomRelay, room: Room) -> None: ...

    def forget_if_idle(self, relay: RoomRelay) -> None: ...

    def answer_control(self, name: str, fields: dict[str, str]) -> None: ...

    def arriving(self, handle: PeerHandle) -> PeerHandle | None: ...

    def drop_arrival(self, peer_id: str) -> None: ...

    def handover(self, node: str, room: str, peer_id: str, payloads: list[bytes]) -> None: ...

    def departed(self, relay: RoomRelay, peer_id: str, node: str) -> None: ...


class RoomRelay:
    """
    This node's side of one room: the peers connected here, and, while this
    node owns the room, the `Room` itself.
    """

    _log = Logger()

    def __init__(self, node: Node, name: str) -> None:
        self.name = name
        self._node = node
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
        self.lost_keys = False
        """
        While owner: Redis lost its keys (it restarted) and this node has
        not taken the room again yet; the next heartbeat does (`reacquire`).
        """
        self._members: dict[str, str] = {}
        """While owner: the node of each member."""
        self._queue = SerialQueue(f"relay {name!r}")
        self._resolved = False
        self._held: list[Callable[[], Any]] | None = None
        """
        While owner with a renewal overdue: the deliveries made meanwhile,
        in order, until Redis answers (see `_deliver`).
        """
        self._applied: dict[str, int] = {}
        """While owner: the last ``seq`` applied from each node's entries."""

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

    @property
    def local_peers(self) -> Mapping[str, PeerHandle]:
        """This node's own connections to the room (a read-only view)."""
        return self._local_view

    def join(self, handle: PeerHandle) -> None:
        arriving = self._node.arriving(handle)
        if arriving is not None:
            # Resumed here, held on another node: it moves, it does not join.
            self._local[arriving.peer_id] = arriving
            self._run(lambda: self._move_here(arriving))
            return
        self._local[handle.peer_id] = handle
        self._run(lambda: self._join(handle))

    def submit(self, message: Message, received: float | None = None) -> None:
        self._run(lambda: self._submit(message, received))

    def leave(self, peer_id: str) -> None:
        self._local.pop(peer_id, None)
        self._answered.discard(peer_id)
        self._node.drop_arrival(peer_id)
        self._run(lambda: self._leave(peer_id))

    def moved_away(self, peer_id: str) -> None:
        """
        A peer held here now lives on another node (its queue went there):
        it is no longer this node's, and it does not leave.
        """
        self._local.pop(peer_id, None)
        self._answered.discard(peer_id)
        self._sent.discard(peer_id)

    # Ordering: nothing goes out before the owner is known.

    def _run(self, job: Callable[[], Any]) -> None:
        if not self._resolved:
            self._resolved = True
            self._queue.run(self.resolve)
        self._queue.run(job)

    def take(self) -> Deferred[None]:
        """
        Find the room's owner now, and take the room if it has none; fires
        once that is done (whatever came of it).
        """
        if self.room is None:
            self._resolved = False
        taken: Deferred[None] = Deferred()
        self._run(lambda: taken.callback(None))
        return taken

    def resolve(self) -> Deferred[None]:
        """
        Take the room if it has no owner; otherwise learn the owner's epoch.
        """
        sent = self._node.now()
        # Right after a Redis restart, the rooms' previous owners take them
        # back first: a join here meanwhile goes to the room's stream, which
        # the owner reads anew once it has the room again.
        d = self._acquire("wait" if self._node.settling else "take")
        return d.addCallbacks(self._acquired, self._unresolved, callbackArgs=(sent,))

    def _acquire(self, mode: str) -> Deferred[tuple[int, str]]:
        """The owner lease and epoch, or the owner's epoch."""
        rooms = self._node
        return rooms.leases.acquire(
            self.name, rooms.node_id, int(rooms.lease * 1000), rooms.keep_ms, mode
        )

    def _unresolved(self, failure: Failure) -> None:
        self._log.warn(
            "room {room}: cannot reach Redis to find its owner: {why}",
            room=self.name,
            why=failure.getErrorMessage(),
        )
        self._resolved = False

    def _acquired(self, reply: tuple[int, str], sent: float) -> Any:
        epoch, detail = reply
        if epoch == 0:
            # Someone else owns it.  What this node has seen of its epoch is
            # what came through the inbox, in stream order (see from_inbox).
            d = self._node.leases.members(self.name)
            return d.addCallbacks(self._members_read, lambda _: None)
        return self._become_owner(epoch, detail, sent)

    def _members_read(self, members: list[tuple[str, bytes]]) -> None:
        ids = [peer_id for peer_id, _ in members]
        self._known = {p: PeerHandle(p, AuthData(p), _nothing, _nothing, _nothing) for p in ids}

    # Owning the room.

    def lease_valid(self) -> bool:
        return self.room is not None and self._node.now() < self._valid_until

    def _become_owner(self, epoch: int, cursor: str, sent: float) -> Deferred[None]:
        rooms = self._node
        self.epoch, self.cursor = epoch, cursor
        self.token = f"{rooms.node_id}|{epoch}"
        self._valid_until = sent + rooms.lease * SAFE_SHARE
        self._applied = {}
        d = rooms.leases.members(self.name)
        if rooms.now() < rooms.judge_after:
            # Redis restarted lately (see renew): nobody is judged dead yet.
            return d.addCallback(self._take_over, [])
        # Members of a node that died while no other node was in the room
        # are still in the hash: nobody saw them go.  They must go now,
        # before anyone joins, not be restored as if they were there.
        dead = rooms.leases.dead_members(self.name)
        return d.addCallback(
            lambda members: dead.addCallback(lambda ids: self._take_over(members, ids))
        )

    def _take_over(self, members: list[tuple[str, bytes]], dead: list[str]) -> Any:
        rooms = self._node
        room = rooms.make_room(self.name)
        if room is None:
            return None
        self._log.info(
            "room {room}: owned by this node, epoch {epoch}", room=self.name, epoch=self.epoch
        )
        self.room = room
        self._members = {}
        if rooms.stops_when_empty(self.name):
            room.call_when_empty(self._emptied)
        # A room with members was started by a previous owner: for the
        # lifecycle events (webhooks) it goes on, it does not start again.
        rooms.adopt(room, continued=bool(members))
        nodes: set[str] = set()
        gone: list[str] = []
        for peer_id, raw in members:
            member = json.loads(raw)
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
            room.restore(handle)
        # The announcement goes through each member node's inbox, this one's
        # too: what the old owner wrote before it is still delivered, what
        # it writes after it is dropped (fencing at the receiver).
        for node in sorted(nodes | {rooms.node_id}):
            self._to_node(node, "", "epoch", "")
        # The members that are not there leave first (in room order), so
        # that a peer joining now neither sees them nor gets their `left`.
        gone += [p for p in dead if self._members.get(p, rooms.node_id) != rooms.node_id]
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
        rooms = self._node
        sent = rooms.now()
        token = self.token
        d = rooms.leases.renew(self.name, token, int(rooms.lease * 1000), rooms.keep_ms)

        def renewed(reply: bool) -> Any:
            if self.token != token or self.room is None:
                return None
            if not reply:
                self._log.warn("room {room}: lease lost; stepping down", room=self.name)
                self.step_down()
                return None
            self._valid_until = max(self._valid_until, sent + rooms.lease * SAFE_SHARE)
            took = rooms.now() - sent
            if took > rooms.lease / 3:
                self._log.warn("room {room}: renewing took {took:.1f}s", room=self.name, took=took)
            self._release_held()
            if rooms.now() < rooms.judge_after:
                # Redis restarted lately: the live nodes may not have
                # registered again yet, so nobody is judged dead for now.
                return None
            return rooms.leases.dead_members(self.name).addCallback(self._dead)

        return d.addCallback(renewed).addErrback(self._renewal_failed, "renew its lease")

    def _dead(self, peer_ids: list[str]) -> None:
        for peer_id in peer_ids:
            if self.room is not None and self._members.get(peer_id) != self._node.node_id:
                self._log.info(
                    "room {room}: peer {peer_id}'s node is gone", room=self.name, peer_id=peer_id
                )
                self._owner_leave(peer_id)

    def reacquire(self) -> Deferred[None]:
        """Redis lost its keys: take the room again and write its members back."""
        rooms = self._node
        room = self.room
        assert room is not None
        sent = rooms.now()
        d = self._acquire("take")

        def got(reply: tuple[int, str]) -> Any:
            epoch = reply[0]
            if self.room is not room:
                return None  # stepped down meanwhile
            self.lost_keys = False
            if not epoch:
                self.step_down()
                return None
            self.epoch = epoch
            self.token = f"{rooms.node_id}|{epoch}"
            self._valid_until = sent + rooms.lease * SAFE_SHARE
            # Read the new stream from its start: what relays wrote to it
            # before this acquire.  Entries read again are not applied
            # again (`_applied`).
            self.cursor = "0-0"
            for peer_id, handle in room.peers.items():
                self._record(peer_id, self._members.get(peer_id, rooms.node_id), handle.auth)
            for node in sorted(set(self._members.values()) | {rooms.node_id}):
                self._to_node(node, "", "epoch", "")
            # Nobody could take the room while Redis was away or since
            # (this acquire found no owner): what the room did meanwhile
            # goes out now, after the new epoch.
            self._release_held()
            rooms.wake()
            return None

        return d.addCallback(got).addErrback(self._renewal_failed, "take the room again")

    def step_down(self) -> None:
        """
        Stop acting as owner at once: drop the `Room` without a word to the
        remote peers (a new owner has them), close the local ones.
        """
        room, self.room = self.room, None
        self._resolved = False
        self.lost_keys = False
        self.token = ""
        self._held = None
        if room is None:
            return
        self._node.forsake(room)
        for handle in list(self._local.values()):
            handle.close(CLOSE_GOING_AWAY)

    def _emptied(self, room: Room) -> None:
        if self.room is not room:
            return
        self._let_go()
        self._node.release(self, room)

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
            self._node.forget_if_idle(self)

        return self._node.stop_here(room).addCallback(gone)

    def _let_go(self) -> None:
        """Delete the owner key and the members (owner-checked): nobody owns it now."""
        self._node.leases.release(self.name, self.token).addErrback(lambda _: None)
        self.room, self.token, self._resolved = None, "", False

    def _guarded(self, local: PeerHandle) -> PeerHandle:
        """A local peer's handle that delivers only while the lease holds."""
        send, admitted = local.send, local.admitted

        def guarded_send(payload: bytes) -> None:
            self._deliver(lambda: send(payload))

        def close(code: int) -> None:
            self._forget_refused(local.peer_id)
            local.close(code)

        def recorded(peer_ids: list[str]) -> None:
            self._record(local.peer_id, self._node.node_id, local.auth)
            self._deliver(lambda: admitted(peer_ids))

        return replace(local, send=guarded_send, admitted=recorded)

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

    def _deliver(self, action: Callable[[], Any]) -> None:
        """
        Do `action` (a delivery of the room) now while the lease holds.
        Once it has run past its safe share without a renewal, nobody can
        tell yet whether another node may own the room: the room's
        deliveries wait, in order, until Redis answers.  A renewal proves
        that nobody else owned the room meanwhile (the key never lapsed),
        and they go out (`_release_held`); a lost lease drops them with
        the room (`step_down`); a node that cannot renew for longer gives
        up its rooms (`ClusterNode._presumed_dead`).
        """
        if self.room is None:
            self._held = None
            return
        held = self._held
        if held is None:
            if self.lease_valid():
                action()
                return
            if not self.token:
                return
            self._log.warn(
                "room {room}: lease not renewed within {share:.0%} of its time; "
                "holding its deliveries until Redis answers",
                room=self.name,
                share=SAFE_SHARE,
            )
            held = self._held = []
        held.append(action)

    def _release_held(self) -> None:
        """
        A renewal (or acquire) succeeded: what was held goes out, unless its
        answer came so late that the lease it gave has run out too (then
        the next renewal decides).
        """
        if not self.lease_valid():
            return
        held, self._held = self._held, None
        if held:
            self._log.info(
                "room {room}: lease renewed; {n} held deliveries go out",
                room=self.name,
                n=len(held),
            )
            for action in held:
                action()

    def _to_node(self, node: str, peer_id: str, kind: str, data: bytes | str) -> None:
        def write() -> None:
            self._node.xadd(
                self._node.key("inbox", node),
                room=self.name,
                epoch=self.epoch,
                peer=peer_id,
                kind=kind,
                data=data,
            )

        self._deliver(write)

    def _forget_refused(self, peer_id: str) -> None:
        if self.room is not None and peer_id not in self.room.peers:
            self._members.pop(peer_id, None)

    def _record(self, peer_id: str, node: str, auth: AuthData) -> None:
        self._members[peer_id] = node
        member = json.dumps(
            {"node": node, "credentials": auth.credentials, "metadata": auth.metadata}
        )
        rooms = self._node
        d = rooms.leases.add_member(self.name, self.token, rooms.keep_ms, peer_id, member)
        d.addErrback(self._log_failure, "record a member")

    def _owner_leave(self, peer_id: str) -> None:
        if self.room is not None:
            self.room.leave(peer_id)
        self._members.pop(peer_id, None)
        # As this node's owner token: it changes nothing unless that holds.
        d = self._node.leases.remove_member(self.name, self.token, peer_id)
        d.addErrback(self._log_failure, "forget a member")

    def _join_room(self, handle: PeerHandle, node: str) -> None:
        room = self.room
        if room is None or handle.peer_id in room.peers or handle.peer_id in self._members:
            return
        self._members[handle.peer_id] = node
        room.join(handle)

    def _renewal_failed(self, failure: Failure, what: str) -> None:
        """
        Log it; a renewal that Redis refused at once fails on, so that the
        node's heartbeat sends it again soon (`ClusterNode._beat`).
        """
        self._log_failure(failure, what)
        if failure.check(RedisUnavailable):
            failure.raiseException()

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
            self._join_room(self._guarded(handle), self._node.node_id)
            return
        auth = handle.auth
        self._node.xadd(
            self._node.key("room", self.name, "in"),
            op="join",
            peer=peer_id,
            node=self._node.node_id,
            auth=json.dumps({"credentials": auth.credentials, "metadata": auth.metadata}),
        )
        self._node.reactor.callLater(self._node.lease, self._check_answered, handle)

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
        self._node.xadd(
            self._node.key("room", self.name, "in"),
            op="submit",
            peer=message.from_ or "",
            # The bytes a single server would send: a lone surrogate, which
            # no UTF-8 str can carry, crosses escaped, exactly as it would.
            message=message.to_bytes(),
        )

    def _leave(self, peer_id: str) -> None:
        self._sent.discard(peer_id)
        node = self._node.node_id
        if self.room is not None:
            if self._members.get(peer_id, node) == node:
                self._owner_leave(peer_id)
        else:
            self._node.xadd(
                self._node.key("room", self.name, "in"), op="leave", peer=peer_id, node=node
            )
        self._node.forget_if_idle(self)

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
        node = self._node.node_id
        if self.room is not None:
            self.room.run_in_order(self._move_in, peer_id, node, self._guarded(handle))
            return
        auth = handle.auth
        self._node.xadd(
            self._node.key("room", self.name, "in"),
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
            self._node.handover(node, self.name, peer_id, [])
            return
        origin = self._members.get(peer_id, "")
        room.restore(handle)
        handle.admitted([p for p in room.peers if p != peer_id])
        self._log.info(
            "room {room}: {peer_id} moved from node {origin} to node {node}",
            room=self.name,
            peer_id=peer_id,
            origin=origin,
            node=node,
        )
        if origin == self._node.node_id:
            self._node.departed(self, peer_id, node)
        elif origin and origin != node:
            self._to_node(origin, peer_id, "moved", node)
        else:
            self._node.handover(node, self.name, peer_id, [])

    # Entries from the room's stream (while owner) and from this node's inbox.

    def from_stream(self, fields: dict[str, str], raw: bytes) -> None:
        """
        An entry of the room's stream, read while this node owns the room:
        `fields` decoded, and `raw` the bytes of its payload (a submitted
        message goes on as the bytes the member's node wrote).
        """
        room = self.room
        if room is None or not self._first_time(fields):
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
            self._relayed(room, peer_id, raw)
        elif op == "leave":
            node = fields.get("node")
            if node is None or self._members.get(peer_id, node) == node:
                self._owner_leave(peer_id)
        elif op == "move":
            self._move(room, peer_id, fields)
        elif op == "control":
            self._node.answer_control(self.name, fields)

    def _first_time(self, fields: dict[str, str]) -> bool:
        """
        Whether this stream entry is new: each node numbers what it writes
        (``src``, ``seq``), and an entry read again (the stream read anew
        after a Redis restart) is applied once only.
        """
        src, seq = fields.get("src"), fields.get("seq", "")
        if src is None or not seq.isdigit():
            return True
        number = int(seq)
        if number <= self._applied.get(src, 0):
            self._log.info(
                "room {room}: skipped entry {seq} of node {src}: applied already",
                room=self.name,
                seq=number,
                src=src,
            )
            return False
        self._applied[src] = number
        return True

    def _relayed(self, room: Room, peer_id: str, text: bytes) -> None:
        """A member on another node sent a message."""
        if peer_id not in room.peers:
            return
        try:
            # Accepted by the member's node already (SPEC 1.2), and perhaps
            # renamed by its Peer.on_receive since, as a single server allows.
            message = Message.from_json(text, from_=peer_id, server_events=True)
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
        local = self._local.get(peer_id) if node == self._node.node_id else None
        if local is not None:
            # Its own move, written before this node took the room over.
            handle = self._guarded(local)
        else:
            handle = self._remote(node, peer_id, auth_data)
        room.run_in_order(self._move_in, peer_id, node, handle)

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
            self._node.departed(self, fields.get("peer", ""), fields.get("data", ""))
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
    def settled(self) -> bool:
        """
        Nothing left to do here before the room can be handed over: no
        connection here, and neither this relay nor the room has work
        waiting (every ``left`` has gone out).
        """
        room = self.room
        return not self._local and self._queue.idle and (room is None or room.idle)

    @property
    def idle(self) -> bool:
        return not self._local and self.room is None and self._queue.idle


def _nothing(*_: Any) -> None:
    pass
