"""Shared pieces of the API tests: HTTP API v2 event fixtures, a Lambda context, a harness that
drives the app through Mangum exactly as Lambda does. (No tests here.)"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from io import StringIO
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from mangum import Mangum

from functions.api.application import create_app
from functions.api.deps import ApiDeps, connect_redis
from functions.api.observability import logger, new_metrics
from functions.api.router import LambdaRouter
from functions.settings import Settings

EVENTS = Path(__file__).resolve().parents[1] / "events"
ADMIN_KEY = "test-admin-key-0123456789"


def load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / f"{name}.json").read_text())
    return event


def with_query(event: dict[str, Any], raw_query: str) -> dict[str, Any]:
    event = copy.deepcopy(event)
    event["rawQueryString"] = raw_query
    event.pop("queryStringParameters", None)
    return event


def with_body(event: dict[str, Any], body: Any) -> dict[str, Any]:
    """Replace the body (a dict/list is JSON-encoded; bytes are sent base64 as API GW does)."""
    event = copy.deepcopy(event)
    if isinstance(body, bytes):
        event["body"] = base64.b64encode(body).decode()
        event["isBase64Encoded"] = True
        size = len(body)
    else:
        text = body if isinstance(body, str) else json.dumps(body)
        event["body"] = text
        event["isBase64Encoded"] = False
        size = len(text.encode())
    event["headers"]["content-length"] = str(size)
    return event


def with_headers(event: dict[str, Any], **headers: str | None) -> dict[str, Any]:
    event = copy.deepcopy(event)
    for name, value in headers.items():
        key = name.replace("_", "-").lower()
        if value is None:
            event["headers"].pop(key, None)
        else:
            event["headers"][key] = value
    return event


class LambdaContext:
    function_name = "ltp-api"
    function_version = "$LATEST"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:ap-south-1:123456789012:function:ltp-api"
    aws_request_id = "0f5e2a4c-7d1b-4e8a-9c3f-2b6d8e1a7f40"
    log_group_name = "/aws/lambda/ltp-api"
    log_stream_name = "2026/11/26/[$LATEST]abcdef"

    def get_remaining_time_in_millis(self) -> int:
        return 29_000


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


class ApiHarness:
    """The app behind Mangum on a private event loop, invoked with HTTP API v2 events; with
    `via="router"` through the Lambda router (hot route from the event, the rest via Mangum),
    as `functions.api.handler` does."""

    def __init__(self, deps: ApiDeps, *, via: str = "mangum") -> None:
        self.deps = deps
        self.via = via
        self.app = create_app(deps)
        self.loop = asyncio.new_event_loop()
        # Mangum adopts the current loop when built (and would create one that nobody closes).
        asyncio.set_event_loop(self.loop)
        try:
            self.mangum = Mangum(self.app, lifespan="off")
        finally:
            asyncio.set_event_loop(None)
        self.entry = LambdaRouter(deps=deps, asgi=self.mangum) if via == "router" else self.mangum

    def invoke(self, event: dict[str, Any]) -> Answer:
        asyncio.set_event_loop(self.loop)
        try:
            result = self.entry(event, LambdaContext())
        finally:
            asyncio.set_event_loop(None)
        body = result.get("body") or ""
        raw = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
        headers = {k.lower(): v for k, v in (result.get("headers") or {}).items()}
        return Answer(result["statusCode"], headers, raw)

    def get_prices(self, raw_query: str) -> Answer:
        return self.invoke(with_query(load_event("http_get_current_prices"), raw_query))

    def post_prices(self, body: Any) -> Answer:
        return self.invoke(with_body(load_event("http_post_current_prices"), body))

    def start(self, body: Any, *, key: str | None = ADMIN_KEY) -> Answer:
        event = with_body(load_event("http_post_start"), body)
        auth = None if key is None else f"Bearer {key}"
        return self.invoke(with_headers(event, authorization=auth))

    def stop(self, body: Any, *, key: str | None = ADMIN_KEY) -> Answer:
        event = with_body(load_event("http_post_stop"), body)
        auth = None if key is None else f"Bearer {key}"
        return self.invoke(with_headers(event, authorization=auth))

    def health(self) -> Answer:
        return self.invoke(load_event("http_get_health"))

    def close(self) -> None:
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


MakeApi = Callable[..., ApiHarness]


@pytest.fixture
def make_api(
    redis_url: str, redis_client: redis.Redis, request: pytest.FixtureRequest
) -> Iterator[MakeApi]:
    """Build harnesses: `make_api(**settings_overrides, deps_overrides={...})`. A module that
    defines an `api_via` fixture ("mangum" or "router") chooses the path."""
    via = request.getfixturevalue("api_via") if "api_via" in request.fixturenames else "mangum"
    harnesses: list[ApiHarness] = []
    clients: list[redis.Redis] = []

    def build(*, deps_overrides: dict[str, Any] | None = None, **overrides: Any) -> ApiHarness:
        settings = Settings(redis_url=redis_url, **overrides)
        client = connect_redis(settings)
        clients.append(client)
        metrics = new_metrics("LtpTest")
        deps = ApiDeps.for_settings(settings, redis=client, metrics=metrics)
        if deps_overrides:
            deps = replace(deps, **deps_overrides)
        harness = ApiHarness(deps, via=via)
        harnesses.append(harness)
        return harness

    try:
        yield build
    finally:
        for harness in harnesses:
            harness.close()
            harness.deps.metrics.clear_metrics()
        for client in clients:
            client.close()


@pytest.fixture
def api(make_api: MakeApi) -> ApiHarness:
    return make_api()


@pytest.fixture
def captured_logs() -> Iterator[StringIO]:
    """Everything the API's Powertools logger writes, as its JSON lines."""
    stream = StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logger.registered_formatter)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logging.getLogger(logger.name).removeHandler(handler)
