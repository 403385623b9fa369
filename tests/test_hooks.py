"""
Tests of `twisted_signal.hooks`: calling user callbacks and `SerialQueue`.
Everything is synchronous: Deferreds are fired by hand and time is a `Clock`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.task import Clock, deferLater
from twisted.logger import LogEvent, LogLevel, capturedLogs
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from twisted_signal.hooks import SerialQueue, call, call_logged, then

pytestmark = pytest.mark.memory


class Boom(Exception):
    pass


def failures(events: Sequence[LogEvent]) -> list[tuple[str, type[BaseException]]]:
    """
    The logged failures, as (what, exception type).
    """
    result = []
    for event in events:
        if "log_failure" in event:
            assert event["log_namespace"] == "twisted_signal.hooks"
            assert event["log_level"] == LogLevel.critical
            assert event["log_format"] == "Error in {what}"
            result.append((event["what"], event["log_failure"].type))
    return result


def raise_boom(*args: Any) -> Any:
    raise Boom(*args)


class CallTests(SynchronousTestCase):
    def test_plain_value_unchanged(self) -> None:
        marker = object()
        self.assertIs(call(lambda: marker), marker)
        self.assertIsNone(call(lambda: None))
        self.assertEqual(call(lambda a, b: (a, b), 1, "two"), (1, "two"))

    def test_deferred_passes_through(self) -> None:
        d: Deferred[int] = Deferred()
        self.assertIs(call(lambda: d), d)

    def test_coroutine_becomes_a_deferred(self) -> None:
        async def add(a: int, b: int) -> int:
            return a + b

        result = call(add, 2, 3)
        self.assertIsInstance(result, Deferred)
        self.assertEqual(self.successResultOf(result), 5)

    def test_coroutine_waiting_on_a_deferred(self) -> None:
        pending: Deferred[str] = Deferred()

        async def wait() -> str:
            value = await pending
            return value + "!"

        result = call(wait)
        self.assertIsInstance(result, Deferred)
        self.assertNoResult(result)
        pending.callback("done")
        self.assertEqual(self.successResultOf(result), "done!")

    def test_coroutine_failure_is_a_failed_deferred(self) -> None:
        async def broken() -> None:
            raise Boom("async")

        failure = self.failureResultOf(call(broken), Boom)
        self.assertEqual(failure.value.args, ("async",))

    def test_sync_exception_propagates(self) -> None:
        with self.assertRaises(Boom) as cm:
            call(raise_boom, "sync")
        self.assertEqual(cm.exception.args, ("sync",))


class CallLoggedTests(SynchronousTestCase):
    def test_plain_value_unchanged(self) -> None:
        with capturedLogs() as events:
            self.assertEqual(call_logged("on_join", lambda x: x * 2, 21), 42)
        self.assertEqual(failures(events), [])

    def test_sync_failure_is_logged_and_gives_none(self) -> None:
        with capturedLogs() as events:
            self.assertIsNone(call_logged("on_leave", raise_boom, "x"))
        self.assertEqual(failures(events), [("on_leave", Boom)])
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_deferred_success(self) -> None:
        d: Deferred[str] = Deferred()
        with capturedLogs() as events:
            result = call_logged("on_leave", lambda: d)
            self.assertNoResult(result)
            d.callback("ok")
        self.assertEqual(self.successResultOf(result), "ok")
        self.assertEqual(failures(events), [])

    def test_async_failure_is_logged_and_gives_none(self) -> None:
        async def broken() -> None:
            raise Boom("async")

        with capturedLogs() as events:
            result = call_logged("on_terminate", broken)
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(failures(events), [("on_terminate", Boom)])
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_later_failure_is_logged_and_gives_none(self) -> None:
        d: Deferred[None] = Deferred()
        with capturedLogs() as events:
            result = call_logged("on_terminate", lambda: d)
            self.assertEqual(failures(events), [])
            d.errback(Boom("later"))
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(failures(events), [("on_terminate", Boom)])
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 1)

    def test_cancellation_is_not_logged(self) -> None:
        d: Deferred[None] = Deferred()
        with capturedLogs() as events:
            result = call_logged("on_leave", lambda: d)
            result.cancel()
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(list(events), [])
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_cancelled_coroutine_is_not_logged(self) -> None:
        pending: Deferred[None] = Deferred()

        async def wait() -> None:
            await pending

        with capturedLogs() as events:
            result = call_logged("on_receive", wait)
            result.cancel()
        self.assertIsNone(self.successResultOf(result))
        self.assertEqual(list(events), [])


class ThenTests(SynchronousTestCase):
    def test_plain_value_applied_now(self) -> None:
        self.assertEqual(then(20, lambda x: x + 1), 21)

    def test_none_is_a_plain_value(self) -> None:
        self.assertEqual(then(None, lambda x: ("got", x)), ("got", None))

    def test_deferred_applied_when_it_fires(self) -> None:
        seen: list[int] = []
        d: Deferred[int] = Deferred()

        def record(x: int) -> int:
            seen.append(x)
            return x * 10

        result = then(d, record)
        self.assertIsInstance(result, Deferred)
        self.assertEqual(seen, [])
        d.callback(4)
        self.assertEqual(seen, [4])
        self.assertEqual(self.successResultOf(result), 40)

    def test_failure_skips_fn(self) -> None:
        seen: list[object] = []
        result = then(fail(Boom("no")), seen.append)
        self.failureResultOf(result, Boom)
        self.assertEqual(seen, [])

    def test_sync_exception_of_fn_propagates(self) -> None:
        with self.assertRaises(Boom):
            then(1, raise_boom)


class SerialQueueTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.order: list[object] = []
        self.queue = SerialQueue("room 'test'")

    def sync_job(self, name: object) -> Callable[[], None]:
        def job() -> None:
            self.order.append(name)

        return job

    def deferred_job(self, name: object, d: Deferred[Any]) -> Callable[[], Deferred[Any]]:
        def job() -> Deferred[Any]:
            self.order.append(name)
            return d

        return job

    def test_idle_when_empty(self) -> None:
        self.assertTrue(self.queue.idle)

    def test_not_idle_while_a_deferred_is_in_flight(self) -> None:
        d: Deferred[None] = Deferred()
        self.queue.run(self.deferred_job("waiting", d))
        self.assertFalse(self.queue.idle)
        d.callback(None)
        self.assertTrue(self.queue.idle)

    def test_sync_jobs_run_at_once_in_order(self) -> None:
        for i in range(5):
            self.queue.run(self.sync_job(i))
        self.assertEqual(self.order, [0, 1, 2, 3, 4])
        self.assertTrue(self.queue.idle)

    def test_strict_order_with_pending_deferreds(self) -> None:
        first: Deferred[str] = Deferred()
        second: Deferred[None] = Deferred()
        self.queue.run(self.sync_job(1))
        self.queue.run(self.deferred_job(2, first))
        self.queue.run(self.sync_job(3))
        self.queue.run(self.deferred_job(4, second))
        self.queue.run(self.sync_job(5))
        # The sync job 3 waits behind the pending Deferred of job 2.
        self.assertEqual(self.order, [1, 2])
        self.assertFalse(self.queue.idle)

        first.callback("ignored")
        self.assertEqual(self.order, [1, 2, 3, 4])
        self.assertFalse(self.queue.idle)

        self.queue.run(self.sync_job(6))
        self.assertEqual(self.order, [1, 2, 3, 4])

        second.callback(None)
        self.assertEqual(self.order, [1, 2, 3, 4, 5, 6])
        self.assertTrue(self.queue.idle)

    def test_waits_for_time(self) -> None:
        clock = Clock()
        self.queue.run(lambda: deferLater(clock, 5.0, self.order.append, "slow"))
        self.queue.run(self.sync_job("fast"))
        clock.advance(4.9)
        self.assertEqual(self.order, [])
        self.assertFalse(self.queue.idle)
        clock.advance(0.1)
        self.assertEqual(self.order, ["slow", "fast"])
        self.assertTrue(self.queue.idle)

    def test_already_fired_deferred(self) -> None:
        self.queue.run(self.deferred_job(1, succeed("x")))
        self.assertTrue(self.queue.idle)
        self.queue.run(self.sync_job(2))
        self.assertEqual(self.order, [1, 2])
        self.assertTrue(self.queue.idle)

    def test_coroutine_job_through_call(self) -> None:
        pending: Deferred[None] = Deferred()

        async def job() -> None:
            await pending
            self.order.append("async")

        self.queue.run(lambda: call(job))
        self.queue.run(self.sync_job("after"))
        self.assertEqual(self.order, [])
        pending.callback(None)
        self.assertEqual(self.order, ["async", "after"])

    def test_reentrant_run_is_queued_not_nested(self) -> None:
        def outer() -> None:
            self.queue.run(self.sync_job("inner"))
            self.order.append("outer end")

        self.queue.run(outer)
        self.queue.run(self.sync_job("last"))
        self.assertEqual(self.order, ["outer end", "inner", "last"])

    def test_failing_jobs_are_logged_and_do_not_stop_the_queue(self) -> None:
        later: Deferred[None] = Deferred()
        with capturedLogs() as events:
            self.queue.run(raise_boom)
            self.queue.run(self.sync_job(1))
            self.queue.run(lambda: fail(Boom("fired")))
            self.queue.run(self.sync_job(2))
            self.queue.run(self.deferred_job(3, later))
            self.queue.run(self.sync_job(4))
            self.assertEqual(self.order, [1, 2, 3])
            later.errback(Boom("later"))
        self.assertEqual(self.order, [1, 2, 3, 4])
        self.assertTrue(self.queue.idle)
        self.assertEqual(failures(events), [("room 'test'", Boom)] * 3)
        self.assertEqual(len(self.flushLoggedErrors(Boom)), 3)

    def test_cancel(self) -> None:
        cancelled: list[Deferred[None]] = []
        errors: list[type[BaseException] | None] = []
        in_flight: Deferred[None] = Deferred(cancelled.append)

        def record(failure: Failure) -> Failure:
            errors.append(failure.type)
            return failure

        in_flight.addErrback(record)
        with capturedLogs() as events:
            self.queue.run(self.deferred_job(1, in_flight))
            self.queue.run(self.sync_job(2))
            self.queue.run(self.sync_job(3))
            self.queue.cancel()
            self.assertEqual(cancelled, [in_flight])
            self.assertEqual(errors, [CancelledError])
            self.assertTrue(self.queue.idle)
            self.queue.run(self.sync_job(4))
            self.queue.cancel()
        self.assertEqual(self.order, [1])
        self.assertTrue(self.queue.idle)
        self.assertEqual(list(events), [])

    def test_cancel_when_idle_ignores_later_jobs(self) -> None:
        self.queue.cancel()
        self.queue.run(self.sync_job(1))
        self.assertEqual(self.order, [])
        self.assertTrue(self.queue.idle)

    def test_cancel_from_inside_a_job(self) -> None:
        def stop() -> None:
            self.order.append("stop")
            self.queue.cancel()

        blocker: Deferred[None] = Deferred()
        self.queue.run(self.deferred_job("first", blocker))
        self.queue.run(stop)
        self.queue.run(self.sync_job("dropped"))
        blocker.callback(None)
        self.assertEqual(self.order, ["first", "stop"])
        self.assertTrue(self.queue.idle)

    def test_many_fired_deferreds_do_not_recurse(self) -> None:
        blocker: Deferred[None] = Deferred()
        self.queue.run(self.deferred_job("start", blocker))
        for i in range(10_000):
            self.queue.run(self.deferred_job(i, succeed(i)))
        self.assertEqual(self.order, ["start"])
        blocker.callback(None)
        self.assertEqual(self.order, ["start", *range(10_000)])
        self.assertTrue(self.queue.idle)

    def test_many_deferreds_fired_one_by_one(self) -> None:
        pending: list[Deferred[None]] = [Deferred() for _ in range(10_000)]
        for i, d in enumerate(pending):
            self.queue.run(self.deferred_job(i, d))
        for i, d in enumerate(pending):
            self.assertEqual(len(self.order), i + 1)
            d.callback(None)
        self.assertEqual(self.order, list(range(10_000)))
        self.assertTrue(self.queue.idle)

    def test_a_chain_where_each_job_fires_the_previous_ones_deferred(self) -> None:
        # Each job fires the Deferred it returned itself before returning it,
        # from inside the queue: no nesting however long the chain.
        def job(i: int) -> Callable[[], Deferred[None]]:
            def run() -> Deferred[None]:
                d: Deferred[None] = Deferred()
                self.order.append(i)
                if i + 1 < 5_000:
                    self.queue.run(job(i + 1))
                d.callback(None)
                return d

            return run

        self.queue.run(job(0))
        self.assertEqual(self.order, list(range(5_000)))
        self.assertTrue(self.queue.idle)
