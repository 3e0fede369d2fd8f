"""Pure decoder for DhanHQ Live Market Feed v2 binary frames.

Bytes in, packets out; no I/O. Every packet starts with the 8-byte header `<BHBI`
(response code, packet length including the header, exchange segment, security id).
A frame may carry several packets: we walk it by the header's length, skip codes we do not
know by that length, and stop at the first packet that cannot be trusted (a length that runs
past the frame or is shorter than the header) because nothing after it can be re-synchronised.
`decode_frame` never raises for any input; problems are reported in `DecodedFrame.error`.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

TICKER = 2
QUOTE = 4
OI = 5
PREV_CLOSE = 6
MARKET_STATUS = 7
FULL = 8
DISCONNECT = 50

_HEADER = struct.Struct("<BHBI")
HEADER_SIZE = _HEADER.size
_TICKER = struct.Struct("<BHBIfI")
_QUOTE = struct.Struct("<BHBIfHIfIIIffff")
_OI = struct.Struct("<BHBII")
_PREV_CLOSE = struct.Struct("<BHBIfI")
_FULL = struct.Struct("<BHBIfHIfIIIIIIffff" + "IIHHff" * 5)
_DISCONNECT = struct.Struct("<BHBIH")

PACKET_SIZES: dict[int, int] = {
    TICKER: _TICKER.size,
    QUOTE: _QUOTE.size,
    OI: _OI.size,
    PREV_CLOSE: _PREV_CLOSE.size,
    MARKET_STATUS: HEADER_SIZE,
    FULL: _FULL.size,
    DISCONNECT: _DISCONNECT.size,
}


class Ticker(NamedTuple):
    segment: int
    security_id: int
    ltp: float
    ltt: int


class Quote(NamedTuple):
    segment: int
    security_id: int
    ltp: float
    ltq: int
    ltt: int
    avg_price: float
    volume: int
    total_sell_quantity: int
    total_buy_quantity: int
    open: float
    close: float
    high: float
    low: float


class OpenInterest(NamedTuple):
    segment: int
    security_id: int
    oi: int


class PrevClose(NamedTuple):
    segment: int
    security_id: int
    prev_close: float
    prev_oi: int


class MarketStatus(NamedTuple):
    segment: int
    security_id: int


class DepthLevel(NamedTuple):
    bid_quantity: int
    ask_quantity: int
    bid_orders: int
    ask_orders: int
    bid_price: float
    ask_price: float


class Full(NamedTuple):
    segment: int
    security_id: int
    ltp: float
    ltq: int
    ltt: int
    avg_price: float
    volume: int
    total_sell_quantity: int
    total_buy_quantity: int
    oi: int
    oi_day_high: int
    oi_day_low: int
    open: float
    close: float
    high: float
    low: float
    depth: tuple[DepthLevel, ...]


class Disconnect(NamedTuple):
    segment: int
    security_id: int
    reason: int


Packet = Ticker | Quote | OpenInterest | PrevClose | MarketStatus | Full | Disconnect
# Packets that carry a last traded price (and its time) for the cache.
PRICE_PACKETS: tuple[type, ...] = (Ticker, Quote, Full)


class DecodedFrame(NamedTuple):
    packets: list[Packet]
    skipped: int  # packets of codes we do not decode (skipped by length)
    error: str | None  # the first problem: a rejected packet, or why the rest was dropped


def _full(values: tuple[object, ...]) -> Full:
    depth = tuple(DepthLevel._make(values[i : i + 6]) for i in range(18, 48, 6))
    return Full._make((*values[2:18], depth))


def decode_frame(data: bytes | bytearray | memoryview) -> DecodedFrame:
    """Decode every packet of one binary frame."""
    packets: list[Packet] = []
    append = packets.append
    skipped = 0
    error: str | None = None
    end = len(data)
    offset = 0
    header_unpack = _HEADER.unpack_from
    while offset < end:
        if end - offset < HEADER_SIZE:
            error = f"truncated header: {end - offset} bytes at offset {offset}"
            break
        code, length, _segment, _sid = header_unpack(data, offset)
        if length < HEADER_SIZE or offset + length > end:
            error = f"bad length {length} for code {code} at offset {offset} of {end}"
            break
        if code == TICKER:
            if length < 16:
                error = error or f"short ticker packet ({length} bytes)"
            else:
                _c, _l, seg, sid, ltp, ltt = _TICKER.unpack_from(data, offset)
                append(Ticker(seg, sid, ltp, ltt))
        elif code == QUOTE:
            if length < 50:
                error = error or f"short quote packet ({length} bytes)"
            else:
                append(Quote._make(_QUOTE.unpack_from(data, offset)[2:]))
        elif code == FULL:
            if length < 162:
                error = error or f"short full packet ({length} bytes)"
            else:
                append(_full(_FULL.unpack_from(data, offset)))
        elif code == OI:
            if length < 12:
                error = error or f"short OI packet ({length} bytes)"
            else:
                append(OpenInterest._make(_OI.unpack_from(data, offset)[2:]))
        elif code == PREV_CLOSE:
            if length < 16:
                error = error or f"short prev-close packet ({length} bytes)"
            else:
                append(PrevClose._make(_PREV_CLOSE.unpack_from(data, offset)[2:]))
        elif code == MARKET_STATUS:
            append(MarketStatus(_segment, _sid))
        elif code == DISCONNECT:
            if length < 10:
                error = error or f"short disconnect packet ({length} bytes)"
            else:
                append(Disconnect._make(_DISCONNECT.unpack_from(data, offset)[2:]))
        else:
            skipped += 1
        offset += length
    return DecodedFrame(packets, skipped, error)
