"""Builds the fan-out's clients and metrics from the environment (the entry point only)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools import Metrics
from aws_lambda_powertools.metrics import MetricUnit

from core.errors import ConfigError
from core.redis_client import LAMBDA_REDIS_ENV
from functions.fanout.runner import Fanout, FanoutResult
from functions.secrets import SecretsCache, secrets_for
from functions.settings import Settings
from functions.ws.management import ManagementApi, management_client
from functions.ws.settings import RealtimeSettings
from functions.ws.wiring import redis_client
from realtime.registry import ConnectionRegistry

# What the fan-out needs in AWS (tests/infra check the template passes all of it).
REQUIRED_ENV = {"handler": (*LAMBDA_REDIS_ENV, "WS_SHARDS", "WEBSOCKET_CALLBACK_URL")}

Emit = Callable[[FanoutResult, Mapping[str, Any], Any], dict[str, Any]]


def metrics_emitter(metrics: Metrics) -> Emit:
    def emit(result: FanoutResult, event: Mapping[str, Any], context: Any) -> dict[str, Any]:
        metrics.add_metric(name="Posts", unit=MetricUnit.Count, value=result.posts)
        metrics.add_metric(name="PostedBytes", unit=MetricUnit.Bytes, value=result.bytes)
        metrics.add_metric(name="Gone", unit=MetricUnit.Count, value=result.gone)
        metrics.add_metric(name="Throttled", unit=MetricUnit.Count, value=result.throttled)
        metrics.add_metric(name="Deferred", unit=MetricUnit.Count, value=result.deferred)
        metrics.add_metric(name="FailedPosts", unit=MetricUnit.Count, value=result.failed)
        metrics.add_metric(name="Unsent", unit=MetricUnit.Count, value=result.unsent)
        metrics.add_metric(name="Recipients", unit=MetricUnit.Count, value=result.recipients)
        metrics.add_metric(name="FanoutDuration", unit=MetricUnit.Milliseconds,
                           value=result.duration * 1000)
        metrics.add_metadata(key="shard", value=result.shard)
        metrics.flush_metrics()
        return result.as_dict()

    return emit


def build_fanout(
    settings: Settings,
    realtime: RealtimeSettings,
    *,
    secrets: SecretsCache | None = None,
    management: ManagementApi | None = None,
) -> Fanout:
    """The fan-out from its settings; `management` stands in for `@connections` (the local
    run posts into its gateway in-process), else WEBSOCKET_CALLBACK_URL is posted to."""
    if management is None and not settings.websocket_callback_url:
        raise ConfigError("WEBSOCKET_CALLBACK_URL must name the @connections endpoint")
    if secrets is None:
        secrets = secrets_for(settings)
    client = redis_client(settings, secrets=secrets)
    if management is None:
        management = management_client(settings.websocket_callback_url,
                                       max_pool_connections=realtime.fanout_workers)
    return Fanout(
        registry=ConnectionRegistry(redis=client, shards=realtime.shards,
                                    max_keys=realtime.max_keys),
        management=management,
        max_workers=realtime.fanout_workers,
        max_message_bytes=realtime.fanout_max_message_bytes,
        retry_seconds=realtime.fanout_retry_seconds,
    )


def read_settings(environ: Mapping[str, str] | None = None) -> tuple[Settings, RealtimeSettings]:
    return Settings.from_env(environ), RealtimeSettings.from_env(environ)


def build() -> tuple[Fanout, Emit]:
    settings, realtime = read_settings()
    fanout = build_fanout(settings, realtime)
    metrics = Metrics(namespace=settings.metrics_namespace, service="fanout")
    return fanout, metrics_emitter(metrics)
