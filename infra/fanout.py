"""The fan-out Lambda: one invocation per connection shard per window, posting to `@connections`.

Invoked asynchronously by the bridge. A window that could not be delivered is not worth
retrying later (the next window carries newer prices and the function carries failed keys
forward itself), so Lambda's own async retries are off and an event older than a minute is
dropped. Reserved concurrency bounds how much of the account's Lambda concurrency (and
therefore of the shared 10,000/s API Gateway request budget) the fan-out can take.

An event that failed (the function raised or timed out) or expired is not silently dropped: it
goes to the `failures` queue (the function's dead-letter queue: SQS-managed encryption, TLS
only, kept 4 days; the function may only SendMessage to it, which CDK grants with the DLQ), and
`failures_alarm` fires while that queue holds anything or Lambda could not write to it
(`DeadLetterErrors`). The messages are for reading, not for replaying: purge the queue once
the cause is known. A dead-letter queue rather than an on-failure destination: the same record
of the failure (payload, error code and message as attributes), with exactly SendMessage
granted, and cdk-nag recognises it as a DLQ (AwsSolutions-SQS3).
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from infra.lambda_function import PythonFunction

FANOUT_HANDLER = "functions.fanout.handler"
MAX_EVENT_AGE = Duration.seconds(60)  # the next window supersedes a late one
FAILURE_RETENTION = Duration.days(4)  # over a long weekend, for whoever looks on Monday


class Fanout(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        code: lambda_.Code,
        environment: Mapping[str, str],
        callback_url: str,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        security_group: ec2.ISecurityGroup,
        memory_mib: int,
        timeout: Duration,
        reserved_concurrency: int | None,
        max_workers: int,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.failures = sqs.Queue(
            self,
            "FailedInvocations",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=FAILURE_RETENTION,
            # An event is up to 900 KB (realtime.window.MAX_PAYLOAD_BYTES) plus its record.
            max_message_size_bytes=1024 * 1024,
            removal_policy=RemovalPolicy.DESTROY,
        )
        self.handler = PythonFunction(
            self,
            "Fanout",
            code=code,
            handler=FANOUT_HANDLER,
            description="LTP fan-out: one window's updates to one shard of WebSocket connections",
            environment={
                **environment,
                "WEBSOCKET_CALLBACK_URL": callback_url,
                "FANOUT_MAX_WORKERS": str(max_workers),
            },
            vpc=vpc,
            subnets=subnets,
            security_group=security_group,
            log_retention=log_retention,
            memory_mib=memory_mib,
            timeout=timeout,
            reserved_concurrency=reserved_concurrency,
            async_retry_attempts=0,
            max_event_age=MAX_EVENT_AGE,
            dead_letter_queue=self.failures,
        )
        self.function = self.handler.function
        failed = self.failures.metric_approximate_number_of_messages_visible(
            period=Duration.minutes(1), statistic="Maximum")
        undeliverable = self.function.metric(
            "DeadLetterErrors", period=Duration.minutes(1), statistic="Sum")
        # No action here: the alarm topic lives in infra.monitoring, which must add it.
        self.failures_alarm = cloudwatch.Alarm(
            self,
            "FailedInvocationsAlarm",
            metric=cloudwatch.MathExpression(
                expression="FILL(failed, 0) + FILL(undeliverable, 0)",
                using_metrics={"failed": failed, "undeliverable": undeliverable},
                label="fan-out events failed or expired",
                period=Duration.minutes(1),
            ),
            threshold=0,
            comparison_operator=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            treat_missing_data=cloudwatch.TreatMissingData.NOT_BREACHING,
            alarm_description=(
                "Fan-out invocations failed or expired: browsers of a shard missed a window. "
                "The events are in the fan-out's failed-invocations queue (error code and "
                "message as attributes); purge it once the cause is known."
            ),
        )
