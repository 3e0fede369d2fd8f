"""The WebSocket connection registry in Redis: who is connected, in which shard, wanting what.

Layout (names in `realtime.keys`, scripts in `realtime.scripts`): per connection a meta hash
and a hash of its keys, each with its floor (the version its snapshot gave it, 0 before that);
per shard a ZSET of connection ids scored by expiry, a refcount hash of the keys its
connections want, a `sent` hash (newest version claimed per key for the whole shard), a `carry`
hash (per connection and key, the update whose post failed) and an epoch counter bumped by
every change to who wants what; a global ZSET for the connection count and a global refs epoch
for the bridge. The same scripts keep the deployment-wide viewer demand (`core.names`:
key -> viewers) that the streamer carries, and refuse a key the feed has no room for.

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

Admission happens in the scripts that record, so concurrent Lambdas cannot together pass a
limit: `connect` checks the cap on live connections (ZCOUNT of the global ZSET) and the cap per
source address (a ZSET per address of connection id -> expiry, pruned of expired entries as it
is read, expiring with its newest entry) in the script that writes the connection; Redis runs
scripts one at a time, so neither cap is ever passed, and a connection whose `$disconnect` was
lost holds its slots until its expiry (2 h), never longer. `remove` frees the address's slot in
the same script that drops the rest. `subscribe` refuses keys the loaded instrument master
lacks in the script that records keys. `admit_message` keeps a token bucket per connection in
its meta hash (timed by the server's clock, so every Lambda container shares it).

What it costs (Redis 7.0, used_memory deltas over 2,000 connections and MEMORY USAGE): a
connection ~620 B (its meta hash with the token bucket ~260 B, its entries in the global, shard
and address ZSETs, and key and expiry overheads); a subscribed key ~20 B in the connection's
keys hash, plus ~145 B in its shard's refcounts and the demand hash while no other connection
of the shard (resp. the deployment) wants it. Every per-connection key has an expiry, and the
caps bound the rest: at the defaults (20,000 connections x 500 keys) at most 20,000 x ~10.6 KB
= ~210 MB of connection data. The shared refcounts hold the distinct keys wanted: instruments
of the master when one is loaded (and, while the streamer runs, no more than the feed's room),
else up to connections x keys, which is why production loads the master.
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from core import names
from core.messages import dumps
from core.redis_client import as_text
from realtime import keys as layout
from realtime import scripts

DEFAULT_SHARDS = 16
_WAKE = dumps({"type": names.DEMAND_CHANGED})
# The page shows at most 500 rows; a connection needs no more keys than that.
MAX_KEYS_PER_CONNECTION = 500


class SyncRedis(Protocol):
    """The redis-py (sync) methods used."""

    def register_script(self, script: str) -> Any: ...
    def pipeline(self, transaction: bool = True) -> Any: ...
    def zrangebyscore(self, name: str, min: float | str, max: float | str, start: int | None = None,
                      num: int | None = None) -> Any: ...
    def zcount(self, name: str, min: float | str, max: float | str) -> Any: ...
    def hget(self, name: str, key: str) -> Any: ...
    def set(self, name: str, value: str, *, ex: int | None = None) -> Any: ...
    def hkeys(self, name: str) -> Any: ...
    def exists(self, *names: str) -> Any: ...
    def close(self) -> None: ...


def live_connections(redis: Any, *, now: float | None = None) -> int:
    """Connections whose expiry is ahead (the health answer's count): expired ids linger in
    the ZSET until a fan-out sweeps them."""
    current = time.time() if now is None else now
    return int(redis.zcount(layout.CONNECTIONS, f"({current}", "+inf"))


def shard_of(connection_id: str, shards: int) -> int:
    return zlib.crc32(connection_id.encode()) % shards


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Caps a `$connect` must pass (None: no cap): live connections in all, and live
    connections from one source address."""

    total: int | None = None
    per_source_ip: int | None = None


NO_LIMITS = ConnectionLimits()


class Refusal(Enum):
    SOURCE_IP = "source_ip"  # its source address holds its cap of live connections
    FULL = "full"  # the registry holds its cap of live connections
    COOLING_OFF = "cooling_off"  # a connection from its address was cut for abuse lately


@dataclass(frozen=True, slots=True)
class Connected:
    shard: int
    refused: Refusal | None = None  # set: nothing was recorded

    @property
    def ok(self) -> bool:
        return self.refused is None


@dataclass(frozen=True, slots=True)
class MessageRate:
    """A connection's message token bucket: `per_second` sustained, `burst` at once; past it a
    penalty window drops every message, and `strikes` such windows in a row disconnect."""

    per_second: float = 5.0
    burst: int = 20
    strikes: int = 3

    @property
    def penalty_ms(self) -> int:
        # At least a second (one error per window is all a limited client costs), and at least
        # one token's refill, so a client that waits it out finds a token.
        return max(1000, math.ceil(1000 / self.per_second))


class Verdict(Enum):
    ALLOW = 0
    LIMITED = 1  # over the limit: answer `rate_limited` once
    DROP = 2  # within a penalty window: no reply (each reply is a paid post)
    DISCONNECT = 3  # still over the limit after `strikes` windows
    UNKNOWN = -1  # the connection is not registered (allowed; the handler says reconnect)


@dataclass(frozen=True, slots=True)
class MessageAdmission:
    verdict: Verdict
    retry_after_ms: int = 0


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    ok: bool
    added: list[str]
    total: int
    reason: str = ""
    unknown_connection: bool = False  # not registered: refused, whatever the keys
    refused: list[str] = field(default_factory=list)  # keys the feed cannot carry
    unknown: list[str] = field(default_factory=list)  # keys the instrument master lacks


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
        max_connection_seconds: int = layout.MAX_CONNECTION_SECONDS,
    ) -> None:
        self._redis = redis
        self.shards = shards
        self.max_keys = max_keys
        self._lifetime = max_connection_seconds
        self._connect = redis.register_script(scripts.CONNECT)
        self._throttle = redis.register_script(scripts.THROTTLE)
        self._subscribe = redis.register_script(scripts.SUBSCRIBE)
        self._unsubscribe = redis.register_script(scripts.UNSUBSCRIBE)
        self._remove = redis.register_script(scripts.REMOVE)
        self._snapshot = redis.register_script(scripts.SNAPSHOT)
        self._subscriptions = redis.register_script(scripts.SUBSCRIPTIONS)
        self._claim = redis.register_script(scripts.CLAIM)
        self._defer = redis.register_script(scripts.DEFER)

    # --- $connect / $disconnect -------------------------------------------------------------

    def connect(self, connection_id: str, *, meta: Mapping[str, str | int],
                connected_at: float | None = None,
                limits: ConnectionLimits = NO_LIMITS) -> Connected:
        """Record a connection unless a cap of `limits` refuses it (then nothing is recorded).

        `meta["source_ip"]`, when given, is counted against the per-address cap (whether or
        not one is set, so a cap switched on later sees the live counts)."""
        start = time.time() if connected_at is None else connected_at
        expires = int(start + self._lifetime) + 1
        shard = shard_of(connection_id, self.shards)
        fields = {**{k: str(v) for k, v in meta.items()}, "shard": str(shard),
                  "expires_at": str(expires)}
        keys = [layout.CONNECTIONS, layout.shard(shard), layout.SHARDS,
                layout.shard_epoch(shard), layout.conn(connection_id)]
        if address := fields.get(layout.SOURCE_IP_FIELD, ""):
            keys += [layout.source_ip(address), layout.cool_off(address)]
        args: list[Any] = [connection_id, expires, expires + layout.EXPIRY_MARGIN_SECONDS,
                           shard, limits.total or 0, limits.per_source_ip or 0]
        for name, value in fields.items():
            args += [name, value]
        status = int(self._connect(keys=keys, args=args))
        refused = {-1: Refusal.SOURCE_IP, -2: Refusal.FULL, -3: Refusal.COOLING_OFF}.get(status)
        return Connected(shard, refused)

    def _expire_at(self, connection_id: str) -> int:
        raw = self._redis.hget(layout.conn(connection_id), "expires_at")
        base = int(raw) if raw else int(time.time()) + self._lifetime
        return base + layout.EXPIRY_MARGIN_SECONDS

    def _data_expiry(self) -> int:
        return int(time.time()) + self._lifetime + layout.EXPIRY_MARGIN_SECONDS

    def close(self) -> None:
        """Close the client the registry was built with (its deployable is shutting down)."""
        self._redis.close()

    def shard(self, connection_id: str) -> int:
        raw = self._redis.hget(layout.conn(connection_id), "shard")
        return int(raw) if raw else shard_of(connection_id, self.shards)

    def remove(self, connection_id: str, *, shard: int | None = None) -> bool:
        """Forget a connection and drop its refcounts; True when it was still registered."""
        shard = self.shard(connection_id) if shard is None else shard
        keys = [layout.CONNECTIONS, layout.shard(shard), layout.shard_refs(shard),
                layout.conn(connection_id), layout.conn_keys(connection_id),
                layout.REFS_EPOCH, layout.shard_epoch(shard), names.DEMAND_KEY]
        return bool(self._remove(keys=keys, args=[connection_id]))

    def sweep(self, shard: int, *, now: float | None = None, limit: int = 500) -> int:
        """Remove connections of `shard` past their expiry (no `$disconnect` came)."""
        current = time.time() if now is None else now
        expired = self._redis.zrangebyscore(layout.shard(shard), "-inf", current, 0, limit)
        for raw in expired:
            self.remove(as_text(raw), shard=shard)
        return len(expired)

    def count(self, *, now: float | None = None) -> int:
        return live_connections(self._redis, now=now)

    def cool_off(self, connection_id: str, seconds: int) -> str:
        """Keep the connection's source address from connecting for `seconds` (it was cut for
        abuse); returns the address ("" when unknown: nothing is kept)."""
        raw = self._redis.hget(layout.conn(connection_id), layout.SOURCE_IP_FIELD)
        address = as_text(raw) if raw else ""
        if address and seconds > 0:
            self._redis.set(layout.cool_off(address), "1", ex=seconds)
        return address

    def from_source_ip(self, address: str, *, now: float | None = None) -> int:
        """Live connections from `address` (what its cap counts)."""
        current = time.time() if now is None else now
        return int(self._redis.zcount(layout.source_ip(address), f"({current}", "+inf"))

    def admit_message(self, connection_id: str, rate: MessageRate) -> MessageAdmission:
        """Take one token of the connection's message bucket (one script, the server's
        clock: every Lambda container shares the bucket)."""
        verdict, retry_after_ms = self._throttle(
            keys=[layout.conn(connection_id)],
            args=[rate.per_second, rate.burst, rate.penalty_ms * 1000, rate.strikes])
        return MessageAdmission(Verdict(int(verdict)), int(retry_after_ms))

    # --- subscriptions ----------------------------------------------------------------------

    def subscribe(self, connection_id: str, keys: Sequence[str]) -> SubscribeResult:
        """Record keys (at most `max_keys` in all) before any snapshot is read; keys the
        loaded instrument master lacks (`SubscribeResult.unknown`) and keys the feed cannot
        carry (`SubscribeResult.refused`) are refused and not recorded."""
        shard = self.shard(connection_id)
        reply = self._subscribe(
            keys=[layout.conn(connection_id), layout.conn_keys(connection_id),
                  layout.shard_refs(shard), layout.REFS_EPOCH,
                  layout.shard_epoch(shard), names.DEMAND_KEY, names.CARRIED_KEY,
                  names.ROOM_KEY, names.REJECTED_KEY, names.INSTRUMENT_SYMBOLS_KEY,
                  names.INSTRUMENT_SEGMENTS_KEY],
            args=[self.max_keys, self._expire_at(connection_id), names.CONTROL_CHANNEL,
                  _WAKE, *keys],
        )
        status, total = int(reply[0]), int(reply[1])
        unknown = [as_text(k) for k in reply[4]]
        if status == -1:
            return SubscribeResult(False, [], 0, "unknown connection", unknown_connection=True)
        if status == -2:
            return SubscribeResult(
                False, [], total,
                f"at most {self.max_keys} keys per connection ({total} already subscribed)",
                unknown=unknown)
        return SubscribeResult(True, [as_text(k) for k in reply[2]], total,
                               refused=[as_text(k) for k in reply[3]], unknown=unknown)

    def unsubscribe(self, connection_id: str, keys: Sequence[str]) -> list[str]:
        shard = self.shard(connection_id)
        reply = self._unsubscribe(
            keys=[layout.conn_keys(connection_id), layout.shard_refs(shard),
                  layout.REFS_EPOCH, layout.shard_epoch(shard), names.DEMAND_KEY],
            args=list(keys),
        )
        return [as_text(k) for k in reply]

    def known(self, connection_id: str) -> bool:
        """The connection is registered (its entry is gone after a cache wipe or replacement,
        while API Gateway keeps the socket open)."""
        return bool(self._redis.exists(layout.conn(connection_id)))

    def keys(self, connection_id: str) -> set[str]:
        return {as_text(k) for k in self._redis.hkeys(layout.conn_keys(connection_id))}

    def mark_snapshot(self, connection_id: str, versions: Mapping[str, int]) -> int:
        """Raise the floors of the snapshot's keys: the stream never goes back behind them."""
        if not versions:
            return 0
        args: list[Any] = []
        for key, version in versions.items():
            args += [key, version]
        shard = self.shard(connection_id)
        return int(self._snapshot(
            keys=[layout.conn_keys(connection_id), layout.shard_epoch(shard)],
            args=args))

    # --- fan-out ----------------------------------------------------------------------------

    def subscriptions(self, shard: int, *, now: float | None = None) -> ShardSubscriptions:
        """Every live connection of `shard` with its keys' floors, and the epoch they hold at."""
        current = time.time() if now is None else now
        epoch, flat = self._subscriptions(
            keys=[layout.shard(shard), layout.shard_epoch(shard)], args=[current])
        floors: dict[str, dict[str, int]] = {}
        for i in range(0, len(flat), 2):
            pairs = flat[i + 1]
            floors[as_text(flat[i])] = {as_text(pairs[j]): int(pairs[j + 1])
                                      for j in range(0, len(pairs), 2)}
        return ShardSubscriptions(as_text(epoch), floors)

    def claim(self, shard: int, versions: Mapping[str, int]) -> ShardClaim:
        """Claim the window's (key -> version) for `shard` and take its still-valid carry."""
        # Instrument keys hold no whitespace (nor anything unprintable): a key that did could
        # never be subscribed, and must not split into a real key's name inside the script.
        window = " ".join(f"{key} {version}" for key, version in versions.items()
                          if " " not in key and key.isprintable())
        epoch, fresh, flat = self._claim(
            keys=[layout.shard_sent(shard), layout.shard_carry(shard),
                  layout.shard_epoch(shard)], args=[self._data_expiry(), window])
        carried: dict[str, list[bytes]] = {}
        for i in range(0, len(flat), 2):
            connection_id = as_text(flat[i]).rpartition(" ")[0]
            raw = flat[i + 1]
            carried.setdefault(connection_id, []).append(
                raw if isinstance(raw, bytes) else raw.encode())
        return ShardClaim(as_text(epoch), [as_text(k) for k in fresh], carried)

    def defer(self, failed: Mapping[str, Sequence[Mapping[str, Any]]], *, shard: int) -> int:
        """Carry updates whose post failed into each connection's next message."""
        args: list[Any] = [self._data_expiry(), shard]
        for connection_id, updates in failed.items():
            for update in updates:
                args += [connection_id, update["key"], update["version"], dumps(dict(update))]
        if len(args) == 2:
            return 0
        return int(self._defer(
            keys=[layout.shard_sent(shard), layout.shard_carry(shard),
                  layout.PENDING_SHARDS], args=args))
