"""One DhanHQ feed connection: connect, subscribe, read frames into the coalescer, reconnect.

`FeedConnection.run` is a single reconnect loop (the websockets idiom, spelled out so that the
one `failures.classify` function decides every outcome): connect with the credentials of the
moment, (re)subscribe everything this connection should carry, then read. A session ends with
a `Failure` (disconnect packet, refused handshake, closed socket, silence, network error); the
verdict stops the connection (fatal codes: the error goes to the log and the heartbeat),
re-reads the token (807; 808/809 once, stopping unless it changed), or waits a jittered
backoff (longer after 805/429) and reconnects.

Three tasks per session: the reader (the hot path: each binary frame straight into
coalescer.add_frame, no logging or awaiting per tick), a sender that reconciles "keys this
connection should carry" with "keys subscribed on the wire" (so live changes and
resubscribe-after-reconnect are the same code), and a watchdog that treats a connection silent
for `silence_timeout` while the market is open as dead (sockets can stay "connected" and mute
after a token rollover).
The token never reaches a log: URLs are masked.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)

from core.backoff import Backoff
from core.instruments import InstrumentKey
from streamer.coalescer import Coalescer
from streamer.decoder import Disconnect, Packet
from streamer.failures import Action, Failure, Kind, Verdict, classify
from streamer.planner import diff, disconnect_request, encode, request_messages
from streamer.settings import Credentials, CredentialSource

log = logging.getLogger(__name__)

_TOKEN_IN_URL = re.compile(r"(token=)[^&]*")
_LOG_FIRST = 5  # text frames / decode errors logged per connection before going quiet


def feed_url(base: str, credentials: Credentials) -> str:
    """The v2 handshake URL: `base?version=2&token=..&clientId=..&authType=2`."""
    query = urlencode({
        "version": "2",
        "token": credentials.access_token.value,
        "clientId": credentials.client_id,
        "authType": "2",
    })
    return f"{base}{'&' if '?' in base else '?'}{query}"


def mask_url(url: str) -> str:
    return _TOKEN_IN_URL.sub(r"\1***", url)


class TokenKeeper:
    """The credentials all connections share; one re-read however many connections got 807."""

    def __init__(
        self,
        source: CredentialSource,
        *,
        on_new: Callable[[Credentials], None] | None = None,
    ) -> None:
        self._source = source
        self._on_new = on_new
        self._current: Credentials | None = None
        self._lock = asyncio.Lock()
        self._listeners: list[Callable[[Credentials], None]] = []
        self.generation = 0
        self.refreshes = 0
        self.changes = 0  # re-reads that found other credentials

    def add_listener(self, listener: Callable[[Credentials], None]) -> None:
        """Called with the new credentials whenever a re-read finds different ones."""
        self._listeners.append(listener)

    @property
    def current(self) -> Credentials | None:
        return self._current

    async def get(self) -> Credentials:
        if self._current is None:
            await self.refresh(self.generation)
        assert self._current is not None
        return self._current

    async def refresh(self, seen_generation: int) -> Credentials:
        """Re-read the credentials unless someone did since `seen_generation`."""
        async with self._lock:
            if self._current is None or self.generation == seen_generation:
                fresh = await self._source.fetch()
                self.refreshes += 1
                if self._on_new is not None:
                    self._on_new(fresh)
                changed = self._current is not None and fresh != self._current
                if fresh != self._current:
                    log.info("DhanHQ credentials (re)loaded")
                self._current = fresh
                self.generation += 1
                if changed:
                    self.changes += 1
                    for listener in self._listeners:
                        listener(fresh)
            return self._current


class State(enum.Enum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPED = "stopped"  # fatal verdict: this connection will not reconnect
    CLOSED = "closed"  # closed on purpose (shutdown, no keys left)


class FeedConnection:
    def __init__(
        self,
        *,
        index: int,
        feed_url: str,
        mode: str,
        tokens: TokenKeeper,
        coalescer: Coalescer,
        backoff: Backoff,
        silence_timeout: float = 90.0,
        market_open: Callable[[], bool] = lambda: True,
        open_timeout: float = 10.0,
        close_timeout: float = 2.0,
        ping_interval: float | None = 20.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.index = index
        self._base_url = feed_url
        self.mode = mode
        self._tokens = tokens
        self._coalescer = coalescer
        self._backoff = backoff
        self.silence_timeout = silence_timeout
        self._market_open = market_open
        self._open_timeout = open_timeout
        self._close_timeout = close_timeout
        self._ping_interval = ping_interval
        self._clock = clock
        self._desired: tuple[InstrumentKey, ...] = ()
        self._on_wire: dict[InstrumentKey, None] = {}
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()  # cuts a backoff sleep short on close
        self._ws: ClientConnection | None = None
        self._session_failure: Failure | None = None
        self._closing = False
        self.state = State.IDLE
        self.connected_at: float | None = None
        self.last_frame_at: float | None = None
        self.frames = 0
        self.packets = 0
        self.decode_errors = 0
        self.text_frames = 0
        self.reconnects = 0
        self.failures: dict[str, int] = {}
        self.last_error: str | None = None
        self.fatal_error: str | None = None
        self._session_credentials: Credentials | None = None
        self.subscribe_messages = 0
        self.largest_message = 0

    # -- control ---------------------------------------------------------------------------
    @property
    def keys(self) -> tuple[InstrumentKey, ...]:
        return self._desired

    @property
    def subscribed(self) -> int:
        return len(self._on_wire)

    def set_keys(self, keys: Sequence[InstrumentKey]) -> None:
        """What this connection should carry; the sender sends the difference."""
        self._desired = tuple(keys)
        self._changed.set()

    @property
    def session_credentials(self) -> Credentials | None:
        """The credentials the current (or last) session connected with."""
        return self._session_credentials

    def wake(self) -> None:
        """Cut a backoff wait short (new credentials are worth trying at once)."""
        if self.state is State.BACKOFF:
            self._wake.set()

    async def switch(self, timeout: float = 15.0) -> bool:
        """Reconnect now with the keeper's current credentials, unless this session already
        uses them; returns once connected again (False: not within `timeout`). The session's
        end is no failure: no backoff, nothing counted against the feed."""
        ws = self._ws
        if ws is None or self._session_credentials == self._tokens.current:
            return True
        self._session_failure = Failure(Kind.SWITCH, detail="token renewed")
        with contextlib.suppress(OSError, TimeoutError):
            await ws.close(code=1000, reason="token renewed")
        deadline = self._clock() + timeout
        while self._clock() < deadline and not self._closing:
            if self.state is State.CONNECTED and self._ws is not ws:
                return True
            if self.state is State.STOPPED:
                return False
            await asyncio.sleep(0.01)
        return False

    async def close(self) -> None:
        """Leave politely: RequestCode 12, then the WebSocket close. `run` then returns."""
        self._closing = True
        self._wake.set()
        ws = self._ws
        if ws is None:
            return
        with contextlib.suppress(ConnectionClosed, OSError, TimeoutError):
            async with asyncio.timeout(self._close_timeout):
                await ws.send(encode(disconnect_request()))
        with contextlib.suppress(OSError, TimeoutError):
            await ws.close()

    def status(self) -> dict[str, Any]:
        since = self.connected_at if self.state is State.CONNECTED else None
        return {
            "index": self.index,
            "state": self.state.value,
            "instruments": len(self._desired),
            "subscribed": len(self._on_wire),
            "frames": self.frames,
            "packets": self.packets,
            "reconnects": self.reconnects,
            "last_error": self.last_error,
            "connected_for_s": None if since is None else round(self._clock() - since, 1),
        }

    # -- the reconnect loop ----------------------------------------------------------------
    async def run(self) -> None:
        """Connect and reconnect until closed or a fatal verdict."""
        try:
            while not self._closing:
                failure, healthy_for = await self._session()
                if self._closing:
                    break
                verdict = classify(failure)
                if verdict.action is Action.RECONNECT:
                    self.reconnects += 1
                    continue
                self._record(verdict)
                if verdict.action is Action.RECHECK and not await self._token_changed():
                    verdict = Verdict(Action.STOP, verdict.failure)
                if verdict.action is Action.STOP:
                    self.state = State.STOPPED
                    self.fatal_error = verdict.message
                    log.error("feed connection %d stopped: %s", self.index, verdict.message,
                              extra={"connection": self.index})
                    return
                if verdict.action is Action.REAUTH:
                    await self._reauthenticate()
                delay = self._backoff.next_delay(
                    long=verdict.action is Action.BACKOFF_LONG, healthy_for=healthy_for
                )
                self.state = State.BACKOFF
                log.warning("feed connection %d: %s; reconnecting in %.2fs", self.index,
                            verdict.message, delay, extra={"connection": self.index})
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
                self.reconnects += 1
        finally:
            if self.state is not State.STOPPED:
                self.state = State.CLOSED

    def _record(self, verdict: Verdict) -> None:
        kind = verdict.failure.kind.value
        self.failures[kind] = self.failures.get(kind, 0) + 1
        self.last_error = verdict.message

    async def _token_changed(self) -> bool:
        """808/809 with the token this session used: re-read it once; only a different token
        (rotated in the secret, or renewed) is worth another connect."""
        used = self._session_credentials
        await self._reauthenticate()
        current = self._tokens.current
        return current is not None and used is not None and current != used

    async def _reauthenticate(self) -> None:
        try:
            await self._tokens.refresh(self._tokens.generation)
        except Exception as exc:  # keep retrying with backoff; the heartbeat shows why
            self.last_error = f"token re-read failed: {exc}"
            log.error("feed connection %d: token re-read failed: %s", self.index, exc)

    async def _session(self) -> tuple[Failure, float]:
        """One connection's life; returns how it ended and how long it was up."""
        self.state = State.CONNECTING
        self._session_failure = None
        try:
            credentials = await self._tokens.get()
            self._session_credentials = credentials
        except Exception as exc:
            return Failure(Kind.OTHER, detail=f"credentials unavailable: {exc}"), 0.0
        url = feed_url(self._base_url, credentials)
        try:
            ws = await connect(
                url,
                open_timeout=self._open_timeout,
                close_timeout=self._close_timeout,
                ping_interval=self._ping_interval,
                ping_timeout=self._ping_interval,
                compression=None,  # binary ticks do not compress; deflate would cost CPU
                max_size=2**20,
            )
        except InvalidStatus as exc:
            return Failure(Kind.HANDSHAKE, exc.response.status_code), 0.0
        except InvalidURI as exc:
            return Failure(Kind.CONFIG, detail=mask_url(str(exc))), 0.0
        except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
            return Failure(Kind.NETWORK, detail=mask_url(f"{type(exc).__name__}: {exc}")), 0.0
        if self._closing:
            await ws.close()
            return Failure(Kind.CLOSED, detail="closing"), 0.0
        self._ws = ws
        self._on_wire = {}
        self.connected_at = self.last_frame_at = self._clock()
        self.state = State.CONNECTED
        log.info("feed connection %d connected to %s", self.index, mask_url(url),
                 extra={"connection": self.index})
        sender = asyncio.create_task(self._sender(ws), name=f"feed-{self.index}-sender")
        watchdog = asyncio.create_task(self._watchdog(ws), name=f"feed-{self.index}-watchdog")
        try:
            failure = await self._read(ws)
        except Exception as exc:  # a bug must not kill the reconnect loop
            log.exception("feed connection %d: reader failed", self.index)
            failure = Failure(Kind.OTHER, detail=f"{type(exc).__name__}: {exc}")
        finally:
            for task in (sender, watchdog):
                task.cancel()
            results = await asyncio.gather(sender, watchdog, return_exceptions=True)
            self._ws = None
            with contextlib.suppress(OSError, TimeoutError):
                await ws.close()
        for result in results:
            if isinstance(result, Exception) and self._session_failure is None:
                self._session_failure = Failure(Kind.OTHER, detail=repr(result))
        healthy_for = self._clock() - (self.connected_at or self._clock())
        self.connected_at = None
        return self._session_failure or failure, healthy_for

    async def _read(self, ws: ClientConnection) -> Failure:
        add_frame = self._coalescer.add_frame
        clock = self._clock
        frames = self.frames
        packets = self.packets
        try:
            async for message in ws:
                if isinstance(message, str):
                    self._on_text(message)
                    continue
                frames += 1
                self.frames = frames
                self.last_frame_at = clock()
                count, error, others = add_frame(message)
                packets += count
                self.packets = packets
                if error is not None:
                    self._on_decode_error(error)
                if others is not None:
                    failure = self._on_other_packets(others)
                    if failure is not None:
                        return failure
        except ConnectionClosed as exc:
            return Failure(Kind.CLOSED, detail=_close_detail(exc))
        return Failure(Kind.CLOSED, detail="closed by the server")

    def _on_other_packets(self, others: list[Packet]) -> Failure | None:
        for packet in others:
            if type(packet) is Disconnect:
                return Failure(Kind.DISCONNECT, packet.reason)
        return None

    def _on_text(self, text: str) -> None:
        self.text_frames += 1
        if self.text_frames <= _LOG_FIRST:
            log.warning("feed connection %d: text frame from the feed: %s", self.index,
                        text[:500], extra={"connection": self.index})

    def _on_decode_error(self, error: str) -> None:
        self.decode_errors += 1
        if self.decode_errors <= _LOG_FIRST or self.decode_errors % 10_000 == 0:
            log.warning("feed connection %d: bad frame (%d so far): %s", self.index,
                        self.decode_errors, error, extra={"connection": self.index})

    async def _sender(self, ws: ClientConnection) -> None:
        """Keep the wire's subscriptions equal to the desired keys (<= 100 per message)."""
        while True:
            self._changed.clear()
            changes = diff(self._desired, self._on_wire.keys())
            if changes:
                for message in request_messages(self.mode, changes):
                    await ws.send(encode(message))
                    self.subscribe_messages += 1
                    self.largest_message = max(self.largest_message, message["InstrumentCount"])
                for key in changes.unsubscribe:
                    self._on_wire.pop(key, None)
                self._on_wire.update(dict.fromkeys(changes.subscribe))
                log.info("feed connection %d: +%d -%d instruments (%d on this connection)",
                         self.index, len(changes.subscribe), len(changes.unsubscribe),
                         len(self._on_wire), extra={"connection": self.index})
            await self._changed.wait()

    async def _watchdog(self, ws: ClientConnection) -> None:
        timeout = self.silence_timeout
        check = max(0.005, min(timeout / 4, 1.0))
        while True:
            await asyncio.sleep(check)
            last = self.last_frame_at or self._clock()
            silent_for = self._clock() - last
            if silent_for >= timeout and self._on_wire and self._market_open():
                self._session_failure = Failure(
                    Kind.SILENCE, detail=f"no data for {silent_for:.1f}s while the market is open"
                )
                await ws.close(code=1001, reason="silent")
                return


def _close_detail(exc: ConnectionClosed) -> str:
    frame = exc.rcvd or exc.sent
    if frame is None:
        return "connection lost"
    return f"close code {frame.code}" + (f" ({frame.reason})" if frame.reason else "")
