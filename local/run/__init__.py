"""`ltp-local` (`./ltp run`, `python -m local.run`): the whole system on this machine.

Starts Redis (REDIS_URL / --redis-url if one answers, else a private `redis-server`, else an
embedded one), the DhanHQ v2 simulator (or the real DhanHQ feed when DHAN_CLIENT_ID and
DHAN_ACCESS_TOKEN are set, or any v2 feed given with --feed-url), the streamer, the relay
bridge and fan-out, a local API Gateway (WebSocket + @connections) running the WebSocket
Lambda handlers, and the page with the HTTP API (through its Mangum handler) on one origin.
Registers the watchlist as a stream and prints the URL to open. Ctrl-C stops everything.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence

from core.runtime import tune_gc

DESCRIPTION = __doc__.split("\n\n")[0] if __doc__ else ""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ltp-local", description=DESCRIPTION)
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8000,
                        help="page + HTTP API port; the WebSocket API takes the next one")
    parser.add_argument("--ws-port", type=int, default=None, help="WebSocket API port")
    parser.add_argument("--redis-url", default=None,
                        help="a Redis to use (default REDIS_URL, else one is started)")
    parser.add_argument("--feed-url", default=None,
                        help="a DhanHQ v2 feed to use instead of the simulator (e.g. ltp-sim's)")
    parser.add_argument("--simulator", action="store_true",
                        help="use the simulator even when DhanHQ credentials are set")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="simulator price ticks per second (default 100)")
    parser.add_argument("--keys", default=None,
                        help="watchlist, comma-separated keys (default: the NIFTY 50 sample)")
    parser.add_argument("--instruments", default=None,
                        help="scrip-master CSV path or URL to load for symbols "
                        "(default: data/nse_sample.csv)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log what every part does")
    args = parser.parse_args(argv)
    for name in ("port", "ws_port"):
        value = getattr(args, name)
        if value is not None and not 0 <= value <= 65535:
            parser.error(f"--{name.replace('_', '-')} must be a port number (0-65535)")
    if args.rate <= 0:
        parser.error("--rate must be > 0")
    return args


def _missing_dependency(exc: ModuleNotFoundError) -> str:
    return (f"ltp-local: the Python package {exc.name!r} is missing; `./ltp run` installs "
            "everything, or run `pip install -e '.[dev]'` in this checkout")


async def serve(args: argparse.Namespace, *, ready: Callable[[object], None] | None = None,
                stop: asyncio.Event | None = None) -> int:
    from core.errors import InvalidKeyError
    from core.instruments import parse_keys, split_keys
    from local.run.stack import LocalStack, StackOptions, StartupError

    try:
        keys = parse_keys(split_keys(args.keys)) if args.keys else None
    except InvalidKeyError as exc:
        print(f"ltp-local: --keys: {exc}", file=sys.stderr)
        return 2
    options = StackOptions(
        host=args.host, port=args.port, ws_port=args.ws_port,
        redis_url=args.redis_url or os.environ.get("REDIS_URL", "").strip() or None,
        feed_url=args.feed_url, use_simulator=args.simulator, rate=args.rate, keys=keys,
        environ=dict(os.environ),
    )
    if args.instruments:
        options.instruments = args.instruments
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError, ValueError):
            pass  # not the main thread (tests): the caller sets `stop`
    try:
        async with LocalStack(options, say=lambda line: print(f"  {line}", flush=True)) as stack:
            print(f"\nOpen {stack.page_url}  (Ctrl-C to stop)\n", flush=True)
            if ready is not None:
                ready(stack)
            await stop.wait()
            print("ltp-local: stopping...", flush=True)
    except StartupError as exc:
        print(f"ltp-local: {exc}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:
        print(_missing_dependency(exc), file=sys.stderr)
        return 1
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(signum)
            except (NotImplementedError, RuntimeError, ValueError):
                pass
    print("ltp-local: stopped", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        # Lambda-style JSON request logs and EMF metric blobs would drown the console here.
        os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
        os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
    print("ltp-local: starting", flush=True)
    try:
        # Once the stack is up, what exists lives as long as the process (core.runtime).
        return asyncio.run(serve(args, ready=lambda stack: tune_gc()))
    except KeyboardInterrupt:  # a second Ctrl-C while stopping
        return 130
    except ModuleNotFoundError as exc:
        print(_missing_dependency(exc), file=sys.stderr)
        return 1


__all__ = ["main", "parse_args", "serve"]
