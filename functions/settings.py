"""Settings of every Lambda function, read once from the environment through `core.config.Env`.

Nothing else under `functions/` reads `os.environ`. Secrets are `core.config.Secret` (masked in
any repr or log line); in AWS they are named by an ARN and resolved by `functions.secrets`.

| variable | default | meaning |
|---|---|---|
| REDIS_URL | redis://127.0.0.1:6379/0 | cache, pub/sub and registry |
| REDIS_SOCKET_TIMEOUT | 1.0 | seconds per Redis command before giving up (then 503) |
| REDIS_CONNECT_TIMEOUT | 1.0 | seconds to open a Redis connection |
| REDIS_AUTH_TOKEN / REDIS_AUTH_SECRET_ARN | "" | Redis AUTH token apart from the URL |
| REDIS_RETRIES | 1 | retries after a connection error / READONLY (see `core.redis_client`) |
| DHAN_CLIENT_ID, DHAN_ACCESS_TOKEN | "" | DhanHQ credentials (local run) |
| DHAN_SECRET_ARN | "" | Secrets Manager secret holding both (AWS) |
| DHAN_API_BASE_URL | https://api.dhan.co/v2 | REST base (the simulator's stand-in locally) |
| DHAN_REST_TIMEOUT_SECONDS | 2.0 | HTTP timeout of one DhanHQ REST call |
| DHAN_REST_BUDGET_SECONDS | 2.5 | all REST fallback work of one request, waits included |
| DHAN_REST_MIN_INTERVAL_SECONDS | 1.0 | deployment-wide spacing of REST calls (Dhan: 1/s) |
| DHAN_REST_CALLER_INTERVAL_SECONDS | 5.0 | a caller's REST share: one fetch per interval (0: off) |
| DHAN_NOT_FOUND_TTL_SECONDS | 300 | a key Dhan had no price for is not_found this long (0: off) |
| QUOTE_FUNCTION_NAME | "" | the API's misses go to this private function (AWS); unset: in-process |
| DHANHQ_WS_MODE | quote | default mode of a stream started without one |
| ADMIN_API_KEY / ADMIN_SECRET_ARN | "" | when set, start/stop need `Authorization: Bearer` |
| WS_TOKEN_SECRET / WS_TOKEN_SECRET_ARN | "" | signing key of WebSocket connect tokens |
| WS_TOKEN_TTL_SECONDS | 60 | life of a connect token (1 ... 3600) |
| WS_TOKEN_PER_IP_PER_MINUTE | 30 | tokens an address (OIDC: a user) gets a minute; 0: no limit |
| WS_TOKEN_IDENTITY | ip | `oidc`: ws_token needs the JWT authorizer's subject (identity mode a) |
| STREAMER_CLUSTER, STREAMER_SERVICE | "" | the ECS service start/stop scale (unset locally) |
| WEBSOCKET_CALLBACK_URL | "" | the `@connections` endpoint of the WebSocket API |
| SECRETS_CACHE_SECONDS | 300 | how long a resolved secret is reused |
| HEARTBEAT_STALE_SECONDS | 45 | heartbeat age beyond which the stream is "stale" |
| HEALTH_TICK_STALE_SECONDS | 30 | newest tick older than this in market hours: "degraded" |
| HEALTH_BRIDGE_STALE_SECONDS | 45 | relay bridge heartbeat older than this (or none): "degraded" |
| HEALTH_CACHE_SECONDS | 3 | the whole health answer is reused this long in a container (0: off) |
| HEALTH_ECS_CACHE_SECONDS | 30 | the streamer service's ECS counts are reused this long (0: off) |
| POWERTOOLS_METRICS_NAMESPACE | LtpStream | CloudWatch namespace of the EMF metrics |

Absent and blank are not the same. An absent ADMIN_API_KEY / WS_TOKEN_SECRET (and no ARN) means
"no check", as in a local run. One that is set but blank or only whitespace (so is a blank
ADMIN_SECRET_ARN / WS_TOKEN_SECRET_ARN) is a mistake: it is recorded in `blank_secrets`, and
every request that needs that secret is refused (`functions.secrets` raises SecretError: 503
from the API, a failed connect from the authorizer) instead of turning the check off. The other
routes keep working, which failing at start would not allow. (REDIS_AUTH_TOKEN blank fails at
start: `core.redis_client`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.config import (
    DEFAULT_API_BASE_URL,
    DEFAULT_REDIS_URL,
    WS_MODES,
    Env,
    Secret,
)
from core.errors import ConfigError
from core.redis_client import RedisSettings

# The guard secrets: set but blank is refused per request (see the module docstring).
GUARD_SECRET_VARIABLES = ("ADMIN_API_KEY", "ADMIN_SECRET_ARN", "WS_TOKEN_SECRET",
                          "WS_TOKEN_SECRET_ARN")
MAX_WS_TOKEN_TTL_SECONDS = 3600
WS_TOKEN_IDENTITIES = ("ip", "oidc")


@dataclass(frozen=True, slots=True)
class Settings:
    redis_url: str = DEFAULT_REDIS_URL
    redis_socket_timeout: float = 1.0
    redis_connect_timeout: float = 1.0
    redis_auth_token: Secret = Secret("")
    redis_auth_secret_arn: str = ""
    # One quick retry: a pooled socket gone stale while the Lambda was frozen, or a failover;
    # Redis being down must become a quick 503, not a hang.
    redis_retries: int = 1

    dhan_client_id: str = ""
    dhan_access_token: Secret = Secret("")
    dhan_secret_arn: str = ""
    dhan_api_base_url: str = DEFAULT_API_BASE_URL
    dhan_rest_timeout: float = 2.0
    dhan_rest_budget: float = 2.5
    # Dhan allows 1 call/s; the slot is taken when a call leaves, so network jitter can bring two
    # calls closer together at Dhan's end than here: keep a margin.
    dhan_rest_min_interval: float = 1.1
    # One caller (source IP, or JWT subject) may take one REST slot per this many seconds, so a
    # single caller cannot take every one of the deployment's 1/s slots.
    dhan_rest_caller_interval: float = 5.0
    dhan_not_found_ttl: int = 300
    # The private function that holds the Dhan token (AWS); empty: the API fetches itself.
    quote_function_name: str = ""
    ws_mode: str = "quote"

    admin_api_key: Secret = Secret("")
    admin_secret_arn: str = ""
    ws_token_secret: Secret = Secret("")
    ws_token_secret_arn: str = ""
    # Which of GUARD_SECRET_VARIABLES are set but blank.
    blank_secrets: frozenset[str] = frozenset()
    ws_token_ttl_seconds: int = 60
    ws_token_per_ip_per_minute: int = 30
    ws_token_identity: str = "ip"

    streamer_cluster: str = ""
    streamer_service: str = ""
    websocket_callback_url: str = ""

    secrets_cache_seconds: float = 300.0
    heartbeat_stale_seconds: float = 45.0
    health_tick_stale_seconds: float = 30.0
    health_bridge_stale_seconds: float = 45.0
    health_cache_seconds: float = 3.0
    health_ecs_cache_seconds: float = 30.0
    metrics_namespace: str = "LtpStream"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = Env(environ)
        redis = RedisSettings.from_env(env, socket_timeout=1.0, connect_timeout=1.0, retries=1)
        settings = cls(
            redis_url=redis.url,
            redis_socket_timeout=redis.socket_timeout,
            redis_connect_timeout=redis.connect_timeout,
            redis_auth_token=redis.auth_token,
            redis_auth_secret_arn=redis.auth_secret_arn,
            redis_retries=redis.retries,
            dhan_client_id=env.text("DHAN_CLIENT_ID"),
            dhan_access_token=env.secret("DHAN_ACCESS_TOKEN"),
            dhan_secret_arn=env.text("DHAN_SECRET_ARN"),
            dhan_api_base_url=env.text("DHAN_API_BASE_URL", DEFAULT_API_BASE_URL).rstrip("/"),
            dhan_rest_timeout=env.number("DHAN_REST_TIMEOUT_SECONDS", 2.0, minimum=0.05),
            dhan_rest_budget=env.number("DHAN_REST_BUDGET_SECONDS", 2.5, minimum=0.0),
            dhan_rest_min_interval=env.number(
                "DHAN_REST_MIN_INTERVAL_SECONDS", 1.1, minimum=0.001
            ),
            dhan_rest_caller_interval=env.number(
                "DHAN_REST_CALLER_INTERVAL_SECONDS", 5.0, minimum=0.0
            ),
            dhan_not_found_ttl=env.integer("DHAN_NOT_FOUND_TTL_SECONDS", 300, minimum=0),
            quote_function_name=env.text("QUOTE_FUNCTION_NAME"),
            ws_mode=env.choice("DHANHQ_WS_MODE", "quote", WS_MODES),
            admin_api_key=env.secret("ADMIN_API_KEY"),
            admin_secret_arn=env.text("ADMIN_SECRET_ARN"),
            ws_token_secret=env.secret("WS_TOKEN_SECRET"),
            ws_token_secret_arn=env.text("WS_TOKEN_SECRET_ARN"),
            blank_secrets=frozenset(n for n in GUARD_SECRET_VARIABLES if env.is_blank(n)),
            ws_token_ttl_seconds=env.integer("WS_TOKEN_TTL_SECONDS", 60, minimum=1),
            ws_token_per_ip_per_minute=env.integer("WS_TOKEN_PER_IP_PER_MINUTE", 30, minimum=0),
            ws_token_identity=env.choice("WS_TOKEN_IDENTITY", "ip", WS_TOKEN_IDENTITIES),
            streamer_cluster=env.text("STREAMER_CLUSTER"),
            streamer_service=env.text("STREAMER_SERVICE"),
            websocket_callback_url=env.text("WEBSOCKET_CALLBACK_URL"),
            secrets_cache_seconds=env.number("SECRETS_CACHE_SECONDS", 300.0, minimum=0.0),
            heartbeat_stale_seconds=env.number("HEARTBEAT_STALE_SECONDS", 45.0, minimum=1.0),
            health_tick_stale_seconds=env.number("HEALTH_TICK_STALE_SECONDS", 30.0, minimum=1.0),
            health_bridge_stale_seconds=env.number(
                "HEALTH_BRIDGE_STALE_SECONDS", 45.0, minimum=1.0
            ),
            health_cache_seconds=env.number("HEALTH_CACHE_SECONDS", 3.0, minimum=0.0),
            health_ecs_cache_seconds=env.number("HEALTH_ECS_CACHE_SECONDS", 30.0, minimum=0.0),
            metrics_namespace=env.text("POWERTOOLS_METRICS_NAMESPACE", "LtpStream"),
        )
        if bool(settings.streamer_cluster) != bool(settings.streamer_service):
            raise ConfigError("STREAMER_CLUSTER and STREAMER_SERVICE must be set together")
        if settings.ws_token_ttl_seconds > MAX_WS_TOKEN_TTL_SECONDS:
            raise ConfigError(f"WS_TOKEN_TTL_SECONDS must be <= {MAX_WS_TOKEN_TTL_SECONDS} "
                              f"(connect tokens are short-lived), got "
                              f"{settings.ws_token_ttl_seconds}")
        return settings

    @property
    def redis(self) -> RedisSettings:
        return RedisSettings(
            url=self.redis_url, auth_token=self.redis_auth_token,
            auth_secret_arn=self.redis_auth_secret_arn, socket_timeout=self.redis_socket_timeout,
            connect_timeout=self.redis_connect_timeout, retries=self.redis_retries,
        )  # fmt: skip

    @property
    def uses_secrets_manager(self) -> bool:
        return bool(self.admin_secret_arn or self.dhan_secret_arn or self.ws_token_secret_arn
                    or self.redis_auth_secret_arn)  # fmt: skip

    @property
    def streamer_managed(self) -> bool:
        """True when start/stop scale an ECS service (AWS); False when the local run owns it."""
        return bool(self.streamer_cluster and self.streamer_service)
