"""Which keys the streamer should carry: configured keys plus every active named stream.

Desired keys = `--keys` / STREAM_KEYS, then the `keys` list of every `websocket_stream:*`
(read with SCAN, never KEYS; streams in name order, keys in their listed order, duplicates
folded). The registry is re-read whenever anything arrives on `core.names.CONTROL_CHANNEL`
(the API publishes `{"type": "streams_changed", "name": ...}`) and every `refresh` seconds as a
safety net for a missed message. Records are read by `core.stream_record.parse_stream_record`,
the API's reader too (the seed's and older writers' forms). Invalid keys (non-string items
included) are counted, logged once and skipped; a value that is no stream record is skipped.
While Redis is unreachable the last known set stays in force (a Redis blip must not
unsubscribe everything). Symbols come from the instrument master hash
(`instruments:symbols`) when it is loaded. A stream's own `mode` field is not used: the feed
has one mode per instrument and the streamer subscribes everything in DHANHQ_WS_MODE.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.backoff import Backoff
from core.errors import InvalidKeyError
from core.instruments import InstrumentKey, parse_key
from core.names import CONTROL_CHANNEL, INSTRUMENT_SYMBOLS_KEY, STREAM_PATTERN, stream_name
from core.redis_client import as_text
from core.stream_record import parse_stream_record
from streamer.aio import raise_if_cancelled

log = logging.getLogger(__name__)

_CHUNK = 500


@dataclass(frozen=True, slots=True)
class DesiredKeys:
    keys: tuple[InstrumentKey, ...]
    symbols: dict[str, str] = field(default_factory=dict)
    streams: int = 0


class KeySource:
    def __init__(
        self,
        *,
        redis: Redis,
        on_change: Callable[[DesiredKeys], None],
        static_keys: Sequence[InstrumentKey] = (),
        refresh: float = 5.0,
        backoff: Backoff | None = None,
    ) -> None:
        self._redis = redis
        self._on_change = on_change
        self._static = tuple(dict.fromkeys(static_keys))
        self.refresh = refresh
        self._backoff = backoff or Backoff(base=0.2, cap=5.0)
        self._symbols: dict[str, str | None] = {}  # looked-up symbols, misses included
        self._reported: set[str] = set()
        self.current: DesiredKeys | None = None
        self.invalid = 0
        self.errors = 0
        self.reads = 0

    async def read(self) -> DesiredKeys:
        """One pass over the registry; raises RedisError when Redis cannot answer."""
        redis = self._redis
        names = sorted({n async for n in redis.scan_iter(match=STREAM_PATTERN, count=1000)})
        wanted: dict[InstrumentKey, None] = dict.fromkeys(self._static)
        streams = 0
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
                for item in record.dropped:
                    self.invalid += 1
                    self._report(f"skipping key in {key!r}: {item} is not a string")
                for text in record.keys:
                    try:
                        wanted.setdefault(parse_key(text), None)
                    except InvalidKeyError as exc:
                        self.invalid += 1
                        self._report(f"skipping key in {key!r}: {exc}")
        keys = tuple(wanted)
        return DesiredKeys(keys, await self._lookup_symbols(keys), streams)

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

    async def _refresh(self) -> None:
        desired = await self.read()
        self.reads += 1
        if desired != self.current:
            self.current = desired
            self._on_change(desired)

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
                            ignore_subscribe_messages=True, timeout=self.refresh
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
