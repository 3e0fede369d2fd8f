"""Stream registry, control-channel announcements and ECS scaling (moto), directly and through
POST /screeners/ltp/start|stop with the admin key."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
import redis
from moto import mock_aws

from core.config import Secret
from core.names import CONTROL_CHANNEL, STREAM_REGISTRY_LOCK_KEY, stream_key
from functions.errors import RegistryBusy, ScalingError, StreamError, StreamLimitError
from functions.streams import (
    MAX_STREAM_KEYS,
    STREAM_INDEX_KEY,
    EcsStreamerService,
    Stream,
    read_indexed_streams,
    read_streams,
    registry_lock,
    start_streams,
    stop_streams,
)
from tests.functions import test_api_support as support
from tests.functions.test_api_support import ADMIN_KEY, ApiHarness, MakeApi

make_api = support.make_api

CLUSTER, SERVICE = "ltp", "ltp-streamer"


@pytest.fixture
def ecs(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "ap-south-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with mock_aws():
        client = boto3.client("ecs", region_name="ap-south-1")
        client.create_cluster(clusterName=CLUSTER)
        client.register_task_definition(
            family="streamer",
            containerDefinitions=[{"name": "streamer", "image": "ltp/streamer:latest",
                                   "memory": 512}],  # fmt: skip
        )
        client.create_service(cluster=CLUSTER, serviceName=SERVICE, taskDefinition="streamer",
                              desiredCount=0)  # fmt: skip
        yield client


def desired(ecs: Any) -> int:
    return int(ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"][0][
        "desiredCount"])  # fmt: skip


def control_messages(pubsub: Any) -> list[dict[str, Any]]:
    messages = []
    while (message := pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)) is not None:
        messages.append(json.loads(message["data"]))
    return messages


@pytest.fixture
def control(redis_client: redis.Redis) -> Iterator[Any]:
    pubsub = redis_client.pubsub()
    pubsub.subscribe(CONTROL_CHANNEL)
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    try:
        yield pubsub
    finally:
        pubsub.close()


def stream(name: str, keys: list[str], mode: str = "quote") -> Stream:
    return Stream.create(name, keys, mode, by="test")


# --- the registry ------------------------------------------------------------------------------


def test_start_writes_the_seed_shaped_record_and_announces_it(
    redis_client: redis.Redis, control: Any
) -> None:
    result = start_streams([stream("swing", ["NSE_EQ:1333", "IDX_I:13"])], redis=redis_client,
                           service=None)  # fmt: skip
    record = json.loads(redis_client.get(stream_key("swing")) or b"")
    assert record["name"] == "swing"
    assert record["keys"] == ["NSE_EQ:1333", "IDX_I:13"]
    assert record["mode"] == "quote"
    assert record["by"] == "test"
    assert record["at"].endswith("Z")
    assert 3500 < redis_client.ttl(stream_key("swing")) <= 3600
    assert control_messages(control) == [{"type": "streams_changed", "name": "swing"}]
    assert result.streamer == "not_managed"
    assert result.total_keys == 2


def test_the_same_start_again_only_refreshes(redis_client: redis.Redis, control: Any) -> None:
    start_streams([stream("swing", ["NSE_EQ:1"])], redis=redis_client, service=None)
    redis_client.expire(stream_key("swing"), 100)
    control_messages(control)
    result = start_streams([stream("swing", ["NSE_EQ:1"])], redis=redis_client, service=None)
    assert result.changed == []
    assert control_messages(control) == []
    assert redis_client.ttl(stream_key("swing")) > 3500

    result = start_streams([stream("swing", ["NSE_EQ:1", "NSE_EQ:2"])], redis=redis_client,
                           service=None)  # fmt: skip
    assert result.changed == ["swing"]
    assert control_messages(control) == [{"type": "streams_changed", "name": "swing"}]


def test_the_union_of_all_streams_is_capped(redis_client: redis.Redis) -> None:
    first = [f"NSE_EQ:{i}" for i in range(15_000)]
    second = [f"NSE_EQ:{i}" for i in range(10_000, 30_000)]
    start_streams([stream("a", first)], redis=redis_client, service=None)
    with pytest.raises(StreamLimitError, match=str(MAX_STREAM_KEYS)):
        start_streams([stream("b", second)], redis=redis_client, service=None)
    assert set(read_streams(redis=redis_client)) == {"a"}
    # Overlapping keys count once: 15,000 + 10,000 new = 25,000 fits exactly.
    start_streams([stream("b", second[:15_000])], redis=redis_client, service=None)
    # Replacing a stream's own keys does not count them twice.
    start_streams([stream("a", first[:100])], redis=redis_client, service=None)


def test_stop_removes_announces_and_is_idempotent(redis_client: redis.Redis, control: Any) -> None:
    start_streams([stream("a", ["NSE_EQ:1"]), stream("b", ["NSE_EQ:2"])], redis=redis_client,
                  service=None)  # fmt: skip
    control_messages(control)
    result = stop_streams(["a"], redis=redis_client, service=None)
    assert result.stopped == ["a"]
    assert result.remaining == ["b"]
    assert result.streamer == "still_needed"
    assert control_messages(control) == [{"type": "streams_changed", "name": "a"}]
    again = stop_streams(["a"], redis=redis_client, service=None)
    assert again.stopped == [] and again.not_found == ["a"]
    assert control_messages(control) == []


def indexed(client: redis.Redis) -> set[str]:
    return {raw.decode() for raw in client.smembers(STREAM_INDEX_KEY)}


def test_start_and_stop_keep_the_index_beside_the_records(redis_client: redis.Redis) -> None:
    assert STREAM_INDEX_KEY == "market_stream:streams"
    start_streams([stream("a", ["NSE_EQ:1"]), stream("b", ["NSE_EQ:2"])], redis=redis_client,
                  service=None)  # fmt: skip
    assert indexed(redis_client) == {"a", "b"}
    assert set(read_indexed_streams(redis=redis_client)) == {"a", "b"}
    stop_streams(["a"], redis=redis_client, service=None)
    assert indexed(redis_client) == {"b"}
    stop_streams(None, redis=redis_client, service=None)
    assert redis_client.exists(STREAM_INDEX_KEY) == 0
    assert read_indexed_streams(redis=redis_client) == {}
    # A start with no stream (the scheduler's) and nothing registered writes no empty index.
    start_streams([], redis=redis_client, service=None)
    assert redis_client.exists(STREAM_INDEX_KEY) == 0


def test_the_index_read_needs_no_scan_and_drops_lapsed_records(redis_client: redis.Redis) -> None:
    start_streams([stream("a", ["NSE_EQ:1"]), stream("b", ["NSE_EQ:2"]),
                   stream("c", ["NSE_EQ:3"])], redis=redis_client, service=None)  # fmt: skip
    redis_client.delete(stream_key("b"))  # as its 1 h TTL would
    redis_client.set(stream_key("c"), "not json", keepttl=True)
    scans = _calls(redis_client, "scan")
    streams = read_indexed_streams(redis=redis_client)
    assert _calls(redis_client, "scan") == scans
    assert set(streams) == {"a", "c"} and streams["c"] is None
    assert indexed(redis_client) == {"a", "c"}


def test_a_name_re_registered_during_the_read_stays_indexed(redis_client: redis.Redis) -> None:
    """The reader saw the record missing; before it prunes, a start writes it again: the
    prune (one script) checks the record itself, so the name stays."""
    start_streams([stream("a", ["NSE_EQ:1"])], redis=redis_client, service=None)

    class RacingRedis:
        def __init__(self, inner: redis.Redis) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        def mget(self, names: list[str]) -> list[bytes | None]:
            values = self.inner.mget(names)
            return [None for _ in values]  # read before the start below wrote them

    assert read_indexed_streams(redis=RacingRedis(redis_client)) == {}  # type: ignore[arg-type]
    assert indexed(redis_client) == {"a"}


def test_records_of_other_writers_join_the_index_at_the_next_start_or_stop(
    redis_client: redis.Redis,
) -> None:
    redis_client.set(stream_key("seed"), json.dumps(["NSE_EQ:5"]), ex=3600)
    assert read_indexed_streams(redis=redis_client) == {}  # not known until a start or stop
    start_streams([stream("ok", ["NSE_EQ:1"])], redis=redis_client, service=None)
    assert indexed(redis_client) == {"ok", "seed"}
    redis_client.set(stream_key("later"), json.dumps(["NSE_EQ:6"]), ex=3600)
    stop_streams(["ok"], redis=redis_client, service=None)
    assert indexed(redis_client) == {"seed", "later"}
    # A named stop removes a name whose record already lapsed.
    redis_client.delete(stream_key("later"))
    stop_streams(["later"], redis=redis_client, service=None)
    assert indexed(redis_client) == {"seed"}


def _calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))


def test_unreadable_records_are_kept_apart(redis_client: redis.Redis) -> None:
    redis_client.set(stream_key("legacy"), "not json")
    start_streams([stream("ok", ["NSE_EQ:1"])], redis=redis_client, service=None)
    streams = read_streams(redis=redis_client)
    assert streams["legacy"] is None
    assert streams["ok"] is not None
    assert stop_streams(["legacy"], redis=redis_client, service=None).stopped == ["legacy"]


def test_other_writers_records_are_read_and_counted(redis_client: redis.Redis) -> None:
    redis_client.set(stream_key("bare"), json.dumps(["NSE_EQ:5", "NSE_EQ:6"]))
    redis_client.set(stream_key("plain"), "NSE_EQ:7, NSE_EQ:5")
    redis_client.set(stream_key("mixed"), json.dumps({"keys": ["NSE_EQ:8", 9], "mode": "full"}))
    streams = read_streams(redis=redis_client)
    bare, plain, mixed = streams["bare"], streams["plain"], streams["mixed"]
    assert bare is not None and bare.keys == ("NSE_EQ:5", "NSE_EQ:6") and bare.mode == ""
    assert plain is not None and plain.keys == ("NSE_EQ:7", "NSE_EQ:5")
    assert mixed is not None and (mixed.keys, mixed.mode) == (("NSE_EQ:8",), "full")
    assert mixed.dropped == ("9",)
    assert isinstance(mixed, Stream)
    # Their keys count towards the cap like the API's own records.
    with pytest.raises(StreamLimitError):
        start_streams([stream("ok", ["NSE_EQ:1"])], redis=redis_client, service=None,
                      max_keys=4)  # fmt: skip
    result = start_streams([stream("ok", ["NSE_EQ:1"])], redis=redis_client, service=None)
    assert result.total_keys == 5
    assert result.active_streams == 4
    # Rewriting a stream drops what the reader dropped; an unchanged one is not re-announced.
    again = start_streams([stream("mixed", ["NSE_EQ:8"], "full")], redis=redis_client,
                          service=None)  # fmt: skip
    assert again.changed == []
    assert json.loads(redis_client.get(stream_key("mixed")) or b"")["keys"] == ["NSE_EQ:8"]


@pytest.mark.parametrize("name", ["", "a" * 65, "has space", "semi;colon", "ü", None, 7])
def test_bad_names_are_refused(name: Any) -> None:
    with pytest.raises(StreamError, match="stream name"):
        Stream.create(name, ["NSE_EQ:1"], "quote")


def test_bad_mode_is_refused() -> None:
    with pytest.raises(StreamError, match="ticker, quote, full"):
        Stream.create("a", ["NSE_EQ:1"], "depth")


def test_a_held_registry_lock_makes_callers_wait_then_give_up(redis_client: redis.Redis) -> None:
    redis_client.set(STREAM_REGISTRY_LOCK_KEY, "someone-else", px=10_000)
    with pytest.raises(RegistryBusy):
        start_streams([stream("a", ["NSE_EQ:1"])], redis=redis_client, service=None, lock_wait=0.1)
    redis_client.delete(STREAM_REGISTRY_LOCK_KEY)
    with registry_lock(redis=redis_client):
        assert redis_client.exists(STREAM_REGISTRY_LOCK_KEY)
    assert not redis_client.exists(STREAM_REGISTRY_LOCK_KEY)


# --- ECS (moto) --------------------------------------------------------------------------------


def test_start_scales_the_service_to_one_and_stop_back_to_zero(
    redis_client: redis.Redis, ecs: Any
) -> None:
    service = EcsStreamerService(ecs=ecs, cluster=CLUSTER, service=SERVICE)
    assert desired(ecs) == 0

    assert start_streams([stream("a", ["NSE_EQ:1"])], redis=redis_client,
                         service=service).streamer == "started"  # fmt: skip
    assert desired(ecs) == 1
    assert start_streams([stream("b", ["NSE_EQ:2"])], redis=redis_client,
                         service=service).streamer == "already_running"  # fmt: skip
    assert desired(ecs) == 1

    assert stop_streams(["a"], redis=redis_client, service=service).streamer == "still_needed"
    assert desired(ecs) == 1
    assert stop_streams(["b"], redis=redis_client, service=service).streamer == "stopped"
    assert desired(ecs) == 0
    assert stop_streams(["b"], redis=redis_client, service=service).streamer == "already_stopped"


def test_scheduler_style_calls_start_and_stop_everything(
    redis_client: redis.Redis, ecs: Any
) -> None:
    service = EcsStreamerService(ecs=ecs, cluster=CLUSTER, service=SERVICE)
    assert start_streams([], redis=redis_client, service=service).streamer == "started"
    start_streams([stream("a", ["NSE_EQ:1"]), stream("b", ["NSE_EQ:2"])], redis=redis_client,
                  service=service)  # fmt: skip
    result = stop_streams(None, redis=redis_client, service=service)
    assert sorted(result.stopped) == ["a", "b"]
    assert desired(ecs) == 0
    assert read_streams(redis=redis_client) == {}


def test_a_missing_service_is_a_scaling_error(redis_client: redis.Redis, ecs: Any) -> None:
    service = EcsStreamerService(ecs=ecs, cluster=CLUSTER, service="no-such-service")
    with pytest.raises(ScalingError, match="no-such-service"):
        service.counts()


# --- through the API ---------------------------------------------------------------------------


def managed_api(make_api: MakeApi, ecs: Any, **overrides: Any) -> ApiHarness:
    service = EcsStreamerService(ecs=ecs, cluster=CLUSTER, service=SERVICE)
    return make_api(admin_api_key=Secret(ADMIN_KEY), streamer_cluster=CLUSTER,
                    streamer_service=SERVICE,
                    deps_overrides={"streamer_service": lambda: service}, **overrides)  # fmt: skip


def test_start_and_stop_fixture_events_drive_registry_and_ecs(
    make_api: MakeApi, ecs: Any, redis_client: redis.Redis
) -> None:
    api = managed_api(make_api, ecs)

    answer = api.invoke(support.load_event("http_post_start"))
    assert answer.status == 200, answer.body
    assert answer.json() == {"name": "swing", "keys": 3, "changed": True, "active_streams": 1,
                             "total_keys": 3, "streamer": "started"}  # fmt: skip
    assert desired(ecs) == 1
    record = json.loads(redis_client.get(stream_key("swing")) or b"")
    assert record["by"] == "203.0.113.7"  # the caller's source IP from the event

    again = api.invoke(support.load_event("http_post_start"))
    assert again.json()["changed"] is False
    assert again.json()["streamer"] == "already_running"

    answer = api.invoke(support.load_event("http_post_stop"))
    assert answer.json() == {"name": "swing", "stopped": True, "remaining_streams": 0,
                             "total_keys": 0, "streamer": "stopped"}  # fmt: skip
    assert desired(ecs) == 0
    assert api.invoke(support.load_event("http_post_stop")).json()["stopped"] is False


@pytest.mark.parametrize("key", [None, "", "wrong-key", ADMIN_KEY + "x", ADMIN_KEY[:-1]])
def test_start_and_stop_need_the_admin_key(
    make_api: MakeApi, ecs: Any, redis_client: redis.Redis, key: str | None
) -> None:
    api = managed_api(make_api, ecs)
    for answer in (api.start({"name": "a", "keys": ["NSE_EQ:1"]}, key=key),
                   api.stop({"name": "a"}, key=key)):  # fmt: skip
        assert answer.status == 401
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert read_streams(redis=redis_client) == {}
    assert desired(ecs) == 0


def test_other_schemes_are_refused(make_api: MakeApi, ecs: Any) -> None:
    api = managed_api(make_api, ecs)
    event = support.with_headers(support.load_event("http_post_start"),
                                 authorization=f"Basic {ADMIN_KEY}")  # fmt: skip
    assert api.invoke(event).status == 401


def test_without_a_configured_key_start_is_open(make_api: MakeApi) -> None:
    api = make_api()
    assert api.start({"name": "local", "keys": ["NSE_EQ:1"]}, key=None).status == 200


def test_start_validation_answers(make_api: MakeApi, ecs: Any) -> None:
    api = managed_api(make_api, ecs)
    bad_name = api.start({"name": "no spaces", "keys": ["NSE_EQ:1"]})
    assert bad_name.status == 422 and "stream name" in bad_name.json()["message"]
    bad_keys = api.start({"name": "a", "keys": ["NSE_EQ:1", "XX:1"]})
    assert bad_keys.status == 422 and "XX:1" in bad_keys.json()["message"]
    bad_mode = api.start({"name": "a", "keys": ["NSE_EQ:1"], "mode": "depth"})
    assert bad_mode.status == 422
    assert api.start({"name": "a", "keys": []}).status == 422
    assert api.start({"name": "a"}).status == 422
    assert api.start("[]").status == 400
    too_many = api.start({"name": "a", "keys": [f"NSE_EQ:{i}" for i in range(25_001)]})
    assert too_many.status == 413 and "25000" in too_many.json()["message"]
    assert desired(ecs) == 0


def test_start_beyond_the_union_cap_is_409(make_api: MakeApi, ecs: Any) -> None:
    api = managed_api(make_api, ecs)
    assert api.start({"name": "a", "keys": [f"NSE_EQ:{i}" for i in range(20_000)]}).status == 200
    answer = api.start({"name": "b", "keys": [f"BSE_EQ:{i}" for i in range(6_000)]})
    assert answer.status == 409
    assert "25000" in answer.json()["message"] and "26000" in answer.json()["message"]


def test_ecs_failure_is_503_and_the_registration_is_kept(
    make_api: MakeApi, ecs: Any, redis_client: redis.Redis
) -> None:
    service = EcsStreamerService(ecs=ecs, cluster=CLUSTER, service="gone")
    api = make_api(deps_overrides={"streamer_service": lambda: service})
    answer = api.start({"name": "a", "keys": ["NSE_EQ:1"]})
    assert answer.status == 503
    assert answer.headers["retry-after"] == "10"
    assert "idempotent" in answer.json()["message"]
    assert set(read_streams(redis=redis_client)) == {"a"}
