"""The relay bridge: `live_ltp_updates` -> conflated windows -> one fan-out per active shard.

Long-lived, beside the streamer. A reader task SUBSCRIBEs to the channel and feeds a
`Conflator` (newest value per key BY VERSION, never the first of a window: OpenAlgo's expiry-day
lesson). At each window's end the windower
  1. writes the window's values to `ws:latest` (the snapshot's source of versions),
  2. only then reads which keys each shard's connections want (so a subscription recorded
     before step 2 gets this window, and one recorded after it found step 1's values in its
     snapshot: no tick falls between snapshot and stream),
  3. invokes one fan-out per shard with updates for it (plus shards with carried-over updates,
     plus every shard now and then for housekeeping), splitting payloads over 1 MB,
  4. picks the next window so that the expected PostToConnection rate stays under the budget.
After any Redis reconnect the reader resubscribes and re-sends the current price of every
subscribed key whose cached value differs from the last one seen, so no latest value is lost.
The reader never dies silently (rails #27659): every error is logged, counted in `stats`, and
retried with jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol, cast

from core import names
from core.messages import BATCH_UPDATE, Update, dumps, loads, parse_price

log = logging.getLogger(__name__)

# Lambda's async invoke takes up to 1 MB (1,048,576 bytes); stay clear of the edge.
MAX_PAYLOAD_BYTES = 900_000
DEFAULT_BUDGET_PER_SECOND = 5000.0
# How often every shard is invoked even without updates (sweeps expired connections).
HOUSEKEEPING_SECONDS = 60.0
HEARTBEAT_SECONDS = 10.0
# Refs are re-read at least this often even when the epoch says nothing changed.
REFS_MAX_AGE_SECONDS = 30.0


class Conflator:
    """Newest update per key by version within one window."""

    def __init__(self) -> None:
        self._latest: dict[str, Update] = {}

    def __len__(self) -> int:
        return len(self._latest)

    def add(self, update: Mapping[str, Any]) -> bool:
        key = update.get("key")
        version = update.get("version")
        if not isinstance(key, str) or not isinstance(version, int) or isinstance(version, bool):
            return False
        current = self._latest.get(key)
        if current is not None and current["version"] >= version:
            return False
        self._latest[key] = cast(Update, update)
        return True

    def add_message(self, message: Any) -> int:
        """Feed one channel message (batch form); returns how many updates were kept."""
        if not isinstance(message, dict) or message.get("type") != BATCH_UPDATE:
            return 0
        updates = message.get("updates")
        if not isinstance(updates, list):
            return 0
        return sum(self.add(u) for u in updates if isinstance(u, dict))

    def get(self, key: str) -> Update | None:
        return self._latest.get(key)

    def drain(self) -> dict[str, Update]:
        window, self._latest = self._latest, {}
        return window


def next_window(current: float, expected_posts: float, *, budget_per_second: float,
                minimum: float, maximum: float, headroom: float = 1.1,
                shrink: float = 0.8) -> float:
    """The next window length keeping `expected_posts / window` under the budget.

    Grows at once when the budget needs it; shrinks gradually (by `shrink` per window) so a
    quiet moment does not swing the window down and straight back up.
    """
    required = expected_posts * headroom / budget_per_second
    target = required if required >= current else max(required, current * shrink)
    return min(maximum, max(minimum, target))


def expected_posts(updated: Iterable[str], refs: Mapping[int, Mapping[str, int]],
                   live: Mapping[int, int]) -> int:
    """Upper bound of connections with >= 1 changed key: per shard min(connections, sum refs)."""
    keys = set(updated)
    total = 0
    for shard, counts in refs.items():
        connections = live.get(shard, 0)
        wanted = 0
        for key in keys & counts.keys():
            wanted += counts[key]
            if wanted >= connections:
                break
        total += min(connections, wanted)
    return total


def split_payloads(base: dict[str, Any], updates: list[Update], *,
                   max_bytes: int = MAX_PAYLOAD_BYTES,
                   sizes: Mapping[str, int] | None = None) -> list[dict[str, Any]]:
    """One payload, or as many as keep each under `max_bytes` (Lambda's async limit).

    `sizes` (encoded bytes per update key, when the caller has them) spares encoding the
    whole payload just to learn that it fits, which is almost always."""
    whole = {**base, "updates": updates}
    if sizes is not None:
        estimate = len(dumps(base)) + 16 + sum(sizes[u["key"]] + 1 for u in updates)
        if estimate <= max_bytes:
            return [whole]
    size = len(dumps(whole))
    if size <= max_bytes or len(updates) <= 1:
        return [whole]
    parts = -(-size // max_bytes) + 1
    step = -(-len(updates) // parts)
    return [{**base, "updates": updates[i:i + step]} for i in range(0, len(updates), step)]


class Invoker(Protocol):
    """Starts one fan-out; must not wait for it to finish (Lambda `InvocationType=Event`)."""

    async def invoke(self, payload: dict[str, Any]) -> None: ...


class LambdaInvoker:
    """`lambda_client` is boto3's `lambda` client (its stubs' kwargs-only signature defeats a
    structural Protocol, hence Any). Its own threads, so a window's invokes run side by side."""

    def __init__(self, *, lambda_client: Any, function_name: str, threads: int = 16) -> None:
        self._client = lambda_client
        self._function = function_name
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="invoke")

    async def invoke(self, payload: dict[str, Any]) -> None:
        call = partial(self._client.invoke, FunctionName=self._function,
                       InvocationType="Event", Payload=dumps(payload))
        await asyncio.get_running_loop().run_in_executor(self._executor, call)


class LocalInvoker:
    """Runs the fan-out code in worker threads, one run at a time per shard.

    When a shard's fan-out is still running as its next window closes, the new window waits
    in one slot per shard and later windows are folded into it (newest version per key): a
    machine that cannot post as fast as the windows close gets fewer, fuller messages and a
    bounded delay instead of an ever-growing queue of stale windows.
    """

    def __init__(self, *, run: Callable[[dict[str, Any]], Any], threads: int = 8) -> None:
        self._run = run
        # Not the default executor: busy fan-outs must not delay the gateway's handler calls.
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="fanout-shard")
        self._running: set[int] = set()
        self._waiting: dict[int, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.results: list[Any] = []
        self.errors = 0
        self.folded = 0  # windows merged into a waiting one because the shard was busy

    async def invoke(self, payload: dict[str, Any]) -> None:
        shard = int(payload["shard"])
        if shard in self._running:
            waiting = self._waiting.get(shard)
            if waiting is None:
                self._waiting[shard] = {**payload, "updates": list(payload["updates"])}
            else:
                self._waiting[shard] = fold_payloads(waiting, payload)
                self.folded += 1
            return
        self._running.add(shard)
        task = asyncio.create_task(self._drive(shard, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self, shard: int, payload: dict[str, Any] | None) -> None:
        loop = asyncio.get_running_loop()
        try:
            while payload is not None:
                try:
                    result = await loop.run_in_executor(self._executor, self._run, payload)
                except Exception:
                    self.errors += 1
                    log.exception("local fan-out of shard %s failed", shard)
                else:
                    self.results.append(result)
                    if len(self.results) > 1000:
                        del self.results[:500]
                payload = self._waiting.pop(shard, None)
        finally:
            self._running.discard(shard)

    async def drain(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def fold_payloads(older: dict[str, Any], newer: dict[str, Any]) -> dict[str, Any]:
    """One payload holding the newest version of every key of both."""
    merged = Conflator()
    for update in (*older["updates"], *newer["updates"]):
        merged.add(update)
    return {**newer, "updates": list(merged.drain().values())}


@dataclass(slots=True)
class BridgeStats:
    messages: int = 0
    updates: int = 0
    windows: int = 0
    invocations: int = 0
    invoke_errors: int = 0
    reader_errors: int = 0
    reconnects: int = 0
    resynced: int = 0
    window_seconds: float = 0.0
    expected_posts_per_second: float = 0.0
    last_error: str = ""
    last_window_at: float = 0.0
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
    ) -> None:
        self._redis = redis
        self._invoker = invoker
        self._budget = budget_per_second
        self._min = min_window
        self._max = max_window
        self._housekeeping = housekeeping_seconds
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._healthy_after = healthy_after
        self._max_payload = max_payload_bytes
        self._on_window = on_window
        self.conflator = Conflator()
        self.stats = BridgeStats(window_seconds=min_window)
        self.window = min_window
        self._sequence = 0
        self._last_housekeeping = 0.0
        self._last_heartbeat = 0.0
        self._resync_needed = False
        # (epoch, shards, refs per shard, read at): see _read_shards.
        self._refs_cache: tuple[Any, list[int], dict[int, dict[str, int]], float] | None = None
        self.subscribed = asyncio.Event()

    # --- run ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Reader and windower until cancelled; both are cancelled and awaited on the way out."""
        reader = asyncio.create_task(self._read_forever(), name="bridge-reader")
        windower = asyncio.create_task(self._window_forever(), name="bridge-windower")
        try:
            done, _ = await asyncio.wait({reader, windower}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in (reader, windower):
                task.cancel()
            for task in (reader, windower):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    # --- reader -------------------------------------------------------------------------------

    def _mark_reconnected(self, connection: Any) -> None:
        # redis-py reconnects a pubsub connection by itself and resubscribes (its own callback
        # runs first); messages published meanwhile are gone, so the prices must be re-read.
        self.stats.reconnects += 1
        self._resync_needed = True
        # A restarted Redis may count the epoch up to the cached value again with other refs.
        self._refs_cache = None

    async def _read_forever(self) -> None:
        attempt = 0
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
                        if attempt and time.monotonic() - healthy_since > self._healthy_after:
                            attempt = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure: report, back off, resubscribe
                _raise_if_cancelling()
                self.subscribed.clear()
                self.stats.reader_errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                delay = min(self._backoff_cap, self._backoff_base * 2**attempt)
                delay = delay / 2 + random.uniform(0, delay / 2)
                log.warning("bridge reader failed (%s); resubscribing in %.2fs",
                            self.stats.last_error, delay)
                attempt += 1
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
        refs, _ = await self._read_shards()
        keys = sorted({k for counts in refs.values() for k in counts})
        resent = 0
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            pipe = self._redis.pipeline(transaction=False)
            pipe.hmget(names.WS_LATEST_KEY, chunk)
            pipe.mget([names.ltp_key(k) for k in chunk])
            latest, cached = await pipe.execute()
            for key, entry, raw in zip(chunk, latest, cached, strict=True):
                price = parse_price(raw)
                if price is None:
                    continue
                seen = loads(entry) if entry is not None else None
                waiting = self.conflator.get(key)
                newest = waiting if waiting is not None else seen
                if newest is not None and newest.get("ltp") == price:
                    continue
                base = max(seen["version"] if seen else -1,
                           waiting["version"] if waiting else -1)
                segment, _, security_id = key.partition(":")
                update: Update = {"key": key, "segment": segment, "security_id": security_id,
                                  "ltp": price, "ltt": int(seen["ltt"]) if seen else 0,
                                  "version": base + 1}
                if seen and "symbol" in seen:
                    update["symbol"] = seen["symbol"]
                resent += self.conflator.add(update)
        self.stats.resynced += resent
        return resent

    # --- windows ------------------------------------------------------------------------------

    async def _window_forever(self) -> None:
        deadline = time.monotonic() + self.window
        while True:
            _raise_if_cancelling()
            await asyncio.sleep(max(0.0, deadline - time.monotonic()))
            closing = time.monotonic()
            try:
                await self.close_window()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failed window must not end the bridge
                _raise_if_cancelling()
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("bridge window failed")
            # Windows are measured from their start, so a slow close does not add drift.
            deadline = closing + self.window

    async def _read_shards(self, latest: Mapping[str, bytes] | None = None
                           ) -> tuple[dict[int, dict[str, int]], dict[int, int]]:
        """(refs per shard, live connections per shard); writes `latest` (key -> update JSON)
        first when given.

        The refs are re-read only when `ws:refs:epoch` moved (every subscribe, unsubscribe and
        removal bumps it in the same script) or the cache is old: decoding every shard's refs
        each window cost more CPU than the rest of the window. The epoch is read after `latest`
        is written, so a subscription recorded before that read is in this window's refs and
        one recorded after it finds this window's values in its snapshot."""
        pipe = self._redis.pipeline(transaction=False)
        if latest:
            pipe.hset(names.WS_LATEST_KEY, mapping=latest)
            pipe.expire(names.WS_LATEST_KEY, names.WS_LATEST_TTL_SECONDS)
        pipe.smembers(names.WS_SHARDS_KEY)
        pipe.get(names.WS_REFS_EPOCH_KEY)
        replies = await pipe.execute()
        shards = sorted(int(s) for s in replies[-2])
        epoch = replies[-1]
        if not shards:
            return {}, {}
        now = time.time()
        fresh = (self._refs_cache is not None and self._refs_cache[0] == epoch
                 and self._refs_cache[1] == shards
                 and time.monotonic() - self._refs_cache[3] < REFS_MAX_AGE_SECONDS)
        pipe = self._redis.pipeline(transaction=False)
        for shard in shards:
            if not fresh:
                pipe.hgetall(names.ws_shard_refs_key(shard))
            pipe.zcount(names.ws_shard_key(shard), f"({now}", "+inf")
        replies = await pipe.execute()
        live: dict[int, int] = {}
        if fresh:
            assert self._refs_cache is not None
            refs = self._refs_cache[2]
            for shard, count in zip(shards, replies, strict=True):
                live[shard] = int(count)
            return refs, live
        refs = {}
        for i, shard in enumerate(shards):
            refs[shard] = {_text(k): int(v) for k, v in replies[2 * i].items() if int(v) > 0}
            live[shard] = int(replies[2 * i + 1])
        self._refs_cache = (epoch, shards, refs, time.monotonic())
        return refs, live

    @property
    def redis(self) -> Any:
        return self._redis

    async def close(self) -> None:
        """Close the Redis client the bridge was built with (after `run` has ended)."""
        await self._redis.aclose()

    async def close_window(self) -> list[dict[str, Any]]:
        """Close the current window: publish its values, invoke the fan-outs, adapt."""
        window = self.conflator.drain()
        encoded = {k: dumps(dict(u)) for k, u in window.items()}
        refs, live = await self._read_shards(encoded)
        sizes = {k: len(v) for k, v in encoded.items()}
        pending = {int(s) for s in await self._redis.spop(names.WS_PENDING_SHARDS_KEY, 10_000)
                   or []}
        now = time.time()
        housekeeping = now - self._last_housekeeping >= self._housekeeping
        if housekeeping:
            self._last_housekeeping = now
        self._sequence += 1
        payloads: list[dict[str, Any]] = []
        for shard in sorted(set(refs) | pending):
            wanted = refs.get(shard, {})
            updates = [window[k] for k in window.keys() & wanted.keys()]
            if not updates and shard not in pending and not housekeeping:
                continue
            base = {"shard": shard, "window": self._sequence, "published_at": now}
            payloads.extend(split_payloads(base, updates, max_bytes=self._max_payload,
                                           sizes=sizes))
        results = await asyncio.gather(*(self._invoker.invoke(p) for p in payloads),
                                       return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                self.stats.invoke_errors += 1
                self.stats.last_error = f"invoke: {type(result).__name__}: {result}"
                log.error("fan-out invoke failed: %s", result)
        posts = expected_posts(window, refs, live)
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
        if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            self._last_heartbeat = now
            await self._redis.set(names.WS_BRIDGE_HEARTBEAT_KEY, dumps(self.status(now)),
                                  ex=names.WS_BRIDGE_HEARTBEAT_TTL_SECONDS)
        if self._on_window is not None:
            maybe = self._on_window({**record, "next_window": self.window})
            if maybe is not None:
                await maybe
        return payloads

    def status(self, now: float | None = None) -> dict[str, Any]:
        """What the heartbeat says: enough to tell a stuck or failing bridge from a quiet one."""
        stats = asdict(self.stats)
        stats.pop("history")
        return {"time": time.time() if now is None else now,
                "subscribed": self.subscribed.is_set(), **stats}


def _raise_if_cancelling() -> None:
    """Honour a cancel that a client library swallowed or turned into another error (seen:
    the windower kept looping after `cancel()` while inside a Redis call). Checked at the top
    of every loop and in catch-all handlers, or shutdown waits forever for a looping task."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
