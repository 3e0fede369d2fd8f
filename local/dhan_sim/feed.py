"""`FeedSimulator`: a WebSocket server speaking DhanHQ Live Market Feed v2, with fault injection.

The protocol decisions live in `protocol` (pure) and the packets in `ticks`/`packets`; this
module is the asyncio shell: it accepts connections, applies requests, and runs one sender
task per connection that streams random-walk ticks in the subscribed mode.

    cfg = SimConfig(rate=200.0, packets_per_frame=1, seed=1)
    async with FeedSimulator(cfg) as sim:
        sim.url  # "ws://127.0.0.1:PORT"; clients add "?version=2&token=..&clientId=..&authType=2"
        await sim.until(lambda: sim.ticks_sent >= 10)

Streaming: after a subscribe each instrument immediately gets a prev-close packet (6) and one
price packet at its current price; then ticks go round-robin over the connection's
instruments at `rate` price packets per second per connection (`rate=0`: as fast as
possible from pre-built frames whose LTT is refreshed every second, for benchmarks), grouped
`packets_per_frame` to a binary frame. Quote subscriptions of NSE_FNO/BSE_FNO/MCX_COMM
instruments also get an OI packet (5) now and then, in its own packet slot. `max_ticks`
stops the price packets of a connection after that many (the connection stays open).

What was sent is recorded: `last_sent[(segment, id)] = (float32 ltp, ltt)`, `ticks_sent`,
`requests`, `subscriptions`, `connection_count`, `handshakes`, `disconnects_sent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from local.dhan_sim import packets
from local.dhan_sim.prices import Key, PriceBook
from local.dhan_sim.protocol import (
    MAX_CONNECTIONS,
    MAX_PER_CONNECTION,
    TOO_MANY_CONNECTIONS,
    CloseRequest,
    Mode,
    Reject,
    Subscribe,
    Subscriptions,
    Unsubscribe,
    check_handshake,
    parse_request,
)
from local.dhan_sim.ticks import FrameCycle, Tick, TickFactory, build_cycle, restamp

log = logging.getLogger(__name__)

# rate=0: a pre-built cycle holds at least this many price packets (every instrument at
# least once), and the sender yields to the loop every few frames so requests, pings and
# other connections are still served.
_CYCLE_MIN_PACKETS = 1024
_YIELD_EVERY_FRAMES = 8


@dataclass(frozen=True)
class SimConfig:
    host: str = "127.0.0.1"
    port: int = 0
    client_id: str = "1000000001"
    access_token: str = "sim-token"
    rate: float = 200.0  # price packets per second per connection; 0 = as fast as possible
    packets_per_frame: int = 1
    # None streams each instrument in the mode it was subscribed in (as Dhan does); a mode
    # forces every instrument into that packet type whatever was asked (a benchmark knob).
    mode_default: Mode | None = None
    seed: int = 0
    max_ticks: int | None = None  # price packets per connection, then silence
    max_connections: int = MAX_CONNECTIONS
    max_instruments: int = MAX_PER_CONNECTION
    oi_probability: float = 0.1
    ping_interval: float | None = 10.0  # Dhan pings every 10 s ...
    ping_timeout: float | None = 40.0  # ... and drops a client silent for 40 s
    close_timeout: float = 2.0

    def __post_init__(self) -> None:
        if self.packets_per_frame < 1:
            raise ValueError("packets_per_frame must be at least 1")
        if self.rate < 0:
            raise ValueError("rate must be >= 0 (0 = as fast as possible)")


class ReceivedRequest(NamedTuple):
    connection_id: int
    message: object  # the decoded JSON (None when the text was not JSON)


@dataclass(eq=False)
class _Connection:
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


class FeedSimulator:
    """The v2 feed on loopback; `async with` starts and stops it."""

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        prices: PriceBook | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = cfg = config or SimConfig()
        self.prices = prices if prices is not None else PriceBook(seed=cfg.seed)
        self.factory = TickFactory(
            self.prices, rng=random.Random(cfg.seed), clock=clock,
            oi_probability=cfg.oi_probability,
        )  # fmt: skip
        self.port = cfg.port
        self.last_sent: dict[Key, tuple[float, int]] = {}
        self.ticks_sent = 0
        self.requests: list[ReceivedRequest] = []
        self.handshakes = 0
        self.disconnects_sent: list[tuple[int | None, int]] = []  # (connection id, reason)
        self._token = cfg.access_token
        self._expired_tokens: set[str] = set()
        self._connections: dict[int, _Connection] = {}  # insertion order = age
        self._ids = itertools.count(1)
        self._muted = False
        self._unmuted = asyncio.Event()
        self._unmuted.set()
        self._reject_status = 429
        self._reject_left = 0
        self._server: Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._background: set[asyncio.Task[None]] = set()

    # -- observation -----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    @property
    def access_token(self) -> str:
        return self._token

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    @property
    def connection_ids(self) -> list[int]:
        """Open connections, oldest first."""
        return list(self._connections)

    @property
    def subscriptions(self) -> dict[int, dict[Key, Mode]]:
        """Open connection id -> {key: subscribed mode} (a snapshot)."""
        return {cid: dict(c.subs.modes) for cid, c in self._connections.items()}

    def ticks_of(self, connection_id: int) -> int:
        conn = self._connections.get(connection_id)
        return conn.ticks if conn else 0

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until `predicate()` holds (TimeoutError otherwise): for tests."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.005)

    # -- fault injection ---------------------------------------------------------------------
    async def drop_connections(self) -> None:
        """Abort every TCP connection: no close frame, the client sees a dead socket."""
        doomed = list(self._connections.values())
        for conn in doomed:
            conn.closing = True
            conn.ws.transport.abort()
        await self.until(lambda: not any(c.id in self._connections for c in doomed))

    def mute(self, muted: bool = True) -> None:
        """Stay connected and answer pings, but send nothing (ticks resume on unmute)."""
        self._call_in_loop(self._set_muted, muted)

    async def send_disconnect(self, code: int) -> None:
        """Send disconnect packet `code` (e.g. 805, 807, 809) to every connection and close."""
        await asyncio.gather(
            *(self._disconnect(c, code) for c in list(self._connections.values()))
        )

    def reject_handshakes(self, status: int = 429, count: int = 1) -> None:
        """Answer the next `count` HTTP upgrade requests with `status` instead of 101."""
        self._reject_status = status
        self._reject_left = count

    def set_token(self, new_token: str) -> None:
        """Rotate the access token: the old one now fails the handshake with 807.

        Open connections are left alone; `await send_disconnect(807)` expires them too.
        """
        if new_token != self._token:
            self._expired_tokens.add(self._token)
            self._expired_tokens.discard(new_token)
            self._token = new_token

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> FeedSimulator:
        cfg = self.config
        self._loop = asyncio.get_running_loop()
        self._server = await serve(
            self._handle, cfg.host, cfg.port, process_request=self._process_request,
            compression=None, ping_interval=cfg.ping_interval, ping_timeout=cfg.ping_timeout,
            close_timeout=cfg.close_timeout,
        )  # fmt: skip
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        for conn in self._connections.values():
            conn.closing = True
        server.close()
        await server.wait_closed()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    async def __aenter__(self) -> FeedSimulator:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- connection handling -----------------------------------------------------------------
    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        if self._reject_left > 0:
            self._reject_left -= 1
            status = self._reject_status
            return connection.respond(status, f"rejected by the simulator ({status})\n")
        if urlsplit(request.path).path not in ("", "/"):
            return connection.respond(404, "not found\n")
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        cfg = self.config
        assert ws.request is not None  # set once the handshake succeeded
        query = dict(parse_qsl(urlsplit(ws.request.path).query))
        reason = check_handshake(
            query, client_id=cfg.client_id, token=self._token,
            expired_tokens=self._expired_tokens,
        )  # fmt: skip
        if reason is not None:
            await self._send_disconnect_packet(ws, None, reason)
            return
        conn = _Connection(next(self._ids), ws, query["clientId"],
                           Subscriptions(cfg.max_instruments))  # fmt: skip
        self._connections[conn.id] = conn
        self._evict_beyond_limit(conn.client_id)
        conn.sender = asyncio.create_task(self._send_loop(conn), name=f"dhan-sim-send-{conn.id}")
        try:
            async for message in ws:
                if isinstance(message, str):
                    await self._on_request(conn, message)
                if conn.closing:
                    break
        except ConnectionClosed:
            pass
        finally:
            conn.closing = True
            self._connections.pop(conn.id, None)
            conn.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.sender

    def _evict_beyond_limit(self, client_id: str) -> None:
        same = [c for c in self._connections.values() if c.client_id == client_id]
        for oldest in same[: max(0, len(same) - self.config.max_connections)]:
            # In the background: the new connection must not wait for the old one's close.
            task = asyncio.create_task(self._disconnect(oldest, TOO_MANY_CONNECTIONS))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _on_request(self, conn: _Connection, text: str) -> None:
        message, request = parse_request(text)
        self.requests.append(ReceivedRequest(conn.id, message))
        if isinstance(request, Reject):
            log.info("connection %s: %s -> disconnect %s", conn.id, request.detail,
                     request.reason)  # fmt: skip
            await self._disconnect(conn, request.reason)
        elif isinstance(request, CloseRequest):
            conn.closing = True
        elif isinstance(request, Subscribe):
            rejected = conn.subs.subscribe(request)
            if rejected is not None:
                await self._disconnect(conn, rejected.reason)
                return
            mode = self.config.mode_default or request.mode
            for key in request.keys:
                conn.pending.append((self.factory.prev_close(key), None))
                tick = self.factory.current(key, mode)
                conn.pending.append((tick.data, tick))
                if tick.extra is not None:
                    conn.pending.append((tick.extra, None))
            self._changed(conn)
        elif isinstance(request, Unsubscribe):
            conn.subs.unsubscribe(request)
            self._changed(conn)

    def _changed(self, conn: _Connection) -> None:
        conn.version += 1
        conn.wake.set()

    async def _disconnect(self, conn: _Connection, reason: int) -> None:
        conn.closing = True
        conn.wake.set()
        await self._send_disconnect_packet(conn.ws, conn.id, reason)

    async def _send_disconnect_packet(
        self, ws: ServerConnection, connection_id: int | None, reason: int
    ) -> None:
        self.disconnects_sent.append((connection_id, reason))
        try:
            await ws.send(packets.disconnect(reason))
            await ws.close()
        except ConnectionClosed:
            pass

    def _set_muted(self, muted: bool) -> None:
        self._muted = muted
        if muted:
            self._unmuted.clear()
        else:
            self._unmuted.set()

    def _call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or _running_loop() is loop or not loop.is_running():
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)

    # -- sending -----------------------------------------------------------------------------
    async def _send_loop(self, conn: _Connection) -> None:
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
                    if frames_since_yield >= _YIELD_EVERY_FRAMES:
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

    def _remaining(self, conn: _Connection) -> int:
        limit = self.config.max_ticks
        return -1 if limit is None else max(0, limit - conn.ticks)

    async def _send_pending(self, conn: _Connection) -> None:
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

    def _next_ticks(self, conn: _Connection, count: int) -> list[Tick]:
        rotation = self._rotation(conn)
        ticks = []
        for _ in range(count):
            key, mode = rotation[conn.rotation_pos % len(rotation)]
            conn.rotation_pos += 1
            ticks.append(self.factory.tick(key, mode))
        return ticks

    def _rotation(self, conn: _Connection) -> list[tuple[Key, Mode]]:
        if conn.rotation_version != conn.version:
            forced = self.config.mode_default
            conn.rotation = [(k, forced or m) for k, m in conn.subs.modes.items()]
            conn.rotation_pos = 0
            conn.rotation_version = conn.version
        return conn.rotation

    async def _send_ticks(self, conn: _Connection, ticks: list[Tick]) -> None:
        per_frame = self.config.packets_per_frame
        chunks: list[bytes] = []
        for tick in ticks:
            chunks.append(tick.data)
            if tick.extra is not None:
                chunks.append(tick.extra)
        for start in range(0, len(chunks), per_frame):
            await conn.ws.send(b"".join(chunks[start : start + per_frame]))
        self._record(conn, ticks)

    def _record(self, conn: _Connection, ticks: list[Tick]) -> None:
        conn.ticks += len(ticks)
        self.ticks_sent += len(ticks)
        last_sent = self.last_sent
        for tick in ticks:
            last_sent[tick.key] = (tick.ltp, tick.ltt)

    async def _send_from_cycle(self, conn: _Connection, remaining: int) -> None:
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

    def _build_cycle(self, conn: _Connection) -> FrameCycle:
        rotation = self._rotation(conn)
        rounds = max(1, -(-_CYCLE_MIN_PACKETS // len(rotation)))
        ticks = self._next_ticks(conn, len(rotation) * rounds)
        return build_cycle(ticks, self.config.packets_per_frame, version=conn.version)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None

