"""Turning the price book into wire packets: one tick = one price packet in a mode.

No sockets here. `TickFactory.tick` moves an instrument's random walk and returns the packet
bytes plus what a client will decode from them (the float32 LTP and the LTT), which the
simulator records as `last_sent`. LTT is the IST wall clock encoded as epoch seconds (what the
real feed sends: UTC + 5:30), never going backwards.
"""

from __future__ import annotations

import random
import struct
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from core.instruments import SEGMENT_CODES
from local.dhan_sim import packets
from local.dhan_sim.prices import InstrumentState, Key, PriceBook, randbelow
from local.dhan_sim.protocol import Mode
from streamer.decoder import DepthLevel

IST_OFFSET_SECONDS = 19_800
# Quote subscriptions of instruments with open interest also carry OI packets now and then.
OI_SEGMENTS = frozenset({"NSE_FNO", "BSE_FNO", "MCX_COMM"})

_F32 = struct.Struct("<f")
_LTT = struct.Struct("<I")


def float32(value: float) -> float:
    """The value a client decodes after the float32 round trip."""
    result: float = _F32.unpack(_F32.pack(value))[0]
    return result


def ist_epoch_now(clock: Callable[[], float] = time.time) -> int:
    return int(clock()) + IST_OFFSET_SECONDS


class Tick(NamedTuple):
    key: Key
    data: bytes  # one price packet
    ltp: float  # float32 value on the wire
    ltt: int
    extra: bytes | None = None  # an OI packet that follows it (its own packet slot)


class TickFactory:
    """Builds packets from a `PriceBook` with a seeded RNG."""

    def __init__(
        self,
        book: PriceBook,
        *,
        rng: random.Random,
        clock: Callable[[], float] = time.time,
        oi_probability: float = 0.1,
    ) -> None:
        self.book = book
        self.rng = rng
        self.clock = clock
        self.oi_probability = oi_probability
        self._last_ltt = 0
        self._ids: dict[Key, tuple[int, int]] = {}  # key -> (segment code, security id)

    def ltt(self) -> int:
        now = ist_epoch_now(self.clock)
        if now > self._last_ltt:
            self._last_ltt = now
        return self._last_ltt

    def tick(self, key: Key, mode: Mode) -> Tick:
        ltt = self.ltt()
        book = self.book
        # Packed under the book's lock from the live state: a consistent snapshot, no copy.
        with book.lock:
            return self.packet(key, mode, book.advance(key, self.rng), ltt)

    def current(self, key: Key, mode: Mode) -> Tick:
        """A price packet for the instrument's current state, without moving it."""
        return self.packet(key, mode, self.book.ensure(key), self.ltt())

    def packet(self, key: Key, mode: Mode, s: InstrumentState, ltt: int) -> Tick:
        ids = self._ids.get(key)
        if ids is None:
            ids = self._ids[key] = (SEGMENT_CODES[key[0]], int(key[1]))
        segment, sid = ids
        extra = None
        if mode == "ticker":
            data = packets.ticker(segment, sid, s.price, ltt)
        elif mode == "quote":
            data = packets.quote(
                segment, sid, s.price, s.ltq & 0xFFFF, ltt, s.avg_price, s.volume,
                s.total_sell_quantity, s.total_buy_quantity, s.open, s.prev_close, s.high, s.low,
            )  # fmt: skip
            if key[0] in OI_SEGMENTS and self.rng.random() < self.oi_probability:
                extra = packets.open_interest(segment, sid, s.oi)
        else:
            data = packets.full(
                segment, sid, s.price, s.ltq & 0xFFFF, ltt, s.avg_price, s.volume,
                s.total_sell_quantity, s.total_buy_quantity, s.oi, s.oi_day_high, s.oi_day_low,
                s.open, s.prev_close, s.high, s.low, self.depth(s),
            )  # fmt: skip
        # Every price packet has its f32 LTP at offset 8: read back what the client decodes.
        return Tick(key, data, _F32.unpack_from(data, 8)[0], ltt, extra)

    def prev_close(self, key: Key) -> bytes:
        s = self.book.ensure(key)
        return packets.prev_close(SEGMENT_CODES[key[0]], int(key[1]), s.prev_close, s.prev_oi)

    def depth(self, s: InstrumentState) -> tuple[DepthLevel, ...]:
        tick = self.book.tick_size
        rng = self.rng
        return tuple(
            DepthLevel(
                randbelow(rng, 5_000) + 1, randbelow(rng, 5_000) + 1,
                randbelow(rng, 50) + 1, randbelow(rng, 50) + 1,
                max(tick, s.price - (i + 1) * tick), s.price + (i + 1) * tick,
            )  # fmt: skip
            for i in range(packets.DEPTH_LEVELS)
        )


class FrameCycle(NamedTuple):
    """Pre-built frames replayed in a loop (rate=0), valid for one subscription `version`."""

    version: int
    ltt: int
    frames: list[bytes]
    counts: list[int]  # price packets per frame
    updates: list[dict[Key, tuple[float, int]]]  # what each frame tells a client, per key
    ltt_offsets: list[list[int]]  # where each frame's LTT fields are


def build_cycle(ticks: Iterable[Tick], per_frame: int, *, version: int) -> FrameCycle:
    """Pack ticks (and their OI packets) into frames of `per_frame` packets."""
    frames: list[bytes] = []
    counts: list[int] = []
    updates: list[dict[Key, tuple[float, int]]] = []
    offsets: list[list[int]] = []
    chunks: list[bytes] = []
    frame_ticks: list[Tick] = []
    frame_offsets: list[int] = []
    size = 0
    ltt = 0

    def flush() -> None:
        nonlocal size
        frames.append(b"".join(chunks))
        counts.append(len(frame_ticks))
        updates.append({t.key: (t.ltp, t.ltt) for t in frame_ticks})
        offsets.append(list(frame_offsets))
        chunks.clear()
        frame_ticks.clear()
        frame_offsets.clear()
        size = 0

    def add(data: bytes, tick: Tick | None) -> None:
        nonlocal size
        if tick is not None:
            frame_offsets.append(size + packets.LTT_OFFSET[data[0]])
            frame_ticks.append(tick)
        chunks.append(data)
        size += len(data)
        if len(chunks) == per_frame:
            flush()

    for tick in ticks:
        ltt = max(ltt, tick.ltt)
        add(tick.data, tick)
        if tick.extra is not None:
            add(tick.extra, None)
    if chunks:
        flush()
    return restamp(FrameCycle(version, -1, frames, counts, updates, offsets), ltt)


def restamp(cycle: FrameCycle, ltt: int) -> FrameCycle:
    """The same frames with every LTT field set to `ltt`, so replayed frames stay current."""
    frames = []
    for frame, frame_offsets in zip(cycle.frames, cycle.ltt_offsets, strict=True):
        buffer = bytearray(frame)
        for offset in frame_offsets:
            _LTT.pack_into(buffer, offset, ltt)
        frames.append(bytes(buffer))
    updates = [{k: (v[0], ltt) for k, v in u.items()} for u in cycle.updates]
    return cycle._replace(ltt=ltt, frames=frames, updates=updates)
