"""The streamer service: lease, key source, feed connections, sink and heartbeat, composed.

Lifecycle:
1. Read the credentials (missing ones fail before anything starts).
2. Wait for the single-writer lease (a second instance waits here and says so).
3. Run under one TaskGroup: the key source (its changes re-plan the connections), one task per
   feed connection slot in use, the Redis sink's flush loop, the heartbeat, the lease keeper,
   and the market-close timer.
4. On stop (SIGTERM/SIGINT, market close + grace, lost lease) within `shutdown_timeout`:
   stop following the registry, send RequestCode 12 and close every connection, flush what the
   coalescer still holds, write a final "stopped" heartbeat, release the lease.

A connection that got a fatal verdict (806/810; 808/809 when a re-read gave the same token)
stays stopped for the life of the process, visible in the heartbeat; the others keep streaming.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from core.backoff import Backoff
from core.dhan_token import token_expiry
from streamer.coalescer import Coalescer
from streamer.connection import FeedConnection, State, TokenKeeper
from streamer.errors import LeaseLostError
from streamer.heartbeat import Heartbeat, Snapshot, emf_to_stdout
from streamer.keysource import DesiredKeys, KeySource
from streamer.lease import Lease
from streamer.planner import EMPTY_ASSIGNMENT, Assignment, assign
from streamer.settings import Credentials, CredentialSource, Settings
from streamer.sink import RedisSink
from streamer.tokenwatch import TokenWatcher

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_LEASE_LOST = 1


def utc_now() -> datetime:
    return datetime.now(UTC)


class Streamer:
    def __init__(
        self,
        settings: Settings,
        *,
        redis: Redis,
        credentials: CredentialSource,
        on_credentials: Callable[[Credentials], None] | None = None,
        now: Callable[[], datetime] = utc_now,
        backoff_rng: Callable[[], float] = random.random,
    ) -> None:
        self.settings = s = settings
        self._redis = redis
        self._now = now
        self._backoff_rng = backoff_rng
        self.coalescer = Coalescer()
        self.tokens = TokenKeeper(credentials, on_new=on_credentials)
        self.tokens.add_listener(self._wake_connections)
        self.tokenwatch = TokenWatcher(redis=redis, tokens=self.tokens,
                                       switch=self.switch_token, poll=s.token_poll)
        self.token_switches = 0
        self.sink = RedisSink(redis=redis, coalescer=self.coalescer, interval=s.flush_interval,
                              buffer_max=s.buffer_max)
        self.lease = Lease(redis=redis, owner=s.instance_id, ttl=s.lease_ttl)
        self.keysource = KeySource(redis=redis, on_change=self.apply, static_keys=s.keys,
                                   refresh=s.keys_refresh, grace=s.demand_grace,
                                   capacity=s.max_connections * s.per_connection)
        self.heartbeat = Heartbeat(redis=redis, snapshot=self.snapshot,
                                   interval=s.heartbeat_interval,
                                   emit=emf_to_stdout if s.emit_metrics else _discard)
        self.connections: dict[int, FeedConnection] = {}
        self._connection_tasks: dict[int, asyncio.Task[None]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self.plan: Assignment = EMPTY_ASSIGNMENT
        self.rejected: list[str] = []
        self.state = "starting"
        self.stop_reason: str | None = None
        self.exit_code = EXIT_OK
        self._stop = asyncio.Event()
        self._tg: asyncio.TaskGroup | None = None

    # -- control ---------------------------------------------------------------------------
    def request_stop(self, reason: str) -> None:
        if not self._stop.is_set():
            log.info("stopping: %s", reason)
            self.stop_reason = reason
            self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def market_open(self) -> bool:
        return self.settings.hours.is_open(self._now())

    def apply(self, desired: DesiredKeys) -> None:
        """Re-plan the connections for a new set of desired keys (called by the key source)."""
        s = self.settings
        plan = assign(desired.keys, previous=self.plan, max_connections=s.max_connections,
                      per_connection=s.per_connection)
        rejected = [str(k) for k in plan.rejected]
        if rejected and rejected != self.rejected:
            log.warning("%d keys rejected: over %d connections x %d instruments (first: %s)",
                        len(rejected), s.max_connections, s.per_connection, rejected[0])
        self.plan, self.rejected = plan, rejected
        self.coalescer.set_symbols(desired.symbols)
        if self._tg is None or self.stopping:
            return
        for index in range(s.max_connections):
            keys = plan.slots[index] if index < len(plan.slots) else ()
            connection = self.connections.get(index)
            if keys and connection is None:
                connection = self.connections[index] = self._new_connection(index)
                connection.set_keys(keys)
                self._connection_tasks[index] = self._tg.create_task(
                    connection.run(), name=f"feed-{index}"
                )
            elif keys and connection is not None:
                connection.set_keys(keys)
            elif connection is not None:
                del self.connections[index]
                task = self._connection_tasks.pop(index)
                retire = self._tg.create_task(self._retire(connection, task))
                self._retiring.add(retire)
                retire.add_done_callback(self._retiring.discard)

    def _wake_connections(self, _credentials: Credentials) -> None:
        # A connection backing off after 807 (its token died with the renewal) tries the new
        # token now instead of at the end of its backoff.
        for connection in self.connections.values():
            connection.wake()

    async def switch_token(self) -> int:
        """Reconnect each connection still on another token with the current one, one at a
        time (at most one connection is between sockets at any moment); returns how many."""
        current = self.tokens.current
        switched = 0
        for index in sorted(self.connections):
            connection = self.connections.get(index)
            if (connection is None or self.stopping or connection.state is not State.CONNECTED
                    or connection.session_credentials == current):
                continue  # one between sockets takes the current token when it reconnects
            log.info("feed connection %d: reconnecting with the renewed token", index)
            switched += 1
            if not await connection.switch():
                log.warning("feed connection %d did not reconnect with the renewed token in "
                            "time; it keeps retrying on its own", index)
        self.token_switches += switched
        return switched

    def _token_status(self) -> dict[str, Any]:
        current = self.tokens.current
        expiry = token_expiry(current.access_token.value) if current else None
        return {
            "expires_at": expiry,
            "seconds_left": None if expiry is None else round(expiry - self._now().timestamp()),
            "changes": self.tokens.changes,
            "switches": self.token_switches,
        }

    def _new_connection(self, index: int) -> FeedConnection:
        s = self.settings
        backoff = Backoff(base=s.backoff_base, cap=s.backoff_max, long_floor=s.backoff_long,
                          healthy_after=s.healthy_after, rng=self._backoff_rng)
        return FeedConnection(
            index=index, feed_url=s.feed_url, mode=s.mode, tokens=self.tokens,
            coalescer=self.coalescer, backoff=backoff, silence_timeout=s.silence_timeout,
            market_open=self.market_open,
        )  # fmt: skip

    async def _retire(self, connection: FeedConnection, task: asyncio.Task[None]) -> None:
        log.info("feed connection %d has no keys left; closing it", connection.index)
        await connection.close()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    # -- status ----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        connections = [self.connections[i] for i in sorted(self.connections)]
        last_frames = [c.last_frame_at for c in connections if c.last_frame_at is not None]
        by_kind: dict[str, int] = {}
        for c in connections:
            for kind, count in c.failures.items():
                by_kind[kind] = by_kind.get(kind, 0) + count
        fatal = [f"connection {c.index}: {c.fatal_error}" for c in connections if c.fatal_error]
        state = self.state
        if state == "running" and not self.plan.total:
            state = "idle"
        return Snapshot(
            instance_id=self.settings.instance_id,
            state=state,
            mode=self.settings.mode,
            connections=[c.status() for c in connections],
            instruments=self.plan.total,
            ticks=self.coalescer.ticks,
            last_tick_age=time.monotonic() - max(last_frames) if last_frames else None,
            errors={
                "feed": sum(by_kind.values()),
                "feed_by_kind": by_kind,
                "decode": sum(c.decode_errors for c in connections),
                "redis": self.sink.errors,
                "redis_last_error": self.sink.last_error,
                "dropped_updates": self.sink.dropped,
                "stale_ticks": self.coalescer.stale,
                "invalid_keys": self.keysource.invalid,
                "registry": self.keysource.errors,
                "last_fatal": "; ".join(fatal) or None,
            },
            redis_buffer=self.sink.buffered,
            rejected=self.rejected,
            market_open=self.market_open(),
            carried=self._carried(),
            token=self._token_status(),
        )

    def _carried(self) -> dict[str, int]:
        desired = self.keysource.current
        return {
            "streams": desired.streams if desired else 0,
            "viewer_keys": desired.demand if desired else 0,
            "lingering": len(desired.lingering) if desired else 0,
            "cache_wipes": self.keysource.wipes,
        }

    # -- lifecycle -------------------------------------------------------------------------
    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        await self.tokens.get()
        self.state = "waiting_for_lease"
        if not await self.lease.acquire(self._stop):
            return EXIT_OK
        log.info("lease acquired; streaming as %s (mode %s, feed %s)", self.settings.instance_id,
                 self.settings.mode, self.settings.feed_url)
        self.state = "running"
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            background = [
                self._spawn(tg, self.keysource.run(), "keysource"),
                self._spawn(tg, self.tokenwatch.run(), "tokenwatch"),
                self._spawn(tg, self.heartbeat.run(), "heartbeat"),
                self._spawn(tg, self._keep_lease(), "lease"),
                self._spawn(tg, self._stop_after_close(), "market-close"),
            ]
            sink = self._spawn(tg, self.sink.run(), "sink")
            await self._stop.wait()
            self.state = "stopping"
            try:
                async with asyncio.timeout(self.settings.shutdown_timeout):
                    await self._shutdown(background, sink)
            except TimeoutError:
                log.error("graceful shutdown overran %.1fs; exiting anyway",
                          self.settings.shutdown_timeout)
            await _cancel([*background, sink, *self._connection_tasks.values(), *self._retiring])
        return self.exit_code

    @staticmethod
    def _spawn(
        tg: asyncio.TaskGroup, coro: Coroutine[Any, Any, None], name: str
    ) -> asyncio.Task[None]:
        return tg.create_task(coro, name=name)

    async def _shutdown(self, background: list[asyncio.Task[None]],
                        sink: asyncio.Task[None]) -> None:
        await _cancel(background)
        connections = list(self.connections.values())
        await asyncio.gather(*(c.close() for c in connections))
        await asyncio.gather(*self._connection_tasks.values(), *self._retiring,
                             return_exceptions=True)
        await _cancel([sink])
        if self.exit_code == EXIT_LEASE_LOST:
            return  # another instance writes now: do not touch its keys or heartbeat
        if not await self.sink.flush():
            log.error("final flush failed; %d keys not written", self.sink.buffered)
        self.state = "stopped"
        await self.heartbeat.beat()
        await self.lease.release()
        log.info("stopped (%s): %d ticks, %d keys written", self.stop_reason,
                 self.coalescer.ticks, self.sink.written)

    async def _keep_lease(self) -> None:
        try:
            await self.lease.keep()
        except LeaseLostError as exc:
            log.error("%s; stopping without writing further", exc)
            self.exit_code = EXIT_LEASE_LOST
            self.request_stop("lease lost")

    async def _stop_after_close(self) -> None:
        if not self.settings.auto_stop:
            return
        deadline = self.settings.hours.stop_at(self._now())
        if deadline is None:
            return
        log.info("will stop at %s (market close + grace)", deadline.isoformat())
        while (left := (deadline - self._now()).total_seconds()) > 0:
            await asyncio.sleep(min(left, 60.0))  # re-check: the wall clock may jump
        self.request_stop("market closed")


def _discard(_line: bytes) -> None:
    """Where EMF lines go when no CloudWatch agent reads stdout (local runs)."""


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and wait, cancelling again if needed: our loops guard against redis-py losing a
    cancellation (streamer.aio), but shutdown must not depend on every library doing so."""
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=0.1)
