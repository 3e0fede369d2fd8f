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

A caller's share (`caller=`): one caller must not take every slot (at ~1 request/s of misses
it would, and everyone else's misses would come back `rate_limited`). With a caller given, a
slot also needs the caller's share key `dhan:rest:caller:{digest}` (`CALLER_KEY_PREFIX`) to be
absent; a grant sets it with `PX <caller interval>`. A caller whose share key lives is refused
at once (`Attempt.caller_refused`, no waiting: its request must not hold a Lambda for the whole
budget), while other callers still compete for the deployment's slot as before. The share is
taken once per limiter (one request): a request's further slots (a fetch of more than 1,000
ids, the one retry after a Dhan 429) need only the deployment's slot, and each grant restarts
the caller's interval. Both checks and both writes run in one script, so two requests of one
caller racing for the same slot cannot both pass. `refund_share` gives the share back (an
owner-checked delete) for a call that failed on the deployment's own credentials: the caller
did nothing to cause that, and once the token is renewed its next poll should be served.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from redis import Redis

from core.names import DHAN_REST_CALLER_PREFIX, DHAN_REST_RATELIMIT_KEY
from core.redis_client import RELEASE_IF_OWNER

# KEYS: the deployment's slot[, the caller's share]. ARGV: token, interval ms[, caller interval
# ms, 1 when the caller's share must be free (a request's first slot), else 0].
# Returns {1, seconds, microseconds} (the server's TIME at the grant) when the SET NX took the
# slot for us (and, with a share, the share too), {0, wait_ms} while the deployment's slot is
# taken, {2, wait_ms} while the caller's share is (both waits >= 1 ms). TIME comes after the
# write, which even verbatim script replication (Redis < 5) allows.
_ACQUIRE = """
local share = KEYS[2]
if share and ARGV[4] == '1' then
  local held = redis.call('PTTL', share)
  if held == -1 then
    redis.call('PEXPIRE', share, ARGV[3])
    held = tonumber(ARGV[3])
  end
  if held > 0 then
    return {2, held}
  end
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  if share then redis.call('SET', share, ARGV[1], 'PX', ARGV[3]) end
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
CALLER_KEY_PREFIX = DHAN_REST_CALLER_PREFIX


def caller_key(caller: str, *, prefix: str = CALLER_KEY_PREFIX) -> str:
    """The share key of a caller id (an IP, a JWT subject: any text, any length), digested so
    that the key is short and its name holds nothing a caller sent."""
    return prefix + hashlib.blake2b(caller.encode(), digest_size=12).hexdigest()


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try for the slot.

    granted      True only when this call took the slot (its SET NX succeeded)
    wait         seconds until the slot frees: 0.0 when granted, else at least `MIN_WAIT`
    server_time  the Redis server's clock at the grant (seconds since the epoch), else None
    caller_refused  the caller's share was taken (`wait`: until it frees); retrying sooner
                    is pointless, so `acquire` gives up at once
    """

    granted: bool
    wait: float
    server_time: float | None = None
    caller_refused: bool = False

    @classmethod
    def from_reply(cls, reply: list[int | bytes]) -> Attempt:
        """Pure: the script's reply as an attempt."""
        if int(reply[0]) == 1:
            return cls(True, 0.0, int(reply[1]) + int(reply[2]) / 1_000_000)
        # The script never answers a refusal with less than 1 ms; keep that true here as well.
        wait = max(MIN_WAIT, int(reply[1]) / 1000.0)
        return cls(False, wait, caller_refused=int(reply[0]) == 2)


class RateLimiter:
    """The deployment's slot, and with `caller` that caller's share (see the module).

    One instance serves one request: it remembers that its caller's share was taken, and
    `refusal` says why the last `acquire` gave up.
    """

    def __init__(
        self,
        *,
        redis: Redis,
        interval: float = 1.0,
        key: str = DHAN_REST_RATELIMIT_KEY,
        caller: str | None = None,
        caller_interval: float = 5.0,
        caller_prefix: str = CALLER_KEY_PREFIX,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._redis = redis
        self._interval_ms = max(1, round(interval * 1000))
        self._key = key
        self._clock = clock
        self._sleep = sleep
        self._caller_interval_ms = round(caller_interval * 1000)
        self._caller_key = (caller_key(caller, prefix=caller_prefix)
                            if caller and self._caller_interval_ms > 0 else None)  # fmt: skip
        self._share_taken = False
        self._share_token = ""
        self.refusal: Attempt | None = None
        self._script = redis.register_script(_ACQUIRE)

    @property
    def caller_interval(self) -> float:
        return self._caller_interval_ms / 1000.0

    def attempt(self) -> Attempt:
        """Take the slot if free; say whether we did, and how long a loser should wait."""
        token = uuid.uuid4().hex
        if self._caller_key is None:
            reply = self._script(keys=[self._key], args=[token, self._interval_ms])
            return Attempt.from_reply(reply)
        check = 0 if self._share_taken else 1
        reply = self._script(keys=[self._key, self._caller_key],
                             args=[token, self._interval_ms, self._caller_interval_ms, check])
        attempt = Attempt.from_reply(reply)
        if attempt.granted:
            self._share_taken, self._share_token = True, token
        return attempt

    def refund_share(self) -> None:
        """Give the caller's share back, if this limiter's last grant still holds it."""
        if self._caller_key is not None and self._share_token:
            self._redis.eval(RELEASE_IF_OWNER, 1, self._caller_key, self._share_token)
            self._share_taken, self._share_token = False, ""

    def try_acquire(self) -> float:
        """Take the slot if free: 0.0 on success, else the seconds until it frees (>= 1 ms)."""
        return self.attempt().wait

    def acquire(self, *, deadline: float) -> bool:
        """Wait for a slot until `deadline` (a value of `clock`); False when it would pass it,
        or at once when the caller's share is taken (`refusal` then says so)."""
        while True:
            attempt = self.attempt()
            if attempt.granted:
                self.refusal = None
                return True
            if attempt.caller_refused or self._clock() + attempt.wait > deadline:
                self.refusal = attempt
                return False
            self._sleep(attempt.wait)
