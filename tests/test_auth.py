"""
Token verification (SPEC 5.1) and the token-minting command, without I/O.
"""

from __future__ import annotations

import base64
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from twisted_signal import Unauthorized
from twisted_signal.auth import TokenVerifier, token_from_request
from twisted_signal.token import main, mint

pytestmark = pytest.mark.pure

SECRET = "correct horse battery staple, long enough for HS256"


def token(claims: dict[str, Any], key: Any = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def now() -> int:
    return int(time.time())


verifier = TokenVerifier.from_secret(SECRET, leeway=5)


def test_valid_token_gives_its_claims() -> None:
    claims = verifier.verify(token({"room": "demo", "sub": "alice", "exp": now() + 60}), "demo")
    assert claims["sub"] == "alice"
    assert claims["room"] == "demo"


def test_any_room_token() -> None:
    assert verifier.verify(token({"room": "*"}), "whatever")["room"] == "*"


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: None, "no token"),
        (lambda: "", "no token"),
        (lambda: "not.a.jwt", "invalid token"),
        (lambda: "garbage", "invalid token"),
        (lambda: token({"room": "demo"}, key="another secret, also long enough"), "invalid token"),
        (lambda: token({"room": "demo", "exp": now() - 60}), "token expired"),
        (lambda: token({"room": "demo", "nbf": now() + 60}), "token not yet valid"),
        (lambda: token({"sub": "alice"}), "token has no room claim"),
        (lambda: token({"room": "other"}), "token is for another room"),
        (lambda: token({"room": ["demo"]}), "token is for another room"),
    ],
)
def test_bad_tokens_are_unauthorized(make: Any, reason: str) -> None:
    bad = make()
    with pytest.raises(Unauthorized) as raised:
        verifier.verify(bad, "demo")
    assert str(raised.value) == reason
    if bad:
        assert bad not in str(raised.value)


def test_alg_none_is_refused() -> None:
    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header, payload = b64(b'{"alg":"none"}'), b64(b'{"room":"demo"}')
    unsigned = f"{header}.{payload}."
    with pytest.raises(Unauthorized):
        verifier.verify(unsigned, "demo")


def test_leeway_tolerates_small_skew() -> None:
    assert verifier.verify(token({"room": "demo", "exp": now() - 2}), "demo")


def test_rs256_and_es256_public_keys() -> None:
    for private in (rsa.generate_private_key(65537, 2048), ec.generate_private_key(ec.SECP256R1())):
        pem = private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        public = TokenVerifier.from_public_key(pem)
        algorithm = public.algorithms[0]
        good = token({"room": "demo", "sub": "bob"}, private, algorithm)
        assert public.verify(good, "demo")["sub"] == "bob"
        # An HS256 token signed with the PEM text as secret must not pass.
        forged = jwt.encode({"room": "demo"}, "x" * 64, algorithm="HS256")
        with pytest.raises(Unauthorized):
            public.verify(forged, "demo")


def test_repr_hides_the_key() -> None:
    assert SECRET not in repr(verifier)


def test_token_from_query_then_cookie() -> None:
    assert token_from_request({"token": ["q"]}, {"cookie": "token=c"}) == "q"
    assert token_from_request({}, {"cookie": "a=1; token=c; b=2"}) == "c"
    assert token_from_request({}, {"cookie": 'token="quoted"'}) == "quoted"
    assert token_from_request({}, {"cookie": "tokens=no"}) is None
    assert token_from_request({}, {}) is None


def test_mint_round_trips() -> None:
    minted = mint(SECRET, "HS256", "demo", sub="alice", ttl=60)
    claims = verifier.verify(minted, "demo")
    assert claims["sub"] == "alice"
    assert claims["exp"] - claims["iat"] == 60


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    assert main(["--secret-file", str(secret_file), "--room", "demo", "--sub", "alice"]) == 0
    printed = capsys.readouterr().out.strip()
    assert verifier.verify(printed, "demo")["sub"] == "alice"


@pytest.mark.process
def test_command_line_usage_errors_are_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "twisted_signal.token", "--secret", "s", "--room", "bad room"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "is not a room name" in result.stderr
