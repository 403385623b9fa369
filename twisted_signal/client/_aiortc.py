"""
Verification codes for aiortc peer connections: the exchange of
`twisted_signal.verification` over the negotiated ``rtcsignal-verify``
channel, with the fingerprints taken from aiortc's own DTLS transport.

aiortc is not a dependency of the library: nothing here imports it until a
peer connection is verified.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..verification import (
    CHANNEL_ID,
    CHANNEL_LABEL,
    DEADLINE,
    Verification,
    fingerprint_from_der,
    fingerprint_from_sdp,
)

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCDtlsTransport, RTCPeerConnection

__all__ = ["PeerVerification", "verify_peer_connection"]

_log = logging.getLogger("twisted_signal.client")


class PeerVerification:
    """
    The verification of one aiortc `RTCPeerConnection`, made by
    `verify_peer_connection`.

    `state` is ``"pending"`` until the exchange ends, then ``"verified"``
    (with the `code` both ends show, ``"NNNN-NNNN-NNNN"``) or ``"failed"``
    (with a `reason`).  `done` is a future that resolves with the code, or
    None when the verification failed.  `verification` is the exchange
    itself (its fingerprints and nonces), once the channel opened.
    """

    def __init__(
        self,
        pc: RTCPeerConnection,
        *,
        deadline: float = DEADLINE,
        nonce: bytes | None = None,
        on_result: Callable[[PeerVerification], Any] | None = None,
    ) -> None:
        self.pc = pc
        self.deadline = deadline
        self.verification: Verification | None = None
        self.channel: RTCDataChannel = pc.createDataChannel(
            CHANNEL_LABEL, negotiated=True, id=CHANNEL_ID
        )
        self.done: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._nonce = nonce
        self._on_result = on_result
        self._reason: str | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.channel.on("open", self._opened)
        self.channel.on("message", self._received)
        self.channel.on("close", self._closed)

    @property
    def state(self) -> str:
        """``"pending"``, ``"verified"`` or ``"failed"``."""
        if self._reason is not None:
            return "failed"
        return "pending" if self.verification is None else self.verification.state

    @property
    def code(self) -> str | None:
        """The code, once verified."""
        return None if self.verification is None else self.verification.code

    @property
    def reason(self) -> str | None:
        """Why the verification failed, for logs."""
        if self._reason is not None:
            return self._reason
        return None if self.verification is None else self.verification.reason

    def _opened(self) -> None:
        if self.verification is not None or self.done.done():
            return
        try:
            local, remote = fingerprints(self.channel)
        except (LookupError, ValueError) as e:
            self._fail(f"no fingerprint: {e}")
            return
        self.verification = Verification(local, remote, self._nonce)
        self._timer = asyncio.get_running_loop().call_later(self.deadline, self._expired)
        self._send(self.verification.start())

    def _received(self, data: str | bytes) -> None:
        if self.verification is None:
            self._opened()  # a message can overtake the open event
        if self.verification is not None:
            # Only text messages are part of the exchange.
            self._send(self.verification.receive(data if isinstance(data, str) else None))

    def _expired(self) -> None:
        if self.verification is not None:
            self.verification.expire()
        self._settle()

    def _closed(self) -> None:
        if self.state == "pending":
            self._fail("the channel closed before the exchange finished")

    def _fail(self, reason: str) -> None:
        self._reason = reason
        self._settle()

    def _send(self, texts: list[str]) -> None:
        for text in texts:
            if self.channel.readyState == "open":
                self.channel.send(text)
        self._settle()

    def _settle(self) -> None:
        state = self.state
        if state == "pending" or self.done.done():
            return
        if self._timer is not None:
            self._timer.cancel()
        self.done.set_result(self.code)
        if state == "verified":
            _log.info("verification code %s", self.code)
        else:
            _log.warning("verification failed: %s", self.reason)
        if self._on_result is not None:
            try:
                self._on_result(self)
            except Exception:
                _log.exception("Error in on_result")


def fingerprints(channel: RTCDataChannel) -> tuple[bytes, bytes]:
    """
    The SHA-256 fingerprints of this side's certificate and of the one the
    DTLS transport under `channel` received from the other side: never
    those of the SDP.

    @raise LookupError: the transport has no peer certificate (yet).
    """
    dtls = channel.transport.transport
    return local_fingerprint(dtls), fingerprint_from_der(remote_certificate(dtls))


def local_fingerprint(dtls: RTCDtlsTransport) -> bytes:
    """The SHA-256 fingerprint of the certificate `dtls` presents."""
    for fingerprint in dtls.getLocalParameters().fingerprints:
        if fingerprint.algorithm.lower() == "sha-256":
            return fingerprint_from_sdp(fingerprint.value)
    raise LookupError("the local certificate has no sha-256 fingerprint")


def remote_certificate(dtls: RTCDtlsTransport) -> bytes:
    """
    The DER of the certificate the other side presented in the DTLS
    handshake of `dtls`.  aiortc has no public API for it (no
    ``getRemoteCertificates``): it is the peer certificate of the
    transport's OpenSSL connection, the one aiortc checks against the SDP.
    """
    from cryptography.hazmat.primitives.serialization import Encoding

    connection = getattr(dtls, "_ssl", None)
    certificate = (
        None if connection is None else connection.get_peer_certificate(as_cryptography=True)
    )
    if certificate is None:
        raise LookupError("the DTLS transport has no peer certificate")
    der: bytes = certificate.public_bytes(Encoding.DER)
    return der


def verify_peer_connection(
    pc: RTCPeerConnection,
    *,
    deadline: float = DEADLINE,
    nonce: bytes | None = None,
    on_result: Callable[[PeerVerification], Any] | None = None,
) -> PeerVerification:
    """
    Verify the aiortc peer connection `pc` the way the room page does
    (docs/verification.md): create the negotiated ``rtcsignal-verify``
    channel (id 0) on it, and run the exchange when it opens, within
    `deadline` seconds.  Call it right after creating `pc`, before its
    first offer or answer, from a running event loop.  `on_result(pv)` is
    called once the verification is verified or failed; or await
    ``pv.done`` for the code (None when it failed).  `nonce` (32 bytes,
    random by default) is for tests.
    """
    return PeerVerification(pc, deadline=deadline, nonce=nonce, on_result=on_result)
