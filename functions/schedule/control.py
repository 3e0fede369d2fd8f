"""Starting and stopping the stream: the same operations the HTTP API's routes run.

`StreamControl` is what the scheduler needs; `RegistryStreamControl` implements it with
`functions.streams` (registry lock, control-channel announcement, ECS scaling), so a scheduled
start and an API start can race or repeat without harm.
  start: `start_streams([])` registers nothing and makes sure the streamer runs (desired 1);
         it subscribes to every registered stream plus its own STREAM_KEYS.
  stop:  scales the service to 0 and erases nothing: the deployment's watchlist lives in the
         streamer's STREAM_KEYS, and a named stream ends by itself an hour after the last
         streamer that refreshed it stopped (its TTL), so it lives until stopped or the close.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Protocol

from redis import Redis

from functions.streams import StreamerService, read_streams, start_streams, stop_streamer


class StreamControl(Protocol):
    def start(self) -> dict[str, Any]: ...

    def stop(self) -> dict[str, Any]: ...


class RegistryStreamControl:
    def __init__(self, *, redis: Redis, service: StreamerService | None) -> None:
        self._redis = redis
        self._service = service

    def start(self) -> dict[str, Any]:
        return asdict(start_streams([], redis=self._redis, service=self._service))

    def stop(self) -> dict[str, Any]:
        return {"streamer": stop_streamer(self._service),
                "streams_left": sorted(read_streams(redis=self._redis))}
