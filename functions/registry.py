"""The WebSocket connection registry in Redis: who is connected, in which shard, wanting what.

Layout (names in `core.names`): per connection a meta hash and a hash of its keys, each with
its floor (the version its snapshot gave it, 0 before that); per shard a ZSET of connection ids
scored by expiry, a refcount hash of the keys its connections want, a `sent` hash (newest
version claimed per key for the whole shard), a `carry` hash (per connection and key, the
update whose post failed) and an epoch counter bumped by every change to who wants what; a
global ZSET for the connection count and a global refs epoch for the bridge. Everything that
must change together runs in one Lua script, so a subscribe, an unsubscribe, a removal and a
fan-out claim never see each other half done.

Why versions are claimed per shard, not per connection: every connection of a shard that wants
a key gets the same window's value of it, so one claim per key and shard says what is new. A
per-connection claim cost Redis ~60 us per connection and window (it was 95% of Redis' CPU at
1,000 connections); the shard claim costs about a microsecond per window key. What the shard
claim does not know is kept per connection where it is rare: the snapshot floor (a window older
than the snapshot is not sent) and the carry (a failed post is re-sent while it is still the
newest claimed version of its key).

Connections are sharded by `crc32(connection_id) % shards`; one fan-out invocation handles one
shard. A connection is live until its expiry score (connect time + API Gateway's 2 h), even if
`$disconnect` never arrives; each fan-out sweeps its shard's expired ones (dropping their
refcounts; the bridge invokes every shard now and then for this) and the data itself expires an
hour later as a backstop.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from core import names
from core.messages import dumps

DEFAULT_SHARDS = 16
MAX_KEYS_PER_CONNECTION = 1000
# Window keys per HMGET/HSET inside the claim script: Lua's unpack() has a stack limit.
_CLAIM_CHUNK = 1000

# Versions compare as decimal strings: Lua numbers are doubles and would round big versions.
_NEWER = """
local function newer(a, b)
  if #a ~= #b then return #a > #b end
  return a > b
end
"""

# KEYS: meta, keys, refs, refs epoch, shard epoch. ARGV: limit, expire_at, key...
# Returns {status, total, new keys...}: status 0 ok, -1 unknown connection, -2 over the limit.
_SUBSCRIBE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local limit = tonumber(ARGV[1])
local fresh, seen = {}, {}
for i = 3, #ARGV do
  local key = ARGV[i]
  if not seen[key] and redis.call('HEXISTS', KEYS[2], key) == 0 then fresh[#fresh + 1] = key end
  seen[key] = true
end
local total = redis.call('HLEN', KEYS[2])
if total + #fresh > limit then return {-2, total} end
for _, key in ipairs(fresh) do
  redis.call('HSET', KEYS[2], key, '0')
  redis.call('HINCRBY', KEYS[3], key, 1)
end
if #fresh > 0 then
  redis.call('INCR', KEYS[4])
  redis.call('INCR', KEYS[5])
end
redis.call('EXPIREAT', KEYS[2], ARGV[2])
local result = {0, total + #fresh}
for _, key in ipairs(fresh) do result[#result + 1] = key end
return result
"""

# KEYS: keys, refs, refs epoch, shard epoch. ARGV: key... Returns the keys actually removed.
_UNSUBSCRIBE = """
local removed = {}
for i = 1, #ARGV do
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    removed[#removed + 1] = ARGV[i]
    if redis.call('HINCRBY', KEYS[2], ARGV[i], -1) <= 0 then
      redis.call('HDEL', KEYS[2], ARGV[i])
    end
  end
end
if #removed > 0 then
  redis.call('INCR', KEYS[3])
  redis.call('INCR', KEYS[4])
end
return removed
"""

# KEYS: connections, shard, refs, meta, keys, refs epoch, shard epoch. ARGV: connection id.
# A carried update of a removed connection is dropped by the next claim (nobody wants it).
_REMOVE = """
local keys = redis.call('HKEYS', KEYS[5])
for _, key in ipairs(keys) do
  if redis.call('HINCRBY', KEYS[3], key, -1) <= 0 then redis.call('HDEL', KEYS[3], key) end
end
if #keys > 0 then redis.call('INCR', KEYS[6]) end
redis.call('DEL', KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[1], ARGV[1])
local was = redis.call('ZREM', KEYS[2], ARGV[1])
if was == 1 or #keys > 0 then redis.call('INCR', KEYS[7]) end
return was
"""

# KEYS: keys, shard epoch. ARGV: (key, version) pairs. Raises the floor of still-subscribed
# keys to their snapshot version; returns how many moved.
_SNAPSHOT = _NEWER + """
local changed = 0
for i = 1, #ARGV, 2 do
  local floor = redis.call('HGET', KEYS[1], ARGV[i])
  if floor and newer(ARGV[i + 1], floor) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    changed = changed + 1
  end
end
if changed > 0 then redis.call('INCR', KEYS[2]) end
return changed
"""

# KEYS: shard, shard epoch. ARGV: now. Returns {epoch, {id, {key, floor, ...}, ...}}: every
# live connection of the shard with its keys and floors, read atomically with the epoch.
_SUBSCRIPTIONS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local out = {}
for _, cid in ipairs(ids) do
  out[#out + 1] = cid
  out[#out + 1] = redis.call('HGETALL', 'ws:conn:' .. cid .. ':keys')
end
return {redis.call('GET', KEYS[2]) or '0', out}
"""

# KEYS: sent, carry, shard epoch. ARGV: expire_at, the window as one "key version key version"
# string (one argument instead of two per key: packing them was most of the client's cost).
# Claims each key whose version is newer than the newest claimed for the shard (so a late or
# replayed window sends nothing older), then takes the carried updates that are still the
# newest claimed version of their key (an older one was overtaken: its successor is being
# delivered or carried). Returns {epoch, {claimed key...}, {carry field, update JSON, ...}}.
# Key names are built here, which is fine with cluster mode off (ElastiCache replication group).
_CLAIM = _NEWER + """
local names, versions = {}, {}
for key, version in string.gmatch(ARGV[2], '(%S+) (%d+)') do
  names[#names + 1] = key
  versions[#versions + 1] = version
end
local n = #names
local fresh = {}
local first = 1
while first <= n do
  local last = math.min(n, first + """ + str(_CLAIM_CHUNK - 1) + """)
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
_DEFER = """
local kept = 0
for i = 3, #ARGV, 4 do
  local cid, key = ARGV[i], ARGV[i + 1]
  if redis.call('HGET', KEYS[1], key) == ARGV[i + 2]
      and redis.call('HEXISTS', 'ws:conn:' .. cid .. ':keys', key) == 1 then
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


class SyncRedis(Protocol):
    """The redis-py (sync) methods used."""

    def register_script(self, script: str) -> Any: ...
    def pipeline(self, transaction: bool = True) -> Any: ...
    def zrangebyscore(self, name: str, min: float | str, max: float | str, start: int | None = None,
                      num: int | None = None) -> Any: ...
    def zcount(self, name: str, min: float | str, max: float | str) -> Any: ...
    def hget(self, name: str, key: str) -> Any: ...
    def hkeys(self, name: str) -> Any: ...
    def close(self) -> None: ...


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


@dataclass(frozen=True, slots=True)
class ShardClaim:
    """One window's claim for a shard."""

    epoch: str  # the shard's subscription epoch when the claim ran
    fresh: list[str]  # window keys newer than anything claimed for the shard before
    carried: dict[str, list[bytes]]  # connection id -> failed updates' JSON still the newest


@dataclass(frozen=True, slots=True)
class ShardSubscriptions:
    """Every live connection of a shard: its keys and their snapshot floors."""

    epoch: str
    floors: dict[str, dict[str, int]]


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
        self._snapshot = redis.register_script(_SNAPSHOT)
        self._subscriptions = redis.register_script(_SUBSCRIPTIONS)
        self._claim = redis.register_script(_CLAIM)
        self._defer = redis.register_script(_DEFER)

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
        pipe.incr(names.ws_shard_epoch_key(shard))
        pipe.execute()
        return shard

    def _expire_at(self, connection_id: str) -> int:
        raw = self._redis.hget(names.ws_conn_key(connection_id), "expires_at")
        base = int(raw) if raw else int(time.time()) + self._lifetime
        return base + names.WS_EXPIRY_MARGIN_SECONDS

    def _data_expiry(self) -> int:
        return int(time.time()) + self._lifetime + names.WS_EXPIRY_MARGIN_SECONDS

    def close(self) -> None:
        """Close the client the registry was built with (its deployable is shutting down)."""
        self._redis.close()

    def shard(self, connection_id: str) -> int:
        raw = self._redis.hget(names.ws_conn_key(connection_id), "shard")
        return int(raw) if raw else shard_of(connection_id, self.shards)

    def remove(self, connection_id: str, *, shard: int | None = None) -> bool:
        """Forget a connection and drop its refcounts; True when it was still registered."""
        shard = self.shard(connection_id) if shard is None else shard
        keys = [names.WS_CONNECTIONS_KEY, names.ws_shard_key(shard), names.ws_shard_refs_key(shard),
                names.ws_conn_key(connection_id), names.ws_conn_keys_key(connection_id),
                names.WS_REFS_EPOCH_KEY, names.ws_shard_epoch_key(shard)]
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
                  names.ws_shard_refs_key(shard), names.WS_REFS_EPOCH_KEY,
                  names.ws_shard_epoch_key(shard)],
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
                  names.WS_REFS_EPOCH_KEY, names.ws_shard_epoch_key(shard)],
            args=list(keys),
        )
        return [_text(k) for k in reply]

    def keys(self, connection_id: str) -> set[str]:
        return {_text(k) for k in self._redis.hkeys(names.ws_conn_keys_key(connection_id))}

    def mark_snapshot(self, connection_id: str, versions: Mapping[str, int]) -> int:
        """Raise the floors of the snapshot's keys: the stream never goes back behind them."""
        if not versions:
            return 0
        args: list[Any] = []
        for key, version in versions.items():
            args += [key, version]
        shard = self.shard(connection_id)
        return int(self._snapshot(
            keys=[names.ws_conn_keys_key(connection_id), names.ws_shard_epoch_key(shard)],
            args=args))

    # --- fan-out ----------------------------------------------------------------------------

    def subscriptions(self, shard: int, *, now: float | None = None) -> ShardSubscriptions:
        """Every live connection of `shard` with its keys' floors, and the epoch they hold at."""
        current = time.time() if now is None else now
        epoch, flat = self._subscriptions(
            keys=[names.ws_shard_key(shard), names.ws_shard_epoch_key(shard)], args=[current])
        floors: dict[str, dict[str, int]] = {}
        for i in range(0, len(flat), 2):
            pairs = flat[i + 1]
            floors[_text(flat[i])] = {_text(pairs[j]): int(pairs[j + 1])
                                      for j in range(0, len(pairs), 2)}
        return ShardSubscriptions(_text(epoch), floors)

    def claim(self, shard: int, versions: Mapping[str, int]) -> ShardClaim:
        """Claim the window's (key -> version) for `shard` and take its still-valid carry."""
        # Instrument keys hold no whitespace (nor anything unprintable): a key that did could
        # never be subscribed, and must not split into a real key's name inside the script.
        window = " ".join(f"{key} {version}" for key, version in versions.items()
                          if " " not in key and key.isprintable())
        epoch, fresh, flat = self._claim(
            keys=[names.ws_shard_sent_key(shard), names.ws_shard_carry_key(shard),
                  names.ws_shard_epoch_key(shard)], args=[self._data_expiry(), window])
        carried: dict[str, list[bytes]] = {}
        for i in range(0, len(flat), 2):
            connection_id = _text(flat[i]).rpartition(" ")[0]
            raw = flat[i + 1]
            carried.setdefault(connection_id, []).append(
                raw if isinstance(raw, bytes) else raw.encode())
        return ShardClaim(_text(epoch), [_text(k) for k in fresh], carried)

    def defer(self, failed: Mapping[str, Sequence[Mapping[str, Any]]], *, shard: int) -> int:
        """Carry updates whose post failed into each connection's next message."""
        args: list[Any] = [self._data_expiry(), shard]
        for connection_id, updates in failed.items():
            for update in updates:
                args += [connection_id, update["key"], update["version"], dumps(dict(update))]
        if len(args) == 2:
            return 0
        return int(self._defer(
            keys=[names.ws_shard_sent_key(shard), names.ws_shard_carry_key(shard),
                  names.WS_PENDING_SHARDS_KEY], args=args))
