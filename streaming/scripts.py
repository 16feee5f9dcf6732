"""Server-side scripts: each one atomic step of the run protocol (see ``streaming.wire``).

Scripts carry a ``#!lua`` line so the server refuses them whole when it is out of memory
instead of failing halfway, and list every key they touch (Redis Cluster routes them).
Replies are arrays; refusals are error replies whose first word (``STALE``, ``GONE``,
``CLOSED``, ``ORDER``) the writer turns into an exception.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["APPEND", "CLAIM", "REFRESH", "RELEASE", "STATUS", "Script"]


@dataclass(frozen=True)
class Script:
    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


# KEYS: stream, meta, lease. ARGV: token, lease_ms, ttl.
# -> {"ok", attempt, last seq, cancel} | {"busy", lease pttl} | {"ended", end kind, last seq}
#    | {"wrongtype", key, its type}: a key of the run holds another kind of value (someone
#    else's key: left as it is, expiry included)
CLAIM = Script("claim", """#!lua
local kinds = {'stream', 'hash', 'string'}
for i = 1, 3 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= kinds[i] then
    return {'wrongtype', KEYS[i], kind}
  end
end
local ended = redis.call('HGET', KEYS[2], 'end')
if ended then
  return {'ended', ended, tonumber(redis.call('HGET', KEYS[2], 'seq') or '0')}
end
local lease = redis.call('GET', KEYS[3])
if lease and lease ~= ARGV[1] then
  return {'busy', redis.call('PTTL', KEYS[3])}
end
local attempt = tonumber(redis.call('HGET', KEYS[2], 'attempt') or '0')
if redis.call('HGET', KEYS[2], 'owner') ~= ARGV[1] then
  attempt = redis.call('HINCRBY', KEYS[2], 'attempt', 1)
  redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'acked', 0)
  redis.call('HSETNX', KEYS[2], 'seq', 0)
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local cancel = redis.call('HGET', KEYS[2], 'cancel') or ''
return {'ok', attempt, tonumber(redis.call('HGET', KEYS[2], 'seq')), cancel}
""")

# The writer's token (ARGV[1]) must still own the run (KEYS[2] is its meta hash).
_OWNER_CHECK = """
local owner = redis.call('HGET', KEYS[2], 'owner')
if not owner then
  return redis.error_reply('GONE the run state is missing: it expired or the server lost it')
end
if owner ~= ARGV[1] then
  return redis.error_reply('STALE the run was taken over by another writer')
end
"""

# KEYS: stream, meta, lease.
# ARGV: token, lease_ms, ttl, retention, maxlen, first local index, end kind ('' if none),
#       timestamp ms, notify channel ('' for none), frame...
# Appends the frames the meta hash has not acknowledged yet, so a batch replayed after a
# lost reply adds nothing twice. In a cluster the writer names the run's shard channel (same
# slot): the new last seq is published there once per call that added entries, which is how
# readers' hubs learn of them (best effort: readers also poll quiet runs' status).
# -> {last seq, acked, cancel}
APPEND = Script("append", "#!lua\n" + _OWNER_CHECK + """
local acked = tonumber(redis.call('HGET', KEYS[2], 'acked'))
local first = tonumber(ARGV[6])
local n = #ARGV - 9
local seq = tonumber(redis.call('HGET', KEYS[2], 'seq'))
local cancel = redis.call('HGET', KEYS[2], 'cancel') or ''
if first > acked + 1 then
  return redis.error_reply('ORDER chunks ' .. acked + 1 .. '..' .. first - 1 .. ' never arrived')
end
if first + n - 1 <= acked then
  return {seq, acked, cancel}
end
if redis.call('HEXISTS', KEYS[2], 'end') == 1 then
  return redis.error_reply('CLOSED the run already ended')
end
local ending = ARGV[7]
for i = acked - first + 2, n do
  seq = seq + 1
  if i == n and ending ~= '' then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '0-' .. seq, 'seq_id', seq,
      'data', ARGV[9 + i], 'timestamp', ARGV[8], 'complete', 'true')
  else
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '0-' .. seq, 'seq_id', seq,
      'data', ARGV[9 + i], 'timestamp', ARGV[8])
  end
end
acked = first + n - 1
redis.call('HSET', KEYS[2], 'seq', seq, 'acked', acked)
if ending ~= '' then
  redis.call('HSET', KEYS[2], 'end', ending)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('DEL', KEYS[3])
else
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
if ARGV[9] ~= '' then
  redis.pcall('SPUBLISH', ARGV[9], seq)  -- a lost notification must not fail a stored write
end
return {seq, acked, cancel}
""")

# KEYS: stream, meta, lease. ARGV: token, lease_ms, ttl. Keeps a quiet run's lease and TTLs.
# -> {last seq, acked, cancel}
REFRESH = Script("refresh", "#!lua\n" + _OWNER_CHECK + """
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local m = redis.call('HMGET', KEYS[2], 'seq', 'acked', 'cancel')
return {tonumber(m[1]), tonumber(m[2]), m[3] or ''}
""")

# KEYS: stream, meta, lease. ARGV: token. Drops the lease if this writer holds it.
RELEASE = Script("release", """#!lua
if redis.call('GET', KEYS[3]) == ARGV[1] then
  return redis.call('DEL', KEYS[3])
end
return 0
""")

# KEYS: meta1, lease1, stream1, meta2, ... (one slot in a cluster: call it per run there).
# -> for each run {state, last seq, attempt, end kind, type of the stream key, the ending frame
#    of a stream the seed wrote (no meta) or ''};
#    state: missing | pending | live | idle | ended. Only a string is a lease: a key of another
#    kind under a lease's name must not keep readers waiting for a producer forever.
STATUS = Script("status", """#!lua flags=no-writes
local out = {}
for i = 1, #KEYS, 3 do
  -- Two calls for a run with meta (the common, repeated liveness check); more only for the
  -- rare cases: no meta (never started, vanished, or written by the seed).
  local m = redis.pcall('HMGET', KEYS[i], 'seq', 'attempt', 'end')
  if m['err'] then m = {false, false, false} end
  local kind, state, last = 'stream', nil, ''
  if m[3] then state = 'ended'
  elseif m[2] and redis.call('TYPE', KEYS[i + 1])['ok'] == 'string' then state = 'live'
  elseif m[2] == '0' then state = 'pending'
  elseif m[2] then state = 'idle'
  else
    state = 'missing'
    kind = redis.call('TYPE', KEYS[i + 2])['ok']
    if kind == 'stream' then
      -- Written by the seed: its last entry tells the last seq and whether it ended.
      local entry = redis.call('XREVRANGE', KEYS[i + 2], '+', '-', 'COUNT', 1)[1]
      if entry then
        local f = {}
        for j = 1, #entry[2], 2 do f[entry[2][j]] = entry[2][j + 1] end
        m[1] = f['seq_id']
        if f['complete'] == 'true' then last = f['data'] or '' end
      end
    end
  end
  out[#out + 1] = {state, tonumber(m[1] or '0'), tonumber(m[2] or '0'), m[3] or '', kind, last}
end
return out
""")

