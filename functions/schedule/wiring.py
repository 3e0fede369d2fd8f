"""Real clients for the scheduler, built once per execution environment.

Settings are the shared `functions.settings.Settings` (REDIS_URL, REDIS_AUTH_TOKEN or
REDIS_AUTH_SECRET_ARN, STREAMER_CLUSTER, STREAMER_SERVICE, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache
from typing import Any

from redis import Redis

from functions.schedule.control import RegistryStreamControl
from functions.schedule.nse_calendar import load_shipped
from functions.schedule.runner import MarketHoursScheduler, utc_now
from functions.secrets import SecretsCache, SecretsClient, resolve_redis_password
from functions.settings import Settings
from functions.streams import EcsStreamerService, StreamerService


def _secrets_client() -> SecretsClient:
    import boto3

    client: SecretsClient = boto3.client("secretsmanager")
    return client


def build_scheduler(
    environ: Mapping[str, str] | None = None,
    *,
    secrets: SecretsCache | None = None,
    service: StreamerService | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> MarketHoursScheduler:
    settings = Settings.from_env(environ)
    if secrets is None and settings.redis_auth_secret_arn:
        secrets = SecretsCache(
            client_factory=_secrets_client, ttl_seconds=settings.secrets_cache_seconds
        )
    password = resolve_redis_password(settings, secrets=secrets).value
    redis = Redis.from_url(
        settings.redis_url,
        password=password or None,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
    )
    if service is None and settings.streamer_managed:
        import boto3

        service = EcsStreamerService(
            ecs=boto3.client("ecs"),
            cluster=settings.streamer_cluster,
            service=settings.streamer_service,
        )
    return MarketHoursScheduler(
        control=RegistryStreamControl(redis=redis, service=service),
        calendar=load_shipped(),
        clock=clock,
    )


@cache
def scheduler() -> MarketHoursScheduler:
    return build_scheduler()


def handle(event: Mapping[str, Any]) -> dict[str, Any]:
    return scheduler().run(event)
