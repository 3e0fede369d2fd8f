"""The `@connections` HTTP endpoint: `POST|GET|DELETE /{stage}/@connections/{id}` as ASGI.

It answers like AWS (410 GoneException, 413 PayloadTooLargeException, 429
LimitExceededException, with `x-amzn-ErrorType`) so boto3's `apigatewaymanagementapi` raises
the same exceptions against the local gateway; the gateway it serves does the posting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from local.apigw.config import GatewayConfig
from local.apigw.posting import OpenConnection, PostResult

# status, JSON body (None: empty), extra headers
_Answer = tuple[int, dict[str, Any] | None, list[tuple[bytes, bytes]]]


class Gateway(Protocol):
    """What the endpoint uses of `LocalApiGateway`."""

    @property
    def config(self) -> GatewayConfig: ...

    @property
    def connections(self) -> Mapping[str, OpenConnection]: ...

    async def post(self, connection_id: str, data: bytes) -> PostResult: ...

    def delete(self, connection_id: str) -> bool: ...


class ConnectionsEndpoint:
    """ASGI for the one route, without a framework: a router and request/response objects
    per post were a quarter of this process's CPU per post in bench_fanout."""

    def __init__(self, gateway: Gateway) -> None:
        self._gateway = gateway

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        stage, marker, connection_id = scope["path"].lstrip("/").partition("/@connections/")
        method = scope["method"]
        status: int
        body: dict[str, Any] | None
        headers: list[tuple[bytes, bytes]]
        if not marker or not connection_id:
            status, body, headers = 404, {"message": "Not Found"}, []
        elif method not in ("POST", "GET", "DELETE"):
            status, body, headers = 405, {"message": "Method Not Allowed"}, []
        elif stage != self._gateway.config.stage:
            status, body, headers = _error(PostResult(403, "ForbiddenException", "Forbidden"))
        elif method == "POST":
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            result = await self._gateway.post(connection_id, b"".join(chunks))
            status, body, headers = (200, None, []) if result.status == 200 else _error(result)
        else:
            status, body, headers = await self._connection_info(connection_id, method)
        payload = b"" if body is None else orjson.dumps(body)
        headers = [*headers, (b"content-length", str(len(payload)).encode())]
        if body is not None:
            headers.append((b"content-type", b"application/json"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    async def _connection_info(self, connection_id: str, method: str) -> _Answer:
        if self._gateway.config.post_latency:
            await asyncio.sleep(self._gateway.config.post_latency)
        conn = self._gateway.connections.get(connection_id)
        if conn is None:
            return _error(PostResult(410, "GoneException", ""))
        if method == "DELETE":
            self._gateway.delete(connection_id)
            return 204, None, []
        started = time.time() - (time.monotonic() - conn.connected_at)
        active = time.time() - (time.monotonic() - conn.last_active)
        return 200, {
            "connectedAt": _iso(started),
            "identity": {"sourceIp": conn.info.source_ip, "userAgent": conn.info.user_agent},
            "lastActiveAt": _iso(active),
        }, []


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _error(result: PostResult) -> _Answer:
    return (result.status, {"message": result.message or None},
            [(b"x-amzn-errortype", result.error.encode())])
