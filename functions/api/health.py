"""Market stream health: heartbeat age, streamer service, streams, WebSocket connections.

Status from `market_stream:heartbeat` (written by the streamer every <= 30 s, TTL 60 s):
  healthy   a heartbeat at most `HEARTBEAT_STALE_SECONDS` (default 45 s: one missed refresh
            plus slack) old
  stale     a heartbeat older than that, or one whose time cannot be read
  stopped   no heartbeat (the streamer is not running, or has been silent for 60 s), or a
            last heartbeat that says the streamer stopped
The heartbeat is read defensively: its time may be `updated_at`, `time`, `at` or `timestamp`,
as ISO-8601 text or epoch seconds (or milliseconds).

The answer is 200 whatever the status (the body says it); only Redis being down is a 503.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from redis import Redis

from core.messages import loads
from core.names import HEARTBEAT_KEY
from functions.errors import ScalingError
from functions.streams import StreamerService, read_streams, union_size

HEALTHY = "healthy"
STALE = "stale"
STOPPED = "stopped"

_TIME_FIELDS = ("updated_at", "time", "at", "timestamp")
_STOPPED_STATES = {"stopped", "stopping", "closed"}
MAX_LISTED_STREAMS = 100


def heartbeat_time(heartbeat: dict[str, Any]) -> float | None:
    """Epoch seconds of a heartbeat, or None when no field holds a readable time."""
    for field in _TIME_FIELDS:
        value = heartbeat.get(field)
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


def assess(raw: bytes | str | None, *, now: float, stale_after: float) -> dict[str, Any]:
    """Pure: the status part of the answer from the raw heartbeat value."""
    if raw is None:
        return {"status": STOPPED, "heartbeat_age_seconds": None, "heartbeat": None,
                "detail": "no heartbeat: the streamer is not running"}  # fmt: skip
    try:
        heartbeat = loads(raw)
    except ValueError:
        heartbeat = None
    if not isinstance(heartbeat, dict):
        return {"status": STALE, "heartbeat_age_seconds": None, "heartbeat": None,
                "detail": "the heartbeat is not a JSON object"}  # fmt: skip
    stamp = heartbeat_time(heartbeat)
    state = heartbeat.get("state", heartbeat.get("status"))
    if isinstance(state, str) and state.lower() in _STOPPED_STATES:
        age = None if stamp is None else round(now - stamp, 3)
        return {"status": STOPPED, "heartbeat_age_seconds": age, "heartbeat": heartbeat,
                "detail": f"the streamer reported {state!r}"}  # fmt: skip
    if stamp is None:
        return {"status": STALE, "heartbeat_age_seconds": None, "heartbeat": heartbeat,
                "detail": "the heartbeat carries no readable time"}  # fmt: skip
    age = now - stamp
    status = HEALTHY if age <= stale_after else STALE
    detail = (
        f"heartbeat {age:.1f} s old"
        if status == HEALTHY
        else f"heartbeat {age:.1f} s old, more than {stale_after:g} s"
    )
    return {"status": status, "heartbeat_age_seconds": round(age, 3), "heartbeat": heartbeat,
            "detail": detail}  # fmt: skip


def market_stream_health(
    *,
    redis: Redis,
    service: StreamerService | None,
    connection_count: Callable[[], int | None],
    now: float,
    stale_after: float,
) -> dict[str, Any]:
    answer = assess(redis.get(HEARTBEAT_KEY), now=now, stale_after=stale_after)
    answer["thresholds"] = {"healthy_max_age_seconds": stale_after}

    streams = read_streams(redis=redis)
    names = sorted(streams)
    answer["streams"] = {
        "count": len(streams),
        "keys": union_size(list(streams.values())),
        "names": names[:MAX_LISTED_STREAMS],
    }

    answer["websocket_connections"] = connection_count()

    if service is None:
        answer["streamer_service"] = {"managed": False}
    else:
        try:
            answer["streamer_service"] = {"managed": True, **service.counts().as_dict()}
        except ScalingError as exc:
            answer["streamer_service"] = {"managed": True, "error": str(exc)}
    return answer
