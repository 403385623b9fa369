"""
``reuseport:PORT[:interface=ADDRESS][:backlog=N]``: a TCP server endpoint
whose socket is bound with ``SO_REUSEPORT``, so that several processes (one
per core, say) listen on one port and the kernel spreads the connections
among them.  Each process binds its own socket: one that exits takes only
its own connections with it.

The endpoint string parser is a Twisted plugin
(``twisted/plugins/rtcsignal_reuseport.py``), so any ``serverFromString``
user, ``twistd rtcsignal --endpoint`` included, understands the prefix.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import defer
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import (
    IListeningPort,
    IReactorCore,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.internet.tcp import makeBinding
from twisted.plugin import IPlugin
from zope.interface import implementer

__all__ = ["ReusePortEndpoint", "ReusePortParser"]


class ReusePortEndpoint(TCP4ServerEndpoint):
    """
    A TCP endpoint (IPv4 or, with an IPv6 `interface`, IPv6) that binds
    with ``SO_REUSEADDR`` and ``SO_REUSEPORT``.
    """

    def listen(self, protocolFactory: Any) -> defer.Deferred[IListeningPort]:
        binding = makeBinding(self._interface, self._port, reuseAddress=True, reusePort=True)
        return defer.execute(
            self._reactor.listenTCP,
            binding,
            protocolFactory,
            backlog=self._backlog,
            interface=self._interface,
        )


def _whole(name: str, value: str, minimum: int) -> int:
    try:
        number = int(value)
    except ValueError:
        number = minimum - 1
    if number < minimum:
        raise ValueError(f"reuseport: {name} must be a whole number of at least {minimum}")
    return number


@implementer(IPlugin, IStreamServerEndpointStringParser)
class ReusePortParser:
    """
    Parses ``reuseport:PORT[:interface=ADDRESS][:backlog=N]`` (the options
    of ``tcp:``; the backlog defaults to 1024 rather than Twisted's 50).
    """

    prefix = "reuseport"

    def parseStreamServer(
        self, reactor: IReactorCore, *args: object, **kwargs: object
    ) -> IStreamServerEndpoint:
        if not hasattr(socket, "SO_REUSEPORT"):
            raise ValueError("reuseport: this system has no SO_REUSEPORT")
        unknown = set(kwargs) - {"backlog", "interface"}
        if len(args) != 1 or unknown:
            raise ValueError(
                "reuseport: expected reuseport:PORT[:interface=ADDRESS][:backlog=N]"
                + (f", not {', '.join(sorted(unknown))}" if unknown else "")
            )
        port = _whole("PORT", str(args[0]), 0)
        if port > 65535:
            raise ValueError("reuseport: PORT must be at most 65535")
        backlog = _whole("backlog", str(kwargs.get("backlog", "1024")), 1)
        interface = str(kwargs.get("interface", ""))
        return ReusePortEndpoint(reactor, port, backlog=backlog, interface=interface)
