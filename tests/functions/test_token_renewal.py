"""The token renewal against the simulator's REST side (real HTTP on loopback), Secrets Manager
in moto (real boto3 calls) and a real Redis; the clock is injected."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import boto3
import httpx
import pytest
import redis
from moto import mock_aws

from core.dhan_token import token_expiry
from core.messages import IST
from core.names import CONTROL_CHANNEL, TOKEN_RENEW_LOCK_KEY, TOKEN_RENEWED, TOKEN_STATUS_KEY
from functions.token.renewer import RenewalError, TokenRenewer
from local.dhan_sim.rest import RestStandIn
from local.dhan_sim.tokens import TokenAuthority

CLIENT = "1000000001"
DAY = 86400.0


def ist(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=IST).timestamp()


class Clock:
    def __init__(self, at: float) -> None:
        self.now = at

    def __call__(self) -> float:
        return self.now


class World:
    """Dhan (the stand-in and its token authority), the secret, Redis and a renewer factory."""

    def __init__(self, clock: Clock, rest: RestStandIn, secrets: Any, arn: str,
                 redis_client: redis.Redis) -> None:
        self.clock, self.rest, self.secrets, self.arn = clock, rest, secrets, arn
        self.redis = redis_client
        self.emitted: list[dict[str, Any]] = []
        self.http = httpx.Client()

    def renewer(self, **options: Any) -> TokenRenewer:
        return TokenRenewer(secrets_client=self.secrets, secret_arn=self.arn, http=self.http,
                            api_base_url=self.rest.base_url, redis=self.redis,
                            clock=self.clock, sleep=lambda _: None,
                            emit=lambda line: self.emitted.append(json.loads(line)), **options)

    def secret(self, stage: str = "AWSCURRENT") -> dict[str, Any]:
        value = self.secrets.get_secret_value(SecretId=self.arn, VersionStage=stage)
        document: dict[str, Any] = json.loads(value["SecretString"])
        return document

    def versions(self) -> int:
        return len(self.secrets.list_secret_version_ids(SecretId=self.arn)["Versions"])

    def renew_calls(self) -> int:
        return sum(1 for c in self.rest.calls if c["path"].endswith("/RenewToken"))

    def status(self) -> dict[str, Any]:
        raw = self.redis.get(TOKEN_STATUS_KEY)
        return json.loads(raw) if raw else {}


@pytest.fixture
def world(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    # Minted Monday 1 Dec 2026, 09:00 IST: it expires Tuesday 09:00 IST.
    clock = Clock(ist("2026-11-30T09:00:00"))
    authority = TokenAuthority(CLIENT, None, clock=clock)
    with mock_aws(), RestStandIn(tokens=authority, enforce_rate_limit=False) as rest:
        secrets = boto3.client("secretsmanager", region_name="ap-south-1")
        arn = secrets.create_secret(Name="dhan", SecretString=json.dumps(
            {"client_id": CLIENT, "access_token": authority.current, "note": "kept"}))["ARN"]
        w = World(clock, rest, secrets, arn, redis_client)
        try:
            yield w
        finally:
            w.http.close()


def test_renews_in_the_quiet_hours_once_less_than_16h_is_left(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    old = world.secret()["access_token"]
    world.clock.now = ist("2026-11-30T20:00:00")  # 13 h left, evening
    pubsub = world.redis.pubsub()
    pubsub.subscribe(CONTROL_CHANNEL)
    pubsub.get_message(timeout=1)
    # INFO and up from every logger (httpx logs each request at INFO; botocore's DEBUG
    # dumps whole responses, secrets included, and is never on in a deployment).
    with caplog.at_level(logging.INFO):
        outcome = world.renewer().run()
    assert outcome["result"] == "renewed"
    new = world.secret()["access_token"]
    assert new != old
    assert world.secret()["note"] == "kept"  # the rest of the document survives
    assert world.secret("AWSPREVIOUS")["access_token"] == old
    assert world.rest.tokens.current == new
    assert token_expiry(new) == pytest.approx(world.clock.now + DAY, abs=1)
    assert outcome["seconds_left"] == pytest.approx(DAY, abs=1)
    message = pubsub.get_message(timeout=2)
    assert message is not None and json.loads(message["data"])["type"] == TOKEN_RENEWED
    pubsub.close()
    assert world.status()["result"] == "renewed"
    assert world.status()["renewed_at"] == world.clock.now
    assert world.emitted[-1]["TokenSecondsLeft"] == pytest.approx(DAY, abs=1)
    assert world.redis.get(TOKEN_RENEW_LOCK_KEY) is None
    text = caplog.text + json.dumps(world.emitted) + json.dumps(outcome)
    assert old not in text and new not in text


def use_token_minted_at(world: World, when: str) -> str:
    world.clock.now = ist(when)
    token = world.rest.tokens.mint().token
    world.secrets.put_secret_value(SecretId=world.arn, SecretString=json.dumps(
        {"client_id": CLIENT, "access_token": token}))
    return token


def test_waits_during_the_session_and_renews_after_it(world: World) -> None:
    use_token_minted_at(world, "2026-11-29T20:00:00")  # Sunday evening: Monday 20:00 expiry
    world.clock.now = ist("2026-11-30T11:00:00")  # 9 h left, in the session
    assert world.renewer().run()["result"] == "skipped"
    world.clock.now = ist("2026-11-30T15:30:00")  # 4.5 h left, still above the urgent mark
    assert world.renewer().run()["result"] == "skipped"
    assert world.renew_calls() == 0
    assert world.emitted[-1]["TokenSecondsLeft"] == pytest.approx(4.5 * 3600, abs=1)
    world.clock.now = ist("2026-11-30T16:30:00")
    assert world.renewer().run()["result"] == "renewed"
    assert world.renew_calls() == 1


def test_a_fresh_token_is_left_alone(world: World) -> None:
    world.clock.now = ist("2026-11-30T20:00:00")  # 13 h left... of a token minted at 09:00
    use_token_minted_at(world, "2026-11-30T19:00:00")  # ... replaced by hand at 19:00
    world.clock.now = ist("2026-11-30T23:00:00")  # 20 h left
    assert world.renewer().run()["result"] == "skipped"
    assert world.renew_calls() == 0


def test_renews_mid_session_when_expiry_is_near(world: World) -> None:
    # A token minted on Monday at 12:00 has 2 h left on Tuesday at 10:00, in the session.
    authority = world.rest.tokens
    token = use_token_minted_at(world, "2026-11-30T12:00:00")
    world.clock.now = ist("2026-12-01T10:00:00")
    outcome = world.renewer().run()
    assert outcome["result"] == "renewed"
    assert world.secret()["access_token"] == authority.current != token


def test_an_expired_token_is_reported_not_retried(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.clock.now = ist("2026-12-01T09:30:00")  # 30 min past its expiry
    with caplog.at_level(logging.ERROR):
        outcome = world.renewer().run()
        again = world.renewer().run()
    assert outcome["result"] == again["result"] == "expired"
    assert world.renew_calls() == 0  # nothing can renew it: no call, no loop
    assert world.versions() == 1
    assert world.emitted[-1]["TokenSecondsLeft"] == 0
    assert world.status()["result"] == "expired"
    assert "expired" in caplog.text and "by hand" in caplog.text


def test_concurrent_runs_renew_once(world: World) -> None:
    world.clock.now = ist("2026-11-30T22:00:00")
    world.rest.delay = 0.3  # both runs are inside the renewal at the same time
    outcomes: list[str] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcomes.append(world.renewer().run()["result"])
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert errors == []
    assert sorted(outcomes) == ["locked", "locked", "renewed"]
    assert world.renew_calls() == 1
    assert world.versions() == 2
    assert world.secret()["access_token"] == world.rest.tokens.current


def test_a_retried_invocation_after_a_renewal_does_nothing(world: World) -> None:
    world.clock.now = ist("2026-11-30T22:00:00")
    assert world.renewer().run()["result"] == "renewed"
    world.clock.now += 60
    assert world.renewer().run()["result"] == "skipped"
    assert world.renew_calls() == 1 and world.versions() == 2


def test_dhan_refusing_fails_loudly_and_changes_nothing(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    old = world.secret()["access_token"]
    world.rest.tokens.install(world.rest.tokens.mint().token)  # minted elsewhere: ours is dead
    world.clock.now = ist("2026-11-30T22:00:00")
    with caplog.at_level(logging.INFO), pytest.raises(RenewalError, match="DH-901") as caught:
        world.renewer().run()
    assert world.secret()["access_token"] == old and world.versions() == 1
    assert world.status()["result"] == "failed"
    assert "DH-901" in world.status()["error"]
    assert old not in caplog.text and old not in str(caught.value)
    assert world.redis.get(TOKEN_RENEW_LOCK_KEY) is None


def test_a_lost_put_answer_is_retried_into_one_version(world: World) -> None:
    """The put landed but its answer was lost: the retry, with the same request token, must
    not leave a second new version (or the old token as AWSCURRENT)."""
    from botocore.exceptions import EndpointConnectionError

    class LossyPut:
        def __init__(self, inner: Any) -> None:
            self._inner, self.puts = inner, 0

        def get_secret_value(self, **kwargs: Any) -> Any:
            return self._inner.get_secret_value(**kwargs)

        def put_secret_value(self, **kwargs: Any) -> Any:
            self.puts += 1
            answer = self._inner.put_secret_value(**kwargs)
            if self.puts == 1:
                raise EndpointConnectionError(endpoint_url="https://secretsmanager")
            return answer

    lossy = LossyPut(world.secrets)
    world.clock.now = ist("2026-11-30T22:00:00")
    renewer = TokenRenewer(secrets_client=lossy, secret_arn=world.arn, http=world.http,
                           api_base_url=world.rest.base_url, redis=world.redis,
                           clock=world.clock, sleep=lambda _: None, emit=lambda _: None)
    assert renewer.run()["result"] == "renewed"
    assert lossy.puts == 2
    assert world.versions() == 2
    assert world.secret()["access_token"] == world.rest.tokens.current


def test_the_deploy_time_placeholder_is_not_sent_to_dhan(world: World) -> None:
    world.secrets.put_secret_value(SecretId=world.arn, SecretString=json.dumps(
        {"client_id": "REPLACE_ME", "access_token": "generated-at-deploy"}))
    world.clock.now = ist("2026-11-30T22:00:00")
    assert world.renewer().run()["result"] == "unconfigured"
    assert world.renew_calls() == 0 and world.emitted == []  # the alarm sees no datapoint
    assert world.status()["error"] == "no DhanHQ token configured"


@pytest.mark.parametrize("expiry_time", ["2026-12-01T22:00:00", None])
def test_a_token_that_is_no_jwt_takes_its_expiry_from_the_answer(
    world: World, expiry_time: str | None
) -> None:
    """Another Dhan stand-in (or a future Dhan) may hand out opaque tokens: the expiry then
    comes from `expiryTime` (IST when it names no zone), else Dhan's 24 h, and the next run
    does not renew again."""
    answers: list[httpx.Request] = []

    def dhan(request: httpx.Request) -> httpx.Response:
        answers.append(request)
        body: dict[str, Any] = {"accessToken": f"opaque-{len(answers)}"}
        if expiry_time:
            body["expiryTime"] = expiry_time
        return httpx.Response(200, json=body)

    world.clock.now = ist("2026-11-30T22:00:00")
    with httpx.Client(transport=httpx.MockTransport(dhan)) as http:
        renewer = TokenRenewer(secrets_client=world.secrets, secret_arn=world.arn, http=http,
                               api_base_url="https://api.dhan.example/v2", redis=world.redis,
                               clock=world.clock, sleep=lambda _: None, emit=lambda _: None)
        outcome = renewer.run()
        expected = ist(expiry_time) if expiry_time else world.clock.now + DAY
        assert outcome["result"] == "renewed" and outcome["expires_at"] == expected
        assert answers[0].method == "GET" and answers[0].url.path == "/v2/RenewToken"
        assert answers[0].headers["dhanClientId"] == CLIENT
        world.clock.now += STEP_SECONDS
        again = renewer.run()
    assert again["result"] == "skipped" and again["expires_at"] == expected
    assert len(answers) == 1


STEP_SECONDS = 1800
