"""Fixtures of the deploy-shaped test: one synthesis, a TLS+AUTH redis-server, moto, the feed.

The app is synthesized as `tests/infra` synthesizes it (cdk.json context, an explicit account,
bundling skipped). Without `redis-server` (or one without TLS) or the infra extra the tests skip
on a laptop and fail in CI (`CI` or `LTP_REQUIRE_DEPLOY_TEST` set), where `.ci/run` installs it.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.cloud import (
    Cloud,
    Feed,
    Synth,
    TlsRedis,
    create_cloud,
    redis_binary,
    tls_redis,
)
from tests.deploy.harness import StepFailed

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")

ACCOUNT = "123456789012"


def _required() -> bool:
    return bool(os.environ.get("CI") or os.environ.get("LTP_REQUIRE_DEPLOY_TEST"))


def _unavailable(reason: str) -> None:
    if _required():
        pytest.fail(f"{reason} (required in CI: .ci/run installs redis-server)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def deploy_synth() -> Iterator[Synth]:
    try:
        import aws_cdk
        from aws_cdk.assertions import Template
    except ImportError:
        _unavailable("the infra extra (aws-cdk-lib) is not installed")
    from app import build_app
    from tests.infra.helpers import cdk_json_context

    context = {**cdk_json_context(), "ltp:account": ACCOUNT, "aws:cdk:bundling-stacks": []}
    with tempfile.TemporaryDirectory(prefix="ltp-deploy-cdk-") as outdir:
        app = aws_cdk.App(context=context, outdir=outdir)
        _, stack = build_app(app)
        yield Synth(stack, dict(Template.from_stack(stack).to_json()))


@pytest.fixture(scope="session")
def deploy_workdir() -> Iterator[Path]:
    """Certificates, logs and port files; removed at the end whatever happened (the logs are
    copied to LTP_DEPLOY_TEST_LOGS first when it names a directory, e.g. for CI artifacts)."""
    with tempfile.TemporaryDirectory(prefix="ltp-deploy-") as workdir:
        try:
            yield Path(workdir)
        finally:
            keep = os.environ.get("LTP_DEPLOY_TEST_LOGS")
            if keep:
                shutil.copytree(workdir, keep, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("*.key", "*.pem", "*.crt"))


@pytest.fixture(scope="session")
def auth_redis(deploy_workdir: Path) -> Iterator[TlsRedis]:
    binary = redis_binary()
    if binary is None:
        _unavailable("redis-server is not installed")
    assert binary is not None
    try:
        with tls_redis(binary, deploy_workdir) as server:
            yield server
    except StepFailed as exc:
        # A build without TLS rejects the tls-* directives: "Bad directive ... >>> 'tls-port".
        if "Bad directive" in str(exc) and "tls-" in str(exc):
            _unavailable(f"this redis-server has no TLS support: {exc}")
        raise


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


# Security id 990099 (`test_deployed_walk.NOT_STREAMED`), in the master's own CSV shape.
UNSTREAMED_ROW = b"NSE,E,990099,EQUITY,0,WALKTEST,1.0,Walk test,,,,0.0500,NA,ES,EQ,WALK TEST LTD"


@pytest.fixture(scope="session")
def dhan_token() -> str:
    return "sim-" + secrets.token_hex(12)


@pytest.fixture(scope="session")
def feed(dhan_token: str) -> Iterator[Feed]:
    from local.dhan_sim.feed import SimConfig
    from local.dhan_sim.prices import PriceBook
    from local.dhan_sim.rest import RestStandIn
    from local.dhan_sim.threaded import ThreadedFeedSimulator
    from tests.deploy.cloud import SIM_CLIENT_ID

    book = PriceBook(seed=7)
    config = SimConfig(host="127.0.0.1", port=0, client_id=SIM_CLIENT_ID,
                       access_token=dhan_token, rate=20.0, seed=7)  # fmt: skip
    with ThreadedFeedSimulator(config, prices=book) as simulator:
        rest = RestStandIn(book, client_id=SIM_CLIENT_ID, access_token=dhan_token).start()
        try:
            yield Feed(simulator.url, rest.base_url, SIM_CLIENT_ID, dhan_token)
        finally:
            rest.close()


@pytest.fixture(scope="session")
def scrip_master() -> Iterator[str]:
    """Dhan's scrip-master CDN stand-in: data/nse_sample.csv over loopback HTTP (the URL the
    instrument-master function gets as INSTRUMENT_MASTER_URL), plus one equity the default
    watchlist does not stream (`UNSTREAMED_ROW`): with a master loaded, only known instruments
    reach DhanHQ's REST fallback, and the walk needs one that is known and not cached."""
    import http.server
    import threading

    from core.instrument_master import SAMPLE_PATH

    body = SAMPLE_PATH.read_bytes().rstrip(b"\n") + b"\n" + UNSTREAMED_ROW + b"\n"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            if self.path != "/api-data/api-scrip-master.csv":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/csv")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api-data/api-scrip-master.csv"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture(scope="module")
def cloud(deploy_synth: Synth, moto_url: str, auth_redis: TlsRedis,
          dhan_token: str) -> Iterator[Cloud]:
    """Fresh moto resources per module (secrets of the template, the ECS service at 0)."""
    made = create_cloud(stack=deploy_synth.stack, template=deploy_synth.template,
                        moto_url=moto_url, redis=auth_redis, dhan_token=dhan_token)
    yield made
    made.ecs.close()  # its pooled sockets, else a ResourceWarning lands in a later test
