"""The instrument-master load: real Redis, Dhan's CSV served from a loopback HTTP server."""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import redis
from moto import mock_aws

from core import instrument_master
from core.backoff import Backoff
from core.errors import ConfigError
from core.instrument_master import SAMPLE_PATH
from core.names import INSTRUMENT_META_KEY, INSTRUMENT_NAMES_KEY, INSTRUMENT_SYMBOLS_KEY
from functions.instruments import handler
from functions.instruments.errors import InstrumentLoadError
from functions.instruments.runner import InstrumentLoader
from functions.instruments.settings import DEFAULT_SEGMENTS, InstrumentSettings, shown_source
from functions.instruments.wiring import build_loader, loader

SAMPLE = SAMPLE_PATH.read_bytes()
SAMPLE_ROWS = 52  # NIFTY 50 + NIFTY + BANKNIFTY
EVENTS = Path(__file__).resolve().parents[1] / "events"


@dataclass
class MasterServer:
    """Dhan's CDN stand-in. Paths: /api-scrip-master.csv (the sample), /broken.csv (500),
    /flaky.csv (500 the first time, then the sample), /cut.csv (the connection closes
    mid-file), /page.csv (an HTML page with 200)."""

    url: str
    hits: Counter[str] = field(default_factory=Counter)

    def at(self, path: str) -> str:
        return f"{self.url}{path}"


def _handler_for(state: MasterServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            path = urlsplit(self.path).path
            state.hits[path] += 1
            if path == "/broken.csv" or (path == "/flaky.csv" and state.hits[path] == 1):
                self.send_error(500, "upstream trouble")
            elif path in ("/api-scrip-master.csv", "/flaky.csv"):
                self._send(SAMPLE, "text/csv")
            elif path == "/cut.csv":
                self.send_response(200)
                self.send_header("Content-Type", "text/csv")
                self.send_header("Content-Length", str(len(SAMPLE)))
                self.end_headers()
                self.wfile.write(SAMPLE[: len(SAMPLE) * 2 // 3])
                self.wfile.flush()
                self.close_connection = True
            elif path == "/page.csv":
                self._send(b"<html><body>Service Unavailable</body></html>\n", "text/html")
            else:
                self.send_error(404)

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def master() -> Iterator[MasterServer]:
    state = MasterServer(url="")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


class Sleeps(list[float]):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def build(redis_url: str) -> Iterator[Callable[..., tuple[InstrumentLoader, Sleeps]]]:
    """`build(url, **env)`: the wiring's loader with near-zero retry pauses, recorded."""
    built: list[InstrumentLoader] = []

    def make(url: str, **env: str) -> tuple[InstrumentLoader, Sleeps]:
        sleeps = Sleeps()
        environ = {"REDIS_URL": redis_url, "INSTRUMENT_MASTER_URL": url,
                   "INSTRUMENT_RETRY_BASE_SECONDS": "0.01", **env}  # fmt: skip
        made = build_loader(environ, sleep=sleeps)
        built.append(made)
        return made, sleeps

    yield make
    for made in built:
        made.close()


def master_state(client: redis.Redis) -> dict[str, Any]:
    """Everything a load writes, and any temporary hash left behind."""
    return {
        "symbols": client.hgetall(INSTRUMENT_SYMBOLS_KEY),
        "names": client.hgetall(INSTRUMENT_NAMES_KEY),
        "meta": client.hgetall(INSTRUMENT_META_KEY),
        "debris": sorted(client.scan_iter(match="instruments:*:loading:*")),
    }


# --- loading ---------------------------------------------------------------------------------


def test_the_master_is_streamed_into_redis_and_summarised(
    build: Callable[..., tuple[InstrumentLoader, Sleeps]], master: MasterServer,
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="functions.instruments")
    url = master.at("/api-scrip-master.csv")
    loader_, sleeps = build(url)

    summary = loader_.run()

    assert summary["rows"] == SAMPLE_ROWS and summary["skipped"] == 0
    assert summary["source"] == url and summary["attempts"] == 1 and sleeps == []
    assert summary["segments"] == ",".join(sorted(DEFAULT_SEGMENTS))
    assert 0 <= summary["seconds"] < 30
    assert json.loads(json.dumps(summary)) == summary  # JSON-able as Lambda returns it
    assert redis_client.hget(INSTRUMENT_SYMBOLS_KEY, "NSE_EQ:2885") == b"RELIANCE"
    assert redis_client.hget(INSTRUMENT_SYMBOLS_KEY, "IDX_I:13") == b"NIFTY"
    assert redis_client.hget(INSTRUMENT_META_KEY, "rows") == str(SAMPLE_ROWS).encode()
    (line,) = [r for r in caplog.records if r.levelno == logging.INFO]
    assert json.loads(line.getMessage().split(": ", 1)[1]) == summary


def test_only_the_configured_segments_are_kept(
    build: Callable[..., tuple[InstrumentLoader, Sleeps]], master: MasterServer,
    redis_client: redis.Redis,
) -> None:  # fmt: skip
    loader_, _ = build(master.at("/api-scrip-master.csv"), INSTRUMENT_SEGMENTS="IDX_I")
    summary = loader_.run()
    assert summary["rows"] == 2 and summary["segments"] == "IDX_I"
    assert set(redis_client.hkeys(INSTRUMENT_SYMBOLS_KEY)) == {b"IDX_I:13", b"IDX_I:25"}


# --- failures and retries ----------------------------------------------------------------------


@pytest.mark.parametrize(("path", "reason"), [
    ("/broken.csv", "HTTP 500"),
    ("/cut.csv", "cannot download"),  # the connection closed mid-file
    ("/page.csv", "not a Dhan scrip-master CSV"),
])  # fmt: skip
def test_a_failed_load_keeps_the_previous_master_and_raises(
    build: Callable[..., tuple[InstrumentLoader, Sleeps]], master: MasterServer,
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch, path: str, reason: str,
) -> None:  # fmt: skip
    build(master.at("/api-scrip-master.csv"))[0].run()
    before = master_state(redis_client)
    assert len(before["symbols"]) == SAMPLE_ROWS and before["debris"] == []
    # Small chunks: the cut file has written rows into the temporary hashes before it breaks.
    monkeypatch.setattr(instrument_master, "CHUNK_ROWS", 5)
    failing, sleeps = build(master.at(path), INSTRUMENT_LOAD_ATTEMPTS="2")

    with pytest.raises(InstrumentLoadError, match=reason) as raised:
        failing.run()

    assert "after 2 attempt(s)" in str(raised.value)
    assert "previously loaded master is kept" in str(raised.value)
    assert master.hits[path] == 2 and len(sleeps) == 1
    assert master_state(redis_client) == before


def test_a_retry_after_one_failure_loads_the_master(
    build: Callable[..., tuple[InstrumentLoader, Sleeps]], master: MasterServer,
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="functions.instruments")
    loader_, sleeps = build(master.at("/flaky.csv"))

    summary = loader_.run()

    assert summary["attempts"] == 2 and summary["rows"] == SAMPLE_ROWS
    assert master.hits["/flaky.csv"] == 2
    (pause,) = sleeps
    assert 0.005 <= pause <= 0.01  # base 0.01 s, at least half of it (equal jitter)
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "attempt 1 of 3 failed (GET" in warning.getMessage()
    assert "HTTP 500" in warning.getMessage()
    assert redis_client.hget(INSTRUMENT_SYMBOLS_KEY, "NSE_EQ:2885") == b"RELIANCE"


def test_no_retry_starts_that_the_invocation_has_no_time_for(
    build: Callable[..., tuple[InstrumentLoader, Sleeps]], master: MasterServer,
) -> None:  # fmt: skip
    loader_, sleeps = build(master.at("/broken.csv"))
    with pytest.raises(InstrumentLoadError, match="no time left for another attempt"):
        loader_.run(remaining=lambda: 30.0)  # a load needs a minute
    assert master.hits["/broken.csv"] == 1 and sleeps == []


def test_the_runner_takes_its_clients_and_backoff(
    master: MasterServer, redis_client: redis.Redis,
) -> None:  # fmt: skip
    sleeps = Sleeps()
    runner = InstrumentLoader(
        redis=redis_client, source=master.at("/broken.csv"), segments=None, attempts=3,
        backoff=Backoff(base=2.0, cap=3.0, min_fraction=0.5, rng=lambda: 1.0), sleep=sleeps,
    )  # fmt: skip
    with pytest.raises(InstrumentLoadError, match="after 3 attempt"):
        runner.run()
    assert sleeps == [2.0, 3.0]  # doubled, capped
    assert not redis_client.exists(INSTRUMENT_SYMBOLS_KEY)


# --- the entry point, secrets and logs ----------------------------------------------------------


class FakeContext:
    def __init__(self, remaining_ms: int) -> None:
        self.remaining_ms = remaining_ms

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_the_lambda_entry_point_reads_its_environment(
    master: MasterServer, redis_url: str, redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("INSTRUMENT_MASTER_URL", master.at("/api-scrip-master.csv"))
    monkeypatch.setenv("INSTRUMENT_SEGMENTS", "nse_eq")
    event = json.loads((EVENTS / "instruments_schedule.json").read_text())
    loader.cache_clear()
    try:
        summary = handler(event, FakeContext(remaining_ms=299_000))
        loader().close()
    finally:
        loader.cache_clear()
    assert summary["rows"] == SAMPLE_ROWS - 2 and summary["segments"] == "NSE_EQ"
    assert redis_client.hlen(INSTRUMENT_SYMBOLS_KEY) == SAMPLE_ROWS - 2


@pytest.fixture
def acl_user(redis_client: redis.Redis) -> Iterator[tuple[str, str]]:
    """A password-protected Redis user (ElastiCache AUTH stand-in), removed afterwards."""
    name, password = "ltp-instruments-test", "s3cret-token-from-secrets-manager"
    try:
        redis_client.acl_setuser(name, enabled=True, passwords=[f"+{password}"],
                                 keys=["*"], channels=["*"], commands=["+@all"])  # fmt: skip
    except redis.ResponseError as exc:
        pytest.skip(f"this Redis has no ACL support: {exc}")
    try:
        yield name, password
    finally:
        redis_client.acl_deluser(name)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_SESSION_TOKEN": "testing",
                        "AWS_DEFAULT_REGION": "ap-south-1"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with mock_aws():
        yield


def test_the_auth_token_comes_from_its_secret_and_no_secret_is_logged(
    aws: None, master: MasterServer, redis_url: str, acl_user: tuple[str, str],
    redis_client: redis.Redis, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.DEBUG, logger="functions.instruments")
    user, password = acl_user
    secrets = boto3.client("secretsmanager", region_name="ap-south-1")
    arn = secrets.create_secret(Name="ltp/redis-auth", SecretString=password)["ARN"]
    secrets.close()
    # Credentials in the master URL too: shown without them, in the summary and in every log.
    url = master.at("/flaky.csv").replace("://", "://reader:hunter2@", 1) + "?sig=abc123"
    environ = {"REDIS_URL": redis_url.replace("redis://", f"redis://{user}@", 1),
               "REDIS_AUTH_SECRET_ARN": arn, "INSTRUMENT_MASTER_URL": url,
               "INSTRUMENT_RETRY_BASE_SECONDS": "0"}  # fmt: skip
    made = build_loader(environ, sleep=Sleeps())
    try:
        summary = made.run()
    finally:
        made.close()

    assert summary["rows"] == SAMPLE_ROWS and summary["attempts"] == 2
    assert summary["source"] == master.at("/flaky.csv")
    logged = caplog.text + json.dumps(summary)
    assert caplog.records, "the load logs its retry and its summary"
    for secret in (password, "hunter2", "abc123", arn):
        assert secret not in logged


# --- settings -----------------------------------------------------------------------------------


def test_segments_are_checked_and_all_means_every_one() -> None:
    assert InstrumentSettings.from_env({}).segments == frozenset(DEFAULT_SEGMENTS)
    assert InstrumentSettings.from_env({"INSTRUMENT_SEGMENTS": "all"}).segments is None
    given = InstrumentSettings.from_env({"INSTRUMENT_SEGMENTS": " nse_eq, IDX_I ,"})
    assert given.segments == frozenset({"NSE_EQ", "IDX_I"})
    with pytest.raises(ConfigError, match="INSTRUMENT_SEGMENTS .* got NASDAQ"):
        InstrumentSettings.from_env({"INSTRUMENT_SEGMENTS": "NSE_EQ,NASDAQ"})
    with pytest.raises(ConfigError, match="INSTRUMENT_LOAD_ATTEMPTS must be >= 1"):
        InstrumentSettings.from_env({"INSTRUMENT_LOAD_ATTEMPTS": "0"})
    assert InstrumentSettings.from_env({}).master_url == instrument_master.DEFAULT_MASTER_URL


def test_a_source_is_shown_without_credentials() -> None:
    assert shown_source("https://u:p@images.dhan.co/api-data/x.csv?X-Amz-Signature=s#f") == (
        "https://images.dhan.co/api-data/x.csv")
    assert shown_source("/var/task/data/nse_sample.csv") == "/var/task/data/nse_sample.csv"
