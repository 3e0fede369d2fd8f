"""Secrets: from the environment locally, from Secrets Manager (by ARN) in AWS, cached.

Secret shapes accepted in Secrets Manager (SecretString):
  ADMIN_SECRET_ARN     the key itself, or JSON {"ADMIN_API_KEY"|"admin_api_key"|"api_key": ...}
  WS_TOKEN_SECRET_ARN  the key itself, or JSON {"WS_TOKEN_SECRET"|"ws_token_secret"|"secret": ...}
  REDIS_AUTH_SECRET_ARN  the ElastiCache AUTH token itself (or JSON {"token"|"password": ...})
  DHAN_SECRET_ARN      JSON {"client_id"|"DHAN_CLIENT_ID"|"clientId": ...,
                             "access_token"|"DHAN_ACCESS_TOKEN"|"accessToken": ...}

The boto3 client is passed in (or a factory for it, so that boto3 is imported only when an
ARN is actually used). A value is reused for `ttl_seconds`; when a refresh fails the last good
value keeps being served, because an expired cache must not turn a Secrets Manager blip into
an outage. Values are returned as `core.config.Secret` and never logged.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from core.config import Secret
from functions.errors import SecretError
from functions.settings import Settings

ADMIN_FIELDS = ("ADMIN_API_KEY", "admin_api_key", "api_key", "key")
WS_TOKEN_FIELDS = ("WS_TOKEN_SECRET", "ws_token_secret", "secret")
REDIS_AUTH_FIELDS = ("REDIS_AUTH_TOKEN", "token", "password", "auth_token")
DHAN_CLIENT_FIELDS = ("client_id", "DHAN_CLIENT_ID", "clientId", "dhanClientId")
DHAN_TOKEN_FIELDS = ("access_token", "DHAN_ACCESS_TOKEN", "accessToken", "token")


class SecretsClient(Protocol):
    """The one Secrets Manager call used (boto3 `secretsmanager` client)."""

    def get_secret_value(self, *, SecretId: str) -> Mapping[str, Any]: ...  # noqa: N803


@dataclass(frozen=True, slots=True)
class DhanCredentials:
    client_id: str
    access_token: Secret

    def __bool__(self) -> bool:
        return bool(self.client_id and self.access_token)


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
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._secrets_client().get_secret_value(SecretId=arn)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            raise SecretError(f"Secrets Manager refused {arn}: {code}") from exc
        except BotoCoreError as exc:
            reason = type(exc).__name__
            raise SecretError(f"Secrets Manager unreachable for {arn}: {reason}") from exc
        value = answer.get("SecretString")
        if not isinstance(value, str) or not value:
            raise SecretError(f"secret {arn} has no SecretString")
        return value


def pick_field(text: str, fields: tuple[str, ...], *, allow_plain: bool) -> str:
    """A field of a JSON-object secret, or the text itself for a plain secret."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            document = json.loads(stripped)
        except ValueError:
            document = None
        if isinstance(document, dict):
            for field in fields:
                value = document.get(field)
                if isinstance(value, str) and value.strip():
                    return value.strip()
            raise SecretError(f"secret has none of the fields {', '.join(fields)}")
    if allow_plain:
        return stripped
    raise SecretError(f"secret must be a JSON object with {', '.join(fields)}")


def _resolve_plain(
    arn: str, fallback: Secret, fields: tuple[str, ...], variable: str,
    secrets: SecretsCache | None,
) -> Secret:
    """A one-value secret: from Secrets Manager when its ARN is set, else the env value."""
    if not arn:
        return fallback
    if secrets is None:
        raise SecretError(f"{variable} is set but no Secrets Manager client is available")
    return Secret(pick_field(secrets.get(arn), fields, allow_plain=True))


def resolve_admin_key(settings: Settings, *, secrets: SecretsCache | None) -> Secret:
    """The admin key start/stop require; an empty Secret means no key is configured."""
    return _resolve_plain(settings.admin_secret_arn, settings.admin_api_key, ADMIN_FIELDS,
                          "ADMIN_SECRET_ARN", secrets)


def resolve_ws_token_secret(settings: Settings, *, secrets: SecretsCache | None) -> Secret:
    return _resolve_plain(settings.ws_token_secret_arn, settings.ws_token_secret,
                          WS_TOKEN_FIELDS, "WS_TOKEN_SECRET_ARN", secrets)


def resolve_redis_password(settings: Settings, *, secrets: SecretsCache | None) -> Secret:
    """The Redis AUTH token when one is configured apart from the URL; empty otherwise."""
    return _resolve_plain(settings.redis_auth_secret_arn, settings.redis_auth_token,
                          REDIS_AUTH_FIELDS, "REDIS_AUTH_SECRET_ARN", secrets)


def resolve_dhan_credentials(
    settings: Settings, *, secrets: SecretsCache | None
) -> DhanCredentials:
    """DhanHQ client id and token; falsy when none are configured."""
    if settings.dhan_secret_arn:
        if secrets is None:
            raise SecretError("DHAN_SECRET_ARN is set but no Secrets Manager client is available")
        text = secrets.get(settings.dhan_secret_arn)
        client_id = pick_field(text, DHAN_CLIENT_FIELDS, allow_plain=False)
        token = pick_field(text, DHAN_TOKEN_FIELDS, allow_plain=False)
        return DhanCredentials(client_id, Secret(token))
    return DhanCredentials(settings.dhan_client_id, settings.dhan_access_token)
