"""
The Lua scripts through which every change of a room's keys goes.  Each one
that writes checks first that the caller still owns the room at its epoch.
"""

from __future__ import annotations

__all__ = [
    "ACQUIRE",
    "DEAD_MEMBERS",
    "HAND_OVER",
    "MEMBER_ADD",
    "MEMBER_DEL",
    "NODE_RENEW",
    "RELEASE",
    "RENEW",
]

# KEYS: owner, epoch, in-stream, cursor.  ARGV: node, lease ms.
# Returns {epoch, where to read the in-stream from} when acquired, {0,
# current owner} when not.  After a hand-over, reading goes on from where the
# previous owner stopped; otherwise from the newest entry.
ACQUIRE = """
local cur = redis.call('GET', KEYS[1])
if cur then return {0, cur} end
local epoch = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. epoch, 'PX', ARGV[2])
local id = redis.call('GET', KEYS[4])
if id then
  redis.call('DEL', KEYS[4])
else
  local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  id = '0-0'
  if #last > 0 then id = last[1][1] end
end
return {epoch, id}
"""

# KEYS: owner, cursor.  ARGV: node|epoch, the last id read, lease ms.
# A node shutting down lets its room go, saying where the next owner reads on.
HAND_OVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: owner.  ARGV: node|epoch, lease ms.  1 when renewed.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# KEYS: owner, peers.  ARGV: node|epoch.  Lets the room go (it emptied).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1], KEYS[2])
  return 1
end
return 0
"""

# KEYS: owner, peers.  ARGV: node|epoch, then peer id, member JSON pairs.
MEMBER_ADD = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1]) end
return 1
"""

# KEYS: owner, peers.  ARGV: node|epoch, peer id.
MEMBER_DEL = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
"""

# KEYS: peers.  ARGV: node key prefix.  The members whose node is not alive.
DEAD_MEMBERS = """
local dead = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local node = cjson.decode(all[i + 1])['node']
  if redis.call('EXISTS', ARGV[1] .. node) == 0 then table.insert(dead, all[i]) end
end
return dead
"""

# KEYS: node.  ARGV: incarnation, lease ms.
# 1 renewed; 0 it had lapsed (set again); -1 another process has this id.
NODE_RENEW = """
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if cur then return -1 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 0
"""
