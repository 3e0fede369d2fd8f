"""Retry delays, the one implementation: exponential backoff with jitter, reset after a
healthy period. Used by the streamer's feed connections, sink, key source and lease, the relay
bridge's reader and the fan-out's throttled posts.

Full jitter (a uniform delay between 0 and the exponential ceiling) spreads reconnect storms;
`min_fraction` keeps a part of the ceiling as a floor ("equal jitter" at 0.5) where a retry
that comes back at once would only be refused again (a throttled post);
"long" failures (805 too many connections, HTTP 429) add a fixed floor on top, because the feed
is telling us to slow down. A connection that stayed up for `healthy_after` seconds before
failing starts again from the smallest delay. Randomness and the numbers are injectable so
tests run with near-zero delays.
"""

from __future__ import annotations

import random
from collections.abc import Callable

_MAX_EXPONENT = 32  # 2**32 * any sane base is far past any cap


class Backoff:
    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 60.0,
        long_floor: float = 5.0,
        healthy_after: float = 60.0,
        min_fraction: float = 0.0,
        rng: Callable[[], float] = random.random,
    ) -> None:
        if base < 0 or cap < 0 or long_floor < 0:
            raise ValueError("backoff delays must be >= 0")
        if not 0.0 <= min_fraction <= 1.0:
            raise ValueError("min_fraction must be within [0, 1]")
        self.min_fraction = min_fraction
        self.base = base
        self.cap = cap
        self.long_floor = long_floor
        self.healthy_after = healthy_after
        self._rng = rng
        self.attempts = 0

    def ceiling(self) -> float:
        """The upper bound of the next jittered delay (before any long floor)."""
        growth: float = 2.0 ** min(self.attempts, _MAX_EXPONENT)
        return min(self.cap, self.base * growth)

    def next_delay(self, *, long: bool = False, healthy_for: float = 0.0) -> float:
        """Delay before the next attempt, after a failure.

        `healthy_for` is how long the connection had been up before this failure (0 when it
        never came up); at least `healthy_after` resets the sequence first.
        """
        if healthy_for >= self.healthy_after:
            self.attempts = 0
        ceiling = self.ceiling()
        delay = ceiling * (self.min_fraction + (1.0 - self.min_fraction) * self._rng())
        self.attempts += 1
        return self.long_floor + delay if long else delay

    def reset(self) -> None:
        self.attempts = 0
