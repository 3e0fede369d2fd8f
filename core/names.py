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

Viewer demand (written by `realtime`'s scripts, read by the streamer; see streamer.keysource):
  market_stream:demand          hash: instrument key -> WebSocket connections subscribed to it
                                (a key leaves the hash when its count reaches 0)
  market_stream:carried         set: the keys the streamer carries now (TTL, refreshed)
  market_stream:room            counter: how many more keys viewer demand may add; the
                                streamer sets it, each subscribe that adds a key the feed does
                                not carry yet takes one (so concurrent subscribes cannot
                                together pass the feed's 25,000)
  market_stream:rejected        set: keys the streamer could not carry (TTL, refreshed)
  market_stream:registry_mark   set by the streamer; its absence tells it the cache was wiped
                                or replaced, so it re-writes the streams it was carrying
A subscribe that adds a key the streamer does not carry yet publishes
{"type": "demand_changed"} on market_stream:control, so the feed takes it within a second.

DhanHQ REST fallback (functions.ratelimit, functions.dhan_rest):
  dhan:rest:ratelimit           the deployment's slot (Dhan allows 1 call/s)
  dhan:rest:caller:{digest}     one caller's share of the slots (PX)
  dhan:rest:not_found:{SEG}:{ID} a key Dhan had no price for (EX, 300 s by default)
  market_stream:streams         set: the names of the streams, kept with their records
                                (health reads it instead of a SCAN)

DhanHQ token renewal (functions.token; the access token itself lives only in the secret):
  dhan:token:status             JSON: the token's expiry, the last renewal run's result and
                                when; read by health (TTL 3 days)
  dhan:token:renew_lock         held by one renewal run at a time (PX, owner-checked release)
A renewal publishes {"type": "token_renewed", "version_id": ...} on market_stream:control, so
the streamer switches to the new secret version at once instead of at its next poll.

The real-time path's keys (`ws:*`: the connection registry, the shard directory, the bridge's
`ws:latest` and heartbeat) are named and documented in `realtime.keys`, their one owner.
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

DEMAND_KEY = "market_stream:demand"
CARRIED_KEY = "market_stream:carried"
ROOM_KEY = "market_stream:room"
REJECTED_KEY = "market_stream:rejected"
REGISTRY_MARK_KEY = "market_stream:registry_mark"
# The carried/room/rejected keys outlive a streamer refresh many times over, and vanish soon
# after the streamer stops (then nothing is known and a subscribe is admitted).
CARRIAGE_TTL_SECONDS = 120
DEMAND_CHANGED = "demand_changed"

DHAN_REST_RATELIMIT_KEY = "dhan:rest:ratelimit"
# functions.ratelimit: one caller's share of the REST slots ({digest of the caller}, PX).
DHAN_REST_CALLER_PREFIX = "dhan:rest:caller:"
# functions.dhan_rest: keys Dhan had no price for ({SEG}:{ID}, EX; not under ltp:, which
# holds prices only).
DHAN_REST_NOT_FOUND_PREFIX = "dhan:rest:not_found:"
# functions.streams: the names of the streams (a SET kept with the records), so that health
# reads them without a SCAN.
STREAM_INDEX_KEY = "market_stream:streams"
TOKEN_STATUS_KEY = "dhan:token:status"
TOKEN_STATUS_TTL_SECONDS = 3 * 86400
TOKEN_RENEW_LOCK_KEY = "dhan:token:renew_lock"
TOKEN_RENEWED = "token_renewed"
# Not under STREAM_PREFIX on purpose: a SCAN of websocket_stream:* must see only streams.
STREAM_REGISTRY_LOCK_KEY = "market_stream:registry_lock"

# Instrument master (core.instrument_master): no TTL, replaced whole on each load.
INSTRUMENT_SYMBOLS_KEY = "instruments:symbols"
INSTRUMENT_NAMES_KEY = "instruments:names"
INSTRUMENT_BY_SYMBOL_KEY = "instruments:by_symbol"
INSTRUMENT_META_KEY = "instruments:meta"
# The feed segments the loaded master covers (a load keeps only INSTRUMENT_SEGMENTS): a key of
# another segment is not "unknown", the master just does not list its segment.
INSTRUMENT_SEGMENTS_KEY = "instruments:segments"


def ltp_key(key: InstrumentKey | str) -> str:
    return f"{LTP_PREFIX}{key}"


def stream_key(name: str) -> str:
    return f"{STREAM_PREFIX}{name}"


def stream_name(redis_key: str) -> str:
    return redis_key[len(STREAM_PREFIX) :]

