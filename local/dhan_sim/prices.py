"""The simulator's price book: one seeded random walk per instrument, shared by feed and REST.

An instrument nobody has priced yet starts near its reference price when the book has one
(`local.dhan_sim.reference`: the sample's real-world levels), its previous close the reference
itself; any other starts at a price derived only from (seed, segment, id). Either way two runs
with the same seed agree and a REST answer for an unseen id is stable. The day's fields stay
consistent: low <= price <= high, volume only rises. Prices sit on
the tick grid (0.05 by default) and stay below 100,000 so that a float32 on the wire still
rounds back to the same 2-decimal value. Feed and REST may run on different threads (the CLI),
hence the lock around every mutation.

The feed steps instruments thousands of times a second, so `advance` mutates state in place
and draws its random numbers straight from `getrandbits`; the draws are the ones `randint` and
`choice` would make, so a seed still gives the same walk.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace

Key = tuple[str, str]  # (segment name, security id as a string), e.g. ("NSE_EQ", "1333")

TICK_SIZE = 0.05
MIN_START, MAX_START = 50.0, 5000.0
MAX_PRICE = 99_999.0
# Steps of a tick never rest at 0: every simulated tick is a price change, which makes
# "the newest price arrived" observable in tests.
_STEPS = (-3, -2, -1, 1, 2, 3)


def randbelow(rng: random.Random, n: int) -> int:
    """`rng.randrange(n)` without its argument checks: CPython's exact draw, same sequence."""
    k = n.bit_length()
    r = rng.getrandbits(k)
    while r >= n:
        r = rng.getrandbits(k)
    return r


def on_tick_grid(price: float, tick_size: float = TICK_SIZE) -> float:
    """Snap to the tick grid and to 2 decimals (what Dhan prices look like)."""
    return round(round(price / tick_size) * tick_size, 2)


@dataclass(slots=True)
class InstrumentState:
    """What the feed needs to build any packet for one instrument."""

    price: float
    prev_close: float
    open: float
    high: float
    low: float
    volume: int = 0
    turnover: float = 0.0  # sum(price * qty), for the average traded price
    ltq: int = 0
    oi: int = 0
    prev_oi: int = 0
    oi_day_high: int = 0
    oi_day_low: int = 0
    total_buy_quantity: int = 0
    total_sell_quantity: int = 0

    @property
    def avg_price(self) -> float:
        return round(self.turnover / self.volume, 2) if self.volume else self.price


class PriceBook:
    """Current state per instrument; creates seeded instruments on first use."""

    def __init__(self, *, seed: int = 0, tick_size: float = TICK_SIZE,
                 reference: Mapping[Key, float] | None = None) -> None:
        self.seed = seed
        self.tick_size = tick_size
        self.reference = dict(reference or {})
        self._states: dict[Key, InstrumentState] = {}
        self._deltas = tuple(step * tick_size for step in _STEPS)
        self.lock = threading.Lock()

    def __contains__(self, key: object) -> bool:
        return key in self._states

    def __len__(self) -> int:
        return len(self._states)

    def initial_state(self, key: Key) -> InstrumentState:
        """The deterministic starting state of an instrument (depends on seed and key only)."""
        rng = random.Random(f"{self.seed}:{key[0]}:{key[1]}")
        known = self.reference.get(key)
        start = rng.uniform(MIN_START, MAX_START)
        prev = on_tick_grid(min(known, MAX_PRICE) if known else start, self.tick_size)
        price = on_tick_grid(prev * (1 + rng.uniform(-0.01, 0.01)), self.tick_size)
        oi = rng.randrange(1_000, 5_000_000) if key[0] in ("NSE_FNO", "BSE_FNO", "MCX_COMM") else 0
        return InstrumentState(
            price=price, prev_close=prev, open=price, high=price, low=price,
            oi=oi, prev_oi=oi, oi_day_high=oi, oi_day_low=oi,
        )  # fmt: skip

    def get(self, key: Key) -> InstrumentState | None:
        """A copy of the instrument's state, or None when it was never priced."""
        with self.lock:
            state = self._states.get(key)
            return replace(state) if state is not None else None

    def price(self, key: Key) -> float:
        """The current price, creating the seeded instrument if it is new."""
        return self.ensure(key).price

    def ensure(self, key: Key) -> InstrumentState:
        """A copy of the instrument's state, creating it (seeded) if it is new."""
        with self.lock:
            return replace(self._ensure(key))

    def set_price(self, key: Key, price: float) -> None:
        """Pin an instrument's price (tests); day high/low follow it."""
        snapped = round(price, 2)
        with self.lock:
            state = self._states.get(key)
            if state is None:
                # A new instrument's day starts at the pinned price.
                state = self._states[key] = replace(
                    self.initial_state(key), price=snapped, prev_close=snapped, open=snapped,
                    high=snapped, low=snapped,
                )  # fmt: skip
            state.price = snapped
            state.high = max(state.high, snapped)
            state.low = min(state.low, snapped)

    def step(self, key: Key, rng: random.Random) -> InstrumentState:
        """Move one instrument by a random number of ticks (a trade); returns a copy."""
        with self.lock:
            return replace(self.advance(key, rng))

    def advance(self, key: Key, rng: random.Random) -> InstrumentState:
        """`step` without the copy: the live state, so the caller must hold `lock`."""
        state = self._ensure(key)
        tick = self.tick_size
        price = on_tick_grid(state.price + self._deltas[randbelow(rng, len(self._deltas))], tick)
        if price < tick or price > MAX_PRICE:  # reflect at the bounds
            price = on_tick_grid(2 * state.price - price, tick)
        qty = randbelow(rng, 500) + 1
        state.price = price
        state.ltq = qty
        # The wire field is a u32: the volume stops there rather than wrapping to a smaller one.
        state.volume = min(state.volume + qty, 0xFFFFFFFF)
        state.turnover += price * qty
        if price > state.high:
            state.high = price
        if price < state.low:
            state.low = price
        state.total_buy_quantity = randbelow(rng, 499_001) + 1_000
        state.total_sell_quantity = randbelow(rng, 499_001) + 1_000
        if state.oi:
            oi = state.oi = max(1, state.oi + randbelow(rng, 1_001) - 500)
            if oi > state.oi_day_high:
                state.oi_day_high = oi
            if oi < state.oi_day_low:
                state.oi_day_low = oi
        return state

    def _ensure(self, key: Key) -> InstrumentState:
        state = self._states.get(key)
        if state is None:
            state = self._states[key] = self.initial_state(key)
        return state
