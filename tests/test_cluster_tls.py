"""
``rediss://`` and Redis passwords against a real ``redis-server``: one
server with a TLS port (client certificates required, as Redis asks by
default), a plain port, a password and an ACL user, all made here with a
CA of the test's own.
"""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.logger import LogLevel, capturedLogs
from twisted.python import usage

from twisted_signal.cluster.node import ClusterRooms
from twisted_signal.cluster.resp import RedisClient, RedisRefused, RedisUnavailable, encode
from twisted_signal.tap import Options

from .support import sleep
from .support.cluster import Redis
from .support.twistd import Spawn, free_port

# One worker runs the whole module, so that its module-scoped redis-server over TLS
# is made once, not once per xdist worker.
pytestmark = [pytest.mark.process, pytest.mark.xdist_group("cluster_tls")]

PASSWORD = "s3cret/with:odd@chars"
USER, USER_PASSWORD = "alice", "alice-pw"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    *,
    usage: x509.ObjectIdentifier | None = None,
    ip: str | None = None,
) -> x509.Certificate:
    """A CA (no `issuer`) or a leaf certificate signed by `issuer`."""
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if ip is not None:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@dataclass
class Files:
    ca: Path
    other_ca: Path
    cert: Path
    key: Path


def _write(folder: Path) -> tuple[Files, Path, Path]:
    """A CA, a server certificate for 127.0.0.1 only, a client certificate."""

    def save(name: str, *items: x509.Certificate | ec.EllipticCurvePrivateKey) -> Path:
        path = folder / name
        path.write_bytes(
            b"".join(
                item.public_bytes(serialization.Encoding.PEM)
                if isinstance(item, x509.Certificate)
                else item.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
                for item in items
            )
        )
        return path

    ca_key, other_key, server_key, client_key = _key(), _key(), _key(), _key()
    ca = _certificate("test CA", ca_key)
    server = _certificate(
        "redis", server_key, (ca, ca_key), usage=ExtendedKeyUsageOID.SERVER_AUTH, ip="127.0.0.1"
    )
    client = _certificate(
        "rtcsignal", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    files = Files(
        ca=save("ca.pem", ca),
        other_ca=save("other-ca.pem", _certificate("other CA", other_key)),
        cert=save("client.pem", client),
        key=save("client.key", client_key),
    )
    return files, save("server.pem", server), save("server.key", server_key)


@dataclass
class Server:
    redis: Redis
    tls_port: int
    files: Files

    def rediss(self, host: str = "127.0.0.1", *, ca: Path | None = None, db: int = 0) -> str:
        f = self.files
        query = f"ca={ca or f.ca}&cert={f.cert}&key={f.key}"
        return f"rediss://:{_quoted(PASSWORD)}@{host}:{self.tls_port}/{db}?{query}"

    def redis_url(self, userinfo: str) -> str:
        return f"redis://{userinfo}127.0.0.1:{self.redis.port}/0"


def _quoted(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("redis-tls")
    files, cert, key = _write(folder)
    tls_port = free_port()
    args = ["--tls-port", str(tls_port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    args += ["--tls-ca-cert-file", str(files.ca), "--requirepass", PASSWORD]
    args += ["--user", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all"]
    redis = Redis(folder, args=tuple(args))
    redis.start()
    try:
        yield Server(redis, tls_port, files)
    finally:
        redis.stop()


def _client(url: str) -> RedisClient:
    from twisted.internet import reactor

    return RedisClient(url, reactor, timeout=5)


@pytest_twisted.inlineCallbacks
def test_tls_with_the_right_ca_and_a_client_certificate(server: Server) -> Any:
    client = _client(server.rediss(db=3))
    try:
        assert (yield client.execute("SET", "k", "over tls")) == "OK"
        assert (yield client.execute("GET", "k")) == b"over tls"
        # It is db 3, and a new connection authenticates and selects it again.
        assert (yield client.execute("CLIENT", "INFO")).decode().count(" db=3 ") == 1
        client.drop()
        assert (yield client.execute("GET", "k")) == b"over tls"
    finally:
        client.close()


@pytest_twisted.inlineCallbacks
def test_without_ca_the_system_s_cas_are_trusted(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> Any:
    url = server.rediss().replace(f"ca={server.files.ca}&", "")
    client = _client(url)  # the system's CAs do not know the test's CA
    with pytest.raises(RedisUnavailable, match="does not verify with the trusted CAs"):
        yield client.execute("PING")
    client.close()
    # OpenSSL takes the system's CAs from SSL_CERT_FILE when it is set.
    monkeypatch.setenv("SSL_CERT_FILE", str(server.files.ca))
    client = _client(url)
    try:
        assert (yield client.execute("PING")) == "PONG"
    finally:
        client.close()


@pytest.mark.parametrize(
    ("case", "why"),
    [
        ("other CA", "TLS: the server's certificate does not verify with the trusted CAs"),
        ("host name", "TLS: the server's certificate is not for this host name or address"),
        ("no client certificate", "TLS: the server wants a client certificate"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_tls_that_does_not_verify_fails_and_says_why_once(
    server: Server, case: str, why: str
) -> Any:
    url = {
        "other CA": server.rediss(ca=server.files.other_ca),
        "host name": server.rediss("localhost"),
        "no client certificate": server.rediss().split("&cert=")[0],
    }[case]
    client = _client(url)
    try:
        with capturedLogs() as events:
            for _ in range(3):
                with pytest.raises(RedisUnavailable) as info:
                    yield client.execute("PING")
                assert why in str(info.value)
                assert PASSWORD not in str(info.value)
        logged = [e for e in events if e.get("why", "").startswith("TLS")]
        assert len(logged) == 1, logged
        assert logged[0]["log_level"] == LogLevel.error
        assert ":***@" in logged[0]["url"]
    finally:
        client.close()


@pytest.mark.parametrize(
    ("userinfo", "answer"),
    [
        (f":{_quoted(PASSWORD)}@", None),
        (f"{USER}:{USER_PASSWORD}@", None),
        (":wrong@", "Redis refused the user name or password"),
        (f"{USER}:{_quoted(PASSWORD)}@", "Redis refused the user name or password"),
        ("", "Redis wants a password"),
    ],
)
@pytest_twisted.inlineCallbacks
def test_passwords_and_acl_users(server: Server, userinfo: str, answer: str | None) -> Any:
    client = _client(server.redis_url(userinfo))
    try:
        with capturedLogs() as events:
            if answer is None:
                assert (yield client.execute("PING")) == "PONG"
                client.drop()  # and again, on a new connection
                assert (yield client.execute("PING")) == "PONG"
            else:
                for _ in range(2):
                    with pytest.raises(RedisUnavailable) as info:
                        yield client.execute("PING")
                    assert answer in str(info.value)
        logged = [e["why"] for e in events if "why" in e]
        assert logged == ([] if answer is None else [logged[0]])
        assert all(PASSWORD not in text and "wrong" not in text for text in logged)
    finally:
        client.close()


@pytest_twisted.inlineCallbacks
def test_a_node_with_the_password_from_a_file_over_tls(server: Server, tmp_path: Path) -> Any:
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    options = Options()
    url = server.rediss().replace(f":{_quoted(PASSWORD)}@", "")
    options.parseOptions(["--redis", url, "--redis-password-file", str(secret)])
    node = ClusterRooms(redis_url=options["redis"], lease=1.0, node_id="tls-node")
    node.startService()
    try:
        for _ in range(50):
            if node.node._registered:
                break
            yield sleep(0.1)
        assert node.node._registered
        assert (yield node.node.redis.execute("EXISTS", node.node.key("node", "tls-node"))) == 1
    finally:
        yield node.stopService()
        yield sleep(0)


def test_unusable_tls_files_are_usage_errors(server: Server, tmp_path: Path) -> None:
    files = server.files
    other_key = tmp_path / "other.key"
    other_key.write_bytes(
        _key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        _key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pw"),
        )
    )
    both = tmp_path / "client-and-key.pem"
    both.write_bytes(files.cert.read_bytes() + files.key.read_bytes())
    base = f"rediss://:{_quoted(PASSWORD)}@127.0.0.1:{server.tls_port}/0?"
    for query, error in [
        (f"ca={tmp_path}/missing.pem", f"ca={tmp_path}/missing.pem: No such file or directory"),
        (f"ca={files.key}", "no PEM certificate in it"),
        (f"cert={files.cert}", f"cert={files.cert}: no usable PEM private key in it (give"),
        (f"cert={files.cert}&key={encrypted}", f"key={encrypted}: it is encrypted"),
        (f"cert={files.cert}&key={other_key}", "this key is not the key of cert="),
        (f"key={files.key}", "key= needs cert="),
    ]:
        with pytest.raises(usage.UsageError) as info:
            Options().parseOptions(["--redis", base + query])
        assert error in str(info.value)
        assert PASSWORD not in str(info.value) and "\n" not in str(info.value)
    # The key may follow the certificate in its file.
    Options().parseOptions(["--redis", f"{base}cert={both}"])
    # The short names and redis-py's name the same files.
    options = Options()
    options.parseOptions(
        ["--redis", f"{base}ssl_ca_certs={files.ca}&ssl_certfile={files.cert}&key={files.key}"]
    )
    assert (options["redis"].ca, options["redis"].cert) == (str(files.ca), str(files.cert))


@pytest_twisted.inlineCallbacks
def test_a_node_whose_redis_certificate_does_not_verify_says_so_once(server: Server) -> Any:
    node = ClusterRooms(redis_url=server.rediss(ca=server.files.other_ca), lease=0.6)
    with capturedLogs() as events:
        node.startService()
        try:
            yield sleep(1.5)  # about 7 heartbeats and 3 reads, all refused
        finally:
            yield node.stopService()
            yield sleep(0)
    texts = [e.get("why", "") for e in events if e.get("log_level") >= LogLevel.warn]
    # One line from each of its two connections (commands, stream reader).
    assert texts.count(texts[0]) == len(texts) == 2, texts
    assert texts[0].startswith("TLS: the server's certificate does not verify with the trusted CAs")
    assert not node.node._registered


@pytest_twisted.inlineCallbacks
def test_an_unreachable_redis_is_logged_once_and_so_is_its_return(tmp_path: Path) -> Any:
    redis = Redis(tmp_path)
    client = _client(redis.url)
    try:
        with capturedLogs() as events:
            for _ in range(3):
                with pytest.raises(RedisRefused):
                    yield client.execute("PING")
            redis.start()
            assert (yield client.execute("PING")) == "PONG"
        lines = [(e["log_level"], e.get("why")) for e in events if e["log_format"][:6] == "Redis "]
        assert lines == [(LogLevel.warn, lines[0][1]), (LogLevel.info, None)], lines
        assert "refused" in str(lines[0][1])
        # A password for a Redis that has none is a mistake worth saying.
        with_password = _client(redis.url.replace("//", "//:pw@"))
        with pytest.raises(RedisRefused) as info:
            yield with_password.execute("PING")
        assert "Redis has no password set, but one was given: ERR AUTH" in str(info.value)
        with_password.close()
    finally:
        client.close()
        redis.stop()


@pytest_twisted.inlineCallbacks
def test_a_tls_server_that_never_answers_times_out() -> Any:
    import socket

    from twisted.internet import reactor

    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        client = RedisClient(f"rediss://127.0.0.1:{port}/0", reactor, timeout=0.3)
        with pytest.raises(RedisRefused) as info:
            yield client.execute("PING", timeout=5)
        assert "no answer in time while setting up the connection" in str(info.value)
        client.close()


def test_twistd_serves_with_rediss_and_a_password_file(
    server: Server, spawn: Spawn, tmp_path: Path
) -> None:
    import socket

    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD)
    url = server.rediss().replace(f":{_quoted(PASSWORD)}@", "")
    node = spawn("--redis", url, "--redis-password-file", str(secret), "--cluster-lease", "1")
    deadline = time.monotonic() + 15
    keys = b""
    with socket.create_connection(("127.0.0.1", server.redis.port), timeout=5) as s:
        s.sendall(encode(("AUTH", PASSWORD)))
        assert s.recv(64) == b"+OK\r\n"
        while b"rtcsignal:node:" not in keys and time.monotonic() < deadline:
            time.sleep(0.1)
            s.sendall(encode(("KEYS", "rtcsignal:node:*")))
            keys = s.recv(4096)
    assert b"rtcsignal:node:" in keys, node.output
    assert PASSWORD not in node.output


def test_twistd_with_an_unreadable_ca_is_one_line(spawn: Spawn, tmp_path: Path) -> None:
    url = f"rediss://:{_quoted(PASSWORD)}@127.0.0.1:1/0?ca={tmp_path}/missing.pem"
    twistd = spawn("--redis", url, ready=False)
    assert twistd.wait_exit() != 0, twistd.output
    output = (twistd.stdout + twistd.stderr).strip()
    assert output.splitlines() == [output], output
    assert f"ca={tmp_path}/missing.pem: No such file or directory" in output
    assert "Traceback" not in output and _quoted(PASSWORD) not in output
