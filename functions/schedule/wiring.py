"""Real clients for the scheduler, built once per execution environment."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache
from typing import Any

from redis import Redis

from functions.schedule.control import RegistryStreamControl
from functions.schedule.nse_calendar import load_shipped
from functions.schedule.runner import MarketHoursScheduler, utc_now
from functions.schedule.settings import ScheduleSettings
from functions.secrets import SecretsCache, SecretsClient
from functions.streams import EcsStreamerService, StreamerService


def _secrets_client() -> SecretsClient:
    import boto3

    client: SecretsClient = boto3.client("secretsmanager")
    return client


def redis_password(settings: ScheduleSettings, *, secrets: SecretsCache | None) -> str | None:
    if settings.redis_auth_secret_arn:
        if secrets is None:
            raise ValueError("REDIS_AUTH_SECRET_ARN is set but no Secrets Manager client")
        return secrets.get(settings.redis_auth_secret_arn).strip() or None
    return settings.redis_auth_token.value or None


def build_scheduler(
    environ: Mapping[str, str] | None = None,
    *,
    secrets: SecretsCache | None = None,
    service: StreamerService | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> MarketHoursScheduler:
    settings = ScheduleSettings.from_env(environ)
    base = settings.base
    if secrets is None and settings.redis_auth_secret_arn:
        secrets = SecretsCache(client_factory=_secrets_client)
    redis = Redis.from_url(
        base.redis_url,
        password=redis_password(settings, secrets=secrets),
        socket_timeout=base.redis_socket_timeout,
        socket_connect_timeout=base.redis_connect_timeout,
    )
    if service is None and base.streamer_managed:
        import boto3

        service = EcsStreamerService(
            ecs=boto3.client("ecs"), cluster=base.streamer_cluster, service=base.streamer_service
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
