"""What the API sends the quotes function and what it answers: one definition for both sides.

Request (`QuoteRequest`): `{"keys": ["NSE_EQ:2885", ...], "caller": "ip:203.0.113.7" | null}`,
at most `MAX_KEYS` canonical instrument keys, already screened by the API (valid, cache
misses, known to the instrument master, not remembered as not found). `caller` takes its share
of the REST slots (`functions.ratelimit`); null: only the deployment's limit applies.

Answer (`QuoteAnswer`): the `functions.dhan_rest.FetchResult` as JSON, every field of it
(`prices`, `missing`, `errors`, `calls`, `unknown`, `remembered`, `caller_refused`). An event
of another shape is answered `{"error": "invalid_request", "message": ...}` (`refusal`), never
by raising: the caller learns what was wrong without a stack trace.

`MAX_KEYS` is one DhanHQ call's worth (`functions.dhan_rest.MAX_IDS_PER_CALL`): one invocation
makes at most one call (plus its one retry after a Dhan 429), so what anyone allowed to invoke
the function can ask of Dhan per invocation is bounded here, and a request of more misses is
sent in batches (`functions.api.quotes`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from core.errors import InvalidKeysError
from core.instruments import InstrumentKey, parse_keys
from functions.dhan_rest import MAX_IDS_PER_CALL, FetchResult
from functions.errors import QuoteFunctionError, QuoteRequestError

MAX_KEYS = MAX_IDS_PER_CALL
INVALID_REQUEST = "invalid_request"
_REQUEST_FIELDS = frozenset({"keys", "caller"})
_COUNTS = ("calls", "unknown", "remembered", "caller_refused")


class QuoteRequest(TypedDict):
    keys: list[str]
    caller: str | None


class QuoteAnswer(TypedDict):
    prices: dict[str, float]
    missing: dict[str, str]
    errors: list[dict[str, Any]]
    calls: int
    unknown: int
    remembered: int
    caller_refused: int


class Refusal(TypedDict):
    error: str
    message: str


def request_of(keys: Sequence[str], caller: str | None) -> QuoteRequest:
    if len(keys) > MAX_KEYS:
        raise ValueError(f"at most {MAX_KEYS} keys per request, got {len(keys)}: batch them")
    return {"keys": list(keys), "caller": caller}


def parse_request(event: Any) -> tuple[list[InstrumentKey], str | None]:
    """The keys (canonical, duplicates folded) and the caller of an event; raises
    QuoteRequestError saying what is wrong with any other event."""
    if not isinstance(event, Mapping):
        raise QuoteRequestError(f"the event must be an object, got {type(event).__name__}")
    if unknown := sorted(str(name) for name in set(event) - _REQUEST_FIELDS):
        raise QuoteRequestError(f"unknown fields {unknown}: the event has keys and caller only")
    keys, caller = event.get("keys"), event.get("caller")
    if not isinstance(keys, list) or len(keys) > MAX_KEYS:
        raise QuoteRequestError(f"keys must be a list of at most {MAX_KEYS} instrument keys")
    if caller is not None and not isinstance(caller, str):
        raise QuoteRequestError("caller must be a string or null")
    try:
        parsed = parse_keys(keys)
    except InvalidKeysError as exc:
        raise QuoteRequestError(f"invalid keys: {exc}") from exc
    return parsed, caller


def refusal(error: QuoteRequestError) -> Refusal:
    return {"error": INVALID_REQUEST, "message": str(error)}


def answer_of(result: FetchResult) -> QuoteAnswer:
    return {"prices": result.prices, "missing": result.missing, "errors": result.errors,
            "calls": result.calls, "unknown": result.unknown, "remembered": result.remembered,
            "caller_refused": result.caller_refused}  # fmt: skip


def result_of(payload: Any) -> FetchResult:
    """The FetchResult of an answer; raises QuoteFunctionError for a refusal or any answer
    of another shape (the keys are then answered as a failed fetch, not a 500)."""
    if not isinstance(payload, Mapping):
        raise QuoteFunctionError(f"the answer is not an object: {type(payload).__name__}")
    if "error" in payload:
        raise QuoteFunctionError(f"the request was refused: {payload.get('message')}")
    prices, missing, errors = payload.get("prices"), payload.get("missing"), payload.get("errors")
    if not isinstance(prices, Mapping) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in prices.values()):
        raise QuoteFunctionError("the answer's prices are not an object of numbers")
    if not isinstance(missing, Mapping) or not all(isinstance(v, str) for v in missing.values()):
        raise QuoteFunctionError("the answer's missing is not an object of reasons")
    if not isinstance(errors, list) or not all(isinstance(e, dict) for e in errors):
        raise QuoteFunctionError("the answer's errors are not a list of objects")
    calls, unknown, remembered, caller_refused = (_count(payload, name) for name in _COUNTS)
    return FetchResult(prices={str(k): float(v) for k, v in prices.items()},
                       missing={str(k): v for k, v in missing.items()}, errors=list(errors),
                       calls=calls, unknown=unknown, remembered=remembered,
                       caller_refused=caller_refused)  # fmt: skip


def _count(payload: Mapping[str, Any], name: str) -> int:
    value = payload.get(name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise QuoteFunctionError(f"the answer's {name} is not a count")
    return value
