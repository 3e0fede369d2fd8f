"""`ltp-sim`: run the DhanHQ v2 feed simulator and the REST stand-in over one price book.

    ltp-sim --port 8765 --rest-port 8766 --rate 200 --packets-per-frame 1 --seed 1

Prints the URLs (and the environment a streamer or API needs to use them), then serves until
Ctrl-C or SIGTERM. Port 0 picks a free port. REST answers from the same price book the feed
walks, so a REST price is the feed's newest price for that instrument, and both judge tokens
by one `TokenAuthority`: `GET /v2/RenewToken` on REST kills the old token on the feed too.
`--jwt-token` mints a Dhan-shaped JWT (living `--token-lifetime` seconds) instead of the plain
`--token`, which never expires.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from local.dhan_sim.feed import FeedSimulator, SimConfig
from local.dhan_sim.prices import PriceBook
from local.dhan_sim.protocol import MODES
from local.dhan_sim.reference import load_reference
from local.dhan_sim.rest import RestStandIn
from local.dhan_sim.tokens import TOKEN_LIFETIME_SECONDS, TokenAuthority

DEFAULT_TOKEN = "sim-token"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ltp-sim", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="feed WebSocket port (0: free)")
    parser.add_argument("--rest-port", type=int, default=8766,
                        help="REST stand-in port (0: free, -1: no REST)")  # fmt: skip
    parser.add_argument("--rate", type=float, default=200.0,
                        help="price packets per second per connection (0: as fast as possible)")
    parser.add_argument("--packets-per-frame", type=int, default=1)
    parser.add_argument("--mode", choices=("subscribed", *MODES), default="subscribed",
                        help="stream each instrument in its subscribed mode (default) "
                             "or force one packet type")  # fmt: skip
    parser.add_argument("--client-id", default="1000000001")
    parser.add_argument("--token", default=None,
                        help=f"a plain token that never expires (default {DEFAULT_TOKEN})")
    parser.add_argument("--jwt-token", action="store_true",
                        help="mint a JWT at start (expires, renewable) instead of --token")
    parser.add_argument("--token-lifetime", type=float, default=TOKEN_LIFETIME_SECONDS,
                        metavar="SECONDS", help="lifetime of minted and renewed tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-ticks", type=int, default=None,
                        help="stop streaming after N price packets per connection")  # fmt: skip
    parser.add_argument("--no-rate-limit", action="store_true",
                        help="REST: allow more than 1 call per second")  # fmt: skip
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    if args.packets_per_frame < 1:
        parser.error("--packets-per-frame must be at least 1")
    if args.rate < 0:
        parser.error("--rate must be >= 0")
    if args.token_lifetime <= 0:
        parser.error("--token-lifetime must be positive")
    if args.jwt_token and args.token is not None:
        parser.error("--jwt-token mints its own token; leave out --token")
    if not args.jwt_token and args.token is None:
        args.token = DEFAULT_TOKEN
    return args


def token_authority(args: argparse.Namespace) -> TokenAuthority:
    """The one authority feed and REST share (`token=None` mints a JWT)."""
    return TokenAuthority(args.client_id, None if args.jwt_token else args.token,
                          lifetime_seconds=args.token_lifetime)  # fmt: skip


async def serve(args: argparse.Namespace) -> None:
    book = PriceBook(seed=args.seed, reference=load_reference())
    tokens = token_authority(args)
    config = SimConfig(
        host=args.host, port=args.port, client_id=args.client_id, access_token=tokens.current,
        rate=args.rate, packets_per_frame=args.packets_per_frame, seed=args.seed,
        mode_default=None if args.mode == "subscribed" else args.mode,
        max_ticks=args.max_ticks,
    )  # fmt: skip
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    rest = None
    if args.rest_port >= 0:
        rest = RestStandIn(book, host=args.host, port=args.rest_port, tokens=tokens,
                           enforce_rate_limit=not args.no_rate_limit).start()  # fmt: skip
    try:
        async with FeedSimulator(config, prices=book, tokens=tokens) as sim:
            print(f"feed: {sim.url}  (add ?version=2&token=...&clientId=...&authType=2)")
            env = [f"DHAN_FEED_URL={sim.url}", f"DHAN_CLIENT_ID={args.client_id}",
                   f"DHAN_ACCESS_TOKEN={tokens.current}"]  # fmt: skip
            if rest is not None:
                print(f"rest: {rest.base_url}  (POST /marketfeed/ltp|ohlc|quote, "
                      "GET /RenewToken)")  # fmt: skip
                env.append(f"DHAN_API_BASE_URL={rest.base_url}")
            print("env: " + " ".join(env))
            print("ready; Ctrl-C to stop", flush=True)
            await stop.wait()
            print(f"stopping: {sim.ticks_sent} ticks sent, {sim.handshakes} handshakes",
                  flush=True)  # fmt: skip
    finally:
        if rest is not None:
            rest.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(serve(args))
    except OSError as exc:  # e.g. the port is taken
        print(f"ltp-sim: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
