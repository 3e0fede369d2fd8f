"""`python -m streamer`: DhanHQ feed -> Redis. Flags override the environment (see settings).

Exit codes: 0 stopped (signal, market close, or stopped while waiting for the lease),
1 the lease was lost or an unexpected error, 2 bad configuration or missing credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.errors import ConfigError
from core.runtime import tune_gc
from streamer.errors import CredentialsError
from streamer.logs import Redactor, configure_logging
from streamer.service import Streamer
from streamer.settings import CredentialSource, SecretsClient, Settings, load_settings

log = logging.getLogger("streamer")

HARD_DEADLINE_SECONDS = 9.5  # SIGTERM to exit, whatever happens (ECS kills at 30 s; we say 10)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m streamer", description=__doc__)
    parser.add_argument("--keys", help="extra keys, comma-separated (overrides STREAM_KEYS)")
    parser.add_argument("--mode", help="ticker, quote or full (overrides DHANHQ_WS_MODE)")
    parser.add_argument("--feed-url", help="feed WebSocket URL (overrides DHAN_FEED_URL)")
    parser.add_argument("--redis-url", help="Redis URL (overrides REDIS_URL)")
    parser.add_argument("--no-auto-stop", action="store_true",
                        help="keep running after the market close")
    parser.add_argument("--instance-id", help="lease owner / heartbeat id")
    return parser.parse_args(argv)


def redis_client(settings: Settings) -> Redis:
    # Fail fast and let our own loops (sink backoff, key source, lease) do the retrying.
    options: dict[str, Any] = {}
    if settings.redis_password:  # ElastiCache AUTH token given apart from the URL
        options["password"] = settings.redis_password.value
    return Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=10,
                          health_check_interval=15, retry=Retry(NoBackoff(), 1), **options)


def secrets_client() -> SecretsClient:
    import boto3

    client: SecretsClient = boto3.client("secretsmanager")
    return client


async def serve(settings: Settings, credentials: CredentialSource, redactor: Redactor) -> int:
    redis = redis_client(settings)
    streamer = Streamer(settings, redis=redis, credentials=credentials,
                        on_credentials=lambda c: redactor.add(c.access_token.value))
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if streamer.stopping:
            return
        # The graceful path has its own timeout; this is the backstop if the loop is wedged.
        timer = threading.Timer(HARD_DEADLINE_SECONDS, os._exit, args=(1,))
        timer.daemon = True
        timer.start()
        streamer.request_stop(f"{name} received")

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    try:
        return await streamer.run()
    finally:
        await redis.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings(
            keys=args.keys, mode=args.mode, feed_url=args.feed_url, redis_url=args.redis_url,
            auto_stop=False if args.no_auto_stop else None, instance_id=args.instance_id,
        )  # fmt: skip
        credentials = CredentialSource(
            secret_arn=settings.secret_arn,
            secrets_client=secrets_client() if settings.secret_arn else None,
        )
        first = credentials.read()
    except (ConfigError, CredentialsError) as exc:
        print(f"streamer: {exc}", file=sys.stderr)
        return 2
    redactor = configure_logging(settings.log_level)
    redactor.add(first.access_token.value)
    redactor.add(settings.redis_password.value)
    tune_gc()
    try:
        return asyncio.run(serve(settings, credentials, redactor))
    except CredentialsError as exc:
        log.error("%s", exc)
        return 2
    except Exception:
        log.exception("streamer failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
