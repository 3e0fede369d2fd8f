"""API Gateway WebSocket events, shaped as AWS delivers them to Lambda (pure builders).

Shapes follow the WebSocket API Lambda proxy integration: `requestContext` carries `routeKey`,
`eventType` (CONNECT | MESSAGE | DISCONNECT), `connectionId`, `domainName`, `stage`, `apiId`,
`requestId`, `connectedAt` (ms), `identity.sourceIp`; `$connect` adds headers and query string,
a message adds `body` and `isBase64Encoded`, `$disconnect` adds the close code and reason. The
`$connect` REQUEST authorizer gets `type`, `methodArn`, headers and query string.
"""

from __future__ import annotations

import base64
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
        "identity": {"sourceIp": info.source_ip, "userAgent": info.user_agent},
        "requestId": request_id,
        "domainName": info.domain_name,
        "connectionId": info.connection_id,
        "apiId": info.api_id,
    }
    if info.authorizer is not None:
        context["authorizer"] = dict(info.authorizer)
    return context


def method_arn(info: ConnectionInfo, route_key: str = "$connect") -> str:
    return f"arn:aws:execute-api:local:000000000000:{info.api_id}/{info.stage}/{route_key}"


def _multi(values: Mapping[str, str]) -> dict[str, list[str]]:
    return {k: [v] for k, v in values.items()}


def authorizer_event(info: ConnectionInfo) -> dict[str, Any]:
    return {
        "type": "REQUEST",
        "methodArn": method_arn(info),
        "headers": dict(info.headers),
        "multiValueHeaders": _multi(info.headers),
        "queryStringParameters": dict(info.query),
        "multiValueQueryStringParameters": _multi(info.query),
        "stageVariables": {},
        "requestContext": request_context(info, route_key="$connect", event_type="CONNECT"),
    }


def connect_event(info: ConnectionInfo) -> dict[str, Any]:
    return {
        "headers": dict(info.headers),
        "multiValueHeaders": _multi(info.headers),
        "queryStringParameters": dict(info.query) or None,
        "multiValueQueryStringParameters": _multi(info.query) or None,
        "requestContext": request_context(info, route_key="$connect", event_type="CONNECT"),
        "isBase64Encoded": False,
    }


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
    return {
        "headers": {"Host": info.domain_name},
        "multiValueHeaders": {"Host": [info.domain_name]},
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
