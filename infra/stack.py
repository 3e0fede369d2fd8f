"""The whole deployment: composes the units, wires their settings and does every grant.

Grants live here (not inside the units) so that each permission is visible in one place and
scoped to one resource: the API and the scheduler may update/describe the streamer service
only; the bridge (in the streamer task) may invoke the fan-out function only; the API's
function may invoke the quotes function only; the message handler and the fan-out may manage
connections of this WebSocket API's stage only; each secret is readable by the functions that
use it and nothing else (the Dhan secret: the streamer task, the quotes function and the token
renewal, never a public function); only the token renewal may put a new version of the Dhan
secret.

Environment contract (the names every deployable reads; see ARCHITECTURE.md):
  REDIS_URL               rediss://<primary endpoint>:6379/0 (TLS, cluster mode off)
  REDIS_AUTH_SECRET_ARN   Lambdas: secret holding the Redis AUTH token (plain string)
  REDIS_AUTH_TOKEN        Fargate containers: the AUTH token itself (ECS secret)
  DHAN_SECRET_ARN         JSON {"client_id", "access_token"}
  ADMIN_SECRET_ARN        the admin bearer key (plain string)
  WS_TOKEN_SECRET_ARN     the WebSocket token signing key (plain string)
  STREAMER_CLUSTER, STREAMER_SERVICE, WEBSOCKET_CALLBACK_URL, WS_SHARDS, FANOUT_FUNCTION_NAME,
  QUOTE_FUNCTION_NAME     the API's function: the private function that fetches its misses
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aws_cdk import CfnOutput, Duration, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from core.emf import METRICS_NAMESPACE
from core.secrets import PLACEHOLDER_CLIENT_ID
from infra.bundling import REPO_ROOT, default_plan, lambda_code
from infra.cache import Cache
from infra.fanout import Fanout
from infra.http_api import WS_TOKEN_PATH, HttpApi, RouteThrottles
from infra.instruments import InstrumentMaster
from infra.monitoring import Monitoring
from infra.nag import acknowledge_findings
from infra.network import Network
from infra.quotes import QuoteFunction
from infra.schedule import MarketSchedule
from infra.settings import DeploySettings
from infra.streamer_service import StreamerService
from infra.token_renewal import TokenRenewal, grant_secret_renewal
from infra.web import WebHosting
from infra.websocket_api import WebSocketApi

DOCKERFILE = "streamer/Dockerfile"


class LtpStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploySettings,
        repo_root: Path = REPO_ROOT,
        lambda_asset: lambda_.Code | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings
        retention = _retention(settings.log_retention_days)

        self.network = Network(
            self,
            "Network",
            max_azs=settings.max_azs,
            nat_gateways=settings.nat_gateways,
            log_retention=retention,
        )
        vpc = self.network.vpc
        private = self.network.private_subnets

        self.cache = Cache(
            self,
            "Cache",
            vpc=vpc,
            subnets=private,
            node_type=settings.cache_node_type,
            engine=settings.cache_engine,
            engine_version=settings.cache_engine_version,
            replicas=settings.cache_replicas,
            multi_az=settings.cache_multi_az,
        )

        self.dhan_secret = secretsmanager.Secret(
            self,
            "DhanSecret",
            description='DhanHQ credentials: {"client_id": "...", "access_token": "..."}; '
            "put the real values after the first deploy",
            # A placeholder with both fields, so that ECS can inject them before the real values
            # are put; generated once at creation, never overwritten by later deploys.
            generate_secret_string=secretsmanager.SecretStringGenerator(
                secret_string_template=json.dumps({"client_id": PLACEHOLDER_CLIENT_ID}),
                generate_string_key="access_token",
                exclude_punctuation=True,
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.admin_secret = secretsmanager.Secret(
            self,
            "AdminSecret",
            description="Bearer key for POST /screeners/ltp/start and /stop",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                exclude_punctuation=True, password_length=48
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.ws_token_secret = secretsmanager.Secret(
            self,
            "WsTokenSecret",
            description="HMAC key signing WebSocket connect tokens",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                exclude_punctuation=True, password_length=64
            ),
            removal_policy=RemovalPolicy.DESTROY,
        )

        code = lambda_asset or lambda_code(default_plan(repo_root))
        self.lambda_security_group = ec2.SecurityGroup(
            self,
            "LambdaSecurityGroup",
            vpc=vpc,
            description="LTP Lambda functions: egress (Redis, NAT to AWS APIs and DhanHQ)",
            allow_all_outbound=True,
        )
        function_network: dict[str, Any] = {
            "vpc": vpc,
            "subnets": private,
            "security_group": self.lambda_security_group,
            "log_retention": retention,
        }
        base_env = {
            "REDIS_URL": self.cache.redis_url,
            "REDIS_AUTH_SECRET_ARN": self.cache.auth_secret.secret_arn,
            "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
        }
        # The WebSocket handlers and the fan-out must agree on the shard count; the registry's
        # cap on connections follows the cache node's memory.
        realtime_env = {**base_env, "WS_SHARDS": str(settings.ws_shards),
                        "WS_MAX_CONNECTIONS": str(settings.ws_max_connections)}

        self.websocket = WebSocketApi(
            self,
            "WebSocket",
            code=code,
            environment=realtime_env,
            authorizer_environment={
                "WS_TOKEN_SECRET_ARN": self.ws_token_secret.secret_arn,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            },
            memory_mib=settings.lambda_memory_mib,
            stage_name=settings.ws_stage_name,
            throttle_rate=settings.ws_throttle_rate,
            throttle_burst=settings.ws_throttle_burst,
            **function_network,
        )
        self.fanout = Fanout(
            self,
            "Fanout",
            code=code,
            environment=realtime_env,
            callback_url=self.websocket.callback_url,
            memory_mib=settings.fanout_memory_mib,
            timeout=Duration.seconds(settings.fanout_timeout_seconds),
            reserved_concurrency=settings.fanout_reserved_concurrency or None,
            max_workers=settings.fanout_max_workers,
            **function_network,
        )

        self.streamer = StreamerService(
            self,
            "Streamer",
            vpc=vpc,
            subnets=private,
            image=ecs.ContainerImage.from_asset(
                str(repo_root),
                file=DOCKERFILE,
                platform=ecr_assets.Platform.LINUX_AMD64,
            ),
            redis_url=self.cache.redis_url,
            redis_auth_secret=self.cache.auth_secret,
            dhan_secret=self.dhan_secret,
            fanout_function=self.fanout.function,
            cpu=settings.streamer_cpu,
            memory_mib=settings.streamer_memory_mib,
            stop_timeout=Duration.seconds(settings.streamer_stop_timeout_seconds),
            ws_mode=settings.ws_mode,
            stream_keys=settings.watchlist_keys,
            post_budget_per_second=settings.post_budget_per_second,
            log_retention=retention,
        )

        self.web = WebHosting(
            self, "Web", site_dir=repo_root / "web", price_class=settings.web_price_class
        )

        stream_control_env = {
            "STREAMER_CLUSTER": self.streamer.cluster.cluster_name,
            "STREAMER_SERVICE": self.streamer.service.service_name,
        }
        # The API's cache misses go to DhanHQ through this private function, so that the public
        # API function never holds the token (which could also place orders).
        self.quotes = QuoteFunction(
            self,
            "Quotes",
            code=code,
            environment={**base_env, "DHAN_SECRET_ARN": self.dhan_secret.secret_arn},
            **function_network,
        )
        self.http = HttpApi(
            self,
            "Http",
            code=code,
            environment={
                **base_env,
                **stream_control_env,
                "QUOTE_FUNCTION_NAME": self.quotes.function.function_name,
                "ADMIN_SECRET_ARN": self.admin_secret.secret_arn,
                "WS_TOKEN_SECRET_ARN": self.ws_token_secret.secret_arn,
                "DHANHQ_WS_MODE": settings.ws_mode,
            },
            memory_mib=settings.lambda_memory_mib,
            throttle_rate=settings.http_throttle_rate,
            throttle_burst=settings.http_throttle_burst,
            route_throttles=RouteThrottles(
                prices=settings.throttle_prices,
                ws_token=settings.throttle_ws_token,
                health=settings.throttle_health,
                control=settings.throttle_control,
            ),
            oidc=settings.oidc,
            allowed_origins=[self.web.url],
            **function_network,
        )
        schedule_env = {**base_env, **stream_control_env}
        self.schedule = MarketSchedule(
            self,
            "Schedule",
            code=code,
            environment=schedule_env,
            memory_mib=settings.lambda_memory_mib,
            start=settings.start_clock,
            stop=settings.stop_clock,
            enabled=settings.schedule_enabled,
            **function_network,
        )
        # Loads the scrip master on weekdays and once per deploy, after the cache exists.
        self.instruments = InstrumentMaster(
            self,
            "Instruments",
            code=code,
            environment=base_env,
            load_at=settings.instruments_load_clock,
            run_after=[self.cache],
            **function_network,
        )
        # Keeps the 24-hour DhanHQ token in the Dhan secret fresh; the streamer and the quotes
        # function read it from there.
        self.token_renewal = TokenRenewal(
            self,
            "TokenRenewal",
            code=code,
            environment={**base_env, "DHAN_SECRET_ARN": self.dhan_secret.secret_arn},
            renew_below_seconds=settings.token_renew_below_seconds,
            renew_urgent_seconds=settings.token_renew_urgent_seconds,
            **function_network,
        )

        self._grant()
        self.site_deployment = self.web.deploy_site(
            config={
                "apiUrl": self.http.url,
                "wsUrl": self.websocket.url,
                # The $connect authorizer needs a signed token; the page fetches one per connect.
                "tokenUrl": f"{self.http.url}{WS_TOKEN_PATH}",
            }
        )
        self.monitoring = Monitoring(
            self,
            "Monitoring",
            service=self.streamer.service,
            cluster=self.streamer.cluster,
            fanout=self.fanout.function,
            schedule=self.schedule.function,
            websocket_functions=[h.function for h in self.websocket.functions],
            http_api=self.http.api,
            websocket_api=self.websocket.api,
            websocket_stage=self.websocket.stage,
            cache_cluster_id=f"{self.cache.replication_group.ref}-001",
            alarm_email=settings.alarm_email,
            monthly_budget_usd=settings.monthly_budget_usd,
            extra_alarms=[
                self.fanout.failures_alarm,
                self.instruments.errors_alarm,
                self.token_renewal.errors_alarm,
                self.token_renewal.seconds_left_alarm,
                self.quotes.errors_alarm,
            ],
        )
        self._outputs()
        acknowledge_findings(self)

    @property
    def redis_functions(self) -> list[lambda_.Function]:
        """Every function that talks to Redis (all but the token authorizer)."""
        return [
            self.http.function,
            self.quotes.function,
            self.websocket.connect.function,
            self.websocket.disconnect.function,
            self.websocket.message.function,
            self.fanout.function,
            self.schedule.function,
            self.instruments.function,
            self.token_renewal.function,
        ]

    def _grant(self) -> None:
        task_role = self.streamer.task_definition.task_role
        # The bridge's only AWS call (unqualified, so no version wildcard); the streamer
        # re-reads the DhanHQ token after a 807.
        task_role.add_to_principal_policy(
            iam.PolicyStatement(
                sid="InvokeTheFanout",
                actions=["lambda:InvokeFunction"],
                resources=[self.fanout.function.function_arn],
            )
        )
        self.dhan_secret.grant_read(task_role)

        self.cache.allow_from(self.lambda_security_group, "Lambda functions")
        self.cache.allow_from(self.streamer.security_group, "streamer task")
        for function in self.redis_functions:
            self.cache.auth_secret.grant_read(function)

        self.websocket.stage.grant_management_api_access(self.fanout.function)
        # The API's misses: the quotes function (unqualified, so no version wildcard) is the
        # API's only way to DhanHQ; it never reads the Dhan secret itself.
        self.http.function.add_to_role_policy(
            iam.PolicyStatement(
                sid="InvokeTheQuotesFunction",
                actions=["lambda:InvokeFunction"],
                resources=[self.quotes.function.function_arn],
            )
        )
        self.dhan_secret.grant_read(self.quotes.function)
        self.admin_secret.grant_read(self.http.function)
        self.ws_token_secret.grant_read(self.http.function)
        self.ws_token_secret.grant_read(self.websocket.authorize.function)
        # Read and put a new version only: not grant_write, whose UpdateSecret could change
        # the secret's description or key.
        grant_secret_renewal(self.dhan_secret, self.token_renewal.function)

        scale_streamer = iam.PolicyStatement(
            sid="ScaleTheStreamerService",
            actions=["ecs:UpdateService", "ecs:DescribeServices"],
            resources=[self.streamer.service.service_arn],
        )
        for function in (self.http.function, self.schedule.function):
            function.add_to_role_policy(scale_streamer)

    def _outputs(self) -> None:
        outputs = {
            "WebUrl": (self.web.url, "The screener page"),
            "ApiUrl": (self.http.url, "HTTP API base URL"),
            "WebSocketUrl": (self.websocket.url, "WebSocket API URL (wss://)"),
            "DhanSecretArn": (self.dhan_secret.secret_arn, "Put DhanHQ client_id/access_token"),
            "AdminSecretArn": (self.admin_secret.secret_arn, "Admin bearer key (generated)"),
            "WsTokenSecretArn": (self.ws_token_secret.secret_arn, "WS token key (generated)"),
            "TokenRenewalFunction": (self.token_renewal.function.function_name,
                                     "DhanHQ token renewal (every 30 min; invoke to check)"),
            "StreamerCluster": (self.streamer.cluster.cluster_name, "ECS cluster"),
            "StreamerService": (self.streamer.service.service_name, "ECS service (desired 0)"),
            "CacheEndpoint": (self.cache.endpoint_address, "ElastiCache primary endpoint"),
            "AlarmTopicArn": (self.monitoring.topic.topic_arn, "SNS topic of the alarms"),
            "Dashboard": (self.monitoring.dashboard.dashboard_name, "CloudWatch dashboard"),
        }
        for name, (value, description) in outputs.items():
            CfnOutput(self, name, value=value, description=description)


_RETENTION_DAYS = (
    (1, logs.RetentionDays.ONE_DAY),
    (3, logs.RetentionDays.THREE_DAYS),
    (5, logs.RetentionDays.FIVE_DAYS),
    (7, logs.RetentionDays.ONE_WEEK),
    (14, logs.RetentionDays.TWO_WEEKS),
    (30, logs.RetentionDays.ONE_MONTH),
    (60, logs.RetentionDays.TWO_MONTHS),
    (90, logs.RetentionDays.THREE_MONTHS),
    (180, logs.RetentionDays.SIX_MONTHS),
    (365, logs.RetentionDays.ONE_YEAR),
    (731, logs.RetentionDays.TWO_YEARS),
    (1827, logs.RetentionDays.FIVE_YEARS),
    (3653, logs.RetentionDays.TEN_YEARS),
)


def _retention(days: int) -> logs.RetentionDays:
    """The shortest CloudWatch Logs retention that keeps logs at least `days` days."""
    for limit, member in _RETENTION_DAYS:
        if days <= limit:
            return member
    return logs.RetentionDays.INFINITE
