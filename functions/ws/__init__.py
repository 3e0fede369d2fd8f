"""Lambda entry points of the WebSocket API (CDK handler strings `functions.ws.<route>`).

Each is one line over `WsApp`, built once per container from the environment (clients at
module scope are reused across warm invocations).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from functions.ws.app import Event, WsApp


@cache
def ws_app() -> WsApp:
    from functions.ws.wiring import build_app

    return build_app()


def authorize(event: Event, context: Any = None) -> dict[str, Any]:
    return ws_app().authorize(event)


def connect(event: Event, context: Any = None) -> dict[str, Any]:
    return ws_app().connect(event)


def disconnect(event: Event, context: Any = None) -> dict[str, Any]:
    return ws_app().disconnect(event)


def message(event: Event, context: Any = None) -> dict[str, Any]:
    return ws_app().message(event)


__all__ = ["WsApp", "ws_app", "authorize", "connect", "disconnect", "message"]
