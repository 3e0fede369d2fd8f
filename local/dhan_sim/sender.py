"""What a `FeedSimulator` connection is sent, and the task that sends it.

After a subscribe each instrument gets a prev-close packet and one price packet at its
current price (queued in `pending`); then ticks go round-robin over the connection's
instruments at `rate` price packets per second, `packets_per_frame` to a binary frame, or for
`rate=0` as fast as possible from a pre-built `FrameCycle` whose LTT is refreshed every second
(building packets per tick was the limit of the benchmarks). `TickSender` also keeps the
record of what went out (`ticks_sent`, `last_sent`) and the simulator-wide mute. The server
(`feed`) owns the connections and their requests; this module owns their outgoing side.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from local.dhan_sim.config import SimConfig
from local.dhan_sim.prices import Key
from local.dhan_sim.protocol import Mode, Subscriptions
from local.dhan_sim.ticks import FrameCycle, Tick, TickFactory, build_cycle, restamp

# rate=0: a pre-built cycle holds at least this many price packets (every instrument at
# least once), and the sender yields to the loop every few frames so requests, pings and
# other connections are still served.
CYCLE_MIN_PACKETS = 1024
YIELD_EVERY_FRAMES = 8


@dataclass(eq=False)
class FeedConnection:
    """One client connection: its subscriptions and where its sender is in them."""

    id: int
    ws: ServerConnection
    client_id: str
    subs: Subscriptions
    pending: deque[tuple[bytes, Tick | None]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    rotation: list[tuple[Key, Mode]] = field(default_factory=list)
    rotation_pos: int = 0
    version: int = 0  # bumped on every subscription change
    rotation_version: int = -1
    cycle: FrameCycle | None = None
    cycle_pos: int = 0
    ticks: int = 0
    closing: bool = False
    sender: asyncio.Task[None] | None = None

    def changed(self) -> None:
        """Subscriptions changed: rebuild the rotation (and cycle) and wake the sender."""
        self.version += 1
        self.wake.set()


class TickSender:
    """Sends every connection's ticks, and records what was sent."""

    def __init__(self, config: SimConfig, factory: TickFactory) -> None:
        self.config = config
        self.factory = factory
        self.last_sent: dict[Key, tuple[float, int]] = {}
        self.ticks_sent = 0
        self._muted = False
        self._unmuted = asyncio.Event()
        self._unmuted.set()

    def set_muted(self, muted: bool) -> None:
        self._muted = muted
        if muted:
            self._unmuted.clear()
        else:
            self._unmuted.set()

    def subscribed(self, conn: FeedConnection, keys: tuple[Key, ...], mode: Mode) -> None:
        """Queue what a subscribe answers at once: prev close and the current price."""
        mode = self.config.mode_default or mode
        for key in keys:
            conn.pending.append((self.factory.prev_close(key), None))
            tick = self.factory.current(key, mode)
            conn.pending.append((tick.data, tick))
            if tick.extra is not None:
                conn.pending.append((tick.extra, None))
        conn.changed()

    async def run(self, conn: FeedConnection) -> None:
        """The connection's sender task, until it is cancelled or its socket closes."""
        cfg = self.config
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        frames_since_yield = 0
        try:
            while True:
                if self._muted:
                    await self._unmuted.wait()
                    continue
                if conn.closing:
                    conn.wake.clear()
                    await conn.wake.wait()
                    continue
                if conn.pending:
                    await self._send_pending(conn)
                    continue
                remaining = self._remaining(conn)
                if not conn.subs or remaining == 0:
                    conn.wake.clear()
                    await conn.wake.wait()
                    continue
                if cfg.rate == 0:
                    await self._send_from_cycle(conn, remaining)
                    frames_since_yield += 1
                    if frames_since_yield >= YIELD_EVERY_FRAMES:
                        frames_since_yield = 0
                        await asyncio.sleep(0)
                    continue
                per_frame = cfg.packets_per_frame
                count = per_frame if remaining < 0 else min(per_frame, remaining)
                await self._send_ticks(conn, self._next_ticks(conn, count))
                next_at += count / cfg.rate
                delay = next_at - loop.time()
                if delay < -1.0:  # fell behind (mute, slow client): no catch-up burst
                    next_at = loop.time()
                await asyncio.sleep(max(0.0, delay))
        except ConnectionClosed:
            pass

    def _remaining(self, conn: FeedConnection) -> int:
        limit = self.config.max_ticks
        return -1 if limit is None else max(0, limit - conn.ticks)

    async def _send_pending(self, conn: FeedConnection) -> None:
        chunks: list[bytes] = []
        ticks: list[Tick] = []
        while conn.pending and len(chunks) < self.config.packets_per_frame:
            data, tick = conn.pending.popleft()
            if tick is not None:
                if self._remaining(conn) - len(ticks) == 0:
                    continue  # max_ticks reached: the initial price packet is not sent
                ticks.append(tick)
            chunks.append(data)
        if chunks:
            await conn.ws.send(b"".join(chunks))
            self._record(conn, ticks)

    def _next_ticks(self, conn: FeedConnection, count: int) -> list[Tick]:
        rotation = self._rotation(conn)
        ticks = []
        for _ in range(count):
            key, mode = rotation[conn.rotation_pos % len(rotation)]
            conn.rotation_pos += 1
            ticks.append(self.factory.tick(key, mode))
        return ticks

    def _rotation(self, conn: FeedConnection) -> list[tuple[Key, Mode]]:
        if conn.rotation_version != conn.version:
            forced = self.config.mode_default
            conn.rotation = [(k, forced or m) for k, m in conn.subs.modes.items()]
            conn.rotation_pos = 0
            conn.rotation_version = conn.version
        return conn.rotation

    async def _send_ticks(self, conn: FeedConnection, ticks: list[Tick]) -> None:
        per_frame = self.config.packets_per_frame
        chunks: list[bytes] = []
        for tick in ticks:
            chunks.append(tick.data)
            if tick.extra is not None:
                chunks.append(tick.extra)
        for start in range(0, len(chunks), per_frame):
            await conn.ws.send(b"".join(chunks[start : start + per_frame]))
        self._record(conn, ticks)

    def _record(self, conn: FeedConnection, ticks: list[Tick]) -> None:
        conn.ticks += len(ticks)
        self.ticks_sent += len(ticks)
        last_sent = self.last_sent
        for tick in ticks:
            last_sent[tick.key] = (tick.ltp, tick.ltt)

    async def _send_from_cycle(self, conn: FeedConnection, remaining: int) -> None:
        cycle = conn.cycle
        if cycle is None or cycle.version != conn.version:
            cycle = conn.cycle = self._build_cycle(conn)
            conn.cycle_pos = 0
        pos = conn.cycle_pos
        if pos == 0:
            ltt = self.factory.ltt()
            if ltt != cycle.ltt:
                cycle = conn.cycle = restamp(cycle, ltt)
        count = cycle.counts[pos]
        if 0 <= remaining < count:  # the last few before max_ticks: built one by one
            await self._send_ticks(conn, self._next_ticks(conn, remaining))
            return
        conn.cycle_pos = (pos + 1) % len(cycle.frames)
        await conn.ws.send(cycle.frames[pos])
        conn.ticks += count
        self.ticks_sent += count
        self.last_sent.update(cycle.updates[pos])

    def _build_cycle(self, conn: FeedConnection) -> FrameCycle:
        rotation = self._rotation(conn)
        rounds = max(1, -(-CYCLE_MIN_PACKETS // len(rotation)))
        ticks = self._next_ticks(conn, len(rotation) * rounds)
        return build_cycle(ticks, self.config.packets_per_frame, version=conn.version)

