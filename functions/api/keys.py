"""Instrument keys from a request: validated, canonical, duplicates folded, within limits.

The hot path (every poll of every browser) must not pay `core.instruments.parse_keys`'s
per-key Python work: input that is already canonical is recognised by one C-level regex pass
over the joined text (`core.instruments.is_canonical_batch`). Any other input goes through
`parse_keys`, which canonicalises what it can and names every bad key. Both paths give the same
answer (property-tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.errors import InvalidKeysError
from core.instruments import is_canonical_batch, is_canonical_csv, parse_keys, split_keys
from functions.errors import PayloadTooLarge, Unprocessable, UriTooLong

# API Gateway HTTP APIs cap the request line plus headers at 10,240 bytes; 8 KiB of query
# leaves room for the path and the headers a browser sends.
MAX_QUERY_BYTES = 8192
MAX_POST_KEYS = 5000
MAX_BODY_BYTES = 256 * 1024
# How many bad keys an error message lists before summarising.
MAX_REPORTED_BAD_KEYS = 50


def canonical_keys(items: Sequence[Any]) -> list[str]:
    """Distinct canonical keys in first-seen order; raises Unprocessable naming every bad key."""
    if is_canonical_batch(items):
        return _distinct(items if isinstance(items, list) else list(items))
    try:
        return [str(key) for key in parse_keys(items)]
    except InvalidKeysError as exc:
        raise invalid_keys(exc.problems) from None


def canonical_keys_from_csv(csv: str) -> list[str]:
    if is_canonical_csv(csv):
        return _distinct(csv.split(","))
    return canonical_keys(split_keys(csv))


def _distinct(keys: list[str]) -> list[str]:
    # A set only sizes the list (cheaper than building the ordered dict that folding needs).
    return keys if len(set(keys)) == len(keys) else list(dict.fromkeys(keys))


def invalid_keys(problems: dict[str, str]) -> Unprocessable:
    shown = list(problems.items())[:MAX_REPORTED_BAD_KEYS]
    listed = "; ".join(f"{key!r}: {reason}" for key, reason in shown)
    more = len(problems) - len(shown)
    suffix = f"; and {more} more" if more > 0 else ""
    return Unprocessable(
        f"{len(problems)} invalid instrument key(s), expected SEGMENT:SECURITY_ID such as "
        f"NSE_EQ:1333: {listed}{suffix}",
        code="invalid_keys",
        details={"invalid_keys": dict(shown)},
    )


def keys_from_query(raw_query: bytes, values: Sequence[str]) -> list[str]:
    """Keys of `GET ?keys=A,B` (repeated `keys=` parameters are joined)."""
    if len(raw_query) > MAX_QUERY_BYTES:
        raise UriTooLong(
            f"the query string is {len(raw_query)} bytes, more than the {MAX_QUERY_BYTES} "
            f"allowed (API Gateway limits the request line and headers to 10,240 bytes); "
            f"send up to {MAX_POST_KEYS} keys as JSON with POST instead",
            details={"limit_bytes": MAX_QUERY_BYTES},
        )
    csv = values[0] if len(values) == 1 else ",".join(values)
    keys = canonical_keys_from_csv(csv) if csv else []
    if not keys:
        raise Unprocessable(
            "no instrument keys given: use ?keys=NSE_EQ:1333,NSE_EQ:11536",
            code="missing_keys",
        )
    return keys


def check_body_size(size: int, *, limit: int = MAX_BODY_BYTES) -> None:
    if size > limit:
        raise PayloadTooLarge(
            f"the request body is {size} bytes, more than the {limit} allowed",
            details={"limit_bytes": limit},
        )


def check_declared_length(declared: str | None, limit: int) -> None:
    """Refuse an oversized body before reading it, when the client declared its size."""
    if declared is not None and declared.isdigit():
        check_body_size(int(declared), limit=limit)


def check_key_count(count: int, *, limit: int = MAX_POST_KEYS) -> None:
    if count > limit:
        raise PayloadTooLarge(
            f"{count} keys given, at most {limit} are allowed per request; split them into "
            f"several requests",
            details={"limit_keys": limit},
        )
