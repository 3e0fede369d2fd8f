"""The DhanHQ token renewal in the template: function, 30-minute schedule, no deploy-time
trigger, read-and-put-only IAM on the Dhan secret, its two alarms and its context settings."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.assertions import Match, Template

from core.emf import METRICS_NAMESPACE
from core.errors import ConfigError
from infra.settings import DeploySettings
from infra.token_renewal import TOKEN_HANDLER, TokenRenewal, grant_secret_renewal
from tests.infra.helpers import (
    Synthesized,
    as_list,
    logical_id,
    policies_of_role,
    references,
    statements,
)


def function_props(synthesized: Synthesized) -> dict[str, Any]:
    props: dict[str, Any] = synthesized.resource(synthesized.stack.token_renewal.function)[
        "Properties"]
    return props


def role_of_function(synthesized: Synthesized) -> str:
    role = synthesized.stack.token_renewal.function.role
    assert role is not None
    return logical_id(synthesized.stack, role)


def test_the_function_runs_in_the_vpc_with_the_redis_and_dhan_environment(
    synthesized: Synthesized,
) -> None:
    stack = synthesized.stack
    props = function_props(synthesized)
    assert props["Handler"] == TOKEN_HANDLER == "functions.token.handler"
    assert props["Runtime"] == "python3.12"
    assert props["MemorySize"] == 256 and props["Timeout"] == 60
    assert props["Description"] == ("LTP DhanHQ token renewal (every 30 min; renews before "
                                    "expiry and outside the session)")  # fmt: skip
    # The same subnets and security group as the other Redis-using functions.
    assert props["VpcConfig"] == synthesized.resource(stack.instruments.function)[
        "Properties"]["VpcConfig"]
    env = props["Environment"]["Variables"]
    assert set(env) == {"REDIS_URL", "REDIS_AUTH_SECRET_ARN", "POWERTOOLS_METRICS_NAMESPACE",
                        "DHAN_SECRET_ARN", "TOKEN_RENEW_BELOW_SECONDS",
                        "TOKEN_RENEW_URGENT_SECONDS"}  # fmt: skip
    # Redis exactly as the instrument master gets it.
    instruments_env = synthesized.resource(stack.instruments.function)["Properties"][
        "Environment"]["Variables"]
    for name in ("REDIS_URL", "REDIS_AUTH_SECRET_ARN", "POWERTOOLS_METRICS_NAMESPACE"):
        assert env[name] == instruments_env[name], name
    assert env["REDIS_AUTH_SECRET_ARN"] == {"Ref": logical_id(stack, stack.cache.auth_secret)}
    assert env["DHAN_SECRET_ARN"] == {"Ref": logical_id(stack, stack.dhan_secret)}
    assert env["POWERTOOLS_METRICS_NAMESPACE"] == METRICS_NAMESPACE
    # cdk.json's defaults.
    assert (env["TOKEN_RENEW_BELOW_SECONDS"], env["TOKEN_RENEW_URGENT_SECONDS"]) == (
        "57600", "14400")
    # Created once the private subnets route to the NAT: the renewal goes out through it.
    resource = synthesized.resource(stack.token_renewal.function)
    assert any("DefaultRoute" in d for d in resource["DependsOn"])
    function = logical_id(stack, stack.token_renewal.function)
    config = [r["Properties"] for r in synthesized.of_type("AWS::Lambda::EventInvokeConfig")
              if r["Properties"]["FunctionName"] == {"Ref": function}]  # fmt: skip
    assert config == [{"FunctionName": {"Ref": function}, "MaximumEventAgeInSeconds": 1800,
                       "MaximumRetryAttempts": 2, "Qualifier": "$LATEST"}]  # fmt: skip
    # Its own log group, with the stack's retention.
    log_group = props["LoggingConfig"]["LogGroup"]["Ref"]
    assert synthesized.resources[log_group]["Properties"]["RetentionInDays"] == 30


def test_it_runs_every_30_minutes_always(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    function = logical_id(stack, stack.token_renewal.function)
    (schedule,) = [s["Properties"] for s in synthesized.of_type("AWS::Scheduler::Schedule")
                   if references(s["Properties"]["Target"]["Arn"], function)]  # fmt: skip
    assert schedule == synthesized.resource(stack.token_renewal.schedule)["Properties"]
    assert schedule["ScheduleExpression"] == "rate(30 minutes)"
    assert schedule["State"] == "ENABLED"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    target = schedule["Target"]
    assert target["Arn"] == {"Fn::GetAtt": [function, "Arn"]}
    assert json.loads(target["Input"]) == {"source": "schedule",
                                           "scheduledTime": "<aws.scheduler.scheduled-time>"}
    assert target["RetryPolicy"] == {"MaximumRetryAttempts": 2, "MaximumEventAgeInSeconds": 600}
    # The scheduler's role for this target may invoke this function and nothing else.
    role = target["RoleArn"]["Fn::GetAtt"][0]
    found = policies_of_role(synthesized.resources, role)
    assert {a for s in found for a in as_list(s["Action"])} == {"lambda:InvokeFunction"}
    for statement in found:
        for resource in as_list(statement["Resource"]):
            assert references(resource, function), resource


def test_the_schedule_is_not_switched_off_with_the_market_hours_ones() -> None:
    # The token expires on holidays too.
    stack = aws_cdk.Stack(aws_cdk.App(), "Probe")
    probe(stack)
    Template.from_stack(stack).has_resource_properties(
        "AWS::Scheduler::Schedule", {"ScheduleExpression": "rate(30 minutes)",
                                     "State": "ENABLED"})  # fmt: skip


def test_nothing_invokes_it_on_deploy(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    function = logical_id(stack, stack.token_renewal.function)
    for trigger in synthesized.of_type("Custom::Trigger"):
        version = trigger["Properties"]["HandlerArn"]["Ref"]
        assert synthesized.resources[version]["Properties"]["FunctionName"] != {"Ref": function}
    assert not any(references(r.get("Properties", {}), function)
                   for r in synthesized.of_type("Custom::Trigger"))  # fmt: skip


def test_the_function_may_read_and_put_the_dhan_secret_and_read_the_cache_token(
    synthesized: Synthesized,
) -> None:
    stack = synthesized.stack
    role = role_of_function(synthesized)
    found = policies_of_role(synthesized.resources, role)
    dhan = {"Ref": logical_id(stack, stack.dhan_secret)}
    auth = {"Ref": logical_id(stack, stack.cache.auth_secret)}
    def canonical(statement: dict[str, Any]) -> str:
        return json.dumps(statement, sort_keys=True)

    assert sorted(map(canonical, found)) == sorted(map(canonical, [
        {"Action": ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"],
         "Effect": "Allow", "Resource": auth},
        {"Sid": "RenewTheDhanToken",
         "Action": ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue",
                    "secretsmanager:PutSecretValue"],
         "Effect": "Allow", "Resource": dhan},
    ]))  # fmt: skip
    managed = synthesized.resources[role]["Properties"]["ManagedPolicyArns"]
    names = sorted(json.dumps(arn).rsplit("/", 1)[1].strip('"]}') for arn in managed)
    assert names == ["AWSLambdaBasicExecutionRole", "AWSLambdaVPCAccessExecutionRole"]
    assert "Policies" not in synthesized.resources[role]["Properties"]


def test_only_the_renewal_may_write_any_secret(synthesized: Synthesized) -> None:
    role = role_of_function(synthesized)
    writers: set[str] = set()
    for policy, statement in statements(synthesized.resources):
        actions = as_list(statement.get("Action", []))
        assert "secretsmanager:UpdateSecret" not in actions, policy
        if "secretsmanager:PutSecretValue" in actions:
            assert statement["Resource"] == {
                "Ref": logical_id(synthesized.stack, synthesized.stack.dhan_secret)}
            writers.update(r["Ref"] for r in synthesized.resources[policy]["Properties"]["Roles"])
    assert writers == {role}


def test_an_alarm_fires_when_the_token_runs_low_or_the_job_stops_reporting(
    synthesized: Synthesized,
) -> None:
    stack = synthesized.stack
    alarm = synthesized.resource(stack.token_renewal.seconds_left_alarm)["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("LtpStream", "TokenSecondsLeft")
    assert alarm["Namespace"] == METRICS_NAMESPACE
    assert alarm["Dimensions"] == [{"Name": "service", "Value": "token"}]
    assert alarm["Statistic"] == "Minimum" and alarm["Period"] == 3600
    assert alarm["Threshold"] == 21600
    assert alarm["ComparisonOperator"] == "LessThanThreshold"
    assert alarm["EvaluationPeriods"] == 1 and alarm["DatapointsToAlarm"] == 1
    # No datapoint for an hour is two missed runs: the job itself is broken.
    assert alarm["TreatMissingData"] == "breaching"
    description = alarm["AlarmDescription"]
    assert "log" in description and "Renewing the DhanHQ token by hand" in description
    topic = {"Ref": logical_id(stack, stack.monitoring.topic)}
    assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic]
    assert stack.token_renewal.seconds_left_alarm in stack.monitoring.alarms


def test_a_failed_run_raises_the_errors_alarm(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    alarm = synthesized.resource(stack.token_renewal.errors_alarm)["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/Lambda", "Errors")
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {
        "Ref": logical_id(stack, stack.token_renewal.function)}}]
    assert alarm["Statistic"] == "Sum" and alarm["Period"] == 300
    assert alarm["Threshold"] == 1 and alarm["EvaluationPeriods"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"
    topic = {"Ref": logical_id(stack, stack.monitoring.topic)}
    assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic]
    assert stack.token_renewal.errors_alarm in stack.monitoring.alarms


def settings_from(context: dict[str, object]) -> DeploySettings:
    return DeploySettings.from_context(aws_cdk.App(context=context).node)


def test_the_renewal_marks_come_from_context() -> None:
    assert (DeploySettings().token_renew_below_seconds,
            DeploySettings().token_renew_urgent_seconds) == (57600, 14400)  # fmt: skip
    given = settings_from({"ltp:tokenRenewBelowSeconds": "80000",
                           "ltp:tokenRenewUrgentSeconds": 3600})  # fmt: skip
    assert (given.token_renew_below_seconds, given.token_renew_urgent_seconds) == (80000, 3600)


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"ltp:tokenRenewBelowSeconds": "soon"}, "ltp:tokenRenewBelowSeconds has a bad value"),
        ({"ltp:tokenRenewUrgentSeconds": 1.5}, "ltp:tokenRenewUrgentSeconds has a bad value"),
        ({"ltp:tokenRenewUrgentSeconds": "0"}, "ltp:tokenRenewUrgentSeconds must be >= 1"),
        ({"ltp:tokenRenewBelowSeconds": -5}, "ltp:tokenRenewBelowSeconds must be >= 1"),
        ({"ltp:tokenRenewUrgentSeconds": "57600"}, "must be > 0 and below .*BelowSeconds"),
        ({"ltp:tokenRenewBelowSeconds": "10000"}, "must be > 0 and below .*BelowSeconds"),
        ({"ltp:tokenRenewBelowSeconds": "86400"}, r"must be below 86400 \(24 h\)"),
    ],
)
def test_a_bad_renewal_mark_fails_with_its_name(context: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        settings_from(context)


def probe(stack: aws_cdk.Stack, **marks: int) -> TokenRenewal:
    vpc = ec2.Vpc(stack, "Vpc", max_azs=1, nat_gateways=1)
    return TokenRenewal(
        stack, "TokenRenewal", code=lambda_.Code.from_inline("x"), environment={},
        vpc=vpc, subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        security_group=ec2.SecurityGroup(stack, "Sg", vpc=vpc),
        log_retention=logs.RetentionDays.ONE_DAY,
        renew_below_seconds=marks.get("below", 57600),
        renew_urgent_seconds=marks.get("urgent", 14400),
    )  # fmt: skip


def test_the_marks_reach_the_function() -> None:
    stack = aws_cdk.Stack(aws_cdk.App(), "Probe")
    probe(stack, below=50000, urgent=7200)
    Template.from_stack(stack).has_resource_properties("AWS::Lambda::Function", {
        "Handler": TOKEN_HANDLER,
        "Environment": {"Variables": {"TOKEN_RENEW_BELOW_SECONDS": "50000",
                                      "TOKEN_RENEW_URGENT_SECONDS": "7200"}},
    })  # fmt: skip


def test_a_secret_with_its_own_key_may_be_decrypted_and_encrypted_via_secrets_manager() -> None:
    stack = aws_cdk.Stack(aws_cdk.App(), "Probe", env=aws_cdk.Environment(
        account="123456789012", region="ap-south-1"))  # fmt: skip
    renewal = probe(stack)
    key = kms.Key(stack, "Key")
    secret = secretsmanager.Secret(stack, "Dhan", encryption_key=key)
    grant_secret_renewal(secret, renewal.function)
    template = Template.from_stack(stack)
    role = renewal.function.role
    assert role is not None
    resources = template.to_json()["Resources"]
    found = policies_of_role(resources, logical_id(stack, role))
    renew = [s for s in found if s.get("Sid") == "RenewTheDhanToken"]
    assert renew == [{"Sid": "RenewTheDhanToken", "Effect": "Allow",
                      "Action": ["secretsmanager:GetSecretValue",
                                 "secretsmanager:PutSecretValue",
                                 "secretsmanager:DescribeSecret"],
                      "Resource": {"Ref": logical_id(stack, secret)}}]  # fmt: skip
    # Only through Secrets Manager, and only what reading and putting a version use.
    template.has_resource_properties("AWS::KMS::Key", {"KeyPolicy": {"Statement": Match.array_with([
        Match.object_like({
            "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Condition": {"StringEquals": {
                "kms:ViaService": "secretsmanager.ap-south-1.amazonaws.com"}},
            "Principal": {"AWS": {"Fn::GetAtt": [Match.any_value(), "Arn"]}},
        }),
    ])}})  # fmt: skip
