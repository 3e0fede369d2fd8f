"""The instrument-master load: download Dhan's scrip master, swap it into Redis, report.

`core.instrument_master.load_master` streams the CSV into fresh hashes and renames them over
the live ones in one transaction, so a failed load (HTTP error, a connection cut mid-file, a
file that is not a scrip master) leaves the previous master in place and no debris. This
module adds what a scheduled job needs around it:

- retries: a failed download (`InstrumentMasterError`) is tried again after an exponential,
  jittered pause (`core.backoff`), at most `attempts` times, and only while the invocation has
  time left for one more load (`remaining()`, from Lambda's context) - a retry that Lambda
  would cut off halfway would only waste the download. Redis errors are not retried here (the
  client already retries a dropped connection, and an AUTH refusal will not heal);
- failure: after the last attempt `InstrumentLoadError` is raised, so the invocation counts as
  an error and the errors alarm sees it;
- a JSON-able summary (`rows, skipped, source, seconds, attempts, segments`), returned and
  logged. The source is shown without user info or query string; nothing else about the
  configuration (the Redis URL, its token) is logged.

What is loaded is the wiring's choice (`functions.instruments.settings`): by default the
equities, indices and NSE F&O only, because Dhan's full master in every segment could fill a
cache.t4g.micro.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import NoReturn, Protocol, TypedDict

from core.backoff import Backoff
from core.errors import InstrumentMasterError
from core.instrument_master import LoadResult, SyncRedis, load_master
from functions.instruments.errors import InstrumentLoadError
from functions.instruments.settings import ALL_SEGMENTS, shown_source

log = logging.getLogger(__name__)

# Time one more attempt needs at least (a full download and load measured well under this);
# with less left, the invocation fails now rather than being cut off by its timeout.
MIN_ATTEMPT_SECONDS = 60.0


class Loader(Protocol):
    def __call__(self, source: str, *, redis: SyncRedis,
                 segments: frozenset[str] | None) -> LoadResult: ...  # fmt: skip


class LoadSummary(TypedDict):
    rows: int
    skipped: int
    source: str
    seconds: float
    attempts: int
    segments: str  # comma-separated, or "all"


def no_deadline() -> float:
    return float("inf")


class InstrumentLoader:
    def __init__(
        self,
        *,
        redis: SyncRedis,
        source: str,
        segments: frozenset[str] | None,
        attempts: int = 3,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        load: Loader = load_master,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        self._redis = redis
        self._source = source
        self._segments = segments
        self._attempts = attempts
        # At least half of each ceiling: a CDN that just answered 500 gets a real pause.
        self._backoff = backoff or Backoff(base=5.0, cap=60.0, min_fraction=0.5)
        self._sleep = sleep
        self._clock = clock
        self._load = load

    @property
    def shown_source(self) -> str:
        return shown_source(self._source)

    def close(self) -> None:
        """Close the Redis client (tests; a Lambda keeps it for the environment's life)."""
        close = getattr(self._redis, "close", None)
        if callable(close):
            close()

    def run(self, *, remaining: Callable[[], float] = no_deadline) -> LoadSummary:
        """Load the master; `remaining()` is the invocation's time left, in seconds."""
        started = self._clock()
        result, attempts = self._load_with_retries(remaining)
        summary = LoadSummary(
            rows=result.rows,
            skipped=result.skipped,
            source=self.shown_source,
            seconds=round(self._clock() - started, 3),
            attempts=attempts,
            segments=",".join(sorted(self._segments)) if self._segments else ALL_SEGMENTS,
        )
        log.info("instrument master loaded: %s", json.dumps(summary))
        return summary

    def _load_with_retries(self, remaining: Callable[[], float]) -> tuple[LoadResult, int]:
        self._backoff.reset()
        attempt = 1
        while True:
            try:
                return self._load(self._source, redis=self._redis,
                                  segments=self._segments), attempt  # fmt: skip
            except InstrumentMasterError as exc:
                reason = self._redact(str(exc))
                if attempt >= self._attempts:
                    self._give_up(attempt, reason, exc, "no attempt left")
                delay = self._backoff.next_delay()
                if remaining() - delay < MIN_ATTEMPT_SECONDS:
                    self._give_up(attempt, reason, exc, "no time left for another attempt")
                log.warning("instrument master: attempt %d of %d failed (%s); retrying in "
                            "%.1f s", attempt, self._attempts, reason, delay)  # fmt: skip
            self._sleep(delay)
            attempt += 1

    def _give_up(self, attempt: int, reason: str, cause: Exception, why: str) -> NoReturn:
        message = (f"instrument master not loaded from {self.shown_source} after {attempt} "
                   f"attempt(s) ({why}): {reason}; the previously loaded master is kept")
        log.error("%s", message)
        raise InstrumentLoadError(message) from cause

    def _redact(self, text: str) -> str:
        shown = self.shown_source
        return text.replace(self._source, shown) if shown != self._source else text
