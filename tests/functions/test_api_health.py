"""GET /api/v1/health/market_stream: heartbeat age -> healthy/degraded/stale/stopped (tick age
in market hours, fatal feed connections, the relay bridge heartbeat), streams, ECS counts
(moto), WebSocket connection count; what an answer costs (no SCAN, the router's per-container
caches of the answer and of the ECS counts, with an injected clock)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import date, datetime
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

from core.messages import IST
from core.names import HEARTBEAT_KEY, stream_key
from functions.api.health import (
    CachedCounts,
    NseSession,
    assess,
    heartbeat_time,
    shipped_session,
)
from functions.api.router import LambdaRouter
from functions.errors import ScalingError
from functions.settings import Settings
from functions.streams import (
    STREAM_INDEX_KEY,
    EcsStreamerService,
    ServiceCounts,
    Stream,
    start_streams,
)
from realtime.keys import BRIDGE_HEARTBEAT, CONNECTIONS
from tests.functions import test_api_support as support
from tests.functions.test_api_support import ApiHarness, MakeApi

make_api = support.make_api
api = support.api

NOW = 1_795_666_500.0  # Thursday 2026-11-26 09:45 IST: a trading day, the market open


def ist(day: str, clock: str) -> float:
    return datetime.combine(date.fromisoformat(day), datetime.strptime(clock, "%H:%M:%S").time(),
                            IST).timestamp()  # fmt: skip


OPEN = ist("2026-11-26", "09:45:00")
EVENING = ist("2026-11-26", "20:00:00")
SATURDAY = ist("2026-11-28", "11:00:00")
HOLIDAY = ist("2026-11-24", "11:00:00")  # a Tuesday NSE is closed (nse_holidays.json)


def streamer_beat(at: float, **fields: Any) -> str:
    """A heartbeat shaped like streamer/heartbeat.py writes it, written at `at`."""
    document: dict[str, Any] = {
        "time": datetime.fromtimestamp(at, IST).isoformat(), "instance_id": "i-1",
        "state": "running", "mode": "quote", "connected": 1,
        "connections": [{"index": 0, "state": "connected", "last_error": None,
                         "connected_for_s": 3600.0}],
        "instruments": 2, "ticks": 9000, "last_tick_age_s": 0.4,
        "errors": {"feed": 0, "last_fatal": None}, "market_open": True,
    }  # fmt: skip
    document.update(fields)
    return json.dumps(document)


def bridge_beat(at: float) -> str:
    return json.dumps({"time": at, "subscribed": True, "windows": 40, "invoke_errors": 0})


def health(raw: str | None, *, now: float = OPEN, bridge: str | None = "fresh",
           **limits: float) -> dict[str, Any]:  # fmt: skip
    """assess() with the shipped NSE session, a bridge that beat 5 s ago unless told."""
    if bridge == "fresh":
        bridge = bridge_beat(now - 5)
    limits.setdefault("stale_after", 45.0)
    return assess(raw, now=now, bridge=bridge, session=shipped_session(), **limits)


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
        return str(assess(raw, now=NOW, stale_after=45.0, bridge=bridge_beat(NOW - 5))["status"])

    assert status(None) == "stopped"
    assert status(json.dumps({"time": NOW - 10})) == "healthy"
    assert status(json.dumps({"time": NOW - 45})) == "healthy"
    assert status(json.dumps({"time": NOW - 46})) == "stale"
    assert status(json.dumps({"time": NOW - 5, "state": "stopped"})) == "stopped"
    assert status(b"{garbage") == "stale"
    assert status(json.dumps([1, 2])) == "stale"
    assert status(json.dumps({"connections": 2})) == "stale"


def test_a_streaming_market_is_healthy_with_no_reasons() -> None:
    answer = health(streamer_beat(OPEN - 8))
    assert answer["status"] == "healthy"
    assert answer["reasons"] == []
    assert answer["market_open"] is True
    assert answer["tick_age_seconds"] == pytest.approx(8.4)
    assert answer["bridge"]["heartbeat_age_seconds"] == 5.0
    assert answer["bridge"]["heartbeat"]["subscribed"] is True


@pytest.mark.parametrize(
    ("now", "is_open"),
    [(OPEN, True), (ist("2026-11-26", "09:15:00"), True), (ist("2026-11-26", "15:29:59"), True),
     (ist("2026-11-26", "09:14:59"), False), (ist("2026-11-26", "15:30:00"), False),
     (EVENING, False), (SATURDAY, False), (HOLIDAY, False)],
)  # fmt: skip
def test_the_nse_session_skips_nights_weekends_and_holidays(now: float, is_open: bool) -> None:
    assert (shipped_session().seconds_open(now) is not None) is is_open
    # Without the holiday list the Tuesday holiday is an ordinary trading day.
    assert (NseSession().seconds_open(HOLIDAY) is not None) is True


def test_old_ticks_in_market_hours_are_degraded() -> None:
    answer = health(streamer_beat(OPEN - 5, last_tick_age_s=40.0))
    assert answer["status"] == "degraded"
    assert answer["tick_age_seconds"] == 45.0
    (reason,) = answer["reasons"]
    assert "newest tick 45 s old" in reason and "more than 30 s" in reason
    assert answer["detail"] == reason


def test_the_heartbeat_age_counts_toward_the_tick_age() -> None:
    # 20 s since the last tick when the heartbeat was written; written 5 s or 15 s ago.
    assert health(streamer_beat(OPEN - 5, last_tick_age_s=20.0))["status"] == "healthy"
    answer = health(streamer_beat(OPEN - 15, last_tick_age_s=20.0))
    assert answer["status"] == "degraded"
    assert answer["tick_age_seconds"] == 35.0


def test_the_tick_threshold_is_configurable() -> None:
    raw = streamer_beat(OPEN - 5, last_tick_age_s=40.0)
    assert health(raw, tick_stale_after=60.0)["status"] == "healthy"
    assert health(raw, tick_stale_after=44.0)["status"] == "degraded"


@pytest.mark.parametrize("now", [EVENING, SATURDAY, HOLIDAY, ist("2026-11-26", "09:00:00")])
def test_old_ticks_outside_market_hours_are_healthy(now: float) -> None:
    answer = health(streamer_beat(now - 5, last_tick_age_s=3600.0), now=now)
    assert answer["status"] == "healthy", answer["reasons"]
    assert answer["market_open"] is False
    assert answer["tick_age_seconds"] == 3605.0


def test_the_quiet_before_the_open_is_not_held_against_the_feed() -> None:
    # Last tick in the pre-open, 20 min ago: 10 s into the session that is not an outage yet,
    # 40 s into it it is.
    raw_at = ist("2026-11-26", "09:15:05")
    early = health(streamer_beat(raw_at, last_tick_age_s=1200.0), now=raw_at + 5)
    assert early["status"] == "healthy"
    later = ist("2026-11-26", "09:15:40")
    assert health(streamer_beat(later - 5, last_tick_age_s=1200.0),
                  now=later)["status"] == "degraded"  # fmt: skip


def test_no_tick_yet_is_degraded_once_a_connection_had_time_to_deliver() -> None:
    def answer(**fields: Any) -> dict[str, Any]:
        return health(streamer_beat(OPEN - 2, last_tick_age_s=None, **fields))

    just_connected = [{"index": 0, "state": "connected", "connected_for_s": 4.0}]
    assert answer(connections=just_connected)["status"] == "healthy"
    long_connected = [{"index": 0, "state": "connected", "connected_for_s": 120.0}]
    silent = answer(connections=long_connected)
    assert silent["status"] == "degraded"
    assert silent["reasons"] == ["no tick received yet: 120 s of the session without one"]
    backing_off = [{"index": 0, "state": "backoff", "connected_for_s": None}]
    assert answer(connections=backing_off)["reasons"] == [
        "no tick received yet: 1800 s of the session without one"]


def test_an_idle_streamer_expects_no_ticks() -> None:
    raw = streamer_beat(OPEN - 5, state="idle", instruments=0, last_tick_age_s=None)
    assert health(raw)["status"] == "healthy"


def test_a_fatal_feed_connection_is_degraded_in_and_out_of_market_hours() -> None:
    fatal = {"feed": 3, "last_fatal": "connection 1: 806 data APIs not subscribed"}
    for now in (OPEN, EVENING):
        answer = health(streamer_beat(now - 5, errors=fatal), now=now)
        assert answer["status"] == "degraded"
        assert answer["reasons"] == [
            "feed connection stopped for good: connection 1: 806 data APIs not subscribed"]


def test_a_stopped_connection_is_degraded_even_without_last_fatal() -> None:
    connections = [{"index": 0, "state": "connected", "connected_for_s": 60.0},
                   {"index": 1, "state": "stopped", "last_error": "810"}]  # fmt: skip
    answer = health(streamer_beat(OPEN - 5, connections=connections))
    assert answer["status"] == "degraded"
    assert answer["reasons"] == ["feed connection 1 stopped for good: 810"]


@pytest.mark.parametrize(
    ("bridge", "reason"),
    [(lambda now: None, "no relay bridge heartbeat"),
     (lambda now: bridge_beat(now - 50), "relay bridge heartbeat 50 s old, more than 45 s"),
     (lambda now: "{nope", "not a JSON object"),
     (lambda now: json.dumps({"subscribed": True}), "no readable time")],
)  # fmt: skip
def test_a_missing_or_old_bridge_heartbeat_is_degraded(
    bridge: Callable[[float], str | None], reason: str
) -> None:
    for now in (OPEN, EVENING):
        answer = health(streamer_beat(now - 5), now=now, bridge=bridge(now))
        assert answer["status"] == "degraded"
        (only,) = answer["reasons"]
        assert reason in only


def test_the_bridge_threshold_is_configurable_and_iso_times_are_read() -> None:
    raw = streamer_beat(OPEN - 5)
    assert health(raw, bridge=bridge_beat(OPEN - 40))["status"] == "healthy"
    assert health(raw, bridge=bridge_beat(OPEN - 40), bridge_stale_after=30.0)["reasons"] == [
        "relay bridge heartbeat 40 s old, more than 30 s"]
    iso = json.dumps({"time": datetime.fromtimestamp(OPEN - 3, IST).isoformat()})
    answer = health(raw, bridge=iso)
    assert answer["status"] == "healthy" and answer["bridge"]["heartbeat_age_seconds"] == 3.0


def test_every_reason_is_listed() -> None:
    raw = streamer_beat(OPEN - 5, last_tick_age_s=100.0,
                        errors={"last_fatal": "connection 0: 809"})  # fmt: skip
    answer = health(raw, bridge=None)
    assert answer["status"] == "degraded"
    assert [r.split(" ")[0] for r in answer["reasons"]] == ["newest", "feed", "no"]


def test_stale_and_stopped_outrank_degraded() -> None:
    stale = health(streamer_beat(OPEN - 50, last_tick_age_s=500.0), bridge=None)
    assert stale["status"] == "stale"
    assert stale["reasons"] == [stale["detail"]]
    stopped = health(None, bridge=None)
    assert stopped["status"] == "stopped" and stopped["bridge"] is None
    assert stopped["reasons"] == ["no heartbeat: the streamer is not running"]


def test_health_recovers_when_the_feed_and_the_bridge_come_back() -> None:
    # (now, streamer beat written at, its tick age, bridge beat written at or None, expected)
    t = OPEN
    timeline = [
        (t, t - 5, 0.3, t - 5, "healthy"),
        (t + 40, t + 35, 30.0, t + 35, "degraded"),  # the feed went quiet at t + 5
        (t + 60, t + 55, 0.2, t + 55, "healthy"),  # the feed is back
        (t + 120, t + 115, 0.2, t + 60, "degraded"),  # the bridge stopped beating at t + 60
        (t + 130, t + 125, 0.2, t + 128, "healthy"),  # and is back
    ]
    statuses = [
        health(streamer_beat(beat, last_tick_age_s=ticks), now=now,
               bridge=None if bridge is None else bridge_beat(bridge))["status"]
        for now, beat, ticks, bridge, _ in timeline
    ]  # fmt: skip
    assert statuses == [expected for *_, expected in timeline]


def streamer_redis_value(*, now: float, feed_down_at: float, dies: bool, phase: float,
                         interval: float = 10.0) -> str | None:  # fmt: skip
    """What `market_stream:heartbeat` holds at `now` when the feed (or, with `dies`, the whole
    streamer) stopped at `feed_down_at`; beats every `interval` s from `phase`, TTL 60 s."""
    beats = int((now - phase) // interval)
    written = phase + beats * interval
    if dies and written > feed_down_at:
        written = phase + int((feed_down_at - phase) // interval) * interval
    if now - written >= 60:
        return None
    tick_age = max(written - feed_down_at, 0.3)
    return streamer_beat(written, last_tick_age_s=tick_age)


@pytest.mark.parametrize("dies", [False, True])
def test_health_leaves_healthy_within_75_s_of_the_feed_going_down(dies: bool) -> None:
    down = ist("2026-11-26", "11:00:00")
    for phase in (down - 30 + p for p in range(10)):  # every alignment of the 10 s beats

        def status(t: float, phase: float = phase) -> str:
            raw = streamer_redis_value(now=t, feed_down_at=down, dies=dies, phase=phase)
            return str(health(raw, now=t)["status"])

        assert {status(down - s) for s in range(1, 120)} == {"healthy"}
        assert "healthy" not in {status(down + s) for s in range(75, 400)}


def test_no_heartbeat_means_stopped(api: ApiHarness) -> None:
    answer = api.invoke(support.load_event("http_get_health"))
    assert answer.status == 200
    body = answer.json()
    assert body["status"] == "stopped"
    assert body["heartbeat"] is None
    assert body["streams"] == {"count": 0, "keys": 0, "names": []}
    assert body["websocket_connections"] == 0
    assert body["streamer_service"] == {"managed": False}


def test_fresh_heartbeats_streams_and_connections(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    api = make_api(deps_overrides={"wall_clock": lambda: OPEN})
    heartbeat = {"time": OPEN - 3, "state": "running", "connections": [], "instruments": 150,
                 "ticks": 9000, "last_tick_age_s": 1.0}  # fmt: skip
    redis_client.set(HEARTBEAT_KEY, json.dumps(heartbeat), ex=60)
    redis_client.set(BRIDGE_HEARTBEAT, bridge_beat(OPEN - 7), ex=60)
    # Registered as start does (record + index): health reads the index, never a SCAN.
    start_streams([Stream.create("swing", ["NSE_EQ:1", "NSE_EQ:2"], "quote"),
                   Stream.create("longterm", ["NSE_EQ:2", "IDX_I:13"], "quote")],
                  redis=redis_client, service=None)  # fmt: skip
    now = time.time()
    # Connection registry (functions.ws): ids scored by expiry; expired ones do not count.
    redis_client.zadd(CONNECTIONS, {"c1": now + 3600, "c2": now + 60, "old": now - 5})

    body = api.health().json()

    assert body["status"] == "healthy", body["reasons"]
    assert body["reasons"] == []
    assert body["market_open"] is True
    assert body["heartbeat_age_seconds"] == 3.0
    assert body["tick_age_seconds"] == 4.0
    assert body["bridge"]["heartbeat_age_seconds"] == 7.0
    assert body["heartbeat"]["instruments"] == 150
    assert body["streams"] == {"count": 2, "keys": 3, "names": ["longterm", "swing"]}
    assert body["websocket_connections"] == 2
    assert body["thresholds"] == {"healthy_max_age_seconds": 45.0, "tick_max_age_seconds": 30.0,
                                  "bridge_max_age_seconds": 45.0}  # fmt: skip


def test_the_route_reports_degraded_with_reasons(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    api = make_api(deps_overrides={"wall_clock": lambda: OPEN})
    redis_client.set(HEARTBEAT_KEY, streamer_beat(OPEN - 4, last_tick_age_s=50.0), ex=60)

    body = api.health().json()

    assert body["status"] == "degraded"
    assert body["bridge"] is None
    assert body["tick_age_seconds"] == 54.0
    assert len(body["reasons"]) == 2
    assert "newest tick 54 s old" in body["reasons"][0]
    assert "no relay bridge heartbeat" in body["reasons"][1]

    # Both come back: the next heartbeats make it healthy again.
    redis_client.set(HEARTBEAT_KEY, streamer_beat(OPEN - 1), ex=60)
    redis_client.set(BRIDGE_HEARTBEAT, bridge_beat(OPEN - 1), ex=60)
    assert api.health().json()["status"] == "healthy"


def test_the_route_applies_the_shipped_holidays_and_configured_thresholds(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    clock = {"now": HOLIDAY}
    api = make_api(health_tick_stale_seconds=100.0, health_bridge_stale_seconds=10.0,
                   deps_overrides={"wall_clock": lambda: clock["now"]})  # fmt: skip
    # On the holiday no tick is due; in the session 85 s is under the configured 100 s.
    for now, ticks in ((HOLIDAY, 3600.0), (OPEN, 80.0)):
        clock["now"] = now
        redis_client.set(HEARTBEAT_KEY, streamer_beat(now - 5, last_tick_age_s=ticks), ex=60)
        redis_client.set(BRIDGE_HEARTBEAT, bridge_beat(now - 8), ex=60)
        body = api.health().json()
        assert body["status"] == "healthy", body["reasons"]
        assert body["market_open"] is (now == OPEN)
        assert body["thresholds"]["tick_max_age_seconds"] == 100.0
    redis_client.set(BRIDGE_HEARTBEAT, bridge_beat(OPEN - 12), ex=60)
    assert api.health().json()["reasons"] == ["relay bridge heartbeat 12 s old, more than 10 s"]
    redis_client.set(HEARTBEAT_KEY, streamer_beat(OPEN - 5, last_tick_age_s=96.0), ex=60)
    redis_client.set(BRIDGE_HEARTBEAT, bridge_beat(OPEN - 1), ex=60)
    assert api.health().json()["status"] == "degraded"


def test_health_thresholds_are_read_from_the_environment() -> None:
    settings = Settings.from_env({"HEALTH_TICK_STALE_SECONDS": "12",
                                  "HEALTH_BRIDGE_STALE_SECONDS": "20"})  # fmt: skip
    assert settings.health_tick_stale_seconds == 12.0
    assert settings.health_bridge_stale_seconds == 20.0
    defaults = Settings.from_env({})
    assert (defaults.health_tick_stale_seconds, defaults.health_bridge_stale_seconds) == (30, 45)


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


def test_a_streamer_open_by_its_own_clock_owes_ticks_outside_the_usual_hours() -> None:
    """A special session (or a streamer forced open): the streamer says the market is open,
    so ticks are due for as long as it has been streaming; never on a holiday."""
    quiet = {"last_tick_age_s": 50.0, "beating_for_s": 600.0}
    evening = health(streamer_beat(EVENING - 5, **quiet), now=EVENING)
    assert evening["status"] == "degraded" and evening["market_open"] is True
    assert "newest tick 55 s old" in evening["reasons"][0]
    young = health(streamer_beat(EVENING - 5, last_tick_age_s=50.0, beating_for_s=20.0),
                   now=EVENING)
    assert young["status"] == "healthy", young["reasons"]
    closed = health(streamer_beat(EVENING - 5, **quiet, market_open=False), now=EVENING)
    assert closed["status"] == "healthy" and closed["market_open"] is False
    holiday = health(streamer_beat(HOLIDAY - 5, **quiet), now=HOLIDAY)
    assert holiday["status"] == "healthy" and holiday["market_open"] is False


def test_the_answer_notes_a_missing_instrument_master_without_counting_it(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    from core.instrument_master import SAMPLE_PATH, load_master

    api = make_api(deps_overrides={"wall_clock": lambda: OPEN})
    redis_client.set(HEARTBEAT_KEY, streamer_beat(OPEN - 1), ex=60)
    redis_client.set(BRIDGE_HEARTBEAT, bridge_beat(OPEN - 1), ex=60)
    body = api.health().json()
    assert body["status"] == "healthy"
    assert body["instrument_master"]["loaded"] is False
    assert "no instrument master" in body["instrument_master"]["note"]
    load_master(SAMPLE_PATH, redis=redis_client)
    master = api.health().json()["instrument_master"]
    assert master["loaded"] is True and master["rows"] == 52
    assert master["source"].endswith("nse_sample.csv") and master["loaded_at"]
    redis_client.hset("instruments:meta", "source",
                      "https://user:pw@example.com:8443/master.csv?X-Amz-Signature=abc")
    assert api.health().json()["instrument_master"]["source"] == (
        "https://example.com:8443/master.csv")


def test_the_answer_says_how_long_the_token_has_left_and_degrades_once_it_expired(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    from core.names import TOKEN_STATUS_KEY

    clock = {"now": OPEN}
    api = make_api(deps_overrides={"wall_clock": lambda: clock["now"]})
    redis_client.set(BRIDGE_HEARTBEAT, bridge_beat(OPEN - 1), ex=60)
    redis_client.set(TOKEN_STATUS_KEY, json.dumps(
        {"result": "failed", "checked_at": OPEN - 600, "renewed_at": OPEN - 80_000,
         "error": "Dhan refused RenewToken: HTTP 401 DH-901", "expires_at": OPEN + 5 * 3600}))

    # No streamer heartbeat: the renewal job's status still tells the expiry.
    body = api.health().json()
    assert body["token"]["seconds_left"] == 5 * 3600
    assert body["token"]["last_renewal"]["result"] == "failed"
    assert "DH-901" in body["token"]["last_renewal"]["error"]
    assert "expires in 5.0 h" in body["token"]["warning"]

    # The streamer's heartbeat names the token in use; it wins.
    redis_client.set(HEARTBEAT_KEY, streamer_beat(
        OPEN - 1, token={"expires_at": OPEN + 20 * 3600}), ex=60)
    body = api.health().json()
    assert body["status"] == "healthy"
    assert body["token"]["seconds_left"] == 20 * 3600 and "warning" not in body["token"]
    assert body["token"]["expires_at"].endswith("+05:30")

    clock["now"] = OPEN + 20 * 3600 + 120
    redis_client.set(HEARTBEAT_KEY, streamer_beat(
        clock["now"] - 1, token={"expires_at": OPEN + 20 * 3600}), ex=60)
    redis_client.set(BRIDGE_HEARTBEAT, bridge_beat(clock["now"] - 1), ex=60)
    body = api.health().json()
    assert body["status"] == "degraded"
    assert any("token expired 2 min ago" in r for r in body["reasons"])


# --- what a health answer costs: the index, the container's caches -----------------------------


class CountingService:
    """A streamer service that counts its ECS calls (DescribeServices / UpdateService)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.describes = 0
        self.scales: list[int] = []
        self.fail = fail

    def counts(self) -> ServiceCounts:
        self.describes += 1
        if self.fail:
            raise ScalingError("ECS describe_services failed: ThrottlingException: Rate exceeded")
        return ServiceCounts(desired=1, running=1, pending=0, status="ACTIVE")

    def scale(self, desired: int) -> None:
        self.scales.append(desired)


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def router_api(make_api: MakeApi, clock: Clock, **overrides: Any) -> ApiHarness:
    """The Lambda router (where the caches live) with an injected monotonic clock."""
    harness = make_api(**overrides)
    routed = ApiHarness(harness.deps, via="router")
    routed.entry = LambdaRouter(deps=harness.deps, asgi=routed.mangum, clock=clock)
    return routed


def commands(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def test_health_answers_are_reused_for_the_cache_seconds(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    clock = Clock()
    service = CountingService()
    api = router_api(make_api, clock, deps_overrides={"wall_clock": lambda: OPEN,
                                                      "streamer_service": lambda: service})
    try:
        redis_client.set(HEARTBEAT_KEY, streamer_beat(OPEN - 2), ex=60)
        first = api.health().json()
        assert first["status"] == "degraded"  # no bridge heartbeat yet
        assert (first["cached_for_seconds"], first["cache_age_seconds"]) == (3.0, 0.0)
        redis_client.set(BRIDGE_HEARTBEAT, bridge_beat(OPEN - 1), ex=60)
        clock.now += 2.5
        second = api.health().json()
        assert second["status"] == "degraded" and second["cache_age_seconds"] == 2.5
        clock.now += 0.5  # 3 s: computed afresh
        third = api.health().json()
        assert third["status"] == "healthy" and third["cache_age_seconds"] == 0.0
    finally:
        api.close()


def test_ecs_counts_are_read_once_per_ecs_cache_period_failures_included(
    make_api: MakeApi,
) -> None:
    clock = Clock()
    service = CountingService()
    api = router_api(make_api, clock, health_cache_seconds=0.0,
                     deps_overrides={"streamer_service": lambda: service})  # fmt: skip
    try:
        part = api.health().json()["streamer_service"]
        assert part == {"managed": True, "desired": 1, "running": 1, "pending": 0,
                        "status": "ACTIVE", "age_seconds": 0.0}  # fmt: skip
        for _ in range(29):
            clock.now += 1.0
            api.health()
        assert service.describes == 1
        assert api.health().json()["streamer_service"]["age_seconds"] == 29.0
        clock.now += 1.0
        api.health()
        assert service.describes == 2

        service.fail = True
        clock.now += 30.0
        failed = api.health().json()["streamer_service"]
        assert "ThrottlingException" in failed["error"]
        clock.now += 10.0
        assert "ThrottlingException" in api.health().json()["streamer_service"]["error"]
        assert service.describes == 3  # the throttled ECS is not asked on every answer
    finally:
        api.close()


def test_the_cache_periods_are_read_from_the_environment() -> None:
    settings = Settings.from_env({"HEALTH_CACHE_SECONDS": "1.5", "HEALTH_ECS_CACHE_SECONDS": "60"})
    assert (settings.health_cache_seconds, settings.health_ecs_cache_seconds) == (1.5, 60.0)
    defaults = Settings.from_env({})
    assert (defaults.health_cache_seconds, defaults.health_ecs_cache_seconds) == (3.0, 30.0)


def test_scaling_through_the_cached_counts_forgets_them() -> None:
    clock = Clock()
    service = CountingService()
    cached = CachedCounts(service, ttl=30.0, clock=clock)
    assert cached.age() is None
    cached.counts()
    cached.counts()
    assert service.describes == 1
    cached.scale(0)
    assert service.scales == [0]
    cached.counts()
    assert service.describes == 2


def test_health_runs_no_scan_and_drops_lapsed_streams(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    api = router_api(make_api, Clock(), health_cache_seconds=0.0)
    try:
        start_streams([Stream.create("swing", ["NSE_EQ:1"], "quote"),
                       Stream.create("gone", ["NSE_EQ:2"], "quote")],
                      redis=redis_client, service=None)  # fmt: skip
        redis_client.delete(stream_key("gone"))  # lapsed (its TTL)
        before = commands(redis_client)
        body = api.health().json()
        after = commands(redis_client)
        assert body["streams"] == {"count": 1, "keys": 1, "names": ["swing"]}
        assert after.get("scan", 0) == before.get("scan", 0)
        assert after.get("keys", 0) == before.get("keys", 0)
        assert redis_client.smembers(STREAM_INDEX_KEY) == {b"swing"}
    finally:
        api.close()


def test_a_redis_failure_is_not_cached(make_api: MakeApi, redis_client: redis.Redis) -> None:
    from functions.api.deps import connect_redis
    from local.redis_server import free_port

    clock = Clock()
    base = make_api()
    dead = connect_redis(replace(base.deps.settings, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                 redis_connect_timeout=0.2))  # fmt: skip
    try:
        api = router_api(make_api, clock, deps_overrides={"redis": dead})
        try:
            assert api.health().status == 503
            router = api.entry
            assert isinstance(router, LambdaRouter)
            router.deps = replace(api.deps, redis=base.deps.redis)  # Redis is back
            assert api.health().status == 200
        finally:
            api.close()
    finally:
        dead.close()
