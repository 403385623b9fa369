"""
Cluster mode over Redis (``--redis URL``): several nodes serve the same
rooms, each room run by one owner node at a time.  See docs/cluster.md.

`ClusterRooms` is a `twisted_signal.Rooms` whose backend is a
`ClusterNode`; the node reaches the other nodes through a `Bus` and
`Leases`, on Redis (`RedisBus`, `RedisLeases`) or, for tests and
embedders, in memory (`twisted_signal.cluster.memory`).

Nothing outside this package imports it unless cluster mode is on.
"""

from .backend import Bus, Leases, RedisBus, RedisLeases
from .node import ClusterNode, ClusterRooms, RoomRelay
from .resp import (
    RedisClient,
    RedisError,
    RedisRefused,
    RedisUnavailable,
    RedisURL,
    parse_url,
)

__all__ = [
    "Bus",
    "ClusterNode",
    "ClusterRooms",
    "Leases",
    "RedisBus",
    "RedisClient",
    "RedisError",
    "RedisLeases",
    "RedisRefused",
    "RedisURL",
    "RedisUnavailable",
    "RoomRelay",
    "parse_url",
]
