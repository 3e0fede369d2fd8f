"""The snapshot read: what a key is worth now, from the bridge's `ws:latest` and `ltp:*`.

`ws:latest` holds the newest update the bridge saw per key, with its version (a snapshot's
version becomes the connection's floor); `ltp:*` is the streamer's cache, a plain price. Two
readers: a `subscribe` answers with prices (`snapshot_prices`) and the bridge, after a Redis
reconnect, re-sends what moved while its reader was away (`resync_updates`). The read itself is
queued on a pipeline (`queue_read`), so the sync handlers and the async bridge share it.

A `ws:latest` entry is only as fresh as its version says: versions are the streamer's
wall-clock microseconds (`streamer.coalescer`), and the hash as a whole is rewritten every
window, so one key that stopped ticking could sit in it for the whole session. An entry older
than the cache TTL (30 s, as `ltp:*`) is never served as the key's price: the snapshot falls
back to the cache, else reports the key missing. (A version too small to be a time, as a
hand-written entry has, carries no age and is served.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

from core import names
from core.messages import Update, loads, parse_price
from realtime import keys as layout
from realtime.contracts import SnapshotPrice


class Pipeline(Protocol):
    """The commands queued (redis-py's sync and asyncio pipelines both queue synchronously)."""

    def hmget(self, name: str, keys: list[str]) -> Any: ...
    def mget(self, keys: list[str]) -> Any: ...


@dataclass(frozen=True, slots=True)
class KeyNow:
    latest: Update | None  # the bridge's newest update of the key, with its version
    cached: float | None  # the streamer's cached price (None: expired or never seen)


def queue_read(pipe: Pipeline, keys: Sequence[str]) -> None:
    pipe.hmget(layout.LATEST, list(keys))
    pipe.mget([names.ltp_key(k) for k in keys])


def parse_read(keys: Sequence[str], latest: Sequence[Any], cached: Sequence[Any]
               ) -> dict[str, KeyNow]:
    return {key: KeyNow(loads(entry) if entry is not None else None, parse_price(raw))
            for key, entry, raw in zip(keys, latest, cached, strict=True)}


def read(redis: Any, keys: Sequence[str]) -> dict[str, KeyNow]:
    """The read on a sync client (the WebSocket handlers)."""
    pipe = redis.pipeline(transaction=False)
    queue_read(pipe, keys)
    latest, cached = pipe.execute()
    return parse_read(keys, latest, cached)


# Versions from 2001 on, in microseconds: anything smaller is no wall-clock time.
_VERSION_EPOCH_US = 10**15


def is_current(update: Mapping[str, Any], *, now: float,
               max_age: float = layout.LATEST_TTL_SECONDS) -> bool:
    """False when the update's version, read as its time, is more than `max_age` s old."""
    version = update.get("version")
    if not isinstance(version, int) or version < _VERSION_EPOCH_US:
        return True
    return now - version / 1e6 <= max_age


def snapshot_prices(now: Mapping[str, KeyNow], *, clock: Callable[[], float] = time.time,
                    ) -> tuple[dict[str, SnapshotPrice], list[str]]:
    """A subscribe's answer: the bridge's value (with version) where it has a current one,
    else the cache's price; keys with neither are missing."""
    prices: dict[str, SnapshotPrice] = {}
    missing: list[str] = []
    at = clock()
    for key, value in now.items():
        if value.latest is not None and is_current(value.latest, now=at):
            prices[key] = _snapshot_price(value.latest)
        elif value.cached is not None:
            prices[key] = {"ltp": value.cached}
        else:
            missing.append(key)
    return prices, missing


def _snapshot_price(update: Mapping[str, Any]) -> SnapshotPrice:
    # `ws:latest` entries are the bridge's own writes, yet copied field by field: a partial
    # entry yields a partial price, never a KeyError
    return cast(SnapshotPrice, {f: update[f] for f in SnapshotPrice.__annotations__
                                if f in update})


def resync_updates(now: Mapping[str, KeyNow],
                   waiting: Callable[[str], Update | None]) -> list[Update]:
    """Updates for keys whose cached price differs from the newest value the bridge holds
    (`waiting` in its open window, else `ws:latest`): messages published while the bridge's
    reader was reconnecting are gone, the cache is not. Each gets the next version after both."""
    updates: list[Update] = []
    for key, value in now.items():
        if value.cached is None:
            continue
        seen, pending = value.latest, waiting(key)
        newest = pending if pending is not None else seen
        if newest is not None and newest.get("ltp") == value.cached:
            continue
        base = max(seen["version"] if seen else -1, pending["version"] if pending else -1)
        segment, _, security_id = key.partition(":")
        update: Update = {"key": key, "segment": segment, "security_id": security_id,
                          "ltp": value.cached, "ltt": int(seen["ltt"]) if seen else 0,
                          "version": base + 1}
        if seen and "symbol" in seen:
            update["symbol"] = seen["symbol"]
        updates.append(update)
    return updates
