"""The registry's Lua scripts: everything that must change together runs in one script, so a
subscribe, an unsubscribe, a removal and a fan-out claim never see each other half done.

Their KEYS come from `realtime.keys`; the scripts that reach a connection's keys hash from its
id (or its per-address set from its meta) build the name from the same constants (prepended as
Lua locals), never from a literal.

Admission is decided inside the scripts that record: a connect checks the caps in the script
that writes the connection, a subscribe checks the instrument master in the script that records
the keys, so concurrent Lambdas cannot together pass a limit and a refusal writes nothing.
"""

from __future__ import annotations

from realtime import keys

# Window keys per HMGET/HSET inside the claim script: Lua's unpack() has a stack limit.
CLAIM_CHUNK = 1000

_CONN_KEYS = (f"local _CONN_KEYS_PREFIX, _CONN_KEYS_SUFFIX = "
              f"'{keys.CONN_PREFIX}', '{keys.CONN_KEYS_SUFFIX}'\n")
_SOURCE_IP = (f"local _SOURCE_IP_PREFIX, _SOURCE_IP_FIELD = "
              f"'{keys.SOURCE_IP_PREFIX}', '{keys.SOURCE_IP_FIELD}'\n")

# Versions compare as decimal strings: Lua numbers are doubles and would round big versions.
NEWER = """
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
"""

# Epoch counters are compared for equality only ("did it move since I read it?"). A counter
# that a cache wipe reset to nothing must not count up to a value a reader cached before the
# wipe (it would then never re-read): a missing counter starts at the server's clock in
# microseconds, far above anything counted since the previous start.
BUMP_FN = """
local function bump(key)
  if redis.call('EXISTS', key) == 1 then return redis.call('INCR', key) end
  local now = redis.call('TIME')
  local start = string.format('%d', tonumber(now[1]) * 1000000 + tonumber(now[2]))
  redis.call('SET', key, start)
  return start
end
"""

# KEYS: connections, shard, shards, shard epoch, meta[, source address set, the address's
# cool-off]. ARGV: connection
# id, expires_at (the ZSET scores), the meta's expire_at, shard number, the cap on live
# connections (0: none), the cap per source address (0: none), then the meta's field/value
# pairs. Returns 0 recorded, -1 the address is at its cap, -2 the registry is full, -3 the
# address is cooling off after an abuse cut; a refused
# connection writes nothing (expired entries of the address's set are pruned, nothing else).
# Serialised by Redis, so the caps are exact: concurrent connects never pass them together.
# A retried `$connect` of a registered id is recorded again without counting twice.
CONNECT = BUMP_FN + """
local cid, expires = ARGV[1], ARGV[2]
local now = tonumber(redis.call('TIME')[1])
if not redis.call('ZSCORE', KEYS[1], cid) then
  if KEYS[7] and redis.call('EXISTS', KEYS[7]) == 1 then return -3 end
  local total, per_ip = tonumber(ARGV[5]), tonumber(ARGV[6])
  if total > 0 and redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf') >= total then
    return -2
  end
  if KEYS[6] and per_ip > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
    if redis.call('ZCARD', KEYS[6]) >= per_ip then return -1 end
  end
end
redis.call('HSET', KEYS[5], unpack(ARGV, 7))
redis.call('EXPIREAT', KEYS[5], ARGV[3])
redis.call('ZADD', KEYS[1], expires, cid)
redis.call('ZADD', KEYS[2], expires, cid)
redis.call('SADD', KEYS[3], ARGV[4])
if KEYS[6] then
  redis.call('ZADD', KEYS[6], expires, cid)
  -- The set lives as long as its newest entry counts.
  if redis.call('TTL', KEYS[6]) < tonumber(expires) - now then
    redis.call('EXPIREAT', KEYS[6], expires)
  end
end
bump(KEYS[4])
return 0
"""

# KEYS: meta. ARGV: tokens per second, burst, penalty (microseconds), strikes. The message
# token bucket of one connection, in its own meta hash (so every Lambda container shares it),
# timed by the server's clock. Returns {verdict, retry_after_ms}: 0 allowed, 1 over the limit
# (tell the client once), 2 dropped without a reply, 3 disconnect, -1 unknown connection
# (nothing written: a meta hash created here would have no expiry and would make the
# connection look registered).
# Over the limit starts a penalty window in which every message is dropped. Dropped messages
# still take a token, down to a debt of one burst: a client that keeps sending through the
# window is still over the limit when it ends, and each such window is a strike (the first
# one is answered, the rest are silent); `strikes` windows in a row disconnect it. The message
# that opens a window takes no token, so a client that waits the window out (at least one
# token's refill) finds a token; a message that finds one clears the strikes.
THROTTLE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local penalty, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HMGET', KEYS[1], 'rl_tokens', 'rl_at', 'rl_until', 'rl_strikes')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
local ends = tonumber(state[3]) or 0
local strikes = tonumber(state[4]) or 0
if now > at then tokens = math.min(burst, tokens + (now - at) * rate / 1000000) end
local verdict = 0
if now < ends then
  verdict = 2
  tokens = math.max(-burst, tokens - 1)
elseif tokens >= 1 then
  tokens = tokens - 1
  strikes = 0
else
  strikes = strikes + 1
  ends = now + penalty
  if strikes >= limit then verdict = 3 elseif strikes == 1 then verdict = 1 else verdict = 2 end
end
redis.call('HSET', KEYS[1], 'rl_tokens', string.format('%.6f', tokens),
           'rl_at', string.format('%d', now), 'rl_until', string.format('%d', ends),
           'rl_strikes', strikes)
return {verdict, math.max(0, math.ceil((ends - now) / 1000))}
"""

# KEYS: meta, keys, refs, refs epoch, shard epoch, demand, carried, room, rejected,
# instrument master symbols. ARGV: limit, expire_at, control channel, wake message, key...
# Returns {status, total, {added...}, {refused...}, {unknown...}}: status 0 ok, -1 unknown
# connection, -2 over the limit. While an instrument master is loaded, a key it does not hold
# is unknown: refused, not counted against the limit, not recorded (no master: every key is
# accepted). A key the feed cannot carry (the streamer rejected it, or it is new to the feed
# and the room the streamer left for viewer demand is used up) is refused, not recorded.
# A key new to the feed wakes the streamer (a message on the control channel).
SUBSCRIBE = BUMP_FN + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0, {}, {}, {}} end
local limit = tonumber(ARGV[1])
local master = redis.call('EXISTS', KEYS[10]) == 1
-- Which segments the master lists (none recorded: a master loaded before they were, taken
-- to cover every segment).
local covers_all = redis.call('EXISTS', KEYS[11]) == 0
local function covered(key)
  return covers_all or redis.call('SISMEMBER', KEYS[11], string.match(key, '^[^:]*')) == 1
end
local fresh, unknown, seen = {}, {}, {}
for i = 5, #ARGV do
  local key = ARGV[i]
  if not seen[key] and redis.call('HEXISTS', KEYS[2], key) == 0 then
    if master and covered(key) and redis.call('HEXISTS', KEYS[10], key) == 0 then
      unknown[#unknown + 1] = key
    else
      fresh[#fresh + 1] = key
    end
  end
  seen[key] = true
end
local total = redis.call('HLEN', KEYS[2])
if total + #fresh > limit then return {-2, total, {}, {}, unknown} end
local room = redis.call('GET', KEYS[8])
local added, refused, wake = {}, {}, false
for _, key in ipairs(fresh) do
  local ok = redis.call('SISMEMBER', KEYS[9], key) == 0
  if ok and redis.call('HEXISTS', KEYS[6], key) == 0
      and redis.call('SISMEMBER', KEYS[7], key) == 0 then
    if room then
      if tonumber(room) > 0 then room = redis.call('DECR', KEYS[8]) else ok = false end
    end
    wake = wake or ok
  end
  if ok then
    redis.call('HSET', KEYS[2], key, '0')
    redis.call('HINCRBY', KEYS[3], key, 1)
    redis.call('HINCRBY', KEYS[6], key, 1)
    added[#added + 1] = key
  else
    refused[#refused + 1] = key
  end
end
if #added > 0 then
  bump(KEYS[4])
  bump(KEYS[5])
end
if wake then redis.call('PUBLISH', ARGV[3], ARGV[4]) end
redis.call('EXPIREAT', KEYS[2], ARGV[2])
return {0, total + #added, added, refused, unknown}
"""

# Drops one viewer of `key` from the deployment-wide demand (gone at 0).
_DROP_DEMAND = """
local function drop_demand(demand, key)
  if redis.call('HINCRBY', demand, key, -1) <= 0 then redis.call('HDEL', demand, key) end
end
"""

# KEYS: keys, refs, refs epoch, shard epoch, demand. ARGV: key... Returns the keys removed.
UNSUBSCRIBE = BUMP_FN + _DROP_DEMAND + """
local removed = {}
for i = 1, #ARGV do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    removed[#removed + 1] = ARGV[i]
    if redis.call('HINCRBY', KEYS[2], ARGV[i], -1) <= 0 then
      redis.call('HDEL', KEYS[2], ARGV[i])
    end
    drop_demand(KEYS[5], ARGV[i])
  end
end
if #removed > 0 then
  bump(KEYS[3])
  bump(KEYS[4])
end
return removed
"""

# KEYS: connections, shard, refs, meta, keys, refs epoch, shard epoch, demand. ARGV:
# connection id. Frees its slot of its source address's cap (the address is in its meta). A
# carried update of a removed connection is dropped by the next claim.
REMOVE = BUMP_FN + _DROP_DEMAND + _SOURCE_IP + """
local ip = redis.call('HGET', KEYS[4], _SOURCE_IP_FIELD)
if ip and ip ~= '' then redis.call('ZREM', _SOURCE_IP_PREFIX .. ip, ARGV[1]) end
local keys = redis.call('HKEYS', KEYS[5])
for _, key in ipairs(keys) do
  if redis.call('HINCRBY', KEYS[3], key, -1) <= 0 then redis.call('HDEL', KEYS[3], key) end
  drop_demand(KEYS[8], key)
end
if #keys > 0 then bump(KEYS[6]) end
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[1], ARGV[1])
local was = redis.call('ZREM', KEYS[2], ARGV[1])
if was == 1 or #keys > 0 then bump(KEYS[7]) end
return was
"""

# KEYS: keys, shard epoch. ARGV: (key, version) pairs. Raises the floor of still-subscribed
# keys to their snapshot version; returns how many moved.
SNAPSHOT = BUMP_FN + NEWER + """
local changed = 0
for i = 1, #ARGV, 2 do
  local floor = redis.call('HGET', KEYS[1], ARGV[i])
  if floor and newer(ARGV[i + 1], floor) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    changed = changed + 1
  end
end
if changed > 0 then bump(KEYS[2]) end
return changed
"""

# KEYS: shard, shard epoch. ARGV: now. Returns {epoch, {id, {key, floor, ...}, ...}}: every
# live connection of the shard with its keys and floors, read atomically with the epoch.
SUBSCRIPTIONS = _CONN_KEYS + """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local out = {}
for _, cid in ipairs(ids) do
  out[#out + 1] = cid
  out[#out + 1] = redis.call('HGETALL', _CONN_KEYS_PREFIX .. cid .. _CONN_KEYS_SUFFIX)
end
return {redis.call('GET', KEYS[2]) or '0', out}
"""

# KEYS: sent, carry, shard epoch. ARGV: expire_at, the window as one "key version key version"
# string (one argument instead of two per key: packing them was most of the client's cost).
# Claims each key whose version is newer than the newest claimed for the shard (so a late or
# replayed window sends nothing older), then takes the carried updates that are still the
# newest claimed version of their key (an older one was overtaken: its successor is being
# delivered or carried). Returns {epoch, {claimed key...}, {carry field, update JSON, ...}}.
CLAIM = NEWER + """
local names, versions = {}, {}
for key, version in string.gmatch(ARGV[2], '(%S+) (%d+)') do
  names[#names + 1] = key
  versions[#versions + 1] = version
end
local n = #names
local fresh = {}
local first = 1
while first <= n do
  local last = math.min(n, first + """ + str(CLAIM_CHUNK - 1) + """)
  local keys = {}
  for i = first, last do keys[#keys + 1] = names[i] end
  local sent = redis.call('HMGET', KEYS[1], unpack(keys))
  local claims = {}
  for j, key in ipairs(keys) do
    local version = versions[first + j - 1]
    if (not sent[j]) or newer(version, sent[j]) then
      claims[#claims + 1] = key
      claims[#claims + 1] = version
      fresh[#fresh + 1] = key
    end
  end
  if #claims > 0 then redis.call('HSET', KEYS[1], unpack(claims)) end
  first = last + 1
end
if #fresh > 0 then redis.call('EXPIREAT', KEYS[1], ARGV[1]) end
local carried = {}
local flat = redis.call('HGETALL', KEYS[2])
if #flat > 0 then
  redis.call('DEL', KEYS[2])
  for p = 1, #flat, 2 do
    local key = string.match(flat[p], ' ([^ ]+)$')
    local version = string.match(flat[p + 1], '"version":(%d+)')
    if key and version and redis.call('HGET', KEYS[1], key) == version then
      carried[#carried + 1] = flat[p]
      carried[#carried + 1] = flat[p + 1]
    end
  end
end
return {redis.call('GET', KEYS[3]) or '0', fresh, carried}
"""

# KEYS: sent, carry, pending shards. ARGV: expire_at, shard, then (connection id, key,
# version, update JSON) quads. Keeps a failed update for the connection's next message only
# while it is the newest version claimed for its key (else its successor is on its way) and
# the connection still wants the key.
DEFER = _CONN_KEYS + """
local kept = 0
for i = 3, #ARGV, 4 do
  local cid, key = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[1], key) == ARGV[i + 2]
      and redis.call('HEXISTS', _CONN_KEYS_PREFIX .. cid .. _CONN_KEYS_SUFFIX, key) == 1 then
    redis.call('HSET', KEYS[2], cid .. ' ' .. key, ARGV[i + 3])
    kept = kept + 1
  end
end
if kept > 0 then
  redis.call('EXPIREAT', KEYS[2], ARGV[1])
  redis.call('SADD', KEYS[3], ARGV[2])
end
return kept
"""
