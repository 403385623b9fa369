"""
``twistd rtcsignal``: its options, and `makeService`, the one place where
the server is put together.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.python import usage
from twisted.python.reflect import namedAny

from .auth import TokenVerifier
from .ice import IceConfig
from .peer import Peer
from .room import Room
from .rooms import Rooms, is_room_name
from .service import SignalingService
from .settings import Settings

__all__ = ["DEFAULT_ENDPOINT", "Options", "makeService"]

DEFAULT_ENDPOINT = "tcp:8080"
# Twisted listens with a backlog of 50, which stalls a burst of joins.
_BACKLOG = 1024


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise ValueError(f"expected a whole number of at least 1, got {value!r}")
    return number


def _max_peers(value: str) -> int:
    try:
        return _positive_int(value)
    except ValueError as e:
        raise usage.UsageError(f"--max-peers: {e}") from None


_max_peers.coerceDoc = "A whole number, at least 1."  # type: ignore[attr-defined]


def _turn_ttl(value: str) -> int:
    try:
        return _positive_int(value)
    except ValueError as e:
        raise usage.UsageError(f"--turn-ttl: {e}") from None


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve WebRTC signaling: browsers open ws(s)://HOST/socket/<room>/, join the room "
        "and exchange offers, answers and ICE candidates with its other peers. The room "
        "page at /<room> makes a video call."
    )
    optFlags = [
        ["no-auto-rooms", None, "Only serve the rooms given with --room (others get 404)."],
    ]
    optParameters = [
        ["max-peers", None, 4, "Peers per room for rooms without their own limit.", _max_peers],
        ["room-class", None, None, "Your Room subclass, as MODULE.CLASS (default: built-in)."],
        ["peer-class", None, None, "Your Peer subclass, as MODULE.CLASS (default: built-in)."],
        [
            "static",
            None,
            None,
            "A folder of pages replacing the packaged ones (default: packaged).",
        ],
        ["jwt-secret", None, None, "Peers must present a JWT (HS256) signed with this secret."],
        ["jwt-secret-file", None, None, "The same, with the secret read from this file."],
        [
            "jwt-public-key-file",
            None,
            None,
            "Peers must present a JWT (RS256/ES256) verified by this PEM public key.",
        ],
        [
            "turn-secret",
            None,
            None,
            "Shared secret of a TURN server (coturn use-auth-secret): "
            "peers get ephemeral credentials for the --turn-uri servers.",
        ],
        ["turn-secret-file", None, None, "The same, with the secret read from this file."],
        ["turn-ttl", None, 86400, "Seconds the TURN credentials are valid.", _turn_ttl],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["endpoint"] = []
        self["room"] = []
        self["ice-server"] = []
        self["turn-uri"] = []
        self["settings"] = Settings()

    def opt_ice_server(self, url: str) -> None:
        """
        A STUN or TURN URL handed to peers as an ICE server; repeatable.
        """
        if not url.startswith(("stun:", "stuns:", "turn:", "turns:")):
            raise usage.UsageError(f"--ice-server {url!r} is not a stun:/turn: URL")
        self["ice-server"].append(url)

    def opt_turn_uri(self, uri: str) -> None:
        """
        A TURN URI for which peers get ephemeral credentials (with
        --turn-secret); repeatable.
        """
        if not uri.startswith(("turn:", "turns:")):
            raise usage.UsageError(f"--turn-uri {uri!r} is not a turn: or turns: URI")
        self["turn-uri"].append(uri)

    def opt_endpoint(self, description: str) -> None:
        """
        Listen on this Twisted server endpoint string; repeatable
        (default: tcp:8080).  Examples: tcp:8080:interface=127.0.0.1,
        ssl:8443:privateKey=key.pem:certKey=cert.pem, systemd:domain=INET:index=0.
        """
        from twisted.internet import reactor

        try:
            serverFromString(reactor, description)
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise usage.UsageError(f"--endpoint {description!r} is not an endpoint: {e}") from None
        self["endpoint"].append(description)

    def opt_room(self, spec: str) -> None:
        """
        Start this room with the server, as NAME or NAME:MAX_PEERS; repeatable.
        """
        name, _, limit = spec.partition(":")
        if not is_room_name(name):
            raise usage.UsageError(
                f"--room {spec!r}: a room name is 1 to 64 of A-Z a-z 0-9 _ . ~ -"
            )
        max_peers: int | None = None
        if limit:
            try:
                max_peers = _positive_int(limit)
            except ValueError:
                raise usage.UsageError(
                    f"--room {spec!r}: MAX_PEERS must be a whole number of at least 1"
                ) from None
        if any(name == other for other, _ in self["room"]):
            raise usage.UsageError(f"--room {name!r} is given twice")
        self["room"].append((name, max_peers))

    def postOptions(self) -> None:
        if not self["endpoint"]:
            self["endpoint"] = [f"{DEFAULT_ENDPOINT}:backlog={_BACKLOG}"]
        self["room-class"] = _load_class("--room-class", self["room-class"], Room)
        self["peer-class"] = _load_class("--peer-class", self["peer-class"], Peer)
        static = self["static"]
        if static is not None and not os.path.isdir(static):
            raise usage.UsageError(f"--static {static!r} is not a folder")
        self["settings"] = Settings(token_verifier=self._token_verifier(), ice=self._ice())

    def _token_verifier(self) -> TokenVerifier | None:
        secret = _secret(self, "jwt-secret")
        key_file = self["jwt-public-key-file"]
        if secret is not None and key_file is not None:
            raise usage.UsageError("give a JWT secret or a JWT public key, not both")
        if secret is not None:
            return TokenVerifier.from_secret(secret)
        if key_file is not None:
            try:
                with open(key_file, "rb") as f:
                    return TokenVerifier.from_public_key(f.read())
            except (OSError, ValueError) as e:
                raise usage.UsageError(f"--jwt-public-key-file {key_file!r}: {e}") from None
        return None

    def _ice(self) -> IceConfig:
        secret = _secret(self, "turn-secret")
        if secret is not None and not self["turn-uri"]:
            raise usage.UsageError("--turn-secret needs at least one --turn-uri")
        if self["turn-uri"] and secret is None:
            raise usage.UsageError("--turn-uri needs --turn-secret or --turn-secret-file")
        return IceConfig(
            urls=tuple(self["ice-server"]),
            turn_uris=tuple(self["turn-uri"]),
            turn_secret=secret,
            turn_ttl=self["turn-ttl"],
        )

    def parseOptions(self, options: Any = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            # Under twistd: one line, not twistd's whole usage text.
            raise SystemExit(f"twistd rtcsignal: {e} (see: twistd rtcsignal --help)") from None


def _secret(options: Options, name: str) -> str | None:
    """
    The secret given as --NAME or --NAME-file (not both); never echoed.
    """
    value, path = options[name], options[f"{name}-file"]
    if value is not None and path is not None:
        raise usage.UsageError(f"give --{name} or --{name}-file, not both")
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                value = f.read().strip()
        except (OSError, UnicodeDecodeError) as e:
            reason = getattr(e, "strerror", None) or "not readable text"
            raise usage.UsageError(f"--{name}-file {path!r}: {reason}") from None
    if value is not None and not value:
        raise usage.UsageError(f"--{name}{'-file' if path else ''}: the secret is empty")
    return value


def _load_class(option: str, name: str | None, base: type[Any]) -> type[Any]:
    if name is None:
        return base
    try:
        cls = namedAny(name)
    except Exception as e:
        raise usage.UsageError(f"{option} {name!r} cannot be imported: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise usage.UsageError(f"{option} {name!r} is not a subclass of {base.__name__}")
    return cls


class _Server(SignalingService):
    """
    The service ``twistd rtcsignal`` runs: a port it cannot listen on is a
    one-line error and exit status 1, not a traceback.
    """

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            where = f"{e.interface or '*'}:{e.port}"
            reason = getattr(e.socketError, "strerror", None) or e.socketError
            # twistd has sent sys.stderr to the log by now; say it plainly.
            stderr = sys.__stderr__ or sys.stderr
            stderr.write(f"twistd rtcsignal: cannot listen on {where}: {reason}\n")
            stderr.flush()
            raise SystemExit(1) from None


def makeService(options: Options) -> IService:
    room_class: type[Room] = options["room-class"]
    max_peers: int = options["max-peers"]
    factory = None
    if not options["no-auto-rooms"]:

        def factory(name: str) -> Room:
            return room_class(name, None, max_peers=max_peers)

    rooms = Rooms(factory, max_peers=max_peers)
    for name, limit in options["room"]:
        rooms.start_room(name, room_class, max_peers=limit if limit is not None else max_peers)
    return _Server(
        rooms,
        endpoints=options["endpoint"],
        peer_class=options["peer-class"],
        settings=options["settings"],
        pages=options["static"],
    )
