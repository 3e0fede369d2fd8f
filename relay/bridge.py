"""The relay bridge's asyncio shell: a channel reader and a windower over `realtime`.

A reader task SUBSCRIBEs to `live_ltp_updates` and feeds a `realtime.window.Conflator`. At each
window's end the windower
  1. writes the window's values to `ws:latest` and only then reads which keys each shard's
     connections want (`realtime.directory`: no tick falls between snapshot and stream),
  2. invokes one fan-out per shard that needs one (`realtime.window.plan_window`), naming the
     wanted keys the feed no longer carries, whose subscribers the fan-out tells,
  3. picks the next window so that the expected PostToConnection rate stays under the budget.
A window whose Redis calls fail goes back into the conflator, and so do the updates of a failed
invoke: the next window sends them unless a newer tick of the key replaced them.
A third task beats every `heartbeat_seconds`, windows or not (`relay.heartbeat`): status in
Redis, one EMF line, the liveness file.
After any Redis reconnect the reader resubscribes and re-sends the current price of every
subscribed key whose cached value differs from the last one seen, so no latest value is lost.
The reader never dies silently (rails #27659): every error is logged, counted in `stats`, and
retried with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, cast

from core import names
from core.backoff import Backoff
from core.messages import dumps, loads
from realtime.contracts import BridgeStatus, FanoutPayload
from realtime.directory import ShardDirectory
from realtime.snapshot import resync_updates
from realtime.window import (
    MAX_PAYLOAD_BYTES,
    Conflator,
    expected_posts,
    next_window,
    plan_window,
)
from relay import heartbeat
from relay.invoke import Invoker
from relay.settings import DEFAULT_BUDGET_PER_SECOND

log = logging.getLogger(__name__)

# How often every shard is invoked even without updates (sweeps expired connections).
HOUSEKEEPING_SECONDS = 60.0
HEARTBEAT_SECONDS = 10.0
# A dropped key is announced to a shard once, and again after this long if its subscribers are
# still there (the fan-out's post or unsubscribe failed): not once per window until it lands.
REANNOUNCE_SECONDS = 30.0


@dataclass(slots=True)
class BridgeStats:
    messages: int = 0
    updates: int = 0
    windows: int = 0
    invocations: int = 0
    invoke_errors: int = 0
    requeued: int = 0  # updates put back into the next window (failed invoke or window)
    reader_errors: int = 0
    reconnects: int = 0
    resynced: int = 0
    window_seconds: float = 0.0
    expected_posts_per_second: float = 0.0
    last_error: str = ""
    last_window_at: float = 0.0
    heartbeat_errors: int = 0  # beats whose status did not reach Redis
    history: list[dict[str, float]] = field(default_factory=list)


class RelayBridge:
    def __init__(
        self,
        *,
        redis: Any,
        invoker: Invoker,
        budget_per_second: float = DEFAULT_BUDGET_PER_SECOND,
        min_window: float = 0.25,
        max_window: float = 2.0,
        housekeeping_seconds: float = HOUSEKEEPING_SECONDS,
        backoff_base: float = 0.5,
        backoff_cap: float = 15.0,
        healthy_after: float = 30.0,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
        on_window: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        emit: Callable[[bytes], None] = heartbeat.discard,
        liveness_file: str = "",
        stall_seconds: float = heartbeat.STALL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`emit` receives each beat's EMF line (`relay.heartbeat.emf_to_stdout` in AWS);
        `liveness_file` is touched by each beat (empty: none)."""
        self._redis = redis
        self._directory = ShardDirectory(redis)
        self._invoker = invoker
        self._budget = budget_per_second
        self._min = min_window
        self._max = max_window
        self._housekeeping = housekeeping_seconds
        self._backoff = Backoff(base=backoff_base, cap=backoff_cap, healthy_after=healthy_after,
                                min_fraction=0.5)
        self._max_payload = max_payload_bytes
        self._on_window = on_window
        self.conflator = Conflator()
        self.stats = BridgeStats(window_seconds=min_window)
        self.window = min_window
        self._sequence = 0
        self._last_housekeeping = 0.0
        self._heartbeat_seconds = heartbeat_seconds
        self._emit = emit
        self._liveness_file = liveness_file
        self._stall_seconds = stall_seconds
        self._clock = clock
        self._emitted = dict.fromkeys(heartbeat.COUNTERS, 0)  # counters of the last EMF line
        self._window_started: float | None = None  # clock() while a window is closing
        self._resync_needed = False
        self._announced: dict[tuple[int, str], float] = {}  # (shard, dropped key) -> when
        self.subscribed = asyncio.Event()

    @property
    def redis(self) -> Any:
        return self._redis

    async def close(self) -> None:
        """Close the Redis client the bridge was built with (after `run` has ended)."""
        await self._redis.aclose()

    # --- run ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Reader, windower and heartbeat until cancelled; all are cancelled and awaited on the
        way out."""
        tasks = (asyncio.create_task(self._read_forever(), name="bridge-reader"),
                 asyncio.create_task(self._window_forever(), name="bridge-windower"),
                 asyncio.create_task(self._beat_forever(), name="bridge-heartbeat"))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- reader -------------------------------------------------------------------------------

    def _mark_reconnected(self, connection: Any) -> None:
        # redis-py reconnects a pubsub connection by itself and resubscribes (its own callback
        # runs first); messages published meanwhile are gone, so the prices must be re-read.
        self.stats.reconnects += 1
        self._resync_needed = True
        self._directory.forget()

    async def _read_forever(self) -> None:
        while True:
            healthy_since = time.monotonic()
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(names.LIVE_LTP_CHANNEL)
                    await self._confirmed(pubsub)
                    if pubsub.connection is not None:
                        pubsub.connection.register_connect_callback(self._mark_reconnected)
                    await self.resync()
                    self.subscribed.set()
                    while True:
                        _raise_if_cancelling()
                        message = await pubsub.get_message(ignore_subscribe_messages=True,
                                                           timeout=1.0)
                        if message is not None and message.get("type") == "message":
                            self._ingest(message["data"])
                        if self._resync_needed:
                            self._resync_needed = False
                            await self.resync()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: report, back off, resubscribe
                _raise_if_cancelling()
                self.subscribed.clear()
                self.stats.reader_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                delay = self._backoff.next_delay(healthy_for=time.monotonic() - healthy_since)
                log.warning("bridge reader failed (%s); resubscribing in %.2fs",
                            self.stats.last_error, delay)
                await asyncio.sleep(delay)

    async def _confirmed(self, pubsub: Any) -> None:
        """Wait for Redis to confirm the SUBSCRIBE: only then is nothing missed from here on."""
        while True:
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            if message.get("type") == "subscribe":
                return
            if message.get("type") == "message":
                self._ingest(message["data"])

    def _ingest(self, raw: bytes | str) -> None:
        self.stats.messages += 1
        try:
            message = loads(raw)
        except ValueError:
            log.warning("ignored a non-JSON message on %s", names.LIVE_LTP_CHANNEL)
            return
        self.stats.updates += self.conflator.add_message(message)

    async def resync(self) -> int:
        """Re-send cached prices of subscribed keys that moved since the last value seen."""
        demand = await self._directory.publish_and_read()
        now = await self._directory.snapshot(sorted(demand.keys()))
        resent = sum(self.conflator.add(u) for u in resync_updates(now, self.conflator.get))
        self.stats.resynced += resent
        return resent

    # --- windows ------------------------------------------------------------------------------

    async def _window_forever(self) -> None:
        deadline = time.monotonic() + self.window
        while True:
            _raise_if_cancelling()
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            closing = time.monotonic()
            self._window_started = self._clock()
            try:
                await self.close_window()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed window must not end the bridge
                _raise_if_cancelling()
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("bridge window failed")
            finally:
                self._window_started = None
            # Windows are measured from their start, so a slow close does not add drift.
            deadline = closing + self.window

    async def close_window(self) -> list[FanoutPayload]:
        """Close the current window: publish its values, invoke the fan-outs, adapt."""
        window = self.conflator.drain()
        encoded = {k: dumps(dict(u)) for k, u in window.items()}
        try:
            demand = await self._directory.publish_and_read(encoded)
            pending = await self._directory.take_pending()
        except BaseException:
            # Redis failed before anything was invoked: the window waits for the next one
            # (where a newer tick of a key replaces it) instead of being dropped.
            self._requeue(window.values())
            raise
        now = time.time()
        housekeeping = now - self._last_housekeeping >= self._housekeeping
        if housekeeping:
            self._last_housekeeping = now
        self._sequence += 1
        payloads = plan_window(window, demand.refs, sequence=self._sequence, published_at=now,
                               pending=pending, housekeeping=housekeeping,
                               max_bytes=self._max_payload,
                               sizes={k: len(v) for k, v in encoded.items()},
                               refused=self._to_announce(demand.refused(), now))
        results = await asyncio.gather(*(self._invoker.invoke(p) for p in payloads),
                                       return_exceptions=True)
        for payload, result in zip(payloads, results, strict=True):
            if isinstance(result, BaseException):
                self.stats.invoke_errors += 1
                self.stats.last_error = f"invoke: {type(result).__name__}: {result}"
                log.error("fan-out invoke failed: %s", result)
                # Back into the next window (a newer tick of a key replaces it there): a failed
                # invoke must not lose a subscribed key's newest value. Shards that did get it
                # drop the repeat by their version claims.
                self._requeue(payload["updates"])
        posts = expected_posts(window, demand.refs, demand.live)
        self.stats.windows += 1
        self.stats.invocations += len(payloads)
        self.stats.last_window_at = now
        self.stats.expected_posts_per_second = posts / self.window
        previous = self.window
        self.window = next_window(self.window, posts, budget_per_second=self._budget,
                                  minimum=self._min, maximum=self._max)
        self.stats.window_seconds = self.window
        record = {"window": previous, "updates": float(len(window)),
                  "invocations": float(len(payloads)), "expected_posts": float(posts)}
        self.stats.history.append(record)
        del self.stats.history[:-120]
        if self._on_window is not None:
            maybe = self._on_window({**record, "next_window": self.window})
            if maybe is not None:
                await maybe
        return payloads

    def _to_announce(self, refused: Mapping[int, list[str]], now: float) -> dict[int, list[str]]:
        """The dropped keys not announced to their shard in the last `REANNOUNCE_SECONDS`."""
        self._announced = {k: t for k, t in self._announced.items()
                           if now - t < REANNOUNCE_SECONDS}
        due: dict[int, list[str]] = {}
        for shard, keys in refused.items():
            fresh = [k for k in keys if (shard, k) not in self._announced]
            if fresh:
                due[shard] = fresh
                self._announced.update(((shard, k), now) for k in fresh)
        return due

    def _requeue(self, updates: Iterable[Mapping[str, Any]]) -> None:
        for update in updates:
            self.stats.requeued += self.conflator.add(update)

    # --- heartbeat ----------------------------------------------------------------------------

    async def _beat_forever(self) -> None:
        while True:
            _raise_if_cancelling()
            await self.beat()
            await asyncio.sleep(self._heartbeat_seconds)

    def stalled(self) -> bool:
        """The windower has been inside one window for longer than `stall_seconds`."""
        started = self._window_started
        return started is not None and self._clock() - started > self._stall_seconds

    async def beat(self) -> bool:
        """One heartbeat (`relay.heartbeat`); True when the status reached Redis. Never
        raises but for cancellation: a beat that fails is counted and logged."""
        if self._liveness_file and not self.stalled():
            heartbeat.touch(self._liveness_file)
        now = time.time()
        status = self.status(now)
        try:
            await self._directory.write_status(status)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - Redis down: the next beat tries again
            _raise_if_cancelling()
            self.stats.heartbeat_errors += 1
            log.warning("bridge heartbeat not written (%s: %s)", type(exc).__name__, exc)
            return False
        try:
            self._emit(heartbeat.emf_line(status, previous=self._emitted,
                                          timestamp_ms=int(now * 1000)))
        except Exception as exc:  # noqa: BLE001 - a closed stdout must not end the bridge
            log.warning("bridge metrics not emitted (%s: %s)", type(exc).__name__, exc)
            return True
        self._emitted = heartbeat.counters(status)
        return True

    def status(self, now: float | None = None) -> BridgeStatus:
        """What the heartbeat says: enough to tell a stuck or failing bridge from a quiet one."""
        stats = asdict(self.stats)
        stats.pop("history")
        return cast(BridgeStatus, {"time": time.time() if now is None else now,
                                   "subscribed": self.subscribed.is_set(), **stats})


def _raise_if_cancelling() -> None:
    """Honour a cancel that a client library swallowed or turned into another error (seen:
    the windower kept looping after `cancel()` while inside a Redis call). Checked at the top
    of every loop and in catch-all handlers, or shutdown waits forever for a looping task."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
