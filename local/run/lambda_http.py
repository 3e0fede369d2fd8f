"""HTTP requests -> API Gateway HTTP API (payload 2.0) events -> the Lambda handler, locally.

`http_api_event` builds the event API Gateway would deliver for a request (pure).
`LambdaPool` stands in for Lambda's execution environments: a few threads, each with its own
event loop and its own `Mangum` handler (built once per "environment", as in a warm Lambda),
so the HTTP API runs locally through exactly the adapter it runs through in AWS.
`HttpApiProxy` is the ASGI endpoint that moves requests and responses in and out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import queue
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Receive, Scope, Send

# API Gateway HTTP APIs accept request bodies up to 10 MB.
MAX_BODY_BYTES = 10 * 1024 * 1024
TEXT_TYPES = ("text/", "application/json", "application/x-www-form-urlencoded", "+json")


def _request_time(now: float) -> str:
    return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now))


def _query_parameters(query_string: str) -> dict[str, Any]:
    """`queryStringParameters` as API Gateway sends it: decoded, repeated names joined by
    commas, and absent when there is no query string."""
    if not query_string:
        return {}
    merged: dict[str, str] = {}
    for name, value in parse_qsl(query_string, keep_blank_values=True):
        merged[name] = f"{merged[name]},{value}" if name in merged else value
    return {"queryStringParameters": merged}


def http_api_event(
    *,
    method: str,
    path: str,
    query_string: str,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    source_ip: str,
    api_id: str = "localhttp",
    now: float | None = None,
) -> dict[str, Any]:
    """The payload-2.0 event of one request (stage `$default`, route `$default`)."""
    current = time.time() if now is None else now
    merged: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "cookie":
            cookies.extend(part.strip() for part in value.split(";") if part.strip())
            continue
        # API Gateway joins repeated headers with commas.
        merged[lowered] = f"{merged[lowered]},{value}" if lowered in merged else value
    host = merged.get("host", "localhost")
    _add_gateway_headers(merged, host=host, source_ip=source_ip, now=current)
    text_body, encoded = _event_body(body, merged.get("content-type", ""))
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": query_string,
        "headers": merged,
        **_query_parameters(query_string),
        "requestContext": {
            "accountId": "000000000000",
            "apiId": api_id,
            "domainName": host,
            "domainPrefix": host.split(".")[0],
            "http": {
                "method": method.upper(),
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": merged.get("user-agent", ""),
            },
            "requestId": base64.b64encode(secrets.token_bytes(12)).decode("ascii")[:15] + "=",
            "routeKey": "$default",
            "stage": "$default",
            "time": _request_time(current),
            "timeEpoch": int(current * 1000),
        },
        "isBase64Encoded": encoded,
    }
    if cookies:
        event["cookies"] = cookies
    if text_body is not None:
        event["body"] = text_body
    return event


def _add_gateway_headers(headers: dict[str, str], *, host: str, source_ip: str,
                         now: float) -> None:
    """The headers API Gateway adds to every request (AWS: https on 443; locally plain http)."""
    headers["x-amzn-trace-id"] = f"Root=1-{int(now):08x}-{secrets.token_hex(12)}"
    forwarded = headers.get("x-forwarded-for")
    headers["x-forwarded-for"] = f"{forwarded}, {source_ip}" if forwarded else source_ip
    port = host.rpartition(":")[2] if host.rpartition(":")[2].isdigit() else "80"
    headers["x-forwarded-port"] = port
    headers["x-forwarded-proto"] = "http"


def _event_body(body: bytes, content_type: str) -> tuple[str | None, bool]:
    """API Gateway passes text bodies as they are and anything else base64-encoded."""
    if not body:
        return None, False
    if any(t in content_type for t in TEXT_TYPES):
        try:
            return body.decode(), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


@dataclass
class LambdaContext:
    """What Lambda passes as `context` (the attributes Powertools and Mangum read)."""

    aws_request_id: str
    function_name: str = "ltp-local-api"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:local:000000000000:function:ltp-local-api"
    log_group_name: str = "/aws/lambda/ltp-local-api"
    log_stream_name: str = "local"
    timeout_seconds: float = 29.0
    started: float = 0.0

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self.started + self.timeout_seconds - time.monotonic()) * 1000))


Handler = Callable[[dict[str, Any], Any], dict[str, Any]]


class LambdaPool:
    """`size` execution environments, each running its own `make_handler()` one event at a time."""

    def __init__(self, make_handler: Callable[[], Handler], *, size: int = 4) -> None:
        self._make_handler = make_handler
        self._jobs: queue.SimpleQueue[tuple[dict[str, Any], asyncio.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._threads = [
            threading.Thread(target=self._environment, name=f"lambda-env-{i}", daemon=True)
            for i in range(size)
        ]
        for thread in self._threads:
            thread.start()

    async def invoke(self, event: dict[str, Any]) -> dict[str, Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.put((event, future))
        result: dict[str, Any] = await future
        return result

    def close(self, timeout: float = 10.0) -> None:
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join(timeout)

    def _environment(self) -> None:
        # Mangum runs each request with run_until_complete on the thread's current loop.
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            handler = self._make_handler()
            while (job := self._jobs.get()) is not None:
                event, future = job
                context = LambdaContext(
                    aws_request_id=event["requestContext"]["requestId"], started=time.monotonic()
                )
                try:
                    outcome: Any = handler(event, context)
                    failed = False
                except Exception as exc:  # noqa: BLE001 - Lambda reports it as a 500
                    outcome, failed = exc, True
                _resolve(future, outcome, failed)
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_default_executor())
            asyncio.set_event_loop(None)
            loop.close()


def _resolve(future: asyncio.Future[Any], outcome: Any, failed: bool) -> None:
    def settle() -> None:
        if future.done():  # the request was abandoned (client gone, shutdown)
            return
        if failed:
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    with contextlib.suppress(RuntimeError):  # the caller's loop is already closed
        future.get_loop().call_soon_threadsafe(settle)


class HttpApiProxy:
    """ASGI endpoint: each request becomes an HTTP API event for the pool's handler."""

    def __init__(self, pool: LambdaPool) -> None:
        self.pool = pool

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert scope["type"] == "http"
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            more = message.get("more_body", False)
            if len(body) > MAX_BODY_BYTES:
                await _respond(send, 413, {"content-type": "application/json"},
                               b'{"message":"Request Entity Too Large"}')
                return
        client = scope.get("client") or ("127.0.0.1", 0)
        event = http_api_event(
            method=scope["method"],
            path=scope["path"],
            query_string=scope.get("query_string", b"").decode("latin-1"),
            headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]],
            body=bytes(body),
            source_ip=str(client[0]),
        )
        try:
            result = await self.pool.invoke(event)
        except Exception:  # noqa: BLE001 - what API Gateway answers when the function fails
            await _respond(send, 500, {"content-type": "application/json"},
                           b'{"message":"Internal Server Error"}')
            return
        raw = result.get("body") or ""
        payload = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()
        headers = dict(result.get("headers") or {})
        await _respond(send, int(result.get("statusCode", 200)), headers, payload,
                       cookies=result.get("cookies") or [])


async def _respond(send: Send, status: int, headers: dict[str, str], body: bytes, *,
                   cookies: Iterable[str] = ()) -> None:
    raw = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in headers.items()
           if k.lower() != "content-length"]
    raw += [(b"set-cookie", c.encode("latin-1")) for c in cookies]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


__all__ = ["HttpApiProxy", "LambdaContext", "LambdaPool", "http_api_event"]
