"""The HTTP API: API Gateway HTTP API (payload 2.0) in front of the FastAPI Lambda.

Every route goes to `functions.api.handler` (Mangum over the FastAPI app, which does its own
routing, validation and the admin bearer check on start/stop), through a `$default` stage with
access logs and a throttle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jsii
from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.lambda_function import PythonFunction

API_HANDLER = "functions.api.handler"


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
        allowed_origins: Sequence[str],
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
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
        self.api = apigwv2.HttpApi(
            self,
            "HttpApi",
            description="LTP HTTP API",
            create_default_stage=False,
            default_integration=integrations.HttpLambdaIntegration("Lambda", self.function),
            cors_preflight=apigwv2.CorsPreflightOptions(
                allow_origins=list(allowed_origins),
                allow_methods=[
                    apigwv2.CorsHttpMethod.GET,
                    apigwv2.CorsHttpMethod.POST,
                    apigwv2.CorsHttpMethod.OPTIONS,
                ],
                allow_headers=["content-type", "authorization"],
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
        self.url = self.api.api_endpoint
