"""HTTP answers as plain values, and the one mapping from exceptions to error answers.

Shared by the FastAPI app (its exception handlers) and the Lambda fast path
(`functions.api.router`), so both give byte-identical errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson
import redis.exceptions

from core.errors import ConfigError
from functions.api.observability import logger
from functions.errors import (
    ApiError,
    RegistryBusy,
    ScalingError,
    SecretError,
    StreamError,
    StreamLimitError,
)

JSON = "application/json"
NO_STORE = {"cache-control": "no-store"}
REDIS_RETRY_AFTER = 5
REDIS_ERRORS = (
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.ReadOnlyError,
)


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def json_answer(document: Any, status: int = 200, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, orjson.dumps(document), {**NO_STORE, **(headers or {})})


def error(status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
          **details: Any) -> Answer:  # fmt: skip
    return json_answer({"error": code, "message": message, **details}, status, headers)


def error_answer(exc: BaseException) -> Answer | None:
    """The answer for a known failure; None for anything else (a bug: the caller 500s)."""
    if isinstance(exc, ApiError):
        return json_answer(exc.body(), exc.status, {k.lower(): v for k, v in exc.headers.items()})
    if isinstance(exc, StreamLimitError):
        return error(409, "too_many_stream_keys", str(exc))
    if isinstance(exc, StreamError):
        return error(422, "invalid_stream", str(exc))
    if isinstance(exc, RegistryBusy):
        return error(503, "registry_busy", str(exc), headers={"retry-after": "1"})
    if isinstance(exc, ScalingError):
        logger.warning("streamer scaling failed", extra={"reason": str(exc)})
        return error(503, "streamer_unavailable",
                     f"the stream registry is up to date but the streamer service could not be "
                     f"scaled ({exc}); retry, the request is idempotent",
                     headers={"retry-after": "10"})  # fmt: skip
    if isinstance(exc, SecretError | ConfigError):
        # A configured secret that is blank or unreadable: fail closed, never "auth off".
        logger.warning("secret unavailable", extra={"reason": str(exc)})
        return error(503, "secret_unavailable", "a secret could not be read; retry shortly",
                     headers={"retry-after": str(REDIS_RETRY_AFTER)})  # fmt: skip
    if isinstance(exc, REDIS_ERRORS):
        logger.warning("redis unavailable", extra={"reason": type(exc).__name__})
        return error(503, "redis_unavailable",
                     "the price cache is unreachable right now; retry shortly",
                     headers={"retry-after": str(REDIS_RETRY_AFTER)})  # fmt: skip
    return None


def internal_error() -> Answer:
    return error(500, "internal_error", "an unexpected error occurred; it has been logged")
