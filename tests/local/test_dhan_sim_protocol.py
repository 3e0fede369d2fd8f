"""Pure parts of the simulator: request parsing, handshake checks, subscriptions, prices, ticks."""

from __future__ import annotations

import json
import random

import pytest

from local.dhan_sim import client
from local.dhan_sim.prices import PriceBook, on_tick_grid
from local.dhan_sim.protocol import (
    AUTH_FAILED,
    CLIENT_ID_INVALID,
    INSTRUMENT_LIMIT,
    INVALID_REQUEST,
    TOKEN_EXPIRED,
    TOKEN_INVALID,
    CloseRequest,
    Reject,
    Subscribe,
    Subscriptions,
    Unsubscribe,
    check_handshake,
    interpret,
    parse_request,
)
from local.dhan_sim.ticks import IST_OFFSET_SECONDS, TickFactory, build_cycle, restamp
from streamer.decoder import Full, OpenInterest, Quote, Ticker, decode_frame

GOOD = {"version": "2", "token": "t", "clientId": "c", "authType": "2"}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, None),
        ({"clientId": "other"}, CLIENT_ID_INVALID),
        ({"clientId": None}, CLIENT_ID_INVALID),
        ({"token": None}, AUTH_FAILED),
        ({"token": ""}, AUTH_FAILED),
        ({"token": "wrong"}, TOKEN_INVALID),
        ({"token": "old"}, TOKEN_EXPIRED),
        ({"version": None}, INVALID_REQUEST),
        ({"version": "1"}, INVALID_REQUEST),
        ({"authType": None}, INVALID_REQUEST),
    ],
)
def test_handshake_reasons(changes: dict[str, str | None], reason: int | None) -> None:
    query = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    assert check_handshake(query, client_id="c", token="t", expired_tokens={"old"}) == reason


def test_subscribe_and_unsubscribe_codes_map_to_modes() -> None:
    for code, mode in ((15, "ticker"), (17, "quote"), (21, "full")):
        _, sub = parse_request(client.request(code, [("NSE_EQ", "1")]))
        _, unsub = parse_request(client.request(code + 1, [("NSE_EQ", "1")]))
        assert sub == Subscribe(mode, (("NSE_EQ", "1"),), 0)  # type: ignore[arg-type]
        assert unsub == Unsubscribe(mode, (("NSE_EQ", "1"),), 0)  # type: ignore[arg-type]
    assert parse_request('{"RequestCode": 12}') == ({"RequestCode": 12}, CloseRequest())


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        '{"RequestCode": 99, "InstrumentCount": 0, "InstrumentList": []}',
        '{"RequestCode": "15", "InstrumentCount": 0, "InstrumentList": []}',
        '{"RequestCode": 15, "InstrumentCount": 2, "InstrumentList": []}',
        '{"RequestCode": 15, "InstrumentList": []}',
        '{"RequestCode": 15, "InstrumentCount": 0, "InstrumentList": {}}',
        '{"RequestCode": 11}',
    ],
)
def test_protocol_violations_are_814(text: str) -> None:
    _, request = parse_request(text)
    assert isinstance(request, Reject) and request.reason == INVALID_REQUEST


def test_more_than_100_instruments_is_814_and_100_is_fine() -> None:
    keys = [("NSE_EQ", str(i)) for i in range(101)]
    assert isinstance(parse_request(client.request(15, keys))[1], Reject)
    assert isinstance(parse_request(client.request(15, keys[:100]))[1], Subscribe)


def test_bad_instruments_are_skipped_and_ids_are_canonical() -> None:
    request = interpret({"RequestCode": 17, "InstrumentCount": 7, "InstrumentList": [
        {"ExchangeSegment": "NSE_EQ", "SecurityId": "01333"},
        {"ExchangeSegment": "NSE_XX", "SecurityId": "1"},
        {"ExchangeSegment": "NSE_EQ", "SecurityId": "12a"},
        {"ExchangeSegment": "NSE_EQ", "SecurityId": str(2**32)},
        {"ExchangeSegment": "NSE_FNO", "SecurityId": 49081},
        {"ExchangeSegment": "NSE_EQ", "SecurityId": "1333"},
        "garbage",
    ]})  # fmt: skip
    assert request == Subscribe("quote", (("NSE_EQ", "1333"), ("NSE_FNO", "49081")), 4)


def test_subscriptions_switch_modes_and_enforce_the_limit() -> None:
    subs = Subscriptions(limit=3)
    assert subs.subscribe(Subscribe("ticker", (("NSE_EQ", "1"), ("NSE_EQ", "2")), 0)) is None
    assert subs.subscribe(Subscribe("full", (("NSE_EQ", "2"), ("NSE_EQ", "3")), 0)) is None
    assert subs.modes == {("NSE_EQ", "1"): "ticker", ("NSE_EQ", "2"): "full",
                          ("NSE_EQ", "3"): "full"}  # fmt: skip
    rejected = subs.subscribe(Subscribe("quote", (("NSE_EQ", "1"), ("NSE_EQ", "4")), 0))
    assert rejected is not None and rejected.reason == INSTRUMENT_LIMIT
    assert len(subs) == 3  # nothing of the rejected message applied
    subs.unsubscribe(Unsubscribe("ticker", (("NSE_EQ", "2"), ("NSE_EQ", "9")), 0))
    assert set(subs.modes) == {("NSE_EQ", "1"), ("NSE_EQ", "3")}


def test_the_default_limit_is_5000_per_connection() -> None:
    subs = Subscriptions()
    for start in range(0, 5000, 100):
        keys = tuple(("NSE_EQ", str(i)) for i in range(start, start + 100))
        assert subs.subscribe(Subscribe("ticker", keys, 0)) is None
    rejected = subs.subscribe(Subscribe("ticker", (("NSE_EQ", "5000"),), 0))
    assert rejected is not None and rejected.reason == INSTRUMENT_LIMIT


def test_price_book_is_seeded_and_walks_on_the_tick_grid() -> None:
    key = ("NSE_EQ", "1333")
    assert PriceBook(seed=3).price(key) == PriceBook(seed=3).price(key)
    assert PriceBook(seed=3).price(key) != PriceBook(seed=4).price(key)
    book, rng = PriceBook(seed=3), random.Random(3)
    previous = book.price(key)
    for _ in range(200):
        state = book.step(key, rng)
        assert state.price != previous and state.price == on_tick_grid(state.price)
        assert state.low <= state.price <= state.high
        previous = state.price


def test_tick_factory_encodes_each_mode_with_ist_ltt() -> None:
    factory = TickFactory(PriceBook(seed=1), rng=random.Random(1), clock=lambda: 1_700_000_000.7,
                          oi_probability=1.0)  # fmt: skip
    expected_ltt = 1_700_000_000 + IST_OFFSET_SECONDS
    ticker = factory.tick(("NSE_EQ", "1"), "ticker")
    quote = factory.tick(("NSE_FNO", "2"), "quote")
    full = factory.tick(("MCX_COMM", "3"), "full")
    [t] = decode_frame(ticker.data).packets
    [q] = decode_frame(quote.data).packets
    [f] = decode_frame(full.data).packets
    assert isinstance(t, Ticker) and (t.segment, t.security_id, t.ltt) == (1, 1, expected_ltt)
    assert t.ltp == ticker.ltp
    assert isinstance(q, Quote) and q.segment == 2 and q.ltp == quote.ltp
    assert quote.extra is not None
    assert isinstance(decode_frame(quote.extra).packets[0], OpenInterest)
    assert isinstance(f, Full) and f.segment == 5 and len(f.depth) == 5 and f.oi > 0
    assert f.depth[0].bid_price < f.ltp < f.depth[0].ask_price


def test_ltt_never_goes_backwards() -> None:
    now = [1_700_000_010.0]
    factory = TickFactory(PriceBook(), rng=random.Random(0), clock=lambda: now[0])
    first = factory.ltt()
    now[0] -= 5  # the wall clock steps back (NTP)
    assert factory.ltt() == first


def test_cycle_frames_group_packets_and_restamp_ltt() -> None:
    factory = TickFactory(PriceBook(), rng=random.Random(0), clock=lambda: 1_700_000_000.0)
    ticks = [factory.tick(("NSE_EQ", str(i % 3)), "quote") for i in range(10)]
    cycle = build_cycle(ticks, 4, version=7)
    assert [len(decode_frame(f).packets) for f in cycle.frames] == [4, 4, 2]
    assert cycle.counts == [4, 4, 2]
    restamped = restamp(cycle, 1_800_000_000)
    for frame in restamped.frames:
        assert {p.ltt for p in decode_frame(frame).packets} == {1_800_000_000}  # type: ignore[union-attr]
    assert restamped.updates[-1][ticks[-1].key] == (ticks[-1].ltp, 1_800_000_000)


def test_client_request_builder_matches_the_documented_shape() -> None:
    text = client.subscribe("quote", [("NSE_EQ", 1333)])
    assert json.loads(text) == {"RequestCode": 17, "InstrumentCount": 1,
                                "InstrumentList": [{"ExchangeSegment": "NSE_EQ",
                                                    "SecurityId": "1333"}]}  # fmt: skip
    assert json.loads(client.unsubscribe("full", []))["RequestCode"] == 22
    assert client.feed_url("ws://h:1", token=None) == "ws://h:1?version=2&clientId=1000000001&authType=2"
