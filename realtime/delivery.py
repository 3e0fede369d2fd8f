"""The delivery plan, pure: which updates each connection of a shard gets, as which messages.

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

from core.messages import BATCH_UPDATE, SOURCE_WEBSOCKET, Update, loads
from realtime.window import Conflator


def index_window(updates: Iterable[Mapping[str, Any]]) -> dict[str, Update]:
    """The window's updates by key, newest version kept (the bridge already conflates; a
    payload from anywhere else is not trusted to)."""
    return Conflator().extend(updates).drain()


def route(window: Mapping[str, Mapping[str, Any]], encoded: Mapping[str, bytes],
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


def still_wanted(carried: Sequence[bytes], keys: frozenset[str],
                 floors: Mapping[str, int]) -> list[bytes]:
    """Carried updates (JSON) of keys the connection still wants, above its snapshot floor."""
    if not carried or not keys:
        return []
    kept = []
    for raw in carried:
        update = loads(raw)
        key = update.get("key")
        if key in keys and update.get("version", -1) > floors.get(key, 0):
            kept.append(raw)
    return kept


def build_messages(updates: Sequence[Mapping[str, Any]], *, timestamp: str,
                   max_bytes: int) -> list[bytes]:
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
