"""Shared fixtures: a real Redis (private, else reachable, else embedded), isolated per test."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from urllib.parse import urlparse, urlunparse

import pytest
import redis
import redis.asyncio as aioredis

from local.redis_server import RedisHandle, private_redis_server, redis_for_local_use

# Tests own one logical database and flush it around each test; the default 0 stays untouched.
TEST_DB = int(os.environ.get("LTP_TEST_REDIS_DB", "13"))


@pytest.fixture(scope="session", autouse=True)
def _liveness_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Streamers and bridges started in-process touch their liveness file (`core.liveness`):
    in the session's temporary directory, not the machine's /tmp."""
    before = os.environ.get("LIVENESS_FILE")
    os.environ["LIVENESS_FILE"] = str(tmp_path_factory.mktemp("liveness") / "alive")
    yield
    if before is None:
        os.environ.pop("LIVENESS_FILE", None)
    else:
        os.environ["LIVENESS_FILE"] = before


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisHandle]:
    """A private redis-server per test session when one is installed.

    Pub/Sub channels are shared by every logical database, so a developer's running stack (or
    a second test run) on the same server would cross-talk with these tests; a private server
    isolates them. `LTP_TEST_REDIS_URL` points the tests at a given server instead.
    """
    explicit = os.environ.get("LTP_TEST_REDIS_URL")
    binary = shutil.which("redis-server")
    if explicit or not binary:
        with redis_for_local_use(explicit or None) as handle:
            yield handle
    else:
        with private_redis_server(binary) as handle:
            yield handle


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisHandle) -> str:
    parsed = urlparse(redis_server.url)
    return urlunparse(parsed._replace(path=f"/{TEST_DB}"))


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


@pytest.fixture
async def aredis(redis_url: str, redis_client: redis.Redis) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()
