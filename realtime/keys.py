"""The real-time path's Redis keys: the one place their names are built.

Only `realtime` reads or writes these (its registry, its Lua scripts, its shard directory and
its snapshot read); the bridge, the fan-out and the WebSocket handlers go through those.

Connection registry (`realtime.registry`):
  ws:connections            ZSET connection id -> expiry (epoch s); the live count is
                            `ZCOUNT (<now> +inf` (expired ids linger until swept)
  ws:shards                 SET of shard numbers that have had connections
  ws:refs:epoch             counter bumped by every change of any shard's refs (the bridge
                            re-reads the refs only when it moved)
  ws:shard:{N}              ZSET of shard N's connection ids -> expiry (epoch s)
  ws:shard:{N}:refs         HASH key -> number of shard N's connections subscribed to it
  ws:shard:{N}:epoch        counter bumped by every change of who in shard N wants what
                            (subscribe, unsubscribe, snapshot floor, connect, removal)
  ws:shard:{N}:sent         HASH key -> newest version claimed for the whole shard
  ws:shard:{N}:carry        HASH "connection-id key" -> update JSON whose post failed
  ws:conn:{ID}              HASH a connection's meta (shard, expires_at, connected_at,
                            source_ip, subject) and its message token bucket (rl_tokens,
                            rl_at, rl_until, rl_strikes: written by every message, so they
                            share the hash's expiry)
  ws:conn:{ID}:keys         HASH instrument key -> snapshot floor (the version the
                            connection's snapshot gave it; 0 before any)
  ws:pending_shards         SET of shards holding carried updates (the bridge invokes them)
  ws:ip:{IP}                ZSET of the live connection ids from one source address ->
                            expiry (epoch s): the per-address cap counts the unexpired ones;
                            the key expires with its newest entry, so a lost `$disconnect`
                            holds a slot until that connection's 2 h maximum, never longer
Bridge (`realtime.directory`):
  ws:latest                 HASH key -> newest update JSON the bridge saw (the snapshot's
                            versions), TTL 30 s, rewritten every window
  ws:bridge:heartbeat       relay bridge status JSON, TTL 60 s
A connection's hashes expire an hour after its 2 h API Gateway maximum even if `$disconnect`
never arrives; the fan-out sweeps expired ids out of the ZSETs and refcounts before that.
"""

from __future__ import annotations

CONNECTIONS = "ws:connections"
SHARDS = "ws:shards"
PENDING_SHARDS = "ws:pending_shards"
REFS_EPOCH = "ws:refs:epoch"
LATEST = "ws:latest"
LATEST_TTL_SECONDS = 30
BRIDGE_HEARTBEAT = "ws:bridge:heartbeat"
BRIDGE_HEARTBEAT_TTL_SECONDS = 60
# API Gateway closes every WebSocket after 2 h; the margin lets a sweep still read what an
# expired connection had subscribed to (to drop its refcounts) before the data itself expires.
MAX_CONNECTION_SECONDS = 2 * 3600
EXPIRY_MARGIN_SECONDS = 3600

# The Lua scripts build a connection's keys hash from its id (the fan-out's subscriptions read
# and the carry's check), from these two parts: fine with cluster mode off (one shard of
# ElastiCache holds every key).
CONN_PREFIX = "ws:conn:"
CONN_KEYS_SUFFIX = ":keys"
# The removal script finds a connection's per-address set from its meta's source address.
SOURCE_IP_PREFIX = "ws:ip:"
SOURCE_IP_FIELD = "source_ip"
# Set (with a TTL) when a connection from the address was cut for its message rate: the address
# may not connect again until it expires, so a script that reconnects at once costs a few
# seconds per cool-off instead of every connect its tokens allow.
COOL_OFF_PREFIX = "ws:cooloff:"


def shard(number: int) -> str:
    return f"ws:shard:{number}"


def shard_refs(number: int) -> str:
    return f"{shard(number)}:refs"


def shard_epoch(number: int) -> str:
    return f"{shard(number)}:epoch"


def shard_sent(number: int) -> str:
    return f"{shard(number)}:sent"


def shard_carry(number: int) -> str:
    return f"{shard(number)}:carry"


def conn(connection_id: str) -> str:
    return f"{CONN_PREFIX}{connection_id}"


def conn_keys(connection_id: str) -> str:
    return f"{conn(connection_id)}{CONN_KEYS_SUFFIX}"


def source_ip(address: str) -> str:
    return f"{SOURCE_IP_PREFIX}{address}"


def cool_off(address: str) -> str:
    return f"{COOL_OFF_PREFIX}{address}"
