"""A trading day on the deploy-shaped harness, compressed into a few minutes, with no hand on
the deployables: every one runs as the template deploys it (see test_deployed_walk.py for how
the harness stands in for AWS), only the feed and the cache are disturbed from outside.

The day: the scheduled start (the start schedule's own input, its scheduled time a known
trading day: the clock is injected there and in the streamer's STREAMER_ALWAYS_OPEN) -> the
default watchlist streams with no admin stream -> viewers subscribe to keys no stream names
(streamed by demand) -> an admin stream -> its record lapses while a viewer watches its keys ->
the cache is flushed -> the feed sends 807 and the secret is rotated -> the feed goes down and
comes back -> the token renewal job renews the (by then nearly expired) token -> the scheduled
stop. Viewers behave as the page does (tests/deploy/viewer.py).

Invariants checked throughout: no viewer is shown a price older than the cache TTL as fresh;
after each fault the newest price of every watched key arrives within a stated bound; health
says what is true at every step (healthy while streaming, not healthy within 75 s of the feed
going down, healthy again once it is back, stopped after the stop). The measured recovery times
are printed in the report.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from core.names import ltp_key, stream_key
from tests.deploy.cloud import SIM_CLIENT_ID, Cloud, Synth, scheduled_time, secret_constructs
from tests.deploy.deployment import TOKEN_HANDLER, Deployment, Services
from tests.deploy.harness import http_call, wait_for
from tests.deploy.test_deployed_walk import SCHEDULED_TIME, Walk, admin_headers, tails_of
from tests.deploy.viewer import Viewer

pytestmark = [pytest.mark.cdk, pytest.mark.timeout(900)]

WATCHLIST_KEY = "IDX_I:13"  # in the template's default watchlist (the NIFTY 50 sample)
VIEWER_KEYS = ["NSE_EQ:990001", "NSE_EQ:990002"]  # named by no stream
STREAM = "day-screener"
STREAM_KEYS = ["NSE_EQ:990011", "NSE_EQ:990012"]
TRADING_DAY = datetime(2026, 12, 1, 12, 0, tzinfo=ZoneInfo("Asia/Kolkata"))  # a Tuesday

# Bounds the day is held to (seconds).
FIRST_PRICE = 20  # a viewer's new key, from subscribe to its first live update
AFTER_FLUSH = 30  # every watched key live again after FLUSHALL
AFTER_ROTATION = 30  # ... after 807 and a rotated secret
HEALTH_LEAVES = 75  # health no longer "healthy" after the feed goes down
AFTER_FEED_BACK = 90  # every watched key live again after the feed returns (backoff <= 60 s)
AFTER_RENEWAL = 30  # every watched key live again after the token renewal
# The day's tokens live 3 h, so the one in the secret is always within the renewal's urgent
# mark (4 h): the job renews whatever the wall clock's IST hour (CI runs at any time).
TOKEN_LIFETIME_SECONDS = 3 * 3600


@dataclass
class DayFeed:
    url: str
    rest_url: str
    simulator: Any
    tokens: Any  # local.dhan_sim.tokens.TokenAuthority


@pytest.fixture(scope="module")
def day_feed(dhan_token: str) -> Iterator[DayFeed]:
    """The day's own simulator: it is taken down and its token rotated, so it is not the
    session's shared one."""
    from local.dhan_sim.feed import SimConfig
    from local.dhan_sim.prices import PriceBook
    from local.dhan_sim.rest import RestStandIn
    from local.dhan_sim.threaded import ThreadedFeedSimulator
    from local.dhan_sim.tokens import TokenAuthority

    book = PriceBook(seed=11)
    config = SimConfig(host="127.0.0.1", port=0, client_id=SIM_CLIENT_ID,
                       access_token=dhan_token, rate=400.0, seed=11)  # fmt: skip
    # One Dhan: a renewal on the REST side kills the old token's feed sockets.
    authority = TokenAuthority(SIM_CLIENT_ID, dhan_token,
                               lifetime_seconds=TOKEN_LIFETIME_SECONDS)
    with ThreadedFeedSimulator(config, prices=book, tokens=authority) as simulator:
        rest = RestStandIn(book, tokens=authority).start()
        try:
            yield DayFeed(simulator.url, rest.base_url, simulator, authority)
        finally:
            rest.close()


def test_a_trading_day(deploy_synth: Synth, cloud: Cloud, day_feed: DayFeed,
                       deploy_workdir: Path) -> None:  # fmt: skip
    started = time.monotonic()
    deployment = Deployment(deploy_synth.stack, deploy_synth.template, cloud,
                            Services(day_feed.url, day_feed.rest_url), deploy_workdir / "day")
    sim = day_feed.simulator
    measured: dict[str, float] = {}
    viewers: list[Viewer] = []
    with deployment:
        deployables = deployment.start()
        walk = Walk()
        redis = cloud.redis.client()
        redis.flushall()  # the session's cache: the day starts empty, whatever ran before
        api = deployment.api
        task = ("container-streamer", "container-bridge")
        everything = (api.process.name, *task, deployment.fanout_host().process.name)

        def health() -> dict[str, Any]:
            answer = http_call(api, "GET", "/api/v1/health/market_stream")
            assert answer.status == 200, answer
            body: dict[str, Any] = answer.json()
            return body

        def token() -> str:
            answer = http_call(api, "GET", "/api/v1/ws_token")
            assert answer.status == 200, answer
            return str(answer.json()["token"])

        def viewer(name: str, keys: list[str]) -> Viewer:
            made = Viewer(name, deployment.gateway.ws_url, token, keys).start()
            viewers.append(made)
            return made

        def all_live(who: list[Viewer], since: float, bound: float, what: str) -> float:
            wait_for(what, lambda: all(v.fresh_since(since) for v in who), timeout=bound,
                     last_seen=lambda: "; ".join(f"{v.name} waiting for {v.missing_since(since)}"
                                                 for v in who))  # fmt: skip
            return round(time.time() - since, 1)

        def schedule(action: str) -> dict[str, Any]:
            (chosen,) = [s for s in deployables.schedules
                         if json.loads(s.input).get("action") == action]  # fmt: skip
            planned = scheduled_time(chosen.expression, chosen.timezone, now=TRADING_DAY)
            result = deployment.hosts[chosen.target].invoke(
                json.loads(chosen.input.replace(SCHEDULED_TIME, planned)))
            assert not result.function_error, result.payload
            payload: dict[str, Any] = result.payload
            return payload

        # --- morning --------------------------------------------------------------------
        def scheduled_start() -> str:
            outcome = schedule("start")
            assert outcome["decision"] == "start", outcome
            assert cloud.desired_count() == 1
            deployment.launch_task()
            return f"{outcome['day']}: {outcome['decision']}; ECS desired count 1; task launched"

        walk.run("scheduled start", scheduled_start, watch=tails_of(deployment, *everything))

        def watchlist_streams() -> str:
            wait_for("the default watchlist in the cache", lambda: redis.get(ltp_key(
                WATCHLIST_KEY)), timeout=30)  # fmt: skip
            assert not list(redis.scan_iter("websocket_stream:*")), "no admin stream started"
            body = wait_for("health: healthy", lambda: (b := health())["status"] == "healthy"
                            and b, timeout=30, last_seen=lambda: str(health()))  # fmt: skip
            return (f"{WATCHLIST_KEY}={redis.get(ltp_key(WATCHLIST_KEY)).decode()} with no "
                    f"stream; health {body['status']}")

        walk.run("the default watchlist streams; health healthy", watchlist_streams,
                 needs=("scheduled start",), watch=tails_of(deployment, *everything))

        state: dict[str, Viewer] = {}

        def demand() -> str:
            since = time.time()
            state["a"] = viewer("a", [WATCHLIST_KEY, *VIEWER_KEYS])
            measured["first price of an unnamed key (s)"] = all_live(
                [state["a"]], since, FIRST_PRICE, "live updates of the viewer's unnamed keys")
            return f"{VIEWER_KEYS} live {measured['first price of an unnamed key (s)']} s " \
                   "after the subscribe"

        walk.run("a viewer's unnamed keys are streamed (demand)", demand,
                 needs=("the default watchlist streams; health healthy",),
                 watch=tails_of(deployment, *everything))

        def admin_stream() -> str:
            body = json.dumps({"name": STREAM, "keys": STREAM_KEYS}).encode()
            answer = http_call(api, "POST", "/screeners/ltp/start",
                               headers=admin_headers(cloud), body=body)  # fmt: skip
            assert answer.status == 200, answer
            since = time.time()
            state["b"] = viewer("b", STREAM_KEYS)
            all_live([state["b"]], since, FIRST_PRICE, "live updates of the stream's keys")
            ttl = redis.ttl(stream_key(STREAM))
            return f"{STREAM} {STREAM_KEYS} live; record TTL {ttl} s"

        walk.run("an admin stream, watched", admin_stream,
                 needs=("a viewer's unnamed keys are streamed (demand)",),
                 watch=tails_of(deployment, *everything))

        def record_lapses() -> str:
            redis.delete(stream_key(STREAM))  # what its TTL running out does
            time.sleep(10)  # the streamer's re-read (5 s) has seen it gone
            since = time.time()
            all_live([state["b"]], since, 20, "the watched keys still live after the lapse")
            return f"{STREAM_KEYS} still live 10-{10 + round(time.time() - since)} s after " \
                   "their record lapsed"

        walk.run("watched keys survive their record lapsing", record_lapses,
                 needs=("an admin stream, watched",), watch=tails_of(deployment, *everything))

        # --- the cache is replaced by an empty one ----------------------------------------
        def flush() -> str:
            redis.flushall()
            since = time.time()
            who = [state["a"], state["b"]]
            measured["all watched keys live after FLUSHALL (s)"] = all_live(
                who, since, AFTER_FLUSH, "every watched key live again after the flush")
            wait_for("health: healthy after the flush", lambda: health()["status"] == "healthy",
                     timeout=30, last_seen=lambda: str(health()))  # fmt: skip
            return (f"live again in {measured['all watched keys live after FLUSHALL (s)']} s "
                    f"(bound {AFTER_FLUSH} s); reconnects: "
                    f"{', '.join(f'{v.name} {v.reconnects}' for v in who)}")

        walk.run("FLUSHALL: viewers live again", flush,
                 needs=("a viewer's unnamed keys are streamed (demand)",),
                 watch=tails_of(deployment, *everything))

        # --- a new token ----------------------------------------------------------------
        (dhan_secret,) = [cloud.secret_arns[lid] for lid, role
                          in secret_constructs(deploy_synth.stack).items() if role == "dhan"]

        def secret_manager() -> Any:
            import boto3

            return boto3.client("secretsmanager", region_name=cloud.region,
                                endpoint_url=cloud.moto_url, aws_access_key_id="testing",
                                aws_secret_access_key="testing")  # fmt: skip

        def rotation() -> str:
            from local.dhan_sim.tokens import encode_jwt

            # A token minted elsewhere (web.dhan.co), JWT-shaped like Dhan's, 3 h to live.
            new = encode_jwt({"iss": "dhan", "dhanClientId": SIM_CLIENT_ID,
                              "exp": int(time.time()) + TOKEN_LIFETIME_SECONDS,
                              "jti": secrets.token_hex(8)})
            manager = secret_manager()
            try:
                manager.put_secret_value(SecretId=dhan_secret, SecretString=json.dumps(
                    {"client_id": SIM_CLIENT_ID, "access_token": new}))
            finally:
                manager.close()
            sim.sim.set_token(new)
            since = time.time()
            sim.call(sim.sim.send_disconnect, 807)
            who = [state["a"]]
            measured["watched keys live after 807 + rotation (s)"] = all_live(
                who, since, AFTER_ROTATION, "live again with the rotated token")
            return f"live again in {measured['watched keys live after 807 + rotation (s)']} s"

        walk.run("807 and a rotated secret", rotation,
                 needs=("a viewer's unnamed keys are streamed (demand)",),
                 watch=tails_of(deployment, *everything))

        # --- the feed goes down and comes back ------------------------------------------
        def feed_down() -> str:
            assert health()["status"] == "healthy", health()
            sim.sim.reject_handshakes(status=503, count=10**9)
            sim.call(sim.sim.drop_connections)
            since = time.monotonic()
            body = wait_for("health leaving healthy", lambda: (b := health())["status"]
                            != "healthy" and b, timeout=HEALTH_LEAVES,
                            last_seen=lambda: str(health()))  # fmt: skip
            measured["health leaves healthy after the feed goes down (s)"] = round(
                time.monotonic() - since, 1)
            return (f"{body['status']} after "
                    f"{measured['health leaves healthy after the feed goes down (s)']} s: "
                    f"{body['reasons']}")

        walk.run("feed down: health says so", feed_down,
                 needs=("a viewer's unnamed keys are streamed (demand)",),
                 watch=tails_of(deployment, *everything))

        def feed_back() -> str:
            sim.sim.reject_handshakes(count=0)
            since = time.time()
            measured["watched keys live after the feed returns (s)"] = all_live(
                [state["a"]], since, AFTER_FEED_BACK, "live again after the feed returned")
            wait_for("health: healthy again", lambda: health()["status"] == "healthy",
                     timeout=30, last_seen=lambda: str(health()))  # fmt: skip
            measured["health healthy again after the feed returns (s)"] = round(
                time.time() - since, 1)
            return (f"live in {measured['watched keys live after the feed returns (s)']} s, "
                    f"healthy in {measured['health healthy again after the feed returns (s)']} s")

        walk.run("feed back: live and healthy again", feed_back,
                 needs=("feed down: health says so",), watch=tails_of(deployment, *everything))

        # --- the token renewal --------------------------------------------------------
        def renewal() -> str:
            (chosen,) = [s for s in deployables.schedules
                         if deployables.functions[s.target].spec.handler == TOKEN_HANDLER]
            assert chosen.expression == "rate(30 minutes)", chosen.expression
            old = day_feed.tokens.current

            def streamer_token() -> dict[str, Any]:
                beat = json.loads(redis.get("market_stream:heartbeat") or b"{}")
                part: dict[str, Any] = beat.get("token") or {}
                return part

            changes = streamer_token().get("changes", 0)
            since = time.time()
            result = deployment.hosts[chosen.target].invoke(json.loads(chosen.input.replace(
                SCHEDULED_TIME, datetime.now(ZoneInfo("UTC")).strftime("%Y-%m-%dT%H:%M:%SZ"))))
            assert not result.function_error, result.payload
            assert result.payload["result"] == "renewed", result.payload
            manager = secret_manager()
            try:
                current = json.loads(manager.get_secret_value(
                    SecretId=dhan_secret)["SecretString"])["access_token"]
                previous = json.loads(manager.get_secret_value(
                    SecretId=dhan_secret, VersionStage="AWSPREVIOUS")["SecretString"])
            finally:
                manager.close()
            assert current == day_feed.tokens.current != old
            assert previous["access_token"] == old
            measured["watched keys live after the token renewal (s)"] = all_live(
                [state["a"], state["b"]], since, AFTER_RENEWAL,
                "live again on the renewed token")
            body = wait_for("health: the renewal reported",
                            lambda: (b := health())["token"]["last_renewal"]
                            and b["token"]["last_renewal"]["result"] == "renewed" and b,
                            timeout=15, last_seen=lambda: str(health()["token"]))
            seen = wait_for("the streamer on the new token", lambda: (
                t := streamer_token()).get("changes", 0) > changes and t, timeout=15)
            logs = deployment.processes.tails(10_000)
            assert old not in logs and current not in logs, "a token reached a log"
            return (f"renewed (version {result.payload['version_id']}); live again in "
                    f"{measured['watched keys live after the token renewal (s)']} s; health: "
                    f"{body['token']['seconds_left']} s left; streamer switched "
                    f"{seen['switches']} connection(s) itself (the others were cut by Dhan)")

        walk.run("the token renewal job renews; the streamer follows", renewal,
                 needs=("a viewer's unnamed keys are streamed (demand)",),
                 watch=tails_of(deployment, *everything))

        # --- evening --------------------------------------------------------------------
        def scheduled_stop() -> str:
            outcome = schedule("stop")
            assert outcome["decision"] == "stop", outcome
            assert cloud.desired_count() == 0
            codes = deployment.stop_task(timeout=10)
            assert all(code == 0 for code in codes.values()), codes
            body = wait_for("health: stopped", lambda: (b := health())["status"] == "stopped"
                            and b, timeout=10, last_seen=lambda: str(health()))  # fmt: skip
            return f"ECS desired count 0; containers {codes}; health {body['status']}"

        walk.run("scheduled stop", scheduled_stop, needs=("scheduled start",),
                 watch=tails_of(deployment, *everything))

        for each in viewers:
            each.close()
        stale = [(v.name, *s) for v in viewers for s in v.stale]

        def never_stale() -> str:
            assert not stale, f"prices older than the cache TTL shown as fresh: {stale[:10]}"
            return f"{sum(len(v.updates) for v in viewers)} keys watched, none shown stale"

        walk.run("invariant: no stale price shown as fresh", never_stale)
        redis.close()

        figures = "\n".join(f"  {name}: {value}" for name, value in measured.items())
        report = (f"trading day ({time.monotonic() - started:.0f} s):\n{walk.report()}\n"
                  f"recovery times:\n{figures}")
        print("\n" + report)
        if walk.failed:
            pytest.fail(f"{len(walk.failed)} step(s) did not pass\n{report}\n\n"
                        f"tails of every process:\n{deployment.processes.tails(15)}",
                        pytrace=False)
