"""Find or start a Redis for the local run and the tests.

Order: a reachable `REDIS_URL` (or 127.0.0.1:6379), else a private `redis-server` on a free
port when one is installed, else fakeredis's embedded TCP server (no persistence, good enough
for a laptop demo and for tests of this fallback).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

DEFAULT_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class RedisHandle:
    url: str
    kind: str  # "existing", "private" or "embedded"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def ping(url: str, timeout: float = 0.5) -> bool:
    """Speak just enough RESP to know a Redis answers at `url`."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if parsed.password:
                user = parsed.username or "default"
                auth = f"*3\r\n$4\r\nAUTH\r\n${len(user)}\r\n{user}\r\n"
                auth += f"${len(parsed.password)}\r\n{parsed.password}\r\n"
                sock.sendall(auth.encode())
                sock.recv(64)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _wait_until_up(url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        if ping(url, timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"Redis at {url} did not answer in time")


@contextlib.contextmanager
def private_redis_server(binary: str) -> Iterator[RedisHandle]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ltp-redis-") as workdir:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"redis://127.0.0.1:{port}/0"
        try:
            _wait_until_up(url, time.monotonic() + 10)
            yield RedisHandle(url, "private")
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()


class _ErrorReplies:
    """A fakeredis connection whose error replies are returned, not raised.

    fakeredis's TCP handler closes the socket after any reply it gets as an exception, so a
    client's first EVALSHA of a script (NOSCRIPT, answered by SCRIPT LOAD on the same
    connection) or any WRONGTYPE would cost the client its connection. Redis keeps it open.
    """

    def __init__(self, connection: Any, errors: tuple[type[BaseException], ...]) -> None:
        self._connection = connection
        self._errors = errors

    def read_response(self, **kwargs: Any) -> Any:
        try:
            return self._connection.read_response(**kwargs)
        except self._errors as exc:
            return exc  # the writer encodes an exception as a RESP error reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self._connection, name)


def _error_keeping_handler() -> type:
    from fakeredis._clients._tcp_server import TCPFakeRequestHandler
    from redis.exceptions import AuthenticationError, ResponseError

    class Handler(TCPFakeRequestHandler):
        def setup(self) -> None:
            super().setup()
            wrapped: Any = _ErrorReplies(self.current_client, (ResponseError, AuthenticationError))
            self.current_client = wrapped

    return Handler


@contextlib.contextmanager
def embedded_redis_server() -> Iterator[RedisHandle]:
    from fakeredis import TcpFakeServer

    port = free_port()
    server: Any = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    server.RequestHandlerClass = _error_keeping_handler()
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="fakeredis")
    thread.start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_until_up(url, time.monotonic() + 10)
        yield RedisHandle(url, "embedded")
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def redis_for_local_use(url: str | None = None) -> Iterator[RedisHandle]:
    """Yield a Redis to use: the given/default one if it answers, else one we start."""
    candidate = url or DEFAULT_URL
    if ping(candidate):
        yield RedisHandle(candidate, "existing")
        return
    if url:
        raise RuntimeError(f"no Redis answers at {url}")
    binary = shutil.which("redis-server")
    if binary:
        with private_redis_server(binary) as handle:
            yield handle
    else:
        with embedded_redis_server() as handle:
            yield handle
