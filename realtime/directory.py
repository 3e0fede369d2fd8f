"""The relay bridge's side of the registry (asyncio): who wants what, per shard.

At each window's end the bridge publishes the window's values to `ws:latest` and only THEN
reads the shards' refcounts (`publish_and_read`), in one pipeline: a subscription recorded
before the read is in this window's refs, one recorded after it finds this window's values in
its snapshot, so no tick falls between snapshot and stream. The refs are decoded again only
when `ws:refs:epoch` moved (every subscribe, unsubscribe and removal bumps it) or the cache is
old (`realtime.views`); the live connection count per shard is read every window.

It also reads which wanted keys the feed refused to carry (`market_stream:rejected`, written by
the streamer): a key accepted by a subscribe and later pushed out of the feed's 25,000 (a named
stream grew, or subscribes raced the streamer's re-read past its room) would otherwise stay
subscribed and never move. The set's size is read every window (normally 0), its members when
the size changes or every few seconds.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from core import names
from core.messages import dumps
from core.redis_client import as_text
from realtime import keys as layout
from realtime import snapshot
from realtime.contracts import BridgeStatus
from realtime.views import MAX_AGE_SECONDS, EpochCache

_REFS = "refs"
_SNAPSHOT_CHUNK = 1000
_MAX_PENDING = 10_000
_REJECTED = "rejected"
# Members of the rejected set are re-read at least this often while it is not empty (its size
# alone misses one key swapped for another).
REJECTED_MAX_AGE_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class Demand:
    """Who wants what: per shard key -> connections wanting it, and live connections."""

    refs: dict[int, dict[str, int]] = field(default_factory=dict)
    live: dict[int, int] = field(default_factory=dict)
    rejected: frozenset[str] = frozenset()  # keys the feed does not carry

    def keys(self) -> set[str]:
        return {key for counts in self.refs.values() for key in counts}

    def refused(self) -> dict[int, list[str]]:
        """Per shard, the keys its connections want that the feed refused."""
        if not self.rejected:
            return {}
        found = {shard: sorted(self.rejected & counts.keys())
                 for shard, counts in self.refs.items()}
        return {shard: keys for shard, keys in found.items() if keys}


class ShardDirectory:
    def __init__(self, redis: Any, *, max_age: float = MAX_AGE_SECONDS) -> None:
        self._redis = redis
        self._refs: EpochCache[str, dict[int, dict[str, int]]] = EpochCache(max_age=max_age)
        self._rejected: EpochCache[str, frozenset[str]] = EpochCache(
            max_age=REJECTED_MAX_AGE_SECONDS)

    def forget(self) -> None:
        """Drop the cached refs (after a reconnect: a restarted Redis may count the epoch up
        to the cached value again with other refs)."""
        self._refs.clear()
        self._rejected.clear()

    async def publish_and_read(self, latest: Mapping[str, bytes] | None = None) -> Demand:
        """Write `latest` (key -> update JSON) to `ws:latest` when given, then read demand."""
        pipe = self._redis.pipeline(transaction=False)
        if latest:
            pipe.hset(layout.LATEST, mapping=latest)
            pipe.expire(layout.LATEST, layout.LATEST_TTL_SECONDS)
        pipe.smembers(layout.SHARDS)
        pipe.get(layout.REFS_EPOCH)
        pipe.scard(names.REJECTED_KEY)
        replies = await pipe.execute()
        shards = sorted(int(s) for s in replies[-3])
        if not shards:
            return Demand()
        epoch = (replies[-2], tuple(shards))
        rejected_count = int(replies[-1])
        refs = self._refs.get(_REFS, epoch)
        rejected = frozenset() if not rejected_count else self._rejected.get(_REJECTED,
                                                                              rejected_count)
        now = time.time()
        pipe = self._redis.pipeline(transaction=False)
        for shard in shards:
            if refs is None:
                pipe.hgetall(layout.shard_refs(shard))
            pipe.zcount(layout.shard(shard), f"({now}", "+inf")
        if rejected is None:
            pipe.smembers(names.REJECTED_KEY)
        replies = await pipe.execute()
        if rejected is None:
            members = replies.pop()
            rejected = self._rejected.put(_REJECTED, rejected_count,
                                          frozenset(as_text(k) for k in members))
        if refs is not None:
            return Demand(refs, {s: int(c) for s, c in zip(shards, replies, strict=True)},
                          rejected)
        read: dict[int, dict[str, int]] = {}
        live: dict[int, int] = {}
        for i, shard in enumerate(shards):
            read[shard] = {as_text(k): int(v) for k, v in replies[2 * i].items() if int(v) > 0}
            live[shard] = int(replies[2 * i + 1])
        return Demand(self._refs.put(_REFS, epoch, read), live, rejected)

    async def take_pending(self) -> set[int]:
        """Shards holding carried updates (each is invoked even without new values)."""
        return {int(s) for s in await self._redis.spop(layout.PENDING_SHARDS, _MAX_PENDING) or []}

    async def snapshot(self, keys: Sequence[str]) -> dict[str, snapshot.KeyNow]:
        now: dict[str, snapshot.KeyNow] = {}
        for start in range(0, len(keys), _SNAPSHOT_CHUNK):
            chunk = keys[start:start + _SNAPSHOT_CHUNK]
            pipe = self._redis.pipeline(transaction=False)
            snapshot.queue_read(pipe, chunk)
            latest, cached = await pipe.execute()
            now.update(snapshot.parse_read(chunk, latest, cached))
        return now

    async def write_status(self, status: BridgeStatus) -> None:
        await self._redis.set(layout.BRIDGE_HEARTBEAT, dumps(dict(status)),
                              ex=layout.BRIDGE_HEARTBEAT_TTL_SECONDS)
