"""The HTTP API's entry point, built once per execution environment when first imported.

Everything (settings, the Redis client reused across warm invocations, the FastAPI app, Mangum,
the Lambda router) comes from `functions.api.wiring.build`; `functions.api` exposes these names
lazily as `functions.api.app` and `functions.api.handler`.
"""

from __future__ import annotations

from functions.api.wiring import build

wired = build()
settings = wired.settings
metrics = wired.metrics
secrets = wired.secrets
redis_client = wired.redis
deps = wired.deps
app = wired.app
asgi_handler = wired.asgi
lambda_router = wired.router
handler = wired.handler
