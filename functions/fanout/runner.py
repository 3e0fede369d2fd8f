"""The fan-out's shell: one window's updates to every connection of one shard, concurrently.
What each connection gets is planned by `realtime.delivery` (pure); this posts it.

The window is claimed for the shard in the registry (a late or replayed window finds newer
versions claimed and sends nothing older); each connection gets the claimed keys it wants,
above its snapshot floor, plus what failed to reach it before, as one message (split only past
32 KB), posted by a bounded thread pool sharing one boto3 client. Throttled posts are retried
with jittered backoff until the retry budget runs out; what still failed is carried into that
connection's next message. 410 Gone removes the connection.

What the claim took is settled whatever happens after it: every update of the plan either
reached its connection or is deferred (`ConnectionRegistry.defer`) into that connection's next
message. That covers posts that failed (any botocore or network error is a failed post, see
`functions.ws.management.classify`), a worker that raised something unexpected (settled first,
then re-raised so that Lambda counts the error and the event reaches the fan-out's failure
queue), and an invocation about to run out of Lambda time: `time_reserve_seconds` before the
end (`context.get_remaining_time_in_millis()`) no post is started any more, posts still in
flight are given up (their updates deferred; one that lands later is a harmless duplicate of
the same version) and the rest is deferred. Only Redis failing between the claim and the
settle can still lose the window for the shard; then the invocation raises, and its event (with
its updates) is what the failure queue keeps.

Keys the payload names as `not_carried` (the feed dropped them while connections of the shard
want them) are refused the way a subscribe refuses them: each such connection gets one
`not_carried` error naming its keys and, once that post is through, is unsubscribed from them
(a failed post leaves the subscription, so the bridge's next announcement tries again).

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
from concurrent.futures import wait as wait_for_all
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import orjson

from core.backoff import Backoff
from core.messages import Update, loads, utc_now_iso
from functions.ws.management import ManagementApi, PostOutcome, post
from functions.ws.protocol import not_carried_message
from realtime.contracts import FanoutPayload
from realtime.delivery import index_window, pack_messages, route, still_wanted
from realtime.registry import ConnectionRegistry, ShardClaim
from realtime.views import EpochCache, ShardView

log = logging.getLogger(__name__)

# Kept free at the end of an invocation for the settle (one DEFER script) and the metrics
# flush; a post in flight past it is given up. Lambda kills an invocation at its timeout
# without running anything more, so whatever is not settled by then is lost for this window.
TIME_RESERVE_SECONDS = 1.0


class LambdaContext(Protocol):
    """The part of Lambda's context object the fan-out reads."""

    def get_remaining_time_in_millis(self) -> int: ...


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
    failed: int = 0  # recipients whose post failed this window
    unsent: int = 0  # recipients not (fully) posted to: out of time, or given up in flight
    swept: int = 0
    not_carried: int = 0  # connections told and unsubscribed from keys the feed dropped
    duration: float = 0.0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class _Delivery:
    connection_id: str
    messages: list[bytes]
    items: list[bytes]  # the updates' JSON in those messages
    outcome: PostOutcome | None = None  # None: not (fully) posted
    posted: int = 0
    bytes: int = 0
    throttled: int = 0
    retried_ok: int = 0
    error: BaseException | None = None  # what a post raised that is not an AWS error
    unsubscribe: list[str] = field(default_factory=list)  # a not_carried notice's keys
    # Set under Fanout._lock: a worker finishing a delivery or the settle giving up on it.
    finished: bool = False
    abandoned: bool = False


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
        time_reserve_seconds: float = TIME_RESERVE_SECONDS,
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
        self._lock = threading.Lock()
        self._reserve = time_reserve_seconds
        self._views: EpochCache[int, ShardView] = EpochCache(clock=clock)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._registry.close()

    def run(self, payload: FanoutPayload | Mapping[str, Any],
            context: LambdaContext | None = None) -> FanoutResult:
        """One window for one shard; `context` (Lambda's) bounds the time spent posting."""
        started = self._clock()
        stop_at = None
        if context is not None:
            remaining = context.get_remaining_time_in_millis() / 1000
            stop_at = started + remaining - self._reserve
        shard = int(payload["shard"])
        result = FanoutResult(shard=shard)
        result.swept = self._registry.sweep(shard)
        window = index_window(payload.get("updates") or [])
        claim = self._registry.claim(shard, {k: u["version"] for k, u in window.items()})
        # From here on, what the claim took is this invocation's to deliver or defer.
        deliveries = self._plan(shard, window, claim, result,
                                lost=payload.get("not_carried") or [])
        unexpected: BaseException | None = None
        try:
            self._post(deliveries, started, stop_at)
        except Exception as exc:  # noqa: BLE001 - settled below, then raised
            unexpected = exc
        finally:
            self._finish(deliveries, shard, result)
        result.duration = self._clock() - started
        unexpected = unexpected or next((d.error for d in deliveries if d.error), None)
        if unexpected is not None:
            raise unexpected
        return result

    def _plan(self, shard: int, window: Mapping[str, Update], claim: ShardClaim,
              result: FanoutResult, *, lost: Sequence[str]) -> list[_Delivery]:
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
        return deliveries + self._notices(view, lost)

    @staticmethod
    def _notices(view: ShardView, lost: Sequence[str]) -> list[_Delivery]:
        if not lost:
            return []
        dropped = frozenset(lost)
        notices = []
        for cid, wanted in view.keys.items():
            keys = sorted(wanted & dropped)
            if keys:
                notices.append(_Delivery(cid, [orjson.dumps(not_carried_message(keys))], [],
                                         unsubscribe=keys))
        return notices

    def _post(self, deliveries: Sequence[_Delivery], started: float,
              stop_at: float | None) -> None:
        retry_until = started + self._retry_seconds
        if stop_at is not None:
            retry_until = min(retry_until, stop_at)
        # Each worker pulls the next delivery itself: one pool task per worker instead of one
        # per connection (a Future per post cost more CPU than an in-process post).
        queue = iter(deliveries)
        queue_lock = threading.Lock()

        def work() -> None:
            while stop_at is None or self._clock() < stop_at:
                with queue_lock:
                    delivery = next(queue, None)
                if delivery is None:
                    return
                self._deliver_settled(delivery, retry_until, stop_at)

        if self._workers <= 1:
            work()  # posts that do not block (the local gateway in-process) need no threads
            return
        workers = [self._pool.submit(work) for _ in range(min(self._workers, len(deliveries)))]
        timeout = None if stop_at is None else max(0.0, stop_at - self._clock())
        done, _ = wait_for_all(workers, timeout=timeout)  # the rest is given up in _finish
        for worker in done:
            worker.result()

    def _deliver_settled(self, delivery: _Delivery, retry_until: float,
                         stop_at: float | None) -> None:
        """`_deliver`, its outcome recorded unless the settle gave up on it meanwhile."""
        try:
            outcome = self._deliver(delivery, retry_until, stop_at)
        except Exception as exc:  # noqa: BLE001 - not an AWS error (see classify): a bug
            log.exception("post to %s raised", delivery.connection_id)
            delivery.error = exc
            outcome = PostOutcome.FAILED
        with self._lock:
            if not delivery.abandoned:
                delivery.outcome = outcome
                delivery.finished = True

    def _view(self, shard: int, epoch: str) -> ShardView:
        view = self._views.get(shard, epoch)
        if view is None:
            subscriptions = self._registry.subscriptions(shard)
            view = self._views.put(shard, subscriptions.epoch,
                                   ShardView.from_floors(subscriptions.floors))
        return view

    def _deliver(self, delivery: _Delivery, retry_until: float,
                 stop_at: float | None) -> PostOutcome | None:
        """Post the delivery's messages; None when time ran out before the last one."""
        for message in delivery.messages:
            attempt = 0
            backoff: Backoff | None = None
            while True:
                if stop_at is not None and self._clock() >= stop_at:
                    return None
                outcome = post(self._api, delivery.connection_id, message)
                if outcome is PostOutcome.SENT:
                    delivery.posted += 1
                    delivery.bytes += len(message)
                    delivery.retried_ok += attempt > 0
                    break
                if outcome is PostOutcome.THROTTLED:
                    delivery.throttled += 1
                if outcome in (PostOutcome.GONE, PostOutcome.TOO_LARGE):
                    return outcome
                if backoff is None:  # built on the first refusal: most posts need none
                    backoff = Backoff(base=self._backoff_base, cap=self._backoff_cap,
                                      min_fraction=0.5, rng=self._uniform)
                delay = backoff.next_delay()
                if self._clock() + delay > retry_until:
                    return outcome
                self._sleep(delay)
                attempt += 1
        return PostOutcome.SENT

    def _uniform(self) -> float:
        with self._random_lock:  # posts retry from several threads
            return self._random.random()

    def _finish(self, deliveries: Sequence[_Delivery], shard: int,
                result: FanoutResult) -> None:
        with self._lock:  # a worker still posting now is given up on: its result is ignored
            for delivery in deliveries:
                if not delivery.finished:
                    delivery.abandoned = True
        for delivery in deliveries:
            self._account(delivery, result)
        self._settle(deliveries, shard, result)

    @staticmethod
    def _account(delivery: _Delivery, result: FanoutResult) -> None:
        result.posts += delivery.posted
        result.bytes += delivery.bytes
        result.throttled += delivery.throttled
        result.retried_ok += delivery.retried_ok
        if delivery.outcome is PostOutcome.GONE:
            result.gone += 1
        elif delivery.outcome is None:
            result.unsent += 1
        elif delivery.outcome is not PostOutcome.SENT:
            result.failed += 1
        if delivery.error is not None:
            result.errors.append(f"{delivery.connection_id}: {type(delivery.error).__name__}: "
                                 f"{delivery.error}")

    def _settle(self, deliveries: Sequence[_Delivery], shard: int, result: FanoutResult) -> None:
        """Defer what did not reach its connection, then forget the gone connections. A
        Redis failure in the defer raises (nothing else could record those updates)."""
        failed: dict[str, Sequence[Update]] = {}
        gone: list[str] = []
        for delivery in deliveries:
            if delivery.outcome is PostOutcome.GONE:
                gone.append(delivery.connection_id)
            elif delivery.outcome is PostOutcome.TOO_LARGE:
                result.errors.append(f"{delivery.connection_id}: payload too large")
            elif delivery.outcome is not PostOutcome.SENT:
                # Messages already delivered keep theirs; the rest is carried forward. Which
                # message failed is not tracked, so all of this window's updates are: a
                # duplicate of the same version is harmless, a lost one is not.
                if delivery.items:  # a not_carried notice carries no updates
                    failed[delivery.connection_id] = [loads(raw) for raw in delivery.items]
        if failed:
            result.deferred = self._registry.defer(failed, shard=shard)
        for delivery in deliveries:
            if delivery.unsubscribe and delivery.outcome is PostOutcome.SENT:
                try:
                    self._registry.unsubscribe(delivery.connection_id, delivery.unsubscribe)
                except Exception as exc:  # noqa: BLE001 - the bridge announces the keys again
                    log.warning("%s not unsubscribed from dropped keys (%s)",
                                delivery.connection_id, exc)
                    result.errors.append(f"{delivery.connection_id}: not unsubscribed: {exc}")
                else:
                    result.not_carried += 1
        for connection_id in dict.fromkeys(gone):  # a notice and an update may both say 410
            try:
                self._registry.remove(connection_id, shard=shard)
            except Exception as exc:  # noqa: BLE001 - its next post answers 410 again
                log.warning("gone connection %s not removed (%s)", connection_id, exc)
                result.errors.append(f"{connection_id}: not removed: {exc}")
