"""
The Lua scripts through which every change of a room's keys goes.  Each one
that writes checks first that the caller still owns the room at its epoch.

Nothing a room leaves in Redis outlives it by more than ``keep`` (a few
leases, `KEEP_LEASES`): the owner key lasts a lease, and the epoch counter,
the members hash and the room's stream get ``keep`` again at every acquire
and renew (and the streams when written, see ``cluster.node._Writes``), so
that a room that is gone leaves no key behind.

Each script is a `Script`: Redis is sent its SHA1 (``EVALSHA``), not its
text, and the text only when Redis does not have it cached (``NOSCRIPT``:
after a restart or a ``SCRIPT FLUSH``), which caches it again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from twisted_signal.cluster.resp import RedisError

__all__ = [
    "ACQUIRE",
    "DEAD_MEMBERS",
    "HAND_OVER",
    "KEEP_LEASES",
    "MEMBER_ADD",
    "MEMBER_DEL",
    "NODE_RENEW",
    "RELEASE",
    "RENEW",
    "Script",
]


class Executes(Protocol):
    """What runs a Redis command: `RedisClient`, or a test's stand-in."""

    def execute(self, *args: Any) -> Deferred[Any]: ...


class Script:
    """
    A Lua script registered once and run by ``EVALSHA`` (as redis-py's
    ``Script``): a renewal sends the script's 40-character SHA1, not its
    text.  When Redis answers ``NOSCRIPT`` (it restarted, or was sent
    ``SCRIPT FLUSH``), the same call goes again as ``EVAL``, which runs the
    script and caches it: that costs one ``EVAL`` per script, and no call
    fails.  Any other error reply is the caller's, as it was with ``EVAL``.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def run(self, redis: Executes, keys: Sequence[Any], args: Sequence[Any]) -> Deferred[Any]:
        """Run it on `keys` with `args`; fires with its reply."""
        d = redis.execute("EVALSHA", self.sha, len(keys), *keys, *args)

        def not_cached(failure: Failure) -> Any:
            if failure.check(RedisError) and str(failure.value).startswith("NOSCRIPT"):
                return redis.execute("EVAL", self.text, len(keys), *keys, *args)
            return failure

        return d.addErrback(not_cached)

    def __repr__(self) -> str:
        return f"<Script {self.sha[:12]}>"


#: How many leases a room's epoch, members and stream outlive its last
#: owner's renewal (or the stream its last write): longer than any takeover
#: takes (a lease and a tick), so a new owner still finds them.
KEEP_LEASES = 3

# KEYS: owner, epoch, in-stream, cursor, the caller's node key.  ARGV: node,
# lease ms, keep ms, mode.  Returns {epoch, where to read the in-stream from}
# when acquired, {0, current owner} when not, and {0, why} when the caller
# may not take it now: it is not registered in this Redis (it lost its
# keys, and the node has not seen that yet), or `mode` is "wait" (it saw
# that lately, and the previous owners take their rooms back first).  After
# a hand-over, reading goes on from where the previous owner stopped;
# otherwise from the newest entry.  A new epoch
# counter (a name used for the first time, or whose counter expired, or a
# Redis that lost its keys) starts at Redis's clock in milliseconds, so that
# epochs still only grow for the nodes that remember an older one.
ACQUIRE = Script("""
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
if redis.call('EXISTS', KEYS[5]) == 0 then return {0, 'unregistered'} end
if ARGV[4] == 'wait' then return {0, 'waiting'} end
local epoch = redis.call('INCR', KEYS[2])
if epoch == 1 then
  local now = redis.call('TIME')
  epoch = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
  redis.call('SET', KEYS[2], string.format('%d', epoch))
end
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
epoch = string.format('%d', epoch)
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. epoch, 'PX', ARGV[2])
local id = redis.call('GET', KEYS[4])
if id then
  redis.call('DEL', KEYS[4])
else
  local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  id = '0-0'
  if #last > 0 then id = last[1][1] end
end
return {tonumber(epoch), id}
""")

# KEYS: owner, cursor.  ARGV: node|epoch, the last id read, lease ms.
# A node shutting down lets its room go, saying where the next owner reads on.
HAND_OVER = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
return 1
""")

# KEYS: owner, epoch, in-stream, peers.  ARGV: node|epoch, lease ms, keep
# ms.  1 when renewed.
RENEW = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  for i = 2, 4 do redis.call('PEXPIRE', KEYS[i], ARGV[3]) end
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""")

# KEYS: owner, peers.  ARGV: node|epoch.  Lets the room go (it emptied).
RELEASE = Script("""
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
""")

# KEYS: owner, peers.  ARGV: node|epoch, keep ms, then peer id, member JSON
# pairs.
MEMBER_ADD = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1
""")

# KEYS: owner, peers.  ARGV: node|epoch, peer id.
MEMBER_DEL = Script("""
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
""")

# KEYS: peers.  ARGV: node key prefix.  The members whose node is not alive.
DEAD_MEMBERS = Script("""
local dead = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local node = cjson.decode(all[i + 1])['node']
  if redis.call('EXISTS', ARGV[1] .. node) == 0 then table.insert(dead, all[i]) end
end
return dead
""")

# KEYS: node.  ARGV: incarnation, lease ms.
# 1 renewed; 0 it had lapsed (set again); -1 another process has this id.
NODE_RENEW = Script("""
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if cur then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 0
""")
