"""`streamer.decoder` agrees with the official SDK's parser, and survives any bytes.

The oracle is `dhanhq.marketfeed.MarketFeed.process_data` on an instance built without its
constructor (which would create an event loop); its parse methods only read the bytes. Packets
are generated as raw bytes (a correct header plus arbitrary payload bits), so every float bit
pattern, NaN included, and every integer value is covered, not just what an encoder produces.
"""

from __future__ import annotations

import contextlib
import io
import struct
from datetime import UTC, datetime
from typing import Any

from dhanhq.marketfeed import MarketFeed
from hypothesis import given, settings
from hypothesis import strategies as st

from streamer.decoder import (
    DISCONNECT,
    FULL,
    MARKET_STATUS,
    OI,
    PACKET_SIZES,
    PREV_CLOSE,
    QUOTE,
    TICKER,
    Disconnect,
    Full,
    MarketStatus,
    OpenInterest,
    Packet,
    PrevClose,
    Quote,
    Ticker,
    decode_frame,
)

SETTINGS = settings(max_examples=200, deadline=None)
KNOWN = (TICKER, QUOTE, OI, PREV_CLOSE, MARKET_STATUS, FULL, DISCONNECT)
# What the SDK prints for the disconnect reasons it knows (its 808/809 texts are swapped
# relative to Dhan's annexure; we only check that the same reason reached it).
SDK_DISCONNECT_TEXT = {
    805: "No. of active websocket connections exceeded",
    806: "Subscribe to Data APIs to continue",
    807: "Access Token is expired",
    808: "Invalid Client ID",
    809: "Authentication Failed",
}


def sdk_parser(on_close: Any = None) -> Any:
    parser = MarketFeed.__new__(MarketFeed)
    parser.on_close = on_close
    return parser


def f2(value: float) -> str:
    return f"{value:.2f}"


def hhmmss(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%H:%M:%S")


def header(code: int, length: int, segment: int, security_id: int) -> bytes:
    return struct.pack("<BHBI", code, length, segment, security_id)


@st.composite
def known_packet(draw: st.DrawFn, codes: tuple[int, ...] = KNOWN) -> bytes:
    code = draw(st.sampled_from(codes))
    size = PACKET_SIZES[code]
    segment = draw(st.integers(0, 255))
    security_id = draw(st.integers(0, 2**32 - 1))
    payload = draw(st.binary(min_size=size - 8, max_size=size - 8))
    return header(code, size, segment, security_id) + payload


@st.composite
def unknown_packet(draw: st.DrawFn) -> bytes:
    code = draw(st.integers(0, 255).filter(lambda c: c not in KNOWN))
    payload = draw(st.binary(max_size=64))
    segment, security_id = draw(st.integers(0, 255)), draw(st.integers(0, 99))
    return header(code, 8 + len(payload), segment, security_id) + payload


def expected_sdk_view(packet: Packet) -> Any:
    """What the SDK's `process_data` returns for the bytes of this decoded packet."""
    base = {"exchange_segment": packet.segment, "security_id": packet.security_id}
    if isinstance(packet, Ticker):
        return {"type": "Ticker Data", **base, "LTP": f2(packet.ltp), "LTT": hhmmss(packet.ltt)}
    if isinstance(packet, Quote | Full):
        view = {
            "type": "Quote Data" if isinstance(packet, Quote) else "Full Data", **base,
            "LTP": f2(packet.ltp), "LTQ": packet.ltq, "LTT": hhmmss(packet.ltt),
            "avg_price": f2(packet.avg_price), "volume": packet.volume,
            "total_sell_quantity": packet.total_sell_quantity,
            "total_buy_quantity": packet.total_buy_quantity,
        }  # fmt: skip
        if isinstance(packet, Full):
            view |= {"OI": packet.oi, "oi_day_high": packet.oi_day_high,
                     "oi_day_low": packet.oi_day_low}  # fmt: skip
        view |= {"open": f2(packet.open), "close": f2(packet.close), "high": f2(packet.high),
                 "low": f2(packet.low)}  # fmt: skip
        if isinstance(packet, Full):
            view["depth"] = [
                {"bid_quantity": d.bid_quantity, "ask_quantity": d.ask_quantity,
                 "bid_orders": d.bid_orders, "ask_orders": d.ask_orders,
                 "bid_price": f2(d.bid_price), "ask_price": f2(d.ask_price)}  # fmt: skip
                for d in packet.depth
            ]
        return view
    if isinstance(packet, OpenInterest):
        return {"type": "OI Data", **base, "OI": packet.oi}
    if isinstance(packet, PrevClose):
        return {"type": "Previous Close", **base, "prev_close": f2(packet.prev_close),
                "prev_OI": packet.prev_oi}  # fmt: skip
    if isinstance(packet, MarketStatus):
        return "Markets Open"
    raise AssertionError(f"no SDK view for {packet!r}")


def assert_agrees_with_sdk(data: bytes, packet: Packet) -> None:
    code, length, segment, security_id = struct.unpack_from("<BHBI", data)
    assert (packet.segment, packet.security_id) == (segment, security_id)
    if isinstance(packet, Disconnect):
        closed: list[Any] = []
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            assert sdk_parser(closed.append).process_data(data) is None
        assert len(closed) == 1  # the SDK reports every disconnect packet through on_close
        assert packet.reason == struct.unpack_from("<H", data, 8)[0]
        text = SDK_DISCONNECT_TEXT.get(packet.reason)
        assert (text in out.getvalue()) if text else out.getvalue() == ""
        return
    assert sdk_parser().process_data(data) == expected_sdk_view(packet)


@SETTINGS
@given(known_packet())
def test_every_packet_type_agrees_with_the_sdk(data: bytes) -> None:
    decoded = decode_frame(data)
    assert decoded.error is None and decoded.skipped == 0
    [packet] = decoded.packets
    assert_agrees_with_sdk(data, packet)


@SETTINGS
@given(st.lists(st.one_of(known_packet(), unknown_packet()), min_size=1, max_size=30))
def test_many_packets_in_one_frame_decode_in_order(chunks: list[bytes]) -> None:
    decoded = decode_frame(b"".join(chunks))

    known = [c for c in chunks if c[0] in KNOWN]
    assert decoded.error is None
    assert decoded.skipped == len(chunks) - len(known)
    # repr: NaN payloads must compare equal to themselves.
    assert [repr(p) for p in decoded.packets] == [repr(decode_frame(c).packets[0]) for c in known]
    for chunk, packet in zip(known, decoded.packets, strict=True):
        assert_agrees_with_sdk(chunk, packet)


@SETTINGS
@given(st.lists(known_packet(), min_size=1, max_size=10), st.data())
def test_a_truncated_frame_keeps_the_whole_packets_before_the_cut(
    chunks: list[bytes], data: st.DataObject
) -> None:
    frame = b"".join(chunks)
    boundaries, offset = {0}, 0
    for chunk in chunks:
        offset += len(chunk)
        boundaries.add(offset)
    cut = data.draw(st.integers(1, len(frame) - 1).filter(lambda i: i not in boundaries))

    decoded = decode_frame(frame[:cut])

    assert decoded.error is not None
    whole = [c for c, end in zip(chunks, _ends(chunks), strict=True) if end <= cut]
    assert [repr(p) for p in decoded.packets] == [repr(decode_frame(c).packets[0]) for c in whole]


def _ends(chunks: list[bytes]) -> list[int]:
    ends, offset = [], 0
    for chunk in chunks:
        offset += len(chunk)
        ends.append(offset)
    return ends


@SETTINGS
@given(
    st.lists(known_packet(), max_size=5),
    st.one_of(
        st.binary(min_size=1, max_size=7),  # not even a header
        st.builds(lambda c, n: header(c, n, 1, 1), st.integers(0, 255), st.integers(0, 7)),
        st.builds(lambda c, n: header(c, n, 1, 1) + b"\x00" * 4, st.integers(0, 255),
                  st.integers(13, 65535)),  # fmt: skip
    ),
)
def test_a_bad_packet_keeps_what_came_before_and_reports_an_error(
    chunks: list[bytes], bad: bytes
) -> None:
    decoded = decode_frame(b"".join(chunks) + bad)

    assert decoded.error is not None
    assert [repr(p) for p in decoded.packets] == [repr(decode_frame(c).packets[0]) for c in chunks]


@SETTINGS
@given(st.binary(max_size=400))
def test_garbage_never_raises_and_errors_exactly_when_the_frame_cannot_be_walked(
    data: bytes,
) -> None:
    decoded = decode_frame(data)

    assert decoded.error is None if _walks(data) else decoded.error is not None
    assert all(isinstance(p, Packet) for p in decoded.packets)


def _walks(data: bytes) -> bool:
    """Reference rule: every packet has a header, a length within the frame, and at least the
    documented size for the codes the decoder knows."""
    offset = 0
    while offset < len(data):
        if len(data) - offset < 8:
            return False
        code, length = struct.unpack_from("<BH", data, offset)
        if length < 8 or offset + length > len(data):
            return False
        if code in KNOWN and length < PACKET_SIZES[code]:
            return False
        offset += length
    return True


@SETTINGS
@given(known_packet(), st.binary(min_size=1, max_size=20))
def test_a_longer_than_documented_packet_is_read_by_its_prefix(
    data: bytes, extension: bytes
) -> None:
    # Dhan may append fields; the header's length is authoritative for where the next starts.
    length = len(data) + len(extension)
    longer = data[:1] + struct.pack("<H", length) + data[3:] + extension
    decoded = decode_frame(longer + data)

    assert decoded.error is None
    assert len(decoded.packets) == 2
    assert repr(decoded.packets[0]) == repr(decoded.packets[1])
    assert_agrees_with_sdk(longer, decoded.packets[0])


def test_the_sdk_parses_only_the_first_packet_of_a_frame() -> None:
    # Why the decoder must loop: the SDK would silently drop the second packet here.
    first = header(TICKER, 16, 1, 1333) + struct.pack("<fI", 100.0, 1)
    second = header(TICKER, 16, 1, 11536) + struct.pack("<fI", 200.0, 2)
    assert sdk_parser().process_data(first + second)["security_id"] == 1333
    assert [p.security_id for p in decode_frame(first + second).packets] == [1333, 11536]
