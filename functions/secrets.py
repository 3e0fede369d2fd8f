"""Secrets: from the environment locally, from Secrets Manager (by ARN) in AWS, cached.

The shapes a secret may have (plain, or JSON with one of a few field names) are those of
`core.secrets`, shared with the streamer and the Redis client factory; the DhanHQ secret is
parsed there too (`parse_dhan_secret`, `DhanCredentials` re-exported here). Since that parser
became the streamer's as well, a client id stored as a JSON number is accepted and one missing
from the secret falls back to DHAN_CLIENT_ID (before, both fields had to be strings in the
secret).

The boto3 client is passed in (or a factory for it, so that boto3 is imported only when an
ARN is actually used). A value is reused for `ttl_seconds`; when a refresh fails the last good
value keeps being served, because an expired cache must not turn a Secrets Manager blip into
an outage. Values are returned as `core.config.Secret` and never logged.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from core.config import Secret
from core.redis_client import resolve_password
from core.secrets import (
    ADMIN_FIELDS,
    WS_TOKEN_FIELDS,
    DhanCredentials,
    SecretsClient,
    SecretsManagerReader,
    parse_dhan_secret,
    pick_field,
)
from functions.errors import SecretError
from functions.settings import Settings


class SecretsCache:
    def __init__(
        self,
        *,
        client: SecretsClient | None = None,
        client_factory: Callable[[], SecretsClient] | None = None,
        ttl_seconds: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if client is None and client_factory is None:
            raise ValueError("SecretsCache needs a client or a client_factory")
        self._client = client
        self._factory = client_factory
        self._ttl = ttl_seconds
        self._clock = clock
        self._values: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _secrets_client(self) -> SecretsClient:
        if self._client is None:
            assert self._factory is not None
            self._client = self._factory()
        return self._client

    def get(self, arn: str) -> str:
        """The SecretString of `arn`, fresh within the TTL; raises SecretError."""
        now = self._clock()
        with self._lock:
            cached = self._values.get(arn)
        if cached is not None and now - cached[1] < self._ttl:
            return cached[0]
        try:
            value = self._fetch(arn)
        except SecretError:
            if cached is not None:
                return cached[0]
            raise
        with self._lock:
            self._values[arn] = (value, now)
        return value

    def invalidate(self, arn: str) -> None:
        """Forget a value (e.g. Dhan rejected the token: another process may have renewed it)."""
        with self._lock:
            self._values.pop(arn, None)

    def _fetch(self, arn: str) -> str:
        return SecretsManagerReader(self._secrets_client()).get(arn)


def secrets_for(settings: Settings) -> SecretsCache | None:
    """A Secrets Manager cache when any ARN is configured (boto3 built on first read)."""
    if not settings.uses_secrets_manager:
        return None
    return SecretsCache(client_factory=_boto3_secrets_client,
                        ttl_seconds=settings.secrets_cache_seconds)  # fmt: skip


def _boto3_secrets_client() -> SecretsClient:
    import boto3

    client: SecretsClient = boto3.client("secretsmanager")
    return client


def _resolve_plain(
    settings: Settings, arn: str, fallback: Secret, fields: tuple[str, ...],
    variables: tuple[str, str], secrets: SecretsCache | None,
) -> Secret:
    """A one-value guard secret: from Secrets Manager when its ARN is set, else the env value.

    Fails closed: a variable that is set but blank, or a secret whose value (or field) is
    blank, raises SecretError; only a secret configured nowhere is "no secret" (empty).
    """
    plain, arn_variable = variables
    for variable in variables:
        if variable in settings.blank_secrets:
            raise SecretError(f"{variable} is set but blank: give it a value or unset it "
                              "(a blank secret never turns the check off)")  # fmt: skip
    if not arn:
        return fallback
    if secrets is None:
        raise SecretError(f"{arn_variable} is set but no Secrets Manager client is available")
    value = pick_field(secrets.get(arn), fields, allow_plain=True)
    if not value:
        raise SecretError(f"the secret named by {arn_variable} is blank (it holds {plain})")
    return Secret(value)


def resolve_admin_key(settings: Settings, *, secrets: SecretsCache | None) -> Secret:
    """The admin key start/stop require; an empty Secret means no key is configured."""
    return _resolve_plain(settings, settings.admin_secret_arn, settings.admin_api_key,
                          ADMIN_FIELDS, ("ADMIN_API_KEY", "ADMIN_SECRET_ARN"), secrets)


def resolve_ws_token_secret(settings: Settings, *, secrets: SecretsCache | None) -> Secret:
    """The connect tokens' signing key; an empty Secret means connects need no token."""
    return _resolve_plain(settings, settings.ws_token_secret_arn, settings.ws_token_secret,
                          WS_TOKEN_FIELDS, ("WS_TOKEN_SECRET", "WS_TOKEN_SECRET_ARN"), secrets)


def resolve_redis_password(settings: Settings, *, secrets: SecretsCache | None) -> Secret:
    """The Redis AUTH token when one is configured apart from the URL; empty otherwise."""
    return resolve_password(settings.redis, secrets=secrets)


def resolve_dhan_credentials(
    settings: Settings, *, secrets: SecretsCache | None
) -> DhanCredentials:
    """DhanHQ client id and token; falsy when none are configured.

    With DHAN_SECRET_ARN the secret is read as the streamer reads it (`parse_dhan_secret`):
    a client id missing from the secret is DHAN_CLIENT_ID's.
    """
    if settings.dhan_secret_arn:
        if secrets is None:
            raise SecretError("DHAN_SECRET_ARN is set but no Secrets Manager client is available")
        return parse_dhan_secret(secrets.get(settings.dhan_secret_arn),
                                 fallback_client_id=settings.dhan_client_id)  # fmt: skip
    return DhanCredentials(settings.dhan_client_id, settings.dhan_access_token)


__all__ = [
    "DhanCredentials", "SecretError", "SecretsCache", "SecretsClient", "pick_field",
    "resolve_admin_key", "resolve_dhan_credentials", "resolve_redis_password",
    "resolve_ws_token_secret", "secrets_for",
]
