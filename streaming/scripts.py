"""Server-side scripts: each one atomic step of the run protocol (see ``streaming.wire``).

Scripts carry a ``#!lua`` line so the server refuses them whole when it is out of memory
instead of failing halfway, and list every key they touch (Redis Cluster routes them).
Replies are arrays; refusals are error replies whose first word (``STALE``, ``GONE``,
``CLOSED``, ``ORDER``) the writer turns into an exception.

Times are the server's (``TIME``, in milliseconds), stored in the run's meta hash: ``queued``
(``MARK``), ``expires`` (the lease's expiry, written with every ``CLAIM``, ``APPEND`` and
``REFRESH``, and set to now by ``RELEASE``). Every liveness decision (``STATUS`` tells them,
``END`` acts on them) compares them with the server's clock, never a reader's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .wire import DOORBELL

__all__ = ["APPEND", "CLAIM", "END", "MARK", "REFRESH", "RELEASE", "STATUS", "Script"]


@dataclass(frozen=True)
class Script:
    name: str
    source: str

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.source.encode()).hexdigest()


# The server's clock in milliseconds.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: stream, meta, lease. A key of the run that holds another kind of value (someone
# else's key) stops the script: -> {"wrongtype", key, its type}, the key left as it is.
_KEY_TYPES = """
local kinds = {'stream', 'hash', 'string'}
for i = 1, 3 do
  local kind = redis.call('TYPE', KEYS[i])['ok']
  if kind ~= 'none' and kind ~= kinds[i] then
    return {'wrongtype', KEYS[i], kind}
  end
end
"""

# KEYS: meta. ARGV: ttl. Records a queued run (attempt 0) and the time it was queued; a run
# already known (queued, claimed or ended) keeps its fields and expiry. -> server time (ms)
MARK = Script("mark", "#!lua\n" + _NOW + """
redis.call('HSETNX', KEYS[1], 'attempt', 0)
redis.call('HSETNX', KEYS[1], 'seq', 0)
redis.call('HSETNX', KEYS[1], 'queued', now)
if redis.call('TTL', KEYS[1]) == -1 then
  redis.call('EXPIRE', KEYS[1], ARGV[1])
end
return now
""")

# KEYS: stream, meta, lease. ARGV: token, lease_ms, ttl, resume ('1' or '0').
# -> {"ok", attempt, last seq, cancel, chunks, server time}
#    | {"busy", lease pttl} | {"ended", end kind, last seq}
#    | {"wrongtype", key, its type}: a key of the run holds another kind of value (someone
#    else's key: left as it is, expiry included)
# ``chunks`` counts the output chunks stored (``APPEND``): a new attempt that does not resume
# starts it over at 0, one that resumes continues after it.
CLAIM = Script("claim", "#!lua\n" + _NOW + _KEY_TYPES + """
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
  if ARGV[4] ~= '1' then redis.call('HSET', KEYS[2], 'chunks', 0) end
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'expires', now + tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[3])
local m = redis.call('HMGET', KEYS[2], 'seq', 'cancel', 'chunks')
return {'ok', attempt, tonumber(m[1]), m[2] or '', tonumber(m[3] or '0'), now}
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
#       timestamp ms, notify channel ('' for none), first output index, weights ('' for
#       none: "index:weight,..." of frames that hold several merged text deltas), max stream
#       bytes, frame...
# Appends the frames the meta hash has not acknowledged yet, so a batch replayed after a
# lost reply adds nothing twice. Frames from local index ``first output index`` on are output
# chunks (before it: the ``restarted`` event) and are counted in the meta's ``chunks`` (a
# merged frame by its weight), the ending excepted. The meta's ``bytes`` sums the frames
# stored plus 32 per entry; the stream is trimmed to the entries of the run's average size
# that fit in max stream bytes (and never beyond maxlen entries). In a cluster the writer
# names the run's shard channel (same slot): the new last seq is published there once per
# call that added entries, which is how readers' hubs learn of them (best effort: readers
# also poll quiet runs' status).
# -> {last seq, acked, cancel}
APPEND = Script("append", "#!lua\n" + _OWNER_CHECK + _NOW + """
local acked = tonumber(redis.call('HGET', KEYS[2], 'acked'))
local first = tonumber(ARGV[6])
local n = #ARGV - 12
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
local output = tonumber(ARGV[10])
local weights = {}
for index, weight in string.gmatch(ARGV[11], '(%d+):(%d+)') do
  weights[tonumber(index)] = tonumber(weight)
end
local maxlen = tonumber(ARGV[5])
local stored = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
if stored > 0 and seq > 0 then
  maxlen = math.min(maxlen, math.max(math.floor(tonumber(ARGV[12]) * seq / stored), 1))
end
local counted, added = 0, 0
-- Only the call's last XADD trims (MAXLEN ~): fewer arguments for the server to parse per chunk,
-- and the stream ends the call as trimmed as if every XADD had trimmed. (Not XTRIM: the ACLs
-- already granted, deploy/redis.acl, need no new command.)
for i = acked - first + 2, n - 1 do
  seq = seq + 1
  local data = ARGV[12 + i]
  added = added + #data + 32
  redis.call('XADD', KEYS[1], '0-' .. seq, 'seq_id', seq, 'data', data, 'timestamp', ARGV[8])
  if first + i - 1 >= output then counted = counted + (weights[first + i - 1] or 1) end
end
seq = seq + 1
local data = ARGV[12 + n]
added = added + #data + 32
if ending ~= '' then
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '0-' .. seq, 'seq_id', seq, 'data', data,
    'timestamp', ARGV[8], 'complete', 'true')
else
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '0-' .. seq, 'seq_id', seq, 'data', data,
    'timestamp', ARGV[8])
  if first + n - 1 >= output then counted = counted + (weights[first + n - 1] or 1) end
end
acked = first + n - 1
redis.call('HSET', KEYS[2], 'seq', seq, 'acked', acked)
redis.call('HINCRBY', KEYS[2], 'bytes', added)
if counted > 0 then redis.call('HINCRBY', KEYS[2], 'chunks', counted) end
if ending ~= '' then
  redis.call('HSET', KEYS[2], 'end', ending, 'expires', now)
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  redis.call('DEL', KEYS[3])
else
  redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
  redis.call('HSET', KEYS[2], 'expires', now + tonumber(ARGV[2]))
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
if ARGV[9] ~= '' then
  redis.pcall('SPUBLISH', ARGV[9], seq)  -- a lost notification must not fail a stored write
end
return {seq, acked, cancel}
""")

# KEYS: stream, meta, lease. ARGV: token, lease_ms, ttl. Keeps a quiet run's lease and TTLs;
# refused (``CLOSED``) once the run ended, e.g. by ``END`` while this writer was cut off.
# -> {last seq, acked, cancel}
REFRESH = Script("refresh", "#!lua\n" + _OWNER_CHECK + _NOW + """
if redis.call('HEXISTS', KEYS[2], 'end') == 1 then
  return redis.error_reply('CLOSED the run already ended')
end
redis.call('SET', KEYS[3], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[2], 'expires', now + tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
local m = redis.call('HMGET', KEYS[2], 'seq', 'acked', 'cancel')
return {tonumber(m[1]), tonumber(m[2]), m[3] or ''}
""")

# KEYS: stream, meta, lease. ARGV: token. Drops the lease if this writer holds it; the
# requeue grace (``producer_timeout``) starts now.
RELEASE = Script("release", "#!lua\n" + _NOW + """
if redis.call('GET', KEYS[3]) == ARGV[1] then
  if redis.call('HEXISTS', KEYS[2], 'end') == 0 then
    redis.call('HSET', KEYS[2], 'expires', now)
  end
  return redis.call('DEL', KEYS[3])
end
return 0
""")

# KEYS: meta1, lease1, stream1, meta2, ... (one slot in a cluster: call it per run there).
# -> for each run {state, last seq, attempt, end kind, type of the stream key, the ending frame
#    of a stream the seed wrote (no meta) or '', server time, queued time, lease expiry};
#    state: missing | pending | live | idle | ended. Only a string is a lease: a key of another
#    kind under a lease's name must not keep readers waiting for a producer forever. Times are
#    the server's, in ms; 0 when not stored (server time: when the caller may not run TIME).
STATUS = Script("status", """#!lua flags=no-writes
-- TIME is not a @read command: an ACL that allows only those gets 0 (no verdict on deadlines).
local clock = redis.pcall('TIME')
local now = 0
if not clock['err'] then
  now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end
-- A writer holds the lease until its stored expiry: judged from that, with the server's clock,
-- so the common, repeated liveness check is one call per run. Without the clock or a stored
-- expiry (a meta written by an older version), the lease key itself; only a string is a lease.
local function held(lease, expires)
  if now > 0 and expires then return tonumber(expires) > now end
  return redis.call('TYPE', lease)['ok'] == 'string'
end
local out = {}
for i = 1, #KEYS, 3 do
  -- One call for a run with meta; more only for the rare cases: no meta (never started,
  -- vanished, or written by the seed).
  local m = redis.pcall('HMGET', KEYS[i], 'seq', 'attempt', 'end', 'queued', 'expires')
  if m['err'] then m = {false, false, false, false, false} end
  local kind, state, last = 'stream', nil, ''
  if m[3] then state = 'ended'
  elseif m[2] == '0' then state = 'pending'  -- never claimed: no lease to look at
  elseif m[2] and held(KEYS[i + 1], m[5]) then state = 'live'
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
  out[#out + 1] = {state, tonumber(m[1] or '0'), tonumber(m[2] or '0'), m[3] or '', kind, last,
                   now, tonumber(m[4] or '0'), tonumber(m[5] or '0')}
end
return out
""")

# KEYS: stream, meta, lease.
# ARGV: when (due | not_live | always), queue_timeout ms, producer_timeout ms, retention,
#       maxlen, notify channel ('' for none), kind and frame if the run is pending,
#       kind and frame if it was claimed.
# The notification is the new last seq on the run's shard channel (a cluster), or the stream
# key on the doorbell channel (``wire.DOORBELL``, a single server), as a writer's flush rings it.
# The guarded ending: writes the run's terminal entry exactly as ``APPEND`` would (next seq
# id, entry id 0-<seq>, ``complete`` true, meta ``end``, retention TTLs, lease dropped, shard
# notification) if ``when`` allows it, judged by the server's clock:
#   due       the run is overdue: queued (attempt 0) for at least queue_timeout, or claimed
#             and its lease lapsed (no lease) for at least producer_timeout. A queued run
#             without a stored queued time (marked by an older version) is never overdue.
#   not_live  no writer holds a live lease;
#   always    even over a live writer: its next ``APPEND`` or ``REFRESH`` is refused CLOSED.
# A later attempt's ``CLAIM`` then finds the run ended and writes nothing.
# -> {"ended", kind, last seq} (ended now or before) | {"missing"} | {"live", lease pttl}
#    | {"early", ms until due} | {"wrongtype", key, its type}
END = Script("end", "#!lua\n" + _NOW + _KEY_TYPES + """
local m = redis.call('HMGET', KEYS[2], 'seq', 'attempt', 'end', 'queued', 'expires')
if m[3] then
  return {'ended', m[3], tonumber(m[1] or '0')}
end
if not m[2] then
  return {'missing'}
end
local when = ARGV[1]
if when ~= 'always' and redis.call('EXISTS', KEYS[3]) == 1 then
  return {'live', redis.call('PTTL', KEYS[3])}
end
local pending = m[2] == '0'
if when == 'due' then
  local left
  if pending then
    if not m[4] then return {'early', -1} end
    left = tonumber(m[4]) + tonumber(ARGV[2]) - now
  else
    left = tonumber(m[5] or '0') + tonumber(ARGV[3]) - now
  end
  if left > 0 then return {'early', left} end
end
local kind, frame = ARGV[9], ARGV[10]
if pending then kind, frame = ARGV[7], ARGV[8] end
local seq = tonumber(m[1] or '0') + 1
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], '0-' .. seq, 'seq_id', seq,
  'data', frame, 'timestamp', now, 'complete', 'true')
redis.call('HSET', KEYS[2], 'seq', seq, 'end', kind, 'expires', now)
redis.call('EXPIRE', KEYS[1], ARGV[4])
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('DEL', KEYS[3])
if ARGV[6] == '""" + DOORBELL + """' then
  redis.pcall('SPUBLISH', ARGV[6], KEYS[1])
elseif ARGV[6] ~= '' then
  redis.pcall('SPUBLISH', ARGV[6], seq)
end
return {'ended', kind, seq}
""")
