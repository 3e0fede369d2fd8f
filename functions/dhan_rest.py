"""DhanHQ REST fallback for cache misses, through the official `dhanhq` SDK.

Pure parts: `plan_calls` (keys -> calls of at most 1,000 ids, grouped by segment) and
`parse_ltp_answer` (one SDK answer -> prices, per-key reasons, an error entry).
Pure parts also: `screen_misses` (which misses are worth a call at all).
I/O parts: `SdkLtpSource` (the SDK's REST `MarketFeed.ticker_data`, imported lazily: most
requests never need it), `read_screen` (one pipeline: is a master loaded, which misses it
knows, which ones Dhan recently had no price for), `fetch_prices` (limiter + calls within a
time budget) and `store_prices` (`SET NX EX 30`: a fetched price never overwrites the
stream's; and the keys Dhan had no price for, remembered).

Before any call, misses are screened, so that random or unknown ids cost no REST slot:
- with an instrument master loaded (`instruments:meta` exists), a key the master does not know
  (not a field of `instruments:symbols`) is answered `unknown_instrument`; without a master
  every key may be fetched, as before;
- a key Dhan answered without a price is remembered as `dhan:rest:not_found:{SEG}:{ID}`
  (`NOT_FOUND_PREFIX`, value "1", `EX DHAN_NOT_FOUND_TTL_SECONDS`, default 300 s) and answered
  `not_found` from there until it lapses. A price in `ltp:{SEG}:{ID}` (the stream's, or a
  later fetch's) wins: only keys the cache had no price for are screened. (Not under `ltp:`
  on purpose: a consumer scanning `ltp:*` must find prices only.)

The SDK answers failures with `{"status": "failure", "remarks": ...}` instead of raising;
they end up as reasons in `missing` and entries in `errors`, never as exceptions.

Reasons a key can be missing:
  not_found            Dhan answered but had no price for it (now, or within the last
                       DHAN_NOT_FOUND_TTL_SECONDS: then no call was made)
  unknown_instrument   not in the loaded instrument master: no call was made
  rate_limited         no REST slot within the budget, or this caller's share of slots is
                       used up (answered at once; `errors` has a `caller_share` entry), or
                       Dhan answered 429 / DH-904 / 805 twice for the same call (the first
                       is retried on the next slot)
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
from core.names import (
    DHAN_REST_NOT_FOUND_PREFIX,
    INSTRUMENT_META_KEY,
    INSTRUMENT_SEGMENTS_KEY,
    INSTRUMENT_SYMBOLS_KEY,
    LTP_TTL_SECONDS,
    ltp_key,
)
from core.redis_client import as_text
from functions.ratelimit import RateLimiter
from functions.secrets import DhanCredentials

MAX_IDS_PER_CALL = 1000
# A call started with less time than this left cannot realistically finish.
MIN_CALL_SECONDS = 0.2

NOT_FOUND = "not_found"
UNKNOWN_INSTRUMENT = "unknown_instrument"
RATE_LIMITED = "rate_limited"
TIMEOUT = "timeout"
AUTH_ERROR = "dhan_auth_error"
NOT_SUBSCRIBED = "dhan_not_subscribed"
DHAN_ERROR = "dhan_error"
NOT_CONFIGURED = "dhan_not_configured"
CALLER_SHARE = "caller_share"

NOT_FOUND_PREFIX = DHAN_REST_NOT_FOUND_PREFIX
DEFAULT_NOT_FOUND_TTL_SECONDS = 300

_RATE_CODES = {"DH-904", "805", "429"}
_AUTH_CODES = {"DH-901", "807", "808", "809", "810"}
_NOT_SUBSCRIBED_CODES = {"806", "DH-902"}
# Reasons after which the remaining calls of this request would fail the same way.
_STOP_REASONS = {RATE_LIMITED, AUTH_ERROR, NOT_SUBSCRIBED}
# Failures of the deployment's credentials, not of the caller's keys: not charged to its share.
_REFUND_REASONS = {AUTH_ERROR, NOT_SUBSCRIBED}


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


def not_found_key(key: InstrumentKey | str) -> str:
    return f"{NOT_FOUND_PREFIX}{key}"


@dataclass
class FetchResult:
    prices: dict[str, float] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    errors: list[dict[str, Any]] = field(default_factory=list)
    calls: int = 0
    # Misses answered by the screen without a call (`screen_misses`), and keys refused because
    # the caller's share was used up.
    unknown: int = 0
    remembered: int = 0
    caller_refused: int = 0

    def give_up(self, keys: Iterable[InstrumentKey], reason: str) -> None:
        for key in keys:
            self.missing[str(key)] = reason

    def not_found(self) -> list[str]:
        """Keys Dhan answered without a price in this fetch (to be remembered)."""
        return [key for key, reason in self.missing.items() if reason == NOT_FOUND]


@dataclass(frozen=True, slots=True)
class Screened:
    """Misses split into those worth a call (`fetch`) and those answered without one."""

    fetch: list[str]
    missing: dict[str, str] = field(default_factory=dict)
    unknown: int = 0
    remembered: int = 0


def screen_misses(
    keys: Sequence[str],
    *,
    master_loaded: bool,
    symbols: Sequence[bytes | str | None],
    remembered: Sequence[bytes | str | None],
    segments: frozenset[str] | None = None,
) -> Screened:
    """Pure: with a master loaded, a key without a symbol is unknown, unless its segment is
    not one the master lists (`segments`; None: it lists every one); a key with a live
    not-found entry is not found; the rest are fetched. `symbols` and `remembered` are the
    per-key values of `instruments:symbols` and of the not-found entries, in `keys` order."""
    fetch: list[str] = []
    missing: dict[str, str] = {}
    unknown = found_before = 0
    for key, symbol, before in zip(keys, symbols, remembered, strict=True):
        if master_loaded and symbol is None and (
                segments is None or key.partition(":")[0] in segments):
            missing[key] = UNKNOWN_INSTRUMENT
            unknown += 1
        elif before is not None:
            missing[key] = NOT_FOUND
            found_before += 1
        else:
            fetch.append(key)
    return Screened(fetch, missing, unknown, found_before)


def read_screen(keys: Sequence[str], *, redis: Redis) -> Screened:
    """One round trip for the screen: the master's presence, the keys' symbols (the master is
    `core.instrument_master`'s; read here in the same pipeline rather than a round trip of its
    own) and their not-found entries."""
    if not keys:
        return Screened([])
    pipe = redis.pipeline(transaction=False)
    pipe.exists(INSTRUMENT_META_KEY)
    pipe.hmget(INSTRUMENT_SYMBOLS_KEY, list(keys))
    pipe.mget([not_found_key(key) for key in keys])
    pipe.smembers(INSTRUMENT_SEGMENTS_KEY)
    loaded, symbols, remembered, segments = pipe.execute()
    return screen_misses(keys, master_loaded=bool(loaded), symbols=symbols, remembered=remembered,
                         segments=frozenset(as_text(s) for s in segments) or None)


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
            refusal = limiter.refusal
            if refusal is not None and refusal.caller_refused:
                refused = [key for rest in calls[index:] for key in rest]
                result.caller_refused = len(refused)
                result.errors.append(caller_share_error(refused, wait=refusal.wait,
                                                        interval=limiter.caller_interval))
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
            if error["reason"] in _REFUND_REASONS:
                limiter.refund_share()
            if error["reason"] in _STOP_REASONS:
                for rest in calls[index:]:
                    result.give_up(rest, error["reason"])
                break
    return result


def caller_share_error(keys: Sequence[InstrumentKey], *, wait: float,
                       interval: float) -> dict[str, Any]:  # fmt: skip
    return {"reason": RATE_LIMITED, "code": CALLER_SHARE, "type": "Caller_Share",
            "message": f"this caller's share of DhanHQ REST calls (one per {interval:g} s) is "
                       f"used up; retry in {math.ceil(wait)} s",
            "keys": len(keys), "segments": sorted({key.segment for key in keys})}  # fmt: skip


def store_prices(
    *,
    redis: Redis,
    prices: Mapping[str, float],
    not_found: Sequence[str] = (),
    not_found_ttl: int = DEFAULT_NOT_FOUND_TTL_SECONDS,
) -> None:
    """Cache fetched prices for the stream's TTL, but only where the stream has not written;
    remember the keys Dhan had no price for (`not_found`) for `not_found_ttl` s (0: not)."""
    remember = not_found if not_found_ttl > 0 else ()
    if not prices and not remember:
        return
    pipe = redis.pipeline(transaction=False)
    for key, price in prices.items():
        pipe.set(ltp_key(key), format_price(price), nx=True, ex=LTP_TTL_SECONDS)
    for key in remember:
        pipe.set(not_found_key(key), "1", ex=not_found_ttl)
    pipe.execute()
