"""The WebSocket connection registry in Redis: who is connected, in which shard, wanting what.

Layout (names in `core.names`): per connection a meta hash, a key set, a `sent` hash (newest
version claimed per key) and a `pending` hash (updates whose post failed); per shard a ZSET of
connection ids scored by expiry and a refcount hash of the keys its connections want; a global
ZSET for the connection count. Everything that must change together runs in one Lua script, so
a subscribe, an unsubscribe, a removal and a fan-out claim never see each other half done.

Connections are sharded by `crc32(connection_id) % shards`; one fan-out invocation handles one
shard. A connection is live until its expiry score (connect time + API Gateway's 2 h), even if
`$disconnect` never arrives; each fan-out sweeps its shard's expired ones (dropping their
refcounts; the bridge invokes every shard now and then for this) and the data itself expires an
hour later as a backstop.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core import names
from core.messages import dumps, loads

DEFAULT_SHARDS = 16
# Connections per claim script call: bounds how long one call blocks Redis (~100 ops each).
_CLAIM_BATCH = 100
MAX_KEYS_PER_CONNECTION = 1000

# KEYS: meta, keys, refs, sent, refs epoch. ARGV: limit, expire_at, key...
# Returns {status, total, new keys...}: status 0 ok, -1 unknown connection, -2 over the limit.
_SUBSCRIBE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local limit = tonumber(ARGV[1])
local fresh = {}
for i = 3, #ARGV do
  if redis.call('SISMEMBER', KEYS[2], ARGV[i]) == 0 then fresh[#fresh + 1] = ARGV[i] end
end
local total = redis.call('SCARD', KEYS[2])
if total + #fresh > limit then return {-2, total} end
for _, key in ipairs(fresh) do
  redis.call('SADD', KEYS[2], key)
  redis.call('HINCRBY', KEYS[3], key, 1)
end
if #fresh > 0 then redis.call('INCR', KEYS[5]) end
redis.call('EXPIREAT', KEYS[2], ARGV[2])
redis.call('EXPIREAT', KEYS[4], ARGV[2])
local result = {0, total + #fresh}
for _, key in ipairs(fresh) do result[#result + 1] = key end
return result
"""

# KEYS: keys, refs, sent, pending, refs epoch. ARGV: key... Returns the keys actually removed.
_UNSUBSCRIBE = """
local removed = {}
for i = 1, #ARGV do
  if redis.call('SREM', KEYS[1], ARGV[i]) == 1 then
    removed[#removed + 1] = ARGV[i]
    if redis.call('HINCRBY', KEYS[2], ARGV[i], -1) <= 0 then
      redis.call('HDEL', KEYS[2], ARGV[i])
    end
    redis.call('HDEL', KEYS[3], ARGV[i])
    redis.call('HDEL', KEYS[4], ARGV[i])
  end
end
if #removed > 0 then redis.call('INCR', KEYS[5]) end
return removed
"""

# KEYS: connections, shard, refs, meta, keys, sent, pending, refs epoch. ARGV: connection id.
_REMOVE = """
local keys = redis.call('SMEMBERS', KEYS[5])
for _, key in ipairs(keys) do
  if redis.call('HINCRBY', KEYS[3], key, -1) <= 0 then redis.call('HDEL', KEYS[3], key) end
end
if #keys > 0 then redis.call('INCR', KEYS[8]) end
redis.call('DEL', KEYS[4], KEYS[5], KEYS[6], KEYS[7])
redis.call('ZREM', KEYS[1], ARGV[1])
return redis.call('ZREM', KEYS[2], ARGV[1])
"""

# KEYS: sent, pending. ARGV: expire_at, then (key, version) pairs.
# A key is claimed when its version is newer than the newest one claimed before, or equal to
# it while a failed post of that very version waits in `pending` (a retry). A late window thus
# never sends an older version than one already sent. Returns the claimed keys.
_CLAIM = """
-- Versions compare as decimal strings: Lua numbers are doubles and would round big versions.
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local claimed = {}
for i = 2, #ARGV, 2 do
  local key, version = ARGV[i], ARGV[i + 1]
  local sent = redis.call('HGET', KEYS[1], key)
  local ok = (not sent) or newer(version, sent)
  if not ok and version == sent then ok = redis.call('HEXISTS', KEYS[2], key) == 1 end
  if ok then
    redis.call('HSET', KEYS[1], key, ARGV[i + 1])
    redis.call('HDEL', KEYS[2], key)
    claimed[#claimed + 1] = key
  end
end
if #claimed > 0 then redis.call('EXPIREAT', KEYS[1], ARGV[1]) end
return claimed
"""

# KEYS: sent, pending, keys. ARGV: expire_at, then (key, version, update JSON) triples.
# Keeps a failed update for the next message unless something newer was claimed meanwhile or
# the key was unsubscribed.
_DEFER = """
local kept = 0
for i = 2, #ARGV, 3 do
  local key = ARGV[i]
  local current = redis.call('HGET', KEYS[1], key) == ARGV[i + 1]
  if current and redis.call('SISMEMBER', KEYS[3], key) == 1 then
    redis.call('HSET', KEYS[2], key, ARGV[i + 2])
    kept = kept + 1
  end
end
if kept > 0 then redis.call('EXPIREAT', KEYS[2], ARGV[1]) end
return kept
"""


# The fan-out's per-window claim for many connections in one call. ARGV: expire_at, the number
# n of window entries, n (key, version) pairs, then connection ids. Per connection: its keys
# that the window has in a newer version than claimed before, and its carried-over updates
# (pending JSON) that are still the newest claimed-or-pending value of a subscribed key; all
# of them are claimed. Returns one JSON document {id: [[window keys], [pending JSON]]}, which
# is far cheaper to move than per-connection replies. Key names are built here, which is fine
# with cluster mode off (ElastiCache replication group; see aws-facts).
_CLAIM_WINDOW = """
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
local expire_at, n = ARGV[1], tonumber(ARGV[2])
local window = {}
for i = 3, 2 + 2 * n, 2 do window[ARGV[i]] = ARGV[i + 1] end
local out = {}
for j = 3 + 2 * n, #ARGV do
  local cid = ARGV[j]
  local base = 'ws:conn:' .. cid
  local sent_key, pending_key = base .. ':sent', base .. ':pending'
  local pending = {}
  local flat = redis.call('HGETALL', pending_key)
  for p = 1, #flat, 2 do pending[flat[p]] = flat[p + 1] end
  local fresh, carried, claims = {}, {}, {}
  local keys = redis.call('SMEMBERS', base .. ':keys')
  -- One HMGET and one HSET per connection: redis.call itself is the cost that adds up.
  local sent = #keys > 0 and redis.call('HMGET', sent_key, unpack(keys)) or {}
  for i, key in ipairs(keys) do
    local version = window[key]
    local held = pending[key]
    local held_version = held and string.match(held, '"version":(%d+)')
    local last = sent[i]
    if version and held_version and not newer(version, held_version) then version = nil end
    if version and ((not last) or newer(version, last)) then
      claims[#claims + 1] = key
      claims[#claims + 1] = version
      fresh[#fresh + 1] = key
    elseif held_version and ((not last) or newer(held_version, last) or held_version == last) then
      claims[#claims + 1] = key
      claims[#claims + 1] = held_version
      carried[#carried + 1] = held
    end
  end
  if #flat > 0 then redis.call('DEL', pending_key) end
  if #claims > 0 then
    redis.call('HSET', sent_key, unpack(claims))
    redis.call('EXPIREAT', sent_key, expire_at)
    out[cid] = {fresh, carried}
  end
end
if next(out) == nil then return '{}' end
return cjson.encode(out)
"""


class SyncRedis(Protocol):
    """The redis-py (sync) methods used."""

    def register_script(self, script: str) -> Any: ...
    def pipeline(self, transaction: bool = True) -> Any: ...
    def zrangebyscore(self, name: str, min: float | str, max: float | str, start: int | None = None,
                      num: int | None = None) -> Any: ...
    def zcount(self, name: str, min: float | str, max: float | str) -> Any: ...
    def hget(self, name: str, key: str) -> Any: ...
    def hgetall(self, name: str) -> Any: ...
    def smembers(self, name: str) -> Any: ...
    def sadd(self, name: str, *values: Any) -> Any: ...


def shard_of(connection_id: str, shards: int) -> int:
    return zlib.crc32(connection_id.encode()) % shards


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    ok: bool
    added: list[str]
    total: int
    reason: str = ""


class ConnectionRegistry:
    def __init__(
        self,
        *,
        redis: SyncRedis,
        shards: int = DEFAULT_SHARDS,
        max_keys: int = MAX_KEYS_PER_CONNECTION,
        max_connection_seconds: int = names.WS_MAX_CONNECTION_SECONDS,
    ) -> None:
        self._redis = redis
        self.shards = shards
        self.max_keys = max_keys
        self._lifetime = max_connection_seconds
        self._subscribe = redis.register_script(_SUBSCRIBE)
        self._unsubscribe = redis.register_script(_UNSUBSCRIBE)
        self._remove = redis.register_script(_REMOVE)
        self._claim = redis.register_script(_CLAIM)
        self._defer = redis.register_script(_DEFER)
        self._claim_window = redis.register_script(_CLAIM_WINDOW)

    # --- $connect / $disconnect -------------------------------------------------------------

    def connect(self, connection_id: str, *, meta: Mapping[str, str | int],
                connected_at: float | None = None) -> int:
        """Record a connection; returns its shard."""
        start = time.time() if connected_at is None else connected_at
        expires = int(start + self._lifetime) + 1
        shard = shard_of(connection_id, self.shards)
        fields = {**{k: str(v) for k, v in meta.items()}, "shard": str(shard),
                  "expires_at": str(expires)}
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(names.ws_conn_key(connection_id), mapping=fields)
        pipe.expireat(names.ws_conn_key(connection_id), expires + names.WS_EXPIRY_MARGIN_SECONDS)
        pipe.zadd(names.WS_CONNECTIONS_KEY, {connection_id: expires})
        pipe.zadd(names.ws_shard_key(shard), {connection_id: expires})
        pipe.sadd(names.WS_SHARDS_KEY, shard)
        pipe.execute()
        return shard

    def _expire_at(self, connection_id: str) -> int:
        raw = self._redis.hget(names.ws_conn_key(connection_id), "expires_at")
        base = int(raw) if raw else int(time.time()) + self._lifetime
        return base + names.WS_EXPIRY_MARGIN_SECONDS

    def shard(self, connection_id: str) -> int:
        raw = self._redis.hget(names.ws_conn_key(connection_id), "shard")
        return int(raw) if raw else shard_of(connection_id, self.shards)

    def remove(self, connection_id: str, *, shard: int | None = None) -> bool:
        """Forget a connection and drop its refcounts; True when it was still registered."""
        shard = self.shard(connection_id) if shard is None else shard
        keys = [names.WS_CONNECTIONS_KEY, names.ws_shard_key(shard), names.ws_shard_refs_key(shard),
                names.ws_conn_key(connection_id), names.ws_conn_keys_key(connection_id),
                names.ws_conn_sent_key(connection_id), names.ws_conn_pending_key(connection_id),
                names.WS_REFS_EPOCH_KEY]
        return bool(self._remove(keys=keys, args=[connection_id]))

    def sweep(self, shard: int, *, now: float | None = None, limit: int = 500) -> int:
        """Remove connections of `shard` past their expiry (no `$disconnect` came)."""
        current = time.time() if now is None else now
        expired = self._redis.zrangebyscore(names.ws_shard_key(shard), "-inf", current, 0, limit)
        for raw in expired:
            self.remove(_text(raw), shard=shard)
        return len(expired)

    def count(self, *, now: float | None = None) -> int:
        current = time.time() if now is None else now
        return int(self._redis.zcount(names.WS_CONNECTIONS_KEY, f"({current}", "+inf"))

    # --- subscriptions ----------------------------------------------------------------------

    def subscribe(self, connection_id: str, keys: Sequence[str]) -> SubscribeResult:
        """Record keys (at most `max_keys` in all) before any snapshot is read."""
        shard = self.shard(connection_id)
        reply = self._subscribe(
            keys=[names.ws_conn_key(connection_id), names.ws_conn_keys_key(connection_id),
                  names.ws_shard_refs_key(shard), names.ws_conn_sent_key(connection_id),
                  names.WS_REFS_EPOCH_KEY],
            args=[self.max_keys, self._expire_at(connection_id), *keys],
        )
        status, total = int(reply[0]), int(reply[1])
        if status == -1:
            return SubscribeResult(False, [], 0, "unknown connection")
        if status == -2:
            return SubscribeResult(
                False, [], total,
                f"at most {self.max_keys} keys per connection ({total} already subscribed)")
        return SubscribeResult(True, [_text(k) for k in reply[2:]], total)

    def unsubscribe(self, connection_id: str, keys: Sequence[str]) -> list[str]:
        shard = self.shard(connection_id)
        reply = self._unsubscribe(
            keys=[names.ws_conn_keys_key(connection_id), names.ws_shard_refs_key(shard),
                  names.ws_conn_sent_key(connection_id), names.ws_conn_pending_key(connection_id),
                  names.WS_REFS_EPOCH_KEY],
            args=list(keys),
        )
        return [_text(k) for k in reply]

    def keys(self, connection_id: str) -> set[str]:
        return {_text(k) for k in self._redis.smembers(names.ws_conn_keys_key(connection_id))}

    def mark_snapshot(self, connection_id: str, versions: Mapping[str, int]) -> list[str]:
        """Record snapshot versions as sent, so the stream never goes back behind them."""
        if not versions:
            return []
        return self.claim(connection_id, [(k, v) for k, v in versions.items()])

    # --- fan-out ----------------------------------------------------------------------------

    def live_connections(self, shard: int, *, now: float | None = None) -> list[str]:
        current = time.time() if now is None else now
        raw = self._redis.zrangebyscore(names.ws_shard_key(shard), f"({current}", "+inf")
        return [_text(r) for r in raw]

    def claim(self, connection_id: str, candidates: Iterable[tuple[str, int]]) -> list[str]:
        return self.claim_many({connection_id: list(candidates)})[connection_id]

    def claim_many(self, candidates: Mapping[str, list[tuple[str, int]]]) -> dict[str, list[str]]:
        """Claim each connection's (key, version) pairs atomically per connection."""
        expire_at = int(time.time()) + self._lifetime + names.WS_EXPIRY_MARGIN_SECONDS
        pipe = self._redis.pipeline(transaction=False)
        order = []
        for cid, pairs in candidates.items():
            if not pairs:
                continue
            args: list[Any] = [expire_at]
            for key, version in pairs:
                args += [key, version]
            self._claim(keys=[names.ws_conn_sent_key(cid), names.ws_conn_pending_key(cid)],
                        args=args, client=pipe)
            order.append(cid)
        replies = pipe.execute() if order else []
        claimed: dict[str, list[str]] = {cid: [] for cid in candidates}
        for cid, reply in zip(order, replies, strict=True):
            claimed[cid] = [_text(k) for k in reply]
        return claimed

    def claim_window(
        self, connection_ids: Sequence[str], window: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, tuple[list[str], list[str]]]:
        """Per connection with something to send: (its keys whose window value is newer than
        what it was sent, its carried-over updates' JSON still worth sending); all claimed as
        sent. Keys and JSON rather than updates: the fan-out reuses each window update's JSON for
        every connection that gets it.

        One script call per connection batch keeps the per-window Redis work to a few round
        trips (a per-connection reply would cost more to move than the posts themselves)."""
        expire_at = int(time.time()) + self._lifetime + names.WS_EXPIRY_MARGIN_SECONDS
        versions: list[Any] = []
        for key, update in window.items():
            versions += [key, update["version"]]
        head = [expire_at, len(window), *versions]
        claims: dict[str, tuple[list[str], list[str]]] = {}
        for start in range(0, len(connection_ids), _CLAIM_BATCH):
            batch = connection_ids[start:start + _CLAIM_BATCH]
            reply = loads(self._claim_window(keys=[], args=[*head, *batch]))
            for cid, (fresh, carried) in reply.items():
                # cjson writes an empty Lua table as {}, not [].
                claims[cid] = (fresh or [], carried or [])
        return claims

    def defer(self, failed: Mapping[str, Sequence[Mapping[str, Any]]], *, shard: int) -> int:
        """Carry updates whose post failed into each connection's next message."""
        expire_at = int(time.time()) + self._lifetime + names.WS_EXPIRY_MARGIN_SECONDS
        pipe = self._redis.pipeline(transaction=False)
        count = 0
        for cid, updates in failed.items():
            if not updates:
                continue
            args: list[Any] = [expire_at]
            for update in updates:
                args += [update["key"], update["version"], dumps(dict(update))]
            self._defer(keys=[names.ws_conn_sent_key(cid), names.ws_conn_pending_key(cid),
                              names.ws_conn_keys_key(cid)], args=args, client=pipe)
            count += 1
        if not count:
            return 0
        kept = sum(int(r) for r in pipe.execute())
        if kept:
            self._redis.sadd(names.WS_PENDING_SHARDS_KEY, shard)
        return kept
