"""
Calling user callbacks safely, and running work strictly in order.

A user callback may return a plain value, a `Deferred`, or be ``async def``.
`call` normalises the last two to a `Deferred` and leaves plain values alone,
so a synchronous callback costs no `Deferred` on the hot path.  `SerialQueue`
runs jobs one after another: a job that answers asynchronously holds back the
jobs behind it, which is how a room keeps one total order of its messages.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from inspect import iscoroutine
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["SerialQueue", "call", "call_logged", "then"]

T = TypeVar("T")
_log = Logger()


def call(fn: Callable[..., Any], *args: Any) -> Any:
    """
    Call a user callback.  Returns its plain value, or a `Deferred` when it
    returned one or a coroutine.  Synchronous exceptions propagate.
    """
    result = fn(*args)
    if iscoroutine(result):
        return Deferred.fromCoroutine(result)
    return result


def call_logged(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """
    Like `call`, for callbacks whose failure must not stop what follows: a
    failure (synchronous or not) is logged and the result is None.
    """
    try:
        result = call(fn, *args)
    except Exception:
        _log.failure("Error in {what}", what=what)
        return None
    if isinstance(result, Deferred):
        return result.addErrback(_log_failure, what)
    return result


def _log_failure(failure: Failure, what: str) -> None:
    if not failure.check(CancelledError):
        _log.failure("Error in {what}", failure, what=what)


def then(result: Any, fn: Callable[[Any], Any]) -> Any:
    """
    Apply `fn` to `result` now if it is a plain value, or when it fires if it
    is a `Deferred`.
    """
    if isinstance(result, Deferred):
        return result.addCallback(fn)
    return fn(result)


class SerialQueue:
    """
    Jobs run one at a time in the order they were added.  A job is a callable
    with its arguments; if it returns a `Deferred`, the next job starts when
    that fires.  A job's failure is logged (with `what` saying whose work it
    was) and does not stop the queue.

    A job added to an idle queue runs at once, without being stored: the
    common case (synchronous callbacks) costs a call and nothing else.
    """

    __slots__ = ("_busy", "_closed", "_draining", "_pending", "_what")

    def __init__(self, what: str) -> None:
        self._what = what
        self._pending: deque[tuple[Callable[..., Any], tuple[Any, ...]]] | None = None
        self._busy: Deferred[Any] | None = None
        self._draining = False
        self._closed = False

    @property
    def idle(self) -> bool:
        return self._busy is None and not self._pending

    def run(self, job: Callable[..., Any], *args: Any) -> None:
        if self._closed:
            return
        if self._busy is None and not self._draining and not self._pending:
            self._draining = True
            try:
                self._start(job, args)
            finally:
                self._draining = False
            if self._busy is None and self._pending:
                self._drain()
            return
        if self._pending is None:
            self._pending = deque()
        self._pending.append((job, args))

    def cancel(self) -> None:
        """
        Drop the jobs not started yet and cancel the one that is waiting.
        Later `run` calls are ignored.
        """
        self._closed = True
        self._pending = None
        busy, self._busy = self._busy, None
        if busy is not None:
            busy.cancel()

    def _start(self, job: Callable[..., Any], args: tuple[Any, ...]) -> None:
        try:
            result = job(*args)
        except Exception:
            _log.failure("Error in {what}", what=self._what)
            return
        if isinstance(result, Deferred):
            self._busy = result
            result.addErrback(_log_failure, self._what)
            result.addBoth(self._finished, result)

    def _drain(self) -> None:
        self._draining = True
        try:
            while self._busy is None and self._pending:
                job, args = self._pending.popleft()
                self._start(job, args)
        finally:
            self._draining = False

    def _finished(self, _: object, which: Deferred[Any]) -> None:
        if self._busy is which:
            self._busy = None
            if not self._draining:
                self._drain()
