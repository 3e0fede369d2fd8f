"""`FeedSimulator`: a WebSocket server speaking DhanHQ Live Market Feed v2, with fault injection.

The protocol decisions live in `protocol` (pure) and the packets in `ticks`/`packets`; this
module is the asyncio shell: it accepts connections, applies requests and injects faults, and
starts one sender task per connection (`sender.TickSender`) that streams random-walk ticks in
the subscribed mode. `SimConfig` lives in `config`.

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

Tokens: the handshake token is judged by a `tokens.TokenAuthority` (`tokens=`; by default a
private one holding `config.access_token`). Pass the authority a `RestStandIn` also uses and a
renewal over REST (`GET /v2/RenewToken`, from REST's own thread) kills the old token here too:
every open connection that shook hands with it gets disconnect 807 and is closed, on this
feed's loop; connections on the new token stream on.

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
from collections.abc import Callable, Coroutine
from types import TracebackType
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from local.dhan_sim import packets
from local.dhan_sim.config import SimConfig
from local.dhan_sim.prices import Key, PriceBook
from local.dhan_sim.protocol import (
    TOKEN_EXPIRED,
    TOO_MANY_CONNECTIONS,
    CloseRequest,
    Mode,
    Reject,
    Subscribe,
    Subscriptions,
    Unsubscribe,
    handshake_reason,
    parse_request,
)
from local.dhan_sim.sender import FeedConnection, TickSender
from local.dhan_sim.ticks import TickFactory
from local.dhan_sim.tokens import TokenAuthority

log = logging.getLogger(__name__)


class ReceivedRequest(NamedTuple):
    connection_id: int
    message: object  # the decoded JSON (None when the text was not JSON)


class FeedSimulator:
    """The v2 feed on loopback; `async with` starts and stops it.

    `tokens`: a shared authority replaces `config.access_token` (its client id must be
    `config.client_id`).
    """

    def __init__(
        self,
        config: SimConfig | None = None,
        *,
        prices: PriceBook | None = None,
        clock: Callable[[], float] = time.time,
        tokens: TokenAuthority | None = None,
    ) -> None:
        self.config = cfg = config or SimConfig()
        if tokens is not None and tokens.client_id != cfg.client_id:
            raise ValueError(f"the token authority is for client id {tokens.client_id!r}, "
                             f"the feed for {cfg.client_id!r}")  # fmt: skip
        self.tokens = tokens if tokens is not None else TokenAuthority(
            cfg.client_id, cfg.access_token)  # fmt: skip
        self.prices = prices if prices is not None else PriceBook(seed=cfg.seed)
        self.factory = TickFactory(
            self.prices, rng=random.Random(cfg.seed), clock=clock,
            oi_probability=cfg.oi_probability,
        )  # fmt: skip
        self._sending = TickSender(cfg, self.factory)
        self.port = cfg.port
        self.requests: list[ReceivedRequest] = []
        self.handshakes = 0
        self.disconnects_sent: list[tuple[int | None, int]] = []  # (connection id, reason)
        self._connections: dict[int, FeedConnection] = {}  # insertion order = age
        self._token_of: dict[int, str] = {}  # connection id -> the token of its handshake
        self._stop_listening: Callable[[], None] | None = None
        self._ids = itertools.count(1)
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
    def ticks_sent(self) -> int:
        return self._sending.ticks_sent

    @property
    def last_sent(self) -> dict[Key, tuple[float, int]]:
        """(segment, id) -> (float32 ltp, ltt) of the last price packet sent."""
        return self._sending.last_sent

    @property
    def access_token(self) -> str:
        return self.tokens.current

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
        self._call_in_loop(self._sending.set_muted, muted)

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
        (A renewal through the authority, `tokens.renew`/`mint`, does disconnect them.)
        """
        self.tokens.install(new_token, announce=False)

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
        self._stop_listening = self.tokens.on_rotate(self._on_rotate)
        return self

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        if self._stop_listening is not None:
            self._stop_listening()
            self._stop_listening = None
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
        reason = handshake_reason(query, client_id=cfg.client_id, check_token=self.tokens.check)
        if reason is not None:
            await self._send_disconnect_packet(ws, None, reason)
            return
        conn = FeedConnection(next(self._ids), ws, query["clientId"],
                              Subscriptions(cfg.max_instruments))  # fmt: skip
        # No await since the check: a rotation (run on this loop) cannot slip in between.
        self._connections[conn.id] = conn
        self._token_of[conn.id] = query["token"]
        self._evict_beyond_limit(conn.client_id)
        conn.sender = asyncio.create_task(self._sending.run(conn),
                                          name=f"dhan-sim-send-{conn.id}")
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
            self._token_of.pop(conn.id, None)
            conn.sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.sender

    def _evict_beyond_limit(self, client_id: str) -> None:
        same = [c for c in self._connections.values() if c.client_id == client_id]
        for oldest in same[: max(0, len(same) - self.config.max_connections)]:
            # In the background: the new connection must not wait for the old one's close.
            self._in_background(self._disconnect(oldest, TOO_MANY_CONNECTIONS))

    def _on_rotate(self, old: str, new: str) -> None:
        # Called in the thread that renewed (REST's handler thread, usually).
        self._call_in_loop(self._expire_token, old)

    def _expire_token(self, token: str) -> None:
        for conn in list(self._connections.values()):
            if self._token_of.get(conn.id) == token and not conn.closing:
                self._in_background(self._disconnect(conn, TOKEN_EXPIRED))

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _on_request(self, conn: FeedConnection, text: str) -> None:
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
            self._sending.subscribed(conn, request.keys, request.mode)
        elif isinstance(request, Unsubscribe):
            conn.subs.unsubscribe(request)
            conn.changed()

    async def _disconnect(self, conn: FeedConnection, reason: int) -> None:
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

    def _call_in_loop(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is None or _running_loop() is loop or not loop.is_running():
            fn(*args)
        else:
            loop.call_soon_threadsafe(fn, *args)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


__all__ = ["FeedSimulator", "ReceivedRequest", "SimConfig"]
