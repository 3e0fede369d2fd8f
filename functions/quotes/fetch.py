"""The DhanHQ REST fetch of screened misses: the one place that holds the DhanHQ credentials
for a price request.

`fetch_quotes` reads the credentials (DHAN_SECRET_ARN through `functions.secrets`, or the
DHAN_* variables of a local run), takes REST slots from the deployment's limiter and the
caller's share (`functions.ratelimit`), calls DhanHQ within DHAN_REST_BUDGET_SECONDS
(`functions.dhan_rest.fetch_prices`), caches what it got and remembers what Dhan had no price
for (`store_prices`), and forgets the cached secret after an auth error, since the token
renewal may have put a new token meanwhile. Failures are reasons and error entries in the
`FetchResult`, never exceptions (a Redis failure excepted: it propagates).

Two callers run it: the quotes Lambda (`functions.quotes.handler`, in AWS; the public API
function no longer reads the Dhan secret) and the API in-process when no quotes function is
configured (the local run, tests). Both answer alike because both run this function.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from redis import Redis

from core.instruments import InstrumentKey
from functions.dhan_rest import (
    AUTH_ERROR,
    DHAN_ERROR,
    NOT_CONFIGURED,
    FetchResult,
    SdkSourceCache,
    fetch_prices,
    store_prices,
)
from functions.errors import SecretError
from functions.ratelimit import RateLimiter
from functions.secrets import SecretsCache, resolve_dhan_credentials
from functions.settings import Settings


class Log(Protocol):
    """The logging the fetch does (a Powertools `Logger` or a `logging.Logger`)."""

    def warning(self, msg: str, *, extra: Mapping[str, Any]) -> None: ...


def fetch_quotes(
    keys: Sequence[InstrumentKey],
    *,
    caller: str | None,
    settings: Settings,
    redis: Redis,
    secrets: SecretsCache | None,
    sources: SdkSourceCache,
    log: Log,
) -> FetchResult:
    """Blocking: limiter waits and HTTP calls, within the settings' REST budget."""
    result = FetchResult()
    if not keys:
        return result
    try:
        credentials = resolve_dhan_credentials(settings, secrets=secrets)
    except SecretError as exc:
        log.warning("dhan credentials unavailable", extra={"reason": str(exc)})
        result.give_up(keys, DHAN_ERROR)
        result.errors.append({"reason": DHAN_ERROR, "code": None, "type": "Configuration",
                              "message": "DhanHQ credentials could not be read",
                              "keys": len(keys), "segments": []})  # fmt: skip
        return result
    if not credentials:
        result.give_up(keys, NOT_CONFIGURED)
        return result
    limiter = RateLimiter(redis=redis, interval=settings.dhan_rest_min_interval,
                          caller=caller, caller_interval=settings.dhan_rest_caller_interval)
    result = fetch_prices(
        keys,
        source=sources.get(credentials),
        limiter=limiter,
        deadline=time.monotonic() + settings.dhan_rest_budget,
        call_timeout=settings.dhan_rest_timeout,
    )
    store_prices(redis=redis, prices=result.prices, not_found=result.not_found(),
                 not_found_ttl=settings.dhan_not_found_ttl)  # fmt: skip
    if secrets is not None and settings.dhan_secret_arn:
        if any(error["reason"] == AUTH_ERROR for error in result.errors):
            # Another process may have renewed the token in the secret: read it afresh next time.
            secrets.invalidate(settings.dhan_secret_arn)
    if result.errors:
        log.warning(
            "dhan rest fallback reported errors",
            extra={"errors": [{k: e.get(k) for k in ("reason", "code", "type")}
                              for e in result.errors]},  # fmt: skip
        )
    return result
