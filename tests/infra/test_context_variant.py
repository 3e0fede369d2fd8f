"""The same app with non-default context: settings reach the template and cdk-nag still passes.

A second synthesis (seconds of jsii), so it carries the `cdk` marker with the CLI test.
"""

from __future__ import annotations

import aws_cdk
import pytest
from aws_cdk.assertions import Match, Template

from app import build_app
from tests.infra.helpers import cdk_json_context

pytestmark = pytest.mark.cdk


@pytest.fixture(scope="module")
def variant(tmp_path_factory: pytest.TempPathFactory) -> Template:
    context = {
        **cdk_json_context(),
        "aws:cdk:bundling-stacks": [],
        "ltp:stage": "staging",
        "ltp:cacheReplicas": "1",
        "ltp:cacheMultiAz": "true",
        "ltp:natGateways": "2",
        "ltp:fanoutReservedConcurrency": "0",
        "ltp:scheduleEnabled": "false",
        "ltp:scheduleStart": "08:55",
        "ltp:alarmEmail": "ops@example.com",
        "ltp:monthlyBudgetUsd": "400",
    }
    app = aws_cdk.App(context=context, outdir=str(tmp_path_factory.mktemp("variant")))
    _, stack = build_app(app)
    assert stack.stack_name == "Ltp-staging"
    return Template.from_stack(stack)  # raises if cdk-nag finds anything unacknowledged


def test_replica_and_multi_az_reach_the_cache(variant: Template) -> None:
    variant.has_resource_properties(
        "AWS::ElastiCache::ReplicationGroup",
        {"NumCacheClusters": 2, "AutomaticFailoverEnabled": True, "MultiAZEnabled": True},
    )
    variant.resource_count_is("AWS::EC2::NatGateway", 2)


def test_schedule_switches_and_times_follow_context(variant: Template) -> None:
    variant.has_resource_properties(
        "AWS::Scheduler::Schedule",
        {"ScheduleExpression": "cron(55 8 ? * MON-FRI *)", "State": "DISABLED"},
    )


def test_zero_reserved_concurrency_means_none_reserved(variant: Template) -> None:
    variant.has_resource_properties(
        "AWS::Lambda::Function",
        {"Handler": "functions.fanout.handler",
         "ReservedConcurrentExecutions": Match.absent()},  # fmt: skip
    )


def test_alarm_email_and_monthly_budget(variant: Template) -> None:
    variant.has_resource_properties(
        "AWS::SNS::Subscription", {"Protocol": "email", "Endpoint": "ops@example.com"}
    )
    variant.has_resource_properties(
        "AWS::Budgets::Budget",
        {"Budget": Match.object_like({"BudgetLimit": {"Amount": 400, "Unit": "USD"},
                                      "TimeUnit": "MONTHLY"})},  # fmt: skip
    )
