"""Instrument keys: `SEGMENT:SECURITY_ID`, the feed's segment codes, parsing and validation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from core.errors import InvalidKeyError, InvalidKeysError

# The feed's numeric exchange-segment codes (DhanHQ annexure; there is no 6).
SEGMENT_CODES: dict[str, int] = {
    "IDX_I": 0,
    "NSE_EQ": 1,
    "NSE_FNO": 2,
    "NSE_CURRENCY": 3,
    "BSE_EQ": 4,
    "MCX_COMM": 5,
    "BSE_CURRENCY": 7,
    "BSE_FNO": 8,
}
SEGMENT_NAMES: dict[int, str] = {code: name for name, code in SEGMENT_CODES.items()}

# Security ids travel as u32 in the binary feed, so anything larger cannot be subscribed.
MAX_SECURITY_ID = 2**32 - 1
MAX_KEY_LENGTH = 32

# The segments as a small trie (quicker to match than a flat alternation of eight names).
_SEGMENT_PATTERN = r"NSE_(?:EQ|FNO|CURRENCY)|BSE_(?:EQ|FNO|CURRENCY)|MCX_COMM|IDX_I"
# Canonical keys with ids of 1 to 9 digits and no leading zero (so always <= MAX_SECURITY_ID),
# comma-separated: one possessive pass over a joined batch, no backtracking.
_FAST_KEY = rf"(?:{_SEGMENT_PATTERN}):[1-9][0-9]{{0,8}}+"
_CANONICAL_BATCH = re.compile(rf"(?:{_FAST_KEY},)*+{_FAST_KEY}")
assert all(re.fullmatch(_SEGMENT_PATTERN, name) for name in SEGMENT_CODES), "update the trie"
assert len(SEGMENT_CODES) == 8, "update _SEGMENT_PATTERN"


class InstrumentKey(NamedTuple):
    segment: str
    security_id: str

    def __str__(self) -> str:
        return f"{self.segment}:{self.security_id}"

    @property
    def segment_code(self) -> int:
        return SEGMENT_CODES[self.segment]

    @classmethod
    def from_feed(cls, segment_code: int, security_id: int) -> InstrumentKey:
        """The key of a decoded packet; raises KeyError for an unknown segment code."""
        return cls(SEGMENT_NAMES[segment_code], str(security_id))


def parse_key(text: str) -> InstrumentKey:
    """Parse one key, tolerating surrounding blanks; raise InvalidKeyError naming the key."""
    if not isinstance(text, str):
        raise InvalidKeyError(repr(text), "must be a string like NSE_EQ:1333")
    raw = text.strip()
    if len(raw) > MAX_KEY_LENGTH:
        raise InvalidKeyError(raw[:MAX_KEY_LENGTH] + "...", "too long")
    segment, sep, security_id = raw.partition(":")
    if not sep:
        raise InvalidKeyError(raw, "expected SEGMENT:SECURITY_ID, e.g. NSE_EQ:1333")
    if segment not in SEGMENT_CODES:
        allowed = " ".join(SEGMENT_CODES)
        raise InvalidKeyError(raw, f"unknown segment {segment!r} (one of {allowed})")
    if not security_id.isascii() or not security_id.isdigit():
        raise InvalidKeyError(raw, "security id must be all digits")
    number = int(security_id)
    if number > MAX_SECURITY_ID:
        raise InvalidKeyError(raw, "security id out of range")
    # Canonical form drops leading zeros so "NSE_EQ:01333" and "NSE_EQ:1333" are one key.
    return InstrumentKey(segment, str(number))


def parse_keys(texts: Iterable[str]) -> list[InstrumentKey]:
    """Parse many keys, folding duplicates in first-seen order.

    Raises InvalidKeysError naming every bad key, so a caller can fix them all at once.
    """
    seen: dict[InstrumentKey, None] = {}
    problems: dict[str, str] = {}
    for text in texts:
        try:
            seen.setdefault(parse_key(text), None)
        except InvalidKeyError as exc:
            problems[exc.key] = exc.reason
    if problems:
        raise InvalidKeysError(problems)
    return list(seen)


def split_keys(csv: str) -> list[str]:
    """Split a comma-separated list (query string, env var), dropping empty items."""
    return [part for part in (p.strip() for p in csv.split(",")) if part]


def is_canonical_batch(texts: Sequence[object]) -> bool:
    """True when every item is a str that `parse_key` would return unchanged, checked with one
    regex pass over the joined items instead of Python work per key (a hot path checks
    thousands). False means "not proven": the ids 0 and 10-digit ids are canonical but left to
    `parse_keys`, which decides and names every bad key."""
    try:
        joined = ",".join(texts)  # type: ignore[arg-type]  # TypeError for a non-str item
    except TypeError:
        return False
    # A comma inside an item would make two keys of one.
    if joined.count(",") != len(texts) - 1:
        return False
    return _CANONICAL_BATCH.fullmatch(joined) is not None


def is_canonical_csv(csv: str) -> bool:
    """`is_canonical_batch` for comma-separated text: True when `csv.split(",")` is a list of
    canonical keys (no blanks, no empty items)."""
    return _CANONICAL_BATCH.fullmatch(csv) is not None
