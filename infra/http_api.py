"""The HTTP API: API Gateway HTTP API (payload 2.0) in front of the FastAPI Lambda.

Every route goes to `functions.api.handler` (Mangum over the FastAPI app, which does its own
routing, validation and the admin bearer check on start/stop), through a `$default` stage with
access logs and a throttle.

The product's routes are declared here as well (the FastAPI app still routes inside the
function), so that each gets its own throttle: prices, ws_token, health and the control routes
(start/stop) have separate rate/burst as stage route settings, and anything else (docs,
openapi.json, other methods) takes the `$default` route and the stage's default throttle. A
flood of one route then cannot use up another's allowance, nor every Lambda invocation.

Identity mode (a): with an OIDC issuer and audience, an HTTP API JWT authorizer checks
`Authorization: Bearer <JWT>` on `GET /api/v1/ws_token` (and on the price routes with
`protect_prices`) before the function runs; the function reads the subject from the claims
and is told (`WS_TOKEN_IDENTITY=oidc`) to refuse a token request that carries none.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import jsii
from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.lambda_function import PythonFunction
from infra.settings import Oidc, RouteThrottle

API_HANDLER = "functions.api.handler"
PRICES_PATH = "/api/v1/current_prices"
WS_TOKEN_PATH = "/api/v1/ws_token"
HEALTH_PATH = "/api/v1/health/market_stream"
CONTROL_PATHS = ("/screeners/ltp/start", "/screeners/ltp/stop")


@dataclass(frozen=True, slots=True)
class RouteThrottles:
    prices: RouteThrottle
    ws_token: RouteThrottle
    health: RouteThrottle
    control: RouteThrottle


@jsii.implements(apigwv2.IAccessLogSettings)
class AccessLogs:
    """JSON access log lines into a log group (the L2 takes any `IAccessLogSettings`)."""

    def __init__(self, log_group: logs.ILogGroup) -> None:
        self._destination = apigwv2.LogGroupLogDestination(log_group)

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return apigw.AccessLogFormat.json_with_standard_fields(
            caller=False,
            http_method=True,
            ip=True,
            protocol=True,
            request_time=True,
            resource_path=True,
            response_length=True,
            status=True,
            user=False,
        )


class HttpApi(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code: lambda_.Code,
        environment: Mapping[str, str],
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        memory_mib: int,
        throttle_rate: int,
        throttle_burst: int,
        route_throttles: RouteThrottles,
        allowed_origins: Sequence[str],
        log_retention: logs.RetentionDays,
        oidc: Oidc | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        if oidc is not None:
            environment = {**environment, "WS_TOKEN_IDENTITY": "oidc"}
        self.handler = PythonFunction(
            self,
            "Api",
            code=code,
            handler=API_HANDLER,
            description="LTP HTTP API: current prices, stream start/stop, health",
            environment=environment,
            vpc=vpc,
            subnets=subnets,
            security_group=security_group,
            log_retention=log_retention,
            memory_mib=memory_mib,
            # DhanHQ REST fallback is bounded at a few seconds; the HTTP API gives up at 30 s.
            timeout=Duration.seconds(15),
        )
        self.function = self.handler.function
        # One integration for every route (CDK binds it once per API).
        integration = integrations.HttpLambdaIntegration("Lambda", self.function)
        self.api = apigwv2.HttpApi(
            self,
            "HttpApi",
            description="LTP HTTP API",
            create_default_stage=False,
            default_integration=integration,
            cors_preflight=apigwv2.CorsPreflightOptions(
                allow_origins=list(allowed_origins),
                allow_methods=[
                    apigwv2.CorsHttpMethod.GET,
                    apigwv2.CorsHttpMethod.POST,
                    apigwv2.CorsHttpMethod.OPTIONS,
                ],
                allow_headers=["content-type", "authorization"],
                # The page's poller waits as long as a 429/503 says; cross-origin it can read
                # the header only when exposed.
                expose_headers=["retry-after"],
                max_age=Duration.hours(1),
            ),
        )
        self.access_log_group = logs.LogGroup(
            self, "AccessLogs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.stage = apigwv2.HttpStage(
            self,
            "Stage",
            http_api=self.api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(
                rate_limit=throttle_rate, burst_limit=throttle_burst
            ),
            access_log_settings=AccessLogs(self.access_log_group),
        )
        self.authorizer = (
            authorizers.HttpJwtAuthorizer("Oidc", oidc.issuer, jwt_audience=list(oidc.audience))
            if oidc is not None else None
        )  # fmt: skip
        prices_authorizer = self.authorizer if oidc is not None and oidc.protect_prices else None
        get, post = apigwv2.HttpMethod.GET, apigwv2.HttpMethod.POST
        self.routes: dict[str, apigwv2.HttpRoute] = {}
        self.route_throttles: dict[str, RouteThrottle] = {}
        for path, methods, throttle, authorizer in (
            (PRICES_PATH, (get, post), route_throttles.prices, prices_authorizer),
            (WS_TOKEN_PATH, (get,), route_throttles.ws_token, self.authorizer),
            (HEALTH_PATH, (get,), route_throttles.health, None),
            *((path, (post,), route_throttles.control, None) for path in CONTROL_PATHS),
        ):
            routes = self.api.add_routes(path=path, methods=list(methods),
                                         integration=integration, authorizer=authorizer)
            for method, route in zip(methods, routes, strict=True):
                key = f"{method.value} {path}"
                self.routes[key] = route
                self.route_throttles[key] = throttle
        self._throttle_routes()
        self.url = self.api.api_endpoint

    def _throttle_routes(self) -> None:
        """Stage route settings, keyed by route key ("GET /api/v1/ws_token"). The property is
        plain JSON to CloudFormation (CfnStage.route_settings: Any), hence the CFN names. A
        stage may name only routes that exist: it is created after them."""
        stage = self.stage.node.default_child
        assert isinstance(stage, apigwv2.CfnStage)
        stage.route_settings = {
            key: {"ThrottlingRateLimit": t.rate, "ThrottlingBurstLimit": t.burst}
            for key, t in self.route_throttles.items()
        }
        for route in self.routes.values():
            stage.node.add_dependency(route)

