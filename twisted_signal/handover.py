"""
Hand-over between the nodes of one host: with N nodes on one machine (one
per core, sharing a port through ``reuseport:``), the node that accepts a
WebSocket upgrade for a room hands the connection to the node of that room
on this host, so that the messages between the peers of a room never cross
processes (nor Redis).

- **Which node.**  Every node given the same folder (``--handover DIR``)
  listens on ``DIR/<name>.sock`` (a fresh random name per start; the name
  is given to the socket once it listens, so a ``.sock`` that refuses a
  connection is a dead node's, which the first node to find it removes).  A room's
  node is chosen by rendezvous hashing of the room name over the names of
  the sockets in the folder: every node makes the same choice without asking
  anyone, and when a node goes, only its rooms move.  The chosen node then
  becomes the room's owner by the cluster's ordinary lease, since all of this
  host's joins of the room land there.
- **How.**  Before the upgrade is answered, the accepting node sends the
  connection's file descriptor (``SCM_RIGHTS``) and the bytes it has read
  from it (the raw upgrade request) to the chosen node.  That node adopts
  the socket into its own `twisted.web.server.Site` and replays the bytes,
  so every check (admission, limits, Origin, X-Forwarded-For) runs there as
  for any connection.  It answers one byte per connection taken; only then
  does the sender close its copy of the descriptor.  The sender forgets its
  connection without ``shutdown()``, which would end the connection the
  other node now holds.
- **When not.**  Connections of TLS listeners (the handshake has been made
  here; hand-over works on plain listeners, such as behind a TLS-terminating
  proxy), a connection whose first request was something else, an invalid
  room name, a connection this node was handed itself, and a node that does
  not answer: the connection is served here, and the room works through
  Redis as before, just slower.

The frames on a hand-over socket are a 4-byte big-endian length and that
many bytes (at most `MAX_REQUEST_BYTES`), each with exactly one descriptor.
Anything else (a frame without a descriptor, a descriptor that is not a
connected TCP socket, too long a frame, too many descriptors) closes that
hand-over connection and every descriptor it brought.  The folder must be
this user's and closed to others (it is made 0700; the sockets are 0600).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import socket
import stat
import struct
from collections import deque
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IFileDescriptorReceiver
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from .events import NO_EVENTS, Events
from .rooms import is_room_name

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress, IDelayedCall, IListeningPort
    from twisted.web.resource import IResource
    from twisted.web.server import Request, Site

__all__ = [
    "MAX_REQUEST_BYTES",
    "Handover",
    "check_folder",
    "rendezvous",
]

MAX_REQUEST_BYTES = 32768
"""The most bytes of a connection's first request kept for a hand-over (and
the longest frame a hand-over socket takes); a longer request is served
where it arrived."""
MAX_PENDING_DESCRIPTORS = 16
"""Descriptors a hand-over connection may have sent ahead of their frames."""
ANSWER_TIMEOUT = 5.0
"""Seconds a node waits for a sibling to take a connection before giving up
on it (and on that sibling, for `DOWN_FOR`)."""
DOWN_FOR = 2.0
"""Seconds a sibling that did not answer is left out of the choice."""
_SUFFIX = ".sock"
_BOUND = ".bound"
_LENGTH = struct.Struct(">I")
_TAKEN = b"\x01"


def rendezvous(room: str, names: list[str]) -> str:
    """
    The one of `names` that serves `room`: the highest hash of name and
    room (rendezvous hashing).  All nodes given the same names choose the
    same one; removing a name moves only the rooms it had.
    """

    def weight(name: str) -> bytes:
        return hashlib.blake2b(f"{name}\0{room}".encode(), digest_size=8).digest()

    return max(names, key=weight)


def check_folder(path: str) -> str | None:
    """
    Why `path` cannot be a hand-over folder, or None if it can: it must be
    a folder of this user's that nobody else may enter (or not exist yet,
    in an existing folder), and short enough for socket paths in it.
    """
    if len(os.fsencode(os.path.join(os.path.abspath(path), "0" * 16 + _SUFFIX))) > 107:
        return "the path is too long for Unix sockets in it (at most about 80 characters)"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        parent = os.path.dirname(os.path.abspath(path))
        return None if os.path.isdir(parent) else f"{parent!r} is not a folder"
    except OSError as e:
        return e.strerror or str(e)
    why = None
    if not stat.S_ISDIR(info.st_mode):
        why = "not a folder"
    elif info.st_uid != os.getuid():
        why = "the folder must be this user's"
    elif info.st_mode & 0o077:
        why = "others may use the folder: chmod 700 it"
    return why


class Handover(Service):
    """
    This node's end of the hand-over between the nodes of one host that
    share `folder`.  `site` is where connections handed to this node are
    served (the server sets it); `events` gets ``handover("sent" |
    "received" | "fallback" | "refused")``.
    """

    _log = Logger()

    def __init__(self, folder: str, *, reactor: Any = None, name: str | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.folder = os.path.abspath(folder)
        self.node_name = name or secrets.token_hex(8)
        """This node's name among the nodes of its host (its socket's name)."""
        self.site: Site | None = None
        self.events: Events = NO_EVENTS
        self._reactor = reactor
        self._port: IListeningPort | None = None
        self._links: dict[str, _Link] = {}
        self._down: dict[str, float] = {}
        self._stopping = False

    @property
    def path(self) -> str:
        """This node's socket."""
        return os.path.join(self.folder, self.node_name + _SUFFIX)

    # The service.

    def startService(self) -> None:
        super().startService()
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        why = check_folder(self.folder)
        if why is not None:
            raise RuntimeError(f"--handover {self.folder!r}: {why}")
        # Listen first, then give the socket its name: a socket named
        # <name>.sock that refuses a connection is a dead node's, never one
        # still starting.
        bound = self._bound_path(self.node_name)
        self._port = self._reactor.listenUNIX(bound, self.inbox_factory(), mode=0o600)
        os.link(bound, self.path)

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._stopping = True
        for link in list(self._links.values()):
            link.drop("stopping")
        port, self._port = self._port, None
        if port is None:
            return None
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        # Twisted removes the bound name once the port has stopped.
        return port.stopListening()

    def inbox_factory(self) -> Factory:
        """The factory of this node's end of its siblings' connections."""
        return _InboxFactory(self)

    # Choosing.

    def siblings(self) -> list[str]:
        """The names of the nodes of this host that are up, this one among them."""
        now = self._reactor.seconds()
        try:
            entries = os.listdir(self.folder)
        except OSError:
            return [self.node_name]
        names = [self.node_name]
        for entry in entries:
            if entry.endswith(_SUFFIX):
                name = entry[: -len(_SUFFIX)]
                if name != self.node_name and self._down.get(name, 0.0) <= now:
                    names.append(name)
        return names

    def node_for(self, room: str) -> str:
        """The name of the node of this host that serves `room`."""
        return rendezvous(room, self.siblings())

    def route(self, room: bytes, request: Request, local: IResource) -> IResource:
        """
        The resource that answers the upgrade `request` for `room` (a
        percent-decoded path segment): `local`, or a hand-over to the
        room's node.
        """
        name = _room_name(room)
        if name is None or not _can_hand_over(request):
            return local
        target = self.node_for(name)
        if target == self.node_name:
            return local
        return _HandOff(self, target, local)

    # Sending.

    def send(self, target: str, request: Request, local: IResource) -> None:
        """Hand `request`'s connection to `target`, or serve it with `local`."""
        link = self._links.get(target)
        if link is None:
            link = self._links[target] = _Link(self, target)
            link.connect()
        link.hand(request, local)

    def _link_ended(self, link: _Link, why: str | None) -> None:
        """
        `link` is over; `why`, if the sibling did not answer: it is left out
        of the choice for `DOWN_FOR` seconds.
        """
        if self._links.get(link.target) is link:
            del self._links[link.target]
        if why is None or link.target in self._down or self._stopping:
            return
        self._down[link.target] = self._reactor.seconds() + DOWN_FOR
        self._log.warn(
            "hand-over: node {node} of this host does not answer ({why}); "
            "leaving it out for {seconds}s",
            node=link.target,
            why=why,
            seconds=DOWN_FOR,
        )
        self._reactor.callLater(DOWN_FOR, self._down.pop, link.target, None)

    def _bound_path(self, name: str) -> str:
        return os.path.join(self.folder, name + _BOUND)

    def _forget_stale(self, target: str) -> None:
        """Remove the socket of a node that is gone (nothing listens on it)."""
        for path in (os.path.join(self.folder, target + _SUFFIX), self._bound_path(target)):
            with contextlib.suppress(OSError):
                os.unlink(path)

    # Receiving.

    def adopt(self, fd: int, data: bytes) -> bool:
        """
        Serve the TCP connection `fd` (which this call closes) here, as if
        `data` had just been read from it.  False if `fd` is not a connected
        TCP socket.
        """
        site = self.site
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            return False
        try:
            if (
                site is None
                or sock.family not in (socket.AF_INET, socket.AF_INET6)
                or sock.type != socket.SOCK_STREAM
            ):
                return False
            sock.getpeername()
            sock.setblocking(False)
            adopting = _Adopting(site)
            self._reactor.adoptStreamConnection(sock.fileno(), sock.family, adopting)
        except OSError:
            return False
        finally:
            # The reactor holds its own duplicate now.
            sock.close()
        protocol = adopting.built
        if protocol is None:
            return False
        # Handed over once, served here: never handed on again.
        protocol.first_bytes = None
        protocol.dataReceived(data)
        self.events.handover("received")
        return True


def _room_name(segment: bytes) -> str | None:
    try:
        name = segment.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name if is_room_name(name) else None


def _can_hand_over(request: Request) -> bool:
    """
    Whether `request` is a WebSocket upgrade, the first request of a plain
    TCP connection accepted here (not over TLS, not handed over).
    """
    channel = request.channel
    if getattr(channel, "first_bytes", None) is None:
        return False
    if not isinstance(channel.transport, tcp.Server) or request.method != b"GET":
        return False
    upgrade = request.getHeader(b"upgrade")
    return upgrade is not None and upgrade.strip().lower() == b"websocket"


class _HandOff(Resource):
    """The resource that hands an upgrade's connection to another node."""

    isLeaf = True

    def __init__(self, handover: Handover, target: str, local: IResource) -> None:
        super().__init__()
        self._handover = handover
        self._target = target
        self._local = local

    def render(self, request: Request) -> int:
        self._handover.send(self._target, request, self._local)
        return NOT_DONE_YET


def _serve_locally(request: Request, local: IResource) -> None:
    """Answer `request` with `local`, later than its render (its connection still up)."""
    channel = request.channel
    if channel is None or channel.transport is None or request.finished:
        return
    try:
        body = local.render(request)
    except Exception:
        request.processingFailed(Failure())
        return
    if body is not NOT_DONE_YET:
        request.write(body)
        request.finish()


def _release(request: Request) -> int | None:
    """
    Take `request`'s connection from this process without ending it: the
    socket's descriptor (now the caller's), or None if the connection is
    gone.  The HTTP channel and the transport see a connection lost; the
    client sees nothing (no ``shutdown()``, no reset).
    """
    channel = request.channel
    transport: Any = channel.transport if channel is not None else None
    if transport is None or getattr(transport, "disconnected", True):
        return None
    transport.stopReading()
    transport.stopWriting()
    fd: int = transport.socket.detach()
    # The transport's close now meets a detached socket: its shutdown() and
    # close() fail quietly, and the descriptor stays open for the sibling.
    transport.connectionLost(Failure(ConnectionDone("handed over to another node")))
    return fd


class _Link(Protocol):
    """This node's connection to one sibling's socket."""

    def __init__(self, handover: Handover, target: str) -> None:
        self._handover = handover
        self.target = target
        self._waiting: list[tuple[Request, IResource]] = []
        self._sent: deque[tuple[int, IDelayedCall]] = deque()
        self._connected = False
        self._ended = False

    def connect(self) -> None:
        handover = self._handover
        path = os.path.join(handover.folder, self.target + _SUFFIX)
        factory = _LinkFactory(self)
        handover._reactor.connectUNIX(path, factory, timeout=ANSWER_TIMEOUT)

    def hand(self, request: Request, local: IResource) -> None:
        if self._ended:
            self._handover.events.handover("fallback")
            _serve_locally(request, local)
        elif self._connected:
            self._send(request)
        else:
            self._waiting.append((request, local))

    def _send(self, request: Request) -> None:
        channel = request.channel
        raw = getattr(channel, "first_bytes", None) if channel is not None else None
        if raw is None:
            return
        data = bytes(raw)
        fd = _release(request)
        if fd is None:
            return
        transport = self.transport
        assert transport is not None
        transport.sendFileDescriptor(fd)  # type: ignore[attr-defined]
        transport.write(_LENGTH.pack(len(data)) + data)
        timer = self._handover._reactor.callLater(ANSWER_TIMEOUT, self._timed_out)
        self._sent.append((fd, timer))

    def connectionMade(self) -> None:
        self._connected = True
        waiting, self._waiting = self._waiting, []
        for request, _ in waiting:
            self._send(request)

    def failed(self, why: str, *, gone: bool) -> None:
        """
        The connection could not be made.  `gone`: nothing listens on the
        sibling's socket.
        """
        if gone:
            self._handover._forget_stale(self.target)
        self._end(why)

    def dataReceived(self, data: bytes) -> None:
        for _ in data:
            if not self._sent:
                self.drop("an answer for no connection")
                return
            fd, timer = self._sent.popleft()
            timer.cancel()
            os.close(fd)
            self._handover.events.handover("sent")

    def _timed_out(self) -> None:
        self.drop(f"a connection not taken within {ANSWER_TIMEOUT}s")

    def drop(self, why: str) -> None:
        """Give up on this sibling."""
        if self.transport is not None:
            self.transport.loseConnection()
        self._end(why)

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        # With nothing in flight, this says only that the sibling stopped or
        # died: the next hand-over to it connects again, and finds out.
        idle = not self._sent and not self._waiting
        self._end(None if idle else reason.getErrorMessage())

    def _end(self, why: str | None) -> None:
        """
        This link is over (`why`: the sibling did not answer).  Connections
        sent but not yet taken: the sibling may hold them or not; either way
        this node's copies go.  Those waiting for the link are served here.
        """
        if self._ended:
            return
        self._ended = True
        self._connected = False
        while self._sent:
            fd, timer = self._sent.popleft()
            if timer.active():
                timer.cancel()
            os.close(fd)
        self._handover._link_ended(self, why)
        waiting, self._waiting = self._waiting, []
        for request, local in waiting:
            self._handover.events.handover("fallback")
            _serve_locally(request, local)


class _LinkFactory(ClientFactory):
    noisy = False

    def __init__(self, link: _Link) -> None:
        self._link = link

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._link

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        os_error = getattr(reason.value, "osError", None)
        number = os_error if isinstance(os_error, int) else getattr(os_error, "errno", None)
        why = os.strerror(number) if number is not None else reason.getErrorMessage()
        self._link.failed(why, gone=number in (errno.ECONNREFUSED, errno.ENOENT))


@implementer(IFileDescriptorReceiver)
class _Inbox(Protocol):
    """A sibling's connection to this node's socket: connections to take."""

    def __init__(self, handover: Handover) -> None:
        self._handover = handover
        self._buffer = b""
        self._fds: deque[int] = deque()
        self._refused = False

    def fileDescriptorReceived(self, descriptor: int) -> None:
        if self._refused:
            os.close(descriptor)
            return
        self._fds.append(descriptor)
        if len(self._fds) > MAX_PENDING_DESCRIPTORS:
            self._refuse("too many descriptors ahead of their requests")

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        buffer = self._buffer + data
        while len(buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer)
            if length > MAX_REQUEST_BYTES:
                self._refuse(f"a request of {length} bytes")
                return
            if len(buffer) < _LENGTH.size + length:
                break
            end = _LENGTH.size + length
            request, buffer = buffer[_LENGTH.size : end], buffer[end:]
            if not self._fds:
                self._refuse("a request without its connection")
                return
            if not self._handover.adopt(self._fds.popleft(), request):
                self._refuse("a descriptor that is not a TCP connection")
                return
            if self.transport is not None:
                self.transport.write(_TAKEN)
        self._buffer = buffer

    def _refuse(self, why: str) -> None:
        self._refused = True
        self._buffer = b""
        self._handover._log.warn("hand-over socket: {why}; closing that connection", why=why)
        self._handover.events.handover("refused")
        self._close_fds()
        if self.transport is not None:
            self.transport.loseConnection()

    def _close_fds(self) -> None:
        while self._fds:
            os.close(self._fds.popleft())

    def connectionLost(self, reason: Failure = ConnectionDone) -> None:  # type: ignore[assignment]
        self._close_fds()


class _InboxFactory(Factory):
    noisy = False

    def __init__(self, handover: Handover) -> None:
        self._handover = handover

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _Inbox(self._handover)


class _Adopting(Factory):
    """Builds the protocol of one adopted connection with `site`, and keeps it."""

    noisy = False

    def __init__(self, site: Site) -> None:
        self._site = site
        self.built: Any = None

    def buildProtocol(self, addr: IAddress | None) -> Any:
        self.built = self._site.buildProtocol(addr)
        return self.built
