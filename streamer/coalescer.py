"""Per-key conflation of feed ticks (pure; the hot path of the streamer).

`add_packets` takes a decoded frame's packets and keeps, per instrument, the newest price; a tick
whose exchange time (LTT) is older than the last accepted one for that key is dropped (equal LTT:
the later arrival wins, the feed's order is the truth within one second). `drain` hands the
pending prices to the sink as `core.messages.Update`s, each with a per-key version that strictly
increases: max(previous + 1, wall-clock microseconds), so versions keep increasing across
restarts and a consumer can drop a late, older value.

Keys are held as one int, `segment << 32 | security_id` (cheap to hash), and only turned into
strings once per key per drain.

`add_frame` takes a whole binary frame (the feed reader's hot path): it applies the frame's
price packets straight from the bytes (segment, id, LTP and LTT only), skipping the decoder's
full packet tuples; from the first packet it does not handle that way (another code, a short or
malformed one) the frame goes through `decoder.decode_frame` and `add_packets` instead, so the
result, errors included, is what decoding the whole frame would give.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from core.instruments import SEGMENT_NAMES
from core.messages import Update
from streamer.decoder import (
    FULL,
    PACKET_SIZES,
    QUOTE,
    TICKER,
    Full,
    Packet,
    Quote,
    Ticker,
    decode_frame,
)


def wall_clock_us() -> int:
    return time.time_ns() // 1_000


# (key, segment, security id, symbol or None) per int key; None marks an unknown segment.
_Names = tuple[str, str, str, str | None]

# The head of each price packet as far as its LTT (see the decoder's layouts): code, length,
# segment, security id, LTP, then the LTT (after the 2-byte LTQ in quote and full packets).
_HEAD = struct.Struct("<BHBIfI").unpack_from
_HEAD_WITH_LTQ = struct.Struct("<BHBIfxxI").unpack_from
_PRICE_HEADS: dict[int, Callable[[bytes, int], tuple[Any, ...]]] = {
    TICKER: _HEAD, QUOTE: _HEAD_WITH_LTQ, FULL: _HEAD_WITH_LTQ,
}  # fmt: skip
# Indexed by the code byte: the unpacker (None: not a price packet) and the smallest length
# the decoder accepts for that code (the struct above always fits inside it).
_HEAD_BY_CODE = tuple(_PRICE_HEADS.get(code) for code in range(256))
_MIN_LENGTH = tuple(PACKET_SIZES[code] if code in _PRICE_HEADS else 0 for code in range(256))


class Coalescer:
    __slots__ = (
        "_ltp", "_ltt", "_versions", "_names", "_symbols", "_clock_us",
        "ticks", "stale", "unknown",
    )

    def __init__(
        self,
        *,
        symbols: Mapping[str, str] | None = None,
        clock_us: Callable[[], int] = wall_clock_us,
    ) -> None:
        self._ltp: dict[int, float] = {}  # pending: newest price per key since the last drain
        self._ltt: dict[int, int] = {}  # last accepted LTT per key (pending or drained)
        self._versions: dict[int, int] = {}
        self._names: dict[int, _Names | None] = {}
        self._symbols: Mapping[str, str] = symbols or {}
        self._clock_us = clock_us
        self.ticks = 0  # price packets seen
        self.stale = 0  # price packets dropped for an older LTT
        self.unknown = 0  # keys dropped at drain for an unknown segment code

    @property
    def pending(self) -> int:
        return len(self._ltp)

    def set_symbols(self, symbols: Mapping[str, str]) -> None:
        self._symbols = symbols
        self._names.clear()

    def add(self, segment: int, security_id: int, ltp: float, ltt: int) -> bool:
        """One tick; False when it was older than the key's last accepted tick."""
        self.ticks += 1
        key = (segment << 32) | security_id
        if ltt < self._ltt.get(key, 0):
            self.stale += 1
            return False
        self._ltt[key] = ltt
        self._ltp[key] = ltp
        return True

    def add_packets(self, packets: Iterable[Packet]) -> list[Packet] | None:
        """Every price packet of a frame; returns the other packets (None when there are none).

        Written for speed: locals bound once, no per-packet method calls or allocations.
        """
        pending = self._ltp
        accepted = self._ltt
        last = accepted.get
        others: list[Packet] | None = None
        count = 0
        stale = 0
        frame: Iterable[Any] = packets  # indexed positionally below: Ticker/Quote/Full share 0-2
        for packet in frame:
            kind = type(packet)
            if kind is Quote or kind is Ticker or kind is Full:
                key = (packet[0] << 32) | packet[1]
                ltt: int = packet.ltt
                count += 1
                if ltt < last(key, 0):
                    stale += 1
                    continue
                accepted[key] = ltt
                pending[key] = packet[2]
            elif others is None:
                others = [packet]
            else:
                others.append(packet)
        self.ticks += count
        if stale:
            self.stale += stale
        return others

    def add_frame(self, data: bytes) -> tuple[int, str | None, list[Packet] | None]:
        """Every packet of one binary frame: (packets decoded, the decoder's error, the
        packets that are not prices or None), as `decode_frame` + `add_packets` would give.
        """
        pending = self._ltp
        accepted = self._ltt
        last = accepted.get
        heads = _HEAD_BY_CODE
        min_length = _MIN_LENGTH
        end = len(data)
        offset = count = stale = 0
        while offset < end:
            code = data[offset]
            head = heads[code]
            if head is None or end - offset < min_length[code]:
                break  # not a price packet, or too short to be a whole one
            _code, length, segment, security_id, ltp, ltt = head(data, offset)
            if length < min_length[code] or offset + length > end:
                break  # a length the decoder rejects
            offset += length
            count += 1
            key = (segment << 32) | security_id
            if ltt < last(key, 0):
                stale += 1
                continue
            accepted[key] = ltt
            pending[key] = ltp
        self.ticks += count
        if stale:
            self.stale += stale
        if offset == end:
            return count, None, None
        # The decoder's first `count` packets are the price packets applied above.
        decoded = decode_frame(data)
        rest = decoded.packets[count:] if count else decoded.packets
        return len(decoded.packets), decoded.error, self.add_packets(rest)

    def _describe(self, key: int) -> _Names | None:
        segment = SEGMENT_NAMES.get(key >> 32)
        if segment is None:
            return None
        security_id = str(key & 0xFFFFFFFF)
        text = f"{segment}:{security_id}"
        return (text, segment, security_id, self._symbols.get(text))

    def drain(self) -> list[Update]:
        """The pending newest prices (2 decimals), each with its next version; clears them."""
        pending = self._ltp
        if not pending:
            return []
        self._ltp = {}
        now = self._clock_us()
        versions = self._versions
        names = self._names
        accepted = self._ltt
        updates: list[Update] = []
        append = updates.append
        for key, ltp in pending.items():
            if key in names:
                described = names[key]
            else:
                described = names[key] = self._describe(key)
            if described is None:
                self.unknown += 1
                continue
            previous = versions.get(key, 0)
            version = previous + 1 if previous >= now else now
            versions[key] = version
            text, segment, security_id, symbol = described
            update: Update = {
                "key": text,
                "segment": segment,
                "security_id": security_id,
                "ltp": round(ltp, 2),
                "ltt": accepted[key],
                "version": version,
            }
            if symbol is not None:
                update["symbol"] = symbol
            append(update)
        return updates
