"""Which keys the streamer should carry: configured keys, named streams and viewer demand.

Desired keys, in priority order (what wins when more is wanted than the feed's 5 x 5,000):
1. configured: `--keys` / STREAM_KEYS (the deployment's default watchlist);
2. named streams: the `keys` list of every `websocket_stream:*` (read with SCAN, never KEYS;
   streams in name order, keys in their listed order);
3. viewer demand: every key some WebSocket connection subscribes to (`core.names.DEMAND_KEY`,
   kept by the registry's scripts), most-watched first;
4. lingering: keys viewers wanted and nothing wants any more, kept for `grace` seconds (a
   page reload, or a registry wiped and rebuilt as pages reconnect, must not churn the feed),
   newest first. A stopped stream's own keys go at once.
Duplicates fold into their highest place. The registry is re-read whenever anything arrives
on `core.names.CONTROL_CHANNEL` (the API's `streams_changed`; a subscribe that adds a key the
feed does not carry yet sends `demand_changed`) and every `refresh` seconds as a safety net.

After each read the streamer tells the registry what it carries (`core.names`: the carried
set, the room left for viewer demand, the rejected set), so a subscribe the feed has no room
for is refused with an error rather than accepted and never updated. It also refreshes the TTL
of every stream it reads (a stream lives while a streamer carries it, until stopped), and when
its mark key is gone (the cache was flushed or replaced without a replica) it writes back the
streams it was carrying: a wipe must not end them.

Records are read by `core.stream_record.parse_stream_record`, the API's reader too. Invalid
keys (non-string items included) are counted, logged once and skipped; a value that is no
stream record is skipped. While Redis is unreachable the last known set stays in force (a Redis
blip must not unsubscribe everything). Symbols come from the instrument master hash
(`instruments:symbols`) when it is loaded. A stream's own `mode` field is not used: the feed
has one mode per instrument and the streamer subscribes everything in DHANHQ_WS_MODE.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.backoff import Backoff
from core.errors import InvalidKeyError
from core.instruments import InstrumentKey, parse_key
from core.names import (
    CARRIAGE_TTL_SECONDS,
    CARRIED_KEY,
    CONTROL_CHANNEL,
    DEMAND_KEY,
    INSTRUMENT_SYMBOLS_KEY,
    REGISTRY_MARK_KEY,
    REJECTED_KEY,
    ROOM_KEY,
    STREAM_PATTERN,
    STREAM_TTL_SECONDS,
    stream_name,
)
from core.redis_client import as_text
from core.stream_record import parse_stream_record
from streamer.aio import raise_if_cancelled
from streamer.planner import MAX_CONNECTIONS, MAX_PER_CONNECTION

log = logging.getLogger(__name__)

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class DesiredKeys:
    keys: tuple[InstrumentKey, ...]  # priority order, highest first
    symbols: dict[str, str] = field(default_factory=dict)
    streams: int = 0
    demand: int = 0  # keys viewers subscribe to
    lingering: frozenset[InstrumentKey] = frozenset()  # wanted by nobody, in their grace


def rank_demand(counts: dict[InstrumentKey, int]) -> list[InstrumentKey]:
    """Most-watched first; ties in key order, so the ranking is stable between reads."""
    return sorted(counts, key=lambda k: (-counts[k], k.segment, k.security_id))


class KeySource:
    def __init__(
        self,
        *,
        redis: Redis,
        on_change: Callable[[DesiredKeys], None],
        static_keys: Sequence[InstrumentKey] = (),
        refresh: float = 5.0,
        backoff: Backoff | None = None,
        capacity: int = MAX_CONNECTIONS * MAX_PER_CONNECTION,
        grace: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._on_change = on_change
        self._static = tuple(dict.fromkeys(static_keys))
        self.refresh = refresh
        self._backoff = backoff or Backoff(base=0.2, cap=5.0)
        self.capacity = capacity
        self.grace = grace
        self._clock = clock
        self._symbols: dict[str, str | None] = {}  # looked-up symbols, misses included
        self._reported: set[str] = set()
        self._lingering: dict[InstrumentKey, float] = {}  # key -> when it was last wanted
        self._demanded: list[InstrumentKey] = []  # the last read's viewer demand
        self._records: dict[bytes, bytes | str] = {}  # stream key -> record, for after a wipe
        self._marked = False
        self._published: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self.current: DesiredKeys | None = None
        self.invalid = 0
        self.errors = 0
        self.reads = 0
        self.wipes = 0

    async def read(self) -> DesiredKeys:
        """One pass over the registry; raises RedisError when Redis cannot answer."""
        await self._check_mark()
        wanted: dict[InstrumentKey, None] = dict.fromkeys(self._static)
        streams = await self._read_streams(wanted)
        demand = await self._read_demand()
        ranked = rank_demand(demand)
        for key in ranked:
            wanted.setdefault(key, None)
        lingering = self._linger(ranked, wanted)
        keys = (*wanted, *lingering)
        return DesiredKeys(keys, await self._lookup_symbols(keys), streams, len(demand),
                           frozenset(lingering))  # fmt: skip

    async def _check_mark(self) -> None:
        """Set the mark; finding it gone after we set it means the cache lost everything."""
        if not await self._redis.set(REGISTRY_MARK_KEY, "1", nx=True) or not self._marked:
            self._marked = True
            return
        self.wipes += 1
        self._published = None  # the carried set went too: write it whole
        if not self._records:
            log.warning("the cache was emptied (registry mark gone); no stream to restore")
            return
        log.warning("the cache was emptied (registry mark gone); restoring %d streams",
                    len(self._records))
        pipe = self._redis.pipeline(transaction=False)
        for name, record in self._records.items():
            # NX: a stream started again since the wipe keeps its new record.
            pipe.set(name, record, ex=STREAM_TTL_SECONDS, nx=True)
        await pipe.execute()

    async def _read_streams(self, wanted: dict[InstrumentKey, None]) -> int:
        redis = self._redis
        names = sorted({n async for n in redis.scan_iter(match=STREAM_PATTERN, count=1000)})
        streams = 0
        records: dict[bytes, bytes | str] = {}
        for start in range(0, len(names), _CHUNK):
            chunk = names[start : start + _CHUNK]
            for name, raw in zip(chunk, await redis.mget(chunk), strict=True):
                if raw is None:
                    continue  # expired between SCAN and MGET
                try:
                    key = as_text(name)
                except UnicodeDecodeError:  # a hand-written name; only a label here
                    key = name.decode(errors="replace")
                record = parse_stream_record(stream_name(key), raw)
                if record is None:
                    self._report(f"stream {key!r} is not a JSON object with a keys list, a "
                                 "JSON list of keys or comma-separated keys")  # fmt: skip
                    continue
                streams += 1
                records[name] = raw
                for item in record.dropped:
                    self.invalid += 1
                    self._report(f"skipping key in {key!r}: {item} is not a string")
                for text in record.keys:
                    try:
                        wanted.setdefault(parse_key(text), None)
                    except InvalidKeyError as exc:
                        self.invalid += 1
                        self._report(f"skipping key in {key!r}: {exc}")
        if records:
            # A stream lives while it is carried: its TTL is only a safety net for the time
            # no streamer runs (after the close, or when the service is scaled down).
            pipe = redis.pipeline(transaction=False)
            for name in records:
                pipe.expire(name, STREAM_TTL_SECONDS)
            await pipe.execute()
        self._records = records
        return streams

    async def _read_demand(self) -> dict[InstrumentKey, int]:
        counts: dict[InstrumentKey, int] = {}
        for raw_key, raw_count in (await self._redis.hgetall(DEMAND_KEY)).items():
            try:
                key, count = parse_key(as_text(raw_key)), int(raw_count)
            except (InvalidKeyError, UnicodeDecodeError, ValueError):
                self.invalid += 1
                self._report(f"skipping viewer demand entry {raw_key!r:.80}")
                continue
            if count > 0:
                counts[key] = count
        return counts

    def _linger(self, demanded: list[InstrumentKey],
                wanted: dict[InstrumentKey, None]) -> list[InstrumentKey]:
        """Keys viewers wanted before and nothing wants now, still within their grace; newest
        first. (A stopped stream's keys go at once: stopping is an explicit act.)"""
        now = self._clock()
        for key in self._demanded:
            if key not in wanted:
                self._lingering[key] = now
        self._demanded = demanded
        for key in [k for k, since in self._lingering.items()
                    if k in wanted or now - since >= self.grace]:
            del self._lingering[key]
        return sorted(self._lingering, key=self._lingering.__getitem__, reverse=True)

    def _report(self, text: str) -> None:
        if text not in self._reported and len(self._reported) < 10_000:
            self._reported.add(text)
            log.warning(text)

    async def _lookup_symbols(self, keys: tuple[InstrumentKey, ...]) -> dict[str, str]:
        unknown = [str(k) for k in keys if str(k) not in self._symbols]
        for start in range(0, len(unknown), _CHUNK):
            chunk = unknown[start : start + _CHUNK]
            values = await self._redis.hmget(INSTRUMENT_SYMBOLS_KEY, chunk)
            for text, value in zip(chunk, values, strict=True):
                self._symbols[text] = None if value is None else as_text(value)
        found = ((str(k), self._symbols.get(str(k))) for k in keys)
        return {text: symbol for text, symbol in found if symbol}

    async def publish(self, desired: DesiredKeys) -> None:
        """Tell the registry what the feed carries, what it refused, and the room left."""
        carried = tuple(str(k) for k in desired.keys[: self.capacity])
        rejected = tuple(str(k) for k in desired.keys[self.capacity :])
        evictable = sum(1 for k in desired.keys[: self.capacity] if k in desired.lingering)
        room = self.capacity - len(carried) + evictable
        pipe = self._redis.pipeline(transaction=True)
        if (carried, rejected) != self._published:
            pipe.delete(CARRIED_KEY, REJECTED_KEY)
            for name, members in ((CARRIED_KEY, carried), (REJECTED_KEY, rejected)):
                for start in range(0, len(members), 1000):
                    pipe.sadd(name, *members[start : start + 1000])
        pipe.expire(CARRIED_KEY, CARRIAGE_TTL_SECONDS)
        pipe.expire(REJECTED_KEY, CARRIAGE_TTL_SECONDS)
        pipe.set(ROOM_KEY, room, ex=CARRIAGE_TTL_SECONDS)
        await pipe.execute()
        self._published = (carried, rejected)

    async def _refresh(self) -> None:
        desired = await self.read()
        self.reads += 1
        if desired != self.current:
            self.current = desired
            self._on_change(desired)
        await self.publish(desired)

    def _next_read_in(self) -> float:
        """The refresh period, or less when a lingering key's grace ends sooner."""
        if not self._lingering:
            return self.refresh
        ends = min(self._lingering.values()) + self.grace - self._clock()
        return max(0.01, min(self.refresh, ends))

    async def run(self) -> None:
        """Follow the registry until cancelled."""
        if self._static and self.current is None:
            self.current = DesiredKeys(self._static)
            self._on_change(self.current)
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(CONTROL_CHANNEL)
                    # Read after subscribing, so a change announced in between is not missed.
                    await self._refresh()
                    self._backoff.reset()
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=self._next_read_in()
                        )
                        if message is not None:
                            # A burst of announcements needs one re-read, not one each.
                            while await pubsub.get_message(
                                ignore_subscribe_messages=True, timeout=0
                            ):
                                pass
                        await self._refresh()
                        raise_if_cancelled()
            except (RedisError, OSError) as exc:
                raise_if_cancelled()
                self.errors += 1
                delay = self._backoff.next_delay()
                log.warning("stream registry unreachable (%s); keeping %d keys, retry in %.1fs",
                            exc, len(self.current.keys) if self.current else 0, delay)
                await asyncio.sleep(delay)
