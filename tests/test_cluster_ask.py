"""
`ClusterRooms.ask` and `answer`: a request from one node to another through
a real Redis, and what the asker gets when nobody answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, TimeoutError

from twisted_signal.cluster.node import ClusterRooms

from .cluster_support import Redis


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[Redis]:
    server = Redis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _sleep(seconds: float) -> Deferred[None]:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.inlineCallbacks
def test_a_node_answers_what_another_asks(redis: Redis) -> Any:
    a = ClusterRooms(redis_url=redis.url, lease=1.0, node_id="asker")
    b = ClusterRooms(redis_url=redis.url, lease=1.0, node_id="answerer")
    b.answerers["echo"] = lambda fields: b.answer(fields, {"said": fields["what"]})
    a.startService()
    b.startService()
    try:
        answer = yield a.ask(b.key("inbox", "answerer"), 5, kind="ask", op="echo", what="hi")
        assert answer == {"said": "hi"}
        # An op nobody knows, or a node that is not there, gets no answer.
        for stream, op in [(b.key("inbox", "answerer"), "unknown"), (b.key("inbox", "x"), "echo")]:
            with pytest.raises(TimeoutError):
                yield a.ask(stream, 0.3, kind="ask", op=op)
        assert a._asked == {}
    finally:
        yield a.stopService()
        yield b.stopService()
        yield _sleep(0)
