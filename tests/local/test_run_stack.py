"""`ltp-local` end to end without a browser: real Redis, simulator, streamer, bridge, fan-out,
local API Gateway and the HTTP API through Mangum, driven over HTTP and WebSocket."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from core import names
from functions.wsauth import verify_token
from local.redis_server import embedded_redis_server, free_port
from local.run import parse_args, serve
from local.run.config import SIM_CLIENT_ID, STREAM_NAME
from local.run.stack import LocalStack, StackOptions, sample_keys
from tests.local.run_support import RunningStack, running_stack, wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def stack(redis_url: str, redis_client: redis.Redis) -> Iterator[RunningStack]:
    options = StackOptions(host="127.0.0.1", port=0, ws_port=0, redis_url=redis_url, rate=300.0)
    with running_stack(options) as running:
        yield running


def recv(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    message: dict[str, Any] = orjson.loads(ws.recv(timeout))
    return message


def test_the_stack_serves_page_config_prices_and_a_live_websocket(
    stack: RunningStack, redis_client: redis.Redis
) -> None:
    s = stack.stack
    keys = [str(k) for k in sample_keys()]
    with httpx.Client(base_url=s.page_url, timeout=10) as http:
        page = http.get("/")
        assert page.status_code == 200 and "js/main.js" in page.text
        assert http.get("/js/feed.js").headers["content-type"].startswith(
            ("text/javascript", "application/javascript")
        )
        assert http.get("/favicon.ico").status_code == 404
        config = http.get("/config.json").json()
        assert config["apiUrl"] == ""
        assert config["wsUrl"] == f"ws://127.0.0.1:{s.gateway.ws_port}/local"
        assert verify_token(config["wsToken"], s.ws_secret).subject == "ltp-local"
        assert [item["key"] for item in config["watchlist"]] == keys
        assert config["watchlist"][0] == {"key": "IDX_I:13", "symbol": "NIFTY", "name": "Nifty 50"}

        # The streamer subscribed the registered stream: every key gets a price.
        query = ",".join(keys)

        def all_priced() -> bool:
            body = http.get(f"/api/v1/current_prices?keys={query}").json()
            return body["cached_count"] == len(keys)

        wait_until(all_priced, timeout=15)
        health = wait_until(
            lambda: (h := http.get("/api/v1/health/market_stream").json())["status"] == "healthy"
            and h,
            timeout=15,
        )
        assert health["streams"]["names"] == [STREAM_NAME]

    wanted = ["NSE_EQ:2885", "NSE_EQ:1333", "IDX_I:13"]
    with connect(f"{config['wsUrl']}?token={config['wsToken']}", open_timeout=5) as ws:
        ws.send(orjson.dumps({"action": "subscribe", "keys": wanted}).decode())
        snapshot = recv(ws)
        assert snapshot["type"] == "snapshot"
        assert set(snapshot["prices"]) == set(wanted)
        versions = {k: p.get("version", 0) for k, p in snapshot["prices"].items()}
        seen: set[str] = set()
        while seen != set(wanted):
            message = recv(ws)
            if message["type"] != "screener_ltp_batch_update":
                continue
            for update in message["updates"]:
                assert update["key"] in wanted
                assert update["version"] > versions[update["key"]]
                versions[update["key"]] = update["version"]
                seen.add(update["key"])
        ws.send('{"action":"ping"}')
        while recv(ws)["type"] != "pong":
            pass

    # The local API Gateway runs the authorizer: no token, no connection.
    with pytest.raises(InvalidStatus) as refused:
        connect(config["wsUrl"], open_timeout=5)
    assert refused.value.response.status_code == 401


def test_a_websocket_outage_and_return(stack: RunningStack) -> None:
    s = stack.stack
    with httpx.Client(base_url=s.page_url, timeout=10) as http:
        config = http.get("/config.json").json()
    stack.call(s.stop_websocket())
    with pytest.raises(OSError):
        connect(f"{config['wsUrl']}?token={config['wsToken']}", open_timeout=2)
    stack.call(s.start_websocket())
    with connect(f"{config['wsUrl']}?token={config['wsToken']}", open_timeout=5) as ws:
        ws.send('{"action":"subscribe","keys":["NSE_EQ:11536"]}')
        assert recv(ws)["type"] == "snapshot"
        assert wait_until(
            lambda: recv(ws)["type"] == "screener_ltp_batch_update", timeout=10
        )


def test_stopping_ends_the_stream_and_releases_everything(
    redis_url: str, redis_client: redis.Redis
) -> None:
    options = StackOptions(port=0, ws_port=0, redis_url=redis_url,
                           keys=sample_keys()[:3], rate=100.0)
    with running_stack(options) as running:
        assert redis_client.exists(names.stream_key(STREAM_NAME))
        config = httpx.get(running.stack.page_url + "config.json").json()
        assert [i["symbol"] for i in config["watchlist"]] == ["NIFTY", "BANKNIFTY", "ADANIENT"]
        port = running.stack.gateway.ws_port
    assert not redis_client.exists(names.stream_key(STREAM_NAME))
    assert not redis_client.exists(names.STREAMER_LEASE_KEY)
    with socket.socket() as probe:  # the WebSocket port was let go
        probe.bind(("127.0.0.1", port))


def test_the_stack_runs_on_the_embedded_redis_of_a_machine_without_redis_server() -> None:
    with embedded_redis_server() as handle:
        options = StackOptions(port=0, ws_port=0, redis_url=handle.url,
                               keys=sample_keys()[:4], rate=200.0)
        with running_stack(options) as running:
            config = httpx.get(running.stack.page_url + "config.json").json()
            with connect(f"{config['wsUrl']}?token={config['wsToken']}", open_timeout=5) as ws:
                ws.send('{"action":"subscribe","keys":["IDX_I:13","NSE_EQ:25"]}')
                assert recv(ws)["type"] == "snapshot"
                assert wait_until(
                    lambda: recv(ws)["type"] == "screener_ltp_batch_update", timeout=10
                )


def test_the_feed_is_the_simulator_unless_credentials_or_a_url_say_otherwise() -> None:
    def choice(environ: dict[str, str], **options: Any) -> Any:
        return LocalStack(StackOptions(environ=environ, **options))._choose_feed()

    sim = choice({})
    assert (sim.kind, sim.client_id, sim.rest_base_url) == ("simulator", SIM_CLIENT_ID, None)
    creds = {"DHAN_CLIENT_ID": "110", "DHAN_ACCESS_TOKEN": "t0k"}
    real = choice(creds)
    assert (real.kind, real.url, real.client_id, real.access_token, real.rest_base_url) == (
        "dhan", "wss://api-feed.dhan.co", "110", "t0k", "https://api.dhan.co/v2")
    assert choice(creds, use_simulator=True).kind == "simulator"
    given = choice({"DHAN_API_BASE_URL": "http://127.0.0.1:8766/v2"},
                   feed_url="ws://127.0.0.1:8765")
    assert (given.kind, given.url, given.client_id, given.access_token, given.rest_base_url) == (
        "given", "ws://127.0.0.1:8765", SIM_CLIENT_ID, "sim-token", "http://127.0.0.1:8766/v2")


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = asyncio.run(serve(parse_args(argv), stop=asyncio.Event()))
    return code, capsys.readouterr().err


def test_a_port_in_use_is_one_line_not_a_traceback(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, err = run_cli(["--port", str(port), "--redis-url", redis_url], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        f"ltp-local: port {port} on 127.0.0.1 is in use (page and HTTP API); stop what uses "
        "it or pick another with --port (the WebSocket takes the next port)"
    ]


def test_the_websocket_port_is_checked_too(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ws_port = taken.getsockname()[1]
        code, err = run_cli(["--port", "0", "--ws-port", str(ws_port), "--redis-url", redis_url],
                            capsys)
    assert code == 1
    assert f"port {ws_port} on 127.0.0.1 is in use (WebSocket API)" in err
    assert "Traceback" not in err


def test_no_redis_bad_keys_and_a_missing_master_are_explained(
    capsys: pytest.CaptureFixture[str], redis_url: str, tmp_path: Path
) -> None:
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    code, err = run_cli(["--port", "0", "--redis-url", nowhere], capsys)
    assert (code, err.strip()) == (1, f"ltp-local: no Redis answers at {nowhere}")
    code, err = run_cli(["--port", "0", "--keys", "NSE_EQ:1,NYSE:IBM"], capsys)
    assert code == 2 and err.startswith("ltp-local: --keys: invalid instrument keys: 'NYSE:IBM'")
    missing = tmp_path / "master.csv"
    code, err = run_cli(["--port", "0", "--redis-url", redis_url, "--instruments", str(missing)],
                        capsys)
    assert code == 1
    assert err.strip() == f"ltp-local: cannot read {missing}: No such file or directory"


def test_a_missing_dependency_is_named(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "mangum", None)
    code, err = run_cli(["--port", "0", "--redis-url", redis_url], capsys)
    assert code == 1
    assert err.strip().startswith("ltp-local: the Python package 'mangum' is missing")


def test_ctrl_c_stops_the_command_cleanly(redis_url: str, redis_client: redis.Redis) -> None:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "local.run", "--port", "0", "--redis-url", redis_url,
         "--keys", "NSE_EQ:2885,NSE_EQ:1333"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Open http://"):
                break
        assert any(line.startswith("Open http://127.0.0.1:") for line in lines), lines
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "ltp-local: stopped" in out
    assert "Traceback" not in err
    assert not redis_client.exists(names.stream_key(STREAM_NAME))
