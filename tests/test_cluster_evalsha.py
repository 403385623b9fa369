"""
The cluster's Lua scripts on a real Redis: renewals go by ``EVALSHA``, and
a ``SCRIPT FLUSH`` mid-traffic costs an ``EVAL`` per script and nothing else
(nothing lost, nobody closed).
"""

from __future__ import annotations

import time

import pytest

from twisted_signal.cluster import scripts
from twisted_signal.cluster.scripts import Script

from .support import join, joined, left, relayed
from .support.cluster import LEASE, Cluster

pytestmark = pytest.mark.process

SCRIPTS = sum(isinstance(getattr(scripts, name), Script) for name in scripts.__all__)


def test_renewals_go_by_evalsha_and_survive_script_flush(cluster: Cluster) -> None:
    redis = cluster.redis
    a, b = cluster.node(), cluster.node()
    with join(a.socket_url("flush")) as x, join(b.socket_url("flush")) as y:
        assert x.recv() == joined(y.peer_id)
        # A few ticks of renewals (the room's and both nodes'): they ran by
        # SHA1, and the scripts' text went at most once each since Redis
        # started (the first call of each script on each node, at most).
        before = redis.command_calls()
        time.sleep(LEASE)
        after = redis.command_calls()
        assert after.get("evalsha", 0) - before.get("evalsha", 0) >= 6, after
        assert after.get("eval", 0) <= 2 * SCRIPTS, after

        # SCRIPT FLUSH while messages flow both ways, and a join after it.
        sent = 0
        for n in range(60):
            if n in (10, 35):
                assert redis.cli("SCRIPT", "FLUSH").strip() == "OK"
            y.send("n", [x.peer_id], n)
            x.send("n", [y.peer_id], n)
            sent += 1
            time.sleep(LEASE / 40)
        for n in range(sent):
            assert x.recv() == relayed("n", n, y, [x.peer_id])
            assert y.recv() == relayed("n", n, x, [y.peer_id])
        with join(b.socket_url("flush")) as z:
            assert x.recv() == joined(z.peer_id)
            assert y.recv() == joined(z.peer_id)
            # Over three more ticks, the leases held: nobody was closed,
            # nothing more came.
            assert x.nothing_within(LEASE) and y.nothing_within(0.1) and z.nothing_within(0.1)
        assert x.recv() == left(z.peer_id)
        final = redis.command_calls()
        evals = final.get("eval", 0) - after.get("eval", 0)
        # Each flush cost about one EVAL per script in use on each node, and
        # no more.
        assert 1 <= evals <= 2 * 2 * SCRIPTS, final
