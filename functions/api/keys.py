"""Instrument keys from a request: validated, canonical, duplicates folded, within limits.

The hot path (every poll of every browser) must not pay `core.instruments.parse_keys`'s
per-key Python work: input that is already canonical (`SEGMENT:ID`, no leading zeros, ids of at
most 9 digits so always < 2**32) is recognised by one C-level regex over the joined text. Any
other input goes through `parse_keys`, which canonicalises what it can and names every bad key.
Both paths give the same answer (property-tested).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from core.errors import InvalidKeysError
from core.instruments import SEGMENT_CODES, parse_keys, split_keys
from functions.errors import PayloadTooLarge, Unprocessable, UriTooLong

# API Gateway HTTP APIs cap the request line plus headers at 10,240 bytes; 8 KiB of query
# leaves room for the path and the headers a browser sends.
MAX_QUERY_BYTES = 8192
MAX_POST_KEYS = 5000
MAX_BODY_BYTES = 256 * 1024
# How many bad keys an error message lists before summarising.
MAX_REPORTED_BAD_KEYS = 50

# Segments as a small trie (faster to match than a flat alternation); checked against
# SEGMENT_CODES below so that a new segment cannot be forgotten here.
_SEGMENTS = r"NSE_(?:EQ|FNO|CURRENCY)|BSE_(?:EQ|FNO|CURRENCY)|MCX_COMM|IDX_I"
assert all(re.fullmatch(_SEGMENTS, s) for s in SEGMENT_CODES), "update _SEGMENTS"
assert len(SEGMENT_CODES) == 8, "update _SEGMENTS"
_KEY = rf"(?:{_SEGMENTS}):(?:0|[1-9][0-9]{{0,8}})"
_CANONICAL_CSV = re.compile(rf"{_KEY}(?:,{_KEY})*+")


def canonical_keys(items: Sequence[Any], *, fold: bool = True) -> list[str]:
    """Canonical keys in first-seen order; raises Unprocessable naming every bad key.

    With `fold=False` already-canonical input is returned as given, duplicates included: the
    price routes fold them for free in their answer's dict instead of paying a dict here.
    """
    try:
        joined = ",".join(items)
    except TypeError:
        joined = None
    if (
        joined is not None
        and joined.count(",") == len(items) - 1
        and _CANONICAL_CSV.fullmatch(joined) is not None
    ):
        return list(dict.fromkeys(items)) if fold else list(items)
    try:
        return [str(key) for key in parse_keys(items)]
    except InvalidKeysError as exc:
        raise invalid_keys(exc.problems) from None


def canonical_keys_from_csv(csv: str, *, fold: bool = True) -> list[str]:
    if _CANONICAL_CSV.fullmatch(csv) is not None:
        keys = csv.split(",")
        return list(dict.fromkeys(keys)) if fold else keys
    return canonical_keys(split_keys(csv))


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
    keys = canonical_keys_from_csv(csv, fold=False) if csv else []
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
