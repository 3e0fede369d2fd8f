"""Builds the real clients of the WebSocket handlers from the environment (entry points only)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import redis

from functions.registry import ConnectionRegistry
from functions.secrets import SecretsCache, resolve_ws_token_secret
from functions.settings import Settings
from functions.ws.app import Event, WsApp
from functions.ws.management import ManagementApi, management_client
from functions.ws.settings import RealtimeSettings


def redis_client(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_connect_timeout,
        health_check_interval=30,
    )


def callback_url(settings: Settings, event: Event) -> str:
    """WEBSOCKET_CALLBACK_URL when set (custom domains need it), else the event's own API."""
    if settings.websocket_callback_url:
        return settings.websocket_callback_url
    context = event.get("requestContext") or {}
    return f"https://{context.get('domainName')}/{context.get('stage')}"


def management_for_events(
    settings: Settings, *, pool: int = 10
) -> Callable[[Event], ManagementApi]:
    clients: dict[str, ManagementApi] = {}
    lock = threading.Lock()

    def pick(event: Event) -> ManagementApi:
        url = callback_url(settings, event)
        with lock:
            if url not in clients:
                clients[url] = management_client(url, max_pool_connections=pool)
            return clients[url]

    return pick


def token_secret_reader(settings: Settings) -> Callable[[], str]:
    secrets = None
    if settings.ws_token_secret_arn:
        import boto3

        secrets = SecretsCache(client_factory=lambda: boto3.client("secretsmanager"),
                               ttl_seconds=settings.secrets_cache_seconds)

    def read() -> str:
        return resolve_ws_token_secret(settings, secrets=secrets).value

    return read


def build_app(settings: Settings | None = None,
              realtime: RealtimeSettings | None = None) -> WsApp:
    settings = settings or Settings.from_env()
    realtime = realtime or RealtimeSettings.from_env()
    client = redis_client(settings)
    return WsApp(
        registry=ConnectionRegistry(redis=client, shards=realtime.shards,
                                    max_keys=realtime.max_keys),
        redis=client,
        management=management_for_events(settings),
        token_secret=token_secret_reader(settings),
        max_message_bytes=realtime.max_client_message_bytes,
    )
