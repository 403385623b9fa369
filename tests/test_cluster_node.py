"""
One `ClusterRooms` (or two) in this process against a real Redis: asking
another node, and seeing a Redis restart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, TimeoutError, fail
from twisted.logger import ILogObserver, globalLogPublisher
from zope.interface import implementer

from twisted_signal.cluster import scripts
from twisted_signal.cluster.node import ClusterRooms
from twisted_signal.cluster.resp import RedisUnavailable

from .support import sleep
from .support.cluster import Redis

pytestmark = pytest.mark.process


@pytest_twisted.inlineCallbacks
def _until(condition: Callable[[], bool], timeout: float = 10) -> Any:
    from twisted.internet import reactor

    deadline = reactor.seconds() + timeout
    while not condition():
        assert reactor.seconds() < deadline, "timed out"
        yield sleep(0.05)


@pytest_twisted.inlineCallbacks
def test_a_node_answers_what_another_asks(redis: Redis) -> Any:
    a = ClusterRooms(redis_url=redis.url, lease=1.0, node_id="asker")
    b = ClusterRooms(redis_url=redis.url, lease=1.0, node_id="answerer")
    b.node.answerers["echo"] = lambda fields: b.node.answer(fields, {"said": fields["what"]})
    a.startService()
    b.startService()
    try:
        answer = yield a.node.ask(
            b.node.key("inbox", "answerer"), 5, kind="ask", op="echo", what="hi"
        )
        assert answer == {"said": "hi"}
        # An op nobody knows, or a node that is not there, gets no answer.
        for stream, op in [
            (b.node.key("inbox", "answerer"), "unknown"),
            (b.node.key("inbox", "x"), "echo"),
        ]:
            with pytest.raises(TimeoutError):
                yield a.node.ask(stream, 0.3, kind="ask", op=op)
        assert a.node._asked == {}
    finally:
        yield a.stopService()
        yield b.stopService()
        yield sleep(0)


@pytest_twisted.inlineCallbacks
def test_a_redis_restart_is_seen_even_if_the_first_tick_after_it_fails(redis: Redis) -> Any:
    node = ClusterRooms(redis_url=redis.url, lease=1.0, node_id="n")
    node.startService()
    try:
        yield _until(lambda: node.node._registered)
        assert node.node.judge_after == 0
        # The first registration after the restart fails, after INFO has
        # already shown the new run id.
        execute = node.node.redis.execute
        failed: list[tuple[Any, ...]] = []

        def flaky(*args: Any, **kw: Any) -> Deferred[Any]:
            if args[:2] == ("EVALSHA", scripts.NODE_RENEW.sha) and not failed:
                failed.append(args)
                return fail(RedisUnavailable("the test failed this one"))
            return execute(*args, **kw)

        node.node.redis.execute = flaky  # type: ignore[method-assign]
        redis.stop()
        redis.start()
        yield _until(lambda: node.node.judge_after > 0)
        assert failed
    finally:
        yield node.stopService()
        yield sleep(0)


@pytest_twisted.inlineCallbacks
def test_an_entry_that_fails_does_not_stop_the_reader(redis: Redis) -> Any:
    a = ClusterRooms(redis_url=redis.url, lease=1.0, node_id="asker")
    b = ClusterRooms(redis_url=redis.url, lease=1.0, node_id="answerer")

    def boom(fields: dict[str, str]) -> None:
        raise ValueError("a bad entry")

    b.node.answerers["boom"] = boom
    b.node.answerers["echo"] = lambda fields: b.node.answer(fields, "still reading")
    failures: list[Any] = []

    @implementer(ILogObserver)
    def observer(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            failures.append(event["log_failure"])

    globalLogPublisher.addObserver(observer)
    a.startService()
    b.startService()
    try:
        inbox = b.node.key("inbox", "answerer")
        with pytest.raises(TimeoutError):
            yield a.node.ask(inbox, 0.3, kind="ask", op="boom")
        assert (yield a.node.ask(inbox, 5, kind="ask", op="echo")) == "still reading"
    finally:
        yield a.stopService()
        yield b.stopService()
        yield sleep(0)
        globalLogPublisher.removeObserver(observer)
    assert [f.type for f in failures] == [ValueError]
