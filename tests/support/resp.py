"""
The cluster's Redis client protocol over an in-memory transport, for the
tests of resp.py and of the scripts run through it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from twisted_signal.cluster.resp import _RedisProtocol


class Outcome:
    """What became of one command's Deferred."""

    def __init__(self, d: Deferred[Any]) -> None:
        self.fired = False
        self.value: Any = None
        self.failure: Failure | None = None
        d.addBoth(self._got)

    def _got(self, result: Any) -> None:
        self.fired = True
        if isinstance(result, Failure):
            self.failure = result
        else:
            self.value = result


def connected() -> tuple[_RedisProtocol, StringTransport, list[str]]:
    """A connected protocol, its transport, and a list that says "lost" once it is lost."""
    protocol = _RedisProtocol()
    transport = StringTransport()
    protocol.makeConnection(transport)
    lost: list[str] = []
    protocol.on_lost = lambda: lost.append("lost")
    return protocol, transport, lost
