"""What `ltp-local` is asked to run, and the environment each deployable gets from it.

Pure: the feed choice and the environments (shaped like the ones the CDK template gives each
deployable) are functions of the options, so tests check them without starting anything, and
`stack` only starts the parts with what is decided here.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.instrument_master import SAMPLE_PATH, open_source
from core.instrument_master import parse_scrip_master as _parse
from core.instruments import InstrumentKey

SIM_CLIENT_ID = "1000000001"  # ltp-sim's defaults, for --feed-url pointing at one
SIM_TOKEN = "sim-token"
STREAM_NAME = "ltp-local"
STREAM_REFRESH_SECONDS = 20 * 60  # websocket_stream:* lives 1 h unless started again
# One process runs every shard's fan-out here: shards exist to spread Lambda invocations, and
# in one process they only multiply the per-window work (claim, encoding) by their number
# (bench_e2e_ws at 1,000 clients: p99 301 ms with 1 shard, 440 ms with 16). Posts into the
# in-process gateway never block, so the fan-out needs no thread pool either.
LOCAL_SHARDS = 1
LOCAL_FANOUT_WORKERS = 1

# What the parts import when they start; checked first, so a half-installed environment is
# named at once rather than after Redis and the feed are already up.
RUNTIME_MODULES = ("redis", "websockets", "orjson", "fastapi", "mangum", "uvicorn", "boto3",
                   "aws_lambda_powertools")


class StartupError(Exception):
    """Something the user can fix (a port in use, no Redis); the message says what."""


@dataclass
class StackOptions:
    host: str = "127.0.0.1"
    port: int = 8000
    ws_port: int | None = None  # default: port + 1 (0 when port is 0)
    redis_url: str | None = None
    feed_url: str | None = None
    use_simulator: bool = False  # even when DhanHQ credentials are in the environment
    rate: float = 100.0
    keys: list[InstrumentKey] | None = None
    instruments: str = str(SAMPLE_PATH)
    seed: int = 1
    environ: Mapping[str, str] = field(default_factory=dict)
    page_options: dict[str, Any] = field(default_factory=dict)
    bridge_min_window: float = 0.25


@dataclass(frozen=True)
class FeedChoice:
    kind: str  # "simulator", "given" or "dhan"
    url: str
    client_id: str
    access_token: str
    rest_base_url: str | None


def check_dependencies() -> None:
    """Raises ModuleNotFoundError naming the first runtime package that cannot be imported."""
    import importlib

    for name in RUNTIME_MODULES:
        importlib.import_module(name)


def sample_keys() -> list[InstrumentKey]:
    with open_source(SAMPLE_PATH) as lines:
        return [i.key for i in _parse(lines)]


def choose_feed(options: StackOptions) -> FeedChoice:
    """--feed-url if given, else DhanHQ when its credentials are set (unless --simulator), else
    the simulator (its URL is known once it listens)."""
    env = options.environ
    client_id = env.get("DHAN_CLIENT_ID", "").strip()
    token = env.get("DHAN_ACCESS_TOKEN", "").strip()
    rest = env.get("DHAN_API_BASE_URL", "").strip() or None
    if options.feed_url:
        return FeedChoice("given", options.feed_url, client_id or SIM_CLIENT_ID,
                          token or SIM_TOKEN, rest)
    if client_id and token and not options.use_simulator:
        from core.config import DEFAULT_API_BASE_URL, DEFAULT_FEED_URL

        url = env.get("DHAN_FEED_URL", "").strip() or DEFAULT_FEED_URL
        return FeedChoice("dhan", url, client_id, token, rest or DEFAULT_API_BASE_URL)
    return FeedChoice("simulator", "", SIM_CLIENT_ID, "sim-" + secrets.token_hex(8), None)


def redis_env(url: str, password: str) -> dict[str, str]:
    """REDIS_URL and, for a server started here, REDIS_AUTH_TOKEN: what ECS gives the
    containers (the Lambdas get the token's secret ARN instead; same client factory)."""
    env = {"REDIS_URL": url}
    if password:
        env["REDIS_AUTH_TOKEN"] = password
    return env


def functions_env(environ: Mapping[str, str], feed: FeedChoice, *, ws_secret: str,
                  redis: Mapping[str, str]) -> dict[str, str]:
    """The Lambdas' environment: the user's, without what only makes sense in AWS."""
    env = {k: v for k, v in environ.items()
           if not k.endswith("_ARN") and k not in ("STREAMER_CLUSTER", "STREAMER_SERVICE",
                                                   "REDIS_AUTH_TOKEN")}
    env.update({"DHAN_CLIENT_ID": feed.client_id,
                "DHAN_ACCESS_TOKEN": feed.access_token,
                "WS_TOKEN_SECRET": ws_secret,
                "WS_SHARDS": str(LOCAL_SHARDS), "FANOUT_MAX_WORKERS": str(LOCAL_FANOUT_WORKERS),
                **redis})
    if feed.rest_base_url:
        env["DHAN_API_BASE_URL"] = feed.rest_base_url
    return env


def bridge_env(redis: Mapping[str, str], *, min_window: float) -> dict[str, str]:
    window_ms = round(min_window * 1000)
    return {**redis, "WS_WINDOW_MIN_MS": str(window_ms),
            "WS_WINDOW_MAX_MS": str(max(window_ms, 2000)), "RELAY_EMF_METRICS": "false"}


def streamer_env(environ: Mapping[str, str], feed: FeedChoice, *,
                 redis: Mapping[str, str]) -> dict[str, str]:
    """The streamer container's environment, pointed at the chosen feed and never stopping
    itself (the stack stops it)."""
    env = {k: v for k, v in environ.items()
           if not k.endswith("_ARN") and k != "REDIS_AUTH_TOKEN"}
    env.update({**redis, "DHAN_FEED_URL": feed.url,
                "DHAN_CLIENT_ID": feed.client_id,
                "DHAN_ACCESS_TOKEN": feed.access_token,
                "STREAMER_AUTO_STOP": "false", "STREAMER_EMF_METRICS": "false"})
    if feed.kind == "simulator":
        env["STREAMER_ALWAYS_OPEN"] = "true"  # the simulator trades around the clock
    return env
