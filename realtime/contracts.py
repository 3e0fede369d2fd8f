"""The messages between the real-time path's deployables, typed on both sides.

  streamer -> bridge     `live_ltp_updates` batches of `core.messages.Update` (the seed's shape)
  bridge -> fan-out      `FanoutPayload`, a Lambda async invoke (under 1 MB, see
                         `realtime.window.split_payloads`)
  bridge -> heartbeat    `BridgeStatus` JSON at `ws:bridge:heartbeat` (read by health)
  registry -> handlers   `SnapshotPrice` per key of a `subscribe`'s snapshot
Versions: per key and strictly increasing (the streamer's wall clock in microseconds), so
"newest" is always "highest version" (`is_newer`), never "arrived last".
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NotRequired, TypedDict

from core.messages import Update

__all__ = ["BridgeStatus", "FanoutPayload", "SnapshotPrice", "Update", "is_newer",
           "valid_version"]


class FanoutPayload(TypedDict):
    shard: int
    window: int  # the bridge's window sequence number
    published_at: float  # epoch seconds when the window closed
    updates: list[Update]  # newest per key, only keys some connection of the shard wants
    # Keys the shard's connections want that the feed no longer carries: each subscriber is
    # told (`not_carried`) and unsubscribed from them.
    not_carried: NotRequired[list[str]]


class SnapshotPrice(TypedDict, total=False):
    ltp: float
    ltt: int
    version: int
    symbol: str


class BridgeStatus(TypedDict):
    time: float
    subscribed: bool
    messages: int
    updates: int
    windows: int
    invocations: int
    invoke_errors: int
    requeued: int  # updates put back into the next window after a failed one
    heartbeat_errors: int  # beats that did not reach Redis
    reader_errors: int
    reconnects: int
    resynced: int
    window_seconds: float
    expected_posts_per_second: float
    last_error: str
    last_window_at: float


def valid_version(update: Mapping[str, Any]) -> bool:
    version = update.get("version")
    return isinstance(version, int) and not isinstance(version, bool) and version >= 0


def is_newer(update: Mapping[str, Any], current: Mapping[str, Any] | None) -> bool:
    """`update` replaces `current` for its key: a valid version above the current one."""
    if not valid_version(update):
        return False
    return current is None or update["version"] > current["version"]
