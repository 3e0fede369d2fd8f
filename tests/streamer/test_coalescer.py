from __future__ import annotations

import itertools
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from local.dhan_sim import packets
from streamer.coalescer import Coalescer
from streamer.decoder import (
    FULL,
    PACKET_SIZES,
    QUOTE,
    TICKER,
    DepthLevel,
    Disconnect,
    Full,
    OpenInterest,
    Packet,
    PrevClose,
    Quote,
    Ticker,
    decode_frame,
)


def quote(segment: int, sid: int, ltp: float, ltt: int) -> Quote:
    return Quote(segment, sid, ltp, 1, ltt, ltp, 10, 0, 0, ltp, ltp, ltp, ltp)


def full(segment: int, sid: int, ltp: float, ltt: int) -> Full:
    depth = (DepthLevel(0, 0, 0, 0, 0.0, 0.0),) * 5
    return Full(segment, sid, ltp, 1, ltt, ltp, 10, 0, 0, 0, 0, 0, ltp, ltp, ltp, ltp, depth)


def counting_clock(start: int = 1_000) -> itertools.count[int]:
    return itertools.count(start)


def test_newest_tick_per_key_wins_and_is_rounded() -> None:
    c = Coalescer(clock_us=lambda: 5)
    c.add(1, 1333, 1600.123456, 100)
    c.add(1, 1333, 1601.256, 101)
    c.add(1, 2885, 2500.5, 100)
    updates = c.drain()
    assert [(u["key"], u["ltp"], u["ltt"]) for u in updates] == [
        ("NSE_EQ:1333", 1601.26, 101),
        ("NSE_EQ:2885", 2500.5, 100),
    ]
    assert updates[0]["segment"] == "NSE_EQ" and updates[0]["security_id"] == "1333"
    assert "symbol" not in updates[0]
    assert c.drain() == []
    assert c.ticks == 3


def test_an_older_tick_never_overwrites_a_newer_one() -> None:
    c = Coalescer()
    assert c.add(1, 1, 10.0, 200)
    assert not c.add(1, 1, 9.0, 199)
    assert c.drain()[0]["ltp"] == 10.0
    # ...also after the newer one was drained (flushed).
    assert not c.add(1, 1, 8.0, 150)
    assert c.drain() == []
    assert c.stale == 2
    # Equal exchange time: the later arrival is the newer trade.
    assert c.add(1, 1, 11.0, 200)
    assert c.drain()[0]["ltp"] == 11.0


def test_versions_strictly_increase_per_key_even_with_a_stuck_clock() -> None:
    c = Coalescer(clock_us=lambda: 1_000)
    seen = []
    for ltt in range(5):
        c.add(2, 7, 1.0, ltt)
        c.add(2, 8, 1.0, ltt)
        seen.append({u["key"]: u["version"] for u in c.drain()})
    for key in ("NSE_FNO:7", "NSE_FNO:8"):
        versions = [s[key] for s in seen]
        assert versions == sorted(set(versions))
        assert versions[0] == 1_000


def test_versions_follow_the_wall_clock_across_restarts() -> None:
    first = Coalescer(clock_us=lambda: 1_000)
    first.add(1, 1, 1.0, 1)
    old = first.drain()[0]["version"]
    restarted = Coalescer(clock_us=lambda: 2_000)
    restarted.add(1, 1, 1.0, 1)
    assert restarted.drain()[0]["version"] > old


def test_frames_mix_price_and_other_packets() -> None:
    c = Coalescer(symbols={"NSE_EQ:1333": "HDFCBANK"})
    packets = [
        Ticker(1, 1333, 1600.0, 10),
        PrevClose(1, 1333, 1590.0, 0),
        quote(1, 1333, 1601.0, 11),
        OpenInterest(2, 5, 100),
        full(2, 5, 99.5, 12),
        Disconnect(0, 0, 805),
    ]
    others = c.add_packets(packets)
    assert others == [packets[1], packets[3], packets[5]]
    assert c.add_packets([Ticker(1, 1333, 1.0, 1)]) is None  # older: dropped
    updates = {u["key"]: u for u in c.drain()}
    assert updates["NSE_EQ:1333"]["ltp"] == 1601.0
    assert updates["NSE_EQ:1333"]["symbol"] == "HDFCBANK"
    assert updates["NSE_FNO:5"]["ltp"] == 99.5
    assert c.ticks == 4 and c.stale == 1


def test_unknown_segments_are_dropped() -> None:
    c = Coalescer()
    c.add_packets([Ticker(6, 1, 1.0, 1), Ticker(1, 1, 2.0, 1)])
    assert [u["key"] for u in c.drain()] == ["NSE_EQ:1"]
    assert c.unknown == 1


def test_symbols_can_be_replaced() -> None:
    c = Coalescer()
    c.add(0, 13, 22000.0, 1)
    assert "symbol" not in c.drain()[0]
    c.set_symbols({"IDX_I:13": "NIFTY 50"})
    c.add(0, 13, 22001.0, 2)
    assert c.drain()[0]["symbol"] == "NIFTY 50"


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 50), st.floats(0.01, 1e5)),
                max_size=60))
def test_drain_equals_a_simple_model(ticks: list[tuple[int, int, float]]) -> None:
    c = Coalescer(clock_us=counting_clock().__next__)
    model: dict[str, tuple[float, int]] = {}
    for sid, ltt, ltp in ticks:
        c.add(1, sid, ltp, ltt)
        key = f"NSE_EQ:{sid}"
        if key not in model or ltt >= model[key][1]:
            model[key] = (ltp, ltt)
    got = {u["key"]: (u["ltp"], u["ltt"]) for u in c.drain()}
    assert got == {k: (round(v[0], 2), v[1]) for k, v in model.items()}


# -- add_frame: the reader's fast path gives what decode_frame + add_packets give ------------

def _price_packet(code: int, segment: int, sid: int, ltp: float, ltt: int, extra: int) -> bytes:
    size = PACKET_SIZES[code] + extra  # a longer packet is read by its documented prefix
    head = struct.pack("<BHBIf", code, size, segment, sid, ltp)
    if code == TICKER:
        return head + struct.pack("<I", ltt) + b"\x00" * (size - 16)
    return head + struct.pack("<HI", 7, ltt) + b"\x00" * (size - 18)


_price_packets = st.builds(
    _price_packet, st.sampled_from((TICKER, QUOTE, FULL)), st.sampled_from((1, 2, 9)),
    st.integers(0, 3), st.floats(0.25, 1e5, width=32), st.integers(0, 5),
    st.sampled_from((0, 0, 0, 3)),
)
_frame_parts = st.one_of(
    _price_packets,
    # a price packet whose length field is too short for its code (the body still follows)
    st.builds(lambda p, n: p[:1] + struct.pack("<H", n) + p[3:], _price_packets,
              st.integers(8, 15)),
    st.builds(lambda sid: packets.prev_close(1, sid, 10.0, 0), st.integers(0, 3)),
    st.builds(lambda sid: packets.open_interest(2, sid, 5), st.integers(0, 3)),
    st.just(packets.market_status()),
    st.just(packets.disconnect(805)),
    st.just(packets.raw(99, 1, 1, b"abc")),  # an unknown code: skipped by its length
    st.binary(max_size=20),  # garbage: short or bad lengths
)


def _slow_path(c: Coalescer, frame: bytes) -> tuple[int, str | None, list[Packet] | None]:
    decoded = decode_frame(frame)
    return len(decoded.packets), decoded.error, c.add_packets(decoded.packets)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(_frame_parts, min_size=1, max_size=6), min_size=1, max_size=8))
def test_add_frame_equals_decoding_the_whole_frame(frames: list[list[bytes]]) -> None:
    fast = Coalescer(clock_us=counting_clock().__next__)
    slow = Coalescer(clock_us=counting_clock().__next__)
    for parts in frames:
        frame = b"".join(parts)
        assert fast.add_frame(frame) == _slow_path(slow, frame)
    assert (fast.ticks, fast.stale) == (slow.ticks, slow.stale)
    assert fast.drain() == slow.drain()
