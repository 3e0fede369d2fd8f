"""Token renewal as Dhan does it: `GET /v2/RenewToken` on the REST stand-in kills the old token
on REST and on the feed (open connections get 807), over real loopback HTTP and WebSockets."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import httpx
import pytest
from dhanhq import DhanLogin
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect as connect_sync

from local.dhan_sim import client
from local.dhan_sim.feed import FeedSimulator, SimConfig
from local.dhan_sim.protocol import TOKEN_EXPIRED, TOKEN_INVALID
from local.dhan_sim.rest import RestStandIn
from local.dhan_sim.tokens import Issued, Refused, TokenAuthority, expiry_of, jwt_claims
from streamer.decoder import Disconnect, decode_frame

CLIENT = "1000000001"
LIFETIME = 86_400.0
HDFC = ("NSE_EQ", "1333")


class FakeClock:
    def __init__(self, now: float = 1_750_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Stack:
    clock: FakeClock
    tokens: TokenAuthority
    rest: RestStandIn
    sim: FeedSimulator
    http: httpx.AsyncClient


@pytest.fixture
async def stack() -> AsyncIterator[Stack]:
    clock = FakeClock()
    tokens = TokenAuthority(CLIENT, clock=clock, lifetime_seconds=LIFETIME)
    with RestStandIn(tokens=tokens, enforce_rate_limit=False) as rest:
        async with (
            FeedSimulator(SimConfig(rate=500.0, seed=1), tokens=tokens) as sim,
            httpx.AsyncClient(base_url=rest.base_url, timeout=5.0) as http,
        ):
            yield Stack(clock, tokens, rest, sim, http)


async def renew(stack: Stack, token: str, *, method: str = "GET") -> httpx.Response:
    return await stack.http.request(method, "/RenewToken",
                                    headers={"access-token": token, "dhanClientId": CLIENT})


async def ltp(stack: Stack, token: str) -> httpx.Response:
    return await stack.http.post("/marketfeed/ltp", json={"NSE_EQ": [1333]},
                                 headers={"access-token": token, "client-id": CLIENT})


def feed(stack: Stack, token: str) -> connect:
    # max_queue=None: a client that stops reading a 500/s stream would otherwise stop reading
    # the socket too, miss the server's close frame and wait out its 10 s close timeout.
    return connect(client.feed_url(stack.sim.url, token=token), compression=None,
                   max_queue=None)  # fmt: skip


async def disconnect_reason(ws: ClientConnection) -> int:
    """Read until the server closes; the reason of the one disconnect packet it sent."""
    reasons: list[int] = []
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(5):
            while True:
                reasons += [p.reason for p in await client.read_packets(ws, 1)
                            if isinstance(p, Disconnect)]  # fmt: skip
    assert len(reasons) == 1, reasons
    return reasons[0]


async def streams(ws: ClientConnection) -> bool:
    await ws.send(client.subscribe("ticker", [HDFC]))
    return len(await client.read_packets(ws, 3)) >= 3


async def test_renew_returns_a_jwt_living_the_lifetime(stack: Stack) -> None:
    old = stack.tokens.current
    stack.clock.now += 3_600  # an hour into the old token's life

    answer = await renew(stack, old)

    assert answer.status_code == 200
    body = answer.json()
    new = body["accessToken"]
    assert body["dhanClientId"] == CLIENT and new != old and stack.tokens.current == new
    claims = jwt_claims(new)
    assert claims is not None
    assert claims["exp"] == stack.clock.now + LIFETIME
    assert claims["iat"] == stack.clock.now
    assert (claims["iss"], claims["dhanClientId"], claims["tokenConsumerType"]) == (
        "dhan", CLIENT, "SELF")  # fmt: skip
    assert datetime.fromisoformat(body["expiryTime"]).timestamp() == claims["exp"]
    [call] = stack.rest.calls
    assert (call["method"], call["path"], call["status"]) == ("GET", "/v2/RenewToken", 200)


async def test_the_new_token_works_on_feed_and_rest_the_old_one_nowhere(stack: Stack) -> None:
    old = stack.tokens.current
    new = (await renew(stack, old)).json()["accessToken"]

    async with feed(stack, new) as ws:
        assert await streams(ws)
    assert (await ltp(stack, new)).json()["status"] == "success"

    refused = await ltp(stack, old)
    assert refused.status_code == 401 and refused.json()["errorCode"] == "DH-901"
    async with feed(stack, old) as ws:
        assert await disconnect_reason(ws) == TOKEN_EXPIRED


async def test_open_connections_on_the_old_token_get_807(stack: Stack) -> None:
    old = stack.tokens.current
    async with feed(stack, old) as first, feed(stack, old) as second:
        assert await streams(first) and await streams(second)
        doomed = stack.sim.connection_ids

        new = (await renew(stack, old)).json()["accessToken"]

        assert await disconnect_reason(first) == TOKEN_EXPIRED
        assert await disconnect_reason(second) == TOKEN_EXPIRED
        async with feed(stack, new) as fresh:
            assert await streams(fresh)
            await asyncio.sleep(0.05)  # a late 807 for the fresh connection would show here
            assert stack.sim.connection_count == 1
    assert sorted(stack.sim.disconnects_sent) == [(cid, TOKEN_EXPIRED) for cid in doomed]


async def test_post_to_renew_token_is_400_dh_905(stack: Stack) -> None:
    token = stack.tokens.current

    answer = await renew(stack, token, method="POST")

    assert answer.status_code == 400 and answer.json()["errorCode"] == "DH-905"
    assert stack.tokens.current == token and (await ltp(stack, token)).status_code == 200


async def test_an_expired_token_cannot_be_renewed_and_its_handshake_is_807(stack: Stack) -> None:
    token = stack.tokens.current
    exp = expiry_of(token)
    assert exp is not None
    stack.clock.now = exp  # `exp` itself is already too late

    answer = await renew(stack, token)

    assert answer.status_code == 401 and answer.json()["errorCode"] == "DH-901"
    assert stack.tokens.current == token
    assert (await ltp(stack, token)).status_code == 401
    async with feed(stack, token) as ws:
        assert await disconnect_reason(ws) == TOKEN_EXPIRED


async def test_the_same_old_token_renews_only_once(stack: Stack) -> None:
    old = stack.tokens.current

    first = await renew(stack, old)
    second = await renew(stack, old)

    assert first.status_code == 200
    assert second.status_code == 401 and second.json()["errorCode"] == "DH-901"
    assert stack.tokens.current == first.json()["accessToken"]


async def test_another_client_id_cannot_renew(stack: Stack) -> None:
    answer = await stack.http.get("/RenewToken", headers={
        "access-token": stack.tokens.current, "dhanClientId": "1000000002"})  # fmt: skip
    assert answer.status_code == 401


async def test_set_token_still_leaves_open_connections_alone(stack: Stack) -> None:
    async with feed(stack, stack.tokens.current) as ws:
        assert await streams(ws)
        stack.sim.set_token("scripted")
        await asyncio.sleep(0.05)
        assert stack.sim.connection_count == 1 and stack.sim.disconnects_sent == []
    assert stack.rest.access_token == "scripted"


def test_a_shared_authority_must_be_for_the_same_client_id() -> None:
    tokens = TokenAuthority(CLIENT)
    with pytest.raises(ValueError, match="client id"):
        FeedSimulator(SimConfig(client_id="1000000002"), tokens=tokens)
    with pytest.raises(ValueError, match="client_id"):
        RestStandIn(tokens=tokens, client_id="1000000002")


# -- the authority alone ---------------------------------------------------------------------
def test_a_plain_token_never_expires_and_renews_into_a_jwt() -> None:
    clock = FakeClock()
    tokens = TokenAuthority(CLIENT, "sim-token", clock=clock)
    clock.now += 10 * 365 * 86_400
    assert tokens.check("sim-token") is None and tokens.expires_at is None

    issued = tokens.renew("sim-token", CLIENT)

    assert isinstance(issued, Issued) and expiry_of(issued.token) == clock.now + LIFETIME
    assert tokens.check("sim-token") == TOKEN_EXPIRED
    assert tokens.check("never-issued") == TOKEN_INVALID


def test_two_mints_in_the_same_second_differ_and_rotations_are_announced() -> None:
    tokens = TokenAuthority(CLIENT, clock=FakeClock())
    rotations: list[tuple[str, str]] = []
    stop = tokens.on_rotate(lambda old, new: rotations.append((old, new)))
    first = tokens.current

    second = tokens.mint().token
    stop()
    tokens.mint()

    assert second != first and jwt_claims(second) == jwt_claims(first)  # same second
    assert rotations == [(first, second)]


def test_concurrent_renewals_of_one_token_let_exactly_one_through() -> None:
    tokens = TokenAuthority(CLIENT)
    old = tokens.current
    barrier = threading.Barrier(8)

    def attempt(_: int) -> Issued | Refused:
        barrier.wait()
        return tokens.renew(old, CLIENT)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(attempt, range(8)))

    [winner] = [r for r in results if isinstance(r, Issued)]
    assert tokens.current == winner.token and len(tokens.dead_tokens) == 1


def test_the_official_sdk_renews_against_the_stand_in() -> None:
    tokens = TokenAuthority(CLIENT)
    with RestStandIn(tokens=tokens) as rest:
        login = DhanLogin(CLIENT)
        login.API_BASE_URL = rest.base_url
        answer = login.renew_token(tokens.current)
    assert answer["accessToken"] == tokens.current


# -- ltp-sim ---------------------------------------------------------------------------------
@pytest.fixture
def jwt_sim() -> Iterator[dict[str, str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "local.dhan_sim.cli", "--port", "0", "--rest-port", "0",
         "--jwt-token", "--token-lifetime", "3600", "--no-rate-limit"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        seen: dict[str, str] = {}
        assert process.stdout is not None
        for line in process.stdout:
            if match := re.match(r"(feed|rest): (\S+)", line):
                seen[match[1]] = match[2]
            if match := re.search(r"DHAN_ACCESS_TOKEN=(\S+)", line):
                seen["token"] = match[1]
            if line.startswith("ready"):
                break
        yield seen
    finally:
        process.terminate()
        process.wait(timeout=10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def sync_disconnect_reason(url: str, token: str) -> int | None:
    """The disconnect reason of the first frame after a subscribe; None when it is data."""
    with connect_sync(client.feed_url(url, token=token), compression=None) as ws:
        with contextlib.suppress(ConnectionClosed):  # a refused handshake may be closed already
            ws.send(client.subscribe("ticker", [HDFC]))
        for packet in decode_frame(ws.recv(timeout=5)).packets:  # type: ignore[arg-type]
            if isinstance(packet, Disconnect):
                return packet.reason
    return None


def test_ltp_sim_jwt_token_is_shared_by_feed_and_rest(jwt_sim: dict[str, str]) -> None:
    old = jwt_sim["token"]
    claims = jwt_claims(old)
    assert claims is not None and claims["exp"] - claims["iat"] == 3600

    answer = httpx.get(f"{jwt_sim['rest']}/RenewToken",
                       headers={"access-token": old, "dhanClientId": CLIENT})  # fmt: skip

    assert answer.status_code == 200
    assert sync_disconnect_reason(jwt_sim["feed"], old) == TOKEN_EXPIRED
    assert sync_disconnect_reason(jwt_sim["feed"], answer.json()["accessToken"]) is None


def test_ltp_sim_jwt_token_and_an_explicit_token_conflict() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "local.dhan_sim.cli", "--jwt-token", "--token", "x"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2 and "--jwt-token" in done.stderr
