"""The browser <-> server WebSocket protocol: parsing client messages, building server ones.

Client -> server: `{"action": "subscribe"|"unsubscribe", "keys": [...]}`, `{"action": "ping"}`.
Server -> client: `snapshot`, `screener_ltp_batch_update` (the fan-out's), `pong`, `error` (with
`code: "reconnect"` when the registry no longer knows the connection: `ping` and `subscribe`
answer so after a cache wipe, and the page opens a new socket and subscribes again).
Parsing is pure and total: anything a client can send becomes either an action or a
`ProtocolError` whose reason goes back in an `error` message; nothing is half applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from core.errors import InvalidKeysError
from core.instruments import parse_keys
from core.messages import utc_now_iso

ACTIONS = ("subscribe", "unsubscribe", "ping")
# API Gateway accepts 128 KB; 1,000 keys of at most 32 characters fit well within 64 KB.
MAX_CLIENT_MESSAGE_BYTES = 64 * 1024

SNAPSHOT = "snapshot"
PONG = "pong"
ERROR = "error"
# An `error` with this code means the server no longer knows the connection (the cache was
# wiped or replaced): the client reconnects and subscribes again; nothing else will recover it.
RECONNECT = "reconnect"
NOT_CARRIED = "not_carried"
UNKNOWN_CONNECTION = ("this connection is not registered (the cache was reset): "
                      "reconnect and subscribe again")


class ProtocolError(Exception):
    def __init__(self, reason: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.details = details or {}


@dataclass(frozen=True, slots=True)
class ClientAction:
    action: Literal["subscribe", "unsubscribe", "ping"]
    keys: tuple[str, ...] = ()
    request_id: str | None = None


def parse_client_message(
    body: str | bytes | None, *, max_bytes: int = MAX_CLIENT_MESSAGE_BYTES, max_keys: int = 1000
) -> ClientAction:
    if body is None or body == "" or body == b"":
        raise ProtocolError("empty message")
    size = len(body.encode() if isinstance(body, str) else body)
    if size > max_bytes:
        raise ProtocolError(f"message too large: {size} bytes (at most {max_bytes})")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ProtocolError("invalid JSON") from None
    if not isinstance(document, dict):
        raise ProtocolError('expected a JSON object like {"action": "ping"}')
    action = document.get("action")
    request_id = document.get("id")
    rid = str(request_id)[:64] if isinstance(request_id, str | int) else None
    if action == "ping":
        return ClientAction("ping", request_id=rid)
    if action not in ("subscribe", "unsubscribe"):
        shown = action if isinstance(action, str) else repr(action)
        raise ProtocolError(f"unknown action {shown[:40]!r} (one of {', '.join(ACTIONS)})")
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list) or not raw_keys:
        raise ProtocolError(f"{action} needs a non-empty list of keys")
    if len(raw_keys) > max_keys:
        raise ProtocolError(f"at most {max_keys} keys per connection, got {len(raw_keys)}")
    bad = {repr(k)[:40]: "must be a string like NSE_EQ:1333" for k in raw_keys
           if not isinstance(k, str)}
    if bad:
        raise ProtocolError("invalid keys", details={"invalid": bad})
    try:
        keys = parse_keys(raw_keys)
    except InvalidKeysError as exc:
        raise ProtocolError("invalid keys", details={"invalid": exc.problems}) from None
    return ClientAction(action, tuple(str(k) for k in keys), rid)


def _with_id(message: dict[str, Any], request_id: str | None) -> dict[str, Any]:
    if request_id is not None:
        message["id"] = request_id
    return message


def error_message(reason: str, *, details: dict[str, Any] | None = None,
                  request_id: str | None = None) -> dict[str, Any]:
    return _with_id({"type": ERROR, "reason": reason, **(details or {})}, request_id)


def reconnect_message(*, request_id: str | None = None) -> dict[str, Any]:
    return error_message(UNKNOWN_CONNECTION, details={"code": RECONNECT}, request_id=request_id)


def not_carried_message(keys: list[str], *, request_id: str | None = None) -> dict[str, Any]:
    """Keys of a subscribe that the feed cannot carry: refused, so the page can say so instead
    of showing a snapshot that never moves."""
    shown = ", ".join(keys[:20]) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")
    return error_message(
        f"not subscribed: the feed cannot carry {len(keys)} more key(s) now (it is at its "
        f"capacity of 5 connections x 5,000 instruments): {shown}",
        details={"code": NOT_CARRIED, "keys": keys}, request_id=request_id)


def pong_message(*, request_id: str | None = None) -> dict[str, Any]:
    return _with_id({"type": PONG, "timestamp": utc_now_iso()}, request_id)


def snapshot_message(prices: Mapping[str, Mapping[str, Any]], missing: list[str], *,
                     request_id: str | None = None) -> dict[str, Any]:
    return _with_id({"type": SNAPSHOT, "timestamp": utc_now_iso(), "prices": prices,
                     "missing": missing}, request_id)


def subscribed_message(action: str, keys: list[str], total: int, *,
                       request_id: str | None = None) -> dict[str, Any]:
    """Acknowledges an unsubscribe (a subscribe is acknowledged by its snapshot)."""
    return _with_id({"type": action + "d", "keys": keys, "total": total}, request_id)
