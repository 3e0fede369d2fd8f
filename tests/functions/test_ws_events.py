"""The Lambda entry points `functions.ws.*` on recorded API Gateway event shapes."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

import functions.ws as ws
from functions.wsauth import mint_token
from local.apigw import Handlers, LocalApiGateway
from realtime import keys as layout

EVENTS = Path(__file__).parent.parent / "events"
SECRET = "events-secret"


def event(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return loaded


@pytest.fixture
def entry_points(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("WS_TOKEN_SECRET", SECRET)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "local")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "local")
    ws.ws_app.cache_clear()
    yield
    ws.ws_app.cache_clear()


def test_authorizer_allows_a_signed_token_and_denies_others(
    entry_points: None, redis_client: redis.Redis
) -> None:
    request = event("ws_authorizer.json")
    request["queryStringParameters"]["token"] = mint_token(SECRET, subject="desk-7")
    answer = ws.authorize(request, None)
    assert answer["principalId"] == "desk-7"
    (statement,) = answer["policyDocument"]["Statement"]
    assert statement == {"Action": "execute-api:Invoke", "Effect": "Allow",
                         "Resource": request["methodArn"]}
    request["queryStringParameters"]["token"] = "forged.token"
    assert ws.authorize(request, None)["policyDocument"]["Statement"][0]["Effect"] == "Deny"
    request["queryStringParameters"] = None
    with pytest.raises(Exception, match="Unauthorized"):
        ws.authorize(request, None)


def effect(answer: dict[str, Any]) -> str:
    (statement,) = answer["policyDocument"]["Statement"]
    return str(statement["Effect"])


def test_authorizer_checks_the_address_and_purpose_of_a_token(
    entry_points: None, redis_client: redis.Redis
) -> None:
    request = event("ws_authorizer.json")  # requestContext.identity.sourceIp: 203.0.113.7
    query = request["queryStringParameters"]
    query["token"] = mint_token(SECRET, subject="ip:203.0.113.7", source_ip="203.0.113.7")
    answer = ws.authorize(request, None)
    assert effect(answer) == "Allow" and answer["principalId"] == "ip:203.0.113.7"
    cases = {
        "token bound to another address": mint_token(SECRET, source_ip="198.51.100.23"),
        "wrong purpose": mint_token(SECRET, source_ip="203.0.113.7", purpose="api-read"),
        "token expired": mint_token(SECRET, source_ip="203.0.113.7", now=time.time() - 61),
    }
    for reason, token in cases.items():
        query["token"] = token
        answer = ws.authorize(request, None)
        assert effect(answer) == "Deny", reason
        assert answer["context"] == {"reason": reason}
    # An event without the connecting address cannot match a bound token.
    query["token"] = mint_token(SECRET, source_ip="203.0.113.7")
    del request["requestContext"]["identity"]
    assert effect(ws.authorize(request, None)) == "Deny"


@pytest.mark.parametrize("blank", ["  ", "\t", ""])
def test_a_blank_token_secret_fails_the_connect_never_opens_it(
    entry_points: None, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    from functions.errors import SecretError

    monkeypatch.setenv("WS_TOKEN_SECRET", blank)
    ws.ws_app.cache_clear()
    request = event("ws_authorizer.json")
    for token in (mint_token(SECRET), "anything", None):
        request["queryStringParameters"] = {"token": token} if token else None
        # Raised, so API Gateway answers 500: neither "anonymous" nor a checked token.
        with pytest.raises(SecretError, match="WS_TOKEN_SECRET is set but blank"):
            ws.authorize(request, None)


def test_a_blank_token_secret_in_secrets_manager_fails_the_connect(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import boto3
    from moto import mock_aws

    from functions.errors import SecretError
    from functions.secrets import SecretsCache
    from functions.settings import Settings
    from functions.ws.settings import RealtimeSettings
    from functions.ws.wiring import build_app

    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "ap-south-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("secretsmanager", region_name="ap-south-1")
        arn = client.create_secret(Name="ws", SecretString=" \n ")["ARN"]
        app = build_app(Settings(redis_url=redis_url, ws_token_secret_arn=arn),
                        RealtimeSettings(), secrets=SecretsCache(client=client))
        request = event("ws_authorizer.json")
        request["queryStringParameters"]["token"] = mint_token(SECRET)
        with pytest.raises(SecretError, match="WS_TOKEN_SECRET_ARN is blank"):
            app.authorize(request)


async def test_connect_message_disconnect_on_aws_shapes(
    entry_points: None, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Replies go to a real @connections endpoint; the recorded connection is not on it (410).
    async with LocalApiGateway(Handlers(message=lambda e, c: None)) as gateway:
        monkeypatch.setenv("WEBSOCKET_CALLBACK_URL", gateway.callback_url)
        ws.ws_app.cache_clear()
        connect = event("ws_connect.json")
        cid = connect["requestContext"]["connectionId"]
        connected_at = int(time.time()) - 60
        connect["requestContext"]["connectedAt"] = connected_at * 1000
        assert ws.connect(connect, None) == {"statusCode": 200}
        meta = redis_client.hgetall(layout.conn(cid))
        assert meta[b"source_ip"] == b"203.0.113.7"
        assert meta[b"subject"] == b"browser"
        assert meta[b"connected_at"] == str(connected_at * 1000).encode()
        # Expiry follows API Gateway's connectedAt (+ 2 h), not the handler's clock.
        expiry = redis_client.zscore(layout.CONNECTIONS, cid)
        assert expiry == connected_at + layout.MAX_CONNECTION_SECONDS + 1
        answer = await asyncio.to_thread(ws.message, event("ws_message_subscribe.json"), None)
        assert answer == {"statusCode": 200}
        # Its keys were recorded first; then the snapshot post met 410 and the connection went.
        assert not redis_client.exists(layout.conn(cid))
        assert ws.connect(connect, None) == {"statusCode": 200}
        assert ws.disconnect(event("ws_disconnect.json"), None) == {"statusCode": 200}
        assert not redis_client.exists(layout.conn(cid))
        await asyncio.to_thread(ws.message, event("ws_message_default.json"), None)
