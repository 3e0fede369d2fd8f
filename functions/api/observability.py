"""Structured logs and EMF metrics of the HTTP API.

Logs: Powertools JSON lines with the request id as `correlation_id` (API Gateway's
`requestContext.requestId` in Lambda, else an `X-Request-Id` header or a fresh id under
uvicorn). Only method, path, status, duration and counts are logged: never headers, bodies or
query strings, so an admin key or a token cannot reach a log line. One line per request at
DEBUG for successes (API Gateway's access log already has every request; a browser polls every
1.5 s), INFO for 4xx, ERROR for 5xx.

Metrics (namespace from settings, dimension `service`): RequestLatency (ms), ServerErrors,
CacheHits, CacheMisses, RestFetched, RestCalls, RestErrors, RestRateLimited. In Lambda the
entry point's `log_metrics` flushes them once per invocation; under uvicorn Powertools flushes
by itself every 100 values.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit
from starlette.types import ASGIApp, Message, Receive, Scope, Send

SERVICE_NAME = "ltp-api"

logger = Logger(service=SERVICE_NAME)


def new_metrics(namespace: str) -> Metrics:
    return Metrics(namespace=namespace, service=SERVICE_NAME)


def count(metrics: Metrics, name: str, value: int) -> None:
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


class ObservabilityMiddleware:
    """A plain ASGI middleware (no BaseHTTPMiddleware task group on the hot path)."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics) -> None:
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


def request_done(metrics: Metrics, *, method: str, path: str, status: int,
                 started: float) -> None:  # fmt: skip
    """Latency metric and the request's log line (see the module docstring for levels)."""
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    metrics.add_metric(name="RequestLatency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    if status >= 500:
        count(metrics, "ServerErrors", 1)
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
