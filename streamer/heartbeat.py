"""The streamer's heartbeat: `market_stream:heartbeat`, JSON, TTL 60 s, refreshed every <= 30 s.

Document (the health route and operators read it):
  time               ISO-8601 UTC of this beat
  instance_id        the streamer instance (also the lease owner)
  state              running | idle (no keys) | stopping | stopped
  mode               ticker | quote | full
  connected          feed connections currently up
  connections        per connection: index, state (connecting|connected|backoff|stopped|closed),
                     instruments, reconnects, last_error, connected_for_s
  instruments        keys subscribed (placed on a connection)
  ticks              price packets received since start
  ticks_per_second   over the last heartbeat interval
  last_tick_age_s    seconds since the last frame from the feed (null: none yet)
  errors             counts (feed, redis, decode, stale, invalid_keys, dropped) and last_fatal:
                     the text of a fatal feed error (806/808/809/810), null when none
  redis_buffer       keys waiting for Redis (non-zero only while Redis is failing)
  rejected_keys      how many desired keys did not fit in 5 x 5,000; rejected_sample: some
  market_open        whether the streamer's clock says the session is open (STREAMER_MARKET_*;
                     holidays are the scheduler's, and the health route applies them)
  beating_for_s      seconds since this streamer's first beat
  carried            where the keys come from: streams (named streams read), viewer_keys (keys
                     viewers subscribe to), lingering (kept in their grace), cache_wipes (times
                     the cache came back empty and the streams were written back)

Each beat that reaches Redis also prints one CloudWatch EMF line on stdout (namespace
`LtpStream`, dimension `service=streamer`): `Heartbeats` (1), `Ticks` (since the previous beat),
`LastTickAgeSeconds` (whenever a tick was seen, market open or not) and, only while the market
is open and keys are subscribed, `MarketTickAgeSeconds`: the last tick's age, or, before the
first tick, the time since the first beat (a feed that never delivers is as stale as one that
stopped). The stale-heartbeat alarm watches `Heartbeats`, so a beat that could not be written
to Redis is deliberately not counted; the tick-age alarm watches `MarketTickAgeSeconds`, which
is absent (not breaching) after the close, overnight and whenever the task is scaled to 0.

After every beat, written or not, `run` touches the liveness file (`LIVENESS_FILE`, default
`/tmp/streamer.alive`, see `core.liveness`): the container health check restarts a task whose
loop stopped turning, not one whose Redis is down. A file that cannot be touched is logged once
and never fails the beat.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from core import emf, liveness
from core.messages import dumps, utc_now_iso
from core.names import HEARTBEAT_KEY, HEARTBEAT_TTL_SECONDS
from streamer.aio import raise_if_cancelled

log = logging.getLogger(__name__)

REJECTED_SAMPLE = 20
METRICS_SERVICE = "streamer"


def emf_line(
    document: dict[str, Any],
    *,
    ticks: int,
    timestamp_ms: int,
    market_tick_age: float | None = None,
) -> bytes:
    """One CloudWatch Embedded Metric Format record for a beat; `market_tick_age` only while
    the market is open (see the module docstring)."""
    metrics: dict[str, tuple[float, str]] = {"Heartbeats": (1, "Count"),
                                             "Ticks": (ticks, "Count")}
    age = document.get("last_tick_age_s")
    if age is not None:
        metrics["LastTickAgeSeconds"] = (age, "Seconds")
    if market_tick_age is not None:
        metrics["MarketTickAgeSeconds"] = (market_tick_age, "Seconds")
    return emf.emf_line(metrics, service=METRICS_SERVICE, timestamp_ms=timestamp_ms,
                        properties={"instance_id": document.get("instance_id"),
                                    "state": document.get("state")})


def emf_to_stdout(line: bytes) -> None:
    sys.stdout.buffer.write(line)
    sys.stdout.flush()


@dataclass(slots=True)
class Snapshot:
    """What the service knows right now; the heartbeat turns it into the document."""

    instance_id: str
    state: str
    mode: str
    connections: list[dict[str, Any]] = field(default_factory=list)
    instruments: int = 0
    ticks: int = 0
    last_tick_age: float | None = None
    errors: dict[str, Any] = field(default_factory=dict)
    redis_buffer: int = 0
    rejected: list[str] = field(default_factory=list)
    market_open: bool = False
    carried: dict[str, int] = field(default_factory=dict)
    token: dict[str, Any] = field(default_factory=dict)


class Heartbeat:
    def __init__(
        self,
        *,
        redis: Redis,
        snapshot: Callable[[], Snapshot],
        interval: float = 10.0,
        ttl: int = HEARTBEAT_TTL_SECONDS,
        key: str = HEARTBEAT_KEY,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[bytes], None] = emf_to_stdout,
        liveness_file: Path | None = None,
    ) -> None:
        """`liveness_file` None: `LIVENESS_FILE` from the environment, else the default."""
        if interval > ttl / 2:
            raise ValueError("the heartbeat must be refreshed at least twice per TTL")
        self._redis = redis
        self._snapshot = snapshot
        self.interval = interval
        self._ttl = ttl
        self.key = key
        self._clock = clock
        self._last: tuple[float, int] | None = None
        self._emit = emit
        self._emitted_ticks = 0
        self._first_beat: float | None = None
        self._beating_for = 0.0
        self.failures = 0
        self.liveness_file = liveness_file or liveness.path_from_env(
            liveness.STREAMER_LIVENESS_FILE
        )
        self._liveness_ok = True

    def document(self, snapshot: Snapshot) -> dict[str, Any]:
        now = self._clock()
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (snapshot.ticks - self._last[1]) / (now - self._last[0])
        self._last = (now, snapshot.ticks)
        if self._first_beat is None:
            self._first_beat = now
        self._beating_for = now - self._first_beat
        age = snapshot.last_tick_age
        return {
            "time": utc_now_iso(),
            "instance_id": snapshot.instance_id,
            "state": snapshot.state,
            "mode": snapshot.mode,
            "connected": sum(1 for c in snapshot.connections if c.get("state") == "connected"),
            "connections": snapshot.connections,
            "instruments": snapshot.instruments,
            "ticks": snapshot.ticks,
            "ticks_per_second": round(max(rate, 0.0), 1),
            "last_tick_age_s": None if age is None else round(age, 3),
            "errors": snapshot.errors,
            "redis_buffer": snapshot.redis_buffer,
            "rejected_keys": len(snapshot.rejected),
            "rejected_sample": snapshot.rejected[:REJECTED_SAMPLE],
            "market_open": snapshot.market_open,
            "beating_for_s": round(self._beating_for, 1),
            "carried": snapshot.carried,
            "token": snapshot.token,
        }

    def market_tick_age(self, document: dict[str, Any]) -> float | None:
        """The tick age that matters: None unless the market is open and keys are streaming;
        before the first tick, how long this heartbeat has been beating."""
        if not (document["market_open"] and document["state"] == "running"
                and document["instruments"]):  # fmt: skip
            return None
        age = document["last_tick_age_s"]
        return float(age) if age is not None else round(max(self._beating_for, 0.0), 3)

    async def beat(self) -> bool:
        document = self.document(self._snapshot())
        try:
            await self._redis.set(self.key, dumps(document), ex=self._ttl)
        except RedisError as exc:
            self.failures += 1
            log.warning("heartbeat not written (%s)", exc)
            return False
        ticks = max(document["ticks"] - self._emitted_ticks, 0)
        self._emitted_ticks = document["ticks"]
        self._emit(emf_line(document, ticks=ticks, timestamp_ms=int(time.time() * 1000),
                            market_tick_age=self.market_tick_age(document)))  # fmt: skip
        return True

    def touch_liveness(self) -> bool:
        """Touch the liveness file; a failure is logged (once per run of failures), not raised."""
        ok = liveness.touch(self.liveness_file)
        if not ok and self._liveness_ok:
            log.warning("cannot touch the liveness file %s: the container health check will "
                        "fail", self.liveness_file)  # fmt: skip
        self._liveness_ok = ok
        return ok

    async def run(self) -> None:
        while True:
            await self.beat()
            self.touch_liveness()
            raise_if_cancelled()
            await asyncio.sleep(self.interval)
