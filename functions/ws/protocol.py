"""The browser <-> server WebSocket protocol: parsing client messages, building server ones.

Client -> server: `{"action": "subscribe"|"unsubscribe", "keys": [...]}`, `{"action": "ping"}`.
Server -> client: `snapshot`, `screener_ltp_batch_update` (the fan-out's), `pong`, `error` (with
`code: "reconnect"` when the registry no longer knows the connection: `ping` and `subscribe`
answer so after a cache wipe, and the page opens a new socket and subscribes again). Other
codes: `not_carried` and `unknown_instrument` (with `keys`: a subscribe's keys refused),
`too_many_keys` (over the per-connection cap), `rate_limited` (with `retry_after_ms`: messages
sent before then are dropped unanswered; a client that keeps on is disconnected).
Parsing is pure and total: anything a client can send becomes either an action or a
`ProtocolError` whose reason goes back in an `error` message; nothing is half applied. A
reason never echoes more than a short excerpt of what was sent, nor a nested value (a deeply
nested one has no repr within Python's recursion limit).
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
# API Gateway accepts 128 KB; 500 keys (the page's most) of at most 32 characters fit well
# within 64 KB.
MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
MAX_KEYS = 500

SNAPSHOT = "snapshot"
PONG = "pong"
ERROR = "error"
# An `error` with this code means the server no longer knows the connection (the cache was
# wiped or replaced): the client reconnects and subscribes again; nothing else will recover it.
RECONNECT = "reconnect"
NOT_CARRIED = "not_carried"
UNKNOWN_INSTRUMENT = "unknown_instrument"
TOO_MANY_KEYS = "too_many_keys"
RATE_LIMITED = "rate_limited"
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


def _shown(value: object) -> str:
    """A short, safe excerpt of a client's value for an error reason."""
    if isinstance(value, str):
        return value[:40]
    if isinstance(value, bool | int | float) or value is None:
        return repr(value)[:40]
    return f"a JSON {'object' if isinstance(value, dict) else 'array'}"


def parse_client_message(
    body: str | bytes | None, *, max_bytes: int = MAX_CLIENT_MESSAGE_BYTES,
    max_keys: int = MAX_KEYS,
) -> ClientAction:
    if body is None or body == "" or body == b"":
        raise ProtocolError("empty message")
    size = len(body.encode() if isinstance(body, str) else body)
    if size > max_bytes:
        raise ProtocolError(f"message too large: {size} bytes (at most {max_bytes})")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # orjson's message starts with what is wrong ("depth limit exceeded: line 1 ...").
        raise ProtocolError(f"invalid JSON ({str(exc).partition(':')[0][:60]})") from None
    if not isinstance(document, dict):
        raise ProtocolError('expected a JSON object like {"action": "ping"}')
    action = document.get("action")
    request_id = document.get("id")
    rid = str(request_id)[:64] if isinstance(request_id, str | int) else None
    if action == "ping":
        return ClientAction("ping", request_id=rid)
    if action not in ("subscribe", "unsubscribe"):
        raise ProtocolError(
            f"unknown action {_shown(action)!r} (one of {', '.join(ACTIONS)})")
    raw_keys = document.get("keys")
    if not isinstance(raw_keys, list) or not raw_keys:
        raise ProtocolError(f"{action} needs a non-empty list of keys")
    if len(raw_keys) > max_keys:
        raise ProtocolError(f"at most {max_keys} keys per connection, got {len(raw_keys)}",
                            details={"code": TOO_MANY_KEYS})
    bad = {_shown(k): "must be a string like NSE_EQ:1333" for k in raw_keys
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


def _listed(keys: list[str]) -> str:
    return ", ".join(keys[:20]) + (f" and {len(keys) - 20} more" if len(keys) > 20 else "")


def not_carried_message(keys: list[str], *, request_id: str | None = None) -> dict[str, Any]:
    """Keys of a subscribe that the feed cannot carry: refused, so the page can say so instead
    of showing a snapshot that never moves."""
    return error_message(
        f"not subscribed: the feed cannot carry {len(keys)} more key(s) now (it is at its "
        f"capacity of 5 connections x 5,000 instruments): {_listed(keys)}",
        details={"code": NOT_CARRIED, "keys": keys}, request_id=request_id)


def unknown_instrument_message(keys: list[str], *,
                               request_id: str | None = None) -> dict[str, Any]:
    """Keys of a subscribe that the loaded instrument master does not list: refused."""
    return error_message(
        f"not subscribed: {len(keys)} key(s) name no instrument of the instrument master: "
        f"{_listed(keys)}",
        details={"code": UNKNOWN_INSTRUMENT, "keys": keys}, request_id=request_id)


def too_many_keys_message(reason: str, *, request_id: str | None = None) -> dict[str, Any]:
    return error_message(reason, details={"code": TOO_MANY_KEYS}, request_id=request_id)


def rate_limited_message(retry_after_ms: int, *, per_second: float,
                         burst: int) -> dict[str, Any]:
    """Sent once when a connection goes over its message rate; what it sends within
    `retry_after_ms` is dropped unanswered, and one that keeps on is disconnected."""
    return error_message(
        f"too many messages: at most {per_second:g} per second (bursts of {burst}); "
        f"messages sent in the next {retry_after_ms} ms are dropped, and a connection that "
        "stays over the limit is closed",
        details={"code": RATE_LIMITED, "retry_after_ms": retry_after_ms})


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
