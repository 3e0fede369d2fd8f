"""The `websocket_stream:{NAME}` record: its one writer and its one reader.

The API writes (`StreamRecord.to_json`, the seed's shape):
  {"name": NAME, "keys": ["NSE_EQ:1333", ...], "mode": "ticker|quote|full", "by": ..., "at": ISO}

Hand-written and older seed writers exist, so `parse_stream_record` reads, for the API and the
streamer alike:
  - a JSON object whose `keys` is a list, or a comma-separated string of keys;
  - a bare JSON list of keys;
  - a comma-separated string of keys as the whole value, plain text or JSON-quoted; it must
    hold a ':' (as every key does), so that junk such as `not json` is not read as a key.
A list item that is not a string is dropped and named in `StreamRecord.dropped`, for the
reader to count and report; strings are kept as written (checking a key is the reader's:
`core.instruments.parse_key`). `mode`, `by` and `at` are kept when they are strings, else "".
The record's own `name` field is not read: the Redis key names the stream. Any other value is
None (not a stream record).

Behaviour changes from the two readers this replaces: the API (`functions.streams`) read only
the JSON-object form with all-string keys; it now reads every form above, and a non-string item
is dropped instead of making the whole record unreadable. The streamer (`streamer.keysource`)
read a JSON-quoted whole value without a ':' as a stream of invalid keys; it is now None, as
the same text unquoted already was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from core.instruments import split_keys
from core.messages import dumps, loads

# A dropped item is reported by its repr, cut to this length (a list item can be anything).
_DROPPED_REPR = 80


@dataclass(frozen=True, slots=True)
class StreamRecord:
    """One named stream as the registry holds it.

    `dropped` is a reading diagnostic (reprs of list items that were not strings), not part of
    the record: it is never written and two records differing only in it are equal.
    """

    name: str
    keys: tuple[str, ...]
    mode: str = ""
    by: str = ""
    at: str = ""
    dropped: tuple[str, ...] = field(default=(), compare=False)

    def to_json(self) -> bytes:
        return dumps({"name": self.name, "keys": list(self.keys), "mode": self.mode,
                      "by": self.by, "at": self.at})  # fmt: skip


def parse_stream_record(name: str, raw: bytes | str) -> StreamRecord | None:
    """Read a registry value defensively: None when it is none of the accepted forms."""
    try:
        document: Any = loads(raw)
    except ValueError:
        document = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
    if not isinstance(document, dict):
        return _from_keys(name, document, whole_value=True)
    record = _from_keys(name, document.get("keys"), whole_value=False)
    if record is None:
        return None
    mode, by, at = (document.get(f) for f in ("mode", "by", "at"))
    return StreamRecord(record.name, record.keys, _text(mode), _text(by), _text(at),
                        record.dropped)  # fmt: skip


def _from_keys(name: str, items: object, *, whole_value: bool) -> StreamRecord | None:
    if isinstance(items, str):
        if whole_value and ":" not in items:
            return None
        return StreamRecord(name, tuple(split_keys(items)))
    if isinstance(items, list):
        keys, dropped = _partition(items)
        return StreamRecord(name, keys, dropped=dropped)
    return None


def _partition(items: Iterable[object]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    keys: list[str] = []
    dropped: list[str] = []
    for item in items:
        if isinstance(item, str):
            keys.append(item)
        else:
            dropped.append(repr(item)[:_DROPPED_REPR])
    return tuple(keys), tuple(dropped)


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
