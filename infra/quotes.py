"""The quotes function: the HTTP API's DhanHQ REST fallback, private, the only function of a
price request that can read the Dhan secret.

- `function` (`functions.quotes.handler`): in the VPC like every Redis-using function (the
  stack grants it the cache's AUTH secret and the Dhan secret), out to api.dhan.co through the
  NAT gateway. No API route and no trigger: only the HTTP API's function may invoke it
  (synchronously, the stack's one grant), with at most 1,000 screened misses per invocation
  (`functions.quotes.contract`). 512 MiB, 10 s: a fetch is bounded by DHAN_REST_BUDGET_SECONDS
  (2.5 s), and the caller stops waiting a second after that.
- `errors_alarm`: any failed invocation in 5 minutes (the API then answers its misses
  `dhan_error`); the alarm topic is `infra.monitoring`'s, which takes it in `extra_alarms`.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.lambda_function import PythonFunction

QUOTES_HANDLER = "functions.quotes.handler"
MEMORY_MIB = 512
TIMEOUT = Duration.seconds(10)


class QuoteFunction(Construct):
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
        memory_mib: int = MEMORY_MIB,
        timeout: Duration = TIMEOUT,
    ) -> None:
        super().__init__(scope, construct_id)
        self.handler = PythonFunction(
            self,
            "Fetcher",
            code=code,
            handler=QUOTES_HANDLER,
            description="LTP quotes: DhanHQ REST prices of the HTTP API's cache misses (private)",
            environment=environment,
            vpc=vpc,
            subnets=subnets,
            security_group=security_group,
            log_retention=log_retention,
            memory_mib=memory_mib,
            timeout=timeout,
        )
        self.function = self.handler.function
        self.errors_alarm = self.handler.errors_alarm(self, "ErrorsAlarm", description=(
                "The quotes function failed: the HTTP API answers its cache misses dhan_error "
                "meanwhile (streamed prices are unaffected). See the function's log."
            ))
