"""HTTP API, WebSocket API, fan-out and the Lambda functions behind them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from aws_cdk.assertions import Match, Template

from tests.infra.helpers import Synthesized, as_list, logical_id, references, statements

HANDLERS = {
    "functions.api.handler",
    "functions.quotes.handler",
    "functions.ws.authorize",
    "functions.ws.connect",
    "functions.ws.disconnect",
    "functions.ws.message",
    "functions.fanout.handler",
    "functions.schedule.handler",
    "functions.instruments.handler",
    "functions.token.handler",
}


def project_functions(synthesized: Synthesized) -> dict[str, dict[str, Any]]:
    return {
        f["Properties"]["Handler"]: f["Properties"]
        for f in synthesized.of_type("AWS::Lambda::Function")
        if f["Properties"].get("Handler", "").startswith("functions.")
    }


def test_every_handler_is_a_python_312_function_in_the_vpc(synthesized: Synthesized) -> None:
    found = project_functions(synthesized)
    assert set(found) == HANDLERS
    log_groups = {
        name for name, r in synthesized.resources.items() if r["Type"] == "AWS::Logs::LogGroup"
    }
    for handler, props in found.items():
        assert props["Runtime"] == "python3.12", handler
        assert props["Architectures"] == ["x86_64"], handler
        assert len(props["VpcConfig"]["SubnetIds"]) == 2, handler
        # Each function logs to its own group with a retention (no never-expiring default).
        assert props["LoggingConfig"]["LogGroup"]["Ref"] in log_groups, handler


def test_functions_get_the_contract_environment(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    found = project_functions(synthesized)
    env = {handler: props["Environment"]["Variables"] for handler, props in found.items()}
    for handler in HANDLERS - {"functions.ws.authorize"}:
        assert env[handler]["REDIS_AUTH_SECRET_ARN"] == {
            "Ref": logical_id(stack, stack.cache.auth_secret)
        }, handler
    service_name = {"Fn::GetAtt": [logical_id(stack, stack.streamer.service), "Name"]}
    for handler in ("functions.api.handler", "functions.schedule.handler"):
        assert env[handler]["STREAMER_SERVICE"] == service_name
        assert env[handler]["STREAMER_CLUSTER"] == {
            "Ref": logical_id(stack, stack.streamer.cluster)
        }
    api = env["functions.api.handler"]
    assert api["ADMIN_SECRET_ARN"] == {"Ref": logical_id(stack, stack.admin_secret)}
    assert api["QUOTE_FUNCTION_NAME"] == {"Ref": logical_id(stack, stack.quotes.function)}
    assert "DHAN_SECRET_ARN" not in api
    quotes = env["functions.quotes.handler"]
    assert quotes["DHAN_SECRET_ARN"] == {"Ref": logical_id(stack, stack.dhan_secret)}
    assert env["functions.ws.authorize"]["WS_TOKEN_SECRET_ARN"] == {
        "Ref": logical_id(stack, stack.ws_token_secret)
    }
    for handler in ("functions.fanout.handler", "functions.ws.message"):
        callback = str(env[handler]["WEBSOCKET_CALLBACK_URL"])
        assert logical_id(stack, stack.websocket.api) in callback and "/live" in callback


def test_the_http_api_sends_everything_to_the_api_function(
    synthesized: Synthesized, template: Template
) -> None:
    stack = synthesized.stack
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Integration",
        {
            "IntegrationType": "AWS_PROXY",
            "PayloadFormatVersion": "2.0",
            "IntegrationUri": {"Fn::GetAtt": [logical_id(stack, stack.http.function), "Arn"]},
        },
    )
    template.has_resource_properties("AWS::ApiGatewayV2::Route", {"RouteKey": "$default",
                                                                  "AuthorizationType": "NONE"})
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Stage",
        {
            "StageName": "$default",
            "AutoDeploy": True,
            "DefaultRouteSettings": {"ThrottlingRateLimit": 200, "ThrottlingBurstLimit": 400},
            "AccessLogSettings": {"Format": Match.string_like_regexp(r"\$context\.requestId")},
        },
    )
    # CORS allows the CloudFront page only.
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Api",
        {
            "ProtocolType": "HTTP",
            "CorsConfiguration": {
                "AllowOrigins": [
                    {"Fn::Join": ["", ["https://", {"Fn::GetAtt": [
                        logical_id(stack, stack.web.distribution), "DomainName"]}]]}
                ]
            },
        },
    )


def test_the_websocket_api_routes_and_its_connect_authorizer(
    synthesized: Synthesized, template: Template
) -> None:
    stack = synthesized.stack
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Api",
        {"ProtocolType": "WEBSOCKET", "RouteSelectionExpression": "$request.body.action"},
    )
    api = logical_id(stack, stack.websocket.api)
    routes = {
        r["Properties"]["RouteKey"]: r["Properties"]
        for r in synthesized.of_type("AWS::ApiGatewayV2::Route")
        if r["Properties"]["ApiId"] == {"Ref": api}
    }
    assert set(routes) == {"$connect", "$disconnect", "$default", "subscribe", "unsubscribe",
                           "ping"}  # fmt: skip
    assert routes["$connect"]["AuthorizationType"] == "CUSTOM"
    assert all(r["AuthorizationType"] == "NONE" for k, r in routes.items() if k != "$connect")
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Authorizer",
        {
            "AuthorizerType": "REQUEST",
            "IdentitySource": ["route.request.querystring.token"],
            "AuthorizerUri": Match.object_like({"Fn::Join": ["", Match.array_with([
                {"Fn::GetAtt": [logical_id(stack, stack.websocket.authorize.function), "Arn"]},
            ])]}),
        },
    )
    # The three actions and $default go to the message handler.
    message_targets = {str(routes[k]["Target"]) for k in ("$default", "subscribe",
                                                           "unsubscribe", "ping")}  # fmt: skip
    assert len(message_targets) == 1
    template.has_resource_properties(
        "AWS::ApiGatewayV2::Stage",
        {"StageName": "live", "ApiId": {"Ref": api},
         "AccessLogSettings": Match.object_like({"Format": Match.string_like_regexp("routeKey")})},
    )


def test_the_fanout_reserves_concurrency_and_drops_stale_windows(
    synthesized: Synthesized, template: Template
) -> None:
    stack = synthesized.stack
    fanout = project_functions(synthesized)["functions.fanout.handler"]
    assert fanout["ReservedConcurrentExecutions"] == 20
    assert fanout["MemorySize"] == 1024
    template.has_resource_properties(
        "AWS::Lambda::EventInvokeConfig",
        {
            "FunctionName": {"Ref": logical_id(stack, stack.fanout.function)},
            "MaximumRetryAttempts": 0,
            "MaximumEventAgeInSeconds": 60,
        },
    )


def test_failed_or_expired_fanout_events_land_in_an_encrypted_queue(
    synthesized: Synthesized, template: Template
) -> None:
    stack = synthesized.stack
    queue = logical_id(stack, stack.fanout.failures)
    fanout = synthesized.resource(stack.fanout.function)["Properties"]
    # The function's dead-letter queue: what failed all (zero) retries or outlived 60 s.
    assert fanout["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": [queue, "Arn"]}}
    props = synthesized.resource(stack.fanout.failures)["Properties"]
    assert props["SqsManagedSseEnabled"] is True
    assert 2 * 86400 <= props["MessageRetentionPeriod"] <= 7 * 86400
    assert props["MaximumMessageSize"] >= 900_000  # a whole event (realtime.window)
    template.has_resource_properties("AWS::SQS::QueuePolicy", {
        "Queues": [{"Ref": queue}],
        "PolicyDocument": {"Statement": Match.array_with([Match.object_like({
            "Effect": "Deny", "Condition": {"Bool": {"aws:SecureTransport": "false"}}})])},
    })


def test_only_the_fanout_may_send_to_its_failure_queue_and_only_send(
    synthesized: Synthesized,
) -> None:
    stack = synthesized.stack
    queue = logical_id(stack, stack.fanout.failures)
    grants = [(policy, statement) for policy, statement in statements(synthesized.resources)
              if references(statement.get("Resource"), queue)]
    assert grants, "nothing may write to the failure queue"
    roles: set[str] = set()
    for policy, statement in grants:
        assert statement["Effect"] == "Allow"
        assert as_list(statement["Action"]) == ["sqs:SendMessage"]
        assert statement["Resource"] == {"Fn::GetAtt": [queue, "Arn"]}
        roles.update(r["Ref"] for r in synthesized.resources[policy]["Properties"]["Roles"])
    role = stack.fanout.function.role
    assert role is not None
    assert roles == {logical_id(stack, role)}


def test_an_alarm_fires_while_the_failure_queue_holds_anything(
    synthesized: Synthesized,
) -> None:
    stack = synthesized.stack
    alarm = synthesized.resource(stack.fanout.failures_alarm)["Properties"]
    assert alarm["ComparisonOperator"] == "GreaterThanThreshold" and alarm["Threshold"] == 0
    assert alarm["EvaluationPeriods"] == 1 and alarm["TreatMissingData"] == "notBreaching"
    stats = {m["Id"]: m["MetricStat"] for m in alarm["Metrics"] if "MetricStat" in m}
    (expression,) = [m for m in alarm["Metrics"] if "Expression" in m]
    assert expression["Expression"] == "FILL(failed, 0) + FILL(undeliverable, 0)"
    visible = stats["failed"]["Metric"]
    assert visible["Namespace"] == "AWS/SQS"
    assert visible["MetricName"] == "ApproximateNumberOfMessagesVisible"
    assert visible["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": [
        logical_id(stack, stack.fanout.failures), "QueueName"]}}]
    assert stats["failed"]["Stat"] == "Maximum"
    lost = stats["undeliverable"]["Metric"]
    assert (lost["Namespace"], lost["MetricName"]) == ("AWS/Lambda", "DeadLetterErrors")
    assert lost["Dimensions"] == [{"Name": "FunctionName", "Value": {
        "Ref": logical_id(stack, stack.fanout.function)}}]


def test_every_handler_string_names_a_callable_in_the_bundled_packages(
    synthesized: Synthesized,
) -> None:
    handlers = sorted(project_functions(synthesized))
    for handler in handlers:
        assert handler.split(".")[0] in ("functions", "core"), handler  # what is bundled
    # A fresh interpreter, as a cold Lambda: building Mangum sets up an event loop of its own,
    # which must not leak into this test process.
    check = (
        "import importlib, sys\n"
        "for h in sys.argv[1:]:\n"
        "    m, _, a = h.rpartition('.')\n"
        "    assert callable(getattr(importlib.import_module(m), a)), h\n"
    )
    subprocess.run([sys.executable, "-c", check, *handlers], check=True, timeout=120,
                   cwd=Path(__file__).resolve().parents[2])