"""The deployment-wide DhanHQ REST limiter: at most one call per interval, shared through Redis.

Dhan allows one market-quote request per second per client id, and every Lambda instance (plus
anything else holding the credentials) shares that allowance. A call may go ahead only when it
wins the slot key `core.names.DHAN_REST_RATELIMIT_KEY`, created with `SET NX PX <interval>`:
while the key lives nobody else gets a slot, so grants are at least one interval apart across
all processes. A loser learns from the key's PTTL how long to wait. Both steps run in one Lua
script so the answer is atomic and costs one round trip.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from redis import Redis

from core.names import DHAN_REST_RATELIMIT_KEY

# Returns 0 when the slot was taken by us, else the milliseconds until it frees.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 0
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
return ttl
"""


class RateLimiter:
    def __init__(
        self,
        *,
        redis: Redis,
        interval: float = 1.0,
        key: str = DHAN_REST_RATELIMIT_KEY,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._redis = redis
        self._interval_ms = max(1, round(interval * 1000))
        self._key = key
        self._clock = clock
        self._sleep = sleep
        self._script = redis.register_script(_ACQUIRE)

    def try_acquire(self) -> float:
        """Take the slot if free: 0.0 on success, else the seconds until it frees."""
        token = uuid.uuid4().hex
        wait_ms = int(self._script(keys=[self._key], args=[token, self._interval_ms]))
        return wait_ms / 1000.0

    def acquire(self, *, deadline: float) -> bool:
        """Wait for a slot until `deadline` (a value of `clock`); False when it would pass it."""
        while True:
            wait = self.try_acquire()
            if wait <= 0.0:
                return True
            if self._clock() + wait > deadline:
                return False
            self._sleep(wait)
