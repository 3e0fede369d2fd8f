"""Every Redis key and channel the system uses, in one place.

Seed-compatible (an existing consumer of the Rails system's Redis keeps working):
  ltp:{SEGMENT}:{SECURITY_ID}   price as a plain decimal string, TTL 30 s
  live_ltp_updates              Pub/Sub channel of update messages (core.messages)
  market_stream:heartbeat       streamer status JSON, TTL 60 s
  websocket_stream:{NAME}       a named stream's keys JSON, TTL 1 h

Project's own:
  market_stream:lease           single-writer lease: the streamer instance id holding it
  market_stream:control         Pub/Sub channel: API -> running streamer; message
                                {"type": "streams_changed", "name": NAME}. Any message makes
                                the streamer re-read websocket_stream:* (it also re-reads every
                                few seconds, so a lost message only delays a change)
  dhan:rest:ratelimit           the deployment-wide 1 call/s limiter for DhanHQ REST
  market_stream:registry_lock   short lock around start/stop's read-check-write of the streams
  instruments:symbols           hash: instrument key (NSE_EQ:2885) -> trading symbol (RELIANCE)
  instruments:names             hash: instrument key -> display name (Reliance Industries)
  instruments:by_symbol         hash: SEGMENT:SYMBOL (NSE_EQ:RELIANCE) -> instrument key
  instruments:meta              hash: where the loaded master came from, when, row count

WebSocket connection registry (functions.registry; the sharded fan-out's view of who wants what):
  ws:connections                ZSET connection id -> expiry (epoch s); the health endpoint's
                                count is `ZCOUNT ws:connections (<now> +inf` (expired ids linger
                                until swept)
  ws:shards                     SET of shard numbers that have had connections
  ws:shard:{N}                  ZSET of shard N's connection ids -> expiry (epoch s)
  ws:shard:{N}:refs             HASH key -> number of shard N's connections subscribed to it
  ws:refs:epoch                 counter bumped by every change of any shard's refs, so the
                                bridge re-reads the refs only when they changed
  ws:conn:{ID}                  HASH of a connection's meta (shard, connected_at, source_ip, ...)
  ws:conn:{ID}:keys             SET of the instrument keys the connection subscribed to
  ws:conn:{ID}:sent             HASH key -> newest version claimed for this connection
  ws:conn:{ID}:pending          HASH key -> update JSON that failed to post (carried forward)
  ws:pending_shards             SET of shards with pending updates (the bridge fans them out)
  ws:latest                     HASH key -> newest update JSON the bridge saw (the snapshot's
                                versions), TTL 30 s, rewritten every window
  ws:bridge:heartbeat           relay bridge status JSON (window, errors, last error), TTL 60 s
  A connection's hashes/sets expire 1 h after its 2 h API Gateway maximum even if `$disconnect`
  never arrives; the fan-out sweeps expired ids out of the ZSETs and refcounts before that.
"""

from __future__ import annotations

from core.instruments import InstrumentKey

LTP_PREFIX = "ltp:"
LTP_TTL_SECONDS = 30

LIVE_LTP_CHANNEL = "live_ltp_updates"

HEARTBEAT_KEY = "market_stream:heartbeat"
HEARTBEAT_TTL_SECONDS = 60

STREAM_PREFIX = "websocket_stream:"
STREAM_PATTERN = STREAM_PREFIX + "*"
STREAM_TTL_SECONDS = 3600

STREAMER_LEASE_KEY = "market_stream:lease"
CONTROL_CHANNEL = "market_stream:control"

DHAN_REST_RATELIMIT_KEY = "dhan:rest:ratelimit"
# Not under STREAM_PREFIX on purpose: a SCAN of websocket_stream:* must see only streams.
STREAM_REGISTRY_LOCK_KEY = "market_stream:registry_lock"

WS_CONNECTIONS_KEY = "ws:connections"
WS_SHARDS_KEY = "ws:shards"
WS_PENDING_SHARDS_KEY = "ws:pending_shards"
WS_LATEST_KEY = "ws:latest"
WS_REFS_EPOCH_KEY = "ws:refs:epoch"
WS_LATEST_TTL_SECONDS = 30
WS_BRIDGE_HEARTBEAT_KEY = "ws:bridge:heartbeat"
WS_BRIDGE_HEARTBEAT_TTL_SECONDS = 60
# API Gateway closes every WebSocket after 2 h; the margin lets a sweep still read what an
# expired connection had subscribed to (to drop its refcounts) before the data itself expires.
WS_MAX_CONNECTION_SECONDS = 2 * 3600
WS_EXPIRY_MARGIN_SECONDS = 3600

# Instrument master (core.instrument_master): no TTL, replaced whole on each load.
INSTRUMENT_SYMBOLS_KEY = "instruments:symbols"
INSTRUMENT_NAMES_KEY = "instruments:names"
INSTRUMENT_BY_SYMBOL_KEY = "instruments:by_symbol"
INSTRUMENT_META_KEY = "instruments:meta"


def ltp_key(key: InstrumentKey | str) -> str:
    return f"{LTP_PREFIX}{key}"


def stream_key(name: str) -> str:
    return f"{STREAM_PREFIX}{name}"


def stream_name(redis_key: str) -> str:
    return redis_key[len(STREAM_PREFIX) :]


def ws_shard_key(shard: int) -> str:
    return f"ws:shard:{shard}"


def ws_shard_refs_key(shard: int) -> str:
    return f"ws:shard:{shard}:refs"


def ws_conn_key(connection_id: str) -> str:
    return f"ws:conn:{connection_id}"


def ws_conn_keys_key(connection_id: str) -> str:
    return f"ws:conn:{connection_id}:keys"


def ws_shard_sent_key(shard: int) -> str:
    return f"ws:shard:{shard}:sent"


def ws_shard_carry_key(shard: int) -> str:
    return f"ws:shard:{shard}:carry"


def ws_shard_epoch_key(shard: int) -> str:
    return f"ws:shard:{shard}:epoch"
