"""`python -m streamer` as a process: configuration errors, and the SIGTERM path."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from core.messages import loads
from core.names import HEARTBEAT_KEY, STREAMER_LEASE_KEY
from local.dhan_sim.feed import FeedSimulator, SimConfig
from streamer.__main__ import main
from streamer.settings import load_settings
from streamer.wiring import build_clients

ROOT = Path(__file__).resolve().parents[2]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DHAN", "STREAM", "REDIS_URL"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def test_missing_credentials_exit_2_with_one_line(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("DHAN_CLIENT_ID", "DHAN_ACCESS_TOKEN", "DHAN_SECRET_ARN"):
        monkeypatch.delenv(name, raising=False)
    assert main(["--keys", "NSE_EQ:1333"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("streamer: DhanHQ client id and access token missing")


def test_bad_flags_exit_2(monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DHAN_CLIENT_ID", "1")
    monkeypatch.setenv("DHAN_ACCESS_TOKEN", "t0ken")
    assert main(["--keys", "NSE:1"]) == 2
    assert "unknown segment" in capsys.readouterr().err
    assert main(["--mode", "depth"]) == 2


async def test_the_redis_auth_token_reaches_the_client() -> None:
    settings = load_settings({"REDIS_URL": "rediss://cache.example:6379/0",
                              "REDIS_AUTH_TOKEN": "s3cret-token"})
    assert "s3cret" not in repr(settings)
    client = build_clients(settings).redis
    try:
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["password"] == "s3cret-token" and kwargs["host"] == "cache.example"
    finally:
        await client.aclose()
    plain = build_clients(load_settings({})).redis
    try:
        assert plain.connection_pool.connection_kwargs.get("password") is None
    finally:
        await plain.aclose()


async def test_sigterm_flushes_says_goodbye_and_exits_0(redis_url: str,
                                                        redis_client: redis.Redis) -> None:
    async with FeedSimulator(SimConfig(rate=500, seed=1)) as sim:
        env = clean_env() | {
            "DHAN_CLIENT_ID": "1000000001",
            "DHAN_ACCESS_TOKEN": "sim-token",
            "STREAMER_ALWAYS_OPEN": "true",
            "STREAMER_HEARTBEAT_S": "0.2",
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "streamer", "--keys", "NSE_EQ:1333,IDX_I:13",
            "--feed-url", sim.url, "--redis-url", redis_url, "--no-auto-stop",
            "--instance-id", "sub-1", cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(30):
                while not (redis_client.get("ltp:NSE_EQ:1333") and redis_client.get(
                        "ltp:IDX_I:13") and redis_client.get(HEARTBEAT_KEY)):
                    await asyncio.sleep(0.02)
            assert redis_client.get(STREAMER_LEASE_KEY) == b"sub-1"
            proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            async with asyncio.timeout(10):
                _, stderr = await proc.communicate()
            elapsed = time.monotonic() - started
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert elapsed < 10
    assert {"RequestCode": 12} in [r.message for r in sim.requests]
    assert redis_client.get(STREAMER_LEASE_KEY) is None
    assert loads(redis_client.get(HEARTBEAT_KEY) or b"{}")["state"] == "stopped"
    lines = [orjson.loads(line) for line in stderr.decode().splitlines()]
    assert any("SIGTERM received" in line["message"] for line in lines)
    assert b"sim-token" not in stderr
