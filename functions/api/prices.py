"""Current prices: one MGET, the misses through the DhanHQ REST fallback, one JSON answer.

Response (seed fields first):
  {"prices": {"NSE_EQ:1333": 1234.5, ...}, "timestamp": ISO-8601 UTC, "count": <prices>,
   "cached_count": <from Redis>, "api_fetched_count": <from DhanHQ REST>,
   "requested_count": <distinct keys asked>, "missing": {"NSE_EQ:99": "not_found", ...},
   "errors": [{"reason", "code", "type", "message", "keys", "segments"}, ...]}
Reasons in `missing` are those of `functions.dhan_rest`.

The cache path does per-key work only where it must (the price's float conversion) and
serializes with orjson straight to bytes: no pydantic model per key.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any, cast

import orjson

from core.instruments import InstrumentKey
from core.messages import parse_price, utc_now_iso
from core.names import LTP_PREFIX
from functions.api.answers import NO_STORE, Answer
from functions.api.deps import ApiDeps
from functions.api.observability import count, logger
from functions.dhan_rest import (
    AUTH_ERROR,
    DHAN_ERROR,
    NOT_CONFIGURED,
    RATE_LIMITED,
    FetchResult,
    fetch_prices,
    store_prices,
)
from functions.errors import SecretError
from functions.ratelimit import RateLimiter
from functions.secrets import resolve_dhan_credentials

_NAME_GLUE = "," + LTP_PREFIX


def read_cache(deps: ApiDeps, keys: Sequence[str]) -> tuple[dict[str, float], list[str]]:
    """Cached prices and the distinct keys that missed (or held something that is not a price).

    `keys` may repeat; the answer folds them. The usual case (every key cached, every value a
    finite number) is built with C-level iteration only: one join/split for the names, one
    `dict(zip(map(float)))` (a miss makes `float(None)` raise and takes the slow path).
    """
    if not keys:
        return {}, []
    # Canonical keys never contain a comma, so a join and a split build all the names at once.
    names = (LTP_PREFIX + _NAME_GLUE.join(keys)).split(",")
    values = deps.redis.mget(names)
    present = cast(list[bytes | str], values)
    try:
        prices = dict(zip(keys, map(float, present), strict=True))
    except (ValueError, TypeError):
        return _read_slowly(keys, values)
    if all(map(math.isfinite, prices.values())):
        return prices, []
    return _read_slowly(keys, values)


def _read_slowly(
    keys: Sequence[str], values: Sequence[bytes | str | None]
) -> tuple[dict[str, float], list[str]]:
    prices: dict[str, float] = {}
    misses: list[str] = []
    for key, value in zip(keys, values, strict=True):
        price = parse_price(value)
        if price is None:
            misses.append(key)
        else:
            prices[key] = price
    return prices, list(dict.fromkeys(misses))


def prices_answer(
    deps: ApiDeps,
    keys: Sequence[str],
    cached: dict[str, float],
    misses: Sequence[str],
    fetched: FetchResult | None,
) -> Answer:
    record_metrics(deps, hits=len(cached), misses=len(misses), fetched=fetched)
    # Every distinct key is either cached or missed (`keys` itself may repeat).
    requested = len(cached) + len(misses)
    return Answer(200, render(requested=requested, cached=cached, fetched=fetched), NO_STORE)


def fetch_missing(deps: ApiDeps, keys: Sequence[str]) -> FetchResult:
    """Blocking: limiter waits and HTTP calls. The route runs it in the threadpool."""
    settings = deps.settings
    result = FetchResult()
    try:
        credentials = resolve_dhan_credentials(settings, secrets=deps.secrets)
    except SecretError as exc:
        logger.warning("dhan credentials unavailable", extra={"reason": str(exc)})
        result.give_up(_instrument_keys(keys), DHAN_ERROR)
        result.errors.append({"reason": DHAN_ERROR, "code": None, "type": "Configuration",
                              "message": "DhanHQ credentials could not be read",
                              "keys": len(keys), "segments": []})  # fmt: skip
        return result
    if not credentials:
        result.give_up(_instrument_keys(keys), NOT_CONFIGURED)
        return result
    limiter = RateLimiter(redis=deps.redis, interval=settings.dhan_rest_min_interval)
    result = fetch_prices(
        _instrument_keys(keys),
        source=deps.dhan_sources.get(credentials),
        limiter=limiter,
        deadline=time.monotonic() + settings.dhan_rest_budget,
        call_timeout=settings.dhan_rest_timeout,
    )
    store_prices(redis=deps.redis, prices=result.prices)
    if deps.secrets is not None and settings.dhan_secret_arn:
        if any(error["reason"] == AUTH_ERROR for error in result.errors):
            # Another process may have renewed the token in the secret: read it afresh next time.
            deps.secrets.invalidate(settings.dhan_secret_arn)
    if result.errors:
        logger.warning(
            "dhan rest fallback reported errors",
            extra={"errors": [{k: e.get(k) for k in ("reason", "code", "type")}
                              for e in result.errors]},  # fmt: skip
        )
    return result


def record_metrics(deps: ApiDeps, *, hits: int, misses: int, fetched: FetchResult | None) -> None:
    metrics = deps.metrics
    count(metrics, "CacheHits", hits)
    count(metrics, "CacheMisses", misses)
    if fetched is not None:
        count(metrics, "RestFetched", len(fetched.prices))
        count(metrics, "RestCalls", fetched.calls)
        count(metrics, "RestErrors", len(fetched.errors))
        limited = sum(1 for reason in fetched.missing.values() if reason == RATE_LIMITED)
        count(metrics, "RestRateLimited", limited)


def render(
    *,
    requested: int,
    cached: dict[str, float],
    fetched: FetchResult | None,
) -> bytes:
    prices = cached
    missing: dict[str, str] = {}
    errors: list[dict[str, Any]] = []
    fetched_count = 0
    if fetched is not None:
        fetched_count = len(fetched.prices)
        prices = {**cached, **fetched.prices}
        missing = fetched.missing
        errors = fetched.errors
    return orjson.dumps(
        {
            "prices": prices,
            "timestamp": utc_now_iso(),
            "count": len(prices),
            "cached_count": len(cached),
            "api_fetched_count": fetched_count,
            "requested_count": requested,
            "missing": missing,
            "errors": errors,
        }
    )


def _instrument_keys(keys: Sequence[str]) -> list[InstrumentKey]:
    # Keys reaching here are canonical (functions.api.keys), so a split is a parse.
    return [InstrumentKey(*key.split(":", 1)) for key in keys]
