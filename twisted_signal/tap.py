"""
``twistd rtcsignal``: its options, and `makeService`, the one place where
the server is put together.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.application.service import IService
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.python import usage
from twisted.python.reflect import namedAny

from .admin import is_bearer_token
from .auth import TokenVerifier
from .ice import IceConfig
from .peer import Peer
from .peerjs import PeerjsOptions
from .room import Room
from .rooms import Rooms, is_room_name
from .service import SignalingService, with_backlog
from .settings import Settings
from .tls import PROFILES
from .webhooks import Webhooks

if TYPE_CHECKING:
    from .cluster.resp import RedisURL

__all__ = ["DEFAULT_ENDPOINT", "Options", "makeService"]

DEFAULT_ENDPOINT = "tcp:8080"


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


def _seconds(option: str, zero: str | None = None) -> Callable[[str], float]:
    """
    A coercer for a duration in seconds; `zero` says what 0 means, if allowed.
    """

    def coerce(value: str) -> float:
        try:
            seconds = float(value)
        except ValueError:
            seconds = -1.0
        if not (seconds > 0 or (seconds == 0 and zero is not None)) or seconds == float("inf"):
            allowed = "0 or more" if zero is not None else "more than 0"
            raise usage.UsageError(f"--{option}: expected seconds, {allowed}, got {value!r}")
        return seconds

    coerce.coerceDoc = "Seconds" + (f"; 0 {zero}." if zero else ".")  # type: ignore[attr-defined]
    return coerce


def _redis_url(value: str) -> RedisURL:
    from .cluster.resp import parse_url, redact

    try:
        return parse_url(value)
    except ValueError as e:
        raise usage.UsageError(f"--redis {redact(value)!r}: {e}") from None


_redis_url.coerceDoc = (  # type: ignore[attr-defined]
    "redis://[[user]:password@]host:port/db, the same with rediss:// for TLS "
    "(?ca=FILE&cert=FILE&key=FILE), or unix:///path."
)


def _whole(option: str, minimum: int) -> Callable[[str], int]:
    def coerce(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            raise usage.UsageError(
                f"--{option}: expected a whole number of at least {minimum}, got {value!r}"
            )
        return number

    coerce.coerceDoc = f"A whole number, at least {minimum}."  # type: ignore[attr-defined]
    return coerce


def _rate(value: str) -> tuple[float, float]:
    count, slash, period = value.partition("/")
    try:
        rate, per = float(count), float(period) if slash else 1.0
    except ValueError:
        rate = per = 0.0
    if not (0 < rate < float("inf") and 0 < per < float("inf")):
        raise usage.UsageError(
            f"--rate-limit: expected N/S (N messages per S seconds), got {value!r}"
        )
    return rate, per


_rate.coerceDoc = "N/S: N messages per S seconds."  # type: ignore[attr-defined]


def _metrics_endpoint(value: str) -> str:
    from twisted.internet import reactor

    try:
        serverFromString(reactor, value)
    except (ValueError, KeyError, TypeError, OSError) as e:
        raise usage.UsageError(f"--metrics-endpoint {value!r} is not an endpoint: {e}") from None
    return with_backlog(value)


_metrics_endpoint.coerceDoc = "A Twisted server endpoint string."  # type: ignore[attr-defined]


def _webhook_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise usage.UsageError(f"--webhook {value!r} is not an http:// or https:// URL")
    return value


_webhook_url.coerceDoc = "An http:// or https:// URL."  # type: ignore[attr-defined]


def _tls_profile(value: str) -> str:
    if value not in PROFILES:
        names = " or ".join(PROFILES)
        raise usage.UsageError(f"--tls-profile: expected {names}, got {value!r}")
    return value


_tls_profile.coerceDoc = "intermediate (TLS 1.2 and 1.3) or modern (TLS 1.3 only)."  # type: ignore[attr-defined]


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Serve WebRTC signaling: browsers open ws(s)://HOST/socket/<room>/, join the room "
        "and exchange offers, answers and ICE candidates with its other peers. The room "
        "page at /<room> makes a video call."
    )
    optFlags = [
        ["no-auto-rooms", None, "Only serve the rooms given with --room (others get 404)."],
        ["peerjs-discovery", None, "peerjs: GET PATH<key>/peers lists the ids (else 401)."],
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
        [
            "ping-interval",
            None,
            20.0,
            "Seconds between WebSocket pings to each peer.",
            _seconds("ping-interval", zero="sends none"),
        ],
        [
            "ping-timeout",
            None,
            20.0,
            "A peer that has not answered a ping by then is dropped.",
            _seconds("ping-timeout"),
        ],
        [
            "idle-timeout",
            None,
            900.0,
            "A peer whose client sent nothing (pongs count) for this long is closed.",
            _seconds("idle-timeout"),
        ],
        [
            "max-message-bytes",
            None,
            65536,
            "Larger frames close the connection with 1009.",
            _whole("max-message-bytes", 1024),
        ],
        [
            "max-send-buffer",
            None,
            4194304,
            "Bytes held for a peer that does not read what it is sent; "
            "past them it is closed (1008) and leaves.",
            _whole("max-send-buffer", 65536),
        ],
        ["rate-limit", None, "50/1", "Messages per peer, as N/S.", _rate],
        [
            "rate-burst",
            None,
            200,
            "Messages a peer may send at once above its rate.",
            _whole("rate-burst", 1),
        ],
        [
            "max-connections",
            None,
            10000,
            "Beyond this many peers' connections, the upgrade is answered 503.",
            _whole("max-connections", 1),
        ],
        [
            "handshake-timeout",
            None,
            10.0,
            "A connection that has not completed its upgrade by then is dropped.",
            _seconds("handshake-timeout"),
        ],
        [
            "resume-window",
            None,
            15.0,
            "How long a peer whose connection was lost may resume as itself.",
            _seconds("resume-window", zero="turns resume off"),
        ],
        [
            "trust-forwarded-for",
            None,
            0,
            "Proxies in front of the server whose X-Forwarded-For to trust (for logs).",
            _whole("trust-forwarded-for", 0),
        ],
        [
            "shutdown-grace",
            None,
            10.0,
            "On SIGTERM: stop accepting, notify peers, wait at most this long.",
            _seconds("shutdown-grace"),
        ],
        [
            "metrics-endpoint",
            None,
            None,
            "Serve Prometheus metrics at /metrics on this endpoint string, "
            "e.g. tcp:9100:interface=127.0.0.1 (default: off)",
            _metrics_endpoint,
        ],
        [
            "webhook",
            None,
            None,
            "POST room_started, room_finished, peer_joined and peer_left events "
            "to this http(s) URL, signed with --webhook-secret (default: off)",
            _webhook_url,
        ],
        ["webhook-secret", None, None, "The secret that signs webhook deliveries (HMAC-SHA256)."],
        ["webhook-secret-file", None, None, "The same, with the secret read from this file."],
        [
            "tls-profile",
            None,
            "intermediate",
            "Mozilla's server-side TLS profile for every ssl: endpoint.",
            _tls_profile,
        ],
        [
            "admin-token",
            None,
            None,
            "Serve the admin API under /admin/ to requests with 'Authorization: Bearer "
            "<this token>' (default: no admin API).",
        ],
        ["admin-token-file", None, None, "The same, with the token read from this file."],
        [
            "redis",
            None,
            None,
            "Cluster mode: share rooms with other nodes through this Redis (default: off)",
            _redis_url,
        ],
        [
            "redis-password-file",
            None,
            None,
            "The Redis password (AUTH), read from this file rather than shown in ps in --redis.",
        ],
        [
            "peerjs",
            None,
            None,
            "Serve the peerjs-compatible front (the protocol of peerjs-server 1.0.2) "
            "under this path, e.g. /peerjs/ (default: off); see docs/peerjs.md.",
        ],
        [
            "peerjs-key",
            None,
            "peerjs",
            "peerjs: the key clients pass (with a JWT key configured they pass their "
            "token instead); also the name of their room in the admin API and webhooks.",
        ],
        [
            "peerjs-expire-timeout",
            None,
            5.0,
            "peerjs: how long messages to an id not connected wait for it (then EXPIRE).",
            _seconds("peerjs-expire-timeout"),
        ],
        [
            "peerjs-alive-timeout",
            None,
            90.0,
            "peerjs: a client that sent nothing (not even a HEARTBEAT) for this long is closed.",
            _seconds("peerjs-alive-timeout"),
        ],
        [
            "peerjs-queue-limit",
            None,
            256,
            "peerjs: messages one client may have waiting for ids not connected.",
            _whole("peerjs-queue-limit", 0),
        ],
        [
            "cluster-lease",
            None,
            10.0,
            "Cluster mode, advanced: seconds a room owner's and a node's lease last.",
            _seconds("cluster-lease"),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["endpoint"] = []
        self["room"] = []
        self["ice-server"] = []
        self["turn-uri"] = []
        self["allowed-origin"] = []
        self["settings"] = Settings()

    def opt_allowed_origin(self, origin: str) -> None:
        """
        Accept upgrades only from this Origin (scheme://host[:port]);
        repeatable (default: any origin).
        """
        if "://" not in origin and origin != "*":
            raise usage.UsageError(
                f"--allowed-origin {origin!r} is not an origin like https://example.org"
            )
        self["allowed-origin"].append(origin)

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
        # Twisted listens with a backlog of 50, which stalls a burst of joins.
        self["endpoint"].append(with_backlog(description))

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
            self["endpoint"] = [with_backlog(DEFAULT_ENDPOINT)]
        self["room-class"] = _load_class("--room-class", self["room-class"], Room)
        self["peer-class"] = _load_class("--peer-class", self["peer-class"], Peer)
        static = self["static"]
        if static is not None and not os.path.isdir(static):
            raise usage.UsageError(f"--static {static!r} is not a folder")
        limit = self["rate-limit"]
        rate, per = _rate(limit) if isinstance(limit, str) else limit
        if self["max-send-buffer"] < self["max-message-bytes"]:
            raise usage.UsageError(
                "--max-send-buffer must be at least --max-message-bytes "
                f"({self['max-message-bytes']}): a peer must be able to receive one message"
            )
        self["admin-token"] = admin_token = _secret(self, "admin-token")
        if admin_token is not None and not is_bearer_token(admin_token):
            raise usage.UsageError(
                "the admin token: use only letters, digits and -._~+/ (then =), "
                "e.g. from: openssl rand -hex 32"
            )
        self["settings"] = Settings(
            token_verifier=self._token_verifier(),
            ice=self._ice(),
            ping_interval=self["ping-interval"],
            ping_timeout=self["ping-timeout"],
            idle_timeout=self["idle-timeout"],
            max_message_bytes=self["max-message-bytes"],
            max_send_buffer=self["max-send-buffer"],
            rate=rate,
            rate_period=per,
            rate_burst=self["rate-burst"],
            max_connections=self["max-connections"],
            allowed_origins=tuple(self["allowed-origin"]),
            handshake_timeout=self["handshake-timeout"],
            resume_window=self["resume-window"],
            trusted_proxies=self["trust-forwarded-for"],
        )
        self["redis"] = self._redis()
        self["peerjs"] = self._peerjs()
        self["webhook-secret"] = _secret(self, "webhook-secret")
        if self["webhook"] is not None and self["webhook-secret"] is None:
            raise usage.UsageError("--webhook needs --webhook-secret or --webhook-secret-file")
        if self["webhook"] is None and self["webhook-secret"] is not None:
            raise usage.UsageError("--webhook-secret needs --webhook")

    def _peerjs(self) -> PeerjsOptions | None:
        path = self["peerjs"]
        if path is None:
            given = [
                f"--{name}"
                for name, default in (
                    ("peerjs-key", "peerjs"),
                    ("peerjs-expire-timeout", 5.0),
                    ("peerjs-alive-timeout", 90.0),
                    ("peerjs-queue-limit", 256),
                    ("peerjs-discovery", 0),
                )
                if self[name] != default
            ]
            if given:
                raise usage.UsageError(f"{given[0]} needs --peerjs")
            return None
        if isinstance(path, PeerjsOptions):
            return path
        key = self["peerjs-key"]
        if not is_room_name(key):
            raise usage.UsageError(f"--peerjs-key {key!r}: a key is 1 to 64 of A-Z a-z 0-9 _ . ~ -")
        if any(name == key for name, _ in self["room"]):
            raise usage.UsageError(f"--room {key!r} is the room of the peerjs front (--peerjs-key)")
        try:
            return PeerjsOptions(
                path=path,
                key=key,
                discovery=bool(self["peerjs-discovery"]),
                expire_timeout=self["peerjs-expire-timeout"],
                alive_timeout=self["peerjs-alive-timeout"],
                queue_limit=self["peerjs-queue-limit"],
            )
        except ValueError as e:
            raise usage.UsageError(f"--peerjs {path!r}: {e}") from None

    def _redis(self) -> RedisURL | None:
        url: RedisURL | None = self["redis"]
        path = self["redis-password-file"]
        if url is None:
            if path is not None:
                raise usage.UsageError("--redis-password-file needs --redis")
            return None
        from .cluster.resp import client_tls

        if path is not None:
            if url.password is not None:
                raise usage.UsageError(
                    "give the Redis password in --redis or in --redis-password-file, not both"
                )
            url = url.with_password(_read_secret("redis-password-file", path))
        if url.username is not None and url.password is None:
            raise usage.UsageError(
                f"--redis {str(url)!r}: a user name needs a password "
                "(in the URL or with --redis-password-file)"
            )
        if url.tls:
            try:
                client_tls(url)
            except ValueError as e:
                raise usage.UsageError(f"--redis {str(url)!r}: {e}") from None
        return url

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
        return _read_secret(f"{name}-file", path)
    if value is not None and not value:
        raise usage.UsageError(f"--{name}: the secret is empty")
    return value


def _read_secret(option: str, path: str) -> str:
    """The secret in the file at `path` (given as --`option`), stripped."""
    try:
        with open(path, encoding="utf-8") as f:
            value = f.read().strip()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or "not readable text"
        raise usage.UsageError(f"--{option} {path!r}: {reason}") from None
    if not value:
        raise usage.UsageError(f"--{option}: the secret is empty")
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

    rooms: Rooms
    if options["redis"] is not None:
        from .cluster import ClusterRooms

        rooms = ClusterRooms(
            factory, redis_url=options["redis"], lease=options["cluster-lease"], max_peers=max_peers
        )
    else:
        rooms = Rooms(factory, max_peers=max_peers)
    for name, limit in options["room"]:
        rooms.start_room(name, room_class, max_peers=limit if limit is not None else max_peers)
    from twisted.internet import reactor

    webhooks = None
    if options["webhook"] is not None:
        webhooks = Webhooks(options["webhook"], options["webhook-secret"], clock=reactor)
    metrics_endpoint = options["metrics-endpoint"]
    return _Server(
        rooms,
        metrics_endpoints=[metrics_endpoint] if metrics_endpoint else [],
        webhooks=webhooks,
        endpoints=options["endpoint"],
        peer_class=options["peer-class"],
        settings=options["settings"],
        pages=options["static"],
        shutdown_grace=options["shutdown-grace"],
        tls_profile=options["tls-profile"],
        admin_token=options["admin-token"],
        peerjs=options["peerjs"],
    )
