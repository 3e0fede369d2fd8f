"""The fan-out: one window's updates to every connection of one shard, concurrently.

Per connection: its keys' updates (plus what failed to reach it before) are claimed in the
registry (a late window can never send an older version than one already sent), posted as one
message (split only past 32 KB) by a bounded thread pool sharing one boto3 client, throttled
posts retried with jittered backoff until the retry budget runs out, and what still failed is
stored as pending for that connection's next message. 410 Gone removes the connection.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from core.messages import loads, utc_now_iso
from functions.fanout.plan import Update, index_window, pack_messages
from functions.registry import ConnectionRegistry
from functions.ws.management import ManagementApi, PostOutcome, post

log = logging.getLogger(__name__)


@dataclass(slots=True)
class FanoutResult:
    shard: int
    connections: int = 0  # live connections in the shard
    recipients: int = 0  # connections that had something to receive
    posts: int = 0  # successful PostToConnection calls
    bytes: int = 0
    gone: int = 0
    throttled: int = 0  # throttled attempts (each retry counts)
    retried_ok: int = 0  # messages delivered after at least one throttle
    deferred: int = 0  # updates carried into the next message
    failed: int = 0  # messages not delivered this window
    swept: int = 0
    duration: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Delivery:
    connection_id: str
    messages: list[bytes]
    fresh: list[str]  # window keys claimed for this connection
    carried: list[str]  # carried-over updates' JSON claimed for it
    outcome: PostOutcome = PostOutcome.SENT
    posted: int = 0
    bytes: int = 0
    throttled: int = 0
    retried_ok: int = 0


class Fanout:
    def __init__(
        self,
        *,
        registry: ConnectionRegistry,
        management: ManagementApi,
        max_workers: int = 32,
        max_message_bytes: int = 32 * 1024,
        retry_seconds: float = 1.0,
        backoff_base: float = 0.05,
        backoff_cap: float = 0.4,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._registry = registry
        self._api = management
        self._max_bytes = max_message_bytes
        self._retry_seconds = retry_seconds
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._clock = clock
        self._sleep = sleep
        self._workers = max_workers
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="fanout")
        self._random = random.Random()
        self._random_lock = threading.Lock()

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def run(self, payload: Mapping[str, Any]) -> FanoutResult:
        started = self._clock()
        shard = int(payload["shard"])
        result = FanoutResult(shard=shard)
        result.swept = self._registry.sweep(shard)
        window = index_window(payload.get("updates") or [])
        connections = self._registry.live_connections(shard)
        result.connections = len(connections)
        # Selection and version claims happen in Redis, atomically per connection: a late or
        # replayed window finds newer versions claimed and sends nothing older.
        claims = self._registry.claim_window(connections, window)
        timestamp = utc_now_iso()
        encoded = {key: orjson.dumps(update) for key, update in window.items()}
        deliveries = []
        for cid, (fresh, carried) in claims.items():
            items = [encoded[key] for key in fresh]
            items += [raw.encode() for raw in carried]
            if items:
                messages = pack_messages(items, timestamp=timestamp, max_bytes=self._max_bytes)
                deliveries.append(_Delivery(cid, messages, fresh, carried))
        result.recipients = len(deliveries)
        deadline = started + self._retry_seconds
        # Each worker pulls the next delivery itself: one pool task per worker instead of one
        # per connection (a Future per post cost more CPU than an in-process post).
        queue = iter(deliveries)
        queue_lock = threading.Lock()

        def work() -> None:
            while True:
                with queue_lock:
                    delivery = next(queue, None)
                if delivery is None:
                    return
                self._deliver(delivery, deadline)

        workers = [self._pool.submit(work) for _ in range(min(self._workers, len(deliveries)))]
        for worker in workers:
            worker.result()
        for delivery in deliveries:
            self._account(delivery, result)
        self._settle(deliveries, window, shard, result)
        result.duration = self._clock() - started
        return result

    def _deliver(self, delivery: _Delivery, deadline: float) -> _Delivery:
        for message in delivery.messages:
            attempt = 0
            while True:
                outcome = post(self._api, delivery.connection_id, message)
                if outcome is PostOutcome.SENT:
                    delivery.posted += 1
                    delivery.bytes += len(message)
                    delivery.retried_ok += attempt > 0
                    break
                if outcome is PostOutcome.THROTTLED:
                    delivery.throttled += 1
                if outcome in (PostOutcome.GONE, PostOutcome.TOO_LARGE):
                    delivery.outcome = outcome
                    return delivery
                delay = self._backoff(attempt)
                if self._clock() + delay > deadline:
                    delivery.outcome = outcome
                    return delivery
                self._sleep(delay)
                attempt += 1
        return delivery

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self._backoff_cap, self._backoff_base * 2**attempt)
        with self._random_lock:
            return float(ceiling / 2 + self._random.uniform(0, ceiling / 2))

    @staticmethod
    def _account(delivery: _Delivery, result: FanoutResult) -> None:
        result.posts += delivery.posted
        result.bytes += delivery.bytes
        result.throttled += delivery.throttled
        result.retried_ok += delivery.retried_ok
        if delivery.outcome is PostOutcome.GONE:
            result.gone += 1
        elif delivery.outcome is not PostOutcome.SENT:
            result.failed += 1

    def _settle(self, deliveries: Sequence[_Delivery], window: Mapping[str, Update], shard: int,
                result: FanoutResult) -> None:
        failed: dict[str, Sequence[Update]] = {}
        for delivery in deliveries:
            if delivery.outcome is PostOutcome.GONE:
                self._registry.remove(delivery.connection_id, shard=shard)
            elif delivery.outcome is PostOutcome.TOO_LARGE:
                result.errors.append(f"{delivery.connection_id}: payload too large")
            elif delivery.outcome is not PostOutcome.SENT:
                # Messages already delivered keep theirs; the rest is carried forward. Which
                # message failed is not tracked, so all of this window's updates are: a
                # duplicate of the same version is harmless, a lost one is not.
                failed[delivery.connection_id] = (
                    [window[key] for key in delivery.fresh]
                    + [loads(raw) for raw in delivery.carried])
        if failed:
            result.deferred = self._registry.defer(failed, shard=shard)
