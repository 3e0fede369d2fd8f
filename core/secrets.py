"""Secret shapes shared by every deployable, and the one read they all need.

A secret named by an ARN is either the value itself (a plain SecretString) or a JSON object
holding it under one of a few field names; DhanHQ's is always a JSON object. The field lists
here are the only ones: the streamer, the Lambda functions and the Redis client factory read
the same shapes.

Secrets Manager shapes (SecretString):
  REDIS_AUTH_SECRET_ARN  the AUTH token itself, or {"REDIS_AUTH_TOKEN"|"token"|"password"|...}
  ADMIN_SECRET_ARN       the key itself, or {"ADMIN_API_KEY"|"admin_api_key"|"api_key"|"key"}
  WS_TOKEN_SECRET_ARN    the key itself, or {"WS_TOKEN_SECRET"|"ws_token_secret"|"secret"}
  DHAN_SECRET_ARN        {"client_id"|..., "access_token"|...} (see DHAN_*_FIELDS), read
                         by `parse_dhan_secret` for the streamer and the Lambda functions alike
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from core.config import Secret
from core.errors import SecretError

ADMIN_FIELDS = ("ADMIN_API_KEY", "admin_api_key", "api_key", "key")
WS_TOKEN_FIELDS = ("WS_TOKEN_SECRET", "ws_token_secret", "secret")
REDIS_AUTH_FIELDS = ("REDIS_AUTH_TOKEN", "token", "password", "auth_token")
DHAN_CLIENT_FIELDS = ("client_id", "DHAN_CLIENT_ID", "clientId", "dhanClientId")
DHAN_TOKEN_FIELDS = ("access_token", "DHAN_ACCESS_TOKEN", "accessToken", "token")
# The client id of the Dhan secret CDK creates (with a random token) until an operator puts
# the real one in: nothing can be renewed or streamed with it.
PLACEHOLDER_CLIENT_ID = "REPLACE_ME"


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
    """A field of a JSON-object secret, or the text itself for a plain secret (stripped).

    Text that opens like a JSON object must be one: a hand-edited secret that lost a brace
    (or holds a raw tab in a value, accepted here) is never taken for a plain key, since its
    literal text would be a guessable key. Generated values have no punctuation."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            document = json.loads(stripped, strict=False)
        except ValueError:
            # Not chained: the decoder's error holds the text.
            raise SecretError("secret looks like a JSON object but does not parse") from None
        if isinstance(document, dict):
            for field in fields:
                value = document.get(field)
                if isinstance(value, str) and value.strip():
                    return value.strip()
            raise SecretError(f"secret has none of the fields {', '.join(fields)} "
                              "with a non-blank value")
    if allow_plain:
        return stripped
    raise SecretError(f"secret must be a JSON object with {', '.join(fields)}")


@dataclass(frozen=True, slots=True)
class DhanCredentials:
    """A DhanHQ client id and access token; falsy unless both are present."""

    client_id: str
    access_token: Secret

    def __bool__(self) -> bool:
        return bool(self.client_id and self.access_token)


def parse_dhan_secret(text: str, *, fallback_client_id: str = "") -> DhanCredentials:
    """The DhanHQ secret: a JSON object with a client id (a string, or a number as some
    writers store it) and an access token under one of the DHAN_*_FIELDS names.

    The client id may be left out of the secret when `fallback_client_id` (DHAN_CLIENT_ID,
    documented for every deployable) is given: the id is not a secret and is often kept in the
    environment while only the token rotates. The token never falls back and never appears in
    an error message; the decoder's error is not chained either, since it holds the text.
    """
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise SecretError("DhanHQ secret is not a JSON object with a client id and an access "
                          f"token ({DHAN_CLIENT_FIELDS[0]}, {DHAN_TOKEN_FIELDS[0]})")  # fmt: skip
    client_id = _first_field(document, DHAN_CLIENT_FIELDS, numbers=True)
    client_id = client_id or fallback_client_id.strip()
    token = _first_field(document, DHAN_TOKEN_FIELDS, numbers=False)
    missing = []
    if not client_id:
        missing.append(f"a client id (fields {', '.join(DHAN_CLIENT_FIELDS)}; "
                       "or DHAN_CLIENT_ID in the environment)")  # fmt: skip
    if not token:
        missing.append(f"an access token (fields {', '.join(DHAN_TOKEN_FIELDS)})")
    if missing:
        raise SecretError(f"DhanHQ secret lacks {' and '.join(missing)}")
    return DhanCredentials(client_id, Secret(token))


def _first_field(document: Mapping[str, Any], fields: tuple[str, ...], *, numbers: bool) -> str:
    """The first of `fields` holding a non-blank string (or, with `numbers`, an integer:
    Dhan client ids are digits and a hand-written secret may store them unquoted)."""
    for field in fields:
        value = document.get(field)
        if isinstance(value, str) and value.strip():
            return value.strip()
        # bool is an int; `true` is not a client id.
        if numbers and isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return ""
