"""Market-hours schedule: EventBridge Scheduler in Asia/Kolkata, Monday-Friday, invoking
`functions.schedule.handler` with `{"action": "start"}` before the open and
`{"action": "stop"}` after the close. The function skips NSE holidays itself (from the
calendar shipped with it) and goes through the same start/stop code as the HTTP API.

EventBridge Scheduler (unlike EventBridge rules, which are UTC only) takes an IANA time zone,
so the times stay right whatever the season; India has no daylight saving anyway.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, TimeZone
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from constructs import Construct

from infra.lambda_function import PythonFunction

SCHEDULE_HANDLER = "functions.schedule.handler"
WEEKDAYS = "MON-FRI"


class MarketSchedule(Construct):
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
        start: tuple[int, int],
        stop: tuple[int, int],
        enabled: bool,
        log_retention: logs.RetentionDays,
    ) -> None:
        super().__init__(scope, construct_id)
        self.handler = PythonFunction(
            self,
            "Scheduler",
            code=code,
            handler=SCHEDULE_HANDLER,
            description="LTP market-hours start/stop (skips NSE holidays)",
            environment=environment,
            vpc=vpc,
            subnets=subnets,
            security_group=security_group,
            log_retention=log_retention,
            memory_mib=memory_mib,
            timeout=Duration.seconds(30),
        )
        self.function = self.handler.function
        self.start = self._schedule("Start", "start", start, enabled)
        self.stop = self._schedule("Stop", "stop", stop, enabled)

    def _schedule(
        self, construct_id: str, action: str, at: tuple[int, int], enabled: bool
    ) -> scheduler.Schedule:
        hour, minute = at
        # The planned time (`scheduledTime`), not the delivery time, decides the trading day.
        return self.handler.invoke_on_schedule(
            self,
            construct_id,
            description=f"LTP streamer {action} at {hour:02d}:{minute:02d} IST, {WEEKDAYS}",
            expression=scheduler.ScheduleExpression.cron(
                minute=str(minute),
                hour=str(hour),
                week_day=WEEKDAYS,
                time_zone=TimeZone.ASIA_KOLKATA,
            ),
            payload={"action": action},
            retry_attempts=3,
            max_event_age=Duration.minutes(15),
            enabled=enabled,
        )
