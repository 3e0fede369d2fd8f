"""The WebSocket handlers' wiring: their clients, built from their settings (entry points and
the local run call `build_app`; nothing else builds these clients)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

import redis

from core.redis_client import LAMBDA_REDIS_ENV, sync_client
from functions.secrets import SecretsCache, resolve_ws_token_secret, secrets_for
from functions.settings import Settings
from functions.ws.app import Event, WsApp
from functions.ws.management import ManagementApi, management_client
from functions.ws.settings import RealtimeSettings
from realtime.registry import ConnectionLimits, ConnectionRegistry, MessageRate

ManagementFor = Callable[[Event], ManagementApi]

# What each handler needs in AWS (tests/infra check the template passes all of it); the
# handlers and the fan-out must agree on WS_SHARDS.
_REDIS_HANDLER = (*LAMBDA_REDIS_ENV, "WS_SHARDS")
REQUIRED_ENV = {"authorize": ("WS_TOKEN_SECRET_ARN",), "connect": _REDIS_HANDLER,
                "disconnect": _REDIS_HANDLER, "message": _REDIS_HANDLER}


def read_settings(environ: Mapping[str, str] | None = None) -> tuple[Settings, RealtimeSettings]:
    return Settings.from_env(environ), RealtimeSettings.from_env(environ)


def redis_client(settings: Settings, *, secrets: SecretsCache | None,
                 max_connections: int | None = None) -> redis.Redis:
    return sync_client(settings.redis, secrets=secrets, max_connections=max_connections)


def callback_url(settings: Settings, event: Event) -> str:
    """WEBSOCKET_CALLBACK_URL when set (custom domains need it), else the event's own API."""
    if settings.websocket_callback_url:
        return settings.websocket_callback_url
    context = event.get("requestContext") or {}
    return f"https://{context.get('domainName')}/{context.get('stage')}"


def management_for_events(settings: Settings, *, pool: int = 10) -> ManagementFor:
    clients: dict[str, ManagementApi] = {}
    lock = threading.Lock()

    def pick(event: Event) -> ManagementApi:
        url = callback_url(settings, event)
        with lock:
            if url not in clients:
                clients[url] = management_client(url, max_pool_connections=pool)
            return clients[url]

    return pick


def token_secret_reader(settings: Settings, *,
                        secrets: SecretsCache | None) -> Callable[[], str]:
    def read() -> str:
        return resolve_ws_token_secret(settings, secrets=secrets).value

    return read


def connection_limits(realtime: RealtimeSettings) -> ConnectionLimits:
    return ConnectionLimits(total=realtime.max_connections or None,
                            per_source_ip=realtime.max_connections_per_ip or None)


def message_rate(realtime: RealtimeSettings) -> MessageRate | None:
    if not realtime.message_rate:
        return None
    return MessageRate(per_second=realtime.message_rate, burst=realtime.message_burst,
                       strikes=realtime.abuse_strikes)


def build_app(
    settings: Settings | None = None,
    realtime: RealtimeSettings | None = None,
    *,
    secrets: SecretsCache | None = None,
    management: ManagementFor | None = None,
) -> WsApp:
    """`management` stands in for API Gateway's `@connections` (the local run's gateway);
    by default each event's own API is posted to (or WEBSOCKET_CALLBACK_URL)."""
    if settings is None or realtime is None:
        settings, realtime = read_settings()
    if secrets is None:
        secrets = secrets_for(settings)
    client = redis_client(settings, secrets=secrets)
    return WsApp(
        registry=ConnectionRegistry(redis=client, shards=realtime.shards,
                                    max_keys=realtime.max_keys),
        redis=client,
        management=management or management_for_events(settings),
        token_secret=token_secret_reader(settings, secrets=secrets),
        max_message_bytes=realtime.max_client_message_bytes,
        connection_limits=connection_limits(realtime),
        message_rate=message_rate(realtime),
        cool_off_seconds=realtime.abuse_cool_off_seconds,
    )
