"""The instrument master in AWS: a Lambda that loads Dhan's scrip master into Redis, run by
EventBridge Scheduler every weekday before the session and once on each deploy.

- `function` (`functions.instruments.handler`): in the VPC like every Redis-using function
  (the stack grants it the cache's AUTH secret and the cache port), out to images.dhan.co
  through the NAT gateway. 1024 MiB and 5 minutes: a load streams tens of MB of CSV and
  writes it in pipelined chunks, and a failed download is retried inside the invocation. Its
  Redis commands get 10 s (`REDIS_SOCKET_TIMEOUT`) instead of the browser-facing 1 s: a
  5,000-row HSET batch or the final swap of the hashes must not time out on a busy small node.
- `schedule`: `cron(M H ? * MON-FRI *)` in Asia/Kolkata at `load_at` (`ltp:instrumentsLoadAt`,
  08:30 by default: before the 09:00 start, so the streamer starts with today's symbols).
  Scheduler invokes asynchronously; Lambda retries a failed invocation twice.
- `trigger` (`aws_cdk.triggers.Trigger`): invokes the function when the stack is created and
  whenever the function's code or configuration changes (its `currentVersion`), after
  everything in `run_after` (the cache, with its security-group rule) exists. The invocation
  is asynchronous (`InvocationType.EVENT`): a download that fails at deploy time (Dhan's CDN,
  a NAT still warming up) must not roll back the whole stack; it is retried by Lambda, shows
  on the errors alarm, and the next scheduled run loads the master anyway.
- `errors_alarm`: any failed invocation in 5 minutes. It has no action here: the alarm topic
  belongs to `infra.monitoring`, which takes it in `extra_alarms`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import Duration, TimeZone, triggers
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from constructs import Construct

from infra.lambda_function import PythonFunction

INSTRUMENTS_HANDLER = "functions.instruments.handler"
WEEKDAYS = "MON-FRI"
TIMEOUT = Duration.minutes(5)
MEMORY_MIB = 1024
# Seconds per Redis command (see the module docstring).
REDIS_SOCKET_TIMEOUT_SECONDS = 10
ASYNC_RETRIES = 2
# A retried invocation older than this is dropped: by then the next run is closer.
MAX_EVENT_AGE = Duration.hours(1)


class InstrumentMaster(Construct):
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
        log_retention: logs.RetentionDays,
        load_at: tuple[int, int],
        run_after: Sequence[Construct],
        memory_mib: int = MEMORY_MIB,
        timeout: Duration = TIMEOUT,
    ) -> None:
        super().__init__(scope, construct_id)
        self.handler = PythonFunction(
            self,
            "Loader",
            code=code,
            handler=INSTRUMENTS_HANDLER,
            description="LTP instrument master: Dhan's scrip master -> Redis (weekdays, deploys)",
            environment={**environment,
                         "REDIS_SOCKET_TIMEOUT": str(REDIS_SOCKET_TIMEOUT_SECONDS)},
            vpc=vpc,
            subnets=subnets,
            security_group=security_group,
            log_retention=log_retention,
            memory_mib=memory_mib,
            timeout=timeout,
            async_retry_attempts=ASYNC_RETRIES,
            max_event_age=MAX_EVENT_AGE,
        )
        self.function = self.handler.function

        hour, minute = load_at
        self.schedule = self.handler.invoke_on_schedule(
            self,
            "Daily",
            description=f"LTP instrument-master load at {hour:02d}:{minute:02d} IST, {WEEKDAYS}",
            expression=scheduler.ScheduleExpression.cron(
                minute=str(minute),
                hour=str(hour),
                week_day=WEEKDAYS,
                time_zone=TimeZone.ASIA_KOLKATA,
            ),
            payload={"source": "schedule"},
            retry_attempts=3,
            max_event_age=Duration.minutes(15),
        )

        self.trigger = triggers.Trigger(
            self,
            "LoadOnDeploy",
            handler=self.function,
            invocation_type=triggers.InvocationType.EVENT,
            execute_after=list(run_after),
            execute_on_handler_change=True,
        )

        self.errors_alarm = self.handler.errors_alarm(self, "ErrorsAlarm", description=(
                "The instrument-master load failed (scheduled, on deploy or a Lambda retry): "
                "Redis keeps the previous master; symbols of new instruments are missing "
                "until a load succeeds. See the function's log for the reason."
            ))
