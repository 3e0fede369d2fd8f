"""`core.redis_client` against real servers: TLS verified + AUTH, a failover, bad settings."""

from __future__ import annotations

import contextlib
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from core.config import Env, Secret
from core.errors import ConfigError
from core.redis_client import RedisSettings, async_client, check_auth, sync_client
from local.redis_server import free_port, private_redis_server
from tests.deploy.cloud import TlsRedis, tls_redis

BINARY = shutil.which("redis-server")
needs_server = pytest.mark.skipif(BINARY is None, reason="redis-server is not installed")


@pytest.fixture(scope="module")
def tls_server() -> Iterator[TlsRedis]:
    if BINARY is None:
        pytest.skip("redis-server is not installed")
    with tempfile.TemporaryDirectory(prefix="ltp-tls-") as workdir, \
            tls_redis(BINARY, Path(workdir)) as server:
        yield server


class SecretsStub:
    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.reads = 0

    def get(self, arn: str) -> str:
        self.reads += 1
        return self.values[arn]


# --- settings -----------------------------------------------------------------------------------


def test_settings_read_the_documented_variables() -> None:
    settings = RedisSettings.from_env(Env({
        "REDIS_URL": "rediss://cache.example:6379/0", "REDIS_AUTH_TOKEN": " s3cr3t-value ",
        "REDIS_SOCKET_TIMEOUT": "2.5", "REDIS_CONNECT_TIMEOUT": "0.5", "REDIS_RETRIES": "4",
    }))  # fmt: skip
    assert (settings.url, settings.auth_token.value, settings.socket_timeout,
            settings.connect_timeout, settings.retries, settings.tls) == (
        "rediss://cache.example:6379/0", "s3cr3t-value", 2.5, 0.5, 4, True)
    assert "s3cr3t" not in repr(settings)


@pytest.mark.parametrize("environ, message", [
    ({"REDIS_AUTH_TOKEN": ""}, "REDIS_AUTH_TOKEN is set but blank"),
    ({"REDIS_AUTH_TOKEN": "   "}, "REDIS_AUTH_TOKEN is set but blank"),
    ({"REDIS_AUTH_TOKEN": "a", "REDIS_AUTH_SECRET_ARN": "arn:x"}, "not both"),
    ({"REDIS_URL": "http://cache:6379"}, "must start with redis://"),
    ({"REDIS_RETRIES": "-1"}, "REDIS_RETRIES must be >= 0"),
])  # fmt: skip
def test_bad_settings_are_configuration_errors(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        RedisSettings.from_env(Env(environ))


def test_a_blank_secret_is_a_configuration_error() -> None:
    settings = RedisSettings(auth_secret_arn="arn:redis")
    client = sync_client(settings, secrets=SecretsStub({"arn:redis": "  \n"}))
    with pytest.raises(ConfigError, match="is blank"):
        client.ping()
    with pytest.raises(ConfigError, match="no Secrets Manager client"):
        sync_client(settings)


def test_certificates_are_verified_by_default() -> None:
    kwargs = sync_client(RedisSettings(url="rediss://cache.example:6379/0")) \
        .connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == "required" and kwargs["ssl_check_hostname"] is True


# --- TLS + AUTH -----------------------------------------------------------------------------------


def test_tls_and_auth_token(tls_server: TlsRedis, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.trust_bundle))
    settings = RedisSettings(url=tls_server.url, auth_token=Secret(tls_server.password))
    with sync_client(settings) as client:
        assert client.set("ltp:test:tls", "1") and client.get("ltp:test:tls") == b"1"
        client.delete("ltp:test:tls")
    with sync_client(RedisSettings(url=tls_server.url)) as anonymous, \
            pytest.raises(redis.AuthenticationError):
        anonymous.ping()


def test_an_untrusted_certificate_is_refused(tls_server: TlsRedis,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    import certifi

    monkeypatch.setenv("SSL_CERT_FILE", certifi.where())  # without the test CA
    settings = RedisSettings(url=tls_server.url, auth_token=Secret(tls_server.password),
                             retries=0)
    with sync_client(settings) as client, pytest.raises(redis.ConnectionError,
                                                        match="CERTIFICATE_VERIFY_FAILED"):
        client.ping()


def test_the_token_from_a_secret_is_read_per_connection_through_the_reader(
    tls_server: TlsRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.trust_bundle))
    secrets = SecretsStub({"arn:redis": f'{{"token": "{tls_server.password}"}}'})
    with sync_client(RedisSettings(url=tls_server.url, auth_secret_arn="arn:redis"),
                     secrets=secrets) as client:
        assert client.ping()
        assert secrets.reads == 1  # the first connection, not the client's construction


async def test_the_async_client_and_the_startup_auth_check(
    tls_server: TlsRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tls_server.trust_bundle))
    good = async_client(RedisSettings(url=tls_server.url, auth_token=Secret(tls_server.password)))
    try:
        await check_auth(good)
        assert await good.ping()
    finally:
        await good.aclose()
    wrong = async_client(RedisSettings(url=tls_server.url, auth_token=Secret("not-it"),
                                       retries=0))
    try:
        with pytest.raises(ConfigError, match="refused the AUTH token"):
            await check_auth(wrong)
    finally:
        await wrong.aclose()
    down = async_client(RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0", retries=0,
                                      connect_timeout=0.2))
    try:
        await check_auth(down)  # unreachable is not a configuration error
    finally:
        await down.aclose()


# --- failover -------------------------------------------------------------------------------------


class Proxy:
    """A TCP forwarder standing in for the primary endpoint's DNS name: new connections go to
    `target`, connections already open stay where they were (as after a DNS change)."""

    def __init__(self, target: int) -> None:
        self.target = target
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self._sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._stop.set()
        self._server.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()


@needs_server
def test_a_pool_follows_a_failover_to_the_new_primary() -> None:
    """After a failover the old primary answers READONLY on the connections still open to it;
    each pooled connection is dropped on its READONLY and reopened to the endpoint, which now
    leads to the new primary. Every write succeeds; none raises."""
    assert BINARY is not None
    with private_redis_server(BINARY) as old, private_redis_server(BINARY) as new:
        old_port, new_port = (int(h.url.rsplit(":", 1)[1].split("/")[0]) for h in (old, new))
        proxy = Proxy(old_port)
        settings = RedisSettings(url=f"redis://127.0.0.1:{proxy.port}/0", retries=3)
        client = sync_client(settings)
        try:
            pipes = [client.connection_pool.get_connection() for _ in range(4)]
            for connection in pipes:
                client.connection_pool.release(connection)  # four pooled connections to `old`
            assert client.set("k", "before")

            proxy.target = new_port
            with redis.Redis(port=old_port) as demoted:
                demoted.replicaof("127.0.0.1", str(new_port))  # `old` now answers READONLY
            for i in range(8):
                assert client.set("k", f"after-{i}")
            with redis.Redis(port=new_port) as primary:
                assert primary.get("k") == b"after-7"
            with redis.Redis(port=old_port) as demoted:
                demoted.replicaof("NO", "ONE")  # a replica takes its time to stop
        finally:
            client.close()
            proxy.close()


@needs_server
def test_without_readonly_in_the_retries_the_pool_stays_pinned() -> None:
    """The control: the same failover with redis-py's defaults raises ReadOnlyError."""
    assert BINARY is not None
    with private_redis_server(BINARY) as old, private_redis_server(BINARY) as new:
        old_port, new_port = (int(h.url.rsplit(":", 1)[1].split("/")[0]) for h in (old, new))
        proxy = Proxy(old_port)
        client = redis.Redis(port=proxy.port)
        try:
            assert client.set("k", "before")
            proxy.target = new_port
            with redis.Redis(port=old_port) as demoted:
                demoted.replicaof("127.0.0.1", str(new_port))
            with pytest.raises(redis.ReadOnlyError):
                client.set("k", "after")
            with redis.Redis(port=old_port) as demoted:
                demoted.replicaof("NO", "ONE")
        finally:
            client.close()
            proxy.close()


@needs_server
async def test_the_async_client_reconnects_after_the_server_drops_it() -> None:
    assert BINARY is not None
    with private_redis_server(BINARY) as server:
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        client = async_client(RedisSettings(url=server.url, retries=3))
        try:
            assert await client.ping()
            with redis.Redis(port=port) as admin:
                admin.client_kill_filter(_type="normal", skipme=True)
            assert await client.set("k", "v")
        finally:
            await client.aclose()
