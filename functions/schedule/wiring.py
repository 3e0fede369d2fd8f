"""Real clients for the scheduler, built once per execution environment.

Settings are the shared `functions.settings.Settings` (REDIS_URL, REDIS_AUTH_TOKEN or
REDIS_AUTH_SECRET_ARN, STREAMER_CLUSTER, STREAMER_SERVICE, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from functools import cache
from typing import Any

from core.redis_client import LAMBDA_REDIS_ENV, sync_client
from functions.schedule.control import RegistryStreamControl
from functions.schedule.nse_calendar import load_shipped
from functions.schedule.runner import MarketHoursScheduler, utc_now
from functions.secrets import SecretsCache, secrets_for
from functions.settings import Settings
from functions.streams import EcsStreamerService, StreamerService

# What the scheduler needs in AWS (tests/infra check the template passes all of it).
REQUIRED_ENV = {"handler": (*LAMBDA_REDIS_ENV, "STREAMER_CLUSTER", "STREAMER_SERVICE")}


def read_settings(environ: Mapping[str, str] | None = None) -> Settings:
    return Settings.from_env(environ)


def build_scheduler(
    environ: Mapping[str, str] | None = None,
    *,
    secrets: SecretsCache | None = None,
    service: StreamerService | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> MarketHoursScheduler:
    settings = read_settings(environ)
    if secrets is None:
        secrets = secrets_for(settings)
    redis = sync_client(settings.redis, secrets=secrets)
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
