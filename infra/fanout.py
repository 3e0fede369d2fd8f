"""The fan-out Lambda: one invocation per connection shard per window, posting to `@connections`.

Invoked asynchronously by the bridge. A window that could not be delivered is not worth
retrying later (the next window carries newer prices and the function carries failed keys
forward itself), so Lambda's own async retries are off and an event older than a minute is
dropped. Reserved concurrency bounds how much of the account's Lambda concurrency (and
therefore of the shared 10,000/s API Gateway request budget) the fan-out can take.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from infra.lambda_function import PythonFunction

FANOUT_HANDLER = "functions.fanout.handler"


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
            max_event_age=Duration.seconds(60),
        )
        self.function = self.handler.function
