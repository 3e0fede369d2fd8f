"""The HTTP API's entry point, built once per execution environment when first imported.

Settings, the Redis client (reused across warm invocations), the FastAPI app, Mangum and the
Lambda router live at module scope here; `functions.api` exposes them lazily as
`functions.api.app` and `functions.api.handler`.
"""

from __future__ import annotations

from typing import Any

from mangum import Mangum

from functions.api.application import create_app
from functions.api.deps import ApiDeps, connect_redis
from functions.api.observability import flushes_metrics, logger, new_metrics
from functions.api.router import LambdaRouter
from functions.secrets import secrets_for
from functions.settings import Settings

settings = Settings.from_env()
metrics = new_metrics(settings.metrics_namespace)
secrets = secrets_for(settings)
redis_client = connect_redis(settings, secrets=secrets)
deps = ApiDeps.for_settings(settings, redis=redis_client, metrics=metrics, secrets=secrets)
app = create_app(deps)
asgi_handler = Mangum(app, lifespan="off")
lambda_router = LambdaRouter(deps=deps, asgi=asgi_handler)


# The correlation id (API Gateway's request id) is set by the router and by the app's middleware.
@logger.inject_lambda_context
@flushes_metrics(metrics)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return lambda_router(event, context)
