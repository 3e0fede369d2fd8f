"""Structured logs and EMF metrics of the HTTP API.

Logs: Powertools JSON lines with the request id as `correlation_id` (API Gateway's
`requestContext.requestId` in Lambda, else an `X-Request-Id` header or a fresh id under
uvicorn). Only method, path, status, duration and counts are logged: never headers, bodies or
query strings, so an admin key or a token cannot reach a log line. One line per request at
DEBUG for successes (API Gateway's access log already has every request; a browser polls every
1.5 s), INFO for 4xx, ERROR for 5xx.

Metrics (namespace from settings, dimension `service`): RequestLatency (ms), ServerErrors,
CacheHits, CacheMisses, RestFetched, RestCalls, RestErrors, RestRateLimited, recorded on an
`ApiMetrics` and written as Powertools EMF documents: in Lambda one per invocation (the entry
point's `flushes_metrics`), under uvicorn whenever a metric reaches 100 values.
"""

from __future__ import annotations

import functools
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SERVICE_NAME = "ltp-api"
# Powertools flushes a metric set by itself once a metric holds this many values.
MAX_VALUES = 100

logger = Logger(service=SERVICE_NAME)


class ApiMetrics:
    """The API's metrics: plain values while a request runs, one EMF document per flush, built
    by Powertools.

    Powertools' `add_metric` validates the name, unit and resolution and formats a debug message
    on every call: ~3 us each, ~8 us once a large request has pushed that code out of the CPU
    caches, and every request records three to eight. The names and units here are constants of
    this module's callers, so values are kept as Powertools keeps them (unit, resolution, list
    of values per name) and handed once to `Metrics.serialize_metric_set`, which adds the
    namespace, the `service` and default dimensions, metadata and timestamp: the same EMF
    document `Metrics.flush_metrics` prints, written with orjson. POWERTOOLS_METRICS_DISABLED /
    POWERTOOLS_DEV are read once, when built.
    """

    def __init__(self, metrics: Metrics) -> None:
        self.powertools = metrics
        self._disabled = is_metrics_disabled()
        self._values: dict[str, dict[str, Any]] = {}

    def count(self, name: str, value: int) -> None:
        self._add(name, "Count", value)

    def milliseconds(self, name: str, value: float) -> None:
        self._add(name, "Milliseconds", value)

    def _add(self, name: str, unit: str, value: float) -> None:
        metric = self._values.get(name)
        if metric is None:
            metric = self._values[name] = {"Unit": unit, "StorageResolution": 60, "Value": []}
        values: list[float] = metric["Value"]
        values.append(float(value))
        if len(values) >= MAX_VALUES:
            self.flush()

    def flush(self) -> None:
        """Write the recorded values as one EMF document (nothing when none) and forget them."""
        recorded, self._values = self._values, {}
        if recorded and not self._disabled:
            document = self.powertools.serialize_metric_set(metrics=recorded)
            sys.stdout.write(orjson.dumps(document).decode() + "\n")

    def clear_metrics(self) -> None:
        self._values = {}


def new_metrics(namespace: str) -> ApiMetrics:
    return ApiMetrics(Metrics(namespace=namespace, service=SERVICE_NAME))


LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


def flushes_metrics(metrics: ApiMetrics) -> Callable[[LambdaHandler], LambdaHandler]:
    """`Metrics.log_metrics` for `ApiMetrics`: one EMF document after every invocation."""

    def decorate(handler: LambdaHandler) -> LambdaHandler:
        @functools.wraps(handler)
        def invoke(event: dict[str, Any], context: Any) -> dict[str, Any]:
            try:
                return handler(event, context)
            finally:
                metrics.flush()

        return invoke

    return decorate


class ObservabilityMiddleware:
    """A plain ASGI middleware (no BaseHTTPMiddleware task group on the hot path)."""

    def __init__(self, app: ASGIApp, *, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        logger.set_correlation_id(_request_id(scope))
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            request_done(self.metrics, method=scope["method"], path=scope["path"],
                         status=status, started=started)  # fmt: skip


def request_done(metrics: ApiMetrics, *, method: str, path: str, status: int,
                 started: float) -> None:  # fmt: skip
    """Latency metric and the request's log line (see the module docstring for levels)."""
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    metrics.milliseconds("RequestLatency", elapsed_ms)
    if status >= 500:
        metrics.count("ServerErrors", 1)
        log = logger.error
    elif status >= 400:
        log = logger.info
    else:
        log = logger.debug
    log("request", extra={"method": method, "path": path, "status": status,
                          "duration_ms": round(elapsed_ms, 3)})  # fmt: skip


def event_request_id(event: Any) -> str | None:
    """API Gateway's request id of an HTTP API event."""
    if isinstance(event, dict):
        context = event.get("requestContext")
        if isinstance(context, dict) and isinstance(context.get("requestId"), str):
            return str(context["requestId"])
    return None


def _request_id(scope: Scope) -> str:
    from_event = event_request_id(scope.get("aws.event"))
    if from_event is not None:
        return from_event
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id" and 0 < len(value) <= 128:
            return str(value.decode("latin-1"))
    return uuid.uuid4().hex
