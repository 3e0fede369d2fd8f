"""The template's deployables running locally: the gateway, one Lambda host per function, and
(when ECS would start the task) one process per container.

Environments are exactly what `tests.deploy.cloud.resolve_deployables` resolved from the
template, plus `Cloud.aws_environment()` (region, dummy credentials, the moto endpoints, the
trust bundle, PATH/HOME/LANG, PYTHONPATH) and these additions:
  endpoints      DHAN_API_BASE_URL (the quotes and the token renewal functions: the only ones
                 that call DhanHQ REST) -> the REST stand-in,
                 INSTRUMENT_MASTER_URL (the instrument-master function) -> a loopback
                 server of data/nse_sample.csv (the template leaves Dhan's CDN the default),
                 DHAN_FEED_URL (the streamer container) -> the feed simulator,
                 AWS_ENDPOINT_URL_LAMBDA (the bridge container; the HTTP API's function) -> the
                 Lambda host of the function its FANOUT_FUNCTION_NAME / QUOTE_FUNCTION_NAME
                 names (the only function each invokes). Hosts start in two waves, the
                 invoked functions first, so that the invoker's endpoint is known when it
                 starts (Lambda hosts pick their ports when they bind).
  the clock      STREAMER_ALWAYS_OPEN=true (streamer container): the one override that is
                 not an endpoint, because the streamer refuses to stream outside NSE hours.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy import template as cfn
from tests.deploy.cloud import Cloud, Deployables, Function, container_argv, resolve_deployables
from tests.deploy.harness import (
    LambdaHost,
    LoopThread,
    Process,
    Processes,
    StepFailed,
    spawn_lambda_host,
)

ROUTE_SELECTION = "$request.body.action"  # the only one the local gateway implements
INSTRUMENTS_HANDLER = "functions.instruments.handler"
TOKEN_HANDLER = "functions.token.handler"
QUOTES_HANDLER = "functions.quotes.handler"
DHAN_REST_HANDLERS = (QUOTES_HANDLER, TOKEN_HANDLER)
# The one function-to-function invoke: the HTTP API's function -> the quotes function.
INVOKED_FUNCTION = "QUOTE_FUNCTION_NAME"
CLOCK_OVERRIDES = {"STREAMER_ALWAYS_OPEN": "true"}


@dataclass(frozen=True)
class Services:
    """Where the feed, DhanHQ REST and scrip-master stand-ins listen."""

    feed_url: str
    rest_url: str
    instruments_url: str = ""  # the scrip master's CSV (Dhan's CDN in AWS)


class IdentityMissing(Exception):
    """API Gateway answers 401 before the authorizer runs when an identity source is absent."""


def authorizer_gate(identity_sources: Iterable[str],
                    call: Callable[[dict[str, Any], Any], Any]) -> Callable[..., Any]:  # fmt: skip
    """The REQUEST authorizer as API Gateway runs it: only when every identity source
    (`route.request.querystring.X`, `route.request.header.X`) is present."""
    sources = list(identity_sources)

    def gate(event: dict[str, Any], context: Any = None) -> Any:
        for source in sources:
            where, _, name = source.removeprefix("route.request.").partition(".")
            if where == "querystring":
                values = event.get("queryStringParameters") or {}
                present = bool(values.get(name))
            elif where == "header":
                headers = {k.lower(): v for k, v in (event.get("headers") or {}).items()}
                present = bool(headers.get(name.lower()))
            else:
                raise StepFailed(f"identity source {source} is not emulated")
            if not present:
                raise IdentityMissing(source)
        return call(event, context)

    return gate


@dataclass
class Deployment:
    stack: Any
    template: Mapping[str, Any]
    cloud: Cloud
    services: Services
    logs: Path
    processes: Processes = field(init=False)
    loop: LoopThread | None = field(init=False, default=None)
    gateway: Any = field(init=False, default=None)
    deployables: Deployables | None = field(init=False, default=None)
    hosts: dict[str, LambdaHost] = field(init=False, default_factory=dict)  # logical id ->
    task: dict[str, Process] = field(init=False, default_factory=dict)  # container name ->

    def __post_init__(self) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        self.processes = Processes(self.logs)

    def __enter__(self) -> Deployment:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- start ------------------------------------------------------------------------------

    def start_gateway(self) -> str:
        """The local WebSocket API with the template's stage and routes, each route's handler
        invoking that route's function host; returns its `http://127.0.0.1:PORT` origin."""
        from local.apigw import GatewayConfig, Handlers, LocalApiGateway
        from tests.infra.helpers import logical_id

        routes = cfn.api_routes(self.template, logical_id(self.stack, self.stack.websocket.api))
        if routes.selection_expression != ROUTE_SELECTION:
            raise StepFailed(f"route selection {routes.selection_expression}: the local gateway "
                             f"implements {ROUTE_SELECTION} only")  # fmt: skip

        def host(lid: str) -> Callable[[dict[str, Any], Any], Any]:
            def call(event: dict[str, Any], context: Any = None) -> Any:
                return self.hosts[lid](event, context)

            return call

        custom = {key: host(lid) for key, lid in routes.routes.items() if not key.startswith("$")}
        table = dict(routes.routes)
        handlers = Handlers(
            message=host(table["$default"]),
            connect=host(table["$connect"]) if "$connect" in table else None,
            disconnect=host(table["$disconnect"]) if "$disconnect" in table else None,
            authorizer=(authorizer_gate(routes.identity_source, host(routes.authorizer))
                        if routes.authorizer else None),  # fmt: skip
            routes=frozenset(custom),
            route_handlers=custom,
        )
        self.loop = LoopThread()
        self.gateway = LocalApiGateway(handlers, GatewayConfig(stage=routes.stage))
        self.loop.run(self.gateway.start())
        origin = f"http://127.0.0.1:{self.gateway.http_port}"
        assert self.gateway.callback_url == f"{origin}/{routes.stage}"
        return origin

    def start(self) -> Deployables:
        origin = self.start_gateway()
        deployables = resolve_deployables(self.stack, self.template, self.cloud, origin)
        self.deployables = deployables
        unused = set(deployables.endpoints) - deployables.endpoints_used
        if unused:
            raise StepFailed(f"endpoints never substituted (the template changed shape?): {unused}")
        for function in deployables.functions.values():
            callback = function.env.get("WEBSOCKET_CALLBACK_URL")
            if callback is not None and callback != self.gateway.callback_url:
                raise StepFailed(f"{function.spec.logical_id}: WEBSOCKET_CALLBACK_URL {callback} "
                                 f"is not the gateway's {self.gateway.callback_url}")
        self.start_hosts(deployables.functions.values())
        return deployables

    def start_hosts(self, functions: Iterable[Function], *, drop: Iterable[str] = ()) -> None:
        chosen = list(functions)
        invoked_first = [f for f in chosen if INVOKED_FUNCTION not in f.env]
        invokers = [f for f in chosen if INVOKED_FUNCTION in f.env]
        for wave in (invoked_first, invokers):
            self._start_wave(wave, set(drop))

    def _start_wave(self, functions: list[Function], dropped: set[str]) -> None:
        pending = {}
        for function in functions:
            env = self.function_environment(function)
            for name in dropped:
                env.pop(name, None)
            pending[function.spec.logical_id] = spawn_lambda_host(
                self.processes, name=f"lambda-{function.spec.logical_id}",
                handler=function.spec.handler, function_name=function.name, env=env,
                region=self.cloud.region, account=self.cloud.account,
                timeout=function.spec.timeout, memory=function.spec.memory,
            )  # fmt: skip
        for lid, waiting in pending.items():
            if lid in self.hosts:
                self.hosts[lid].close()
            self.hosts[lid] = waiting.ready()

    def function_environment(self, function: Function) -> dict[str, str]:
        base = self.cloud.aws_environment()
        clash = set(base) & set(function.env)
        if clash:
            raise StepFailed(f"{function.spec.logical_id}: the template sets {clash} itself")
        env = {**base, **function.env}
        if function.spec.handler in DHAN_REST_HANDLERS:
            env["DHAN_API_BASE_URL"] = self.services.rest_url
        if function.spec.handler == INSTRUMENTS_HANDLER and self.services.instruments_url:
            env["INSTRUMENT_MASTER_URL"] = self.services.instruments_url
        if INVOKED_FUNCTION in function.env:
            env["AWS_ENDPOINT_URL_LAMBDA"] = self.invoked_host_url(
                function.env[INVOKED_FUNCTION], by=function.spec.logical_id)
        return env

    def invoked_host_url(self, name: str, *, by: str) -> str:
        """The Lambda host of the function `name`, which `by` invokes: already running."""
        assert self.deployables is not None
        target = self.deployables.by_name(name)
        if target.spec.logical_id not in self.hosts:
            raise StepFailed(f"{by} invokes {target.name}, which is not running")
        return self.hosts[target.spec.logical_id].url

    def container_environment(self, name: str) -> dict[str, str]:
        assert self.deployables is not None
        container = self.deployables.container(name)
        base = self.cloud.aws_environment()
        clash = set(base) & set(container.env)
        if clash:
            raise StepFailed(f"container {name}: the task definition sets {clash} itself")
        env = {**base, **container.env}
        if container.command[1:] == ["-m", "streamer"]:
            env["DHAN_FEED_URL"] = self.services.feed_url
            env.update(CLOCK_OVERRIDES)
        if "FANOUT_FUNCTION_NAME" in container.env:
            env["AWS_ENDPOINT_URL_LAMBDA"] = self.invoked_host_url(
                container.env["FANOUT_FUNCTION_NAME"], by=f"container {name}")
        return env

    def launch_task(self, *, drop: Iterable[str] = (), only: str | None = None) -> None:
        """What ECS does once the service's desired count is 1: every container's Command."""
        assert self.deployables is not None
        for container in self.deployables.containers:
            if only is not None and container.name != only:
                continue
            env = self.container_environment(container.name)
            for name in drop:
                env.pop(name, None)
            self.task[container.name] = self.processes.start(
                f"container-{container.name}", container_argv(container.command), env)

    def stop_task(self, timeout: float) -> dict[str, int | None]:
        """SIGTERM to every container (what ECS sends), each given `timeout` s to exit."""
        return {name: process.terminate(timeout) for name, process in self.task.items()}

    # --- lookups ----------------------------------------------------------------------------

    def host_for_handler(self, handler: str) -> LambdaHost:
        assert self.deployables is not None
        return self.hosts[self.deployables.by_handler(handler).spec.logical_id]

    @property
    def api(self) -> LambdaHost:
        assert self.deployables is not None
        return self.hosts[cfn.only({lid: True for lid in self.deployables.http.routes.values()},
                                   "function behind the HTTP API")]  # fmt: skip

    def fanout_host(self) -> LambdaHost:
        assert self.deployables is not None
        invoked = [c.env["FANOUT_FUNCTION_NAME"] for c in self.deployables.containers
                   if "FANOUT_FUNCTION_NAME" in c.env]  # fmt: skip
        if len(invoked) != 1:
            raise StepFailed(f"expected one container invoking the fan-out, found {invoked}")
        return self.hosts[self.deployables.by_name(invoked[0]).spec.logical_id]

    # --- stop -------------------------------------------------------------------------------

    def close(self) -> None:
        try:
            if self.gateway is not None and self.loop is not None:
                try:
                    self.loop.run(self.gateway.stop(), timeout=15)
                except Exception:  # noqa: BLE001 - still stop the processes below
                    pass
        finally:
            for host in self.hosts.values():
                host.close()
            self.processes.close()
            if self.loop is not None:
                self.loop.close()
