"""Coalesced prices -> Redis, in batches, surviving Redis outages.

Every `interval` the sink drains the coalescer and writes the batch in one round trip:
`SET ltp:SEG:ID <price> EX 30` per key, then one `PUBLISH live_ltp_updates` carrying the batch
(core.messages.batch_update). The round trip is one EVALSHA of a tiny script rather than a
pipeline of N SETs: the effect on Redis is the same commands in the same order, but redis-py
spends ~17 us of client CPU per pipelined command and ~2 us per key of one script call
(measured with redis-py 8), and that CPU is taken from reading the feed. Atomicity comes free:
a subscriber that reads `ltp:*` when the batch message arrives sees the batch's values.

While Redis is unreachable the batch is not lost: it is kept in a buffer holding at most one
(the newest) update per key, newer drains overwrite it, attempts are spaced by backoff, and
everything goes out in the first successful flush. The buffer is bounded (`buffer_max` keys,
oldest dropped first and counted). Nothing here blocks the event loop: the Redis client is
asyncio, and a huge backlog is written in chunks of `max_batch` keys.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from itertools import islice
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.backoff import Backoff
from core.messages import Update, batch_update, dumps
from core.names import LIVE_LTP_CHANNEL, LTP_PREFIX, LTP_TTL_SECONDS
from streamer.aio import raise_if_cancelled
from streamer.coalescer import Coalescer
from streamer.errors import SinkError

log = logging.getLogger(__name__)

# KEYS: the ltp:* names. ARGV: ttl, channel, message, then one price per key.
_WRITE_BATCH = """
local ttl = ARGV[1]
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], ARGV[i + 3], 'EX', ttl)
end
redis.call('PUBLISH', ARGV[2], ARGV[3])
return #KEYS
"""


class RedisSink:
    def __init__(
        self,
        *,
        redis: Redis,
        coalescer: Coalescer,
        interval: float = 0.005,
        ttl: int = LTP_TTL_SECONDS,
        buffer_max: int = 50_000,
        max_batch: int = 5_000,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._coalescer = coalescer
        self.interval = interval
        self._ttl = ttl
        self._buffer_max = buffer_max
        self._max_batch = max_batch
        self._backoff = backoff or Backoff(base=0.1, cap=5.0)
        self._clock = clock
        self._script = redis.register_script(_WRITE_BATCH)
        self._buffer: dict[str, Update] = {}  # failed updates, newest per key, insertion order
        self._retry_at = 0.0
        self.flushes = 0
        self.written = 0  # keys SET
        self.published = 0  # batch messages published
        self.errors = 0
        self.dropped = 0  # buffered updates discarded because the buffer was full
        self.last_error: str | None = None
        self.healthy = True

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def stats(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "buffered": self.buffered,
            "written": self.written,
            "published": self.published,
            "errors": self.errors,
            "dropped": self.dropped,
            "last_error": self.last_error,
        }

    async def run(self) -> None:
        """Flush forever (until cancelled); a failed flush waits its backoff before the next."""
        sleep = asyncio.sleep
        while True:
            if self._clock() >= self._retry_at:
                await self.flush()
            raise_if_cancelled()
            await sleep(self.interval)

    async def flush(self) -> bool:
        """Write everything pending; True when nothing is left behind."""
        updates = self._coalescer.drain()
        if self._buffer:
            buffer = self._buffer
            for update in updates:
                buffer[update["key"]] = update
            batch = list(buffer.values())
            self._buffer = {}
        else:
            batch = updates
        if not batch:
            return True
        done = 0
        try:
            for start in range(0, len(batch), self._max_batch):
                chunk = batch[start : start + self._max_batch]
                await self._write(chunk)
                done = start + len(chunk)
        except (RedisError, OSError, SinkError) as exc:
            self._failed(batch[done:], exc)
            return False
        self.flushes += 1
        if not self.healthy:
            log.info("redis is back; wrote %d buffered keys", len(batch))
        self.healthy = True
        self._backoff.reset()
        self._retry_at = 0.0
        return True

    async def _write(self, chunk: list[Update]) -> None:
        prefix = LTP_PREFIX
        # The hot part of a flush, per key. Bytes because redis-py runs every str argument
        # through its encoder; `repr` of the price because an Update's ltp is already rounded
        # to 2 decimals, which makes it equal to `format_price` (whose second rounding would
        # cost more than the rest of the key).
        names = [(prefix + u["key"]).encode() for u in chunk]
        prices = [repr(u["ltp"]).encode() for u in chunk]
        message = dumps(batch_update(chunk))
        written = await self._script(
            keys=names, args=[self._ttl, LIVE_LTP_CHANNEL, message, *prices]
        )
        if written != len(chunk):
            raise SinkError(f"batch script wrote {written} of {len(chunk)} keys")
        self.written += len(chunk)
        self.published += 1

    def _failed(self, left: list[Update], exc: BaseException) -> None:
        self.errors += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        # Only `flush` drains the coalescer, so `left` holds the newest update of each of its
        # keys; ticks arriving meanwhile wait in the coalescer and overwrite these next time.
        self._buffer = {u["key"]: u for u in left}
        excess = len(self._buffer) - self._buffer_max
        if excess > 0:
            for key in list(islice(self._buffer, excess)):
                del self._buffer[key]
            self.dropped += excess
        delay = self._backoff.next_delay()
        self._retry_at = self._clock() + delay
        if self.healthy:
            log.warning("redis write failed (%s); buffering %d keys, retrying",
                        self.last_error, len(self._buffer))
        self.healthy = False
