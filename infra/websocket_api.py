"""The WebSocket API: `$connect` (with the token authorizer), `$disconnect`, `$default` and the
`subscribe` / `unsubscribe` / `ping` actions, on one stage with access logs and a throttle.

Browsers cannot set headers on a WebSocket, so the authorizer reads the signed token from the
query string (`?token=...`); API Gateway rejects a connect without one before any Lambda runs.
The message handler posts the subscription snapshot through `@connections`, so it (and the
fan-out, granted in the stack) may manage connections of this API's stage only.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_authorizers as authorizers
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.http_api import AccessLogs
from infra.lambda_function import PythonFunction

AUTHORIZE_HANDLER = "functions.ws.authorize"
CONNECT_HANDLER = "functions.ws.connect"
DISCONNECT_HANDLER = "functions.ws.disconnect"
MESSAGE_HANDLER = "functions.ws.message"
CUSTOM_ROUTES = ("subscribe", "unsubscribe", "ping")
TOKEN_IDENTITY_SOURCE = "route.request.querystring.token"


class WebSocketApi(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code: lambda_.Code,
        environment: Mapping[str, str],
        authorizer_environment: Mapping[str, str],
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        memory_mib: int,
        stage_name: str,
        throttle_rate: int,
        throttle_burst: int,
        log_retention: logs.RetentionDays,
        connect_throttle_rate: int = 500,
        connect_throttle_burst: int = 1000,
    ) -> None:
        super().__init__(scope, construct_id)

        def handler_function(
            construct_id: str, handler: str, description: str, env: Mapping[str, str]
        ) -> PythonFunction:
            return PythonFunction(
                self,
                construct_id,
                code=code,
                handler=handler,
                description=description,
                environment=env,
                vpc=vpc,
                subnets=subnets,
                security_group=security_group,
                log_retention=log_retention,
                memory_mib=memory_mib,
                timeout=Duration.seconds(10),
            )

        # The API is created first so that handlers can be told their callback URL.
        self.api = apigwv2.WebSocketApi(
            self,
            "WebSocketApi",
            description="LTP live prices",
            route_selection_expression="$request.body.action",
        )
        self.stage = apigwv2.WebSocketStage(
            self,
            "Stage",
            web_socket_api=self.api,
            stage_name=stage_name,
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(
                rate_limit=throttle_rate, burst_limit=throttle_burst
            ),
            access_log_settings=_WebSocketAccessLogs(
                logs.LogGroup(
                    self,
                    "AccessLogs",
                    retention=log_retention,
                    removal_policy=RemovalPolicy.DESTROY,
                )
            ),
        )
        self.callback_url = self.stage.callback_url
        self.url = self.stage.url
        handler_env = {**environment, "WEBSOCKET_CALLBACK_URL": self.callback_url}

        self.authorize = handler_function(
            "Authorize", AUTHORIZE_HANDLER, "LTP WebSocket $connect token check",
            authorizer_environment,
        )
        self.connect = handler_function(
            "Connect", CONNECT_HANDLER, "LTP WebSocket $connect: register", handler_env
        )
        self.disconnect = handler_function(
            "Disconnect", DISCONNECT_HANDLER, "LTP WebSocket $disconnect: forget", handler_env
        )
        self.message = handler_function(
            "Message", MESSAGE_HANDLER, "LTP WebSocket subscribe/unsubscribe/ping", handler_env
        )

        authorizer = authorizers.WebSocketLambdaAuthorizer(
            "TokenAuthorizer",
            self.authorize.function,
            identity_source=[TOKEN_IDENTITY_SOURCE],
        )
        connect_route = self.api.add_route(
            "$connect",
            integration=integrations.WebSocketLambdaIntegration(
                "Connect", self.connect.function
            ),
            authorizer=authorizer,
        )
        # `$connect` gets a bucket of its own: one client's message flood (each message takes
        # from the stage's bucket) must not leave the other pages unable to connect. 500/s is
        # AWS's default quota of new connections per account and region: a reconnect storm
        # (every page after a cache wipe) is not slowed below what AWS allows anyway.
        stage = self.stage.node.default_child
        assert isinstance(stage, apigwv2.CfnStage)
        stage.route_settings = {"$connect": {"ThrottlingRateLimit": connect_throttle_rate,
                                             "ThrottlingBurstLimit": connect_throttle_burst}}
        stage.node.add_dependency(connect_route)  # a stage may name existing routes only
        self.api.add_route(
            "$disconnect",
            integration=integrations.WebSocketLambdaIntegration(
                "Disconnect", self.disconnect.function
            ),
        )
        message_integration = integrations.WebSocketLambdaIntegration(
            "Message", self.message.function
        )
        for route in ("$default", *CUSTOM_ROUTES):
            self.api.add_route(route, integration=message_integration)
        self.stage.grant_management_api_access(self.message.function)

    @property
    def functions(self) -> list[PythonFunction]:
        return [self.authorize, self.connect, self.disconnect, self.message]


class _WebSocketAccessLogs(AccessLogs):
    """WebSocket stages have no HTTP method or path; log route, event and connection."""

    @property
    def format(self) -> apigw.AccessLogFormat:
        return apigw.AccessLogFormat.custom(
            '{"requestId":"$context.requestId","ip":"$context.identity.sourceIp",'
            '"requestTime":"$context.requestTime","routeKey":"$context.routeKey",'
            '"eventType":"$context.eventType","connectionId":"$context.connectionId",'
            '"status":"$context.status","error":"$context.error.message",'
            '"authorizerError":"$context.authorizer.error",'
            '"integrationError":"$context.integration.error"}'
        )
