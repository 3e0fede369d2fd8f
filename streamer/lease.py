"""Single-writer lease: only one streamer at a time feeds Redis.

`market_stream:lease` holds the owner's instance id with a TTL (SET NX PX). The owner renews it
every ttl/3 with a compare-and-extend script and releases it on exit with compare-and-delete,
so an instance never extends or deletes a lease it does not hold. A second instance waits,
saying who holds the lease, and takes over only when it expires (the owner died or stopped).
If the owner finds someone else holding the lease (it was partitioned from Redis for longer
than the TTL and another instance took over), `keep` raises LeaseLostError: stop writing.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core.names import STREAMER_LEASE_KEY
from core.redis_client import RELEASE_IF_OWNER, as_text
from streamer.aio import raise_if_cancelled
from streamer.errors import LeaseLostError

log = logging.getLogger(__name__)

# 1: extended (or re-taken because it had expired meanwhile); 0: someone else holds it.
_RENEW = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
elseif not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""


class Lease:
    def __init__(
        self,
        *,
        redis: Redis,
        owner: str,
        ttl: float = 15.0,
        key: str = STREAMER_LEASE_KEY,
    ) -> None:
        self._redis = redis
        self.owner = owner
        self.key = key
        self._ttl_ms = max(1, int(ttl * 1000))
        self.interval = ttl / 3
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(RELEASE_IF_OWNER)
        self.held = False

    async def holder(self) -> str | None:
        value = await self._redis.get(self.key)
        return None if value is None else as_text(value)

    async def try_acquire(self) -> bool:
        taken = await self._redis.set(self.key, self.owner, nx=True, px=self._ttl_ms)
        self.held = bool(taken) or await self.holder() == self.owner
        return self.held

    async def acquire(self, stop: asyncio.Event) -> bool:
        """Wait for the lease; False when `stop` was set first."""
        said: str | None = None
        while not stop.is_set():
            try:
                if await self.try_acquire():
                    if said is not None:
                        log.info("lease %s acquired after waiting", self.key)
                    return True
                holder = await self.holder()
                if holder != said:
                    log.warning("another streamer holds the lease %s (%s); waiting",
                                self.key, holder)
                    said = holder
            except RedisError as exc:
                raise_if_cancelled()
                log.warning("cannot reach Redis for the lease (%s); retrying", exc)
            try:
                await asyncio.wait_for(stop.wait(), self.interval)
            except TimeoutError:
                pass
        return False

    async def renew(self) -> bool:
        result = await self._renew(keys=[self.key], args=[self.owner, self._ttl_ms])
        self.held = bool(result)
        return self.held

    async def keep(self) -> None:
        """Renew until cancelled; LeaseLostError when another instance holds the lease."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                if not await self.renew():
                    holder = await self.holder()
                    raise LeaseLostError(f"lease {self.key} now held by {holder}")
            except RedisError as exc:
                raise_if_cancelled()
                log.warning("lease renewal failed (%s); will retry", exc)

    async def release(self) -> bool:
        try:
            released = bool(await self._release(keys=[self.key], args=[self.owner]))
        except RedisError as exc:
            log.warning("lease release failed (%s); it expires by itself", exc)
            return False
        self.held = False
        return released
