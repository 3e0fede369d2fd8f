"""Pure parts of the fan-out: which updates a connection gets, and how they become messages.

A connection gets the window's fresh updates for its keys above its snapshot floors (`route`;
what failed to reach it before is added by the fan-out from the registry's carry), as one
`screener_ltp_batch_update` message; only a message that would pass `max_bytes` (API Gateway
meters in 32 KB units) is split.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from core.messages import BATCH_UPDATE, SOURCE_WEBSOCKET

Update = Mapping[str, Any]


def valid_version(update: Update) -> bool:
    version = update.get("version")
    return isinstance(version, int) and not isinstance(version, bool) and version >= 0


def index_window(updates: Iterable[Update]) -> dict[str, Update]:
    """The window's updates by key, newest version kept (the bridge already conflates)."""
    window: dict[str, Update] = {}
    for update in updates:
        key = update.get("key")
        if not isinstance(key, str) or not valid_version(update):
            continue
        current = window.get(key)
        if current is None or update["version"] > current["version"]:
            window[key] = update
    return window


def split_floors(floors: Mapping[str, Mapping[str, int]]
                 ) -> tuple[dict[str, frozenset[str]], dict[str, dict[str, int]]]:
    """{id: {key: floor}} -> (id -> its keys, id -> only the keys with a snapshot floor)."""
    keys = {cid: frozenset(wanted) for cid, wanted in floors.items()}
    raised = {cid: {k: f for k, f in wanted.items() if f > 0} for cid, wanted in floors.items()}
    return keys, {cid: f for cid, f in raised.items() if f}


def route(window: Mapping[str, Update], encoded: Mapping[str, bytes],
          keys: Mapping[str, frozenset[str]],
          floors: dict[str, dict[str, int]]) -> dict[str, list[bytes]]:
    """Connection id -> the encoded fresh updates it gets: its keys', above its floors.

    Set intersection and `map` keep the per-connection work in C: this runs for every
    connection of the shard in every window. A floor is dropped once a fresh version passed
    it: the shard's claims only go forward, so it can never filter anything again."""
    routed: dict[str, list[bytes]] = {}
    fresh = set(encoded)
    pick = encoded.__getitem__
    for cid, wanted in keys.items():
        chosen = fresh & wanted  # a set (the left operand's type), iterating the smaller
        if not chosen:
            continue
        raised = floors.get(cid)
        if raised:
            for key in chosen & raised.keys():
                if window[key]["version"] > raised[key]:
                    del raised[key]  # passed for good
                else:
                    chosen.discard(key)
            if not raised:
                floors.pop(cid, None)
            if not chosen:
                continue
        routed[cid] = list(map(pick, chosen))
    return routed


def build_messages(updates: Sequence[Update], *, timestamp: str, max_bytes: int) -> list[bytes]:
    """One batch message, or as few as fit `max_bytes` each when it would be larger."""
    return pack_messages([orjson.dumps(update) for update in updates], timestamp=timestamp,
                         max_bytes=max_bytes)


@functools.lru_cache(maxsize=4)
def _head(timestamp: str) -> bytes:
    return orjson.dumps({"type": BATCH_UPDATE, "timestamp": timestamp,
                         "source": SOURCE_WEBSOCKET})[:-1] + b',"updates":['


def pack_messages(items: Sequence[bytes], *, timestamp: str, max_bytes: int) -> list[bytes]:
    """`build_messages` for updates already encoded (each window update is encoded once, not
    once per connection that gets it); the bytes equal `orjson.dumps` of the envelope."""
    head = _head(timestamp)
    body = b",".join(items)
    if len(head) + len(body) + 2 <= max_bytes:
        return [head + body + b"]}"]
    messages: list[bytes] = []
    chunk: list[bytes] = []
    size = len(head) + 2
    for item in items:
        if chunk and size + len(item) + 1 > max_bytes:
            messages.append(head + b",".join(chunk) + b"]}")
            chunk, size = [], len(head) + 2
        chunk.append(item)
        size += len(item) + (1 if len(chunk) > 1 else 0)
    if chunk:
        messages.append(head + b",".join(chunk) + b"]}")
    return messages
