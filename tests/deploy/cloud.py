"""The local stand-ins of what the template references, and every deployable resolved against them.

- `TlsRedis`: `redis-server` listening on TLS only (`--port 0 --tls-port N`) with
  `--requirepass`, certificates from `trustme` for 127.0.0.1 and localhost. Deployables trust
  its CA as any process trusts a CA: `SSL_CERT_FILE` names a bundle holding certifi's roots and
  the test CA. Verification stays on.
- `Cloud`: moto in server mode holding every AWS::SecretsManager::Secret of the template and an
  ECS cluster + service (desired count 0) standing for the streamer's.
- `resolve_deployables`: each Python Lambda of the project's code asset and each container of
  the task definition with its template environment resolved (`tests.deploy.template`); only
  endpoints are substituted.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.deploy import template as cfn
from tests.deploy.harness import (
    DUMMY_KEY_ID,
    DUMMY_SECRET,
    REPO_ROOT,
    StepFailed,
    dockerfile_env,
    free_port,
    inherited_environment,
    tail,
    wait_for,
)

URL_SUFFIX = "amazonaws.com"
WS_API_ID = "ltpws00001"
HTTP_API_ID = "ltphttp001"
CACHE_HOST = "master.ltp-cache.x1y2z3.aps1.cache.amazonaws.com"
SIM_CLIENT_ID = "1000000001"
PROJECT_PACKAGES = ("functions", "core", "streamer")


@dataclass(frozen=True)
class Synth:
    stack: Any  # infra.stack.LtpStack
    template: dict[str, Any]


@dataclass(frozen=True)
class Feed:
    url: str  # the DhanHQ v2 feed simulator (what DHAN_FEED_URL names)
    rest_url: str  # the REST stand-in (what DHAN_API_BASE_URL names)
    client_id: str
    token: str


# --- TLS-only Redis with AUTH ------------------------------------------------------------------


@dataclass(frozen=True)
class TlsRedis:
    port: int
    password: str
    ca_file: Path
    trust_bundle: Path  # what SSL_CERT_FILE points at
    log: Path

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"

    def client(self, **options: Any) -> Any:
        import redis

        return redis.Redis.from_url(self.url, password=self.password,
                                    ssl_ca_certs=str(self.ca_file), socket_timeout=5,
                                    socket_connect_timeout=5, **options)  # fmt: skip


@contextmanager
def tls_redis(binary: str, workdir: Path) -> Iterator[TlsRedis]:
    import certifi
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    cert, key, ca_file = workdir / "redis.crt", workdir / "redis.key", workdir / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(ca_file))
    bundle = workdir / "trust-bundle.pem"
    bundle.write_bytes(Path(certifi.where()).read_bytes() + b"\n" + ca.cert_pem.bytes())
    password = secrets.token_hex(32)
    log = workdir / "redis-server.log"
    for _attempt in range(5):
        port = free_port()
        argv = [binary, "--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert),
                "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca_file),
                "--tls-auth-clients", "no", "--requirepass", password, "--save", "",
                "--appendonly", "no", "--bind", "127.0.0.1", "--dir", str(workdir)]  # fmt: skip
        with log.open("wb") as sink:
            process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL)  # fmt: skip
        server = TlsRedis(port, password, ca_file, bundle, log)
        try:
            _wait_until_answering(server, process)
        except StepFailed:
            process.kill()
            process.wait(5)
            if "Address already in use" in log.read_text(errors="replace"):
                continue
            raise
        try:
            yield server
        finally:
            process.terminate()
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
        return
    raise StepFailed(f"redis-server found no free TLS port:\n{tail(log)}")


def _wait_until_answering(server: TlsRedis, process: subprocess.Popen[bytes]) -> None:
    client = server.client()

    def answering() -> bool:
        if process.poll() is not None:
            raise StepFailed(f"redis-server exited {process.returncode}: {tail(server.log, 5)}")
        return bool(client.ping())

    try:
        wait_for("TLS redis-server answering PING", answering, timeout=10,
                 last_seen=lambda: tail(server.log, 5))  # fmt: skip
    finally:
        client.close()


# --- moto: Secrets Manager and ECS -------------------------------------------------------------


@dataclass
class Cloud:
    region: str
    account: str
    moto_url: str
    redis: TlsRedis
    secret_arns: dict[str, str]  # logical id -> ARN
    secret_values: dict[str, str]  # ARN -> SecretString, as moto returns it
    admin_key: str
    dhan_client_id: str
    dhan_token: str
    cluster: str
    service: str
    service_arn: str
    ecs: Any = field(repr=False)

    def desired_count(self) -> int:
        services = self.ecs.describe_services(cluster=self.cluster, services=[self.service])
        return int(services["services"][0]["desiredCount"])

    def aws_environment(self) -> dict[str, str]:
        """What every deployable gets besides its template environment: region and dummy
        credentials (Lambda and Fargate provide both), the moto endpoints, the trust bundle,
        and no shared AWS config files of the machine."""
        missing = os.devnull
        return {
            **inherited_environment(),
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ACCESS_KEY_ID": DUMMY_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DUMMY_SECRET,
            "AWS_CONFIG_FILE": missing,
            "AWS_SHARED_CREDENTIALS_FILE": missing,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_ENDPOINT_URL_SECRETS_MANAGER": self.moto_url,
            "AWS_ENDPOINT_URL_ECS": self.moto_url,
            "SSL_CERT_FILE": str(self.redis.trust_bundle),
            "PYTHONPATH": str(REPO_ROOT),
        }


def secret_constructs(stack: Any) -> dict[str, str]:
    """Logical id -> role of each secret the stack creates (by construct, never by hash)."""
    from tests.infra.helpers import logical_id

    return {
        logical_id(stack, stack.cache.auth_secret): "redis",
        logical_id(stack, stack.dhan_secret): "dhan",
        logical_id(stack, stack.admin_secret): "admin",
        logical_id(stack, stack.ws_token_secret): "ws_token",
    }


def create_cloud(*, stack: Any, template: Mapping[str, Any], moto_url: str, redis: TlsRedis,
                 dhan_token: str) -> Cloud:  # fmt: skip
    import boto3

    region, account = str(stack.region), str(stack.account)
    options: dict[str, Any] = {"region_name": region, "endpoint_url": moto_url,
                               "aws_access_key_id": DUMMY_KEY_ID,
                               "aws_secret_access_key": DUMMY_SECRET}  # fmt: skip
    manager = boto3.client("secretsmanager", **options)
    ecs = boto3.client("ecs", **options)
    roles = secret_constructs(stack)
    admin_key = secrets.token_urlsafe(36)
    values = {
        "redis": redis.password,
        "dhan": json.dumps({"client_id": SIM_CLIENT_ID, "access_token": dhan_token}),
        "admin": admin_key,
        "ws_token": secrets.token_urlsafe(48),
    }
    arns: dict[str, str] = {}
    secret_values: dict[str, str] = {}
    for lid in cfn.of_type(template, "AWS::SecretsManager::Secret"):
        if lid not in roles:
            raise StepFailed(f"secret {lid} is not one the harness knows: give it a local value "
                             "in tests/deploy/cloud.py")  # fmt: skip
        name = f"{stack.stack_name}-{lid}-{secrets.token_hex(3)}"
        arn = manager.create_secret(Name=name, SecretString=values[roles[lid]])["ARN"]
        arns[lid] = arn
        secret_values[arn] = manager.get_secret_value(SecretId=arn)["SecretString"]
    manager.close()

    cluster_id = cfn.only(cfn.of_type(template, "AWS::ECS::Cluster"), "ECS cluster")
    task_id = cfn.only(cfn.of_type(template, "AWS::ECS::TaskDefinition"), "task definition")
    cluster = f"{stack.stack_name}-{cluster_id}-{secrets.token_hex(3)}"
    service = f"{stack.stack_name}-StreamerService-{secrets.token_hex(3)}"
    ecs.create_cluster(clusterName=cluster)
    containers = template["Resources"][task_id]["Properties"]["ContainerDefinitions"]
    ecs.register_task_definition(
        family=f"{stack.stack_name}-{task_id}",
        containerDefinitions=[{"name": c["Name"], "image": "local", "memory": 512}
                              for c in containers],  # fmt: skip
    )
    created = ecs.create_service(cluster=cluster, serviceName=service,
                                 taskDefinition=f"{stack.stack_name}-{task_id}",
                                 desiredCount=0)["service"]  # fmt: skip
    return Cloud(region=region, account=account, moto_url=moto_url, redis=redis,
                 secret_arns=arns, secret_values=secret_values, admin_key=admin_key,
                 dhan_client_id=SIM_CLIENT_ID, dhan_token=dhan_token, cluster=cluster,
                 service=service, service_arn=created["serviceArn"], ecs=ecs)  # fmt: skip


# --- the deployables, resolved -----------------------------------------------------------------


@dataclass(frozen=True)
class Function:
    spec: cfn.FunctionSpec
    name: str  # the function name its Lambda host answers to
    env: dict[str, str]  # the template's Environment.Variables, resolved


@dataclass(frozen=True)
class Container:
    name: str
    command: list[str]
    env: dict[str, str]  # the image's ENV, the container's Environment and Secrets, resolved


@dataclass(frozen=True)
class Deployables:
    functions: dict[str, Function]  # logical id -> function
    skipped: dict[str, str]  # logical id -> why it is not run
    containers: list[Container]
    ws: cfn.ApiRoutes  # the WebSocket API's routes
    http: cfn.ApiRoutes  # the HTTP API's routes
    schedules: list[cfn.ScheduleSpec]
    endpoints_used: set[str]
    endpoints: dict[str, str]

    def by_handler(self, handler: str) -> Function:
        found = [f for f in self.functions.values() if f.spec.handler == handler]
        if len(found) != 1:
            raise StepFailed(f"expected one function with handler {handler}, found {found}")
        return found[0]

    def by_name(self, name: str) -> Function:
        for function in self.functions.values():
            if function.name == name:
                return function
        raise StepFailed(f"no project function is named {name}")

    def container(self, name: str) -> Container:
        for container in self.containers:
            if container.name == name:
                return container
        raise StepFailed(f"no container {name} in the task definition")


def function_name(stack: Any, lid: str) -> str:
    return f"{stack.stack_name}-{lid}"[:64]


def stand_ins(stack: Any, template: Mapping[str, Any], cloud: Cloud,
              callback_origin: str) -> cfn.StandIns:  # fmt: skip
    """What each resource the environments reference is locally, by type (by construct where
    a type is ambiguous); `callback_origin` is the local gateway's `http://127.0.0.1:PORT`."""
    from tests.infra.helpers import logical_id

    refs: dict[str, str] = {}
    attributes: dict[tuple[str, str], str] = {}
    for lid in cfn.of_type(template, "AWS::Lambda::Function"):
        name = function_name(stack, lid)
        refs[lid] = name
        attributes[(lid, "Arn")] = f"arn:aws:lambda:{cloud.region}:{cloud.account}:function:{name}"
    refs.update(cloud.secret_arns)
    cluster_id = cfn.only(cfn.of_type(template, "AWS::ECS::Cluster"), "ECS cluster")
    refs[cluster_id] = cloud.cluster
    attributes[(cluster_id, "Arn")] = (
        f"arn:aws:ecs:{cloud.region}:{cloud.account}:cluster/{cloud.cluster}")
    service_id = cfn.only(cfn.of_type(template, "AWS::ECS::Service"), "ECS service")
    refs[service_id] = cloud.service_arn
    attributes[(service_id, "Name")] = cloud.service
    attributes[(service_id, "ServiceArn")] = cloud.service_arn
    refs[logical_id(stack, stack.websocket.api)] = WS_API_ID
    refs[logical_id(stack, stack.http.api)] = HTTP_API_ID
    cache_id = cfn.only(cfn.of_type(template, "AWS::ElastiCache::ReplicationGroup"),
                        "cache replication group")
    cache_port = str(template["Resources"][cache_id]["Properties"]["Port"])
    attributes[(cache_id, "PrimaryEndPoint.Address")] = CACHE_HOST
    attributes[(cache_id, "PrimaryEndPoint.Port")] = cache_port
    endpoints = {
        # The cache's primary endpoint (address:port) -> the TLS port of the local redis-server.
        f"{CACHE_HOST}:{cache_port}": f"127.0.0.1:{cloud.redis.port}",
        # The WebSocket API's execute-api origin -> the local gateway (same stage path).
        f"https://{WS_API_ID}.execute-api.{cloud.region}.{URL_SUFFIX}": callback_origin,
    }
    pseudo = {"AWS::Region": cloud.region, "AWS::AccountId": cloud.account,
              "AWS::URLSuffix": URL_SUFFIX, "AWS::Partition": "aws",
              "AWS::StackName": str(stack.stack_name)}  # fmt: skip
    return cfn.StandIns(refs=refs, attributes=attributes, pseudo=pseudo, endpoints=endpoints,
                        secret_values=cloud.secret_values)  # fmt: skip


def resolve_deployables(stack: Any, template: Mapping[str, Any], cloud: Cloud,
                        callback_origin: str) -> Deployables:  # fmt: skip
    from infra.stack import DOCKERFILE
    from tests.infra.helpers import logical_id

    local = stand_ins(stack, template, cloud, callback_origin)
    resolver = cfn.Resolver(template, local)
    project_code = template["Resources"][logical_id(stack, stack.http.function)][
        "Properties"]["Code"]
    functions: dict[str, Function] = {}
    skipped: dict[str, str] = {}
    for lid, spec in cfn.lambda_functions(template).items():
        code = template["Resources"][lid]["Properties"].get("Code")
        top = spec.handler.split(".", 1)[0]
        if code != project_code:
            if (REPO_ROOT / top).is_dir():
                raise StepFailed(f"{lid} ({spec.handler}) runs project code from another asset")
            skipped[lid] = f"{spec.runtime} {spec.handler}: CDK's own handler, not project code"
            continue
        if not spec.runtime.startswith("python"):
            raise StepFailed(f"{lid}: the project's code asset on {spec.runtime}")
        functions[lid] = Function(spec, function_name(stack, lid),
                                  resolver.function_environment(lid))

    image_env = dockerfile_env(REPO_ROOT / DOCKERFILE)
    task_id = cfn.only(cfn.of_type(template, "AWS::ECS::TaskDefinition"), "task definition")
    containers = []
    for definition in template["Resources"][task_id]["Properties"]["ContainerDefinitions"]:
        env = {**image_env, **resolver.container_environment(definition)}
        containers.append(Container(definition["Name"], resolver.container_command(definition),
                                    env))

    ws = cfn.api_routes(template, logical_id(stack, stack.websocket.api))
    http = cfn.api_routes(template, logical_id(stack, stack.http.api))
    return Deployables(functions=functions, skipped=skipped, containers=containers, ws=ws,
                       http=http,
                       schedules=cfn.schedules(template),
                       endpoints_used=set(resolver.endpoints_used),
                       endpoints=dict(local.endpoints))  # fmt: skip


def container_argv(command: list[str]) -> list[str]:
    """The container's Command as a local process (the image's `python` is this interpreter)."""
    if command and command[0] in ("python", "python3"):
        return [sys.executable, *command[1:]]
    return command


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def scheduled_time(expression: str, timezone: str, *, now: Any = None) -> str:
    """What EventBridge Scheduler puts into `<aws.scheduler.scheduled-time>`: the planned time
    of the latest firing of a `cron(M H ? * MON-FRI *)` schedule at or before `now`, in UTC."""
    from datetime import UTC, datetime, timedelta
    from zoneinfo import ZoneInfo

    fields = expression.removeprefix("cron(").removesuffix(")").split()
    if len(fields) != 6 or fields[2:5] != ["?", "*", "MON-FRI"]:
        raise StepFailed(f"schedule {expression}: only cron(M H ? * MON-FRI *) is handled here")
    minute, hour = int(fields[0]), int(fields[1])
    zone = ZoneInfo(timezone)
    current = (now or datetime.now(UTC)).astimezone(zone)
    planned = current.replace(hour=hour, minute=minute, second=0, microsecond=0)
    while planned > current or planned.weekday() >= 5:
        planned -= timedelta(days=1)
    return planned.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
