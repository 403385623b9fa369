"""
ICE servers and ephemeral TURN credentials (SPEC 5.2), checked against an
independent computation of the TURN REST API password.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from twisted_signal.ice import IceConfig, turn_credential

pytestmark = pytest.mark.pure


def reference_credential(secret: str, username: str) -> str:
    # Written out again on purpose: coturn's use-auth-secret password.
    mac = hmac.HMAC(secret.encode(), username.encode(), hashlib.sha1)
    return base64.standard_b64encode(mac.digest()).decode()


def test_no_option_gives_an_empty_list() -> None:
    assert IceConfig().servers_for("p", 1000.0) == []


def test_plain_urls_are_handed_out_as_one_server() -> None:
    config = IceConfig(urls=("stun:stun.example.org:3478", "stun:127.0.0.1"))
    assert config.servers_for("p", 1000.0) == [
        {"urls": ["stun:stun.example.org:3478", "stun:127.0.0.1"]}
    ]


def test_turn_credentials_are_the_rest_api_form() -> None:
    config = IceConfig(
        urls=("stun:127.0.0.1",),
        turn_uris=("turn:127.0.0.1:3478?transport=udp", "turns:127.0.0.1:5349"),
        turn_secret="north-wind",
        turn_ttl=600,
    )
    servers = config.servers_for("0b0e6c44-8a5a-4b8e-9d0e-2f0d3f1e2a11", 1_700_000_000.9)
    assert servers[0] == {"urls": ["stun:127.0.0.1"]}
    turn = servers[1]
    assert turn["urls"] == ["turn:127.0.0.1:3478?transport=udp", "turns:127.0.0.1:5349"]
    assert turn["username"] == "1700000600:0b0e6c44-8a5a-4b8e-9d0e-2f0d3f1e2a11"
    assert turn["credential"] == reference_credential("north-wind", turn["username"])
    assert turn["credential"].endswith("=")  # padded base64 of 20 bytes


def test_known_vector() -> None:
    # HMAC-SHA1("secret", "1234567890:user"), computed with openssl.
    assert turn_credential("secret", "1234567890:user") == "tHbOsg6j8vjx6g3+R1ACZpLMHG0="


def test_expiry_follows_the_ttl() -> None:
    config = IceConfig(turn_uris=("turn:127.0.0.1",), turn_secret="s", turn_ttl=86400)
    username = config.servers_for("p", 5000.0)[0]["username"]
    assert int(username.split(":")[0]) == 5000 + 86400


def test_repr_hides_the_secret() -> None:
    assert "north-wind" not in repr(IceConfig(turn_uris=("turn:x",), turn_secret="north-wind"))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"turn_secret": "s"},
        {"turn_uris": ("turn:x",)},
        {"turn_uris": ("turn:x",), "turn_secret": "s", "turn_ttl": 0},
    ],
)
def test_inconsistent_settings_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        IceConfig(**kwargs)  # type: ignore[arg-type]
