"""The instrument-master load in the template: function, weekday schedule, deploy-time trigger,
least-privilege IAM and its errors alarm."""

from __future__ import annotations

import json
from typing import Any

import aws_cdk
import pytest
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk.assertions import Template
from constructs import Construct

from core.errors import ConfigError
from infra.bundling import default_plan, requirement_names
from infra.instruments import INSTRUMENTS_HANDLER, InstrumentMaster
from infra.settings import DeploySettings
from tests.infra.helpers import (
    Synthesized,
    as_list,
    logical_id,
    policies_of_role,
    references,
    statements,
)


def function_props(synthesized: Synthesized) -> dict[str, Any]:
    props: dict[str, Any] = synthesized.resource(synthesized.stack.instruments.function)[
        "Properties"]
    return props


def test_the_function_runs_in_the_vpc_with_the_redis_environment(
    synthesized: Synthesized,
) -> None:
    stack = synthesized.stack
    props = function_props(synthesized)
    assert props["Handler"] == INSTRUMENTS_HANDLER == "functions.instruments.handler"
    assert props["Runtime"] == "python3.12"
    assert props["MemorySize"] == 1024 and props["Timeout"] == 300
    # The same subnets and security group as the other Redis-using functions.
    assert props["VpcConfig"] == synthesized.resource(stack.schedule.function)[
        "Properties"]["VpcConfig"]
    env = props["Environment"]["Variables"]
    assert set(env) == {"REDIS_URL", "REDIS_AUTH_SECRET_ARN", "REDIS_SOCKET_TIMEOUT",
                        "POWERTOOLS_METRICS_NAMESPACE"}  # fmt: skip
    assert env["REDIS_AUTH_SECRET_ARN"] == {"Ref": logical_id(stack, stack.cache.auth_secret)}
    assert references(env["REDIS_URL"], logical_id(stack, stack.cache.replication_group))
    assert "rediss://" in json.dumps(env["REDIS_URL"])
    assert env["REDIS_SOCKET_TIMEOUT"] == "10"
    # Created once the private subnets route to the NAT: the download goes out through it.
    resource = synthesized.resource(stack.instruments.function)
    assert any("DefaultRoute" in d for d in resource["DependsOn"])
    config = [r["Properties"] for r in synthesized.of_type("AWS::Lambda::EventInvokeConfig")
              if r["Properties"]["FunctionName"] == {"Ref": logical_id(
                  stack, stack.instruments.function)}]  # fmt: skip
    assert config == [{"FunctionName": {"Ref": logical_id(stack, stack.instruments.function)},
                       "MaximumEventAgeInSeconds": 3600, "MaximumRetryAttempts": 2,
                       "Qualifier": "$LATEST"}]  # fmt: skip


def test_it_loads_on_weekdays_at_0830_in_kolkata(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    function = logical_id(stack, stack.instruments.function)
    (schedule,) = [s["Properties"] for s in synthesized.of_type("AWS::Scheduler::Schedule")
                   if references(s["Properties"]["Target"]["Arn"], function)]  # fmt: skip
    assert schedule["ScheduleExpression"] == "cron(30 8 ? * MON-FRI *)"
    assert schedule["ScheduleExpressionTimezone"] == "Asia/Kolkata"
    assert schedule["State"] == "ENABLED"
    assert schedule["FlexibleTimeWindow"] == {"Mode": "OFF"}
    target = schedule["Target"]
    assert target["Arn"] == {"Fn::GetAtt": [function, "Arn"]}
    assert json.loads(target["Input"]) == {"source": "schedule",
                                           "scheduledTime": "<aws.scheduler.scheduled-time>"}
    # The scheduler's role for this target may invoke this function and nothing else.
    role = target["RoleArn"]["Fn::GetAtt"][0]
    found = policies_of_role(synthesized.resources, role)
    assert {a for s in found for a in as_list(s["Action"])} == {"lambda:InvokeFunction"}
    for statement in found:
        for resource in as_list(statement["Resource"]):
            assert references(resource, function), resource


def test_it_loads_once_per_deploy_after_the_cache_exists(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    function = logical_id(stack, stack.instruments.function)
    (trigger,) = [r for r in synthesized.of_type("Custom::Trigger")]
    props = trigger["Properties"]
    # Asynchronous: a deploy-time download failure must not roll the stack back.
    assert props["InvocationType"] == "Event"
    assert props["ExecuteOnHandlerChange"] is True
    version = props["HandlerArn"]["Ref"]
    assert synthesized.resources[version]["Type"] == "AWS::Lambda::Version"
    assert synthesized.resources[version]["Properties"]["FunctionName"] == {"Ref": function}
    after = set(trigger["DependsOn"])
    cache = stack.cache
    assert {logical_id(stack, cache.replication_group), logical_id(stack, cache.auth_secret),
            logical_id(stack, cache.security_group)} <= after  # fmt: skip
    # The rule that lets the Lambda security group reach the cache port is in place too.
    lambda_sg = logical_id(stack, stack.lambda_security_group)
    ingress = [name for name, r in synthesized.resources.items()
               if r["Type"] == "AWS::EC2::SecurityGroupIngress"
               and references(r["Properties"].get("SourceSecurityGroupId"), lambda_sg)
               and references(r["Properties"].get("GroupId"),
                              logical_id(stack, cache.security_group))]  # fmt: skip
    assert ingress and set(ingress) <= after
    # The trigger's provider may invoke this function (its versions) only.
    provider_roles = [name for name, r in synthesized.resources.items()
                      if r["Type"] == "AWS::IAM::Role" and name.startswith("AWSCDKTrigger")]
    (provider_role,) = provider_roles
    inline = synthesized.resources[provider_role]["Properties"]["Policies"]
    granted = [s for p in inline for s in p["PolicyDocument"]["Statement"]]
    assert [s["Action"] for s in granted] == [["lambda:InvokeFunction"]]
    assert all(references(r, function) for s in granted for r in as_list(s["Resource"]))


def test_the_function_may_read_the_cache_token_and_nothing_else(
    synthesized: Synthesized,
) -> None:
    stack = synthesized.stack
    assert stack.instruments.function.role is not None
    role = logical_id(stack, stack.instruments.function.role)
    found = policies_of_role(synthesized.resources, role)
    assert found == [{
        "Action": ["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue"],
        "Effect": "Allow",
        "Resource": {"Ref": logical_id(stack, stack.cache.auth_secret)},
    }]  # fmt: skip
    managed = synthesized.resources[role]["Properties"]["ManagedPolicyArns"]
    names = sorted(json.dumps(arn).rsplit("/", 1)[1].strip('"]}') for arn in managed)
    assert names == ["AWSLambdaBasicExecutionRole", "AWSLambdaVPCAccessExecutionRole"]
    # No other policy anywhere names this role.
    for policy, _ in statements(synthesized.resources):
        roles = synthesized.resources[policy].get("Properties", {}).get("Roles", [])
        if {"Ref": role} in roles:
            assert synthesized.resources[policy]["Properties"]["PolicyDocument"][
                "Statement"] == found


def test_a_failed_load_raises_the_alarm(synthesized: Synthesized) -> None:
    stack = synthesized.stack
    alarm = synthesized.resource(stack.instruments.errors_alarm)["Properties"]
    assert (alarm["Namespace"], alarm["MetricName"]) == ("AWS/Lambda", "Errors")
    assert alarm["Dimensions"] == [{"Name": "FunctionName", "Value": {
        "Ref": logical_id(stack, stack.instruments.function)}}]
    assert alarm["Statistic"] == "Sum" and alarm["Period"] == 300
    assert alarm["Threshold"] == 1 and alarm["EvaluationPeriods"] == 1
    assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["TreatMissingData"] == "notBreaching"
    topic = {"Ref": logical_id(stack, stack.monitoring.topic)}
    assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic]
    assert stack.instruments.errors_alarm in stack.monitoring.alarms  # on the dashboard too


def test_the_load_time_is_context_checked_and_reaches_the_cron() -> None:
    settings = DeploySettings.from_context(aws_cdk.App(context={
        "ltp:instrumentsLoadAt": "07:45"}).node)  # fmt: skip
    assert settings.instruments_load_clock == (7, 45)
    assert DeploySettings().instruments_load_at == "08:30"
    with pytest.raises(ConfigError, match="ltp:instrumentsLoadAt must be HH:MM"):
        DeploySettings.from_context(aws_cdk.App(context={"ltp:instrumentsLoadAt": "8.30"}).node)

    stack = aws_cdk.Stack(aws_cdk.App(), "Probe")
    vpc = ec2.Vpc(stack, "Vpc", max_azs=1, nat_gateways=1)
    cache = Construct(stack, "Cache")
    InstrumentMaster(
        stack, "Instruments", code=lambda_.Code.from_inline("x"), environment={},
        vpc=vpc, subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_WITH_EGRESS),
        security_group=ec2.SecurityGroup(stack, "Sg", vpc=vpc),
        load_at=settings.instruments_load_clock, log_retention=logs.RetentionDays.ONE_DAY,
        run_after=[cache],
    )  # fmt: skip
    Template.from_stack(stack).has_resource_properties(
        "AWS::Scheduler::Schedule", {"ScheduleExpression": "cron(45 7 ? * MON-FRI *)"})


def test_the_lambda_bundle_has_what_the_download_imports() -> None:
    assert "httpx" in requirement_names(default_plan().requirements)
