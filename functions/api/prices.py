"""Current prices: one MGET, the misses through the DhanHQ REST fallback, one JSON answer.

Response (seed fields first):
  {"prices": {"NSE_EQ:1333": 1234.5, ...}, "timestamp": ISO-8601 UTC, "count": <prices>,
   "cached_count": <from Redis>, "api_fetched_count": <from DhanHQ REST>,
   "requested_count": <distinct keys asked>, "missing": {"NSE_EQ:99": "not_found", ...},
   "errors": [{"reason", "code", "type", "message", "keys", "segments"}, ...]}
Reasons in `missing` are those of `functions.dhan_rest`.

Misses are screened before any REST work (`functions.dhan_rest.read_screen`, one pipeline):
keys the loaded instrument master does not know are `unknown_instrument`, keys Dhan recently
had no price for are `not_found`, neither costing a call or a credentials lookup. The rest go
to DhanHQ (`ApiDeps.quotes`: the private quotes function in AWS, which alone reads the Dhan
secret; in-process locally) through the deployment's limiter and, when the request names its
caller (the Lambda router passes the source IP or JWT subject:
`functions.api.router.caller_of`), that caller's share of the slots
(`DHAN_REST_CALLER_INTERVAL_SECONDS`).

The cache values are decimal strings written by this project (`core.messages.format_price`),
which are already JSON numbers. In the usual case (every key cached, every value a JSON number)
the `prices` object is spliced from them with C-level work only: one join, one strict orjson
parse of all the values at once to prove each is one finite JSON number, and one `%` over a
template built from the keys; no float or dict entry per key. Anything else (a miss, `nan`,
` 12.5`, garbage) goes key by key: a JSON number is still spliced (`orjson.Fragment`), anything
else `parse_price` accepts is converted, the rest is a miss.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import orjson

from core.messages import parse_price, utc_now_iso
from core.names import LTP_PREFIX
from functions.api.answers import NO_STORE, Answer
from functions.api.deps import ApiDeps
from functions.dhan_rest import RATE_LIMITED, FetchResult, Screened, read_screen

_NAME_GLUE = "," + LTP_PREFIX
# Every character a JSON number can have: with only these (and commas between values), nothing
# but numbers can parse (no true/false/null, strings, containers or blanks).
_NUMBER_CHARS = b"0123456789.eE+-"
_NUMBERS_CHARS = _NUMBER_CHARS + b","

Price = float | orjson.Fragment


@dataclass(frozen=True, slots=True)
class CachedPrices:
    """What one MGET found for a list of distinct keys.

    `spliced`: the JSON text of the whole `prices` object, when every key held a JSON number.
    Otherwise `per_key` holds each price found (the stored number as a fragment, or a float)
    and `misses` the keys without one.
    """

    hits: int
    misses: list[str] = field(default_factory=list)
    spliced: bytes | None = None
    per_key: dict[str, Price] = field(default_factory=dict)


def read_cache(deps: ApiDeps, keys: Sequence[str]) -> CachedPrices:
    """One MGET for `keys`: distinct and canonical (as `functions.api.keys` returns them)."""
    if not keys:
        return CachedPrices(0)
    # Canonical keys never contain a comma, so a join and a split build all the names at once.
    names = (LTP_PREFIX + _NAME_GLUE.join(keys)).split(",")
    values = deps.redis.mget(names)
    spliced = splice_prices(keys, values)
    if spliced is not None:
        return CachedPrices(len(keys), spliced=spliced)
    return _read_per_key(keys, values)


def splice_prices(keys: Sequence[str], values: Sequence[bytes | str | None]) -> bytes | None:
    """`{"KEY":value,...}` from the stored text when every value is one finite JSON number
    (bytes); None otherwise. Canonical keys need no JSON escaping and hold no `%`."""
    try:
        joined = b",".join(values)  # type: ignore[arg-type]  # TypeError: a miss (None) or a str
    except TypeError:
        return None
    if joined.translate(None, _NUMBERS_CHARS):
        return None
    # orjson's grammar is strict (no leading zero, no `1.`, `.5`, `+1`, NaN or infinity). The
    # array parses with one element per value only when each value is exactly one JSON number:
    # an empty value breaks the parse, a value holding a comma adds an element.
    try:
        numbers = orjson.loads(b"[" + joined + b"]")
    except orjson.JSONDecodeError:
        return None
    if len(numbers) != len(values):
        return None
    template = b"".join((b'{"', '":%s,"'.join(keys).encode(), b'":%s}'))
    return template % tuple(values)


def is_json_number(value: object) -> TypeGuard[bytes]:
    """One finite JSON number (bytes), as `splice_prices` requires of every value."""
    if not isinstance(value, bytes) or not value or value.translate(None, _NUMBER_CHARS):
        return False
    try:
        orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return True


def _read_per_key(keys: Sequence[str], values: Sequence[bytes | str | None]) -> CachedPrices:
    prices: dict[str, Price] = {}
    misses: list[str] = []
    for key, value in zip(keys, values, strict=True):
        if is_json_number(value):
            prices[key] = orjson.Fragment(value)
            continue
        price = parse_price(value)
        if price is None:
            misses.append(key)
        else:
            prices[key] = price
    return CachedPrices(len(prices), misses, per_key=prices)


def prices_answer(
    deps: ApiDeps, keys: Sequence[str], cached: CachedPrices, fetched: FetchResult | None
) -> Answer:
    record_metrics(deps, hits=cached.hits, misses=len(cached.misses), fetched=fetched)
    return Answer(200, render(requested=len(keys), cached=cached, fetched=fetched), NO_STORE)


def fetch_missing(deps: ApiDeps, keys: Sequence[str], *, caller: str | None = None) -> FetchResult:
    """Blocking: limiter waits and HTTP calls. The route runs it in the threadpool.

    `caller` (None: unknown) takes its share of the REST slots; see the module docstring."""
    screened = read_screen(keys, redis=deps.redis)
    result = deps.quotes(screened.fetch, caller) if screened.fetch else FetchResult()
    return _with_screen(result, screened)


def _with_screen(result: FetchResult, screened: Screened) -> FetchResult:
    result.missing.update(screened.missing)
    result.unknown, result.remembered = screened.unknown, screened.remembered
    return result


def record_metrics(deps: ApiDeps, *, hits: int, misses: int, fetched: FetchResult | None) -> None:
    metrics = deps.metrics
    metrics.count("CacheHits", hits)
    metrics.count("CacheMisses", misses)
    if fetched is not None:
        metrics.count("RestFetched", len(fetched.prices))
        metrics.count("RestCalls", fetched.calls)
        metrics.count("RestErrors", len(fetched.errors))
        limited = sum(1 for reason in fetched.missing.values() if reason == RATE_LIMITED)
        metrics.count("RestRateLimited", limited)
        metrics.count("RestCallerRefused", fetched.caller_refused)
        metrics.count("UnknownInstruments", fetched.unknown)
        metrics.count("NotFoundRemembered", fetched.remembered)


def render(*, requested: int, cached: CachedPrices, fetched: FetchResult | None) -> bytes:
    fetched_count = len(fetched.prices) if fetched is not None else 0
    return orjson.dumps(
        {
            "prices": _prices_object(cached, fetched),
            "timestamp": utc_now_iso(),
            "count": cached.hits + fetched_count,
            "cached_count": cached.hits,
            "api_fetched_count": fetched_count,
            "requested_count": requested,
            "missing": fetched.missing if fetched is not None else {},
            "errors": fetched.errors if fetched is not None else [],
        }
    )


def _prices_object(cached: CachedPrices, fetched: FetchResult | None) -> Any:
    if cached.spliced is None:
        return cached.per_key if fetched is None else {**cached.per_key, **fetched.prices}
    if fetched is None or not fetched.prices:
        return orjson.Fragment(cached.spliced)
    # Not reached today (only misses are fetched, and a spliced read has none): kept correct.
    return orjson.Fragment(cached.spliced[:-1] + b"," + orjson.dumps(fetched.prices)[1:])
