"""The one HTTP origin of the local run: the page, its `config.json`, and the HTTP API.

- `/config.json`: written per request (AWS: a file CDK's web construct uploads). It names the
  HTTP API (same origin here), the WebSocket API (the local API Gateway, on the host name the
  browser used), the watchlist, and, when the WebSocket API checks tokens, a freshly minted
  `wsToken` (the page re-reads config.json before each reconnect, so it never holds an expired
  one).
- API paths (`/api/...`, `/screeners/...`, `/docs`, `/openapi.json`): through `HttpApiProxy`,
  i.e. as HTTP API events into the Mangum handler, as in AWS.
- anything else: the static files of `web/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

WEB_DIR = Path(__file__).resolve().parents[2] / "web"
API_PREFIXES = ("/api/", "/screeners/", "/docs", "/openapi.json", "/redoc")


@dataclass(frozen=True)
class PageConfig:
    ws_port: int
    ws_stage: str
    watchlist: list[dict[str, str]]
    watchlist_name: str = ""
    mint_token: Callable[[], str] | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def render(self, host: str) -> dict[str, Any]:
        config: dict[str, Any] = {
            "apiUrl": "",
            "wsUrl": f"ws://{_bracket(host)}:{self.ws_port}/{self.ws_stage}",
            "watchlist": self.watchlist,
            "watchlistName": self.watchlist_name,
        }
        if self.mint_token is not None:
            config["wsToken"] = self.mint_token()
        if self.options:
            config["options"] = self.options
        return config


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class LocalSite:
    def __init__(self, *, api: ASGIApp, config: Callable[[], PageConfig],
                 web_dir: Path = WEB_DIR) -> None:
        self.api = api
        self.config = config
        self.static = StaticFiles(directory=web_dir, html=True)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return  # no lifespan or WebSocket here (uvicorn runs with lifespan="off")
        path: str = scope["path"]
        if path == "/config.json":
            request = Request(scope)
            host = request.url.hostname or "127.0.0.1"
            body = orjson.dumps(self.config().render(host))
            response = Response(body, media_type="application/json",
                                headers={"Cache-Control": "no-store"})
            await response(scope, receive, send)
        elif path.startswith(API_PREFIXES):
            await self.api(scope, receive, send)
        else:
            try:
                await self.static(scope, receive, send)
            except HTTPException as exc:  # StaticFiles signals 404/405 by raising
                answer = PlainTextResponse(exc.detail, status_code=exc.status_code,
                                           headers=exc.headers)
                await answer(scope, receive, send)
