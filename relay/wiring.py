"""`python -m relay`: the relay bridge as a process (AWS: beside the streamer, same task).

Exit codes: 0 stopped by a signal, 2 bad configuration (settings in `relay.settings`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping
from typing import Any

from core.errors import ConfigError, SecretError
from core.redis_client import CONTAINER_REDIS_ENV, async_client, check_auth
from core.runtime import tune_gc
from core.secrets import SecretsManagerReader
from relay.bridge import RelayBridge
from relay.heartbeat import discard, emf_to_stdout
from relay.invoke import Invoker, LambdaInvoker, lambda_client
from relay.settings import BridgeSettings

log = logging.getLogger("relay")

REQUIRED_ENV = {"__main__": (*CONTAINER_REDIS_ENV, "FANOUT_FUNCTION_NAME")}


def read_settings(environ: Mapping[str, str] | None = None) -> BridgeSettings:
    return BridgeSettings.from_env(environ)


def build_bridge(settings: BridgeSettings, *, invoker: Invoker | None = None,
                 secrets_client: Any = None) -> RelayBridge:
    """The bridge and its clients. `invoker` stands in for Lambda's async invoke (the local
    run calls the fan-out in-process); by default boto3 invokes FANOUT_FUNCTION_NAME."""
    if invoker is None:
        if not settings.fanout_function_name:
            raise ConfigError("FANOUT_FUNCTION_NAME must name the fan-out Lambda")
        invoker = LambdaInvoker(lambda_client=lambda_client(),
                                function_name=settings.fanout_function_name)
    if secrets_client is None and settings.redis.auth_secret_arn:
        import boto3

        secrets_client = boto3.client("secretsmanager")
    reader = SecretsManagerReader(secrets_client) if secrets_client is not None else None
    return RelayBridge(redis=async_client(settings.redis, secrets=reader), invoker=invoker,
                       budget_per_second=settings.budget_per_second,
                       min_window=settings.min_window, max_window=settings.max_window,
                       emit=emf_to_stdout if settings.emit_metrics else discard,
                       liveness_file=settings.liveness_file)


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
