"""Settings of the token renewal, beyond `functions.settings` (REDIS_*, DHAN_*).

| variable | default | meaning |
|---|---|---|
| TOKEN_RENEW_BELOW_SECONDS | 57600 (16 h) | renew in the quiet hours once less is left |
| TOKEN_RENEW_URGENT_SECONDS | 14400 (4 h) | renew at any hour once less is left |
| TOKEN_RENEW_TIMEOUT_SECONDS | 10 | HTTP timeout of one RenewToken call |

DHAN_SECRET_ARN is required: the renewal writes the new token into that secret; with a token in
the environment (a local run) there is nothing to write to.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.config import Env
from core.errors import ConfigError
from functions.token.policy import RenewalPolicy


@dataclass(frozen=True, slots=True)
class TokenSettings:
    policy: RenewalPolicy
    timeout: float = 10.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> TokenSettings:
        env = Env(environ)
        try:
            policy = RenewalPolicy(
                renew_below=env.number("TOKEN_RENEW_BELOW_SECONDS", 57600.0, minimum=1.0),
                urgent_below=env.number("TOKEN_RENEW_URGENT_SECONDS", 14400.0, minimum=1.0),
            )
        except ValueError as exc:
            raise ConfigError(f"TOKEN_RENEW_*: {exc}") from None
        return cls(policy, env.number("TOKEN_RENEW_TIMEOUT_SECONDS", 10.0, minimum=0.1))
