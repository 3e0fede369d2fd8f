"""Cached views of who wants what, re-read only when their epoch moved.

Every change of a shard's subscriptions bumps its epoch in the same script (`realtime.scripts`),
so a reader that saw epoch E and sees E again knows nothing changed and keeps its decoded copy:
decoding a shard's subscriptions every window cost more CPU than the rest of the window. A
restarted or replaced Redis counts epochs from zero again and may reach E with other contents,
hence the maximum age after which a view is re-read anyway. The fan-out keeps one view per
shard (`ShardView`); the bridge one of every shard's refcounts.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

# A view is re-read at least this often, even when the epoch says nothing changed.
MAX_AGE_SECONDS = 30.0


class EpochCache(Generic[K, V]):
    """Values by key, each valid while its epoch holds and it is younger than `max_age`.
    Thread-safe: a warm fan-out may run several shards at once in one process."""

    def __init__(self, *, max_age: float = MAX_AGE_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._clock = clock
        self._entries: dict[K, tuple[Hashable, V, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: K, epoch: Hashable) -> V | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or entry[0] != epoch or self._clock() - entry[2] > self._max_age:
            return None
        return entry[1]

    def put(self, key: K, epoch: Hashable, value: V) -> V:
        with self._lock:
            self._entries[key] = (epoch, value, self._clock())
        return value

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


@dataclass(frozen=True, slots=True)
class ShardView:
    """A shard's live connections: what each wants and the snapshot floors not yet passed."""

    keys: dict[str, frozenset[str]]  # connection id -> its keys
    floors: dict[str, dict[str, int]]  # connection id -> key -> floor (only floors > 0)

    @classmethod
    def from_floors(cls, floors: Mapping[str, Mapping[str, int]]) -> ShardView:
        """{id: {key: floor}} as the registry reads it; a floor of 0 filters nothing."""
        keys = {cid: frozenset(wanted) for cid, wanted in floors.items()}
        raised = {cid: {k: f for k, f in wanted.items() if f > 0}
                  for cid, wanted in floors.items()}
        return cls(keys, {cid: f for cid, f in raised.items() if f})
