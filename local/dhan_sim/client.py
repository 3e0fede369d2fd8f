"""Client-side helpers for talking to a v2 feed (the simulator or any compatible one).

Small on purpose: building the handshake URL and JSON requests, and reading decoded packets,
for tests, benchmarks and manual poking. The production client is `streamer`'s.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Protocol
from urllib.parse import urlencode

from local.dhan_sim.prices import Key
from local.dhan_sim.protocol import MODE_SUBSCRIBE_CODE, Mode
from streamer.decoder import Packet, decode_frame


class Receiver(Protocol):
    async def recv(self) -> str | bytes: ...


def feed_url(
    base: str,
    *,
    token: str | None = "sim-token",
    client_id: str | None = "1000000001",
    version: str | None = "2",
    auth_type: str | None = "2",
) -> str:
    """`base?version=2&token=..&clientId=..&authType=2`; a None leaves that parameter out."""
    params = {"version": version, "token": token, "clientId": client_id, "authType": auth_type}
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return f"{base}?{query}"


def request(code: int, keys: Iterable[Key | tuple[str, str | int]]) -> str:
    """A JSON request frame, e.g. `request(15, [("NSE_EQ", "1333")])`."""
    items = [{"ExchangeSegment": seg, "SecurityId": str(sid)} for seg, sid in keys]
    return json.dumps({"RequestCode": code, "InstrumentCount": len(items),
                       "InstrumentList": items})  # fmt: skip


def subscribe(mode: Mode, keys: Iterable[Key | tuple[str, str | int]]) -> str:
    return request(MODE_SUBSCRIBE_CODE[mode], keys)


def unsubscribe(mode: Mode, keys: Iterable[Key | tuple[str, str | int]]) -> str:
    return request(MODE_SUBSCRIBE_CODE[mode] + 1, keys)


async def read_packets(
    ws: Receiver, count: int, *, timeout: float = 5.0, frames: list[bytes] | None = None
) -> list[Packet]:
    """Read frames until at least `count` packets have arrived; raise on a bad frame."""
    got: list[Packet] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            data = await ws.recv()
            if isinstance(data, str):
                raise ValueError(f"unexpected text frame {data[:80]!r}")
            if frames is not None:
                frames.append(data)
            decoded = decode_frame(data)
            if decoded.error:
                raise ValueError(decoded.error)
            got.extend(decoded.packets)
    return got
