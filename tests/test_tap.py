"""
``twistd rtcsignal``'s options and `makeService`, without running anything.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from twisted_signal import Peer, Room, Settings
from twisted_signal.service import SignalingService, with_backlog
from twisted_signal.tap import DEFAULT_ENDPOINT, Options, makeService

pytestmark = pytest.mark.pure


class CustomRoom(Room):
    pass


class CustomPeer(Peer):
    pass


class NotARoom:
    pass


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def usage_error(*argv: str) -> str:
    with pytest.raises(usage.UsageError) as info:
        parse(*argv)
    return str(info.value)


def endpoint_arguments(description: str) -> dict[str, str]:
    """
    The ``key=value`` arguments of an endpoint string.
    """
    pairs = (part.partition("=") for part in description.split(":"))
    return {key: value for key, sep, value in pairs if sep}


def service_of(*argv: str) -> SignalingService:
    service = makeService(parse(*argv))
    assert isinstance(service, SignalingService)
    return service


# Defaults.


def test_defaults() -> None:
    options = parse()
    [endpoint] = options["endpoint"]
    assert endpoint.startswith(DEFAULT_ENDPOINT + ":")
    assert DEFAULT_ENDPOINT == "tcp:8080"
    assert int(endpoint_arguments(endpoint)["backlog"]) >= 512
    assert options["max-peers"] == 4
    assert not options["no-auto-rooms"]
    assert options["room"] == []
    assert options["room-class"] is Room
    assert options["peer-class"] is Peer
    assert options["static"] is None


def test_default_service_creates_rooms_on_demand() -> None:
    service = service_of()
    assert service.rooms.creates_on_demand
    assert len(service.rooms) == 0
    room = service.rooms.get_or_create("anything")
    assert type(room) is Room
    assert room.max_peers == 4


# --endpoint and --room are repeatable.


def test_endpoint_is_repeatable_and_replaces_the_default() -> None:
    options = parse(
        "--endpoint",
        "tcp:9001:interface=127.0.0.1",
        "--endpoint",
        "unix:/tmp/rtcsignal-test.sock",
    )
    assert options["endpoint"] == [
        "tcp:9001:interface=127.0.0.1:backlog=1024",
        "unix:/tmp/rtcsignal-test.sock",
    ]


# Every tcp:/ssl: listener has a backlog of at least 1024 unless its string
# sets one (SPEC 2); Twisted's is 50.


@pytest.mark.parametrize(
    ("given", "listened"),
    [
        ("tcp:8080", "tcp:8080:backlog=1024"),
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1:backlog=1024"),
        ("tcp:port=8080:interface=\\:\\:1", "tcp:port=8080:interface=\\:\\:1:backlog=1024"),
        ("TCP:8080", "TCP:8080:backlog=1024"),
        ("tcp6:8080:interface=\\:\\:", "tcp6:8080:interface=\\:\\::backlog=1024"),
        (
            "ssl:8443:privateKey=k.pem:certKey=c.pem",
            "ssl:8443:privateKey=k.pem:certKey=c.pem:backlog=1024",
        ),
        # Set by the string: kept, however small.
        ("tcp:8080:backlog=10", "tcp:8080:backlog=10"),
        ("tcp:8080:backlog=4096:interface=127.0.0.1", "tcp:8080:backlog=4096:interface=127.0.0.1"),
        # Others have no backlog, or (reuseport:) default to 1024 already.
        ("unix:/tmp/rtcsignal.sock", "unix:/tmp/rtcsignal.sock"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ("reuseport:8080", "reuseport:8080"),
    ],
)
def test_with_backlog(given: str, listened: str) -> None:
    assert with_backlog(given) == listened


def endpoint_backlog(description: str) -> int:
    from twisted.internet import reactor

    endpoint = serverFromString(reactor, description)
    backlog: int = endpoint._backlog
    return backlog


@pytest.mark.parametrize(
    "argv",
    [
        ("--endpoint", "tcp:8080:interface=127.0.0.1"),
        ("--endpoint", "tcp:port=8080"),
        ("--endpoint", "reuseport:8080:interface=127.0.0.1"),
        ("--endpoint", "tcp:8080", "--endpoint", "tcp6:8081"),
    ],
)
def test_every_tcp_endpoint_the_tap_builds_has_a_backlog_of_1024(argv: tuple[str, ...]) -> None:
    options = parse(*argv)
    assert [endpoint_backlog(e) for e in options["endpoint"]] == [1024] * (len(argv) // 2)
    assert endpoint_backlog(parse()["endpoint"][0]) == 1024


def test_the_metrics_endpoint_has_a_backlog_of_1024_too() -> None:
    options = parse("--metrics-endpoint", "tcp:9100:interface=127.0.0.1")
    assert endpoint_backlog(options["metrics-endpoint"]) == 1024
    options = parse("--metrics-endpoint", "tcp:9100:backlog=7")
    assert endpoint_backlog(options["metrics-endpoint"]) == 7


def test_a_backlog_set_by_the_string_is_kept() -> None:
    assert endpoint_backlog(parse("--endpoint", "tcp:8080:backlog=8")["endpoint"][0]) == 8


def test_room_is_repeatable_with_optional_cap() -> None:
    options = parse("--room", "lobby:2", "--room", "open", "--room", "a.b~c_d-9:10")
    assert options["room"] == [("lobby", 2), ("open", None), ("a.b~c_d-9", 10)]


def test_make_service_starts_the_given_rooms_with_their_caps() -> None:
    service = service_of("--room", "lobby:2", "--room", "open", "--max-peers", "7")
    rooms = service.rooms
    assert sorted(room.name for room in rooms) == ["lobby", "open"]
    lobby, open_ = rooms.get("lobby"), rooms.get("open")
    assert lobby is not None and open_ is not None
    assert lobby.max_peers == 2
    assert open_.max_peers == 7
    assert rooms.creates_on_demand


def test_no_auto_rooms() -> None:
    options = parse("--no-auto-rooms", "--room", "lobby")
    assert options["no-auto-rooms"]
    rooms = makeService(options).rooms  # type: ignore[attr-defined]
    assert not rooms.creates_on_demand
    assert rooms.get_or_create("other") is None
    assert [room.name for room in rooms] == ["lobby"]


def test_max_peers_applies_to_rooms_made_on_demand() -> None:
    room = service_of("--max-peers", "12").rooms.get_or_create("x")
    assert room is not None and room.max_peers == 12


def test_room_and_peer_classes_are_loaded_and_used() -> None:
    options = parse(
        "--room-class",
        f"{__name__}.CustomRoom",
        "--peer-class",
        f"{__name__}.CustomPeer",
        "--room",
        "lobby",
    )
    assert options["room-class"] is CustomRoom
    assert options["peer-class"] is CustomPeer
    service = makeService(options)
    assert isinstance(service, SignalingService)
    assert type(service.rooms.get("lobby")) is CustomRoom
    assert type(service.rooms.get_or_create("made-on-demand")) is CustomRoom
    assert service.resource.factory.protocol is CustomPeer


def test_static_folder(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<!doctype html><title>mine</title>")
    assert parse("--static", str(tmp_path))["static"] == str(tmp_path)


# Bad values: a UsageError with a sentence naming the option and the value.


@pytest.mark.parametrize("value", ["0", "-1", "x", "1.5", ""])
def test_bad_max_peers(value: str) -> None:
    message = usage_error("--max-peers", value)
    assert "--max-peers" in message
    assert "at least 1" in message
    assert repr(value) in message


@pytest.mark.parametrize("spec", ["bad name", "", ":3", "a/b", "x" * 65, "é"])
def test_bad_room_name(spec: str) -> None:
    message = usage_error("--room", spec)
    assert f"--room {spec!r}" in message
    assert "room name" in message


@pytest.mark.parametrize("spec", ["a:0", "a:-1", "a:x", "a:"])
def test_bad_room_cap(spec: str) -> None:
    if spec == "a:":
        # An empty cap is no cap: NAME: is the same as NAME.
        assert parse("--room", spec)["room"] == [("a", None)]
        return
    message = usage_error("--room", spec)
    assert f"--room {spec!r}" in message
    assert "MAX_PEERS" in message


def test_room_given_twice() -> None:
    message = usage_error("--room", "a", "--room", "a:3")
    assert "'a'" in message
    assert "twice" in message


@pytest.mark.parametrize(
    "description",
    ["bogus:1", "tcp:notaport", "tcp:8080:frob=1", "ssl:8443:privateKey=/nonexistent"],
)
def test_bad_endpoint(description: str) -> None:
    message = usage_error("--endpoint", description)
    assert f"--endpoint {description!r}" in message
    assert "not an endpoint" in message


@pytest.mark.parametrize(
    ("option", "name"),
    [
        ("--room-class", "no_such_module_for_rtcsignal.Room"),
        ("--room-class", "twisted_signal.NoSuchRoom"),
        ("--peer-class", "no_such_module_for_rtcsignal.Peer"),
        ("--peer-class", "twisted_signal.NoSuchPeer_"),
        ("--peer-class", "Peer"),
    ],
)
def test_class_that_cannot_be_imported(option: str, name: str) -> None:
    message = usage_error(option, name)
    assert f"{option} {name!r}" in message
    assert "cannot be imported" in message


@pytest.mark.parametrize(
    ("option", "name", "base"),
    [
        ("--room-class", "twisted_signal.Peer", "Room"),
        ("--room-class", f"{__name__}.NotARoom", "Room"),
        ("--room-class", "os.path.join", "Room"),
        ("--peer-class", "twisted_signal.Room", "Peer"),
        ("--peer-class", f"{__name__}.NotARoom", "Peer"),
        ("--peer-class", "twisted_signal.tap.DEFAULT_ENDPOINT", "Peer"),
    ],
)
def test_class_of_the_wrong_kind(option: str, name: str, base: str) -> None:
    message = usage_error(option, name)
    assert f"{option} {name!r}" in message
    assert f"not a subclass of {base}" in message


def test_static_folder_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    message = usage_error("--static", str(missing))
    assert f"--static {str(missing)!r}" in message
    assert "not a folder" in message


def test_static_must_be_a_folder_not_a_file(tmp_path: Path) -> None:
    page = tmp_path / "index.html"
    page.write_text("<!doctype html>")
    assert "not a folder" in usage_error("--static", str(page))


def test_unknown_option() -> None:
    assert "frob" in usage_error("--frob")


def test_help_lists_every_option_of_the_contract() -> None:
    text = str(Options())
    for option in (
        "--endpoint",
        "--room",
        "--no-auto-rooms",
        "--max-peers",
        "--room-class",
        "--peer-class",
        "--static",
        "--jwt-secret",
        "--jwt-secret-file",
        "--jwt-public-key-file",
        "--ice-server",
        "--turn-secret",
        "--turn-secret-file",
        "--turn-uri",
        "--turn-ttl",
        "--ping-interval",
        "--ping-timeout",
        "--idle-timeout",
        "--max-message-bytes",
        "--max-send-buffer",
        "--rate-limit",
        "--rate-burst",
        "--max-connections",
        "--allowed-origin",
        "--handshake-timeout",
        "--resume-window",
        "--shutdown-grace",
    ):
        assert option in text


def test_errors_under_twistd_are_one_line() -> None:
    """
    Under twistd (the options have a parent), a bad value ends the process
    with one line rather than twistd's whole usage text.
    """
    options: Any = Options()
    options.parent = object()
    with pytest.raises(SystemExit) as info:
        options.parseOptions(["--max-peers", "0"])
    text = str(info.value.code)
    assert "\n" not in text
    assert text.startswith("twistd rtcsignal: --max-peers")


# Hardening, tokens and ICE options (SPEC 4, second table).


def test_hardening_defaults_are_the_contracts() -> None:
    settings = parse()["settings"]
    assert settings == Settings(
        ping_interval=20,
        ping_timeout=20,
        idle_timeout=900,
        max_message_bytes=65536,
        max_send_buffer=4194304,
        rate=50,
        rate_period=1,
        rate_burst=200,
        max_connections=10000,
        allowed_origins=(),
        handshake_timeout=10,
        resume_window=15,
    )
    assert service_of().shutdown_grace == 10


def test_hardening_options_reach_the_settings() -> None:
    options = parse(
        "--ping-interval", "5", "--ping-timeout", "3", "--idle-timeout", "60",
        "--max-message-bytes", "2048", "--rate-limit", "10/2", "--rate-burst", "7",
        "--max-connections", "9", "--allowed-origin", "https://a.example",
        "--allowed-origin", "http://b.example:8080", "--handshake-timeout", "2.5",
        "--resume-window", "0", "--shutdown-grace", "4",
    )  # fmt: skip
    settings = options["settings"]
    assert (settings.ping_interval, settings.ping_timeout, settings.idle_timeout) == (5, 3, 60)
    assert settings.max_message_bytes == 2048
    assert (settings.rate, settings.rate_period, settings.rate_burst) == (10, 2, 7)
    assert settings.max_connections == 9
    assert settings.allowed_origins == ("https://a.example", "http://b.example:8080")
    assert settings.handshake_timeout == 2.5
    assert settings.resume_window == 0
    assert makeService(options).shutdown_grace == 4  # type: ignore[attr-defined]


def test_max_send_buffer_reaches_the_settings() -> None:
    assert parse()["settings"].max_send_buffer == 4 * 1024 * 1024
    assert parse("--max-send-buffer", "100000")["settings"].max_send_buffer == 100000
    assert "--max-send-buffer=" in str(Options())


def test_rate_limit_without_period_means_per_second() -> None:
    assert parse("--rate-limit", "30")["settings"].rate_period == 1


@pytest.mark.parametrize(
    "argv",
    [
        ("--ping-interval", "-1"),
        ("--ping-timeout", "0"),
        ("--idle-timeout", "x"),
        ("--max-message-bytes", "100"),
        ("--max-send-buffer", "1000"),
        ("--max-send-buffer", "lots"),
        ("--max-send-buffer", "100000", "--max-message-bytes", "200000"),
        ("--rate-limit", "0/1"),
        ("--rate-limit", "5/0"),
        ("--rate-limit", "five"),
        ("--rate-burst", "0"),
        ("--max-connections", "0"),
        ("--allowed-origin", "example.org"),
        ("--handshake-timeout", "inf"),
        ("--resume-window", "-3"),
        ("--shutdown-grace", "0"),
        ("--turn-ttl", "0"),
        ("--turn-secret", "s"),
        ("--turn-uri", "turn:127.0.0.1"),
        ("--turn-uri", "stun:127.0.0.1", "--turn-secret", "s"),
        ("--ice-server", "http://x"),
        ("--jwt-secret", "a", "--jwt-secret-file", "f"),
        ("--jwt-secret", ""),
        ("--jwt-secret-file", "/nonexistent/secret"),
        ("--jwt-public-key-file", "/nonexistent/key.pem"),
    ],
)
def test_bad_hardening_and_auth_values(argv: tuple[str, ...]) -> None:
    message = usage_error(*argv)
    assert argv[0] in message, message


def test_jwt_and_turn_options(tmp_path: Path) -> None:
    secret_file = tmp_path / "jwt"
    secret_file.write_text("a long enough secret for the HS256 algorithm\n")
    options = parse(
        "--jwt-secret-file", str(secret_file), "--ice-server", "stun:127.0.0.1:3478",
        "--turn-uri", "turn:127.0.0.1:3478", "--turn-secret", "t", "--turn-ttl", "60",
    )  # fmt: skip
    settings = options["settings"]
    assert settings.token_verifier is not None
    assert settings.token_verifier.algorithms == ("HS256",)
    servers = settings.ice.servers_for("p", 0)
    assert servers[0] == {"urls": ["stun:127.0.0.1:3478"]}
    assert servers[1]["username"] == "60:p"
