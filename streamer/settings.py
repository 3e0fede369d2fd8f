"""The streamer's configuration, read once from the environment (plus CLI overrides).

| variable                        | default                   | meaning                          |
|---------------------------------|---------------------------|----------------------------------|
| REDIS_URL                       | redis://127.0.0.1:6379/0  | cache, pub/sub, registry         |
| REDIS_AUTH_TOKEN                |                           | AUTH token when not in the URL   |
| REDIS_AUTH_SECRET_ARN           |                           | or a secret holding it           |
| REDIS_SOCKET_TIMEOUT / _CONNECT_TIMEOUT / REDIS_RETRIES | 10 / 3 / 1 | see core.redis_client |
| DHAN_CLIENT_ID                  |                           | DhanHQ client id (local runs)    |
| DHAN_ACCESS_TOKEN               |                           | DhanHQ access token (local runs) |
| DHAN_SECRET_ARN                 |                           | Secrets Manager secret (AWS)     |
| DHAN_FEED_URL                   | wss://api-feed.dhan.co    | feed WebSocket                   |
| DHANHQ_WS_MODE                  | quote                     | ticker, quote or full            |
| STREAM_KEYS                     |                           | extra keys, comma-separated      |
| STREAMER_INSTANCE_ID            | host-pid-random           | lease owner / heartbeat id       |
| STREAMER_FLUSH_INTERVAL_MS      | 5                         | Redis flush period               |
| STREAMER_SILENCE_TIMEOUT_S      | 90                        | silent while open -> reconnect   |
| STREAMER_MARKET_OPEN / _CLOSE   | 09:15 / 15:30 (IST)       | session, Monday-Friday           |
| STREAMER_CLOSE_GRACE_S          | 600                       | stop this long after the close   |
| STREAMER_ALWAYS_OPEN            | false                     | simulator / local: 24x7 session  |
| STREAMER_AUTO_STOP              | true                      | stop after close + grace         |
| STREAMER_MAX_CONNECTIONS        | 5                         | feed connections (Dhan: <= 5)    |
| STREAMER_PER_CONNECTION         | 5000                      | instruments each (Dhan: <= 5000) |
| STREAMER_BACKOFF_BASE_S / _MAX_S| 1 / 60                    | reconnect backoff (full jitter)  |
| STREAMER_BACKOFF_LONG_S         | 5                         | extra floor after 805 / 429      |
| STREAMER_HEALTHY_AFTER_S        | 60                        | up this long resets the backoff  |
| STREAMER_HEARTBEAT_S            | 10                        | heartbeat refresh (TTL 60)       |
| STREAMER_LEASE_TTL_S            | 15                        | single-writer lease lifetime     |
| STREAMER_KEYS_REFRESH_S         | 5                         | safety-net re-read of streams    |
| STREAMER_DEMAND_GRACE_S         | 300                       | keep a key nobody watches        |
| STREAMER_TOKEN_POLL_S           | 300                       | re-read the token (renewals)     |
| STREAMER_BUFFER_MAX             | 50000                     | keys kept while Redis is down    |
| STREAMER_LOG_LEVEL              | INFO                      |                                  |
| STREAMER_EMF_METRICS            | true                      | CloudWatch EMF line per heartbeat|

Credentials: DHAN_CLIENT_ID + DHAN_ACCESS_TOKEN, or DHAN_SECRET_ARN naming a secret whose
SecretString is JSON `{"client_id": "...", "access_token": "..."}`, read by
`core.secrets.parse_dhan_secret` exactly as the Lambda functions read it (field names
`core.secrets.DHAN_*_FIELDS`, a numeric client id accepted, a client id missing from the secret
falls back to DHAN_CLIENT_ID). `CredentialSource` re-reads them when the feed says the
token expired (807): the environment mapping again, or the secret again.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Protocol

from core.config import DEFAULT_FEED_URL, WS_MODES, Env
from core.errors import ConfigError, InvalidKeyError, SecretError
from core.instruments import InstrumentKey, parse_keys, split_keys
from core.redis_client import RedisSettings
from core.secrets import DhanCredentials, parse_dhan_secret
from streamer.errors import CredentialsError
from streamer.market_hours import MarketHours, parse_clock
from streamer.planner import MAX_CONNECTIONS, MAX_PER_CONNECTION

# One credentials type for every deployable (core.secrets); the name is the streamer's.
Credentials = DhanCredentials


class SecretsClient(Protocol):
    """The part of boto3's Secrets Manager client we use."""

    def get_secret_value(self, *, SecretId: str) -> Mapping[str, Any]: ...


class CredentialSource:
    """Where the DhanHQ client id and token come from; `fetch` reads them again each call."""

    def __init__(
        self,
        *,
        environ: Mapping[str, str] | None = None,
        secret_arn: str = "",
        secrets_client: SecretsClient | None = None,
    ) -> None:
        if secret_arn and secrets_client is None:
            raise ValueError("a secrets client is needed to read DHAN_SECRET_ARN")
        self._environ = os.environ if environ is None else environ
        self._secret_arn = secret_arn
        self._secrets = secrets_client

    @property
    def secret_arn(self) -> str:
        return self._secret_arn

    def from_environment(self) -> Credentials:
        """DHAN_CLIENT_ID and DHAN_ACCESS_TOKEN as the environment has them (maybe empty)."""
        env = Env(self._environ)
        return Credentials(env.text("DHAN_CLIENT_ID"), env.secret("DHAN_ACCESS_TOKEN"))

    def read(self) -> Credentials:
        """Blocking read (a Secrets Manager call when an ARN is set)."""
        given = self.from_environment()
        if self._secret_arn and self._secrets is not None:
            text = self._read_secret(self._secrets, self._secret_arn)
            try:
                return parse_dhan_secret(text, fallback_client_id=given.client_id)
            except SecretError as exc:  # the message names fields, never the token
                raise CredentialsError(f"secret {self._secret_arn}: {exc}") from None
        missing = [n for n, v in (("client id", given.client_id),
                                  ("access token", given.access_token.value)) if not v]  # fmt: skip
        if missing:
            raise CredentialsError(f"DhanHQ {' and '.join(missing)} missing (set DHAN_CLIENT_ID "
                                   "and DHAN_ACCESS_TOKEN, or DHAN_SECRET_ARN)")  # fmt: skip
        return given

    @staticmethod
    def _read_secret(client: SecretsClient, arn: str) -> str:
        try:
            response = client.get_secret_value(SecretId=arn)
        except Exception as exc:  # botocore's errors are many; the message is what matters
            raise CredentialsError(f"cannot read secret {arn}: {exc}") from exc
        value = response.get("SecretString")
        return value if isinstance(value, str) else ""

    async def fetch(self) -> Credentials:
        """`read` without blocking the event loop (the secret call runs in a thread)."""
        if self._secret_arn:
            return await asyncio.to_thread(self.read)
        return self.read()


# Fail fast (one retry) and let the streamer's own loops (sink backoff, key source, lease) do
# the retrying; commands may wait for a busy Redis, connecting may not.
STREAMER_REDIS = RedisSettings(socket_timeout=10.0, connect_timeout=3.0, retries=1)


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass(frozen=True, slots=True)
class Settings:
    redis: RedisSettings = field(default_factory=lambda: STREAMER_REDIS)
    feed_url: str = DEFAULT_FEED_URL
    mode: str = "quote"
    keys: tuple[InstrumentKey, ...] = ()
    instance_id: str = field(default_factory=default_instance_id)
    secret_arn: str = ""
    flush_interval: float = 0.005
    silence_timeout: float = 90.0
    hours: MarketHours = field(default_factory=MarketHours)
    auto_stop: bool = True
    max_connections: int = MAX_CONNECTIONS
    per_connection: int = MAX_PER_CONNECTION
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    backoff_long: float = 5.0
    healthy_after: float = 60.0
    heartbeat_interval: float = 10.0
    lease_ttl: float = 15.0
    keys_refresh: float = 5.0
    demand_grace: float = 300.0
    token_poll: float = 300.0
    buffer_max: int = 50_000
    log_level: str = "INFO"
    emit_metrics: bool = True
    shutdown_timeout: float = 8.0  # graceful part of the 10 s SIGTERM budget

    @property
    def redis_url(self) -> str:
        return self.redis.url


def _keys(csv: str, origin: str) -> tuple[InstrumentKey, ...]:
    try:
        return tuple(parse_keys(split_keys(csv)))
    except InvalidKeyError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    keys: str | None = None,
    mode: str | None = None,
    feed_url: str | None = None,
    redis_url: str | None = None,
    auto_stop: bool | None = None,
    instance_id: str | None = None,
) -> Settings:
    """Read and check every setting; CLI values (when given) win over the environment."""
    env = Env(environ)
    chosen_mode = env.choice("DHANHQ_WS_MODE", "quote", WS_MODES)
    if mode is not None:
        if mode.lower() not in WS_MODES:
            raise ConfigError(f"--mode must be one of {', '.join(WS_MODES)}, got {mode!r}")
        chosen_mode = mode.lower()
    url = feed_url or env.text("DHAN_FEED_URL", DEFAULT_FEED_URL)
    if not url.startswith(("ws://", "wss://")):
        raise ConfigError(f"DHAN_FEED_URL must start with ws:// or wss://, got {url!r}")
    max_connections = env.integer("STREAMER_MAX_CONNECTIONS", MAX_CONNECTIONS, minimum=1)
    per_connection = env.integer("STREAMER_PER_CONNECTION", MAX_PER_CONNECTION, minimum=1)
    if max_connections > MAX_CONNECTIONS or per_connection > MAX_PER_CONNECTION:
        raise ConfigError(
            f"DhanHQ allows at most {MAX_CONNECTIONS} connections of {MAX_PER_CONNECTION} "
            "instruments (STREAMER_MAX_CONNECTIONS / STREAMER_PER_CONNECTION)"
        )
    hours = MarketHours(
        open=parse_clock(env.text("STREAMER_MARKET_OPEN", "09:15"), name="STREAMER_MARKET_OPEN"),
        close=parse_clock(
            env.text("STREAMER_MARKET_CLOSE", "15:30"), name="STREAMER_MARKET_CLOSE"
        ),
        grace=timedelta(seconds=env.number("STREAMER_CLOSE_GRACE_S", 600, minimum=0)),
        always_open=env.flag("STREAMER_ALWAYS_OPEN", False),
    )
    heartbeat = env.number("STREAMER_HEARTBEAT_S", 10, minimum=0.01)
    if heartbeat > 30:
        raise ConfigError("STREAMER_HEARTBEAT_S must be <= 30 (the heartbeat lives 60 s)")
    level = env.text("STREAMER_LOG_LEVEL", "INFO").upper()
    if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
        raise ConfigError(f"STREAMER_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level}")
    return Settings(
        redis=RedisSettings.from_env(
            env, socket_timeout=STREAMER_REDIS.socket_timeout,
            connect_timeout=STREAMER_REDIS.connect_timeout, retries=STREAMER_REDIS.retries,
            url=redis_url,
        ),  # fmt: skip
        feed_url=url,
        mode=chosen_mode,
        keys=_keys(keys, "--keys") if keys is not None else _keys(
            env.text("STREAM_KEYS"), "STREAM_KEYS"
        ),
        instance_id=instance_id or env.text("STREAMER_INSTANCE_ID") or default_instance_id(),
        secret_arn=env.text("DHAN_SECRET_ARN"),
        flush_interval=env.number("STREAMER_FLUSH_INTERVAL_MS", 5, minimum=0.1) / 1000,
        silence_timeout=env.number("STREAMER_SILENCE_TIMEOUT_S", 90, minimum=0.01),
        hours=hours,
        auto_stop=env.flag("STREAMER_AUTO_STOP", True) if auto_stop is None else auto_stop,
        max_connections=max_connections,
        per_connection=per_connection,
        backoff_base=env.number("STREAMER_BACKOFF_BASE_S", 1, minimum=0),
        backoff_max=env.number("STREAMER_BACKOFF_MAX_S", 60, minimum=0),
        backoff_long=env.number("STREAMER_BACKOFF_LONG_S", 5, minimum=0),
        healthy_after=env.number("STREAMER_HEALTHY_AFTER_S", 60, minimum=0),
        heartbeat_interval=heartbeat,
        lease_ttl=env.number("STREAMER_LEASE_TTL_S", 15, minimum=0.1),
        keys_refresh=env.number("STREAMER_KEYS_REFRESH_S", 5, minimum=0.01),
        demand_grace=env.number("STREAMER_DEMAND_GRACE_S", 300, minimum=0),
        token_poll=env.number("STREAMER_TOKEN_POLL_S", 300, minimum=0.01),
        buffer_max=env.integer("STREAMER_BUFFER_MAX", 50_000, minimum=1),
        log_level=level,
        emit_metrics=env.flag("STREAMER_EMF_METRICS", True),
    )
