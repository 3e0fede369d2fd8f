"""Real clients for the token renewal, built once per execution environment."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cache
from typing import Any

from core.errors import ConfigError
from core.redis_client import LAMBDA_REDIS_ENV, sync_client
from functions.secrets import secrets_for
from functions.settings import Settings
from functions.token.renewer import Outcome, SecretStore, TokenRenewer
from functions.token.settings import TokenSettings

# What the renewal needs in AWS (tests/infra check the template passes all of it).
REQUIRED_ENV = {"handler": (*LAMBDA_REDIS_ENV, "DHAN_SECRET_ARN")}


def read_settings(
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, TokenSettings]:
    return Settings.from_env(environ), TokenSettings.from_env(environ)


def build_renewer(environ: Mapping[str, str] | None = None, *,
                  secrets_client: SecretStore | None = None,
                  http: Any = None) -> TokenRenewer:
    settings, token = read_settings(environ)
    if not settings.dhan_secret_arn:
        raise ConfigError("DHAN_SECRET_ARN is required: the renewed token is written there")
    if secrets_client is None:
        import boto3

        secrets_client = boto3.client("secretsmanager")
    if http is None:
        import httpx

        http = httpx.Client()
    return TokenRenewer(
        secrets_client=secrets_client,
        secret_arn=settings.dhan_secret_arn,
        http=http,
        api_base_url=settings.dhan_api_base_url,
        redis=sync_client(settings.redis, secrets=secrets_for(settings)),
        policy=token.policy,
        fallback_client_id=settings.dhan_client_id,
        timeout=token.timeout,
    )


@cache
def renewer() -> TokenRenewer:
    # Lambda's Python runtime leaves the root logger at WARNING; the run's outcome is INFO.
    package = logging.getLogger("functions.token")
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)
    return build_renewer()


def handle(event: Any, context: Any) -> Outcome:
    """Every event means "check now" (the schedule's, or one sent by hand)."""
    return renewer().run()
