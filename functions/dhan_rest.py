"""DhanHQ REST fallback for cache misses, through the official `dhanhq` SDK.

Pure parts: `plan_calls` (keys -> calls of at most 1,000 ids, grouped by segment) and
`parse_ltp_answer` (one SDK answer -> prices, per-key reasons, an error entry).
I/O parts: `SdkLtpSource` (the SDK's REST `MarketFeed.ticker_data`, imported lazily: most
requests never need it), `fetch_prices` (limiter + calls within a time budget) and
`store_prices` (`SET NX EX 30`: a fetched price never overwrites the stream's).

The SDK answers failures with `{"status": "failure", "remarks": ...}` instead of raising;
they end up as reasons in `missing` and entries in `errors`, never as exceptions.

Reasons a key can be missing:
  not_found            Dhan answered but had no price for it
  rate_limited         no REST slot within the budget, or Dhan answered 429 / DH-904 / 805
                       twice for the same call (the first is retried on the next slot)
  timeout              the call timed out, or the budget ran out before it could be made
  dhan_auth_error      Dhan rejected the credentials (DH-901, 807-810)
  dhan_not_subscribed  the account lacks the Data API plan (806)
  dhan_error           any other failure Dhan or the SDK reported
  dhan_not_configured  no DhanHQ credentials are configured
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis import Redis

from core.config import Secret
from core.instruments import InstrumentKey
from core.messages import format_price
from core.names import LTP_TTL_SECONDS, ltp_key
from functions.ratelimit import RateLimiter
from functions.secrets import DhanCredentials

MAX_IDS_PER_CALL = 1000
# A call started with less time than this left cannot realistically finish.
MIN_CALL_SECONDS = 0.2

NOT_FOUND = "not_found"
RATE_LIMITED = "rate_limited"
TIMEOUT = "timeout"
AUTH_ERROR = "dhan_auth_error"
NOT_SUBSCRIBED = "dhan_not_subscribed"
DHAN_ERROR = "dhan_error"
NOT_CONFIGURED = "dhan_not_configured"

_RATE_CODES = {"DH-904", "805", "429"}
_AUTH_CODES = {"DH-901", "807", "808", "809", "810"}
_NOT_SUBSCRIBED_CODES = {"806", "DH-902"}
# Reasons after which the remaining calls of this request would fail the same way.
_STOP_REASONS = {RATE_LIMITED, AUTH_ERROR, NOT_SUBSCRIBED}


class LtpSource(Protocol):
    def ticker_data(self, securities: dict[str, list[int]], *, timeout: float) -> Mapping[str, Any]:
        """One `POST /marketfeed/ltp`, answered in the SDK's {"status","remarks","data"} shape."""
        ...


class SdkLtpSource:
    """The SDK's REST MarketFeed pointed at `base_url`, with a short HTTP timeout."""

    def __init__(self, *, client_id: str, access_token: Secret, base_url: str) -> None:
        from dhanhq import DhanContext
        from dhanhq._market_feed import MarketFeed

        context = DhanContext(client_id, access_token.value)
        self._http = context.get_dhan_http()
        self._http.base_url = base_url
        self._feed = MarketFeed(context)

    def ticker_data(self, securities: dict[str, list[int]], *, timeout: float) -> Mapping[str, Any]:
        # The SDK default is 60 s; a request handler must never wait that long.
        self._http.timeout = timeout
        answer: Mapping[str, Any] = self._feed.ticker_data(securities)
        return answer


class SdkSourceCache:
    """Reuses one SDK client (and its HTTP connection pool) until the credentials change."""

    def __init__(
        self,
        *,
        base_url: str,
        build: Callable[..., LtpSource] = SdkLtpSource,
    ) -> None:
        self._base_url = base_url
        self._build = build
        self._lock = threading.Lock()
        self._current: tuple[DhanCredentials, LtpSource] | None = None

    def get(self, credentials: DhanCredentials) -> LtpSource:
        with self._lock:
            if self._current is None or self._current[0] != credentials:
                source = self._build(
                    client_id=credentials.client_id,
                    access_token=credentials.access_token,
                    base_url=self._base_url,
                )
                self._current = (credentials, source)
            return self._current[1]


@dataclass
class FetchResult:
    prices: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0

    def give_up(self, keys: Iterable[InstrumentKey], reason: str) -> None:
        for key in keys:
            self.missing[str(key)] = reason


def plan_calls(
    keys: Sequence[InstrumentKey], *, max_ids: int = MAX_IDS_PER_CALL
) -> list[list[InstrumentKey]]:
    """Group keys by segment and pack them into calls of at most `max_ids` ids.

    One call may carry several segments (Dhan's body is {"NSE_EQ": [...], "NSE_FNO": [...]}),
    so a request pays one rate-limit slot per 1,000 ids, not one per segment.
    """
    by_segment: dict[str, list[InstrumentKey]] = {}
    for key in keys:
        by_segment.setdefault(key.segment, []).append(key)
    calls: list[list[InstrumentKey]] = []
    current: list[InstrumentKey] = []
    for segment_keys in by_segment.values():
        for key in segment_keys:
            if len(current) == max_ids:
                calls.append(current)
                current = []
            current.append(key)
    if current:
        calls.append(current)
    return calls


def securities_of(call: Sequence[InstrumentKey]) -> dict[str, list[int]]:
    securities: dict[str, list[int]] = {}
    for key in call:
        securities.setdefault(key.segment, []).append(int(key.security_id))
    return securities


def classify_failure(remarks: Any) -> tuple[str, dict[str, Any]]:
    """A failure's reason and its error entry (Dhan's code, type and message)."""
    if isinstance(remarks, Mapping):
        code = str(remarks.get("error_code") or "") or None
        kind = remarks.get("error_type")
        message = str(remarks.get("error_message") or "DhanHQ reported a failure")
    else:
        code, kind, message = None, None, str(remarks or "DhanHQ reported a failure")
    lowered = message.lower()
    if code in _RATE_CODES or "too many" in lowered or "rate limit" in lowered:
        reason = RATE_LIMITED
    elif code in _AUTH_CODES:
        reason = AUTH_ERROR
    elif code in _NOT_SUBSCRIBED_CODES:
        reason = NOT_SUBSCRIBED
    elif code is None and ("timed out" in lowered or "timeout" in lowered):
        reason = TIMEOUT
    else:
        reason = DHAN_ERROR
    entry: dict[str, Any] = {"reason": reason, "code": code, "type": kind, "message": message}
    return reason, entry


def _price_of(entry: Any) -> float | None:
    if not isinstance(entry, Mapping):
        return None
    value = entry.get("last_price")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        price = float(value)
    except ValueError:
        return None
    return price if math.isfinite(price) and price > 0 else None


def parse_ltp_answer(
    call: Sequence[InstrumentKey], answer: Mapping[str, Any]
) -> tuple[dict[str, float], dict[str, str], dict[str, Any] | None]:
    """One SDK answer -> (prices, missing reasons, error entry or None)."""
    if answer.get("status") != "success":
        reason, entry = classify_failure(answer.get("remarks"))
        return {}, {str(key): reason for key in call}, entry
    # The SDK wraps Dhan's whole JSON body: {"data": {"data": {SEG: {ID: {...}}}, "status"}}.
    body = answer.get("data")
    found = body.get("data") if isinstance(body, Mapping) else None
    segments: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    prices: dict[str, float] = {}
    missing: dict[str, str] = {}
    for key in call:
        per_segment = segments.get(key.segment)
        quote = per_segment.get(key.security_id) if isinstance(per_segment, Mapping) else None
        price = _price_of(quote)
        if price is None:
            missing[str(key)] = NOT_FOUND
        else:
            prices[str(key)] = round(price, 2)
    return prices, missing, None


def fetch_prices(
    keys: Sequence[InstrumentKey],
    *,
    source: LtpSource,
    limiter: RateLimiter,
    deadline: float,
    call_timeout: float,
    clock: Callable[[], float] = time.monotonic,
    max_ids: int = MAX_IDS_PER_CALL,
) -> FetchResult:
    """Fetch what can be fetched before `deadline` (a `clock` value); the rest goes to missing."""
    result = FetchResult()
    calls = plan_calls(keys, max_ids=max_ids)
    index, retried = 0, False
    while index < len(calls):
        call = calls[index]
        if not limiter.acquire(deadline=deadline - MIN_CALL_SECONDS):
            for rest in calls[index:]:
                result.give_up(rest, RATE_LIMITED)
            break
        timeout = min(call_timeout, deadline - clock())
        if timeout < MIN_CALL_SECONDS:
            for rest in calls[index:]:
                result.give_up(rest, TIMEOUT)
            break
        try:
            answer = source.ticker_data(securities_of(call), timeout=timeout)
        except Exception as exc:  # the SDK promises not to raise; a bug in it must not 500
            answer = {"status": "failure", "remarks": f"{type(exc).__name__}: {exc}"}
        result.calls += 1
        prices, missing, error = parse_ltp_answer(call, answer)
        # Dhan times its one-per-second window on its side, so two slots our limiter granted
        # 1.1 s apart can still arrive closer after network jitter: one retry, on the next
        # slot, turns that into a delay instead of a whole call's keys listed as missing.
        if error is not None and error["reason"] == RATE_LIMITED and not retried:
            retried = True
            continue
        index, retried = index + 1, False
        result.prices.update(prices)
        result.missing.update(missing)
        if error is not None:
            error["keys"] = len(call)
            error["segments"] = sorted({key.segment for key in call})
            result.errors.append(error)
            if error["reason"] in _STOP_REASONS:
                for rest in calls[index:]:
                    result.give_up(rest, error["reason"])
                break
    return result


def store_prices(*, redis: Redis, prices: Mapping[str, float]) -> None:
    """Cache fetched prices for the stream's TTL, but only where the stream has not written."""
    if not prices:
        return
    pipe = redis.pipeline(transaction=False)
    for key, price in prices.items():
        pipe.set(ltp_key(key), format_price(price), nx=True, ex=LTP_TTL_SECONDS)
    pipe.execute()
