"""Abuse of the connect tokens, end to end: tokens from `GET /api/v1/ws_token` (the API through
Mangum, on HTTP API events) used against the local API Gateway running the `$connect`
authorizer as `functions.ws.wiring.build_app` builds it from settings, on a real Redis.

A token is good for one minute, from the address it was minted for; the route that mints them
is limited per address; and a secret that is configured but blank refuses, never opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
from websockets.exceptions import InvalidStatus

from core.config import Secret
from functions.api.tokens import LIMIT_PREFIX
from functions.settings import Settings
from functions.ws.app import WsApp
from functions.ws.settings import RealtimeSettings
from functions.ws.wiring import build_app
from functions.wsauth import mint_token, verify_token
from local.apigw import GatewayConfig, Handlers, LocalApiGateway
from local.apigw.client import boto3_client
from realtime.registry import live_connections
from tests.functions import test_api_support as support
from tests.functions.test_api_support import Answer, ApiHarness, MakeApi
from tests.realtime_support import connect, request

make_api = support.make_api

SECRET = "abuse-test-signing-key-0123456789"
HOME, ELSEWHERE = "127.0.0.1", "127.0.0.2"  # both loopback on Linux
WINDOW_START = 1_800_000_000.0  # a multiple of 60: a window starts here


def token_event(source_ip: str, *, forwarded_for: str | None = None) -> dict[str, Any]:
    event = support.load_event("http_get_health")
    event["rawPath"] = event["requestContext"]["http"]["path"] = "/api/v1/ws_token"
    event["requestContext"]["http"]["sourceIp"] = source_ip
    # What the client claims to be: API Gateway passes it on, the limiter never reads it.
    event["headers"]["x-forwarded-for"] = forwarded_for or source_ip
    return event


async def ws_token(api: ApiHarness, source_ip: str = HOME) -> Answer:
    # The harness runs Mangum on its own loop: off this test's loop.
    return await asyncio.to_thread(api.invoke, token_event(source_ip))


@contextlib.asynccontextmanager
async def gateway(redis_url: str, **env: str) -> AsyncIterator[tuple[LocalApiGateway, WsApp]]:
    """The WebSocket handlers, authorizer included, with the deployment's settings."""
    environ = {"REDIS_URL": redis_url, "WS_SHARDS": "2", "WS_TOKEN_SECRET": SECRET, **env}
    holder: dict[str, Any] = {}
    app = build_app(Settings.from_env(environ), RealtimeSettings.from_env(environ),
                    management=lambda event: holder["api"])  # fmt: skip
    handlers = Handlers(authorizer=lambda e, c: app.authorize(e),
                        message=lambda e, c: app.message(e),
                        connect=lambda e, c: app.connect(e),
                        disconnect=lambda e, c: app.disconnect(e))  # fmt: skip
    local = LocalApiGateway(handlers, GatewayConfig())
    await local.start()
    holder["api"] = boto3_client(local)
    try:
        yield local, app
    finally:
        await local.stop()


def opened(local: LocalApiGateway, token: str | None, source_ip: str = HOME) -> Any:
    url = local.ws_url if token is None else f"{local.ws_url}?token={token}"
    return connect(url, local_addr=(source_ip, 0))


async def refused_status(local: LocalApiGateway, token: str | None,
                         source_ip: str = HOME) -> int:  # fmt: skip
    with pytest.raises(InvalidStatus) as refused:
        async with opened(local, token, source_ip):
            pass
    status: int = refused.value.response.status_code
    return status


async def test_a_token_replayed_from_another_address_is_refused_at_connect(
    make_api: MakeApi, redis_url: str, redis_client: redis.Redis
) -> None:
    api = make_api(ws_token_secret=Secret(SECRET))
    minted = await ws_token(api, HOME)
    assert minted.status == 200
    token = minted.json()["token"]
    async with gateway(redis_url) as (local, _):
        # Copied out of the page's URL (logs, a shared link) and used from elsewhere: 403.
        assert await refused_status(local, token, ELSEWHERE) == 403
        assert live_connections(redis_client) == 0
        # From the address it was minted for, the same token connects.
        async with opened(local, token, HOME) as ws:
            assert (await request(ws, {"action": "ping"}))["type"] == "pong"
            assert live_connections(redis_client) == 1
        # A token minted for the other address works there, and only there.
        other = (await ws_token(api, ELSEWHERE)).json()["token"]
        assert await refused_status(local, other, HOME) == 403
        async with opened(local, other, ELSEWHERE) as ws:
            assert (await request(ws, {"action": "ping"}))["type"] == "pong"


async def test_a_token_61_seconds_old_is_refused(
    make_api: MakeApi, redis_url: str, redis_client: redis.Redis
) -> None:
    minted_at = [time.time() - 61]
    api = make_api(ws_token_secret=Secret(SECRET),
                   deps_overrides={"wall_clock": lambda: minted_at[0]})  # fmt: skip
    stale = (await ws_token(api)).json()
    assert stale["expires_in"] == 60
    async with gateway(redis_url) as (local, _):
        assert await refused_status(local, stale["token"]) == 403
        # Well inside its minute, a token from the same route connects.
        minted_at[0] = time.time() - 45
        async with opened(local, (await ws_token(api)).json()["token"]) as ws:
            assert (await request(ws, {"action": "ping"}))["type"] == "pong"
    assert live_connections(redis_client) <= 1


def test_a_ws_token_flood_from_one_address_gets_429_while_others_get_tokens(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    now = [WINDOW_START + 15]
    api = make_api(ws_token_secret=Secret(SECRET), deps_overrides={"wall_clock": lambda: now[0]})
    flooder, neighbour = "198.51.100.66", "198.51.100.67"
    # Rotating X-Forwarded-For changes nothing: the address is API Gateway's sourceIp.
    answers = [api.invoke(token_event(flooder, forwarded_for=f"10.0.0.{i}")) for i in range(40)]
    assert [a.status for a in answers[:30]] == [200] * 30  # WS_TOKEN_PER_IP_PER_MINUTE's 30
    for refused in answers[30:]:
        assert refused.status == 429
        assert refused.headers["retry-after"] == "45"  # to the end of this minute's window
        body = refused.json()
        assert body["error"] == "too_many_requests" and body["retry_after"] == 45
        assert "token" not in body
    # Each token names and binds its address.
    claims = verify_token(answers[0].json()["token"], SECRET, now=now[0], source_ip=flooder)
    assert claims.subject == f"ip:{flooder}"
    # Another address is not held back by the flood.
    assert api.invoke(token_event(neighbour)).status == 200
    # The counter lives in Redis (shared by every Lambda instance) and goes away by itself.
    key = f"{LIMIT_PREFIX}ip:{flooder}:{int(now[0] // 60)}"
    assert int(redis_client.get(key) or 0) == 40
    assert 0 < redis_client.ttl(key) <= 120
    # The next window gives the flooder its allowance again.
    now[0] += 45
    assert api.invoke(token_event(flooder)).status == 200


async def test_a_whitespace_secret_fails_closed(
    make_api: MakeApi, redis_url: str, redis_client: redis.Redis
) -> None:
    blank = Settings.from_env({"WS_TOKEN_SECRET": "  ", "ADMIN_API_KEY": "\t"}).blank_secrets
    api = make_api(blank_secrets=blank)
    refused = await ws_token(api)
    assert refused.status == 503 and refused.json()["error"] == "secret_unavailable"
    start = await asyncio.to_thread(api.start, {"name": "a", "keys": ["NSE_EQ:1333"]}, key=None)
    assert start.status == 503 and start.json()["error"] == "secret_unavailable"
    async with gateway(redis_url, WS_TOKEN_SECRET="  ") as (local, _):
        # The authorizer fails (API Gateway: 500; the local gateway: 401): no token, a token
        # signed with some key, anything: nobody is let in as "no token needed".
        for token in (None, "x.y", mint_token(SECRET, source_ip=HOME)):
            assert await refused_status(local, token) in (401, 500)
        assert live_connections(redis_client) == 0
