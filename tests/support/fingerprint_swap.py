"""
A room that tampers with the calls it relays, for tests/test_browser_verify.py:
run ``twistd rtcsignal --room-class tests.support.fingerprint_swap.SwapFingerprints``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from typing import Any

from twisted_signal import Message, Room
from twisted_signal.verification import fingerprint_to_sdp

FAKE_FINGERPRINT = fingerprint_to_sdp(hashlib.sha256(b"no such certificate").digest())
_FINGERPRINT = re.compile(r"^a=fingerprint:sha-256 [0-9A-Fa-f:]+", re.MULTILINE)


class SwapFingerprints(Room):
    """
    Replaces the certificate fingerprint of every session description with
    one of a certificate nobody has, as a man in the middle would (without
    relaying anything, DTLS then fails).
    """

    def on_forward(self, message: Message) -> Any:
        data = message.data
        if isinstance(data, dict) and isinstance(data.get("sdp"), str):
            sdp = _FINGERPRINT.sub(f"a=fingerprint:sha-256 {FAKE_FINGERPRINT}", data["sdp"])
            return dataclasses.replace(message, data={**data, "sdp": sdp})
        return message
