"""The API's side of the quotes function: screened misses -> synchronous invokes -> one
`FetchResult`, so that the public API function never reads the Dhan secret.

`RemoteQuotes` is `ApiDeps.quotes` when QUOTE_FUNCTION_NAME is set. It invokes the function
(`InvocationType=RequestResponse`, `functions.quotes.contract` both ways) with batches of at
most `contract.MAX_KEYS` keys, one after the other, and merges the answers as
`functions.dhan_rest.fetch_prices` merges its calls:
- the caller goes with the first batch only: its share of the REST slots is taken once per
  request (`functions.ratelimit`), the later batches need only the deployment's slot. (Unlike
  one in-process fetch, the caller's interval then restarts at its first grant, not its last.)
- a batch that ends on a stop reason (no REST slot or the caller's share used up, Dhan's auth
  or subscription errors, a failed invoke) gives every later key that reason without an
  invoke; a caller-share refusal or a failed invoke widens its one error entry to them.
- no batch starts once the request's own REST budget is spent (`timeout`). Each invocation
  has the whole budget for itself, so a request of many misses takes at most the budget plus
  one invocation's read timeout (about 6 s by default; the API function may run 15 s).

Any failure of an invoke (connect or read timeout, throttling, a function error, an answer of
the wrong shape) answers that batch's keys `dhan_error` with one error entry of type
`QuoteFunction`; the details go to the log, never to the client. Timeouts: 1 s to connect and
the REST budget + 1 s to read (the function itself stops at the budget), one attempt: a retry
would only add a second budget to a request the browser re-polls in 1.5 s anyway.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import orjson

from functions.api.observability import logger
from functions.dhan_rest import (
    AUTH_ERROR,
    CALLER_SHARE,
    DHAN_ERROR,
    MIN_CALL_SECONDS,
    NOT_SUBSCRIBED,
    RATE_LIMITED,
    TIMEOUT,
    FetchResult,
)
from functions.errors import QuoteFunctionError
from functions.quotes.contract import MAX_KEYS, request_of, result_of

if TYPE_CHECKING:
    from mypy_boto3_lambda import LambdaClient

CONNECT_TIMEOUT_SECONDS = 1.0
READ_MARGIN_SECONDS = 1.0
QUOTE_FUNCTION_ERROR = "QuoteFunction"
# Reasons after which the later batches of a request would fail the same way.
_STOP_REASONS = (AUTH_ERROR, NOT_SUBSCRIBED, RATE_LIMITED)


def lambda_client(*, budget: float) -> LambdaClient:
    """boto3's `lambda` client with the timeouts above (AWS_ENDPOINT_URL_LAMBDA, region and
    credentials from the environment, as for every boto3 client)."""
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    read_timeout=budget + READ_MARGIN_SECONDS,
                    retries={"total_max_attempts": 1, "mode": "standard"})  # fmt: skip
    return boto3.client("lambda", config=config)


class RemoteQuotes:
    """`(keys, caller) -> FetchResult` through the quotes function (see the module)."""

    def __init__(self, *, client: Callable[[], LambdaClient], function_name: str,
                 budget: float, clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self._client = client
        self._function_name = function_name
        self._budget = budget
        self._clock = clock

    def __call__(self, keys: Sequence[str], caller: str | None) -> FetchResult:
        result = FetchResult()
        deadline = self._clock() + self._budget
        batch_caller = caller
        for start in range(0, len(keys), MAX_KEYS):
            if start and self._clock() > deadline - MIN_CALL_SECONDS:
                _give_up(result, keys[start:], TIMEOUT)
                break
            part = self.invoke(keys[start:start + MAX_KEYS], batch_caller)
            batch_caller = None
            _merge(result, part)
            rest = keys[start + MAX_KEYS:]
            if rest and (stop := _stop_reason(part)) is not None:
                _give_up(result, rest, stop)
                widened = _widened_entry(part)
                if widened is not None:
                    _widen(widened, rest)
                    if widened.get("code") == CALLER_SHARE:
                        result.caller_refused += len(rest)
                break
        return result

    def invoke(self, keys: Sequence[str], caller: str | None) -> FetchResult:
        """One batch; any failure is the batch's keys answered `dhan_error`."""
        try:
            response = self._client().invoke(
                FunctionName=self._function_name, InvocationType="RequestResponse",
                Payload=orjson.dumps(request_of(keys, caller)))  # fmt: skip
            payload = response["Payload"].read()
            if response.get("FunctionError"):
                raise QuoteFunctionError(f"{response['FunctionError']} function error: "
                                         f"{_error_type(payload)}")  # fmt: skip
            return result_of(orjson.loads(payload))
        except Exception as exc:  # noqa: BLE001 - botocore's or the answer's: a reason, not a 500
            logger.warning("quotes function failed", extra={"type": type(exc).__name__,
                                                            "reason": str(exc)[:500]})
            return failed_fetch(keys)


def failed_fetch(keys: Sequence[str]) -> FetchResult:
    result = FetchResult()
    _give_up(result, keys, DHAN_ERROR)
    result.errors.append({"reason": DHAN_ERROR, "code": None, "type": QUOTE_FUNCTION_ERROR,
                          "message": "DhanHQ prices could not be fetched: the quotes "
                                     "function did not answer",
                          "keys": len(keys), "segments": _segments(keys)})  # fmt: skip
    return result


def _merge(result: FetchResult, part: FetchResult) -> None:
    result.prices.update(part.prices)
    result.missing.update(part.missing)
    result.errors.extend(part.errors)
    result.calls += part.calls
    result.caller_refused += part.caller_refused


def _stop_reason(part: FetchResult) -> str | None:
    if part.caller_refused:
        return RATE_LIMITED
    if any(error.get("type") == QUOTE_FUNCTION_ERROR for error in part.errors):
        return DHAN_ERROR
    # A slot not found within the budget leaves no error entry, only the keys' reason.
    reasons = set(part.missing.values())
    return next((reason for reason in _STOP_REASONS if reason in reasons), None)


def _widened_entry(part: FetchResult) -> dict[str, Any] | None:
    for error in part.errors:
        if error.get("code") == CALLER_SHARE or error.get("type") == QUOTE_FUNCTION_ERROR:
            return error
    return None


def _widen(entry: dict[str, Any], keys: Sequence[str]) -> None:
    entry["keys"] = int(entry.get("keys") or 0) + len(keys)
    entry["segments"] = sorted({*(entry.get("segments") or ()), *_segments(keys)})


def _give_up(result: FetchResult, keys: Sequence[str], reason: str) -> None:
    for key in keys:
        result.missing[key] = reason


def _segments(keys: Sequence[str]) -> list[str]:
    return sorted({key.partition(":")[0] for key in keys})


def _error_type(payload: bytes) -> str:
    try:
        answer = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return "unreadable answer"
    return str(answer.get("errorType")) if isinstance(answer, dict) else "unreadable answer"
