"""What the API's routes work with, built once per execution environment by the entry point.

Heavy clients are built lazily, on the paths that use them: boto3 (ECS, Secrets Manager) only
when an ARN or a streamer service is configured and a route needs it; the `dhanhq` SDK only on
the first cache miss. A cold start that serves cached prices imports neither.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from redis import Redis
from redis.backoff import NoBackoff
from redis.connection import HiredisRespSerializer
from redis.credentials import CredentialProvider
from redis.retry import Retry
from redis.utils import HIREDIS_AVAILABLE

from core.names import WS_CONNECTIONS_KEY
from functions.api.observability import ApiMetrics
from functions.dhan_rest import SdkSourceCache
from functions.secrets import SecretsCache, SecretsClient, resolve_redis_password
from functions.settings import Settings
from functions.streams import EcsStreamerService, StreamerService

if HIREDIS_AVAILABLE:
    import hiredis

if TYPE_CHECKING:
    from mypy_boto3_ecs import ECSClient

SERVICE_NAME = "ltp-api"
T = TypeVar("T")


class SecretPassword(CredentialProvider):
    """Redis AUTH from REDIS_AUTH_TOKEN or the secret named by REDIS_AUTH_SECRET_ARN, read for
    each new connection through the secrets cache, so a rotated token is picked up by the next
    connection instead of needing a cold start."""

    def __init__(self, settings: Settings, *, secrets: SecretsCache | None) -> None:
        self._settings = settings
        self._secrets = secrets

    def get_credentials(self) -> tuple[str]:
        return (resolve_redis_password(self._settings, secrets=self._secrets).value,)


def secrets_for(settings: Settings) -> SecretsCache | None:
    """A Secrets Manager cache when any ARN is configured (boto3 built on first read)."""
    if not settings.uses_secrets_manager:
        return None
    return SecretsCache(client_factory=_boto3_secrets_client,
                        ttl_seconds=settings.secrets_cache_seconds)  # fmt: skip


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
    """A client with short timeouts and one immediate retry (a pooled socket that went stale
    while the Lambda was frozen); Redis being down must become a quick 503, not a hang.
    Nothing connects until the first command."""
    extra: dict[str, Any] = {}
    if settings.redis_auth_secret_arn or settings.redis_auth_token:
        extra["credential_provider"] = SecretPassword(settings, secrets=secrets)
    if HIREDIS_AVAILABLE:
        extra["command_packer"] = StrCommandPacker()
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=30,
        **extra,
    )


def count_connections(redis: Redis, *, now: float | None = None) -> int:
    """Live WebSocket connections: members of the registry's ZSET whose expiry is ahead
    (the registry of `functions.ws` scores each connection id by its expiry time)."""
    current = time.time() if now is None else now
    return int(redis.zcount(WS_CONNECTIONS_KEY, f"({current}", "+inf"))


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
        return cls(
            settings=settings,
            redis=redis,
            metrics=metrics,
            dhan_sources=SdkSourceCache(base_url=settings.dhan_api_base_url),
            connection_count=lambda: count_connections(redis),
            secrets=secrets,
            streamer_service=service,
        )


def _boto3_secrets_client() -> SecretsClient:
    import boto3

    client: SecretsClient = boto3.client("secretsmanager")
    return client


def _boto3_ecs_client() -> ECSClient:
    import boto3

    return boto3.client("ecs")
