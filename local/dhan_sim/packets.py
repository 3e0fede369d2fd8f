"""Encoders for every DhanHQ Live Market Feed v2 binary packet (little-endian).

The inverse of `streamer.decoder`: each function returns exactly the bytes the real feed
sends for one packet, header included (`<BHBI`: response code, packet length, exchange segment
code, security id). `encode` accepts the decoder's packet NamedTuples, so a round trip
`decode_frame(encode(p)).packets == [p]` holds for float32-representable values. A frame is
just packets concatenated (`frame`).

Layouts (offsets from the packet start), per DhanHQ's live-market-feed page:
  2 Ticker 16 B      8 f32 LTP, 12 u32 LTT
  4 Quote 50 B       8 f32 LTP, 12 u16 LTQ, 14 u32 LTT, 18 f32 avg, 22 u32 volume,
                     26 u32 total sell qty, 30 u32 total buy qty, 34..49 f32 open close high low
  5 OI 12 B          8 u32 open interest
  6 Prev close 16 B  8 f32 previous close, 12 u32 previous OI
  7 Market status 8 B  header only (payload undocumented)
  8 Full 162 B       8..33 as Quote, 34 u32 OI, 38 u32 OI day high, 42 u32 OI day low,
                     46..61 f32 open close high low, 62..161 five depth levels of
                     (u32 bid qty, u32 ask qty, u16 bid orders, u16 ask orders, f32 bid, f32 ask)
  50 Disconnect 10 B 8 u16 reason code
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

from streamer.decoder import (
    DISCONNECT,
    FULL,
    MARKET_STATUS,
    OI,
    PREV_CLOSE,
    QUOTE,
    TICKER,
    DepthLevel,
    Disconnect,
    Full,
    MarketStatus,
    OpenInterest,
    Packet,
    PrevClose,
    Quote,
    Ticker,
)

HEADER = struct.Struct("<BHBI")
TICKER_STRUCT = struct.Struct("<BHBIfI")
QUOTE_STRUCT = struct.Struct("<BHBIfHIfIIIffff")
OI_STRUCT = struct.Struct("<BHBII")
PREV_CLOSE_STRUCT = struct.Struct("<BHBIfI")
FULL_STRUCT = struct.Struct("<BHBIfHIfIIIIIIffff" + "IIHHff" * 5)
DISCONNECT_STRUCT = struct.Struct("<BHBIH")

TICKER_SIZE = TICKER_STRUCT.size  # 16
QUOTE_SIZE = QUOTE_STRUCT.size  # 50
OI_SIZE = OI_STRUCT.size  # 12
PREV_CLOSE_SIZE = PREV_CLOSE_STRUCT.size  # 16
MARKET_STATUS_SIZE = HEADER.size  # 8
FULL_SIZE = FULL_STRUCT.size  # 162
DISCONNECT_SIZE = DISCONNECT_STRUCT.size  # 10
DEPTH_LEVELS = 5

# Byte offset of the LTT field inside each price packet, for patching pre-built frames.
LTT_OFFSET: dict[int, int] = {TICKER: 12, QUOTE: 14, FULL: 14}

EMPTY_DEPTH: tuple[DepthLevel, ...] = (DepthLevel(0, 0, 0, 0, 0.0, 0.0),) * DEPTH_LEVELS


def ticker(segment: int, security_id: int, ltp: float, ltt: int) -> bytes:
    return TICKER_STRUCT.pack(TICKER, TICKER_SIZE, segment, security_id, ltp, ltt)


def quote(
    segment: int,
    security_id: int,
    ltp: float,
    ltq: int,
    ltt: int,
    avg_price: float,
    volume: int,
    total_sell_quantity: int,
    total_buy_quantity: int,
    open: float,
    close: float,
    high: float,
    low: float,
) -> bytes:
    return QUOTE_STRUCT.pack(
        QUOTE, QUOTE_SIZE, segment, security_id, ltp, ltq, ltt, avg_price, volume,
        total_sell_quantity, total_buy_quantity, open, close, high, low,
    )  # fmt: skip


def open_interest(segment: int, security_id: int, oi: int) -> bytes:
    return OI_STRUCT.pack(OI, OI_SIZE, segment, security_id, oi)


def prev_close(segment: int, security_id: int, prev_close: float, prev_oi: int) -> bytes:
    return PREV_CLOSE_STRUCT.pack(
        PREV_CLOSE, PREV_CLOSE_SIZE, segment, security_id, prev_close, prev_oi
    )


def market_status(segment: int = 0, security_id: int = 0) -> bytes:
    return HEADER.pack(MARKET_STATUS, MARKET_STATUS_SIZE, segment, security_id)


def full(
    segment: int,
    security_id: int,
    ltp: float,
    ltq: int,
    ltt: int,
    avg_price: float,
    volume: int,
    total_sell_quantity: int,
    total_buy_quantity: int,
    oi: int,
    oi_day_high: int,
    oi_day_low: int,
    open: float,
    close: float,
    high: float,
    low: float,
    depth: Sequence[DepthLevel] = EMPTY_DEPTH,
) -> bytes:
    if len(depth) != DEPTH_LEVELS:
        raise ValueError(f"a full packet carries exactly {DEPTH_LEVELS} depth levels")
    levels: list[float | int] = []
    for level in depth:
        levels.extend(level)
    return FULL_STRUCT.pack(
        FULL, FULL_SIZE, segment, security_id, ltp, ltq, ltt, avg_price, volume,
        total_sell_quantity, total_buy_quantity, oi, oi_day_high, oi_day_low,
        open, close, high, low, *levels,
    )  # fmt: skip


def disconnect(reason: int, segment: int = 0, security_id: int = 0) -> bytes:
    return DISCONNECT_STRUCT.pack(DISCONNECT, DISCONNECT_SIZE, segment, security_id, reason)


def raw(code: int, segment: int, security_id: int, payload: bytes = b"") -> bytes:
    """A packet of any code (e.g. one the decoder does not know) with a correct length."""
    return HEADER.pack(code, HEADER.size + len(payload), segment, security_id) + payload


def encode(packet: Packet) -> bytes:
    """Encode one of `streamer.decoder`'s packet tuples back to its wire bytes."""
    if isinstance(packet, Ticker):
        return ticker(*packet)
    if isinstance(packet, Quote):
        return quote(*packet)
    if isinstance(packet, Full):
        return full(*packet)
    if isinstance(packet, OpenInterest):
        return open_interest(*packet)
    if isinstance(packet, PrevClose):
        return prev_close(*packet)
    if isinstance(packet, MarketStatus):
        return market_status(*packet)
    if isinstance(packet, Disconnect):
        return disconnect(packet.reason, packet.segment, packet.security_id)
    raise TypeError(f"not a feed packet: {packet!r}")


def frame(packets: Iterable[bytes | Packet]) -> bytes:
    """Concatenate packets (bytes or decoder tuples) into one binary frame."""
    return b"".join(p if isinstance(p, bytes) else encode(p) for p in packets)
