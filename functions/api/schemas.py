"""Pydantic models that describe the API in its OpenAPI document.

They document; they do not parse the hot path (see `functions.api.payloads` and
`functions.api.prices`, which work on bytes with orjson).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from functions.api.keys import MAX_POST_KEYS
from functions.streams import MAX_STREAM_KEYS

KEY_EXAMPLE = ["NSE_EQ:1333", "NSE_EQ:11536", "IDX_I:13"]
NAME_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"


class PricesRequest(BaseModel):
    keys: list[str] = Field(
        max_length=MAX_POST_KEYS,
        description=f"Instrument keys SEGMENT:SECURITY_ID, at most {MAX_POST_KEYS}; "
        "duplicates are folded.",
        examples=[KEY_EXAMPLE],
    )


class RestError(BaseModel):
    reason: str = Field(description="rate_limited, timeout, dhan_auth_error, ...")
    code: str | None = Field(description="DhanHQ's error code, e.g. DH-904 or 806")
    type: str | None = Field(description="DhanHQ's error type")
    message: str
    keys: int = Field(description="how many keys the failed call carried")
    segments: list[str]


class PricesResponse(BaseModel):
    prices: dict[str, float] = Field(description="price per instrument key")
    timestamp: str = Field(description="ISO-8601 UTC time of the answer")
    count: int = Field(description="number of prices returned")
    cached_count: int = Field(description="prices read from the cache")
    api_fetched_count: int = Field(description="prices fetched from DhanHQ REST")
    requested_count: int = Field(description="distinct keys asked for")
    missing: dict[str, str] = Field(
        description="keys without a price and why: not_found, rate_limited, timeout, "
        "dhan_auth_error, dhan_not_subscribed, dhan_error, dhan_not_configured"
    )
    errors: list[RestError] = Field(description="failures DhanHQ REST reported")


class ErrorResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    error: str = Field(description="machine-readable code, e.g. invalid_keys")
    message: str = Field(description="what went wrong and what to do about it")


class StartRequest(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, examples=["swing"])
    keys: list[str] = Field(min_length=1, max_length=MAX_STREAM_KEYS, examples=[KEY_EXAMPLE])
    mode: Literal["ticker", "quote", "full"] | None = Field(
        default=None, description="feed mode; DHANHQ_WS_MODE when omitted"
    )
    by: str | None = Field(default=None, max_length=128, description="who asks (free text)")


class StartResponse(BaseModel):
    name: str
    keys: int = Field(description="distinct keys of this stream")
    changed: bool = Field(description="false when the same stream was only refreshed")
    active_streams: int
    total_keys: int = Field(description="distinct keys of all streams together")
    streamer: Literal["started", "already_running", "not_managed"]


class StopRequest(BaseModel):
    name: str = Field(pattern=NAME_PATTERN, examples=["swing"])


class StopResponse(BaseModel):
    name: str
    stopped: bool = Field(description="false when no such stream was registered")
    remaining_streams: int
    total_keys: int
    streamer: Literal["stopped", "already_stopped", "still_needed", "not_managed"]


class WsTokenResponse(BaseModel):
    token: str | None = Field(description="pass as ?token= on the WebSocket URL; null when the "
                              "WebSocket API needs none")  # fmt: skip
    expires_in: int | None = Field(description="seconds the token stays valid")


class HealthResponse(BaseModel):
    model_config = ConfigDict(extra="allow")

    status: Literal["healthy", "degraded", "stale", "stopped"]
    reasons: list[str] = Field(description="why the status is not healthy; empty when healthy")
    heartbeat_age_seconds: float | None
    heartbeat: dict[str, Any] | None
    detail: str
    market_open: bool = Field(description="NSE session open now (IST, holidays skipped)")
    tick_age_seconds: float | None = Field(
        description="seconds since the newest tick: the heartbeat's figure plus its age")
    bridge: dict[str, Any] | None = Field(
        description="relay bridge heartbeat age and status; null when it has none")
    thresholds: dict[str, float]
    streams: dict[str, Any]
    websocket_connections: int | None
    streamer_service: dict[str, Any]
    instrument_master: dict[str, Any] = Field(
        description="the loaded scrip master (rows, loaded_at, source), or a note that none is")


def request_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """An `openapi_extra` request body for a route that reads its body itself."""
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {"application/json": {"schema": model.model_json_schema()}},
        }
    }


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "malformed JSON or wrong shape",
        401: "admin key missing or wrong",
        409: "the streams together would exceed 25,000 keys",
        413: "too many keys or body too large (the limit is in the message)",
        414: "query string too long; use POST",
        422: "invalid keys (each named), name or mode",
        503: "a dependency is down; retry after Retry-After seconds",
    }
    return {s: {"model": ErrorResponse, "description": text[s]} for s in statuses}
