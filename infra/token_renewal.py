"""The DhanHQ access-token renewal in AWS: a Lambda that calls Dhan's `GET /v2/RenewToken` and
puts the new token into the Dhan secret, run by EventBridge Scheduler every 30 minutes.

DhanHQ tokens live 24 hours and nothing else in the stack refreshes them: without this job the
streamer and the price API stop working a day after the token was last put by hand.

- `function` (`functions.token.handler`): in the VPC like every Redis-using function (the stack
  grants it the cache's AUTH secret and the cache port; it takes a Redis lock so that a retry
  and the next scheduled run cannot renew twice, and PUBLISHes a control message so that the
  secret's readers pick up the new token), out to api.dhan.co through the NAT gateway. It
  renews when fewer than `renew_below_seconds` (`ltp:tokenRenewBelowSeconds`) are left outside
  the session, and inside the session only below `renew_urgent_seconds`
  (`ltp:tokenRenewUrgentSeconds`): a renewal mid-session makes the feed reconnect. 256 MiB and
  60 s: one HTTPS call, one secret read and write, two Redis commands.
- `schedule`: `rate(30 minutes)`, always enabled (not switched by `ltp:scheduleEnabled`: the
  token expires on holidays too). Scheduler invokes asynchronously; Lambda retries a failed
  invocation twice. No deploy-time trigger: the first deploy holds a placeholder token that
  cannot be renewed, and the first scheduled run is at most 30 minutes away.
- `seconds_left_alarm`: the smallest `TokenSecondsLeft` (the EMF line each run prints) in an
  hour under 6 h, or no datapoint in an hour (the job itself is not running).
- `errors_alarm`: any failed invocation in 5 minutes.
Neither alarm has an action here: the alarm topic belongs to `infra.monitoring`, which takes
them in `extra_alarms`.

`grant_secret_renewal` is the IAM the function needs on the Dhan secret; the stack calls it, so
that every grant stays visible in `infra.stack`.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, Stack
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_scheduler as scheduler
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from core.emf import METRICS_NAMESPACE
from infra.lambda_function import PythonFunction

TOKEN_HANDLER = "functions.token.handler"
DESCRIPTION = (
    "LTP DhanHQ token renewal (every 30 min; renews before expiry and outside the session)"
)
RATE = Duration.minutes(30)
TIMEOUT = Duration.seconds(60)
MEMORY_MIB = 256
ASYNC_RETRIES = 2
# A retry older than one interval is dropped: the next scheduled run has taken over.
MAX_EVENT_AGE = RATE
SCHEDULE_RETRIES = 2
SCHEDULE_MAX_EVENT_AGE = Duration.minutes(10)

SECONDS_LEFT_METRIC = "TokenSecondsLeft"
TOKEN_DIMENSIONS = {"service": "token"}
# Renewals keep the token above `renew_below_seconds` outside the session and above
# `renew_urgent_seconds` inside it (16 h / 4 h by default); 6 h left means renewals have been
# failing for most of a day, while there is still time to renew by hand before the expiry.
SECONDS_LEFT_ALARM_THRESHOLD = int(Duration.hours(6).to_seconds())
# Two runs an hour: an hour without a datapoint is two missed runs.
SECONDS_LEFT_PERIOD = Duration.hours(1)
RUNBOOK = 'README "Renewing the DhanHQ token by hand"'

SECRET_RENEWAL_ACTIONS = (
    "secretsmanager:GetSecretValue",
    "secretsmanager:PutSecretValue",
    "secretsmanager:DescribeSecret",
)


class TokenRenewal(Construct):
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
        renew_below_seconds: int,
        renew_urgent_seconds: int,
        memory_mib: int = MEMORY_MIB,
        timeout: Duration = TIMEOUT,
    ) -> None:
        super().__init__(scope, construct_id)
        self.handler = PythonFunction(
            self,
            "Renewer",
            code=code,
            handler=TOKEN_HANDLER,
            description=DESCRIPTION,
            environment={
                **environment,
                "TOKEN_RENEW_BELOW_SECONDS": str(renew_below_seconds),
                "TOKEN_RENEW_URGENT_SECONDS": str(renew_urgent_seconds),
            },
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

        self.schedule = self.handler.invoke_on_schedule(
            self,
            "HalfHourly",
            description="LTP DhanHQ token renewal check, every 30 minutes",
            expression=scheduler.ScheduleExpression.rate(RATE),
            payload={"source": "schedule"},
            retry_attempts=SCHEDULE_RETRIES,
            # Older than this, a delivery only crowds the next run.
            max_event_age=SCHEDULE_MAX_EVENT_AGE,
        )

        self.seconds_left = cloudwatch.Metric(
            namespace=METRICS_NAMESPACE,
            metric_name=SECONDS_LEFT_METRIC,
            dimensions_map=TOKEN_DIMENSIONS,
            statistic="Minimum",
            period=SECONDS_LEFT_PERIOD,
        )
        self.seconds_left_alarm = cloudwatch.Alarm(
            self,
            "SecondsLeftAlarm",
            metric=self.seconds_left,
            threshold=SECONDS_LEFT_ALARM_THRESHOLD,
            evaluation_periods=1,
            datapoints_to_alarm=1,
            comparison_operator=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            # The job prints the metric on every run, renewing or not: an hour without it means
            # the job is not running, which lets the token expire just the same.
            treat_missing_data=cloudwatch.TreatMissingData.BREACHING,
            alarm_description=(
                "The DhanHQ access token expires in under 6 hours, or the renewal job has not "
                "reported for an hour: renewal failed. See the token-renewal function's log "
                "for the reason, then renew by hand (the runbook in "
                f"{RUNBOOK}) before the streamer and the price API lose DhanHQ."
            ),
        )

        self.errors_alarm = self.handler.errors_alarm(self, "ErrorsAlarm", description=(
                "A DhanHQ token-renewal run failed (scheduled or a Lambda retry): the secret "
                "keeps the current token and the next run tries again in 30 minutes. See the "
                f"function's log for the reason; {RUNBOOK} if it keeps failing."
            ))


def grant_secret_renewal(secret: secretsmanager.ISecret, grantee: iam.IGrantable) -> None:
    """Read the Dhan secret and put a new version of it; nothing else on it (`grant_write`
    would add UpdateSecret, which changes the secret's description and key)."""
    grantee.grant_principal.add_to_principal_policy(
        iam.PolicyStatement(
            sid="RenewTheDhanToken",
            actions=list(SECRET_RENEWAL_ACTIONS),
            resources=[secret.secret_arn],
        )
    )
    key = secret.encryption_key
    if key is not None:
        # As `grant_read`/`grant_write` do: the key is usable only through Secrets Manager.
        # Decrypt reads the value; GenerateDataKey encrypts the new version.
        via_secrets_manager = kms.ViaServicePrincipal(
            f"secretsmanager.{Stack.of(secret).region}.amazonaws.com", grantee.grant_principal
        )
        key.grant(via_secrets_manager, "kms:Decrypt", "kms:GenerateDataKey")
