"""The one way every deployable reaches Redis: settings, AUTH, TLS, timeouts, retries.

In AWS the cache is ElastiCache with transit encryption and an AUTH token: `rediss://` URLs,
the token from `REDIS_AUTH_TOKEN` (the Fargate containers, where ECS injects it) or from the
secret named by `REDIS_AUTH_SECRET_ARN` (the Lambda functions). Locally the same variables
point at a private `redis-server` started with a random password. Nothing else in the project
builds a Redis client.

| variable | default | meaning |
|---|---|---|
| REDIS_URL | redis://127.0.0.1:6379/0 | `redis://`, `rediss://` (TLS) or `unix://` |
| REDIS_AUTH_TOKEN | | the AUTH token apart from the URL; blank is an error, not "none" |
| REDIS_AUTH_SECRET_ARN | | a Secrets Manager secret holding it (plain or JSON) |
| REDIS_SOCKET_TIMEOUT | per deployable | seconds one command may take |
| REDIS_CONNECT_TIMEOUT | per deployable | seconds to open a connection (TLS handshake included) |
| REDIS_RETRIES | per deployable | retries of a command after a connection error / READONLY |

Failures a client rides over (redis-py's own mechanism, `retry` + `retry_on_error`): a
`ConnectionError` or `TimeoutError` closes that connection and retries on a new one, after a
jittered exponential pause; so does `READONLY`. ElastiCache answers READONLY on a connection
still open to the old primary after a failover, while the primary endpoint's DNS name already
points at the new one; a reconnect resolves the name again and reaches the new primary. Each
pooled connection is dropped the first time it answers READONLY (idle ones on their next use),
so a pool recovers within one command per connection instead of staying pinned to a replica.

AUTH: a token given in the environment is used as is. A token named by an ARN is read through
the deployable's `SecretReader` (a cache in the Lambda functions) when a connection opens, so
a cold start reads it once and a rotated token reaches the next connection without a new
environment; an unreadable secret fails that command (the API answers 503), not the import.

Certificates are verified (CA and host name) for `rediss://`; the trust store is the
process's default one, so a test CA is trusted through `SSL_CERT_FILE`, never by turning
verification off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from redis.credentials import CredentialProvider

from core.config import DEFAULT_REDIS_URL, Env, Secret
from core.errors import ConfigError
from core.secrets import REDIS_AUTH_FIELDS, SecretReader, pick_field

if TYPE_CHECKING:
    import redis
    import redis.asyncio

SCHEMES = ("redis://", "rediss://", "unix://")
# KEYS[1]: a lock or lease, ARGV[1]: the owner's token. Deletes the key only while that owner
# still holds it (one that expired and was taken by another is left alone); returns 1 when
# deleted. The one compare-and-delete of the project: leases, locks and shares release by it.
RELEASE_IF_OWNER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
# What a deployable needs in AWS to reach the cache: Lambdas read the token's secret, the
# Fargate containers get the token injected by ECS.
LAMBDA_REDIS_ENV = ("REDIS_URL", "REDIS_AUTH_SECRET_ARN")
CONTAINER_REDIS_ENV = ("REDIS_URL", "REDIS_AUTH_TOKEN")
# Pauses between retries: 20 ms, 40 ms, ... capped at 500 ms, each jittered (many clients
# retrying one failover must not reconnect in step).
BACKOFF_BASE_SECONDS = 0.02
BACKOFF_CAP_SECONDS = 0.5


@dataclass(frozen=True, slots=True)
class RedisSettings:
    url: str = DEFAULT_REDIS_URL
    auth_token: Secret = field(default_factory=lambda: Secret(""))
    auth_secret_arn: str = ""
    socket_timeout: float = 5.0
    connect_timeout: float = 3.0
    retries: int = 2
    health_check_interval: int = 15

    @classmethod
    def from_env(
        cls,
        environ: Env | None = None,
        *,
        socket_timeout: float = 5.0,
        connect_timeout: float = 3.0,
        retries: int = 2,
        url: str | None = None,
    ) -> RedisSettings:
        """The Redis settings of a deployable; the defaults are that deployable's (a Lambda
        answering a browser wants short timeouts, a long-lived service can wait)."""
        env = environ or Env()
        settings = cls(
            url=url or env.text("REDIS_URL", DEFAULT_REDIS_URL),
            auth_token=env.secret("REDIS_AUTH_TOKEN", blank_is_error=True),
            auth_secret_arn=env.text("REDIS_AUTH_SECRET_ARN"),
            socket_timeout=env.number("REDIS_SOCKET_TIMEOUT", socket_timeout, minimum=0.05),
            connect_timeout=env.number("REDIS_CONNECT_TIMEOUT", connect_timeout, minimum=0.05),
            retries=env.integer("REDIS_RETRIES", retries, minimum=0),
        )
        settings.check()
        return settings

    def check(self) -> None:
        if not self.url.startswith(SCHEMES):
            scheme = self.url.split("://")[0] if "://" in self.url else self.url[:20]
            raise ConfigError(f"REDIS_URL must start with redis://, rediss:// or unix://, "
                              f"got {scheme!r}")
        if self.auth_token and self.auth_secret_arn:
            raise ConfigError("set REDIS_AUTH_TOKEN or REDIS_AUTH_SECRET_ARN, not both")

    @property
    def tls(self) -> bool:
        return self.url.startswith("rediss://")

    @property
    def needs_secret_reader(self) -> bool:
        return bool(self.auth_secret_arn)


def resolve_password(settings: RedisSettings, *, secrets: SecretReader | None) -> Secret:
    """The AUTH token (empty when none is configured). A blank one is a `ConfigError`: an
    ElastiCache with AUTH would refuse every command, and "no password" would hide why."""
    if settings.auth_secret_arn:
        if secrets is None:
            raise ConfigError("REDIS_AUTH_SECRET_ARN is set but no Secrets Manager client "
                              "was given to read it")
        value = pick_field(secrets.get(settings.auth_secret_arn), REDIS_AUTH_FIELDS,
                           allow_plain=True)
        if not value:
            raise ConfigError(f"the secret {settings.auth_secret_arn} "
                              "(REDIS_AUTH_SECRET_ARN) is blank")
        return Secret(value)
    return settings.auth_token


class SecretCredentials(CredentialProvider):
    """AUTH read through a `SecretReader` for each new connection (the reader caches)."""

    def __init__(self, settings: RedisSettings, secrets: SecretReader | None,
                 username: str = "") -> None:
        self._settings = settings
        self._secrets = secrets
        self._username = username

    def get_credentials(self) -> tuple[str] | tuple[str, str]:
        password = resolve_password(self._settings, secrets=self._secrets).value
        return (self._username, password) if self._username else (password,)

    async def get_credentials_async(self) -> tuple[str] | tuple[str, str]:
        return self.get_credentials()


def _auth(settings: RedisSettings, secrets: SecretReader | None) -> tuple[str, dict[str, Any]]:
    """(URL to connect to, AUTH options). redis-py takes either a password (and a user from
    the URL) or a credential provider, so an ACL user moves from the URL into the provider."""
    if settings.auth_secret_arn:
        if secrets is None:
            raise ConfigError("REDIS_AUTH_SECRET_ARN is set but no Secrets Manager client "
                              "was given to read it")
        parts = urlsplit(settings.url)
        url = settings.url
        if parts.username is not None:
            host = parts.netloc.rpartition("@")[2]
            url = urlunsplit(parts._replace(netloc=host))
        provider = SecretCredentials(settings, secrets, unquote(parts.username or ""))
        return url, {"credential_provider": provider}
    return settings.url, ({"password": settings.auth_token.value} if settings.auth_token else {})


def _options(settings: RedisSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout,
        "socket_connect_timeout": settings.connect_timeout,
        "health_check_interval": settings.health_check_interval,
    }
    if not settings.url.startswith("unix://"):
        # A NAT or an idle-timeout middlebox drops quiet flows; keepalive finds out first.
        options["socket_keepalive"] = True
    if settings.tls:
        options["ssl_cert_reqs"] = "required"
        options["ssl_check_hostname"] = True
    return options


def _retry_errors() -> list[type[Exception]]:
    from redis.exceptions import ConnectionError, ReadOnlyError, TimeoutError

    return [ConnectionError, TimeoutError, ReadOnlyError]


def _retry() -> Any:
    from redis.backoff import ExponentialWithJitterBackoff

    return ExponentialWithJitterBackoff(base=BACKOFF_BASE_SECONDS, cap=BACKOFF_CAP_SECONDS)


def sync_client(
    settings: RedisSettings,
    *,
    secrets: SecretReader | None = None,
    max_connections: int | None = None,
    **extra: Any,
) -> redis.Redis:
    """A redis-py client; nothing connects until the first command. `secrets` reads
    REDIS_AUTH_SECRET_ARN; `extra` goes to redis-py as is (e.g. a command packer)."""
    import redis as redis_lib
    from redis.retry import Retry

    if max_connections is not None:
        extra["max_connections"] = max_connections
    url, auth = _auth(settings, secrets)
    return redis_lib.Redis.from_url(
        url, retry=Retry(_retry(), settings.retries), retry_on_error=_retry_errors(),
        **_options(settings), **auth, **extra,
    )  # fmt: skip


def async_client(
    settings: RedisSettings,
    *,
    secrets: SecretReader | None = None,
    max_connections: int | None = None,
    **extra: Any,
) -> redis.asyncio.Redis:
    """The asyncio twin of `sync_client` (same options, same retries)."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry

    if max_connections is not None:
        extra["max_connections"] = max_connections
    url, auth = _auth(settings, secrets)
    return Redis.from_url(
        url, retry=Retry(_retry(), settings.retries), retry_on_error=_retry_errors(),
        **_options(settings), **auth, **extra,
    )  # fmt: skip


AUTH_REFUSED = ("Redis refused the AUTH token (REDIS_AUTH_TOKEN / REDIS_AUTH_SECRET_ARN): "
                "check that it is the cache's current token")


async def check_auth(client: redis.asyncio.Redis) -> None:
    """A start-up PING for the long-lived services: a refused AUTH token is a `ConfigError`
    (exit 2, so ECS shows a failing task instead of one retrying forever); Redis being
    unreachable is not, the services' own loops wait for it."""
    from redis.exceptions import AuthenticationError, AuthorizationError, RedisError

    try:
        await client.ping()
    except (AuthenticationError, AuthorizationError) as exc:
        raise ConfigError(f"{AUTH_REFUSED} ({type(exc).__name__}: {exc})") from exc
    except RedisError:
        pass


__all__ = ["RedisSettings", "SecretCredentials", "as_text", "async_client", "check_auth",
           "resolve_password", "sync_client"]


def as_text(value: bytes | str) -> str:
    """A reply as text: clients built here do not decode (the fan-out hands JSON bytes on
    untouched), so names and members come back as bytes."""
    return value.decode() if isinstance(value, bytes) else value
