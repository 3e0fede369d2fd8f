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

from core.errors import ConfigError, SecretError
from core.redis_client import check_auth
from core.runtime import tune_gc
from streamer.errors import CredentialsError
from streamer.logs import Redactor, configure_logging
from streamer.settings import Settings, load_settings
from streamer.wiring import StreamerClients, build_clients, build_streamer

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


async def serve(settings: Settings, clients: StreamerClients, redactor: Redactor) -> int:
    redis = clients.redis
    streamer = build_streamer(settings, clients,
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
        await check_auth(redis)
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
        clients = build_clients(settings)
        first = clients.credentials.read()
    except (ConfigError, CredentialsError, SecretError) as exc:
        print(f"streamer: {exc}", file=sys.stderr)
        return 2
    redactor = configure_logging(settings.log_level)
    redactor.add(first.access_token.value)
    redactor.add(settings.redis.auth_token.value)
    tune_gc()
    try:
        return asyncio.run(serve(settings, clients, redactor))
    except (CredentialsError, ConfigError) as exc:
        log.error("%s", exc)
        return 2
    except Exception:
        log.exception("streamer failed")
        return 1


if __name__ == "__main__":
    sys.exit(main())
