"""The feed simulator over real loopback WebSockets: protocol, streaming and fault injection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from local.dhan_sim import client
from local.dhan_sim.feed import FeedSimulator, ReceivedRequest, SimConfig
from local.dhan_sim.ticks import IST_OFFSET_SECONDS
from streamer.decoder import (
    Disconnect,
    Full,
    OpenInterest,
    Packet,
    PrevClose,
    Quote,
    Ticker,
    decode_frame,
)

HDFC, TCS, NIFTY_FUT = ("NSE_EQ", "1333"), ("NSE_EQ", "11536"), ("NSE_FNO", "49081")


@pytest.fixture
async def sim() -> AsyncIterator[FeedSimulator]:
    async with FeedSimulator(SimConfig(rate=500.0, seed=1)) as simulator:
        yield simulator


async def connect(sim: FeedSimulator, **params: Any) -> ClientConnection:
    return await websockets.connect(client.feed_url(sim.url, **params), compression=None)


async def next_disconnect(ws: ClientConnection) -> tuple[int, int | None]:
    """Read until the disconnect packet and the close; (reason, close code)."""
    reason = None
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(5):
            while True:
                for packet in decode_frame(await ws.recv()).packets:  # type: ignore[arg-type]
                    if isinstance(packet, Disconnect):
                        reason = packet.reason
    assert reason is not None, "closed without a disconnect packet"
    return reason, ws.close_code


def price(packet: Packet) -> tuple[tuple[str, str], float, int]:
    assert isinstance(packet, Ticker | Quote | Full)
    segment = {1: "NSE_EQ", 2: "NSE_FNO"}[packet.segment]
    return (segment, str(packet.security_id)), packet.ltp, packet.ltt


async def test_subscribe_gets_prev_close_then_a_price_then_a_stream(sim: FeedSimulator) -> None:
    async with await connect(sim) as ws:
        await ws.send(client.subscribe("ticker", [HDFC, TCS]))
        got = await client.read_packets(ws, 10)

    assert [type(p) for p in got[:4]] == [PrevClose, Ticker, PrevClose, Ticker]
    assert [(p.segment, p.security_id) for p in got[:4]] == [(1, 1333)] * 2 + [(1, 11536)] * 2
    assert all(isinstance(p, Ticker) for p in got[4:])
    assert {p.security_id for p in got[4:]} == {1333, 11536}  # round-robin over both
    [(cid, message)] = sim.requests
    assert message == {"RequestCode": 15, "InstrumentCount": 2, "InstrumentList": [
        {"ExchangeSegment": "NSE_EQ", "SecurityId": "1333"},
        {"ExchangeSegment": "NSE_EQ", "SecurityId": "11536"}]}  # fmt: skip
    assert sim.handshakes == 1


async def test_subscriptions_are_visible_per_connection(sim: FeedSimulator) -> None:
    async with await connect(sim) as ws:
        await ws.send(client.subscribe("quote", [HDFC]))
        await ws.send(client.subscribe("full", [TCS]))
        await sim.until(lambda: len(sim.requests) == 2)
        [cid] = sim.connection_ids
        assert sim.subscriptions == {cid: {HDFC: "quote", TCS: "full"}}
        assert sim.connection_count == 1
    await sim.until(lambda: sim.connection_count == 0)
    assert sim.subscriptions == {}


async def test_each_mode_streams_its_packet_type(sim: FeedSimulator) -> None:
    for mode, kind in (("ticker", Ticker), ("quote", Quote), ("full", Full)):
        async with await connect(sim) as ws:
            await ws.send(client.subscribe(mode, [HDFC]))  # type: ignore[arg-type]
            got = await client.read_packets(ws, 6)
        assert isinstance(got[0], PrevClose)
        assert all(isinstance(p, kind) for p in got[1:]), mode
    full = got[-1]
    assert isinstance(full, Full) and len(full.depth) == 5
    assert full.depth[0].bid_price < full.ltp < full.depth[0].ask_price


async def test_quote_subscriptions_of_derivatives_carry_oi_packets() -> None:
    async with FeedSimulator(SimConfig(rate=500.0, oi_probability=1.0)) as sim:
        async with await connect(sim) as ws:
            await ws.send(client.subscribe("quote", [NIFTY_FUT]))
            got = await client.read_packets(ws, 6)
    assert [type(p) for p in got[1:6]] == [Quote, OpenInterest, Quote, OpenInterest, Quote]


async def test_ltp_and_ltt_match_last_sent_and_ltt_is_ist(sim: FeedSimulator) -> None:
    async with await connect(sim) as ws:
        await ws.send(client.subscribe("quote", [HDFC, TCS]))
        got = [price(p) for p in await client.read_packets(ws, 30) if not isinstance(p, PrevClose)]
        sim.mute()
        last = {key: (ltp, ltt) for key, ltp, ltt in got}
        # Whatever was sent after our last read is still in flight: drain up to sim.last_sent.
        async with asyncio.timeout(5):
            while last != sim.last_sent:
                for packet in decode_frame(await ws.recv()).packets:  # type: ignore[arg-type]
                    key, ltp, ltt = price(packet)
                    last[key] = (ltp, ltt)
    ltts = [ltt for _, _, ltt in got]
    assert ltts == sorted(ltts)
    assert abs(ltts[-1] - (time.time() + IST_OFFSET_SECONDS)) < 60
    assert all(round(ltp / 0.05) * 0.05 == pytest.approx(ltp, abs=1e-3) for _, ltp, _ in got)


async def test_unsubscribe_stops_that_instrument(sim: FeedSimulator) -> None:
    async with await connect(sim) as ws:
        await ws.send(client.subscribe("ticker", [HDFC, TCS]))
        await client.read_packets(ws, 6)
        await ws.send(client.unsubscribe("ticker", [TCS]))
        await sim.until(lambda: TCS not in sim.subscriptions[sim.connection_ids[0]])
        frozen = sim.last_sent[TCS]
        before = sim.ticks_sent
        await sim.until(lambda: sim.ticks_sent >= before + 20)
        assert sim.last_sent[TCS] == frozen
        got = await client.read_packets(ws, 40)
    assert got[-1].security_id == 1333


async def test_more_than_100_instruments_is_disconnect_814(sim: FeedSimulator) -> None:
    async with await connect(sim) as ws:
        await ws.send(client.subscribe("ticker", [("NSE_EQ", str(i)) for i in range(1, 102)]))
        reason, _ = await next_disconnect(ws)
    assert reason == 814
    assert sim.ticks_sent == 0


@pytest.mark.parametrize(
    "text",
    ["{", '{"RequestCode": 15, "InstrumentCount": 3, "InstrumentList": []}',
     '{"RequestCode": 77}'],
)  # fmt: skip
async def test_malformed_requests_are_disconnect_814(sim: FeedSimulator, text: str) -> None:
    async with await connect(sim) as ws:
        await ws.send(text)
        reason, _ = await next_disconnect(ws)
    assert reason == 814


async def test_invalid_instruments_are_ignored_not_fatal(sim: FeedSimulator) -> None:
    message = ('{"RequestCode": 15, "InstrumentCount": 3, "InstrumentList": ['
               '{"ExchangeSegment": "NSE_XX", "SecurityId": "1"},'
               '{"ExchangeSegment": "NSE_EQ", "SecurityId": "abc"},'
               '{"ExchangeSegment": "NSE_EQ", "SecurityId": "1333"}]}')  # fmt: skip
    async with await connect(sim) as ws:
        await ws.send(message)
        got = await client.read_packets(ws, 5)
    assert {p.security_id for p in got} == {1333}


async def test_instrument_limit_per_connection_is_804() -> None:
    async with FeedSimulator(SimConfig(rate=100.0, max_instruments=3)) as sim:
        async with await connect(sim) as ws:
            await ws.send(client.subscribe("ticker", [("NSE_EQ", "1"), ("NSE_EQ", "2")]))
            await ws.send(client.subscribe("ticker", [("NSE_EQ", "3"), ("NSE_EQ", "4")]))
            reason, _ = await next_disconnect(ws)
    assert reason == 804


async def test_request_code_12_makes_the_server_close(sim: FeedSimulator) -> None:
    async with await connect(sim) as ws:
        await ws.send(client.subscribe("ticker", [HDFC]))
        await ws.send('{"RequestCode": 12}')
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        assert ws.close_code == 1000
    await sim.until(lambda: sim.connection_count == 0)
    assert sim.requests[-1] == ReceivedRequest(1, {"RequestCode": 12})


async def test_a_sixth_connection_drops_the_oldest_with_805(sim: FeedSimulator) -> None:
    sockets = [await connect(sim) for _ in range(5)]
    try:
        await sim.until(lambda: sim.connection_count == 5)
        oldest = sim.connection_ids[0]
        sockets.append(await connect(sim))
        reason, _ = await next_disconnect(sockets[0])
        assert reason == 805
        await sim.until(lambda: sim.connection_count == 5)
        assert oldest not in sim.connection_ids
        assert (oldest, 805) in sim.disconnects_sent
        for ws in sockets[1:]:  # the others still work
            await ws.send(client.subscribe("ticker", [HDFC]))
            assert isinstance((await client.read_packets(ws, 1))[0], PrevClose)
    finally:
        for ws in sockets:
            await ws.close()


@pytest.mark.parametrize(
    ("params", "reason"),
    [
        ({"token": "wrong"}, 809),
        ({"token": None}, 808),
        ({"client_id": "1000000002"}, 810),
        ({"client_id": None}, 810),
        ({"version": None}, 814),
        ({"auth_type": "1"}, 814),
    ],
)
async def test_bad_auth_is_a_disconnect_packet(
    sim: FeedSimulator, params: dict[str, str | None], reason: int
) -> None:
    async with await connect(sim, **params) as ws:
        got, _ = await next_disconnect(ws)
    assert got == reason
    assert sim.handshakes == 1 and sim.connection_count == 0


async def test_token_rotation_expires_the_old_token(sim: FeedSimulator) -> None:
    sim.set_token("fresh-token")
    async with await connect(sim, token="sim-token") as ws:
        assert (await next_disconnect(ws))[0] == 807
    async with await connect(sim, token="fresh-token") as ws:
        await ws.send(client.subscribe("ticker", [HDFC]))
        assert len(await client.read_packets(ws, 3)) >= 3


async def test_unknown_path_is_http_404(sim: FeedSimulator) -> None:
    with pytest.raises(InvalidStatus) as caught:
        await websockets.connect(sim.url + "/other?version=2")
    assert caught.value.response.status_code == 404


async def test_packets_per_frame_groups_stream_packets() -> None:
    async with FeedSimulator(SimConfig(rate=2000.0, packets_per_frame=7)) as sim:
        async with await connect(sim) as ws:
            await ws.send(client.subscribe("quote", [HDFC, TCS]))
            frames: list[bytes] = []
            await client.read_packets(ws, 4 + 7 * 5, frames=frames)
    sizes = [len(decode_frame(f).packets) for f in frames]
    assert sizes[0] == 4  # the subscribe's prev-close + price packets, grouped too
    assert set(sizes[1:]) == {7}


async def test_as_fast_as_possible_stops_at_max_ticks() -> None:
    cfg = SimConfig(rate=0, packets_per_frame=10, max_ticks=5_003, seed=2)
    async with FeedSimulator(cfg) as sim:
        keys = [("NSE_EQ", str(i)) for i in range(1, 51)]
        async with await connect(sim) as ws:
            await ws.send(client.subscribe("ticker", keys))
            got = await client.read_packets(ws, 50 + 5_003)
            with pytest.raises(TimeoutError):  # and then silence
                await client.read_packets(ws, 1, timeout=0.2)
        assert sim.ticks_sent == 5_003
    prices = [price(p) for p in got if not isinstance(p, PrevClose)]
    assert len(prices) == 5_003
    last = {key: (ltp, ltt) for key, ltp, ltt in prices}
    assert last == sim.last_sent


async def test_max_ticks_counts_the_initial_price_packets() -> None:
    async with FeedSimulator(SimConfig(rate=1000.0, max_ticks=2)) as sim:
        async with await connect(sim) as ws:
            await ws.send(client.subscribe("ticker", [HDFC, TCS, NIFTY_FUT]))
            got = await client.read_packets(ws, 5)
    assert [type(p) for p in got] == [PrevClose, Ticker, PrevClose, Ticker, PrevClose]


async def test_mode_default_forces_one_packet_type() -> None:
    async with FeedSimulator(SimConfig(rate=500.0, mode_default="full")) as sim:
        async with await connect(sim) as ws:
            await ws.send(client.subscribe("ticker", [HDFC]))
            got = await client.read_packets(ws, 4)
            assert list(sim.subscriptions.values()) == [{HDFC: "ticker"}]  # as requested
    assert all(isinstance(p, Full) for p in got[1:])  # but streamed as forced


# -- faults --------------------------------------------------------------------------------


async def test_drop_connections_aborts_without_a_close_frame(sim: FeedSimulator) -> None:
    async with await connect(sim) as ws:
        await ws.send(client.subscribe("ticker", [HDFC]))
        await client.read_packets(ws, 3)
        await sim.drop_connections()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(5):
                while True:
                    await ws.recv()
        assert ws.close_code == 1006 and ws.close_reason == ""
    assert sim.connection_count == 0


async def test_mute_keeps_the_socket_and_pings_but_sends_nothing(sim: FeedSimulator) -> None:
    async with await connect(sim) as ws:
        await ws.send(client.subscribe("ticker", [HDFC]))
        await client.read_packets(ws, 3)
        sim.mute(True)
        # Drain what was in flight, then prove silence while pings still get pongs.
        while True:
            try:
                await client.read_packets(ws, 1, timeout=0.2)
            except TimeoutError:
                break
        sent = sim.ticks_sent
        latency = await (await ws.ping())
        assert latency >= 0
        with pytest.raises(TimeoutError):
            await client.read_packets(ws, 1, timeout=0.3)
        assert sim.ticks_sent == sent and sim.connection_count == 1
        sim.mute(False)
        assert isinstance((await client.read_packets(ws, 1))[0], Ticker)


async def test_send_disconnect_reaches_every_connection(sim: FeedSimulator) -> None:
    first, second = await connect(sim), await connect(sim)
    await sim.until(lambda: sim.connection_count == 2)
    await sim.send_disconnect(807)
    assert (await next_disconnect(first))[0] == 807
    assert (await next_disconnect(second))[0] == 807
    await sim.until(lambda: sim.connection_count == 0)


@pytest.mark.parametrize("code", [805, 809])
async def test_send_disconnect_codes(sim: FeedSimulator, code: int) -> None:
    async with await connect(sim) as ws:
        await ws.send(client.subscribe("ticker", [HDFC]))
        await client.read_packets(ws, 2)
        await sim.send_disconnect(code)
        assert (await next_disconnect(ws))[0] == code


async def test_reject_handshakes_answers_http_status(sim: FeedSimulator) -> None:
    sim.reject_handshakes(status=429, count=2)
    for _ in range(2):
        with pytest.raises(InvalidStatus) as caught:
            await connect(sim)
        assert caught.value.response.status_code == 429
    async with await connect(sim) as ws:
        await ws.send(client.subscribe("ticker", [HDFC]))
        assert len(await client.read_packets(ws, 2)) == 2
    assert sim.handshakes == 3


async def test_close_ends_open_connections() -> None:
    sim = await FeedSimulator(SimConfig(rate=100.0)).start()
    ws = await connect(sim)
    await ws.send(client.subscribe("ticker", [HDFC]))
    await client.read_packets(ws, 2)
    await sim.close()
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(5):
            while True:
                await ws.recv()
    assert ws.close_code == 1001
