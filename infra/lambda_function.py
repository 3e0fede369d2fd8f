"""One Lambda function of the project: Python 3.12, in the VPC, its own log group.

Every function shares one code asset (`infra.bundling.lambda_code`) and differs only in its
handler string, environment, memory and timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_scheduler_targets as targets
from aws_cdk import aws_sqs as sqs
from constructs import Construct

RUNTIME = lambda_.Runtime.PYTHON_3_12


class PythonFunction(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code: lambda_.Code,
        handler: str,
        description: str,
        environment: Mapping[str, str],
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        log_retention: logs.RetentionDays,
        memory_mib: int = 512,
        timeout: Duration | None = None,
        reserved_concurrency: int | None = None,
        async_retry_attempts: int | None = None,
        max_event_age: Duration | None = None,
        dead_letter_queue: sqs.IQueue | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.log_group = logs.LogGroup(
            self, "Logs", retention=log_retention, removal_policy=RemovalPolicy.DESTROY
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            architecture=lambda_.Architecture.X86_64,
            code=code,
            handler=handler,
            description=description,
            environment=dict(environment),
            memory_size=memory_mib,
            timeout=timeout or Duration.seconds(10),
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[security_group],
            log_group=self.log_group,
            reserved_concurrent_executions=reserved_concurrency,
            retry_attempts=async_retry_attempts,
            max_event_age=max_event_age,
            dead_letter_queue=dead_letter_queue,
        )

    def invoke_on_schedule(
        self,
        scope: Construct,
        construct_id: str,
        *,
        description: str,
        expression: scheduler.ScheduleExpression,
        payload: Mapping[str, Any],
        retry_attempts: int,
        max_event_age: Duration,
        enabled: bool = True,
    ) -> scheduler.Schedule:
        """An EventBridge Scheduler schedule invoking this function (asynchronously) with
        `payload` plus `scheduledTime`: the planned time, not the (possibly retried) delivery
        time, is what a run reasons about. No flexible window: a run is due when planned."""
        return scheduler.Schedule(
            scope,
            construct_id,
            description=description,
            schedule=expression,
            target=targets.LambdaInvoke(
                self.function,
                input=scheduler.ScheduleTargetInput.from_object(
                    {**payload, "scheduledTime": scheduler.ContextAttribute.scheduled_time}
                ),
                retry_attempts=retry_attempts,
                max_event_age=max_event_age,
            ),
            time_window=scheduler.TimeWindow.off(),
            enabled=enabled,
        )

    def errors_alarm(self, scope: Construct, construct_id: str, *,
                     description: str) -> cloudwatch.Alarm:
        """Any failed invocation in 5 minutes (none is routine: each is a run that did not do
        its job). No action here: the alarm topic is `infra.monitoring`'s (`extra_alarms`)."""
        return cloudwatch.Alarm(
            scope,
            construct_id,
            metric=self.function.metric_errors(period=Duration.minutes(5), statistic="Sum"),
            threshold=1,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=description,
        )
