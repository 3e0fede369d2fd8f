"""Market stream health: heartbeats of the streamer and the relay bridge, the market clock,
streamer service, streams, WebSocket connections.

Status, worst first:
  stopped   no streamer heartbeat (`market_stream:heartbeat`, TTL 60 s: the streamer is not
            running, or has been silent for 60 s), or one that says the streamer stopped
  stale     a streamer heartbeat older than `HEARTBEAT_STALE_SECONDS` (default 45 s: one
            missed 10-30 s refresh plus slack), or one whose time cannot be read
  degraded  the heartbeat is fresh but the stream is not doing its job; `reasons` says why:
            - the market is open (NSE, Monday-Friday 09:15-15:30 Asia/Kolkata, holidays from
              `functions/schedule/nse_holidays.json`), keys are subscribed, and the newest tick
              is older than `HEALTH_TICK_STALE_SECONDS` (default 30 s). Its age is the
              heartbeat's `last_tick_age_s` plus the heartbeat's own age, counted from the open
              at most (the feed is quiet before it); a streamer without any tick yet waits
              from the open, or from when its longest-up feed connection connected.
            - a feed connection stopped for good (`errors.last_fatal`, or a connection whose
              state is `stopped`: 806/808/809/810 verdicts keep it down for the process's life)
            - the relay bridge heartbeat (`ws:bridge:heartbeat`, written every ~10 s, TTL 60 s)
              is missing or older than `HEALTH_BRIDGE_STALE_SECONDS` (default 45 s): prices
              reach Redis but no browser
            - the DhanHQ access token has expired (from the streamer's heartbeat `token`, else
              the renewal job's `dhan:token:status`): the feed refuses it from then on
  healthy   none of the above
The answer's `token` says when the token expires and how long it has left, what the last
renewal run did (`functions.token`), and a `warning` once less than `TOKEN_WARN_SECONDS` (6 h,
the alarm's threshold) is left.
With a 10 s streamer heartbeat a feed that goes quiet in market hours turns the answer
degraded within the tick threshold (30 s) of its last tick, a dead streamer turns it stale
within 45 s, a dead bridge degraded within 45 s; each returns to healthy with the first
heartbeat that shows it recovered (a fatal connection only with a new streamer process).

The heartbeat is read defensively: its time may be `updated_at`, `time`, `at` or `timestamp`,
as ISO-8601 text or epoch seconds (or milliseconds). The answer carries `reasons` (empty when
healthy; the detail when stale or stopped), `tick_age_seconds`, `market_open` and `bridge`
(`{"heartbeat_age_seconds", "heartbeat"}`, or null when there is no bridge heartbeat).

`assess` is the pure core (raw values and a clock in, the status part of the answer out);
`market_stream_health` reads Redis and the service and composes the answer. It is 200 whatever
the status (the body says it); only Redis being down is a 503.

What one answer costs: one MGET of the heartbeats, SMEMBERS of the stream index and one MGET of
the stream records (`functions.streams.read_indexed_streams`: no SCAN of the keyspace), the
connection count, the master's meta, and ECS DescribeServices when the service is managed.
A flood of health requests must not multiply that, so the Lambda router keeps two caches per
container (`HealthCache`, `CachedCounts`, each with an injected clock):
  - the whole answer is reused for `HEALTH_CACHE_SECONDS` (default 3 s); the answer says
    `cached_for_seconds` and `cache_age_seconds` (its ages and status are as of then: add the
    cache age for now). 200 requests in a burst cost one set of reads.
  - the ECS counts are reused for `HEALTH_ECS_CACHE_SECONDS` (default 30 s), an ECS failure as
    well (so a throttled ECS is not asked again on every answer); `streamer_service` says
    `age_seconds`. Start and stop never see these: they decide on fresh counts.
An answer computed afresh (the FastAPI route, uvicorn) says `cached_for_seconds` 0.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as clock_time
from functools import cache
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis import Redis

from core.messages import IST, loads
from core.names import HEARTBEAT_KEY, INSTRUMENT_META_KEY, TOKEN_STATUS_KEY
from core.redis_client import as_text
from functions.errors import ScalingError
from functions.schedule.nse_calendar import load_shipped
from functions.streams import ServiceCounts, StreamerService, read_indexed_streams, union_size
from realtime.keys import BRIDGE_HEARTBEAT

HEALTHY = "healthy"
DEGRADED = "degraded"
STALE = "stale"
STOPPED = "stopped"

_TIME_FIELDS = ("updated_at", "time", "at", "timestamp")
_STOPPED_STATES = {"stopped", "stopping", "closed"}
_FATAL_CONNECTION_STATES = {"stopped"}
_STREAMING_STATES = {"running"}
MAX_LISTED_STREAMS = 100


@dataclass(frozen=True, slots=True)
class NseSession:
    """NSE's continuous session in IST on trading days (pure; holidays are injected)."""

    open: clock_time = clock_time(9, 15)
    close: clock_time = clock_time(15, 30)
    holidays: Container[date] = field(default_factory=frozenset)

    def seconds_open(self, now: float) -> float | None:
        """Seconds since today's open while the session is open at epoch `now`, else None."""
        local = datetime.fromtimestamp(now, IST)
        day = local.date()
        if day.weekday() >= 5 or day in self.holidays:
            return None
        if not self.open <= local.time() < self.close:
            return None
        return now - datetime.combine(day, self.open, IST).timestamp()

    def holiday(self, now: float) -> bool:
        return datetime.fromtimestamp(now, IST).date() in self.holidays


@cache
def shipped_session() -> NseSession:
    """The session with the holidays shipped beside the scheduler (read once per process)."""
    return NseSession(holidays=load_shipped())


def heartbeat_time(heartbeat: dict[str, Any]) -> float | None:
    """Epoch seconds of a heartbeat, or None when no field holds a readable time."""
    for name in _TIME_FIELDS:
        value = heartbeat.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float) and math.isfinite(value) and value > 0:
            return value / 1000.0 if value > 1e11 else float(value)
        if isinstance(value, str) and value:
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            if parsed.tzinfo is not None:
                return parsed.timestamp()
    return None


def _document(raw: bytes | str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = loads(raw)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def fatal_reasons(heartbeat: dict[str, Any]) -> list[str]:
    """Feed connections the streamer gave up on, from `errors.last_fatal` or their state."""
    errors = heartbeat.get("errors")
    fatal = errors.get("last_fatal") if isinstance(errors, dict) else None
    if isinstance(fatal, str) and fatal.strip():
        return [f"feed connection stopped for good: {fatal.strip()}"]
    connections = heartbeat.get("connections")
    stopped = [
        c for c in (connections if isinstance(connections, list) else [])
        if isinstance(c, dict) and c.get("state") in _FATAL_CONNECTION_STATES
    ]  # fmt: skip
    return [
        f"feed connection {c.get('index', '?')} stopped for good"
        + (f": {c['last_error']}" if c.get("last_error") else "")
        for c in stopped
    ]


def tick_age(heartbeat: dict[str, Any], heartbeat_age: float) -> float | None:
    """Seconds since the newest tick as of now: the heartbeat's figure plus its own age."""
    age = _number(heartbeat.get("last_tick_age_s"))
    return None if age is None else round(max(age, 0.0) + max(heartbeat_age, 0.0), 3)


def tick_reason(
    heartbeat: dict[str, Any], ticks_age: float | None, *, seconds_open: float, limit: float
) -> str | None:
    """Why the ticks are overdue while the market is open, or None."""
    state = heartbeat.get("state", heartbeat.get("status"))
    if state not in _STREAMING_STATES or not _number(heartbeat.get("instruments")):
        return None  # idle (no keys), starting, waiting for the lease: no tick is expected
    if ticks_age is None:
        # Waiting counts from the open, or from when a feed connection came up if later.
        connections = heartbeat.get("connections")
        up = [n for c in (connections if isinstance(connections, list) else [])
              if isinstance(c, dict) and (n := _number(c.get("connected_for_s"))) is not None]
        waited = min(seconds_open, max(up)) if up else seconds_open
        if waited > limit:
            return f"no tick received yet: {waited:.0f} s of the session without one"
        return None
    if min(ticks_age, seconds_open) > limit:
        return f"newest tick {ticks_age:.0f} s old, more than {limit:g} s, while the market is open"
    return None


def bridge_part(
    raw: bytes | str | None, *, now: float, limit: float
) -> tuple[dict[str, Any] | None, str | None]:
    """The answer's `bridge` and, when the bridge heartbeat is missing or old, the reason."""
    status = _document(raw)
    if status is None:
        if raw is None:
            return None, "no relay bridge heartbeat: prices do not reach the WebSocket clients"
        return None, "the relay bridge heartbeat is not a JSON object"
    stamp = heartbeat_time(status)
    age = None if stamp is None else round(now - stamp, 3)
    part = {"heartbeat_age_seconds": age, "heartbeat": status}
    if age is None:
        return part, "the relay bridge heartbeat carries no readable time"
    if age > limit:
        return part, f"relay bridge heartbeat {age:.0f} s old, more than {limit:g} s"
    return part, None


def assess(
    raw: bytes | str | None,
    *,
    now: float,
    stale_after: float,
    bridge: bytes | str | None = None,
    session: NseSession | None = None,
    tick_stale_after: float = 30.0,
    bridge_stale_after: float = 45.0,
) -> dict[str, Any]:
    """Pure: the status part of the answer from the raw heartbeats (streamer, bridge) and the
    clock; `session` None is NSE's session without holidays."""
    calendar = session or NseSession()
    seconds_open = calendar.seconds_open(now)
    bridge_answer, bridge_problem = bridge_part(bridge, now=now, limit=bridge_stale_after)
    answer: dict[str, Any] = {
        "market_open": seconds_open is not None,
        "bridge": bridge_answer,
        "tick_age_seconds": None,
    }

    def done(status: str, age: float | None, heartbeat: Any, detail: str,
             reasons: list[str]) -> dict[str, Any]:  # fmt: skip
        return {"status": status, "heartbeat_age_seconds": age, "heartbeat": heartbeat,
                "detail": detail, "reasons": reasons, **answer}  # fmt: skip

    if raw is None:
        detail = "no heartbeat: the streamer is not running"
        return done(STOPPED, None, None, detail, [detail])
    heartbeat = _document(raw)
    if heartbeat is None:
        detail = "the heartbeat is not a JSON object"
        return done(STALE, None, None, detail, [detail])
    stamp = heartbeat_time(heartbeat)
    state = heartbeat.get("state", heartbeat.get("status"))
    if isinstance(state, str) and state.lower() in _STOPPED_STATES:
        age = None if stamp is None else round(now - stamp, 3)
        detail = f"the streamer reported {state!r}"
        return done(STOPPED, age, heartbeat, detail, [detail])
    if stamp is None:
        detail = "the heartbeat carries no readable time"
        return done(STALE, None, heartbeat, detail, [detail])
    age = now - stamp
    answer["tick_age_seconds"] = ticks_age = tick_age(heartbeat, age)
    if age > stale_after:
        detail = f"heartbeat {age:.1f} s old, more than {stale_after:g} s"
        return done(STALE, round(age, 3), heartbeat, detail, [detail])

    reasons: list[str] = []
    if seconds_open is None and heartbeat.get("market_open") is True and not calendar.holiday(now):
        # The streamer streams by its own clock (a special session outside the usual hours, or
        # one forced open): ticks are due as long as it has been streaming. (Its clock knows no
        # holidays; on one, no tick is due whatever it says.)
        seconds_open = _number(heartbeat.get("beating_for_s"))
        answer["market_open"] = seconds_open is not None
    if seconds_open is not None:
        overdue = tick_reason(heartbeat, ticks_age, seconds_open=seconds_open,
                              limit=tick_stale_after)  # fmt: skip
        if overdue:
            reasons.append(overdue)
    reasons.extend(fatal_reasons(heartbeat))
    if bridge_problem:
        reasons.append(bridge_problem)
    if reasons:
        return done(DEGRADED, round(age, 3), heartbeat, "; ".join(reasons), reasons)
    return done(HEALTHY, round(age, 3), heartbeat, f"heartbeat {age:.1f} s old", [])


TOKEN_WARN_SECONDS = 6 * 3600.0


def token_part(heartbeat: Any, status_raw: bytes | str | None, *,
               now: float) -> tuple[dict[str, Any], str | None]:
    """The answer's `token` and, once the token has expired, the reason to degrade. The
    streamer's heartbeat knows the token in use; the renewal job's status the one in the
    secret and how its last run went."""
    status = _document(status_raw) or {}
    used = heartbeat.get("token") if isinstance(heartbeat, dict) else None
    expires_at = _number(used.get("expires_at")) if isinstance(used, dict) else None
    if expires_at is None:
        expires_at = _number(status.get("expires_at"))
    left = None if expires_at is None else round(expires_at - now)
    part: dict[str, Any] = {
        "expires_at": None if expires_at is None else _iso(expires_at),
        "seconds_left": left,
        "last_renewal": {k: status.get(k) for k in ("result", "checked_at", "renewed_at",
                                                      "error")} if status else None,
    }
    if left is None:
        part["note"] = "the token's expiry is unknown (no streamer heartbeat, no renewal run)"
        return part, None
    if left <= 0:
        return part, (f"the DhanHQ access token expired {-left / 60:.0f} min ago: the feed "
                      "refuses it (README: renewing the DhanHQ token by hand)")
    if left < TOKEN_WARN_SECONDS:
        part["warning"] = (f"the DhanHQ access token expires in {left / 3600:.1f} h and has not "
                           "been renewed")
    return part, None


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, IST).isoformat(timespec="seconds")


def master_part(meta: Mapping[Any, Any]) -> dict[str, Any]:
    """What the loaded instrument master is; without one, symbols are unknown (nothing else
    depends on it), which the answer notes without counting it against the status."""
    if not meta:
        return {"loaded": False, "note": "no instrument master loaded: prices stream, but "
                "without symbols and without checking keys against the master"}
    fields = {as_text(k): as_text(v) for k, v in meta.items()}
    rows = fields.get("rows", "")
    return {"loaded": True, "rows": int(rows) if rows.isdigit() else None,
            "loaded_at": fields.get("loaded_at"), "source": _public(fields.get("source", ""))}


def _public(source: str) -> str:
    """A source URL without credentials or query (a presigned URL must not be published)."""
    parts = urlsplit(source)
    if not parts.scheme:
        return source
    host = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def market_stream_health(
    *,
    redis: Redis,
    service: StreamerService | None,
    connection_count: Callable[[], int | None],
    now: float,
    stale_after: float,
    tick_stale_after: float = 30.0,
    bridge_stale_after: float = 45.0,
    session: Callable[[], NseSession] | None = None,
) -> dict[str, Any]:
    """The whole answer: one MGET of both heartbeats, the streams, connections, ECS counts.
    `session` builds the market session (default: NSE with the shipped holidays)."""
    heartbeat, bridge, token_status = redis.mget([HEARTBEAT_KEY, BRIDGE_HEARTBEAT,
                                                  TOKEN_STATUS_KEY])
    answer = assess(heartbeat, now=now, stale_after=stale_after, bridge=bridge,
                    session=(session or shipped_session)(), tick_stale_after=tick_stale_after,
                    bridge_stale_after=bridge_stale_after)  # fmt: skip
    answer["token"], expired = token_part(answer["heartbeat"], token_status, now=now)
    if expired and answer["status"] in (HEALTHY, DEGRADED):
        answer["reasons"] = [*answer["reasons"], expired]
        answer["status"], answer["detail"] = DEGRADED, "; ".join(answer["reasons"])
    answer["thresholds"] = {"healthy_max_age_seconds": stale_after,
                            "tick_max_age_seconds": tick_stale_after,
                            "bridge_max_age_seconds": bridge_stale_after}  # fmt: skip

    streams = read_indexed_streams(redis=redis)
    names = sorted(streams)
    answer["streams"] = {
        "count": len(streams),
        "keys": union_size(list(streams.values())),
        "names": names[:MAX_LISTED_STREAMS],
    }

    answer["websocket_connections"] = connection_count()
    answer["instrument_master"] = master_part(redis.hgetall(INSTRUMENT_META_KEY))

    if service is None:
        answer["streamer_service"] = {"managed": False}
    else:
        try:
            answer["streamer_service"] = {"managed": True, **service.counts().as_dict()}
        except ScalingError as exc:
            answer["streamer_service"] = {"managed": True, "error": str(exc)}
        if isinstance(service, CachedCounts):
            answer["streamer_service"]["age_seconds"] = service.age()
    answer["cached_for_seconds"] = 0.0
    answer["cache_age_seconds"] = 0.0
    return answer


class HealthCache:
    """The whole answer, reused for `ttl` seconds of `clock` (0: never reused). One answer is
    computed at a time: concurrent requests for a stale one wait for it rather than each
    reading Redis. Only answers are kept; a failure (Redis down: a 503) is not."""

    def __init__(self, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._answer: dict[str, Any] | None = None
        self._at = 0.0

    def answer(self, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        with self._lock:
            now = self._clock()
            if self._answer is None or now - self._at >= self.ttl:
                self._answer, self._at = compute(), now
            answer, age = self._answer, now - self._at
        return {**answer, "cached_for_seconds": self.ttl, "cache_age_seconds": round(age, 3)}


class CachedCounts:
    """A streamer service whose `counts()` (ECS DescribeServices) are reused for `ttl` seconds
    of `clock`, failures included; `scale` goes through and forgets them. For health only."""

    def __init__(self, service: StreamerService, *, ttl: float,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.service = service
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._value: ServiceCounts | ScalingError | None = None
        self._at = 0.0

    def counts(self) -> ServiceCounts:
        with self._lock:
            now = self._clock()
            if self._value is None or now - self._at >= self.ttl:
                try:
                    self._value = self.service.counts()
                except ScalingError as exc:
                    self._value = exc
                self._at = now
            value = self._value
        if isinstance(value, ScalingError):
            raise ScalingError(str(value))
        return value

    def age(self) -> float | None:
        """Seconds since the counts (or the failure) were read; None before the first read."""
        with self._lock:
            return None if self._value is None else round(self._clock() - self._at, 3)

    def scale(self, desired: int) -> None:
        with self._lock:
            self._value = None
        self.service.scale(desired)


class CountsCache:
    """One `CachedCounts` per container, for whichever service the deps hand out (built once
    in production; a different one, as tests swap it, starts afresh)."""

    def __init__(self, *, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: CachedCounts | None = None

    def of(self, service: StreamerService | None) -> CachedCounts | None:
        if service is None:
            return None
        with self._lock:
            if self._cached is None or self._cached.service is not service:
                self._cached = CachedCounts(service, ttl=self.ttl, clock=self._clock)
            return self._cached
