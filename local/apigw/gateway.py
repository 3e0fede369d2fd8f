"""A local API Gateway WebSocket API: the same Lambda handlers, a real `@connections` endpoint.

- WebSocket side (python-websockets): assigns connection ids, runs the `$connect` authorizer
  and handler during the handshake (a Deny answers 403, an authorizer exception 401, a non-2xx
  `$connect` its own status), selects routes on `$request.body.action`, runs every handler
  (sync, in a worker thread) with API Gateway-shaped events, and runs `$disconnect` on close.
  Routes have no route response: a handler's return value is never sent to the client (a
  failing one gets API Gateway's `{"message": "Internal server error", ...}`).
  Enforces the 128 KB message limit (larger closes with 1009), the idle timeout (10 min) and
  the maximum duration (2 h), both configurable.
- HTTP side (a plain ASGI app on uvicorn): `POST|GET|DELETE /{stage}/@connections/{id}`, answering
  like AWS (410 GoneException, 413 PayloadTooLargeException, 429 LimitExceededException with
  `x-amzn-ErrorType`) so boto3's `apigatewaymanagementapi` raises the same exceptions with
  `endpoint_url=gateway.callback_url`. SigV4 is not checked. Throttling and added latency can
  be injected for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import uvicorn
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request
from websockets.http11 import Response as WsResponse
from websockets.protocol import State

from local.apigw import events
from local.apigw.events import ConnectionInfo

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any], Any], Any]

MAX_MESSAGE_BYTES = 128 * 1024
# Unsent bytes a connection may hold before posts to it are refused with 429.
MAX_CLIENT_BUFFER_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Handlers:
    """The Lambda functions behind the routes (None: route not configured)."""

    message: Handler
    connect: Handler | None = None
    disconnect: Handler | None = None
    authorizer: Handler | None = None
    routes: frozenset[str] = frozenset({"subscribe", "unsubscribe", "ping"})
    route_handlers: Mapping[str, Handler] = field(default_factory=dict)

    def for_route(self, route_key: str) -> Handler:
        return self.route_handlers.get(route_key, self.message)


@dataclass(slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    ws_port: int = 0
    http_port: int = 0
    stage: str = "local"
    api_id: str = "localapi"
    idle_timeout: float = 600.0
    max_duration: float = 7200.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    post_latency: float = 0.0  # added to every @connections request (API Gateway's ~10 ms)


class Throttle:
    """Injectable 429s: the next `n` posts, and/or a sustained rate (token bucket)."""

    def __init__(self) -> None:
        self._next = 0
        self._rate: float | None = None
        self._tokens = 0.0
        self._stamp = time.monotonic()

    def fail_next(self, n: int) -> None:
        self._next = n

    def limit_rate(self, per_second: float | None, burst: float | None = None) -> None:
        self._rate = per_second
        self._tokens = burst if burst is not None else (per_second or 0.0)
        self._burst = self._tokens
        self._stamp = time.monotonic()

    def admit(self) -> bool:
        if self._next > 0:
            self._next -= 1
            return False
        if self._rate is None:
            return True
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


@dataclass(slots=True)
class _Connection:
    info: ConnectionInfo
    socket: ServerConnection
    connected_at: float
    last_active: float
    watchdog: asyncio.Task[None] | None = None
    queued: int = 0  # bytes accepted by post_nowait and not yet written to the socket


# A posted message as it goes out: its bytes and whether they are sent as a text frame.
_Frame = tuple[bytes, bool]
_NO_FRAME: _Frame = (b"", False)


@dataclass(frozen=True, slots=True)
class PostResult:
    status: int
    error: str = ""
    message: str = ""


def new_connection_id() -> str:
    # AWS ids are 12 base64 characters, often ending in "="; keep the awkward "=" for realism.
    return secrets.token_urlsafe(8)[:11] + "="


class LocalApiGateway:
    def __init__(self, handlers: Handlers, config: GatewayConfig | None = None) -> None:
        self.handlers = handlers
        self.config = config or GatewayConfig()
        self.throttle = Throttle()
        self.connections: dict[str, _Connection] = {}
        self.posts = 0
        # Posts arrive from fan-out threads as well as the loop (throttle, counter, outbox).
        self._post_lock = threading.Lock()
        self._outbox: list[tuple[_Connection, _Frame]] = []
        self._outbox_scheduled = False
        self._handshakes: dict[int, ConnectionInfo] = {}
        self._ws_server: Server | None = None
        self._http: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> LocalApiGateway:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        cfg = self.config
        self._ws_server = await serve(
            self._serve_connection, cfg.host, cfg.ws_port,
            process_request=self._handshake,
            max_size=cfg.max_message_bytes,
            ping_interval=None,  # API Gateway does not ping clients
            compression=None,
            server_header="local-apigw",
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((cfg.host, cfg.http_port))
        self._http_socket = sock
        server = uvicorn.Server(uvicorn.Config(self._connections_app, interface="asgi3",
                                               log_level="warning",
                                               lifespan="off", access_log=False,
                                               timeout_keep_alive=30))
        self._http = server
        self._http_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if self._http_task.done():
                self._http_task.result()
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        for conn in list(self.connections.values()):
            with contextlib.suppress(Exception):
                await conn.socket.close(1001, "Going away")
        if self._ws_server is not None:
            self._ws_server.close()
            await self._ws_server.wait_closed()
        if self._http is not None and self._http_task is not None:
            self._http.should_exit = True
            await self._http_task
        if self._http_socket is not None:
            self._http_socket.close()

    @property
    def ws_port(self) -> int:
        assert self._ws_server is not None
        port: int = next(iter(self._ws_server.sockets)).getsockname()[1]
        return port

    @property
    def http_port(self) -> int:
        assert self._http_socket is not None
        port: int = self._http_socket.getsockname()[1]
        return port

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self.ws_port}/{self.config.stage}"

    @property
    def callback_url(self) -> str:
        """What WEBSOCKET_CALLBACK_URL / boto3's endpoint_url should be."""
        return f"http://{self.config.host}:{self.http_port}/{self.config.stage}"

    # --- WebSocket side -----------------------------------------------------------------------

    async def _call(self, handler: Handler, event: dict[str, Any]) -> Any:
        return await asyncio.to_thread(handler, event, None)

    async def _handshake(self, connection: ServerConnection, request: Request) -> WsResponse | None:
        cfg = self.config
        url = urlsplit(request.path)
        if url.path.strip("/") != cfg.stage:
            return connection.respond(http.HTTPStatus.FORBIDDEN, "Forbidden\n")
        remote = connection.remote_address
        info = ConnectionInfo(
            connection_id=new_connection_id(),
            api_id=cfg.api_id,
            stage=cfg.stage,
            domain_name=f"{cfg.host}:{self.ws_port}",
            connected_at_ms=int(time.time() * 1000),
            source_ip=str(remote[0]) if remote else "127.0.0.1",
            user_agent=request.headers.get("User-Agent", ""),
            headers=_plain_headers(request.headers),
            query=dict(parse_qsl(url.query)),
        )
        if self.handlers.authorizer is not None:
            try:
                answer = await self._call(self.handlers.authorizer, events.authorizer_event(info))
            except Exception:  # noqa: BLE001 - an authorizer failure is API Gateway's 401
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
            if not _allows(answer):
                return connection.respond(http.HTTPStatus.FORBIDDEN, "Forbidden\n")
            context = dict(answer.get("context") or {})
            context["principalId"] = answer.get("principalId", "")
            info = _with_authorizer(info, context)
        if self.handlers.connect is not None:
            try:
                reply = await self._call(self.handlers.connect, events.connect_event(info))
            except Exception:
                log.exception("$connect handler failed")
                return connection.respond(http.HTTPStatus.INTERNAL_SERVER_ERROR,
                                          "Internal server error\n")
            status = int(reply.get("statusCode", 200)) if isinstance(reply, Mapping) else 200
            if not 200 <= status < 300:
                return connection.respond(http.HTTPStatus(status), "Connection refused\n")
        self._handshakes[id(connection)] = info
        return None

    async def _serve_connection(self, socket_: ServerConnection) -> None:
        info = self._handshakes.pop(id(socket_))
        now = time.monotonic()
        conn = _Connection(info, socket_, now, now)
        self.connections[info.connection_id] = conn
        conn.watchdog = asyncio.create_task(self._watch(conn))
        try:
            async for data in socket_:
                conn.last_active = time.monotonic()
                route = events.select_route(data, self.handlers.routes)
                event = events.message_event(info, route, data)
                try:
                    # No route has a route response (as in infra/websocket_api.py), so what
                    # the handler returns never reaches the client: replies go through
                    # @connections.
                    await self._call(self.handlers.for_route(route), event)
                except Exception:
                    log.exception("route %s failed for %s", route, info.connection_id)
                    # What API Gateway itself sends the client when the integration fails.
                    request_id = event["requestContext"]["requestId"]
                    failure = ('{"message": "Internal server error", '
                               f'"connectionId":"{info.connection_id}", '
                               f'"requestId":"{request_id}"}}')
                    with contextlib.suppress(ConnectionClosed):
                        await socket_.send(failure)
        except ConnectionClosed:
            pass
        finally:
            self.connections.pop(info.connection_id, None)
            conn.watchdog.cancel()
            code = socket_.close_code if socket_.close_code is not None else 1006
            reason = socket_.close_reason or ""
            if self.handlers.disconnect is not None:
                try:
                    await self._call(self.handlers.disconnect, events.disconnect_event(
                        info, status_code=code, reason=reason))
                except Exception:
                    log.exception("$disconnect handler failed for %s", info.connection_id)

    async def _watch(self, conn: _Connection) -> None:
        cfg = self.config
        while True:
            now = time.monotonic()
            idle_end = conn.last_active + cfg.idle_timeout
            max_end = conn.connected_at + cfg.max_duration
            if now >= max_end or now >= idle_end:
                await conn.socket.close(1001, "Going away")
                return
            await asyncio.sleep(min(idle_end, max_end) - now)

    # --- @connections -------------------------------------------------------------------------

    def _accept(self, connection_id: str, data: bytes
                ) -> tuple[PostResult, _Connection | None, _Frame]:
        """The checks API Gateway makes before it takes a message (caller holds `_post_lock`)."""
        if not self.throttle.admit():
            return PostResult(429, "LimitExceededException", "Rate exceeded"), None, _NO_FRAME
        conn = self.connections.get(connection_id)
        if conn is None:
            return PostResult(410, "GoneException", ""), None, _NO_FRAME
        if len(data) > self.config.max_message_bytes:
            return (PostResult(413, "PayloadTooLargeException",
                               f"Message too long. Max size is {self.config.max_message_bytes}"),
                    None, _NO_FRAME)
        transport = conn.socket.transport
        unsent = conn.queued + (transport.get_write_buffer_size() if transport is not None else 0)
        if unsent > MAX_CLIENT_BUFFER_BYTES:
            # A client that stopped reading: refuse instead of buffering without bound; the
            # fan-out treats it as a throttle and carries the update into a later message.
            return PostResult(429, "LimitExceededException", "Client buffer full"), None, _NO_FRAME
        if not data.isascii():  # JSON from orjson is ASCII unless it holds non-ASCII text
            try:
                data.decode()
            except UnicodeDecodeError:
                return PostResult(200), conn, (data, False)
        # Valid UTF-8 goes out as a text frame (as API Gateway sends posted JSON), without
        # decoding and re-encoding it.
        return PostResult(200), conn, (data, True)

    async def post(self, connection_id: str, data: bytes) -> PostResult:
        """PostToConnection, as the HTTP endpoint performs it (on the loop, so it writes the
        frame at once; the in-process fan-out uses `post_nowait`)."""
        if self.config.post_latency:
            await asyncio.sleep(self.config.post_latency)
        with self._post_lock:
            result, conn, frame = self._accept(connection_id, data)
            if conn is not None:
                self.posts += 1
        if conn is not None:
            _write_frame(conn.socket, *frame)
        return result

    def post_nowait(self, connection_id: str, data: bytes) -> PostResult:
        """PostToConnection from any thread, answered as soon as the message is accepted (as
        AWS answers 200 before the client has it): the send runs later on the gateway's loop.

        The in-process fan-out posts this way: waiting for the loop on every post made the
        round trip between threads, not CPU, the limit of the local stack's post rate."""
        if self.loop is None:
            return PostResult(410, "GoneException", "")
        with self._post_lock:
            result, conn, frame = self._accept(connection_id, data)
            if conn is None:
                return result
            self.posts += 1
            conn.queued += len(data)
            self._outbox.append((conn, frame))
            if self._outbox_scheduled:
                return result
            self._outbox_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._send_outbox)
        except RuntimeError:  # the gateway stopped meanwhile: its connections are gone
            return PostResult(410, "GoneException", "")
        return result

    def _send_outbox(self) -> None:
        with self._post_lock:
            batch, self._outbox = self._outbox, []
            self._outbox_scheduled = False
            for conn, (data, _) in batch:
                conn.queued -= len(data)
        for conn, (data, text) in batch:
            _write_frame(conn.socket, data, text)

    async def _connections_app(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """ASGI for the one route, without a framework: a router and request/response objects
        per post were a quarter of this process's CPU per post in bench_fanout."""
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
        elif stage != self.config.stage:
            status, body, headers = _error(PostResult(403, "ForbiddenException", "Forbidden"))
        elif method == "POST":
            chunks = []
            while True:
                message = await receive()
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            result = await self.post(connection_id, b"".join(chunks))
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
        if self.config.post_latency:
            await asyncio.sleep(self.config.post_latency)
        conn = self.connections.get(connection_id)
        if conn is None:
            return _error(PostResult(410, "GoneException", ""))
        if method == "DELETE":
            await conn.socket.close(1000, "")
            return 204, None, []
        started = time.time() - (time.monotonic() - conn.connected_at)
        active = time.time() - (time.monotonic() - conn.last_active)
        return 200, {
            "connectedAt": _iso(started),
            "identity": {"sourceIp": conn.info.source_ip, "userAgent": conn.info.user_agent},
            "lastActiveAt": _iso(active),
        }, []


# status, JSON body (None: empty), extra headers
_Answer = tuple[int, dict[str, Any] | None, list[tuple[bytes, bytes]]]


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def _error(result: PostResult) -> _Answer:
    return (result.status, {"message": result.message or None},
            [(b"x-amzn-errortype", result.error.encode())])


def _plain_headers(headers: Headers) -> dict[str, str]:
    return {name: value for name, value in headers.raw_items()}


def _allows(answer: Any) -> bool:
    if not isinstance(answer, Mapping):
        return False
    statements = (answer.get("policyDocument") or {}).get("Statement") or []
    effects = [s.get("Effect") for s in statements if isinstance(s, Mapping)]
    return bool(effects) and all(e == "Allow" for e in effects)


def _with_authorizer(info: ConnectionInfo, context: Mapping[str, Any]) -> ConnectionInfo:
    from dataclasses import replace

    return replace(info, authorizer=context)


def _write_frame(socket_: ServerConnection, data: bytes, text: bool) -> None:
    """Write one whole frame now, through websockets' sans-I/O `protocol` and the transport:
    no task and no coroutine per message (half the gateway's CPU per post). Flow control is
    `_accept`'s bound on what a connection holds; a closing connection loses the message, as
    a post to a closing connection on AWS does."""
    protocol = socket_.protocol
    transport = socket_.transport
    if protocol.state is not State.OPEN or transport is None or transport.is_closing():
        return
    if text:
        protocol.send_text(data)
    else:
        protocol.send_binary(data)
    for chunk in protocol.data_to_send():
        if chunk:
            transport.write(chunk)
