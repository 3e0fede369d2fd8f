"""The quotes function's wiring: settings -> clients -> `QuoteService`, built once per execution
environment (`service()`), so that warm invocations reuse the Redis pool, the cached secret and
the SDK client."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from redis import Redis

from core.redis_client import LAMBDA_REDIS_ENV, sync_client
from functions.dhan_rest import SdkSourceCache
from functions.errors import QuoteRequestError
from functions.quotes.contract import QuoteAnswer, Refusal, answer_of, parse_request, refusal
from functions.quotes.fetch import Log, fetch_quotes
from functions.secrets import SecretsCache, secrets_for
from functions.settings import Settings

# What the quotes function needs in AWS (tests/infra check the template passes all of it).
REQUIRED_ENV = {"handler": (*LAMBDA_REDIS_ENV, "DHAN_SECRET_ARN")}
SERVICE_NAME = "ltp-quotes"

logger = Logger(service=SERVICE_NAME)


def read_settings(environ: Mapping[str, str] | None = None) -> Settings:
    return Settings.from_env(environ)


@dataclass(frozen=True)
class QuoteService:
    settings: Settings
    redis: Redis
    secrets: SecretsCache | None
    sources: SdkSourceCache
    log: Log

    def handle(self, event: Any) -> QuoteAnswer | Refusal:
        try:
            keys, caller = parse_request(event)
        except QuoteRequestError as exc:
            self.log.warning("quote request refused", extra={"reason": str(exc)})
            return refusal(exc)
        result = fetch_quotes(keys, caller=caller, settings=self.settings, redis=self.redis,
                              secrets=self.secrets, sources=self.sources, log=self.log)
        return answer_of(result)


def build(settings: Settings | None = None, *, secrets: SecretsCache | None = None,
          redis: Redis | None = None) -> QuoteService:  # fmt: skip
    settings = settings or read_settings()
    if secrets is None:
        secrets = secrets_for(settings)
    if redis is None:
        redis = sync_client(settings.redis, secrets=secrets)
    return QuoteService(settings=settings, redis=redis, secrets=secrets,
                        sources=SdkSourceCache(base_url=settings.dhan_api_base_url), log=logger)


@cache
def service() -> QuoteService:
    return build()


def handle(event: Any, context: Any) -> QuoteAnswer | Refusal:
    return service().handle(event)
