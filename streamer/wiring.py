"""The streamer's wiring: its clients from its settings. `python -m streamer` and the local
run both build the streamer here, so the local stack takes production's path to Redis."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from redis.asyncio import Redis

from core.redis_client import CONTAINER_REDIS_ENV, async_client
from core.secrets import SecretsManagerReader
from streamer.service import Streamer
from streamer.settings import (
    Credentials,
    CredentialSource,
    SecretsClient,
    Settings,
    load_settings,
)

# What the container needs in AWS (tests/infra check the task definition passes all of it).
# The streamer would run after the close otherwise: ECS owns stopping it there.
REQUIRED_ENV = {"__main__": (*CONTAINER_REDIS_ENV, "DHAN_SECRET_ARN", "DHAN_CLIENT_ID",
                             "DHAN_ACCESS_TOKEN", "STREAMER_AUTO_STOP")}


def read_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Every variable the streamer reads, as `python -m streamer` reads them (no CLI flags)."""
    settings = load_settings(environ)
    CredentialSource(environ=environ).from_environment()
    return settings


@dataclass(frozen=True, slots=True)
class StreamerClients:
    redis: Redis
    credentials: CredentialSource


def boto3_secrets_client() -> SecretsClient:
    import boto3

    client: SecretsClient = boto3.client("secretsmanager")
    return client


def build_clients(
    settings: Settings,
    *,
    environ: Mapping[str, str] | None = None,
    secrets_client: SecretsClient | None = None,
) -> StreamerClients:
    """Redis (core.redis_client) and the DhanHQ credentials (the environment, or the secret
    named by DHAN_SECRET_ARN); boto3 only when an ARN needs it."""
    needs_aws = bool(settings.secret_arn or settings.redis.auth_secret_arn)
    if secrets_client is None and needs_aws:
        secrets_client = boto3_secrets_client()
    reader = SecretsManagerReader(secrets_client) if secrets_client is not None else None
    return StreamerClients(
        redis=async_client(settings.redis, secrets=reader),
        credentials=CredentialSource(
            environ=environ, secret_arn=settings.secret_arn,
            secrets_client=secrets_client if settings.secret_arn else None,
        ),  # fmt: skip
    )


def build_streamer(
    settings: Settings,
    clients: StreamerClients,
    *,
    on_credentials: Callable[[Credentials], None] | None = None,
) -> Streamer:
    return Streamer(settings, redis=clients.redis, credentials=clients.credentials,
                    on_credentials=on_credentials)
