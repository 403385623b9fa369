"""
Cluster mode end to end: a real Redis and two or three real nodes, with the
peers of one room spread over them.
"""

from __future__ import annotations

from .cluster_support import Cluster, cluster  # noqa: F401
from .support import error, join, joined, left, relayed


def test_peers_on_two_nodes_share_a_room(cluster: Cluster) -> None:  # noqa: F811
    a, b = cluster.node(), cluster.node()
    with join(a.socket_url("r")) as x:
        assert x.authenticated["data"]["peers"] == []
        with join(b.socket_url("r")) as y:
            assert y.authenticated["data"]["peers"] == [x.peer_id]
            assert x.recv() == joined(y.peer_id)
            y.send("offer", [x.peer_id], {"sdp": 1})
            assert x.recv() == relayed("offer", {"sdp": 1}, y, [x.peer_id])
            x.send("answer", "all", {"sdp": 2})
            assert y.recv() == relayed("answer", {"sdp": 2}, x, "all")
            y.send("hello", [x.peer_id, "f3d1c5f6-2a6b-4c5b-9a3c-3f2f0e6b1a77"])
            assert y.recv() == error(
                y.peer_id, "No such peer", ["f3d1c5f6-2a6b-4c5b-9a3c-3f2f0e6b1a77"]
            )
            assert x.nothing_within(0.3)
        assert x.recv() == left(y.peer_id)
