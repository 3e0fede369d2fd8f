"""The scheduler end to end: real Redis, moto's ECS, the same start/stop code as the API."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import boto3
import pytest
import redis
from moto import mock_aws

from core.names import stream_key
from functions.schedule import handler
from functions.schedule.errors import ScheduleEventError
from functions.schedule.wiring import build_scheduler, scheduler
from functions.streams import Stream, start_streams

CLUSTER = "ltp"
SERVICE = "streamer"
# 09:00 IST on Tuesday 2025-02-25, a trading day; 2025-02-26 is Mahashivratri (holiday).
TRADING_DAY_0900 = "2025-02-25T03:30:00Z"
HOLIDAY_0900 = "2025-02-26T03:30:00Z"
TRADING_DAY_1545 = "2025-02-25T10:15:00Z"


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "ap-south-1",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


@pytest.fixture
def ecs(aws: None) -> boto3.client:
    client = boto3.client("ecs", region_name="ap-south-1")
    client.create_cluster(clusterName=CLUSTER)
    client.register_task_definition(
        family="streamer",
        requiresCompatibilities=["FARGATE"],
        networkMode="awsvpc",
        cpu="512",
        memory="1024",
        containerDefinitions=[{"name": "streamer", "image": "streamer:latest", "essential": True}],
    )
    client.create_service(
        cluster=CLUSTER, serviceName=SERVICE, taskDefinition="streamer", desiredCount=0,
        launchType="FARGATE",
    )
    return client


def desired_count(ecs: boto3.client) -> int:
    service = ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0]
    return int(service["desiredCount"])


@pytest.fixture
def environ(redis_url: str) -> dict[str, str]:
    return {"REDIS_URL": redis_url, "STREAMER_CLUSTER": CLUSTER, "STREAMER_SERVICE": SERVICE}


def test_start_on_a_trading_day_scales_the_streamer_once(
    ecs: boto3.client, environ: dict[str, str], redis_client: redis.Redis
) -> None:
    runner = build_scheduler(environ)

    first = runner.run({"action": "start", "scheduledTime": TRADING_DAY_0900})
    again = runner.run({"action": "start", "scheduledTime": TRADING_DAY_0900})

    assert first["decision"] == "start" and first["day"] == "2025-02-25"
    assert first["result"]["streamer"] == "started"
    assert again["result"]["streamer"] == "already_running"
    assert desired_count(ecs) == 1


def test_start_on_a_holiday_changes_nothing(
    ecs: boto3.client, environ: dict[str, str], redis_client: redis.Redis
) -> None:
    outcome = build_scheduler(environ).run({"action": "start", "scheduledTime": HOLIDAY_0900})

    assert outcome == {"action": "start", "decision": "skip-holiday", "day": "2025-02-26"}
    assert desired_count(ecs) == 0


def test_stop_scales_to_zero_idempotently_and_erases_no_stream(
    ecs: boto3.client, environ: dict[str, str], redis_client: redis.Redis
) -> None:
    runner = build_scheduler(environ)
    runner.run({"action": "start", "scheduledTime": TRADING_DAY_0900})
    # A screener started through the API's code path in between.
    start_streams(
        [Stream.create("nifty", ["NSE_EQ:1333"], "quote", by="api")],
        redis=redis_client,
        service=None,
    )
    assert redis_client.exists(stream_key("nifty"))

    stopped = runner.run({"action": "stop", "scheduledTime": TRADING_DAY_1545})
    again = runner.run({"action": "stop", "scheduledTime": TRADING_DAY_1545})

    assert stopped["result"] == {"streamer": "stopped", "streams_left": ["nifty"]}
    assert again["result"]["streamer"] == "already_stopped"
    # Not erased: with no streamer refreshing it, its TTL ends it within the hour.
    assert 0 < redis_client.ttl(stream_key("nifty")) <= 3600
    assert desired_count(ecs) == 0


def test_without_a_scheduled_time_the_clock_picks_the_day(
    ecs: boto3.client, environ: dict[str, str], redis_client: redis.Redis
) -> None:
    saturday = datetime(2025, 3, 1, 3, 30, tzinfo=UTC)
    runner = build_scheduler(environ, clock=lambda: saturday)

    assert runner.run({"action": "start"})["decision"] == "skip-weekend"
    assert desired_count(ecs) == 0


@pytest.mark.parametrize(
    "event",
    [{}, {"action": "launch"}, {"action": "start", "scheduledTime": "tuesday"}, ["start"]],
)
def test_a_bad_event_is_refused_before_anything_changes(
    ecs: boto3.client, environ: dict[str, str], event: object, redis_client: redis.Redis
) -> None:
    with pytest.raises(ScheduleEventError):
        build_scheduler(environ).run(event)  # type: ignore[arg-type]
    assert desired_count(ecs) == 0


def test_the_lambda_entry_point_reads_its_environment(
    ecs: boto3.client,
    environ: dict[str, str],
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    scheduler.cache_clear()
    try:
        outcome = handler({"action": "start", "scheduledTime": TRADING_DAY_0900}, None)
    finally:
        scheduler.cache_clear()
    assert outcome["result"]["streamer"] == "started"
    assert desired_count(ecs) == 1


@pytest.fixture
def acl_user(redis_client: redis.Redis) -> Iterator[tuple[str, str]]:
    """A password-protected Redis user (ElastiCache AUTH stand-in), removed afterwards."""
    name, password = "ltp-schedule-test", "s3cret-token-from-secrets-manager"
    try:
        redis_client.acl_setuser(name, enabled=True, passwords=[f"+{password}"],
                                 keys=["*"], channels=["*"], commands=["+@all"])  # fmt: skip
    except redis.ResponseError as exc:
        pytest.skip(f"this Redis has no ACL support: {exc}")
    try:
        yield name, password
    finally:
        redis_client.acl_deluser(name)


def test_the_redis_auth_token_comes_from_its_secret(
    ecs: boto3.client, redis_url: str, acl_user: tuple[str, str], redis_client: redis.Redis
) -> None:
    user, password = acl_user
    url = redis_url.replace("redis://", f"redis://{user}@", 1)
    secrets = boto3.client("secretsmanager", region_name="ap-south-1")
    right = secrets.create_secret(Name="ltp/redis-auth", SecretString=password)["ARN"]
    wrong = secrets.create_secret(Name="ltp/redis-auth-old", SecretString="rotated-away")["ARN"]
    environ = {"REDIS_URL": url, "STREAMER_CLUSTER": CLUSTER, "STREAMER_SERVICE": SERVICE}

    with pytest.raises(redis.AuthenticationError):
        build_scheduler({**environ, "REDIS_AUTH_SECRET_ARN": wrong}).run(
            {"action": "start", "scheduledTime": TRADING_DAY_0900}
        )
    assert desired_count(ecs) == 0

    outcome = build_scheduler({**environ, "REDIS_AUTH_SECRET_ARN": right}).run(
        {"action": "start", "scheduledTime": TRADING_DAY_0900}
    )
    assert outcome["result"]["streamer"] == "started"
    assert desired_count(ecs) == 1
