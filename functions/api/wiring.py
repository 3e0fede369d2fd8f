"""The HTTP API's wiring: settings -> clients -> app -> the Lambda handler.

`functions.api.entry` calls `build()` once per execution environment; the local run calls it
once per stand-in environment, with the settings the template would give the function.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from mangum import Mangum
from redis import Redis

from core.redis_client import LAMBDA_REDIS_ENV
from functions.api.application import create_app
from functions.api.deps import ApiDeps, connect_redis
from functions.api.observability import (
    ApiMetrics,
    LambdaHandler,
    flushes_metrics,
    logger,
    new_metrics,
)
from functions.api.router import LambdaRouter
from functions.secrets import SecretsCache, secrets_for
from functions.settings import Settings

# What the API needs in AWS (tests/infra check the template passes all of it): without the
# admin secret start/stop would be open to anyone, without the ECS names nothing starts, without
# the quotes function misses would need the Dhan secret here.
REQUIRED_ENV = {"handler": (*LAMBDA_REDIS_ENV, "QUOTE_FUNCTION_NAME", "ADMIN_SECRET_ARN",
                            "WS_TOKEN_SECRET_ARN", "STREAMER_CLUSTER", "STREAMER_SERVICE")}


def read_settings(environ: Mapping[str, str] | None = None) -> Settings:
    return Settings.from_env(environ)


@dataclass(frozen=True, slots=True)
class ApiWiring:
    settings: Settings
    metrics: ApiMetrics
    secrets: SecretsCache | None
    redis: Redis
    deps: ApiDeps
    app: FastAPI
    asgi: Mangum
    router: LambdaRouter
    handler: LambdaHandler


def build(settings: Settings | None = None) -> ApiWiring:
    settings = settings or read_settings()
    metrics = new_metrics(settings.metrics_namespace)
    secrets = secrets_for(settings)
    redis = connect_redis(settings, secrets=secrets)
    deps = ApiDeps.for_settings(settings, redis=redis, metrics=metrics, secrets=secrets)
    app = create_app(deps)
    asgi = Mangum(app, lifespan="off")
    router = LambdaRouter(deps=deps, asgi=asgi)

    # The correlation id (API Gateway's request id) is set by the router and the app's
    # middleware; one EMF document per invocation.
    @logger.inject_lambda_context
    @flushes_metrics(metrics)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return router(event, context)

    return ApiWiring(settings=settings, metrics=metrics, secrets=secrets, redis=redis,
                     deps=deps, app=app, asgi=asgi, router=router, handler=handler)
