"""One feed connection against the DhanHQ simulator: subscribe, read, faults, reconnect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.server import ServerConnection, serve

from core.backoff import Backoff
from core.config import Secret
from core.instruments import InstrumentKey
from local.dhan_sim import packets
from local.dhan_sim.feed import FeedSimulator, SimConfig
from streamer.coalescer import Coalescer
from streamer.connection import FeedConnection, State, TokenKeeper, feed_url, mask_url
from streamer.settings import Credentials, CredentialSource

CLIENT = "1000000001"


def keys(n: int, start: int = 1) -> list[InstrumentKey]:
    return [InstrumentKey("NSE_EQ", str(i)) for i in range(start, start + n)]


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def fast_backoff(long_floor: float = 0.02) -> Backoff:
    return Backoff(base=0.005, cap=0.02, long_floor=long_floor, rng=lambda: 1.0)


@asynccontextmanager
async def connection(
    url: str,
    wanted: list[InstrumentKey],
    *,
    env: dict[str, str] | None = None,
    silence_timeout: float = 60.0,
    market_open: Callable[[], bool] = lambda: True,
    backoff: Backoff | None = None,
    mode: str = "quote",
) -> AsyncIterator[tuple[FeedConnection, Coalescer, TokenKeeper]]:
    env = env if env is not None else {"DHAN_CLIENT_ID": CLIENT, "DHAN_ACCESS_TOKEN": "sim-token"}
    tokens = TokenKeeper(CredentialSource(environ=env))
    coalescer = Coalescer()
    conn = FeedConnection(index=0, feed_url=url, mode=mode, tokens=tokens,
                          coalescer=coalescer, backoff=backoff or fast_backoff(),
                          silence_timeout=silence_timeout, market_open=market_open)
    conn.set_keys(wanted)
    task = asyncio.create_task(conn.run())
    try:
        yield conn, coalescer, tokens
    finally:
        await conn.close()
        async with asyncio.timeout(10):
            await task


def subscribed_keys(sim: FeedSimulator) -> set[tuple[str, str]]:
    return {key for subs in sim.subscriptions.values() for key in subs}


def instrument_counts(sim: FeedSimulator) -> list[int]:
    return [r.message["InstrumentCount"] for r in sim.requests
            if isinstance(r.message, dict) and "InstrumentCount" in r.message]


def test_handshake_url_and_masking() -> None:
    creds = Credentials("1000000001", Secret("abc.def-ghi"))
    url = feed_url("wss://api-feed.dhan.co", creds)
    assert url == ("wss://api-feed.dhan.co?version=2&token=abc.def-ghi&clientId=1000000001"
                   "&authType=2")
    assert feed_url("ws://h:1/?x=1", creds).startswith("ws://h:1/?x=1&version=2&")
    assert mask_url(url) == (
        "wss://api-feed.dhan.co?version=2&token=***&clientId=1000000001&authType=2")


@pytest.mark.parametrize("mode", ["ticker", "quote", "full"])
async def test_subscribes_in_chunks_of_100_and_ingests(mode: str) -> None:
    async with (
        FeedSimulator(SimConfig(rate=2000, packets_per_frame=10, seed=1)) as sim,
        connection(sim.url, keys(250), mode=mode) as (conn, coalescer, _),
    ):
        await until(lambda: len(subscribed_keys(sim)) == 250)
        await until(lambda: coalescer.ticks >= 500)
        assert instrument_counts(sim) == [100, 100, 50]
        assert {r.message["RequestCode"] for r in sim.requests} == {  # type: ignore[index]
            "ticker": {15}, "quote": {17}, "full": {21}}[mode]
        assert set(next(iter(sim.subscriptions.values())).values()) == {mode}
        assert conn.state is State.CONNECTED and conn.status()["subscribed"] == 250
        latest = {u["key"]: u["ltp"] for u in coalescer.drain()}
        assert len(latest) == 250
    # Closing said goodbye the Dhan way.
    assert sim.requests[-1].message == {"RequestCode": 12}
    assert conn.state is State.CLOSED


async def test_live_changes_send_only_the_difference() -> None:
    async with (
        FeedSimulator(SimConfig(rate=500, seed=2)) as sim,
        connection(sim.url, keys(3)) as (conn, _, _),
    ):
        await until(lambda: len(subscribed_keys(sim)) == 3)
        conn.set_keys(keys(2, start=2) + keys(120, start=1000))
        await until(lambda: subscribed_keys(sim) == {("NSE_EQ", str(k.security_id))
                                                     for k in keys(2, 2) + keys(120, 1000)})
        changes = [(r.message["RequestCode"], r.message["InstrumentCount"])  # type: ignore[index]
                   for r in sim.requests[1:]]
        assert changes == [(18, 1), (17, 100), (17, 20)]


async def test_resubscribes_everything_after_a_dropped_socket() -> None:
    async with (
        FeedSimulator(SimConfig(rate=500, seed=3)) as sim,
        connection(sim.url, keys(150)) as (conn, coalescer, _),
    ):
        await until(lambda: len(subscribed_keys(sim)) == 150)
        await sim.drop_connections()
        await until(lambda: sim.handshakes >= 2 and len(subscribed_keys(sim)) == 150)
        before = coalescer.ticks
        await until(lambda: coalescer.ticks > before + 50)
        assert conn.reconnects >= 1 and conn.failures.get("closed", 0) >= 1
        assert max(instrument_counts(sim)) <= 100


async def test_silence_while_open_is_treated_as_dead_and_reconnected() -> None:
    async with (
        FeedSimulator(SimConfig(rate=500, seed=4)) as sim,
        connection(sim.url, keys(5), silence_timeout=0.2) as (conn, coalescer, _),
    ):
        await until(lambda: coalescer.ticks > 10)
        sim.mute(True)
        await until(lambda: conn.failures.get("silence", 0) >= 1)
        assert "silence" in (conn.last_error or "")
        sim.mute(False)
        await until(lambda: conn.state is State.CONNECTED)
        before = coalescer.ticks
        await until(lambda: coalescer.ticks > before + 10)


async def test_silence_after_the_close_is_normal() -> None:
    async with (
        FeedSimulator(SimConfig(rate=500, seed=5)) as sim,
        connection(sim.url, keys(2), silence_timeout=0.05,
                   market_open=lambda: False) as (conn, coalescer, _),
    ):
        await until(lambda: coalescer.ticks > 5)
        sim.mute(True)
        await asyncio.sleep(0.3)
        assert conn.failures == {} and sim.handshakes == 1
        sim.mute(False)


async def test_805_backs_off_longer_then_reconnects() -> None:
    async with (
        FeedSimulator(SimConfig(rate=500, seed=6)) as sim,
        connection(sim.url, keys(2), backoff=fast_backoff(long_floor=0.1)) as (conn, coalescer, _),
    ):
        await until(lambda: coalescer.ticks > 2)
        await sim.send_disconnect(805)
        await until(lambda: conn.failures.get("disconnect", 0) == 1)
        assert "805" in (conn.last_error or "") and "backoff_long" in (conn.last_error or "")
        await until(lambda: sim.handshakes == 2 and conn.state is State.CONNECTED)


async def test_807_re_reads_the_token_and_reconnects() -> None:
    env = {"DHAN_CLIENT_ID": CLIENT, "DHAN_ACCESS_TOKEN": "sim-token"}
    async with (
        FeedSimulator(SimConfig(rate=500, seed=7)) as sim,
        connection(sim.url, keys(2), env=env) as (conn, coalescer, tokens),
    ):
        await until(lambda: coalescer.ticks > 2)
        sim.set_token("rotated-token")
        await sim.send_disconnect(807)
        # The old token keeps being refused with 807 until the new one is in place...
        await until(lambda: tokens.refreshes >= 3)
        assert conn.state is not State.STOPPED
        env["DHAN_ACCESS_TOKEN"] = "rotated-token"
        # ...then the next re-read picks it up.
        await until(lambda: conn.state is State.CONNECTED and sim.connection_count == 1)
        before = coalescer.ticks
        await until(lambda: coalescer.ticks > before + 5)
        assert (await tokens.get()).access_token.value == "rotated-token"


@pytest.mark.parametrize("code", [806, 808, 809, 810])
async def test_fatal_codes_stop_the_connection_with_the_reason(code: int) -> None:
    """806/810 stop at once; 808/809 stop once a re-read gave the same token again."""
    async with (
        FeedSimulator(SimConfig(rate=500, seed=8)) as sim,
        connection(sim.url, keys(2)) as (conn, coalescer, tokens),
    ):
        await until(lambda: coalescer.ticks > 2)
        reads = tokens.refreshes
        await sim.send_disconnect(code)
        await until(lambda: conn.state is State.STOPPED)
        assert conn.fatal_error is not None and str(code) in conn.fatal_error
        assert conn.fatal_error.endswith("-> stop")
        await asyncio.sleep(0.1)
        assert sim.handshakes == 1  # no reconnect attempt
        assert tokens.refreshes == reads + (1 if code in (808, 809) else 0)


@pytest.mark.parametrize("code", [808, 809])
async def test_808_809_with_a_token_rotated_meanwhile_reconnect_with_it(code: int) -> None:
    """A token minted elsewhere kills the old one: the re-read finds the new token in the
    secret (here the environment), and the connection streams on with it."""
    env = {"DHAN_CLIENT_ID": CLIENT, "DHAN_ACCESS_TOKEN": "sim-token"}
    async with (
        FeedSimulator(SimConfig(rate=500, seed=12)) as sim,
        connection(sim.url, keys(2), env=env) as (conn, coalescer, tokens),
    ):
        await until(lambda: coalescer.ticks > 2)
        sim.set_token("minted-elsewhere")
        env["DHAN_ACCESS_TOKEN"] = "minted-elsewhere"
        await sim.send_disconnect(code)
        await until(lambda: sim.handshakes == 2 and conn.state is State.CONNECTED)
        before = coalescer.ticks
        await until(lambda: coalescer.ticks > before + 5)
        assert conn.fatal_error is None
        assert (await tokens.get()).access_token.value == "minted-elsewhere"


async def test_bad_credentials_from_the_start_stop_the_connection() -> None:
    env = {"DHAN_CLIENT_ID": CLIENT, "DHAN_ACCESS_TOKEN": "wrong"}
    async with (
        FeedSimulator(SimConfig(rate=500, seed=9)) as sim,
        connection(sim.url, keys(2), env=env) as (conn, _, _),
    ):
        await until(lambda: conn.state is State.STOPPED)
        assert "809 (access token invalid)" in (conn.fatal_error or "")


async def test_429_on_the_handshake_backs_off_and_retries() -> None:
    async with FeedSimulator(SimConfig(rate=500, seed=10)) as sim:
        sim.reject_handshakes(status=429, count=2)
        async with connection(sim.url, keys(2)) as (conn, coalescer, _):
            await until(lambda: conn.state is State.CONNECTED and coalescer.ticks > 2)
            assert sim.handshakes == 3
            assert conn.failures == {"handshake": 2}


async def test_network_errors_retry_until_the_feed_is_back() -> None:
    sim = FeedSimulator(SimConfig(rate=500, seed=11))
    await sim.start()
    port = sim.port
    await sim.close()
    async with connection(sim.url, keys(2)) as (conn, coalescer, _):
        await until(lambda: conn.failures.get("network", 0) >= 2)
        sim2 = FeedSimulator(SimConfig(rate=500, seed=11, port=port))
        async with sim2:
            await until(lambda: conn.state is State.CONNECTED and coalescer.ticks > 2)


async def test_text_frames_and_garbage_do_not_break_the_reader() -> None:
    """A feed that mixes JSON text, a truncated frame and unknown packet codes with ticks."""

    async def odd_feed(ws: ServerConnection) -> None:
        await ws.recv()  # the subscribe request
        await ws.send('{"error":"something odd"}')
        await ws.send(b"\x02\x00")  # truncated header
        await ws.send(packets.frame([packets.raw(99, 1, 1, b"xyz"), packets.ticker(1, 1, 10.5, 5),
                                     packets.market_status()]))
        await ws.send(packets.ticker(1, 2, 20.25, 5))
        await ws.wait_closed()

    async with serve(odd_feed, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with connection(f"ws://127.0.0.1:{port}", keys(2)) as (conn, coalescer, _):
            await until(lambda: coalescer.ticks == 2)
            assert conn.text_frames == 1 and conn.decode_errors == 1
            assert conn.state is State.CONNECTED
            assert {u["key"]: u["ltp"] for u in coalescer.drain()} == {
                "NSE_EQ:1": 10.5, "NSE_EQ:2": 20.25}
