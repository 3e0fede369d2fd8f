"""Three trading days on one token lineage with no human step, the clock injected.

Dhan is the simulator (feed + REST sharing one `TokenAuthority`, whose tokens expire by the
injected clock); the secret lives in moto; the streamer reads it as in AWS (DHAN_SECRET_ARN);
the renewal job (`functions.token`) runs every 30 simulated minutes as EventBridge Scheduler
would run it. Each simulated day ends with the feed dropping every socket, so the streamer must
reconnect with a token that is still valid. Checked: every renewal happens outside the
session and is logged without the token; after each one the streamer is on the new token and
every key's newest price reaches Redis; no key goes without an update for longer than
`STALE_BOUND_SECONDS` around a switch (a price is shown stale after the 30 s cache TTL).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from datetime import datetime
from typing import Any

import boto3
import httpx
import pytest
import redis
import redis.asyncio as aioredis
from moto import mock_aws

from core.messages import IST, loads
from core.names import LIVE_LTP_CHANNEL
from functions.token.renewer import TokenRenewer
from local.dhan_sim.feed import FeedSimulator, SimConfig
from local.dhan_sim.rest import RestStandIn
from local.dhan_sim.tokens import TokenAuthority
from streamer.service import Streamer
from streamer.settings import CredentialSource
from tests.functions.test_token_renewal import Clock
from tests.streamer.test_service import CLIENT, fast_settings, keys_csv, running, until
from tests.streamer.test_tokenwatch import newest_prices_converge, on_token

STALE_BOUND_SECONDS = 5.0
STEP = 1800.0  # the renewal schedule: every 30 minutes
DAYS = 3


class Gaps:
    """Per key, the longest time between two updates on the channel (real seconds)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.worst = 0.0

    def reset(self) -> None:
        self.worst = 0.0

    def add(self, raw: bytes) -> None:
        now = time.monotonic()
        for update in loads(raw).get("updates", []):
            key = update["key"]
            if key in self.last:
                self.worst = max(self.worst, now - self.last[key])
            self.last[key] = now


async def follow(aredis: aioredis.Redis, gaps: Gaps, ready: asyncio.Event) -> None:
    async with aredis.pubsub() as pubsub:
        await pubsub.subscribe(LIVE_LTP_CHANNEL)
        ready.set()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if message is not None:
                gaps.add(message["data"])


async def test_three_days_of_streaming_renew_the_token_with_no_human_step(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    # Monday 30 Nov 2026, 08:00 IST: an operator puts the day's first token in the secret once.
    clock = Clock(datetime(2026, 11, 30, 8, 0, tzinfo=IST).timestamp())
    authority = TokenAuthority(CLIENT, None, clock=clock)
    first_token = authority.current
    with mock_aws(), RestStandIn(tokens=authority, enforce_rate_limit=False) as rest, \
            httpx.Client() as http:
        secrets = boto3.client("secretsmanager", region_name="ap-south-1")
        arn = secrets.create_secret(Name="dhan", SecretString=json.dumps(
            {"client_id": CLIENT, "access_token": first_token}))["ARN"]
        renewer = TokenRenewer(secrets_client=secrets, secret_arn=arn, http=http,
                               api_base_url=rest.base_url, redis=redis_client, clock=clock,
                               sleep=lambda _: None, emit=lambda _: None)
        async with FeedSimulator(SimConfig(rate=2_000, seed=11, access_token=first_token),
                                 tokens=authority) as sim:
            settings = fast_settings(redis_url, sim.url, keys=keys_csv(6),
                                     env={"STREAMER_PER_CONNECTION": "3",
                                          "STREAMER_TOKEN_POLL_S": "600"},
                                     secret_arn=arn)
            source = CredentialSource(environ={}, secret_arn=arn, secrets_client=secrets)
            streamer = Streamer(settings, redis=aredis, credentials=source)
            gaps, ready = Gaps(), asyncio.Event()
            follower = asyncio.create_task(follow(aredis, gaps, ready))
            await ready.wait()
            renewals: list[dict[str, Any]] = []
            with caplog.at_level(logging.INFO):
                async with running(streamer):
                    await until(lambda: on_token(streamer, first_token)
                                and len(streamer.connections) == 2)
                    for step in range(int(DAYS * 86400 / STEP)):
                        clock.now += STEP
                        gaps.reset()
                        outcome = await asyncio.to_thread(renewer.run)
                        if outcome["result"] == "renewed":
                            await until(lambda: on_token(streamer, authority.current))
                            await newest_prices_converge(sim, redis_client)
                            renewals.append({"at": datetime.fromtimestamp(clock.now, IST),
                                             "worst_gap_s": round(gaps.worst, 3)})
                        else:
                            assert outcome["result"] == "skipped", outcome
                        if step % 48 == 47:  # the day's end: every socket drops
                            await sim.drop_connections()
                            await until(lambda: on_token(streamer, authority.current)
                                        and sim.connection_count == 2)
                            await newest_prices_converge(sim, redis_client)
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)

    print("renewals:", [(r["at"].strftime("%a %H:%M"), r["worst_gap_s"]) for r in renewals])
    assert len(renewals) >= DAYS  # at least one a day, with 24 h tokens
    for renewal in renewals:
        local = renewal["at"]
        assert local.weekday() >= 5 or not (8 * 60 + 45 <= local.hour * 60 + local.minute
                                             < 16 * 60 + 15), renewal
        assert renewal["worst_gap_s"] < STALE_BOUND_SECONDS, renewal
    logged = [r.getMessage() for r in caplog.records]
    assert sum("DhanHQ token renewed" in m for m in logged) == len(renewals)
    text = "\n".join(logged)
    assert first_token not in text and authority.current not in text
    assert streamer.tokens.changes == len(renewals)  # each renewal reached the streamer once

