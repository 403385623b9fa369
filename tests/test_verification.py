"""
The verification code's derivation and exchange (SPEC 5.8), against the
vectors the room page's JavaScript is tested with too.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twisted_signal.verification import (
    Verification,
    code_digits,
    commitment,
    derive_code,
    fingerprint_from_der,
    fingerprint_from_sdp,
    fingerprint_to_sdp,
)

pytestmark = pytest.mark.pure

VECTORS: dict[str, Any] = json.loads(
    (Path(__file__).parent / "verification_vectors.json").read_text()
)
CODE = r"\d{4}-\d{4}-\d{4}"
LOW = bytes(range(32))
HIGH = bytes(range(255, 223, -1))


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=lambda v: v["name"])
def test_vectors(vector: dict[str, str]) -> None:
    committer = fingerprint_from_sdp(vector["committer_fingerprint"])
    responder = fingerprint_from_sdp(vector["responder_fingerprint"])
    nonce_c = bytes.fromhex(vector["committer_nonce"])
    nonce_r = bytes.fromhex(vector["responder_nonce"])
    assert commitment(nonce_c).hex() == vector["commitment"]
    assert derive_code(committer, responder, nonce_c, nonce_r) == vector["code"]
    assert derive_code(responder, committer, nonce_c, nonce_r) == vector["code"]


def test_first_vector_by_hand() -> None:
    """
    The first vector, computed here from the documented recipe rather than
    from the module.
    """
    vector = VECTORS["vectors"][0]
    nonce_c = bytes([0x11] * 32)
    nonce_r = bytes([0x22] * 32)
    digest = hashlib.sha256(b"rtcsignal-verify/1 code" + LOW + HIGH + nonce_c + nonce_r).digest()
    bits = int.from_bytes(digest[:5], "big") >> 1
    groups = [(bits >> shift) & 0x1FFF for shift in (26, 13, 0)]
    assert "-".join(str(group + 1000) for group in groups) == vector["code"] == "9055-2466-2379"


@pytest.mark.parametrize("case", VECTORS["digits"], ids=lambda c: c["code"])
def test_digits(case: dict[str, str]) -> None:
    assert code_digits(bytes.fromhex(case["digest"])) == case["code"]


def test_fingerprints() -> None:
    assert fingerprint_from_der(b"certificate") == hashlib.sha256(b"certificate").digest()
    sdp = fingerprint_to_sdp(LOW)
    assert sdp.startswith("00:01:02:") and fingerprint_from_sdp(sdp.lower()) == LOW
    for bad in ("", "00:01", "zz" + sdp[2:], sdp + ":00", sdp.replace(":", "")):
        with pytest.raises(ValueError):
            fingerprint_from_sdp(bad)


def test_transcript() -> None:
    """The exchange sends exactly the documented messages, in order."""
    t = VECTORS["transcript"]
    committer = Verification(
        fingerprint_from_sdp(t["committer_fingerprint"]),
        fingerprint_from_sdp(t["responder_fingerprint"]),
        nonce=bytes.fromhex(t["committer_nonce"]),
    )
    responder = Verification(
        fingerprint_from_sdp(t["responder_fingerprint"]),
        fingerprint_from_sdp(t["committer_fingerprint"]),
        nonce=bytes.fromhex(t["responder_nonce"]),
    )
    assert committer.committer and not responder.committer
    assert responder.start() == []
    sent = committer.start()
    sent += responder.receive(sent[0])
    sent += committer.receive(sent[1])
    assert responder.receive(sent[2]) == []
    assert sent == t["messages"]
    assert committer.state == responder.state == "verified"
    assert committer.code == responder.code == t["code"]
    assert committer.remote_nonce == responder.nonce


def exchange(a: Verification, b: Verification) -> None:
    """Run both sides to the end, each message delivered at once."""
    queue: list[tuple[Verification, str]] = [(b, m) for m in a.start()]
    queue += [(a, m) for m in b.start()]
    while queue:
        to, text = queue.pop(0)
        other = b if to is a else a
        queue += [(other, m) for m in to.receive(text)]


@given(st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32))
def test_honest_ends_agree(one: bytes, two: bytes) -> None:
    a, b = Verification(one, two), Verification(two, one)
    exchange(a, b)
    if one == two:
        assert a.state == b.state == "failed" and a.code is None
    else:
        assert a.state == b.state == "verified"
        assert a.code == b.code and a.code is not None


def test_man_in_the_middle() -> None:
    """
    Someone who terminates DTLS with each end runs two exchanges: whatever
    nonces it picks, it must commit before it sees the honest side's nonce,
    and the codes differ because each end sees other fingerprints.
    """
    alice, bob, mallory_a, mallory_b = (bytes([n]) * 32 for n in (1, 9, 5, 7))
    left = (Verification(alice, mallory_a), Verification(mallory_a, alice))
    right = (Verification(bob, mallory_b), Verification(mallory_b, bob))
    exchange(*left)
    exchange(*right)
    assert left[0].state == right[0].state == "verified"
    assert left[0].code != right[0].code


def test_both_committers_fail_on_timeout() -> None:
    """
    Under a man in the middle both ends may believe they commit first:
    each gets a commitment it did not expect, and fails.
    """
    a = Verification(LOW, HIGH)
    b = Verification(LOW, HIGH)  # it, too, thinks its own is the lower one
    commit_a, commit_b = a.start(), b.start()
    assert a.receive(commit_b[0]) == [] and b.receive(commit_a[0]) == []
    assert a.state == b.state == "failed"


def test_silence_fails_at_the_deadline() -> None:
    a = Verification(HIGH, LOW)
    assert a.start() == []
    a.expire()
    assert a.state == "failed" and a.code is None and a.reason


def test_a_wrong_reveal_fails() -> None:
    committer, responder = Verification(LOW, HIGH), Verification(HIGH, LOW)
    commit = committer.start()[0]
    responder.receive(commit)
    forged = json.dumps({"v": 1, "type": "reveal", "nonce": "00" * 32})
    assert responder.receive(forged) == []
    assert responder.state == "failed" and responder.code is None


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[]",
        json.dumps({"v": 2, "type": "commit", "hash": "00" * 32}),
        json.dumps({"v": 1, "type": "commit", "hash": "00"}),
        json.dumps({"v": 1, "type": "commit", "hash": "zz" * 32}),
        json.dumps({"v": 1, "type": "reveal", "nonce": "00" * 32}),
        json.dumps({"v": 1, "type": "nonce", "nonce": "00" * 32}),
        json.dumps({"v": 1, "type": 3}),
        b"\x00binary",
        json.dumps({"v": 1, "type": "commit", "hash": "00" * 32}).encode(),
        json.dumps({"v": True, "type": "commit", "hash": "00" * 32}),
        json.dumps({"v": 1, "type": "commit", "hash": "00 " * 21 + "0"}),
    ],
)
def test_anything_unexpected_fails(text: Any) -> None:
    responder = Verification(HIGH, LOW)
    responder.start()
    assert responder.receive(text) == []
    assert responder.state == "failed"
    # Nothing brings it back.
    assert responder.receive(json.dumps({"v": 1, "type": "commit", "hash": "00" * 32})) == []
    assert responder.state == "failed"


def test_a_second_commitment_fails() -> None:
    responder = Verification(HIGH, LOW)
    commit = json.dumps({"v": 1, "type": "commit", "hash": "00" * 32})
    assert len(responder.receive(commit)) == 1
    assert responder.receive(commit) == []
    assert responder.state == "failed"


def test_nonces_are_random() -> None:
    assert Verification(LOW, HIGH).nonce != Verification(LOW, HIGH).nonce
    assert len(Verification(LOW, HIGH).nonce) == 32


def test_codes_look_right() -> None:
    a, b = Verification(LOW, HIGH), Verification(HIGH, LOW)
    exchange(a, b)
    assert a.code is not None and re.fullmatch(CODE, a.code)
