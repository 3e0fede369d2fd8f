"""What the API's routes work with, built once per execution environment by the entry point.

Heavy clients are built lazily, on the paths that use them: boto3 (ECS, Secrets Manager) only
when an ARN or a streamer service is configured and a route needs it; on the first cache miss
boto3's Lambda client when a quotes function is configured (QUOTE_FUNCTION_NAME, AWS), else the
`dhanhq` SDK (the local run fetches in-process). A cold start that serves cached prices imports
neither.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from redis import Redis
from redis.connection import HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE

from core.instruments import InstrumentKey
from core.redis_client import sync_client
from functions.api.observability import ApiMetrics, logger
from functions.api.quotes import RemoteQuotes, lambda_client
from functions.dhan_rest import FetchResult, SdkSourceCache
from functions.quotes.fetch import fetch_quotes
from functions.secrets import SecretsCache, secrets_for
from functions.settings import Settings
from functions.streams import EcsStreamerService, StreamerService
from realtime.registry import live_connections

if HIREDIS_AVAILABLE:
    import hiredis

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

SERVICE_NAME = "ltp-api"
T = TypeVar("T")
# Screened misses (canonical keys) and the caller -> what DhanHQ answered for them.
QuoteFetch = Callable[[Sequence[str], str | None], FetchResult]


class StrCommandPacker(HiredisRespSerializer):
    """redis-py's hiredis command packer, without its Python pass per argument for commands
    whose arguments are all str: ~0.1 us an argument, a fifth of a 1,000-key MGET's time.

    redis-py's `HiredisRespSerializer.pack` splits the command name on blanks and turns every
    bytearray/memoryview argument into bytes (in a generator, one step per argument) before
    `hiredis.pack_command`. When every argument is a str and the name has no blank, neither
    step changes anything, so `hiredis.pack_command(args)` gives the same bytes. Any other
    command takes redis-py's path unchanged (hiredis must not see a memoryview: it packs a
    non-contiguous one wrongly).
    """

    def pack(self, *args: Any) -> list[bytes]:
        try:
            "".join(args)  # C-level: TypeError unless every argument is a str
        except TypeError:
            return list(super().pack(*args))
        if args[0].split() != [args[0]]:
            return list(super().pack(*args))
        return [hiredis.pack_command(args)]


def connect_redis(settings: Settings, *, secrets: SecretsCache | None = None) -> Redis:
    """The API's client (`core.redis_client`, the API's short timeouts and one retry), with
    the str command packer. Nothing connects until the first command."""
    extra: dict[str, Any] = {}
    if HIREDIS_AVAILABLE:
        extra["command_packer"] = StrCommandPacker()
    return sync_client(settings.redis, secrets=secrets, **extra)


class Lazy(Generic[T]):
    """A value built on first use, once, even with concurrent first uses."""

    def __init__(self, build: Callable[[], T]) -> None:
        self._build = build
        self._lock = threading.Lock()
        self._value: T | None = None

    def __call__(self) -> T:
        if self._value is None:
            with self._lock:
                if self._value is None:
                    self._value = self._build()
        return self._value


def _not_managed() -> StreamerService | None:
    return None


@dataclass(frozen=True)
class ApiDeps:
    settings: Settings
    redis: Redis
    metrics: ApiMetrics
    dhan_sources: SdkSourceCache
    connection_count: Callable[[], int | None]
    secrets: SecretsCache | None = None
    streamer_service: Callable[[], StreamerService | None] = _not_managed
    wall_clock: Callable[[], float] = time.time
    # The quotes function's caller (AWS); None: `quotes` fetches in this process.
    remote_quotes: QuoteFetch | None = None

    def quotes(self, keys: Sequence[str], caller: str | None) -> FetchResult:
        """DhanHQ's prices of screened misses: through the quotes function when one is
        configured, else with this process's own credentials (read at each call, from
        `self.secrets`), by the same `fetch_quotes` the function runs."""
        if self.remote_quotes is not None:
            return self.remote_quotes(keys, caller)
        # Canonical keys (functions.api.keys): a split is a parse.
        parsed = [InstrumentKey(*key.split(":", 1)) for key in keys]
        return fetch_quotes(parsed, caller=caller, settings=self.settings, redis=self.redis,
                            secrets=self.secrets, sources=self.dhan_sources, log=logger)

    @classmethod
    def for_settings(
        cls,
        settings: Settings,
        *,
        redis: Redis,
        metrics: ApiMetrics,
        secrets: SecretsCache | None = None,
    ) -> ApiDeps:
        """The production wiring: boto3 clients built on first use, from the environment."""
        if secrets is None:
            secrets = secrets_for(settings)
        service: Callable[[], StreamerService | None] = _not_managed
        if settings.streamer_managed:
            service = Lazy(
                lambda: EcsStreamerService(
                    ecs=_boto3_ecs_client(),
                    cluster=settings.streamer_cluster,
                    service=settings.streamer_service,
                )
            )
        remote: QuoteFetch | None = None
        if settings.quote_function_name:
            remote = RemoteQuotes(
                client=Lazy(lambda: lambda_client(budget=settings.dhan_rest_budget)),
                function_name=settings.quote_function_name,
                budget=settings.dhan_rest_budget,
            )
        return cls(
            settings=settings,
            redis=redis,
            metrics=metrics,
            dhan_sources=SdkSourceCache(base_url=settings.dhan_api_base_url),
            connection_count=lambda: live_connections(redis),
            secrets=secrets,
            streamer_service=service,
            remote_quotes=remote,
        )


def _boto3_ecs_client() -> ECSClient:
    import boto3

    return boto3.client("ecs")
