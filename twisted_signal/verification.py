"""
Verification codes for a peer connection (SPEC 5.8), without any I/O.

Both ends of a WebRTC peer connection derive a short code from the two
DTLS certificates actually used on it and from a nonce of each side, so the
people in a call can compare the code out loud.  Nobody who terminates DTLS
in between (a signaling server that swaps the SDP fingerprints and relays
the media) can make the codes equal, because each end then sees a different
pair of fingerprints.

The nonces are exchanged commit-then-reveal, as in ZRTP (RFC 6189
§4.4.1.1) and Matrix's SAS: the side whose own fingerprint is lower in byte
order (the *committer*) sends a hash of its nonce first, the other side (the
*responder*) answers with its own nonce only once that commitment arrived,
and the committer then reveals its nonce.  Neither side can choose its
nonce after seeing the other's, so a man in the middle who picks
certificates cannot grind the 39-bit code.

`Verification` is the exchange for one data channel: feed it the channel's
events (`start` when it opens, `receive` for each text message, `expire`
when the 15 s deadline passes) and send what it returns.  The derivation is
documented in ``docs/verification.md``; ``tests/verification_vectors.json``
holds vectors shared with the room page's JavaScript.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from typing import Any, Literal

__all__ = [
    "CHANNEL_ID",
    "CHANNEL_LABEL",
    "DEADLINE",
    "VERSION",
    "Verification",
    "code_digits",
    "commitment",
    "derive_code",
    "fingerprint_from_der",
    "fingerprint_from_sdp",
    "fingerprint_to_sdp",
]

VERSION = 1
CHANNEL_LABEL = "rtcsignal-verify"
"""The label of the data channel the exchange runs on."""
CHANNEL_ID = 0
"""Its fixed id: the channel is created ``negotiated`` with the connection."""
DEADLINE = 15.0
"""Seconds after the channel opened by which the exchange must be done."""

_COMMIT_LABEL = b"rtcsignal-verify/1 commit"
_CODE_LABEL = b"rtcsignal-verify/1 code"
_NONCE_BYTES = 32
_FINGERPRINT_BYTES = 32

State = Literal["pending", "verified", "failed"]


def fingerprint_from_der(der: bytes) -> bytes:
    """
    The SHA-256 fingerprint of a DER certificate, as 32 bytes: the value an
    SDP ``a=fingerprint:sha-256`` line carries.
    """
    return hashlib.sha256(der).digest()


def fingerprint_from_sdp(value: str) -> bytes:
    """
    The bytes of a fingerprint written as in SDP: ``"AB:CD:..."`` (case
    does not matter).  Raises `ValueError` unless it is 32 bytes.
    """
    parts = value.strip().split(":")
    if len(parts) != _FINGERPRINT_BYTES or any(len(part) != 2 for part in parts):
        raise ValueError(f"not a SHA-256 fingerprint: {value!r}")
    return bytes.fromhex("".join(parts))


def fingerprint_to_sdp(fingerprint: bytes) -> str:
    """The SDP form of a fingerprint: upper-case hex pairs joined by colons."""
    return ":".join(f"{byte:02X}" for byte in fingerprint)


def commitment(nonce: bytes) -> bytes:
    """What the committer sends first: SHA-256 of a label and its nonce."""
    return hashlib.sha256(_COMMIT_LABEL + nonce).digest()


def code_digits(digest: bytes) -> str:
    """
    Matrix's decimal SAS: the first 39 bits of `digest` as three numbers of
    13 bits, each plus 1000, written ``NNNN-NNNN-NNNN``.
    """
    b = digest[:5]
    first = (b[0] << 5 | b[1] >> 3) + 1000
    second = ((b[1] & 0x07) << 10 | b[2] << 2 | b[3] >> 6) + 1000
    third = ((b[3] & 0x3F) << 7 | b[4] >> 1) + 1000
    return f"{first:04d}-{second:04d}-{third:04d}"


def derive_code(
    fingerprint_a: bytes, fingerprint_b: bytes, committer_nonce: bytes, responder_nonce: bytes
) -> str:
    """
    The code both ends show: SHA-256 over a versioned label, the two
    fingerprints in byte order, the committer's nonce and the responder's
    nonce; then `code_digits`.  The order of the fingerprint arguments does
    not matter.
    """
    low, high = sorted((fingerprint_a, fingerprint_b))
    digest = hashlib.sha256(_CODE_LABEL + low + high + committer_nonce + responder_nonce).digest()
    return code_digits(digest)


class Verification:
    """
    The exchange over one verification channel, as a state machine.

    `local_fingerprint` is the fingerprint of this side's own certificate
    and `remote_fingerprint` that of the certificate the DTLS transport
    actually got from the other side; both must come from the local WebRTC
    stack, never from a signaling message.  Each method returns the text
    messages to send on the channel, in order.
    """

    def __init__(
        self, local_fingerprint: bytes, remote_fingerprint: bytes, nonce: bytes | None = None
    ) -> None:
        self.local_fingerprint = local_fingerprint
        self.remote_fingerprint = remote_fingerprint
        self.nonce = os.urandom(_NONCE_BYTES) if nonce is None else nonce
        self.state: State = "pending"
        self.code: str | None = None
        self.reason: str | None = None
        """Why the exchange failed, for logs and tests."""
        self.remote_nonce: bytes | None = None
        self._remote_commitment: bytes | None = None
        self._started = False
        if {len(local_fingerprint), len(remote_fingerprint)} != {_FINGERPRINT_BYTES}:
            self._fail("a fingerprint is not 32 bytes")
        elif local_fingerprint == remote_fingerprint:
            self._fail("both ends show the same certificate")
        elif len(self.nonce) != _NONCE_BYTES:
            self._fail("the nonce is not 32 bytes")

    @property
    def committer(self) -> bool:
        """Whether this side commits first (its own fingerprint is lower)."""
        return self.local_fingerprint < self.remote_fingerprint

    def start(self) -> list[str]:
        """The channel opened: the committer sends its commitment."""
        if self.state != "pending" or self._started:
            return []
        self._started = True
        if self.committer:
            return [_encode("commit", hash=commitment(self.nonce).hex())]
        return []

    def receive(self, text: Any) -> list[str]:
        """A message arrived on the channel."""
        if self.state != "pending":
            return []
        kind, value = _decode(text)
        if self.committer:
            if kind == "nonce" and self._started and self.remote_nonce is None:
                self.remote_nonce = value
                self._verified(self.nonce, value)
                return [_encode("reveal", nonce=self.nonce.hex())]
        elif kind == "commit" and self._remote_commitment is None:
            self._remote_commitment = value
            return [_encode("nonce", nonce=self.nonce.hex())]
        elif kind == "reveal" and self._remote_commitment is not None:
            if not hmac.compare_digest(commitment(value), self._remote_commitment):
                self._fail("the revealed nonce does not match its commitment")
                return []
            self.remote_nonce = value
            self._verified(value, self.nonce)
            return []
        self._fail(f"unexpected {kind or 'message'}")
        return []

    def expire(self) -> None:
        """The deadline passed: an exchange not done by now has failed."""
        if self.state == "pending":
            self._fail("the exchange did not finish in time")

    def _verified(self, committer_nonce: bytes, responder_nonce: bytes) -> None:
        self.code = derive_code(
            self.local_fingerprint, self.remote_fingerprint, committer_nonce, responder_nonce
        )
        self.state = "verified"

    def _fail(self, reason: str) -> None:
        self.state = "failed"
        self.code = None
        self.reason = reason


_FIELDS = {"commit": "hash", "nonce": "nonce", "reveal": "nonce"}


def _encode(kind: str, **fields: str) -> str:
    return json.dumps({"v": VERSION, "type": kind, **fields}, separators=(",", ":"))


def _decode(text: Any) -> tuple[str | None, bytes]:
    """
    ``(type, 32 bytes)`` of a well-formed message, ``(None, b"")`` for
    anything else.
    """
    try:
        message = json.loads(text)
    except (TypeError, ValueError):
        return None, b""
    if not isinstance(message, dict) or message.get("v") != VERSION:
        return None, b""
    kind = message.get("type")
    field = _FIELDS.get(kind) if isinstance(kind, str) else None
    value = message.get(field) if field else None
    if not isinstance(value, str) or len(value) != 2 * _NONCE_BYTES:
        return None, b""
    try:
        return kind, bytes.fromhex(value)
    except ValueError:
        return None, b""
