"""Deployment settings, read once from CDK context (`cdk.json` defaults, `-c ltp:name=value`).

Every value a deployer may want to change without editing code lives here; constructs receive
what they need as typed, keyword-only props. Values given with `-c` arrive as strings, so every
reader casts and validates, and a bad value fails the synth with the context key in the message.

| context key | default | meaning |
|---|---|---|
| ltp:region | ap-south-1 | AWS region (app.py only) |
| ltp:account | CDK_DEFAULT_ACCOUNT | AWS account (app.py only; unset = account-agnostic synth) |
| ltp:stage | prod | deployment name; the stack is `Ltp-<stage>` (app.py only) |
| ltp:maxAzs | 2 | availability zones of the VPC |
| ltp:natGateways | 1 | NAT gateways (egress for the feed, DhanHQ REST and @connections) |
| ltp:cacheNodeType | cache.t4g.micro | ElastiCache node type |
| ltp:cacheEngine | valkey | `valkey` or `redis` |
| ltp:cacheEngineVersion | 8.0 | engine version (cluster mode is always off) |
| ltp:cacheReplicas | 0 | read replicas (1+ enables automatic failover) |
| ltp:cacheMultiAz | false | Multi-AZ (needs cacheReplicas >= 1) |
| ltp:streamerCpu | 512 | Fargate task CPU units (streamer + bridge) |
| ltp:streamerMemoryMiB | 1024 | Fargate task memory |
| ltp:streamerStopTimeoutSeconds | 30 | SIGTERM -> SIGKILL grace of each container |
| ltp:wsMode | quote | DhanHQ feed mode of the streamer |
| ltp:streamKeys | sample | watchlist always carried: `KEY,KEY`, `sample` (NIFTY 50) or `none` |
| ltp:lambdaMemoryMiB | 512 | memory of the API, WebSocket and schedule functions |
| ltp:fanoutMemoryMiB | 1024 | memory of the fan-out function |
| ltp:fanoutTimeoutSeconds | 10 | fan-out timeout (one window's posts) |
| ltp:fanoutReservedConcurrency | 20 | reserved concurrency of the fan-out; 0 = none reserved |
| ltp:fanoutMaxWorkers | 32 | concurrent posts inside one fan-out invocation |
| ltp:postBudgetPerSecond | 5000 | PostToConnection budget the bridge sizes its window to |
| ltp:wsShards | 16 | connection shards (one fan-out invocation per shard per window) |
| ltp:wsStageName | live | WebSocket API stage |
| ltp:httpThrottleRate / ltp:httpThrottleBurst | 200 / 400 | HTTP API stage throttle (the rest) |
| ltp:throttlePrices | {"rate": 200, "burst": 400} | GET/POST /api/v1/current_prices |
| ltp:throttleWsToken | {"rate": 50, "burst": 100} | GET /api/v1/ws_token |
| ltp:throttleHealth | {"rate": 10, "burst": 20} | GET /api/v1/health/market_stream |
| ltp:throttleControl | {"rate": 5, "burst": 10} | POST /screeners/ltp/start and /stop |
| ltp:oidcIssuer / ltp:oidcAudience | "" / "" | both set: JWT authorizer on ws_token; `aud1,aud2` |
| ltp:oidcProtectPrices | false | the JWT authorizer on the price routes too (needs oidcIssuer) |
| ltp:wsThrottleRate / ltp:wsThrottleBurst | 500 / 1000 | WebSocket API stage throttle |
| ltp:scheduleEnabled | true | create the market-hours schedules |
| ltp:scheduleStart / ltp:scheduleStop | 09:00 / 15:45 | IST, Monday-Friday |
| ltp:instrumentsLoadAt | 08:30 | IST, Monday-Friday: load Dhan's scrip master into Redis |
| ltp:tokenRenewBelowSeconds | 57600 | renew the DhanHQ token (outside the session) below this |
| ltp:tokenRenewUrgentSeconds | 14400 | ... and inside the session below this (seconds left) |
| ltp:alarmEmail | "" | e-mail subscribed to the alarm topic |
| ltp:monthlyBudgetUsd | 0 | AWS Budgets monthly cost budget; 0 = none |
| ltp:logRetentionDays | 30 | CloudWatch Logs retention |
| ltp:webPriceClass | 200 | CloudFront price class: 100, 200 or All (200 covers India) |

A route throttle is `{"rate": R, "burst": B}` in cdk.json, or `R/B` (or that JSON) with `-c`:
requests per second (steady) and the bucket a burst may take, for the route across all callers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from constructs import Node

from core.config import WS_MODES
from core.errors import ConfigError, InvalidKeyError

PREFIX = "ltp:"
SAMPLE_WATCHLIST = "sample"
NO_WATCHLIST = "none"
# How long DhanHQ's access tokens live.
TOKEN_LIFETIME_SECONDS = 86400
# Memory (GiB) of the ElastiCache node types a deployment is likely to pick; the registry's cap
# on connections follows it (`ws_max_connections`).
NODE_MEMORY_GIB = {
    "cache.t4g.micro": 0.5, "cache.t3.micro": 0.5,
    "cache.t4g.small": 1.37, "cache.t3.small": 1.37,
    "cache.t4g.medium": 3.09, "cache.t3.medium": 3.09,
}  # fmt: skip
# What one connection can hold at most (bench/bench_abuse.py: ~690 B of its own + 500 keys of
# ~90 B each), and the share of the node the registry may take: prices, streams and the lease
# must never be evicted by a connection flood.
CONNECTION_WORST_BYTES = 690 + 500 * 90
REGISTRY_MEMORY_SHARE = 0.5
MAX_WS_CONNECTIONS = 20_000
_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class RouteThrottle:
    """API Gateway's token bucket for one route: `rate` requests/s, `burst` at once."""

    rate: int
    burst: int


@dataclass(frozen=True, slots=True)
class Oidc:
    """Identity mode (a): an OIDC provider whose JWTs the HTTP API checks."""

    issuer: str
    audience: tuple[str, ...]
    protect_prices: bool = False


@dataclass(frozen=True, slots=True)
class DeploySettings:
    max_azs: int = 2
    nat_gateways: int = 1

    cache_node_type: str = "cache.t4g.micro"
    cache_engine: str = "valkey"
    cache_engine_version: str = "8.0"
    cache_replicas: int = 0
    cache_multi_az: bool = False

    streamer_cpu: int = 512
    streamer_memory_mib: int = 1024
    streamer_stop_timeout_seconds: int = 30
    ws_mode: str = "quote"
    stream_keys: str = "sample"

    lambda_memory_mib: int = 512
    fanout_memory_mib: int = 1024
    fanout_timeout_seconds: int = 10
    fanout_reserved_concurrency: int = 20
    fanout_max_workers: int = 32
    post_budget_per_second: int = 5000
    ws_shards: int = 16
    ws_stage_name: str = "live"

    http_throttle_rate: int = 200
    http_throttle_burst: int = 400
    throttle_prices: RouteThrottle = RouteThrottle(200, 400)
    throttle_ws_token: RouteThrottle = RouteThrottle(50, 100)
    throttle_health: RouteThrottle = RouteThrottle(10, 20)
    throttle_control: RouteThrottle = RouteThrottle(5, 10)
    oidc_issuer: str = ""
    oidc_audience: str = ""
    oidc_protect_prices: bool = False
    ws_throttle_rate: int = 500
    ws_throttle_burst: int = 1000

    schedule_enabled: bool = True
    schedule_start: str = "09:00"
    schedule_stop: str = "15:45"
    instruments_load_at: str = "08:30"
    # A DhanHQ token lives 24 h; the renewal job runs every 30 minutes (infra/token_renewal.py).
    token_renew_below_seconds: int = 57600
    token_renew_urgent_seconds: int = 14400

    alarm_email: str = ""
    monthly_budget_usd: float = 0.0
    log_retention_days: int = 30
    web_price_class: str = "200"

    def __post_init__(self) -> None:
        # Messages name the context keys: that is where a deployer sets these values.
        for key, value in (("scheduleStart", self.schedule_start),
                           ("scheduleStop", self.schedule_stop),
                           ("instrumentsLoadAt", self.instruments_load_at)):  # fmt: skip
            if not _CLOCK.match(value):
                raise ConfigError(f"context {PREFIX}{key} must be HH:MM (24 h), got {value!r}")
        if self.schedule_stop <= self.schedule_start:
            raise ConfigError(
                f"context {PREFIX}scheduleStop ({self.schedule_stop}) must be after "
                f"{PREFIX}scheduleStart ({self.schedule_start})"
            )
        if not (0 < self.token_renew_urgent_seconds < self.token_renew_below_seconds
                < TOKEN_LIFETIME_SECONDS):  # fmt: skip
            # Below the urgent mark a renewal interrupts the session's feed; above the normal
            # mark is a renewal of every run; a token never has more than 24 h left.
            raise ConfigError(
                f"context {PREFIX}tokenRenewUrgentSeconds ({self.token_renew_urgent_seconds}) "
                f"must be > 0 and below {PREFIX}tokenRenewBelowSeconds "
                f"({self.token_renew_below_seconds}), which must be below "
                f"{TOKEN_LIFETIME_SECONDS} (24 h)"
            )
        if self.cache_engine not in ("valkey", "redis"):
            raise ConfigError(
                f"context {PREFIX}cacheEngine must be valkey or redis, got {self.cache_engine!r}"
            )
        if self.cache_multi_az and self.cache_replicas < 1:
            raise ConfigError(f"context {PREFIX}cacheMultiAz needs {PREFIX}cacheReplicas >= 1")
        if self.ws_mode not in WS_MODES:
            raise ConfigError(
                f"context {PREFIX}wsMode must be one of {', '.join(WS_MODES)}, "
                f"got {self.ws_mode!r}"
            )
        if self.web_price_class not in ("100", "200", "All"):
            raise ConfigError(
                f"context {PREFIX}webPriceClass must be 100, 200 or All, "
                f"got {self.web_price_class!r}"
            )
        watchlist(self.stream_keys)  # a typo fails the synth, not the task at 09:00
        self._check_oidc()
        if self.nat_gateways < 1:
            # The streamer's feed, DhanHQ REST and every @connections post leave through NAT.
            raise ConfigError(
                f"context {PREFIX}natGateways must be >= 1: the feed and @connections need egress"
            )

    def _check_oidc(self) -> None:
        if bool(self.oidc_issuer) != bool(self.oidc_audience_list):
            raise ConfigError(f"context {PREFIX}oidcIssuer and {PREFIX}oidcAudience must be set "
                              "together (identity mode a) or both left empty (public mode b)")
        if self.oidc_issuer and not self.oidc_issuer.startswith("https://"):
            raise ConfigError(f"context {PREFIX}oidcIssuer must be an https:// URL, "
                              f"got {self.oidc_issuer!r}")
        if self.oidc_protect_prices and not self.oidc_issuer:
            raise ConfigError(f"context {PREFIX}oidcProtectPrices needs {PREFIX}oidcIssuer "
                              f"and {PREFIX}oidcAudience")

    @property
    def oidc_audience_list(self) -> tuple[str, ...]:
        return tuple(a.strip() for a in self.oidc_audience.split(",") if a.strip())

    @property
    def oidc(self) -> Oidc | None:
        """The OIDC provider of identity mode (a); None in public mode (b)."""
        if not self.oidc_issuer:
            return None
        return Oidc(self.oidc_issuer, self.oidc_audience_list, self.oidc_protect_prices)

    @property
    def ws_max_connections(self) -> int:
        """The WebSocket registry's cap (WS_MAX_CONNECTIONS), sized so that connections at
        their key cap fill at most half the cache node; 20,000 on a node not listed."""
        gib = NODE_MEMORY_GIB.get(self.cache_node_type)
        if gib is None:
            return MAX_WS_CONNECTIONS
        fits = int(gib * 2**30 * REGISTRY_MEMORY_SHARE / CONNECTION_WORST_BYTES)
        return max(1000, min(MAX_WS_CONNECTIONS, fits // 1000 * 1000))

    @property
    def watchlist_keys(self) -> str:
        """STREAM_KEYS for the streamer: `streamKeys` with `sample` expanded."""
        return watchlist(self.stream_keys)

    @property
    def start_clock(self) -> tuple[int, int]:
        return _split_clock(self.schedule_start)

    @property
    def stop_clock(self) -> tuple[int, int]:
        return _split_clock(self.schedule_stop)

    @property
    def instruments_load_clock(self) -> tuple[int, int]:
        return _split_clock(self.instruments_load_at)

    @classmethod
    def from_context(cls, node: Node) -> DeploySettings:
        read = _ContextReader(node)
        defaults = cls()
        return cls(
            max_azs=read.integer("maxAzs", defaults.max_azs, minimum=1),
            nat_gateways=read.integer("natGateways", defaults.nat_gateways, minimum=1),
            cache_node_type=read.text("cacheNodeType", defaults.cache_node_type),
            cache_engine=read.text("cacheEngine", defaults.cache_engine),
            cache_engine_version=read.text("cacheEngineVersion", defaults.cache_engine_version),
            cache_replicas=read.integer("cacheReplicas", defaults.cache_replicas, minimum=0),
            cache_multi_az=read.flag("cacheMultiAz", defaults.cache_multi_az),
            streamer_cpu=read.integer("streamerCpu", defaults.streamer_cpu, minimum=256),
            streamer_memory_mib=read.integer(
                "streamerMemoryMiB", defaults.streamer_memory_mib, minimum=512
            ),
            streamer_stop_timeout_seconds=read.integer(
                "streamerStopTimeoutSeconds", defaults.streamer_stop_timeout_seconds, minimum=2
            ),
            ws_mode=read.text("wsMode", defaults.ws_mode),
            stream_keys=read.text("streamKeys", defaults.stream_keys),
            lambda_memory_mib=read.integer(
                "lambdaMemoryMiB", defaults.lambda_memory_mib, minimum=128
            ),
            fanout_memory_mib=read.integer(
                "fanoutMemoryMiB", defaults.fanout_memory_mib, minimum=128
            ),
            fanout_timeout_seconds=read.integer(
                "fanoutTimeoutSeconds", defaults.fanout_timeout_seconds, minimum=1
            ),
            fanout_reserved_concurrency=read.integer(
                "fanoutReservedConcurrency", defaults.fanout_reserved_concurrency, minimum=0
            ),
            fanout_max_workers=read.integer(
                "fanoutMaxWorkers", defaults.fanout_max_workers, minimum=1
            ),
            post_budget_per_second=read.integer(
                "postBudgetPerSecond", defaults.post_budget_per_second, minimum=1
            ),
            ws_shards=read.integer("wsShards", defaults.ws_shards, minimum=1),
            ws_stage_name=read.text("wsStageName", defaults.ws_stage_name),
            http_throttle_rate=read.integer(
                "httpThrottleRate", defaults.http_throttle_rate, minimum=1
            ),
            http_throttle_burst=read.integer(
                "httpThrottleBurst", defaults.http_throttle_burst, minimum=1
            ),
            throttle_prices=read.throttle("throttlePrices", defaults.throttle_prices),
            throttle_ws_token=read.throttle("throttleWsToken", defaults.throttle_ws_token),
            throttle_health=read.throttle("throttleHealth", defaults.throttle_health),
            throttle_control=read.throttle("throttleControl", defaults.throttle_control),
            oidc_issuer=read.text("oidcIssuer", defaults.oidc_issuer),
            oidc_audience=read.text("oidcAudience", defaults.oidc_audience),
            oidc_protect_prices=read.flag("oidcProtectPrices", defaults.oidc_protect_prices),
            ws_throttle_rate=read.integer("wsThrottleRate", defaults.ws_throttle_rate, minimum=1),
            ws_throttle_burst=read.integer(
                "wsThrottleBurst", defaults.ws_throttle_burst, minimum=1
            ),
            schedule_enabled=read.flag("scheduleEnabled", defaults.schedule_enabled),
            schedule_start=read.text("scheduleStart", defaults.schedule_start),
            schedule_stop=read.text("scheduleStop", defaults.schedule_stop),
            instruments_load_at=read.text("instrumentsLoadAt", defaults.instruments_load_at),
            token_renew_below_seconds=read.integer(
                "tokenRenewBelowSeconds", defaults.token_renew_below_seconds, minimum=1
            ),
            token_renew_urgent_seconds=read.integer(
                "tokenRenewUrgentSeconds", defaults.token_renew_urgent_seconds, minimum=1
            ),
            alarm_email=read.text("alarmEmail", defaults.alarm_email),
            monthly_budget_usd=read.number(
                "monthlyBudgetUsd", defaults.monthly_budget_usd, minimum=0.0
            ),
            log_retention_days=read.integer(
                "logRetentionDays", defaults.log_retention_days, minimum=1
            ),
            web_price_class=read.text("webPriceClass", defaults.web_price_class),
        )


def _split_clock(text: str) -> tuple[int, int]:
    hours, minutes = text.split(":")
    return int(hours), int(minutes)


class _ContextReader:
    """Casts context values, which are JSON values from cdk.json or strings from `-c`."""

    def __init__(self, node: Node) -> None:
        self._node = node

    def _raw(self, name: str) -> Any:
        return self._node.try_get_context(PREFIX + name)

    def _cast(self, name: str, default: _T, cast: Callable[[Any], _T]) -> _T:
        raw = self._raw(name)
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            return default
        try:
            return cast(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"context {PREFIX}{name} has a bad value: {raw!r}") from None

    def text(self, name: str, default: str) -> str:
        return self._cast(name, default, lambda raw: str(raw).strip())

    def integer(self, name: str, default: int, *, minimum: int) -> int:
        def cast(raw: Any) -> int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError(raw)
            return int(raw)

        value = self._cast(name, default, cast)
        if value < minimum:
            raise ConfigError(f"context {PREFIX}{name} must be >= {minimum}, got {value}")
        return value

    def number(self, name: str, default: float, *, minimum: float) -> float:
        value = self._cast(name, default, float)
        if value < minimum:
            raise ConfigError(f"context {PREFIX}{name} must be >= {minimum}, got {value}")
        return value

    def throttle(self, name: str, default: RouteThrottle) -> RouteThrottle:
        """`{"rate": R, "burst": B}` (cdk.json), or `R/B` or that JSON as a string (`-c`)."""

        def cast(raw: Any) -> RouteThrottle:
            if isinstance(raw, str):
                text = raw.strip()
                if text.startswith("{"):
                    raw = json.loads(text)
                else:
                    rate, burst = text.split("/")
                    raw = {"rate": rate, "burst": burst}
            if not isinstance(raw, dict) or set(raw) != {"rate", "burst"}:
                raise ValueError(raw)
            values = []
            for part in (raw["rate"], raw["burst"]):
                if isinstance(part, bool) or (isinstance(part, float) and not part.is_integer()):
                    raise ValueError(part)
                values.append(int(part))
            return RouteThrottle(*values)

        try:
            value = self._cast(name, default, cast)
        except ConfigError:
            raise ConfigError(f"context {PREFIX}{name} must be {{\"rate\": R, \"burst\": B}} "
                              f"or R/B, got {self._raw(name)!r}") from None
        if value.rate < 1 or value.burst < 1:
            raise ConfigError(f"context {PREFIX}{name} needs rate and burst >= 1, got "
                              f"{value.rate}/{value.burst}")
        return value

    def flag(self, name: str, default: bool) -> bool:
        def cast(raw: Any) -> bool:
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)

        return self._cast(name, default, cast)


def watchlist(value: str) -> str:
    """The streamer's STREAM_KEYS for a `streamKeys` value: `sample` expands to the shipped
    sample's keys, `none` is none; anything else must be valid keys (a typo fails the synth,
    not the task)."""
    if value.strip().lower() == NO_WATCHLIST:
        return ""
    if value.strip().lower() == SAMPLE_WATCHLIST:
        from core.instrument_master import SAMPLE_PATH, parse_scrip_master

        with SAMPLE_PATH.open(encoding="utf-8") as lines:
            return ",".join(str(row.key) for row in parse_scrip_master(lines))
    from core.instruments import parse_key

    try:
        keys = [str(parse_key(text.strip())) for text in value.split(",") if text.strip()]
    except InvalidKeyError as exc:
        raise ConfigError(f"context {PREFIX}streamKeys: {exc}") from exc
    return ",".join(dict.fromkeys(keys))
