"""`python -m streamer.bridge_main`: the relay bridge as a process (AWS: beside the streamer).

| variable | default | meaning |
|---|---|---|
| REDIS_URL, REDIS_AUTH_TOKEN / REDIS_AUTH_SECRET_ARN, ... | | `core.redis_client` |
| FANOUT_FUNCTION_NAME | (required) | the fan-out Lambda invoked once per active shard |
| WS_POST_BUDGET_PER_SECOND | 5000 | PostToConnection rate the window keeps under |
| WS_WINDOW_MIN_MS / WS_WINDOW_MAX_MS | 250 / 2000 | bounds of the adaptive window |

Exit codes: 0 stopped by a signal, 2 bad configuration.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.config import Env
from core.errors import ConfigError, SecretError
from core.redis_client import CONTAINER_REDIS_ENV, RedisSettings, async_client, check_auth
from core.runtime import tune_gc
from core.secrets import SecretsManagerReader
from streamer.bridge import DEFAULT_BUDGET_PER_SECOND, Invoker, LambdaInvoker, RelayBridge

log = logging.getLogger("streamer.bridge")

REQUIRED_ENV = {"__main__": (*CONTAINER_REDIS_ENV, "FANOUT_FUNCTION_NAME")}

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
        )
        if settings.max_window < settings.min_window:
            raise ConfigError("WS_WINDOW_MAX_MS must be >= WS_WINDOW_MIN_MS")
        return settings


def read_settings(environ: Mapping[str, str] | None = None) -> BridgeSettings:
    return BridgeSettings.from_env(environ)


def build_bridge(settings: BridgeSettings, *, invoker: Invoker | None = None,
                 secrets_client: Any = None) -> RelayBridge:
    """The bridge and its clients. `invoker` stands in for Lambda's async invoke (the local
    run calls the fan-out in-process); by default boto3 invokes FANOUT_FUNCTION_NAME."""
    if invoker is None:
        if not settings.fanout_function_name:
            raise ConfigError("FANOUT_FUNCTION_NAME must name the fan-out Lambda")
        import boto3

        invoker = LambdaInvoker(lambda_client=boto3.client("lambda"),
                                function_name=settings.fanout_function_name)
    if secrets_client is None and settings.redis.auth_secret_arn:
        import boto3

        secrets_client = boto3.client("secretsmanager")
    reader = SecretsManagerReader(secrets_client) if secrets_client is not None else None
    return RelayBridge(redis=async_client(settings.redis, secrets=reader), invoker=invoker,
                       budget_per_second=settings.budget_per_second,
                       min_window=settings.min_window, max_window=settings.max_window)


async def serve(bridge: RelayBridge) -> None:
    try:
        await check_auth(bridge.redis)
    except ConfigError:
        await bridge.close()
        raise
    task = asyncio.create_task(bridge.run())
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    finally:
        await bridge.close()


def main(environ: Mapping[str, str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        bridge = build_bridge(BridgeSettings.from_env(environ))
    except (ConfigError, SecretError) as exc:
        print(f"bridge: {exc}", file=sys.stderr)
        return 2
    tune_gc()
    try:
        asyncio.run(serve(bridge))
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
