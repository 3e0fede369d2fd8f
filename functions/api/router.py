"""The Lambda side of the HTTP API: the hot route answered straight from the event, every other
request through Mangum and the FastAPI app.

`GET|POST /api/v1/current_prices` is what every browser polls every 1.5 s. Through Mangum and
FastAPI it pays a fixed ~0.3-0.4 ms of framework work per request (event -> ASGI scope, asyncio
task, middleware stack, routing, dependency solving, response object), which at 1,000 keys is
as much as the Redis MGET itself (bench/bench_api.py prints both paths). Here it is parsed
from the API Gateway v2 event directly, with the *same* functions the FastAPI route calls
(`keys_from_query` / `prices_request`, `read_cache`, `fetch_missing`, `prices_answer`,
`error_answer`), so both answer byte for byte alike (the price tests run through both). The
FastAPI route stays: it documents the route, serves uvicorn and the local run, and any method
other than GET/POST on that path (405) goes to it.

The router also names the caller of a request whose misses go to DhanHQ REST (`caller_of`:
the JWT subject when an authorizer passed one, else the source IP, an IPv6 address by its /64),
so that one caller gets only its share of the deployment's REST slots
(`functions.ratelimit`); the FastAPI route names none and leaves only the deployment's limit.

`GET /api/v1/health/market_stream` is answered here too, from this container's caches
(`functions.api.health.HealthCache` / `CountsCache`, TTLs from the settings, `clock`
injectable): a flood of health checks costs one set of Redis reads per `HEALTH_CACHE_SECONDS`
and one ECS call per `HEALTH_ECS_CACHE_SECONDS`, not one per request.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from functions.api.answers import JSON, Answer, error_answer, internal_error, json_answer
from functions.api.deps import ApiDeps
from functions.api.health import CountsCache, HealthCache, market_stream_health
from functions.api.keys import MAX_BODY_BYTES, check_declared_length, keys_from_query
from functions.api.observability import LambdaHandler, event_request_id, logger, request_done
from functions.api.payloads import prices_request
from functions.api.prices import fetch_missing, prices_answer, read_cache
from functions.api.tokens import UNKNOWN_REQUESTER, requester

HOT_PATH = "/api/v1/current_prices"
HEALTH_PATH = "/api/v1/health/market_stream"


def caller_of(event: dict[str, Any]) -> str | None:
    """Pure: who sent an HTTP API v2 event, for the REST share: the one requester rule of
    `functions.api.tokens` (`sub:<JWT subject>`, else `ip:<address>`, IPv6 by its /64), None
    when neither is known."""
    counted = requester(event).counted_as
    return None if counted == UNKNOWN_REQUESTER else counted


class LambdaRouter:
    def __init__(self, *, deps: ApiDeps, asgi: LambdaHandler,
                 clock: Callable[[], float] = time.monotonic) -> None:  # fmt: skip
        self.deps = deps
        self.asgi = asgi
        settings = deps.settings
        self.health_cache = HealthCache(ttl=settings.health_cache_seconds, clock=clock)
        self.service_counts = CountsCache(ttl=settings.health_ecs_cache_seconds, clock=clock)

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        http = (event.get("requestContext") or {}).get("http") or {}
        method, path = http.get("method"), http.get("path")
        if "version" not in event:
            return self.asgi(event, context)
        if path == HOT_PATH and method in ("GET", "POST"):
            return self._answer(event, method, path, lambda: self._current_prices(event, method))
        if path == HEALTH_PATH and method == "GET":
            return self._answer(event, method, path, self._health)
        return self.asgi(event, context)

    def _answer(self, event: dict[str, Any], method: str, path: str,
                route: Callable[[], Answer]) -> dict[str, Any]:  # fmt: skip
        started = time.perf_counter()
        logger.set_correlation_id(event_request_id(event) or uuid.uuid4().hex)
        try:
            answer = route()
        except Exception as exc:
            known = error_answer(exc)
            if known is None:
                logger.exception("unhandled error")
                known = internal_error()
            answer = known
        request_done(self.deps.metrics, method=method, path=path, status=answer.status,
                     started=started)  # fmt: skip
        return lambda_response(answer)

    def _current_prices(self, event: dict[str, Any], method: str) -> Answer:
        if method == "GET":
            raw_query = (event.get("rawQueryString") or "").encode()
            # As Starlette reads a query string (latin-1, blanks kept), for identical answers.
            pairs = parse_qsl(raw_query.decode("latin-1"), keep_blank_values=True)
            keys = keys_from_query(raw_query, [value for name, value in pairs if name == "keys"])
        else:
            headers = event.get("headers") or {}
            check_declared_length(headers.get("content-length"), MAX_BODY_BYTES)
            keys = prices_request(event_body(event))
        cached = read_cache(self.deps, keys)
        fetched = None
        if cached.misses:
            fetched = fetch_missing(self.deps, cached.misses, caller=caller_of(event))
        return prices_answer(self.deps, keys, cached, fetched)

    def _health(self) -> Answer:
        deps, settings = self.deps, self.deps.settings

        def compute() -> dict[str, Any]:
            return market_stream_health(
                redis=deps.redis,
                service=self.service_counts.of(deps.streamer_service()),
                connection_count=deps.connection_count,
                now=deps.wall_clock(),
                stale_after=settings.heartbeat_stale_seconds,
                tick_stale_after=settings.health_tick_stale_seconds,
                bridge_stale_after=settings.health_bridge_stale_seconds,
            )

        return json_answer(self.health_cache.answer(compute))


def event_body(event: dict[str, Any]) -> bytes | str:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        return base64.b64decode(body)
    return body if isinstance(body, str) else bytes(body)


def lambda_response(answer: Answer) -> dict[str, Any]:
    """An HTTP API payload 2.0 response, shaped as Mangum shapes FastAPI's."""
    headers = {**answer.headers, "content-length": str(len(answer.body)), "content-type": JSON}
    return {
        "statusCode": answer.status,
        "headers": headers,
        "body": answer.body.decode(),
        "isBase64Encoded": False,
    }
