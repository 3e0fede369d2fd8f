"""The `websocket_stream:{NAME}` record (core.stream_record): every form its docstring accepts,
junk refused, non-string items dropped and reported, the writer read back, and the API
(`functions.streams.read_streams`) and the streamer (`streamer.keysource.KeySource`) reading one
table of raw values the same way through Redis."""

from __future__ import annotations

import json
import logging

import pytest
import redis
import redis.asyncio as aioredis

from core.errors import InvalidKeyError
from core.instruments import InstrumentKey, parse_key
from core.names import stream_key
from core.stream_record import StreamRecord, parse_stream_record
from functions.streams import Stream, read_streams
from streamer.keysource import KeySource

# (raw value, keys read, dropped item reprs); keys None: not a stream record.
ACCEPTED: list[tuple[bytes | str, tuple[str, ...], tuple[str, ...]]] = [
    # a JSON object whose `keys` is a list (the API's writer)
    (json.dumps({"name": "s", "keys": ["NSE_EQ:1333", "IDX_I:13"], "mode": "quote"}),
     ("NSE_EQ:1333", "IDX_I:13"), ()),
    # list items are kept as written: checking them is the reader's
    (json.dumps({"keys": [" NSE_EQ:1 ", "NSE_EQ:bad", "NSE_EQ:1"]}),
     (" NSE_EQ:1 ", "NSE_EQ:bad", "NSE_EQ:1"), ()),
    (json.dumps({"keys": []}), (), ()),
    # ... or a comma-separated string of keys
    (json.dumps({"keys": "NSE_EQ:1333, IDX_I:13,,"}), ("NSE_EQ:1333", "IDX_I:13"), ()),
    (json.dumps({"keys": ""}), (), ()),
    # a bare JSON list of keys
    (json.dumps(["NSE_EQ:2885", "BSE_EQ:500325"]), ("NSE_EQ:2885", "BSE_EQ:500325"), ()),
    (json.dumps([]), (), ()),
    # comma-separated keys as the whole value, plain text or JSON-quoted
    ("NSE_EQ:11536,NSE_EQ:1594", ("NSE_EQ:11536", "NSE_EQ:1594"), ()),
    (b" NSE_EQ:11536 , NSE_EQ:1594 ", ("NSE_EQ:11536", "NSE_EQ:1594"), ()),
    ("NSE_EQ:1", ("NSE_EQ:1",), ()),
    (json.dumps("NSE_EQ:7, IDX_I:25"), ("NSE_EQ:7", "IDX_I:25"), ()),
    # a plain value holding a ':' is read as keys, even when they are bad ones
    ("a:b", ("a:b",), ()),
    # non-string list items are dropped and named
    (json.dumps({"keys": ["NSE_EQ:1", 5, None, {"k": 1}, ["NSE_EQ:2"], True, 1.5]}),
     ("NSE_EQ:1",), ("5", "None", "{'k': 1}", "['NSE_EQ:2']", "True", "1.5")),
    (json.dumps([7, "NSE_EQ:3"]), ("NSE_EQ:3",), ("7",)),
]

JUNK: list[bytes | str] = [
    "not json",  # plain text without a ':'
    json.dumps("not json"),  # JSON-quoted, without a ':'
    json.dumps(""),
    "",
    b"\xff\xfe",  # not UTF-8, no ':'
    "5",
    "null",
    "true",
    json.dumps({}),  # an object without keys
    json.dumps({"keys": None}),
    json.dumps({"keys": 5}),
    json.dumps({"keys": {"NSE_EQ:1": 1}}),
    json.dumps({"name": "s", "mode": "quote"}),
    json.dumps([[]])[:-1],  # truncated JSON, no ':'
]


def fields(record: StreamRecord) -> tuple[str, tuple[str, ...], str, str, str]:
    return record.name, record.keys, record.mode, record.by, record.at


@pytest.mark.parametrize(("raw", "keys", "dropped"), ACCEPTED)
def test_accepted_forms(raw: bytes | str, keys: tuple[str, ...], dropped: tuple[str, ...]
                        ) -> None:  # fmt: skip
    for value in (raw, raw.encode() if isinstance(raw, str) else raw):
        record = parse_stream_record("swing", value)
        assert record is not None
        assert record.name == "swing"
        assert record.keys == keys
        assert record.dropped == dropped


@pytest.mark.parametrize("raw", JUNK)
def test_junk_is_not_a_stream_record(raw: bytes | str) -> None:
    assert parse_stream_record("swing", raw) is None


def test_fields_and_the_records_own_name() -> None:
    raw = json.dumps({"name": "other", "keys": ["NSE_EQ:1"], "mode": "full", "by": "ops",
                      "at": "2024-01-01T09:15:00+05:30"})  # fmt: skip
    record = parse_stream_record("swing", raw)
    # The Redis key names the stream, not the record's `name` field.
    assert record == StreamRecord("swing", ("NSE_EQ:1",), "full", "ops",
                                  "2024-01-01T09:15:00+05:30")  # fmt: skip
    odd = parse_stream_record("s", json.dumps({"keys": [], "mode": 1, "by": None, "at": []}))
    assert odd == StreamRecord("s", (), "", "", "")
    # The forms without an object carry no fields.
    assert parse_stream_record("s", '["NSE_EQ:1"]') == StreamRecord("s", ("NSE_EQ:1",))


def test_a_dropped_item_is_reported_by_a_short_repr() -> None:
    record = parse_stream_record("s", json.dumps({"keys": [{"x": "y" * 500}, "NSE_EQ:1"]}))
    assert record is not None
    assert record.keys == ("NSE_EQ:1",)
    (item,) = record.dropped
    assert item.startswith("{'x': 'yyy") and len(item) == 80


def test_dropped_is_a_diagnostic_not_part_of_the_record() -> None:
    clean = parse_stream_record("s", json.dumps({"keys": ["NSE_EQ:1"], "mode": "quote"}))
    dirty = parse_stream_record("s", json.dumps({"keys": ["NSE_EQ:1", 2], "mode": "quote"}))
    assert clean is not None and dirty is not None
    assert dirty.dropped == ("2",)
    assert clean == dirty
    assert clean.to_json() == dirty.to_json()


def test_to_json_round_trip() -> None:
    record = StreamRecord("swing", ("NSE_EQ:1333", "IDX_I:13"), "ticker", "ops",
                          "2024-01-01T09:15:00+05:30", dropped=("5",))  # fmt: skip
    raw = record.to_json()
    assert json.loads(raw) == {"name": "swing", "keys": ["NSE_EQ:1333", "IDX_I:13"],
                               "mode": "ticker", "by": "ops",
                               "at": "2024-01-01T09:15:00+05:30"}  # fmt: skip
    again = parse_stream_record("swing", raw)
    assert again == record
    assert again is not None and again.dropped == ()
    assert parse_stream_record("swing", raw.decode()) == record
    # The API's record is the shared one: it writes and reads the same JSON.
    stream = Stream.create("swing", ["NSE_EQ:1"], "quote", by="ops")
    shared = parse_stream_record("swing", stream.to_json())
    assert shared is not None
    assert fields(shared) == fields(stream)
    assert Stream.from_json("swing", stream.to_json()) == stream


# --- the API and the streamer read one record alike ---------------------------------------------

TABLE = [pytest.param(raw, keys, dropped, id=f"accepted-{i}")
         for i, (raw, keys, dropped) in enumerate(ACCEPTED)]
TABLE += [pytest.param(raw, None, (), id=f"junk-{i}") for i, raw in enumerate(JUNK)]


def _valid(keys: tuple[str, ...]) -> tuple[tuple[InstrumentKey, ...], int]:
    parsed: dict[InstrumentKey, None] = {}
    invalid = 0
    for text in keys:
        try:
            parsed.setdefault(parse_key(text), None)
        except InvalidKeyError:
            invalid += 1
    return tuple(parsed), invalid


@pytest.mark.parametrize(("raw", "keys", "dropped"), TABLE)
async def test_the_api_and_the_streamer_read_a_record_alike(
    raw: bytes | str,
    keys: tuple[str, ...] | None,
    dropped: tuple[str, ...],
    redis_client: redis.Redis,
    aredis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    redis_client.set(stream_key("swing"), raw)

    api = read_streams(redis=redis_client)
    assert set(api) == {"swing"}
    stream = api["swing"]
    source = KeySource(redis=aredis, on_change=lambda _: None)
    with caplog.at_level(logging.WARNING, logger="streamer.keysource"):
        desired = await source.read()

    if keys is None:
        assert stream is None
        assert desired.streams == 0 and desired.keys == ()
        assert "'websocket_stream:swing' is not a JSON object" in caplog.text
        return
    assert stream is not None
    assert (stream.name, stream.keys, stream.dropped) == ("swing", keys, dropped)
    assert desired.streams == 1
    valid, invalid = _valid(stream.keys)
    assert desired.keys == valid
    assert source.invalid == invalid + len(stream.dropped)
    for item in dropped:
        assert f"{item} is not a string" in caplog.text
