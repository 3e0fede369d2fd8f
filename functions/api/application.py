"""The FastAPI application: routes, error translation, OpenAPI document.

Routes: GET|POST /api/v1/current_prices, POST /screeners/ltp/start|stop,
GET /api/v1/health/market_stream, GET /api/v1/ws_token (connect tokens for the WebSocket API,
whose `$connect` authorizer checks them: one minute, bound to the caller's address, limited per
address or OIDC subject, see `functions.api.tokens`), plus /docs and /openapi.json.

`create_app(deps)` is pure wiring; the entry point (`functions.api`) builds the deps once per
execution environment. Blocking work that can take long (DhanHQ REST, ECS, Secrets Manager)
runs in the threadpool; the cache path calls redis-py directly on the event loop, which costs
nothing in Lambda (one request per environment) and saves a thread hop per poll.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from functions.api import schemas
from functions.api.answers import (
    JSON,
    REDIS_ERRORS,
    Answer,
    error,
    error_answer,
    json_answer,
)
from functions.api.auth import require_admin
from functions.api.deps import ApiDeps
from functions.api.health import market_stream_health
from functions.api.keys import MAX_BODY_BYTES, check_declared_length, keys_from_query
from functions.api.observability import ObservabilityMiddleware, logger
from functions.api.payloads import (
    MAX_START_BODY_BYTES,
    MAX_STOP_BODY_BYTES,
    prices_request,
    start_request,
    stop_request,
)
from functions.api.prices import fetch_missing, prices_answer, read_cache
from functions.api.tokens import Requester, requester, take_token
from functions.errors import ApiError, RegistryBusy, ScalingError, SecretError, StreamError
from functions.secrets import resolve_ws_token_secret
from functions.streams import StopResult, Stream, start_streams, stop_streams
from functions.wsauth import mint_token

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
        cached = read_cache(deps, wanted)
        misses = cached.misses
        fetched = await run_in_threadpool(fetch_missing, deps, misses) if misses else None
        return _response(prices_answer(deps, wanted, cached, fetched))

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
        summary="Streamer and relay heartbeats, tick age in market hours, streamer service, "
        "streams and WebSocket connections",
        response_model=None,
        responses={200: {"model": schemas.HealthResponse}, **schemas.error_responses(503)},
    )
    async def health() -> Response:
        return _json(await run_in_threadpool(_health, deps))

    @app.get(
        "/api/v1/ws_token",
        summary="A signed, short-lived token for the WebSocket API's $connect, bound to the "
        "caller's address",
        response_model=None,
        responses={200: {"model": schemas.WsTokenResponse}, **schemas.error_responses(503),
                   429: {"model": schemas.ErrorResponse,
                         "description": "too many tokens for this address (or user) this "
                         "minute; retry after Retry-After seconds"}},  # fmt: skip
    )
    async def ws_token(request: Request) -> Response:
        who = requester(request.scope.get("aws.event"),
                        client_host=request.client.host if request.client else None,
                        require_subject=deps.settings.ws_token_identity == "oidc")
        return _json(await run_in_threadpool(_ws_token, deps, who))

    return app


def _ws_token(deps: ApiDeps, who: Requester) -> dict[str, Any]:
    # A configured but blank or unreadable secret raises SecretError (503), never "no token".
    secret = resolve_ws_token_secret(deps.settings, secrets=deps.secrets)
    if not secret:  # the WebSocket API takes connections without a token (local run)
        return {"token": None, "expires_in": None}
    now = deps.wall_clock()
    take_token(deps.redis, who, per_minute=deps.settings.ws_token_per_ip_per_minute, now=now)
    ttl = deps.settings.ws_token_ttl_seconds
    token = mint_token(secret.value, subject=who.subject, ttl_seconds=ttl, now=now,
                       source_ip=who.source_ip)  # fmt: skip
    return {"token": token, "expires_in": ttl}


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
        tick_stale_after=deps.settings.health_tick_stale_seconds,
        bridge_stale_after=deps.settings.health_bridge_stale_seconds,
    )


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    return credentials.credentials if credentials is not None else None


def _check_declared_length(request: Request, limit: int) -> None:
    """Refuse an oversized body before reading it, when the client declared its size."""
    check_declared_length(request.headers.get("content-length"), limit)


def _response(answer: Answer) -> Response:
    return Response(answer.body, status_code=answer.status, media_type=JSON,
                    headers=answer.headers)  # fmt: skip


def _json(document: dict[str, Any]) -> Response:
    return _response(json_answer(document))


def _install_error_handlers(app: FastAPI) -> None:
    async def known(_: Request, exc: Exception) -> Response:
        answer = error_answer(exc)
        if answer is None:  # not reachable: only known kinds are registered below
            raise exc
        return _response(answer)

    for kind in (ApiError, StreamError, RegistryBusy, ScalingError, SecretError, *REDIS_ERRORS):
        app.add_exception_handler(kind, known)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> Response:
        problems = [
            f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', 'invalid')}"
            for error in exc.errors()
        ]
        return _response(error(422, "invalid_request", "; ".join(problems) or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        headers = {k.lower(): v for k, v in (exc.headers or {}).items()}
        return _response(error(exc.status_code, "http_error", str(exc.detail), headers=headers))
