"""Errors of the Lambda functions.

FunctionsError
 +-- ApiError                 an HTTP answer: status, a machine-readable code, a message a
 |    |                       person can act on, optional details and headers
 |    +-- BadRequest            400 (malformed JSON, wrong shape)
 |    +-- Unauthorized          401 (admin key missing or wrong; a WebSocket connect with no token)
 |    +-- Conflict              409 (the streams together would exceed the feed's capacity)
 |    +-- PayloadTooLarge       413 (too many keys, body too large)
 |    +-- UriTooLong            414 (GET query beyond the documented limit)
 |    +-- Unprocessable         422 (bad instrument keys, bad stream name or mode)
 |    +-- ServiceUnavailable    503 with Retry-After (Redis, Secrets Manager or ECS down)
 +-- ScalingError             ECS could not be described or updated
 +-- StreamError              a stream request is invalid (name, keys, mode)
      +-- StreamLimitError      the streams together would exceed the feed's capacity
 +-- RegistryBusy             the stream registry lock could not be taken in time
 +-- QuoteRequestError        the quotes function refuses an event (not a list of at most
 |                            1,000 instrument keys and a caller); answered, never raised out
 +-- QuoteFunctionError       the API could not get an answer from the quotes function
                              (invoke failed, a function error, an answer of the wrong shape)

`core.errors.SecretError` (a secret could not be read or has the wrong shape) is re-exported
here: the functions raise and catch the one class the shared secret helpers raise.

Third-party errors are translated where they are caught (`raise ScalingError(...) from exc`);
DhanHQ failures are not errors at all: they are reported in the response body.
"""

from __future__ import annotations

from typing import Any

from core.errors import SecretError as SecretError  # re-exported


class FunctionsError(Exception):
    """Base of every error raised under `functions`."""


class ApiError(FunctionsError):
    status = 500
    code = "error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or {}
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": self.code, "message": self.message, **self.details}


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class Unauthorized(ApiError):
    status = 401
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="ltp-admin"'})


class Conflict(ApiError):
    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "payload_too_large"


class UriTooLong(ApiError):
    status = 414
    code = "uri_too_long"


class Unprocessable(ApiError):
    status = 422
    code = "invalid_request"


class ServiceUnavailable(ApiError):
    status = 503
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: int = 5, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ScalingError(FunctionsError):
    """The streamer's ECS service could not be described or scaled."""


class StreamError(FunctionsError, ValueError):
    """A stream's name, keys or mode is invalid."""


class StreamLimitError(StreamError):
    """Registering the stream would take the union of all streams past the feed's capacity."""


class RegistryBusy(FunctionsError):
    """Another start/stop held the registry lock for longer than we could wait."""


class QuoteRequestError(FunctionsError, ValueError):
    """An event the quotes function refuses (`functions.quotes.contract.parse_request`)."""


class QuoteFunctionError(FunctionsError):
    """No usable answer from the quotes function; its keys are answered `dhan_error`."""
