"""The HTTP API (FastAPI on Lambda through Mangum, API Gateway HTTP API payload 2.0).

Entry points: `functions.api.handler` (the Lambda handler) and `functions.api.app` (the ASGI
app, also served by uvicorn locally: `uvicorn functions.api:app`). Both are built on first
access from `functions.api.entry`, so that importing a submodule (`functions.api.keys`, ...)
never reads the environment or opens anything.

Routes: GET|POST /api/v1/current_prices, POST /screeners/ltp/start, POST /screeners/ltp/stop,
GET /api/v1/health/market_stream, plus /docs and /openapi.json.
"""

from __future__ import annotations

from typing import Any

_ENTRY_NAMES = {
    "app", "handler", "lambda_router", "asgi_handler", "settings", "redis_client", "metrics",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _ENTRY_NAMES:
        from functions.api import entry

        return getattr(entry, name)
    raise AttributeError(f"module 'functions.api' has no attribute {name!r}")
