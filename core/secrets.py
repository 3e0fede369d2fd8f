"""Secret shapes shared by every deployable, and the one read they all need.

A secret named by an ARN is either the value itself (a plain SecretString) or a JSON object
holding it under one of a few field names; DhanHQ's is always a JSON object. The field lists
here are the only ones: the streamer, the Lambda functions and the Redis client factory read
the same shapes.

Secrets Manager shapes (SecretString):
  REDIS_AUTH_SECRET_ARN  the AUTH token itself, or {"REDIS_AUTH_TOKEN"|"token"|"password"|...}
  ADMIN_SECRET_ARN       the key itself, or {"ADMIN_API_KEY"|"admin_api_key"|"api_key"|"key"}
  WS_TOKEN_SECRET_ARN    the key itself, or {"WS_TOKEN_SECRET"|"ws_token_secret"|"secret"}
  DHAN_SECRET_ARN        {"client_id"|..., "access_token"|...} (see DHAN_*_FIELDS)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from core.errors import SecretError

ADMIN_FIELDS = ("ADMIN_API_KEY", "admin_api_key", "api_key", "key")
WS_TOKEN_FIELDS = ("WS_TOKEN_SECRET", "ws_token_secret", "secret")
REDIS_AUTH_FIELDS = ("REDIS_AUTH_TOKEN", "token", "password", "auth_token")
DHAN_CLIENT_FIELDS = ("client_id", "DHAN_CLIENT_ID", "clientId", "dhanClientId")
DHAN_TOKEN_FIELDS = ("access_token", "DHAN_ACCESS_TOKEN", "accessToken", "token")


class SecretReader(Protocol):
    """Anything that gives the SecretString of an ARN (`functions.secrets.SecretsCache`,
    `SecretsManagerReader`); raises `SecretError`."""

    def get(self, arn: str) -> str: ...


class SecretsClient(Protocol):
    """The one Secrets Manager call used (boto3 `secretsmanager` client)."""

    def get_secret_value(self, *, SecretId: str) -> Mapping[str, Any]: ...  # noqa: N803


class SecretsManagerReader:
    """An uncached `SecretReader` over a boto3 client, for processes that read a secret once
    at start (the Fargate containers); errors translated to `SecretError`."""

    def __init__(self, client: SecretsClient) -> None:
        self._client = client

    def get(self, arn: str) -> str:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            answer = self._client.get_secret_value(SecretId=arn)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "ClientError")
            raise SecretError(f"Secrets Manager refused {arn}: {code}") from exc
        except BotoCoreError as exc:
            raise SecretError(f"Secrets Manager unreachable for {arn}: "
                              f"{type(exc).__name__}") from exc
        value = answer.get("SecretString")
        if not isinstance(value, str) or not value:
            raise SecretError(f"secret {arn} has no SecretString")
        return value


def pick_field(text: str, fields: tuple[str, ...], *, allow_plain: bool) -> str:
    """A field of a JSON-object secret, or the text itself for a plain secret (stripped)."""
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
