"""Events as AWS sends them: the local gateway's and the local HTTP API's, and tests/events/.

Every event the local stand-ins build (the `$connect` REQUEST authorizer, `$connect`, MESSAGE,
`$disconnect`, recorded through `LocalApiGateway`'s real code path, and the HTTP API payload 2.0
of `http_api_event`, recorded through `HttpApiProxy`) and every sample event under tests/events/
is checked twice:

- against aws-lambda-powertools' pydantic models (`APIGatewayWebSocket*EventModel`,
  `APIGatewayProxyEventV2Model`; for the authorizer, which powertools models only for REST APIs,
  a model assembled from powertools' WebSocket `$connect` request context) and data classes;
- against the key structure and value types of AWS's published sample events (`AWS_*` below,
  transcribed from them): the AWS API Gateway developer guide ("Control access to WebSocket APIs
  with AWS Lambda REQUEST authorizers"; "Create AWS Lambda proxy integrations for HTTP APIs",
  payload format 2.0) and the events AWS recorded in powertools-lambda-python's tests/events
  (apiGatewayAuthorizerWebSocketEvent, apiGatewayWebSocketApiConnect, ...Message,
  ...Disconnect, apiGatewayProxyV2Event). A missing field, an extra one, or one of another type
  fails; so does a key AWS leaves out (not null) that an event sends as null.

And the routes have no route response: a handler's return value never reaches the client.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent
from aws_lambda_powertools.utilities.data_classes.api_gateway_authorizer_event import (
    APIGatewayAuthorizerRequestEvent,
    parse_api_gateway_arn,
)
from aws_lambda_powertools.utilities.data_classes.api_gateway_proxy_event import (
    APIGatewayProxyEventV2,
)
from aws_lambda_powertools.utilities.parser.models import (
    APIGatewayProxyEventV2Model,
    APIGatewayWebSocketConnectEventModel,
    APIGatewayWebSocketDisconnectEventModel,
    APIGatewayWebSocketMessageEventModel,
)
from aws_lambda_powertools.utilities.parser.models.apigw_websocket import (
    APIGatewayWebSocketConnectEventRequestContext,
)
from pydantic import BaseModel
from websockets.asyncio.client import connect

from local.apigw import Handlers, LocalApiGateway
from local.apigw.client import boto3_client
from local.run.lambda_http import HttpApiProxy, LambdaPool, http_api_event
from tests.realtime_support import wait_for

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "tests" / "events"

# --- AWS's sample events, as structure ----------------------------------------------------------


@dataclass(frozen=True)
class Opt:
    """A key AWS sends only sometimes (and then leaves out, never sends as null)."""

    spec: Any


STR_MAP = "map[str, str]"
LIST_MAP = "map[str, list[str]]"
ANY_MAP = "map[str, Any]"
STR_LIST = "list[str]"

AWS_WS_IDENTITY = {"sourceIp": str, "userAgent": Opt(str)}  # userAgent: when the client sent one
AWS_WS_CONTEXT: dict[str, Any] = {
    "routeKey": str,
    "eventType": str,
    "extendedRequestId": str,
    "requestTime": str,
    "messageDirection": str,
    "stage": str,
    "connectedAt": int,
    "requestTimeEpoch": int,
    "identity": AWS_WS_IDENTITY,
    "requestId": str,
    "domainName": str,
    "connectionId": str,
    "apiId": str,
    "authorizer": Opt(ANY_MAP),  # principalId and the authorizer's context, after one allowed
}
AWS_WS_AUTHORIZER = {
    "type": str,
    "methodArn": str,
    "headers": STR_MAP,
    "multiValueHeaders": LIST_MAP,
    "queryStringParameters": STR_MAP,  # {} without a query string
    "multiValueQueryStringParameters": LIST_MAP,
    "stageVariables": STR_MAP,
    "requestContext": {k: v for k, v in AWS_WS_CONTEXT.items() if k != "authorizer"},
}
AWS_WS_CONNECT = {
    "headers": STR_MAP,
    "multiValueHeaders": LIST_MAP,
    "queryStringParameters": Opt(STR_MAP),  # absent without a query string
    "multiValueQueryStringParameters": Opt(LIST_MAP),
    "requestContext": AWS_WS_CONTEXT,
    "isBase64Encoded": bool,
}
AWS_WS_MESSAGE = {
    "requestContext": {**AWS_WS_CONTEXT, "messageId": str},
    "body": str,
    "isBase64Encoded": bool,
}
AWS_WS_DISCONNECT = {
    "headers": STR_MAP,
    "multiValueHeaders": LIST_MAP,
    "requestContext": {**AWS_WS_CONTEXT, "disconnectStatusCode": int, "disconnectReason": str},
    "isBase64Encoded": bool,
}
AWS_HTTP_V2 = {
    "version": str,
    "routeKey": str,
    "rawPath": str,
    "rawQueryString": str,
    "cookies": Opt(STR_LIST),
    "headers": STR_MAP,
    "queryStringParameters": Opt(STR_MAP),
    "pathParameters": Opt(STR_MAP),
    "stageVariables": Opt(STR_MAP),
    "requestContext": {
        "accountId": str,
        "apiId": str,
        "authentication": Opt(ANY_MAP),
        "authorizer": Opt(ANY_MAP),
        "domainName": str,
        "domainPrefix": str,
        "http": {"method": str, "path": str, "protocol": str, "sourceIp": str, "userAgent": str},
        "requestId": str,
        "routeKey": str,
        "stage": str,
        "time": str,
        "timeEpoch": int,
    },
    "body": Opt(str),
    "isBase64Encoded": bool,
}

# Headers API Gateway adds to a WebSocket handshake, and the fixed ones of every $disconnect.
AWS_HANDSHAKE_HEADERS = {"X-Amzn-Trace-Id", "X-Forwarded-For", "X-Forwarded-Port",
                         "X-Forwarded-Proto"}
AWS_DISCONNECT_HEADERS = {"Host", "x-api-key", "X-Forwarded-For", "x-restapi"}
AWS_HTTP_HEADERS = {"x-amzn-trace-id", "x-forwarded-for", "x-forwarded-port",
                    "x-forwarded-proto"}
REQUEST_TIME = re.compile(r"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000$")


def _is_map(value: Any, item: Any) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and item(v) for k, v in value.items())


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


LEAVES = {
    STR_MAP: lambda v: _is_map(v, lambda x: isinstance(x, str)),
    LIST_MAP: lambda v: _is_map(v, _is_str_list),
    ANY_MAP: lambda v: _is_map(v, lambda x: True),
    STR_LIST: _is_str_list,
}


def shape_problems(value: Any, spec: Any, path: str = "$") -> list[str]:
    """How `value` differs from AWS's structure `spec`: keys missing, extra, or mistyped."""
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not an object"]
        problems = [f"{path}.{k}: not in AWS's events" for k in value.keys() - spec.keys()]
        for key, want in spec.items():
            optional = isinstance(want, Opt)
            want = want.spec if optional else want
            if key not in value:
                if not optional:
                    problems.append(f"{path}.{key}: missing")
                continue
            problems += shape_problems(value[key], want, f"{path}.{key}")
        return problems
    if isinstance(spec, str):
        return [] if LEAVES[spec](value) else [f"{path}: {value!r} is not a {spec}"]
    # Exact types: a bool is not AWS's integer, null is not AWS's string.
    return [] if type(value) is spec else [f"{path}: {type(value).__name__}, AWS: {spec.__name__}"]


def assert_aws_shape(event: Mapping[str, Any], spec: Any) -> None:
    problems = shape_problems(event, spec)
    assert not problems, "\n".join(problems)


# --- the authorizer's model ---------------------------------------------------------------------


class WebSocketAuthorizerRequest(BaseModel):
    """A WebSocket API's REQUEST authorizer event (payload 1.0; powertools' own
    `ApiGatewayAuthorizerRequest` is the REST API's, with a resource, path and HTTP method)."""

    type: Literal["REQUEST"]
    methodArn: str
    headers: dict[str, str]
    multiValueHeaders: dict[str, list[str]]
    queryStringParameters: dict[str, str]
    multiValueQueryStringParameters: dict[str, list[str]]
    stageVariables: dict[str, str]
    requestContext: APIGatewayWebSocketConnectEventRequestContext


# --- the checks, one per kind of event ----------------------------------------------------------


def _check_ws_context(event: Mapping[str, Any], *, route: str, event_type: str) -> None:
    context = event["requestContext"]
    assert context["routeKey"] == route and context["eventType"] == event_type
    assert context["messageDirection"] == "IN"
    assert REQUEST_TIME.match(context["requestTime"]), context["requestTime"]
    # Epoch milliseconds, the request no earlier than the connection.
    assert 10**12 < context["connectedAt"] <= context["requestTimeEpoch"] < 10**13
    assert context["identity"].get("userAgent") != "", "no User-Agent: no userAgent at all"
    wrapped = APIGatewayWebSocketEvent(dict(event)).request_context
    assert wrapped.connection_id == context["connectionId"]
    assert wrapped.identity.source_ip == context["identity"]["sourceIp"]


def _check_multi(single: Mapping[str, str], multi: Mapping[str, list[str]]) -> None:
    """`multiValue*` holds the same names, each with the single value (no repeated names)."""
    assert set(multi) == set(single)
    assert all(multi[name] == [value] for name, value in single.items()), (single, multi)


def check_authorizer(event: Mapping[str, Any]) -> None:
    WebSocketAuthorizerRequest.model_validate(event)
    assert_aws_shape(event, AWS_WS_AUTHORIZER)
    _check_ws_context(event, route="$connect", event_type="CONNECT")
    _check_multi(event["headers"], event["multiValueHeaders"])
    _check_multi(event["queryStringParameters"], event["multiValueQueryStringParameters"])
    assert AWS_HANDSHAKE_HEADERS <= set(event["headers"])
    request = APIGatewayAuthorizerRequestEvent(dict(event))
    assert request.get_type == "REQUEST"
    assert request.query_string_parameters == event["queryStringParameters"]
    arn = parse_api_gateway_arn(request.method_arn, is_websocket_authorizer=True)
    context = event["requestContext"]
    assert (arn.api_id, arn.stage, arn.resource) == (context["apiId"], context["stage"],
                                                     "$connect")


def check_connect(event: Mapping[str, Any]) -> None:
    APIGatewayWebSocketConnectEventModel.model_validate(event)
    assert_aws_shape(event, AWS_WS_CONNECT)
    _check_ws_context(event, route="$connect", event_type="CONNECT")
    _check_multi(event["headers"], event["multiValueHeaders"])
    if "queryStringParameters" in event or "multiValueQueryStringParameters" in event:
        _check_multi(event["queryStringParameters"], event["multiValueQueryStringParameters"])
    assert AWS_HANDSHAKE_HEADERS <= set(event["headers"])
    assert event["isBase64Encoded"] is False


def check_message(event: Mapping[str, Any]) -> None:
    model = APIGatewayWebSocketMessageEventModel.model_validate(event)
    assert_aws_shape(event, AWS_WS_MESSAGE)
    _check_ws_context(event, route=event["requestContext"]["routeKey"], event_type="MESSAGE")
    assert model.request_context.message_id
    if event["isBase64Encoded"]:
        base64.b64decode(event["body"], validate=True)


def check_disconnect(event: Mapping[str, Any]) -> None:
    APIGatewayWebSocketDisconnectEventModel.model_validate(event)
    assert_aws_shape(event, AWS_WS_DISCONNECT)
    _check_ws_context(event, route="$disconnect", event_type="DISCONNECT")
    _check_multi(event["headers"], event["multiValueHeaders"])
    assert set(event["headers"]) == AWS_DISCONNECT_HEADERS
    assert event["headers"]["Host"] == event["requestContext"]["domainName"]
    assert event["isBase64Encoded"] is False


def check_http(event: Mapping[str, Any], *, query_rule: bool = True) -> None:
    APIGatewayProxyEventV2Model.model_validate(event)
    assert_aws_shape(event, AWS_HTTP_V2)
    assert event["version"] == "2.0"
    headers = event["headers"]
    assert all(name == name.lower() for name in headers), "HTTP APIs lower-case header names"
    assert "cookie" not in headers, "cookies travel in `cookies`"
    assert AWS_HTTP_HEADERS <= set(headers)
    context = event["requestContext"]
    assert context["routeKey"] == event["routeKey"]
    assert REQUEST_TIME.match(context["time"]), context["time"]
    assert 10**12 < context["timeEpoch"] < 10**13
    assert context["domainPrefix"] == context["domainName"].split(".")[0]
    if query_rule:
        # AWS sends queryStringParameters exactly when there is a query string.
        assert ("queryStringParameters" in event) == bool(event["rawQueryString"])
    if "body" not in event:
        assert event["isBase64Encoded"] is False
    wrapped = APIGatewayProxyEventV2(dict(event))
    assert wrapped.request_context.http.method == context["http"]["method"]
    assert wrapped.raw_path == event["rawPath"]


def check_by_name(name: str, event: Mapping[str, Any]) -> None:
    if name.startswith("http_"):
        check_http(event)
    elif name.startswith("ws_authorizer"):
        check_authorizer(event)
    elif name.startswith("ws_connect"):
        check_connect(event)
    elif name.startswith("ws_disconnect"):
        check_disconnect(event)
    elif name.startswith("ws_message_"):
        check_message(event)
    elif name.endswith("_schedule.json"):
        check_schedule_input(event)
    else:
        raise AssertionError(f"{name}: no model for this name (http_*, ws_authorizer*, "
                             "ws_connect*, ws_disconnect*, ws_message_*, *_schedule)")


def check_schedule_input(event: Mapping[str, Any]) -> None:
    """EventBridge Scheduler delivers the template's own `Target.Input`, with
    `<aws.scheduler.scheduled-time>` replaced by the planned time in UTC."""
    assert isinstance(event, dict) and "<aws.scheduler." not in json.dumps(event)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", event["scheduledTime"]), event


# --- the checks themselves catch drift ----------------------------------------------------------


def test_the_checks_catch_missing_extra_mistyped_and_null_fields() -> None:
    good = json.loads((EVENTS / "ws_connect.json").read_text())
    check_connect(good)
    missing = json.loads(json.dumps(good))
    del missing["requestContext"]["domainName"]
    extra = json.loads(json.dumps(good))
    extra["requestContext"]["resourcePath"] = "/"
    mistyped = json.loads(json.dumps(good))
    mistyped["requestContext"]["connectedAt"] = str(good["requestContext"]["connectedAt"])
    null = json.loads(json.dumps(good))
    null["queryStringParameters"] = None
    for bad, problem in ((missing, "requestContext.domainName: missing"),
                         (extra, "requestContext.resourcePath: not in AWS"),
                         (mistyped, "requestContext.connectedAt: str"),
                         (null, "queryStringParameters: None")):
        assert any(problem in p for p in shape_problems(bad, AWS_WS_CONNECT)), problem
    with pytest.raises(ValueError):
        APIGatewayWebSocketConnectEventModel.model_validate(missing)


# --- (c) the sample events handler tests run on -------------------------------------------------


@pytest.mark.parametrize("path", sorted(EVENTS.glob("*.json")), ids=lambda p: p.name)
def test_sample_events_are_shaped_as_aws_sends_them(path: Path) -> None:
    check_by_name(path.name, json.loads(path.read_text()))


# --- (a) what the local gateway sends, through its real code path -------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def record(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.events.append(event)
        return {"statusCode": 200}

    def authorize(self, event: dict[str, Any], context: Any) -> dict[str, Any]:
        self.events.append(event)
        return {"principalId": "browser", "context": {"subject": "browser", "n": 1},
                "policyDocument": {"Version": "2012-10-17", "Statement": [{
                    "Action": "execute-api:Invoke", "Effect": "Allow",
                    "Resource": event["methodArn"]}]}}

    def of(self, route: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["requestContext"]["routeKey"] == route]


async def test_the_gateway_sends_events_as_aws_does() -> None:
    recorder = Recorder()
    handlers = Handlers(message=recorder.record, connect=recorder.record,
                        disconnect=recorder.record, authorizer=recorder.authorize)
    async with LocalApiGateway(handlers) as gateway:
        # A browser-like client: a token in the query string, a User-Agent, its own proxy.
        async with connect(gateway.ws_url + "?token=abc&x=1", user_agent_header="tester/1",
                           additional_headers={"X-Forwarded-For": "198.51.100.1"}) as ws:
            await ws.send('{"action":"subscribe","keys":["NSE_EQ:2885"]}')
            await ws.send("not json")
            await ws.send(b"\x00\xff")
            await wait_for(lambda: len(recorder.events) == 5)
            await ws.close(1000, "bye")
        await wait_for(lambda: len(recorder.events) == 6)
        # A bare client: no query string, no User-Agent.
        async with connect(gateway.ws_url, user_agent_header=None):
            await wait_for(lambda: len(recorder.events) == 8)
        await wait_for(lambda: len(recorder.events) == 9)

    authorizers = [e for e in recorder.events if "methodArn" in e]
    connects = [e for e in recorder.of("$connect") if "methodArn" not in e]
    messages = [e for e in recorder.events if e["requestContext"]["eventType"] == "MESSAGE"]
    disconnects = recorder.of("$disconnect")
    assert (len(authorizers), len(connects), len(messages), len(disconnects)) == (2, 2, 3, 2)
    for event in authorizers:
        check_authorizer(event)
    for event in connects:
        check_connect(event)
    for event in messages:
        check_message(event)
    for event in disconnects:
        check_disconnect(event)

    full, bare = authorizers
    assert full["queryStringParameters"] == {"token": "abc", "x": "1"}
    assert bare["queryStringParameters"] == {} and bare["multiValueQueryStringParameters"] == {}
    assert full["headers"]["X-Forwarded-For"] == "198.51.100.1, 127.0.0.1"
    assert full["requestContext"]["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "tester/1"}
    assert bare["requestContext"]["identity"] == {"sourceIp": "127.0.0.1"}
    first, second = connects
    assert first["queryStringParameters"] == {"token": "abc", "x": "1"}
    assert "queryStringParameters" not in second  # left out, as AWS does, not null
    assert "multiValueQueryStringParameters" not in second
    assert first["headers"]["X-Amzn-Trace-Id"] == full["headers"]["X-Amzn-Trace-Id"]
    assert first["requestContext"]["authorizer"] == {"subject": "browser", "n": 1,
                                                     "principalId": "browser"}
    assert [m["requestContext"]["routeKey"] for m in messages] == [
        "subscribe", "$default", "$default"]
    assert [m["isBase64Encoded"] for m in messages] == [False, False, True]
    assert base64.b64decode(messages[2]["body"]) == b"\x00\xff"
    assert len({m["requestContext"]["messageId"] for m in messages}) == 3
    assert messages[0]["requestContext"]["authorizer"]["subject"] == "browser"
    closed = disconnects[0]["requestContext"]
    assert (closed["disconnectStatusCode"], closed["disconnectReason"]) == (1000, "bye")
    ids = {e["requestContext"]["connectionId"] for e in recorder.events}
    assert len(ids) == 2


async def test_without_an_authorizer_connect_has_no_authorizer_context() -> None:
    recorder = Recorder()
    handlers = Handlers(message=recorder.record, connect=recorder.record)
    async with LocalApiGateway(handlers) as gateway:
        async with connect(gateway.ws_url + "?token=t"):
            await wait_for(lambda: len(recorder.events) == 1)
    (event,) = recorder.events
    check_connect(event)
    assert "authorizer" not in event["requestContext"]


# --- (b) the HTTP API's payload 2.0 -------------------------------------------------------------


HTTP_CASES = [
    pytest.param(dict(method="get", path="/api/v1/current_prices",
                      query_string="keys=NSE_EQ%3A1333%2CNSE_EQ%3A11536",
                      headers=[("Host", "127.0.0.1:8000"), ("User-Agent", "tester/1")], body=b""),
                 id="get-with-query"),
    pytest.param(dict(method="POST", path="/api/v1/current_prices", query_string="",
                      headers=[("host", "127.0.0.1:8000"), ("content-type", "application/json"),
                               ("X-Many", "1"), ("x-many", "2"), ("Cookie", "a=1; b=2"),
                               ("X-Forwarded-For", "198.51.100.1")],
                      body=b'{"keys": ["NSE_EQ:1333"]}'), id="post-json-cookies"),
    pytest.param(dict(method="PUT", path="/x", query_string="",
                      headers=[("content-type", "application/octet-stream")], body=b"\xff\x00"),
                 id="binary-no-host"),
]


@pytest.mark.parametrize("request_", HTTP_CASES)
def test_http_api_events_are_shaped_as_aws_sends_them(request_: dict[str, Any]) -> None:
    event = http_api_event(**request_, source_ip="10.0.0.9")
    check_http(event, query_rule=False)
    headers = event["headers"]
    assert headers["x-forwarded-for"].endswith("10.0.0.9")
    if "Cookie" in dict(request_["headers"]):
        assert event["cookies"] == ["a=1", "b=2"] and headers["x-many"] == "1,2"
        assert headers["x-forwarded-for"] == "198.51.100.1, 10.0.0.9"
    assert ("body" in event) == bool(request_["body"])


def test_http_api_events_carry_query_string_parameters() -> None:
    event = http_api_event(method="GET", path="/x", query_string="a=1&a=2&b=%3A",
                           headers=[("host", "127.0.0.1:8000")], body=b"",
                           source_ip="127.0.0.1")
    check_http(event)
    assert event["queryStringParameters"] == {"a": "1,2", "b": ":"}


async def test_the_local_http_api_sends_events_as_aws_does() -> None:
    events: list[dict[str, Any]] = []

    def environment() -> Any:
        def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
            events.append(event)
            return {"statusCode": 204, "headers": {}, "body": "", "isBase64Encoded": False}
        return handler

    pool = LambdaPool(environment, size=1)
    try:
        transport = httpx.ASGITransport(app=HttpApiProxy(pool), client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000") as c:
            assert (await c.get("/api/v1/health/market_stream")).status_code == 204
            assert (await c.post("/api/v1/current_prices", json={"keys": []},
                                 headers={"cookie": "s=1"})).status_code == 204
    finally:
        pool.close()
    for event in events:
        check_http(event, query_rule=False)
        assert event["requestContext"]["http"]["sourceIp"] == "203.0.113.7"
        assert event["headers"]["x-forwarded-port"] == "8000"
    get, post = events
    assert "body" not in get and post["body"] == '{"keys":[]}'
    assert post["cookies"] == ["s=1"]


# --- no route response, no reply ----------------------------------------------------------------


def test_no_websocket_route_has_a_route_response() -> None:
    """What the local gateway assumes: infra's routes return nothing to the client (no
    `return_response`), so a handler's return value is dropped and replies use @connections."""
    tree = ast.parse((ROOT / "infra" / "websocket_api.py").read_text())
    calls = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
             and isinstance(node.func, ast.Attribute) and node.func.attr == "add_route"]
    assert len(calls) >= 3
    for call in calls:
        assert "return_response" not in {k.arg for k in call.keywords}
    assert "route_response_selection_expression" not in ast.dump(tree)


async def test_a_handlers_return_value_never_reaches_the_client() -> None:
    """A reply posted through @connections arrives; the body the handler returns does not,
    neither after `$connect` nor after a message: each posted reply comes straight after the
    previous one, with nothing in between."""
    events: list[dict[str, Any]] = []
    holder: dict[str, Any] = {}

    def post_then_return(event: dict[str, Any], context: Any) -> dict[str, Any]:
        events.append(event)
        cid = event["requestContext"]["connectionId"]
        holder["api"].post_to_connection(ConnectionId=cid, Data=f"posted:{event['body']}".encode())
        return {"statusCode": 200, "body": f"returned:{event['body']}"}

    def fail(event: dict[str, Any], context: Any) -> dict[str, Any]:
        events.append(event)
        raise RuntimeError("handler failed")

    def connected(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"statusCode": 200, "body": "returned:$connect"}

    handlers = Handlers(message=post_then_return, connect=connected,
                        disconnect=lambda e, c: {"statusCode": 200, "body": "returned:bye"},
                        route_handlers={"ping": fail})
    async with LocalApiGateway(handlers) as gateway:
        holder["api"] = boto3_client(gateway)
        async with connect(gateway.ws_url) as ws:
            (cid,) = gateway.connections
            received: list[str] = []
            for body in ("one", "two", '{"action":"ping"}', "three"):
                await ws.send(body)
                received.append(str(await asyncio.wait_for(ws.recv(), 5)))
            # The last posted reply came after every earlier return value would have gone out;
            # give a late one a moment anyway before the final check.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(ws.recv(), 0.2)
    assert received[:2] == ["posted:one", "posted:two"]
    failed = json.loads(received[2])
    ping_event = next(e for e in events if e["requestContext"]["routeKey"] == "ping")
    # A failing integration is the one thing API Gateway answers itself.
    assert failed == {"message": "Internal server error", "connectionId": cid,
                      "requestId": ping_event["requestContext"]["requestId"]}
    assert received[3] == "posted:three"
    assert not any(r.startswith("returned:") for r in received)
