"""The relay bridge's settings, read once from the environment.

| variable | default | meaning |
|---|---|---|
| REDIS_URL, REDIS_AUTH_TOKEN / REDIS_AUTH_SECRET_ARN, ... | | `core.redis_client` |
| FANOUT_FUNCTION_NAME | (required) | the fan-out Lambda invoked once per active shard |
| WS_POST_BUDGET_PER_SECOND | 5000 | PostToConnection rate the window keeps under |
| WS_WINDOW_MIN_MS / WS_WINDOW_MAX_MS | 250 / 2000 | bounds of the adaptive window |
| RELAY_EMF_METRICS | true | one CloudWatch EMF line per heartbeat on stdout (off locally) |
| LIVENESS_FILE | /tmp/relay.alive | touched by each heartbeat (the container health check) |
The heartbeat's contents, metrics and liveness rule are in `relay.heartbeat`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from core.config import Env
from core.errors import ConfigError
from core.liveness import LIVENESS_FILE_ENV
from core.redis_client import RedisSettings
from relay.heartbeat import DEFAULT_LIVENESS_FILE

DEFAULT_BUDGET_PER_SECOND = 5000.0

# A pub/sub reader waits for messages with its own timeout; commands may take a while on a
# busy cache, connecting may not.
BRIDGE_REDIS = RedisSettings(socket_timeout=10.0, connect_timeout=3.0, retries=1)


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    redis: RedisSettings = field(default_factory=lambda: BRIDGE_REDIS)
    fanout_function_name: str = ""
    budget_per_second: float = DEFAULT_BUDGET_PER_SECOND
    min_window: float = 0.25
    max_window: float = 2.0
    emit_metrics: bool = True
    liveness_file: str = DEFAULT_LIVENESS_FILE

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BridgeSettings:
        env = Env(environ)
        settings = cls(
            redis=RedisSettings.from_env(env, socket_timeout=BRIDGE_REDIS.socket_timeout,
                                         connect_timeout=BRIDGE_REDIS.connect_timeout,
                                         retries=BRIDGE_REDIS.retries),
            fanout_function_name=env.text("FANOUT_FUNCTION_NAME"),
            budget_per_second=env.number("WS_POST_BUDGET_PER_SECOND",
                                         DEFAULT_BUDGET_PER_SECOND, minimum=1.0),
            min_window=env.integer("WS_WINDOW_MIN_MS", 250, minimum=10) / 1000,
            max_window=env.integer("WS_WINDOW_MAX_MS", 2000, minimum=10) / 1000,
            emit_metrics=env.flag("RELAY_EMF_METRICS", True),
            liveness_file=env.text(LIVENESS_FILE_ENV, DEFAULT_LIVENESS_FILE),
        )
        if settings.max_window < settings.min_window:
            raise ConfigError("WS_WINDOW_MAX_MS must be >= WS_WINDOW_MIN_MS")
        return settings
