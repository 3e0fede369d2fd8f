"""The synthesized template's deployables, run as deployed, against production-shaped stand-ins.

The app is synthesized with bundling skipped. Every Python Lambda of the project's code asset
runs in its own `local.lambda_host` process (its template `Handler` string, imported as Lambda
imports it), every container of the task definition runs its template `Command`, each with
exactly its template environment resolved by `tests.deploy.template`: `Ref`s and `GetAtt`s are
local stand-ins (moto in server mode for Secrets Manager and ECS, the local gateway's
`@connections`, Lambda hosts for function names), and only endpoints are substituted: the
cache endpoint -> a `redis-server` listening on TLS only with `--requirepass` (certificates made
now with trustme, trusted through SSL_CERT_FILE, verification on), the execute-api origin ->
the local gateway, AWS service endpoints -> moto / the Lambda host of the fan-out (for the
bridge) or of the quotes function (for the HTTP API's function) (AWS_ENDPOINT_URL_*),
DHAN_FEED_URL / DHAN_API_BASE_URL -> the DhanHQ simulator and its REST stand-in.

Besides its template environment each process gets what its platform provides (region and
dummy credentials, as Lambda and Fargate do; the image's own `ENV` lines from
streamer/Dockerfile for containers; the variables Lambda sets, from the Lambda host), the moto
endpoints, SSL_CERT_FILE, PYTHONPATH = the repository root (the image installs the same
packages), PATH/HOME/LANG, and nothing else. The one override that is not an endpoint:
STREAMER_ALWAYS_OPEN=true on the streamer container (the clock: it refuses to stream outside
NSE hours).

The scheduled stop is the stop schedule's `Target.Input` from the template, with
`<aws.scheduler.scheduled-time>` filled in as EventBridge Scheduler fills it (the planned time
of the latest weekday firing; a stop is never skipped whatever the day, so the date decides
nothing here). The instrument-master load is invoked the same way, with its schedule's input,
before the start; its INSTRUMENT_MASTER_URL (Dhan's CDN, the function's default) is the one
endpoint added for it: a loopback server of data/nse_sample.csv.

CDK's own functions (custom resources, the bucket deployment) are not project code and are not
run; the walk prints them.

`test_walk` reports every step (passed / FAILED / blocked by an earlier failure) and fails at the
end with the tails of every process's output (LTP_DEPLOY_TEST_LOGS=DIR keeps all the logs).
`test_dropping_the_token_fails` runs each deployable that talks to Redis without its auth
variable and shows it fails with an authentication error. Together: the walk needs every
deployable, each needs the token, so the walk fails when any deployable drops it (checked
against the tree before the Redis client factory, where the bridge and the WebSocket handlers
ignored it: exactly the bridge and connect steps failed, and with the fan-out's client built
without the token: exactly the live-updates step failed).
"""

from __future__ import annotations

import json
import re
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from core.names import INSTRUMENT_SYMBOLS_KEY, LIVE_LTP_CHANNEL, ltp_key
from realtime.keys import CONNECTIONS
from tests.deploy.cloud import (
    Cloud,
    Feed,
    Synth,
    TlsRedis,
    resolve_deployables,
    scheduled_time,
)
from tests.deploy.deployment import INSTRUMENTS_HANDLER, QUOTES_HANDLER, Deployment, Services
from tests.deploy.harness import FunctionFailed, Process, StepFailed, http_call, wait_for

pytestmark = [pytest.mark.cdk, pytest.mark.timeout(300)]

KEYS = ["NSE_EQ:2885", "NSE_EQ:1333", "IDX_I:13"]
# In no stream and not in the default watchlist: answered through the DhanHQ REST fallback.
NOT_STREAMED = "NSE_EQ:990099"
STREAM = "deploy-walk"
SCHEDULED_TIME = "<aws.scheduler.scheduled-time>"
AUTH_FAILURE = re.compile(r"AuthenticationError|\bNOAUTH\b|Authentication required|"
                          r"must be called with the client already authenticated")

# Every deployable that talks to Redis and the variable that carries its AUTH token.
LAMBDA_AUTH = "REDIS_AUTH_SECRET_ARN"
CONTAINER_AUTH = "REDIS_AUTH_TOKEN"
REDIS_DEPLOYABLES = [
    "functions.api.handler",
    "functions.quotes.handler",
    "functions.ws.connect",
    "functions.ws.disconnect",
    "functions.ws.message",
    "functions.fanout.handler",
    "functions.schedule.handler",
    "functions.instruments.handler",
    "functions.token.handler",
    "container:streamer",
    "container:bridge",
]
EVENTS = Path(__file__).resolve().parents[1] / "events"


# --- the walk's bookkeeping ---------------------------------------------------------------------


@dataclass
class Step:
    name: str
    status: str  # passed, FAILED, blocked
    detail: str
    seconds: float


@dataclass
class Walk:
    steps: list[Step] = field(default_factory=list)

    def run(self, name: str, action: Callable[[], str | None], *, needs: tuple[str, ...] = (),
            watch: Callable[[], str] | None = None) -> bool:  # fmt: skip
        outcome = {s.name: s.status for s in self.steps}
        blocked = [n for n in needs if outcome.get(n) != "passed"]
        if blocked:
            self.steps.append(Step(name, "blocked", f"by {', '.join(blocked)}", 0.0))
            return False
        started = time.monotonic()
        try:
            detail = action() or ""
        except Exception as exc:  # noqa: BLE001 - reported, and the walk goes on
            detail = f"{type(exc).__name__}: {exc}"
            if not isinstance(exc, AssertionError | StepFailed | FunctionFailed):
                detail += "\n" + "".join(traceback.format_exception(exc)[-4:])
            if watch is not None:
                detail += "\n" + watch()
            self.steps.append(Step(name, "FAILED", detail, time.monotonic() - started))
            return False
        self.steps.append(Step(name, "passed", detail, time.monotonic() - started))
        return True

    @property
    def failed(self) -> list[Step]:
        return [s for s in self.steps if s.status != "passed"]

    def report(self) -> str:
        lines = []
        for step in self.steps:
            first, *rest = step.detail.splitlines() or [""]
            lines.append(f"  {step.status:<7} {step.name:<44} {step.seconds:5.1f} s  {first}")
            lines.extend(f"{'':>12}{line}" for line in rest)
        return "\n".join(lines)


def tails_of(deployment: Deployment, *names: str, lines: int = 8) -> Callable[[], str]:
    def show() -> str:
        chosen = [p for p in deployment.processes.started if p.name in names]
        return "\n".join(f"    [{p.describe()}]\n" + "\n".join(
            "      " + line for line in p.tail(lines).splitlines()) for p in chosen)

    return show


def admin_headers(cloud: Cloud | None) -> list[tuple[str, str]]:
    headers = [("content-type", "application/json")]
    if cloud is not None:
        headers.append(("authorization", f"Bearer {cloud.admin_key}"))
    return headers


# --- the template itself ------------------------------------------------------------------------


def test_every_redis_deployable_is_covered(deploy_synth: Synth, cloud: Cloud) -> None:
    """The token-drop test covers exactly the deployables whose environment names Redis, and
    each of them gets the token's variable from the template."""
    resolved = resolve_deployables(deploy_synth.stack, deploy_synth.template, cloud,
                                   "http://127.0.0.1:9")  # fmt: skip
    found = {}
    for function in resolved.functions.values():
        if "REDIS_URL" in function.env:
            found[function.spec.handler] = LAMBDA_AUTH in function.env
    for container in resolved.containers:
        if "REDIS_URL" in container.env:
            found[f"container:{container.name}"] = CONTAINER_AUTH in container.env
    assert sorted(found) == sorted(REDIS_DEPLOYABLES)
    assert all(found.values()), f"no auth variable in the template: {found}"
    envs = [f.env for f in resolved.functions.values()] + [c.env for c in resolved.containers]
    for env in envs:
        if "REDIS_URL" in env:  # the template's own Join, with the endpoint substituted
            assert env["REDIS_URL"] == f"rediss://127.0.0.1:{cloud.redis.port}/0"
    assert resolved.skipped, "CDK's own functions are expected in the template"
    print("\nnot run (not project code):\n" + "\n".join(
        f"  {lid}: {why}" for lid, why in sorted(resolved.skipped.items())))


def test_the_cache_speaks_tls_only_verified_and_requires_auth(auth_redis: TlsRedis) -> None:
    """Like the stack's ElastiCache: no plaintext port, a certificate that is verified (this
    process trusts the test CA only when told to), and AUTH required."""
    import redis

    plain = redis.Redis(host="127.0.0.1", port=auth_redis.port, socket_timeout=2,
                        socket_connect_timeout=2)  # fmt: skip
    with pytest.raises(redis.ConnectionError):
        plain.ping()
    plain.close()
    unverified = redis.Redis.from_url(auth_redis.url, password=auth_redis.password,
                                      socket_timeout=2, socket_connect_timeout=2)  # fmt: skip
    with pytest.raises(redis.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        unverified.ping()
    unverified.close()
    anonymous = redis.Redis.from_url(auth_redis.url, ssl_ca_certs=str(auth_redis.ca_file),
                                     socket_timeout=2, socket_connect_timeout=2)  # fmt: skip
    with pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    anonymous.close()
    client = auth_redis.client()
    assert client.ping()
    client.close()


# --- dropping the token ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenless(deploy_synth: Synth, cloud: Cloud, feed: Feed, scrip_master: str,
              deploy_workdir: Path) -> Iterator[Deployment]:  # fmt: skip
    """Every Redis-talking function's host with REDIS_AUTH_SECRET_ARN removed (no gateway: they
    fail on Redis before anything is posted)."""
    deployment = Deployment(deploy_synth.stack, deploy_synth.template, cloud,
                            Services(feed.url, feed.rest_url, scrip_master),
                            deploy_workdir / "tokenless")  # fmt: skip
    with deployment:
        deployment.deployables = resolved = resolve_deployables(
            deploy_synth.stack, deploy_synth.template, cloud, "http://127.0.0.1:9")
        redis_functions = [f for f in resolved.functions.values() if "REDIS_URL" in f.env]
        deployment.start_hosts(redis_functions, drop=[LAMBDA_AUTH])
        yield deployment


def _event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return event


def _tokenless_event(handler: str, deployment: Deployment) -> dict[str, Any]:
    if handler == "functions.ws.connect":
        return _event("ws_connect.json")
    if handler == "functions.ws.disconnect":
        return _event("ws_disconnect.json")
    if handler == "functions.ws.message":
        return _event("ws_message_subscribe.json")
    if handler == "functions.fanout.handler":
        return {"shard": 0, "window": 1, "published_at": time.time(),
                "updates": [{"key": "NSE_EQ:2885", "ltp": 2500.5, "version": 1}]}
    if handler == "functions.schedule.handler":
        return {"action": "stop"}
    if handler == INSTRUMENTS_HANDLER:  # downloads the CSV, then fails on its first write
        return _event("instruments_schedule.json")
    if handler == "functions.token.handler":  # fails on its lock or status write, before Dhan
        return _event("token_schedule.json")
    if handler == "functions.quotes.handler":  # reads the Dhan secret, fails on the limiter
        return {"keys": ["NSE_EQ:2885"], "caller": "test"}
    raise AssertionError(f"no event for {handler}")


def _container_fails_on_auth(name: str, process: Process) -> None:
    def failed() -> str | None:
        if AUTH_FAILURE.search(process.output()):
            return "logged an authentication error"
        if not process.alive and process.returncode != 0:
            return f"exited {process.returncode}"
        return None

    how = wait_for(f"{name} without {CONTAINER_AUTH} failing", failed, timeout=20,
                   last_seen=process.tail)  # fmt: skip
    assert AUTH_FAILURE.search(process.output()), (
        f"{name} {how}, but not with an authentication error:\n{process.tail()}")


@pytest.mark.parametrize("deployable", REDIS_DEPLOYABLES)
def test_dropping_the_token_fails(deployable: str, tokenless: Deployment) -> None:
    """Without its auth variable a deployable fails against the AUTH Redis with an
    authentication error: a Lambda's invocation is a function error (the API: a 503), a
    container exits non-zero or logs the AuthenticationError within a few seconds."""
    if deployable.startswith("container:"):
        name = deployable.removeprefix("container:")
        tokenless.launch_task(drop=[CONTAINER_AUTH], only=name)
        process = tokenless.task[name]
        try:
            _container_fails_on_auth(name, process)
        finally:
            process.terminate(5)
            process.kill()
        return


    host = tokenless.host_for_handler(deployable)
    if deployable == "functions.api.handler":
        answer = http_call(host, "GET", "/api/v1/current_prices", query={"keys": KEYS[0]})
        assert answer.status == 503, answer
        assert answer.json()["error"] == "redis_unavailable", answer
        wait_for("the API logging an authentication error",
                 lambda: AUTH_FAILURE.search(host.process.output()), timeout=5,
                 last_seen=host.process.tail)  # fmt: skip
        return
    result = host.invoke(_tokenless_event(deployable, tokenless))
    assert result.function_error == "Unhandled", f"{deployable} answered {result.payload}"
    text = json.dumps(result.payload)
    assert AUTH_FAILURE.search(text), f"{deployable} failed, but not on authentication: {text}"


# --- the walk ---------------------------------------------------------------------------------


def test_walk(deploy_synth: Synth, cloud: Cloud, feed: Feed, scrip_master: str,
              deploy_workdir: Path) -> None:  # fmt: skip
    started = time.monotonic()
    deployment = Deployment(deploy_synth.stack, deploy_synth.template, cloud,
                            Services(feed.url, feed.rest_url, scrip_master),
                            deploy_workdir / "walk")  # fmt: skip
    with deployment, ExitStack() as exits:
        try:
            deployables = deployment.start()
        except Exception as exc:
            pytest.fail(f"the deployment did not start: {exc}\n{deployment.processes.tails()}")
        walk = Walk()
        redis = cloud.redis.client()
        api = deployment.api
        state: dict[str, Any] = {}
        task = ("container-streamer", "container-bridge")
        ws_hosts = tuple(deployment.hosts[lid].process.name
                         for lid in {*deployables.ws.routes.values(), deployables.ws.authorizer}
                         if lid)  # fmt: skip

        def health() -> dict[str, Any]:
            answer = http_call(api, "GET", "/api/v1/health/market_stream")
            assert answer.status == 200, answer
            body: dict[str, Any] = answer.json()
            return body

        def health_stopped() -> str:
            body = health()
            assert body["status"] == "stopped", body
            return f"status {body['status']}"

        walk.run("health: stopped", health_stopped, watch=tails_of(deployment, api.process.name))

        instruments = deployment.host_for_handler(INSTRUMENTS_HANDLER)
        loads = [s for s in deployables.schedules
                 if s.target == deployables.by_handler(INSTRUMENTS_HANDLER).spec.logical_id]

        def instruments_loaded() -> str:
            assert len(loads) == 1, loads
            schedule = loads[0]
            text = schedule.input.replace(
                SCHEDULED_TIME, scheduled_time(schedule.expression, schedule.timezone))
            assert "<aws.scheduler." not in text, f"unknown context attribute in {text}"
            result = instruments.invoke(json.loads(text))
            assert not result.function_error, result.payload
            summary = result.payload
            assert summary["rows"] == 53 and summary["attempts"] == 1, summary
            symbol = redis.hget(INSTRUMENT_SYMBOLS_KEY, KEYS[0])
            assert symbol == b"RELIANCE", symbol
            return (f"{schedule.expression} {schedule.timezone}: {summary['rows']} instruments "
                    f"in {summary['seconds']} s; {KEYS[0]}={symbol.decode()}")

        walk.run("instrument master load (scheduled, before the start)", instruments_loaded,
                 watch=tails_of(deployment, instruments.process.name))

        start_body = json.dumps({"name": STREAM, "keys": KEYS}).encode()

        def start_refused() -> str:
            answer = http_call(api, "POST", "/screeners/ltp/start", headers=admin_headers(None),
                               body=start_body)  # fmt: skip
            assert answer.status == 401, answer
            assert cloud.desired_count() == 0
            return "401 without the admin key"

        walk.run("admin start without the key", start_refused)

        def start() -> str:
            answer = http_call(api, "POST", "/screeners/ltp/start",
                               headers=admin_headers(cloud), body=start_body)  # fmt: skip
            assert answer.status == 200, answer
            count = cloud.desired_count()
            assert count == 1, f"moto desired count {count} after {answer}"
            return f"{answer.json()}; ECS desired count 1"

        walk.run("admin start (ECS desired count 1)", start,
                 watch=tails_of(deployment, api.process.name))

        def launch() -> str:
            deployment.launch_task()
            return "; ".join(p.describe() for p in deployment.task.values())

        walk.run("ECS starts the task (streamer, bridge)", launch,
                 needs=("admin start (ECS desired count 1)",))

        def prices_in_redis() -> str:
            names = [ltp_key(k) for k in KEYS]

            def present() -> list[Any] | None:
                streamer = deployment.task["streamer"]
                if not streamer.alive:
                    raise StepFailed(f"the streamer exited {streamer.returncode}")
                values = redis.mget(names)
                return values if all(v is not None for v in values) else None

            values = wait_for("ltp:* keys of the stream in Redis", present, timeout=30,
                              last_seen=lambda: str(dict(zip(names, redis.mget(names),
                                                             strict=True))))  # fmt: skip
            return ", ".join(f"{n}={v.decode()}" for n, v in zip(names, values, strict=True))

        launched = ("ECS starts the task (streamer, bridge)",)
        walk.run("prices in Redis", prices_in_redis, needs=launched,
                 watch=tails_of(deployment, *task))

        def healthy() -> str:
            body = wait_for("health: healthy", lambda: (b := health())["status"] == "healthy"
                            and b, timeout=20, last_seen=lambda: str(health()))  # fmt: skip
            return f"status healthy, heartbeat age {body.get('heartbeat_age_seconds')} s"

        walk.run("health: healthy", healthy, needs=launched,
                 watch=tails_of(deployment, api.process.name, "container-streamer"))

        def bridge_subscribed() -> str:
            def subscribed() -> int | None:
                bridge = deployment.task["bridge"]
                if not bridge.alive:
                    raise StepFailed(f"the bridge exited {bridge.returncode}")
                count = int(dict(redis.pubsub_numsub(LIVE_LTP_CHANNEL))[LIVE_LTP_CHANNEL.encode()])
                return count or None

            count = wait_for(f"the bridge subscribed to {LIVE_LTP_CHANNEL}", subscribed,
                             timeout=15)  # fmt: skip
            return f"{count} subscriber(s) on {LIVE_LTP_CHANNEL}"

        walk.run("bridge subscribed to the updates", bridge_subscribed, needs=launched,
                 watch=tails_of(deployment, "container-bridge"))

        def ws_token() -> str:
            answer = http_call(api, "GET", "/api/v1/ws_token")
            assert answer.status == 200, answer
            token = answer.json()["token"]
            assert isinstance(token, str) and token, answer
            state["token"] = token
            return f"token of {len(token)} characters, expires in {answer.json()['expires_in']} s"

        walk.run("ws_token", ws_token, watch=tails_of(deployment, api.process.name))

        gateway = deployment.gateway

        def refused(query: str, status: int) -> Callable[[], str]:
            def attempt() -> str:
                from websockets.exceptions import InvalidStatus
                from websockets.sync.client import connect

                try:
                    with connect(gateway.ws_url + query, open_timeout=15):
                        pass
                except InvalidStatus as exc:
                    assert exc.response.status_code == status, exc
                    return f"HTTP {exc.response.status_code}"
                raise AssertionError(f"connected with {query or 'no query'}")

            return attempt

        walk.run("connect without a token refused", refused("", 401),
                 watch=tails_of(deployment, *ws_hosts))
        walk.run("connect with a bad token refused", refused("?token=not-a-token", 403),
                 watch=tails_of(deployment, *ws_hosts))

        def connect() -> str:
            from websockets.sync.client import connect as ws_connect

            state["ws"] = exits.enter_context(ws_connect(
                f"{gateway.ws_url}?token={quote(state['token'])}", open_timeout=20,
                close_timeout=5))
            ids = list(gateway.connections)
            return f"connected, connection ids {ids}"

        walk.run("connect through the authorizer", connect, needs=("ws_token",),
                 watch=tails_of(deployment, *ws_hosts))

        def receive(kind: str, timeout: float) -> dict[str, Any]:
            seen: list[str] = []

            def next_of_kind() -> dict[str, Any] | None:
                raw = state["ws"].recv(timeout=0.5)
                message: dict[str, Any] = json.loads(raw)
                if message.get("type") == kind:
                    return message
                seen.append(str(message.get("type")))
                return None

            return wait_for(f"a {kind} message", next_of_kind, timeout=timeout, interval=0,
                            last_seen=lambda: f"other messages: {seen[-5:]}")  # fmt: skip

        def subscribe() -> str:
            state["ws"].send(json.dumps({"action": "subscribe", "keys": KEYS}))
            snapshot = receive("snapshot", 15)
            prices = snapshot.get("prices") or {}
            assert set(prices) == set(KEYS), snapshot
            assert not snapshot.get("missing"), snapshot
            return ", ".join(f"{k}={v.get('ltp')}" for k, v in prices.items())

        walk.run("subscribe -> snapshot", subscribe, needs=("connect through the authorizer",),
                 watch=tails_of(deployment, *ws_hosts))

        fanout = deployment.fanout_host()

        def live() -> str:
            batch = receive("screener_ltp_batch_update", 20)
            updates = [u for u in batch.get("updates") or [] if u.get("key") in KEYS]
            assert updates, batch
            runs = fanout.process.output().count("START RequestId")
            return (f"{len(updates)} update(s) of {sorted({u['key'] for u in updates})}; "
                    f"{runs} fan-out invocation(s), {gateway.posts} @connections post(s)")

        walk.run("live updates (bridge -> fan-out -> @connections)", live,
                 needs=("subscribe -> snapshot", "bridge subscribed to the updates"),
                 watch=tails_of(deployment, "container-bridge", fanout.process.name))

        def disconnect() -> str:
            state["ws"].close()
            wait_for("the connection forgotten by $disconnect",
                     lambda: redis.zcard(CONNECTIONS) == 0, timeout=10,
                     last_seen=lambda: f"{redis.zcard(CONNECTIONS)} registered")
            return "closed; the registry holds no connection"

        walk.run("disconnect", disconnect, needs=("connect through the authorizer",),
                 watch=tails_of(deployment, *ws_hosts))

        def bulk_prices() -> str:
            answer = http_call(api, "GET", "/api/v1/current_prices", query={"keys": ",".join(KEYS)})
            assert answer.status == 200, answer
            body = answer.json()
            assert set(body["prices"]) == set(KEYS) and not body.get("missing"), body
            assert body["cached_count"] == len(KEYS), body
            return f"{body['count']} prices, {body['cached_count']} from the cache"

        walk.run("bulk prices", bulk_prices, needs=("prices in Redis",),
                 watch=tails_of(deployment, api.process.name))

        quotes = deployment.host_for_handler(QUOTES_HANDLER)

        def rest_fallback() -> str:
            before = quotes.process.output().count("START RequestId")
            answer = http_call(api, "GET", "/api/v1/current_prices",
                               query={"keys": NOT_STREAMED})  # fmt: skip
            assert answer.status == 200, answer
            body = answer.json()
            assert NOT_STREAMED in body["prices"] and body["api_fetched_count"] == 1, body
            runs = quotes.process.output().count("START RequestId") - before
            assert runs == 1, f"{runs} quotes function invocation(s) for one miss"
            return (f"{NOT_STREAMED}={body['prices'][NOT_STREAMED]} through the quotes "
                    "function and DhanHQ REST")

        walk.run("a price not streamed (DhanHQ REST)", rest_fallback,
                 watch=tails_of(deployment, api.process.name, quotes.process.name))

        def still_running() -> str:
            dead = [p.describe() for p in deployment.task.values() if not p.alive]
            assert not dead, f"an essential container exited (ECS would stop the task): {dead}"
            return "both containers running"

        walk.run("the task still running", still_running, needs=launched,
                 watch=tails_of(deployment, *task))

        stops = [s for s in deployables.schedules if json.loads(s.input).get("action") == "stop"]

        def scheduled_stop() -> str:
            assert len(stops) == 1, stops
            schedule = stops[0]
            planned = scheduled_time(schedule.expression, schedule.timezone)
            text = schedule.input.replace(SCHEDULED_TIME, planned)
            assert "<aws.scheduler." not in text, f"unknown context attribute in {text}"
            host = deployment.hosts[schedule.target]
            result = host.invoke(json.loads(text))
            assert not result.function_error, result.payload
            assert result.payload["decision"] == "stop", result.payload
            wait_for("ECS desired count 0", lambda: cloud.desired_count() == 0, timeout=5,
                     last_seen=lambda: f"desired count {cloud.desired_count()}")
            return f"{text} -> {result.payload['decision']}; ECS desired count 0"

        walk.run("scheduled stop (ECS desired count 0)", scheduled_stop,
                 watch=tails_of(deployment, *(deployment.hosts[s.target].process.name
                                              for s in stops)))  # fmt: skip

        def task_stops() -> str:
            running = [name for name, p in deployment.task.items() if p.alive]
            codes = deployment.stop_task(timeout=10)
            late = {n: c for n, c in codes.items() if n in running and c is None}
            bad = {n: c for n, c in codes.items() if n in running and c not in (0, None)}
            assert not late, f"still running 10 s after SIGTERM: {sorted(late)}"
            assert not bad, f"non-zero exit after SIGTERM: {bad}"
            return ", ".join(f"{n} exited {c}" for n, c in codes.items())

        walk.run("SIGTERM: the containers exit within 10 s", task_stops,
                 needs=(launched[0], "scheduled stop (ECS desired count 0)"),
                 watch=tails_of(deployment, *task))
        redis.close()

        report = (f"deploy-shaped walk ({time.monotonic() - started:.0f} s; "
                  f"{len(deployment.hosts)} Lambda hosts, {len(deployment.task)} containers; "
                  f"not run: {', '.join(sorted(deployables.skipped))}):\n{walk.report()}")
        print("\n" + report)
        if walk.failed:
            pytest.fail(f"{len(walk.failed)} step(s) did not pass\n{report}\n\n"
                        f"tails of every process:\n{deployment.processes.tails(15)}",
                        pytrace=False)
