"""`ltp-sim` as a process: prints its URLs, serves feed and REST from one book, stops on signals."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from dhanhq import DhanContext
from dhanhq._market_feed import MarketFeed as RestMarketFeed
from websockets.sync.client import connect

from local.dhan_sim import client
from streamer.decoder import PrevClose, Ticker, decode_frame


def start(*args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "local.dhan_sim.cli", "--port", "0", "--rest-port", "0", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    urls: dict[str, str] = {}
    assert process.stdout is not None
    for line in process.stdout:
        if match := re.match(r"(feed|rest): (\S+)", line):
            urls[match[1]] = match[2]
        if line.startswith("ready"):
            return process, urls
    process.wait(timeout=10)
    errors = process.stderr.read() if process.stderr else ""
    raise AssertionError(f"ltp-sim did not start: {errors}")


@pytest.fixture
def sim_process() -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    process, urls = start("--seed", "3", "--rate", "500", "--max-ticks", "3")
    try:
        yield process, urls
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_feed_and_rest_share_one_price_book(
    sim_process: tuple[subprocess.Popen[str], dict[str, str]],
) -> None:
    process, urls = sim_process
    with connect(client.feed_url(urls["feed"]), compression=None) as ws:
        ws.send(client.subscribe("ticker", [("NSE_EQ", "1333")]))
        got = []
        while len(got) < 4:  # prev close + max_ticks=3 prices, then the feed is quiet
            got.extend(decode_frame(ws.recv(timeout=5)).packets)  # type: ignore[arg-type]
    assert isinstance(got[0], PrevClose)
    last = got[-1]
    assert isinstance(last, Ticker)

    ctx = DhanContext("1000000001", "sim-token")
    ctx.get_dhan_http().base_url = urls["rest"]
    try:
        answer = RestMarketFeed(ctx).ticker_data({"NSE_EQ": [1333]})
    finally:
        ctx.get_dhan_http().session.close()
    assert answer["status"] == "success"
    assert answer["data"]["data"]["NSE_EQ"]["1333"]["last_price"] == round(last.ltp, 2)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_on_signals(
    sim_process: tuple[subprocess.Popen[str], dict[str, str]], signum: int
) -> None:
    process, _ = sim_process
    process.send_signal(signum)
    assert process.wait(timeout=10) == 0
    assert process.stdout is not None
    assert "stopping" in process.stdout.read()


def test_a_taken_port_is_a_clear_error() -> None:
    process, urls = start("--rest-port", "-1")
    try:
        port = urls["feed"].rsplit(":", 1)[1]
        second = subprocess.run(
            [sys.executable, "-m", "local.dhan_sim.cli", "--port", port, "--rest-port", "-1"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert second.returncode == 1
        assert "ltp-sim:" in second.stderr
        assert "rest" not in urls
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
