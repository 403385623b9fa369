"""
The public API of SPEC 3 stays put: names, base classes, and the purity of
the message codec.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from autobahn.twisted.websocket import WebSocketServerFactory, WebSocketServerProtocol
from twisted.application.service import MultiService, Service

import twisted_signal
from twisted_signal import (
    AuthData,
    BadRequest,
    InvalidMessage,
    Message,
    NoSuchPeer,
    Peer,
    PeerContext,
    PeerFactory,
    Refused,
    Room,
    Rooms,
    Unauthorized,
)
from twisted_signal import message as message_module

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parent.parent

PUBLIC_NAMES = {
    "AuthData",
    "BadRequest",
    "InvalidMessage",
    "Message",
    "NoSuchPeer",
    "Peer",
    "PeerContext",
    "PeerFactory",
    "PeerHandle",
    "Refused",
    "Room",
    "Rooms",
    "Settings",
    "SignalingResource",
    "SignalingService",
    "Unauthorized",
    "__version__",
}


def test_all_is_exactly_the_public_names() -> None:
    assert sorted(twisted_signal.__all__) == sorted(PUBLIC_NAMES)
    assert len(twisted_signal.__all__) == len(PUBLIC_NAMES)


def test_every_public_name_is_importable() -> None:
    namespace: dict[str, object] = {}
    exec("from twisted_signal import *", namespace)
    assert set(namespace) - {"__builtins__"} == PUBLIC_NAMES
    for name in PUBLIC_NAMES:
        assert getattr(twisted_signal, name) is namespace[name]


def test_tested_code_is_the_working_tree() -> None:
    # The venv holds a regular install too; these tests must not test it.
    assert Path(twisted_signal.__file__).resolve() == ROOT / "twisted_signal" / "__init__.py"


def test_version_matches_the_project() -> None:
    with (ROOT / "pyproject.toml").open("rb") as f:
        project = tomllib.load(f)["project"]
    assert twisted_signal.__version__ == project["version"]
    assert isinstance(twisted_signal.__version__, str)


def test_invalid_message_is_the_codecs() -> None:
    assert InvalidMessage is message_module.InvalidMessage
    assert Message is message_module.Message
    assert issubclass(InvalidMessage, ValueError)


def test_exceptions() -> None:
    for exception in (BadRequest, Unauthorized, Refused, NoSuchPeer, InvalidMessage):
        assert issubclass(exception, Exception)
    assert Refused("room_is_full").reason == "room_is_full"
    assert Refused().reason == "refused"
    unknown = NoSuchPeer(iter(["b", "a"]))
    assert unknown.peer_ids == ["b", "a"]
    assert str(unknown) == "no such peer: b, a"
    invalid = InvalidMessage("Invalid message", "'to' is missing")
    assert (invalid.description, invalid.details) == ("Invalid message", "'to' is missing")


def test_auth_data_repr_hides_credentials() -> None:
    auth = AuthData("id", {"password": "hunter2"}, {"m": 1})
    text = repr(auth)
    assert "hunter2" not in text
    assert "password" not in text
    assert "'id'" in text
    assert str(auth) == text
    assert auth.credentials == {"password": "hunter2"}
    assert auth.metadata == {"m": 1}


def test_auth_data_identity() -> None:
    assert AuthData("id", {"sub": "alice"}).identity == "alice"
    assert AuthData("id", {"sub": 7}).identity is None
    assert AuthData("id").identity is None
    assert AuthData("id").credentials == {}


def test_peer_context() -> None:
    context = PeerContext("id", "lobby")
    assert (context.peer_id, context.room) == ("id", "lobby")


def test_base_classes() -> None:
    assert issubclass(Room, Service)
    assert issubclass(Rooms, MultiService)
    assert issubclass(Peer, WebSocketServerProtocol)
    assert issubclass(PeerFactory, WebSocketServerFactory)


def test_room_callbacks_and_peer_callbacks_exist() -> None:
    for name in ("on_init", "on_join", "on_leave", "on_forward", "on_terminate", "forward"):
        assert callable(getattr(Room, name)), name
    for name in (
        "parse_request",
        "on_init",
        "on_receive",
        "on_terminate",
        "send_to_client",
        "stop",
    ):
        assert callable(getattr(Peer, name)), name


_PURITY_CHECK = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("_standalone_message", sys.argv[1])
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
message = module.Message.from_json('{"event": "x", "to": "all"}')
assert message.to_json() == '{"event":"x","data":null,"from":null,"to":"all"}'
loaded = sorted(
    name for name in sys.modules
    if name.split(".")[0] in ("twisted", "autobahn", "txaio", "zope", "twisted_signal")
)
print(",".join(loaded))
"""


@pytest.mark.process
def test_message_module_imports_nothing_from_twisted_or_autobahn() -> None:
    """
    `import twisted_signal.message` runs the package's ``__init__`` (which
    rightly imports Twisted), so the module is loaded on its own from its
    file, in a fresh interpreter.
    """
    result = subprocess.run(
        [sys.executable, "-c", _PURITY_CHECK, str(ROOT / "twisted_signal" / "message.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "\n"


_IMPORTED_BY = """
import sys
exec(sys.argv[1])
print(",".join(sorted(name for name in sys.modules if name.startswith(tuple(sys.argv[2:])))))
"""


def _loaded_by(statement: str, *prefixes: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", _IMPORTED_BY, statement, *prefixes],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().split(",") if name]


SERVER_SIDE = ("twisted.web", "autobahn.twisted", "twisted_signal.peer", "twisted_signal.room")


@pytest.mark.process
def test_the_asyncio_client_loads_neither_twisted_nor_the_server() -> None:
    loaded = _loaded_by(
        "from twisted_signal.client import aio_connect, Backoff",
        "twisted",
        "autobahn",
        "aiortc",
        "twisted_signal.",
    )
    assert loaded == [
        "twisted_signal",
        "twisted_signal._lazy",
        "twisted_signal.client",
        "twisted_signal.client._asyncio",
        "twisted_signal.client._core",
        "twisted_signal.message",
    ]


@pytest.mark.process
def test_the_twisted_client_loads_no_server_module_nor_twisted_web() -> None:
    loaded = _loaded_by("from twisted_signal.client import connect", *SERVER_SIDE)
    assert "autobahn.twisted.websocket" in loaded
    assert [name for name in loaded if not name.startswith("autobahn.twisted")] == []


@pytest.mark.process
def test_public_names_are_loaded_on_first_use() -> None:
    assert _loaded_by("import twisted_signal", *SERVER_SIDE) == []
    assert "twisted_signal.peer" in _loaded_by("from twisted_signal import Peer", *SERVER_SIDE)
    assert "Room" in dir(twisted_signal)


def test_every_public_name_has_a_home() -> None:
    assert sorted(twisted_signal._HOMES) == sorted(PUBLIC_NAMES - {"__version__"})
