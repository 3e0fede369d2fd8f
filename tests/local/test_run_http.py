"""The local run's HTTP origin: requests become HTTP API events for a Mangum handler."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response
from mangum import Mangum

from functions.wsauth import verify_token
from local.run import lambda_http
from local.run.lambda_http import HttpApiProxy, LambdaPool, http_api_event
from local.run.site import LocalSite, PageConfig

EVENTS = Path(__file__).resolve().parents[1] / "events"


def test_the_event_has_the_shape_api_gateway_delivers() -> None:
    event = http_api_event(
        method="post", path="/api/v1/current_prices", query_string="a=1&b=2",
        headers=[("Host", "127.0.0.1:8000"), ("Content-Type", "application/json"),
                 ("X-Many", "1"), ("x-many", "2"), ("Cookie", "a=1; b=2")],
        body=b'{"keys": []}', source_ip="10.0.0.9", now=1_795_666_501.5,
    )
    recorded = json.loads((EVENTS / "http_post_current_prices.json").read_text())
    assert event.keys() - {"cookies", "queryStringParameters"} == recorded.keys()
    assert event["queryStringParameters"] == {"a": "1", "b": "2"}
    assert event["requestContext"].keys() == recorded["requestContext"].keys()
    assert event["requestContext"]["http"].keys() == recorded["requestContext"]["http"].keys()
    assert event["requestContext"]["http"]["method"] == "POST"
    assert event["requestContext"]["http"]["sourceIp"] == "10.0.0.9"
    assert event["requestContext"]["timeEpoch"] == 1_795_666_501_500
    assert event["rawQueryString"] == "a=1&b=2"
    assert event["headers"]["x-many"] == "1,2"
    assert "cookie" not in event["headers"] and event["cookies"] == ["a=1", "b=2"]
    assert (event["body"], event["isBase64Encoded"]) == ('{"keys": []}', False)


def test_binary_bodies_are_base64_and_empty_ones_absent() -> None:
    binary = http_api_event(method="PUT", path="/x", query_string="", body=b"\xff\x00",
                            headers=[("content-type", "application/octet-stream")],
                            source_ip="127.0.0.1")
    assert binary["isBase64Encoded"] is True
    assert base64.b64decode(binary["body"]) == b"\xff\x00"
    empty = http_api_event(method="GET", path="/x", query_string="", body=b"", headers=[],
                           source_ip="127.0.0.1")
    assert "body" not in empty and empty["isBase64Encoded"] is False


def echo_app() -> FastAPI:
    app = FastAPI()

    @app.api_route("/api/echo", methods=["GET", "POST"])
    async def echo(request: Request) -> dict[str, Any]:
        event = request.scope["aws.event"]
        context = request.scope["aws.context"]
        return {
            "method": request.method,
            "query": dict(request.query_params),
            "body": (await request.body()).decode(),
            "request_id": event["requestContext"]["requestId"],
            "function": context.function_name,
            "remaining_ms": context.get_remaining_time_in_millis(),
        }

    @app.get("/api/png")
    async def png() -> Response:
        return Response(b"\x89PNG\r\n\x1a\n\x00", media_type="image/png",
                        headers={"x-extra": "yes"})

    @app.get("/api/boom")
    async def boom() -> None:
        raise RuntimeError("not caught by the app")

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    app = echo_app()

    def environment() -> lambda_http.Handler:
        mangum = Mangum(app, lifespan="off")

        def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            if event["rawPath"] == "/api/crash":  # the function itself fails, not the app
                raise RuntimeError("function crashed")
            result: dict[str, Any] = mangum(event, context)
            return result

        return handler

    pool = LambdaPool(environment, size=2)
    page = PageConfig(ws_port=9001, ws_stage="local",
                      watchlist=[{"key": "NSE_EQ:2885", "symbol": "RELIANCE"}],
                      mint_token=lambda: "tok", options={"pollIntervalMs": 500})
    site = LocalSite(api=HttpApiProxy(pool), config=lambda: page)
    transport = httpx.ASGITransport(app=site)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
            yield c
    finally:
        pool.close()


async def test_api_requests_run_through_mangum_in_a_lambda_environment(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.post("/api/echo?x=1&y=two", content=b'{"k": 1}',
                               headers={"content-type": "application/json"})
    assert answer.status_code == 200
    body = answer.json()
    assert body["method"] == "POST" and body["query"] == {"x": "1", "y": "two"}
    assert body["body"] == '{"k": 1}'
    assert body["request_id"].endswith("=") and body["function"] == "ltp-local-api"
    assert 0 < body["remaining_ms"] <= 29_000


async def test_binary_responses_and_headers_come_back_intact(client: httpx.AsyncClient) -> None:
    answer = await client.get("/api/png")
    assert answer.status_code == 200
    assert answer.content == b"\x89PNG\r\n\x1a\n\x00"
    assert answer.headers["content-type"] == "image/png"
    assert answer.headers["x-extra"] == "yes"


async def test_failures_are_500s_as_in_aws(client: httpx.AsyncClient) -> None:
    app_error = await client.get("/api/boom")  # the app's own 500, through Mangum
    assert app_error.status_code == 500
    crash = await client.get("/api/crash")  # what API Gateway answers when Lambda fails
    assert crash.status_code == 500
    assert crash.json() == {"message": "Internal Server Error"}


async def test_a_body_over_the_http_api_limit_is_refused(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lambda_http, "MAX_BODY_BYTES", 10)
    answer = await client.post("/api/echo", content=b"x" * 11)
    assert answer.status_code == 413


async def test_config_json_names_the_websocket_on_the_browsers_host(
    client: httpx.AsyncClient,
) -> None:
    answer = await client.get("/config.json", headers={"host": "laptop.local:8000"})
    assert answer.headers["cache-control"] == "no-store"
    assert answer.json() == {
        "apiUrl": "",
        "wsUrl": "ws://laptop.local:9001/local",
        "watchlist": [{"key": "NSE_EQ:2885", "symbol": "RELIANCE"}],
        "watchlistName": "",
        "wsToken": "tok",
        "options": {"pollIntervalMs": 500},
    }
    v6 = await client.get("/config.json", headers={"host": "[::1]:8000"})
    assert v6.json()["wsUrl"] == "ws://[::1]:9001/local"


async def test_everything_else_is_the_page(client: httpx.AsyncClient) -> None:
    index = await client.get("/")
    assert index.status_code == 200 and "<table id=\"watchlist\"" in index.text
    assert (await client.get("/watchlist.json")).json()["name"] == "NIFTY 50"
    assert (await client.get("/nope.txt")).status_code == 404


def test_minted_tokens_verify_with_the_stack_secret() -> None:
    from functions.wsauth import mint_token

    page = PageConfig(ws_port=1, ws_stage="s", watchlist=[],
                      mint_token=lambda: mint_token("k" * 32, subject="ltp-local"))
    token = page.render("h")["wsToken"]
    assert verify_token(token, "k" * 32).subject == "ltp-local"
