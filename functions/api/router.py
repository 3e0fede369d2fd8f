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
"""

from __future__ import annotations

import base64
import time
import uuid
from typing import Any
from urllib.parse import parse_qsl

from functions.api.answers import JSON, Answer, error_answer, internal_error
from functions.api.deps import ApiDeps
from functions.api.keys import MAX_BODY_BYTES, check_declared_length, keys_from_query
from functions.api.observability import LambdaHandler, event_request_id, logger, request_done
from functions.api.payloads import prices_request
from functions.api.prices import fetch_missing, prices_answer, read_cache

HOT_PATH = "/api/v1/current_prices"


class LambdaRouter:
    def __init__(self, *, deps: ApiDeps, asgi: LambdaHandler) -> None:
        self.deps = deps
        self.asgi = asgi

    def __call__(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        http = (event.get("requestContext") or {}).get("http") or {}
        method = http.get("method")
        if http.get("path") != HOT_PATH or method not in ("GET", "POST") or "version" not in event:
            return self.asgi(event, context)
        started = time.perf_counter()
        logger.set_correlation_id(event_request_id(event) or uuid.uuid4().hex)
        try:
            answer = self._current_prices(event, method)
        except Exception as exc:
            known = error_answer(exc)
            if known is None:
                logger.exception("unhandled error")
                known = internal_error()
            answer = known
        request_done(self.deps.metrics, method=method, path=HOT_PATH, status=answer.status,
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
        fetched = fetch_missing(self.deps, cached.misses) if cached.misses else None
        return prices_answer(self.deps, keys, cached, fetched)


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
