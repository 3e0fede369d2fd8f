"""The streamer follows a renewed DhanHQ token: the simulator's feed, a real Redis, the
credentials re-read as the secret would be (a mapping the test changes)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import redis
import redis.asyncio as aioredis

from core.names import CONTROL_CHANNEL, TOKEN_RENEWED
from local.dhan_sim.feed import FeedSimulator, SimConfig
from streamer.connection import State
from streamer.service import Streamer
from tests.streamer.test_service import (
    CLIENT,
    credentials,
    expected_prices,
    fast_settings,
    heartbeat,
    keys_csv,
    redis_prices,
    running,
    until,
)

OLD, NEW = "token-of-day-1", "token-of-day-2"


def on_token(streamer: Streamer, token: str) -> bool:
    connections = list(streamer.connections.values())
    return bool(connections) and all(
        c.state is State.CONNECTED and c.session_credentials is not None
        and c.session_credentials.access_token.value == token for c in connections)


async def newest_prices_converge(sim: FeedSimulator, client: redis.Redis) -> None:
    sim.mute(True)
    await asyncio.sleep(0.05)
    expected = expected_prices(sim)
    await until(lambda: redis_prices(client, sorted(expected)) == expected)
    sim.mute(False)


async def test_a_renewal_message_switches_connections_one_at_a_time(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {"DHAN_CLIENT_ID": CLIENT, "DHAN_ACCESS_TOKEN": OLD}
    async with FeedSimulator(SimConfig(rate=2_000, seed=3, access_token=OLD)) as sim:
        settings = fast_settings(redis_url, sim.url, keys=keys_csv(6),
                                 env={"STREAMER_PER_CONNECTION": "3",
                                      "STREAMER_TOKEN_POLL_S": "600"})
        streamer = Streamer(settings, redis=aredis, credentials=credentials(env))
        with caplog.at_level(logging.INFO):
            async with running(streamer):
                await until(lambda: on_token(streamer, OLD) and len(streamer.connections) == 2)
                await until(lambda: sim.ticks_sent > 200)

                # What the renewal job does: Dhan has a new token, the secret holds it.
                sim.set_token(NEW)
                env["DHAN_ACCESS_TOKEN"] = NEW
                fewest_open = sim.connection_count
                watching = True

                async def watch() -> None:
                    nonlocal fewest_open
                    while watching:
                        fewest_open = min(fewest_open, sim.connection_count)
                        await asyncio.sleep(0)

                watcher = asyncio.create_task(watch())
                await aredis.publish(CONTROL_CHANNEL, json.dumps(
                    {"type": TOKEN_RENEWED, "version_id": "v2"}))
                await until(lambda: on_token(streamer, NEW) and streamer.token_switches == 2)
                watching = False
                await watcher

                assert fewest_open >= 1  # never both connections between sockets at once
                await newest_prices_converge(sim, redis_client)
                await until(lambda: heartbeat(redis_client).get("token", {}).get("switches")
                            == 2)
                beat = heartbeat(redis_client)
                assert beat["errors"]["feed"] == 0  # a switch is no feed failure
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "reconnecting with the renewed token" in logged
    assert OLD not in logged and NEW not in logged


async def test_connections_cut_with_807_take_the_new_token_without_waiting_out_backoff(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    env = {"DHAN_CLIENT_ID": CLIENT, "DHAN_ACCESS_TOKEN": OLD}
    async with FeedSimulator(SimConfig(rate=2_000, seed=4, access_token=OLD)) as sim:
        # A 30 s backoff after the 807: only the wake-up can reconnect within the wait below.
        settings = fast_settings(redis_url, sim.url, keys=keys_csv(4),
                                 env={"STREAMER_PER_CONNECTION": "2",
                                      "STREAMER_TOKEN_POLL_S": "600",
                                      "STREAMER_BACKOFF_BASE_S": "30",
                                      "STREAMER_BACKOFF_MAX_S": "30"})
        streamer = Streamer(settings, redis=aredis, credentials=credentials(env),
                            backoff_rng=lambda: 1.0)
        async with running(streamer):
            await until(lambda: on_token(streamer, OLD) and len(streamer.connections) == 2)
            # Dhan renewed and killed the old token before the secret had the new one.
            sim.set_token(NEW)
            await sim.send_disconnect(807)
            await until(lambda: all(c.state is State.BACKOFF
                                    for c in streamer.connections.values()))
            env["DHAN_ACCESS_TOKEN"] = NEW
            await aredis.publish(CONTROL_CHANNEL, json.dumps({"type": TOKEN_RENEWED}))
            await until(lambda: on_token(streamer, NEW), timeout=10)
            await newest_prices_converge(sim, redis_client)


async def test_the_poll_finds_a_token_put_in_by_hand(
    redis_url: str, redis_client: redis.Redis, aredis: aioredis.Redis
) -> None:
    env = {"DHAN_CLIENT_ID": CLIENT, "DHAN_ACCESS_TOKEN": OLD}
    async with FeedSimulator(SimConfig(rate=1_000, seed=5, access_token=OLD)) as sim:
        settings = fast_settings(redis_url, sim.url, keys=keys_csv(2),
                                 env={"STREAMER_TOKEN_POLL_S": "0.1"})
        streamer = Streamer(settings, redis=aredis, credentials=credentials(env))
        async with running(streamer):
            await until(lambda: on_token(streamer, OLD))
            sim.set_token(NEW)
            env["DHAN_ACCESS_TOKEN"] = NEW  # no message: an operator edited the secret
            await until(lambda: on_token(streamer, NEW))
            assert streamer.tokenwatch.checks >= 1
            await newest_prices_converge(sim, redis_client)
