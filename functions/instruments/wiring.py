"""Real clients for the instrument-master load, built once per execution environment.

Settings are the shared `functions.settings.Settings` (REDIS_URL, REDIS_AUTH_TOKEN or
REDIS_AUTH_SECRET_ARN, REDIS_SOCKET_TIMEOUT, ...) and `InstrumentSettings`
(INSTRUMENT_MASTER_URL, INSTRUMENT_SEGMENTS, ...); Redis is reached through
`core.redis_client`, like every other function.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from functools import cache
from typing import Any

from core.backoff import Backoff
from core.redis_client import LAMBDA_REDIS_ENV, sync_client
from functions.instruments.runner import InstrumentLoader, LoadSummary, no_deadline
from functions.instruments.settings import InstrumentSettings
from functions.secrets import SecretsCache, secrets_for
from functions.settings import Settings

# What the load needs in AWS (tests/infra check the template passes all of it).
REQUIRED_ENV = {"handler": LAMBDA_REDIS_ENV}


def read_settings(
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, InstrumentSettings]:
    return Settings.from_env(environ), InstrumentSettings.from_env(environ)


def build_loader(
    environ: Mapping[str, str] | None = None,
    *,
    secrets: SecretsCache | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> InstrumentLoader:
    settings, instruments = read_settings(environ)
    if secrets is None:
        secrets = secrets_for(settings)
    backoff = Backoff(base=instruments.retry_base_seconds, cap=60.0, min_fraction=0.5)
    return InstrumentLoader(
        redis=sync_client(settings.redis, secrets=secrets),
        source=instruments.master_url,
        segments=instruments.segments,
        attempts=instruments.attempts,
        backoff=backoff,
        sleep=sleep,
    )


def remaining_seconds(context: Any) -> Callable[[], float]:
    """The invocation's time left, from Lambda's context (none without one)."""
    if context is None or not hasattr(context, "get_remaining_time_in_millis"):
        return no_deadline
    return lambda: float(context.get_remaining_time_in_millis()) / 1000.0


@cache
def loader() -> InstrumentLoader:
    # Lambda's Python runtime leaves the root logger at WARNING; the summary is INFO.
    package = logging.getLogger("functions.instruments")
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)
    return build_loader()


def handle(event: Any, context: Any) -> LoadSummary:
    """Every event means "load now" (the schedule's, the deploy-time trigger's, a manual one)."""
    return loader().run(remaining=remaining_seconds(context))
