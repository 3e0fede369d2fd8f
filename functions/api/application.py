"""The FastAPI application: routes, error translation, OpenAPI document.

`create_app(deps)` is pure wiring; the entry point (`functions.api`) builds the deps once per
execution environment. Blocking work that can take long (DhanHQ REST, ECS, Secrets Manager)
runs in the threadpool; the cache path calls redis-py directly on the event loop, which costs
nothing in Lambda (one request per environment) and saves a thread hop per poll.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
import redis.exceptions
from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from functions.api import schemas
from functions.api.auth import require_admin
from functions.api.deps import ApiDeps
from functions.api.health import market_stream_health
from functions.api.keys import MAX_BODY_BYTES, check_body_size, keys_from_query
from functions.api.observability import ObservabilityMiddleware, logger
from functions.api.payloads import (
    MAX_START_BODY_BYTES,
    MAX_STOP_BODY_BYTES,
    prices_request,
    start_request,
    stop_request,
)
from functions.api.prices import fetch_missing, read_cache, record_metrics, render
from functions.errors import (
    ApiError,
    RegistryBusy,
    ScalingError,
    SecretError,
    StreamError,
    StreamLimitError,
)
from functions.streams import StopResult, Stream, start_streams, stop_streams

JSON = "application/json"
NO_STORE = {"Cache-Control": "no-store"}
REDIS_RETRY_AFTER = 5

bearer = HTTPBearer(auto_error=False, description="the admin key (ADMIN_API_KEY)")
Bearer = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def create_app(deps: ApiDeps) -> FastAPI:
    app = FastAPI(
        title="LTP stream API",
        version="1.0.0",
        description="Current prices (Redis cache with DhanHQ REST fallback), named streams "
        "that drive the streamer, and the health of the market stream.",
    )
    app.add_middleware(ObservabilityMiddleware, metrics=deps.metrics)
    _install_error_handlers(app)

    async def prices_for(wanted: list[str]) -> Response:
        cached, misses = read_cache(deps, wanted)
        fetched = await run_in_threadpool(fetch_missing, deps, misses) if misses else None
        record_metrics(deps, hits=len(cached), misses=len(misses), fetched=fetched)
        body = render(requested=len(wanted), cached=cached, fetched=fetched)
        return Response(body, media_type=JSON, headers=NO_STORE)

    @app.get(
        "/api/v1/current_prices",
        summary="Current prices of instruments (query string)",
        response_model=None,
        responses={200: {"model": schemas.PricesResponse},
                   **schemas.error_responses(414, 422, 503)},  # fmt: skip
    )
    async def get_current_prices(
        request: Request,
        keys: Annotated[
            str | None,
            Query(description="comma-separated keys, e.g. NSE_EQ:1333,NSE_EQ:11536 "
                  "(query string at most 8,192 bytes)"),  # fmt: skip
        ] = None,
    ) -> Response:
        values = request.query_params.getlist("keys") if keys is not None else []
        return await prices_for(keys_from_query(request.scope["query_string"], values))

    @app.post(
        "/api/v1/current_prices",
        summary="Current prices of up to 5,000 instruments (JSON body)",
        response_model=None,
        openapi_extra=schemas.request_body(schemas.PricesRequest, '{"keys": [...]}'),
        responses={200: {"model": schemas.PricesResponse},
                   **schemas.error_responses(400, 413, 422, 503)},  # fmt: skip
    )
    async def post_current_prices(request: Request) -> Response:
        _check_declared_length(request, MAX_BODY_BYTES)
        return await prices_for(prices_request(await request.body()))

    @app.post(
        "/screeners/ltp/start",
        summary="Register a named stream and make sure the streamer runs",
        response_model=None,
        openapi_extra=schemas.request_body(schemas.StartRequest, "the stream"),
        responses={200: {"model": schemas.StartResponse},
                   **schemas.error_responses(400, 401, 409, 413, 422, 503)},  # fmt: skip
    )
    async def start(request: Request, credentials: Bearer = None) -> Response:
        _check_declared_length(request, MAX_START_BODY_BYTES)
        body = await request.body()
        by = request.client.host if request.client else ""
        answer = await run_in_threadpool(_start, deps, _token(credentials), body, by)
        return _json(answer)

    @app.post(
        "/screeners/ltp/stop",
        summary="End a named stream; stop the streamer when none is left",
        response_model=None,
        openapi_extra=schemas.request_body(schemas.StopRequest, "the stream to end"),
        responses={200: {"model": schemas.StopResponse},
                   **schemas.error_responses(400, 401, 413, 422, 503)},  # fmt: skip
    )
    async def stop(request: Request, credentials: Bearer = None) -> Response:
        _check_declared_length(request, MAX_STOP_BODY_BYTES)
        body = await request.body()
        answer = await run_in_threadpool(_stop, deps, _token(credentials), body)
        return _json(answer)

    @app.get(
        "/api/v1/health/market_stream",
        summary="Heartbeat age, streamer service, streams and WebSocket connections",
        response_model=None,
        responses={200: {"model": schemas.HealthResponse}, **schemas.error_responses(503)},
    )
    async def health() -> Response:
        return _json(await run_in_threadpool(_health, deps))

    return app


def _start(deps: ApiDeps, token: str | None, body: bytes, caller: str) -> dict[str, Any]:
    require_admin(deps, token)
    request = start_request(body)
    stream = Stream.create(request.name, request.keys, request.mode or deps.settings.ws_mode,
                           by=request.by or caller)  # fmt: skip
    result = start_streams([stream], redis=deps.redis, service=deps.streamer_service())
    logger.info("stream started", extra={"stream": stream.name, "keys": len(stream.keys),
                                         "changed": bool(result.changed),
                                         "streamer": result.streamer})  # fmt: skip
    return {"name": stream.name, "keys": len(stream.keys), "changed": bool(result.changed),
            "active_streams": result.active_streams, "total_keys": result.total_keys,
            "streamer": result.streamer}  # fmt: skip


def _stop(deps: ApiDeps, token: str | None, body: bytes) -> dict[str, Any]:
    require_admin(deps, token)
    name = stop_request(body)
    result: StopResult = stop_streams([name], redis=deps.redis, service=deps.streamer_service())
    logger.info("stream stopped", extra={"stream": name, "stopped": bool(result.stopped),
                                         "streamer": result.streamer})  # fmt: skip
    return {"name": name, "stopped": bool(result.stopped),
            "remaining_streams": len(result.remaining), "total_keys": result.total_keys,
            "streamer": result.streamer}  # fmt: skip


def _health(deps: ApiDeps) -> dict[str, Any]:
    return market_stream_health(
        redis=deps.redis,
        service=deps.streamer_service(),
        connection_count=deps.connection_count,
        now=deps.wall_clock(),
        stale_after=deps.settings.heartbeat_stale_seconds,
    )


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None else None


def _check_declared_length(request: Request, limit: int) -> None:
    """Refuse an oversized body before reading it, when the client declared its size."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        check_body_size(int(declared), limit=limit)


def _json(document: dict[str, Any], status: int = 200,
          headers: dict[str, str] | None = None) -> Response:  # fmt: skip
    return Response(orjson.dumps(document), status_code=status, media_type=JSON,
                    headers={**NO_STORE, **(headers or {})})  # fmt: skip


def _error(status: int, code: str, message: str, *, headers: dict[str, str] | None = None,
           **details: Any) -> Response:  # fmt: skip
    return _json({"error": code, "message": message, **details}, status, headers)


def _install_error_handlers(app: FastAPI) -> None:
    retry = {"Retry-After": str(REDIS_RETRY_AFTER)}

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return _json(exc.body(), exc.status, exc.headers)

    @app.exception_handler(StreamLimitError)
    async def stream_limit(_: Request, exc: StreamLimitError) -> Response:
        return _error(409, "too_many_stream_keys", str(exc))

    @app.exception_handler(StreamError)
    async def stream_error(_: Request, exc: StreamError) -> Response:
        return _error(422, "invalid_stream", str(exc))

    @app.exception_handler(RegistryBusy)
    async def registry_busy(_: Request, exc: RegistryBusy) -> Response:
        return _error(503, "registry_busy", str(exc), headers={"Retry-After": "1"})

    @app.exception_handler(ScalingError)
    async def scaling_error(_: Request, exc: ScalingError) -> Response:
        logger.warning("streamer scaling failed", extra={"reason": str(exc)})
        return _error(503, "streamer_unavailable",
                      f"the stream registry is up to date but the streamer service could not "
                      f"be scaled ({exc}); retry, the request is idempotent",
                      headers={"Retry-After": "10"})  # fmt: skip

    @app.exception_handler(SecretError)
    async def secret_error(_: Request, exc: SecretError) -> Response:
        logger.warning("secret unavailable", extra={"reason": str(exc)})
        return _error(503, "secret_unavailable", "a secret could not be read; retry shortly",
                      headers=retry)  # fmt: skip

    async def redis_down(_: Request, exc: Exception) -> Response:
        logger.warning("redis unavailable", extra={"reason": type(exc).__name__})
        return _error(503, "redis_unavailable",
                      "the price cache is unreachable right now; retry shortly",
                      headers=retry)  # fmt: skip

    for kind in (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                 redis.exceptions.ReadOnlyError):  # fmt: skip
        app.add_exception_handler(kind, redis_down)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> Response:
        problems = [
            f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
            for error in exc.errors()
        ]
        return _error(422, "invalid_request", "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        return _error(exc.status_code, "http_error", str(exc.detail),
                      headers=dict(exc.headers or {}))  # fmt: skip
