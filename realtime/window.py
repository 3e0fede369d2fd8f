"""A window, as pure functions: what it sends to which shard, and how long the next one is.

The bridge collects ticks into a `Conflator` (newest value per key BY VERSION, never the first
of a window: OpenAlgo's expiry-day lesson). At the window's end `plan_window` says which shard
gets which of its updates (only keys some connection of the shard wants; plus shards holding
carried updates, plus every shard now and then for housekeeping), split into payloads Lambda's
async invoke accepts, and `next_window` picks the next window's length so the expected
PostToConnection rate stays under the budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Set
from typing import Any, cast

from core.messages import BATCH_UPDATE, Update, dumps
from realtime.contracts import FanoutPayload, is_newer

# Lambda's async invoke takes up to 1 MB (1,048,576 bytes); stay clear of the edge.
MAX_PAYLOAD_BYTES = 900_000


class Conflator:
    """Newest update per key by version within one window."""

    def __init__(self) -> None:
        self._latest: dict[str, Update] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def add(self, update: Mapping[str, Any]) -> bool:
        key = update.get("key")
        if not isinstance(key, str) or not is_newer(update, self._latest.get(key)):
            return False
        self._latest[key] = cast(Update, update)
        return True

    def add_message(self, message: Any) -> int:
        """Feed one channel message (batch form); returns how many updates were kept."""
        if not isinstance(message, dict) or message.get("type") != BATCH_UPDATE:
            return 0
        updates = message.get("updates")
        if not isinstance(updates, list):
            return 0
        return sum(self.add(u) for u in updates if isinstance(u, dict))

    def extend(self, updates: Iterable[Mapping[str, Any]]) -> Conflator:
        for update in updates:
            self.add(update)
        return self

    def get(self, key: str) -> Update | None:
        return self._latest.get(key)

    def drain(self) -> dict[str, Update]:
        window, self._latest = self._latest, {}
        return window


def next_window(current: float, expected_posts: float, *, budget_per_second: float,
                minimum: float, maximum: float, headroom: float = 1.1,
                shrink: float = 0.8) -> float:
    """The next window length keeping `expected_posts / window` under the budget.

    Grows at once when the budget needs it; shrinks gradually (by `shrink` per window) so a
    quiet moment does not swing the window down and straight back up.
    """
    required = expected_posts * headroom / budget_per_second
    target = required if required >= current else max(required, current * shrink)
    return min(maximum, max(minimum, target))


def expected_posts(updated: Iterable[str], refs: Mapping[int, Mapping[str, int]],
                   live: Mapping[int, int]) -> int:
    """Upper bound of connections with >= 1 changed key: per shard min(connections, sum refs)."""
    keys = set(updated)
    total = 0
    for shard, counts in refs.items():
        connections = live.get(shard, 0)
        wanted = 0
        for key in keys & counts.keys():
            wanted += counts[key]
            if wanted >= connections:
                break
        total += min(connections, wanted)
    return total


def split_payloads(base: Mapping[str, Any], updates: list[Update], *,
                   max_bytes: int = MAX_PAYLOAD_BYTES,
                   sizes: Mapping[str, int] | None = None) -> list[FanoutPayload]:
    """One payload, or as many as keep each under `max_bytes` (Lambda's async limit).

    `sizes` (encoded bytes per update key, when the caller has them) spares encoding the
    whole payload just to learn that it fits, which is almost always."""
    whole = cast(FanoutPayload, {**base, "updates": updates})
    if sizes is not None:
        estimate = len(dumps(dict(base))) + 16 + sum(sizes[u["key"]] + 1 for u in updates)
        if estimate <= max_bytes:
            return [whole]
    size = len(dumps(dict(whole)))
    if size <= max_bytes or len(updates) <= 1:
        return [whole]
    parts = -(-size // max_bytes) + 1
    step = -(-len(updates) // parts)
    return [cast(FanoutPayload, {**base, "updates": updates[i:i + step]})
            for i in range(0, len(updates), step)]


def fold_payloads(older: FanoutPayload, newer: FanoutPayload) -> FanoutPayload:
    """One payload holding the newest version of every key of both."""
    merged = Conflator().extend((*older["updates"], *newer["updates"]))
    return {**newer, "updates": list(merged.drain().values())}


def plan_window(window: Mapping[str, Update], refs: Mapping[int, Mapping[str, int]], *,
                sequence: int, published_at: float, pending: Set[int] = frozenset(),
                housekeeping: bool = False, max_bytes: int = MAX_PAYLOAD_BYTES,
                sizes: Mapping[str, int] | None = None,
                refused: Mapping[int, list[str]] | None = None) -> list[FanoutPayload]:
    """The fan-out payloads of one window: per shard the window's updates its connections
    want; a shard with nothing new is skipped unless it holds carried updates (`pending`),
    wanted keys the feed refused (`refused`, sent in the shard's first payload), or this is a
    housekeeping window (every shard sweeps its expired connections)."""
    refused = refused or {}
    payloads: list[FanoutPayload] = []
    for shard in sorted(set(refs) | set(pending) | set(refused)):
        wanted = refs.get(shard, {})
        updates = [window[k] for k in window.keys() & wanted.keys()]
        lost = refused.get(shard)
        if not updates and not lost and shard not in pending and not housekeeping:
            continue
        base = {"shard": shard, "window": sequence, "published_at": published_at}
        parts = split_payloads(base, updates, max_bytes=max_bytes, sizes=sizes)
        if lost:
            parts[0]["not_carried"] = lost
        payloads.extend(parts)
    return payloads
