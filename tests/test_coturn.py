"""
The ephemeral TURN credentials of `IceConfig.servers_for` against a real
coturn (Debian's ``coturn`` package: ``turnserver --use-auth-secret``) on
127.0.0.1: they allocate a relay, and a credential made with another secret,
a credential for another username and an expired username are refused with
401 Unauthorized.

The clients.  The allocations are made by the small STUN/TURN client written
out below (RFC 8489/8656 with the long-term credential mechanism, as a
browser does it), because it gives an unambiguous answer: the ERROR-CODE of
coturn's response, so a refusal is seen to be exactly 401 (not a timeout, a
server that is not there, or a 4xx about something else), and the
MESSAGE-INTEGRITY of a success response, which coturn computes with the
password it derived from the secret, so both sides are seen to agree on it.
`turnutils_uclient`, shipped with coturn, is run too, as an independent
reference client that also relays data between two allocations; its exit
status (255 for a refusal, but also for an unreachable server) and free-form
output cannot tell a 401 from other failures, so it is not relied on alone.
aioice (aiortc's TURN client) would do as well, but it is not a dependency
of the project's test extra.

coturn is confined to loopback: it listens and relays on 127.0.0.1 only, has
no TCP, TLS, DTLS, CLI or web-admin listener, reads no /etc/turnserver.conf,
refuses peers outside 127.0.0.0/8, and the test checks every socket it has
open (/proc/<pid>/fd against /proc/net/*) while an allocation is live.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import re
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from twisted_signal.ice import IceConfig, turn_credential

# One worker runs the whole module, so that its module-scoped turnserver
# is made once, not once per xdist worker.
pytestmark = [pytest.mark.process, pytest.mark.xdist_group("coturn")]

TURNSERVER = "/usr/bin/turnserver"
REALM = "rtcsignal.test"
MIN_PORT, MAX_PORT = 49152, 65535
TIMEOUT = 5.0

# STUN/TURN message types, attributes and constants (RFC 8489, RFC 8656).
MAGIC = 0x2112A442
BINDING, ALLOCATE, CREATE_PERMISSION = 0x0001, 0x0003, 0x0008
SUCCESS, ERROR = 0x0100, 0x0110
USERNAME = 0x0006
MESSAGE_INTEGRITY = 0x0008
ERROR_CODE = 0x0009
LIFETIME = 0x000D
XOR_PEER_ADDRESS = 0x0012
REALM_ATTR = 0x0014
NONCE = 0x0015
XOR_RELAYED_ADDRESS = 0x0016
REQUESTED_TRANSPORT = 0x0019
UDP = 17


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


def require_coturn() -> str:
    """
    The path of `turnutils_uclient`; without coturn, skip (fail under CI).
    """
    uclient = shutil.which("turnutils_uclient")
    if os.access(TURNSERVER, os.X_OK) and uclient is not None:
        return uclient
    reason = (
        f"coturn is not installed (needs {TURNSERVER} and turnutils_uclient): "
        "apt-get install coturn, or `make system-packages`"
    )
    if in_ci():
        pytest.fail(f"{reason}; it is required when CI=true")
    pytest.skip(reason)


# --- A minimal STUN/TURN client -------------------------------------------


def attribute(kind: int, value: bytes) -> bytes:
    return struct.pack("!HH", kind, len(value)) + value + bytes(-len(value) % 4)


def xor_address(host: str, port: int) -> bytes:
    packed = ipaddress.IPv4Address(host).packed
    xaddr = bytes(a ^ b for a, b in zip(packed, struct.pack("!I", MAGIC), strict=True))
    return struct.pack("!BBH", 0, 1, port ^ (MAGIC >> 16)) + xaddr


def parse_xor_address(value: bytes) -> tuple[str, int]:
    family, xport = struct.unpack_from("!xBH", value)
    assert family == 1, "expected an IPv4 address"
    xaddr = value[4:8]
    addr = bytes(a ^ b for a, b in zip(xaddr, struct.pack("!I", MAGIC), strict=True))
    return str(ipaddress.IPv4Address(addr)), xport ^ (MAGIC >> 16)


def encode(message_type: int, tid: bytes, attributes: bytes, key: bytes | None) -> bytes:
    if key is None:
        return struct.pack("!HHI", message_type, len(attributes), MAGIC) + tid + attributes
    # The length covers MESSAGE-INTEGRITY itself (4 + 20 bytes), the HMAC
    # everything before it (RFC 8489 section 14.5).
    header = struct.pack("!HHI", message_type, len(attributes) + 24, MAGIC) + tid
    mac = hmac.new(key, header + attributes, hashlib.sha1).digest()
    return header + attributes + attribute(MESSAGE_INTEGRITY, mac)


@dataclass(frozen=True)
class Response:
    message_type: int
    tid: bytes
    attributes: dict[int, bytes]
    raw: bytes
    integrity_at: int | None

    @property
    def error(self) -> tuple[int, str] | None:
        if self.message_type & 0x0110 != ERROR:
            return None
        value = self.attributes[ERROR_CODE]
        return (value[2] & 0x07) * 100 + value[3], value[4:].decode("utf-8", "replace")

    def integrity_valid(self, key: bytes) -> bool:
        if self.integrity_at is None:
            return False
        at = self.integrity_at
        header = self.raw[:2] + struct.pack("!H", at - 20 + 24) + self.raw[4:20]
        expected = hmac.new(key, header + self.raw[20:at], hashlib.sha1).digest()
        return hmac.compare_digest(expected, self.attributes[MESSAGE_INTEGRITY])


def decode(data: bytes) -> Response:
    message_type, length, magic = struct.unpack_from("!HHI", data)
    assert magic == MAGIC, "not a STUN message"
    attributes: dict[int, bytes] = {}
    integrity_at = None
    offset = 20
    while offset + 4 <= min(len(data), 20 + length):
        kind, size = struct.unpack_from("!HH", data, offset)
        if kind == MESSAGE_INTEGRITY and integrity_at is None:
            integrity_at = offset
        attributes.setdefault(kind, data[offset + 4 : offset + 4 + size])
        offset += 4 + size + (-size % 4)
    return Response(message_type, data[8:20], attributes, data, integrity_at)


class TurnClient:
    """
    One UDP 5-tuple to the server, so at most one allocation.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.connect(("127.0.0.1", port))
        self.username = ""
        self.key: bytes | None = None
        self.realm = b""
        self.nonce = b""

    def close(self) -> None:
        self.sock.close()

    def transact(self, method: int, attributes: bytes = b"") -> Response:
        """
        Send a request (retransmitted until answered) and return the answer.
        """
        tid = secrets.token_bytes(12)
        if self.key is not None:
            attributes += (
                attribute(USERNAME, self.username.encode("utf-8"))
                + attribute(REALM_ATTR, self.realm)
                + attribute(NONCE, self.nonce)
            )
        request = encode(method, tid, attributes, self.key)
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            self.sock.send(request)
            self.sock.settimeout(0.25)
            try:
                while True:
                    response = decode(self.sock.recv(4096))
                    if response.tid == tid:
                        return response
            except TimeoutError:
                continue
        raise AssertionError(f"no answer from coturn to request {method:#06x}")

    def allocate(self, username: str, password: str) -> Response:
        """
        Allocate a UDP relay: an unauthenticated request for the 401
        challenge (REALM, NONCE), then the request with the long-term key.
        """
        transport = attribute(REQUESTED_TRANSPORT, bytes([UDP, 0, 0, 0]))
        challenge = self.transact(ALLOCATE, transport)
        assert challenge.error is not None
        assert challenge.error[0] == 401, challenge.error
        self.realm = challenge.attributes[REALM_ATTR]
        self.nonce = challenge.attributes[NONCE]
        self.username = username
        self.key = hashlib.md5(
            f"{username}:{self.realm.decode('utf-8')}:{password}".encode(),
            usedforsecurity=False,
        ).digest()
        return self.transact(ALLOCATE, transport + attribute(LIFETIME, struct.pack("!I", 300)))

    def create_permission(self, host: str) -> Response:
        return self.transact(CREATE_PERMISSION, attribute(XOR_PEER_ADDRESS, xor_address(host, 9)))


# --- coturn ---------------------------------------------------------------


@dataclass(frozen=True)
class Coturn:
    process: subprocess.Popen[bytes]
    port: int
    secret: str
    log: Path
    uclient: str

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])

    def config(self, ttl: int = 600) -> IceConfig:
        return IceConfig(
            turn_uris=(f"turn:127.0.0.1:{self.port}",), turn_secret=self.secret, turn_ttl=ttl
        )


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def answers_binding(port: int) -> bool:
    client = TurnClient(port)
    try:
        client.sock.send(encode(BINDING, secrets.token_bytes(12), b"", None))
        client.sock.settimeout(0.2)
        return decode(client.sock.recv(4096)).message_type == BINDING | SUCCESS
    except (TimeoutError, ConnectionRefusedError):
        return False
    finally:
        client.close()


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    uclient = require_coturn()
    tmp = tmp_path_factory.mktemp("coturn")
    config = tmp / "turnserver.conf"
    config.write_text("# empty: everything is on the command line\n")
    port = free_udp_port()
    secret = secrets.token_urlsafe(24)
    log = tmp / "turnserver.log"
    args = [
        TURNSERVER,
        "-c",  # not /etc/turnserver.conf
        str(config),
        f"--db={tmp / 'turndb'}",  # not /var/lib/turn/turndb
        f"--pidfile={tmp / 'turnserver.pid'}",
        "--listening-ip=127.0.0.1",
        "--relay-ip=127.0.0.1",
        f"--listening-port={port}",
        f"--min-port={MIN_PORT}",
        f"--max-port={MAX_PORT}",
        "--use-auth-secret",
        f"--static-auth-secret={secret}",
        f"--realm={REALM}",
        "--no-tcp",
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-rfc5780",  # no alternative (second) listening address or port
        "--no-software-attribute",
        "--allow-loopback-peers",
        "--no-multicast-peers",
        "--denied-peer-ip=0.0.0.0-126.255.255.255",
        "--denied-peer-ip=128.0.0.0-255.255.255.255",
        "--log-file=stdout",
        "--simple-log",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
        )
    server = Coturn(process, port, secret, log, uclient)
    try:
        deadline = time.monotonic() + 10
        while not answers_binding(port):
            if process.poll() is not None:
                pytest.fail(f"turnserver exited ({process.returncode}):\n{server.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(f"turnserver did not answer on 127.0.0.1:{port}:\n{server.log_tail()}")
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def client(coturn: Coturn) -> Iterator[TurnClient]:
    turn = TurnClient(coturn.port)
    yield turn
    turn.close()


# --- What coturn has open -------------------------------------------------


def proc_address(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # /proc/net prints the address as native-endian 32-bit words.
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
    return ipaddress.ip_address(b"".join(words)), int(port, 16)


def open_sockets(pid: int) -> list[tuple[str, str, str]]:
    """
    (table, local, remote) of every internet socket that `pid` holds.
    """
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        target = os.readlink(fd)
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table in ("tcp", "tcp6", "udp", "udp6", "raw", "raw6", "udplite", "udplite6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes:
                found.append((table, fields[1], fields[2]))
    return found


# --- The tests ------------------------------------------------------------


def test_handed_out_credentials_allocate_a_loopback_relay(
    coturn: Coturn, client: TurnClient
) -> None:
    (server,) = coturn.config().servers_for("peer-alice", time.time())
    (uri,) = server["urls"]
    assert uri == f"turn:127.0.0.1:{coturn.port}"

    response = client.allocate(server["username"], server["credential"])

    assert response.error is None, f"{response.error}\n{coturn.log_tail()}"
    assert response.message_type == ALLOCATE | SUCCESS
    assert client.key is not None
    assert response.integrity_valid(client.key), "coturn derived another password"
    relay_host, relay_port = parse_xor_address(response.attributes[XOR_RELAYED_ADDRESS])
    assert relay_host == "127.0.0.1"
    assert MIN_PORT <= relay_port <= MAX_PORT

    # A loopback peer may be reached through the relay, any other may not.
    assert client.create_permission("127.0.0.1").message_type == CREATE_PERMISSION | SUCCESS
    refused = client.create_permission("192.0.2.1")
    assert refused.error is not None
    assert refused.error[0] == 403, refused.error

    # With the allocation live: every socket is on loopback, the relay's too.
    sockets = open_sockets(coturn.process.pid)
    assert sockets
    locals_ = [proc_address(local) for _, local, _ in sockets]
    assert (ipaddress.ip_address("127.0.0.1"), relay_port) in locals_
    for table, local, remote in sockets:
        local_host, _ = proc_address(local)
        remote_host, _ = proc_address(remote)
        assert local_host.is_loopback, (table, local_host)
        assert remote_host.is_loopback or remote_host.is_unspecified, (table, remote_host)


def refused_cases(coturn: Coturn) -> dict[str, tuple[str, str]]:
    """(username, credential) pairs that coturn must refuse."""
    (good,) = coturn.config().servers_for("peer-alice", time.time())
    (expired,) = coturn.config(ttl=600).servers_for("peer-alice", time.time() - 660)
    other = good["username"].replace("peer-alice", "peer-mallory")
    return {
        "wrong secret": (
            good["username"],
            turn_credential("not-" + coturn.secret, good["username"]),
        ),
        "another username": (other, good["credential"]),
        "expired": (expired["username"], expired["credential"]),
    }


CASES = ["wrong secret", "another username", "expired"]


@pytest.mark.parametrize("case", CASES)
def test_bad_credentials_are_refused(coturn: Coturn, client: TurnClient, case: str) -> None:
    username, credential = refused_cases(coturn)[case]
    if case == "expired":
        assert int(username.split(":")[0]) < time.time() - 30
        # Signed with the right secret: only the expiry is wrong.
        assert credential == turn_credential(coturn.secret, username)

    response = client.allocate(username, credential)

    assert response.error is not None, f"{case}: allocated {response.attributes}"
    assert response.error[0] == 401, response.error
    assert XOR_RELAYED_ADDRESS not in response.attributes


# -y: two allocations sending to each other through their relays;
# -c: no extra "RTCP" allocation; -n 1: one message each.
UCLIENT_FLAGS = ("-y", "-c", "-n", "1", "-m", "1", "127.0.0.1")


def uclient(coturn: Coturn, username: str, credential: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [coturn.uclient, "-p", str(coturn.port), "-u", username, "-w", credential, *UCLIENT_FLAGS],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=15,
        check=False,
    )


def test_uclient_relays_with_handed_out_credentials(coturn: Coturn) -> None:
    (server,) = coturn.config().servers_for("peer-bob", time.time())

    run = uclient(coturn, server["username"], server["credential"])

    assert run.returncode == 0, f"{run.stdout}\n{coturn.log_tail()}"
    totals = re.findall(
        r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)$", run.stdout, re.M
    )
    assert totals, run.stdout
    sent, received = map(int, totals[-1])
    assert sent > 0
    assert received == sent, run.stdout


@pytest.mark.parametrize("case", CASES)
def test_uclient_is_refused_bad_credentials(coturn: Coturn, case: str) -> None:
    username, credential = refused_cases(coturn)[case]

    run = uclient(coturn, username, credential)

    assert run.returncode != 0, run.stdout
    assert "Cannot complete Allocation" in run.stdout, run.stdout
    # The refusal was coturn's: it is up and answering.
    assert coturn.process.poll() is None
    assert answers_binding(coturn.port)
