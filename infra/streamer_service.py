"""The streamer service: one Fargate task running the feed streamer and the relay bridge.

Desired count 0: the market-hours schedule and the API's start/stop scale it to 1 and back.
Deployments stop the old task before starting the new one (max 100 %), so two streamers never
write at once (the Redis lease guards that too). Each container gets SIGTERM and
`stop_timeout` seconds to flush and close before SIGKILL.

The process does not stop itself after the close here (`STREAMER_AUTO_STOP=false`): with a
desired count of 1 ECS would just start it again; the stop schedule and the API own stopping.

Container health checks (`core.liveness`): the streamer touches `/tmp/streamer.alive` after
every heartbeat attempt (10 s), the bridge `/tmp/relay.alive` at each of its heartbeats (10 s);
ECS runs `python -m core.liveness FILE 90` every 30 s and, after 3 failures past a 60 s start
period, marks the container unhealthy; both are essential, so the service replaces the task.
The file says the loop turns, not that Redis or the feed is up (the health route and the
alarms report those): a task cannot heal a dependency by restarting.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from core import liveness

STREAMER_COMMAND = ["python", "-m", "streamer"]
BRIDGE_COMMAND = ["python", "-m", "relay"]
# The containers' default LIVENESS_FILE (the template does not set it); the check's command
# runs in the image, which has core/ (streamer/Dockerfile).
STREAMER_LIVENESS_FILE = liveness.STREAMER_LIVENESS_FILE
BRIDGE_LIVENESS_FILE = liveness.RELAY_LIVENESS_FILE
LIVENESS_MAX_AGE_SECONDS = int(liveness.DEFAULT_MAX_AGE_SECONDS)


def liveness_command(path: str, max_age: int = LIVENESS_MAX_AGE_SECONDS) -> list[str]:
    """The health check's command: exit 1 when `path` is missing or older than `max_age` s."""
    return ["CMD", "python", "-m", "core.liveness", path, str(max_age)]


def liveness_check(path: str) -> ecs.HealthCheck:
    return ecs.HealthCheck(
        command=liveness_command(path),
        interval=Duration.seconds(30),
        retries=3,
        start_period=Duration.seconds(60),
        timeout=Duration.seconds(5),
    )


class StreamerService(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        image: ecs.ContainerImage,
        redis_url: str,
        redis_auth_secret: secretsmanager.ISecret,
        dhan_secret: secretsmanager.ISecret,
        fanout_function: lambda_.IFunction,
        cpu: int,
        memory_mib: int,
        stop_timeout: Duration,
        ws_mode: str,
        stream_keys: str,
        post_budget_per_second: int,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=vpc,
            container_insights_v2=ecs.ContainerInsights.ENABLED,
        )
        self.log_group = logs.LogGroup(
            self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=cpu,
            memory_limit_mib=memory_mib,
            runtime_platform=ecs.RuntimePlatform(
                cpu_architecture=ecs.CpuArchitecture.X86_64,
                operating_system_family=ecs.OperatingSystemFamily.LINUX,
            ),
        )
        redis_env: Mapping[str, str] = {"REDIS_URL": redis_url}
        redis_secrets = {"REDIS_AUTH_TOKEN": ecs.Secret.from_secrets_manager(redis_auth_secret)}

        streamer_env = {
            **redis_env,
            "DHAN_SECRET_ARN": dhan_secret.secret_arn,
            "DHANHQ_WS_MODE": ws_mode,
            "STREAMER_AUTO_STOP": "false",
        }
        if stream_keys:
            streamer_env["STREAM_KEYS"] = stream_keys
        self.streamer_container = self.task_definition.add_container(
            "streamer",
            image=image,
            command=STREAMER_COMMAND,
            essential=True,
            environment=streamer_env,
            secrets={
                **redis_secrets,
                # Read at task start; the streamer also re-reads DHAN_SECRET_ARN on a 807.
                "DHAN_CLIENT_ID": ecs.Secret.from_secrets_manager(dhan_secret, "client_id"),
                "DHAN_ACCESS_TOKEN": ecs.Secret.from_secrets_manager(dhan_secret, "access_token"),
            },
            stop_timeout=stop_timeout,
            health_check=liveness_check(STREAMER_LIVENESS_FILE),
            logging=ecs.LogDriver.aws_logs(stream_prefix="streamer", log_group=self.log_group),
        )
        self.bridge_container = self.task_definition.add_container(
            "bridge",
            image=image,
            command=BRIDGE_COMMAND,
            essential=True,
            environment={
                **redis_env,
                "FANOUT_FUNCTION_NAME": fanout_function.function_name,
                "WS_POST_BUDGET_PER_SECOND": str(post_budget_per_second),
            },
            secrets=redis_secrets,
            stop_timeout=stop_timeout,
            health_check=liveness_check(BRIDGE_LIVENESS_FILE),
            logging=ecs.LogDriver.aws_logs(stream_prefix="bridge", log_group=self.log_group),
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="LTP streamer task: egress only (feed, DhanHQ, Lambda, Redis)",
            allow_all_outbound=True,
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=self.cluster,
            task_definition=self.task_definition,
            desired_count=0,
            min_healthy_percent=0,
            max_healthy_percent=100,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            assign_public_ip=False,
            enable_execute_command=False,
        )
