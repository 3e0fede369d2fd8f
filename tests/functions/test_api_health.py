"""GET /api/v1/health/market_stream: heartbeat age -> healthy/stale/stopped, streams, ECS
counts (moto), WebSocket connection count."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

from core.names import HEARTBEAT_KEY, stream_key
from functions.api.health import assess, heartbeat_time
from functions.streams import EcsStreamerService
from realtime.keys import CONNECTIONS
from tests.functions import test_api_support as support
from tests.functions.test_api_support import ApiHarness, MakeApi

make_api = support.make_api
api = support.api

NOW = 1_795_666_500.0


@pytest.mark.parametrize(
    ("heartbeat", "expected"),
    [
        ({"updated_at": "2026-11-26T04:15:00Z"}, 1_795_666_500.0),
        ({"time": "2026-11-26T09:45:00+05:30"}, 1_795_666_500.0),
        ({"time": 1_795_666_500}, 1_795_666_500.0),
        ({"at": 1_795_666_500_000}, 1_795_666_500.0),
        ({"timestamp": 1_795_666_500.25}, 1_795_666_500.25),
        ({"time": "2026-11-26T04:15:00"}, None),  # no zone: cannot be trusted
        ({"time": "yesterday"}, None),
        ({"time": True}, None),
        ({}, None),
    ],
)
def test_heartbeat_times_are_read_defensively(heartbeat: dict[str, Any], expected: Any) -> None:
    assert heartbeat_time(heartbeat) == expected


def test_assess_thresholds() -> None:
    def status(raw: Any) -> str:
        return str(assess(raw, now=NOW, stale_after=45.0)["status"])

    assert status(None) == "stopped"
    assert status(json.dumps({"time": NOW - 10})) == "healthy"
    assert status(json.dumps({"time": NOW - 45})) == "healthy"
    assert status(json.dumps({"time": NOW - 46})) == "stale"
    assert status(json.dumps({"time": NOW - 5, "state": "stopped"})) == "stopped"
    assert status(b"{garbage") == "stale"
    assert status(json.dumps([1, 2])) == "stale"
    assert status(json.dumps({"connections": 2})) == "stale"


def test_no_heartbeat_means_stopped(api: ApiHarness) -> None:
    answer = api.invoke(support.load_event("http_get_health"))
    assert answer.status == 200
    body = answer.json()
    assert body["status"] == "stopped"
    assert body["heartbeat"] is None
    assert body["streams"] == {"count": 0, "keys": 0, "names": []}
    assert body["websocket_connections"] == 0
    assert body["streamer_service"] == {"managed": False}


def test_fresh_heartbeat_streams_and_connections(
    api: ApiHarness, redis_client: redis.Redis
) -> None:
    heartbeat = {"time": time.time() - 3, "connections": 2, "instruments": 150, "ticks": 9000}
    redis_client.set(HEARTBEAT_KEY, json.dumps(heartbeat), ex=60)
    swing = {"name": "swing", "keys": ["NSE_EQ:1", "NSE_EQ:2"]}
    longterm = {"name": "longterm", "keys": ["NSE_EQ:2", "IDX_I:13"]}
    redis_client.set(stream_key("swing"), json.dumps(swing))
    redis_client.set(stream_key("longterm"), json.dumps(longterm))
    now = time.time()
    # Connection registry (functions.ws): ids scored by expiry; expired ones do not count.
    redis_client.zadd(CONNECTIONS, {"c1": now + 3600, "c2": now + 60, "old": now - 5})

    body = api.health().json()

    assert body["status"] == "healthy"
    assert 2.5 < body["heartbeat_age_seconds"] < 30
    assert body["heartbeat"]["instruments"] == 150
    assert body["streams"] == {"count": 2, "keys": 3, "names": ["longterm", "swing"]}
    assert body["websocket_connections"] == 2
    assert body["thresholds"] == {"healthy_max_age_seconds": 45.0}


def test_old_heartbeat_is_stale(make_api: MakeApi, redis_client: redis.Redis) -> None:
    api = make_api(heartbeat_stale_seconds=10.0)
    redis_client.set(HEARTBEAT_KEY, json.dumps({"updated_at": time.time() - 30}))
    body = api.health().json()
    assert body["status"] == "stale"
    assert "more than 10 s" in body["detail"]


@pytest.fixture
def ecs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "ap-south-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("ecs", region_name="ap-south-1")
        client.create_cluster(clusterName="ltp")
        client.register_task_definition(family="streamer", containerDefinitions=[
            {"name": "streamer", "image": "ltp/streamer", "memory": 512}])  # fmt: skip
        client.create_service(cluster="ltp", serviceName="ltp-streamer",
                              taskDefinition="streamer", desiredCount=1)  # fmt: skip
        yield client


def test_ecs_counts_are_reported_when_managed(make_api: MakeApi, ecs: Any) -> None:
    service = EcsStreamerService(ecs=ecs, cluster="ltp", service="ltp-streamer")
    api = make_api(deps_overrides={"streamer_service": lambda: service})
    body = api.health().json()
    assert body["streamer_service"]["managed"] is True
    assert body["streamer_service"]["desired"] == 1
    assert body["streamer_service"]["status"] == "ACTIVE"
    assert {"running", "pending"} <= body["streamer_service"].keys()


def test_ecs_errors_are_reported_not_raised(make_api: MakeApi, ecs: Any) -> None:
    service = EcsStreamerService(ecs=ecs, cluster="ltp", service="missing")
    api = make_api(deps_overrides={"streamer_service": lambda: service})
    answer = api.health()
    assert answer.status == 200
    assert "missing" in answer.json()["streamer_service"]["error"]
