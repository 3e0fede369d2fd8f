"""JSON request bodies: parsed with orjson, checked for shape, turned into typed values."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from functions.api.keys import (
    MAX_BODY_BYTES,
    MAX_POST_KEYS,
    canonical_keys,
    check_body_size,
    check_key_count,
)
from functions.errors import BadRequest, PayloadTooLarge, Unprocessable
from functions.streams import MAX_STREAM_KEYS, validate_mode, validate_name

# A start request may name every key a stream can have (25,000 x up to ~35 bytes).
MAX_START_BODY_BYTES = 1024 * 1024
MAX_STOP_BODY_BYTES = 4 * 1024


def json_object(body: bytes | str, *, limit: int) -> dict[str, Any]:
    """`body` as bytes, or as the str of a Lambda event (orjson parses it without a copy)."""
    size = len(body) if isinstance(body, bytes) or body.isascii() else len(body.encode())
    check_body_size(size, limit=limit)
    if not body or body.isspace():  # no copy of a large body
        raise BadRequest("the request body is empty; send a JSON object")
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise BadRequest(f"the request body must be a JSON object, got {type(document).__name__}")
    return document


def key_list(document: dict[str, Any], *, limit: int, required: bool = True) -> list[str]:
    raw = document.get("keys")
    if raw is None and not required:
        return []
    if not isinstance(raw, list):
        raise Unprocessable(
            'field "keys" must be a list of instrument keys such as ["NSE_EQ:1333"]',
            code="missing_keys",
        )
    check_key_count(len(raw), limit=limit)
    keys = canonical_keys(raw)
    if not keys and required:
        raise Unprocessable('field "keys" must name at least one instrument', code="missing_keys")
    return keys


def prices_request(body: bytes | str) -> list[str]:
    """The distinct keys of `{"keys": [...]}` (POST /api/v1/current_prices)."""
    return key_list(json_object(body, limit=MAX_BODY_BYTES), limit=MAX_POST_KEYS)


@dataclass(frozen=True, slots=True)
class StartRequest:
    name: str
    keys: list[str]
    mode: str | None
    by: str | None


def start_request(body: bytes) -> StartRequest:
    document = json_object(body, limit=MAX_START_BODY_BYTES)
    name = validate_name(document.get("name"))
    raw_keys = document.get("keys")
    if isinstance(raw_keys, list) and len(raw_keys) > MAX_STREAM_KEYS:
        raise PayloadTooLarge(
            f"{len(raw_keys)} keys given, a stream may have at most {MAX_STREAM_KEYS}",
            details={"limit_keys": MAX_STREAM_KEYS},
        )
    keys = key_list(document, limit=MAX_STREAM_KEYS)
    mode = document.get("mode")
    by = document.get("by")
    if by is not None and not isinstance(by, str):
        raise Unprocessable('field "by" must be a string when given')
    return StartRequest(name, keys, None if mode is None else validate_mode(mode), by)


def stop_request(body: bytes) -> str:
    document = json_object(body, limit=MAX_STOP_BODY_BYTES)
    return validate_name(document.get("name"))

