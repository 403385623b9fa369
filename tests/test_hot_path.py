"""
The relay path stays lean: synchronous callbacks cost no Deferred, and a
message is encoded once however many peers receive it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal import AuthData, Message, PeerHandle, Room
from twisted_signal import message as wire


class HotPathTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.room = Room("hot", None, clock=Clock())
        self.room.startService()
        self.payloads: dict[str, list[bytes]] = {}
        for peer_id in ("a", "b", "c", "d"):
            received: list[bytes] = []
            self.payloads[peer_id] = received
            handle = PeerHandle(
                peer_id, AuthData(peer_id), received.append, lambda code: None, lambda ids: None
            )
            self.room.join(handle)

    def test_sync_callbacks_make_no_deferreds(self) -> None:
        made: list[Any] = []
        original = defer.Deferred.__init__

        def counting_init(self: defer.Deferred[Any], *args: Any, **kwargs: Any) -> None:
            made.append(self)
            original(self, *args, **kwargs)

        self.patch(defer.Deferred, "__init__", counting_init)
        for n in range(100):
            self.room.submit(Message("candidate", {"n": n}, "a", "all"))
        self.assertEqual(made, [])
        # b saw c and d join, then the 100 candidates.
        self.assertEqual(len(self.payloads["b"]), 2 + 100)

    def test_metrics_on_the_relay_make_no_deferreds(self) -> None:
        from twisted_signal import Rooms
        from twisted_signal.metrics import Metrics

        clock = Clock()
        metrics = Metrics(Rooms(None), clock=clock, process_metrics=False)
        self.room.events = metrics
        made: list[Any] = []
        original = defer.Deferred.__init__

        def counting_init(self: defer.Deferred[Any], *args: Any, **kwargs: Any) -> None:
            made.append(self)
            original(self, *args, **kwargs)

        self.patch(defer.Deferred, "__init__", counting_init)
        for n in range(100):
            self.room.submit(Message("candidate", {"n": n}, "a", "all"), received=0.0)
        self.assertEqual(made, [])
        self.assertEqual(metrics.forwarded_count, 100)

    def test_a_broadcast_is_encoded_once(self) -> None:
        encodings: list[Message] = []
        original = Message.to_bytes

        def counting_to_bytes(message: Message) -> bytes:
            encodings.append(message)
            return original(message)

        self.patch(Message, "to_bytes", counting_to_bytes)
        self.room.submit(Message("offer", {"sdp": "v=0"}, "a", "all"))
        self.assertEqual(len(encodings), 1)
        last = [self.payloads[p][-1] for p in ("b", "c", "d")]
        self.assertTrue(last[0] is last[1] is last[2])
        self.assertEqual(last[0], wire.Message("offer", {"sdp": "v=0"}, "a", "all").to_bytes())
