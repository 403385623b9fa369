"""
TLS of ``ssl:`` endpoints: the profiles, the hardening of what endpoint
strings make, and a real ``twistd rtcsignal`` scanned by sslyze.

sslyze pins an older cryptography than the project's pyOpenSSL needs, so it
lives in its own virtualenv, ``.venv-sslyze`` (``make sslyze`` makes it;
``make test`` does so first).  Set ``SSLYZE`` to use another sslyze.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from OpenSSL import SSL
from twisted.internet import reactor
from twisted.internet.endpoints import SSL4ServerEndpoint, TCP4ServerEndpoint, serverFromString
from twisted.python import usage

from twisted_signal.devcert import write_dev_certificate
from twisted_signal.tap import Options
from twisted_signal.tls import PROFILES, harden_context_factory, harden_endpoint

from .support.twistd import Spawn, free_port

pytestmark = pytest.mark.process

ROOT = Path(__file__).resolve().parent.parent
SSLYZE = Path(os.environ.get("SSLYZE") or ROOT / ".venv-sslyze" / "bin" / "sslyze")

# A 2048-bit group (RFC 7919 ffdhe2048), as Mozilla's generator hands out.
FFDHE2048 = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return write_dev_certificate(tmp_path_factory.mktemp("certs"))


def ssl_string(certs: tuple[Path, Path], port: int = 0, extra: str = "") -> str:
    key, cert = certs
    return f"ssl:{port}:interface=127.0.0.1:privateKey={key}:certKey={cert}{extra}"


def tls12_ciphers(context: SSL.Context) -> set[str]:
    """
    The TLS 1.2 suites a context offers (OpenSSL names; TLS 1.3 ones left out).
    """
    return {name for name in SSL.Connection(context).get_cipher_list() if "_" not in name}


def handshake(server: SSL.Context, version: int) -> str | None:
    """
    The protocol a client limited to `version` agrees with `server` on, in
    memory; None if the handshake fails.
    """
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_min_proto_version(version)
    client_context.set_max_proto_version(version)
    client_context.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    accepting = SSL.Connection(server, None)
    accepting.set_accept_state()
    for _ in range(10):
        finished = 0
        for one, other in ((client, accepting), (accepting, client)):
            try:
                one.do_handshake()
                finished += 1
            except SSL.WantReadError:
                pass
            except SSL.Error:
                return None
            with contextlib.suppress(SSL.WantReadError):
                other.bio_write(one.bio_read(65536))
        if finished == 2:
            return client.get_protocol_version_name()
    return None


# The profiles are Mozilla's.


def test_profiles_name_mozillas_intermediate_and_modern_suites_and_curves() -> None:
    intermediate, modern = PROFILES["intermediate"], PROFILES["modern"]
    assert intermediate.minimum_version == SSL.TLS1_2_VERSION
    assert modern.minimum_version == SSL.TLS1_3_VERSION
    assert len(intermediate.ciphers) == 9
    assert all("GCM" in c or "CHACHA20" in c for c in intermediate.ciphers)
    assert modern.ciphers == ()
    assert intermediate.groups == modern.groups == ("X25519", "prime256v1", "secp384r1")


def test_profiles_match_the_mozilla_configuration_bundled_with_sslyze() -> None:
    venv = require_sslyze().parent.parent
    bundled = sorted(venv.glob("lib/python*/site-packages/sslyze/mozilla_tls_profile/5.7.json"))
    assert bundled, f"no Mozilla profile 5.7 in {venv}: the profiles need a review"
    profiles = json.loads(bundled[0].read_text())
    for name, profile in PROFILES.items():
        mozilla = profiles["configurations"][name]
        assert set(profile.ciphers) == set(mozilla["ciphers"]["openssl"]), name
        assert set(profile.groups) == set(mozilla["tls_curves"]), name
        versions = {SSL.TLS1_2_VERSION: ["TLSv1.2", "TLSv1.3"], SSL.TLS1_3_VERSION: ["TLSv1.3"]}
        assert versions[profile.minimum_version] == mozilla["tls_versions"], name


# Hardening what endpoint strings make.


def test_an_ssl_endpoint_string_serves_only_the_intermediate_suites(
    certs: tuple[Path, Path],
) -> None:
    endpoint = serverFromString(reactor, ssl_string(certs))
    assert isinstance(endpoint, SSL4ServerEndpoint)
    before = tls12_ciphers(endpoint._sslContextFactory.getContext())
    # Twisted's defaults: more than the profile allows (CBC, CCM).
    assert not before <= set(PROFILES["intermediate"].ciphers)

    hardened = serverFromString(reactor, ssl_string(certs))
    assert harden_endpoint(hardened) is hardened
    context = hardened._sslContextFactory.getContext()
    assert tls12_ciphers(context) == set(PROFILES["intermediate"].ciphers)
    assert handshake(context, SSL.TLS1_2_VERSION) == "TLSv1.2"
    assert handshake(context, SSL.TLS1_1_VERSION) is None


def test_modern_serves_tls_1_3_only(certs: tuple[Path, Path]) -> None:
    endpoint = harden_endpoint(serverFromString(reactor, ssl_string(certs)), "modern")
    context = endpoint._sslContextFactory.getContext()
    assert handshake(context, SSL.TLS1_3_VERSION) == "TLSv1.3"
    assert handshake(context, SSL.TLS1_2_VERSION) is None


def test_what_the_endpoint_string_said_is_kept(certs: tuple[Path, Path], tmp_path: Path) -> None:
    dh = tmp_path / "dh.pem"
    dh.write_bytes(FFDHE2048)
    chain = certs[1]
    extra = f":extraCertChain={chain}:dhParameters={dh}"
    endpoint = harden_endpoint(serverFromString(reactor, ssl_string(certs, extra=extra)))
    factory = endpoint._sslContextFactory
    assert factory.dhParameters is not None
    assert factory.dhParameters._dhFile.path == str(dh)
    assert len(factory.extraCertChain) == 1
    assert factory.certificate is not None and factory.privateKey is not None


def test_other_endpoints_are_left_alone() -> None:
    endpoint = serverFromString(reactor, "tcp:0:interface=127.0.0.1")
    assert harden_endpoint(endpoint) is endpoint
    assert isinstance(endpoint, TCP4ServerEndpoint)


def test_a_factory_that_does_not_cache_its_context_is_refused() -> None:
    class Fresh:
        def getContext(self) -> SSL.Context:
            return SSL.Context(SSL.TLS_SERVER_METHOD)

    with pytest.raises(TypeError, match="new context each time"):
        harden_context_factory(Fresh())


def test_an_unknown_profile_is_a_value_error(certs: tuple[Path, Path]) -> None:
    with pytest.raises(ValueError, match="unknown TLS profile 'old'"):
        harden_endpoint(serverFromString(reactor, ssl_string(certs)), "old")


def test_the_option_defaults_to_intermediate() -> None:
    options = Options()
    options.parseOptions([])
    assert options["tls-profile"] == "intermediate"
    options = Options()
    options.parseOptions(["--tls-profile", "modern"])
    assert options["tls-profile"] == "modern"


@pytest.mark.parametrize("value", ["old", "Modern", ""])
def test_a_bad_tls_profile_is_a_one_line_usage_error(value: str) -> None:
    with pytest.raises(usage.UsageError) as info:
        Options().parseOptions(["--tls-profile", value])
    message = str(info.value)
    assert message == f"--tls-profile: expected intermediate or modern, got {value!r}"


# A real server, scanned.


def require_sslyze() -> Path:
    if SSLYZE.exists():
        return SSLYZE
    message = f"sslyze not found at {SSLYZE}: run `make sslyze`"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def scan(port: int, profile: str, folder: Path) -> tuple[dict[str, Any], dict[str, str]]:
    """
    sslyze's results for 127.0.0.1:`port`, and the issues its compliance
    check against Mozilla's `profile` found (by name).
    """
    out = folder / f"sslyze-{profile}.json"
    done = subprocess.run(
        [
            str(require_sslyze()),
            f"--json_out={out}",
            f"--mozilla_config={profile}",
            f"127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report = done.stdout
    assert "COMPLIANCE AGAINST TLS CONFIGURATION" in report, report + done.stderr
    compliance = report.split("COMPLIANCE AGAINST TLS CONFIGURATION", 1)[1]
    issues = {}
    for line in compliance.splitlines():
        name, sep, text = line.strip().removeprefix("* ").partition(": ")
        if line.strip().startswith("* ") and sep:
            issues[name] = text
    assert ("FAILED" in compliance) == bool(issues), report
    result: dict[str, Any] = json.loads(out.read_text())["server_scan_results"][0]
    assert result["scan_status"] == "COMPLETED", report
    return result["scan_result"], issues


def accepted(scan_result: dict[str, Any], version: str) -> set[str]:
    suites = scan_result[f"{version}_cipher_suites"]
    assert suites["status"] == "COMPLETED", suites
    return {s["cipher_suite"]["name"] for s in suites["result"]["accepted_cipher_suites"]}


OLD_VERSIONS = ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1")
# IANA names of the intermediate suites an EC certificate can serve.
INTERMEDIATE_EC_SUITES = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
}
TLS13_SUITES = {"TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
CURVES = {"X25519", "secp256r1", "secp384r1"}  # sslyze's names for X25519, prime256v1, secp384r1


def check_scan(scan_result: dict[str, Any], issues: dict[str, str], tls12: set[str]) -> None:
    for version in OLD_VERSIONS:
        assert accepted(scan_result, version) == set(), version
    assert accepted(scan_result, "tls_1_2") == tls12
    assert accepted(scan_result, "tls_1_3") == TLS13_SUITES
    curves = scan_result["elliptic_curves"]["result"]["supported_curves"]
    assert {c["name"] for c in curves} == CURVES
    # The test certificate is self-signed: that is the only complaint.
    assert set(issues) == {"certificate_path_validation"}, issues


@pytest.mark.parametrize(
    ("profile", "tls12"), [("intermediate", INTERMEDIATE_EC_SUITES), ("modern", set())]
)
def test_sslyze_finds_the_server_compliant_with_its_profile(
    spawn: Spawn, certs: tuple[Path, Path], tmp_path: Path, profile: str, tls12: set[str]
) -> None:
    require_sslyze()
    port = free_port()
    spawn("--endpoint", ssl_string(certs, port), "--tls-profile", profile)
    scan_result, issues = scan(port, profile, tmp_path)
    check_scan(scan_result, issues, tls12)


def test_scanned_with_twisteds_defaults_the_check_fails(
    certs: tuple[Path, Path], tmp_path: Path
) -> None:
    """
    The check above can fail: a plain Twisted ``ssl:`` listener (no
    profile) is found not compliant, for its suites and curves.
    """
    require_sslyze()
    port = free_port()
    code = (
        "import sys; from twisted.internet import reactor; "
        "from twisted.internet.endpoints import serverFromString; "
        "from twisted.internet.protocol import Factory, Protocol; "
        "serverFromString(reactor, sys.argv[1]).listen(Factory.forProtocol(Protocol)); "
        "reactor.callLater(60, reactor.stop); reactor.run()"
    )
    process = subprocess.Popen([sys.executable, "-c", code, ssl_string(certs, port)])
    try:
        wait_listening(port, process)
        scan_result, issues = scan(port, "intermediate", tmp_path)
    finally:
        process.kill()
        process.wait()
    assert {"ciphers", "tls_curves"} <= set(issues), issues
    assert not accepted(scan_result, "tls_1_2") <= INTERMEDIATE_EC_SUITES


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    import socket
    import time

    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        assert process.poll() is None, "the listener exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    pytest.fail(f"nothing listening on {port}")


def test_under_twistd_a_bad_tls_profile_is_one_line_and_a_failure(spawn: Spawn) -> None:
    twistd = spawn("--tls-profile", "old", ready=False)
    assert twistd.wait_exit() != 0, twistd.output
    output = (twistd.stdout + twistd.stderr).strip()
    assert output.splitlines() == [
        "twistd rtcsignal: --tls-profile: expected intermediate or modern, got 'old' "
        "(see: twistd rtcsignal --help)"
    ], output


@pytest.mark.parametrize("profile", ["intermediate", "modern"])
def test_every_ssl_listener_of_the_service_is_hardened(
    certs: tuple[Path, Path], profile: str
) -> None:
    from twisted.application.internet import StreamServerEndpointService

    from twisted_signal import SignalingService

    service = SignalingService(
        endpoints=[ssl_string(certs), "tcp:0:interface=127.0.0.1"],
        metrics_endpoints=[ssl_string(certs)],
        tls_profile=profile,
    )
    listeners = [s for s in service if isinstance(s, StreamServerEndpointService)]
    contexts = [
        s.endpoint._sslContextFactory.getContext()
        for s in listeners
        if isinstance(s.endpoint, SSL4ServerEndpoint)
    ]
    assert len(listeners) == 3
    assert len(contexts) == 2
    for context in contexts:
        if profile == "modern":
            assert handshake(context, SSL.TLS1_2_VERSION) is None
        else:
            assert tls12_ciphers(context) == set(PROFILES["intermediate"].ciphers)
            assert handshake(context, SSL.TLS1_2_VERSION) == "TLSv1.2"
        assert handshake(context, SSL.TLS1_3_VERSION) == "TLSv1.3"
