"""Helpers shared by the benchmarks: the simulator as a subprocess, a Redis to write into,
per-process CPU accounting, medians and a plain-text table.

Benchmarks are scripts that print figures, not tests. The simulator runs in its own process so
that it has its own core (Python's GIL would otherwise make the feed and the client share one).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # `python bench/x.py` from a checkout without `pip install -e`
    sys.path.insert(0, str(ROOT))

SIM_CLIENT_ID = "1000000001"
SIM_TOKEN = "sim-token"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a live process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime


@dataclass(frozen=True)
class SimProcess:
    url: str  # ws://127.0.0.1:PORT (clients add the v2 query string)
    pid: int

    def cpu(self) -> float:
        return cpu_seconds(self.pid)


@contextlib.contextmanager
def simulator(
    *,
    packets_per_frame: int,
    max_ticks: int,
    mode: str = "quote",
    seed: int = 1,
    startup_timeout: float = 20.0,
) -> Iterator[SimProcess]:
    """`ltp-sim --rate 0` (as fast as it can) in a subprocess; yields its feed URL and pid."""
    argv = [
        sys.executable, "-m", "local.dhan_sim.cli", "--rate", "0", "--port", "0",
        "--rest-port", "-1", "--packets-per-frame", str(packets_per_frame),
        "--max-ticks", str(max_ticks), "--mode", mode, "--seed", str(seed),
        "--client-id", SIM_CLIENT_ID, "--token", SIM_TOKEN,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + startup_timeout
        url = None
        while url is None:
            line = proc.stdout.readline()
            if not line or time.monotonic() > deadline:
                raise RuntimeError(f"ltp-sim did not start (exit code {proc.poll()})")
            if line.startswith("feed: "):
                url = line.split()[1]
        yield SimProcess(url, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def bench_redis(url: str | None) -> Iterator[str]:
    """The Redis to write into: `url` when given, else a private `redis-server` for this run.

    Private by default: PUBLISH is server-wide whatever the logical DB, so a benchmark flooding
    `live_ltp_updates` on a shared server would reach every other subscriber of that channel
    (tests running beside it included).
    """
    if url:
        yield url
        return
    from local.redis_server import private_redis_server

    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed; pass --redis-url redis://HOST:PORT/DB")
    with private_redis_server(binary) as handle:
        yield handle.url


def redis_cpu(url: str) -> float:
    """The Redis server's own CPU seconds (INFO cpu), to see how busy it was."""
    import redis

    with redis.Redis.from_url(url) as client:
        info: dict[str, Any] = client.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def flush_db(url: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        client.flushdb()


def run_worker(argv: Sequence[str], *, timeout: float) -> dict[str, Any]:
    """Run a benchmark worker subprocess; its last stdout line is a JSON result."""
    proc = subprocess.run(
        [sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"worker {' '.join(argv)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


class LightClient(asyncio.Protocol):
    """A WebSocket client on websockets' sans-I/O protocol: a browser stand-in that costs the
    shared machine far less CPU per message than a task-and-future client (the clients are
    the measuring device here, not the system measured)."""

    def __init__(self, uri: str, on_text: Callable[[bytes], None]) -> None:
        from websockets.client import ClientProtocol
        from websockets.uri import parse_uri

        self._ws = ClientProtocol(parse_uri(uri), max_size=None)
        self._on_text = on_text
        self._parts: list[bytes] = []
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self._transport = transport
        self._ws.send_request(self._ws.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        from websockets.frames import Frame, Opcode
        from websockets.http11 import Response

        self._ws.receive_data(data)
        for event in self._ws.events_received():
            if isinstance(event, Response):
                if self._ws.handshake_exc is not None and not self.opened.done():
                    self.opened.set_exception(self._ws.handshake_exc)
                elif not self.opened.done():
                    self.opened.set_result(None)
            elif isinstance(event, Frame) and event.opcode in (Opcode.TEXT, Opcode.CONT):
                self._parts.append(event.data)
                if event.fin:
                    raw = b"".join(self._parts)
                    self._parts.clear()
                    self._on_text(raw)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed before the handshake"))

    def send_text(self, text: bytes) -> None:
        self._ws.send_text(text)
        self._flush()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _flush(self) -> None:
        for chunk in self._ws.data_to_send():
            if chunk:
                self._transport.write(chunk)
            elif self._transport.can_write_eof():
                self._transport.write_eof()
