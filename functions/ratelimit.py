"""The deployment-wide DhanHQ REST limiter: at most one call per interval, shared through Redis.

Dhan allows one market-quote request per second per client id, and every Lambda instance (plus
anything else holding the credentials) shares that allowance. A call may go ahead only when it
wins the slot key `core.names.DHAN_REST_RATELIMIT_KEY`, created with `SET NX PX <interval>`:
while the key lives nobody else gets a slot, so grants are at least one interval apart across
all processes. A loser learns from the key's PTTL how long to wait. Both steps run in one Lua
script so the answer is atomic and costs one round trip.

The script's reply says "granted" in its own field, never through the wait: a PTTL of 0 (the
slot key expires within the current millisecond, which callers waking together at the end of
an interval hit often) once read as "0 ms to wait = granted" and let two calls through 1 ms
apart. A refusal now always waits at least 1 ms, and only a `SET NX` that succeeded grants.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from core.names import DHAN_REST_RATELIMIT_KEY

# Returns {1, seconds, microseconds} (the server's TIME at the grant) when the SET NX took the
# slot for us, else {0, wait_ms} with wait_ms >= 1. TIME comes after the write, which even
# verbatim script replication (Redis < 5) allows.
_ACQUIRE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local now = redis.call('TIME')
  return {1, now[1], now[2]}
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl == -1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  ttl = tonumber(ARGV[2])
end
if ttl < 1 then
  ttl = 1
end
return {0, ttl}
"""

MIN_WAIT = 0.001


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try for the slot.

    granted      True only when this call took the slot (its SET NX succeeded)
    wait         seconds until the slot frees: 0.0 when granted, else at least `MIN_WAIT`
    server_time  the Redis server's clock at the grant (seconds since the epoch), else None
    """

    granted: bool
    wait: float
    server_time: float | None = None


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

    def attempt(self) -> Attempt:
        """Take the slot if free; say whether we did, and how long a loser should wait."""
        token = uuid.uuid4().hex
        reply = self._script(keys=[self._key], args=[token, self._interval_ms])
        if int(reply[0]) == 1:
            return Attempt(True, 0.0, int(reply[1]) + int(reply[2]) / 1_000_000)
        # The script never answers a refusal with less than 1 ms; keep that true here as well.
        return Attempt(False, max(MIN_WAIT, int(reply[1]) / 1000.0))

    def try_acquire(self) -> float:
        """Take the slot if free: 0.0 on success, else the seconds until it frees (>= 1 ms)."""
        return self.attempt().wait

    def acquire(self, *, deadline: float) -> bool:
        """Wait for a slot until `deadline` (a value of `clock`); False when it would pass it."""
        while True:
            attempt = self.attempt()
            if attempt.granted:
                return True
            if self._clock() + attempt.wait > deadline:
                return False
            self._sleep(attempt.wait)
