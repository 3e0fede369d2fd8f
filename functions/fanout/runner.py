"""The fan-out's shell: one window's updates to every connection of one shard, concurrently.
What each connection gets is planned by `realtime.delivery` (pure); this posts it.

The window is claimed for the shard in the registry (a late or replayed window finds newer
versions claimed and sends nothing older); each connection gets the claimed keys it wants,
above its snapshot floor, plus what failed to reach it before, as one message (split only past
32 KB), posted by a bounded thread pool sharing one boto3 client. Throttled posts are retried
with jittered backoff until the retry budget runs out; what still failed is carried into that
connection's next message. 410 Gone removes the connection.

Who wants what is cached per shard and re-read only when the shard's epoch (bumped by every
subscribe, unsubscribe, snapshot and removal in the same script) moved, or every 30 s: a warm
Lambda container reads the subscriptions once, not on every window.
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

from core.backoff import Backoff
from core.messages import Update, loads, utc_now_iso
from functions.ws.management import ManagementApi, PostOutcome, post
from realtime.contracts import FanoutPayload
from realtime.delivery import index_window, pack_messages, route, still_wanted
from realtime.registry import ConnectionRegistry
from realtime.views import EpochCache, ShardView

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
    items: list[bytes]  # the updates' JSON in those messages
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
        self._views: EpochCache[int, ShardView] = EpochCache(clock=clock)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._registry.close()

    def run(self, payload: FanoutPayload | Mapping[str, Any]) -> FanoutResult:
        started = self._clock()
        shard = int(payload["shard"])
        result = FanoutResult(shard=shard)
        result.swept = self._registry.sweep(shard)
        window = index_window(payload.get("updates") or [])
        claim = self._registry.claim(shard, {k: u["version"] for k, u in window.items()})
        view = self._view(shard, claim.epoch)
        result.connections = len(view.keys)
        encoded = {key: orjson.dumps(window[key]) for key in claim.fresh}
        routed = route(window, encoded, view.keys, view.floors)
        timestamp = utc_now_iso()
        for cid, raws in claim.carried.items():  # rare: only after failed posts
            kept = still_wanted(raws, view.keys.get(cid, frozenset()),
                                view.floors.get(cid, {}))
            if kept:
                routed.setdefault(cid, []).extend(kept)
        limit = self._max_bytes
        deliveries = [_Delivery(cid, pack_messages(items, timestamp=timestamp, max_bytes=limit),
                                items) for cid, items in routed.items()]
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

        if self._workers <= 1:
            work()  # posts that do not block (the local gateway in-process) need no threads
        else:
            workers = [self._pool.submit(work)
                       for _ in range(min(self._workers, len(deliveries)))]
            for worker in workers:
                worker.result()
        for delivery in deliveries:
            self._account(delivery, result)
        self._settle(deliveries, shard, result)
        result.duration = self._clock() - started
        return result

    def _view(self, shard: int, epoch: str) -> ShardView:
        view = self._views.get(shard, epoch)
        if view is None:
            subscriptions = self._registry.subscriptions(shard)
            view = self._views.put(shard, subscriptions.epoch,
                                   ShardView.from_floors(subscriptions.floors))
        return view

    def _deliver(self, delivery: _Delivery, deadline: float) -> _Delivery:
        for message in delivery.messages:
            attempt = 0
            backoff: Backoff | None = None
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
                if backoff is None:  # built on the first refusal: most posts need none
                    backoff = Backoff(base=self._backoff_base, cap=self._backoff_cap,
                                      min_fraction=0.5, rng=self._uniform)
                delay = backoff.next_delay()
                if self._clock() + delay > deadline:
                    delivery.outcome = outcome
                    return delivery
                self._sleep(delay)
                attempt += 1
        return delivery

    def _uniform(self) -> float:
        with self._random_lock:  # posts retry from several threads
            return self._random.random()

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

    def _settle(self, deliveries: Sequence[_Delivery], shard: int, result: FanoutResult) -> None:
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
                failed[delivery.connection_id] = [loads(raw) for raw in delivery.items]
        if failed:
            result.deferred = self._registry.defer(failed, shard=shard)
