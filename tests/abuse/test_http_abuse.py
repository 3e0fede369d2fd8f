"""Abuse of the HTTP API: the Lambda router (what `functions.api.handler` runs) on a real Redis,
with HTTP API events as the gateway builds them (`local.run.lambda_http.http_api_event`) and
DhanHQ's REST API played by the simulator's stand-in (one call per second, as Dhan allows).

- REST starvation: one caller sends random unknown ids faster than 1 request/s from several
  Lambda environments at once, while a victim polls one real key that nobody streams. Each of
  the attacker's misses used to wait up to the 2.5 s budget for one of the deployment's 1 call/s
  slots, and between them they took nearly every slot, so the victim's misses came back
  `rate_limited`. Now the attacker gets one slot per caller interval (5 s) and is refused at
  once otherwise; the victim gets its price within two polls. With an instrument master loaded
  the attacker's unknown ids cost no call at all.
- health flood: 200 health checks reach one environment: one set of Redis reads per
  `HEALTH_CACHE_SECONDS`, no SCAN ever, one ECS DescribeServices per `HEALTH_ECS_CACHE_SECONDS`
  (counted with a counting streamer service passed through the deps, and Redis's own
  `INFO commandstats`).

Each test prints what it measured.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
import redis

from core.config import Secret
from core.instrument_master import SAMPLE_PATH, load_master
from core.names import HEARTBEAT_KEY
from functions.api.router import LambdaRouter
from functions.errors import ScalingError
from functions.streams import ServiceCounts
from local.dhan_sim.rest import RestStandIn
from local.run.lambda_http import http_api_event
from tests.functions import test_api_support as support
from tests.functions.test_api_support import ApiHarness, LambdaContext, MakeApi

make_api = support.make_api

CLIENT_ID, TOKEN = "1000000001", "sim-token"
ATTACKER, VICTIM = "203.0.113.66", "198.51.100.7"
VICTIM_KEY = "NSE_EQ:2885"  # RELIANCE: in the shipped master, not cached, not streamed
POLL_SECONDS = 1.5  # the page's poll interval


@pytest.fixture
def api_via() -> str:
    """The harnesses' entry is the Lambda router, as `functions.api.handler` runs it."""
    return "router"


pytestmark = pytest.mark.usefixtures("api_via")


@pytest.fixture
def rest() -> Iterator[RestStandIn]:
    # Dhan's window (1 call/s per client id) and Dhan's answer for ids it does not know.
    with RestStandIn(client_id=CLIENT_ID, access_token=TOKEN, rate_limit_interval=1.0,
                     unknown_ids_missing=True) as stand_in:  # fmt: skip
        stand_in.set_price("NSE_EQ", "2885", 2450.1)
        yield stand_in


def environments(make_api: MakeApi, rest: RestStandIn, count: int) -> list[ApiHarness]:
    """`count` Lambda execution environments of the API (own clients, own router), with the
    production limits (1.1 s spacing, 2.5 s budget, 5 s caller interval, 300 s not-found)."""
    return [make_api(dhan_client_id=CLIENT_ID, dhan_access_token=Secret(TOKEN),
                     dhan_api_base_url=rest.base_url) for _ in range(count)]  # fmt: skip


def prices_event(keys: list[str], source_ip: str) -> dict[str, Any]:
    return http_api_event(method="GET", path="/api/v1/current_prices",
                          query_string="keys=" + ",".join(keys),
                          headers=[("host", "api.example.com")], body=b"",
                          source_ip=source_ip)  # fmt: skip


def call(environment: ApiHarness, event: dict[str, Any]) -> tuple[dict[str, Any], float]:
    began = time.monotonic()
    result = environment.entry(event, LambdaContext())
    assert result["statusCode"] == 200, result
    return orjson.loads(result["body"]), time.monotonic() - began


@dataclass
class Attack:
    """Threads of one caller, each in its own environment, asking for random unknown ids."""

    environments: list[ApiHarness]
    pause: float
    stop: threading.Event = field(default_factory=threading.Event)
    requests: list[tuple[float, str]] = field(default_factory=list)  # (seconds, outcome)
    ids: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        for index, environment in enumerate(self.environments):
            thread = threading.Thread(target=self._run, args=(environment, index), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _run(self, environment: ApiHarness, index: int) -> None:
        rng = random.Random(index)
        while not self.stop.is_set():
            keys = [f"NSE_EQ:{rng.randrange(10**6, 10**9)}" for _ in range(3)]
            with self.lock:
                self.ids.update(key.split(":")[1] for key in keys)
            body, took = call(environment, prices_event(keys, ATTACKER))
            outcome = ",".join(sorted(set(body["missing"].values()))) or "priced"
            with self.lock:
                self.requests.append((took, outcome))
            self.stop.wait(self.pause)

    def end(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        assert not any(thread.is_alive() for thread in self.threads)


def poll_victim(environment: ApiHarness, *, polls: int) -> list[dict[str, Any]]:
    """The victim's page polling its one key every 1.5 s; every answer, in order."""
    answers = []
    for _ in range(polls):
        began = time.monotonic()
        body, took = call(environment, prices_event([VICTIM_KEY], VICTIM))
        answers.append({**body, "took": took})
        time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - began)))
    return answers


def attacker_calls(rest: RestStandIn, ids: set[str]) -> list[dict[str, Any]]:
    return [c for c in rest.calls
            if any(str(i) in ids for i in c["body"].get("NSE_EQ", []))]  # fmt: skip


def test_a_caller_hammering_unknown_ids_cannot_starve_another_callers_miss(
    make_api: MakeApi, rest: RestStandIn, redis_client: redis.Redis
) -> None:
    """No instrument master: every random id is a miss worth a call. Three environments of
    the attacker at ~3 requests/s together; the victim polls from another address."""
    attack = Attack(environments(make_api, rest, 3), pause=1.0)
    [victim] = environments(make_api, rest, 1)
    began = time.monotonic()
    attack.start()
    try:
        time.sleep(1.5)  # the attack is in full swing before the victim's first poll
        answers = poll_victim(victim, polls=4)
        redis_client.delete("ltp:" + VICTIM_KEY)  # uncached again: a second miss, later
        time.sleep(2.0)
        answers += poll_victim(victim, polls=2)
    finally:
        attack.end()
    elapsed = time.monotonic() - began

    priced = [i for i, a in enumerate(answers) if VICTIM_KEY in a["prices"]]
    # Within two polls, both times the key was a miss (polls 0-1, and 4-5 after the delete).
    assert priced and priced[0] <= 1, [a["missing"] for a in answers]
    assert {4, 5} & set(priced), [a["missing"] for a in answers]

    made = attacker_calls(rest, attack.ids)
    refused = [took for took, outcome in attack.requests if outcome == "rate_limited"]
    found = [took for took, outcome in attack.requests if outcome == "not_found"]
    print(f"\nREST starvation, no master ({elapsed:.1f} s): attacker {len(attack.requests)} "
          f"requests ({len(attack.requests) / elapsed:.1f}/s), {len(made)} REST calls, "
          f"{len(refused)} refused in max {max(refused, default=0) * 1000:.0f} ms "
          f"(median {statistics.median(refused or [0]) * 1000:.0f} ms), {len(found)} fetched as "
          f"not_found; victim priced at polls {priced} of {len(answers)}, its answers took "
          f"{[round(a['took'], 2) for a in answers]} s; stand-in calls {len(rest.calls)}, "
          f"429s {sum(1 for c in rest.calls if c.get('status') == 429)}")  # fmt: skip
    # One slot per 5 s for the attacker, whatever its rate and however many environments.
    assert len(made) <= elapsed / 5.0 + 1
    # Over its share it is refused without waiting out the 2.5 s REST budget (a request that
    # began while its share was still free may first wait for the deployment's slot, one
    # 1 s interval, before it finds the share taken by its sibling). The bound is the budget,
    # not a speed: a refusal that waited for slots would take the whole budget.
    assert len(refused) >= len(attack.requests) // 2
    assert max(refused) < 2.0
    assert all(outcome in ("rate_limited", "not_found") for _, outcome in attack.requests)


def test_with_a_master_loaded_unknown_ids_cost_no_rest_call(
    make_api: MakeApi, rest: RestStandIn, redis_client: redis.Redis
) -> None:
    load_master(SAMPLE_PATH, redis=redis_client)
    attack = Attack(environments(make_api, rest, 2), pause=0.05)
    [victim] = environments(make_api, rest, 1)
    began = time.monotonic()
    attack.start()
    try:
        time.sleep(1.0)
        answers = poll_victim(victim, polls=2)
    finally:
        attack.end()
    elapsed = time.monotonic() - began
    took = [t for t, _ in attack.requests]
    print(f"\nREST starvation, master loaded ({elapsed:.1f} s): attacker "
          f"{len(attack.requests)} requests ({len(attack.requests) / elapsed:.0f}/s), "
          f"{len(attacker_calls(rest, attack.ids))} REST calls, answered in median "
          f"{statistics.median(took) * 1000:.1f} ms; victim priced at the first poll: "
          f"{VICTIM_KEY in answers[0]['prices']}")  # fmt: skip
    assert {outcome for _, outcome in attack.requests} == {"unknown_instrument"}
    assert attacker_calls(rest, attack.ids) == []
    assert VICTIM_KEY in answers[0]["prices"]
    assert len(rest.calls) == 1  # the victim's one miss


# --- health flood ------------------------------------------------------------------------------


class CountingService:
    """The streamer's ECS service, counting DescribeServices calls."""

    def __init__(self) -> None:
        self.describes = 0

    def counts(self) -> ServiceCounts:
        self.describes += 1
        return ServiceCounts(desired=1, running=1, pending=0, status="ACTIVE")

    def scale(self, desired: int) -> None:
        raise ScalingError("health never scales")


def commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    changed = {name: after[name] - before.get(name, 0) for name in after}
    return {name: count for name, count in changed.items() if count and name != "info"}


def health_event() -> dict[str, Any]:
    return http_api_event(method="GET", path="/api/v1/health/market_stream", query_string="",
                          headers=[("host", "api.example.com")], body=b"",
                          source_ip=ATTACKER)  # fmt: skip


def flood(router: LambdaRouter, requests: int, *, step: Callable[[], None] = lambda: None
          ) -> list[dict[str, Any]]:  # fmt: skip
    bodies = []
    for _ in range(requests):
        result = router(health_event(), LambdaContext())
        assert result["statusCode"] == 200
        bodies.append(orjson.loads(result["body"]))
        step()
    return bodies


def test_a_health_flood_reads_redis_once_per_cache_period_and_ecs_once_per_30_s(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    redis_client.set(HEARTBEAT_KEY, orjson.dumps({"time": time.time(), "state": "running"}),
                     ex=60)  # fmt: skip
    service = CountingService()
    harness = make_api(deps_overrides={"streamer_service": lambda: service})

    # 200 at once (real clock): one computed answer.
    router = LambdaRouter(deps=harness.deps, asgi=harness.mangum)
    before = commandstats(redis_client)
    began = time.monotonic()
    bodies = flood(router, 200)
    took = time.monotonic() - began
    burst = delta(before, commandstats(redis_client))
    print(f"\nhealth flood, 200 requests in {took * 1000:.0f} ms: Redis commands {burst}, "
          f"ECS DescribeServices {service.describes}")  # fmt: skip
    assert burst.get("mget", 0) <= 2  # the heartbeats' MGET, once (no streams registered)
    assert "scan" not in burst and "keys" not in burst
    assert service.describes == 1
    assert len({b["heartbeat_age_seconds"] for b in bodies}) == 1  # one answer, reused
    assert max(b["cache_age_seconds"] for b in bodies) < 3.0

    # 200 over 60 s of an injected clock (one every 0.3 s): one read per 3 s, ECS twice.
    clock = [5000.0]
    service.describes = 0
    timed = LambdaRouter(deps=harness.deps, asgi=harness.mangum, clock=lambda: clock[0])
    before = commandstats(redis_client)
    flood(timed, 200, step=lambda: clock.__setitem__(0, clock[0] + 0.3))
    spread = delta(before, commandstats(redis_client))
    print(f"health flood, 200 requests over 60 s (injected clock): Redis commands {spread}, "
          f"ECS DescribeServices {service.describes}")  # fmt: skip
    assert spread.get("mget", 0) <= 21  # ceil(60 / 3) + 1 computed answers
    assert "scan" not in spread and "keys" not in spread
    assert service.describes <= 2  # 60 s / 30 s


def test_concurrent_health_checks_in_one_environment_compute_one_answer(
    make_api: MakeApi, redis_client: redis.Redis
) -> None:
    """Under uvicorn (threads) as in Lambda: a stale answer is computed once, the others wait
    for it instead of each reading Redis."""
    service = CountingService()
    harness = make_api(deps_overrides={"streamer_service": lambda: service})
    router = LambdaRouter(deps=harness.deps, asgi=harness.mangum)
    barrier = threading.Barrier(20)
    before = commandstats(redis_client)

    def check() -> None:
        barrier.wait()
        flood(router, 10)

    threads = [threading.Thread(target=check, daemon=True) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    used = delta(before, commandstats(redis_client))
    print(f"\n20 threads x 10 health checks: Redis commands {used}, ECS {service.describes}")
    assert used.get("mget", 0) <= 2 and "scan" not in used
    assert service.describes == 1
