"""
`Keepalive`, pure: the deadlines of one connection (SPEC 1.4 step 6).
"""

from __future__ import annotations

import pytest

from twisted_signal.keepalive import Due, Keepalive

pytestmark = pytest.mark.pure


def _keepalive(now: float = 0.0, idle: float = 900.0, interval: float = 20.0) -> Keepalive:
    return Keepalive(now, idle, interval, 20.0, random=lambda n: b"p" * n)


def test_the_first_deadline_is_the_first_ping_or_the_idle_timeout() -> None:
    assert _keepalive().deadline == 20.0
    assert _keepalive(idle=5.0).deadline == 5.0
    assert _keepalive(interval=0).deadline == 900.0


def test_a_ping_then_the_answer_with_its_payload() -> None:
    keepalive = _keepalive()
    assert keepalive.check(19.9) is Due.WAIT and keepalive.deadline == 20.0
    assert keepalive.check(20.0) is Due.PING
    assert (keepalive.payload, keepalive.deadline) == (b"pppppppp", 40.0)
    assert not keepalive.answered(b"other", 25.0)
    assert keepalive.answered(b"pppppppp", 25.0)
    assert keepalive.deadline == 45.0  # the next ping, an interval after the answer
    assert not keepalive.answered(b"pppppppp", 26.0)  # answered once
    assert keepalive.check(45.0) is Due.PING


def test_a_ping_without_its_answer_in_time_is_unanswered() -> None:
    keepalive = _keepalive()
    assert keepalive.check(20.0) is Due.PING
    keepalive.seen(30.0)  # other traffic does not answer it
    assert keepalive.check(39.9) is Due.WAIT and keepalive.deadline == 40.0
    assert keepalive.check(40.0) is Due.UNANSWERED


def test_idle_without_traffic_and_traffic_pushes_it_back() -> None:
    keepalive = _keepalive(idle=30.0, interval=0)
    keepalive.seen(10.0)
    assert keepalive.check(30.0) is Due.WAIT and keepalive.deadline == 40.0
    assert keepalive.check(40.0) is Due.IDLE


def test_idle_comes_before_a_ping_due_at_the_same_time() -> None:
    keepalive = _keepalive(idle=20.0)
    assert keepalive.check(20.0) is Due.IDLE
