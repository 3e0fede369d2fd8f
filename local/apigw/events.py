"""API Gateway WebSocket events, shaped as AWS delivers them to Lambda (pure builders).

Shapes follow the WebSocket API Lambda proxy integration: `requestContext` carries `routeKey`,
`eventType` (CONNECT | MESSAGE | DISCONNECT), `connectionId`, `domainName`, `stage`, `apiId`,
`requestId`, `connectedAt` (ms), `identity.sourceIp` (and `identity.userAgent` when the client
sent one); `$connect` adds the client's headers plus the ones API Gateway adds
(`X-Amzn-Trace-Id`, `X-Forwarded-For|Port|Proto`) and, only when there is one, the query string;
a message adds `body` and `isBase64Encoded`; `$disconnect` adds the close code and reason and
API Gateway's fixed headers. The `$connect` REQUEST authorizer (payload 1.0) gets `type`,
`methodArn`, the same headers, the query string (`{}` when empty) and `stageVariables`.
`tests/local/test_event_shapes.py` checks all of them against powertools' models and AWS's
published sample events.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any

ROUTE_SELECTION_KEY = "action"  # $request.body.action


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    connection_id: str
    api_id: str
    stage: str
    domain_name: str
    connected_at_ms: int
    source_ip: str
    user_agent: str
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    authorizer: Mapping[str, Any] | None = None


def _request_time(now: float) -> str:
    # API Gateway's format: 26/Nov/2026:04:01:28 +0000
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))


def request_context(info: ConnectionInfo, *, route_key: str, event_type: str,
                    now: float | None = None) -> dict[str, Any]:
    current = time.time() if now is None else now
    request_id = uuid.uuid4().hex[:16]
    context: dict[str, Any] = {
        "routeKey": route_key,
        "eventType": event_type,
        "extendedRequestId": request_id,
        "requestTime": _request_time(current),
        "messageDirection": "IN",
        "stage": info.stage,
        "connectedAt": info.connected_at_ms,
        "requestTimeEpoch": int(current * 1000),
        "identity": _identity(info),
        "requestId": request_id,
        "domainName": info.domain_name,
        "connectionId": info.connection_id,
        "apiId": info.api_id,
    }
    if info.authorizer is not None:
        context["authorizer"] = dict(info.authorizer)
    return context


def _identity(info: ConnectionInfo) -> dict[str, str]:
    # AWS sends `userAgent` only when the client sent a User-Agent header.
    if info.user_agent:
        return {"sourceIp": info.source_ip, "userAgent": info.user_agent}
    return {"sourceIp": info.source_ip}


def method_arn(info: ConnectionInfo, route_key: str = "$connect") -> str:
    return f"arn:aws:execute-api:local:000000000000:{info.api_id}/{info.stage}/{route_key}"


def _multi(values: Mapping[str, str]) -> dict[str, list[str]]:
    return {k: [v] for k, v in values.items()}


def _trace_id(info: ConnectionInfo) -> str:
    # X-Ray's `Root=1-{epoch seconds, hex}-{96 bits, hex}`, one per connection (the authorizer
    # and `$connect` see the same request).
    digest = hashlib.sha256(info.connection_id.encode()).hexdigest()[:24]
    return f"Root=1-{info.connected_at_ms // 1000:08x}-{digest}"


def _handshake_headers(info: ConnectionInfo) -> dict[str, str]:
    """The client's handshake headers plus the ones API Gateway adds to them."""
    headers = dict(info.headers)
    lowered = {name.lower(): name for name in headers}
    forwarded = lowered.get("x-forwarded-for")
    port = info.domain_name.rpartition(":")[2] if ":" in info.domain_name else "80"
    added = {
        "X-Amzn-Trace-Id": _trace_id(info),
        # API Gateway appends the address it saw to what the client's proxies sent.
        "X-Forwarded-For": (f"{headers[forwarded]}, {info.source_ip}" if forwarded
                            else info.source_ip),
        "X-Forwarded-Port": port,
        "X-Forwarded-Proto": "http",  # the local gateway is plain ws:// (AWS: https, 443)
    }
    for name, value in added.items():
        headers.pop(lowered.get(name.lower(), name), None)
        headers[name] = value
    return headers


def authorizer_event(info: ConnectionInfo) -> dict[str, Any]:
    headers = _handshake_headers(info)
    return {
        "type": "REQUEST",
        "methodArn": method_arn(info),
        "headers": headers,
        "multiValueHeaders": _multi(headers),
        "queryStringParameters": dict(info.query),
        "multiValueQueryStringParameters": _multi(info.query),
        "stageVariables": {},
        "requestContext": request_context(info, route_key="$connect", event_type="CONNECT"),
    }


def connect_event(info: ConnectionInfo) -> dict[str, Any]:
    headers = _handshake_headers(info)
    event: dict[str, Any] = {"headers": headers, "multiValueHeaders": _multi(headers)}
    if info.query:  # absent, not null, without a query string
        event["queryStringParameters"] = dict(info.query)
        event["multiValueQueryStringParameters"] = _multi(info.query)
    event["requestContext"] = request_context(info, route_key="$connect", event_type="CONNECT")
    event["isBase64Encoded"] = False
    return event


def message_event(info: ConnectionInfo, route_key: str, data: str | bytes) -> dict[str, Any]:
    context = request_context(info, route_key=route_key, event_type="MESSAGE")
    context["messageId"] = uuid.uuid4().hex[:16]
    if isinstance(data, bytes):
        return {"requestContext": context, "body": base64.b64encode(data).decode(),
                "isBase64Encoded": True}
    return {"requestContext": context, "body": data, "isBase64Encoded": False}


def disconnect_event(info: ConnectionInfo, *, status_code: int, reason: str) -> dict[str, Any]:
    context = request_context(info, route_key="$disconnect", event_type="DISCONNECT")
    context["disconnectStatusCode"] = status_code
    context["disconnectReason"] = reason
    # The headers AWS sends on `$disconnect`: the host and three empty ones.
    headers = {"Host": info.domain_name, "x-api-key": "", "X-Forwarded-For": "", "x-restapi": ""}
    return {
        "headers": headers,
        "multiValueHeaders": _multi(headers),
        "requestContext": context,
        "isBase64Encoded": False,
    }


def select_route(data: str | bytes, routes: frozenset[str] | set[str]) -> str:
    """`$request.body.action` when it names a configured route, else `$default`."""
    if isinstance(data, bytes):
        return "$default"
    import orjson

    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "$default"
    if isinstance(document, dict):
        action = document.get(ROUTE_SELECTION_KEY)
        if isinstance(action, str) and action in routes:
            return action
    return "$default"


def http_date(epoch: float) -> str:
    return formatdate(epoch, usegmt=True)
