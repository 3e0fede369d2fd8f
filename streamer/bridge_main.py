"""`python -m streamer.bridge_main`: the relay bridge as a process (AWS: beside the streamer).

| variable | default | meaning |
|---|---|---|
| REDIS_URL | redis://127.0.0.1:6379/0 | the cache and its `live_ltp_updates` channel |
| FANOUT_FUNCTION_NAME | (required) | the fan-out Lambda invoked once per active shard |
| WS_POST_BUDGET_PER_SECOND | 5000 | PostToConnection rate the window keeps under |
| WS_WINDOW_MIN_MS / WS_WINDOW_MAX_MS | 250 / 2000 | bounds of the adaptive window |
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis

from core.config import DEFAULT_REDIS_URL, Env
from core.errors import ConfigError
from core.runtime import tune_gc
from streamer.bridge import DEFAULT_BUDGET_PER_SECOND, LambdaInvoker, RelayBridge

log = logging.getLogger("streamer.bridge")


@dataclass(frozen=True, slots=True)
class BridgeSettings:
    redis_url: str = DEFAULT_REDIS_URL
    fanout_function_name: str = ""
    budget_per_second: float = DEFAULT_BUDGET_PER_SECOND
    min_window: float = 0.25
    max_window: float = 2.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> BridgeSettings:
        env = Env(environ)
        settings = cls(
            redis_url=env.text("REDIS_URL", DEFAULT_REDIS_URL),
            fanout_function_name=env.text("FANOUT_FUNCTION_NAME"),
            budget_per_second=env.number("WS_POST_BUDGET_PER_SECOND",
                                         DEFAULT_BUDGET_PER_SECOND, minimum=1.0),
            min_window=env.integer("WS_WINDOW_MIN_MS", 250, minimum=10) / 1000,
            max_window=env.integer("WS_WINDOW_MAX_MS", 2000, minimum=10) / 1000,
        )
        if settings.max_window < settings.min_window:
            raise ConfigError("WS_WINDOW_MAX_MS must be >= WS_WINDOW_MIN_MS")
        return settings


async def main(settings: BridgeSettings) -> None:
    if not settings.fanout_function_name:
        raise ConfigError("FANOUT_FUNCTION_NAME must name the fan-out Lambda")
    import boto3

    invoker = LambdaInvoker(lambda_client=boto3.client("lambda"),
                            function_name=settings.fanout_function_name)
    async with aioredis.Redis.from_url(settings.redis_url, health_check_interval=15) as redis:
        bridge = RelayBridge(redis=redis, invoker=invoker,
                             budget_per_second=settings.budget_per_second,
                             min_window=settings.min_window, max_window=settings.max_window)
        task = asyncio.create_task(bridge.run())
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    tune_gc()
    asyncio.run(main(BridgeSettings.from_env()))
