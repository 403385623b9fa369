"""
Cluster mode over Redis (``--redis URL``): several nodes serve the same
rooms, each room run by one owner node at a time.  See docs/cluster.md.

Nothing outside this package imports it unless cluster mode is on.
"""

from .node import ClusterRooms, RoomRelay
from .resp import (
    RedisClient,
    RedisError,
    RedisRefused,
    RedisUnavailable,
    RedisURL,
    parse_url,
)

__all__ = [
    "ClusterRooms",
    "RedisClient",
    "RedisError",
    "RedisRefused",
    "RedisURL",
    "RedisUnavailable",
    "RoomRelay",
    "parse_url",
]
