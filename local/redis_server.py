"""Find or start a Redis for the local run and the tests.

`redis_for_local_use` (the tests): a reachable `REDIS_URL` (or 127.0.0.1:6379), else a private
`redis-server` on a free port when one is installed, else fakeredis's embedded TCP server (no
persistence, good enough for a laptop demo and for tests of this fallback).

`redis_for_the_stack` (`ltp-local`): a given URL wins; else a private `redis-server` that
requires AUTH with a random password per run, so the local stack takes the path to Redis the
deployed one takes (ElastiCache with an AUTH token); else the embedded server, which also
requires the password.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

DEFAULT_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class RedisHandle:
    url: str
    kind: str  # "existing", "private" or "embedded"
    # AUTH of a server started here, kept apart from the URL as REDIS_AUTH_TOKEN is in AWS.
    password: str = field(default="", repr=False)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def ping(url: str, timeout: float = 0.5, *, password: str = "") -> bool:
    """Speak just enough RESP to know a Redis answers at `url`."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    secret = password or parsed.password
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            if secret:
                user = parsed.username or "default"
                auth = f"*3\r\n$4\r\nAUTH\r\n${len(user)}\r\n{user}\r\n"
                auth += f"${len(secret)}\r\n{secret}\r\n"
                sock.sendall(auth.encode())
                sock.recv(64)
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _wait_until_up(url: str, deadline: float, password: str = "") -> None:
    while time.monotonic() < deadline:
        if ping(url, timeout=0.2, password=password):
            return
        time.sleep(0.05)
    raise RuntimeError(f"Redis at {url} did not answer in time")


@contextlib.contextmanager
def private_redis_server(binary: str, *, password: str = "") -> Iterator[RedisHandle]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ltp-redis-") as workdir:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", workdir, "--loglevel", "warning"]
        if password:
            # Through a config file on stdin, not argv: `ps` would show an argument.
            args.insert(1, "-")
        proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE if password else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if password and proc.stdin is not None:
            proc.stdin.write(f'requirepass "{password}"\n'.encode())
            proc.stdin.close()
        url = f"redis://127.0.0.1:{port}/0"
        try:
            _wait_until_up(url, time.monotonic() + 10, password)
            yield RedisHandle(url, "private", password)
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


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
def embedded_redis_server(*, password: str = "") -> Iterator[RedisHandle]:
    from fakeredis import TcpFakeServer

    port = free_port()
    server: Any = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    server.RequestHandlerClass = _error_keeping_handler()
    if password:
        server.fake_server.config[b"requirepass"] = password.encode()
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="fakeredis")
    thread.start()
    url = f"redis://127.0.0.1:{port}/0"
    try:
        _wait_until_up(url, time.monotonic() + 10, password)
        yield RedisHandle(url, "embedded", password)
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


@contextlib.contextmanager
def redis_for_the_stack(url: str | None = None) -> Iterator[RedisHandle]:
    """`ltp-local`'s Redis: the given URL (it must answer), else one started here that
    requires a random password."""
    if url:
        if not ping(url):
            raise RuntimeError(f"no Redis answers at {url}")
        yield RedisHandle(url, "existing")
        return
    password = secrets.token_urlsafe(24)
    binary = shutil.which("redis-server")
    if binary:
        with private_redis_server(binary, password=password) as handle:
            yield handle
    else:
        with embedded_redis_server(password=password) as handle:
            yield handle
