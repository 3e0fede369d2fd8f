"""Pure parts of the fan-out: which updates a connection gets, and how they become messages.

A connection gets the window's updates for its keys, merged with what failed to reach it
before (newest version wins), as one `screener_ltp_batch_update` message; only a message that
would pass `max_bytes` (API Gateway meters in 32 KB units) is split.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from core.messages import BATCH_UPDATE, SOURCE_WEBSOCKET

Update = Mapping[str, Any]

_ENVELOPE = len(orjson.dumps({"type": BATCH_UPDATE, "timestamp": "2026-01-01T00:00:00.000Z",
                              "source": SOURCE_WEBSOCKET, "updates": []}))


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


def select_updates(window: Mapping[str, Update], keys: frozenset[str] | set[str],
                   pending: Mapping[str, Update]) -> dict[str, Update]:
    """This connection's share of the window plus its carried-over updates, newest winning.

    The rule the registry's claim script applies inside Redis (where it is also checked
    against what was already sent); kept here as its plain statement for tests and benchmarks.
    """
    small, large = (keys, window) if len(keys) < len(window) else (window, keys)
    chosen = {k: window[k] for k in small if k in large}
    for key, update in pending.items():
        if key not in keys or not valid_version(update):
            continue
        current = chosen.get(key)
        if current is None or update["version"] > current["version"]:
            chosen[key] = update
    return chosen


def build_messages(updates: Sequence[Update], *, timestamp: str, max_bytes: int) -> list[bytes]:
    """One batch message, or as few as fit `max_bytes` each when it would be larger."""
    envelope: dict[str, Any] = {"type": BATCH_UPDATE, "timestamp": timestamp,
                                "source": SOURCE_WEBSOCKET, "updates": list(updates)}
    whole = orjson.dumps(envelope)
    if len(whole) <= max_bytes:
        return [whole]
    messages: list[bytes] = []
    chunk: list[Update] = []
    size = _ENVELOPE
    for update in updates:
        item = len(orjson.dumps(update)) + 1
        if chunk and size + item > max_bytes:
            messages.append(orjson.dumps({**envelope, "updates": chunk}))
            chunk, size = [], _ENVELOPE
        chunk.append(update)
        size += item
    if chunk:
        messages.append(orjson.dumps({**envelope, "updates": chunk}))
    return messages
