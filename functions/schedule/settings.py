"""The scheduler's settings: the shared function settings plus the Redis AUTH token source.

| variable | meaning |
|---|---|
| (everything in `functions.settings`) | REDIS_URL, STREAMER_CLUSTER, STREAMER_SERVICE, ... |
| REDIS_AUTH_SECRET_ARN | Secrets Manager secret holding the ElastiCache AUTH token (AWS) |
| REDIS_AUTH_TOKEN | the AUTH token itself (when not using a secret) |
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.config import Env, Secret
from functions.settings import Settings


@dataclass(frozen=True, slots=True)
class ScheduleSettings:
    base: Settings
    redis_auth_secret_arn: str = ""
    redis_auth_token: Secret = Secret("")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ScheduleSettings:
        env = Env(environ)
        return cls(
            base=Settings.from_env(environ),
            redis_auth_secret_arn=env.text("REDIS_AUTH_SECRET_ARN"),
            redis_auth_token=env.secret("REDIS_AUTH_TOKEN"),
        )
