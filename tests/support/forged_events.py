"""
A room that lets peers speak in the server's name, for
tests/test_browser_trust.py: run ``twistd rtcsignal --room-class
tests.support.forged_events.ForgeServerEvents``.

The server refuses a peer's message named as one of its events (SPEC 1.2),
so a test cannot send one straight; this room rewrites a peer's ``forge``
message ``{"event": E, "data": D}`` into a message named ``E`` with ``D``,
keeping the real sender's ``from`` and the ``to`` it gave: exactly what a
hostile or buggy relay on the server side would deliver.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from twisted_signal import Message, Room


class ForgeServerEvents(Room):
    def on_forward(self, message: Message) -> Any:
        data = message.data
        if message.event != "forge" or not isinstance(data, dict):
            return message
        event = data.get("event")
        if not isinstance(event, str):
            return message
        return dataclasses.replace(message, event=event, data=data.get("data"))
