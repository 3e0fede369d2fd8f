"""Named streams (screeners) and the streamer's ECS service: register, end, scale, read.

Registry (seed-compatible): `websocket_stream:{NAME}` holds JSON
  {"name": NAME, "keys": ["NSE_EQ:1333", ...], "mode": "ticker|quote|full", "by": ..., "at": ISO}
with a 1 h TTL that every start refreshes. The record's writer and its one reader live in
`core.stream_record`, shared with the streamer; so the API also reads the other writers' forms
(a bare JSON list, comma-separated keys) and drops non-string keys where it used to treat such
a record as unreadable. The streamer subscribes to the union of all `keys`
and re-reads the registry when `{"type": "streams_changed", "name": NAME}` arrives on
`core.names.CONTROL_CHANNEL`.

Index (the project's own): `market_stream:streams` (`STREAM_INDEX_KEY`), a SET of the names of
registered streams, so that health reads the streams with SMEMBERS + MGET instead of a SCAN of
the whole keyspace (`read_indexed_streams`). Start and stop keep it in the same pipeline, under
the same lock, as the records they write and delete; both also add every stream their SCAN
found, so a record written by another writer (the seed's) joins the index at the next start or
stop. A record that lapsed (its 1 h TTL) leaves the index when a reader sees it missing: a
script removes exactly the names whose record is still absent, so a start re-registering one
between the read and the removal keeps it. Not under `websocket_stream:` on purpose: a SCAN of
`websocket_stream:*` (the streamer's, `streamer.keysource`) must see only streams.

`start_streams` / `stop_streams` are the whole operations (registry + announcement + scaling)
and are shared by the API's start/stop routes and the scheduler. The read-check-write of the
registry and the scaling decision run under a short Redis lock, so two concurrent starts cannot
together pass the 25,000-key cap and a stop cannot scale the service to zero while a start it
raced with is registering a stream.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from redis import Redis

from core.config import WS_MODES
from core.messages import dumps, utc_now_iso
from core.names import (
    CONTROL_CHANNEL,
    STREAM_INDEX_KEY,
    STREAM_PATTERN,
    STREAM_REGISTRY_LOCK_KEY,
    STREAM_TTL_SECONDS,
    stream_key,
    stream_name,
)
from core.redis_client import RELEASE_IF_OWNER, as_text
from core.stream_record import StreamRecord, parse_stream_record
from functions.errors import RegistryBusy, ScalingError, StreamError, StreamLimitError

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# The feed takes 5 connections x 5,000 instruments per client id.
MAX_STREAM_KEYS = 25_000
MAX_BY_LENGTH = 128
STREAMS_CHANGED = "streams_changed"

LOCK_TTL_MS = 15_000
LOCK_WAIT_SECONDS = 3.0

# KEYS[1]: the index, KEYS[2..]: the records of ARGV's names. Removes each name whose record
# does not exist now (atomically: a record written since the reader's MGET keeps its name).
_PRUNE = """
local removed = 0
for i, name in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    removed = removed + redis.call('SREM', KEYS[1], name)
  end
end
return removed
"""

# Streamer states reported by start/stop.
NOT_MANAGED = "not_managed"
STARTED = "started"
ALREADY_RUNNING = "already_running"
STOPPED = "stopped"
ALREADY_STOPPED = "already_stopped"
STILL_NEEDED = "still_needed"


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise StreamError(
            f"stream name must be 1-64 characters of letters, digits, '_', '.' or '-', "
            f"got {name!r:.80}"
        )
    return name


def validate_mode(mode: object) -> str:
    if not isinstance(mode, str) or mode.lower() not in WS_MODES:
        raise StreamError(f"mode must be one of {', '.join(WS_MODES)}, got {mode!r:.40}")
    return mode.lower()


@dataclass(frozen=True, slots=True)
class Stream(StreamRecord):
    """A registered stream: the shared record (`core.stream_record`: fields, JSON writer and
    reader) plus the API's validation."""

    @classmethod
    def create(cls, name: object, keys: Sequence[str], mode: object, *, by: str = "") -> Stream:
        """A validated stream stamped with the current time; keys must already be canonical."""
        if len(keys) > MAX_STREAM_KEYS:
            raise StreamLimitError(
                f"a stream may have at most {MAX_STREAM_KEYS} keys ({len(keys)} given)"
            )
        return cls(validate_name(name), tuple(keys), validate_mode(mode), by[:MAX_BY_LENGTH],
                   utc_now_iso())  # fmt: skip

    @classmethod
    def from_json(cls, name: str, raw: bytes | str) -> Stream | None:
        """Read a registry value defensively: None when it is not a stream record
        (`core.stream_record.parse_stream_record` says which forms are)."""
        record = parse_stream_record(name, raw)
        if record is None:
            return None
        return cls(record.name, record.keys, record.mode, record.by, record.at, record.dropped)

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "keys": len(self.keys), "mode": self.mode, "by": self.by,
                "at": self.at}  # fmt: skip


def read_streams(*, redis: Redis) -> dict[str, Stream | None]:
    """Every registered stream by name (None for a value that is not a valid stream)."""
    names = sorted({as_text(raw) for raw in redis.scan_iter(match=STREAM_PATTERN, count=500)})
    if not names:
        return {}
    values = redis.mget(names)
    streams: dict[str, Stream | None] = {}
    for key, raw in zip(names, values, strict=True):
        if raw is not None:  # expired between SCAN and MGET
            streams[stream_name(key)] = Stream.from_json(stream_name(key), raw)
    return streams


def read_indexed_streams(*, redis: Redis) -> dict[str, Stream | None]:
    """Every indexed stream by name (None for a value that is not a valid stream), without a
    SCAN: SMEMBERS of the index, one MGET of the records; lapsed names are pruned."""
    names = sorted(as_text(raw) for raw in redis.smembers(STREAM_INDEX_KEY))
    if not names:
        return {}
    values = redis.mget([stream_key(name) for name in names])
    streams: dict[str, Stream | None] = {}
    lapsed: list[str] = []
    for name, raw in zip(names, values, strict=True):
        if raw is None:
            lapsed.append(name)
        else:
            streams[name] = Stream.from_json(name, raw)
    if lapsed:
        redis.eval(_PRUNE, 1 + len(lapsed), STREAM_INDEX_KEY,
                   *(stream_key(name) for name in lapsed), *lapsed)  # fmt: skip
    return streams


def union_size(streams: Sequence[Stream | None]) -> int:
    keys: set[str] = set()
    for stream in streams:
        if stream is not None:
            keys.update(stream.keys)
    return len(keys)


# --- the streamer's ECS service ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ServiceCounts:
    desired: int
    running: int
    pending: int
    status: str

    def as_dict(self) -> dict[str, Any]:
        return {"desired": self.desired, "running": self.running, "pending": self.pending,
                "status": self.status}  # fmt: skip


class StreamerService(Protocol):
    def counts(self) -> ServiceCounts: ...

    def scale(self, desired: int) -> None: ...


class EcsStreamerService:
    """The streamer's ECS service, scaled between 0 and 1 task."""

    def __init__(self, *, ecs: ECSClient, cluster: str, service: str) -> None:
        self._ecs = ecs
        self.cluster = cluster
        self.service = service

    def counts(self) -> ServiceCounts:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._ecs.describe_services(cluster=self.cluster, services=[self.service])
        except (BotoCoreError, ClientError) as exc:
            raise ScalingError(f"ECS describe_services failed: {_aws_reason(exc)}") from exc
        services = answer.get("services") or []
        if not services:
            reasons = ", ".join(f.get("reason", "?") for f in answer.get("failures") or [])
            raise ScalingError(f"ECS service {self.service} not found in {self.cluster}: "
                               f"{reasons or 'no such service'}")  # fmt: skip
        found = services[0]
        return ServiceCounts(
            desired=int(found.get("desiredCount", 0)),
            running=int(found.get("runningCount", 0)),
            pending=int(found.get("pendingCount", 0)),
            status=str(found.get("status", "UNKNOWN")),
        )

    def scale(self, desired: int) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._ecs.update_service(
                cluster=self.cluster, service=self.service, desiredCount=desired
            )
        except (BotoCoreError, ClientError) as exc:
            raise ScalingError(f"ECS update_service failed: {_aws_reason(exc)}") from exc


def ensure_streamer(service: StreamerService | None) -> str:
    """Desired count 1 unless it already is (a starting task counts as running)."""
    if service is None:
        return NOT_MANAGED
    if service.counts().desired >= 1:
        return ALREADY_RUNNING
    service.scale(1)
    return STARTED


def stop_streamer(service: StreamerService | None) -> str:
    if service is None:
        return NOT_MANAGED
    if service.counts().desired == 0:
        return ALREADY_STOPPED
    service.scale(0)
    return STOPPED


# --- start / stop -----------------------------------------------------------------------------


@dataclass
class StartResult:
    streams: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    total_keys: int = 0
    active_streams: int = 0
    streamer: str = NOT_MANAGED


@dataclass
class StopResult:
    stopped: list[str] = field(default_factory=list)
    not_found: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)
    total_keys: int = 0
    streamer: str = NOT_MANAGED


def start_streams(
    streams: Sequence[Stream],
    *,
    redis: Redis,
    service: StreamerService | None,
    max_keys: int = MAX_STREAM_KEYS,
    lock_wait: float = LOCK_WAIT_SECONDS,
) -> StartResult:
    """Register (or refresh) streams, announce changes, and make sure the streamer runs.

    Idempotent: the same stream again only refreshes its TTL. With no streams it only makes
    sure the streamer runs (what the scheduler does before the open).
    """
    with registry_lock(redis=redis, wait=lock_wait):
        current = read_streams(redis=redis)
        replaced = {stream.name for stream in streams}
        after = [s for name, s in current.items() if name not in replaced] + list(streams)
        total = union_size(after)
        if total > max_keys:
            raise StreamLimitError(
                f"the active streams would need {total} distinct keys together, more than the "
                f"{max_keys} the feed can carry (5 connections x 5,000); stop a stream or "
                f"send fewer keys"
            )
        changed = [s.name for s in streams if _differs(current.get(s.name), s)]
        pipe = redis.pipeline(transaction=False)
        for stream in streams:
            pipe.set(stream_key(stream.name), stream.to_json(), ex=STREAM_TTL_SECONDS)
        if current or replaced:
            pipe.sadd(STREAM_INDEX_KEY, *sorted({*current, *replaced}))
        for name in changed:
            pipe.publish(CONTROL_CHANNEL, dumps({"type": STREAMS_CHANGED, "name": name}))
        pipe.execute()
        state = ensure_streamer(service)
    return StartResult(streams=[s.name for s in streams], changed=changed, total_keys=total,
                       active_streams=len({*current, *replaced}), streamer=state)  # fmt: skip


def stop_streams(
    names: Sequence[str] | None,
    *,
    redis: Redis,
    service: StreamerService | None,
    lock_wait: float = LOCK_WAIT_SECONDS,
) -> StopResult:
    """End the named streams (all when `names` is None); scale to 0 when none is left.

    Idempotent: ending a stream that does not exist is not an error.
    """
    with registry_lock(redis=redis, wait=lock_wait):
        current = read_streams(redis=redis)
        targets = list(current) if names is None else [validate_name(n) for n in names]
        stopped = [name for name in targets if name in current]
        remaining = [name for name in current if name not in set(targets)]
        pipe = redis.pipeline(transaction=False)
        if stopped:
            pipe.delete(*(stream_key(name) for name in stopped))
            for name in stopped:
                pipe.publish(CONTROL_CHANNEL, dumps({"type": STREAMS_CHANGED, "name": name}))
        # Named ones leave the index even when their record had already lapsed.
        if names is None:
            pipe.delete(STREAM_INDEX_KEY)
        elif targets:
            pipe.srem(STREAM_INDEX_KEY, *targets)
        if remaining:
            pipe.sadd(STREAM_INDEX_KEY, *remaining)
        pipe.execute()
        total = union_size([current[name] for name in remaining])
        state = STILL_NEEDED if remaining else stop_streamer(service)
    return StopResult(stopped=stopped, not_found=[n for n in targets if n not in current],
                      remaining=remaining, total_keys=total, streamer=state)  # fmt: skip


@contextmanager
def registry_lock(*, redis: Redis, wait: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    while not redis.set(STREAM_REGISTRY_LOCK_KEY, token, nx=True, px=LOCK_TTL_MS):
        if time.monotonic() >= deadline:
            raise RegistryBusy("another stream start/stop is in progress; retry shortly")
        time.sleep(0.02)
    try:
        yield
    finally:
        redis.eval(RELEASE_IF_OWNER, 1, STREAM_REGISTRY_LOCK_KEY, token)


def _differs(before: Stream | None, after: Stream) -> bool:
    return before is None or before.keys != after.keys or before.mode != after.mode


def _aws_reason(exc: Exception) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code, message = error.get("Code"), error.get("Message")
        if code:
            return f"{code}: {message}" if message else str(code)
    return type(exc).__name__
